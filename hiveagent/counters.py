"""Turning two samples of cumulative counters into per-period values.

One rule set for every collector: the first sample of a key only primes; a key that vanished
emits nothing; a counter that goes backwards (QEMU restarted, device re-plugged, counter wrapped)
is a reset, and its period is skipped (re-primed) rather than reported as a spike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

K = TypeVar("K")


def counter_delta(prev: int | None, cur: int) -> int | None:
    """cur - prev, or None for the first sample or a reset (cur < prev)."""
    if prev is None or cur < prev:
        return None
    return cur - prev


def counter_deltas(
    prev: Mapping[K, Mapping[str, int]] | None,
    cur: Mapping[K, Mapping[str, int]],
) -> dict[K, dict[str, int]]:
    """Per key (device, interface, ...) the deltas of all its counters.

    A key is left out when it is new (priming), or when ANY of its counters went backwards:
    counters of one device reset together, and half a reset device is worse than none.
    """
    if prev is None:
        return {}
    out: dict[K, dict[str, int]] = {}
    for key, counters in cur.items():
        before = prev.get(key)
        if before is None:
            continue
        deltas = {}
        for name, value in counters.items():
            d = counter_delta(before.get(name), value)
            if d is None:
                break
            deltas[name] = d
        else:
            out[key] = deltas
    return out
