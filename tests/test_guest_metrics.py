"""In-guest metric formulas against recorded real replies (tests/data/qemu-7.2) and the
collectors' emit() on pairs of them: CloudWatch Agent names, units and semantics."""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import recorded

from collectors.blockstats import BlockCounters
from collectors.guest_cpu import (
    TIME_METRICS,
    USAGE_METRICS,
    CpuSample,
    GuestCpu,
    cpu_times,
    cpu_usage,
    parse_cpustats,
)
from collectors.guest_devices import resource_filter
from collectors.guest_disk import GuestDisk, parse_fsinfo
from collectors.guest_diskio import GuestDiskio, parse_diskstats
from collectors.guest_mem import UNSET, GuestMem, mem_values, parse_guest_stats
from collectors.guest_net import GuestNet, is_loopback, parse_interfaces
from hiveagent.collector import Collector, Emitter, VmView
from hiveagent.config import catalog_measurements, parse_config
from hiveagent.cycle import Replies, VmFacts, qmp_key
from hiveagent.model import VmSpec
from hiveagent.vm import HOST_NAME_REFRESH_CYCLES, CyclePlan, VmSession, parse_host_name


def ctx_for(
    collected: dict[str, object], host: str | None = None, **sections: dict[str, Any]
) -> VmView:
    """A VM with `collected` as metrics_collected, `sections` (agent=..., metrics=...) merged
    in, and `host` (default HOST) as its guest's host name."""
    doc: dict[str, Any] = {k: dict(v) for k, v in sections.items()}
    if collected:  # no in-guest plugin: no metrics_collected (the CloudWatch Agent refuses {})
        doc.setdefault("metrics", {})["metrics_collected"] = collected
    config = parse_config(doc)
    spec = VmSpec(instance_id="i-0123456789abcdef0", qmp_socket="/x", qga_socket=None,
                  vcpus=2, taps=None, account_id=None, period_s=None, origin="test")  # fmt: skip
    facts = VmFacts(pid=1, host_name=HOST if host is None else host)
    return VmView(spec, config, facts, Replies(), Counter())


HOST = "guest-1"  # the guest's host name, as guest-get-host-name gave it


def by_series(out: Emitter) -> dict[tuple[str, str], float]:
    """(metric, the values of its plugin's own tags) -> value; every datum carries `host`."""
    assert all(("host", HOST) in d.dimensions for d in out.datums)
    return {(d.name, ",".join(v for k, v in d.dimensions if k != "host")): d.value
            for d in out.datums}  # fmt: skip


def collect(
    collector: Collector[Any], collected: dict[str, object], command: str, *replies: Any
) -> tuple[Emitter, VmView]:
    """`collector` through its sample() on each reply in turn (one per cycle) and its emit()
    on the last two, as the scheduler runs it: the datums of the last period."""
    view = ctx_for(collected)
    prev: Any = None
    out = Emitter.for_config(view.config, 1.0)
    for reply in replies:
        view.replies = Replies(qga={command: reply})
        cur = collector.sample(view, prev)
        out = Emitter.for_config(view.config, 1.0)
        collector.emit(prev, cur, view, out)
        prev = cur
    return out, view


# ---------------------------------------------------------------------------------------------
# cpu. The reference is telegraf's cpu input transcribed from its Go source, fed the same
# /proc/stat text the guest agent reads:
# - shirou/gopsutil cpu/cpu_linux.go parseStatLine: each column (USER_HZ ticks) / ClocksPerSec
#   (100) = seconds; "cpu" (the all-CPU line) becomes "cpu-total";
# - influxdata/telegraf plugins/inputs/cpu/cpu.go Gather, totalCPUTime, activeCPUTime, with
#   collect_cpu_time and report_active on (the CloudWatch Agent turns them on when a time_* /
#   *active measurement is asked for: translator/.../cpu/ruleCollectCpuTime.go,
#   ruleReportActive.go).
# qemu-ga gets its reply from the same lines: qga/commands-linux.c qmp_guest_get_cpustats skips
# the all-CPU line and reports each column * 1000 / sysconf(_SC_CLK_TCK) (ms).
CLK_TCK = 100  # Linux's USER_HZ
STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest",
                "guest_nice")  # fmt: skip


def qga_cpustats(proc_stat: str) -> list[dict[str, Any]]:
    """The guest-get-cpustats reply qemu-ga builds from this /proc/stat text."""
    reply = []
    for line in proc_stat.splitlines():
        name, *cols = line.split()
        if not name.startswith("cpu") or name == "cpu":  # "drop cpu 1 2 3 ..., get cpuX only"
            continue
        entry: dict[str, Any] = {"type": "linux", "cpu": int(name[3:])}
        for qga_name, col in zip((*STAT_COLUMNS[:-1], "guestnice"), cols, strict=True):
            entry[qga_name] = int(col) * 1000 // CLK_TCK
        reply.append(entry)
    return reply


def gopsutil_times(proc_stat: str) -> dict[str, dict[str, float]]:
    """gopsutil's TimesStat per CPU label, from parseStatLine."""
    out = {}
    for line in proc_stat.splitlines():
        name, *cols = line.split()
        label = "cpu-total" if name == "cpu" else name
        out[label] = {f: float(c) / CLK_TCK for f, c in zip(STAT_COLUMNS, cols, strict=True)}
    return out


def telegraf_cpu(last: dict[str, float] | None, cts: dict[str, float]) -> dict[str, float]:
    """The fields telegraf's cpu.go Gather adds for one CPU (cpu_ prefixed, as the CloudWatch
    Agent names them)."""

    def total_cpu_time(t: dict[str, float]) -> float:  # totalCPUTime
        return (t["user"] + t["system"] + t["nice"] + t["iowait"] + t["irq"] + t["softirq"]
                + t["steal"] + t["idle"])  # fmt: skip

    def active_cpu_time(t: dict[str, float]) -> float:  # activeCPUTime
        return total_cpu_time(t) - t["idle"]

    fields = {f"time_{f}": cts[f] for f in STAT_COLUMNS}  # CollectCPUTime
    fields["time_active"] = active_cpu_time(cts)  # ReportActive
    total_delta = total_cpu_time(cts) - total_cpu_time(last) if last else 0.0
    if last is not None and total_delta > 0:  # < 0: error; == 0: continue
        d = {f: cts[f] - last[f] for f in STAT_COLUMNS}
        fields |= {
            "usage_user": 100 * (d["user"] - d["guest"]) / total_delta,
            "usage_system": 100 * d["system"] / total_delta,
            "usage_idle": 100 * d["idle"] / total_delta,
            "usage_nice": 100 * (d["nice"] - d["guest_nice"]) / total_delta,
            "usage_iowait": 100 * d["iowait"] / total_delta,
            "usage_irq": 100 * d["irq"] / total_delta,
            "usage_softirq": 100 * d["softirq"] / total_delta,
            "usage_steal": 100 * d["steal"] / total_delta,
            "usage_guest": 100 * d["guest"] / total_delta,
            "usage_guest_nice": 100 * d["guest_nice"] / total_delta,
            "usage_active": 100 * (active_cpu_time(cts) - active_cpu_time(last)) / total_delta,
        }
    return {f"cpu_{k}": v for k, v in fields.items()}


def proc_stat(*cpus: tuple[int, ...]) -> str:
    """/proc/stat's CPU lines for these per-CPU columns; the all-CPU line is their sum, which
    is what the kernel prints when each CPU's nanoseconds are whole ticks."""
    total = [sum(col) for col in zip(*cpus, strict=True)]
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{n} " + " ".join(map(str, c)) for n, c in enumerate(cpus)]
    return "\n".join(lines)


#              user  nice system  idle iowait irq softirq steal guest guest_nice
CPU0_T0 = (10000, 200, 3000, 50000, 400, 50, 60, 70, 500, 30)
CPU1_T0 = (8000, 100, 2500, 60000, 300, 40, 30, 20, 0, 0)
# 10 s later (1000 ticks per CPU): cpu0 ran a nested guest for 1.2 s (inside its 3 s of user)
# and a niced one for 0.15 s (inside its 0.4 s of nice); cpu1 mostly idled.
CPU0_T1 = (10300, 240, 3100, 50500, 430, 55, 66, 89, 620, 45)
CPU1_T1 = (8050, 100, 2550, 60880, 320, 40, 30, 20, 0, 0)
# 10 s later again: the kernel's iowait of cpu0 went back by 2 ticks (proc(5): "the iowait
# field may decrease"); telegraf does not check single fields.
CPU0_T2 = (10500, 240, 3300, 51090, 428, 55, 66, 91, 620, 45)
CPU1_T2 = (8100, 100, 2600, 61780, 320, 40, 30, 30, 0, 0)
STAT_T0, STAT_T1, STAT_T2 = (proc_stat(CPU0_T0, CPU1_T0), proc_stat(CPU0_T1, CPU1_T1),
                             proc_stat(CPU0_T2, CPU1_T2))  # fmt: skip


def telegraf_cpu_gather(last_text: str | None, text: str) -> dict[tuple[str, str], float]:
    """(metric, cpu) -> value for one telegraf gather with percpu and totalcpu."""
    last = gopsutil_times(last_text) if last_text else {}
    out = {}
    for label, cts in gopsutil_times(text).items():
        for name, value in telegraf_cpu(last.get(label), cts).items():
            out[(name, label)] = value
    return out


@pytest.mark.parametrize(
    ("before", "after"), [(None, STAT_T0), (STAT_T0, STAT_T1), (STAT_T1, STAT_T2)],
    ids=["first-sample", "guest-time", "iowait-backwards"],
)  # fmt: skip
def test_cpu_is_telegrafs_on_the_same_proc_stat(before: str | None, after: str) -> None:
    """Every cpu_usage_* and cpu_time_* datum, per CPU and cpu-total, is what telegraf computes
    from the same /proc/stat text, and there is one for each field telegraf sends."""
    replies = [qga_cpustats(t) for t in (before, after) if t is not None]
    every = catalog_measurements("cpu")  # time_* too: sent only when named
    plugin = {"resources": ["*"], "measurement": list(every)}
    out, _ = collect(GuestCpu(), {"cpu": plugin}, "guest-get-cpustats", *replies)
    got = by_series(out)
    expected = telegraf_cpu_gather(before, after)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-9), key
    units = {d.name: d.unit for d in out.datums}
    assert {units[n] for n in units if n.startswith("cpu_time_")} == {"None"}
    assert {units[n] for n in units if n.startswith("cpu_usage_")} <= {"Percent"}


def test_cpu_usage_worked_by_hand() -> None:
    """The same period of cpu0 as above, worked out from telegraf's definitions (cpu.go):
    total = user+system+nice+iowait+irq+softirq+steal+idle grew by 1000 ticks (10 s)."""
    prev = parse_cpustats(qga_cpustats(STAT_T0))[0]
    cur = parse_cpustats(qga_cpustats(STAT_T1))[0]
    u = cpu_usage(prev, cur)
    assert u is not None
    # d user 300 includes d guest 120: usage_user = 100 * (300 - 120) / 1000
    assert u["cpu_usage_user"] == pytest.approx(18.0)
    assert u["cpu_usage_guest"] == pytest.approx(12.0)  # 120 / 1000, not added to the total
    # d nice 40 includes d guest_nice 15: usage_nice = 100 * (40 - 15) / 1000
    assert u["cpu_usage_nice"] == pytest.approx(2.5)
    assert u["cpu_usage_guest_nice"] == pytest.approx(1.5)
    assert u["cpu_usage_idle"] == pytest.approx(50.0)
    assert u["cpu_usage_iowait"] == pytest.approx(3.0)
    # active = total - idle: 100 * (1000 - 500) / 1000; iowait counts as active (100 - idle -
    # iowait would be 47)
    assert u["cpu_usage_active"] == pytest.approx(50.0)
    t = cpu_times(cur)
    assert t["cpu_time_user"] == pytest.approx(103.0)  # 10300 ticks / 100, guest included
    assert t["cpu_time_active"] == pytest.approx((10300 + 3100 + 240 + 430 + 55 + 66 + 89) / 100)
    # The guest rebooted (the total went backwards), or no time passed: no usage.
    assert cpu_usage(cur, prev) is None
    assert cpu_usage(cur, cur) is None


def test_cpustats_recorded_reply() -> None:
    cpus = parse_cpustats(recorded("qga-guest-get-cpustats"))
    assert sorted(cpus) == [0, 1]
    assert cpus[0].user == 3550 and cpus[1].idle == 27720
    # qemu-ga's milliseconds are ticks * 1000 / USER_HZ (100): multiples of 10.
    assert all(v % 10 == 0 for t in cpus.values() for v in t)


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
    # cpu-total: d system 100, d idle 300 of a total of 400
    assert by_series(out) == {
        ("cpu_usage_system", "cpu-total"): 25.0, ("cpu_usage_idle", "cpu-total"): 75.0,
        ("cpu_usage_system", "cpu0"): 0.0, ("cpu_usage_idle", "cpu0"): 100.0,
        ("cpu_usage_system", "cpu1"): 50.0, ("cpu_usage_idle", "cpu1"): 50.0,
    }  # fmt: skip
    assert {d.unit for d in out.datums} == {"Percent"}
    # Defaults: only cpu-total (no resources), every usage_* (time_* only when named, as the
    # CloudWatch Agent's collect_cpu_time). Usage needs two samples.
    ctx = ctx_for({"cpu": {}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestCpu().emit(None, cur, ctx, out)
    assert by_series(out) == {}
    out = Emitter.for_config(ctx.config, 1.0)
    GuestCpu().emit(prev, cur, ctx, out)
    assert {k[1] for k in by_series(out)} == {"cpu-total"}
    assert {k[0] for k in by_series(out)} == set(USAGE_METRICS)
    # time_* named: the first sample has the cumulative time_* already (telegraf adds them on
    # every gather).
    ctx = ctx_for({"cpu": {"measurement": [*TIME_METRICS, *USAGE_METRICS]}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestCpu().emit(None, cur, ctx, out)
    first = by_series(out)
    assert {k[0] for k in first} == set(TIME_METRICS)
    assert first[("cpu_time_idle", "cpu-total")] == (27720 + 21780 + 300) / 1000
    # resources are glob patterns on cpuN (telegraf's filter syntax)
    ctx = ctx_for({"cpu": {"resources": ["cpu[1-9]"], "totalcpu": False,
                           "measurement": ["usage_idle"]}})  # fmt: skip
    out = Emitter.for_config(ctx.config, 1.0)
    GuestCpu().emit(prev, cur, ctx, out)
    assert by_series(out) == {("cpu_usage_idle", "cpu1"): 50.0}


# ---------------------------------------------------------------------------------------------
# diskio. The reference: gopsutil disk/disk_linux.go IOCountersWithContext on /proc/diskstats
# (a device whose counters are all 0 is skipped; bytes = sectors * 512), the fields telegraf's
# plugins/inputs/diskio/diskio.go adds, and the CloudWatch Agent's cumulativetodelta processor
# (translator/translate/otel/processor/cumulativetodeltaprocessor/translator.go: every diskio
# field becomes a delta except iops_in_progress; a series' first value is dropped). qemu-ga's
# reply comes from the same lines (qga/commands-linux.c guest_get_diskstats).
DISKSTATS_COLUMNS = ("read-ios", "read-merges", "read-sectors", "read-ticks", "write-ios",
                     "write-merges", "write-sectors", "write-ticks", "ios-pgr", "total-ticks",
                     "weight-ticks")  # fmt: skip


def qga_diskstats(text: str) -> list[dict[str, Any]]:
    reply = []
    for line in text.splitlines():
        major, minor, name, *cols = line.split()
        stats = dict(zip(DISKSTATS_COLUMNS, map(int, cols), strict=True))
        reply.append({"name": name, "major": int(major), "minor": int(minor), "stats": stats})
    return reply


def telegraf_filter(patterns: list[str]) -> Any:
    """telegraf's filter.Compile for the simple patterns used here: exact names unless one
    holds *, ? or [, then globs (fnmatch agrees with gobwas/glob on *, ? and [...])."""
    if any(ch in p for p in patterns for ch in "*?["):
        return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)
    return lambda name: name in patterns


def gopsutil_io_counters(text: str, names: tuple[str, ...] = ()) -> dict[str, dict[str, int]]:
    out = {}
    for line in text.splitlines():
        fields = line.split()
        name = fields[2]
        if names and name not in [n.rsplit("/", 1)[-1] for n in names]:  # filepath.Base
            continue
        v = list(map(int, fields[3:14]))
        d = {"ReadCount": v[0], "MergedReadCount": v[1], "ReadBytes": v[2] * 512,
             "ReadTime": v[3], "WriteCount": v[4], "MergedWriteCount": v[5],
             "WriteBytes": v[6] * 512, "WriteTime": v[7], "IopsInProgress": v[8],
             "IoTime": v[9], "WeightedIO": v[10]}  # fmt: skip
        if not any(d.values()):  # d == empty
            continue
        out[name] = d
    return out


def cwa_diskio(before: str, after: str, devices: list[str]) -> dict[Any, float]:
    """telegraf's diskio with `devices` (none: all): exact names go to gopsutil (by basename),
    a glob list filters gopsutil's devices."""
    glob = any(ch in d for d in devices for ch in "*?[")
    names = () if glob else tuple(devices)
    wanted = telegraf_filter(devices) if glob else (lambda name: True)
    fields = {"reads": "ReadCount", "writes": "WriteCount", "read_bytes": "ReadBytes",
              "write_bytes": "WriteBytes", "read_time": "ReadTime", "write_time": "WriteTime",
              "io_time": "IoTime"}  # fmt: skip
    last, cur = gopsutil_io_counters(before, names), gopsutil_io_counters(after, names)
    out: dict[Any, float] = {}
    for name, io in cur.items():
        if not wanted(name) or name not in last:
            continue  # cumulativetodelta: the first value only starts the series
        for field, key in fields.items():
            out[(f"diskio_{field}", name)] = io[key] - last[name][key]
        out[("diskio_iops_in_progress", name)] = io["IopsInProgress"]  # excluded: as sampled
    return out


DISKSTATS_T0 = """\
 254       0 vda 14 0 46 24 15 8 10276 63 0 64 101 0 0 0 0 3 13
 254      16 vdb 11 0 1048 5 512 0 4096 167 0 188 172 0 0 0 0 0 0
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"""
DISKSTATS_T1 = """\
 254       0 vda 14 0 46 24 17 9 10300 70 0 71 110 0 0 0 0 4 15
 254      16 vdb 139 0 2072 40 768 0 6144 260 3 290 420 0 0 0 0 0 0
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"""


def qga_diskstats_text(text: str) -> list[dict[str, Any]]:
    """qemu-ga also reads the discard and flush columns (kernel 4.18+ / 5.5+)."""
    reply = qga_diskstats("\n".join(" ".join(line.split()[:14]) for line in text.splitlines()))
    for entry, line in zip(reply, text.splitlines(), strict=True):
        extra = list(map(int, line.split()[14:]))
        entry["stats"] |= dict(zip(("discard-ios", "discard-merges", "discard-sectors",
                                    "discard-ticks", "flush-ios", "flush-ticks"), extra,
                                   strict=True))  # fmt: skip
    return reply


@pytest.mark.parametrize("resources", [["*"], ["vdb"], ["/dev/vdb"], ["vd*"], ["loop0", "vdb"]])
def test_diskio_is_the_cloudwatch_agents_on_the_same_diskstats(resources: list[str]) -> None:
    replies = [qga_diskstats_text(t) for t in (DISKSTATS_T0, DISKSTATS_T1)]
    out, _ = collect(GuestDiskio(), {"diskio": {"resources": resources}},
                     "guest-get-diskstats", *replies)  # fmt: skip
    devices = [] if "*" in resources else resources  # the CloudWatch Agent's translator
    expected = cwa_diskio(DISKSTATS_T0, DISKSTATS_T1, devices)
    assert by_series(out) == expected
    # 128 reads of 8 sectors, 256 writes of 8 sectors on vdb; loop0 (all 0) never reported
    assert expected[("diskio_read_bytes", "vdb")] == 128 * 4096
    assert expected[("diskio_writes", "vdb")] == 256
    assert not [k for k in expected if k[1] == "loop0"]
    assert {d.name: d.unit for d in out.datums}["diskio_io_time"] == "Milliseconds"


def test_diskio_recorded_reply() -> None:
    disks = parse_diskstats(recorded("qga-guest-get-diskstats"))
    # The recorded guest wrote 512 x 4 KiB to vdb before capture (see the data README).
    vdb = disks["vdb"].counters
    assert vdb.write_ios == 512 and vdb.write_sectors == 4096
    assert disks["vdb"].gauges == (0,)  # ios-pgr


# ---------------------------------------------------------------------------------------------
# net. The reference: gopsutil net/net_linux.go IOCountersByFile on /proc/net/dev (bytes,
# packets, errs, drop of each direction), telegraf's plugins/inputs/net/net.go Gather (with no
# `interfaces`, an interface that is loopback or not up is skipped; a listed one is matched by
# filter.Compile), and the CloudWatch Agent's cumulativetodelta. qemu-ga reads the same file
# (qga/commands-posix.c guest_get_network_stats) but only for an interface it found an address
# on; it reports no flags.
NET_DEV = {  # interface: (flags, addresses, rx bytes/packets/errs/drop, tx ...) at t0, t1
    "lo": ({"up", "loopback"}, ["127.0.0.1", "::1"], (500, 5, 0, 0, 500, 5, 0, 0),
           (900, 9, 0, 0, 900, 9, 0, 0)),
    "eth0": ({"up"}, ["10.0.2.15", "fe80::5054:ff:fe12:3456"], (110, 1, 0, 0, 692, 8, 0, 0),
             (1110, 11, 1, 2, 818, 11, 0, 1)),
    "eth1": (set(), [], (0, 0, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 0, 0)),  # down, no address
}  # fmt: skip
NET_FIELDS = ("rx-bytes", "rx-packets", "rx-errs", "rx-dropped", "tx-bytes", "tx-packets",
              "tx-errs", "tx-dropped")  # fmt: skip


def qga_interfaces(table: dict[str, Any], t: int) -> list[dict[str, Any]]:
    reply = []
    for name, (_flags, addresses, *samples) in table.items():
        entry: dict[str, Any] = {"name": name, "hardware-address": "52:54:00:12:34:56"}
        if addresses:
            entry["ip-addresses"] = [
                {"ip-address": a, "ip-address-type": "ipv6" if ":" in a else "ipv4",
                 "prefix": 64} for a in addresses]  # fmt: skip
            entry["statistics"] = dict(zip(NET_FIELDS, samples[t], strict=True))
        reply.append(entry)
    return reply


def cwa_net(table: dict[str, Any], interfaces: list[str]) -> dict[Any, float]:
    names = {"bytes_recv": 0, "packets_recv": 1, "err_in": 2, "drop_in": 3, "bytes_sent": 4,
             "packets_sent": 5, "err_out": 6, "drop_out": 7}  # fmt: skip
    out: dict[Any, float] = {}
    for name, (flags, _addresses, t0, t1) in table.items():
        if interfaces:
            if not telegraf_filter(interfaces)(name):
                continue
        elif "loopback" in flags or "up" not in flags:
            continue
        for field, i in names.items():
            out[(f"net_{field}", name)] = t1[i] - t0[i]
    return out


@pytest.mark.parametrize("resources", [["*"], ["eth0"], ["eth*"], ["lo", "eth0"]])
def test_net_is_the_cloudwatch_agents_on_the_same_net_dev(resources: list[str]) -> None:
    replies = [qga_interfaces(NET_DEV, t) for t in (0, 1)]
    out, _ = collect(GuestNet(), {"net": {"resources": resources}},
                     "guest-network-get-interfaces", *replies)  # fmt: skip
    interfaces = [] if "*" in resources else resources  # the CloudWatch Agent's translator
    expected = cwa_net(NET_DEV, interfaces)
    # eth1 has no address, so qemu-ga gives no counters for it: listed (eth*), telegraf reports
    # its zeros, which cannot be done here (collectors/guest_net.py).
    unreportable = {k for k in expected if k[1] == "eth1"}
    assert bool(unreportable) == (resources == ["eth*"])
    assert by_series(out) == {k: v for k, v in expected.items() if k not in unreportable}
    assert ("lo" in {k[1] for k in by_series(out)}) == ("lo" in resources)


def test_net_where_up_is_unknowable() -> None:
    """qemu-ga says neither "up" nor "loopback" (module docstring of guest_net): an interface
    that is down but keeps a static IPv4 address is reported (with its zero deltas) where
    telegraf skips it, and one that is up without any address cannot be reported at all."""
    table = {
        "eth2": (set(), ["192.0.2.7"], (0,) * 8, (0,) * 8),  # down, address kept
        "bond0p": ({"up"}, [], (10, 1, 0, 0, 10, 1, 0, 0), (20, 2, 0, 0, 20, 2, 0, 0)),
    }
    replies = [qga_interfaces(table, t) for t in (0, 1)]
    out, _ = collect(GuestNet(), {"net": {}}, "guest-network-get-interfaces", *replies)
    got = by_series(out)
    assert {k[1] for k in cwa_net(table, [])} == {"bond0p"}  # telegraf: up ones only
    assert {k[1] for k in got} == {"eth2"} and set(got.values()) == {0}


def test_net_recorded_reply() -> None:
    ifaces = parse_interfaces(recorded("qga-guest-network-get-interfaces"))
    assert set(ifaces) == {"lo", "eth0"} and ifaces["eth0"].counters.tx_bytes == 692
    # As the collector reads it (resources "*"): loopback skipped, as telegraf does.
    default = parse_interfaces(recorded("qga-guest-network-get-interfaces"), as_plugin=True)
    assert set(default) == {"eth0"}
    listed = parse_interfaces(recorded("qga-guest-network-get-interfaces"),
                              wanted=lambda name: name == "lo", as_plugin=True)  # fmt: skip
    assert set(listed) == {"lo"}


def test_net_loopback_rule() -> None:
    assert is_loopback({"name": "lo"})
    windows = {"name": "Loopback Pseudo-Interface 1",
               "ip-addresses": [{"ip-address": "127.0.0.1"}, {"ip-address": "::1"}]}  # fmt: skip
    assert is_loopback(windows)
    assert not is_loopback({"name": "eth0", "ip-addresses": [{"ip-address": "10.0.2.15"}]})
    assert not is_loopback({"name": "tun0", "ip-addresses": []})
    assert not is_loopback({"name": "x", "ip-addresses": [{"ip-address": "not an address"}]})


@pytest.mark.parametrize(
    ("patterns", "name", "matches"),
    [
        # telegraf filter/filter_test.go TestCompile
        (["cpu"], "cpu", True), (["cpu"], "cpu0", False), (["cpu*"], "cpu", True),
        (["cpu*"], "cpu0", True), (["cpu*"], "mem", False), (["cpu", "mem"], "mem", True),
        (["cpu", "mem", "net*"], "cpu0", False), (["cpu", "mem", "net*"], "network", True),
        # gobwas/glob syntax
        (["eth?"], "eth0", True), (["eth?"], "eth10", False), (["vd[a-c]"], "vdb", True),
        (["vd[!a-c]"], "vdb", False), (["vd[!a-c]"], "vdd", True), (["vd[ab]"], "vdb", True),
        (["{eth,ens}*"], "ens3", True), (["{eth,ens}*"], "wlan0", False),
        (["eth\\*", "x*"], "eth*", True), (["eth\\*", "x*"], "eth0", False),
        # no *, ? or [ in the list: every entry is an exact name ({ is not special then)
        (["{eth,ens}0"], "eth0", False), (["{eth,ens}0"], "{eth,ens}0", True),
        (["eth.0"], "eth10", False),
    ],
)  # fmt: skip
def test_resources_match_as_telegrafs_filter(patterns: list[str], name: str, matches: bool) -> None:
    wanted = resource_filter(tuple(patterns))
    assert wanted is not None and wanted(name) is matches


def test_resources_all_and_bad_patterns() -> None:
    assert resource_filter(("*",)) is None and resource_filter(()) is None
    assert resource_filter(("eth0", "*")) is None
    assert resource_filter(("/dev/vdb",), basename=True)("vdb")  # type: ignore[misc]
    for bad in ("eth[0", "{eth,ens", "eth\\", "vd[a-b"):
        with pytest.raises(ValueError):
            resource_filter((bad, "x*"))
    # telegraf refuses to compile the list and reports nothing: here too, counted per cycle.
    replies = [qga_interfaces(NET_DEV, t) for t in (0, 1)]
    out, view = collect(GuestNet(), {"net": {"resources": ["eth[0"]}},
                        "guest-network-get-interfaces", *replies)  # fmt: skip
    assert out.datums == [] and view.rejected["interfaces.bad_resource_pattern"] == 2


# ---------------------------------------------------------------------------------------------
# mem. The reference: gopsutil mem/mem_linux.go fillFromMeminfoWithContext as the CloudWatch
# Agent builds it (gopsutil v3.24.5 / v4.25.3, go.mod of aws/amazon-cloudwatch-agent):
# Cached += SReclaimable; Used = Total - Free - Buffers - Cached; and telegraf's
# plugins/inputs/mem/mem.go used_percent = 100 * Used / Total, available_percent = 100 *
# Available / Total. The balloon's figures come from the same kernel counters
# (drivers/virtio/virtio_balloon.c update_balloon_stats): MEMTOT = MemTotal, MEMFREE = MemFree,
# AVAIL = MemAvailable, CACHES = NR_FILE_PAGES = Cached + Buffers + SwapCached (fs/proc/
# meminfo.c: Cached = NR_FILE_PAGES - SwapCached - Buffers).
MEMINFO_KIB = {
    "MemTotal": 2015704,
    "MemFree": 1210332,
    "MemAvailable": 1601020,
    "Buffers": 28160,
    "Cached": 402212,
    "SwapCached": 1024,
    "SReclaimable": 51600,
}


def gopsutil_virtual_memory(m: dict[str, int]) -> dict[str, float]:
    kib = {k: v * 1024 for k, v in m.items()}
    cached = kib["Cached"] + kib["SReclaimable"]
    used = kib["MemTotal"] - kib["MemFree"] - kib["Buffers"] - cached
    return {"mem_total": kib["MemTotal"], "mem_free": kib["MemFree"],
            "mem_available": kib["MemAvailable"], "mem_cached": cached, "mem_used": used,
            "mem_used_percent": 100 * used / kib["MemTotal"],
            "mem_available_percent": 100 * kib["MemAvailable"] / kib["MemTotal"]}  # fmt: skip


def balloon_stats(m: dict[str, int]) -> dict[str, Any]:
    kib = {k: v * 1024 for k, v in m.items()}
    stats = {"stat-total-memory": kib["MemTotal"], "stat-free-memory": kib["MemFree"],
             "stat-available-memory": kib["MemAvailable"],
             "stat-disk-caches": kib["Cached"] + kib["Buffers"] + kib["SwapCached"]}  # fmt: skip
    return {"stats": stats, "last-update": 1795424527}


def test_mem_against_the_cloudwatch_agents_on_the_same_meminfo() -> None:
    """total, free, available and available_percent are exact; cached and used differ by what
    the balloon does not report, exactly as documented (collectors/guest_mem.py)."""
    s = parse_guest_stats(balloon_stats(MEMINFO_KIB))
    assert s is not None
    got, cwa = mem_values(s), gopsutil_virtual_memory(MEMINFO_KIB)
    for name in ("mem_total", "mem_free", "mem_available", "mem_available_percent"):
        assert got[name] == cwa[name], name
    kib = {k: v * 1024 for k, v in MEMINFO_KIB.items()}
    assert got["mem_cached"] - cwa["mem_cached"] == (
        kib["Buffers"] + kib["SwapCached"] - kib["SReclaimable"]
    )
    assert got["mem_used"] - cwa["mem_used"] == kib["SReclaimable"] - kib["SwapCached"]
    assert got["mem_used_percent"] - cwa["mem_used_percent"] == pytest.approx(
        100 * (kib["SReclaimable"] - kib["SwapCached"]) / kib["MemTotal"]
    )


def test_mem_from_recorded_balloon_stats() -> None:
    s = parse_guest_stats(recorded("qmp-qom-get-balloon0-guest-stats"))
    assert s is not None
    v = mem_values(s)
    # exact: the guest's MemTotal, MemAvailable (and MemFree)
    assert v["mem_total"] == 213463040 and v["mem_available"] == 172027904
    assert v["mem_available_percent"] == pytest.approx(100 * 172027904 / 213463040)
    assert v["mem_free"] == 163909632 and v["mem_cached"] == 16703488
    assert 0 < v["mem_used_percent"] < 100


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
    # VolumeId as the CloudWatch Agent's ec2tagger adds it: asked by disk's append_dimensions,
    # with metrics.append_dimensions set (the ec2tagger exists only then).
    volume = {"append_dimensions": {"VolumeId": "${aws:VolumeId}"}}
    ctx = ctx_for({"disk": volume}, metrics={"append_dimensions": {}})
    out = Emitter.for_config(ctx.config, 1.0)
    GuestDisk().emit(None, [fs], ctx, out)
    assert {dict(d.dimensions)["VolumeId"] for d in out.datums} == {"vol-0123456789abcdef0"}
    for unasked in (ctx_for({"disk": {}}, metrics={"append_dimensions": {}}),
                    ctx_for({"disk": volume})):  # fmt: skip
        out = Emitter.for_config(unasked.config, 1.0)
        GuestDisk().emit(None, [fs], unasked, out)
        assert out.datums and all("VolumeId" not in dict(d.dimensions) for d in out.datums)
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


# ---------------------------------------------------------------------------------------------
# The guest's host name, the CloudWatch Agent's `host` dimension (telegraf reads os.Hostname;
# qemu-ga's guest-get-host-name gives gethostname(2), or "localhost" when that fails:
# qga/commands.c qmp_guest_get_host_name; QAPI: qga/qapi-schema.json, GuestHostName
# {'host-name': 'str'}, since 2.10).


@pytest.mark.parametrize(
    "reply,name",
    [
        ({"host-name": "ip-10-0-0-7.ec2.internal"}, "ip-10-0-0-7.ec2.internal"),
        ({"host-name": "localhost"}, "localhost"),
        ({"host-name": "x" * 255}, "x" * 255),
        ({"host-name": "x" * 256}, None),  # beyond any host name (POSIX: 255)
        ({"host-name": ""}, None),
        ({"host-name": "   "}, None),  # CloudWatch wants a non-blank value
        ({"host-name": "web\x001"}, None),  # control characters
        ({"host-name": "wéb"}, "w\\xe9b"),  # escaped: CloudWatch takes ASCII values only
        ({"host-name": "\U0001f600" * 200}, ("\\U0001f600" * 200)[:1024]),  # then cut to 1024
        ({"host-name": "\ud800"}, None),
        ({"host-name": 7}, None),
        ({"hostname": "web"}, None),
        (["web"], None),
        (None, None),
    ],
)
def test_host_name_is_checked(reply: Any, name: str | None) -> None:
    assert parse_host_name(reply) == name


class FakeGuestAgent:
    """Just enough of a guest agent on a unix socket: guest-sync-delimited, guest-info
    (guest-get-host-name enabled or not) and guest-get-host-name (`name`, or an error);
    counts the guest-get-host-name requests."""

    def __init__(self, path: str, name: Any = "web-1", enabled: bool = True) -> None:
        self.path, self.name, self.enabled, self.asked = path, name, enabled, 0
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeGuestAgent:
        self.server = await asyncio.start_unix_server(self.serve, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                request = json.loads(line.replace(b"\xff", b"") or b"{}")
                command, rid = request.get("execute"), request.get("id")
                if command == "guest-sync-delimited":
                    synced = {"return": request["arguments"]["id"]}
                    writer.write(b"\xff" + json.dumps(synced).encode() + b"\n")
                    continue
                if command == "guest-info":
                    commands = [{"name": "guest-get-host-name", "enabled": self.enabled}]
                    reply: Any = {"return": {"version": "7.2.22", "supported_commands": commands}}
                elif command == "guest-get-host-name":
                    self.asked += 1
                    reply = (
                        {"error": {"class": "GenericError", "desc": self.name.args[0]}}
                        if isinstance(self.name, Exception)
                        else {"return": {"host-name": self.name}}
                    )
                else:
                    reply = {"error": {"class": "CommandNotFound", "desc": command}}
                writer.write(json.dumps({**reply, "id": rid}).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()


def test_host_name_is_learnt_rarely(tmp_path: Path) -> None:
    """Asked at the first contact with the guest agent, again every HOST_NAME_REFRESH_CYCLES
    and at a new contact (after the guest agent failed): never per cycle, never per datum. A
    failure or an unusable name keeps the name learnt before."""
    path = str(tmp_path / "qga.sock")
    spec = VmSpec("i-0123456789abcdef0", "/x", path, 1, None, 60, None, "test")
    session = VmSession(spec, parse_config({"metrics": {"metrics_collected": {"mem": {}}}}))

    async def contact(cycle: int) -> None:
        plan = CyclePlan(cycle, lambda facts: (), lambda facts: ())
        failure, _ = await session._guest_agent_part(path, plan, VmFacts(), Replies())
        assert failure is None

    async def run() -> None:
        async with FakeGuestAgent(path) as agent:
            await contact(0)
            assert (session.host_name, agent.asked) == ("web-1", 1)
            agent.name = "web-2"
            for cycle in range(1, HOST_NAME_REFRESH_CYCLES):
                await contact(cycle)
            assert (session.host_name, agent.asked) == ("web-1", 1)
            await contact(HOST_NAME_REFRESH_CYCLES)
            assert (session.host_name, agent.asked) == ("web-2", 2)
            session.guest_info = None  # the guest agent failed since: a new contact
            agent.name = "bad\nname"
            await contact(HOST_NAME_REFRESH_CYCLES + 1)
            assert (session.host_name, agent.asked) == ("web-2", 3)
            agent.name = RuntimeError("Command guest-get-host-name has been disabled")
            await contact(2 * HOST_NAME_REFRESH_CYCLES + 1)
            assert (session.host_name, agent.asked) == ("web-2", 4)
        # Blocked in the guest agent (qemu-ga -b): not asked; unknown stays unknown.
        session._forget_process(None)
        async with FakeGuestAgent(path, enabled=False) as agent:
            await contact(0)
            assert (session.host_name, agent.asked) == (None, 0)

    asyncio.run(run())
    # A config without `host` never asks.
    appended: dict[str, Any] = {"append_dimensions": {}, "metrics_collected": {"mem": {}}}
    assert not VmSession(spec, parse_config({"metrics": appended})).wants_host_name()
    omitted = {"agent": {"omit_hostname": True}, "metrics": {"metrics_collected": {"mem": {}}}}
    assert not VmSession(spec, parse_config(omitted)).wants_host_name()
    assert not VmSession(spec, parse_config({})).wants_host_name()  # no in-guest plugin
    fixed = {"agent": {"hostname": "fleet-1"}, "metrics": {"metrics_collected": {"mem": {}}}}
    assert not VmSession(spec, parse_config(fixed)).wants_host_name()  # agent.hostname's
