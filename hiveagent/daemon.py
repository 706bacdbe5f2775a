"""`hiveagent run`: the collection loop, the sender, the status server and signal handling.

Collection and sending are separate tasks on one event loop: collection spools every cycle's
datums (durably) and never waits for the endpoint; the sender drains the spool every
`force_flush_interval` (sooner when 1000 datums wait) with retries and the circuit breaker.
SIGTERM/SIGINT stop collection, flush for at most `publish.shutdown_flush_seconds` and leave the
rest in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import IO, Any

from hiveagent import __version__
from hiveagent.agent import Agent
from hiveagent.config import Config
from hiveagent.observe import SelfMetrics, observe, prometheus_text
from hiveagent.publisher import MAX_DATUMS_PER_REQUEST, Publisher, make_client
from hiveagent.spool import Spool
from hiveagent.status_server import StatusServer

log = logging.getLogger("hiveagent")


class Daemon:
    def __init__(
        self, config: Config, *, max_cycles: int | None = None, audit: IO[str] | None = None
    ) -> None:
        self.config = config
        self.max_cycles = max_cycles
        self.started = time.time()
        self.spool = Spool(
            config.spool.directory,
            max_bytes=config.spool.max_bytes,
            fsync=config.spool.fsync,
            memory_max_datums=config.spool.memory_max_datums,
        )
        self.publisher = Publisher(
            make_client(config.region, config.endpoint_override, config.publish.timeout_s),
            self.spool,
            config.publish,
            audit=audit,
        )
        self.agent = Agent(config)
        self.self_metrics = SelfMetrics(config)
        self.stop = asyncio.Event()
        self.flush_wanted = asyncio.Event()
        self.cycles = 0
        self.last_cycle_end: float | None = None
        self.status_server: StatusServer | None = None

    # -- views for the status server ------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        if self.last_cycle_end is None:
            return True, "starting"
        age = time.monotonic() - self.last_cycle_end
        limit = max(3 * self.config.interval_s, 30)
        if age > limit:
            return False, f"no collection cycle for {age:.0f} s"
        return True, f"last cycle {age:.1f} s ago"

    def status(self) -> dict[str, Any]:
        vms = {
            instance_id: {
                "qmp_socket": rt.spec.qmp_socket,
                "pid": rt.pid,
                "qmp": "connected" if rt.qmp.connected else "down",
                "run_status": rt.run_status,
                "guest_agent": rt.qga_state,
                "last_error": rt.last_error,
                "errors": dict(rt.errors),
            }
            for instance_id, rt in sorted(self.agent.vms.items())
        }
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 3),
            "cycles": self.cycles,
            "last_cycle_seconds": round(self.agent.last_cycle_s, 6),
            "vms": vms,
            "discovery_problems": self.agent.discovery_problems,
            "agent": dict(self.agent.stats),
            "publisher": self.publisher.status(),
            "spool": self.spool.status(),
        }

    def metrics(self) -> str:
        return prometheus_text(observe(self.agent, self.publisher))

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.spool.open()
        if self.config.status_server.enabled:
            self.status_server = StatusServer(
                self.config.status_server,
                health=self.health,
                status=self.status,
                metrics=self.metrics,
            )
            try:
                await self.status_server.start()
            except OSError as exc:
                log.error("status server not started: %s", exc)
                self.status_server = None
        log.info(
            "hiveagent %s running: interval %d s, endpoint %s, spool %s",
            __version__,
            self.config.interval_s,
            self.config.endpoint_override or "region default",
            self.config.spool.directory,
        )
        sender = asyncio.create_task(self._sender(), name="sender")
        try:
            await self._collect_loop()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await self._shutdown()
        return 0

    async def _collect_loop(self) -> None:
        interval = self.config.interval_s
        next_tick = time.monotonic()
        last_self = time.monotonic()
        while not self.stop.is_set():
            datums = await self.agent.cycle()
            self.cycles += 1
            self.last_cycle_end = time.monotonic()
            now = time.monotonic()
            if (
                self.config.self_metrics.enabled
                and now - last_self >= self.config.self_metrics.interval_s
            ):
                last_self = now
                datums += self.self_metrics.datums(observe(self.agent, self.publisher), time.time())
            self.publisher.add(datums)
            if self.spool.pending_datums >= MAX_DATUMS_PER_REQUEST:
                self.flush_wanted.set()
            log.debug(
                "cycle %d: %d VMs, %d datums, %.3f s",
                self.cycles,
                len(self.agent.vms),
                len(datums),
                self.agent.last_cycle_s,
            )
            if self.max_cycles is not None and self.cycles >= self.max_cycles:
                break
            next_tick += interval
            now = time.monotonic()
            if next_tick < now:  # a slow cycle: skip the ticks it overran
                next_tick = now + interval - (now - next_tick) % interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), next_tick - now)

    async def _sender(self) -> None:
        while True:
            wait = float(self.config.force_flush_interval_s)
            if self.publisher.breaker.remaining_s() > 0:
                wait = min(wait, self.publisher.breaker.remaining_s() + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush_wanted.wait(), wait)
            self.flush_wanted.clear()
            await self.publisher.flush()

    async def _shutdown(self) -> None:
        deadline = time.monotonic() + self.config.publish.shutdown_flush_s
        try:
            if self.spool.pending and self.publisher.breaker.allow():
                await asyncio.wait_for(
                    self.publisher.flush(deadline), self.config.publish.shutdown_flush_s
                )
        except TimeoutError:
            pass
        finally:
            self.spool.close()
            await self.agent.close()
            if self.status_server is not None:
                await self.status_server.stop()
        stats = self.publisher.stats
        log.info(
            "stopped after %d cycle(s); sent %d datum(s); %d datum(s) wait in the spool; %s",
            self.cycles,
            stats["datums_sent"],
            self.spool.pending_datums,
            ", ".join(f"{k}={v}" for k, v in sorted(stats.items())) or "no stats",
        )
