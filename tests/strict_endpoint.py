"""A STRICT CloudWatch-compatible PutMetricData endpoint for tests: a real HTTP server on
127.0.0.1 that refuses what AWS CloudWatch refuses (moto's server enforces none of the
request limits), and in "spinifex" mode also what Spinifex's CloudWatch service refuses.

    with StrictEndpoint(mode="aws") as ep:
        client = boto3.client("cloudwatch", endpoint_url=ep.url, ...)
        ...
        ep.accepted  # [AcceptedDatum(namespace, name, dimensions, value, ...), ...]
        ep.refused   # Counter({"InvalidParameterValue": 2, ...})
        ep.refusals  # [Refusal(status, code, message, protocol), ...]
        ep.requests  # [RequestInfo(protocol, gzip, wire_bytes, body_bytes, status, code), ...]
        ep.fail_next(2, code="Throttling", status=400)  # outages on cue
        ep.wait_for(accepted=10, timeout=5.0); ep.clear()

    with StrictEndpoint(mode="spinifex", upstream=moto_url) as ep:  # in front of moto
        ...  # PutMetricData checked here, then passed on; everything else passed on as is

In front of an upstream (moto's server), a PutMetricData the endpoint accepts is passed on to
the upstream byte for byte (moto stores it and answers GetMetricData/ListMetrics later) and the
upstream's answer is relayed; it counts as accepted only when the upstream accepted it too. Any
other request (GetMetricData, ListMetrics, moto's /moto-api/...) is passed on untouched. While
the upstream is down, every request is answered 503 ServiceUnavailable (an endpoint outage).

STS in front of an upstream (moto's server serves STS at the same address): an AssumeRole
(awsQuery, as botocore sends it) is checked, passed on, and its reply looked at:

    ep.denied_roles = {arn}                 # AssumeRole of the role: 403 AccessDenied
    ep.required_external_ids = {arn: "x"}   # its trust policy demands ExternalId "x": an
                                            #   AssumeRole without it, or with another, 403
    ep.credential_lifetime_s = 5.0          # the reply's Expiration rewritten to now + 5 s,
                                            #   whole seconds as STS writes them (0: already
                                            #   expired, as to a host whose clock runs ahead)
    ep.reserved_namespace_roles = {arn}     # keys issued for the role may put `AWS/` namespaces
    ep.assume_role_calls                    # [AssumeRoleCall(role_arn, external_id, ...), ...]
    ep.issued_keys                          # {AccessKeyId: IssuedKey(role_arn, expiration)}

The AccessKeyId and Expiration of every AssumeRole reply passed through are remembered: a
PutMetricData signed with such a key at or after its expiration (by the endpoint's `clock`) is
refused 403 ExpiredToken, and the role it was issued for decides the `reserved_namespace_roles`
exemption. The AccessDenied text is STS's, naming the caller's ARN as the upstream's
GetCallerIdentity names the identity that signed the request (never its access key id).

It speaks both wire protocols botocore uses for CloudWatch: AWS JSON 1.0 (`X-Amz-Target:
GraniteServiceVersion20100801.PutMetricData`) and awsQuery (form-encoded), gzip bodies or not,
and answers errors the way each protocol does so that botocore raises a ClientError with the
right `Error.Code`, `Error.Message` and HTTP status (JSON: `__type` plus CloudWatch's
awsQueryCompatible `x-amzn-query-error: Code;Sender` header; query: an `ErrorResponse` XML).
Smithy RPC v2 CBOR is not spoken (400 UnknownOperationException); botocore prefers JSON.
A request is atomic: one bad datum refuses the whole request and nothing of it is kept (as AWS
documents for metric data errors).

What is enforced (rule -> error code, HTTP 400 unless said):

    Authorization header missing                      MissingAuthenticationToken (403)
    Authorization not SigV4-shaped for `monitoring`   IncompleteSignature
    signed with a key an AssumeRole passed through
      issued, at or after its Expiration               ExpiredToken (403)
    uncompressed body > 1,000,000 bytes               RequestEntityTooLarge (413)
    Namespace absent / blank                          MissingParameter
    Namespace > 255 chars, starts `:` or `AWS/`
      (`AWS/`: unless signed with a key issued for
      one of `reserved_namespace_roles`),
      non-ASCII or control characters                 InvalidParameterValue
    no datum at all                                   MissingParameter
    > 1000 datums (MetricData + EntityMetricData)     InvalidParameterValue
    MetricName absent / blank                         MissingParameter
    MetricName > 255 chars                            InvalidParameterValue
    > 30 dimensions                                   InvalidParameterValue
    dimension Name / Value absent or blank            MissingParameter
    dimension Name > 255 / Value > 1024 chars         InvalidParameterValue
    dimension Name starting `:`, non-ASCII or control
      characters in a dimension name or value         InvalidParameterValue
    the same dimension name twice                     InvalidParameterValue
    Value together with StatisticValues or Values     InvalidParameterCombination
    none of Value, StatisticValues, Values            InvalidParameterCombination
    > 150 Values or Counts, or their lengths differ   InvalidParameterValue
    a number NaN, +-Infinity or outside +-2^360       InvalidParameterValue
    StatisticValues member absent                     MissingParameter
    StatisticValues SampleCount <= 0, Minimum > Maximum  InvalidParameterValue
    Timestamp > 14 days past / > 2 hours future       InvalidParameterValue
    StorageResolution not 1 or 60                     InvalidParameterValue
    Unit not one of the 27 units                      InvalidParameterValue
  spinifex mode, in addition (codes of our choosing, all InvalidParameterValue):
    StatisticValues, Values or Counts in a datum      InvalidParameterValue
    Namespace starting `AWS/` or `Goanna/`            InvalidParameterValue
      (`AWS/` exempt as in aws mode, `Goanna/` never)
    dimension name not ^[a-zA-Z_][a-zA-Z0-9_]*$       InvalidParameterValue
    a sample not later than the last accepted one of
      its series (namespace, name, sorted dimensions) InvalidParameterValue

Messages: where AWS's own text is known (quoted in public reports of real AWS replies, or
recorded against AWS in LocalStack's AWS-validated snapshot tests) it is used verbatim and
marked "AWS text" below; the others are reconstructed in the same style and marked so.
AWS joins the messages of several failures of one kind with newlines, and so does this.

Also known from AWS and followed here: AWS ACCEPTS a datum carrying both StatisticValues and
Values (LocalStack's AWS-validated test_put_metric_data_validation), so only Value is exclusive.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import SHUT_RDWR, socket
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

__all__ = [
    "AWS_UNITS",
    "JSON_TARGET",
    "MAX_DATUMS_PER_REQUEST",
    "MAX_DIMENSIONS",
    "MAX_DIMENSION_VALUE_CHARS",
    "MAX_FUTURE_S",
    "MAX_NAME_CHARS",
    "MAX_PAST_S",
    "MAX_REQUEST_BYTES",
    "MAX_VALUES_PER_DATUM",
    "VALUE_LIMIT",
    "AcceptedDatum",
    "AssumeRoleCall",
    "IssuedKey",
    "Mode",
    "Protocol",
    "Refusal",
    "RequestInfo",
    "StatisticSet",
    "StrictEndpoint",
]

# -- AWS's documented PutMetricData limits (API reference, botocore's model) -----------------
MAX_DATUMS_PER_REQUEST = 1000
# "Each PutMetricData request is limited to 1 MB": whether AWS means 10^6 or 2^20 bytes is not
# public; the CloudWatch Agent budgets 10^6 (bottomLinePayloadSizeInBytesToPublish = 999000,
# "1MB payload size"). The lower figure is used, so whatever this endpoint accepts AWS accepts.
MAX_REQUEST_BYTES = 1_000_000
MAX_DIMENSIONS = 30
MAX_NAME_CHARS = 255  # Namespace, MetricName, dimension Name
MAX_DIMENSION_VALUE_CHARS = 1024
MAX_VALUES_PER_DATUM = 150
VALUE_LIMIT = 2.0**360
MAX_PAST_S = 14 * 86400
MAX_FUTURE_S = 2 * 3600
STORAGE_RESOLUTIONS = (1, 60)
AWS_UNITS = (
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
)

# -- Spinifex (REFERENCE.md section 7) -------------------------------------------------------
SPINIFEX_RESERVED_NAMESPACES = ("AWS/", "Goanna/")
SPINIFEX_DIMENSION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# -- The wire ----------------------------------------------------------------------------------
JSON_TARGET = "GraniteServiceVersion20100801.PutMetricData"
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
QUERY_CONTENT_TYPE = "application/x-www-form-urlencoded"
API_VERSION = "2010-08-01"
XML_NS = "http://monitoring.amazonaws.com/doc/2010-08-01/"
# botocore's model: the JSON error shape names (`__type`) of CloudWatch's query error codes.
# Under awsQueryCompatible botocore takes the code from the `x-amzn-query-error` header.
_SHAPE_OF_CODE = {
    "InvalidParameterValue": "InvalidParameterValueException",
    "MissingParameter": "MissingRequiredParameterException",
    "InvalidParameterCombination": "InvalidParameterCombinationException",
    "InternalServiceError": "InternalServiceFault",
    # an authentication error: the service framework's shape, not CloudWatch's
    "ExpiredToken": "com.amazon.coral.service#ExpiredTokenException",
}
_DEFAULT_MESSAGES = {
    "Throttling": "Rate exceeded",  # AWS text (AWS knowledge-center article on PutMetricData)
    "InternalServiceError": "Internal Service Error",  # reconstructed
}
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=[^/,\s]+/\d{8}/[a-z0-9-]+/monitoring/aws4_request,\s*"
    r"SignedHeaders=[a-z0-9;-]+,\s*Signature=[0-9a-f]{64}$"
)
_MAX_WIRE_BYTES = 64 * 1024 * 1024  # a guard only: far above any limit above
# STS (awsQuery): the credentials of an AssumeRole reply
_ACCESS_KEY_ID = re.compile(rb"<AccessKeyId>\s*([^<\s]+)\s*</AccessKeyId>")
_EXPIRATION = re.compile(rb"<Expiration>\s*([^<\s]+)\s*</Expiration>")
# AWS text (STS's and CloudWatch's reply to a request signed with expired temporary credentials)
EXPIRED_TOKEN_MESSAGE = "The security token included in the request is expired"

Mode = Literal["aws", "spinifex"]
Protocol = Literal["json", "query"]


@dataclass(frozen=True)
class StatisticSet:
    sample_count: float
    sum: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class AcceptedDatum:
    """One datum the endpoint accepted, as plain data."""

    namespace: str
    name: str
    dimensions: dict[str, str]  # in the order sent
    value: float | None
    statistic_values: StatisticSet | None
    values: tuple[float, ...] | None
    counts: tuple[float, ...] | None  # None when Values came without Counts (all 1)
    unit: str | None  # None when the datum named no unit
    timestamp: float  # epoch seconds; the time of receipt when the datum had none
    storage_resolution: int  # 60 when the datum named none
    protocol: Protocol
    # the access key id the request was signed with (not compared: a datum is its content)
    access_key: str | None = field(default=None, compare=False)

    @property
    def series(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return self.namespace, self.name, tuple(sorted(self.dimensions.items()))


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    protocol: Protocol


@dataclass(frozen=True)
class RequestInfo:
    """What came over the wire, for every request (accepted or not)."""

    protocol: Protocol
    gzip: bool
    wire_bytes: int
    body_bytes: int  # after gunzip; -1 when not decoded
    status: int
    code: str | None  # None when accepted
    access_key: str | None = None  # the signature's credential (its access key id)
    received: float = 0.0  # when it came, by the endpoint's clock


@dataclass(frozen=True)
class IssuedKey:
    """Temporary credentials an AssumeRole passed through issued."""

    role_arn: str
    expiration: float | None  # epoch seconds (None: the reply named none)
    issued: float  # when, by the endpoint's clock


@dataclass(frozen=True)
class AssumeRoleCall:
    """One STS AssumeRole request that came through, refused here or passed on."""

    role_arn: str
    external_id: str | None  # as sent (None: not sent)
    caller: str | None  # the access key id the request was signed with
    received: float  # by the endpoint's clock
    status: int  # 200, or the refusal's (the upstream's) status
    code: str | None  # None when the upstream issued credentials
    access_key: str | None = None  # the AccessKeyId issued
    expiration: float | None = None  # its Expiration as relayed (rewritten or not)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameterValue", message)


def _java_double(x: float) -> str:
    """A double as Java's Double.toString writes it (AWS echoes numbers so: the value
    -1.79769e+308 sent came back as "-1.79769E308"); reconstructed, digits may differ from the
    JDK's in rare cases."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    if 1e-3 <= abs(x) < 1e7:
        return repr(x)  # Python writes these in plain notation with a ".0" as Java does
    sign, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)
    e10 = len(digits) - 1 + exponent
    mantissa = f"{digits[0]}." + ("".join(map(str, digits[1:])) or "0")
    return f"{'-' if sign else ''}{mantissa}E{e10}"


class _Problems:
    """Failures found in one request, in the order found. AWS answers with one code and joins
    the messages of that kind with newlines; the first kind found wins here."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, code: str, message: str) -> None:
        self.items.append((code, message))

    def invalid(self, message: str) -> None:
        self.add("InvalidParameterValue", message)

    def missing(self, param: str) -> None:
        # AWS text for dimension values ("The parameter MetricData.member.12.Dimensions.
        # member.1.Value is required.", also for an empty or blank value); same form elsewhere.
        self.add("MissingParameter", f"The parameter {param} is required.")

    def raise_if_any(self) -> None:
        if self.items:
            code = self.items[0][0]
            message = "\n".join(m for c, m in self.items if c == code)
            raise ApiError(400, code, message)


def _blank(s: str) -> bool:
    return not s.strip()


def _ascii_printable(s: str) -> bool:
    return all(32 <= ord(c) < 127 for c in s)


@dataclass
class _Series:
    last: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


class StrictEndpoint:
    """The endpoint, served by a background thread while the context is open."""

    def __init__(
        self,
        mode: Mode = "aws",
        *,
        clock: Callable[[], float] = time.time,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        upstream: str | None = None,
        port: int = 0,
        denied_roles: Iterable[str] | None = None,
        required_external_ids: dict[str, str] | None = None,
        credential_lifetime_s: float | None = None,
        reserved_namespace_roles: Iterable[str] | None = None,
    ) -> None:
        if mode not in ("aws", "spinifex"):
            raise ValueError(f"mode must be 'aws' or 'spinifex', not {mode!r}")
        self.mode: Mode = mode
        self.clock = clock
        self.max_request_bytes = max_request_bytes
        self.upstream = urlsplit(upstream) if upstream else None
        self._bind_port = port
        self.forwarded = 0  # requests passed on to the upstream (PutMetricData or not)
        # STS AssumeRole of these role ARNs is refused (403 AccessDenied): a role not there
        self.denied_roles: set[str] = set(denied_roles or ())
        # role ARN -> the ExternalId its trust policy demands (sts:ExternalId condition)
        self.required_external_ids: dict[str, str] = dict(required_external_ids or {})
        # AssumeRole replies' Expiration rewritten to now + this (None: left as the upstream's)
        self.credential_lifetime_s: float | None = credential_lifetime_s
        # keys issued for these roles may put `AWS/` namespaces (a private cloud's service role)
        self.reserved_namespace_roles: set[str] = set(reserved_namespace_roles or ())
        self.issued_keys: dict[str, IssuedKey] = {}  # AccessKeyId -> what issued it
        self.assume_role_calls: list[AssumeRoleCall] = []
        self.accepted: list[AcceptedDatum] = []
        self.refused: Counter[str] = Counter()
        self.refusals: list[Refusal] = []
        self.requests: list[RequestInfo] = []
        self._series = _Series()
        self._failures: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()
        self._order = threading.Lock()  # spinifex: one request's check-deliver-commit at a time
        self._changed = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket] = set()

    # -- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> StrictEndpoint:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._server is not None:
            return
        endpoint = self

        class Handler(_Handler):
            owner = endpoint

        server = ThreadingHTTPServer(("127.0.0.1", self._bind_port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"strict-endpoint-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # idle keep-alive connections: end their handler threads
            with contextlib.suppress(OSError):
                conn.shutdown(SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the endpoint is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- for tests -------------------------------------------------------------------------------
    def fail_next(
        self, n: int = 1, code: str = "Throttling", status: int = 400, message: str | None = None
    ) -> None:
        """Answer the next `n` requests with this error, before looking at them."""
        text = message if message is not None else _DEFAULT_MESSAGES.get(code, code)
        with self._lock:
            self._failures.extend([(status, code, text)] * n)

    def clear(self) -> None:
        """Forget everything: accepted datums, counters, series, pending failures, AssumeRole
        calls (the keys issued are kept: they are still good until they expire)."""
        with self._lock:
            self.accepted.clear()
            self.refused.clear()
            self.refusals.clear()
            self.requests.clear()
            self.assume_role_calls.clear()
            self._series = _Series()
            self._failures.clear()

    def role_of(self, access_key: str | None) -> str | None:
        """The role an AssumeRole passed through issued this key for, or None."""
        with self._lock:
            issued = self.issued_keys.get(access_key or "")
        return issued.role_arn if issued else None

    def _expired(self, access_key: str | None, now: float) -> bool:
        with self._lock:
            issued = self.issued_keys.get(access_key or "")
        return bool(issued and issued.expiration is not None and now >= issued.expiration)

    def _assumed(self, call: AssumeRoleCall) -> None:
        with self._changed:
            self.assume_role_calls.append(call)
            if call.access_key is not None:
                self.issued_keys[call.access_key] = IssuedKey(
                    call.role_arn, call.expiration, call.received
                )
            self._changed.notify_all()

    def wait_for(self, accepted: int, timeout: float = 10.0) -> bool:
        """Wait until at least `accepted` datums are kept."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.accepted) >= accepted, timeout)

    # -- the request -----------------------------------------------------------------------------
    def _next_failure(self) -> tuple[int, str, str] | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _record(
        self, info: RequestInfo, datums: list[AcceptedDatum], refusal: Refusal | None
    ) -> None:
        with self._changed:
            self.requests.append(info)
            if refusal is not None:
                self.refused[refusal.code] += 1
                self.refusals.append(refusal)
            self.accepted.extend(datums)
            self._changed.notify_all()

    def _put_metric_data(
        self,
        params: dict[str, Any],
        protocol: Protocol,
        deliver: Callable[[], None],
        access_key: str | None = None,
    ) -> list[AcceptedDatum]:
        """Check one request (signed with `access_key`); when it passes, `deliver` it (to the
        upstream; it raises ApiError when the upstream does not take it) and only then move
        the series on."""
        now = self.clock()
        problems = _Problems()
        reserved_ok = self.role_of(access_key) in self.reserved_namespace_roles
        namespace = self._namespace(params.get("Namespace"), problems, reserved_ok)
        datums: list[tuple[str, Any]] = []
        for i, d in enumerate(_list(params.get("MetricData"), "MetricData"), 1):
            datums.append((f"MetricData.member.{i}", d))
        for i, e in enumerate(_list(params.get("EntityMetricData"), "EntityMetricData"), 1):
            if not isinstance(e, dict):
                raise _invalid(f"The parameter EntityMetricData.member.{i} is invalid.")
            inner = _list(e.get("MetricData"), f"EntityMetricData.member.{i}.MetricData")
            for j, d in enumerate(inner, 1):
                datums.append((f"EntityMetricData.member.{i}.MetricData.member.{j}", d))
        if not datums:
            problems.missing("MetricData")  # reconstructed
        elif len(datums) > MAX_DATUMS_PER_REQUEST:
            # AWS text, with the limit of the time: "The collection MetricData must not have a
            # size greater than 20."
            problems.invalid(
                f"The collection MetricData must not have a size greater than "
                f"{MAX_DATUMS_PER_REQUEST}."
            )
            problems.raise_if_any()
        out: list[AcceptedDatum] = []
        for prefix, raw in datums:
            d = self._datum(prefix, raw, namespace, now, protocol, problems)
            if d is not None:
                out.append(replace(d, access_key=access_key))
        problems.raise_if_any()
        if self.mode != "spinifex":
            deliver()
            return out
        with self._order:  # check, deliver and move the series on as one step
            moved: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
            with self._lock:
                for (prefix, _), d in zip(datums, out, strict=True):
                    previous = moved.get(d.series, self._series.last.get(d.series))
                    if previous is not None and d.timestamp <= previous:
                        problems.invalid(  # ours: Spinifex refuses such samples
                            f"The parameter {prefix}.Timestamp must be later than the last "
                            f"sample of its series ({_iso(previous)}): duplicate or "
                            f"out-of-order samples are not accepted."
                        )
                    else:
                        moved[d.series] = d.timestamp
            problems.raise_if_any()
            deliver()
            with self._lock:
                self._series.last.update(moved)
        return out

    def _namespace(self, raw: Any, problems: _Problems, reserved_ok: bool = False) -> str:
        """The Namespace, checked; `reserved_ok`: signed by a role that may put `AWS/`
        namespaces (`reserved_namespace_roles`)."""
        if raw is None or (isinstance(raw, str) and _blank(raw)):
            problems.missing("Namespace")
            return ""
        if not isinstance(raw, str):
            raise _invalid("The parameter Namespace must be a string.")
        if len(raw) > MAX_NAME_CHARS:
            # reconstructed in the form of AWS's "... must be shorter than 257 characters"
            problems.invalid(
                f"The parameter Namespace must be shorter than {MAX_NAME_CHARS + 1} characters."
            )
        elif (
            (raw.startswith("AWS/") and not reserved_ok)
            or raw.startswith(":")
            or not _ascii_printable(raw)
        ):
            # AWS text for `AWS/`: "The value AWS/ for parameter Namespace is invalid."; the
            # model's pattern `[^:].*` and the docs' "ASCII, no control characters" the same way
            problems.invalid(f"The value {raw} for parameter Namespace is invalid.")
        elif self.mode == "spinifex" and raw.startswith(
            tuple(
                prefix
                for prefix in SPINIFEX_RESERVED_NAMESPACES
                if not (reserved_ok and prefix == "AWS/")
            )
        ):
            problems.invalid(  # ours
                f"The value {raw} for parameter Namespace is invalid: the namespace prefixes "
                f"{', '.join(SPINIFEX_RESERVED_NAMESPACES)} are reserved."
            )
        return raw

    def _datum(
        self,
        p: str,
        raw: Any,
        namespace: str,
        now: float,
        protocol: Protocol,
        problems: _Problems,
    ) -> AcceptedDatum | None:
        if not isinstance(raw, dict):
            raise _invalid(f"The parameter {p} is invalid.")
        before = len(problems.items)

        name = raw.get("MetricName")
        if name is None or (isinstance(name, str) and _blank(name)):
            problems.missing(f"{p}.MetricName")
        elif not isinstance(name, str):
            raise _invalid(f"The parameter {p}.MetricName must be a string.")
        elif len(name) > MAX_NAME_CHARS:
            problems.invalid(  # reconstructed, in the form of the dimension value's AWS text
                f"The parameter {p}.MetricName must be shorter than {MAX_NAME_CHARS + 1} "
                f"characters."
            )

        dimensions = self._dimensions(p, raw.get("Dimensions"), problems)

        has_value = raw.get("Value") is not None
        has_stats = raw.get("StatisticValues") is not None
        values_raw = _list(raw.get("Values"), f"{p}.Values")
        counts_raw = _list(raw.get("Counts"), f"{p}.Counts")
        has_values = bool(values_raw)
        if has_value and has_stats:
            problems.add(  # AWS text
                "InvalidParameterCombination",
                f"The parameters {p}.Value and {p}.StatisticValues are mutually exclusive and "
                f"you have specified both.",
            )
        if has_value and has_values:
            problems.add(  # AWS text
                "InvalidParameterCombination",
                f"The parameters {p}.Value and {p}.Values are mutually exclusive and you have "
                f"specified both.",
            )
        if not (has_value or has_stats or has_values):
            problems.add(  # reconstructed from AWS's 2-parameter text of 2014
                "InvalidParameterCombination",
                f"At least one of the parameters {p}.Value, {p}.StatisticValues and "
                f"{p}.Values must be specified.",
            )

        value = _number(raw.get("Value"), f"{p}.Value", problems) if has_value else None

        stats: StatisticSet | None = None
        if has_stats:
            stats = self._statistic_set(p, raw["StatisticValues"], problems)

        values: tuple[float, ...] | None = None
        counts: tuple[float, ...] | None = None
        for member, items in (("Values", values_raw), ("Counts", counts_raw)):
            if len(items) > MAX_VALUES_PER_DATUM:
                problems.invalid(  # AWS text
                    f"The collection {p}.{member} must not have a size greater than "
                    f"{MAX_VALUES_PER_DATUM}."
                )
        if counts_raw and len(counts_raw) != len(values_raw):
            problems.invalid(  # AWS text
                f"The parameters {p}.Values and {p}.Counts must be of the same size."
            )
        if values_raw:
            values = tuple(
                _number(v, f"{p}.Values.member.{k}", problems) for k, v in enumerate(values_raw, 1)
            )
        if counts_raw:
            counts = tuple(
                _number(v, f"{p}.Counts.member.{k}", problems) for k, v in enumerate(counts_raw, 1)
            )

        timestamp = now
        if raw.get("Timestamp") is not None:
            ts = _timestamp(raw["Timestamp"])
            if ts is None:
                problems.invalid(  # reconstructed
                    f"The value {raw['Timestamp']} for parameter {p}.Timestamp is invalid."
                )
            elif ts < now - MAX_PAST_S:
                problems.invalid(  # AWS text
                    f"The parameter {p}.Timestamp must specify a time within the past two weeks."
                )
            elif ts > now + MAX_FUTURE_S:
                problems.invalid(  # reconstructed
                    f"The parameter {p}.Timestamp must specify a time no more than two hours "
                    f"in the future."
                )
            else:
                timestamp = ts

        resolution = 60
        if raw.get("StorageResolution") is not None:
            r = raw["StorageResolution"]
            try:
                as_float = float(r) if not isinstance(r, bool) else math.nan
            except (TypeError, ValueError):
                as_float = math.nan
            if as_float not in STORAGE_RESOLUTIONS:
                problems.invalid(  # AWS text
                    f"The parameter {p}.StorageResolution must be a value in the set "
                    f"[ {', '.join(map(str, STORAGE_RESOLUTIONS))} ]."
                )
            else:
                resolution = int(as_float)

        unit = raw.get("Unit")
        if unit is not None and unit not in AWS_UNITS:
            problems.invalid(  # AWS text
                f"The parameter {p}.Unit must be a value in the set [ {', '.join(AWS_UNITS)} ]."
            )

        if self.mode == "spinifex":
            if has_stats:
                problems.invalid(  # ours
                    f"The parameter {p}.StatisticValues is not supported: send one Value per datum."
                )
            if values_raw or counts_raw:
                problems.invalid(  # ours
                    f"The parameters {p}.Values and {p}.Counts are not supported: send one "
                    f"Value per datum."
                )

        if len(problems.items) > before:
            return None
        assert isinstance(name, str)
        return AcceptedDatum(
            namespace=namespace,
            name=name,
            dimensions=dimensions,
            value=value,
            statistic_values=stats,
            values=values,
            counts=counts,
            unit=unit,
            timestamp=timestamp,
            storage_resolution=resolution,
            protocol=protocol,
        )

    def _dimensions(self, p: str, raw: Any, problems: _Problems) -> dict[str, str]:
        items = _list(raw, f"{p}.Dimensions")
        out: dict[str, str] = {}
        if len(items) > MAX_DIMENSIONS:
            problems.invalid(  # reconstructed in the form of AWS's Values text
                f"The collection {p}.Dimensions must not have a size greater than {MAX_DIMENSIONS}."
            )
        duplicate = False
        for j, dim in enumerate(items, 1):
            q = f"{p}.Dimensions.member.{j}"
            if not isinstance(dim, dict):
                raise _invalid(f"The parameter {q} is invalid.")
            name, value = dim.get("Name"), dim.get("Value")
            ok = True
            for member, s, limit in (
                ("Name", name, MAX_NAME_CHARS),
                ("Value", value, MAX_DIMENSION_VALUE_CHARS),
            ):
                if s is None or (isinstance(s, str) and _blank(s)):
                    problems.missing(f"{q}.{member}")  # AWS text (for Value)
                    ok = False
                elif not isinstance(s, str):
                    raise _invalid(f"The parameter {q}.{member} must be a string.")
                elif len(s) > limit:
                    # AWS text, with the limit of the time: "The parameter MetricData.member.20.
                    # Dimensions.member.4.Value must be shorter than 257 characters"
                    problems.invalid(
                        f"The parameter {q}.{member} must be shorter than {limit + 1} characters."
                    )
                    ok = False
                elif not _ascii_printable(s) or (member == "Name" and s.startswith(":")):
                    # reconstructed: the API reference's "ASCII only, no control characters;
                    # a name cannot start with a colon"
                    problems.invalid(f"The value {s} for parameter {q}.{member} is invalid.")
                    ok = False
            if not ok:
                continue
            assert isinstance(name, str) and isinstance(value, str)
            if self.mode == "spinifex" and not SPINIFEX_DIMENSION_NAME.match(name):
                problems.invalid(  # ours
                    f"The value {name} for parameter {q}.Name is invalid: a dimension name must "
                    f"match {SPINIFEX_DIMENSION_NAME.pattern}."
                )
            if name in out:
                duplicate = True
            out[name] = value
        if duplicate:
            problems.invalid("No metric may specify the same dimension name twice.")  # AWS text
        return out

    def _statistic_set(self, p: str, raw: Any, problems: _Problems) -> StatisticSet | None:
        if not isinstance(raw, dict):
            raise _invalid(f"The parameter {p}.StatisticValues is invalid.")
        got: dict[str, float] = {}
        for member in ("SampleCount", "Sum", "Minimum", "Maximum"):
            q = f"{p}.StatisticValues.{member}"
            if raw.get(member) is None or raw.get(member) == "":
                problems.missing(q)  # the form of AWS's MissingParameter text
            else:
                got[member] = _number(raw[member], q, problems)
        if len(got) < 4 or not all(_in_range(v) for v in got.values()):
            return None
        if got["SampleCount"] <= 0:
            # AWS refuses a zero SampleCount (InvalidParameterValue, public reports); the
            # message is reconstructed
            problems.invalid(
                f"The value {_java_double(got['SampleCount'])} for parameter "
                f"{p}.StatisticValues.SampleCount is invalid: it must be greater than 0."
            )
        if got["Minimum"] > got["Maximum"]:
            problems.invalid(  # reconstructed
                f"The parameter {p}.StatisticValues.Minimum must not be greater than "
                f"{p}.StatisticValues.Maximum."
            )
        return StatisticSet(got["SampleCount"], got["Sum"], got["Minimum"], got["Maximum"])


def _list(raw: Any, param: str) -> list[Any]:
    if raw is None or raw == "":  # awsQuery writes an empty list as `Param=`
        return []
    if not isinstance(raw, list):
        raise _invalid(f"The parameter {param} must be a list.")
    return raw


def _in_range(v: float) -> bool:
    return math.isfinite(v) and -VALUE_LIMIT <= v <= VALUE_LIMIT


def _number(raw: Any, param: str, problems: _Problems) -> float:
    """A DatapointValue: a JSON number, botocore's "NaN"/"Infinity" strings, or a query
    string. Out of range or not finite -> AWS text "The value -1.79769E308 for parameter
    MetricData.member.13.StatisticValues.Maximum is invalid."."""
    try:
        if isinstance(raw, bool):
            raise ValueError(raw)
        v = float(raw)
    except (TypeError, ValueError):
        problems.invalid(f"The value {raw} for parameter {param} is invalid.")
        return math.nan
    if not _in_range(v):
        problems.invalid(f"The value {_java_double(v)} for parameter {param} is invalid.")
    return v


def _timestamp(raw: Any) -> float | None:
    """JSON sends epoch seconds (a number), awsQuery ISO 8601."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw) if math.isfinite(raw) else None
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            try:
                v = float(raw)
            except ValueError:
                return None
            return v if math.isfinite(v) else None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _unflatten(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """awsQuery's `A.member.1.B=x` pairs as nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.split(".")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _invalid(f"The parameter {key} is invalid.")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise _invalid(f"The parameter {key} is invalid.")
        node[parts[-1]] = value
    out = _listify(root)
    assert isinstance(out, dict)
    return out


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    members = node.get("member")
    if set(node) == {"member"} and isinstance(members, dict) and all(k.isdigit() for k in members):
        return [_listify(members[k]) for k in sorted(members, key=int)]
    return {k: _listify(v) for k, v in node.items()}


def _access_key(authorization: str | None) -> str | None:
    m = re.search(r"Credential=([^/,\s]+)/", authorization or "")
    return m.group(1) if m else None


class _Handler(BaseHTTPRequestHandler):
    owner: StrictEndpoint
    protocol_version = "HTTP/1.1"
    server_version = "StrictCloudWatch/1.0"
    timeout = 30  # an idle keep-alive connection

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        target = self.headers.get("X-Amz-Target")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        protocol: Protocol = "json" if target is not None else "query"
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        wire = b""
        body_bytes = -1
        datums: list[AcceptedDatum] = []
        error: ApiError | None = None
        relayed: tuple[int, list[tuple[str, str]], bytes] | None = None
        access_key = _access_key(self.headers.get("Authorization"))
        received = self.owner.clock()
        try:
            wire = self._read_body()
            if self.owner.upstream is not None and not self._is_put_metric_data(
                protocol, target, wire, encoding
            ):
                assume = self._assume_role_fields(wire)
                if assume is not None:
                    self._assume_role(assume, wire, received)
                else:
                    self._relay(self._forward(wire))
                return
            failure = self.owner._next_failure()
            if failure is not None:
                raise ApiError(*failure)
            self._check_authorization()
            if self.owner._expired(access_key, received):
                raise ApiError(403, "ExpiredToken", EXPIRED_TOKEN_MESSAGE)
            self._check_protocol(protocol, content_type, target)
            body = self._decode(wire, encoding)
            body_bytes = len(body)
            if body_bytes > self.owner.max_request_bytes:
                # AWS: HTTP 413 RequestEntityTooLarge, "Request size 45305 exceeded 40960
                # bytes" (public reports of AWS replies, with the limit of the time)
                raise ApiError(
                    413,
                    "RequestEntityTooLarge",
                    f"Request size {body_bytes} exceeded {self.owner.max_request_bytes} bytes",
                )

            def deliver() -> None:
                nonlocal relayed
                if self.owner.upstream is None:
                    return
                relayed = self._forward(wire)
                if relayed[0] != 200:
                    raise ApiError(  # the upstream's answer is relayed as it is
                        relayed[0], "Upstream", relayed[2][:500].decode("utf-8", "replace")
                    )

            datums = self.owner._put_metric_data(
                self._parse(body, protocol), protocol, deliver, access_key
            )
        except ApiError as e:
            error = e
        except Exception as e:  # a bug here must still answer: as a 500
            error = ApiError(500, "InternalServiceError", f"{type(e).__name__}: {e}")
        self.owner._record(  # before answering: a client that got its answer can read it
            RequestInfo(
                protocol=protocol,
                gzip=encoding == "gzip",
                wire_bytes=len(wire),
                body_bytes=body_bytes,
                status=200 if error is None else error.status,
                code=None if error is None else error.code,
                access_key=access_key,
                received=received,
            ),
            datums if error is None else [],
            None if error is None else Refusal(error.status, error.code, error.message, protocol),
        )
        if relayed is not None:
            self._relay(relayed)
        elif error is None:
            self._success(protocol)
        else:
            self._error(protocol, error)

    # -- in front of an upstream ---------------------------------------------------------------
    def _assume_role_fields(self, wire: bytes) -> dict[str, str] | None:
        """The form of an STS AssumeRole request (awsQuery, as botocore sends it), or None."""
        if b"Action=AssumeRole" not in wire:
            return None
        fields = dict(parse_qsl(wire.decode("utf-8", "replace"), keep_blank_values=True))
        return fields if fields.get("Action") == "AssumeRole" else None

    def _assume_role(self, fields: dict[str, str], wire: bytes, received: float) -> None:
        """Refuse the AssumeRole (`denied_roles`, `required_external_ids`: 403 AccessDenied,
        raised as ApiError) or pass it on; remember the key the reply issues and its expiry,
        rewritten to now + `credential_lifetime_s` when that is set."""
        owner = self.owner
        role = fields.get("RoleArn", "")
        external_id = fields.get("ExternalId")
        caller = _access_key(self.headers.get("Authorization"))
        required = owner.required_external_ids.get(role)
        if role in owner.denied_roles or (required is not None and external_id != required):
            owner._assumed(AssumeRoleCall(role, external_id, caller, received, 403, "AccessDenied"))
            raise ApiError(  # STS's code and text
                403,
                "AccessDenied",
                f"User: {self._caller_arn()} is not authorized to perform: sts:AssumeRole on "
                f"resource: {role}",
            )
        status, headers, body = self._forward(wire)
        key: str | None = None
        expiration: float | None = None
        if status == 200:
            m = _ACCESS_KEY_ID.search(body)
            key = m.group(1).decode() if m else None
            lifetime = owner.credential_lifetime_s
            if lifetime is not None:
                # STS writes whole seconds ("2019-11-09T13:34:41Z"): the expiry remembered is
                # the one written, so a key is good for (lifetime - 1, lifetime] seconds
                expiration = float(math.floor(received + lifetime))
                stamp = datetime.fromtimestamp(expiration, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = _EXPIRATION.sub(f"<Expiration>{stamp}</Expiration>".encode(), body, count=1)
            else:
                e = _EXPIRATION.search(body)
                expiration = _timestamp(e.group(1).decode()) if e else None
        owner._assumed(
            AssumeRoleCall(
                role,
                external_id,
                caller,
                received,
                status,
                None if status == 200 else "Upstream",
                key,
                expiration,
            )
        )
        self._relay((status, headers, body))

    def _caller_arn(self) -> str:
        """The ARN of the identity this request is signed by, as the upstream's STS
        GetCallerIdentity names it for the same signature (moto reads the access key id off
        the Authorization header; it checks no signature), or "unknown". Never the access key
        id: it goes into error messages, which clients log."""
        up = self.owner.upstream
        assert up is not None
        body = b"Action=GetCallerIdentity&Version=2011-06-15"
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("connection", "content-length", "x-amz-content-sha256")
        }
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=10)
        try:
            conn.request("POST", "/", body=body, headers=headers)
            reply = conn.getresponse()
            m = re.search(rb"<Arn>\s*([^<\s]+)\s*</Arn>", reply.read())
            return m.group(1).decode() if reply.status == 200 and m else "unknown"
        except OSError:
            return "unknown"
        finally:
            conn.close()

    def _is_put_metric_data(
        self, protocol: Protocol, target: str | None, wire: bytes, encoding: str
    ) -> bool:
        if self.path.split("?")[0] not in ("/", ""):
            return False  # moto's own API (/moto-api/...) and anything else off the root
        if protocol == "json":
            return target == JSON_TARGET
        try:
            body = self._decode(wire, encoding)
        except ApiError:
            return True  # let the PutMetricData checks answer it
        return b"Action=PutMetricData" in body

    def _forward(self, wire: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Pass the request on as it came; the upstream's status, headers and body. An upstream
        that cannot be reached is an outage: 503 ServiceUnavailable."""
        up = self.owner.upstream
        assert up is not None
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=wire, headers=headers)
            reply = conn.getresponse()
            body = reply.read()
            keep = [
                (k, v)
                for k, v in reply.getheaders()
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "date")
                and not k.lower().startswith("server")
            ]
            self.owner.forwarded += 1
            return reply.status, keep, body
        except OSError as e:
            raise ApiError(  # AWS's common error code; message ours
                503, "ServiceUnavailable", f"The upstream cannot be reached: {e}"
            ) from e
        finally:
            conn.close()

    def _relay(self, reply: tuple[int, list[tuple[str, str]], bytes]) -> None:
        status, headers, body = reply
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _check_protocol(self, protocol: Protocol, content_type: str, target: str | None) -> None:
        if protocol == "json":
            if content_type != JSON_CONTENT_TYPE:
                raise ApiError(  # ours
                    400,
                    "SerializationException",
                    f"Content-Type {content_type!r} is not {JSON_CONTENT_TYPE}.",
                )
            if target != JSON_TARGET:
                raise ApiError(  # ours: only PutMetricData is served here
                    400, "UnknownOperationException", f"Operation {target} is not served here."
                )
        elif content_type != QUERY_CONTENT_TYPE:
            raise ApiError(  # ours
                400,
                "UnknownOperationException",
                "The request is neither AWS JSON 1.0 (X-Amz-Target) nor awsQuery (form-encoded).",
            )

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise ApiError(411, "MissingContentLength", "Content-Length is required.")  # ours
        n = int(length)
        if n > _MAX_WIRE_BYTES:
            self.close_connection = True
            raise ApiError(
                413,
                "RequestEntityTooLarge",
                f"Request size {n} exceeded {self.owner.max_request_bytes} bytes",
            )
        return self.rfile.read(n)

    def _check_authorization(self) -> None:
        auth = self.headers.get("Authorization")
        if not auth:
            # AWS's common error for an unsigned request; message reconstructed
            raise ApiError(
                403, "MissingAuthenticationToken", "Request is missing Authentication Token"
            )
        if not _AUTHORIZATION.match(auth.strip()) or not self.headers.get("X-Amz-Date"):
            raise ApiError(  # AWS's common error code; message reconstructed
                400,
                "IncompleteSignature",
                "The request signature does not conform to AWS standards "
                "(AWS4-HMAC-SHA256 with a monitoring credential scope and X-Amz-Date).",
            )

    def _decode(self, wire: bytes, encoding: str) -> bytes:
        if encoding in ("identity", ""):
            return wire
        if encoding != "gzip":
            raise _invalid(f"Content-Encoding {encoding} is not supported.")  # ours
        try:
            d = zlib.decompressobj(wbits=31)
            body = d.decompress(wire, _MAX_WIRE_BYTES)
            if not d.eof:
                raise ValueError("truncated or too large")
            return body
        except (zlib.error, ValueError) as e:
            raise _invalid(f"The gzip request body cannot be decompressed: {e}") from e  # ours

    def _parse(self, body: bytes, protocol: Protocol) -> dict[str, Any]:
        if protocol == "json":
            try:
                params = json.loads(body or b"{}")
            except ValueError as e:
                raise ApiError(400, "SerializationException", f"Malformed JSON: {e}") from e
            if not isinstance(params, dict):
                raise ApiError(400, "SerializationException", "The body is not a JSON object.")
            return params
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as e:
            raise _invalid("The form body is not UTF-8.") from e  # ours
        params = _unflatten(pairs)
        action = params.pop("Action", None)
        version = params.pop("Version", None)
        if not action:
            raise ApiError(  # AWS's common error; message reconstructed
                400, "MissingAction", "The request is missing an action or a required parameter."
            )
        if action != "PutMetricData":
            raise ApiError(  # AWS's common error; message reconstructed
                400, "InvalidAction", f"The action {action} is not valid for this web service."
            )
        if version != API_VERSION:
            raise ApiError(  # AWS's common error; message reconstructed
                400,
                "NoSuchVersion",
                f"The requested version ({version}) of service AmazonCloudWatch does not exist.",
            )
        return params

    def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _success(self, protocol: Protocol) -> None:
        request_id = str(uuid.uuid4())
        if protocol == "json":
            self._send(200, JSON_CONTENT_TYPE, b"{}", {"x-amzn-RequestId": request_id})
            return
        body = (
            f'<PutMetricDataResponse xmlns="{XML_NS}">'
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            f"</PutMetricDataResponse>"
        ).encode()
        self._send(200, "text/xml", body, {"x-amzn-RequestId": request_id})

    def _error(self, protocol: Protocol, e: ApiError) -> None:
        request_id = str(uuid.uuid4())
        fault = "Sender" if e.status < 500 else "Receiver"
        if protocol == "json":
            # AWS JSON 1.0 under awsQueryCompatible: the shape in `__type` (the smithy shape id
            # form `namespace#Name` is reconstructed; botocore keeps what follows the `#`) and
            # the query code in `x-amzn-query-error`, which botocore reports as Error.Code.
            shape = _SHAPE_OF_CODE.get(e.code, e.code)
            key = "Message" if shape == "InternalServiceFault" else "message"
            shape_id = shape if "#" in shape else f"com.amazonaws.cloudwatch#{shape}"
            body = json.dumps({"__type": shape_id, key: e.message})
            self._send(
                e.status,
                JSON_CONTENT_TYPE,
                body.encode(),
                {"x-amzn-RequestId": request_id, "x-amzn-query-error": f"{e.code};{fault}"},
            )
            return
        xml = (
            f'<ErrorResponse xmlns="{XML_NS}"><Error><Type>{fault}</Type>'
            f"<Code>{escape(e.code)}</Code><Message>{escape(e.message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        self._send(e.status, "text/xml", xml.encode(), {"x-amzn-RequestId": request_id})

    def do_GET(self) -> None:
        self._pass_on_or_refuse()

    def do_PUT(self) -> None:
        self._pass_on_or_refuse()

    def _pass_on_or_refuse(self) -> None:
        if self.owner.upstream is None:
            self._method_not_allowed()
            return
        try:
            self._relay(
                self._forward(self._read_body() if self.headers.get("Content-Length") else b"")
            )
        except ApiError as e:
            self._error("query", e)

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._error("query", ApiError(405, "MethodNotAllowed", "Only POST is served."))  # ours
