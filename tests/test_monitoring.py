"""Basic vs detailed monitoring: 5-minute windows with their samples, status checks every cycle,
and the three datum shapes, the last checked at moto's real endpoint."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hiveagent.model import Datum
from hiveagent.monitoring import BasicWindows, detailed_copies, tier
from hiveagent.publisher import Publisher
from hiveagent.spool import Spool
from hiveagent.wire import make_client, to_metric_datum

INST = (("InstanceId", "i-0123456789abcdef0"),)


def d(name: str, value: float, ts: float, unit: str = "Bytes", ns: str = "Hive/EC2") -> Datum:
    return Datum(ns, name, INST, value, unit, ts, 60)


def test_tier_from_sidecar_period() -> None:
    assert tier(300, "detailed") == "basic" and tier(60, "basic") == "detailed"
    assert tier(None, "basic") == "basic"


def test_basic_windows() -> None:
    w = BasicWindows()
    base = 1_800_000_000.0  # a multiple of 300
    out = []
    for minute in range(5):
        ts = base + 10 + minute * 60
        out += w.add([d("NetworkIn", 100.0 * (minute + 1), ts),
                      d("CPUUtilization", 10.0 * (minute + 1), ts, "Percent"),
                      d("StatusCheckFailed", 0, ts, "Count"),
                      d("VolumeReadOps", 3, ts, "Count", "Hive/EBS")])  # fmt: skip
    # Within the window only status checks and other families came out, every cycle.
    assert sorted({x.name for x in out}) == ["StatusCheckFailed", "VolumeReadOps"]
    assert len(out) == 10
    closed = w.add([d("NetworkIn", 7.0, base + 300 + 10)])  # the next window starts
    [net] = closed
    assert net.timestamp == base and net.samples == (100.0, 200.0, 300.0, 400.0, 500.0)
    assert net.value == 1500.0  # a per-period total: the window's sum
    # CPU's window is still open (no CPU datum of the next window yet); NetworkIn's new one
    # holds one sample. Draining closes both.
    drained = {x.name: x for x in w.drain()}
    cpu, net2 = drained["CPUUtilization"], drained["NetworkIn"]
    assert cpu.value == 30.0 and cpu.samples == (10.0, 20.0, 30.0, 40.0, 50.0)  # the mean
    assert cpu.timestamp == base and cpu.unit == "Percent"
    assert net2.timestamp == base + 300 and net2.samples == (7.0,)


def test_drain_and_means() -> None:
    w = BasicWindows()
    base = 1_800_000_000.0
    w.add([d("CPUUtilization", v, base + i * 60, "Percent") for i, v in enumerate((10, 20, 60))])
    [cpu] = w.drain()
    assert cpu.value == 30.0 and cpu.samples == (10.0, 20.0, 60.0) and cpu.timestamp == base
    assert w.drain() == []


def test_gauges_are_averaged_totals_summed() -> None:
    """A 5-minute basic-monitoring value combines the window's 1-minute values by the metric's
    kind: an amount per period adds up (NetworkPacketsIn, a Count: 1+2+3+4+5 packets in five
    minutes are 15), a level does not (GuestVCPUsOnline, also a Count: 2 vCPUs online in each
    minute are 2 vCPUs online over the five, not 10)."""
    w = BasicWindows()
    base = 1_800_000_000.0
    for minute in range(5):
        ts = base + 10 + minute * 60
        w.add([d("GuestVCPUsOnline", 2, ts, "Count"),
               d("NetworkPacketsIn", minute + 1, ts, "Count")])  # fmt: skip
    got = {x.name: x for x in w.drain()}
    assert got["GuestVCPUsOnline"].value == 2.0
    assert got["GuestVCPUsOnline"].samples == (2.0,) * 5
    assert got["NetworkPacketsIn"].value == 15.0
    assert to_metric_datum(got["GuestVCPUsOnline"], "single_values")["Value"] == 2.0


def test_detailed_copies() -> None:
    src = [d("CPUUtilization", 5, 1.0, "Percent"), d("StatusCheckFailed", 0, 1.0, "Count")]
    out = detailed_copies(src, "ami-1", None)
    assert [(x.name, x.dimensions) for x in out[2:]] == [
        ("CPUUtilization", (("ImageId", "ami-1"),))
    ]


def test_datum_shapes() -> None:
    agg = Datum("Hive/EC2", "NetworkIn", INST, 60.0, "Bytes", 300.0, 60, (10.0, 20.0, 10.0, 20.0))
    assert to_metric_datum(agg)["StatisticValues"] == {
        "SampleCount": 4.0, "Sum": 60.0, "Minimum": 10.0, "Maximum": 20.0}  # fmt: skip
    arrays = to_metric_datum(agg, "value_arrays")
    assert arrays["Values"] == [10.0, 20.0] and arrays["Counts"] == [2.0, 2.0]
    single = to_metric_datum(agg, "single_values")
    assert single["Value"] == 60.0 and "StatisticValues" not in single
    plain = to_metric_datum(d("NetworkIn", 5.0, 1.0), "statistic_sets")
    assert plain["Value"] == 5.0 and "StatisticValues" not in plain


@pytest.mark.vm
@pytest.mark.parametrize("shape", ["statistic_sets", "value_arrays", "single_values"])
def test_basic_datum_lands_with_its_samples(moto_url: str, tmp_path: Path, shape: str) -> None:
    window = (int(time.time()) // 300 - 2) * 300
    samples = (1.0, 4.0, 2.0, 8.0, 5.0)
    datum = Datum(f"Basic/{shape}", "NetworkIn", INST, 20.0, "Bytes", float(window), 60, samples)
    spool = Spool(tmp_path)
    spool.open()
    pub = Publisher(make_client("us-east-1", moto_url), spool)
    pub.datum_shape = shape
    spool.add([datum])
    assert asyncio.run(pub.flush()) and pub.stats["datums_sent"] == 1
    client = make_client("us-east-1", moto_url)
    stats = client.get_metric_statistics(
        Namespace=f"Basic/{shape}", MetricName="NetworkIn",
        Dimensions=[{"Name": "InstanceId", "Value": INST[0][1]}],
        StartTime=datetime.fromtimestamp(window, UTC),
        EndTime=datetime.fromtimestamp(window + 300, UTC), Period=300,
        Statistics=["SampleCount", "Sum", "Minimum", "Maximum"])["Datapoints"]  # fmt: skip
    [p] = stats
    assert p["Timestamp"].timestamp() == window
    if shape == "single_values":
        assert (p["SampleCount"], p["Sum"]) == (1.0, 20.0)
    else:
        assert (p["SampleCount"], p["Sum"], p["Minimum"], p["Maximum"]) == (5.0, 20.0, 1.0, 8.0)


@pytest.mark.vm
def test_a_basic_vm_through_the_agent(tmp_path: Path) -> None:
    from hiveagent.config import parse_config
    from tests.harness import Collection, Harness

    with Harness(tmp_path) as h:
        vm = h.launch_vm(51, boot_guest=False, volumes=((8, False),), sidecar=False)
        h.write_sidecar(vm, period_seconds=300)  # basic monitoring, as Spinifex says
        config = parse_config(
            {
                "agent": {"metrics_collection_interval": 60},
                "hypervisor": {
                    "discovery": {"spinifex": {"run_dir": str(h.run_dir)}},
                    "qga": {"enabled": False},
                    "state_dir": str(tmp_path / "s"),
                },
            }
        )
        agent = Collection(config)
        while time.time() % 300 > 290:  # keep the three cycles inside one 5-minute window
            time.sleep(1)

        async def run() -> tuple[list[list[Datum]], list[Datum]]:
            cycles = [await agent.cycle() for _ in range(3)]
            drained = agent.drain_windows()
            await agent.close()
            return cycles, drained

        cycles, drained = asyncio.run(run())
    for c in cycles:
        names = {x.name for x in c if x.namespace == "Hive/EC2"}
        assert names == {"StatusCheckFailed", "StatusCheckFailed_System",
                         "StatusCheckFailed_Instance"}  # fmt: skip
    assert [x for x in cycles[2] if x.name == "VolumeReadOps"]  # EBS: every minute
    by_name = {x.name: x for x in drained}
    cpu = by_name["CPUUtilization"]
    assert len(cpu.samples) == 2 and cpu.value == pytest.approx(sum(cpu.samples) / 2)
    assert cpu.timestamp % 300 == 0 and by_name["EBSReadOps"].value == sum(
        by_name["EBSReadOps"].samples
    )


@pytest.mark.parametrize("mode", ["aws", "spinifex"])
def test_default_shape_works_against_every_endpoint(tmp_path: Path, mode: str) -> None:
    """The default datum shape ("auto") must work against AWS CloudWatch, which takes statistic
    sets, and against Spinifex's CloudWatch, which takes one Value per datum only
    (REFERENCE.md section 7): a refused statistic set is resent as its single value (the
    window's sum for a per-period total) and single values are used from then on, counted,
    with nothing dropped."""
    from tests.strict_endpoint import StrictEndpoint

    window = (int(time.time()) // 300 - 2) * 300
    samples = (1.0, 4.0, 2.0, 8.0, 5.0)
    basic = [
        Datum("Hive/EC2", "NetworkIn", INST, 20.0, "Bytes", float(window + 300 * i), 60, samples)
        for i in range(2)
    ]
    with StrictEndpoint(mode) as ep:  # type: ignore[arg-type]
        spool = Spool(tmp_path, fsync=False)
        spool.open()
        pub = Publisher(make_client("us-east-1", ep.url, 5.0), spool)
        assert pub.datum_shape == "auto"  # the default config's shape
        for d in basic:  # two requests: the second after any fallback
            spool.add([d])
            assert asyncio.run(pub.flush())
        accepted = list(ep.accepted)
        refused = dict(ep.refused)
        spool.close()
    assert pub.stats["datums_sent"] == 2 and not pub.ledger.counts
    if mode == "aws":
        assert [a.statistic_values is not None for a in accepted] == [True, True]
        assert refused == {} and pub.counts["datum_shape_fallbacks"] == 0
    else:
        assert [(a.value, a.statistic_values) for a in accepted] == [(20.0, None)] * 2
        assert refused == {"InvalidParameterValue": 1}  # the first statistic set only
        assert pub.counts["datum_shape_fallbacks"] == 1


def test_fallback_when_a_bad_datum_shares_the_request(tmp_path: Path) -> None:
    """A request that Spinifex refuses for a bad datum as well as for statistic sets: the
    statistic set alone, resent as its single value, lands (and single values are used from
    then on); only the bad datum (a dimension name Spinifex refuses) is dropped, counted."""
    from tests.strict_endpoint import StrictEndpoint

    window = float((int(time.time()) // 300 - 2) * 300)
    basic = Datum("Hive/EC2", "NetworkIn", INST, 20.0, "Bytes", window, 60, (5.0, 15.0))
    bad = Datum("Hive/EC2", "NetworkOut", (("bad-name", "x"),), 1.0, "Bytes", window, 60)
    with StrictEndpoint("spinifex") as ep:
        spool = Spool(tmp_path, fsync=False)
        spool.open()
        pub = Publisher(make_client("us-east-1", ep.url, 5.0), spool)
        spool.add([basic, bad])
        assert asyncio.run(pub.flush())
        accepted = [(a.name, a.value, a.statistic_values) for a in ep.accepted]
        spool.close()
    assert accepted == [("NetworkIn", 20.0, None)]
    assert pub.counts["datum_shape_fallbacks"] == 1 and pub.stats["datums_sent"] == 1
    assert pub.ledger.counts == {"rejected.InvalidParameterValue": 1}
