"""diskio_* (CloudWatch Agent names) from the guest agent's guest-get-diskstats (the guest's
/proc/diskstats, qemu-ga 7.1+). Counters become per-period deltas; iops_in_progress is the
in-flight count when sampled. Dimension `name` is the guest's device name. Absent counters are 0
(older kernels lack some)."""

from __future__ import annotations

from typing import NamedTuple

from collectors.guest_devices import DeviceSource, GuestDeviceCounters

SECTOR = 512


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
)  # fmt: skip
parse_diskstats = DISKSTATS.parse


class GuestDiskio(GuestDeviceCounters):
    name = "guest_diskio"
    plugin = "diskio"
    qga_command = DISKSTATS.command
    device_source = DISKSTATS
