"""GuestVCPUsOnline from the guest agent's guest-get-vcpus: how many of the VM's vCPUs the
guest has online (a guest can take vCPUs offline; CPUUtilization's denominator is the VM's
configured vCPUs). Sent with the cpu plugin, in the EC2 family (no AWS or CloudWatch Agent
metric says this)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hiveagent.collector import Collector, Emitter, VmView, bounded_entries
from hiveagent.config import Limits


def parse_vcpus(
    reply: Any, limit: int = Limits.max_cpus, rejected: Counter[str] | None = None
) -> int:
    """The number of vCPUs the guest reports online (each entry checked)."""
    rejected = Counter() if rejected is None else rejected
    online = 0
    seen: set[int] = set()
    for entry in bounded_entries(reply, "vcpus", limit, rejected, seen):
        lid = entry.get("logical-id") if isinstance(entry, dict) else None
        if lid.__class__ is not int or lid in seen or not isinstance(entry.get("online"), bool):
            rejected["vcpus.bad_entry"] += 1
            continue
        seen.add(lid)
        online += entry["online"]
    return online


class GuestVcpus(Collector[int]):
    name = "guest_vcpus"
    qga_command = "guest-get-vcpus"
    deltas = False  # read whole each cycle

    plugin = "cpu"  # sent with the cpu plugin, at its interval

    def enabled(self, config: Any) -> bool:
        return super().enabled(config) and bool(config.ec2_enabled)

    def sample(self, vm: VmView, prev: int | None) -> int:
        reply = vm.qga_reply("guest-get-vcpus")
        return parse_vcpus(reply, vm.config.limits.max_cpus, vm.rejected)

    def emit(self, prev: int | None, cur: int, vm: VmView, out: Emitter) -> None:
        out.emit("GuestVCPUsOnline", cur, {"InstanceId": vm.spec.instance_id})
