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

from hiveagent.config import Config, PublishSettings, parse_config
from hiveagent.cycle import Cycle, VmCycle
from hiveagent.model import Datum, VmSpec
from hiveagent.pipeline import Pipeline
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


# -- basic monitoring's 5-minute windows -----------------------------------------------------------
def vm(period_s: int) -> VmSpec:
    return VmSpec("i-0123456789abcdef0", "", None, None, None, period_s, None, "test")


def ec2_minute(config: Config, ts: float, k: int) -> list[Datum]:
    """One cycle's EC2 datums: a per-period total (NetworkIn) and a gauge (CPUUtilization)."""
    dims = (("InstanceId", "i-0123456789abcdef0"),)
    ns = config.ec2_namespace
    return [
        Datum(ns, "CPUUtilization", dims, float(k), "Percent", ts, 60),
        Datum(ns, "NetworkIn", dims, 1000.0 + k, "Bytes", ts, 60),
    ]


def send(spinifex: StrictEndpoint, spool: Spool, datums: list[Datum]) -> Publisher:
    pub = Publisher(make_client("us-east-1", spinifex.url), spool, SETTINGS)
    pub.datum_shape = "single_values"  # what Spinifex takes
    spool.add(datums)
    assert asyncio.run(pub.flush())
    return pub


def network_in(spinifex: StrictEndpoint) -> float:
    return sum(d.value or 0.0 for d in spinifex.accepted if d.name == "NetworkIn")


@pytest.mark.parametrize(
    "periods",
    [
        (60,) * 3 + (300,) * 9,  # detailed, then basic from the middle of a window
        (300,) * 4 + (60,) * 3 + (300,) * 6,  # basic, detailed, basic again
    ],
    ids=["detailed-to-basic", "basic-detailed-basic"],
)
def test_a_tier_switch_never_sends_a_series_backwards(
    tmp_path: Path, spinifex: StrictEndpoint, periods: tuple[int, ...]
) -> None:
    config = parse_config({"hypervisor": {"state_dir": str(tmp_path)}})
    pipeline = Pipeline(config)
    spool = opened(tmp_path / "spool")
    # Minutes from 1 past a 5-minute boundary, stamped at the end of each minute: the switches
    # fall inside windows.
    start = (time.time() // 300 - 4) * 300 + 60
    fed = 0.0
    for k, period in enumerate(periods):
        minute_datums = ec2_minute(config, start + 60 * k, k)
        fed += minute_datums[1].value
        send(spinifex, spool, pipeline.finish_vm(vm(period), minute_datums))
    pub = send(spinifex, spool, pipeline.drain())
    assert spinifex.refusals == []
    assert not [k for k in pub.stats if k.startswith("dropped.")]
    # Every minute's bytes arrived once (a window's single value is its sum).
    assert network_in(spinifex) == fed
    stamps = [d.timestamp for d in spinifex.accepted if d.name == "NetworkIn"]
    assert stamps == sorted(stamps)


def test_a_restart_inside_a_window_does_not_send_it_twice(
    tmp_path: Path, spinifex: StrictEndpoint
) -> None:
    config = parse_config({"hypervisor": {"state_dir": str(tmp_path)}})
    state = tmp_path / "basic-windows-sent.json"
    spool = opened(tmp_path / "spool")
    start = (time.time() // 300 - 4) * 300 + 60
    fed = 0.0
    first = Pipeline(config, state)
    for k in range(3):  # minutes 1-3 of a window, then a shutdown closes it early
        minute_datums = ec2_minute(config, start + 60 * k, k)
        fed += minute_datums[1].value
        send(spinifex, spool, first.finish_vm(vm(300), minute_datums))
    partial = first.drain()
    assert [d.timestamp for d in partial if d.name == "NetworkIn"] == [start - 60]
    send(spinifex, spool, partial)
    again = Pipeline(config, state)  # the next start, same window
    for k in range(3, 11):
        minute_datums = ec2_minute(config, start + 60 * k, k)
        fed += minute_datums[1].value
        send(spinifex, spool, again.finish_vm(vm(300), minute_datums))
    send(spinifex, spool, again.drain())
    assert spinifex.refusals == []
    assert network_in(spinifex) == fed
    # The rest of the first window went minute by minute; the next windows were gathered.
    windows = [d for d in spinifex.accepted if d.name == "NetworkIn" and d.timestamp % 300 == 0]
    assert [w.timestamp - (start - 60) for w in windows] == [0.0, 300.0, 600.0]


def test_a_vm_that_changes_account_takes_no_gathered_minute_along() -> None:
    """Basic monitoring gathers a VM's minutes into 5-minute windows; a VM whose account
    changes (its sidecar's or metadata's account_id, or a reload's routing) closes its open
    window under the account it had, so the minutes gathered then are sent with that account's
    credentials, and its new account gets only what was sampled after."""
    config = parse_config({"hypervisor": {"state_dir": "/nonexistent"}})
    pipeline = Pipeline(config)
    start = (time.time() // 300 - 4) * 300 + 60  # minute 1 of a window
    routed: dict[str, list[Datum]] = {}
    for k, account in enumerate(("111111111111",) * 2 + ("222222222222",) * 2):
        cycle = Cycle([VmCycle(vm(300), ec2_minute(config, start + 60 * k, k))], [])

        def route(spec: VmSpec, account: str = account) -> str:
            return account

        for key, datums in pipeline.finish_routed(cycle, route).items():
            routed.setdefault(key, []).extend(datums)
    for key, datums in pipeline.drain_routed().items():
        routed.setdefault(key, []).extend(datums)
    net = {a: [d.value for d in ds if d.name == "NetworkIn"] for a, ds in routed.items()}
    # The old account: its first two minutes (k = 0, 1: 1000 + 1001), gathered; the new one: the
    # next two (k = 2, 3).
    assert sum(net["111111111111"]) == 1000.0 + 1001.0
    assert sum(net["222222222222"]) == 1002.0 + 1003.0
