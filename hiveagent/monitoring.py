"""Basic vs detailed monitoring, per VM, as EC2 does it.

- Detailed (the sidecar's `period_seconds` 60, or `hypervisor.ec2.monitoring: "detailed"`):
  every EC2 datum as collected; when the VM's ImageId / InstanceType are known (sidecar or
  metadata file), each is also sent under `{ImageId}` and `{InstanceType}`, AWS's
  aggregated-by-dimension series for detailed instances.
- Basic (`period_seconds` 300, or `"basic"`): EC2 datums are gathered into 5-minute windows
  aligned to the clock and sent once per window, timestamped at the window start, carrying the
  window's samples (`Datum.samples`): a statistic set where the endpoint takes one, else the
  values, else one value: the window's sum for a per-period total (NetworkIn, DiskReadOps),
  the mean for a gauge (CPUUtilization, GuestVCPUsOnline), as the catalog says of each
  metric (`MetricSpec.kind`).
- Status checks go every cycle in both tiers; EBS metrics are per minute for every volume.
- No sample is sent twice under one timestamp, and a series' timestamps only move forward (an
  endpoint that keeps single values, as Spinifex's does, refuses anything else): a window that
  began before the VM's last detailed datum, or before the agent started (its first part may
  have gone out at the last shutdown as a partial window), is not gathered: its samples go as
  they are, as a detailed VM's would, until the next window begins (`BasicWindows.not_before`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hiveagent.catalog import CATALOG, Family
from hiveagent.model import Datum

BASIC_WINDOW_S = 300


def tier(period_s: int | None, default: str) -> str:
    if period_s == 300:
        return "basic"
    if period_s == 60:
        return "detailed"
    return default


def window_start(ts: float) -> float:
    return math.floor(ts / BASIC_WINDOW_S) * BASIC_WINDOW_S


# The EC2 metrics gathered into basic windows: all but the status checks (worked out once)
_GATHERED = frozenset(
    name
    for name, spec in CATALOG.items()
    if spec.family is Family.EC2 and not name.startswith("StatusCheck")
)


def passes_through(d: Datum) -> bool:
    """Sent as it is under basic monitoring (not gathered into a window)."""
    return d.name not in _GATHERED


def aggregate(window: float, samples: list[Datum]) -> Datum:
    first = samples[0]
    values = tuple(d.value for d in samples)
    total = math.fsum(values)
    spec = CATALOG.get(first.name)
    gauge = spec is not None and spec.kind == "gauge"
    value = total / len(values) if gauge else total
    return first._replace(timestamp=window, value=value, samples=values, storage_resolution=60)


@dataclass
class BasicWindows:
    """One VM's open 5-minute windows: series -> (window start, samples)."""

    open: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[float, list[Datum]]] = field(
        default_factory=dict
    )
    not_before: float = -math.inf  # windows starting at or before this are not gathered

    def add(self, datums: list[Datum]) -> list[Datum]:
        """Gather EC2 datums; return status checks, other families and closed windows."""
        out = []
        for d in datums:
            if passes_through(d):
                out.append(d)
                continue
            w = window_start(d.timestamp)
            if w <= self.not_before:
                out.append(d)
                continue
            key = (d.namespace, d.name, d.dimensions)
            current = self.open.get(key)
            if current is not None and current[0] != w:
                out.append(aggregate(*current))
                current = None
            if current is None:
                current = (w, [])
                self.open[key] = current
            current[1].append(d)
        return out

    def drain(self) -> list[Datum]:
        """Close every window now (the VM went away, or the agent stops)."""
        out = [aggregate(w, samples) for w, samples in self.open.values() if samples]
        self.open.clear()
        return out


def detailed_copies(
    datums: list[Datum], image_id: str | None, instance_type: str | None
) -> list[Datum]:
    """The ImageId and InstanceType aggregate series of a detailed VM's EC2 datums."""
    if not image_id and not instance_type:
        return datums  # the common case: nothing known, nothing to copy
    extra = []
    for d in datums:
        if passes_through(d):
            continue  # status checks stay per instance; other families have their own
        for dim, value in (("ImageId", image_id), ("InstanceType", instance_type)):
            if value:
                extra.append(d._replace(dimensions=((dim, value),)))
    return datums + extra
