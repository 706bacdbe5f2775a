"""In-guest metric formulas against recorded real replies (tests/data/qemu-7.2) and the
collectors' emit() on pairs of them: CloudWatch Agent names, units and semantics."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from conftest import recorded

from collectors.blockstats import BlockCounters
from collectors.guest_cpu import CpuSample, GuestCpu, cpu_usage, parse_cpustats, total_of
from collectors.guest_disk import GuestDisk, parse_fsinfo
from collectors.guest_diskio import GuestDiskio, parse_diskstats
from collectors.guest_mem import UNSET, GuestMem, mem_values, parse_guest_stats
from collectors.guest_net import GuestNet, parse_interfaces
from hiveagent.collector import Emitter, VmView
from hiveagent.config import parse_config
from hiveagent.cycle import Replies, VmFacts, qmp_key
from hiveagent.model import VmSpec


def ctx_for(collected: dict[str, object]) -> VmView:
    config = parse_config({"metrics": {"metrics_collected": collected}})
    spec = VmSpec(instance_id="i-0123456789abcdef0", qmp_socket="/x", qga_socket=None,
                  vcpus=2, taps=None, account_id=None, period_s=None, origin="test")  # fmt: skip
    return VmView(spec, config, VmFacts(pid=1), Replies(), Counter())


def by_series(out: Emitter) -> dict[tuple[str, str], float]:
    return {(d.name, ",".join(v for k, v in d.dimensions if k != "InstanceId")): d.value
            for d in out.datums}  # fmt: skip


def test_cpustats_recorded_reply() -> None:
    cpus = parse_cpustats(recorded("qga-guest-get-cpustats"))
    assert sorted(cpus) == [0, 1]
    assert cpus[0].user == 3550 and cpus[1].idle == 27720


def test_cpu_usage_shares_of_the_period() -> None:
    prev = parse_cpustats(recorded("qga-guest-get-cpustats"))
    cur = dict(prev)
    cur[0] = prev[0]._replace(user=prev[0].user + 600, idle=prev[0].idle + 300,
                              iowait=prev[0].iowait + 100, guest=prev[0].guest + 50)  # fmt: skip
    cur[1] = prev[1]._replace(idle=prev[1].idle + 1000)
    u0 = cpu_usage(prev[0], cur[0])
    assert u0 is not None
    assert u0["cpu_usage_user"] == pytest.approx(60.0)
    assert u0["cpu_usage_idle"] == pytest.approx(30.0)
    assert u0["cpu_usage_iowait"] == pytest.approx(10.0)
    assert u0["cpu_usage_guest"] == pytest.approx(5.0)  # inside user, not added to the total
    assert u0["cpu_usage_active"] == pytest.approx(60.0)
    total = cpu_usage(total_of(prev), total_of(cur))
    assert total is not None and total["cpu_usage_user"] == pytest.approx(30.0)
    assert total["cpu_usage_idle"] == pytest.approx(65.0)
    # A reboot (counters back to small values) is not a value.
    assert cpu_usage(cur[0], prev[0]) is None


def test_cpu_collector_total_and_per_cpu() -> None:
    prev = CpuSample(parse_cpustats(recorded("qga-guest-get-cpustats")))
    cur_cpus = dict(prev.cpus)
    cur_cpus[1] = prev.cpus[1]._replace(system=prev.cpus[1].system + 100,
                                        idle=prev.cpus[1].idle + 100)  # fmt: skip
    cur_cpus[0] = prev.cpus[0]._replace(idle=prev.cpus[0].idle + 200)
    cur = CpuSample(cur_cpus)
    ctx = ctx_for({"cpu": {"resources": ["*"], "measurement": ["usage_system", "cpu_usage_idle"]}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestCpu().emit(prev, cur, ctx, out)
    assert by_series(out) == {
        ("cpu_usage_system", "cpu-total"): 25.0, ("cpu_usage_idle", "cpu-total"): 75.0,
        ("cpu_usage_system", "cpu0"): 0.0, ("cpu_usage_idle", "cpu0"): 100.0,
        ("cpu_usage_system", "cpu1"): 50.0, ("cpu_usage_idle", "cpu1"): 50.0,
    }  # fmt: skip
    assert {d.unit for d in out.datums} == {"Percent"}
    # Defaults: only cpu-total (no resources), every measurement; first sample only primes.
    ctx = ctx_for({"cpu": {}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestCpu().emit(None, cur, ctx, out)
    assert out.datums == []
    GuestCpu().emit(prev, cur, ctx, out)
    assert {k[1] for k in by_series(out)} == {"cpu-total"} and len(out.datums) == 11


def test_diskio_recorded_reply_and_deltas() -> None:
    disks = parse_diskstats(recorded("qga-guest-get-diskstats"))
    # The recorded guest wrote 512 x 4 KiB to vdb before capture (see the data README).
    vdb = disks["vdb"].counters
    assert vdb.write_ios == 512 and vdb.write_sectors == 4096
    prev = disks
    cur_disks = dict(disks)
    cur_disks["vdb"] = disks["vdb"]._replace(
        counters=vdb._replace(write_ios=vdb.write_ios + 256,
                              write_sectors=vdb.write_sectors + 2048,
                              total_ticks=vdb.total_ticks + 40),
        gauges=(3,),  # ios-pgr
    )  # fmt: skip
    ctx = ctx_for({"diskio": {"resources": ["vdb"]}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestDiskio().emit(prev, cur_disks, ctx, out)
    got = by_series(out)
    assert got[("diskio_writes", "vdb")] == 256
    assert got[("diskio_write_bytes", "vdb")] == 1024 * 1024
    assert got[("diskio_io_time", "vdb")] == 40
    assert got[("diskio_iops_in_progress", "vdb")] == 3
    assert got[("diskio_reads", "vdb")] == 0
    assert {k[1] for k in got} == {"vdb"}  # resources filter
    units = {d.name: d.unit for d in out.datums}
    assert units["diskio_write_time"] == "Milliseconds" and units["diskio_write_bytes"] == "Bytes"


def test_net_recorded_reply_and_deltas() -> None:
    ifaces = parse_interfaces(recorded("qga-guest-network-get-interfaces"))
    eth0 = ifaces["eth0"].counters
    assert set(ifaces) == {"lo", "eth0"} and eth0.tx_bytes == 692
    cur = dict(ifaces)
    cur["eth0"] = ifaces["eth0"]._replace(
        counters=eth0._replace(tx_packets=eth0.tx_packets + 3, tx_bytes=eth0.tx_bytes + 126)
    )
    ctx = ctx_for({"net": {"resources": ["eth0"]}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestNet().emit(ifaces, cur, ctx, out)
    got = by_series(out)
    assert got[("net_packets_sent", "eth0")] == 3 and got[("net_bytes_sent", "eth0")] == 126
    assert got[("net_bytes_recv", "eth0")] == 0 and len(got) == 8


def test_mem_from_recorded_balloon_stats() -> None:
    s = parse_guest_stats(recorded("qmp-qom-get-balloon0-guest-stats"))
    assert s is not None
    v = mem_values(s)
    assert v["mem_total"] == 213463040 and v["mem_available"] == 172027904
    assert v["mem_used"] == 213463040 - 163909632 - 16703488
    assert v["mem_used_percent"] == pytest.approx(100 * v["mem_used"] / 213463040)
    assert v["mem_available_percent"] == pytest.approx(100 * 172027904 / 213463040)


def test_stale_balloon_stats_are_not_sent() -> None:
    """The balloon's last-update is the host epoch time of the guest's last report. A guest
    that stopped reporting (or a paused VM) leaves it behind: stats older than two of the
    plugin's periods when read are not this period's, so no mem_* is sent (counted); fresh ones
    are sent."""
    reply = recorded("qmp-qom-get-balloon0-guest-stats")
    last = reply["last-update"]
    view = ctx_for({"mem": {}})  # the agent's 60 s interval
    for read_at, sent in ((last + 5, True), (last + 120, True), (last + 121, False)):
        sample = parse_guest_stats(reply, sampled_at=read_at)
        out = Emitter.for_config(view.config, 1.0)
        view.rejected.clear()
        GuestMem().emit(sample, sample, view, out)
        assert bool(out.datums) == sent, read_at - last
        assert view.rejected == (Counter() if sent else Counter({"mem.stale": 1}))
    # A balloon that polls every 300 s has fresh stats every 300 s at best: two of its
    # intervals, not two agent periods, make them stale.
    view.facts = view.facts._replace(balloon_poll_s=300)
    for read_at, sent in ((last + 250, True), (last + 600, True), (last + 601, False)):
        sample = parse_guest_stats(reply, sampled_at=read_at)
        out = Emitter.for_config(view.config, 1.0)
        GuestMem().emit(sample, sample, view, out)
        assert bool(out.datums) == sent, read_at - last


def test_mem_no_data_is_never_a_value() -> None:
    reply = recorded("qmp-qom-get-balloon0-guest-stats")
    assert parse_guest_stats({**reply, "last-update": 0}) is None  # never reported
    unset = copy.deepcopy(reply)
    unset["stats"]["stat-available-memory"] = UNSET
    unset["stats"]["stat-disk-caches"] = UNSET
    s = parse_guest_stats(unset)
    assert s is not None
    v = mem_values(s)
    assert "mem_available" not in v and "mem_used" not in v and "mem_cached" not in v
    assert v["mem_total"] == 213463040 and v["mem_free"] == 163909632
    unset["stats"]["stat-total-memory"] = UNSET
    s = parse_guest_stats(unset)
    assert s is not None and mem_values(s) == {}


def test_guest_caps_and_rejections() -> None:
    rejected: Counter[str] = Counter()
    fields = dict.fromkeys(
        ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), 1
    )
    cpus: list[object] = [{"cpu": i, "type": "linux", **fields} for i in range(10)]
    cpus += [{"cpu": 3, "type": "linux", **fields}, {"cpu": 11, "type": "linux"}]
    cpus += [{"cpu": -1, "type": "linux", **fields}, {"type": "windows"}]
    assert len(parse_cpustats(cpus, 4, rejected)) == 4
    assert rejected == Counter({"cpustats.over_limit": 10})
    rejected.clear()
    assert sorted(parse_cpustats([*cpus[8:], cpus[8]], 10, rejected)) == [3, 8, 9]
    assert rejected == Counter(
        {"cpustats.bad_cpu": 2, "cpustats.bad_counter": 1, "cpustats.not_linux": 1}
    )


def test_volume_idle_time() -> None:
    from collectors.blockstats import idle_time_s

    quiet = BlockCounters(0, 0, rd_operations=0, wr_operations=0, rd_total_time_ns=0,
                          wr_total_time_ns=0)  # fmt: skip
    busy = quiet._replace(wr_operations=4)
    assert idle_time_s(quiet, 60.0, None) == 60.0  # exact: no I/O in the period
    assert idle_time_s(quiet, 60.0, 5_000_000_000) == 60.0
    assert idle_time_s(busy, 60.0, 12_500_000_000) == 12.5  # since the last operation
    assert idle_time_s(busy, 60.0, 90_000_000_000) == 60.0  # capped at the period
    assert idle_time_s(busy, 60.0, None) == 0.0


def test_check_config_warns_on_reserved_namespaces(tmp_path: object) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import REPO

    cfg = Path(str(tmp_path)) / "agent.json"
    cfg.write_text(json.dumps({"hypervisor": {"ec2": {"namespace": "AWS/EC2"}}}))
    r = subprocess.run([sys.executable, "-m", "hiveagent", "check-config", "-c", str(cfg)],
                       cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0
    assert "warning: $.hypervisor.ec2.namespace: 'AWS/EC2' is a reserved namespace" in r.stdout


def test_fsinfo_volume_id_from_the_serial() -> None:
    disk = [{"serial": "vol0123456789abcdef0", "dev": "/dev/vdb"}]
    entry = {"name": "vdb", "mountpoint": "/data", "type": "ext4", "used-bytes": 1,
             "total-bytes": 2, "disk": disk}  # fmt: skip
    [fs] = parse_fsinfo([entry])
    assert fs.volume_id == "vol-0123456789abcdef0"
    ctx = ctx_for({"disk": {}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestDisk().emit(None, [fs], ctx, out)
    assert {dict(d.dimensions)["VolumeId"] for d in out.datums} == {"vol-0123456789abcdef0"}
    # No serial (no udev in the guest), or one that is not a volume: no VolumeId.
    for other in ([], [{"dev": "/dev/vdb"}], [{"serial": "QM00001"}], disk * 2):
        [fs] = parse_fsinfo([{**entry, "disk": other}])
        assert fs.volume_id is None


def test_queue_length_from_timed_stats() -> None:
    """Recorded from QEMU 7.2 with `-drive ...,stats-intervals.0=60,stats-intervals.1=300`
    after one read (tests/data/qemu-7.2/qmp-query-blockstats-timed.json)."""
    from collectors.blockstats import parse_timed_depth, queue_length

    timed = parse_timed_depth(recorded("qmp-query-blockstats-timed"))
    [(device, depths)] = timed.items()
    assert device == "nbd-vol-0123456789abcdef2" and set(depths) == {60, 300}
    d = BlockCounters(0, 0, 0, 0, rd_total_time_ns=30_000_000_000,
                      wr_total_time_ns=30_000_000_000)  # fmt: skip
    assert queue_length(d, 60.0, depths) == pytest.approx(2.1733376442032678e-06)
    assert queue_length(d, 120.0, depths) == pytest.approx(4.358287317491883e-07)  # 300 s
    assert queue_length(d, 600.0, depths) == depths[300]  # none long enough: the longest
    assert queue_length(d, 60.0, None) == 1.0  # Little's law: 60 s queued in a 60 s period
    # Recorded replies without stats-intervals carry an empty timed_stats.
    assert parse_timed_depth(recorded("qmp-query-blockstats")) == {}


def test_vcpus_online() -> None:
    from collectors.guest_vcpus import parse_vcpus

    assert parse_vcpus(recorded("qga-guest-get-vcpus")) == 2
    rejected: Counter[str] = Counter()
    reply = [
        {"logical-id": 0, "online": True},
        {"logical-id": 1, "online": False},
        {"logical-id": 1, "online": True},
        {"logical-id": "2", "online": True},
        "x",
    ]
    assert parse_vcpus(reply, 256, rejected) == 1
    assert rejected == Counter({"vcpus.bad_entry": 3})


def test_guest_disks_map_to_volumes_through_pci() -> None:
    """query-pci and guest-get-disks recorded together from the harness's VM 1 (QEMU 7.2 and
    the test guest: no udev, so no serials, PCI addresses only)."""
    from collectors.guest_disk_map import map_guest_disks
    from hiveagent.qom import parse_query_pci

    pci = parse_query_pci(recorded("qmp-query-pci"))
    assert pci[(0, 4, 0)] == "vdisk-vol-0000000000000b010"
    assert pci[(0, 5, 0)] == "vdisk-vol-0000000000000b011"
    disks = recorded("qga-guest-get-disks")
    assert map_guest_disks(disks, pci, "i-0000000000000a001") == {
        "vda": "vol-0000000000000b010",
        "vdb": "vol-0000000000000b011",
    }


def test_idle_time_from_guest_busy_time() -> None:
    from collectors.blockstats import idle_time_s

    busy = BlockCounters(0, 0, rd_operations=3, wr_operations=4, rd_total_time_ns=0,
                         wr_total_time_ns=0)  # fmt: skip
    assert idle_time_s(busy, 60.0, 1_000_000_000, guest_busy_ms=12_500) == 47.5
    assert idle_time_s(busy, 60.0, None, guest_busy_ms=90_000) == 0.0  # clipped
    no_io = busy._replace(rd_operations=0, wr_operations=0)
    assert idle_time_s(no_io, 60.0, None) == 60.0  # nothing completed, guest unknown: idle
    # Nothing completed but the guest's disk was busy 5 ms: the guest's figure wins.
    assert idle_time_s(no_io, 60.0, None, guest_busy_ms=5) == pytest.approx(59.995)


def test_a_stalled_volume_is_not_idle() -> None:
    """QEMU's counters move when requests complete: three requests stuck in flight for a whole
    60 s period complete nothing, so QEMU alone says idle and an empty queue. The guest's
    /proc/diskstats (Documentation/admin-guide/iostats.rst) counts the disk busy while any
    request is in flight (io_ticks: 60,000 ms) and weights time in queue by the requests in
    flight (3 x 60,000 ms): VolumeIdleTime 0, VolumeQueueLength 3 (iostat's aqu-sz)."""
    from collectors.blockstats import volume_values

    nothing = BlockCounters(0, 0, 0, 0, 0, 0)
    qemu_only = volume_values(nothing, 60.0)
    assert (qemu_only["VolumeIdleTime"], qemu_only["VolumeQueueLength"]) == (60.0, 0.0)
    seen = volume_values(nothing, 60.0, guest_busy_ms=60_000, guest_queue_ms=3 * 60_000)
    assert (seen["VolumeIdleTime"], seen["VolumeQueueLength"]) == (0.0, 3.0)


def block_datums(view: VmView, first: Any, second: Any) -> Emitter:
    """blockstats on two query-blockstats replies that QEMU gave 60 s apart."""
    from collectors.blockstats import BlockSample, BlockStats

    samples: list[BlockSample] = []
    for reply, at in ((first, 1000.0), (second, 1060.0)):
        view.replies = Replies({qmp_key("query-blockstats"): reply}, {}, qmp_at=at)
        samples.append(BlockStats().sample(view, samples[-1] if samples else None))
    out = Emitter.for_config(view.config, 1.0)
    BlockStats().emit(samples[0], samples[1], view, out)
    return out


def test_block_period_is_between_the_replies() -> None:
    """A counter belongs to the moment QEMU answered, not to when a collector got to it (after
    the guest agent exchange): the period of VolumeQueueLength's Little's law is the time
    between the two query-blockstats replies. 30 s of write latency accumulated over a 60 s
    period is an average queue of 0.5, however late the samples were parsed."""
    reply = recorded("qmp-query-blockstats")
    later = copy.deepcopy(reply)
    for entry in later:
        entry["stats"]["wr_total_time_ns"] += 30_000_000_000
        entry["stats"]["wr_operations"] += 1
    out = block_datums(ctx_for({}), reply, later)
    queue = [d.value for d in out.datums if d.name == "VolumeQueueLength"]
    assert queue == [pytest.approx(0.5)] * len(reply)


@pytest.mark.parametrize("spinifex", [True, False])
def test_ebs_and_instance_store_sums(spinifex: bool) -> None:
    """AWS on Nitro: an instance's EBS I/O is EBS* (summed over its volumes), Disk* is its
    instance store only. A Spinifex VM's disks are all volumes, its boot drive `os` included;
    on a generic host a disk not named after a volume is instance store."""
    import dataclasses

    reply = copy.deepcopy(recorded("qmp-query-blockstats"))
    reply[0]["device"], reply[0]["qdev"] = "os", ""  # the boot drive, legacy -drive id=os
    later = copy.deepcopy(reply)
    for i, entry in enumerate(later):
        entry["stats"]["wr_operations"] += 10 * (i + 1)  # os: 10 writes, the volume: 20
        entry["stats"]["wr_bytes"] += 4096 * 10 * (i + 1)
    view = ctx_for({})
    view.spec = dataclasses.replace(view.spec, all_volumes=spinifex)
    out = block_datums(view, reply, later)
    got = {d.name: d.value for d in out.datums if d.dimensions[0][0] == "InstanceId"}
    if spinifex:
        assert (got["EBSWriteOps"], got["EBSWriteBytes"]) == (30, 30 * 4096)
        assert not [n for n in got if n.startswith("Disk")]
    else:
        assert (got["EBSWriteOps"], got["EBSWriteBytes"]) == (20, 20 * 4096)
        assert (got["DiskWriteOps"], got["DiskWriteBytes"]) == (10, 10 * 4096)
    volumes = {d.dimensions[0][1] for d in out.datums if d.dimensions[0][0] == "VolumeId"}
    expected = {"vol-0123456789abcdef1"} | ({f"{view.spec.instance_id}:os"} if spinifex else set())
    assert volumes == expected  # instance store has no EBS volume metrics
