"""Turning two samples of cumulative counters into per-period values.

One rule set for every collector: the first sample of a key only primes; a key that vanished
emits nothing; a counter that goes backwards (QEMU restarted, device re-plugged, counter wrapped)
is a reset, and its period is skipped (re-primed) rather than reported as a spike. Counters are
typed records (named tuples of ints), so a misspelt field fails where it is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

K = TypeVar("K")


# A named tuple of cumulative counters (ints).
CounterRecord = tuple[int, ...]
C = TypeVar("C", bound=CounterRecord)


def _same_record(record: C, values: list[int]) -> C:
    """A record of `record`'s named tuple type holding `values` (tuple.__new__: the named
    tuple's own _make is a Python-level call, once per device and cycle)."""
    return tuple.__new__(record.__class__, values)


def counter_delta(prev: int | None, cur: int) -> int | None:
    """cur - prev, or None for the first sample or a reset (cur < prev)."""
    if prev is None or cur < prev:
        return None
    return cur - prev


def counter_deltas(prev: Mapping[K, C] | None, cur: Mapping[K, C]) -> dict[K, C]:
    """Per key (device, interface, ...) the deltas of all its counters, as the same record.

    A key is left out when it is new (priming), or when ANY of its counters went backwards:
    counters of one device reset together, and half a reset device is worse than none.
    """
    if prev is None:
        return {}
    out: dict[K, C] = {}
    for key, counters in cur.items():
        before = prev.get(key)
        if before is None:
            continue
        deltas = [now - then for now, then in zip(counters, before, strict=True)]
        if deltas and min(deltas) < 0:
            continue
        out[key] = _same_record(counters, deltas)
    return out
