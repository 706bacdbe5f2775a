"""The collector framework: what a collector is, what it gets, and how it emits.

A collector (one module in `collectors/`, registered in `collectors/__init__.py`) has two parts:
`sample()` does the only I/O (through `read_*`/QMP/QGA) and returns a typed record; `emit()` is
pure: from the previous and current record it derives values and hands them to the Emitter. The
framework (hiveagent.agent) owns connections, deadlines, error counting and the previous samples.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from hiveagent.catalog import CATALOG, Family
from hiveagent.config import Config
from hiveagent.discovery import VmSpec
from hiveagent.model import Datum
from hiveagent.qmp import QmpError, QmpSession
from qga.client import QgaClient, QgaClosedError, QgaError

S = TypeVar("S")

# A QMP command with its arguments, hashable: (command, sorted argument items).
QmpCall = tuple[str, tuple[tuple[str, Any], ...]]


def qmp_key(command: str, arguments: Mapping[str, Any] | None = None) -> QmpCall:
    return command, tuple(sorted((arguments or {}).items()))


@dataclass
class VmContext:
    """Everything a collector may use for one VM in one cycle."""

    spec: VmSpec
    config: Config
    qmp: QmpSession
    pid: int | None  # QEMU's pid (SO_PEERCRED); None when QMP is down
    qmp_error: str | None = None
    run_status: str | None = None  # query-status `status`
    qga: QgaClient | None = None  # READY client, or None
    qga_commands: frozenset[str] = frozenset()
    qga_expected: bool = False  # the guest agent answered before in this QEMU's life
    qga_error: str | None = None
    vcpus: int | None = None
    collector_failed: bool = False
    # Guest (or QEMU) input thrown away this cycle, by reason ("<collector>.<why>"): counted
    # per VM and in the agent's stats by the framework.
    rejected: Counter[str] = field(default_factory=Counter)
    qga_replies: dict[str, Any] = field(default_factory=dict)  # this cycle's, by command
    qmp_replies: dict[QmpCall, Any] = field(default_factory=dict)  # this cycle's, asked ahead

    async def qmp_call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """A QMP command's reply: the one the agent asked ahead this cycle (with the cycle's
        other QMP commands, all in flight together) if it did, else asked now. A stored
        QmpError is raised."""
        reply = self.qmp_replies.get(qmp_key(command, arguments), _NOT_ASKED)
        if reply is _NOT_ASKED:
            return await self.qmp.execute(command, arguments)
        if isinstance(reply, QmpError):
            raise reply
        return reply

    async def qga_call(self, command: str) -> Any:
        """A guest agent command's reply, asked at most once per VM and cycle (two collectors
        may need the same reply: guest_diskio and blockstats' idle-time estimate). The agent
        asks this cycle's commands up front, pipelined; a QgaError stored for a command is
        raised here, to the collector that needs it."""
        if command not in self.qga_replies:
            if self.qga is None:
                raise QgaClosedError(f"{command}: no guest agent connection")
            self.qga_replies[command] = await self.qga.execute(command)
        reply = self.qga_replies[command]
        if isinstance(reply, QgaError):
            raise reply
        return reply

    cache: dict[str, Any] = field(default_factory=dict)  # per-VM, lives as long as the pid


_NOT_ASKED = object()
MAX_DIMENSION_VALUE = 1024


def read_file(path: str, limit: int) -> bytes:
    """At most `limit` bytes of a small /proc or /sys file, with bare os.open/os.read: no
    Python file object (which costs more than the read itself, once per VM and cycle)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def clean_dimension(value: Any) -> str | None:
    """A guest-supplied string fit to be a dimension value: printable characters only (no
    control characters, no lone surrogates), 1..1024 of them; None when nothing is left."""
    if not isinstance(value, str):
        return None
    if value.isprintable():  # the usual case: nothing to remove
        return value[:MAX_DIMENSION_VALUE] or None
    cleaned = "".join(ch for ch in value if ch.isprintable())[:MAX_DIMENSION_VALUE]
    return cleaned or None


def guest_counter(value: Any) -> int | None:
    """A guest-supplied cumulative counter: an integer in [0, 2^64), else None."""
    if value.__class__ is not int or not 0 <= value < 1 << 64:
        return None
    return int(value)


class Emitter:
    """Builds Datums for one VM, checking each against the catalog."""

    def __init__(self, config: Config, timestamp: float, interval_s: int | None = None) -> None:
        self.namespaces = {  # by Family value (a str hashes in C; an Enum member does not)
            Family.EC2.value: config.ec2_namespace,
            Family.EBS.value: config.ebs_namespace,
            Family.GUEST.value: config.guest_namespace,
            Family.SELF.value: config.self_metrics.namespace,
        }
        self.timestamp = timestamp
        self.resolution = 1 if (interval_s or config.interval_s) < 60 else 60
        self.datums: list[Datum] = []
        self.rejected: list[str] = []  # reasons for values that could not be emitted

    def emit(self, name: str, value: float, dims: Mapping[str, str]) -> None:
        """One datum; `dims` must carry the catalog's dimension names for `name`."""
        self.emit_all({name: value}, dims)

    def emit_all(self, values: Mapping[str, float], dims: Mapping[str, str]) -> None:
        """One datum per metric in `values`, all with the same dimensions (sorted once)."""
        names = tuple(dims)
        checked = _CHECKED.get(names)
        if checked is None:
            checked = _CHECKED[names] = {}
        dimensions = tuple(sorted(dims.items()))
        append, ts, res = self.datums.append, self.timestamp, self.resolution
        for name, value in values.items():
            known = checked.get(name)
            if known is None:
                known = checked[name] = _check(name, names)
            if value.__class__ not in (int, float) or not math.isfinite(value):
                self.rejected.append(f"{name}: not a finite number: {value!r}")
                continue
            # tuple.__new__ skips the named tuple's Python-level __new__ (half the cost here).
            ns, unit = self.namespaces[known[0]], known[1]
            append(_new(Datum, (ns, name, dimensions, float(value), unit, ts, res, ())))


def _check(name: str, dims: tuple[str, ...]) -> tuple[str, str]:
    """A metric's family (value) and unit, once its dimension names are checked against the
    catalog."""
    spec = CATALOG.get(name)
    if spec is None:
        raise KeyError(f"metric {name!r} is not in the catalog")
    keys = set(dims)
    missing = set(spec.dimensions) - set(spec.optional_dimensions) - keys
    if missing or keys - set(spec.dimensions):
        raise ValueError(f"{name}: dimensions {sorted(dims)} differ from the catalog's")
    return spec.family.value, spec.unit


_new = tuple.__new__

# dimension names (in the caller's order) -> metric -> (family value, unit), checked once each.
_CHECKED: dict[tuple[str, ...], dict[str, tuple[str, str]]] = {}


class Collector(ABC, Generic[S]):
    """One metric source."""

    name: ClassVar[str]
    needs_qmp: ClassVar[bool] = True  # skipped when QMP is down
    qga_command: ClassVar[str | None] = None  # skipped unless the guest agent has it enabled

    # The metrics.metrics_collected section this collector serves ("cpu", "disk", ...): it is
    # enabled when the section is present and follows its metrics_collection_interval.
    plugin: ClassVar[str | None] = None

    def enabled(self, config: Config) -> bool:
        return self.plugin is None or getattr(config, self.plugin) is not None

    def qmp_wants(self, ctx: VmContext) -> tuple[tuple[str, dict[str, Any] | None], ...]:
        """The QMP commands (with arguments) `sample` will call through ctx.qmp_call this
        cycle, asked ahead together with the cycle's other QMP commands."""
        return ()

    def qga_wants(self, ctx: VmContext) -> tuple[str, ...]:
        """The guest agent commands `sample` will call this cycle (asked up front, pipelined,
        when the guest agent has them enabled)."""
        return (self.qga_command,) if self.qga_command else ()

    def interval_s(self, config: Config) -> int | None:
        """The plugin's own metrics_collection_interval, if it has one (None: every cycle)."""
        section = getattr(config, self.plugin) if self.plugin else None
        return section.interval_s if section is not None else None

    @abstractmethod
    async def sample(self, ctx: VmContext) -> S:
        """Do the I/O; return a typed record (monotonic time included where deltas need it)."""

    @abstractmethod
    def emit(self, prev: S | None, cur: S, ctx: VmContext, out: Emitter) -> None:
        """Pure: derive values from two samples and emit them."""
