"""The metric datum: what collectors produce and the publisher sends."""

from __future__ import annotations

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
