"""Lookups in a VM's device tree (QOM) and chardevs through a QMP session: the guest agent port's
chardev and socket, the balloon, the PCI map (qdev id per PCI address). Pure parsers for the
replies, and the async lookups that take a QmpSession (nothing else of the agent's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hiveagent.qmp import QmpCommandError, QmpSession

QGA_PORT_NAME = "org.qemu.guest_agent.0"
PERIPHERAL_CONTAINERS = ("/machine/peripheral", "/machine/peripheral-anon")


@dataclass(frozen=True)
class ChardevInfo:
    label: str
    socket_path: str | None  # the unix socket path of a server chardev, if any
    frontend_open: bool


def parse_children(qom_list_reply: Any, type_prefix: str) -> list[str]:
    """Names of the entries of a qom-list reply whose type starts with `child<type_prefix`
    (`child<virtserialport>`, `child<virtio-balloon-pci>`, ...)."""
    if not isinstance(qom_list_reply, list):
        return []
    wanted = f"child<{type_prefix}"
    return [
        e["name"]
        for e in qom_list_reply
        if isinstance(e, dict)
        and isinstance(e.get("type"), str)
        and e["type"].startswith(wanted)
        and isinstance(e.get("name"), str)
    ]


def parse_virtserialports(qom_list_reply: Any) -> list[str]:
    """Names of `child<virtserialport>` entries in a qom-list reply."""
    return parse_children(qom_list_reply, "virtserialport>")


def parse_chardev_filename(filename: str) -> str | None:
    """`unix:/path,server=on` or `disconnected:unix:/path,server=on` -> `/path`."""
    if filename.startswith("disconnected:"):
        filename = filename[len("disconnected:") :]
    if not filename.startswith("unix:"):
        return None
    return filename[len("unix:") :].split(",", 1)[0] or None


def parse_query_chardev(reply: Any) -> dict[str, ChardevInfo]:
    out: dict[str, ChardevInfo] = {}
    if not isinstance(reply, list):
        return out
    for e in reply:
        if not isinstance(e, dict):
            continue
        label, filename = e.get("label"), e.get("filename")
        if not isinstance(label, str) or not isinstance(filename, str):
            continue
        out[label] = ChardevInfo(
            label=label,
            socket_path=parse_chardev_filename(filename),
            frontend_open=e.get("frontend-open") is True,
        )
    return out


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


async def peripherals(session: QmpSession, type_prefix: str) -> list[str]:
    """QOM paths of the peripherals (with or without an id) whose type starts with
    `child<type_prefix`."""
    out: list[str] = []
    for container in PERIPHERAL_CONTAINERS:
        try:
            entries = await session.execute("qom-list", {"path": container})
        except QmpCommandError:
            continue
        out.extend(f"{container}/{name}" for name in parse_children(entries, type_prefix))
    return out


async def find_guest_agent_chardev(session: QmpSession) -> str | None:
    """The chardev label behind the org.qemu.guest_agent.0 port, via qom-list and qom-get."""
    for path in await peripherals(session, "virtserialport>"):
        name = await session.execute("qom-get", {"path": path, "property": "name"})
        if name == QGA_PORT_NAME:
            chardev = await session.execute("qom-get", {"path": path, "property": "chardev"})
            return chardev if isinstance(chardev, str) else None
    return None


async def find_balloon(session: QmpSession) -> str | None:
    """QOM path of the VM's virtio-balloon (with or without an id), if it has one."""
    found = await peripherals(session, "virtio-balloon")
    return found[0] if found else None
