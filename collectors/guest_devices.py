"""What guest_diskio and guest_net share: per-device cumulative counters from a guest agent list
reply (one entry per device: its name and a stats object), parsed into typed records, turned into
per-period deltas, and sent as one series per device under the CloudWatch Agent's names.

A source says how its reply is laid out (`DeviceSource`); a collector says which metric each
counter becomes (`GuestDeviceCounters`).

Which devices are reported follows telegraf (the CloudWatch Agent's inputs): a plugin's
`resources` are telegraf's `devices` / `interfaces` list, matched with telegraf's filter
(`resource_filter`: glob patterns); `"*"` among them, or none at all, leaves telegraf's list
unset, and then telegraf's own default rule for the plugin applies
(`DeviceSource.excluded_by_default`: net skips loopback). Entries telegraf never reports whatever
the list (`DeviceSource.unreported`: diskio skips a device whose counters are all 0) are
skipped too.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from collectors.guest_host import emit_guest
from hiveagent.collector import (
    Collector,
    Emitter,
    VmView,
    bounded_entries,
    clean_dimension,
    metric_set,
)
from hiveagent.config import GuestPlugin, Limits
from hiveagent.counters import CounterRecord, counter_deltas

C = TypeVar("C", bound=CounterRecord)

# telegraf filter/filter.go, Compile: a list is matched as globs when any entry holds one of
# these; otherwise every entry is an exact name.
_GLOB_META = "*?["


def glob_regex(pattern: str) -> str:
    """A Python regex (for re.fullmatch, re.DOTALL) matching what github.com/gobwas/glob (the
    library behind telegraf's filter.Compile) matches for `pattern` compiled without
    separators: `*` any run of characters, `?` any one character, `[abc]` `[a-z]` one of
    them, `[!...]` one not among them, `{a,b}` any of the alternatives (which are patterns,
    and may nest), `\\x` the character x itself; anything else is itself. ValueError for a
    pattern gobwas refuses (an unclosed `[` or `{`, a trailing `\\`, a range `[lo-hi` not closed
    right after hi)."""
    out: list[str] = []
    depth = 0  # open `{`
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "\\":
            if i >= n:
                raise ValueError(f"{pattern!r}: '\\' at the end escapes nothing")
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            i = _char_class(pattern, i, out)
        elif ch == "{":
            depth += 1
            out.append("(?:")
        elif ch == "}" and depth:
            depth -= 1
            out.append(")")
        elif ch == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(ch))
    if depth:
        raise ValueError(f"{pattern!r}: unclosed '{{'")
    return "".join(out)


def _char_class(pattern: str, i: int, out: list[str]) -> int:
    """The `[...]` whose `[` is at i - 1, appended to out as a regex; returns the index after
    its `]`. As gobwas's lexer reads it: an optional `!`, then either one range `lo-hi` or a
    list of characters (`\\` escapes one), then `]`."""
    n = len(pattern)
    negate = i < n and pattern[i] == "!"
    i += negate
    if i + 2 < n and pattern[i] != "]" and pattern[i + 1] == "-":
        lo, hi = pattern[i], pattern[i + 2]
        if pattern[i + 3 : i + 4] != "]":
            raise ValueError(f"{pattern!r}: a range [lo-hi] must close after hi")
        if hi < lo:
            raise ValueError(f"{pattern!r}: range {lo}-{hi} is backwards")
        out.append(f"[{'^' if negate else ''}{re.escape(lo)}-{re.escape(hi)}]")
        return i + 4
    chars: list[str] = []
    while i < n and pattern[i] != "]":
        if pattern[i] == "\\":
            i += 1
            if i >= n:
                break
        chars.append(pattern[i])
        i += 1
    if i >= n:
        raise ValueError(f"{pattern!r}: unclosed '['")
    if not chars:
        out.append("." if negate else "(?!)")  # [!] any one character; [] none
    else:
        out.append(f"[{'^' if negate else ''}{''.join(map(re.escape, chars))}]")
    return i + 1


@lru_cache(maxsize=256)
def resource_filter(
    resources: tuple[str, ...], basename: bool = False
) -> Callable[[str], bool] | None:
    """A plugin's `resources` as telegraf matches its `devices` / `interfaces` list (telegraf
    filter/filter.go Compile): None when they name every device (`"*"` among them, or none:
    the CloudWatch Agent's translator then leaves telegraf's list unset, and the plugin's
    default rule applies); otherwise a predicate on device names. When any entry holds
    `*`, `?` or `[`, every entry is a glob (`glob_regex`); otherwise every entry is an exact
    name. `basename`: exact names are compared by their last path component, as gopsutil's
    disk.IOCounters does (`/dev/vdb` names vdb; telegraf would first resolve a symlink such as
    /dev/disk/by-id/..., which lives in the guest and cannot be followed from the host).
    ValueError for a pattern telegraf refuses to compile."""
    if not resources or "*" in resources:
        return None
    if any(ch in r for r in resources for ch in _GLOB_META):
        regex = re.compile("|".join(f"(?:{glob_regex(r)})" for r in resources), re.DOTALL)
        return lambda name: regex.fullmatch(name) is not None
    names = frozenset(posixpath.basename(r) if basename else r for r in resources)
    return names.__contains__


class DeviceStats(NamedTuple, Generic[C]):
    """One device's reading: cumulative counters, and gauges as sampled."""

    counters: C
    gauges: tuple[int, ...] = ()


EntryTest = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class DeviceSource(Generic[C]):
    """How a guest agent reply lists devices and their counters, and what each becomes."""

    command: str  # the guest agent command
    source: str  # its rejection keys are `<source>.<why>`
    stats_key: str  # the entry's key holding the counters
    record: type[C]  # the named tuple of cumulative counters
    # per record field: (reply field, metric or None when it is read but not sent, scale)
    counters: tuple[tuple[str, str | None, int], ...]
    gauges: tuple[tuple[str, str], ...]  # (reply field, metric) read as sampled
    absent: int | None  # an absent counter's value (None: the entry is rejected)
    without_stats_ok: bool  # an entry without stats is skipped quietly (else rejected)
    dimension: str  # the device's dimension name
    limit_name: str  # the hypervisor.limits key capping its devices
    # telegraf's rule when its device list is unset (resources "*"): entries it skips
    excluded_by_default: EntryTest | None = None
    # entries telegraf (gopsutil) never reports, whatever the device list
    unreported: EntryTest | None = None
    resource_basename: bool = False  # exact resources compare by basename (see resource_filter)

    def parse(
        self,
        reply: Any,
        limit: int | None = None,
        rejected: Counter[str] | None = None,
        wanted: Callable[[str], bool] | None = None,
        *,
        as_plugin: bool = False,
    ) -> dict[str, DeviceStats[C]]:
        """Device name -> its reading, at most `limit` devices (default: the limit's default);
        devices `wanted` rejects are skipped before their counters are read. `as_plugin`: only
        the devices the CloudWatch Agent's plugin would report (`unreported` ones skipped, and
        `excluded_by_default` ones too when `wanted` is None, i.e. every device is asked
        for). What is thrown away is counted by reason."""
        if limit is None:
            limit = getattr(Limits, self.limit_name)
        return parse_devices(self, reply, limit, rejected, wanted, as_plugin=as_plugin)


def parse_devices(
    src: DeviceSource[C],
    reply: Any,
    limit: int,
    rejected: Counter[str] | None = None,
    wanted: Callable[[str], bool] | None = None,
    *,
    as_plugin: bool = False,
) -> dict[str, DeviceStats[C]]:
    """See DeviceSource.parse."""
    rejected = Counter() if rejected is None else rejected
    skips: list[EntryTest] = []
    if as_plugin and src.unreported is not None:
        skips.append(src.unreported)
    if as_plugin and wanted is None and src.excluded_by_default is not None:
        skips.append(src.excluded_by_default)
    out: dict[str, DeviceStats[C]] = {}
    counter_fields = [f for f, _, _ in src.counters]
    gauge_fields = [f for f, _ in src.gauges]
    absent, record = src.absent, src.record
    for entry in bounded_entries(reply, src.source, limit, rejected, out):
        if not isinstance(entry, dict):
            rejected[f"{src.source}.not_an_object"] += 1
            continue
        name = clean_dimension(entry.get("name"))
        stats = entry.get(src.stats_key)
        if stats is None and src.without_stats_ok:
            continue  # no statistics for this device: nothing to report
        if name is None or not isinstance(stats, dict) or name in out:
            rejected[f"{src.source}.bad_entry"] += 1
            continue
        if wanted is not None and not wanted(name):
            continue
        if skips and any(skip(entry) for skip in skips):
            continue
        counters = [stats.get(f, absent) for f in counter_fields]
        gauges = [stats.get(f, absent) for f in gauge_fields]
        # guest_counter's check, inline: each an int in [0, 2^64)
        if not all(v.__class__ is int and 0 <= v < _COUNTER_END for v in (*counters, *gauges)):
            rejected[f"{src.source}.bad_counter"] += 1
            continue
        out[name] = _new(DeviceStats, (_new(record, counters), tuple(gauges)))
    return out


_new = tuple.__new__
_COUNTER_END = 1 << 64


def plugin_filter(
    resources: tuple[str, ...], rejected: Counter[str], source: str, basename: bool = False
) -> tuple[bool, Callable[[str], bool] | None]:
    """(usable, filter): `resource_filter` of a plugin's resources; a pattern telegraf would
    refuse to compile (telegraf then reports nothing for the plugin) is (False, None), counted
    as `<source>.bad_resource_pattern`."""
    try:
        return True, resource_filter(resources, basename)
    except ValueError:
        rejected[f"{source}.bad_resource_pattern"] += 1
        return False, None


class GuestDeviceCounters(Collector[dict[str, DeviceStats[Any]]]):
    """A guest agent device-counter collector; a subclass names its source."""

    device_source: ClassVar[DeviceSource[Any]]

    def plugin_of(self, vm: VmView) -> GuestPlugin:
        plugin: GuestPlugin | None = getattr(vm.config, self.plugin or "")
        assert plugin is not None
        return plugin

    def sample(
        self, vm: VmView, prev: dict[str, DeviceStats[Any]] | None
    ) -> dict[str, DeviceStats[Any]]:
        src = self.device_source
        limit = getattr(vm.config.limits, src.limit_name)
        reply = vm.qga_reply(src.command)
        usable, wanted = plugin_filter(
            self.plugin_of(vm).resources, vm.rejected, src.source, src.resource_basename
        )
        if not usable:
            return {}
        return src.parse(reply, limit, vm.rejected, wanted, as_plugin=True)

    def emit(
        self,
        prev: dict[str, DeviceStats[Any]] | None,
        cur: dict[str, DeviceStats[Any]],
        vm: VmView,
        out: Emitter,
    ) -> None:
        if prev is None:
            return
        src, plugin = self.device_source, self.plugin_of(vm)
        deltas = counter_deltas(
            {n: s.counters for n, s in prev.items()}, {n: s.counters for n, s in cur.items()}
        )
        if not deltas:
            return
        wanted = metric_set(plugin.metrics)
        # (record index, metric, scale) of the counters sent, (index, metric) of the gauges
        counters = [(i, m, scale) for i, (_, m, scale) in enumerate(src.counters)
                    if m is not None and m in wanted]  # fmt: skip
        gauges = [(i, m) for i, (_, m) in enumerate(src.gauges) if m in wanted]
        for name, d in sorted(deltas.items()):
            values = {m: d[i] * scale for i, m, scale in counters}
            if gauges:
                sampled = cur[name].gauges
                for i, m in gauges:
                    values[m] = sampled[i]
            emit_guest(out, vm, values, {src.dimension: name})
