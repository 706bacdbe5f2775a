"""Sending datums to a CloudWatch-compatible endpoint through boto3 (SigV4, the wire protocol and
gzip request compression are botocore's).

Datums wait in a bounded in-memory queue until a flush; a flush sends them grouped by namespace in
requests of at most 1000 datums and under 1 MB. A request that fails in a way worth retrying
(throttling, 5xx, timeouts, connection errors) leaves its datums queued for the next flush; one
the endpoint rejects as invalid is dropped. Every datum that is not delivered is counted by reason
and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from hiveagent.model import Datum

log = logging.getLogger(__name__)

MAX_DATUMS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
REQUEST_OVERHEAD_BYTES = 2_000
MAX_QUEUED_DATUMS = 200_000
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "InternalServiceError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def datum_wire_size(d: Datum) -> int:
    """An upper bound of the bytes one datum takes in a query- or JSON-encoded request."""
    size = 200 + 3 * len(d.name)
    for name, value in d.dimensions:
        size += 80 + 3 * (len(name) + len(value))  # URL-encoding may triple a character
    return size


def batches(datums: Iterable[Datum]) -> Iterator[list[Datum]]:
    """Consecutive runs of one namespace, each <= 1000 datums and < 1 MB on the wire."""
    batch: list[Datum] = []
    size = REQUEST_OVERHEAD_BYTES
    for d in datums:
        s = datum_wire_size(d)
        if batch and (
            d.namespace != batch[0].namespace
            or len(batch) >= MAX_DATUMS_PER_REQUEST
            or size + s > MAX_REQUEST_BYTES
        ):
            yield batch
            batch, size = [], REQUEST_OVERHEAD_BYTES
        batch.append(d)
        size += s
    if batch:
        yield batch


def to_metric_datum(d: Datum) -> dict[str, Any]:
    """botocore's MetricDatum shape."""
    return {
        "MetricName": d.name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in d.dimensions],
        "Timestamp": datetime.fromtimestamp(d.timestamp, UTC),
        "Value": d.value,
        "Unit": d.unit,
        "StorageResolution": d.storage_resolution,
    }


def make_client(region: str | None, endpoint: str | None) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session()
    region = region or session.region_name or "us-east-1"
    return session.client(
        "cloudwatch",
        region_name=region,
        endpoint_url=endpoint,
        config=BotoConfig(
            connect_timeout=5,
            read_timeout=15,
            retries={"mode": "standard", "max_attempts": 3},
            request_min_compression_size_bytes=10240,
        ),
    )


class Publisher:
    def __init__(self, client: Any, max_queued: int = MAX_QUEUED_DATUMS) -> None:
        self.client = client
        self.queue: deque[Datum] = deque()
        self.max_queued = max_queued
        self.stats: Counter[str] = Counter()

    def add(self, datums: Iterable[Datum]) -> None:
        for d in datums:
            if len(self.queue) >= self.max_queued:
                self.queue.popleft()
                self.drop(1, "queue_full", "in-memory queue full; oldest datum dropped")
            self.queue.append(d)

    def drop(self, count: int, reason: str, detail: str) -> None:
        self.stats[f"dropped.{reason}"] += count
        log.error("dropped %d datum(s): %s: %s", count, reason, detail)

    async def flush(self) -> bool:
        """Send everything queued. True when the queue is empty afterwards."""
        pending = sorted(self.queue, key=lambda d: d.namespace)
        self.queue.clear()
        for i, batch in enumerate(batches(pending)):
            outcome = await self._send(batch)
            if outcome == "retry":
                rest = [d for b in list(batches(pending))[i:] for d in b]
                self.queue.extendleft(reversed(rest))
                return False
        return True

    async def _send(self, batch: list[Datum]) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        self.stats["api_calls"] += 1
        try:
            await asyncio.to_thread(
                self.client.put_metric_data,
                Namespace=batch[0].namespace,
                MetricData=[to_metric_datum(d) for d in batch],
            )
        except ClientError as exc:
            self.stats["api_errors"] += 1
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in RETRYABLE_CODES or status >= 500:
                log.warning(
                    "PutMetricData: %s (%s); %d datum(s) kept for retry", code, status, len(batch)
                )
                return "retry"
            self.drop(len(batch), f"rejected.{code or status}", str(exc))
            return "dropped"
        except BotoCoreError as exc:  # connection refused, timeouts, ...
            self.stats["api_errors"] += 1
            log.warning("PutMetricData: %s; %d datum(s) kept for retry", exc, len(batch))
            return "retry"
        self.stats["datums_sent"] += len(batch)
        return "sent"
