"""The collection cycle: discover VMs, collect each (concurrently, bounded), emit datums.

Per VM the framework owns the QMP connection (long-lived; the telemetry socket is ours), the
guest agent connection (opened per cycle and closed again, so other tools can use the agent
between cycles), every deadline, the previous samples and the error counts. A collector that
fails is skipped for that VM and cycle; nothing one VM does can stop the others.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from collectors import REGISTRY
from collectors.vcpu_threads import parse_vcpu_threads
from hiveagent.collector import Collector, Emitter, VmContext, qmp_key
from hiveagent.config import Config
from hiveagent.discovery import Discovery, VmSpec
from hiveagent.model import Datum
from hiveagent.monitoring import BasicWindows, detailed_copies, tier
from hiveagent.qmp import (
    QmpCommandError,
    QmpError,
    QmpSession,
    QmpTimeout,
    find_guest_agent_chardev,
    parse_query_chardev,
)
from hiveagent.shaping import MetadataFiles, plugin_shaping, shape, vm_dimensions
from qga.client import GuestInfo, QgaClient, QgaError, QgaTimeout, parse_guest_info

log = logging.getLogger(__name__)


@dataclass
class VmRuntime:
    """What the agent keeps about one VM between cycles."""

    spec: VmSpec
    qmp: QmpSession
    pid: int | None = None
    prev: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    vcpus: int | None = None
    qga_chardev: str | None = None  # label of the guest agent port's chardev ("" = none)
    guest_info: GuestInfo | None = None
    qga_seen: bool = False  # the guest agent answered during this QEMU process's life
    qga_path: str | None = None  # the guest agent socket found by the last query-chardev
    qga_answered: bool = False  # the guest agent answered in the last cycle
    run_status: str | None = None  # query-status `status`, as last read
    status_mark: tuple[int, int] | None = None  # QmpSession.event_mark when it was read
    status_cycle: int = 0  # the cycle it was read in
    qga_state: str = "unknown"
    last_error: str | None = None
    errors: Counter[str] = field(default_factory=Counter)
    cycles: int = 0  # collections of this VM so far (per-plugin intervals count in these)
    basic: BasicWindows = field(default_factory=BasicWindows)  # basic monitoring windows

    def new_process(self, pid: int | None) -> None:
        """QEMU (re)started: everything learned about the old process is void."""
        self.pid = pid
        self.prev.clear()
        self.cache.clear()
        self.vcpus = None
        self.qga_chardev = None
        self.guest_info = None
        self.qga_seen = False
        self.qga_path = None
        self.qga_answered = False


def count_timeout(rt: VmRuntime, exc: Exception) -> None:
    """Per-VM QMP and guest agent timeouts (the QmpTimeouts/QgaTimeouts self-metrics)."""
    if isinstance(exc, QmpTimeout):
        rt.errors["qmp_timeout"] += 1
    elif isinstance(exc, QgaTimeout):
        rt.errors["qga_timeout"] += 1


# Containers allocated (net) before the cyclic collector's youngest generation runs. The
# default, 700, ran it about 200 times per 200-VM cycle: each run promotes the replies and
# datums in flight at that moment, and the older generations, rescanned for them, took about 7%
# of the agent's CPU (measured: 0.63 s of collection in 8 cycles, 0.07 s at 20,000, see
# BENCHMARKS.md). Reference counting frees nearly everything the agent makes; what is cyclic
# (exception tracebacks) waits at most this many allocations, a few MiB.
GC_YOUNG_THRESHOLD = 20_000
# query-status is asked again after any QMP event; this bounds how long a run state change that
# came without an event could go unseen (in cycles).
STATUS_REFRESH_CYCLES = 10


def settle_memory() -> None:
    """After start-up (imports, connections, first samples), move every object alive into the
    garbage collector's permanent generation: they live as long as the daemon, and the cyclic
    collector then no longer rescans them on every collection of a busy cycle (about 10% of
    the CPU per cycle at 200 VMs, see BENCHMARKS.md). Then let the youngest generation grow
    to GC_YOUNG_THRESHOLD before it is collected."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class Agent:
    def __init__(self, config: Config, collectors: list[Collector[Any]] | None = None) -> None:
        self.config = config
        self.discovery = Discovery(config)
        self.collectors = collectors or [
            c for c in (cls() for cls in REGISTRY) if c.enabled(config)
        ]
        self.vms: dict[str, VmRuntime] = {}
        self.discovery_problems: list[str] = []
        self.stats: Counter[str] = Counter()
        self.last_cycle_s = 0.0
        self.metadata = MetadataFiles(config.instance_metadata)
        self.shaping = plugin_shaping(config)
        self.leftover: list[Datum] = []
        self._plan_intervals()

    def _plan_intervals(self) -> None:
        """Per collector (by name), from its plugin's own interval, worked out once per
        config: run it every Nth cycle, and the StorageResolution of its datums (0: the
        agent's)."""
        self.every: dict[str, int] = {}
        self.own_resolution: dict[str, int] = {}
        for collector in self.collectors:
            own = collector.interval_s(self.config)
            self.every[collector.name] = (
                max(1, round(own / self.config.interval_s))
                if own and own > self.config.interval_s
                else 1
            )
            self.own_resolution[collector.name] = (1 if own < 60 else 60) if own else 0

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: new discovery and collectors; VMs, connections and previous
        samples are kept, so no counter is re-primed and no period is lost."""
        self.config = config
        self.discovery = Discovery(config)
        self.collectors = [c for c in (cls() for cls in REGISTRY) if c.enabled(config)]
        self._plan_intervals()
        self.metadata = MetadataFiles(config.instance_metadata)
        self.shaping = plugin_shaping(config)
        for rt in self.vms.values():
            rt.qmp.timeout = config.qmp_timeout_s

    async def close(self) -> None:
        for rt in self.vms.values():
            await rt.qmp.close()

    async def rediscover(self) -> None:
        specs, problems = self.discovery.scan()
        for p in problems:
            if p not in self.discovery_problems:
                log.warning("discovery: %s", p)
        self.discovery_problems = problems
        seen = set()
        for spec in specs:
            seen.add(spec.instance_id)
            rt = self.vms.get(spec.instance_id)
            if rt is None or rt.spec.qmp_socket != spec.qmp_socket:
                if rt is not None:
                    await rt.qmp.close()
                rt = VmRuntime(spec, QmpSession(spec.qmp_socket, timeout=self.config.qmp_timeout_s))
                self.vms[spec.instance_id] = rt
                log.info("vm %s: found (%s)", spec.instance_id, spec.origin)
            else:
                if spec.qga_socket != rt.spec.qga_socket:
                    rt.qga_path = None  # look for the guest agent again
                rt.spec = spec  # sidecar rewritten (e.g. NIC hot-plug)
        for gone in set(self.vms) - seen:
            log.info("vm %s: gone", gone)
            rt = self.vms.pop(gone)
            self.leftover.extend(rt.basic.drain())  # its last partial window still counts
            await rt.qmp.close()

    async def cycle(self) -> list[Datum]:
        """One collection over every VM, at most max_concurrent_vms at a time."""
        start = time.monotonic()
        await self.rediscover()
        limit = asyncio.Semaphore(self.config.max_concurrent_vms)

        async def bounded(rt: VmRuntime) -> list[Datum]:
            async with limit:
                try:
                    async with asyncio.timeout(self.config.vm_deadline_s):
                        return await self.collect_vm(rt)
                except TimeoutError:
                    # Every call has its own deadline; this caps their sum for one VM.
                    rt.errors["vm_deadline"] += 1
                    self.stats["vm_deadline_exceeded"] += 1
                    rt.last_error = f"collection took over {self.config.vm_deadline_s:g} s"
                    log.warning("vm %s: %s; skipped this cycle", rt.spec.instance_id, rt.last_error)
                    return []

        results = await asyncio.gather(*(bounded(rt) for rt in self.vms.values()))
        datums = [d for r in results for d in r] + self.leftover
        self.leftover = []
        self.last_cycle_s = time.monotonic() - start
        self.stats["cycles"] += 1
        self.stats["datums_collected"] += len(datums)
        return datums

    async def connect_vm(self, rt: VmRuntime, ctx: VmContext) -> str | None:
        """QMP up, pid known, run status current, this cycle's QMP commands asked; returns the
        guest agent socket to use, if any."""
        if not rt.qmp.connected:
            await self._connect_qmp(rt)
        failure = await self._qmp_round(rt, ctx)
        if isinstance(failure, QmpError) and not isinstance(failure, QmpTimeout | QmpCommandError):
            # The connection died since the last cycle (QEMU restarted): reconnect once.
            await self._connect_qmp(rt)
            failure = await self._qmp_round(rt, ctx)
        if failure is not None:
            raise failure
        ctx.run_status = rt.run_status
        if rt.vcpus is None:
            cpus = await rt.qmp.execute("query-cpus-fast")
            rt.vcpus = rt.spec.vcpus or (len(cpus) if isinstance(cpus, list) and cpus else None)
            rt.cache["vcpu_threads"] = parse_vcpu_threads(cpus)
        ctx.vcpus = rt.vcpus
        if not self.config.qga_enabled:
            rt.qga_state = "disabled"
            return None
        chardev_reply = ctx.qmp_replies.get(qmp_key("query-chardev"))
        if chardev_reply is None:  # not asked: the guest agent answered last cycle
            return rt.qga_path
        if isinstance(chardev_reply, QmpError):
            raise chardev_reply
        rt.qga_path = None
        chardevs = parse_query_chardev(chardev_reply)
        if rt.spec.qga_socket:
            matching = [c for c in chardevs.values() if c.socket_path == rt.spec.qga_socket]
            # A socket QEMU does not serve itself (e.g. a relay) cannot be checked: try it.
            if matching and not matching[0].frontend_open:
                rt.qga_state = "not running in guest"
                return None
            rt.qga_path = rt.spec.qga_socket
            return rt.qga_path
        if rt.qga_chardev is None:
            rt.qga_chardev = await find_guest_agent_chardev(rt.qmp) or ""
        info = chardevs.get(rt.qga_chardev) if rt.qga_chardev else None
        if info is None or info.socket_path is None:
            rt.qga_state = "no guest agent port"
            return None
        if not info.frontend_open:
            rt.qga_state = "not running in guest"
            return None
        rt.qga_path = info.socket_path
        return rt.qga_path

    async def _connect_qmp(self, rt: VmRuntime) -> None:
        await rt.qmp.connect()
        if rt.qmp.pid != rt.pid:
            rt.new_process(rt.qmp.pid)

    async def _qmp_round(self, rt: VmRuntime, ctx: VmContext) -> QmpError | None:
        """This cycle's QMP commands, all in flight together under one deadline: the ones the
        due collectors will call, query-chardev when due, and query-status when the run status
        may have changed. The replies (or the QmpErrors they failed with) wait in
        ctx.qmp_replies. Returns why QEMU counts as unreachable this cycle, if it does: a
        timeout, a lost connection, or query-status failing."""
        ctx.pid = rt.pid
        calls: list[tuple[str, dict[str, Any] | None]] = []
        for collector in self.collectors:
            if collector.needs_qmp and self._due(collector, rt, ctx):
                calls.extend(collector.qmp_wants(ctx))
        # The guest agent port's state is checked unless the guest agent answered last cycle
        # (if it stopped since, that cycle's exchange times out and the next one checks).
        if self.config.qga_enabled and (rt.qga_path is None or not rt.qga_answered):
            calls.append(("query-chardev", None))
        # QEMU announces every run state change with an event (STOP, RESUME, SHUTDOWN,
        # GUEST_PANICKED...): the status read after the last event is still current. It is
        # asked anyway when nothing else is (one command per cycle proves QEMU answers, for
        # StatusCheckFailed_System) and every STATUS_REFRESH_CYCLES cycles.
        mark = rt.qmp.event_mark
        ask_status = (
            not calls
            or mark is None
            or mark != rt.status_mark
            or rt.cycles - rt.status_cycle >= STATUS_REFRESH_CYCLES
        )
        if ask_status:
            calls.insert(0, ("query-status", None))
        replies = await rt.qmp.execute_all(calls)
        ctx.qmp_replies.clear()
        for (command, arguments), reply in zip(calls, replies, strict=True):
            ctx.qmp_replies[qmp_key(command, arguments)] = reply
        for reply in replies:
            if isinstance(reply, QmpError) and not isinstance(reply, QmpCommandError):
                rt.status_mark = None
                return reply  # timed out or lost: every reply failed the same way
        if not ask_status:
            return None
        status = replies[0]
        if isinstance(status, QmpError):
            rt.status_mark = None
            return status
        run_status = status.get("status") if isinstance(status, dict) else None
        rt.run_status = run_status if isinstance(run_status, str) else None
        # Taken before the command was sent: an event that crossed the reply asks again.
        rt.status_mark = mark if rt.run_status is not None else None
        rt.status_cycle = rt.cycles
        return None

    async def collect_vm(self, rt: VmRuntime) -> list[Datum]:
        ctx = VmContext(spec=rt.spec, config=self.config, qmp=rt.qmp, pid=None, cache=rt.cache)
        emitter = Emitter(self.config, time.time())
        qga_path = None
        try:
            qga_path = await self.connect_vm(rt, ctx)
        except QmpError as exc:
            ctx.pid = None  # QMP-side collectors skip this cycle
            ctx.qmp_error = str(exc)
            rt.errors["qmp"] += 1
            count_timeout(rt, exc)
            self.stats["qmp_errors"] += 1
            if rt.last_error != ctx.qmp_error:
                log.warning("vm %s: QMP: %s", rt.spec.instance_id, exc)
            rt.last_error = ctx.qmp_error
        rt.qga_answered = False
        if qga_path and ctx.run_status == "running":
            await self._open_guest_agent(rt, ctx, qga_path)
        ctx.qga_expected = rt.qga_seen and ctx.run_status == "running"
        try:
            for collector in self.collectors:
                await self._run_collector(collector, rt, ctx, emitter)
        finally:
            if ctx.qga is not None:
                if ctx.qga.stale_replies:
                    ctx.rejected["qga.stale_reply"] += ctx.qga.stale_replies
                await ctx.qga.close()
            self._count_rejections(rt, ctx)
        if ctx.qmp_error is None and ctx.qga_error is None and not ctx.collector_failed:
            rt.last_error = None
        rt.cycles += 1
        meta = self.metadata.get(rt.spec.instance_id)
        vm_dims = vm_dimensions(self.config, rt.spec, meta)
        datums = shape(emitter.datums, self.config, vm_dims, self.shaping)
        if tier(rt.spec.period_s, self.config.monitoring) == "basic":
            return rt.basic.add(datums)
        datums += rt.basic.drain()  # the VM moved to detailed: close what was open
        return detailed_copies(
            datums,
            rt.spec.image_id or meta.image_id,
            rt.spec.instance_type or meta.instance_type,
        )

    def drain_windows(self) -> list[Datum]:
        """Close every open basic-monitoring window (shutdown)."""
        return [d for rt in self.vms.values() for d in rt.basic.drain()]

    def _count_rejections(self, rt: VmRuntime, ctx: VmContext) -> None:
        for reason, n in ctx.rejected.items():
            key = f"rejected.{reason}"
            if not rt.errors[key]:
                log.warning(
                    "vm %s: rejected %d item(s) of guest input: %s (logged once per "
                    "VM; see /status)",
                    rt.spec.instance_id,
                    n,
                    reason,
                )
            rt.errors[key] += n
            self.stats[key] += n

    async def _open_guest_agent(self, rt: VmRuntime, ctx: VmContext, path: str) -> None:
        """Connect, and ask every guest agent command this cycle's collectors need in one
        pipelined exchange (the resync included): the replies wait in ctx.qga_replies."""
        client = QgaClient(
            path,
            timeout=self.config.qga_timeout_s,
            max_reply_bytes=self.config.qga_max_reply_bytes,
        )
        try:
            await client.open()
            if rt.guest_info is None:
                (info,) = await client.execute_many(["guest-info"])
                if isinstance(info, QgaError):
                    raise info
                rt.guest_info = parse_guest_info(info)
            ctx.qga = client
            ctx.qga_commands = rt.guest_info.enabled_commands
            wanted = dict.fromkeys(
                command
                for collector in self.collectors
                if self._due(collector, rt, ctx)
                for command in collector.qga_wants(ctx)
                if command in ctx.qga_commands
            )
            # Always at least the resync (when nothing is wanted): it proves the guest agent
            # answers, which the instance status check needs.
            replies = await client.execute_many(list(wanted))
            ctx.qga_replies.update(zip(wanted, replies, strict=True))
        except QgaError as exc:
            ctx.qga = None
            ctx.qga_commands = frozenset()
            await client.close()
            rt.guest_info = None
            ctx.qga_error = str(exc)
            rt.errors["qga"] += 1
            count_timeout(rt, exc)
            self.stats["qga_errors"] += 1
            rt.qga_state = f"error: {exc}"
            if rt.last_error != ctx.qga_error:
                log.warning("vm %s: guest agent: %s", rt.spec.instance_id, exc)
            rt.last_error = ctx.qga_error
            return
        rt.qga_seen = True
        rt.qga_answered = not any(isinstance(r, QgaTimeout) for r in ctx.qga_replies.values())
        rt.qga_state = f"ok (qemu-ga {rt.guest_info.version})"

    def _due(self, collector: Collector[Any], rt: VmRuntime, ctx: VmContext) -> bool:
        """Whether the collector runs for this VM in this cycle."""
        if collector.needs_qmp and ctx.pid is None:
            return False
        if collector.qga_command is not None and (
            ctx.qga is None or collector.qga_command not in ctx.qga_commands
        ):
            return False
        # Not this plugin's turn: its deltas span its own interval.
        return not rt.cycles % self.every[collector.name]

    async def _run_collector(
        self, collector: Collector[Any], rt: VmRuntime, ctx: VmContext, out: Emitter
    ) -> None:
        if not self._due(collector, rt, ctx):
            return
        try:
            cur = await collector.sample(ctx)
        except (QmpError, QgaError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            rt.errors[collector.name] += 1
            self.stats[f"collector_errors.{collector.name}.{type(exc).__name__}"] += 1
            count_timeout(rt, exc)
            self.stats[f"collector_errors.{collector.name}"] += 1
            rt.last_error = f"{collector.name}: {exc}"
            ctx.collector_failed = True
            log.warning("vm %s: %s: %s", rt.spec.instance_id, collector.name, exc)
            return
        resolution = out.resolution
        own = self.own_resolution[collector.name]
        if own:
            out.resolution = own
        try:
            collector.emit(rt.prev.get(collector.name), cur, ctx, out)
        except Exception:  # a bug in one collector must not stop the others
            rt.errors[collector.name] += 1
            self.stats[f"collector_bugs.{collector.name}"] += 1
            log.exception("vm %s: %s: emit failed", rt.spec.instance_id, collector.name)
        finally:
            out.resolution = resolution
        rt.prev[collector.name] = cur
