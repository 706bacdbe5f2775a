"""The CloudWatch wire: PutMetricData's limits and the datums the endpoint refuses (`refusal`,
by the `Rules` of the endpoint and datum shape sent to), what one datum costs in a request
(`checked` works out both in one walk), the datum's botocore shape and the client (SigV4, the
wire protocol and gzip request compression are botocore's; botocore's own retries are off,
the Publisher owns retrying)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import Path
from typing import Any

from hiveagent.encoding import BodyEncoder, datum_from_fragment, deflate, value_arrays
from hiveagent.model import Datum

MAX_DATUMS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
REQUEST_OVERHEAD_BYTES = 2_000
MAX_AGE_S = 14 * 86400 - 600  # the endpoint's limit, with a margin for clock skew


MAX_DIMENSIONS = 30
MAX_NAME_CHARS = 255  # namespace, metric and dimension names
MAX_DIMENSION_VALUE_CHARS = 1024
MAX_VALUES_PER_DATUM = 150  # entries in Values (and Counts)
MAX_ABS_VALUE = 2.0**360
MAX_FUTURE_S = 2 * 3600 - 300  # the endpoint's limit, with a margin for clock skew
UNITS = frozenset(  # the 27 of PutMetricData's StandardUnit
    {
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
    }
)
DATUM_SHAPES = ("auto", "statistic_sets", "value_arrays", "single_values")
RESERVED_NAMESPACES = ("AWS/",)  # refused by AWS (and Spinifex) for PutMetricData
SPINIFEX_RESERVED_NAMESPACES = ("AWS/", "Goanna/")


@dataclass(frozen=True)
class Rules:
    """What decides whether the endpoint takes a datum, beyond AWS's own limits: the shape
    basic-monitoring datums are sent in (`metrics.datum_shape`; "auto" may send either a
    statistic set or, after a fallback, the single value) and whether the endpoint is
    Spinifex's CloudWatch service (REFERENCE.md section 7: dimension names
    `^[a-zA-Z_][a-zA-Z0-9_]*$`, no `AWS/` or `Goanna/` namespaces).

    It also remembers the verdicts on what it has seen (a cycle's datums share a few
    namespaces, metric names, dimension names and values, and each VM's dimension sets recur
    every cycle): namespace -> refusal or None, the good dimension names and short values ->
    their wire bytes, and the good metric names and short dimension sets -> their wire bytes
    and their JSON (what `Spool.add` makes a datum's JSON fragment of). Bounded; thread-safe
    as dicts are."""

    shape: str = "auto"
    spinifex: bool = False
    # reserved namespaces this endpoint is said to take from these credentials
    # (hypervisor.accounts.aws_namespaces: AWS/EC2 and AWS/EBS for a tenant's role)
    open_namespaces: frozenset[str] = frozenset()
    namespaces: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)
    names: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    values: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    metric_names: dict[str, tuple[int, str]] = field(
        default_factory=dict, compare=False, repr=False
    )
    dimension_sets: dict[Any, tuple[int, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.shape not in DATUM_SHAPES:
            raise ValueError(f"datum shape {self.shape!r} is not one of {DATUM_SHAPES}")


AWS_RULES = Rules()
_REMEMBERED = 8192  # verdicts kept per kind (then forgotten all at once)
_REMEMBERED_VALUE_CHARS = 256  # longer dimension values are checked every time
_REMEMBERED_SETS = 1 << 15  # dimension sets (a few per VM)
# How a PutMetricData JSON body writes a unit (json.dumps's own string encoder)
UNITS_JSON = {unit: _json_str(unit) for unit in UNITS}
_REMEMBERED_SET_BYTES = 4096  # wire bytes of a dimension set remembered, at most


def _text_bytes(text: str) -> int:
    """An upper bound of a printable string's bytes in either wire protocol: three per UTF-8
    byte. awsQuery percent-encodes each byte (%XX); AWS JSON 1.0 escapes a non-ASCII character
    as \\uXXXX (6 bytes for 2 or 3 UTF-8 bytes, 12 for a 4-byte one as a surrogate pair) and
    an ASCII one in at most 2."""
    return 3 * (len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass")))


def datum_wire_size(d: Datum) -> int:
    """An upper bound of the bytes one datum takes in a query- or JSON-encoded request. The
    fixed parts are awsQuery's, the larger: each field is keyed in full
    (`MetricData.member.1000.Dimensions.member.30.Value=...&`, about 50 bytes), the
    timestamp and numbers percent-encoded; a statistic set is four such fields, value arrays
    two per distinct value. `checked` works out the same figure for a datum it lets through."""
    size = 320 + _text_bytes(d.name)
    if d.samples:
        size += 250 + 130 * len(d.samples)
    for name, value in d.dimensions:
        size += 120 + _text_bytes(name) + _text_bytes(value)
    return size


def checked(d: Datum, now: float, rules: Rules = AWS_RULES) -> tuple[str | None, int]:
    """Why the endpoint would refuse this datum at wall-clock `now` (see `refusal`), or None,
    with its `datum_wire_size` (0 when refused): one walk of the datum for both, as
    `Spool.add` needs them for every datum of a cycle. A namespace, metric name or dimension
    set seen before costs a dictionary lookup (`Rules`)."""
    namespace, name, dims, value, unit, timestamp, resolution, samples = d
    why = rules.namespaces.get(namespace, _UNSEEN)
    if why is _UNSEEN:
        why = namespace_refusal(namespace, rules)
    if why is not None:
        return why, 0
    name_hit = rules.metric_names.get(name)
    if name_hit is None:
        why, size = _metric_name_checked(name)
        if why is not None:
            return why, 0
        _remember(rules.metric_names, name, (size, _json_str(name)))
    else:
        size = name_hit[0]
    dims_hit = rules.dimension_sets.get(dims)
    if dims_hit is None:
        why, dims_size = _dimensions_checked(dims, rules)
        if why is not None:
            return why, 0
        if dims_size <= _REMEMBERED_SET_BYTES:
            if len(rules.dimension_sets) >= _REMEMBERED_SETS:
                rules.dimension_sets.clear()
            rules.dimension_sets[dims] = (dims_size, dimensions_json(dims))
    else:
        dims_size = dims_hit[0]
    size += dims_size
    if samples:
        why = _samples_refusal(samples, rules.shape)
        if why is not None:
            return why, 0
        size += 250 + 130 * len(samples)
        value_sent = rules.shape in ("auto", "single_values")
    else:
        value_sent = True
    if value_sent and not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # NaN compares false
        return "bad_value", 0
    if not timestamp <= now + MAX_FUTURE_S:  # NaN compares false too
        return ("future_timestamp" if timestamp > now else "bad_timestamp"), 0
    if resolution not in (1, 60):
        return "bad_storage_resolution", 0
    if unit not in UNITS:
        return "bad_unit", 0
    return None, size


def dimensions_json(dims: Any) -> str:
    """A datum's Dimensions as a PutMetricData JSON body writes them."""
    pairs = ", ".join(f'{{"Name": {_json_str(k)}, "Value": {_json_str(v)}}}' for k, v in dims)
    return f"[{pairs}]"


def _metric_name_checked(name: str) -> tuple[str | None, int]:
    """A metric name's refusal, or None and its part of `datum_wire_size` (with the datum's
    fixed 320 bytes)."""
    if not 0 < len(name) <= MAX_NAME_CHARS or name.isspace():
        return ("bad_metric_name" if name and not name.isspace() else "blank_metric_name"), 0
    if name.isascii():
        return None, 320 + 3 * len(name)
    if _utf8(name):
        return None, 320 + _text_bytes(name)
    return "bad_metric_name", 0


def _dimensions_checked(dims: Any, rules: Rules) -> tuple[str | None, int]:
    """A dimension set's refusal, or None and its part of `datum_wire_size`."""
    if len(dims) > MAX_DIMENSIONS:
        return "too_many_dimensions", 0
    names, values = rules.names, rules.values
    last, ordered, size = "", True, 0
    for k, v in dims:
        kb = names.get(k)
        vb = values.get(v)
        if kb is None or vb is None:
            why = _dimension_refusal(k, v, rules)
            if why is not None:
                return why, 0
            kb, vb = 120 + 3 * len(k), 3 * len(v)  # both printable ASCII
        if k <= last:
            ordered = False
        last = k
        size += kb + vb
    if not ordered and len(dict(dims)) < len(dims):  # names come sorted (`Datum`) and unique
        return "duplicate_dimension", 0
    return None, size


def refusal(d: Datum, now: float, rules: Rules = AWS_RULES) -> str | None:
    """Why the endpoint would refuse this datum at wall-clock `now` (REFERENCE.md sections 4
    and 7; AWS's API reference of PutMetricData, MetricDatum, Dimension and StatisticSet), as
    a drop reason (the spool counts it as `invalid.<reason>`), or None:

    - bad_namespace (blank, over 255 characters, starting with `:`, not printable ASCII),
      reserved_namespace (`AWS/`; Spinifex: also `Goanna/`)
    - blank_metric_name (empty or whitespace only), bad_metric_name (over 255 characters, or
      not encodable as UTF-8: a lone surrogate)
    - too_many_dimensions (over 30), duplicate_dimension (one name twice)
    - dimension names: blank_dimension_name, bad_dimension_name (over 255 characters),
      non_ascii_dimension_name (not printable ASCII: non-ASCII or control characters),
      colon_dimension_name (starting with `:`), spinifex_dimension_name (Spinifex: not
      `^[a-zA-Z_][a-zA-Z0-9_]*$`)
    - dimension values: blank_dimension_value, bad_dimension_value (over 1024 characters),
      non_ascii_dimension_value
    - bad_value: a number sent that is NaN, infinite or outside +-2^360 (the value, unless
      only samples are sent; the samples, unless single values are sent); bad_statistic_sum
      (statistic set: the samples' Sum outside +-2^360); too_many_values (value arrays: over
      150 distinct samples)
    - future_timestamp (over 2 hours ahead, less a margin), bad_timestamp (NaN); datums over
      14 days old are dropped where they are sent instead (`MAX_AGE_S`,
      `Spool.next_request`: `too_old`), as spooled datums age
    - bad_storage_resolution (not 1 or 60), bad_unit (not one of the 27 units)
    """
    return checked(d, now, rules)[0]


def namespace_refusal(namespace: str, rules: Rules = AWS_RULES) -> str | None:
    """Why the endpoint refuses every datum of this namespace, or None; remembered in `rules`
    (namespaces come from the config: there are a few)."""
    why: str | None = None
    if (
        not 0 < len(namespace) <= MAX_NAME_CHARS
        or namespace.isspace()
        or not _printable_ascii(namespace)
        or namespace.startswith(":")
    ):
        why = "bad_namespace"  # the model's pattern `[^:].*`; printable ASCII (API reference)
    elif namespace not in rules.open_namespaces and namespace.startswith(
        SPINIFEX_RESERVED_NAMESPACES if rules.spinifex else RESERVED_NAMESPACES
    ):
        why = "reserved_namespace"
    _remember(rules.namespaces, namespace, why)
    return why


_UNSEEN = "?"  # a namespace not in Rules.namespaces yet


def _remember(verdicts: dict[str, Any], key: str, verdict: Any) -> None:
    if len(verdicts) >= _REMEMBERED:
        verdicts.clear()
    verdicts[key] = verdict


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()  # ASCII 32..126


def _utf8(text: str) -> bool:
    """Whether the text can go on the wire (and into the spool) as UTF-8: no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dimension_refusal(name: str, value: str, rules: Rules) -> str | None:
    """A dimension not known good in `rules`: checked, and remembered when good."""
    if name not in rules.names:
        if not name or name.isspace():
            return "blank_dimension_name"
        if len(name) > MAX_NAME_CHARS:
            return "bad_dimension_name"
        if not _printable_ascii(name):
            return "non_ascii_dimension_name"
        if name.startswith(":"):
            return "colon_dimension_name"
        if rules.spinifex and not name.isidentifier():  # ASCII: ^[a-zA-Z_][a-zA-Z0-9_]*$
            return "spinifex_dimension_name"
        _remember(rules.names, name, 120 + 3 * len(name))
    if value not in rules.values:
        if not value or value.isspace():
            return "blank_dimension_value"
        if len(value) > MAX_DIMENSION_VALUE_CHARS:
            return "bad_dimension_value"
        if not _printable_ascii(value):
            return "non_ascii_dimension_value"
        if len(value) <= _REMEMBERED_VALUE_CHARS:
            _remember(rules.values, value, 3 * len(value))
    return None


def _samples_refusal(samples: tuple[float, ...], shape: str) -> str | None:
    """The samples as the shape sends them: a statistic set (auto, statistic_sets), value
    arrays, or not at all (single_values)."""
    if shape == "single_values":
        return None
    for v in samples:
        if not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:
            return "bad_value"
    if shape == "value_arrays":
        if len(samples) > MAX_VALUES_PER_DATUM and len(set(samples)) > MAX_VALUES_PER_DATUM:
            return "too_many_values"
    elif not -MAX_ABS_VALUE <= math.fsum(samples) <= MAX_ABS_VALUE:
        return "bad_statistic_sum"
    return None


def datum_label(d: Datum) -> str:
    """A datum as a log line names it."""
    dims = ",".join(f"{k}={v}" for k, v in d.dimensions)
    return f"{d.namespace}/{d.name}{{{dims}}}@{d.timestamp:.3f}={d.value!r}"


def to_metric_datum(d: Datum, shape: str = "statistic_sets") -> dict[str, Any]:
    """botocore's MetricDatum shape. A datum carrying samples (basic monitoring) goes as a
    statistic set, as Values/Counts, or as its single value, per `metrics.datum_shape`: some
    CloudWatch-compatible endpoints accept only `Value`. The series' members come first, then
    the timestamp and the value (the order hiveagent.encoding writes them in)."""
    out: dict[str, Any] = {
        "MetricName": d.name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in d.dimensions],
        "Unit": d.unit,
        "StorageResolution": d.storage_resolution,
        "Timestamp": datetime.fromtimestamp(d.timestamp, UTC),
    }
    if d.samples and shape == "statistic_sets":
        out["StatisticValues"] = {
            "SampleCount": float(len(d.samples)),
            "Sum": math.fsum(d.samples),
            "Minimum": min(d.samples),
            "Maximum": max(d.samples),
        }
    elif d.samples and shape == "value_arrays":
        out["Values"], out["Counts"] = value_arrays(d.samples)
    else:
        out["Value"] = d.value
    return out


# -- sending a body made by hiveagent.encoding through botocore ---------------------------------

GZIP_LEVEL = 1  # request bodies (botocore uses 9: 5.6 against 0.15 us a datum, 30% smaller)
_PENDING = threading.local()  # the body of the put_metric_data call this thread is making
_HOOK_ID = "hiveagent.wire.body"


def _put_body(request: Any, **_: Any) -> None:
    """botocore's `request-created` event for PutMetricData, before the request is signed
    (the signer's handler is registered for the service, less specific, so it runs after
    this): the AWSRequest gets the body `Wire.send` made, compressed or not."""
    pending = getattr(_PENDING, "body", None)
    if pending is None:  # an ordinary put_metric_data call: botocore's own body
        return
    body, encoding = pending  # (kept for every attempt, should botocore retry)
    request.data = body
    headers = request.headers
    del headers["Content-Encoding"]  # the stand-in body's (never compressed: it is tiny)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        try:
            from botocore.useragent import register_feature_id

            register_feature_id("GZIP_REQUEST_COMPRESSION")  # as botocore's compressor does
        except (ImportError, KeyError):  # pragma: no cover - older botocore
            pass


class BodyNotPutIn(RuntimeError):
    """botocore did not run `request-created` as expected: nothing was sent."""


def _body_sent(request: Any, **_: Any) -> None:
    """`before-send`: never send the stand-in request whose body was not put in."""
    pending = getattr(_PENDING, "body", None)
    if pending is not None and request.body is not pending[0]:
        raise BodyNotPutIn("PutMetricData: the request body was not put in (request-created)")


class Wire:
    """One client's PutMetricData: the body made by hiveagent.encoding in the client's wire
    protocol, gzip-compressed when botocore would compress it (the client's
    `request_min_compression_size_bytes` and `disable_request_compression`, the operation's
    `requestcompression` trait), then signed, sent and its answer parsed by botocore, as its
    own put_metric_data would (errors are the same ClientError and BotoCoreError).

    The call is the client's put_metric_data with a stand-in MetricData; botocore's
    `request-created` event puts the body in before the request is signed. A client whose
    protocol hiveagent.encoding does not speak (or that is not a botocore client) is called
    with `to_metric_datum`'s parameters, botocore serialising them."""

    def __init__(self, client: Any, gzip_level: int = GZIP_LEVEL) -> None:
        self.client = client
        self.gzip_level = gzip_level
        self.encoder: BodyEncoder | None = None
        self.compress_from: int | None = None  # body bytes from which it is compressed
        meta: Any = getattr(client, "meta", None)
        model = getattr(meta, "service_model", None)
        if meta is None or model is None:
            return
        protocol = getattr(model, "resolved_protocol", None) or model.protocol
        if protocol not in ("json", "query"):
            return
        operation = model.operation_model("PutMetricData")
        config = meta.config
        compression = operation.request_compression
        if (
            compression is not None
            and config.disable_request_compression is not True
            and config.signature_version != "v2"
            and compression.get("encodings", [None])[0] == "gzip"
        ):
            self.compress_from = int(config.request_min_compression_size_bytes)
        service = model.service_id.hyphenize()
        events = meta.events
        # (a unique_id is one per emitter, whatever the event)
        events.register(
            f"request-created.{service}.PutMetricData", _put_body, unique_id=f"{_HOOK_ID}.put"
        )
        events.register(
            f"before-send.{service}.PutMetricData", _body_sent, unique_id=f"{_HOOK_ID}.check"
        )
        self.encoder = BodyEncoder(protocol, model.api_version)

    @property
    def takes_fragments(self) -> bool:
        """Whether a datum may be given to `prepare` as its JSON fragment (the client speaks
        JSON; awsQuery bodies are made from Datums, a fragment read back as one)."""
        return self.encoder is not None and self.encoder.protocol == "json"

    def prepare(self, namespace: str, datums: Sequence[Any], shape: str) -> Any:
        """What `send` sends: the body (uncompressed) or, without an encoder, botocore's
        parameters. Raises ValueError, OverflowError or OSError for a datum the wire cannot
        carry (a timestamp out of range), as to_metric_datum does."""
        if self.encoder is not None:
            return self.encoder.body(namespace, datums, shape)
        return [
            to_metric_datum(datum_from_fragment(namespace, d) if isinstance(d, str) else d, shape)
            for d in datums
        ]

    def send(self, namespace: str, prepared: Any) -> None:
        """One PutMetricData call (blocking: run it in a thread). Compresses here: the deflate
        lets go of the GIL while it works."""
        if self.encoder is None:
            self.client.put_metric_data(Namespace=namespace, MetricData=prepared)
            return
        body, encoding = prepared, None
        if self.compress_from is not None and len(body) >= self.compress_from:
            body, encoding = deflate.compress(body, self.gzip_level, wbits=31), "gzip"
        _PENDING.body = (body, encoding)
        try:
            self.client.put_metric_data(Namespace=namespace, MetricData=[])
        finally:
            _PENDING.body = None


ROLE_SESSION_NAME = "hiveagent"


def make_client(
    region: str | None,
    endpoint: str | None,
    timeout_s: float = 10.0,
    protocol: str = "auto",
    role_arn: str | None = None,
    *,
    external_id: str | None = None,
    sts_endpoint: str | None = None,
    profile: str | None = None,
) -> Any:
    """A CloudWatch client with botocore's retries off: the Publisher owns retrying.

    `protocol` "json" or "query" pins the wire protocol (endpoints that speak only awsQuery);
    "auto" leaves botocore's choice. The pin is botocore's own model-customisation mechanism:
    an `sdk-extras` file (hiveagent/botocore_data/<protocol>/) on the session's `data_path`
    merges `protocols: [<protocol>]` into CloudWatch's service model as it loads.

    `role_arn` (the CloudWatch Agent's `credentials.role_arn`): the client signs with that
    role's temporary credentials, got through STS AssumeRole with the default credentials and
    refreshed by botocore before they expire (its refreshable credentials: from 15 minutes
    before expiry, and always from 10). The STS request goes to `endpoint` too when it is set
    (a private cloud or a local test endpoint serves STS at the same address, as moto does),
    else to the region's STS; `sts_endpoint` names another. `external_id` goes with the
    AssumeRole request (a role that requires one). `profile`: a profile of the shared
    credentials and config files signs instead of the default chain (and assumes `role_arn`
    if both are given)."""
    import boto3
    import botocore.session
    from botocore.config import Config as BotoConfig

    core = botocore.session.get_session()
    if profile:
        core.set_config_variable("profile", profile)
    if protocol != "auto":
        core.set_config_variable(
            "data_path", str(Path(__file__).parent / "botocore_data" / protocol)
        )
    region = region or core.get_config_variable("region") or "us-east-1"
    if role_arn:
        sts = sts_endpoint or endpoint
        _assume_role(core, role_arn, region, sts, timeout_s, external_id, profile)
    session = boto3.session.Session(botocore_session=core)
    return session.client(
        "cloudwatch",
        region_name=region,
        endpoint_url=endpoint,
        config=BotoConfig(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"total_max_attempts": 1},
            # Datums are checked where they are made (Emitter) and cleaned of guest input;
            # botocore's own validation of 1000-datum requests was most of the publish CPU.
            parameter_validation=False,
            request_min_compression_size_bytes=10240,
        ),
    )


def _assume_role(
    core: Any,
    role_arn: str,
    region: str,
    endpoint: str | None,
    timeout_s: float,
    external_id: str | None = None,
    profile: str | None = None,
) -> None:
    """Put `role_arn`'s refreshable credentials first in the botocore session `core`'s
    credential chain, assumed with the default chain's credentials (botocore's
    AssumeRoleCredentialFetcher, the code behind a profile's role_arn)."""
    import botocore.session
    from botocore.config import Config as BotoConfig
    from botocore.credentials import (
        AssumeRoleCredentialFetcher,
        CredentialProvider,
        DeferredRefreshableCredentials,
    )

    base = botocore.session.get_session()  # the default chain: env, files, instance role
    if profile:
        base.set_config_variable("profile", profile)
    source = base.get_credentials()
    if source is None:
        raise ValueError(f"no credentials to assume {role_arn} with")

    def sts_client(service: str, **credentials: Any) -> Any:
        return base.create_client(
            service,
            region_name=region,
            endpoint_url=endpoint,
            config=BotoConfig(connect_timeout=timeout_s, read_timeout=timeout_s),
            **credentials,
        )

    extra = {"RoleSessionName": ROLE_SESSION_NAME}
    if external_id:
        extra["ExternalId"] = external_id
    fetcher = AssumeRoleCredentialFetcher(sts_client, source, role_arn, extra_args=extra)

    class AssumedRole(CredentialProvider):  # type: ignore[misc]
        METHOD = "assume-role"

        def load(self) -> Any:
            return DeferredRefreshableCredentials(
                refresh_using=fetcher.fetch_credentials, method=self.METHOD
            )

    core.get_component("credential_provider").insert_before("env", AssumedRole())
