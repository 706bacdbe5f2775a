"""The agent's own figures, read once and shown three ways: as self-metrics published to the
endpoint (per-period deltas of the counters), as Prometheus text on /metrics (running totals),
and inside /status. Names are the catalog's `Family.SELF` rows."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hiveagent.catalog import CATALOG
from hiveagent.collector import Emitter
from hiveagent.config import Config
from hiveagent.model import Datum

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hiveagent.accounts import Tenant
    from hiveagent.pipeline import Pipeline
    from hiveagent.publisher import Publisher
    from hiveagent.scheduler import Scheduler

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Observation:
    name: str  # a Family.SELF catalog name
    value: float
    kind: Literal["counter", "gauge"]  # counter: running total since the agent started
    labels: Labels = ()


def observe(
    scheduler: Scheduler, pipeline: Pipeline, publisher: Publisher, now: float | None = None
) -> list[Observation]:
    now = time.time() if now is None else now
    pstats = publisher.stats
    spool = publisher.spool
    oldest = spool.oldest_timestamp()

    def counter(name: str, value: float, labels: Labels = ()) -> Observation:
        return Observation(name, float(value), "counter", labels)

    def gauge(name: str, value: float) -> Observation:
        return Observation(name, float(value), "gauge")

    out = [
        counter("DatumsCollected", pipeline.stats["datums_collected"]),
        counter("DatumsSent", pstats["datums_sent"]),
        *(
            counter("DatumsDropped", v, (("Reason", k.removeprefix("dropped.")),))
            for k, v in sorted(pstats.items())
            if k.startswith("dropped.")
        ),
        counter("ApiCalls", pstats["api_calls"]),
        counter("ApiErrors", pstats["api_errors"]),
        counter("BreakerOpens", publisher.breaker.opens),
        gauge("SpoolBytes", spool.total_bytes),
        gauge("SpoolPendingDatums", spool.pending_datums),
        gauge("SpoolOldestAge", max(0.0, now - oldest) if oldest is not None else 0.0),
        gauge("CycleDuration", scheduler.last_cycle_s),
        gauge("VmsSeen", len(scheduler.vms)),
    ]
    for instance_id, state in sorted(scheduler.vms.items()):
        labels = (("InstanceId", instance_id),)
        out.append(counter("QmpTimeouts", state.errors["qmp_timeout"], labels))
        out.append(counter("QgaTimeouts", state.errors["qga_timeout"], labels))
    return out


def observe_accounts(tenants: Iterable[Tenant]) -> list[Observation]:
    """Per tenant account (routing by account): sent, dropped by reason, waiting."""
    out = []
    for t in sorted(tenants, key=lambda t: t.account):
        account = (("Account", t.account),)
        stats = t.publisher.stats if t.publisher is not None else t.spool.ledger.stats()
        out.append(Observation("AccountDatumsSent", float(stats.get("datums_sent", 0)),
                               "counter", account))  # fmt: skip
        for key, value in sorted(stats.items()):
            if key.startswith("dropped."):
                labels = (*account, ("Reason", key.removeprefix("dropped.")))
                out.append(Observation("AccountDatumsDropped", float(value), "counter", labels))
        out.append(
            Observation("AccountPendingDatums", float(t.spool.pending_datums), "gauge", account)
        )
    return out


class SelfMetrics:
    """Turns observations into datums: counters become deltas since the last call; labelled
    counters (per reason, per VM) are emitted only when they moved, to bound cardinality."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.previous: dict[tuple[str, Labels], float] = {}

    def datums(self, observations: list[Observation], now: float) -> list[Datum]:
        out = Emitter.for_config(self.config, now, interval_s=self.config.self_metrics.interval_s)
        for o in observations:
            value = o.value
            if o.kind == "counter":
                key = (o.name, o.labels)
                value = max(0.0, o.value - self.previous.get(key, 0.0))
                self.previous[key] = o.value
                if o.labels and value == 0:
                    continue
            out.emit(o.name, value, dict(o.labels))
        return out.datums


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def prometheus_name(o: Observation) -> str:
    base = "hiveagent_" + _snake(o.name)
    if CATALOG[o.name].unit == "Seconds" and not base.endswith("_seconds"):
        base += "_seconds"
    return base + "_total" if o.kind == "counter" else base


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(observations: list[Observation]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    seen: set[str] = set()
    for o in sorted(observations, key=prometheus_name):
        name = prometheus_name(o)
        if name not in seen:
            seen.add(name)
            lines.append(f"# HELP {name} {CATALOG[o.name].semantics}")
            lines.append(f"# TYPE {name} {o.kind}")
        labels = ",".join(f'{_snake(k)}="{_escape(v)}"' for k, v in o.labels)
        value = str(int(o.value)) if o.value.is_integer() else repr(o.value)
        lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
    return "\n".join(lines) + "\n"
