"""The collector framework: what a collector is, what it gets, and how it emits.

A collector (one module in `collectors/`, registered in `collectors/__init__.py`) has two parts:
`sample()` does the only I/O (through `read_*`/QMP/QGA) and returns a typed record; `emit()` is
pure: from the previous and current record it derives values and hands them to the Emitter. The
framework (hiveagent.agent) owns connections, deadlines, error counting and the previous samples.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from hiveagent.catalog import CATALOG, Family
from hiveagent.config import Config
from hiveagent.discovery import VmSpec
from hiveagent.model import Datum
from hiveagent.qmp import QmpSession
from qga.client import QgaClient, QgaClosedError

S = TypeVar("S")


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

    async def qga_call(self, command: str) -> Any:
        """A guest agent command's reply, asked at most once per VM and cycle (two collectors
        may need the same reply: guest_diskio and blockstats' idle-time estimate)."""
        if command not in self.qga_replies:
            if self.qga is None:
                raise QgaClosedError(f"{command}: no guest agent connection")
            self.qga_replies[command] = await self.qga.execute(command)
        return self.qga_replies[command]

    cache: dict[str, Any] = field(default_factory=dict)  # per-VM, lives as long as the pid


MAX_DIMENSION_VALUE = 1024


def clean_dimension(value: Any) -> str | None:
    """A guest-supplied string fit to be a dimension value: printable characters only (no
    control characters, no lone surrogates), 1..1024 of them; None when nothing is left."""
    if not isinstance(value, str):
        return None
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
        self.namespaces = {
            Family.EC2: config.ec2_namespace,
            Family.EBS: config.ebs_namespace,
            Family.GUEST: config.guest_namespace,
            Family.SELF: config.self_metrics.namespace,
        }
        self.timestamp = timestamp
        self.resolution = 1 if (interval_s or config.interval_s) < 60 else 60
        self.datums: list[Datum] = []
        self.rejected: list[str] = []  # reasons for values that could not be emitted

    def emit(self, name: str, value: float, dims: Mapping[str, str]) -> None:
        spec = CATALOG.get(name)
        if spec is None:
            raise KeyError(f"metric {name!r} is not in the catalog")
        keys = frozenset(dims)
        if (name, keys) not in _CHECKED:  # each (metric, dimension names) is checked once
            missing = set(spec.dimensions) - set(spec.optional_dimensions) - keys
            if missing or keys - set(spec.dimensions):
                raise ValueError(f"{name}: dimensions {sorted(dims)} differ from the catalog's")
            _CHECKED.add((name, keys))
        if value.__class__ not in (int, float) or not math.isfinite(value):
            self.rejected.append(f"{name}: not a finite number: {value!r}")
            return
        self.datums.append(
            Datum(
                self.namespaces[spec.family],
                name,
                tuple(sorted(dims.items())),
                float(value),
                spec.unit,
                self.timestamp,
                self.resolution,
            )
        )


_CHECKED: set[tuple[str, frozenset[str]]] = set()


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
