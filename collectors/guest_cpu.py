"""cpu_usage_* (CloudWatch Agent names) from the guest agent's guest-get-cpustats.

qemu-ga reads the guest's /proc/stat and reports cumulative times per CPU (in milliseconds).
Like the CloudWatch Agent (telegraf's cpu input), each usage is the field's share of the
period's total, where total = user + system + nice + iowait + irq + softirq + steal + idle
(guest and guest_nice are already inside user and nice); usage_active = 100 - idle - iowait.
Per CPU as cpu=cpuN when `resources` holds "*", and overall as cpu=cpu-total with `totalcpu`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

from hiveagent.collector import Collector, Emitter, VmView, bounded_entries, guest_counter
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
METRICS = (*(f"cpu_usage_{f}" for f in FIELDS[:-1]), "cpu_usage_guest_nice")


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


def cpu_usage(prev: CpuTimes, cur: CpuTimes) -> dict[str, float] | None:
    """Percentages over the period between two samples of one CPU; None when a counter went
    backwards (guest rebooted) or no time passed."""
    delta = [c - p for c, p in zip(cur, prev, strict=True)]
    if min(delta) < 0:
        return None
    total = sum(delta[:_TOTAL_FIELDS])
    if total <= 0:
        return None
    scale = 100.0 / total
    out = {name: v * scale for name, v in zip(METRICS, delta, strict=True)}
    out["cpu_usage_active"] = max(0.0, 100.0 - out["cpu_usage_idle"] - out["cpu_usage_iowait"])
    return out


def total_of(cpus: dict[int, CpuTimes]) -> CpuTimes:
    """The fields summed over every CPU (the cpu-total line /proc/stat has and qemu-ga omits)."""
    if not cpus:
        return CpuTimes(0, 0, 0, 0, 0, 0, 0, 0)
    return _new(CpuTimes, map(sum, zip(*cpus.values(), strict=True)))


# The total is user + nice + system + idle + iowait + irq + softirq + steal: CpuTimes' first
# eight fields (guest and guest_nice are inside user and nice already).
_TOTAL_FIELDS = 8
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
        if prev is None:
            return
        series: list[tuple[str, dict[str, float] | None]] = []
        if plugin.totalcpu and set(prev.cpus) == set(cur.cpus):  # vCPU hot-plug: re-prime
            series.append(("cpu-total", cpu_usage(total_of(prev.cpus), total_of(cur.cpus))))
        if plugin.resources:
            for n in sorted(cur.cpus):
                if n in prev.cpus and plugin.wants(f"cpu{n}"):
                    series.append((f"cpu{n}", cpu_usage(prev.cpus[n], cur.cpus[n])))
        for label, usage in series:
            if usage is None:
                continue
            dims = {"InstanceId": vm.spec.instance_id, "cpu": label}
            out.emit_all({n: v for n, v in usage.items() if n in plugin.metrics}, dims)
