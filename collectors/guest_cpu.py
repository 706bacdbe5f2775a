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
from operator import itemgetter
from typing import Any

from hiveagent.collector import Collector, Emitter, VmContext, guest_counter

FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest",
          "guestnice")  # fmt: skip
OPTIONAL = ("guest", "guestnice")
TOTAL_FIELDS = ("user", "system", "nice", "iowait", "irq", "softirq", "steal", "idle")
METRIC = {f: f"cpu_usage_{f}" for f in FIELDS} | {"guestnice": "cpu_usage_guest_nice"}


@dataclass(frozen=True)
class CpuSample:
    cpus: dict[int, dict[str, int]]  # cpu number -> cumulative field -> ms


def parse_cpustats(
    reply: Any, limit: int = 256, rejected: Counter[str] | None = None
) -> dict[int, dict[str, int]]:
    """CPU number -> its ten counters; Linux entries only, each field an integer >= 0."""
    if not isinstance(reply, list):
        raise ValueError("guest-get-cpustats: reply is not a list")
    rejected = Counter() if rejected is None else rejected
    out: dict[int, dict[str, int]] = {}
    for n, entry in enumerate(reply):
        if len(out) >= limit:
            rejected["cpustats.over_limit"] += len(reply) - n
            break
        if not isinstance(entry, dict) or entry.get("type") != "linux":
            rejected["cpustats.not_linux"] += 1
            continue
        cpu = entry.get("cpu")
        # guest and guestnice are optional in the schema (older kernels); the rest are not.
        values = {f: guest_counter(entry.get(f, 0 if f in OPTIONAL else None)) for f in FIELDS}
        if cpu.__class__ is not int or not 0 <= cpu < 1 << 20 or cpu in out:
            rejected["cpustats.bad_cpu"] += 1
            continue
        if any(v is None for v in values.values()):
            rejected["cpustats.bad_counter"] += 1
            continue
        out[cpu] = {f: int(v) for f, v in values.items() if v is not None}
    return out


def cpu_usage(prev: dict[str, int], cur: dict[str, int]) -> dict[str, float] | None:
    """Percentages over the period between two samples of one CPU; None when a counter went
    backwards (guest rebooted) or no time passed."""
    delta = {f: cur[f] - prev[f] for f in FIELDS}
    if min(delta.values()) < 0:
        return None
    total = sum(_total_fields(delta))
    if total <= 0:
        return None
    scale = 100.0 / total
    out = {METRIC[f]: v * scale for f, v in delta.items()}
    out["cpu_usage_active"] = max(0.0, 100.0 - out["cpu_usage_idle"] - out["cpu_usage_iowait"])
    return out


_total_fields = itemgetter(*TOTAL_FIELDS)
_fields = itemgetter(*FIELDS)


def total_of(cpus: dict[int, dict[str, int]]) -> dict[str, int]:
    """The fields summed over every CPU (the cpu-total line /proc/stat has and qemu-ga omits)."""
    if not cpus:
        return dict.fromkeys(FIELDS, 0)
    columns = zip(*map(_fields, cpus.values()), strict=True)
    return dict(zip(FIELDS, map(sum, columns), strict=True))


class GuestCpu(Collector[CpuSample]):
    name = "guest_cpu"
    plugin = "cpu"
    qga_command = "guest-get-cpustats"

    async def sample(self, ctx: VmContext) -> CpuSample:
        assert ctx.qga is not None
        reply = await ctx.qga_call("guest-get-cpustats")
        return CpuSample(parse_cpustats(reply, ctx.config.limits.max_cpus, ctx.rejected))

    def emit(self, prev: CpuSample | None, cur: CpuSample, ctx: VmContext, out: Emitter) -> None:
        plugin = ctx.config.cpu
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
            dims = {"InstanceId": ctx.spec.instance_id, "cpu": label}
            out.emit_all({n: v for n, v in usage.items() if n in plugin.metrics}, dims)
