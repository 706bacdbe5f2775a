"""Retry maths and the circuit breaker as pure state machines (a fake clock, no sockets).
Their behaviour against a real endpoint is in test_delivery."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from hiveagent.publisher import BreakerState, CircuitBreaker, backoff_delay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@given(st.integers(0, 100), st.floats(0.01, 5), st.floats(0.1, 600), st.integers(0, 2**32))
def test_full_jitter_stays_within_the_cap(attempt: int, base: float, cap: float, seed: int) -> None:
    d = backoff_delay(attempt, base, cap, random.Random(seed))
    assert 0 <= d <= min(cap, base * 2**attempt)


def test_full_jitter_spreads_over_the_whole_window() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(3, 1.0, 30.0, rng) for _ in range(2000)]
    assert max(delays) <= 8.0 and max(delays) > 7.5 and min(delays) < 0.5
    assert 3.6 < sum(delays) / len(delays) < 4.4  # uniform on [0, 8]: mean 4


def test_breaker_opens_after_consecutive_failures_then_probes_once() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, open_s=60, clock=clock)
    assert not b.failure() and not b.failure()
    b.success()  # a success resets the count
    assert not b.failure() and not b.failure()
    assert b.failure() and b.state is BreakerState.OPEN and b.opens == 1
    assert not b.allow() and b.remaining_s() == 60
    clock.now += 59.9
    assert not b.allow()
    clock.now += 0.1
    assert b.allow() and b.state is BreakerState.HALF_OPEN  # type: ignore[comparison-overlap]  # one probe
    assert b.failure() and b.state is BreakerState.OPEN and b.opens == 2  # probe failed
    clock.now += 60
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.remaining_s() == 0


def test_too_old_datums_are_counted_once_across_retries(tmp_path: object) -> None:
    """An endpoint that is down (nothing listens) makes every flush retry the same record;
    its datums past the 14-day limit are dropped and counted once, not once per attempt."""
    import asyncio
    import time
    from pathlib import Path

    from hiveagent.config import PublishSettings
    from hiveagent.model import Datum
    from hiveagent.publisher import Publisher
    from hiveagent.spool import Spool
    from hiveagent.wire import make_client
    from tests.harness import free_port

    spool = Spool(Path(str(tmp_path)))
    spool.open()
    now = time.time()
    old, fresh = now - 15 * 86400, now
    datums = [Datum("NS", "M", (), float(i), "Count", ts, 60)
              for i, ts in enumerate((old, old, old, fresh))]  # fmt: skip
    settings = PublishSettings(timeout_s=0.5, breaker_failures=100, backoff_base_s=0.01,
                               backoff_max_s=0.01)  # fmt: skip
    pub = Publisher(make_client("us-east-1", f"http://127.0.0.1:{free_port()}", 0.5), spool,
                    settings)  # fmt: skip
    spool.add(datums)
    deadline = time.monotonic() + 1.5
    assert asyncio.run(pub.flush(deadline)) is False
    assert pub.stats["api_calls"] >= 3  # retried several times
    assert pub.stats["dropped.too_old"] == 3
    assert spool.pending_datums == 4  # the record stays until the fresh datum is delivered


def test_a_hold_keeps_new_requests_back_until_released(tmp_path: object) -> None:
    """While collection runs (the daemon holds the publisher), no request starts; a flush
    waits for the release, or gives up at its deadline with everything still spooled."""
    import asyncio
    import time
    from pathlib import Path
    from typing import Any

    from hiveagent.model import Datum
    from hiveagent.publisher import Publisher
    from hiveagent.spool import Spool

    class Client:  # not a botocore client: called with botocore's parameters
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def put_metric_data(self, **kw: Any) -> None:
            self.calls.append(kw)

    spool = Spool(Path(str(tmp_path)), fsync=False)
    spool.open()
    client = Client()
    pub = Publisher(client, spool)
    now = time.time()

    async def run() -> None:
        spool.add([Datum("NS", "M", (), 1.0, "Count", now, 60)])
        pub.hold()
        pub.hold()  # holds nest
        flush = asyncio.create_task(pub.flush())
        await asyncio.sleep(0.05)
        pub.release()
        await asyncio.sleep(0.05)
        assert client.calls == [] and not flush.done()
        pub.release()
        assert await flush
        assert [len(c["MetricData"]) for c in client.calls] == [1]
        pub.hold()
        spool.add([Datum("NS", "M", (), 2.0, "Count", now + 1, 60)])
        assert await pub.flush(time.monotonic() + 0.05) is False
        assert spool.pending_datums == 1 and len(client.calls) == 1
        pub.release()
        assert await pub.flush()
        assert len(client.calls) == 2

    asyncio.run(run())
