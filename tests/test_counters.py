"""Property tests of the delta and reset maths, and of request batching."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from hiveagent.counters import counter_delta, counter_deltas
from hiveagent.model import Datum
from hiveagent.publisher import MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES, batches, datum_wire_size

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


@given(
    st.dictionaries(
        st.sampled_from("abcd"),
        st.dictionaries(st.sampled_from("xy"), counters, min_size=2, max_size=2),
    ),
    st.dictionaries(
        st.sampled_from("abcde"),
        st.dictionaries(st.sampled_from("xy"), counters, min_size=2, max_size=2),
    ),
)
def test_counter_deltas_by_key(
    prev: dict[str, dict[str, int]], cur: dict[str, dict[str, int]]
) -> None:
    out = counter_deltas(prev, cur)
    for key, d in out.items():
        assert key in prev  # new keys only prime
        assert all(cur[key][n] - prev[key][n] == v and v >= 0 for n, v in d.items())
    for key in cur:
        if key in prev and all(cur[key][n] >= prev[key][n] for n in cur[key]):
            assert key in out
        elif key in prev:
            assert key not in out  # a device whose counters went backwards is skipped whole
    assert counter_deltas(None, cur) == {}


datums = st.builds(
    Datum,
    namespace=st.sampled_from(["A", "B", "C"]),
    name=st.text(min_size=1, max_size=255),
    dimensions=st.lists(
        st.tuples(st.text(min_size=1, max_size=255), st.text(min_size=1, max_size=1024)),
        max_size=30,
    ).map(tuple),
    value=st.floats(allow_nan=False, allow_infinity=False),
    unit=st.just("Count"),
    timestamp=st.just(0.0),
)


@given(st.lists(datums, max_size=2500))
def test_batches_respect_limits_and_keep_everything(items: list[Datum]) -> None:
    items.sort(key=lambda d: d.namespace)
    out = list(batches(items))
    assert [d for b in out for d in b] == items
    for b in out:
        assert 1 <= len(b) <= MAX_DATUMS_PER_REQUEST
        assert len({d.namespace for d in b}) == 1
        assert sum(datum_wire_size(d) for d in b) < MAX_REQUEST_BYTES


def test_batches_split_at_1000() -> None:
    items = [Datum("N", "m", (), 1.0, "Count", 0.0)] * 2500
    assert [len(b) for b in batches(items)] == [1000, 1000, 500]
