"""NetworkIn/Out and NetworkPacketsIn/Out from the VM's tap devices.

Counters come from /proc/<qemu pid>/net/dev, which lists the interfaces of QEMU's own network
namespace (so a VM in its own netns works too) in one read. The taps are the sidecar's list, or
else the tun devices QEMU holds open (`iff:` lines in /proc/<pid>/fdinfo), looked up again every
10 cycles. Host tap counters are reversed: what the tap transmits, the guest receives.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from hiveagent.collector import Collector, Emitter, VmView, read_file
from hiveagent.counters import counter_deltas

TAP_RESCAN_CYCLES = 10


class TapCounters(NamedTuple):
    """Cumulative, per host interface, in the host's direction."""

    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int


@dataclass(frozen=True)
class TapSample:
    pid: int
    mono_s: float
    taps: dict[str, TapCounters]  # tap name -> counters
    found: tuple[str, ...] = ()  # the taps found in fdinfo (no sidecar list)
    found_age: int = 0  # samples since they were looked up


def read_net_dev(proc_root: str, pid: int) -> bytes:
    return read_file(f"{proc_root}/{pid}/net/dev", 1 << 20)


def parse_net_dev(data: bytes) -> dict[str, TapCounters]:
    """/proc/net/dev: two header lines, then `name: rx_bytes rx_packets errs drop fifo frame
    compressed multicast tx_bytes tx_packets ...`."""
    out: dict[str, TapCounters] = {}
    for line in data.decode("ascii", "replace").splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        cols = rest.split()
        if len(cols) < 10:
            continue
        out[name.strip()] = TapCounters(int(cols[0]), int(cols[1]), int(cols[8]), int(cols[9]))
    return out


def read_tun_ifaces(proc_root: str, pid: int) -> list[str]:
    """Names of the tun/tap devices the process holds open (fdinfo `iff:` lines)."""
    names: list[str] = []
    fdinfo = f"{proc_root}/{pid}/fdinfo"
    try:
        fds = os.listdir(fdinfo)
    except OSError:
        return names
    for fd in fds:
        try:
            with open(f"{fdinfo}/{fd}", "rb") as f:
                text = f.read(4096)
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(b"iff:"):
                names.append(line[4:].strip().decode("ascii", "replace"))
    return sorted(set(names))


def network_totals(prev: TapSample, cur: TapSample) -> dict[str, int] | None:
    """Per-period sums over the VM's taps, in the guest's direction; None when no tap has a
    delta (first sample, QEMU restarted, no taps)."""
    if prev.pid != cur.pid:
        return None
    deltas = counter_deltas(prev.taps, cur.taps)
    if not deltas:
        return None
    return {
        "NetworkIn": sum(d.tx_bytes for d in deltas.values()),
        "NetworkOut": sum(d.rx_bytes for d in deltas.values()),
        "NetworkPacketsIn": sum(d.tx_packets for d in deltas.values()),
        "NetworkPacketsOut": sum(d.rx_packets for d in deltas.values()),
    }


class TapNet(Collector[TapSample]):
    name = "tap_net"

    def enabled(self, config: object) -> bool:
        return bool(getattr(config, "ec2_enabled", True))

    def sample(self, vm: VmView, prev: TapSample | None) -> TapSample:
        pid = vm.facts.pid
        assert pid is not None
        root, limit = vm.config.proc_root, vm.config.limits.max_interfaces
        taps, age = vm.spec.taps, 0
        found: tuple[str, ...] = ()
        if taps is None:  # the tun devices QEMU holds open, looked up every few samples
            if prev is None or not prev.found_age or prev.found_age >= TAP_RESCAN_CYCLES:
                found = tuple(read_tun_ifaces(root, pid))
            else:
                found, age = prev.found, prev.found_age
            taps, age = found, age + 1
        if len(taps) > limit:
            vm.rejected["tap_net.over_limit"] += len(taps) - limit
            taps = taps[:limit]
        counters = parse_net_dev(read_net_dev(root, pid)) if taps else {}
        sampled = {t: counters[t] for t in taps if t in counters}
        return TapSample(pid, time.monotonic(), sampled, found, age)

    def emit(self, prev: TapSample | None, cur: TapSample, vm: VmView, out: Emitter) -> None:
        if prev is None:
            return
        totals = network_totals(prev, cur)
        if totals:
            out.emit_all(totals, {"InstanceId": vm.spec.instance_id})
