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


def datum_wire_size(d: Datum) -> int:
    """An upper bound of the bytes one datum takes in a query- or JSON-encoded request."""
    size = 200 + 3 * len(d.name) + 40 * len(d.samples)
    for name, value in d.dimensions:
        size += 80 + 3 * (len(name) + len(value))  # URL-encoding may triple a character
    return size


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
