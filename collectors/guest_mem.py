"""mem_* (CloudWatch Agent names) from the virtio-balloon's guest statistics, read through QMP
(`qom-get <balloon> guest-stats`): no guest agent needed, only a balloon device whose guest
driver reports (`guest-stats-polling-interval` > 0).

A stat the guest did not report is 2^64-1 and means "no data"; `last-update` 0 means the guest
never reported: neither becomes a value. mem_used = total - free - cached (the CloudWatch
Agent's used minus buffers, which the balloon does not report).

With `hypervisor.balloon.set_polling_interval_seconds`, the agent turns reporting on itself
(qom-set guest-stats-polling-interval) on a balloon that has it off; without it, it never
changes the VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hiveagent.collector import Collector, Emitter, VmContext
from hiveagent.qmp import QmpCommandError

UNSET = (1 << 64) - 1
STATS = {
    "stat-total-memory": "total",
    "stat-free-memory": "free",
    "stat-available-memory": "available",
    "stat-disk-caches": "cached",
}


@dataclass(frozen=True)
class MemSample:
    values: dict[str, int]  # total, free, available, cached: those the guest reported
    last_update: int


def parse_guest_stats(reply: Any) -> MemSample | None:
    """None when the guest never reported (last-update 0) or the reply is unusable."""
    if not isinstance(reply, dict):
        return None
    stats, last = reply.get("stats"), reply.get("last-update")
    if not isinstance(stats, dict) or last.__class__ is not int or last <= 0:
        return None
    values = {}
    for key, name in STATS.items():
        v = stats.get(key)
        if v.__class__ is int and 0 <= v < UNSET:
            values[name] = int(v)
    return MemSample(values, last)


def mem_values(s: MemSample) -> dict[str, float]:
    v = s.values
    total = v.get("total")
    if not total:
        return {}
    out: dict[str, float] = {"mem_total": total}
    if "available" in v and v["available"] <= total:
        out["mem_available"] = v["available"]
        out["mem_available_percent"] = 100.0 * v["available"] / total
    if "free" in v and v["free"] <= total:
        out["mem_free"] = v["free"]
        if "cached" in v and v["free"] + v["cached"] <= total:
            out["mem_cached"] = v["cached"]
            used = total - v["free"] - v["cached"]
            out["mem_used"] = used
            out["mem_used_percent"] = 100.0 * used / total
    return out


async def find_balloon(ctx: VmContext) -> str | None:
    """QOM path of the VM's virtio-balloon (with or without an id); cached per QEMU process."""
    if "balloon" in ctx.cache:
        return ctx.cache["balloon"]  # type: ignore[no-any-return]
    path = None
    for parent in ("/machine/peripheral", "/machine/peripheral-anon"):
        try:
            children = await ctx.qmp.execute("qom-list", {"path": parent})
        except QmpCommandError:
            continue
        for child in children if isinstance(children, list) else []:
            if (
                isinstance(child, dict)
                and isinstance(child.get("type"), str)
                and child["type"].startswith("child<virtio-balloon")
                and isinstance(child.get("name"), str)
            ):
                path = f"{parent}/{child['name']}"
                break
        if path:
            break
    ctx.cache["balloon"] = path
    return path


class GuestMem(Collector[MemSample | None]):
    name = "guest_mem"
    plugin = "mem"

    def qmp_wants(self, ctx: VmContext) -> tuple[tuple[str, dict[str, Any] | None], ...]:
        path = ctx.cache.get("balloon")  # known after the first cycle
        return (("qom-get", {"path": path, "property": "guest-stats"}),) if path else ()

    async def sample(self, ctx: VmContext) -> MemSample | None:
        path = await find_balloon(ctx)
        if path is None:
            return None
        interval = ctx.config.balloon_polling_interval_s
        if interval and not ctx.cache.get("balloon_interval_checked"):
            ctx.cache["balloon_interval_checked"] = True
            current = await ctx.qmp.execute(
                "qom-get", {"path": path, "property": "guest-stats-polling-interval"}
            )
            if current == 0:
                await ctx.qmp.execute(
                    "qom-set",
                    {"path": path, "property": "guest-stats-polling-interval", "value": interval},
                )
        reply = await ctx.qmp_call("qom-get", {"path": path, "property": "guest-stats"})
        return parse_guest_stats(reply)

    def emit(
        self, prev: MemSample | None, cur: MemSample | None, ctx: VmContext, out: Emitter
    ) -> None:
        plugin = ctx.config.mem
        assert plugin is not None
        if cur is None:
            return
        dims = {"InstanceId": ctx.spec.instance_id}
        out.emit_all({n: v for n, v in mem_values(cur).items() if n in plugin.metrics}, dims)
