"""What guest_diskio and guest_net share: per-device cumulative counters from a guest agent list
reply (one entry per device: its name and a stats object), parsed into typed records, turned into
per-period deltas, and sent as one series per device under the CloudWatch Agent's names.

A source says how its reply is laid out (`DeviceSource`); a collector says which metric each
counter becomes (`GuestDeviceCounters`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from hiveagent.collector import (
    Collector,
    Emitter,
    VmView,
    bounded_entries,
    clean_dimension,
    guest_counter,
)
from hiveagent.config import GuestPlugin, Limits
from hiveagent.counters import CounterRecord, counter_deltas

C = TypeVar("C", bound=CounterRecord)


class DeviceStats(NamedTuple, Generic[C]):
    """One device's reading: cumulative counters, and gauges as sampled."""

    counters: C
    gauges: tuple[int, ...] = ()


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

    def parse(
        self,
        reply: Any,
        limit: int | None = None,
        rejected: Counter[str] | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> dict[str, DeviceStats[C]]:
        """Device name -> its reading, at most `limit` devices (default: the limit's default);
        devices `wanted` rejects are skipped before their counters are read. What is thrown
        away is counted by reason."""
        if limit is None:
            limit = getattr(Limits, self.limit_name)
        return parse_devices(self, reply, limit, rejected, wanted)


def parse_devices(
    src: DeviceSource[C],
    reply: Any,
    limit: int,
    rejected: Counter[str] | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> dict[str, DeviceStats[C]]:
    """See DeviceSource.parse."""
    rejected = Counter() if rejected is None else rejected
    out: dict[str, DeviceStats[C]] = {}
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
        counters = [guest_counter(stats.get(f, src.absent)) for f, _, _ in src.counters]
        gauges = [guest_counter(stats.get(f, src.absent)) for f, _ in src.gauges]
        if None in counters or None in gauges:
            rejected[f"{src.source}.bad_counter"] += 1
            continue
        out[name] = DeviceStats(src.record._make(counters), tuple(gauges))  # type: ignore[attr-defined, arg-type]
    return out


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
        return src.parse(vm.qga_reply(src.command), limit, vm.rejected, self.plugin_of(vm).wants)

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
        for name, d in sorted(deltas.items()):
            if not plugin.wants(name):
                continue
            values = {m: v * scale for (_, m, scale), v in zip(src.counters, d, strict=True)
                      if m is not None and m in plugin.metrics}  # fmt: skip
            for (_, metric), value in zip(src.gauges, cur[name].gauges, strict=True):
                if metric in plugin.metrics:
                    values[metric] = value
            out.emit_all(values, {"InstanceId": vm.spec.instance_id, src.dimension: name})
