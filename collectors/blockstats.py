"""EBS volume metrics and the EC2 Disk* sums from QMP query-blockstats.

One entry per guest device; only the top-level `stats` carries counters. The device is named by
`device` (legacy -drive id) or, with -blockdev, by the qdev path's `-device id`. VolumeId is the
`vol-...` id inside that name (Spinifex: `vdisk-vol-...`), else `<instance-id>:<device>`.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from collectors.guest_diskio import parse_diskstats
from hiveagent.collector import Collector, Emitter, VmContext
from hiveagent.counters import counter_delta, counter_deltas
from hiveagent.qmp import QmpError
from qga.client import QgaError

COUNTERS = (
    "rd_bytes",
    "wr_bytes",
    "rd_operations",
    "wr_operations",
    "rd_total_time_ns",
    "wr_total_time_ns",
)
log = logging.getLogger(__name__)
MAX_DEVICES = 256
_VOL_RE = re.compile(r"vol-[0-9a-f]{8,17}")
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class BlockSample:
    pid: int
    mono_s: float
    devices: dict[str, dict[str, int]]  # device name -> counters
    idle_ns: dict[str, int] = field(default_factory=dict)  # QEMU's idle_time_ns, when known
    # QEMU's own average queue depth (rd + wr) per accounting interval, for devices configured
    # with stats-intervals: {device: {interval_length_s: depth}}
    timed_depth: dict[str, dict[int, float]] = field(default_factory=dict)
    # The guest's own busy time per volume (diskstats total-ticks, ms), when the guest disk
    # behind each volume is known: the best VolumeIdleTime estimate.
    guest_busy_ms: dict[str, int] = field(default_factory=dict)


def device_name(entry: dict[str, Any]) -> str | None:
    """`device` when set, else the `-device id` taken from the qdev path
    `/machine/peripheral/<id>/virtio-backend`."""
    device = entry.get("device")
    if isinstance(device, str) and device:
        return device
    qdev = entry.get("qdev")
    if not isinstance(qdev, str) or not qdev:
        return None
    for prefix in ("/machine/peripheral/", "/machine/peripheral-anon/"):
        if qdev.startswith(prefix):
            qdev = qdev[len(prefix) :]
            break
    return qdev.removesuffix("/virtio-backend") or None


def volume_id(device: str, instance_id: str) -> str:
    m = _VOL_RE.search(device)
    return m.group(0) if m else f"{instance_id}:{device}"


def parse_timed_depth(reply: Any) -> dict[str, dict[int, float]]:
    """Device -> {interval_length: avg_rd_queue_depth + avg_wr_queue_depth} from timed_stats
    (present only when the drive has `stats-intervals`)."""
    out: dict[str, dict[int, float]] = {}
    for entry in reply if isinstance(reply, list) else []:
        stats = entry.get("stats") if isinstance(entry, dict) else None
        timed = stats.get("timed_stats") if isinstance(stats, dict) else None
        name = device_name(entry) if isinstance(entry, dict) else None
        if name is None or not isinstance(timed, list):
            continue
        for t in timed:
            if not isinstance(t, dict):
                continue
            length, rd, wr = (
                t.get(k) for k in ("interval_length", "avg_rd_queue_depth", "avg_wr_queue_depth")
            )
            if (
                length.__class__ is int
                and length > 0
                and all(isinstance(v, int | float) and 0 <= v < 1e9 for v in (rd, wr))
            ):
                out.setdefault(name, {})[length] = float(rd) + float(wr)  # type: ignore[arg-type]
    return out


def queue_length(d: dict[str, int], period_s: float, timed: dict[int, float] | None) -> float:
    """VolumeQueueLength: QEMU's own average queue depth over the accounting interval that
    matches the period (the shortest one at least as long, else the longest) when the drive
    has stats-intervals; otherwise Little's law: total time requests spent queued / period."""
    if timed:
        fitting = [n for n in timed if n >= period_s - 1]
        return timed[min(fitting) if fitting else max(timed)]
    return (d["rd_total_time_ns"] + d["wr_total_time_ns"]) / (period_s * 1e9)


def parse_idle_ns(reply: Any) -> dict[str, int]:
    """Device name -> idle_time_ns (nanoseconds since its last I/O; absent before the first)."""
    out: dict[str, int] = {}
    for entry in reply if isinstance(reply, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("stats"), dict):
            continue
        name, v = device_name(entry), entry["stats"].get("idle_time_ns")
        if name is not None and v.__class__ is int and 0 <= v <= _U64_MAX:
            out[name] = v
    return out


def parse_blockstats(
    reply: Any, limit: int = MAX_DEVICES, rejected: Counter[str] | None = None
) -> dict[str, dict[str, int]]:
    """Device name -> the six counters, each checked to be an integer in [0, 2^64); at most
    `limit` devices. Entries thrown away are counted in `rejected` by reason."""
    out: dict[str, dict[str, int]] = {}
    rejected = Counter() if rejected is None else rejected
    if not isinstance(reply, list):
        raise ValueError("query-blockstats: reply is not a list")
    for n, entry in enumerate(reply):
        if len(out) >= limit:
            rejected["blockstats.over_limit"] += len(reply) - n
            break
        if not isinstance(entry, dict):
            rejected["blockstats.not_an_object"] += 1
            continue
        name = device_name(entry)
        stats = entry.get("stats")
        if name is None or not isinstance(stats, dict):
            continue  # a device without a name (e.g. an empty CD drive): nothing to report
        counters = {}
        for key in COUNTERS:
            v = stats.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U64_MAX:
                rejected["blockstats.bad_counter"] += 1
                break
            counters[key] = v
        else:
            out[name] = counters
    return out


def idle_time_s(
    d: dict[str, int], period_s: float, idle_ns: int | None, guest_busy_ms: int | None = None
) -> float:
    """VolumeIdleTime: seconds without I/O in the period. QEMU keeps no cumulative idle
    counter. With no operation in the period it is exactly the period. Otherwise, best: the
    period minus the guest's own busy time for that disk (diskstats total-ticks delta, when the
    guest disk behind the volume is known); else QEMU's time since the last operation
    (`idle_time_ns`), a lower bound (idle gaps earlier in the period are not counted)."""
    if d["rd_operations"] == 0 and d["wr_operations"] == 0:
        return period_s
    if guest_busy_ms is not None:
        return min(period_s, max(0.0, period_s - guest_busy_ms / 1000))
    if idle_ns is None:
        return 0.0
    return min(period_s, idle_ns / 1e9)


def parse_query_pci(reply: Any) -> dict[tuple[int, int, int], str]:
    """(bus, slot, function) -> qdev id of every PCI device that has one, bridges included."""
    out: dict[tuple[int, int, int], str] = {}

    def walk(devices: Any) -> None:
        for dev in devices if isinstance(devices, list) else []:
            if not isinstance(dev, dict):
                continue
            addr = tuple(dev.get(k) for k in ("bus", "slot", "function"))
            qdev = dev.get("qdev_id")
            if all(v.__class__ is int for v in addr) and isinstance(qdev, str) and qdev:
                out[addr] = qdev  # type: ignore[index]
            bridge = dev.get("pci_bridge")
            if isinstance(bridge, dict):
                walk(bridge.get("devices"))

    for bus in reply if isinstance(reply, list) else []:
        if isinstance(bus, dict):
            walk(bus.get("devices"))
    return out


def map_guest_disks(
    disks: Any, pci: dict[tuple[int, int, int], str], instance_id: str
) -> dict[str, str]:
    """Guest disk name (vdb) -> VolumeId, through the PCI address qemu-ga reports for each disk
    (guest-get-disks `address.pci-controller`) and the qdev id QEMU has at that address. Works
    without udev in the guest, unlike serials."""
    out = {}
    for disk in disks if isinstance(disks, list) else []:
        if not isinstance(disk, dict) or disk.get("partition") is not False:
            continue
        name, address = disk.get("name"), disk.get("address")
        ctl = address.get("pci-controller") if isinstance(address, dict) else None
        if not isinstance(name, str) or not isinstance(ctl, dict):
            continue
        qdev = pci.get((ctl.get("bus"), ctl.get("slot"), ctl.get("function")))  # type: ignore[arg-type]
        if qdev and _VOL_RE.search(qdev):
            out[name.rsplit("/", 1)[-1]] = volume_id(qdev, instance_id)
    return out


DISK_MAP_RESCAN_CYCLES = 10  # hot-plugged disks appear within this many cycles


def guest_busy_commands(ctx: VmContext) -> tuple[str, ...]:
    """The guest agent commands guest_busy_by_volume needs this cycle (none: no estimate)."""
    needed = {"guest-get-disks", "guest-get-diskstats"}
    if ctx.config.diskio is None or ctx.qga is None or not needed <= ctx.qga_commands:
        return ()
    if disk_map_due(ctx):
        return ("guest-get-disks", "guest-get-diskstats")
    return ("guest-get-diskstats",)


def disk_map_due(ctx: VmContext) -> bool:
    cached = ctx.cache.get("guest_disk_volumes")
    return cached is None or cached[0] >= DISK_MAP_RESCAN_CYCLES


async def guest_busy_by_volume(ctx: VmContext) -> dict[str, int]:
    """Volume -> the guest's cumulative busy ms for its disk; {} when it cannot be known."""
    if not guest_busy_commands(ctx):
        return {}
    cached = ctx.cache.get("guest_disk_volumes")
    if cached is None or disk_map_due(ctx):  # (None checked again for the type checker)
        pci = parse_query_pci(await ctx.qmp.execute("query-pci"))
        cached = [0, map_guest_disks(await ctx.qga_call("guest-get-disks"), pci,
                                     ctx.spec.instance_id)]  # fmt: skip
    cached[0] += 1
    ctx.cache["guest_disk_volumes"] = cached
    if not cached[1]:
        return {}
    stats = parse_diskstats(await ctx.qga_call("guest-get-diskstats"), ctx.config.limits.max_disks)
    return {vol: stats[name]["total-ticks"] for name, vol in cached[1].items() if name in stats}


def volume_values(
    d: dict[str, int],
    period_s: float,
    idle_ns: int | None = None,
    timed: dict[int, float] | None = None,
    guest_busy_ms: int | None = None,
) -> dict[str, float]:
    """Per-period EBS values from one device's counter deltas."""
    return {
        "VolumeIdleTime": idle_time_s(d, period_s, idle_ns, guest_busy_ms),
        "VolumeReadOps": d["rd_operations"],
        "VolumeWriteOps": d["wr_operations"],
        "VolumeReadBytes": d["rd_bytes"],
        "VolumeWriteBytes": d["wr_bytes"],
        "VolumeTotalReadTime": d["rd_total_time_ns"] / 1e9,
        "VolumeTotalWriteTime": d["wr_total_time_ns"] / 1e9,
        "VolumeQueueLength": queue_length(d, period_s, timed),
    }


class BlockStats(Collector[BlockSample]):
    name = "blockstats"

    def enabled(self, config: object) -> bool:
        return bool(getattr(config, "ec2_enabled", True) or getattr(config, "ebs_enabled", True))

    def qmp_wants(self, ctx: VmContext) -> tuple[tuple[str, dict[str, Any] | None], ...]:
        return (("query-blockstats", None),)

    def qga_wants(self, ctx: VmContext) -> tuple[str, ...]:
        return guest_busy_commands(ctx)

    async def sample(self, ctx: VmContext) -> BlockSample:
        assert ctx.pid is not None
        reply = await ctx.qmp_call("query-blockstats")
        devices = parse_blockstats(reply, ctx.config.limits.max_block_devices, ctx.rejected)
        idle = {k: v for k, v in parse_idle_ns(reply).items() if k in devices}
        timed = {k: v for k, v in parse_timed_depth(reply).items() if k in devices}
        try:
            busy = await guest_busy_by_volume(ctx)
        except (QgaError, QmpError, ValueError) as exc:
            ctx.rejected["blockstats.guest_busy_unavailable"] += 1
            log.debug("vm %s: guest disk busy time: %s", ctx.spec.instance_id, exc)
            busy = {}
        return BlockSample(ctx.pid, time.monotonic(), devices, idle, timed, busy)

    def emit(
        self, prev: BlockSample | None, cur: BlockSample, ctx: VmContext, out: Emitter
    ) -> None:
        if prev is None or prev.pid != cur.pid:
            return
        period = cur.mono_s - prev.mono_s
        if period <= 0:
            return
        deltas = counter_deltas(prev.devices, cur.devices)
        if not deltas:
            return
        if ctx.config.ebs_enabled:
            for device, d in deltas.items():
                dims = {"VolumeId": volume_id(device, ctx.spec.instance_id)}
                vol = dims["VolumeId"]
                busy = None
                if vol in cur.guest_busy_ms and vol in prev.guest_busy_ms:
                    busy = counter_delta(prev.guest_busy_ms[vol], cur.guest_busy_ms[vol])
                values = volume_values(
                    d, period, cur.idle_ns.get(device), cur.timed_depth.get(device), busy
                )
                out.emit_all(values, dims)
        if ctx.config.ec2_enabled:
            totals = {
                name: sum(d[key] for d in deltas.values())
                for name, key in (
                    ("DiskReadOps", "rd_operations"),
                    ("DiskWriteOps", "wr_operations"),
                    ("DiskReadBytes", "rd_bytes"),
                    ("DiskWriteBytes", "wr_bytes"),
                )
            }
            out.emit_all(totals, {"InstanceId": ctx.spec.instance_id})
