"""Every formula against recorded real QMP/QGA replies and checked-in /proc files."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from conftest import DATA, recorded

from collectors.blockstats import (
    BlockCounters,
    BlockSample,
    device_name,
    parse_blockstats,
    volume_values,
)
from collectors.guest_disk import FsRecord, disk_values, parse_fsinfo
from collectors.process_cpu import ProcCpuSample, cpu_utilization, parse_proc_stat, read_proc_stat
from collectors.status import StatusSample, status_checks
from collectors.tap_net import (
    TapCounters,
    TapSample,
    network_totals,
    parse_net_dev,
    read_net_dev,
    read_tun_ifaces,
)
from hiveagent.model import volume_id
from hiveagent.qom import (
    parse_chardev_filename,
    parse_query_chardev,
    parse_virtserialports,
)
from qga.client import parse_guest_info

PROC = str(DATA / "proc")


def test_blockstats_recorded_devices_and_counters() -> None:
    devices = parse_blockstats(recorded("qmp-query-blockstats"))
    assert set(devices) == {"vdisk-vol-0123456789abcdef0", "vdisk-vol-0123456789abcdef1"}
    scratch = devices["vdisk-vol-0123456789abcdef1"]
    # Two runs of `dd bs=4096 count=256 oflag=direct` in the guest: 512 ops, 2 MiB.
    assert scratch.wr_operations == 512
    assert scratch.wr_bytes == 2 * 1024 * 1024
    assert scratch.wr_total_time_ns == 40029965
    assert volume_id("vdisk-vol-0123456789abcdef1", "i-1") == "vol-0123456789abcdef1"
    assert volume_id("os", "i-0123") == "i-0123:os"


def test_device_name_prefers_device_then_qdev() -> None:
    assert device_name({"device": "os", "qdev": "/machine/peripheral/x/virtio-backend"}) == "os"
    assert (
        device_name({"device": "", "qdev": "/machine/peripheral-anon/device[3]/virtio-backend"})
        == "device[3]"
    )
    assert device_name({"device": ""}) is None


def test_volume_values_from_two_recorded_samples() -> None:
    cur = parse_blockstats(recorded("qmp-query-blockstats"))
    prev = BlockCounters(0, 0, 0, 0, 0, 0)
    scratch = cur["vdisk-vol-0123456789abcdef1"]
    d = BlockCounters._make(c - p for c, p in zip(scratch, prev, strict=True))
    v = volume_values(d, period_s=60.0)
    assert v["VolumeWriteOps"] == 512
    assert v["VolumeWriteBytes"] == 2097152
    assert v["VolumeReadOps"] == 11
    assert v["VolumeTotalWriteTime"] == pytest.approx(0.040029965)
    assert v["VolumeTotalReadTime"] == pytest.approx(0.001682314)
    # Little's law: (40029965 + 1682314) ns busy over 60 s.
    assert v["VolumeQueueLength"] == pytest.approx((40029965 + 1682314) / 60e9)


def test_blockstats_rejects_bad_counters() -> None:
    reply = [
        {
            "device": "a",
            "stats": {
                "rd_bytes": -1,
                "wr_bytes": 0,
                "rd_operations": 0,
                "wr_operations": 0,
                "rd_total_time_ns": 0,
                "wr_total_time_ns": 0,
            },
        },
        {"device": "b", "stats": {"rd_bytes": True}},
    ]
    assert parse_blockstats(reply) == {}
    with pytest.raises(ValueError):
        parse_blockstats({"not": "a list"})


# disk. The reference is gopsutil's disk.Usage (shirou/gopsutil disk/disk_unix.go
# UsageWithContext) and telegraf's used_percent (influxdata/telegraf plugins/inputs/disk/disk.go),
# from statfs(2) of the mount point:
#   Total = Blocks * Bsize, Free = Bavail * Bsize, Used = (Blocks - Bfree) * Bsize,
#   used_percent = Used / (Used + Free) * 100.
# qemu-ga's reply comes from statvfs(3) of the same mount point (qga/commands-posix.c
# build_guest_fsinfo): used-bytes = (f_blocks - f_bfree) * f_frsize, total-bytes = (f_blocks -
# f_bfree + f_bavail) * f_frsize, and from 9.1 total-bytes-privileged = f_blocks * f_frsize.
# Linux's statvfs f_frsize is f_bsize for every filesystem that sets no fragment size (ext4,
# XFS, btrfs, vfat: fs/statfs.c vfs_statfs).
class Statvfs(NamedTuple):
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_frsize: int  # == f_bsize


# The recorded guest's /mnt/data (64 MiB ext4, 1 KiB blocks): `df -B1` printed 57381888 total,
# 5257216 used, 47428608 available (tests/data/qemu-7.2/README.md), i.e. f_blocks = 56037,
# f_bfree = 56037 - 5134, f_bavail = 46317.
RECORDED_FS = Statvfs(f_blocks=56037, f_bfree=56037 - 5134, f_bavail=46317, f_frsize=1024)


def gopsutil_usage(st: Statvfs) -> dict[str, float]:
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    pct = used / (used + free) * 100 if used + free > 0 else 0.0
    return {"disk_total": total, "disk_free": free, "disk_used": used, "disk_used_percent": pct}


def qga_fsinfo(st: Statvfs, privileged: bool) -> dict[str, Any]:
    """One guest-get-fsinfo entry as qemu-ga builds it (9.1+ when `privileged`)."""
    used = st.f_blocks - st.f_bfree
    entry: dict[str, Any] = {"name": "vda", "mountpoint": "/mnt/data", "type": "ext4",
                             "used-bytes": used * st.f_frsize,
                             "total-bytes": (used + st.f_bavail) * st.f_frsize}  # fmt: skip
    if privileged:
        entry["total-bytes-privileged"] = st.f_blocks * st.f_frsize
    return entry


def test_fsinfo_recorded_reply_is_qemu_ga_from_statvfs() -> None:
    """The recorded 7.2 reply is what qemu-ga computes from the statvfs df printed."""
    [entry] = recorded("qga-guest-get-fsinfo")
    built = qga_fsinfo(RECORDED_FS, privileged=False)
    assert (entry["used-bytes"], entry["total-bytes"]) == (built["used-bytes"],
                                                            built["total-bytes"])  # fmt: skip


@pytest.mark.parametrize(
    "st",
    [
        RECORDED_FS,
        Statvfs(f_blocks=262144, f_bfree=200000, f_bavail=186893, f_frsize=4096),  # ext4 -m 5
        Statvfs(f_blocks=1048576, f_bfree=1000000, f_bavail=1000000, f_frsize=4096),  # XFS
        Statvfs(f_blocks=1000, f_bfree=20, f_bavail=0, f_frsize=4096),  # full but for root
    ],
)
def test_disk_is_gopsutils_on_the_same_statvfs(st: Statvfs) -> None:
    """qemu-ga 9.1+: every disk_* is gopsutil's. Before 9.1 (no f_blocks in the reply),
    disk_used, disk_free and disk_used_percent still are, and disk_total is short by exactly
    the space only root may use, (f_bfree - f_bavail) * f_frsize."""
    cwa = gopsutil_usage(st)
    [fs] = parse_fsinfo([qga_fsinfo(st, privileged=True)])
    assert disk_values(fs) == pytest.approx(cwa, rel=1e-15)
    [fs] = parse_fsinfo([qga_fsinfo(st, privileged=False)])
    old = disk_values(fs)
    for name in ("disk_used", "disk_free", "disk_used_percent"):
        assert old[name] == pytest.approx(cwa[name], rel=1e-15), name
    assert cwa["disk_total"] - old["disk_total"] == (st.f_bfree - st.f_bavail) * st.f_frsize


def test_fsinfo_recorded_matches_guest_df() -> None:
    [fs] = parse_fsinfo(recorded("qga-guest-get-fsinfo"))
    assert (fs.mountpoint, fs.device, fs.fstype) == ("/mnt/data", "vda", "ext4")
    values = disk_values(fs)
    # The guest's `df -B1 /mnt/data` printed: total 57381888, used 5257216, available
    # 47428608, Use% 10%.
    assert values["disk_used"] == 5257216
    assert values["disk_free"] == 47428608
    assert values["disk_used_percent"] == pytest.approx(100 * 5257216 / (5257216 + 47428608))
    assert round(values["disk_used_percent"] + 0.5) == 10  # df rounds up
    # qemu-ga 7.2 sends no f_blocks: disk_total is used + available, 4696064 bytes (ext4's 5%
    # reserved blocks, 3276 KiB, plus its 2% delayed-allocation reserve, 1310 KiB) short of
    # df's (and the CloudWatch Agent's) 57381888: 8.2%.
    assert values["disk_total"] == 57381888 - 4696064 == 5257216 + 47428608
    assert (57381888 - values["disk_total"]) / 57381888 == pytest.approx(0.0818, abs=1e-4)


def test_fsinfo_privileged_total_gives_telegraf_semantics() -> None:
    # used 400, f_bavail * f_frsize 500 (total-bytes 900), f_blocks * f_frsize 1000: free is
    # gopsutil's Bavail * Bsize = 900 - 400, not the Bfree * Bsize 600 that root could use.
    fs = FsRecord("/", "vda1", "ext4", used=400, total=900, total_privileged=1000)
    v = disk_values(fs)
    assert v["disk_total"] == 1000 and v["disk_free"] == 500 and v["disk_used"] == 400
    assert v["disk_used_percent"] == pytest.approx(400 / (400 + 500) * 100)
    # telegraf skips a filesystem of size 0; a full one with nothing used is 0%.
    assert disk_values(FsRecord("/z", "vdz", "ext4", 0, 0, 0)) == {}
    assert disk_values(FsRecord("/r", "vdr", "ext4", 0, 0, 4096))["disk_used_percent"] == 0.0


def test_fsinfo_skips_inconsistent_entries() -> None:
    reply = [
        {"mountpoint": "/a", "name": "vda", "type": "ext4", "used-bytes": 10, "total-bytes": 5},
        {"mountpoint": "/b", "name": "vdb", "type": "ext4", "used-bytes": -1, "total-bytes": 5},
        {"mountpoint": "/c", "name": "vdc", "type": "ext4"},
        {"mountpoint": "/d\x07", "name": "vdd", "type": "xfs", "used-bytes": 1, "total-bytes": 2},
    ]
    [fs] = parse_fsinfo(reply)
    assert fs.mountpoint == "/d"  # control character removed


def test_proc_stat_from_tree_and_tricky_comm() -> None:
    assert parse_proc_stat(read_proc_stat(PROC, 4242)) == 1234 + 567
    line = b"77 (CPU 0/KVM) (x)) R 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0\n"
    assert parse_proc_stat(line) == 333


def test_cpu_utilization() -> None:
    prev = ProcCpuSample(pid=1, cpu_ticks=1000, mono_s=100.0)
    cur = ProcCpuSample(pid=1, cpu_ticks=1000 + 300, mono_s=110.0)
    # 3 CPU-seconds in 10 s over 2 vCPUs = 15 %.
    assert cpu_utilization(prev, cur, vcpus=2, clk_tck=100) == pytest.approx(15.0)
    busy = ProcCpuSample(pid=1, cpu_ticks=1000 + 5000, mono_s=110.0)
    assert cpu_utilization(prev, busy, vcpus=2, clk_tck=100) == 100.0  # capped
    restarted = ProcCpuSample(pid=2, cpu_ticks=1300, mono_s=110.0)
    assert cpu_utilization(prev, restarted, vcpus=2, clk_tck=100) is None
    backwards = ProcCpuSample(pid=1, cpu_ticks=10, mono_s=110.0)
    assert cpu_utilization(prev, backwards, vcpus=2, clk_tck=100) is None


def test_net_dev_and_tun_discovery_from_tree() -> None:
    counters = parse_net_dev(read_net_dev(PROC, 4242))
    assert counters["tap0123456789ab"] == TapCounters(
        rx_bytes=123456, rx_packets=789, tx_bytes=654321, tx_packets=987
    )
    assert counters["lo"].rx_bytes == counters["lo"].tx_bytes
    assert read_tun_ifaces(PROC, 4242) == ["tap0123456789ab"]


def test_network_totals_are_reversed_and_summed() -> None:
    prev = TapSample(
        1,
        0.0,
        {
            "tapa": TapCounters(rx_bytes=100, rx_packets=1, tx_bytes=1000, tx_packets=10),
            "tapb": TapCounters(rx_bytes=0, rx_packets=0, tx_bytes=0, tx_packets=0),
        },
    )
    cur = TapSample(
        1,
        60.0,
        {
            "tapa": TapCounters(rx_bytes=150, rx_packets=2, tx_bytes=1500, tx_packets=15),
            "tapb": TapCounters(rx_bytes=7, rx_packets=1, tx_bytes=3, tx_packets=1),
            "tapnew": TapCounters(rx_bytes=999, rx_packets=9, tx_bytes=999, tx_packets=9),
        },
    )
    assert network_totals(prev, cur) == {
        "NetworkIn": 500 + 3,
        "NetworkOut": 50 + 7,
        "NetworkPacketsIn": 5 + 1,
        "NetworkPacketsOut": 1 + 1,
    }
    assert network_totals(prev, TapSample(2, 60.0, cur.taps)) is None  # QEMU restarted


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (StatusSample(True, "running", True, True), (0, 0)),
        (StatusSample(False, None, True, False), (1, 0)),
        (StatusSample(True, "io-error", False, False), (1, 0)),
        (StatusSample(True, "internal-error", False, False), (1, 0)),
        (StatusSample(True, "guest-panicked", False, False), (0, 1)),
        (StatusSample(True, "running", True, False, 1), (0, 0)),  # one miss: not yet
        (StatusSample(True, "running", True, False, 2), (0, 1)),  # two in a row: hung
        (StatusSample(True, "running", False, False), (0, 0)),  # agent never seen: not expected
        (StatusSample(True, "paused", False, False), (0, 0)),
        # AWS checks running instances only: a powered-off guest (QEMU kept by -no-shutdown),
        # one not started yet or migrated away reports no status check at all.
        (StatusSample(True, "shutdown", True, False), None),
        (StatusSample(True, "prelaunch", False, False), None),
        (StatusSample(True, "inmigrate", False, False), None),
        (StatusSample(True, "postmigrate", True, False), None),
        (StatusSample(False, None, True, False), (1, 0)),  # QEMU gone: the host side failed
    ],
)
def test_status_checks(sample: StatusSample, expected: tuple[int, int] | None) -> None:
    assert status_checks(sample) == expected


def test_guest_agent_port_found_in_recorded_replies() -> None:
    assert parse_virtserialports(recorded("qmp-qom-list-peripheral")) == ["qgaport0"]
    assert recorded("qmp-qom-get-qgaport0-name") == "org.qemu.guest_agent.0"
    chardevs = parse_query_chardev(recorded("qmp-query-chardev"))
    qga = chardevs[recorded("qmp-qom-get-qgaport0-chardev")]
    assert qga.socket_path == "/tmp/vmt/qga.sock" and qga.frontend_open
    assert parse_chardev_filename("file") is None


def test_guest_info_recorded() -> None:
    info = parse_guest_info(recorded("qga-guest-info"))
    assert info.version == "7.2.22"
    assert {
        "guest-get-fsinfo",
        "guest-get-diskstats",
        "guest-get-cpustats",
    } <= info.enabled_commands


def test_blocksample_is_frozen_record() -> None:
    s = BlockSample(1, 0.0, {})
    with pytest.raises(AttributeError):
        s.pid = 2  # type: ignore[misc]
