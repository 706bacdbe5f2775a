"""The scheduler: discover VMs, collect each (concurrently, bounded, under a deadline), run the
due collectors on what their VM session answered, and count every error per collector and VM.

Per VM and cycle: the scheduler makes a plan from the due collectors' wants, the VM session
executes it (hiveagent.vm), then each due collector samples and emits. A collector that fails
is skipped for that VM and cycle; nothing one VM does can stop the others. What the scheduler
returns is raw: the pipeline (hiveagent.pipeline) finishes it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collectors import REGISTRY
from hiveagent.collector import Collector, Emitter, VmView, namespaces, resolution_of
from hiveagent.config import Config
from hiveagent.cycle import Cycle, NotAsked, QmpCall, Replies, VmCycle, VmFacts
from hiveagent.discovery import Discovery
from hiveagent.model import Datum, VmSpec
from hiveagent.qmp import QmpError, QmpTimeout
from hiveagent.vm import CycleOutcome, CyclePlan, VmSession
from qga.client import QgaError, QgaTimeout

log = logging.getLogger(__name__)

# Containers allocated (net) before the cyclic collector's youngest generation runs. The
# default, 700, ran it about 200 times per 200-VM cycle: each run promotes the replies and
# datums in flight at that moment, and the older generations, rescanned for them, took about 7%
# of the agent's CPU (measured: 0.63 s of collection in 8 cycles, 0.07 s at 20,000, see
# BENCHMARKS.md). Reference counting frees nearly everything the agent makes; what is cyclic
# (exception tracebacks) waits at most this many allocations, a few MiB.
GC_YOUNG_THRESHOLD = 20_000

# A collector's delta over more than this many of its periods, and over GAP_MIN_S, is not
# reported as one period (re-primed instead). Cycles tick on the interval's boundaries (see the
# daemon), so consecutive samples are one period apart give or take the VM's wait for its turn
# and its replies; a skipped tick makes two, which is already wrong as one period. The few
# seconds keep very short intervals (1-3 s, where a slow guest agent under load delays a
# sample by a second or two) from losing their data to ordinary jitter.
GAP_PERIODS = 1.5
GAP_MIN_S = 5.0
# What a collector's wants see: no replies yet, and nothing to count.
NO_REPLIES = Replies()
NOT_COUNTED: Counter[str] = Counter()
# What a collector's sample may raise on bad input (counted as a data error, not a bug).
SAMPLE_ERRORS = (QmpError, QgaError, OSError, ValueError, KeyError, IndexError, TypeError)


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


@dataclass
class VmState:
    """What the scheduler keeps about one VM between cycles."""

    session: VmSession
    prev: dict[str, Any] = field(default_factory=dict)  # collector name -> last sample
    process: int = 0  # the session's QEMU process the samples in `prev` belong to
    last_error: str | None = None
    errors: Counter[str] = field(default_factory=Counter)
    cycles: int = 0  # collections of this VM so far (per-plugin intervals count in these)
    sampled_at: dict[str, float] = field(default_factory=dict)  # collector -> last sample, s

    @property
    def spec(self) -> VmSpec:
        return self.session.spec


@dataclass(frozen=True)
class CollectorPlan:
    """A collector as configured: run every `every` cycles, datums at `resolution`."""

    collector: Collector[Any]
    every: int
    resolution: int


def period_stamp(wall_s: float, interval_s: int) -> float:
    """The timestamp of a cycle's datums: the start of the interval-aligned period (a whole
    minute at 60 s) that the cycle started in. CloudWatch puts a datum in the period that
    holds its timestamp; cycles ticking once per interval just after its boundary (see the
    daemon) so put each cycle's datum in its own period, whatever the jitter, where the cycle's
    start time put two in one minute and none in the next."""
    return math.floor(wall_s / interval_s) * interval_s


def cycles_per_sample(plugin_interval_s: int | None, agent_interval_s: int) -> int:
    """Every how many cycles a plugin with its own metrics_collection_interval is sampled: the
    nearest whole number of agent cycles, at least one (a shorter interval than the agent's
    cannot be sampled more often than the agent collects)."""
    if not plugin_interval_s or plugin_interval_s <= agent_interval_s:
        return 1
    return max(1, round(plugin_interval_s / agent_interval_s))


def interval_warnings(config: Config) -> list[str]:
    """A plugin's metrics_collection_interval that cannot be honoured as written: shorter than
    the agent's (sampled every agent cycle) or not a whole number of agent cycles (rounded)."""
    out = []
    agent = config.interval_s
    for plugin in ("cpu", "disk", "diskio", "net", "mem"):
        section = getattr(config, plugin)
        own = section.interval_s if section is not None else None
        if not own or own == agent:
            continue
        every = cycles_per_sample(own, agent)
        where = f"$.metrics.metrics_collected.{plugin}.metrics_collection_interval"
        if own < agent:
            out.append(
                f"{where}: {own} s is shorter than the agent's interval ({agent} s): sampled "
                f"every {agent} s, at the resolution of {agent} s"
            )
        elif every * agent != own:
            out.append(
                f"{where}: {own} s is not a whole number of agent cycles ({agent} s): "
                f"sampled every {every * agent} s"
            )
    return out


def count_timeout(state: VmState, exc: Exception) -> None:
    """Per-VM QMP and guest agent timeouts (the QmpTimeouts/QgaTimeouts self-metrics)."""
    if isinstance(exc, QmpTimeout):
        state.errors["qmp_timeout"] += 1
    elif isinstance(exc, QgaTimeout):
        state.errors["qga_timeout"] += 1


class Scheduler:
    def __init__(
        self,
        config: Config,
        collectors: list[Collector[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # monotonic seconds: when samples are taken, for gaps
        self.vms: dict[str, VmState] = {}
        self.discovery_problems: list[str] = []
        self.stats: Counter[str] = Counter()
        self.last_cycle_s = 0.0
        self._configure(config, collectors)

    def _configure(self, config: Config, collectors: list[Collector[Any]] | None = None) -> None:
        """Discovery, collectors and their plans, worked out once per config: each collector
        runs every Nth cycle per its plugin's own interval, its datums at that resolution."""
        self.config = config
        self.discovery = Discovery(config)
        self.namespaces = namespaces(config)
        chosen = collectors or [c for c in (cls() for cls in REGISTRY) if c.enabled(config)]
        self.plans: list[CollectorPlan] = []
        for collector in chosen:
            every = cycles_per_sample(collector.interval_s(config), config.interval_s)
            # The resolution of what is really sampled: a plugin interval shorter than the
            # agent's is sampled every cycle, so at the agent's interval.
            resolution = resolution_of(every * config.interval_s)
            self.plans.append(CollectorPlan(collector, every, resolution))

    @property
    def collectors(self) -> list[Collector[Any]]:
        return [p.collector for p in self.plans]

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: new discovery and collectors; VMs, connections and previous
        samples are kept, so no counter is re-primed and no period is lost."""
        self._configure(config)
        for state in self.vms.values():
            state.session.reconfigure(config)

    async def close(self) -> None:
        for state in self.vms.values():
            await state.session.close()

    async def rediscover(self) -> list[str]:
        """Bring the VM list up to date; returns the instance ids of VMs gone."""
        specs, problems = self.discovery.scan()
        for p in problems:
            if p not in self.discovery_problems:
                log.warning("discovery: %s", p)
        self.discovery_problems = problems
        seen = set()
        for spec in specs:
            seen.add(spec.instance_id)
            state = self.vms.get(spec.instance_id)
            if state is None or state.spec.qmp_socket != spec.qmp_socket:
                if state is not None:
                    await state.session.close()
                self.vms[spec.instance_id] = VmState(VmSession(spec, self.config))
                log.info("vm %s: found (%s)", spec.instance_id, spec.origin)
            else:
                state.session.update_spec(spec)
        gone = sorted(set(self.vms) - seen)
        for instance_id in gone:
            log.info("vm %s: gone", instance_id)
            await self.vms.pop(instance_id).session.close()
        return gone

    async def collect(self) -> Cycle:
        """One collection over every VM, at most max_concurrent_vms at a time."""
        start = time.monotonic()
        stamp = period_stamp(time.time(), self.config.interval_s)
        gone = await self.rediscover()
        limit = asyncio.Semaphore(self.config.max_concurrent_vms)

        async def bounded(state: VmState) -> VmCycle:
            async with limit:
                try:
                    async with asyncio.timeout(self.config.vm_deadline_s):
                        return VmCycle(state.spec, await self.collect_vm(state, stamp))
                except TimeoutError:
                    # Every call has its own deadline; this caps their sum for one VM.
                    state.errors["vm_deadline"] += 1
                    self.stats["vm_deadline_exceeded"] += 1
                    state.last_error = f"collection took over {self.config.vm_deadline_s:g} s"
                    log.warning("vm %s: %s; skipped this cycle", state.spec.instance_id,
                                state.last_error)  # fmt: skip
                    return VmCycle(state.spec, [])

        results = await asyncio.gather(*(bounded(state) for state in self.vms.values()))
        self.last_cycle_s = time.monotonic() - start
        self.stats["cycles"] += 1
        return Cycle(list(results), gone)

    def _turn(self, state: VmState) -> list[CollectorPlan]:
        """The collectors whose turn it is for this VM (a plugin with its own, longer interval
        runs every Nth cycle: its deltas span that interval)."""
        cycles = state.cycles
        return [p for p in self.plans if p.every == 1 or not cycles % p.every]

    @staticmethod
    def _can_run(collector: Collector[Any], facts: VmFacts) -> bool:
        """Whether what the collector reads can be had for this VM this cycle."""
        if collector.needs_qmp and facts.pid is None:
            return False
        command = collector.qga_command
        return command is None or (facts.qga_connected and command in facts.qga_commands)

    def _plan(self, state: VmState, turn: list[CollectorPlan]) -> CyclePlan:
        spec, config, can_run = state.spec, self.config, self._can_run
        collectors = [p.collector for p in turn]

        def previous() -> dict[str, Any]:
            """The collectors' last samples, unless QEMU restarted since (asked after the
            session connected)."""
            return state.prev if state.process == state.session.process else {}

        def qmp_wants(facts: VmFacts) -> list[QmpCall]:
            view, prev = VmView(spec, config, facts, NO_REPLIES, NOT_COUNTED), previous()
            return [
                call
                for c in collectors
                if c.needs_qmp and can_run(c, facts)
                for call in c.qmp_wants(view, prev.get(c.name))
            ]

        def qga_wants(facts: VmFacts) -> list[str]:
            view, prev = VmView(spec, config, facts, NO_REPLIES, NOT_COUNTED), previous()
            return [
                command
                for c in collectors
                if can_run(c, facts)
                for command in c.qga_wants(view, prev.get(c.name))
            ]

        return CyclePlan(state.cycles, qmp_wants, qga_wants)

    async def collect_vm(self, state: VmState, timestamp: float) -> list[Datum]:
        """One VM's cycle; its datums are stamped `timestamp` (the cycle's period_stamp), a
        delta collector's EC2 and EBS ones with the start of the period they cover (Emitter)."""
        now = self.clock()
        turn = self._turn(state)
        self._forget_after_gaps(state, turn, now)
        outcome = await state.session.run_cycle(self._plan(state, turn))
        if state.process != state.session.process:  # a new QEMU process: re-prime
            state.prev.clear()
            state.sampled_at.clear()
            state.process = state.session.process
        self._count_failures(state, outcome)
        view = VmView(state.spec, self.config, outcome.facts, outcome.replies, Counter())
        if outcome.stale_replies:
            view.rejected["qga.stale_reply"] += outcome.stale_replies
        datums: list[Datum] = []
        # By resolution and period (for a delta collector), all appending to `datums`.
        emitters: dict[tuple[int, int], Emitter] = {}
        failed = False
        for plan in turn:
            if self._can_run(plan.collector, outcome.facts):
                period = plan.every * self.config.interval_s if plan.collector.deltas else 0
                out = emitters.get((plan.resolution, period))
                if out is None:
                    out = Emitter(
                        self.namespaces, timestamp, plan.resolution, datums, timestamp - period
                    )
                    emitters[(plan.resolution, period)] = out
                if self._run_collector(plan.collector, state, view, out):
                    state.sampled_at[plan.collector.name] = now
                else:
                    failed = True
        self._count_rejections(state, view)
        if outcome.qmp_failure is None and outcome.qga_failure is None and not failed:
            state.last_error = None
        state.cycles += 1
        return datums

    def _forget_after_gaps(self, state: VmState, turn: list[CollectorPlan], now: float) -> None:
        """A delta collector whose last sample is more than GAP_PERIODS of its periods (and
        GAP_MIN_S) old (QMP or the guest agent was down, a tick was skipped, a sample failed)
        starts again from its next sample: a delta over the gap would be reported as one period
        (a 600 s gap as one 60 s VolumeIdleTime of 600). Counted per VM and collector as
        `gap.<collector>`, logged once per VM and cycle."""
        reprimed = []
        for plan in turn:
            name = plan.collector.name
            last = state.sampled_at.get(name)
            period = plan.every * self.config.interval_s
            limit = max(GAP_PERIODS * period, GAP_MIN_S)
            if not plan.collector.deltas or last is None or now - last <= limit:
                continue
            if name not in state.prev:
                continue
            del state.prev[name]
            state.errors[f"gap.{name}"] += 1
            self.stats["reprimed_after_gap"] += 1
            reprimed.append(f"{name} {now - last:.0f} s (period {period} s)")
        if reprimed:
            log.warning(
                "vm %s: a gap since the last sample, not reported as one period; counters "
                "start again: %s",
                state.spec.instance_id,
                ", ".join(reprimed),
            )

    def _count_failures(self, state: VmState, outcome: CycleOutcome) -> None:
        for kind, exc in (("qmp", outcome.qmp_failure), ("qga", outcome.qga_failure)):
            if exc is None:
                continue
            state.errors[kind] += 1
            count_timeout(state, exc)
            self.stats[f"{kind}_errors"] += 1
            if state.last_error != str(exc):
                what = "QMP" if kind == "qmp" else "guest agent"
                log.warning("vm %s: %s: %s", state.spec.instance_id, what, exc)
            state.last_error = str(exc)

    def _count_rejections(self, state: VmState, view: VmView) -> None:
        for reason, n in view.rejected.items():
            key = f"rejected.{reason}"
            if not state.errors[key]:
                log.warning(
                    "vm %s: rejected %d item(s) of guest input: %s (logged once per "
                    "VM; see /status)",
                    state.spec.instance_id,
                    n,
                    reason,
                )
            state.errors[key] += n
            self.stats[key] += n

    def _run_collector(
        self, collector: Collector[Any], state: VmState, view: VmView, out: Emitter
    ) -> bool:
        """Sample and emit; False when the sample failed."""
        name = collector.name
        prev = state.prev.get(name)
        try:
            cur = collector.sample(view, prev)
        except NotAsked as exc:  # a collector reading past its wants is a bug, not a data error
            state.errors[name] += 1
            self.stats[f"collector_bugs.{name}"] += 1
            state.last_error = f"{name}: {exc}"
            log.exception("vm %s: %s: sample failed", state.spec.instance_id, name)
            return False
        except SAMPLE_ERRORS as exc:
            state.errors[name] += 1
            self.stats[f"collector_errors.{name}.{type(exc).__name__}"] += 1
            count_timeout(state, exc)
            self.stats[f"collector_errors.{name}"] += 1
            state.last_error = f"{name}: {exc}"
            log.warning("vm %s: %s: %s", state.spec.instance_id, name, exc)
            return False
        try:
            collector.emit(prev, cur, view, out)
        except Exception:  # a bug in one collector must not stop the others
            state.errors[name] += 1
            self.stats[f"collector_bugs.{name}"] += 1
            log.exception("vm %s: %s: emit failed", state.spec.instance_id, name)
        state.prev[name] = cur
        return True
