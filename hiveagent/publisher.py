"""Sending spooled datums to a CloudWatch-compatible endpoint (the client and the datum's wire
shape are hiveagent.wire's; botocore's own retries are off, ours are below).

Every collected batch goes to the disk spool first (`Spool.add`), and the spool chooses each
request (`Spool.next_request`: oldest first, one namespace, at most 1000 datums and under 1 MB,
datums too old for the endpoint (14 days) dropped). A flush sends those requests and marks
their records done only when the endpoint accepted them.

- Throttling, 5xx, timeouts and connection errors are retried with full-jitter exponential
  backoff; after `breaker_failures` consecutive failures the circuit breaker opens and the
  endpoint is left alone for `breaker_open_s`, then probed with one request.
- A 4xx validation error is not retried as is: the request is split (by record, then in
  halves) until the offending datums are isolated; only those are dropped, each logged with the
  endpoint's message.

Every datum that is not delivered is counted by reason in the DropLedger the spool shares
(`dropped.<reason>` in `stats`) and logged.

A request's body is made by hiveagent.encoding (a fresh record's datums are already JSON
fragments, made when the spool checked them) and signed, compressed and sent by botocore
(`wire.Wire`). While a collection cycle runs, the daemon holds the publisher (`hold`,
`release`): no request starts, so draining a backlog never slows a cycle down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from types import MappingProxyType
from typing import Any

from hiveagent.config import PublishSettings
from hiveagent.encoding import WireDatums, datum_from_fragment
from hiveagent.model import Datum
from hiveagent.spool import Request, Spool
from hiveagent.wire import BodyNotPutIn, Wire, datum_label

Item = Datum | str  # a datum, or its JSON fragment (hiveagent.encoding)


def _label(namespace: str, item: Item) -> str:
    return datum_label(datum_from_fragment(namespace, item) if isinstance(item, str) else item)


log = logging.getLogger(__name__)

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
        # The credentials, not the datums: a role that cannot be assumed (yet), keys that
        # expired or lack permission. The datums wait (the account's breaker opens) instead of
        # being dropped as refused.
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationToken",
        "IncompleteSignature",
    }
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


# In the endpoint's message when it refuses a request for its namespace (AWS's text, and
# Spinifex's for its reserved prefixes)
NAMESPACE_REFUSED = "for parameter Namespace is invalid"


class Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"  # the endpoint is in trouble: keep the datums, back off
    INVALID = "invalid"  # the endpoint rejected the content: isolate and drop


class Publisher:
    """Spooled requests out to the endpoint: flushing, isolating rejected datums, the breaker
    and backoff. Everything runs on the event loop except the HTTP call."""

    def __init__(
        self,
        client: Any,
        spool: Spool,
        settings: PublishSettings | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._wire: Wire | None = None
        self.spool = spool
        self.client = client
        self.settings = settings or PublishSettings()
        self.ledger = spool.ledger  # the spool's drops and ours, in one place
        self.breaker = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_open_s)
        self.counts: Counter[str] = Counter()  # datums_sent, api_calls, api_errors, ...
        self.rng = rng or random.Random()
        self.attempt = 0
        self.in_flight = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        # metrics.datum_shape: "auto" sends statistic sets until the endpoint refuses one, then
        # single values for the rest of the run (`shape_fallback`); a pinned shape is kept.
        self.datum_shape = "auto"
        self.shape_fallback = False
        self.holds = 0  # `hold` calls not yet released: no new request starts
        self.retired = False  # replaced or held (a reload): no request starts any more
        self._waiters: list[asyncio.Future[None]] = []  # flushes waiting for the release

    @property
    def client(self) -> Any:
        """The botocore CloudWatch client (replaced on a reload that changes the endpoint)."""
        return self._client

    @client.setter
    def client(self, client: Any) -> None:
        self._client = client
        self._wire = None
        # the spool keeps fresh datums as JSON fragments only for a client that sends JSON
        self.spool.json_fragments = self.wire.takes_fragments

    @property
    def wire(self) -> Wire:
        """How requests are encoded and sent through the client (hiveagent.wire.Wire)."""
        if self._wire is None:
            self._wire = Wire(self._client)
        return self._wire

    @property
    def stats(self) -> Mapping[str, int]:
        """Delivery's figures as /status, /metrics and the self-metrics show them: ours, the
        spool's `datums_spooled` and the ledger's `dropped.<reason>` (read-only: count into
        `counts` or the ledger)."""
        out = Counter(self.counts)
        if self.spool.datums_spooled:
            out["datums_spooled"] = self.spool.datums_spooled
        out.update(self.ledger.stats())
        return MappingProxyType(out)

    async def flush(self, deadline: float | None = None) -> bool:
        """Send pending records until none are left, the breaker is open, or the monotonic
        `deadline` passes. True when nothing is pending afterwards."""
        while self.spool.pending:
            if self.holds and not await self._released(deadline):
                return False
            if self.retired:
                return False
            if not self.breaker.allow():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            group = self.spool.next_request(time.time())
            if not group:
                continue
            if await self._deliver(group):
                if self.breaker.state is not BreakerState.CLOSED:
                    log.warning("endpoint reachable again; circuit breaker closed")
                self.breaker.success()
                self.attempt = 0
                continue
            if self.breaker.failure():
                self.counts["breaker_opens"] = self.breaker.opens
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

    def hold(self) -> None:
        """Start no request until `release` (a collection cycle is running: a backlog drained
        meanwhile would take the CPU and the event loop from it). A request in flight goes on.
        Holds nest."""
        self.holds += 1

    def release(self) -> None:
        self.holds = max(0, self.holds - 1)
        if not self.holds:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _released(self, deadline: float | None) -> bool:
        """Wait out the holds; False when the monotonic `deadline` passes first."""
        while self.holds:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return False
        return True

    @property
    def shape(self) -> str:
        """The shape basic-monitoring datums are sent in now."""
        if self.datum_shape != "auto":
            return self.datum_shape
        return "single_values" if self.shape_fallback else "statistic_sets"

    async def _deliver(self, group: Request) -> bool:
        """Send a group of records as one request. False: retry later (nothing lost)."""
        namespace = group[0][0].namespace
        fragments = self.wire.takes_fragments
        datums: list[Item] = []
        for _, ds in group:  # a fresh record's JSON fragments as they are, when JSON is sent
            datums.extend(ds.fragments if fragments and isinstance(ds, WireDatums) else ds)
        outcome, detail = await self._put(namespace, datums)
        if outcome is Outcome.INVALID and self._may_fall_back(datums):
            # Some endpoints (Spinifex's) accept only single values: resend the request so;
            # if that is taken, keep to single values for the rest of the run.
            outcome, retried = await self._put(namespace, datums, "single_values")
            if outcome is Outcome.SENT:
                self._fell_back(detail)
            else:
                detail = retried if outcome is Outcome.INVALID else detail
        if outcome is Outcome.RETRY:
            return False
        if outcome is Outcome.SENT:
            self.counts["datums_sent"] += len(datums)
            given_up = sum(r.count for r, _ in group if r.seq not in self.spool.pending)
            if given_up:  # the spool's bound discarded them while they were in flight
                self.ledger.retract(given_up, "spool_full", f"{namespace}: sent while discarded")
        elif len(group) > 1:
            for item in group:
                if not await self._deliver([item]):
                    return False
            return True
        elif not await self._isolate(namespace, datums, detail, group[0][0].replayed):
            return False
        for record, _ in group:
            self.spool.done(record)
        self.spool.commit()
        return True

    async def _isolate(
        self, namespace: str, datums: Sequence[Item], detail: str, replayed: bool = False
    ) -> bool:
        """The endpoint rejected `datums`: find the offending ones by halving, drop only those.
        `replayed`: they were read back from the spool at start, so they may have reached the
        endpoint before the restart; one that is refused now is counted as `resent_refused`
        (an endpoint that refuses duplicate samples, as Spinifex's does, refuses it for that),
        not as rejected.

        A request refused for its namespace (AWS: "The value AWS/EC2 for parameter Namespace is
        invalid.") is refused whatever its datums: all of them are dropped at once, not
        halved down to one request each."""
        if len(datums) > 1 and NAMESPACE_REFUSED in detail:
            code = detail.split(":", 1)[0]
            self.ledger.drop(
                len(datums), f"rejected.{code}", f"{namespace}: {len(datums)} datum(s): {detail}"
            )
            return True
        if len(datums) == 1:
            if self._may_fall_back(datums):  # refused as a statistic set: try its single value
                outcome, why = await self._put(namespace, datums, "single_values")
                if outcome is Outcome.RETRY:
                    return False
                if outcome is Outcome.SENT:
                    self.counts["datums_sent"] += 1
                    self._fell_back(detail)
                    return True
                detail = why
            code = detail.split(":", 1)[0]
            if replayed:
                self.counts["resent_refused"] += 1
                log.warning(
                    "resent after a restart and refused, most likely because the endpoint has it "
                    "from before the restart (it was in flight then): %s: %s",
                    _label(namespace, datums[0]),
                    detail,
                )
                return True
            label = _label(namespace, datums[0])
            self.ledger.drop(1, f"rejected.{code}", f"{label}: {detail}")
            return True
        mid = len(datums) // 2
        for half in (datums[:mid], datums[mid:]):
            outcome, why = await self._put(namespace, half)
            if outcome is Outcome.RETRY:
                return False
            if outcome is Outcome.SENT:
                self.counts["datums_sent"] += len(half)
            elif not await self._isolate(namespace, half, why, replayed):
                return False
        return True

    def _fell_back(self, detail: str) -> None:
        self.shape_fallback = True
        self.counts["datum_shape_fallbacks"] += 1
        log.warning(
            "the endpoint refused statistic sets (%s) and took single values: basic-monitoring "
            "datums go as single values from now on (metrics.datum_shape auto)",
            detail,
        )

    def _may_fall_back(self, datums: Sequence[Item]) -> bool:
        return (
            self.datum_shape == "auto"
            and not self.shape_fallback
            and any(not isinstance(d, str) and d.samples for d in datums)
        )

    async def _put(
        self, namespace: str, datums: Sequence[Item], shape: str | None = None
    ) -> tuple[Outcome, str]:
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        shape = shape or self.shape
        wire = self.wire
        try:
            prepared = wire.prepare(namespace, datums, shape)
        except (ValueError, OverflowError, OSError) as exc:
            # A datum the wire cannot carry (a NaN timestamp, say, in a spool an older version
            # wrote): isolated and dropped like one the endpoint refuses, not raised out of
            # the flush (the record would stay first in the spool, raising at every flush).
            return Outcome.INVALID, f"Unsendable: {exc}"
        self.counts["api_calls"] += 1
        self.in_flight += 1
        try:
            await asyncio.to_thread(wire.send, namespace, prepared)
        except BodyNotPutIn as exc:  # (a botocore that no longer runs the hook: nothing sent)
            log.error("%s; botocore serialises the requests from now on", exc)
            self.counts["api_calls"] -= 1
            wire.encoder = None
            self.spool.json_fragments = False
            return await self._put(namespace, datums, shape)
        except ParamValidationError as exc:  # botocore's own checks: the datum is at fault
            self.counts["api_errors"] += 1
            return Outcome.INVALID, f"ParamValidation: {exc}"
        except ClientError as exc:
            self.counts["api_errors"] += 1
            error = exc.response.get("Error", {})
            code = error.get("Code") or "Unknown"
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            self.last_error = f"{code} (HTTP {status}): {error.get('Message', '')}"
            if code in RETRYABLE_CODES or status >= 500 or status == 429 or not status:
                log.warning("PutMetricData: %s; %d datum(s) kept", self.last_error, len(datums))
                return Outcome.RETRY, self.last_error
            return Outcome.INVALID, f"{code}: {error.get('Message', '')}"
        except BotoCoreError as exc:  # connection refused or reset, timeouts, ...
            self.counts["api_errors"] += 1
            self.last_error = str(exc)
            log.warning("PutMetricData: %s; %d datum(s) kept", exc, len(datums))
            return Outcome.RETRY, self.last_error
        except (ValueError, OverflowError) as exc:  # botocore could not serialise a datum
            self.counts["api_errors"] += 1
            return Outcome.INVALID, f"Unsendable: {exc}"
        except RuntimeError as exc:
            # botocore's refreshing credentials: "Credentials were refreshed, but the refreshed
            # credentials are still expired." (STS's clock behind the host's): kept, retried.
            # Any other RuntimeError is no credential problem: raised (the sender logs it).
            if "credentials" not in str(exc).lower():
                raise
            self.counts["api_errors"] += 1
            self.last_error = f"credentials: {exc}"
            log.warning("PutMetricData: %s; %d datum(s) kept", self.last_error, len(datums))
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
