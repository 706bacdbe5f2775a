"""One ledger of the datums given up: the spool (corrupt records, the byte and memory bounds,
too-old datums) and the publisher (datums the endpoint rejected) both count here, by reason,
and every drop is logged with its reason and detail. /status, /metrics and the `DatumsDropped`
self-metric show these counts as `dropped.<reason>`."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


class DropLedger:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # reason -> datums

    def drop(self, count: int, reason: str, detail: str) -> None:
        self.counts[reason] += count
        log.error("dropped %d datum(s): %s: %s", count, reason, detail)

    def retract(self, count: int, reason: str, detail: str) -> None:
        """Datums counted as dropped that arrived after all (a record the spool's bound gave
        up while it was being sent, and the endpoint took it)."""
        self.counts[reason] -= count
        if self.counts[reason] <= 0:
            del self.counts[reason]
        log.warning(
            "%d datum(s) counted as dropped (%s) arrived after all: %s", count, reason, detail
        )

    def stats(self) -> dict[str, int]:
        """The counts as `dropped.<reason>` keys."""
        return {f"dropped.{reason}": n for reason, n in self.counts.items()}
