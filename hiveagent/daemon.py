"""`hiveagent run`: the collection loop, the sender, the status server and signal handling.

Collection and sending are separate tasks on one event loop: collection spools every cycle's
datums (durably) and never waits for the endpoint; the sender drains the spool every
`force_flush_interval` (sooner when 1000 datums wait) with retries and the circuit breaker.
SIGTERM/SIGINT stop collection, flush for at most `publish.shutdown_flush_seconds` and leave the
rest in the spool for the next start. SIGHUP reloads the config file: an invalid one is logged
and the running config kept; the spool is never touched by a reload.

Under systemd (Type=notify) the daemon sends READY=1 once the spool is open and the status
server listens, STATUS= after every cycle, WATCHDOG=1 while cycles keep completing, RELOADING=1
around a reload and STOPPING=1 at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from hiveagent import __version__, accounts
from hiveagent.accounts import DEFAULT, Tenant, client_for, client_settings
from hiveagent.config import Config, ConfigError, load_config
from hiveagent.ledger import DropLedger
from hiveagent.model import VmSpec
from hiveagent.observe import (
    Observation,
    SelfMetrics,
    observe,
    observe_accounts,
    prometheus_text,
)
from hiveagent.pipeline import Pipeline
from hiveagent.publisher import Publisher
from hiveagent.scheduler import Scheduler, interval_warnings, settle_memory
from hiveagent.spool import Spool, SpoolBudget
from hiveagent.status_server import StatusServer
from hiveagent.systemd import Notifier
from hiveagent.wire import MAX_DATUMS_PER_REQUEST, Rules

log = logging.getLogger("hiveagent")


# Cycles tick this fraction of the interval after each interval boundary of the wall clock
# (1.2 s past the minute at 60 s): late enough that clock jitter never puts a tick before the
# boundary, so every cycle's datums (stamped with the period they start in) fall in a period
# of their own.
TICK_OFFSET = 0.02


def seconds_to_next_tick(wall_s: float, interval_s: int) -> float:
    """Seconds from wall-clock `wall_s` to the next tick: an interval boundary plus
    TICK_OFFSET of the interval; in (0, interval]."""
    offset = TICK_OFFSET * interval_s
    return interval_s - (wall_s - offset) % interval_s


def redact_url(url: str | None) -> str | None:
    """An endpoint URL fit for logs: user:password@ removed."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        max_cycles: int | None = None,
        audit: IO[str] | None = None,
        run_dir_override: str | None = None,
    ) -> None:
        self.config = config
        self.run_dir_override = run_dir_override
        self.notifier = Notifier()
        self.reloads = 0
        self.max_cycles = max_cycles
        self.started = time.time()
        self.ledger = DropLedger()  # every datum given up, by the spool or the publisher
        # spool.max_bytes bounds the spool directory: this spool and every account's together
        self.spool_budget = SpoolBudget(config.spool.max_bytes)
        self.spool = Spool(
            config.spool.directory,
            max_bytes=config.spool.max_bytes,
            fsync=config.spool.fsync,
            memory_max_datums=config.spool.memory_max_datums,
            ledger=self.ledger,
            audit=audit,
            rules=Rules(config.datum_shape),
            budget=self.spool_budget,
        )
        default = client_settings(config)
        assert default is not None
        self.publisher = Publisher(
            client_for(default),
            self.spool,
            config.publish,
        )
        self.publisher.datum_shape = config.datum_shape
        self.scheduler = Scheduler(config)
        self.pipeline = Pipeline(config, Path(config.state_dir) / "basic-windows-sent.json")
        self.self_metrics = SelfMetrics(config)
        self.stop = asyncio.Event()
        self.flush_wanted = asyncio.Event()
        self.cycles = 0
        self.last_cycle_end: float | None = None
        self.status_server: StatusServer | None = None
        # routing by account (hiveagent.accounts): one spool and publisher per tenant account
        self.tenants: dict[str, Tenant] = {}
        self.tenant_senders: dict[str, asyncio.Task[None]] = {}

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
                "qmp_socket": state.spec.qmp_socket,
                "pid": state.session.pid,
                "qmp": "connected" if state.session.qmp.connected else "down",
                "run_status": state.session.run_status,
                "guest_agent": state.session.qga_state,
                "last_error": state.last_error,
                "errors": dict(state.errors),
            }
            for instance_id, state in sorted(self.scheduler.vms.items())
        }
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 3),
            "cycles": self.cycles,
            "reloads": self.reloads,
            "config": self.config.source,
            "last_cycle_seconds": round(self.scheduler.last_cycle_s, 6),
            "vms": vms,
            "discovery_problems": self.scheduler.discovery_problems,
            "agent": dict(self.scheduler.stats + self.pipeline.stats),
            "publisher": self.publisher.status(),
            "spool": self.spool.status(),
            # spool.max_bytes holds for what waits in the agent's own spool and every account's
            "spool_waiting_bytes_all_accounts": self.spool_budget.waiting_bytes,
            "spool_bytes_all_accounts": self.spool_budget.total_bytes,  # on disk
            "accounts": {a: t.status() for a, t in sorted(self.tenants.items())},
        }

    def metrics(self) -> str:
        return prometheus_text(self._observe())

    def _observe(self) -> list[Observation]:
        return [
            *observe(self.scheduler, self.pipeline, self.publisher),
            *observe_accounts(self.tenants.values()),
        ]

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        self.spool.open()
        for account in accounts.spooled_accounts(self.config):  # replay what they spooled
            self._tenant(account)
        if self.config.status_server.enabled:
            await self._start_status_server()
        for warning in (*self.config.warnings, *interval_warnings(self.config)):
            log.warning("%s", warning)
        log.info(
            "hiveagent %s running: interval %d s, endpoint %s, spool %s",
            __version__,
            self.config.interval_s,
            redact_url(self.config.endpoint_override) or "region default",
            self.config.spool.directory,
        )
        self.notifier.notify("READY=1", "STATUS=started; first cycle running")
        tasks = [asyncio.create_task(self._sender(), name="sender")]
        if self.notifier.watchdog_s:
            tasks.append(asyncio.create_task(self._watchdog(self.notifier.watchdog_s)))
        try:
            await self._collect_loop()
        finally:
            self.notifier.notify("STOPPING=1", "STATUS=stopping: flushing to the endpoint")
            for task in [*tasks, *self.tenant_senders.values()]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._shutdown()
            self.notifier.close()
        return 0

    async def _watchdog(self, watchdog_s: float) -> None:
        """Ping systemd's watchdog at half its period, but only while cycles keep completing:
        a wedged collection loop gets the service restarted."""
        while True:
            await asyncio.sleep(watchdog_s / 2)
            if self.health()[0]:
                self.notifier.notify("WATCHDOG=1")

    async def reload(self) -> None:
        """SIGHUP: read the config file again. Invalid: keep running on the old one."""
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload failed, still running on the previous configuration: %s", exc)
            self.notifier.notify("READY=1", "STATUS=reload failed; previous configuration kept")
            return
        if self.run_dir_override:
            new = new.with_run_dir(self.run_dir_override)
        for warning in new.warnings:
            log.warning("reload: %s", warning)
        await self.apply(new)
        self.reloads += 1
        log.info("configuration reloaded from %s", new.source)
        self.notifier.notify("READY=1", "STATUS=configuration reloaded")

    async def apply(self, new: Config) -> None:
        old = self.config
        if new.spool != old.spool:
            log.warning("reload: spool settings change only at restart; the spool is kept as is")
            new = replace(new, spool=old.spool)
        for tenant in self.tenants.values():  # credentials may have come, or gone
            accounts.configure_tenant(tenant, new)
            self._start_tenant_sender(tenant)
        default = client_settings(new)
        if default != client_settings(old):
            assert default is not None
            self.publisher.client = client_for(default)
            self.publisher.shape_fallback = False  # a new endpoint may take statistic sets
        self.publisher.settings = new.publish
        self.publisher.datum_shape = new.datum_shape
        if new.datum_shape != old.datum_shape:
            self.spool.rules = Rules(new.datum_shape)  # what is spooled from now on
        self.publisher.breaker.failures = new.publish.breaker_failures
        self.publisher.breaker.open_s = new.publish.breaker_open_s
        self.scheduler.reconfigure(new)
        self.pipeline.reconfigure(new)
        self.self_metrics.config = new
        self.config = new
        if new.status_server != old.status_server:
            if self.status_server is not None:
                await self.status_server.stop()
                self.status_server = None
            if new.status_server.enabled:
                await self._start_status_server()
        self.flush_wanted.set()  # a new endpoint may take the backlog at once

    async def _start_status_server(self) -> None:
        server = StatusServer(
            self.config.status_server, health=self.health, status=self.status, metrics=self.metrics
        )
        try:
            await server.start()
        except OSError as exc:
            log.error("status server not started: %s", exc)
            return
        self.status_server = server

    async def _collect_loop(self) -> None:
        last_self = time.monotonic()
        # Even the start-up cycle runs on a tick, so that every period is a whole interval.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.stop.wait(), seconds_to_next_tick(time.time(), self.config.interval_s)
            )
        while not self.stop.is_set():
            # No request starts while a cycle collects: a backlog drained meanwhile (and the
            # endpoint's own work, when it shares the host) would slow the cycle down.
            held = [self.publisher] + [
                t.publisher for t in self.tenants.values() if t.publisher is not None
            ]
            for publisher in held:
                publisher.hold()
            try:
                collected = await self.scheduler.collect()
            finally:
                for publisher in held:
                    publisher.release()
            routed = self.pipeline.finish_routed(collected, self._route)
            datums = routed.pop(DEFAULT, [])
            for account, tenant_datums in routed.items():
                tenant = self._tenant(account)
                tenant.spool.add(accounts.tenant_datums(self.config, account, tenant_datums))
                if tenant.spool.pending_datums >= MAX_DATUMS_PER_REQUEST:
                    self.flush_wanted.set()
            self.cycles += 1
            self.last_cycle_end = time.monotonic()
            if self.cycles == 2:
                settle_memory()
            now = time.monotonic()
            if (
                self.config.self_metrics.enabled
                and now - last_self >= self.config.self_metrics.interval_s
            ):
                last_self = now
                datums += self.self_metrics.datums(self._observe(), time.time())
            self.spool.add(datums)
            if self.spool.pending_datums >= MAX_DATUMS_PER_REQUEST:
                self.flush_wanted.set()
            self.notifier.notify(
                f"STATUS={len(self.scheduler.vms)} VMs, cycle {self.scheduler.last_cycle_s:.2f} s, "
                f"{self.spool.pending_datums} datums waiting, endpoint "
                f"{self.publisher.breaker.state.value}"
            )
            log.debug(
                "cycle %d: %d VMs, %d datums, %.3f s",
                self.cycles,
                len(self.scheduler.vms),
                len(datums),
                self.scheduler.last_cycle_s,
            )
            if self.max_cycles is not None and self.cycles >= self.max_cycles:
                break
            # The next tick just after the next interval boundary (a slow cycle skips the ticks
            # it overran); a reload may change the interval.
            wait = seconds_to_next_tick(time.time(), self.config.interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)

    # -- tenants (routing by account) -------------------------------------------------------

    def _route(self, spec: VmSpec) -> str:
        """The VM's account: its sidecar's (or generic group's), else its metadata file's."""
        if not self.config.accounts.enabled:
            return DEFAULT
        account = spec.account_id or self.pipeline.metadata.get(spec.instance_id).account_id
        return accounts.route(account, self.config)

    def _tenant(self, account: str) -> Tenant:
        tenant = self.tenants.get(account)
        if tenant is None:
            tenant = self.tenants[account] = accounts.open_tenant(
                self.config, account, self.spool_budget
            )
            log.info(
                "account %s: %s, spool %s",
                account,
                "held" if tenant.publisher is None else "sending with its own credentials",
                tenant.spool.dir,
            )
            self._start_tenant_sender(tenant)
        return tenant

    def _start_tenant_sender(self, tenant: Tenant) -> None:
        task = self.tenant_senders.get(tenant.account)
        if tenant.publisher is not None and (task is None or task.done()):
            self.tenant_senders[tenant.account] = asyncio.create_task(
                self._tenant_sender(tenant), name=f"sender-{tenant.account}"
            )

    async def _tenant_sender(self, tenant: Tenant) -> None:
        """One account's flushing, apart from the others': its breaker and backoff hold back
        that account only."""
        while tenant.publisher is not None:
            publisher = tenant.publisher
            wait = float(self.config.force_flush_interval_s)
            if publisher.breaker.remaining_s() > 0:
                wait = min(wait, publisher.breaker.remaining_s() + 0.01)
            await asyncio.sleep(wait)
            await self._flush_guarded(publisher, f"account {tenant.account}")

    async def _sender(self) -> None:
        while True:
            wait = float(self.config.force_flush_interval_s)
            if self.publisher.breaker.remaining_s() > 0:
                wait = min(wait, self.publisher.breaker.remaining_s() + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush_wanted.wait(), wait)
            self.flush_wanted.clear()
            await self._flush_guarded(self.publisher, "the agent's own account")

    @staticmethod
    async def _flush_guarded(publisher: Publisher, whose: str) -> None:
        """A flush that cannot end its sender: an error no one foresaw is logged, its datums
        stay spooled, and the next flush tries again."""
        try:
            await publisher.flush()
        except Exception as exc:  # a bug, or a library raising what it never did before
            publisher.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s: flush failed; the datums stay in the spool", whose)

    async def _shutdown(self) -> None:
        deadline = time.monotonic() + self.config.publish.shutdown_flush_s
        partial = self.pipeline.drain_routed()  # basic monitoring: the open 5-minute windows
        for account, datums in partial.items():
            if account == DEFAULT:
                self.spool.add(datums)
            else:
                tenant = self._tenant(account)
                tenant.spool.add(accounts.tenant_datums(self.config, account, datums))
        for task in self.tenant_senders.values():  # started by a late tenant, if any
            task.cancel()
        publishers = [self.publisher] + [
            t.publisher for t in self.tenants.values() if t.publisher is not None
        ]
        flushes = [p.flush(deadline) for p in publishers if p.spool.pending and p.breaker.allow()]
        try:
            if flushes:
                await asyncio.wait_for(
                    asyncio.gather(*flushes), self.config.publish.shutdown_flush_s
                )
        except TimeoutError:
            pass
        finally:
            self.spool.close()
            for tenant in self.tenants.values():
                tenant.spool.close()
            await self.scheduler.close()
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
