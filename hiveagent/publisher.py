"""Sending spooled datums to a CloudWatch-compatible endpoint through boto3 (SigV4, the wire
protocol and gzip request compression are botocore's; botocore's own retries are off, ours are
below).

Every collected batch goes to the disk spool first (hiveagent.spool). A flush sends pending
records oldest first, grouped by namespace into requests of at most 1000 datums and under 1 MB,
and marks them done only when the endpoint accepted them.

- Throttling, 5xx, timeouts and connection errors are retried with full-jitter exponential
  backoff; after `breaker_failures` consecutive failures the circuit breaker opens and the
  endpoint is left alone for `breaker_open_s`, then probed with one request.
- A 4xx validation error is not retried as is: the request is split (by record, then in
  halves) until the offending datums are isolated; only those are dropped, each logged with the
  endpoint's message.
- Datums older than the endpoint accepts (14 days) are dropped before sending.

Every datum that is not delivered is counted by reason (`dropped.<reason>`) and logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import IO, Any

from hiveagent.config import PublishSettings
from hiveagent.model import Datum
from hiveagent.spool import Record, Spool, SpoolCorrupt

log = logging.getLogger(__name__)

MAX_DATUMS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
REQUEST_OVERHEAD_BYTES = 2_000
SCAN_AHEAD = 2000  # pending records looked at to fill one request
MAX_AGE_S = 14 * 86400 - 600  # the endpoint's limit, with a margin for clock skew
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "InternalServiceError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "TooManyRequestsException",
        "SlowDown",
        "RequestLimitExceeded",
    }
)


def datum_wire_size(d: Datum) -> int:
    """An upper bound of the bytes one datum takes in a query- or JSON-encoded request."""
    size = 200 + 3 * len(d.name) + 40 * len(d.samples)
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


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_s, base_s * 2**attempt)] seconds."""
    return rng.uniform(0.0, min(max_s, base_s * (2 ** min(attempt, 30))))


class BreakerState(Enum):
    CLOSED = "closed"  # requests flow
    OPEN = "open"  # the endpoint is considered down; nothing is sent
    HALF_OPEN = "half-open"  # one probe request decides


class CircuitBreaker:
    """Opens after `failures` consecutive failures; after `open_s` lets one probe through."""

    def __init__(
        self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.open_s = open_s
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.opens = 0

    def allow(self) -> bool:
        if self.state is BreakerState.OPEN and self.clock() >= self.opened_at + self.open_s:
            self.state = BreakerState.HALF_OPEN
        return self.state is not BreakerState.OPEN

    def remaining_s(self) -> float:
        """Seconds until a probe is allowed (0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.open_s - self.clock())

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive = 0

    def failure(self) -> bool:
        """Record a failure; True when this one opened the breaker."""
        self.consecutive += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive >= self.failures:
            was_open = self.state is BreakerState.OPEN
            self.state = BreakerState.OPEN
            self.opened_at = self.clock()
            if not was_open:
                self.opens += 1
            return True
        return False


class Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"  # the endpoint is in trouble: keep the datums, back off
    INVALID = "invalid"  # the endpoint rejected the content: isolate and drop


def datum_label(d: Datum) -> str:
    dims = ",".join(f"{k}={v}" for k, v in d.dimensions)
    return f"{d.namespace}/{d.name}{{{dims}}}@{d.timestamp:.3f}={d.value!r}"


class Publisher:
    """Spool in, endpoint out. Everything runs on the event loop except the HTTP call."""

    def __init__(
        self,
        client: Any,
        spool: Spool,
        settings: PublishSettings | None = None,
        *,
        audit: IO[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.spool = spool
        self.settings = settings or PublishSettings()
        self.breaker = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_open_s)
        self.stats: Counter[str] = Counter()
        self.rng = rng or random.Random()
        self.audit = audit
        self.attempt = 0
        self.in_flight = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.datum_shape = "statistic_sets"
        spool.on_drop = self.drop

    # -- in -----------------------------------------------------------------------------------

    def add(self, datums: Iterable[Datum]) -> list[Record]:
        """Spool datums (grouped by namespace into batches). Blocking file I/O, one fsync."""
        ordered = sorted(datums, key=lambda d: d.namespace)
        groups = [(b[0].namespace, b) for b in batches(ordered)]
        if not groups:
            return []
        records = self.spool.append_many(groups)
        self.stats["datums_spooled"] += sum(r.count for r in records)
        if self.audit is not None:
            for _ns, group in groups:
                for d in group:
                    self.audit.write(json.dumps(d.as_json()) + "\n")
            self.audit.flush()
        return records

    def drop(self, count: int, reason: str, detail: str) -> None:
        self.stats[f"dropped.{reason}"] += count
        log.error("dropped %d datum(s): %s: %s", count, reason, detail)

    # -- out ----------------------------------------------------------------------------------

    async def flush(self, deadline: float | None = None) -> bool:
        """Send pending records until none are left, the breaker is open, or the monotonic
        `deadline` passes. True when nothing is pending afterwards."""
        while self.spool.pending:
            if not self.breaker.allow():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            group = self._next_request()
            if not group:
                continue
            if await self._deliver(group):
                if self.breaker.state is not BreakerState.CLOSED:
                    log.warning("endpoint reachable again; circuit breaker closed")
                self.breaker.success()
                self.attempt = 0
                continue
            if self.breaker.failure():
                self.stats["breaker_opens"] = self.breaker.opens
                log.error(
                    "endpoint down after %d consecutive failure(s) (%s); circuit breaker open "
                    "for %.0f s, %d datum(s) wait in the spool",
                    self.breaker.consecutive,
                    self.last_error,
                    self.breaker.open_s,
                    self.spool.pending_datums,
                )
                return False
            delay = backoff_delay(
                self.attempt, self.settings.backoff_base_s, self.settings.backoff_max_s, self.rng
            )
            self.attempt += 1
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(delay)
        return True

    def _next_request(self) -> list[tuple[Record, list[Datum]]]:
        """The oldest pending record plus later ones of its namespace, within request limits
        (looking at most SCAN_AHEAD records ahead, so draining a long backlog stays linear).
        Unreadable records and datums too old for the endpoint are dropped here."""
        group: list[tuple[Record, list[Datum]]] = []
        finished: list[Record] = []  # nothing left to send in them
        count = 0
        size = REQUEST_OVERHEAD_BYTES
        namespace = None
        cutoff = time.time() - MAX_AGE_S
        for record in itertools.islice(self.spool.pending.values(), SCAN_AHEAD):
            if namespace is not None and record.namespace != namespace:
                continue
            try:
                datums = self.spool.load(record)
            except SpoolCorrupt as exc:
                self.drop(exc.count, "spool_corrupt", str(exc))
                finished.append(record)
                continue
            fresh = [d for d in datums if d.timestamp >= cutoff]
            too_old = len(datums) - len(fresh)
            if too_old > record.too_old_counted:  # counted once, however often retried
                self.drop(too_old - record.too_old_counted, "too_old",
                          "older than the endpoint accepts")  # fmt: skip
                record.too_old_counted = too_old
            if not fresh:
                finished.append(record)
                continue
            rsize = sum(datum_wire_size(d) for d in fresh)
            if group and (
                count + len(fresh) > MAX_DATUMS_PER_REQUEST or size + rsize > MAX_REQUEST_BYTES
            ):
                break
            namespace = record.namespace
            group.append((record, fresh))
            count += len(fresh)
            size += rsize
        for record in finished:
            self.spool.done(record)
        self.spool.commit()
        return group

    async def _deliver(self, group: list[tuple[Record, list[Datum]]]) -> bool:
        """Send a group of records as one request. False: retry later (nothing lost)."""
        datums = [d for _, ds in group for d in ds]
        outcome, detail = await self._put(datums)
        if outcome is Outcome.RETRY:
            return False
        if outcome is Outcome.SENT:
            self.stats["datums_sent"] += len(datums)
        elif len(group) > 1:
            for item in group:
                if not await self._deliver([item]):
                    return False
            return True
        elif not await self._isolate(datums, detail):
            return False
        for record, _ in group:
            self.spool.done(record)
        self.spool.commit()
        return True

    async def _isolate(self, datums: Sequence[Datum], detail: str) -> bool:
        """The endpoint rejected `datums`: find the offending ones by halving, drop only those."""
        if len(datums) == 1:
            code = detail.split(":", 1)[0]
            self.drop(1, f"rejected.{code}", f"{datum_label(datums[0])}: {detail}")
            return True
        mid = len(datums) // 2
        for half in (datums[:mid], datums[mid:]):
            outcome, why = await self._put(half)
            if outcome is Outcome.RETRY:
                return False
            if outcome is Outcome.SENT:
                self.stats["datums_sent"] += len(half)
            elif not await self._isolate(half, why):
                return False
        return True

    async def _put(self, datums: Sequence[Datum]) -> tuple[Outcome, str]:
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        self.stats["api_calls"] += 1
        self.in_flight += 1
        try:
            await asyncio.to_thread(
                self.client.put_metric_data,
                Namespace=datums[0].namespace,
                MetricData=[to_metric_datum(d, self.datum_shape) for d in datums],
            )
        except ParamValidationError as exc:  # botocore's own checks: the datum is at fault
            self.stats["api_errors"] += 1
            return Outcome.INVALID, f"ParamValidation: {exc}"
        except ClientError as exc:
            self.stats["api_errors"] += 1
            error = exc.response.get("Error", {})
            code = error.get("Code") or "Unknown"
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            self.last_error = f"{code} (HTTP {status}): {error.get('Message', '')}"
            if code in RETRYABLE_CODES or status >= 500 or status == 429 or not status:
                log.warning("PutMetricData: %s; %d datum(s) kept", self.last_error, len(datums))
                return Outcome.RETRY, self.last_error
            return Outcome.INVALID, f"{code}: {error.get('Message', '')}"
        except BotoCoreError as exc:  # connection refused or reset, timeouts, ...
            self.stats["api_errors"] += 1
            self.last_error = str(exc)
            log.warning("PutMetricData: %s; %d datum(s) kept", exc, len(datums))
            return Outcome.RETRY, self.last_error
        finally:
            self.in_flight -= 1
        self.last_success = time.time()
        return Outcome.SENT, ""

    def status(self) -> dict[str, Any]:
        return {
            "breaker": self.breaker.state.value,
            "breaker_opens": self.breaker.opens,
            "consecutive_failures": self.breaker.consecutive,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
            "last_success": self.last_success,
            "stats": dict(sorted(self.stats.items())),
        }
