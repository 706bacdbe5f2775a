"""diskio_* (CloudWatch Agent names) from the guest agent's guest-get-diskstats (the guest's
/proc/diskstats, qemu-ga 7.1+), the file gopsutil's disk.IOCounters reads for telegraf's diskio
input. Every field is the same /proc/diskstats column telegraf uses, so each is exact:

| metric | /proc/diskstats column (qemu-ga field) | gopsutil |
|---|---|---|
| diskio_reads, _writes | completed (read-ios, write-ios) | ReadCount, WriteCount |
| diskio_read_bytes, _write_bytes | sectors x 512 (read-, write-sectors) | ReadBytes, WriteBytes |
| diskio_read_time, _write_time | ms reading, writing (read-, write-ticks) | ReadTime, WriteTime |
| diskio_io_time | ms the device was busy (total-ticks) | IoTime |
| diskio_iops_in_progress | requests in flight (ios-pgr) | IopsInProgress |

telegraf reports the counters cumulative and the CloudWatch Agent turns them into per-period
deltas (its cumulativetodelta processor, which leaves iops_in_progress as sampled and drops a
series' first value): here too, counters become per-period deltas, the first sample only primes,
and iops_in_progress is the in-flight count when sampled. Dimension `name` is the guest's device
name. Absent counters are 0 (older kernels lack some).

Which devices: gopsutil skips a device whose eleven counters (the eight above, plus merged reads
and writes and the weighted time) are all 0, such as an unused loop or ram device, and so does
this collector. `resources` naming devices (no `"*"`) are telegraf's `devices`: exact names
compared by basename (`/dev/vdb` is vdb), or glob patterns (`vd*`), matched against the device
name only (telegraf also tries udev's DEVLINKS, which the host cannot see).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from collectors.guest_devices import DeviceSource, GuestDeviceCounters

SECTOR = 512

# The /proc/diskstats columns gopsutil's IOCountersStat holds; all 0: not reported (gopsutil
# disk/disk_linux.go IOCountersWithContext: `if d == empty { continue }`).
_GOPSUTIL_FIELDS = (
    "read-ios", "read-merges", "read-sectors", "read-ticks",
    "write-ios", "write-merges", "write-sectors", "write-ticks",
    "ios-pgr", "total-ticks", "weight-ticks",
)  # fmt: skip


class DiskCounters(NamedTuple):
    """Cumulative, per guest block device: operations, 512-byte sectors, milliseconds."""

    read_ios: int
    write_ios: int
    read_sectors: int
    write_sectors: int
    read_ticks: int
    write_ticks: int
    total_ticks: int  # busy time
    weight_ticks: int  # time in queue: busy time weighted by the requests in flight


def all_zero(entry: dict[str, Any]) -> bool:
    """Every counter gopsutil reads is 0 (an absent one counts as 0): a device telegraf never
    reports."""
    stats = entry.get("stats")
    if not isinstance(stats, dict):
        return False
    for field in _GOPSUTIL_FIELDS:
        value = stats.get(field, 0)
        if value.__class__ is not int or value != 0:
            return False
    return True


DISKSTATS = DeviceSource(
    "guest-get-diskstats", "diskstats", "stats", DiskCounters,
    counters=(
        ("read-ios", "diskio_reads", 1),
        ("write-ios", "diskio_writes", 1),
        ("read-sectors", "diskio_read_bytes", SECTOR),
        ("write-sectors", "diskio_write_bytes", SECTOR),
        ("read-ticks", "diskio_read_time", 1),
        ("write-ticks", "diskio_write_time", 1),
        ("total-ticks", "diskio_io_time", 1),
        ("weight-ticks", None, 1),  # read for VolumeQueueLength, not a diskio metric
    ),
    gauges=(("ios-pgr", "diskio_iops_in_progress"),),  # requests in flight
    absent=0, without_stats_ok=False, dimension="name", limit_name="max_disks",
    unreported=all_zero, resource_basename=True,
)  # fmt: skip
parse_diskstats = DISKSTATS.parse


class GuestDiskio(GuestDeviceCounters):
    name = "guest_diskio"
    plugin = "diskio"
    qga_command = DISKSTATS.command
    device_source = DISKSTATS
