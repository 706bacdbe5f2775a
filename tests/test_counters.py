"""Property tests of the delta and reset maths. (Request batching is tested in test_spool.)"""

from __future__ import annotations

import itertools
from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from hiveagent.counters import counter_delta, counter_deltas

counters = st.integers(min_value=0, max_value=2**64 - 1)


@given(st.lists(counters, min_size=1, max_size=50))
def test_deltas_never_negative_and_sum_when_monotonic(values: list[int]) -> None:
    deltas = [counter_delta(a, b) for a, b in itertools.pairwise(values)]
    assert all(d is None or d >= 0 for d in deltas)
    if values == sorted(values):
        assert sum(d for d in deltas if d is not None) == values[-1] - values[0]


def test_first_sample_primes_and_reset_skips() -> None:
    assert counter_delta(None, 5) is None
    assert counter_delta(10, 3) is None
    assert counter_delta(3, 10) == 7


class XY(NamedTuple):
    x: int
    y: int


xy = st.builds(XY, counters, counters)


@given(
    st.dictionaries(st.sampled_from("abcd"), xy),
    st.dictionaries(st.sampled_from("abcde"), xy),
)
def test_counter_deltas_by_key(prev: dict[str, XY], cur: dict[str, XY]) -> None:
    out = counter_deltas(prev, cur)
    for key, d in out.items():
        assert key in prev  # new keys only prime
        assert isinstance(d, XY)  # the same record, holding deltas
        assert all(c - p == v and v >= 0 for c, p, v in zip(cur[key], prev[key], d, strict=True))
    for key in cur:
        if key in prev and all(c >= p for c, p in zip(cur[key], prev[key], strict=True)):
            assert key in out
        elif key in prev:
            assert key not in out  # a device whose counters went backwards is skipped whole
    assert counter_deltas(None, cur) == {}
