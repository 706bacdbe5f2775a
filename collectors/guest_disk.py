"""disk_* (CloudWatch Agent names) from the guest agent's guest-get-fsinfo.

qemu-ga computes `used-bytes` = (f_blocks - f_bfree) * f_frsize and `total-bytes` = used +
f_bavail * f_frsize, the df semantics; 9.1+ adds `total-bytes-privileged` = f_blocks * f_frsize.
disk_used_percent = used / total-bytes * 100 is then exactly the CloudWatch Agent's figure.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hiveagent.collector import Collector, Emitter, VmView, bounded_entries, clean_dimension
from hiveagent.config import Limits

_MAX_BYTES = 1 << 63


@dataclass(frozen=True)
class FsRecord:
    mountpoint: str
    device: str
    fstype: str
    used: int
    total: int  # used + available to unprivileged users
    total_privileged: int | None  # f_blocks * f_frsize (qemu-ga 9.1+)
    volume_id: str | None = None  # from the disk's serial, when it is a Spinifex volume


def _size(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_BYTES:
        return None
    return value


_SERIAL_RE = re.compile(r"^vol([0-9a-f]{17})$")


def volume_of(entry: dict[str, Any]) -> str | None:
    """The VolumeId of a filesystem's disk, from its virtio serial: Spinifex sets the serial
    to the volume id without its dash (`vol0123...`). qemu-ga reports the serial only when the
    guest has udev; otherwise (and for other serials) None."""
    disks = entry.get("disk")
    if not isinstance(disks, list) or len(disks) != 1 or not isinstance(disks[0], dict):
        return None  # none, or a filesystem over several disks (LVM, RAID): no single volume
    serial = disks[0].get("serial")
    m = _SERIAL_RE.match(serial) if isinstance(serial, str) else None
    return f"vol-{m.group(1)}" if m else None


def parse_fsinfo(
    reply: Any, limit: int = Limits.max_filesystems, rejected: Counter[str] | None = None
) -> list[FsRecord]:
    """Filesystems with usable numbers, at most `limit`, each mount point once. Every entry
    thrown away is counted in `rejected` by reason."""
    rejected = Counter() if rejected is None else rejected
    out: list[FsRecord] = []
    seen: set[str] = set()
    for entry in bounded_entries(reply, "fsinfo", limit, rejected, out):
        if not isinstance(entry, dict):
            rejected["fsinfo.not_an_object"] += 1
            continue
        mountpoint = clean_dimension(entry.get("mountpoint"))
        device = clean_dimension(entry.get("name"))
        fstype = clean_dimension(entry.get("type"))
        used = _size(entry.get("used-bytes"))
        total = _size(entry.get("total-bytes"))
        privileged = _size(entry.get("total-bytes-privileged"))
        if mountpoint is None or device is None or fstype is None:
            rejected["fsinfo.bad_name"] += 1
            continue
        if used is None or total is None:
            # Absent sizes are normal (statvfs failed in the guest); wrong ones are not.
            if "used-bytes" in entry or "total-bytes" in entry:
                rejected["fsinfo.bad_size"] += 1
            continue
        if used > total:
            rejected["fsinfo.used_over_total"] += 1
            continue
        if mountpoint in seen:
            rejected["fsinfo.duplicate_mountpoint"] += 1
            continue
        seen.add(mountpoint)
        if privileged is not None and privileged < total:
            rejected["fsinfo.bad_size"] += 1
            privileged = None
        out.append(FsRecord(mountpoint, device, fstype, used, total, privileged, volume_of(entry)))
    return out


def disk_values(fs: FsRecord) -> dict[str, float]:
    values: dict[str, float] = {"disk_used": fs.used}
    if fs.total_privileged is not None:
        values["disk_total"] = fs.total_privileged
        values["disk_free"] = fs.total_privileged - fs.used
    else:
        values["disk_total"] = fs.total
        values["disk_free"] = fs.total - fs.used
    if fs.total > 0:
        values["disk_used_percent"] = 100.0 * fs.used / fs.total
    return values


class GuestDisk(Collector[list[FsRecord]]):
    name = "guest_disk"
    plugin = "disk"
    qga_command = "guest-get-fsinfo"

    def sample(self, vm: VmView, prev: list[FsRecord] | None) -> list[FsRecord]:
        reply = vm.qga_reply("guest-get-fsinfo")
        return parse_fsinfo(reply, vm.config.limits.max_filesystems, vm.rejected)

    def emit(
        self, prev: list[FsRecord] | None, cur: list[FsRecord], vm: VmView, out: Emitter
    ) -> None:
        plugin = vm.config.disk
        assert plugin is not None
        for fs in cur:
            if fs.fstype in plugin.ignore_file_system_types or not plugin.wants_mount(
                fs.mountpoint
            ):
                continue
            dims = {"InstanceId": vm.spec.instance_id, "path": fs.mountpoint, "fstype": fs.fstype}
            if not plugin.drop_device:
                dims["device"] = fs.device
            if fs.volume_id:
                dims["VolumeId"] = fs.volume_id
            out.emit_all({n: v for n, v in disk_values(fs).items() if n in plugin.metrics}, dims)
