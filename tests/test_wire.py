"""The request limits, held against botocore's own serialisers for both wire protocols and
against CloudWatch's documented limits (REFERENCE.md section 4): a request filled by our size
bound never exceeds 1 MB however the guest spells its dimension values, and a datum CloudWatch
(or Spinifex's CloudWatch service, REFERENCE.md section 7) would refuse is dropped before it is
spooled, counted by reason."""

from __future__ import annotations

import math
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiveagent.ledger import DropLedger
from hiveagent.model import Datum
from hiveagent.spool import Spool
from hiveagent.wire import (
    AWS_RULES,
    MAX_AGE_S,
    MAX_FUTURE_S,
    MAX_REQUEST_BYTES,
    REQUEST_OVERHEAD_BYTES,
    UNITS,
    Rules,
    checked,
    datum_wire_size,
    refusal,
    to_metric_datum,
)

_MODEL = botocore.session.get_session().get_service_model("cloudwatch")
_OPERATION = _MODEL.operation_model("PutMetricData")


def serialized_bytes(datums: list[Datum], protocol: str, shape: str = "statistic_sets") -> int:
    """The body botocore's own serialiser makes of a PutMetricData request of these datums."""
    from botocore.serialize import create_serializer

    params = {"Namespace": "N", "MetricData": [to_metric_datum(d, shape) for d in datums]}
    request = create_serializer(protocol).serialize_to_request(params, _OPERATION)
    body: Any = request["body"]
    if isinstance(body, dict):  # awsQuery: form fields, url-encoded on the wire
        return len(urllib.parse.urlencode(body).encode())
    return len(body)


def bound(datums: list[Datum]) -> int:
    """What the spool counts a request of these datums as."""
    return REQUEST_OVERHEAD_BYTES + sum(map(datum_wire_size, datums))


def test_thirty_dimensions_of_emoji_are_sized_as_encoded() -> None:
    """30 dimensions of 1024 emoji each (what a hostile guest's names can reach): each emoji is
    4 UTF-8 bytes, %XX-encoded in awsQuery (12 bytes) and a \\ud83d\\ude00 surrogate pair in
    JSON (12 bytes), so over 30 * 1024 * 12 = 369 KB per datum; the old bound said 95 KB, and
    three such datums (1.1 MB) would have gone in one request."""
    dims = tuple((f"D{i:02d}", "\U0001f600" * 1024) for i in range(30))
    d = Datum("N", "m", dims, 1.0, "Count", time.time(), 60)
    for protocol in ("query", "json"):
        assert serialized_bytes([d], protocol) > 30 * 1024 * 12
        assert bound([d, d, d]) >= serialized_bytes([d, d, d], protocol) > MAX_REQUEST_BYTES


printable = st.text(
    st.characters(blacklist_categories=["Cs", "Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=1024
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.text("abcXYZ_", min_size=1, max_size=255), printable),
        max_size=30,
        unique_by=lambda kv: kv[0],
    ),
    st.lists(st.floats(-1e300, 1e300), max_size=300),
    st.integers(1, 3),
    st.sampled_from(["statistic_sets", "value_arrays", "single_values"]),
)
def test_size_bound_holds_for_any_printable_dimensions(
    dims: list[tuple[str, str]], samples: list[float], copies: int, shape: str
) -> None:
    d = Datum("N", "metric", tuple(sorted(dims)), 1.5, "Bytes", time.time(), 60, tuple(samples))
    for protocol in ("query", "json"):
        assert bound([d] * copies) >= serialized_bytes([d] * copies, protocol, shape), protocol


def test_refused_datums_are_dropped_before_the_spool(tmp_path: Path) -> None:
    """CloudWatch's limits: at most 30 dimensions, names 1..255 characters, dimension values
    1..1024, values within +-2^360, timestamps at most 2 hours ahead, StorageResolution 1 or
    60, and the rest (blank, non-ASCII, ':' names, duplicates, units, namespaces). Such datums
    never reach a request; each is counted by reason."""
    now = time.time()
    ok = Datum("N", "m", (("InstanceId", "i-1"),), 1.0, "Count", now, 60)
    bad = {
        "too_many_dimensions": ok._replace(dimensions=tuple((f"D{i:02d}", "v") for i in range(31))),
        "bad_metric_name": ok._replace(name="m" * 256),
        "bad_dimension_name": ok._replace(dimensions=(("D" * 256, "v"),)),
        "bad_dimension_value": ok._replace(dimensions=(("D", "v" * 1025),)),
        "bad_value": ok._replace(value=2.0**361),
        "future_timestamp": ok._replace(timestamp=now + 2 * 3600 + 60),
        "bad_storage_resolution": ok._replace(storage_resolution=5),
        # and the rest of AWS's rules (each by the rule it follows: test_each_refusal_...)
        "reserved_namespace": ok._replace(namespace="AWS/EC2"),
        "bad_namespace": ok._replace(namespace=":N"),
        "blank_metric_name": ok._replace(name=" "),
        "blank_dimension_name": ok._replace(dimensions=((" ", "v"),)),
        "non_ascii_dimension_name": ok._replace(dimensions=(("Dé", "v"),)),
        "colon_dimension_name": ok._replace(dimensions=((":D", "v"),)),
        "duplicate_dimension": ok._replace(dimensions=(("D", "v"), ("D", "w"))),
        "blank_dimension_value": ok._replace(dimensions=(("D", " "),)),
        "non_ascii_dimension_value": ok._replace(dimensions=(("D", "v\x00"),)),
        "bad_statistic_sum": ok._replace(samples=(2.0**360, 2.0**360)),
        "bad_timestamp": ok._replace(timestamp=math.nan),
        "bad_unit": ok._replace(unit="Widgets"),
    }
    ledger = DropLedger()
    spool = Spool(tmp_path, ledger=ledger, fsync=False)
    spool.open()
    edge = ok._replace(dimensions=tuple((f"D{i:02d}", "v" * 1024) for i in range(30)))
    [record] = spool.add([ok, edge, *bad.values()])
    assert record.count == 2 and spool.load(record) == [ok, edge]
    assert ledger.counts == {f"invalid.{why}": 1 for why in bad}
    spool.close()


# -- each refusal, by the rule it follows ----------------------------------------------------

NOW = 1_750_000_000.0
OK = Datum("Hive/EC2", "CPUUtilization", (("InstanceId", "i-1"),), 1.0, "Percent", NOW, 60)
SPINIFEX = Rules("single_values", spinifex=True)
STATS = Rules("statistic_sets")
ARRAYS = Rules("value_arrays")


def case(why: str, rule: str, rules: Rules = AWS_RULES, **changes: Any) -> Any:
    """A datum OK but for `changes`, refused for `why` by `rule`."""
    return pytest.param(why, OK._replace(**changes), rules, id=f"{why}: {rule}")


def dims(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return pairs


# Each reason by the rule it follows: REFERENCE.md section 4 (CloudWatch) or 7 (Spinifex), and
# AWS's API reference of PutMetricData and its types (MetricDatum, Dimension, StatisticSet).
REFUSED = [
    case("bad_namespace", "Namespace: 1-255 characters, not blank", namespace=" "),
    case("bad_namespace", "Namespace: 1-255 characters", namespace="N" * 256),
    case("bad_namespace", "Namespace: pattern [^:].*", namespace=":Hive"),
    case("bad_namespace", "Namespace: ASCII characters only", namespace="Hivé"),
    case("bad_namespace", "Namespace: no control characters", namespace="Hive\x7f"),
    case("reserved_namespace", "section 4: AWS/ namespaces are reserved", namespace="AWS/EC2"),
    case("reserved_namespace", "section 7: Spinifex: Goanna/ too", SPINIFEX, namespace="Goanna/X"),
    case("blank_metric_name", "MetricName: required (MissingParameter)", name=""),
    case("blank_metric_name", "MetricName: not blank (MissingParameter)", name=" \t"),
    case("bad_metric_name", "MetricName: 1-255 characters", name="m" * 256),
    case(
        "bad_metric_name", "UTF-8 on the wire and in the spool: no lone surrogate", name="m\ud800"
    ),
    case(
        "too_many_dimensions",
        "section 4: <= 30 dimensions",
        dimensions=tuple((f"D{i:02d}", "v") for i in range(31)),
    ),
    case(
        "duplicate_dimension",
        "AWS: No metric may specify the same dimension name twice",
        dimensions=dims(("D", "a"), ("D", "b")),
    ),
    case(
        "duplicate_dimension",
        "the same, names not sorted",
        dimensions=dims(("E", "a"), ("D", "b"), ("E", "c")),
    ),
    case("blank_dimension_name", "Dimension.Name: required", dimensions=dims(("", "v"))),
    case(
        "blank_dimension_name",
        "Dimension.Name: at least one non-whitespace character",
        dimensions=dims(("  ", "v")),
    ),
    case(
        "bad_dimension_name", "Dimension.Name: 1-255 characters", dimensions=dims(("D" * 256, "v"))
    ),
    case("non_ascii_dimension_name", "Dimension.Name: ASCII only", dimensions=dims(("Dé", "v"))),
    case(
        "non_ascii_dimension_name",
        "Dimension.Name: no ASCII control characters",
        dimensions=dims(("D\x1f", "v")),
    ),
    case(
        "colon_dimension_name",
        "Dimension.Name: cannot start with a colon",
        dimensions=dims((":D", "v")),
    ),
    case(
        "spinifex_dimension_name",
        "section 7: dimension names ^[a-zA-Z_][a-zA-Z0-9_]*$",
        SPINIFEX,
        dimensions=dims(("bad-name", "v")),
    ),
    case(
        "spinifex_dimension_name",
        "section 7: not starting with a digit",
        SPINIFEX,
        dimensions=dims(("9lives", "v")),
    ),
    case("blank_dimension_value", "Dimension.Value: required", dimensions=dims(("D", ""))),
    case(
        "blank_dimension_value",
        "Dimension.Value: at least one non-whitespace character",
        dimensions=dims(("D", "   ")),
    ),
    case(
        "bad_dimension_value",
        "Dimension.Value: 1-1024 characters",
        dimensions=dims(("D", "v" * 1025)),
    ),
    case(
        "non_ascii_dimension_value",
        "Dimension.Value: ASCII only",
        dimensions=dims(("D", "\U0001f600")),
    ),
    case(
        "non_ascii_dimension_value",
        "Dimension.Value: no ASCII control characters",
        dimensions=dims(("D", "a\tb")),
    ),
    case("bad_value", "section 4: no NaN", value=math.nan),
    case("bad_value", "section 4: no Inf", value=-math.inf),
    case("bad_value", "section 4: within +-2^360", value=math.nextafter(2.0**360, math.inf)),
    case("bad_value", "StatisticSet members are values too", STATS, samples=(1.0, math.nan)),
    case("bad_value", "Values members are values too", ARRAYS, samples=(1.0, 2.0**361)),
    case("bad_value", "auto may fall back to Value", value=math.nan, samples=(1.0,)),
    case(
        "bad_statistic_sum",
        "StatisticSet.Sum: a value within +-2^360",
        STATS,
        samples=(2.0**360, 2.0**360),
    ),
    case(
        "too_many_values",
        "section 4: <= 150 entries in Values/Counts",
        ARRAYS,
        samples=tuple(map(float, range(151))),
    ),
    case(
        "future_timestamp",
        "section 4: at most 2 hours ahead (less a margin)",
        timestamp=NOW + MAX_FUTURE_S + 0.001,
    ),
    case("future_timestamp", "section 4: at most 2 hours ahead", timestamp=math.inf),
    case("bad_timestamp", "Timestamp: a time", timestamp=math.nan),
    case("bad_storage_resolution", "section 4: StorageResolution 1 or 60", storage_resolution=5),
    case("bad_unit", "section 4: one of the 27 units", unit="Furlongs"),
]


@pytest.mark.parametrize(("why", "d", "rules"), REFUSED)
def test_each_refusal_names_its_reason(why: str, d: Datum, rules: Rules) -> None:
    assert refusal(d, NOW, rules) == why
    assert checked(d, NOW, rules) == (why, 0)


# Just inside each limit: taken, and sized as datum_wire_size sizes it.
TAKEN: list[tuple[Datum, Rules]] = [
    (OK._replace(namespace="N" * 255), AWS_RULES),
    (OK._replace(namespace="Goanna/EC2"), AWS_RULES),  # reserved by Spinifex only
    (OK._replace(namespace="a:b c"), AWS_RULES),  # ':' and spaces inside are ASCII printable
    (OK._replace(name="m" * 255), AWS_RULES),
    (OK._replace(name="naïve métrique"), AWS_RULES),  # MetricName has no ASCII rule
    (OK._replace(dimensions=tuple((f"D{i:02d}", "v" * 1024) for i in range(30))), AWS_RULES),
    (OK._replace(dimensions=dims(("D" * 255, " v "), ("b-c:d", "~"))), AWS_RULES),  # AWS: fine
    (OK._replace(dimensions=dims(("_Aa9", "x"))), SPINIFEX),
    (OK._replace(value=-(2.0**360)), AWS_RULES),
    (OK._replace(value=2.0**360, samples=(2.0**360,)), STATS),
    (OK._replace(value=math.nan, samples=(1.0,)), STATS),  # the Value is not sent
    (OK._replace(samples=(2.0**360, 2.0**360)), ARRAYS),  # no Sum sent
    (OK._replace(samples=tuple(map(float, range(150))) * 2), ARRAYS),  # 150 distinct values
    (OK._replace(samples=(math.nan, 2.0**400)), SPINIFEX),  # single values: samples not sent
    (OK._replace(timestamp=NOW + MAX_FUTURE_S), AWS_RULES),
    (OK._replace(timestamp=NOW - MAX_AGE_S - 86400), AWS_RULES),  # too old: dropped at send
    (OK._replace(storage_resolution=1, unit="Count/Second"), AWS_RULES),
]


@pytest.mark.parametrize(("d", "rules"), TAKEN)
def test_datums_just_inside_the_limits_are_taken(d: Datum, rules: Rules) -> None:
    assert checked(d, NOW, rules) == (None, datum_wire_size(d))


def test_remembered_verdicts_belong_to_their_rules() -> None:
    """A name or namespace AWS takes, once remembered by the AWS rules, is still refused by
    Spinifex's; and a string refused once is refused again."""
    aws, spinifex = Rules(), Rules(spinifex=True)
    for _ in range(2):
        bad_name = OK._replace(dimensions=dims(("bad-name", "v")))
        assert refusal(bad_name, NOW, aws) is None
        assert refusal(bad_name, NOW, spinifex) == "spinifex_dimension_name"
        assert refusal(OK._replace(namespace="Goanna/X"), NOW, aws) is None
        assert refusal(OK._replace(namespace="Goanna/X"), NOW, spinifex) == "reserved_namespace"
        assert refusal(OK._replace(dimensions=dims(("D", "é"))), NOW, aws) == (
            "non_ascii_dimension_value"
        )
    with pytest.raises(ValueError, match="datum shape"):
        Rules("statistic_set")


# -- against an oracle ------------------------------------------------------------------------

_SPINIFEX_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _blank(s: str) -> bool:
    return not s.strip()


def _printable_ascii(s: str) -> bool:
    return all(32 <= ord(c) < 127 for c in s)


def oracle(d: Datum, now: float, rules: Rules) -> set[str]:
    """Every reason to refuse the datum, written out from the rules one by one (as the strict
    endpoint in tests/strict_endpoint.py checks them), not for speed."""
    out = set()
    ns = d.namespace
    if _blank(ns) or len(ns) > 255 or not _printable_ascii(ns) or ns.startswith(":"):
        out.add("bad_namespace")
    elif ns.startswith("AWS/") or (rules.spinifex and ns.startswith("Goanna/")):
        out.add("reserved_namespace")
    if _blank(d.name):
        out.add("blank_metric_name")
    elif len(d.name) > 255 or any(0xD800 <= ord(c) < 0xE000 for c in d.name):
        out.add("bad_metric_name")
    if len(d.dimensions) > 30:
        out.add("too_many_dimensions")
    if len({k for k, _ in d.dimensions}) < len(d.dimensions):
        out.add("duplicate_dimension")
    for k, v in d.dimensions:
        if _blank(k):
            out.add("blank_dimension_name")
        elif len(k) > 255:
            out.add("bad_dimension_name")
        elif not _printable_ascii(k):
            out.add("non_ascii_dimension_name")
        elif k.startswith(":"):
            out.add("colon_dimension_name")
        elif rules.spinifex and not _SPINIFEX_NAME.fullmatch(k):
            out.add("spinifex_dimension_name")
        if _blank(v):
            out.add("blank_dimension_value")
        elif len(v) > 1024:
            out.add("bad_dimension_value")
        elif not _printable_ascii(v):
            out.add("non_ascii_dimension_value")

    def bad(x: float) -> bool:
        return not (math.isfinite(x) and abs(x) <= 2.0**360)

    sent: list[float] = []
    if not d.samples or rules.shape in ("auto", "single_values"):
        sent.append(d.value)
    if d.samples and rules.shape != "single_values":
        sent.extend(d.samples)
        if rules.shape == "value_arrays":
            if len(set(d.samples)) > 150:
                out.add("too_many_values")
        elif not any(map(bad, d.samples)) and bad(math.fsum(d.samples)):
            out.add("bad_statistic_sum")
    if any(map(bad, sent)):
        out.add("bad_value")
    if math.isnan(d.timestamp):
        out.add("bad_timestamp")
    elif d.timestamp > now + MAX_FUTURE_S:
        out.add("future_timestamp")
    if d.storage_resolution not in (1, 60):
        out.add("bad_storage_resolution")
    if d.unit not in UNITS:
        out.add("bad_unit")
    return out


_tricky = st.sampled_from(
    [
        "",
        " ",
        "\t",
        ":c",
        "a-b",
        "9x",
        "_x",
        "x" * 255,
        "x" * 256,
        "é",
        "\x7f",
        "\U0001f600",
        "\ud800",
    ]
)
_text = st.one_of(
    _tricky,
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True),
    st.text(st.characters(codec="ascii"), max_size=12),
    st.text(max_size=12),
    st.text(st.characters(codec="ascii"), min_size=1020, max_size=1030),
)
_number = st.one_of(
    st.floats(),
    st.sampled_from([2.0**360, -(2.0**360), math.nextafter(2.0**360, math.inf), 0.0, -0.0]),
)
_datum = st.builds(
    Datum,
    namespace=st.one_of(st.sampled_from(["Hive/EC2", "AWS/EC2", "Goanna/X"]), _text),
    name=st.one_of(st.just("CPUUtilization"), _text),
    dimensions=st.lists(st.tuples(_text, _text), max_size=32).map(tuple),
    value=_number,
    unit=st.sampled_from(["Count", "Percent", "None", "count", ""]),
    timestamp=st.one_of(
        st.floats(NOW - 15 * 86400, NOW + 3 * 3600),
        st.sampled_from([NOW + MAX_FUTURE_S, NOW - MAX_AGE_S, math.nan, math.inf, -math.inf]),
    ),
    storage_resolution=st.sampled_from([1, 60, 5]),
    samples=st.one_of(
        st.lists(_number, max_size=5),
        st.lists(st.integers(0, 200).map(float), min_size=140, max_size=170),
    ).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_datum, min_size=1, max_size=3),
    st.sampled_from([AWS_RULES, STATS, ARRAYS, SPINIFEX, Rules("single_values")]),
)
def test_checked_agrees_with_the_rules_written_out(datums: list[Datum], rules: Rules) -> None:
    """Whatever the datum, `checked` names one of its reasons (or none when it has none) and
    sizes a datum it takes as datum_wire_size does; the remembered verdicts never change an
    answer (several datums per example, sharing the rules)."""
    for d in datums:
        reasons = oracle(d, NOW, rules)
        why, size = checked(d, NOW, rules)
        if reasons:
            assert why in reasons, (why, reasons)
        else:
            assert (why, size) == (None, datum_wire_size(d))
