"""The CloudWatch wire: PutMetricData's limits and the datums the endpoint refuses (`refusal`,
by the `Rules` of the endpoint and datum shape sent to), what one datum costs in a request
(`checked` works out both in one walk), the datum's botocore shape and the client (SigV4, the
wire protocol and gzip request compression are botocore's; botocore's own retries are off,
the Publisher owns retrying)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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

    It also remembers the verdicts on the strings it has seen (a cycle's datums share a few
    namespaces, dimension names and values): namespace -> refusal or None, and the good
    dimension names and short values -> their wire bytes. Bounded; thread-safe as dicts are."""

    shape: str = "auto"
    spinifex: bool = False
    namespaces: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)
    names: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    values: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.shape not in DATUM_SHAPES:
            raise ValueError(f"datum shape {self.shape!r} is not one of {DATUM_SHAPES}")


AWS_RULES = Rules()
_REMEMBERED = 8192  # verdicts kept per kind (then forgotten all at once)
_REMEMBERED_VALUE_CHARS = 256  # longer dimension values are checked every time


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
    `Spool.add` needs them for every datum of a cycle. A dimension name or value seen before
    costs a dictionary lookup (`Rules`)."""
    why = rules.namespaces.get(d.namespace, _UNSEEN)
    if why is _UNSEEN:
        why = namespace_refusal(d.namespace, rules)
    if why is not None:
        return why, 0
    name, dims = d.name, d.dimensions
    if not 0 < len(name) <= MAX_NAME_CHARS or name.isspace():
        return ("bad_metric_name" if name and not name.isspace() else "blank_metric_name"), 0
    if name.isascii():
        size = 320 + 3 * len(name)
    elif _utf8(name):
        size = 320 + _text_bytes(name)
    else:
        return "bad_metric_name", 0
    if len(dims) > MAX_DIMENSIONS:
        return "too_many_dimensions", 0
    names, values = rules.names, rules.values
    last, ordered = "", True
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
    samples = d.samples
    if samples:
        why = _samples_refusal(samples, rules.shape)
        if why is not None:
            return why, 0
        size += 250 + 130 * len(samples)
        value_sent = rules.shape in ("auto", "single_values")
    else:
        value_sent = True
    if value_sent and not -MAX_ABS_VALUE <= d.value <= MAX_ABS_VALUE:  # NaN compares false
        return "bad_value", 0
    if not d.timestamp <= now + MAX_FUTURE_S:  # NaN compares false too
        return ("future_timestamp" if d.timestamp > now else "bad_timestamp"), 0
    if d.storage_resolution not in (1, 60):
        return "bad_storage_resolution", 0
    if d.unit not in UNITS:
        return "bad_unit", 0
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
    elif namespace.startswith(
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
    CloudWatch-compatible endpoints accept only `Value`."""
    out: dict[str, Any] = {
        "MetricName": d.name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in d.dimensions],
        "Timestamp": datetime.fromtimestamp(d.timestamp, UTC),
        "Unit": d.unit,
        "StorageResolution": d.storage_resolution,
    }
    if d.samples and shape == "statistic_sets":
        out["StatisticValues"] = {
            "SampleCount": float(len(d.samples)),
            "Sum": math.fsum(d.samples),
            "Minimum": min(d.samples),
            "Maximum": max(d.samples),
        }
    elif d.samples and shape == "value_arrays":
        counts: dict[float, int] = {}
        for v in d.samples:
            counts[v] = counts.get(v, 0) + 1
        out["Values"] = list(counts)
        out["Counts"] = [float(c) for c in counts.values()]
    else:
        out["Value"] = d.value
    return out


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
