"""The collector framework: what a collector is, what it reads, and how it emits.

A collector (one module in `collectors/`, registered in `collectors/__init__.py`) is a pure unit:
- `qmp_wants` / `qga_wants` declare, once per cycle, the QMP and guest agent commands it reads;
  the VM session asks them (all of a VM's in flight together) before any collector runs;
- `sample` turns this cycle's replies (and /proc bytes, through its own `read_*`) into a typed
  record; it cannot ask anything else (it is not async, and an undeclared reply raises
  NotAsked);
- `emit` is pure: from the previous and current record it derives values and hands them to the
  Emitter.
The scheduler (hiveagent.scheduler) owns timing, deadlines, error counting and the previous
samples; the VM session (hiveagent.vm) owns the connections.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from hiveagent.catalog import CATALOG, Family
from hiveagent.config import Config
from hiveagent.cycle import NotAsked, QmpCall, Replies, VmFacts, qmp_key
from hiveagent.model import Datum, VmSpec

S = TypeVar("S")


@dataclass(slots=True)
class VmView:
    """What a collector may read for one VM in one cycle."""

    spec: VmSpec
    config: Config
    facts: VmFacts
    replies: Replies
    # Guest (or QEMU) input thrown away this cycle, by reason ("<source>.<why>"): counted per
    # VM and in the agent's stats by the scheduler.
    rejected: Counter[str]

    def qmp_reply(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """A QMP command's reply this cycle; the QmpError it failed with is raised."""
        return _reply(self.replies.qmp, qmp_key(command, arguments), command)

    def qga_reply(self, command: str) -> Any:
        """A guest agent command's reply this cycle; the QgaError it failed with is raised."""
        return _reply(self.replies.qga, command, command)


def _reply(replies: Mapping[Any, Any], key: Any, command: str) -> Any:
    reply = replies.get(key, _NOT_ASKED)
    if reply is _NOT_ASKED:
        raise NotAsked(f"{command}: read but not among the collector's wants")
    if isinstance(reply, Exception):
        raise reply
    return reply


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


def bounded_entries(
    reply: Any, source: str, limit: int, rejected: Counter[str], kept: Sized
) -> Iterator[Any]:
    """The entries of a list reply from the guest (or QEMU), until `kept` holds `limit` of
    them; the rest is counted as `<source>.over_limit`. Not a list: ValueError. Every
    rejection key of a source is `<source>.<why>` (see `reject`)."""
    if not isinstance(reply, list):
        raise ValueError(f"{source}: reply is not a list")
    for n, entry in enumerate(reply):
        if len(kept) >= limit:
            rejected[f"{source}.over_limit"] += len(reply) - n
            return
        yield entry


def clean_dimension(value: Any) -> str | None:
    """A guest-supplied string fit to be a dimension value, which CloudWatch wants in printable
    ASCII with at least one non-blank character, 1..1024 of them: control characters (and lone
    surrogates) removed, other non-ASCII characters escaped as Python does (`données` ->
    `donn\\xe9es`), so the series is kept and stays apart from others; None when blank."""
    if not isinstance(value, str):
        return None
    if not (value.isascii() and value.isprintable()):  # the usual case skips this
        printable = "".join(ch for ch in value if ch.isprintable())
        value = printable.encode("ascii", "backslashreplace").decode("ascii")
    value = value[:MAX_DIMENSION_VALUE]
    return value if value.strip() else None


def metric_set(metrics: tuple[str, ...]) -> frozenset[str]:
    """A plugin's `metrics` as a set, made once per config (a plugin's metrics are a tuple:
    `in` on it compares names one by one, for every value of every VM and cycle)."""
    hit = _METRIC_SETS.get(id(metrics))
    if hit is None or hit[0] is not metrics:
        if len(_METRIC_SETS) > 64:  # reloads: forget the configs that are gone
            _METRIC_SETS.clear()
        hit = _METRIC_SETS[id(metrics)] = (metrics, frozenset(metrics))
    return hit[1]


# id(a plugin's metrics tuple) -> (that tuple, kept so its id cannot be reused; its set)
_METRIC_SETS: dict[int, tuple[tuple[str, ...], frozenset[str]]] = {}


def guest_counter(value: Any) -> int | None:
    """A guest-supplied cumulative counter: an integer in [0, 2^64), else None."""
    if value.__class__ is not int or not 0 <= value < 1 << 64:
        return None
    return int(value)


def namespaces(config: Config) -> dict[str, str]:
    """Family value -> its configured namespace (a str hashes in C; an Enum member does not)."""
    return {
        Family.EC2.value: config.ec2_namespace,
        Family.EBS.value: config.ebs_namespace,
        Family.GUEST.value: config.guest_namespace,
        Family.SELF.value: config.self_metrics.namespace,
    }


def resolution_of(interval_s: int) -> int:
    """StorageResolution of datums sampled every `interval_s` seconds."""
    return 1 if interval_s < 60 else 60


class Emitter:
    """Builds Datums, all with one timestamp and StorageResolution, checking each against the
    catalog; appends them to `datums`.

    `period_start`, when given, is the timestamp of the EC2- and EBS-style datums instead:
    AWS stamps those with the start of the period a value covers (a datapoint at 12:00 holds
    12:00-12:01), so a delta collector's datums go at the start of the period their two samples
    span; the in-guest family keeps the sample's time, as the CloudWatch Agent stamps it."""

    def __init__(
        self,
        namespaces: Mapping[str, str],
        timestamp: float,
        resolution: int,
        datums: list[Datum] | None = None,
        period_start: float | None = None,
    ) -> None:
        self.namespaces = namespaces
        self.timestamp = timestamp
        self.period_start = timestamp if period_start is None else period_start
        self.resolution = resolution
        self.datums: list[Datum] = [] if datums is None else datums
        self.rejected: list[str] = []  # reasons for values that could not be emitted

    @classmethod
    def for_config(cls, config: Config, timestamp: float, interval_s: int | None = None) -> Emitter:
        """An Emitter for datums sampled every `interval_s` (default: the agent's interval)."""
        return cls(namespaces(config), timestamp, resolution_of(interval_s or config.interval_s))

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
        append, res, namespaces = self.datums.append, self.resolution, self.namespaces
        stamps = (self.timestamp, self.period_start)
        for name, value in values.items():
            known = checked.get(name)
            if known is None:
                known = checked[name] = _check(name, names)
            family, unit, stamp = known
            # Only a finite int or float (not a bool, not a subclass) is a value; an int is
            # sent as its float (an int too large for one raises OverflowError, as before).
            kind = value.__class__
            if kind is float:
                if not _isfinite(value):
                    self.rejected.append(f"{name}: not a finite number: {value!r}")
                    continue
            elif kind is int:
                value = float(value)
            else:
                self.rejected.append(f"{name}: not a finite number: {value!r}")
                continue
            # tuple.__new__ skips the named tuple's Python-level __new__ (half the cost here).
            ns, ts = namespaces[family], stamps[stamp]
            append(_new(Datum, (ns, name, dimensions, value, unit, ts, res, ())))


def _check(name: str, dims: tuple[str, ...]) -> tuple[str, str, int]:
    """A metric's family (value), unit and which of the Emitter's stamps it takes (1: the
    period's start, EC2 and EBS), once its dimension names are checked against the catalog."""
    spec = CATALOG.get(name)
    if spec is None:
        raise KeyError(f"metric {name!r} is not in the catalog")
    keys = set(dims)
    missing = set(spec.dimensions) - set(spec.optional_dimensions) - keys
    if missing or keys - set(spec.dimensions):
        raise ValueError(f"{name}: dimensions {sorted(dims)} differ from the catalog's")
    return spec.family.value, spec.unit, int(spec.family in (Family.EC2, Family.EBS))


_new = tuple.__new__
_isfinite = math.isfinite

# dimension names (in the caller's order) -> metric -> (family value, unit), checked once each.
_CHECKED: dict[tuple[str, ...], dict[str, tuple[str, str, int]]] = {}


class Collector(ABC, Generic[S]):
    """One metric source."""

    name: ClassVar[str]
    needs_qmp: ClassVar[bool] = True  # skipped when QMP is down
    qga_command: ClassVar[str | None] = None  # skipped unless the guest agent has it enabled

    # The metrics.metrics_collected section this collector serves ("cpu", "disk", ...): it is
    # enabled when the section is present and follows its metrics_collection_interval.
    plugin: ClassVar[str | None] = None
    # Whether `emit` turns two samples into per-period values (counters' deltas): after a gap
    # the scheduler re-primes such a collector (counted). False for gauges read whole each time.
    deltas: ClassVar[bool] = True

    def enabled(self, config: Config) -> bool:
        return self.plugin is None or getattr(config, self.plugin) is not None

    def qmp_wants(self, vm: VmView, prev: S | None) -> tuple[QmpCall, ...]:
        """The QMP commands (qmp_key(command, arguments)) `sample` reads this cycle."""
        return ()

    def qga_wants(self, vm: VmView, prev: S | None) -> tuple[str, ...]:
        """The guest agent commands `sample` reads this cycle (asked when the guest agent has
        them enabled)."""
        return (self.qga_command,) if self.qga_command else ()

    def interval_s(self, config: Config) -> int | None:
        """The plugin's own metrics_collection_interval, if it has one (None: every cycle)."""
        section = getattr(config, self.plugin) if self.plugin else None
        return section.interval_s if section is not None else None

    @abstractmethod
    def sample(self, vm: VmView, prev: S | None) -> S:
        """This cycle's typed record, from the replies asked for it and /proc (monotonic time
        included where deltas need it). `prev` is the last record (None: the first, or QEMU
        restarted), for what a record carries over (a device list rescanned every N cycles)."""

    @abstractmethod
    def emit(self, prev: S | None, cur: S, vm: VmView, out: Emitter) -> None:
        """Pure: derive values from two samples and emit them."""
