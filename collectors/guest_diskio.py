"""diskio_* (CloudWatch Agent names) from the guest agent's guest-get-diskstats (the guest's
/proc/diskstats, qemu-ga 7.1+). Counters become per-period deltas; iops_in_progress is the
in-flight count when sampled. Dimension `name` is the guest's device name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hiveagent.collector import Collector, Emitter, VmContext, clean_dimension, guest_counter
from hiveagent.counters import counter_deltas

SECTOR = 512
FIELDS = ("read-ios", "write-ios", "read-sectors", "write-sectors", "read-ticks", "write-ticks",
          "total-ticks", "ios-pgr")  # fmt: skip
CUMULATIVE = {
    "read-ios": ("diskio_reads", 1),
    "write-ios": ("diskio_writes", 1),
    "read-sectors": ("diskio_read_bytes", SECTOR),
    "write-sectors": ("diskio_write_bytes", SECTOR),
    "read-ticks": ("diskio_read_time", 1),
    "write-ticks": ("diskio_write_time", 1),
    "total-ticks": ("diskio_io_time", 1),
}


@dataclass(frozen=True)
class DiskioSample:
    disks: dict[str, dict[str, int]]


def parse_diskstats(
    reply: Any,
    limit: int = 64,
    rejected: Counter[str] | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> dict[str, dict[str, int]]:
    """Device name -> its counters (absent ones 0: older kernels lack some); devices `wanted`
    rejects are skipped before their counters are read."""
    if not isinstance(reply, list):
        raise ValueError("guest-get-diskstats: reply is not a list")
    rejected = Counter() if rejected is None else rejected
    out: dict[str, dict[str, int]] = {}
    for n, entry in enumerate(reply):
        if len(out) >= limit:
            rejected["diskstats.over_limit"] += len(reply) - n
            break
        name = clean_dimension(entry.get("name")) if isinstance(entry, dict) else None
        stats = entry.get("stats") if isinstance(entry, dict) else None
        if name is None or not isinstance(stats, dict) or name in out:
            rejected["diskstats.bad_entry"] += 1
            continue
        if wanted is not None and not wanted(name):
            continue
        values = {f: guest_counter(stats.get(f, 0)) for f in FIELDS}
        if any(v is None for v in values.values()):
            rejected["diskstats.bad_counter"] += 1
            continue
        out[name] = {f: int(v) for f, v in values.items() if v is not None}
    return out


class GuestDiskio(Collector[DiskioSample]):
    name = "guest_diskio"
    plugin = "diskio"
    qga_command = "guest-get-diskstats"

    async def sample(self, ctx: VmContext) -> DiskioSample:
        assert ctx.qga is not None
        reply = await ctx.qga_call("guest-get-diskstats")
        plugin = ctx.config.diskio
        wanted = plugin.wants if plugin is not None else None
        return DiskioSample(
            parse_diskstats(reply, ctx.config.limits.max_disks, ctx.rejected, wanted)
        )

    def emit(
        self, prev: DiskioSample | None, cur: DiskioSample, ctx: VmContext, out: Emitter
    ) -> None:
        plugin = ctx.config.diskio
        assert plugin is not None
        cumulative = {n: {f: c[f] for f in CUMULATIVE} for n, c in cur.disks.items()}
        before = {n: {f: c[f] for f in CUMULATIVE} for n, c in (prev.disks if prev else {}).items()}
        deltas = counter_deltas(before if prev else None, cumulative)
        for name, d in sorted(deltas.items()):
            if not plugin.wants(name):
                continue
            dims = {"InstanceId": ctx.spec.instance_id, "name": name}
            values = {
                m: d[f] * scale for f, (m, scale) in CUMULATIVE.items() if m in plugin.metrics
            }
            if "diskio_iops_in_progress" in plugin.metrics:
                values["diskio_iops_in_progress"] = cur.disks[name]["ios-pgr"]
            out.emit_all(values, dims)
