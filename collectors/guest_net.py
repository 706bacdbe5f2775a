"""net_* (CloudWatch Agent names) from the guest agent's guest-network-get-interfaces
`statistics` (the guest's /proc/net/dev). Per-period deltas per interface (dimension
`interface`); an interface without statistics (down, or a Windows guest without them) is
skipped, one with a counter missing is rejected."""

from __future__ import annotations

from typing import NamedTuple

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
    limit_name="max_interfaces",
)  # fmt: skip
parse_interfaces = INTERFACES.parse


class GuestNet(GuestDeviceCounters):
    name = "guest_net"
    plugin = "net"
    qga_command = INTERFACES.command
    device_source = INTERFACES
