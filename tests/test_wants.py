"""A collector declares its wants once and reads exactly those: the VM session asks them before
any collector runs, and a reply read past them is NotAsked (counted as the collector's bug, never
fetched live). Driven on recorded QEMU 7.2 replies and the checked-in /proc tree, every plugin
on, over enough cycles for the rescans (disk map, taps)."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, recorded
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import REGISTRY
from collectors.blockstats import BlockSample
from collectors.guest_disk_map import DISK_MAP_RESCAN_CYCLES
from hiveagent.collector import Collector, Emitter, VmView
from hiveagent.config import parse_config
from hiveagent.cycle import NotAsked, QmpCall, Replies, VmFacts, qmp_key
from hiveagent.daemon import TICK_OFFSET, seconds_to_next_tick
from hiveagent.model import VmSpec
from hiveagent.scheduler import Scheduler, VmState, interval_warnings, period_stamp
from hiveagent.vm import VmSession
from qga.client import parse_guest_info

RECORDED_QMP = {
    "query-blockstats": "qmp-query-blockstats",
    "query-pci": "qmp-query-pci",
    "qom-get": "qmp-qom-get-balloon0-guest-stats",
}
BALLOON = "/machine/peripheral/balloon0"
CONFIG = parse_config(
    {
        "metrics": {
            "metrics_collected": {
                "cpu": {"resources": ["*"]},
                "disk": {},
                "diskio": {},
                "net": {},
                "mem": {},
            }
        },
        "hypervisor": {"proc_root": str(DATA / "proc")},
    }
)
SPEC = VmSpec("i-0000000000000a001", "/x", None, 2, None, None, None, "test")


class ReadLog(dict[Any, Any]):
    """Replies that remember which were read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[Any] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def facts() -> VmFacts:
    info = parse_guest_info(recorded("qga-guest-info"))
    return VmFacts(pid=4242, run_status="running", vcpus=2, balloon=BALLOON, qga_connected=True,
                   qga_commands=info.enabled_commands, qga_expected=True)  # fmt: skip


def test_collectors_read_exactly_what_they_declared() -> None:
    collectors = [c for c in (cls() for cls in REGISTRY) if c.enabled(CONFIG)]
    assert {c.name for c in collectors} >= {"blockstats", "guest_mem", "guest_diskio"}
    prev: dict[str, Any] = {}
    asked: dict[str, list[tuple[QmpCall | str, ...]]] = {c.name: [] for c in collectors}
    for _ in range(DISK_MAP_RESCAN_CYCLES + 2):
        for collector in collectors:
            before = prev.get(collector.name)
            view = VmView(SPEC, CONFIG, facts(), Replies(), Counter())
            qmp = collector.qmp_wants(view, before)
            qga = collector.qga_wants(view, before)
            view.replies.qmp = ReadLog({call: recorded(RECORDED_QMP[call[0]]) for call in qmp})
            view.replies.qga = ReadLog({c: recorded(f"qga-{c}") for c in qga})
            prev[collector.name] = collector.sample(view, before)  # NotAsked past its wants
            assert view.replies.qmp.read == set(qmp), collector.name  # each want is read
            assert view.replies.qga.read == set(qga), collector.name
            assert not view.rejected, (collector.name, view.rejected)
            asked[collector.name].append((*qmp, *qga))
    # The guest disk map (query-pci + guest-get-disks) on the first sample and again after
    # DISK_MAP_RESCAN_CYCLES samples; the guest's busy time every sample.
    lookups = [i for i, a in enumerate(asked["blockstats"]) if qmp_key("query-pci") in a]
    assert lookups == [0, DISK_MAP_RESCAN_CYCLES]
    assert all("guest-get-diskstats" in a for a in asked["blockstats"])
    sample: BlockSample = prev["blockstats"]
    # qemu-ga's disk addresses against QEMU's PCI map, both recorded from the same VM.
    assert sample.disk_map == {"vda": "vol-0000000000000b010", "vdb": "vol-0000000000000b011"}
    balloon = qmp_key("qom-get", {"path": BALLOON, "property": "guest-stats"})
    assert all(a == (balloon,) for a in asked["guest_mem"])


class Rogue(Collector[int]):
    """Reads a reply it never declared."""

    name = "rogue"
    needs_qmp = False

    def sample(self, vm: VmView, prev: int | None) -> int:
        return len(vm.qmp_reply("query-pci"))

    def emit(self, prev: int | None, cur: int, vm: VmView, out: Emitter) -> None:
        raise AssertionError("not reached")


def test_reading_past_the_wants_is_a_counted_bug() -> None:
    view = VmView(SPEC, CONFIG, facts(), Replies(), Counter())
    with pytest.raises(NotAsked):
        view.qga_reply("guest-get-fsinfo")
    scheduler = Scheduler(CONFIG, [Rogue()])
    state = VmState(VmSession(SPEC, CONFIG))
    out = Emitter.for_config(CONFIG, 1.0)
    assert not scheduler._run_collector(Rogue(), state, view, out)
    assert scheduler.stats["collector_bugs.rogue"] == 1 and state.errors["rogue"] == 1
    assert state.last_error is not None and "query-pci" in state.last_error
    assert out.datums == [] and "rogue" not in state.prev


@pytest.mark.parametrize(
    ("agent_s", "plugin_s", "every", "resolution"),
    [
        (60, 10, 1, 60),  # sampled every 60 s, whatever the plugin asks: standard resolution
        (60, 120, 2, 60),
        (10, 30, 3, 1),  # every 30 s: high resolution (CloudWatch's 1 is for < 60 s)
        (10, 5, 1, 1),
        (30, 90, 3, 60),
    ],
)
def test_plugin_interval_sets_cadence_and_resolution(
    agent_s: int, plugin_s: int, every: int, resolution: int
) -> None:
    """StorageResolution follows how often the data is really sampled (AWS: 1 for metrics
    sampled more often than once a minute, else 60), not the interval the plugin asked for."""
    config = parse_config({
        "agent": {"metrics_collection_interval": agent_s},
        "metrics": {"metrics_collected": {"cpu": {"metrics_collection_interval": plugin_s}}},
    })  # fmt: skip
    [plan] = [p for p in Scheduler(config).plans if p.collector.name == "guest_cpu"]
    assert (plan.every, plan.resolution) == (every, resolution)
    warned = interval_warnings(config)
    assert bool(warned) == (plugin_s < agent_s or plugin_s % agent_s != 0)
    if plugin_s < agent_s:
        assert warned == [
            f"$.metrics.metrics_collected.cpu.metrics_collection_interval: {plugin_s} s is "
            f"shorter than the agent's interval ({agent_s} s): sampled every {agent_s} s, at "
            f"the resolution of {agent_s} s"
        ]


@settings(max_examples=200, deadline=None)
@given(st.floats(1.7e9, 1.9e9), st.sampled_from([1, 10, 60, 300]), st.floats(-0.5, 0.5))
def test_each_cycle_stamps_its_own_period(wall: float, interval: int, jitter: float) -> None:
    """CloudWatch puts a datum in the period holding its timestamp. The daemon ticks just after
    each interval boundary and stamps a cycle's datums with the period it started in, so
    consecutive cycles land in consecutive periods, one each, even when a wake-up is late or
    early by up to half the tick offset (the cycle's own start time put two totals in one
    minute and none in the next when the ticks straddled the boundary)."""
    first = wall + seconds_to_next_tick(wall, interval)  # a tick: just past a boundary
    boundary = math.floor(first / interval) * interval
    assert 0 < first - boundary <= TICK_OFFSET * interval + 1e-6 * interval
    late_or_early = jitter * TICK_OFFSET * interval * 0.99
    second = first + interval + late_or_early
    stamps = [period_stamp(first, interval), period_stamp(second, interval)]
    assert stamps == [boundary, boundary + interval]
    # After a cycle that took 90% of the interval, the next tick is still just past the next
    # boundary; after one that overran it, just past the boundary after that (ticks skipped).
    for took, periods in ((0.9, 1), (1.5, 2)):
        end = first + took * interval
        tick = end + seconds_to_next_tick(end, interval)
        assert tick == pytest.approx(
            boundary + periods * interval + TICK_OFFSET * interval, rel=0, abs=1e-3
        )


def test_the_guest_agent_is_remembered_across_agent_restarts(tmp_path: Any) -> None:
    """A guest agent that answered once is expected for the rest of its QEMU process's life,
    also after the host agent restarts (state_dir), so a guest that hangs while the agent is
    down is flagged; a new QEMU process under the same pid number is not taken for it (its
    start time differs). Real /proc: this test's own process stands for QEMU."""
    config = parse_config({"hypervisor": {"state_dir": str(tmp_path)}})
    first = VmSession(SPEC, config)
    first._forget_process(os.getpid())  # connected to "QEMU": nothing remembered yet
    assert not first.qga_seen
    first.pid, first.qga_seen = os.getpid(), True
    first._remember()
    restarted = VmSession(SPEC, config)  # a new agent process, the same QEMU
    restarted._forget_process(os.getpid())
    assert restarted.qga_seen
    other = VmSession(SPEC, config)  # another process: not the one that answered
    other._forget_process(os.getppid())
    assert not other.qga_seen
    memory = tmp_path / "guest-agents" / SPEC.instance_id
    remembered = memory.read_text()
    memory.write_text(f"{os.getpid()} 1\n")  # the same pid number, another start time
    reused = VmSession(SPEC, config)
    reused._forget_process(os.getpid())
    assert not reused.qga_seen
    memory.write_text(remembered)
    stored = (tmp_path / "guest-agents" / SPEC.instance_id).read_text().split()
    start_time = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert stored == [str(os.getpid()), start_time]  # proc(5): starttime is field 22


def test_a_guest_agent_the_agent_does_not_use_is_never_expected() -> None:
    """With hypervisor.qga.enabled false the guest agent is not contacted, so its silence is
    no instance failure, even for a VM whose guest agent answered before (remembered)."""
    for enabled, expected in ((True, True), (False, False)):
        config = parse_config({"hypervisor": {"qga": {"enabled": enabled}}})
        session = VmSession(SPEC, config)
        session.qga_seen = True
        assert session.guest_agent_expected("running") is expected
        assert not session.guest_agent_expected("paused")
    session.qga_seen, session.qga_port_open = False, True  # qemu-ga holds its port open
    session.config = parse_config({})
    assert session.guest_agent_expected("running")
