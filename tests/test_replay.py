"""What the agent sends again after a restart, against an endpoint that refuses duplicate and
out-of-order samples (Spinifex's CloudWatch service, REFERENCE.md section 7; the strict test
endpoint in "spinifex" mode): records delivered out of order are not sent again, and the one
request that was in flight at a crash, refused on its resend, is counted apart
(`resent_refused`), not as rejected datums."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hiveagent.config import PublishSettings
from hiveagent.model import Datum
from hiveagent.publisher import Publisher
from hiveagent.spool import Spool
from hiveagent.wire import make_client, to_metric_datum
from tests.strict_endpoint import StrictEndpoint

SETTINGS = PublishSettings(timeout_s=5, breaker_failures=100, backoff_base_s=0.01,
                           backoff_max_s=0.01)  # fmt: skip


@pytest.fixture
def spinifex() -> Iterator[StrictEndpoint]:
    with StrictEndpoint("spinifex") as ep:
        yield ep


def minute(ns: str, instance: str, t0: float, k: int) -> list[Datum]:
    """One cycle's datums of one VM: two series, stamped k minutes after t0."""
    ts = t0 + 60 * k
    dims = (("InstanceId", instance),)
    return [
        Datum(ns, "CPUUtilization", dims, 10.0 + k, "Percent", ts, 60),
        Datum(ns, "NetworkIn", dims, 1000.0 * k, "Bytes", ts, 60),
    ]


def opened(path: Path) -> Spool:
    spool = Spool(path, fsync=False)
    spool.open()
    return spool


def test_a_crash_resends_only_the_request_in_flight_and_counts_its_refusal(
    tmp_path: Path, spinifex: StrictEndpoint
) -> None:
    client = make_client("us-east-1", spinifex.url)
    t0 = float(int(time.time() // 60 * 60) - 1800)
    spool = opened(tmp_path)
    # Two namespaces: the publisher sends one request per namespace, so records of the second
    # are done while an older record of the first is still pending (out of order).
    spool.add(minute("Hive/EC2", "i-1", t0, 0))
    spool.add(minute("Hive/EBS", "i-1", t0, 0))
    assert asyncio.run(Publisher(client, spool, SETTINGS).flush())
    spool.add(minute("Hive/EC2", "i-1", t0, 1) + minute("Hive/EBS", "i-1", t0, 1))
    in_flight = next(spool.records())  # Hive/EBS (records are sorted by namespace)
    # The crash: this request reached the endpoint, the process died before marking it done.
    client.put_metric_data(
        Namespace=in_flight.namespace,
        MetricData=[to_metric_datum(d) for d in spool.load(in_flight)],
    )
    later = list(spool.records())[1]
    pub = Publisher(client, spool, SETTINGS)
    # The other namespace's record is delivered while the in-flight one is outstanding.
    assert asyncio.run(pub._deliver([(later, spool.load(later))]))
    spool.commit()
    del spool  # no close(): a SIGKILL

    again = opened(tmp_path)
    # The first process's done record (Hive/EC2 minute 1) is not read back, though the
    # cursor could not pass it; only the in-flight one is, marked as a replay.
    assert [(r.namespace, r.replayed) for r in again.records()] == [("Hive/EBS", True)]
    again.add(minute("Hive/EBS", "i-1", t0, 2))
    pub = Publisher(client, again, SETTINGS)
    assert asyncio.run(pub.flush())
    # Refused as duplicates on the resend: counted apart, nothing counted as dropped.
    assert pub.stats["resent_refused"] == 2
    assert not [k for k in pub.stats if k.startswith("dropped.")]
    # Every sample arrived exactly once, in order.
    got = sorted((d.namespace, d.name, d.timestamp) for d in spinifex.accepted)
    want = sorted(
        (ns, name, t0 + 60 * k)
        for ns, ks in (("Hive/EC2", (0, 1)), ("Hive/EBS", (0, 1, 2)))
        for k in ks
        for name in ("CPUUtilization", "NetworkIn")
    )
    assert got == want


def test_a_duplicate_that_is_not_a_replay_is_a_rejected_datum(
    tmp_path: Path, spinifex: StrictEndpoint
) -> None:
    client = make_client("us-east-1", spinifex.url)
    t0 = float(int(time.time() // 60 * 60) - 600)
    spool = opened(tmp_path)
    spool.add(minute("Hive/EC2", "i-2", t0, 0))
    pub = Publisher(client, spool, SETTINGS)
    assert asyncio.run(pub.flush())
    spool.add(minute("Hive/EC2", "i-2", t0, 0)[:1])  # the same sample again, this process
    assert asyncio.run(pub.flush())
    assert pub.stats["dropped.rejected.InvalidParameterValue"] == 1
    assert "resent_refused" not in pub.stats
