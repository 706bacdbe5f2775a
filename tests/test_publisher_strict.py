"""Arbitrary datums through the real Spool and Publisher, with the agent's own botocore client,
against the strict endpoint (tests/strict_endpoint.py), in both wire protocols and in both
endpoint modes with the datum shapes the agent sends to each: every request the publisher
sends is accepted, and every datum given to the spool is accepted at the endpoint (as itself)
or counted as dropped with its reason (`invalid.<why>` from wire.refusal when it is spooled,
`too_old` where it is sent).

Wall-clock time is pinned (the spool's, the publisher's and the endpoint's), so timestamps at
the limits (14 days past, 2 hours ahead, and the agent's margins inside them) are decided the
same way every run."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
import types
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hiveagent.publisher
import hiveagent.spool
from hiveagent.config import PublishSettings
from hiveagent.ledger import DropLedger
from hiveagent.model import Datum
from hiveagent.publisher import Publisher
from hiveagent.spool import Spool
from hiveagent.wire import MAX_AGE_S, MAX_FUTURE_S, Rules, make_client, refusal
from tests.strict_endpoint import AcceptedDatum, StrictEndpoint

NOW = 1_750_000_000.0  # the pinned wall clock
DAY = 86400.0

# (endpoint mode, metrics.datum_shape): the shapes the agent sends to each (Spinifex's
# CloudWatch takes one Value per datum only, REFERENCE.md section 7)
SETUPS = [
    ("aws", "auto"),
    ("aws", "statistic_sets"),
    ("aws", "value_arrays"),
    ("aws", "single_values"),
    ("spinifex", "single_values"),
]
PROTOCOLS = ("json", "query")  # metrics.wire_protocol


@pytest.fixture(scope="module", autouse=True)
def pinned_time() -> Iterator[None]:
    """The spool's and the publisher's `time` module with time.time() pinned at NOW (monotonic
    time and sleeps as they are: the publisher's deadline and backoff keep working)."""
    pinned = types.SimpleNamespace(**{**vars(time), "time": lambda: NOW})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hiveagent.spool, "time", pinned)
        mp.setattr(hiveagent.publisher, "time", pinned)
        yield


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, StrictEndpoint]]:
    with (
        StrictEndpoint("aws", clock=lambda: NOW) as aws,
        StrictEndpoint("spinifex", clock=lambda: NOW) as spinifex,
    ):
        yield {"aws": aws, "spinifex": spinifex}


@pytest.fixture(scope="module")
def clients(endpoints: dict[str, StrictEndpoint]) -> dict[tuple[str, str], Any]:
    """The agent's own client (wire.make_client, the protocol pinned as metrics.wire_protocol
    pins it), one per endpoint and protocol."""
    return {
        (mode, protocol): make_client("us-east-1", ep.url, 5.0, protocol)
        for mode, ep in endpoints.items()
        for protocol in PROTOCOLS
    }


# -- datums -------------------------------------------------------------------------------------
# A datum is drawn fit to send (as the agent makes them, and at every limit), then at most one
# of its parts is replaced by something hostile (a guest's strings, numbers and timestamps past
# the limits): about two in three reach the endpoint.

_LIMIT = 2.0**360
_printable = st.characters(min_codepoint=32, max_codepoint=126)

_good_names = st.one_of(
    st.sampled_from(["InstanceId", "VolumeId", "device", "fstype", "path", "cpu", "host"]),
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True),
    st.just("N" * 255),
)


def _repeated(unit: str, n: int) -> str:
    return (unit * n)[:n]


# long strings are built from two draws (hypothesis would spend a draw per character)
_good_values = st.one_of(
    st.text(_printable, min_size=1, max_size=40).filter(lambda v: not v.isspace()),
    st.builds(_repeated, st.sampled_from(["v", "a b", "/x", "~"]), st.integers(1000, 1024)),
)
_bad_names = st.one_of(
    st.sampled_from(["", " ", "\t", ":colon", "x" * 256, "naïve", "tab\there", "\U0001f600"]),
    st.sampled_from(["a-b", "9lives", "a.b"]),  # AWS takes these; Spinifex does not
    st.text(max_size=8),  # control characters, non-BMP, anything
)
_bad_values = st.one_of(
    st.sampled_from(["", " ", "   ", "é", "\x00", "\x7f", "a\nb", "\ud800", "\u3000"]),
    st.text(max_size=40),  # unicode: non-BMP, control characters, blank
    st.builds(  # too long, or non-ASCII up to 4 UTF-8 bytes a character
        _repeated,
        st.sampled_from(["v", "\U0001f600", "é", "\U00010000x", " "]),
        st.integers(1000, 1030),
    ),
)


def _sorted_unique(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(dict(pairs).items()))  # as the agent makes them


def _thirty(values: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((f"D{i:02d}", v) for i, v in enumerate(values))


_few_dimensions = st.lists(st.tuples(_good_names, _good_values), max_size=5).map(_sorted_unique)
_thirty_dimensions = st.lists(
    st.sampled_from(["i-1", "v" * 1024, "x y"]), min_size=30, max_size=30
).map(_thirty)
_good_dimensions = st.one_of(_few_dimensions, _thirty_dimensions)


@st.composite
def _bad_dimensions(draw: st.DrawFn) -> tuple[tuple[str, str], ...]:
    how = draw(st.sampled_from(["name", "value", "duplicate", "too_many", "unsorted"]))
    dims = list(draw(_thirty_dimensions if how == "too_many" else _few_dimensions))
    if how == "name":
        dims.append((draw(_bad_names), draw(_good_values)))
    elif how == "value":
        dims.append((draw(_good_names), draw(_bad_values)))
    elif how == "duplicate" and dims:
        dims.append((dims[0][0], draw(_good_values)))
    elif how == "too_many":
        dims.append(("Extra", "v"))
    dims.reverse()  # not sorted (duplicates are then apart)
    return tuple(dims)


_good_numbers = st.one_of(
    st.floats(-_LIMIT, _LIMIT),
    st.sampled_from([0.0, -0.0, 5e-324, _LIMIT, -_LIMIT, 2.0**359]),
)
_bad_numbers = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        math.nextafter(_LIMIT, math.inf),
        -math.nextafter(_LIMIT, math.inf),
        1.7976931348623157e308,
    ]
)
_good_samples = st.one_of(
    st.just(()),
    st.lists(_good_numbers, min_size=1, max_size=6).map(tuple),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6).map(tuple),
    st.lists(st.integers(-500, 500).map(float), min_size=145, max_size=170).map(tuple),
)
_bad_samples = st.one_of(
    st.tuples(_good_numbers, _bad_numbers),
    st.lists(st.sampled_from([_LIMIT, 2.0**359]), min_size=2, max_size=4).map(tuple),  # Sum
    st.lists(st.integers(0, 10**6).map(float), min_size=151, max_size=160, unique=True).map(
        tuple
    ),  # over 150 distinct values
)
_good_timestamps = st.one_of(
    st.floats(NOW - MAX_AGE_S, NOW + MAX_FUTURE_S),
    st.sampled_from([NOW, NOW - MAX_AGE_S, NOW + MAX_FUTURE_S]),  # the agent's own limits
)
_bad_timestamps = st.sampled_from(
    [
        NOW - MAX_AGE_S - 0.001,  # inside AWS's 14 days, outside the agent's margin: too_old
        NOW - 14 * DAY,
        NOW - 14 * DAY - 1,
        NOW - 15 * DAY,
        NOW + MAX_FUTURE_S + 0.001,
        NOW + 2 * 3600,
        NOW + 2 * 3600 + 1,
        math.nan,
        math.inf,
        -math.inf,
    ]
)
_good = st.builds(
    Datum,
    namespace=st.sampled_from(["Hive/EC2", "CWAgent", "N" * 255]),
    name=st.one_of(
        st.sampled_from(["CPUUtilization", "NetworkIn", "m" * 255]),
        st.text(min_size=1, max_size=20).filter(lambda s: not s.isspace()),  # unicode: fine
    ),
    dimensions=_good_dimensions,
    value=_good_numbers,
    unit=st.sampled_from(["Count", "Percent", "Bytes", "None", "Count/Second"]),
    timestamp=_good_timestamps,
    storage_resolution=st.sampled_from([1, 60]),
    samples=_good_samples,
)
_hostile: dict[str, st.SearchStrategy[Any]] = {
    "namespace": st.sampled_from(["AWS/EC2", "Goanna/X", ":x", " ", "", "Nä", "N" * 256]),
    "name": st.sampled_from(["", " ", "\u3000", "m" * 256, "m\ud800"]),
    "dimensions": _bad_dimensions(),
    "value": _bad_numbers,
    "samples": _bad_samples,
    "timestamp": _bad_timestamps,
    "unit": st.sampled_from(["Furlongs", "count", ""]),
    "storage_resolution": st.sampled_from([0, 5, 61]),
}


@st.composite
def _datums(draw: st.DrawFn) -> Datum:
    d = draw(_good)
    part = draw(st.sampled_from([None] * 5 + list(_hostile) + ["dimensions"] * 3))
    return d if part is None else d._replace(**{part: draw(_hostile[part])})


def _series(d: Datum) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return d.namespace, d.name, tuple(sorted(d.dimensions))


def datum_lists(mode: str) -> st.SearchStrategy[list[Datum]]:
    if mode == "spinifex":
        # Spinifex refuses a sample not later than the last one of its series: the agent sends
        # one datum per series per period, so one per series here (no datum can carry this)
        return st.lists(_datums(), max_size=12, unique_by=_series)
    return st.lists(_datums(), max_size=12)


# -- what was sent, as the endpoint saw it ------------------------------------------------------


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)  # as to_metric_datum sends it (microseconds)


def expected(d: Datum, shape: str) -> tuple[Any, ...]:
    """A datum as the endpoint should have accepted it, sent in this shape."""
    if d.samples and shape in ("auto", "statistic_sets"):
        payload: tuple[Any, ...] = (
            "stats",
            float(len(d.samples)),
            math.fsum(d.samples),
            min(d.samples),
            max(d.samples),
        )
    elif d.samples and shape == "value_arrays":
        counts = Counter(d.samples)
        payload = ("arrays", tuple(counts), tuple(float(c) for c in counts.values()))
    else:
        payload = ("value", d.value)
    dims = tuple(d.dimensions)
    return d.namespace, d.name, dims, payload, d.unit, _when(d.timestamp), d.storage_resolution


def accepted(a: AcceptedDatum) -> tuple[Any, ...]:
    if a.statistic_values is not None:
        s = a.statistic_values
        payload: tuple[Any, ...] = ("stats", s.sample_count, s.sum, s.minimum, s.maximum)
    elif a.values is not None:
        counts = a.counts if a.counts is not None else (1.0,) * len(a.values)
        payload = ("arrays", a.values, counts)
    else:
        payload = ("value", a.value)
    dims = tuple(a.dimensions.items())
    return a.namespace, a.name, dims, payload, a.unit, _when(a.timestamp), a.storage_resolution


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("mode", "shape"), SETUPS)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_datum_is_accepted_or_counted(
    endpoints: dict[str, StrictEndpoint],
    clients: dict[tuple[str, str], Any],
    mode: str,
    shape: str,
    protocol: str,
    data: st.DataObject,
) -> None:
    datums = data.draw(datum_lists(mode), label="datums")
    endpoint = endpoints[mode]
    endpoint.clear()  # the Spinifex series of the last example too
    rules = Rules(shape, spinifex=mode == "spinifex")
    ledger = DropLedger()
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(tmp, fsync=False, ledger=ledger, rules=rules)
        spool.open()
        # one failure opens the breaker: an endpoint error ends the flush (False) at once
        publisher = Publisher(clients[mode, protocol], spool, PublishSettings(breaker_failures=1))
        publisher.datum_shape = shape
        spool.add(datums)
        flushed = asyncio.run(publisher.flush(time.monotonic() + 60))
        spool.close()

    assert endpoint.refusals == [], "the publisher sent requests the endpoint refused"
    assert flushed, publisher.last_error

    want: Counter[tuple[Any, ...]] = Counter()
    drops: Counter[str] = Counter()
    for d in datums:
        why = refusal(d, NOW, rules)
        if why is not None:
            drops[f"invalid.{why}"] += 1
        elif d.timestamp < NOW - MAX_AGE_S:
            drops["too_old"] += 1
        else:
            want[expected(d, shape)] += 1
    got = Counter(accepted(a) for a in endpoint.accepted)
    assert got == want
    assert ledger.counts == drops
    assert publisher.stats.get("datums_sent", 0) == len(endpoint.accepted)
    assert sum(drops.values()) + len(endpoint.accepted) == len(datums)
