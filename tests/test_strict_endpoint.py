"""The strict CloudWatch endpoint (tests/strict_endpoint.py), driven by a real botocore client in
both wire protocols (AWS JSON 1.0 and awsQuery, pinned through botocore's sdk-extras mechanism).

The limits and the messages expected here are written out from AWS's documentation and from
AWS's own replies quoted in public reports, not taken from the endpoint's module."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.strict_endpoint import AcceptedDatum, StatisticSet, StrictEndpoint
from tests.strict_endpoint import Protocol as WireProtocol

PROTOCOLS = ("json", "query")

# AWS's documented PutMetricData limits (API reference; botocore's model)
MAX_DATUMS = 1000
MAX_BYTES = 1_000_000  # "1 MB"
MAX_DIMENSIONS = 30
MAX_NAME = 255
MAX_DIMENSION_VALUE = 1024
MAX_VALUES = 150
LIMIT = 2.0**360
TWO_WEEKS = timedelta(days=14)
TWO_HOURS = timedelta(hours=2)
UNITS = [
    *("Seconds", "Microseconds", "Milliseconds"),
    *("Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes"),
    *("Bits", "Kilobits", "Megabits", "Gigabits", "Terabits"),
    *("Percent", "Count"),
    *("Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second"),
    *("Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second"),
    *("Gigabits/Second", "Terabits/Second", "Count/Second", "None"),
]
P = "MetricData.member.1"

Datums = list[dict[str, Any]]


# -- clients ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """botocore data paths whose sdk-extras pin CloudWatch's wire protocol."""
    out = {}
    for protocol in PROTOCOLS:
        root = tmp_path_factory.mktemp(f"botocore-{protocol}")
        extras = root / "cloudwatch" / "2010-08-01" / "service-2.sdk-extras.json"
        extras.parent.mkdir(parents=True)
        merge = {"metadata": {"protocol": protocol, "protocols": [protocol]}}
        extras.write_text(json.dumps({"version": 1.0, "merge": merge}))
        out[protocol] = root
    return out


def make_client(
    url: str,
    data_path: Path,
    min_compression: int = 10240,
    credentials: dict[str, Any] | None = None,
) -> Any:
    """A CloudWatch client signing with the static key `testing`, or with `credentials` (an
    STS reply's Credentials)."""
    session = botocore.session.Session()
    session.set_config_variable("data_path", str(data_path))
    creds = credentials or {"AccessKeyId": "testing", "SecretAccessKey": "testing"}
    return session.create_client(
        "cloudwatch",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds.get("SessionToken"),
        config=Config(
            parameter_validation=False,  # let the endpoint see what botocore would refuse
            retries={"total_max_attempts": 1},
            request_min_compression_size_bytes=min_compression,
            connect_timeout=5,
            read_timeout=10,
        ),
    )


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[StrictEndpoint]:
    with StrictEndpoint(mode="aws") as ep:
        yield ep


@pytest.fixture(scope="module")
def spinifex_endpoint() -> Iterator[StrictEndpoint]:
    with StrictEndpoint(mode="spinifex") as ep:
        yield ep


@pytest.fixture(scope="module")
def clients(
    aws_endpoint: StrictEndpoint, spinifex_endpoint: StrictEndpoint, data_paths: dict[str, Path]
) -> dict[tuple[str, str], Any]:
    return {
        (mode, protocol): make_client(ep.url, data_paths[protocol])
        for mode, ep in (("aws", aws_endpoint), ("spinifex", spinifex_endpoint))
        for protocol in PROTOCOLS
    }


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def emptied(endpoint: StrictEndpoint, client: Any) -> tuple[StrictEndpoint, Any]:
    """The shared endpoint with nothing accepted or refused yet, and its client."""
    endpoint.clear()
    return endpoint, client


@pytest.fixture
def aws(
    aws_endpoint: StrictEndpoint, clients: dict[tuple[str, str], Any], protocol: str
) -> tuple[StrictEndpoint, Any]:
    return emptied(aws_endpoint, clients[("aws", protocol)])


@pytest.fixture
def spinifex(
    spinifex_endpoint: StrictEndpoint, clients: dict[tuple[str, str], Any], protocol: str
) -> tuple[StrictEndpoint, Any]:
    return emptied(spinifex_endpoint, clients[("spinifex", protocol)])


# -- helpers ---------------------------------------------------------------------------------------
def now() -> datetime:
    return datetime.now(UTC)


def datum(**fields: Any) -> dict[str, Any]:
    """A valid datum; a field given as None is left out."""
    d: dict[str, Any] = {
        "MetricName": "CPUUtilization",
        "Dimensions": [{"Name": "InstanceId", "Value": "i-0123456789abcdef0"}],
        "Timestamp": now() - timedelta(minutes=1),
        "Value": 12.5,
        "Unit": "Percent",
    }
    d.update(fields)
    return {k: v for k, v in d.items() if v is not None}


def required(field: str) -> str:
    """AWS's message for an empty or blank field of the first dimension."""
    return f"The parameter {P}.Dimensions.member.1.{field} is required."


def dimension_case(name: str, key: str, value: str, code: Any, message: str | None = None) -> Case:
    """A case of one datum with one dimension."""
    dims = [{"Name": key, "Value": value}]
    return Case(name, ns([datum(Dimensions=dims)]), code, message=message)


def statistic_case(name: str, stats: tuple[float, float, float, float], code: Any) -> Case:
    """A case of one datum carrying only a statistic set (SampleCount, Sum, Minimum,
    Maximum)."""
    keys = ("SampleCount", "Sum", "Minimum", "Maximum")
    statistic_values = dict(zip(keys, stats, strict=True))
    return Case(name, ns([datum(Value=None, StatisticValues=statistic_values)]), code)


def dims(n: int, value: str = "v") -> list[dict[str, str]]:
    return [{"Name": f"d{i}", "Value": value} for i in range(n)]


def refuse(ep: StrictEndpoint, client: Any, namespace: str, datums: Datums) -> ClientError:
    with pytest.raises(ClientError) as info:
        client.put_metric_data(Namespace=namespace, MetricData=datums)
    assert ep.accepted == []
    return info.value


def error_of(e: ClientError) -> tuple[str, int, str]:
    return (
        e.response["Error"]["Code"],
        e.response["ResponseMetadata"]["HTTPStatusCode"],
        e.response["Error"]["Message"],
    )


# -- a valid request -------------------------------------------------------------------------------
def test_a_valid_request_is_accepted_and_read_back_exactly(
    aws: tuple[StrictEndpoint, Any], protocol: str
) -> None:
    ep, client = aws
    wire = cast(WireProtocol, protocol)
    t = float(int(time.time()) - 120) + 0.125  # exact in binary, ISO 8601 and epoch seconds
    ts = datetime.fromtimestamp(t, UTC)
    client.put_metric_data(
        Namespace="Hive/EC2",
        MetricData=[
            datum(
                MetricName="CPUUtilization",
                Dimensions=[
                    {"Name": "InstanceId", "Value": "i-0123456789abcdef0"},
                    {"Name": "ImageId", "Value": "ami-0123"},
                ],
                Timestamp=ts,
                Value=0.1 + 0.2,
                Unit="Percent",
                StorageResolution=1,
            ),
            datum(
                MetricName="VolumeReadOps",
                Dimensions=[{"Name": "VolumeId", "Value": "vol-0123456789abcdef0"}],
                Timestamp=ts,
                Value=None,
                StatisticValues={
                    "SampleCount": 5.0,
                    "Sum": 12.5,
                    "Minimum": -1e-300,
                    "Maximum": 9.0,
                },
                Unit="Count",
                StorageResolution=60,
            ),
            datum(
                MetricName="diskio_read_time",
                Dimensions=[],
                Timestamp=ts,
                Value=None,
                Values=[1.0, 2.5, 1e100],
                Counts=[3.0, 1.0, 2.0],
                Unit=None,
            ),
        ],
    )
    assert ep.refused == {}
    assert ep.requests[-1].protocol == protocol and ep.requests[-1].status == 200
    assert ep.accepted == [
        AcceptedDatum(
            namespace="Hive/EC2",
            name="CPUUtilization",
            dimensions={"InstanceId": "i-0123456789abcdef0", "ImageId": "ami-0123"},
            value=0.1 + 0.2,
            statistic_values=None,
            values=None,
            counts=None,
            unit="Percent",
            timestamp=t,
            storage_resolution=1,
            protocol=wire,
        ),
        AcceptedDatum(
            namespace="Hive/EC2",
            name="VolumeReadOps",
            dimensions={"VolumeId": "vol-0123456789abcdef0"},
            value=None,
            statistic_values=StatisticSet(5.0, 12.5, -1e-300, 9.0),
            values=None,
            counts=None,
            unit="Count",
            timestamp=t,
            storage_resolution=60,
            protocol=wire,
        ),
        AcceptedDatum(
            namespace="Hive/EC2",
            name="diskio_read_time",
            dimensions={},
            value=None,
            statistic_values=None,
            values=(1.0, 2.5, 1e100),
            counts=(3.0, 1.0, 2.0),
            unit=None,
            timestamp=t,
            storage_resolution=60,
            protocol=wire,
        ),
    ]


def test_a_datum_without_timestamp_gets_the_time_of_receipt(
    aws: tuple[StrictEndpoint, Any],
) -> None:
    ep, client = aws
    before = time.time()
    client.put_metric_data(Namespace="Hive", MetricData=[datum(Timestamp=None)])
    (d,) = ep.accepted
    assert before - 1 <= d.timestamp <= time.time() + 1


# -- each rule refuses a minimal violating request ------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], tuple[str, Datums]]
    code: str
    status: int = 400
    message: str | None = None  # AWS's own text, where it is known


def ns(datums: Datums, namespace: str = "Hive") -> Callable[[], tuple[str, Datums]]:
    return lambda: (namespace, datums)


def lazy(make: Callable[[], Datums], namespace: str = "Hive") -> Callable[[], tuple[str, Datums]]:
    return lambda: (namespace, make())


IPV, MP, IPC = "InvalidParameterValue", "MissingParameter", "InvalidParameterCombination"
AWS_CASES = [
    Case(
        "more-than-1000-datums",
        lazy(lambda: [datum(MetricName=f"m{i}") for i in range(MAX_DATUMS + 1)]),
        IPV,
        message="The collection MetricData must not have a size greater than 1000.",
    ),
    Case("no-datum", ns([]), MP),
    Case(
        "request-over-1MB",
        # 35 datums of 30 dimensions of 1000 characters: > 1,000,000 bytes in either protocol
        lazy(
            lambda: [
                datum(MetricName=f"m{i}", Dimensions=dims(MAX_DIMENSIONS, "x" * 1000))
                for i in range(35)
            ]
        ),
        "RequestEntityTooLarge",
        status=413,
    ),
    Case("31-dimensions", ns([datum(Dimensions=dims(MAX_DIMENSIONS + 1))]), IPV),
    Case("metric-name-256", ns([datum(MetricName="m" * (MAX_NAME + 1))]), IPV),
    Case("metric-name-empty", ns([datum(MetricName="")]), MP),
    dimension_case("dimension-name-256", "n" * (MAX_NAME + 1), "v", IPV),
    dimension_case(
        "dimension-name-empty",
        "",
        "v",
        MP,
        message=required("Name"),
    ),
    dimension_case(
        "dimension-value-1025",
        "n",
        "v" * (MAX_DIMENSION_VALUE + 1),
        IPV,
        message=(
            f"The parameter {P}.Dimensions.member.1.Value must be shorter than 1025 characters."
        ),
    ),
    dimension_case(
        "dimension-value-empty",
        "n",
        "",
        MP,
        message=required("Value"),
    ),
    dimension_case(
        "dimension-value-blank",
        "n",
        "   ",
        MP,
        message=required("Value"),
    ),
    Case(
        "dimension-name-twice",
        ns([datum(Dimensions=[{"Name": "n", "Value": "a"}, {"Name": "n", "Value": "b"}])]),
        IPV,
        message="No metric may specify the same dimension name twice.",
    ),
    Case(
        "151-values",
        ns([datum(Value=None, Values=[float(i) for i in range(MAX_VALUES + 1)])]),
        IPV,
        message=f"The collection {P}.Values must not have a size greater than 150.",
    ),
    Case(
        "values-counts-lengths-differ",
        ns([datum(Value=None, Values=[1.0, 10.0], Counts=[2.0, 4.0, 5.0])]),
        IPV,
        message=f"The parameters {P}.Values and {P}.Counts must be of the same size.",
    ),
    Case(
        "value-and-statistic-values",
        ns(
            [
                datum(
                    Value=1.5,
                    StatisticValues={"SampleCount": 10, "Sum": 55, "Minimum": 1, "Maximum": 10},
                )
            ]
        ),
        IPC,
        message=(
            f"The parameters {P}.Value and {P}.StatisticValues are mutually exclusive and you "
            f"have specified both."
        ),
    ),
    Case(
        "value-and-values",
        ns([datum(Value=1.5, Values=[1.0, 10.0])]),
        IPC,
        message=(
            f"The parameters {P}.Value and {P}.Values are mutually exclusive and you have "
            f"specified both."
        ),
    ),
    Case("no-value-at-all", ns([datum(Value=None)]), IPC),
    Case("value-just-above-2^360", ns([datum(Value=math.nextafter(LIMIT, math.inf))]), IPV),
    Case(
        "value-1e109",  # AWS writes numbers as Java does: 1.0E109
        ns([datum(Value=1e109)]),
        IPV,
        message=f"The value 1.0E109 for parameter {P}.Value is invalid.",
    ),
    Case("value-just-below--2^360", ns([datum(Value=-math.nextafter(LIMIT, math.inf))]), IPV),
    Case(
        "value-nan",
        ns([datum(Value=math.nan)]),
        IPV,
        message=f"The value NaN for parameter {P}.Value is invalid.",
    ),
    Case("value-+inf", ns([datum(Value=math.inf)]), IPV),
    Case("value--inf", ns([datum(Value=-math.inf)]), IPV),
    Case("values-nan", ns([datum(Value=None, Values=[1.0, math.nan])]), IPV),
    Case("counts-inf", ns([datum(Value=None, Values=[1.0], Counts=[math.inf])]), IPV),
    statistic_case("statistic-sum-inf", (1, math.inf, 1, 1), IPV),
    statistic_case("statistic-sample-count-0", (0, 0, 0, 0), IPV),
    statistic_case("statistic-minimum-above-maximum", (2, 3, 2, 1), IPV),
    Case(
        "statistic-sum-missing",
        ns([datum(Value=None, StatisticValues={"SampleCount": 2, "Minimum": 1, "Maximum": 2})]),
        MP,
    ),
    Case(
        "timestamp-over-two-weeks-old",
        lazy(lambda: [datum(Timestamp=now() - TWO_WEEKS - timedelta(minutes=1))]),
        IPV,
        message=f"The parameter {P}.Timestamp must specify a time within the past two weeks.",
    ),
    Case(
        "timestamp-over-two-hours-ahead",
        lazy(lambda: [datum(Timestamp=now() + TWO_HOURS + timedelta(minutes=1))]),
        IPV,
    ),
    Case(
        "storage-resolution-30",
        ns([datum(StorageResolution=30)]),
        IPV,
        message=f"The parameter {P}.StorageResolution must be a value in the set [ 1, 60 ].",
    ),
    Case("storage-resolution-0", ns([datum(StorageResolution=0)]), IPV),
    Case(
        "unit-unknown",
        ns([datum(Unit="Percentage")]),
        IPV,
        message=f"The parameter {P}.Unit must be a value in the set [ {', '.join(UNITS)} ].",
    ),
    Case("unit-wrong-case", ns([datum(Unit="percent")]), IPV),
    Case("namespace-empty", ns([datum()], namespace=""), MP),
    Case("namespace-256", ns([datum()], namespace="n" * (MAX_NAME + 1)), IPV),
    Case(
        "namespace-AWS/",
        ns([datum()], namespace="AWS/"),
        IPV,
        message="The value AWS/ for parameter Namespace is invalid.",
    ),
    Case("namespace-AWS/EC2", ns([datum()], namespace="AWS/EC2"), IPV),
    Case("namespace-leading-colon", ns([datum()], namespace=":Hive"), IPV),
]


@pytest.mark.parametrize("case", AWS_CASES, ids=[c.id for c in AWS_CASES])
def test_aws_mode_refuses(case: Case, aws: tuple[StrictEndpoint, Any], protocol: str) -> None:
    ep, client = aws
    namespace, datums = case.build()
    code, status, message = error_of(refuse(ep, client, namespace, datums))
    assert (code, status) == (case.code, case.status)
    if case.message is not None:
        assert message == case.message
    assert ep.refused == {case.code: 1}
    assert ep.requests[-1].protocol == protocol


def test_several_failures_of_one_kind_come_in_one_message(aws: tuple[StrictEndpoint, Any]) -> None:
    ep, client = aws
    e = refuse(ep, client, "Hive", [datum(Unit="a"), datum(Unit="b")])
    code, _, message = error_of(e)
    assert code == IPV
    assert message.splitlines() == [
        f"The parameter MetricData.member.{i}.Unit must be a value in the set "
        f"[ {', '.join(UNITS)} ]."
        for i in (1, 2)
    ]


def test_one_bad_datum_refuses_the_whole_request(aws: tuple[StrictEndpoint, Any]) -> None:
    ep, client = aws
    refuse(ep, client, "Hive", [datum(), datum(MetricName="ok2"), datum(StorageResolution=5)])
    assert ep.accepted == []


# -- the limits themselves are accepted -----------------------------------------------------------
ACCEPTED_AT_THE_LIMIT = [
    ("1000-datums", lambda: [datum(MetricName=f"m{i}") for i in range(MAX_DATUMS)]),
    ("30-dimensions", lambda: [datum(Dimensions=dims(MAX_DIMENSIONS))]),
    ("metric-name-255", lambda: [datum(MetricName="m" * MAX_NAME)]),
    ("dimension-name-255", lambda: [datum(Dimensions=[{"Name": "n" * MAX_NAME, "Value": "v"}])]),
    (
        "dimension-value-1024",
        lambda: [datum(Dimensions=[{"Name": "n", "Value": "v" * MAX_DIMENSION_VALUE}])],
    ),
    (
        "150-values-and-counts",
        lambda: [
            datum(
                Value=None,
                Values=[float(i) for i in range(MAX_VALUES)],
                Counts=[1.0] * MAX_VALUES,
            )
        ],
    ),
    ("values-without-counts", lambda: [datum(Value=None, Values=[1.0, 2.0])]),
    ("value-2^360", lambda: [datum(Value=LIMIT), datum(MetricName="neg", Value=-LIMIT)]),
    (
        "timestamp-almost-two-weeks-old",
        lambda: [datum(Timestamp=now() - TWO_WEEKS + timedelta(minutes=1))],
    ),
    (
        "timestamp-almost-two-hours-ahead",
        lambda: [datum(Timestamp=now() + TWO_HOURS - timedelta(minutes=1))],
    ),
    (
        "storage-resolutions-1-and-60",
        lambda: [datum(StorageResolution=1), datum(StorageResolution=60)],
    ),
    ("all-27-units", lambda: [datum(MetricName=f"m{i}", Unit=u) for i, u in enumerate(UNITS)]),
    (
        # AWS accepts StatisticValues together with Values (LocalStack's AWS-validated test)
        "statistic-values-with-values",
        lambda: [
            datum(
                Value=None,
                Values=[1.0, 10.0],
                StatisticValues={"SampleCount": 10, "Sum": 55, "Minimum": 1, "Maximum": 10},
            )
        ],
    ),
    (
        "statistic-sample-count-1",
        lambda: [
            datum(
                Value=None, StatisticValues={"SampleCount": 1, "Sum": 4, "Minimum": 4, "Maximum": 4}
            )
        ],
    ),
    (
        # 25 datums of 30 dimensions of 1000 characters: under 1,000,000 bytes in both protocols
        "large-request-under-1MB",
        lambda: [
            datum(MetricName=f"m{i}", Dimensions=dims(MAX_DIMENSIONS, "x" * 1000))
            for i in range(25)
        ],
    ),
]


@pytest.mark.parametrize(
    "make", [m for _, m in ACCEPTED_AT_THE_LIMIT], ids=[i for i, _ in ACCEPTED_AT_THE_LIMIT]
)
def test_aws_mode_accepts_the_limits(
    make: Callable[[], Datums], aws: tuple[StrictEndpoint, Any]
) -> None:
    ep, client = aws
    datums = make()
    client.put_metric_data(Namespace="n" * MAX_NAME, MetricData=datums)
    assert ep.refused == {}
    assert len(ep.accepted) == len(datums)
    assert ep.requests[-1].body_bytes <= MAX_BYTES


def test_lowercase_aws_namespace_is_not_reserved(aws: tuple[StrictEndpoint, Any]) -> None:
    ep, client = aws
    client.put_metric_data(Namespace="aws/testing", MetricData=[datum()])
    assert [d.namespace for d in ep.accepted] == ["aws/testing"]


# -- gzip -----------------------------------------------------------------------------------------
def test_gzip_bodies_are_accepted(
    aws_endpoint: StrictEndpoint, data_paths: dict[str, Path], protocol: str
) -> None:
    ep = aws_endpoint
    ep.clear()
    client = make_client(ep.url, data_paths[protocol], min_compression=1)
    client.put_metric_data(Namespace="Hive", MetricData=[datum(Value=42.0)])
    (info,) = ep.requests
    assert info.gzip and info.protocol == protocol and info.status == 200
    assert [d.value for d in ep.accepted] == [42.0]


def test_the_size_limit_applies_to_the_uncompressed_body(aws: tuple[StrictEndpoint, Any]) -> None:
    ep, client = aws
    big = [
        datum(MetricName=f"m{i}", Dimensions=dims(MAX_DIMENSIONS, "x" * 1000)) for i in range(35)
    ]
    code, status, message = error_of(refuse(ep, client, "Hive", big))
    (info,) = ep.requests
    assert info.gzip and info.wire_bytes < MAX_BYTES < info.body_bytes  # botocore gzipped it
    assert (code, status) == ("RequestEntityTooLarge", 413)
    assert message == f"Request size {info.body_bytes} exceeded {MAX_BYTES} bytes"


# -- the wire -------------------------------------------------------------------------------------
def raw_post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


JSON_HEADERS = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Target": "GraniteServiceVersion20100801.PutMetricData",
}
JSON_BODY = json.dumps({"Namespace": "Hive", "MetricData": [{"MetricName": "m", "Value": 1}]})


def test_an_unsigned_request_is_refused(aws_endpoint: StrictEndpoint) -> None:
    aws_endpoint.clear()
    status, headers, body = raw_post(aws_endpoint.url, JSON_HEADERS, JSON_BODY.encode())
    assert status == 403
    assert headers["x-amzn-query-error"] == "MissingAuthenticationToken;Sender"
    query = b"Action=PutMetricData&Version=2010-08-01&Namespace=Hive"
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    status, _, body = raw_post(aws_endpoint.url, form, query)
    assert status == 403 and b"<Code>MissingAuthenticationToken</Code>" in body
    assert aws_endpoint.refused == {"MissingAuthenticationToken": 2}
    assert aws_endpoint.accepted == []


def test_a_request_not_signed_with_sigv4_is_refused(aws_endpoint: StrictEndpoint) -> None:
    aws_endpoint.clear()
    headers = {
        **JSON_HEADERS,
        "Authorization": "Basic dXNlcjpwYXNz",
        "X-Amz-Date": "20250101T000000Z",
    }
    status, headers, _ = raw_post(aws_endpoint.url, headers, JSON_BODY.encode())
    assert status == 400 and headers["x-amzn-query-error"] == "IncompleteSignature;Sender"


def test_the_pinned_protocol_is_what_goes_over_the_wire(
    aws: tuple[StrictEndpoint, Any], protocol: str
) -> None:
    ep, client = aws
    client.put_metric_data(Namespace="Hive", MetricData=[datum()])
    (info,) = ep.requests
    assert info.protocol == protocol and not info.gzip


# -- failing on cue -------------------------------------------------------------------------------
def test_fail_next_answers_the_given_errors_then_recovers(aws: tuple[StrictEndpoint, Any]) -> None:
    ep, client = aws
    ep.fail_next(1, code="Throttling", status=400)
    ep.fail_next(1, code="InternalServiceError", status=500)
    codes = []
    for _ in range(2):
        with pytest.raises(ClientError) as info:
            client.put_metric_data(Namespace="Hive", MetricData=[datum()])
        codes.append(error_of(info.value)[:2])
    assert codes == [("Throttling", 400), ("InternalServiceError", 500)]
    assert error_of(info.value)[2] != ""
    client.put_metric_data(Namespace="Hive", MetricData=[datum()])
    assert len(ep.accepted) == 1
    assert ep.refused == {"Throttling": 1, "InternalServiceError": 1}


def test_the_endpoint_stops_by_itself_on_exit() -> None:
    with StrictEndpoint() as ep:
        port = ep.port
        thread = ep._thread
    assert thread is not None and not thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- spinifex mode --------------------------------------------------------------------------------
def test_spinifex_accepts_a_single_value(spinifex: tuple[StrictEndpoint, Any]) -> None:
    ep, client = spinifex
    client.put_metric_data(
        Namespace="Hive/EC2",
        MetricData=[datum(Dimensions=[{"Name": "_Instance_Id1", "Value": "i-1"}], Value=3.0)],
    )
    assert [(d.value, d.dimensions) for d in ep.accepted] == [(3.0, {"_Instance_Id1": "i-1"})]


SPINIFEX_CASES = [
    statistic_case("statistic-values", (2, 3, 1, 2), IPV),
    Case("values", ns([datum(Value=None, Values=[1.0, 2.0])]), IPV),
    Case("values-and-counts", ns([datum(Value=None, Values=[1.0], Counts=[2.0])]), IPV),
    Case("namespace-AWS/", ns([datum()], namespace="AWS/EC2"), IPV),
    Case("namespace-Goanna/", ns([datum()], namespace="Goanna/EC2"), IPV),
    Case(
        "dimension-name-dash", ns([datum(Dimensions=[{"Name": "instance-id", "Value": "i"}])]), IPV
    ),
    Case("dimension-name-digit", ns([datum(Dimensions=[{"Name": "1st", "Value": "i"}])]), IPV),
    Case("dimension-name-space", ns([datum(Dimensions=[{"Name": "a b", "Value": "i"}])]), IPV),
    Case("aws-rules-apply-too", ns([datum(Dimensions=dims(MAX_DIMENSIONS + 1))]), IPV),
]


@pytest.mark.parametrize("case", SPINIFEX_CASES, ids=[c.id for c in SPINIFEX_CASES])
def test_spinifex_mode_refuses(case: Case, spinifex: tuple[StrictEndpoint, Any]) -> None:
    ep, client = spinifex
    namespace, datums = case.build()
    code, status, _ = error_of(refuse(ep, client, namespace, datums))
    assert (code, status) == (case.code, case.status)
    assert ep.refused == {case.code: 1}


def test_spinifex_refuses_duplicate_and_out_of_order_samples(
    spinifex: tuple[StrictEndpoint, Any],
) -> None:
    ep, client = spinifex
    t = now() - timedelta(minutes=10)
    ab = [{"Name": "a", "Value": "1"}, {"Name": "b", "Value": "2"}]
    ba = [{"Name": "b", "Value": "2"}, {"Name": "a", "Value": "1"}]  # the same series

    def put(timestamp: datetime, dimensions: list[dict[str, str]], name: str = "m") -> None:
        client.put_metric_data(
            Namespace="Hive",
            MetricData=[datum(MetricName=name, Dimensions=dimensions, Timestamp=timestamp)],
        )

    put(t, ab)
    for late in (t, t - timedelta(minutes=1)):  # a duplicate, then an out-of-order sample
        with pytest.raises(ClientError) as info:
            put(late, ba)
        assert error_of(info.value)[:2] == (IPV, 400)
    put(t, [{"Name": "a", "Value": "other"}])  # another series: same time is fine
    put(t, ab, name="other")  # another metric name: another series
    put(t + timedelta(minutes=1), ba)
    assert len(ep.accepted) == 4
    assert ep.refused == {IPV: 2}


def test_spinifex_checks_the_order_within_one_request_and_keeps_nothing_of_a_refusal(
    spinifex: tuple[StrictEndpoint, Any],
) -> None:
    ep, client = spinifex
    t = now() - timedelta(minutes=10)
    with pytest.raises(ClientError):
        client.put_metric_data(
            Namespace="Hive",
            MetricData=[datum(Timestamp=t), datum(Timestamp=t - timedelta(minutes=1))],
        )
    assert ep.accepted == []
    # the refused request moved no series on: its earlier sample is still welcome
    client.put_metric_data(
        Namespace="Hive",
        MetricData=[datum(Timestamp=t - timedelta(minutes=1)), datum(Timestamp=t)],
    )
    assert [d.timestamp for d in ep.accepted] == [
        (t - timedelta(minutes=1)).timestamp(),
        t.timestamp(),
    ]


# -- in front of moto ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_upstream(harness: Any, moto_url: str) -> str:
    """The URL of the session's moto server itself (moto_url is the strict endpoint before it)."""
    front = next(f for f in harness.fronts.values() if f.url == moto_url)
    return str(front.upstream.geturl())


def read_back(client: Any, namespace: str, name: str, instance: str) -> list[float]:
    end = now() + timedelta(minutes=1)
    reply = client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": namespace,
                        "MetricName": name,
                        "Dimensions": [{"Name": "InstanceId", "Value": instance}],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
            }
        ],
        StartTime=end - timedelta(minutes=30),
        EndTime=end,
    )
    return [float(v) for v in reply["MetricDataResults"][0]["Values"]]


@pytest.mark.parametrize("mode", ["aws", "spinifex"])
def test_in_front_of_moto_what_passes_is_stored_and_read_back_through_it(
    moto_upstream: str, data_paths: dict[str, Path], protocol: str, mode: str
) -> None:
    namespace = f"Front/{mode}/{protocol}"
    instance = f"i-{uuid.uuid4().hex[:17]}"
    with StrictEndpoint(cast(Any, mode), upstream=moto_upstream) as ep:
        client = make_client(ep.url, data_paths[protocol])
        good = datum(Dimensions=[{"Name": "InstanceId", "Value": instance}], Value=7.0)
        client.put_metric_data(Namespace=namespace, MetricData=[good])
        bad = datum(Dimensions=[{"Name": "InstanceId", "Value": instance}], Value=math.inf)
        with pytest.raises(ClientError):
            client.put_metric_data(Namespace=namespace, MetricData=[bad])
        # GetMetricData is not checked here, only passed on: moto answers it.
        assert read_back(client, namespace, "CPUUtilization", instance) == [7.0]
        assert [d.value for d in ep.accepted] == [7.0]
        assert ep.forwarded == 2  # the accepted PutMetricData and the GetMetricData
        assert ep.refused == {"InvalidParameterValue": 1}


def test_in_front_of_a_stopped_upstream_every_request_is_an_outage(
    data_paths: dict[str, Path], protocol: str
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with StrictEndpoint("spinifex", upstream=dead) as ep:
        client = make_client(ep.url, data_paths[protocol])
        t = now() - timedelta(minutes=1)
        with pytest.raises(ClientError) as info:
            client.put_metric_data(Namespace="Front", MetricData=[datum(Timestamp=t)])
        code, status, _ = error_of(info.value)
        assert (code, status) == ("ServiceUnavailable", 503)
        assert ep.accepted == []
        # The series did not move on: the same sample is not a duplicate once the
        # upstream is back (here: the endpoint without upstream, same series state).
        ep.upstream = None
        client.put_metric_data(Namespace="Front", MetricData=[datum(Timestamp=t)])
        assert len(ep.accepted) == 1


# -- STS in front of moto ----------------------------------------------------------------------
def sts_client(url: str, credentials: dict[str, Any] | None = None, service: str = "sts") -> Any:
    """STS (or another service) at `url`, signing with the static key `testing` or with
    `credentials` (AccessKeyId, SecretAccessKey, SessionToken if any)."""
    creds = credentials or {"AccessKeyId": "testing", "SecretAccessKey": "testing"}
    return botocore.session.Session().create_client(
        service,
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds.get("SessionToken"),
        config=Config(retries={"total_max_attempts": 1}),
    )


HOST_ACCOUNT = "444444444400"
HOST_USER = f"arn:aws:iam::{HOST_ACCOUNT}:user/hive-host-7"


@pytest.fixture(scope="module")
def host_keys(moto_upstream: str) -> dict[str, Any]:
    """The long-term keys of an IAM user `hive-host-7` of account 444444444400 in moto (the
    host's identity, the caller of AssumeRole below): made with a key of that account, which
    an AssumeRole of a role in it gives (moto: keys belong to the account of their IAM)."""
    setup = sts_client(moto_upstream).assume_role(
        RoleArn=f"arn:aws:iam::{HOST_ACCOUNT}:role/Setup", RoleSessionName="test-setup"
    )["Credentials"]
    iam = sts_client(moto_upstream, setup, service="iam")
    iam.create_user(UserName="hive-host-7")
    key = iam.create_access_key(UserName="hive-host-7")["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def denied(role: str) -> tuple[str, int, str]:
    """STS's refusal of an AssumeRole the host user may not make (STS names the caller's
    ARN)."""
    return (
        "AccessDenied",
        403,
        f"User: {HOST_USER} is not authorized to perform: sts:AssumeRole on resource: {role}",
    )


def test_a_role_whose_trust_policy_demands_an_external_id_is_assumed_only_with_it(
    moto_upstream: str, host_keys: dict[str, Any]
) -> None:
    trusting = "arn:aws:iam::444444444444:role/HiveAgentPublisher"
    plain = "arn:aws:iam::444444444445:role/HiveAgentPublisher"
    with StrictEndpoint(
        "aws", upstream=moto_upstream, required_external_ids={trusting: "hive-host-7"}
    ) as ep:
        sts = sts_client(ep.url, host_keys)
        for extra in ({}, {"ExternalId": "hive-host-8"}, {"ExternalId": "HIVE-HOST-7"}):
            with pytest.raises(ClientError) as info:
                sts.assume_role(RoleArn=trusting, RoleSessionName="hiveagent", **extra)
            assert error_of(info.value) == denied(trusting)
        assert ep.issued_keys == {}  # nothing was passed on
        good = sts.assume_role(
            RoleArn=trusting, RoleSessionName="hiveagent", ExternalId="hive-host-7"
        )["Credentials"]
        # A trust policy without the condition takes the request with or without one.
        sts.assume_role(RoleArn=plain, RoleSessionName="hiveagent")
        sts.assume_role(RoleArn=plain, RoleSessionName="hiveagent", ExternalId="hive-host-7")
        assert [(c.role_arn, c.external_id, c.status) for c in ep.assume_role_calls] == [
            (trusting, None, 403),
            (trusting, "hive-host-8", 403),
            (trusting, "HIVE-HOST-7", 403),
            (trusting, "hive-host-7", 200),
            (plain, None, 200),
            (plain, "hive-host-7", 200),
        ]
        assert {c.caller for c in ep.assume_role_calls} == {host_keys["AccessKeyId"]}
        assert ep.role_of(good["AccessKeyId"]) == trusting
        assert ep.refused == {"AccessDenied": 3}
        ep.denied_roles = {plain}  # a role not there (any more)
        with pytest.raises(ClientError) as info:
            sts.assume_role(RoleArn=plain, RoleSessionName="hiveagent")
        assert error_of(info.value) == denied(plain)
        assert host_keys["AccessKeyId"] not in str(ep.refusals)  # clients log the messages


def test_credentials_of_a_shortened_lifetime_are_refused_once_expired(
    moto_upstream: str, data_paths: dict[str, Path], protocol: str
) -> None:
    role = "arn:aws:iam::444444444446:role/HiveAgentPublisher"
    clock = [float(int(time.time())) + 0.25]  # the endpoint's own clock, moved by the test
    with StrictEndpoint(
        "aws", clock=lambda: clock[0], upstream=moto_upstream, credential_lifetime_s=300
    ) as ep:
        creds = sts_client(ep.url).assume_role(RoleArn=role, RoleSessionName="hiveagent")[
            "Credentials"
        ]
        # STS writes whole seconds: now + 300 s, the fraction cut off
        expires = clock[0] - 0.25 + 300
        assert creds["Expiration"] == datetime.fromtimestamp(expires, UTC)
        assert ep.issued_keys[creds["AccessKeyId"]].expiration == expires
        client = make_client(ep.url, data_paths[protocol], credentials=creds)
        t = datetime.fromtimestamp(clock[0], UTC) - timedelta(minutes=1)
        client.put_metric_data(Namespace="Hive", MetricData=[datum(Timestamp=t, Value=1.0)])
        clock[0] = expires - 0.001  # the last moment it is good
        client.put_metric_data(Namespace="Hive", MetricData=[datum(Timestamp=t, Value=2.0)])
        clock[0] = expires
        with pytest.raises(ClientError) as info:
            client.put_metric_data(Namespace="Hive", MetricData=[datum(Timestamp=t, Value=3.0)])
        assert error_of(info.value) == (
            "ExpiredToken",
            403,
            "The security token included in the request is expired",
        )
        # A key the endpoint did not see issued (the static `testing`) never expires here.
        make_client(ep.url, data_paths[protocol]).put_metric_data(
            Namespace="Hive", MetricData=[datum(Timestamp=t, Value=4.0)]
        )
        assert [(d.value, d.access_key) for d in ep.accepted] == [
            (1.0, creds["AccessKeyId"]),
            (2.0, creds["AccessKeyId"]),
            (4.0, "testing"),
        ]
        assert ep.refused == {"ExpiredToken": 1}


def test_without_a_lifetime_the_upstreams_expiration_is_relayed_and_remembered(
    moto_upstream: str,
) -> None:
    role = "arn:aws:iam::444444444447:role/HiveAgentPublisher"
    with StrictEndpoint("aws", upstream=moto_upstream) as ep:
        before = time.time()
        creds = sts_client(ep.url).assume_role(
            RoleArn=role, RoleSessionName="hiveagent", DurationSeconds=900
        )["Credentials"]
        after = time.time()
        issued = ep.issued_keys[creds["AccessKeyId"]]
        assert issued.expiration is not None
        assert issued.expiration == creds["Expiration"].timestamp()
        assert before + 900 - 1 <= issued.expiration <= after + 900 + 1


@pytest.mark.parametrize("mode", ["aws", "spinifex"])
def test_only_keys_issued_for_a_reserved_namespace_role_may_put_aws_namespaces(
    moto_upstream: str, data_paths: dict[str, Path], protocol: str, mode: str
) -> None:
    service = "arn:aws:iam::444444444448:role/CloudWatchService"
    tenant = "arn:aws:iam::444444444448:role/HiveAgentPublisher"
    with StrictEndpoint(
        cast(Any, mode), upstream=moto_upstream, reserved_namespace_roles={service}
    ) as ep:
        sts = sts_client(ep.url)
        keys = {
            role: sts.assume_role(RoleArn=role, RoleSessionName="hiveagent")["Credentials"]
            for role in (service, tenant)
        }
        as_service = make_client(ep.url, data_paths[protocol], credentials=keys[service])
        as_tenant = make_client(ep.url, data_paths[protocol], credentials=keys[tenant])
        as_static = make_client(ep.url, data_paths[protocol])
        instance = f"i-{uuid.uuid4().hex[:17]}"
        good = datum(Dimensions=[{"Name": "InstanceId", "Value": instance}], Value=5.0)
        as_service.put_metric_data(Namespace="AWS/EC2", MetricData=[good])
        for client in (as_tenant, as_static):
            e = refuse_more(ep, client, "AWS/EC2", [good])
            assert error_of(e) == (
                "InvalidParameterValue",
                400,
                "The value AWS/EC2 for parameter Namespace is invalid.",
            )
        if mode == "spinifex":  # Spinifex's own reserved prefix: no exemption
            e = refuse_more(ep, as_service, "Goanna/Node", [good])
            code, status, message = error_of(e)
            assert (code, status) == ("InvalidParameterValue", 400)
            assert message.startswith("The value Goanna/Node for parameter Namespace is invalid")
        # What passed went on to moto: it is there, in the service role's account.
        assert read_back(as_service, "AWS/EC2", "CPUUtilization", instance) == [5.0]
        assert [(d.namespace, d.access_key) for d in ep.accepted] == [
            ("AWS/EC2", keys[service]["AccessKeyId"])
        ]
        assert ep.refused == {"InvalidParameterValue": 3 if mode == "spinifex" else 2}


def refuse_more(ep: StrictEndpoint, client: Any, namespace: str, datums: Datums) -> ClientError:
    """The request is refused and nothing more is accepted."""
    before = len(ep.accepted)
    with pytest.raises(ClientError) as info:
        client.put_metric_data(Namespace=namespace, MetricData=datums)
    assert len(ep.accepted) == before
    return info.value
