"""disk_* (CloudWatch Agent names) from the guest agent's guest-get-fsinfo.

What telegraf's disk input sends (plugins/inputs/disk/disk.go over gopsutil's disk.Usage,
disk/disk_unix.go, from statfs(2) of the mount point):
  total = f_blocks * f_bsize, free = f_bavail * f_bsize, used = (f_blocks - f_bfree) * f_bsize,
  used_percent = used / (used + free) * 100 (0 when used + free is 0), and a filesystem whose
  total is 0 is not reported.
What qemu-ga sends, from statvfs(3) of the same mount point (qga/commands-posix.c,
build_guest_fsinfo):
  used-bytes = (f_blocks - f_bfree) * f_frsize,
  total-bytes = (f_blocks - f_bfree + f_bavail) * f_frsize (used + available to unprivileged
  users),
  total-bytes-privileged = f_blocks * f_frsize (qemu-ga 9.1+; QAPI: "filesystem capacity in
  bytes for privileged users (since 9.1)").
Linux gives statvfs's f_frsize the filesystem's own fragment size, or f_bsize when it sets none
(vfs_statfs), and the block filesystems qemu-ga lists (it skips mounts whose source is not a
/dev path) set none, so f_frsize == f_bsize there. Hence, exactly as gopsutil:
  disk_used = used-bytes; disk_free = total-bytes - used-bytes (= f_bavail * f_frsize);
  disk_used_percent = used-bytes / total-bytes * 100 (used + free = total-bytes);
  disk_total = total-bytes-privileged.
Before qemu-ga 9.1, f_blocks is not sent and disk_total is total-bytes: smaller than the
CloudWatch Agent's by (f_bfree - f_bavail) * f_frsize, the free space only root may use. That is
0 where the filesystem reserves nothing (XFS, vfat, ext4 with `-m 0`) and at most the
filesystem's reservation: on ext4, its reserved blocks (5% by default, tune2fs -m) plus the up to
2% (at most 4096 clusters) ext4 holds back for delayed allocation; on btrfs, whatever its
f_bavail estimate keeps back (RAID profiles, metadata). On the recorded 64 MiB ext4
filesystem (tests/data/qemu-7.2) it is 4,696,064 bytes, 8.2% of the true 57,381,888 (small
filesystems lose more: metadata already takes part of f_blocks).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from collectors.guest_host import emit_guest
from hiveagent.collector import (
    Collector,
    Emitter,
    VmView,
    bounded_entries,
    clean_dimension,
    metric_set,
)
from hiveagent.config import Limits

_MAX_BYTES = 1 << 63


@dataclass(frozen=True)
class FsRecord:
    mountpoint: str
    device: str
    fstype: str
    used: int  # used-bytes: (f_blocks - f_bfree) * f_frsize
    total: int  # total-bytes: used + f_bavail * f_frsize (available to unprivileged users)
    total_privileged: int | None  # total-bytes-privileged: f_blocks * f_frsize (qemu-ga 9.1+)
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
    """gopsutil's disk.Usage and telegraf's used_percent from qemu-ga's figures (module
    docstring); empty for a filesystem of size 0, which telegraf skips."""
    size = fs.total if fs.total_privileged is None else fs.total_privileged
    if size == 0:
        return {}
    free = fs.total - fs.used  # f_bavail * f_frsize
    return {
        "disk_used": fs.used,
        "disk_free": free,
        "disk_total": size,
        "disk_used_percent": 100.0 * fs.used / fs.total if fs.total > 0 else 0.0,
    }


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
        wanted = metric_set(plugin.metrics)
        for fs in cur:
            if fs.fstype in plugin.ignore_file_system_types or not plugin.wants_mount(
                fs.mountpoint
            ):
                continue
            # telegraf's disk tags (path, device, fstype; mode excluded by the CloudWatch
            # Agent, device too with drop_device), and the ec2tagger's VolumeId when asked
            dims = {"path": fs.mountpoint, "fstype": fs.fstype}
            if not plugin.drop_device:
                dims["device"] = fs.device
            if plugin.volume_id and fs.volume_id:
                dims["VolumeId"] = fs.volume_id
            values = {n: v for n, v in disk_values(fs).items() if n in wanted}
            emit_guest(out, vm, values, dims)
