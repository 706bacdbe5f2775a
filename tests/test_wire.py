"""The request limits, held against botocore's own serialisers for both wire protocols and
against CloudWatch's documented limits (REFERENCE.md section 4): a request filled by our size
bound never exceeds 1 MB however the guest spells its dimension values, and a datum CloudWatch
would refuse is dropped before it is spooled, counted by reason."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Any

import botocore.session
from hypothesis import given, settings
from hypothesis import strategies as st

from hiveagent.ledger import DropLedger
from hiveagent.model import Datum
from hiveagent.spool import Spool
from hiveagent.wire import (
    MAX_REQUEST_BYTES,
    REQUEST_OVERHEAD_BYTES,
    datum_wire_size,
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
    60. Such datums never reach a request; each is counted by reason."""
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
    }
    ledger = DropLedger()
    spool = Spool(tmp_path, ledger=ledger, fsync=False)
    spool.open()
    edge = ok._replace(dimensions=tuple((f"D{i:02d}", "v" * 1024) for i in range(30)))
    [record] = spool.add([ok, edge, *bad.values()])
    assert record.count == 2 and spool.load(record) == [ok, edge]
    assert ledger.counts == {f"invalid.{why}": 1 for why in bad}
    spool.close()
