"""Data every stage shares: the VM as discovery found it (VmSpec) and the metric datum
(what collectors make, the pipeline finishes, the spool keeps and the publisher sends)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

Dimensions = tuple[tuple[str, str], ...]


class Datum(NamedTuple):
    """One CloudWatch datum, immutable (a named tuple: a cycle makes tens of thousands of
    them, and a tuple is built several times faster than a frozen dataclass).

    `timestamp` is Unix epoch seconds (UTC) of the end of the period the value describes.
    `dimensions` is sorted by name so equal datums compare equal. `storage_resolution` is 60
    (standard) or 1 (high resolution).
    """

    namespace: str
    name: str
    dimensions: Dimensions
    value: float
    unit: str
    timestamp: float
    storage_resolution: int = 60
    # A basic-monitoring datum: the period samples it aggregates (value is then their sum or
    # mean, per the metric); sent as a statistic set, a value array or that single value.
    samples: tuple[float, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The `collect --format json` shape."""
        out = {
            "namespace": self.namespace,
            "name": self.name,
            "dimensions": dict(self.dimensions),
            "value": self.value,
            "unit": self.unit,
            "timestamp": self.timestamp,
        }
        if self.samples:
            out["samples"] = list(self.samples)
        return out


def make_dimensions(**pairs: str) -> Dimensions:
    """Dimensions from keyword pairs, sorted by name."""
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True)
class VmSpec:
    """What discovery knows about one VM before talking to it."""

    instance_id: str
    qmp_socket: str
    qga_socket: str | None  # None: find it through QMP
    vcpus: int | None  # None: count query-cpus-fast
    taps: tuple[str, ...] | None  # None: find them in /proc/<pid>/fdinfo
    period_s: int | None
    account_id: str | None
    origin: str  # where this VM was found (sidecar path or glob)
    image_id: str | None = None  # for ${aws:ImageId}
    instance_type: str | None = None  # for ${aws:InstanceType}
    autoscaling_group: str | None = None  # for ${aws:AutoScalingGroupName}
    all_volumes: bool = False  # every disk is a volume (Spinifex); else those named vol-...


_VOL_RE = re.compile(r"vol-[0-9a-f]{8,17}")


def is_volume(device: str) -> bool:
    """Whether a VM's block device is named after a volume (`vol-...` inside its name)."""
    return _VOL_RE.search(device) is not None


def volume_id(device: str, instance_id: str) -> str:
    """The VolumeId of a VM's block device: the `vol-...` id inside its name (Spinifex:
    `vdisk-vol-...`), else `<instance-id>:<device>`."""
    m = _VOL_RE.search(device)
    return m.group(0) if m else f"{instance_id}:{device}"
