"""cpu_usage_* and cpu_time_* (CloudWatch Agent names) from the guest agent's
guest-get-cpustats.

qemu-ga reads the guest's /proc/stat, the file gopsutil's cpu.Times reads for telegraf's cpu
input, and reports each CPU's cumulative times in milliseconds: ticks * 1000 / USER_HZ, exact
for Linux's USER_HZ of 100 (qga/commands-linux.c, qmp_guest_get_cpustats). gopsutil divides the
same ticks by 100 to seconds. telegraf (plugins/inputs/cpu/cpu.go), on two samples:

- total = user + system + nice + iowait + irq + softirq + steal + idle (totalCPUTime; guest and
  guest_nice are not added: /proc/stat already counts them inside user and nice), and
  active = total - idle (activeCPUTime: iowait counts as active);
- usage_user = 100 * (d user - d guest) / d total, usage_nice = 100 * (d nice - d guest_nice)
  / d total, usage_active = 100 * d active / d total, every other usage_X = 100 * d X / d total;
  no value when d total is 0, or negative (an error in telegraf; here: the guest rebooted). A
  single field going backwards (the kernel's iowait may) is not checked, as in telegraf.
- time_X (`collect_cpu_time`, which the CloudWatch Agent turns on when a `time_*` measurement
  is asked for) = the cumulative seconds of field X as read, time_active = total - idle, sent
  on every sample (the first one too); the CloudWatch Agent gives them no unit (None).

Per CPU as cpu=cpuN when `resources` holds "*" (other resources: glob patterns on `cpuN`, an
extension: the CloudWatch Agent reports every CPU or none), and overall as cpu=cpu-total with
`totalcpu`. qemu-ga leaves out /proc/stat's all-CPU line, so cpu-total is the sum of the online
CPUs' lines. The kernel (fs/proc/stat.c) sums nanoseconds before converting them to ticks
(rounding down) for the all-CPU line and converts each CPU's line on its own, so each field of
the sum is lower than the all-CPU line's by less than one tick (10 ms) per CPU: time_* of
cpu-total by less than 0.01 s x CPUs, and a usage_* share of a period of P seconds (in which
the total grows by 100 x P ticks per CPU) by less than 9 / P percentage points (one tick per
CPU in the field, eight in the total; 0.15 at 60 s). The all-CPU line also keeps the
times of CPUs that went offline, which the sum loses: time_* of cpu-total then differ by what
those CPUs accumulated while online, and a period in which the set of CPUs changed gives no
cpu-total usage here (telegraf's does).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

from collectors.guest_devices import plugin_filter
from collectors.guest_host import emit_guest
from hiveagent.collector import (
    Collector,
    Emitter,
    VmView,
    bounded_entries,
    guest_counter,
    metric_set,
)
from hiveagent.config import Limits


class CpuTimes(NamedTuple):
    """Cumulative milliseconds of one CPU (or their sum), in qemu-ga's field order."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int
    guest: int = 0  # optional in qemu-ga's schema (older kernels)
    guestnice: int = 0


FIELDS = CpuTimes._fields
OPTIONAL = ("guest", "guestnice")
# CpuTimes field -> the CloudWatch Agent's field name (telegraf: guest_nice)
_NAMES = {f: "guest_nice" if f == "guestnice" else f for f in FIELDS}
TIME_METRICS = (*(f"cpu_time_{_NAMES[f]}" for f in FIELDS), "cpu_time_active")
USAGE_METRICS = (*(f"cpu_usage_{_NAMES[f]}" for f in FIELDS), "cpu_usage_active")


@dataclass(frozen=True)
class CpuSample:
    cpus: dict[int, CpuTimes]  # cpu number -> its cumulative times


def parse_cpustats(
    reply: Any, limit: int = Limits.max_cpus, rejected: Counter[str] | None = None
) -> dict[int, CpuTimes]:
    """CPU number -> its ten counters; Linux entries only, each field an integer >= 0."""
    rejected = Counter() if rejected is None else rejected
    out: dict[int, CpuTimes] = {}
    for entry in bounded_entries(reply, "cpustats", limit, rejected, out):
        if not isinstance(entry, dict) or entry.get("type") != "linux":
            rejected["cpustats.not_linux"] += 1
            continue
        cpu = entry.get("cpu")
        values = [guest_counter(entry.get(f, 0 if f in OPTIONAL else None)) for f in FIELDS]
        if cpu.__class__ is not int or not 0 <= cpu < 1 << 20 or cpu in out:
            rejected["cpustats.bad_cpu"] += 1
            continue
        if None in values:
            rejected["cpustats.bad_counter"] += 1
            continue
        out[cpu] = _new(CpuTimes, values)
    return out


def total_ms(t: CpuTimes) -> int:
    """telegraf's totalCPUTime: user + system + nice + iowait + irq + softirq + steal + idle."""
    return t.user + t.system + t.nice + t.iowait + t.irq + t.softirq + t.steal + t.idle


def cpu_usage(prev: CpuTimes, cur: CpuTimes) -> dict[str, float] | None:
    """telegraf's usage_* over the period between two samples of one CPU (module docstring);
    None when the total did not grow (no time passed, or the guest rebooted)."""
    user, nice, system, idle, iowait, irq, softirq, steal, guest, guestnice = cur
    p_user, p_nice, p_system, p_idle, p_iowait, p_irq, p_softirq, p_steal, p_guest, p_gnice = prev
    # total_ms(cur) - total_ms(prev), in that order of terms (integers: exact either way)
    total = (user + system + nice + iowait + irq + softirq + steal + idle) - (
        p_user + p_system + p_nice + p_iowait + p_irq + p_softirq + p_steal + p_idle
    )
    if total <= 0:
        return None
    scale = 100.0 / total
    d_idle, d_guest, d_gnice = idle - p_idle, guest - p_guest, guestnice - p_gnice
    return {
        "cpu_usage_user": (user - p_user - d_guest) * scale,
        "cpu_usage_nice": (nice - p_nice - d_gnice) * scale,
        "cpu_usage_system": (system - p_system) * scale,
        "cpu_usage_idle": d_idle * scale,
        "cpu_usage_iowait": (iowait - p_iowait) * scale,
        "cpu_usage_irq": (irq - p_irq) * scale,
        "cpu_usage_softirq": (softirq - p_softirq) * scale,
        "cpu_usage_steal": (steal - p_steal) * scale,
        "cpu_usage_guest": d_guest * scale,
        "cpu_usage_guest_nice": d_gnice * scale,
        "cpu_usage_active": (total - d_idle) * scale,
    }


def cpu_times(t: CpuTimes) -> dict[str, float]:
    """telegraf's time_* (collect_cpu_time): the cumulative seconds of one CPU's fields as
    read, and time_active = total - idle."""
    out = {name: ms / 1000 for name, ms in zip(TIME_METRICS, t, strict=False)}
    out["cpu_time_active"] = (total_ms(t) - t.idle) / 1000
    return out


def total_of(cpus: dict[int, CpuTimes]) -> CpuTimes:
    """The fields summed over every CPU (the cpu-total line /proc/stat has and qemu-ga omits)."""
    if not cpus:
        return CpuTimes(0, 0, 0, 0, 0, 0, 0, 0)
    return _new(CpuTimes, map(sum, zip(*cpus.values(), strict=True)))


_new = tuple.__new__


class GuestCpu(Collector[CpuSample]):
    name = "guest_cpu"
    plugin = "cpu"
    qga_command = "guest-get-cpustats"

    def sample(self, vm: VmView, prev: CpuSample | None) -> CpuSample:
        reply = vm.qga_reply("guest-get-cpustats")
        return CpuSample(parse_cpustats(reply, vm.config.limits.max_cpus, vm.rejected))

    def emit(self, prev: CpuSample | None, cur: CpuSample, vm: VmView, out: Emitter) -> None:
        plugin = vm.config.cpu
        assert plugin is not None
        if not cur.cpus:
            return
        # (label, times now, times at the previous sample or None: no usage this period)
        series: list[tuple[str, CpuTimes, CpuTimes | None]] = []
        if plugin.totalcpu:
            same_cpus = prev is not None and set(prev.cpus) == set(cur.cpus)  # else: re-prime
            before = total_of(prev.cpus) if prev is not None and same_cpus else None
            series.append(("cpu-total", total_of(cur.cpus), before))
        if plugin.resources:
            usable, wanted = plugin_filter(plugin.resources, vm.rejected, "cpustats")
            for n in sorted(cur.cpus) if usable else ():
                label = f"cpu{n}"
                if wanted is None or wanted(label):
                    series.append(
                        (label, cur.cpus[n], prev.cpus.get(n) if prev is not None else None)
                    )
        wanted_metrics = metric_set(plugin.metrics)
        wants_times = not wanted_metrics.isdisjoint(TIME_METRICS)
        for label, now, before in series:
            values = cpu_times(now) if wants_times else {}
            usage = cpu_usage(before, now) if before is not None else None
            if usage is not None:
                values.update(usage)
            sent = {n: v for n, v in values.items() if n in wanted_metrics}
            emit_guest(out, vm, sent, {"cpu": label})
