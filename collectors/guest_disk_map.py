"""Which volume is behind each guest disk, from the guest agent's guest-get-disks: qemu-ga reports
each disk's PCI address (`address.pci-controller`), and QEMU's PCI map (query-pci, read by the VM
session) has the qdev id at that address, which names the volume. Works without udev in the
guest, unlike serials. Looked up again every DISK_MAP_RESCAN_CYCLES samples (hot-plug)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hiveagent.model import volume_id

DISK_MAP_RESCAN_CYCLES = 10  # hot-plugged disks appear within this many cycles


def map_guest_disks(
    disks: Any, pci: Mapping[tuple[int, int, int], str], instance_id: str
) -> dict[str, str]:
    """Guest disk name (vdb) -> VolumeId, for the disks whose PCI device names a volume."""
    out = {}
    for disk in disks if isinstance(disks, list) else []:
        if not isinstance(disk, dict) or disk.get("partition") is not False:
            continue
        name, address = disk.get("name"), disk.get("address")
        ctl = address.get("pci-controller") if isinstance(address, dict) else None
        if not isinstance(name, str) or not isinstance(ctl, dict):
            continue
        qdev = pci.get((ctl.get("bus"), ctl.get("slot"), ctl.get("function")))  # type: ignore[arg-type]
        vol = volume_id(qdev, instance_id) if qdev else None
        if vol is not None and vol.startswith("vol-"):
            out[name.rsplit("/", 1)[-1]] = vol
    return out
