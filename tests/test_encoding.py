"""Request bodies made by hiveagent.encoding are what botocore's own serialiser makes of the same
datums (wire.to_metric_datum in the datum shape, then botocore's JSONSerializer /
QuerySerializer and urlencode), byte for byte and so as parsed data (json.loads, parse_qs), for
both wire protocols and every datum shape; and through wire.Wire the request on the wire is
botocore's: the same headers, gzip exactly when botocore would compress (the body at or over
the client's request_min_compression_size_bytes), and signed by botocore over the body sent."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.serialize import create_serializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiveagent.encoding import BodyEncoder, WireDatums
from hiveagent.model import Datum
from hiveagent.publisher import Publisher
from hiveagent.spool import Spool
from hiveagent.wire import BodyNotPutIn, Wire, make_client, to_metric_datum

_OPERATION = (
    botocore.session.get_session().get_service_model("cloudwatch").operation_model("PutMetricData")
)
SHAPES = ("statistic_sets", "value_arrays", "single_values")
PROTOCOLS = ("json", "query")


def botocore_body(protocol: str, namespace: str, datums: list[Datum], shape: str) -> bytes:
    """The body botocore's own serialiser makes (awsQuery: url-encoded as botocore does before
    compressing or sending it)."""
    params = {"Namespace": namespace, "MetricData": [to_metric_datum(d, shape) for d in datums]}
    body = create_serializer(protocol, False).serialize_to_request(params, _OPERATION)["body"]
    if isinstance(body, dict):
        return urllib.parse.urlencode(body, doseq=True, encoding="utf-8").encode()
    assert isinstance(body, bytes)
    return body


def parsed(protocol: str, body: bytes) -> Any:
    if protocol == "json":
        return json.loads(body)
    return urllib.parse.parse_qs(body.decode(), keep_blank_values=True, strict_parsing=True)


# -- datums: what the agent sends, and what it never should but the encoder must still match ----

_text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30)
_ascii = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30)
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**60), 2**60),  # collectors may hand over ints
    st.sampled_from([0.0, -0.0, 5e-324, 1e300, 2.0**360, 1e16, 1e-7, 123456789.0]),
)
_stamps = st.one_of(
    st.floats(-2e10, 2.5e11),  # year 1336 to 9892; sub-microsecond parts round
    st.integers(0, 4_000_000_000),
    st.sampled_from([1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.000001, 1e9 + 1e-7]),
)
datum_strategy = st.builds(
    Datum,
    namespace=st.just("N"),
    name=st.one_of(_text, st.sampled_from(["CPUUtilization", "naïve/x y", "a+b&c=d%"])),
    dimensions=st.lists(st.tuples(_ascii, _ascii), max_size=4).map(tuple),
    value=_numbers,
    unit=st.sampled_from(["Count", "Bytes/Second", "Percent", "None"]),
    timestamp=_stamps,
    storage_resolution=st.sampled_from([1, 60, 60.0]),
    samples=st.one_of(
        st.just(()),
        st.lists(_numbers, min_size=1, max_size=6).map(tuple),
        st.lists(st.sampled_from([1.0, 2.0, 1, 3.5]), min_size=1, max_size=20).map(tuple),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(datum_strategy, min_size=1, max_size=25),
    st.sampled_from(PROTOCOLS),
    st.sampled_from(SHAPES),
    st.sampled_from(["N", "Hive/EC2", "CW Agent+x"]),
)
def test_bodies_are_botocores(
    datums: list[Datum], protocol: str, shape: str, namespace: str
) -> None:
    encoder = BodyEncoder(protocol)
    try:
        want = botocore_body(protocol, namespace, datums, shape)
    except (ValueError, OverflowError, OSError) as exc:  # a timestamp out of range
        with pytest.raises(type(exc)):
            encoder.body(namespace, datums, shape)
        return
    for _ in range(2):  # the second time from the caches
        got = encoder.body(namespace, datums, shape)
        assert got == want
        assert parsed(protocol, got) == parsed(protocol, want)


def test_a_cycle_shaped_body_is_botocores() -> None:
    """Many datums of few series and timestamps (the caches' use), 60 and 60.0 resolutions
    mixed (one key in a dict, written differently)."""
    datums = [
        Datum(
            "CWAgent",
            f"cpu_usage_{k % 11}",
            (("InstanceId", f"i-{v:017x}"), ("cpu", f"cpu{k % 3}")),
            k * 1.25 + v,
            "Percent",
            1_700_000_000 + 60 * (k % 2),
            60.0 if k % 7 == 0 else 60,  # type: ignore[arg-type]
        )
        for v in range(20)
        for k in range(50)
    ]
    for protocol in PROTOCOLS:
        encoder = BodyEncoder(protocol)
        for shape in SHAPES:
            assert encoder.body("CWAgent", datums, shape) == botocore_body(
                protocol, "CWAgent", datums, shape
            )


# -- on the wire ----------------------------------------------------------------------------------


class Capture:
    """An HTTP server that keeps every request (headers, raw body) and answers PutMetricData
    as CloudWatch does in either protocol."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append((dict(self.headers.items()), body))
                if "json" in self.headers.get("Content-Type", ""):
                    reply, ctype = b"{}", "application/x-amz-json-1.0"
                else:
                    reply = (
                        b'<PutMetricDataResponse xmlns="http://monitoring.amazonaws.com/doc/'
                        b'2010-08-01/"><ResponseMetadata><RequestId>1</RequestId>'
                        b"</ResponseMetadata></PutMetricDataResponse>"
                    )
                    ctype = "text/xml"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    c = Capture()
    yield c
    c.close()


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def cycle(n: int) -> list[Datum]:
    return [
        Datum(
            "Hive/EC2",
            "CPUUtilization",
            (("InstanceId", f"i-{k:017x}"),),
            k / 7,
            "Percent",
            1_700_000_000.0,
            60,
            (1.0, float(k)) if k % 5 == 0 else (),
        )
        for k in range(n)
    ]


# Headers that differ between any two requests (or follow from the body's bytes).
_PER_REQUEST = {"authorization", "x-amz-date", "content-length", "amz-sdk-invocation-id"}


def _headers(h: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in h.items() if k.lower() not in _PER_REQUEST | {"user-agent"}}


def _sigv4_valid(headers: dict[str, str], body: bytes, url: str) -> bool:
    """Recompute the request's SigV4 signature with botocore over the body as received."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = headers["Authorization"]
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={k: v for k, v in headers.items() if k.lower() in signed},
    )
    request.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials("AKIDTEST", "secret"), "monitoring", "us-east-1")
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    return auth.endswith(f"Signature={signer.signature(string_to_sign, request)}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("n", "compressed"), [(3, False), (40, None), (400, True)])
def test_the_request_on_the_wire_is_botocores(
    capture: Capture, protocol: str, n: int, compressed: bool | None
) -> None:
    """The same datums sent by botocore's own put_metric_data and through Wire: the same
    headers, bodies equal once gunzipped, gzip for exactly the bodies botocore compresses, and
    a signature that botocore's SigV4 computes over the body received."""
    client = make_client("us-east-1", capture.url, 5.0, protocol)
    datums = cycle(n)
    shape = "statistic_sets"
    capture.requests.clear()
    client.put_metric_data(
        Namespace="Hive/EC2", MetricData=[to_metric_datum(d, shape) for d in datums]
    )
    wire = Wire(client)
    assert wire.encoder is not None and wire.compress_from == 10240
    wire.send("Hive/EC2", wire.prepare("Hive/EC2", datums, shape))
    (theirs_h, theirs), (ours_h, ours) = capture.requests
    plain = botocore_body(protocol, "Hive/EC2", datums, shape)
    if compressed is not None:  # the sizes chosen fall on either side of the threshold
        assert (len(plain) >= 10240) is compressed
    assert _headers(ours_h) == _headers(theirs_h)
    assert ("Content-Encoding" in ours_h) is (len(plain) >= 10240)
    unzip = (lambda b: gzip.decompress(b)) if len(plain) >= 10240 else (lambda b: b)
    assert unzip(ours) == unzip(theirs) == plain
    assert _sigv4_valid(ours_h, ours, capture.url)
    assert _sigv4_valid(theirs_h, theirs, capture.url)  # the check itself is sound
    # An ordinary put_metric_data afterwards is botocore's own again.
    capture.requests.clear()
    client.put_metric_data(Namespace="Hive/EC2", MetricData=[to_metric_datum(datums[0])])
    [(_, alone)] = capture.requests
    assert alone == botocore_body(protocol, "Hive/EC2", datums[:1], "statistic_sets")


def test_compression_follows_the_client_config(capture: Capture) -> None:
    from botocore.config import Config

    session = botocore.session.get_session()
    for config, expect in (
        (Config(disable_request_compression=True), None),
        (Config(request_min_compression_size_bytes=100), 100),
    ):
        client = session.create_client(
            "cloudwatch", "us-east-1", endpoint_url=capture.url, config=config
        )
        assert Wire(client).compress_from == expect
    capture.requests.clear()
    client = session.create_client(
        "cloudwatch",
        "us-east-1",
        endpoint_url=capture.url,
        config=Config(disable_request_compression=True),
    )
    wire = Wire(client)
    wire.send("N", wire.prepare("N", cycle(400), "single_values"))
    [(headers, body)] = capture.requests
    assert "Content-Encoding" not in headers and json.loads(body)["Namespace"] == "N"


def test_a_body_not_put_in_is_never_sent(capture: Capture, tmp_path: Path) -> None:
    """Should the request-created hook not run (a botocore that changed), the stand-in request
    (no datums) is not sent; the publisher sends the datums with botocore's serialiser
    instead, from then on."""
    client = make_client("us-east-1", capture.url, 5.0, "json")
    spool = Spool(tmp_path, fsync=False)
    spool.open()
    publisher = Publisher(client, spool)
    wire = publisher.wire
    client.meta.events.unregister(
        "request-created.cloudwatch.PutMetricData", unique_id="hiveagent.wire.body.put"
    )
    capture.requests.clear()
    with pytest.raises(BodyNotPutIn, match="not put in"):
        wire.send("N", wire.prepare("N", cycle(2), "single_values"))
    assert capture.requests == []

    datums = [d._replace(timestamp=time.time()) for d in cycle(3)]
    spool.add(datums)
    assert asyncio.run(publisher.flush())
    [(_, body)] = capture.requests
    assert body == botocore_body("json", "Hive/EC2", datums, "statistic_sets")
    assert wire.encoder is None and publisher.stats["api_calls"] == 1
    assert not spool.json_fragments  # and the spool makes no fragments for it any more


def test_not_a_number_is_sent_as_botocore_sends_it() -> None:
    """Never sent by the agent (refused when spooled) but written as botocore writes it."""
    d = Datum("N", "m", (), math.nan, "Count", 1e9, 60, (math.inf, 1.0, math.nan))
    for protocol in PROTOCOLS:
        for shape in SHAPES:
            assert BodyEncoder(protocol).body("N", [d], shape) == botocore_body(
                protocol, "N", [d], shape
            )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_refused_datum_among_fragments_is_isolated(
    tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh record goes out as the JSON fragments `Spool.add` made (or, for awsQuery, as the
    Datums read back from them); a datum the endpoint refuses among them (Spinifex refuses a
    sample not later than its series' last) is found by halving, dropped alone, counted and
    named in the log line; the others land as they were."""
    from hiveagent.config import PublishSettings
    from hiveagent.ledger import DropLedger
    from tests.strict_endpoint import StrictEndpoint

    now = float(int(time.time()))
    first = [
        Datum("Hive/EC2", "CPUUtilization", (("InstanceId", f"i-{k}"),), k / 3, "Percent", now)
        for k in range(12)
    ]
    later = [d._replace(timestamp=now + 60, value=d.value + 1) for d in first]
    later[7] = later[7]._replace(timestamp=now)  # a duplicate sample of i-7
    with StrictEndpoint("spinifex") as ep:
        client = make_client("us-east-1", ep.url, 5.0, protocol)
        ledger = DropLedger()
        spool = Spool(tmp_path, fsync=False, ledger=ledger)
        spool.open()
        publisher = Publisher(client, spool, PublishSettings(breaker_failures=100))
        publisher.datum_shape = "single_values"
        assert spool.json_fragments is (protocol == "json")
        spool.add(first)
        [record] = spool.add(later)
        assert isinstance(spool.load(record), WireDatums) is (protocol == "json")
        assert spool.load(record) == later
        assert asyncio.run(publisher.flush())
        accepted = [(a.name, a.dimensions["InstanceId"], a.value, a.timestamp) for a in ep.accepted]
    assert ledger.counts == {"rejected.InvalidParameterValue": 1}
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
    assert f"Hive/EC2/CPUUtilization{{InstanceId=i-7}}@{now:.3f}" in line
    assert publisher.stats["datums_sent"] == 23
    want = [(d.name, d.dimensions[0][1], d.value, d.timestamp) for d in first + later]
    del want[12 + 7]
    assert sorted(accepted) == sorted(want)


RECENT = float(int(time.time()) // 3600 * 3600)  # one "now" for every example of a run
_good_datums = st.builds(
    Datum,
    namespace=st.sampled_from(["Hive/EC2", "CWAgent"]),
    name=st.one_of(_text.filter(lambda s: not s.isspace()), st.just("CPUUtilization")),
    dimensions=st.lists(
        st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True), _ascii),
        max_size=4,
        unique_by=lambda kv: kv[0],
    ).map(lambda pairs: tuple(sorted(pairs))),
    value=st.one_of(st.floats(-1e100, 1e100), st.integers(-(2**53), 2**53)),
    unit=st.sampled_from(["Count", "Percent", "Bytes/Second", "None"]),
    timestamp=st.floats(-3600.0, 0.0).map(lambda back: RECENT + back),
    storage_resolution=st.sampled_from([1, 60]),
    samples=st.one_of(st.just(()), st.just(()), st.just((1.0, 2.5))),
).filter(lambda d: not d.dimensions or all(not v.isspace() for _, v in d.dimensions))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(_good_datums, min_size=1, max_size=30))
def test_the_spools_fragments_make_botocores_body(tmp_path: Path, datums: list[Datum]) -> None:
    """`Spool.add` makes each datum's JSON fragment from what it remembers of the series
    (Rules); they are the encoder's fragments, and the body made of them is botocore's."""
    import tempfile

    from hiveagent.ledger import DropLedger

    ledger = DropLedger()
    spool = Spool(tempfile.mkdtemp(dir=tmp_path), fsync=False, ledger=ledger)
    spool.open()
    for _ in range(2):  # the second time from what the spool remembers
        records = spool.add(datums)
        assert not ledger.counts
        encoder = BodyEncoder("json")
        for r in records:
            kept = spool.load(r)
            given_ = [d for d in datums if d.namespace == r.namespace]
            assert isinstance(kept, WireDatums) is not any(d.samples for d in given_)
            assert list(kept) == given_
            if isinstance(kept, WireDatums):
                assert kept.fragments == [encoder.fragment(d) for d in given_]
                body = encoder.body(r.namespace, kept.fragments, "statistic_sets")
                assert body == botocore_body("json", r.namespace, given_, "statistic_sets")
            spool.done(r)
    spool.close()
