"""net_* (CloudWatch Agent names) from the guest agent's guest-network-get-interfaces
`statistics` (the guest's /proc/net/dev). Per-period deltas per interface (dimension
`interface`); an interface without statistics (down, or a Windows guest without them) is
skipped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hiveagent.collector import Collector, Emitter, VmContext, clean_dimension, guest_counter
from hiveagent.counters import counter_deltas

METRIC = {
    "tx-bytes": "net_bytes_sent",
    "rx-bytes": "net_bytes_recv",
    "tx-packets": "net_packets_sent",
    "rx-packets": "net_packets_recv",
    "rx-errs": "net_err_in",
    "tx-errs": "net_err_out",
    "rx-dropped": "net_drop_in",
    "tx-dropped": "net_drop_out",
}


@dataclass(frozen=True)
class NetSample:
    interfaces: dict[str, dict[str, int]]


def parse_interfaces(
    reply: Any,
    limit: int = 32,
    rejected: Counter[str] | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> dict[str, dict[str, int]]:
    """Interface name -> its eight counters, for interfaces that report statistics (and that
    `wanted` accepts: the others are skipped before their counters are read)."""
    if not isinstance(reply, list):
        raise ValueError("guest-network-get-interfaces: reply is not a list")
    rejected = Counter() if rejected is None else rejected
    out: dict[str, dict[str, int]] = {}
    for n, entry in enumerate(reply):
        if len(out) >= limit:
            rejected["interfaces.over_limit"] += len(reply) - n
            break
        if not isinstance(entry, dict):
            rejected["interfaces.not_an_object"] += 1
            continue
        name = clean_dimension(entry.get("name"))
        stats = entry.get("statistics")
        if stats is None:
            continue  # no statistics for this interface: nothing to report
        if name is None or not isinstance(stats, dict) or name in out:
            rejected["interfaces.bad_entry"] += 1
            continue
        if wanted is not None and not wanted(name):
            continue
        values = {f: guest_counter(stats.get(f)) for f in METRIC}
        if any(v is None for v in values.values()):
            rejected["interfaces.bad_counter"] += 1
            continue
        out[name] = {f: int(v) for f, v in values.items() if v is not None}
    return out


class GuestNet(Collector[NetSample]):
    name = "guest_net"
    plugin = "net"
    qga_command = "guest-network-get-interfaces"

    async def sample(self, ctx: VmContext) -> NetSample:
        assert ctx.qga is not None
        reply = await ctx.qga_call("guest-network-get-interfaces")
        plugin = ctx.config.net
        wanted = plugin.wants if plugin is not None else None
        return NetSample(
            parse_interfaces(reply, ctx.config.limits.max_interfaces, ctx.rejected, wanted)
        )

    def emit(self, prev: NetSample | None, cur: NetSample, ctx: VmContext, out: Emitter) -> None:
        plugin = ctx.config.net
        assert plugin is not None
        deltas = counter_deltas(prev.interfaces if prev else None, cur.interfaces)
        for name, d in sorted(deltas.items()):
            if not plugin.wants(name):
                continue
            dims = {"InstanceId": ctx.spec.instance_id, "interface": name}
            out.emit_all({m: d[f] for f, m in METRIC.items() if m in plugin.metrics}, dims)
