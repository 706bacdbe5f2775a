"""EBS volume metrics and the EC2 per-instance sums from QMP query-blockstats: EBS* over the
instance's volumes and Disk* over its instance-store disks, as AWS reports them on Nitro.

One entry per guest device; only the top-level `stats` carries counters. The device is named by
`device` (legacy -drive id) or, with -blockdev, by the qdev path's `-device id`. VolumeId is the
`vol-...` id inside that name (Spinifex: `vdisk-vol-...`), else `<instance-id>:<device>`.
VolumeIdleTime's best estimate uses the guest's own busy time for the disk behind each volume
(guest-get-diskstats, through the disk map of collectors.guest_disk_map).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collectors.guest_disk_map import DISK_MAP_RESCAN_CYCLES, map_guest_disks
from collectors.guest_diskio import parse_diskstats
from hiveagent.collector import Collector, Emitter, VmView, bounded_entries
from hiveagent.config import Config, Limits
from hiveagent.counters import counter_delta, counter_deltas
from hiveagent.cycle import QmpCall, qmp_key
from hiveagent.model import is_volume, volume_id
from hiveagent.qmp import QmpError
from hiveagent.qom import parse_query_pci
from qga.client import QgaError

_U64_MAX = (1 << 64) - 1


class BlockCounters(NamedTuple):
    """Cumulative, per block device: bytes, operations, nanoseconds."""

    rd_bytes: int
    wr_bytes: int
    rd_operations: int
    wr_operations: int
    rd_total_time_ns: int
    wr_total_time_ns: int


COUNTERS = BlockCounters._fields
GUEST_BUSY_COMMANDS = ("guest-get-disks", "guest-get-diskstats")


@dataclass(frozen=True)
class BlockSample:
    pid: int
    mono_s: float
    devices: dict[str, BlockCounters]  # device name -> counters
    idle_ns: dict[str, int] = field(default_factory=dict)  # QEMU's idle_time_ns, when known
    # QEMU's own average queue depth (rd + wr) per accounting interval, for devices configured
    # with stats-intervals: {device: {interval_length_s: depth}}
    timed_depth: dict[str, dict[int, float]] = field(default_factory=dict)
    # The guest's own busy time per volume (diskstats total-ticks, ms), when the guest disk
    # behind each volume is known: the best VolumeIdleTime estimate.
    guest_busy_ms: dict[str, int] = field(default_factory=dict)
    guest_queue_ms: dict[str, int] = field(default_factory=dict)  # weight-ticks, ms
    disk_map: dict[str, str] | None = None  # guest disk -> VolumeId (None: not known)
    disk_map_age: int = 0  # samples since it was looked up (or tried)


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


def queue_length(
    d: BlockCounters,
    period_s: float,
    timed: dict[int, float] | None,
    guest_queue_ms: int | None = None,
) -> float:
    """VolumeQueueLength, the average number of requests outstanding over the period. Best:
    the guest's own time in queue for the disk behind the volume (diskstats weight-ticks
    delta / period: iostat's aqu-sz), which also counts requests stuck in flight; else QEMU's
    own average queue depth over the accounting interval that matches the period (the
    shortest one at least as long, else the longest) when the drive has stats-intervals;
    otherwise Little's law over the requests completed in the period (total time / period),
    which cannot see requests that have not completed."""
    if guest_queue_ms is not None:
        return guest_queue_ms / (period_s * 1000)
    if timed:
        fitting = [n for n in timed if n >= period_s - 1]
        return timed[min(fitting) if fitting else max(timed)]
    return (d.rd_total_time_ns + d.wr_total_time_ns) / (period_s * 1e9)


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
    reply: Any, limit: int = Limits.max_block_devices, rejected: Counter[str] | None = None
) -> dict[str, BlockCounters]:
    """Device name -> the six counters, each checked to be an integer in [0, 2^64); at most
    `limit` devices. Entries thrown away are counted in `rejected` by reason."""
    out: dict[str, BlockCounters] = {}
    rejected = Counter() if rejected is None else rejected
    for entry in bounded_entries(reply, "blockstats", limit, rejected, out):
        if not isinstance(entry, dict):
            rejected["blockstats.not_an_object"] += 1
            continue
        name = device_name(entry)
        stats = entry.get("stats")
        if name is None or not isinstance(stats, dict):
            continue  # a device without a name (e.g. an empty CD drive): nothing to report
        values = [stats.get(key) for key in COUNTERS]
        if all(v.__class__ is int and 0 <= v <= _U64_MAX for v in values):
            out[name] = tuple.__new__(BlockCounters, values)
        else:
            rejected["blockstats.bad_counter"] += 1
    return out


def idle_time_s(
    d: BlockCounters, period_s: float, idle_ns: int | None, guest_busy_ms: int | None = None
) -> float:
    """VolumeIdleTime: seconds without I/O in the period. QEMU keeps no cumulative idle
    counter, and its counters move when requests complete. Best: the period minus the guest's
    own busy time for that disk (diskstats total-ticks delta, when the guest disk behind the
    volume is known), which also counts requests stuck in flight (a stalled volume is not
    idle). Else, with no operation completed in the period, the period; otherwise QEMU's time
    since the last operation (`idle_time_ns`), a lower bound (earlier idle gaps not counted)."""
    if guest_busy_ms is not None:
        return min(period_s, max(0.0, period_s - guest_busy_ms / 1000))
    if d.rd_operations == 0 and d.wr_operations == 0:
        return period_s
    if idle_ns is None:
        return 0.0
    return min(period_s, idle_ns / 1e9)


def guest_busy_wanted(config: Config) -> bool:
    """VolumeIdleTime's best estimate needs the guest's busy time per disk: asked when the
    diskio plugin and EBS metrics are on and the guest agent is used."""
    return config.diskio is not None and config.ebs_enabled and config.qga_enabled


def guest_busy_known(vm: VmView) -> bool:
    """Whether the guest's busy time per volume can be asked this cycle."""
    return (
        guest_busy_wanted(vm.config)
        and vm.facts.qga_connected
        and all(c in vm.facts.qga_commands for c in GUEST_BUSY_COMMANDS)
    )


def disk_map_due(prev: BlockSample | None) -> bool:
    """The disk map is looked up on the first sample and every DISK_MAP_RESCAN_CYCLES."""
    return prev is None or prev.disk_map_age >= DISK_MAP_RESCAN_CYCLES


def volume_values(
    d: BlockCounters,
    period_s: float,
    idle_ns: int | None = None,
    timed: dict[int, float] | None = None,
    guest_busy_ms: int | None = None,
    guest_queue_ms: int | None = None,
) -> dict[str, float]:
    """Per-period EBS values from one device's counter deltas (and the guest's, when known)."""
    return {
        "VolumeIdleTime": idle_time_s(d, period_s, idle_ns, guest_busy_ms),
        "VolumeReadOps": d.rd_operations,
        "VolumeWriteOps": d.wr_operations,
        "VolumeReadBytes": d.rd_bytes,
        "VolumeWriteBytes": d.wr_bytes,
        "VolumeTotalReadTime": d.rd_total_time_ns / 1e9,
        "VolumeTotalWriteTime": d.wr_total_time_ns / 1e9,
        "VolumeQueueLength": queue_length(d, period_s, timed, guest_queue_ms),
    }


def instance_totals(prefix: str, deltas: list[BlockCounters]) -> dict[str, float]:
    """The per-instance sums AWS reports (EBS* over volumes, Disk* over instance store)."""
    return {
        f"{prefix}ReadOps": sum(d.rd_operations for d in deltas),
        f"{prefix}WriteOps": sum(d.wr_operations for d in deltas),
        f"{prefix}ReadBytes": sum(d.rd_bytes for d in deltas),
        f"{prefix}WriteBytes": sum(d.wr_bytes for d in deltas),
    }


class BlockStats(Collector[BlockSample]):
    name = "blockstats"

    def enabled(self, config: object) -> bool:
        return bool(getattr(config, "ec2_enabled", True) or getattr(config, "ebs_enabled", True))

    def qmp_wants(self, vm: VmView, prev: BlockSample | None) -> tuple[QmpCall, ...]:
        if guest_busy_wanted(vm.config) and disk_map_due(prev):
            return (qmp_key("query-blockstats"), qmp_key("query-pci"))
        return (qmp_key("query-blockstats"),)

    def qga_wants(self, vm: VmView, prev: BlockSample | None) -> tuple[str, ...]:
        if not guest_busy_known(vm):
            return ()
        if disk_map_due(prev):
            return GUEST_BUSY_COMMANDS
        return ("guest-get-diskstats",) if prev and prev.disk_map else ()

    def sample(self, vm: VmView, prev: BlockSample | None) -> BlockSample:
        pid = vm.facts.pid
        assert pid is not None
        reply = vm.qmp_reply("query-blockstats")
        mono_s = vm.replies.qmp_at  # the counters' time: when QEMU answered
        devices = parse_blockstats(reply, vm.config.limits.max_block_devices, vm.rejected)
        idle = {k: v for k, v in parse_idle_ns(reply).items() if k in devices}
        timed = {k: v for k, v in parse_timed_depth(reply).items() if k in devices}
        disk_map = prev.disk_map if prev else None
        age = (prev.disk_map_age if prev else 0) + 1
        busy: dict[str, int] = {}
        queue: dict[str, int] = {}
        if guest_busy_wanted(vm.config):
            try:
                if disk_map_due(prev):  # query-pci was asked; guest-get-disks if it could be
                    disk_map, age = None, 1
                    if guest_busy_known(vm):
                        pci = parse_query_pci(vm.qmp_reply("query-pci"))
                        disks = vm.qga_reply("guest-get-disks")
                        disk_map = map_guest_disks(disks, pci, vm.spec.instance_id)
                if disk_map and guest_busy_known(vm):
                    stats = parse_diskstats(
                        vm.qga_reply("guest-get-diskstats"), vm.config.limits.max_disks
                    )
                    for disk, vol in disk_map.items():
                        if disk in stats:
                            busy[vol] = stats[disk].counters.total_ticks
                            queue[vol] = stats[disk].counters.weight_ticks
            except (QgaError, QmpError, ValueError):
                vm.rejected["blockstats.guest_busy_unavailable"] += 1
        return BlockSample(
            pid,
            mono_s,
            devices,
            idle,
            timed,
            guest_busy_ms=busy,
            guest_queue_ms=queue,
            disk_map=disk_map,
            disk_map_age=age,
        )

    def emit(self, prev: BlockSample | None, cur: BlockSample, vm: VmView, out: Emitter) -> None:
        if prev is None or prev.pid != cur.pid:
            return
        period = cur.mono_s - prev.mono_s
        if period <= 0:
            return
        deltas = counter_deltas(prev.devices, cur.devices)
        if not deltas:
            return
        config, instance_id = vm.config, vm.spec.instance_id
        if config.ebs_enabled:
            for device, d in deltas.items():
                if not (vm.spec.all_volumes or is_volume(device)):
                    continue  # instance store: no EBS volume metrics
                vol = volume_id(device, instance_id)
                busy = queue = None
                if vol in cur.guest_busy_ms and vol in prev.guest_busy_ms:
                    busy = counter_delta(prev.guest_busy_ms[vol], cur.guest_busy_ms[vol])
                    queue = counter_delta(prev.guest_queue_ms[vol], cur.guest_queue_ms[vol])
                timed = cur.timed_depth.get(device)
                values = volume_values(d, period, cur.idle_ns.get(device), timed, busy, queue)
                out.emit_all(values, {"VolumeId": vol})
        if config.ec2_enabled:
            # As on Nitro: EBS I/O per instance as EBS*, Disk* for instance store only.
            volumes: list[BlockCounters] = []
            store: list[BlockCounters] = []
            for device, d in deltas.items():
                (volumes if vm.spec.all_volumes or is_volume(device) else store).append(d)
            for prefix, group in (("EBS", volumes), ("Disk", store)):
                if group:
                    out.emit_all(instance_totals(prefix, group), {"InstanceId": instance_id})
