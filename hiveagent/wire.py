"""The CloudWatch wire: PutMetricData's limits, what one datum costs in a request, the datum's
botocore shape and the client (SigV4, the wire protocol and gzip request compression are
botocore's; botocore's own retries are off, the Publisher owns retrying)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hiveagent.model import Datum

MAX_DATUMS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
REQUEST_OVERHEAD_BYTES = 2_000
MAX_AGE_S = 14 * 86400 - 600  # the endpoint's limit, with a margin for clock skew


MAX_DIMENSIONS = 30
MAX_NAME_CHARS = 255  # metric and dimension names
MAX_DIMENSION_VALUE_CHARS = 1024
MAX_ABS_VALUE = 2.0**360
MAX_FUTURE_S = 2 * 3600 - 300  # the endpoint's limit, with a margin for clock skew


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
    two per distinct value."""
    size = 320 + _text_bytes(d.name)
    if d.samples:
        size += 250 + 130 * len(d.samples)
    for name, value in d.dimensions:
        size += 120 + _text_bytes(name) + _text_bytes(value)
    return size


def refusal(d: Datum, now: float) -> str | None:
    """Why CloudWatch would refuse this datum at wall-clock `now` (REFERENCE.md section 4), as
    a drop reason, or None. Age is checked where datums are sent (`MAX_AGE_S`)."""
    if len(d.dimensions) > MAX_DIMENSIONS:
        return "too_many_dimensions"
    if not 0 < len(d.name) <= MAX_NAME_CHARS:
        return "bad_metric_name"
    for name, value in d.dimensions:
        if not 0 < len(name) <= MAX_NAME_CHARS:
            return "bad_dimension_name"
        if not 0 < len(value) <= MAX_DIMENSION_VALUE_CHARS:
            return "bad_dimension_value"
    for v in (d.value, *d.samples):
        if not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:  # NaN compares false too
            return "bad_value"
    if d.timestamp > now + MAX_FUTURE_S:
        return "future_timestamp"
    if d.storage_resolution not in (1, 60):
        return "bad_storage_resolution"
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


def make_client(
    region: str | None, endpoint: str | None, timeout_s: float = 10.0, protocol: str = "auto"
) -> Any:
    """A CloudWatch client with botocore's retries off: the Publisher owns retrying.

    `protocol` "json" or "query" pins the wire protocol (endpoints that speak only awsQuery);
    "auto" leaves botocore's choice. The pin is botocore's own model-customisation mechanism:
    an `sdk-extras` file (hiveagent/botocore_data/<protocol>/) on the session's `data_path`
    merges `protocols: [<protocol>]` into CloudWatch's service model as it loads."""
    import boto3
    import botocore.session
    from botocore.config import Config as BotoConfig

    core = botocore.session.get_session()
    if protocol != "auto":
        core.set_config_variable(
            "data_path", str(Path(__file__).parent / "botocore_data" / protocol)
        )
    session = boto3.session.Session(botocore_session=core)
    region = region or session.region_name or "us-east-1"
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
