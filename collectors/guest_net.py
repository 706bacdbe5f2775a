"""net_* (CloudWatch Agent names) from the guest agent's guest-network-get-interfaces
`statistics` (the guest's /proc/net/dev, the file gopsutil's net.IOCounters reads for telegraf's
net input). Per-period deltas per interface (dimension `interface`); one with a counter missing
is rejected.

Which interfaces, as telegraf's plugins/inputs/net/net.go chooses them:
- `resources` naming interfaces (no `"*"`): telegraf's `interfaces` list, matched by its filter
  (exact names, or glob patterns such as `eth*`: guest_devices.resource_filter); a listed
  loopback is reported.
- `"*"` (the default) or no resources: the CloudWatch Agent leaves telegraf's list unset, and
  telegraf skips loopback interfaces and interfaces that are not up (IFF_UP). qemu-ga reports
  neither flag, so here:
  - loopback = named `lo` (the name Linux gives its loopback device), or every address it
    carries is a loopback address (127.0.0.0/8, ::1), which also catches a Windows guest's
    loopback pseudo-interface;
  - "up" is unknowable, and the rule is qemu-ga's own: it attaches `statistics` only to an
    interface it found an IPv4 or IPv6 address on (qga/commands-posix.c,
    qmp_guest_network_get_interfaces), and an interface without statistics is never
    reported. An admin-down interface normally has none (Linux drops its IPv6 addresses and
    never gives it a link-local one), so it is skipped as telegraf skips it. They differ for
    an interface that is down but keeps a static IPv4 address (reported here, not by telegraf,
    with zero deltas) and for one that is up with no address at all, such as a bond or bridge
    port with IPv6 off (reported by telegraf, not here: qemu-ga gives no counters for it, so
    it cannot be reported even when listed in `resources`).
"""

from __future__ import annotations

import ipaddress
from typing import Any, NamedTuple

from collectors.guest_devices import DeviceSource, GuestDeviceCounters


class NetCounters(NamedTuple):
    """Cumulative, per guest interface."""

    tx_bytes: int
    rx_bytes: int
    tx_packets: int
    rx_packets: int
    rx_errs: int
    tx_errs: int
    rx_dropped: int
    tx_dropped: int


def is_loopback(entry: dict[str, Any]) -> bool:
    """A guest-network-get-interfaces entry is the guest's loopback interface: named `lo`, or
    carrying addresses that are all loopback addresses (see the module docstring)."""
    if entry.get("name") == "lo":
        return True
    addresses = entry.get("ip-addresses")
    if not isinstance(addresses, list) or not addresses:
        return False
    for a in addresses:
        text = a.get("ip-address") if isinstance(a, dict) else None
        if not isinstance(text, str):
            return False
        try:
            if not ipaddress.ip_address(text).is_loopback:
                return False
        except ValueError:
            return False
    return True


INTERFACES = DeviceSource(
    "guest-network-get-interfaces", "interfaces", "statistics", NetCounters,
    counters=(
        ("tx-bytes", "net_bytes_sent", 1),
        ("rx-bytes", "net_bytes_recv", 1),
        ("tx-packets", "net_packets_sent", 1),
        ("rx-packets", "net_packets_recv", 1),
        ("rx-errs", "net_err_in", 1),
        ("tx-errs", "net_err_out", 1),
        ("rx-dropped", "net_drop_in", 1),
        ("tx-dropped", "net_drop_out", 1),
    ),
    gauges=(), absent=None, without_stats_ok=True, dimension="interface",
    limit_name="max_interfaces", excluded_by_default=is_loopback,
)  # fmt: skip
parse_interfaces = INTERFACES.parse


class GuestNet(GuestDeviceCounters):
    name = "guest_net"
    plugin = "net"
    qga_command = INTERFACES.command
    device_source = INTERFACES
