"""mem_* (CloudWatch Agent names) from the virtio-balloon's guest statistics, read through QMP
(`qom-get <balloon> guest-stats`): no guest agent needed, only a balloon device whose guest
driver reports (`guest-stats-polling-interval` > 0).

A stat the guest did not report is 2^64-1 and means "no data"; `last-update` 0 means the guest
never reported: neither becomes a value. `last-update` is the host's epoch time of the guest's
last report: stats older than two of the plugin's periods (or of the balloon's polling
interval, when longer) when sampled (a guest whose driver
stopped reporting, a paused VM) are not this period's, and are not sent (counted as
`mem.stale`).

The CloudWatch Agent's figures (telegraf plugins/inputs/mem/mem.go over gopsutil's
VirtualMemory, mem/mem_linux.go, from /proc/meminfo; gopsutil v3.24.5 / v4.25.3, the versions
the CloudWatch Agent builds with): total = MemTotal, free = MemFree, available = MemAvailable,
cached = Cached + SReclaimable, used = total - free - Buffers - cached, used_percent =
100 * used / total, available_percent = 100 * available / total. (gopsutil v4.25.8 and later
compute used = total - available instead; the CloudWatch Agent does not use those.)

What the guest's virtio_balloon driver reports (drivers/virtio/virtio_balloon.c,
update_balloon_stats) is the same kernel figures /proc/meminfo prints (fs/proc/meminfo.c):
stat-total-memory = MemTotal, stat-free-memory = MemFree, stat-available-memory = MemAvailable:
mem_total, mem_free, mem_available and mem_available_percent are exact. But stat-disk-caches
is the kernel's NR_FILE_PAGES, which /proc/meminfo splits into Cached + Buffers + SwapCached,
and the balloon reports neither Buffers, SwapCached nor SReclaimable. So, with the CloudWatch
Agent's figures on the right:
- mem_cached = disk-caches = Cached + Buffers + SwapCached; it differs from Cached +
  SReclaimable by Buffers + SwapCached - SReclaimable: higher by at most Buffers + SwapCached,
  lower by at most SReclaimable;
- mem_used = total - free - disk-caches = total - free - Buffers - Cached - SwapCached; it
  differs from total - free - Buffers - (Cached + SReclaimable) by SReclaimable - SwapCached:
  higher by at most SReclaimable (reclaimable slab, typically tens to hundreds of MiB), lower by
  at most SwapCached (0 without swap); mem_used_percent likewise, over total.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from collectors.guest_host import emit_guest
from hiveagent.collector import Collector, Emitter, VmView
from hiveagent.cycle import QmpCall, qmp_key

UNSET = (1 << 64) - 1
STATS = ("stat-total-memory", "stat-free-memory", "stat-available-memory", "stat-disk-caches")


class MemSample(NamedTuple):
    """The balloon's guest statistics, bytes; None for a stat the guest did not report."""

    total: int | None
    free: int | None
    available: int | None
    cached: int | None  # stat-disk-caches
    last_update: int  # host epoch seconds of the guest's last report
    sampled_at: float = 0.0  # host epoch seconds when the agent read them


def parse_guest_stats(reply: Any, sampled_at: float = 0.0) -> MemSample | None:
    """None when the guest never reported (last-update 0) or the reply is unusable."""
    if not isinstance(reply, dict):
        return None
    stats, last = reply.get("stats"), reply.get("last-update")
    if not isinstance(stats, dict) or last.__class__ is not int or last <= 0:
        return None
    values = [stats.get(key) for key in STATS]
    total, free, available, cached = (
        v if v.__class__ is int and 0 <= v < UNSET else None for v in values
    )
    return MemSample(total, free, available, cached, last, sampled_at)


def is_stale(s: MemSample, period_s: float) -> bool:
    """The guest's last report is older than two periods at sampling: not this period's."""
    return s.sampled_at - s.last_update > 2 * period_s


def mem_values(s: MemSample) -> dict[str, float]:
    """The mem_* figures of one balloon report (module docstring: which are exact, and how
    mem_cached and mem_used differ from the CloudWatch Agent's)."""
    total = s.total
    if not total:
        return {}
    out: dict[str, float] = {"mem_total": total}
    if s.available is not None and s.available <= total:
        out["mem_available"] = s.available
        out["mem_available_percent"] = 100.0 * s.available / total
    if s.free is not None and s.free <= total:
        out["mem_free"] = s.free
        if s.cached is not None and s.free + s.cached <= total:
            out["mem_cached"] = s.cached
            used = total - s.free - s.cached
            out["mem_used"] = used
            out["mem_used_percent"] = 100.0 * used / total
    return out


class GuestMem(Collector[MemSample | None]):
    name = "guest_mem"
    plugin = "mem"

    def qmp_wants(self, vm: VmView, prev: MemSample | None) -> tuple[QmpCall, ...]:
        path = vm.facts.balloon
        return (qmp_key("qom-get", {"path": path, "property": "guest-stats"}),) if path else ()

    def sample(self, vm: VmView, prev: MemSample | None) -> MemSample | None:
        path = vm.facts.balloon
        if path is None:
            return None
        reply = vm.qmp_reply("qom-get", {"path": path, "property": "guest-stats"})
        return parse_guest_stats(reply, time.time())

    def emit(self, prev: MemSample | None, cur: MemSample | None, vm: VmView, out: Emitter) -> None:
        plugin = vm.config.mem
        assert plugin is not None
        if cur is None:
            return
        # Fresh stats come every polling interval of the balloon, at best every period.
        period = max(plugin.interval_s or 0, vm.config.interval_s, vm.facts.balloon_poll_s or 0)
        if is_stale(cur, period):
            vm.rejected["mem.stale"] += 1
            return
        values = {n: v for n, v in mem_values(cur).items() if n in plugin.metrics}
        emit_guest(out, vm, values, {})  # telegraf's mem input has no tags of its own
