"""The VM session: everything the agent says to one VM, and what it learns about it.

It owns the QMP connection (long-lived; the telemetry socket is ours), the guest agent connection
(opened per cycle and closed again, so other tools can use the guest agent between cycles) and
what is learned per QEMU process: pid, vCPU thread ids, balloon, the guest agent's socket and
enabled commands, the run status. It executes a cycle's plan (the QMP commands and
guest agent commands the due collectors want: the QMP ones in flight together, the guest agent
ones in one pipelined exchange) and knows no collector. VM writes (turning balloon polling on)
happen here, at connect. Errors are returned as facts, never counted here: the scheduler counts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from hiveagent.config import Config
from hiveagent.cycle import QmpCall, Replies, VmFacts, qmp_key
from hiveagent.model import VmSpec
from hiveagent.qmp import QmpCommandError, QmpError, QmpSession, QmpTimeout
from hiveagent.qom import find_balloon, find_guest_agent_chardev, parse_query_chardev
from qga.client import GuestInfo, QgaClient, QgaError, QgaTimeout, parse_guest_info

log = logging.getLogger(__name__)

# query-status is asked again after any QMP event; this bounds how long a run state change that
# came without an event could go unseen (in cycles).
STATUS_REFRESH_CYCLES = 10
# The guest's host name (the CloudWatch Agent's `host` dimension) is asked once per guest agent
# contact (after it did not answer, and at the first one of a QEMU process) and again every this
# many cycles, so a renamed guest shows within them. It is never asked per datum.
HOST_NAME_COMMAND = "guest-get-host-name"
HOST_NAME_REFRESH_CYCLES = 60
HOST_NAME_MAX = 255  # POSIX's _POSIX_HOST_NAME_MAX bound; Linux's own HOST_NAME_MAX is 64
MAX_DIMENSION_VALUE = 1024  # CloudWatch's limit on a dimension value


class CyclePlan(NamedTuple):
    """What the scheduler wants asked of one VM in one cycle: the QMP commands (given what is
    known before they are sent) and the guest agent commands (given what the guest agent
    enables)."""

    cycle: int  # the VM's collection count (the status refresh counts in these)
    qmp_wants: Callable[[VmFacts], Iterable[QmpCall]]
    qga_wants: Callable[[VmFacts], Iterable[str]]


class CycleOutcome(NamedTuple):
    facts: VmFacts
    replies: Replies
    qmp_failure: QmpError | None = None  # why QMP is unreachable this cycle
    qga_failure: QgaError | None = None  # why the guest agent exchange failed
    stale_replies: int = 0  # guest agent replies to nobody, thrown away


class VmSession:
    """One VM's connections and what is known about its QEMU process."""

    def __init__(self, spec: VmSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self.qmp = QmpSession(spec.qmp_socket, timeout=config.qmp_timeout_s)
        self.process = 0  # QEMU processes seen (a restart makes a new one)
        self._forget_process(None)
        self.run_status: str | None = None  # query-status `status`, as last read
        self.status_mark: tuple[int, int] | None = None  # QmpSession.event_mark when read
        self.status_cycle = 0  # the cycle it was read in
        self.qga_state = "unknown"
        self.qga_answered = False  # the guest agent answered in the last cycle

    def _forget_process(self, pid: int | None) -> None:
        """QEMU (re)started: everything learned about the old process is void."""
        self.pid = pid
        self.process += 1
        self.learned = False
        self.vcpus: int | None = None
        self.vcpu_threads: tuple[int, ...] = ()
        self.balloon: str | None = None
        self.balloon_poll_s: int | None = None  # its guest-stats polling interval
        self.qga_chardev: str | None = None  # label of the guest agent port's chardev ("": none)
        self.guest_info: GuestInfo | None = None
        self.qga_seen = False  # the guest agent answered during this QEMU process's life
        self.qga_port_open: bool | None = None  # its port's frontend-open (None: unknown)
        self.qga_misses = 0  # consecutive cycles it was expected and did not answer
        if pid is not None:
            self.qga_seen = self._remembered(pid)
        self.qga_path: str | None = None  # the guest agent socket found by the last query-chardev
        self.qga_answered = False
        self.host_name: str | None = None  # the guest's, as last learnt (guest-get-host-name)
        self.host_name_cycle: int | None = None  # when it was last asked (None: ask)
        self.host_name_problem: str | None = None  # why it is not known, as last logged

    # -- what survives an agent restart: this QEMU process's guest agent answered ------------

    def _memory_path(self) -> str:
        return os.path.join(self.config.state_dir, "guest-agents", self.spec.instance_id)

    def _process_identity(self, pid: int) -> str | None:
        """`<pid> <start time>`: a pid reused by another process does not match."""
        try:
            with open(f"{self.config.proc_root}/{pid}/stat", "rb") as f:
                stat = f.read(4096)
            return f"{pid} {stat[stat.rfind(b')') + 2 :].split()[19].decode()}"
        except (OSError, IndexError, UnicodeDecodeError):
            return None

    def _remembered(self, pid: int) -> bool:
        identity = self._process_identity(pid)
        try:
            with open(self._memory_path(), encoding="ascii") as f:
                return identity is not None and f.read(100).strip() == identity
        except (OSError, UnicodeDecodeError):
            return False

    def _remember(self) -> None:
        identity = self._process_identity(self.pid) if self.pid is not None else None
        if identity is None:
            return
        path = self._memory_path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(f"{path}.tmp", "w", encoding="ascii") as f:
                f.write(identity + "\n")
            os.replace(f"{path}.tmp", path)
        except OSError as exc:  # an unwritable state_dir: the memory lasts this process only
            log.debug("vm %s: cannot remember its guest agent: %s", self.spec.instance_id, exc)

    def update_spec(self, spec: VmSpec) -> None:
        """The sidecar was rewritten (e.g. NIC hot-plug)."""
        if spec.qga_socket != self.spec.qga_socket:
            self.qga_path = None  # look for the guest agent again
        self.spec = spec

    def reconfigure(self, config: Config) -> None:
        """A reloaded config; what is learned at connect is learned again if the new config
        asks for something else there (the balloon and its polling)."""
        old, self.config = self.config, config
        self.qmp.timeout = config.qmp_timeout_s
        if (old.mem is None, old.balloon_polling_interval_s) != (
            config.mem is None,
            config.balloon_polling_interval_s,
        ):
            self.learned = False

    async def close(self) -> None:
        await self.qmp.close()

    # -- one cycle -----------------------------------------------------------------------------

    async def run_cycle(self, plan: CyclePlan) -> CycleOutcome:
        """Ask what the plan wants; return what is known and what was answered."""
        replies = Replies()
        qmp_failure: QmpError | None = None
        qga_path = None
        try:
            qga_path = await self._qmp_part(plan, replies)
        except QmpError as exc:
            qmp_failure = exc
        pid, run_status = (self.pid, self.run_status) if qmp_failure is None else (None, None)
        self.qga_answered = False
        qga_failure: QgaError | None = None
        stale, connected, commands = 0, False, frozenset[str]()
        if qga_path and run_status == "running":
            known = self._facts(pid, run_status)
            qga_failure, stale = await self._guest_agent_part(qga_path, plan, known, replies)
            if qga_failure is None and self.guest_info is not None:
                connected, commands = True, self.guest_info.enabled_commands
        # The guest agent should answer a running VM when it answered before in this QEMU
        # process's life (remembered across agent restarts) or when QEMU says the guest holds
        # its port open (frontend-open: qemu-ga runs): a hung guest is seen at first sight.
        expected = self.guest_agent_expected(run_status)
        self.qga_misses = self.qga_misses + 1 if expected and not connected else 0
        facts = VmFacts(
            pid,
            None if qmp_failure is None else str(qmp_failure),
            run_status,
            self.vcpus,
            self.vcpu_threads,
            self.balloon,
            connected,
            commands,
            expected,
            None if qga_failure is None else str(qga_failure),
            self.qga_misses,
            self.balloon_poll_s,
            self.host_name,
        )
        return CycleOutcome(facts, replies, qmp_failure, qga_failure, stale)

    def guest_agent_expected(self, run_status: str | None) -> bool:
        """Whether the guest agent should answer: the agent uses it, the VM runs, and it
        answered before in this QEMU process's life or QEMU says the guest holds its port
        open."""
        return (
            self.config.qga_enabled
            and run_status == "running"
            and (self.qga_seen or self.qga_port_open is True)
        )

    def _facts(self, pid: int | None, run_status: str | None) -> VmFacts:
        """What is known before the guest agent is asked."""
        return VmFacts(
            pid,
            None,
            run_status,
            self.vcpus,
            self.vcpu_threads,
            self.balloon,
            balloon_poll_s=self.balloon_poll_s,
            host_name=self.host_name,
        )

    async def _qmp_part(self, plan: CyclePlan, replies: Replies) -> str | None:
        """QMP up, the process learned, run status current, this cycle's QMP commands asked;
        returns the guest agent socket to use, if any. Raises the QmpError that makes QEMU
        unreachable this cycle."""
        if not self.qmp.connected:
            await self._connect()
        failure = await self._qmp_round(plan, replies)
        if isinstance(failure, QmpError) and not isinstance(failure, QmpTimeout | QmpCommandError):
            # The connection died since the last cycle (QEMU restarted): reconnect once.
            await self._connect()
            failure = await self._qmp_round(plan, replies)
        if failure is not None:
            raise failure
        if not self.config.qga_enabled:
            self.qga_state = "disabled"
            return None
        chardev_reply = replies.qmp.get(qmp_key("query-chardev"))
        if chardev_reply is None:  # not asked: the guest agent answered last cycle
            return self.qga_path
        if isinstance(chardev_reply, QmpError):
            raise chardev_reply
        self.qga_path = None
        chardevs = parse_query_chardev(chardev_reply)
        if self.spec.qga_socket:
            matching = [c for c in chardevs.values() if c.socket_path == self.spec.qga_socket]
            # A socket QEMU does not serve itself (e.g. a relay) cannot be checked: try it.
            self.qga_port_open = matching[0].frontend_open if matching else None
            if matching and not matching[0].frontend_open:
                self.qga_state = "not running in guest"
                return None
            self.qga_path = self.spec.qga_socket
            return self.qga_path
        if self.qga_chardev is None:
            self.qga_chardev = await find_guest_agent_chardev(self.qmp) or ""
        info = chardevs.get(self.qga_chardev) if self.qga_chardev else None
        if info is None or info.socket_path is None:
            self.qga_state = "no guest agent port"
            self.qga_port_open = None
            return None
        self.qga_port_open = info.frontend_open
        if not info.frontend_open:
            self.qga_state = "not running in guest"
            return None
        self.qga_path = info.socket_path
        return self.qga_path

    async def _connect(self) -> None:
        await self.qmp.connect()
        if self.qmp.pid != self.pid:
            self._forget_process(self.qmp.pid)

    async def _learn(self) -> None:
        """What is asked once per QEMU process: the vCPUs and their threads, and, when the mem
        plugin is on, the balloon (and its polling, when the operator allows turning it on). A
        command QEMU refuses leaves that fact unknown; a timeout or a lost connection makes
        QEMU unreachable (raised), and everything is asked again next cycle."""
        cpus = await self.qmp.execute("query-cpus-fast")
        self.vcpus = self.spec.vcpus or (len(cpus) if isinstance(cpus, list) and cpus else None)
        self.vcpu_threads = parse_vcpu_threads(cpus)
        self.balloon, self.balloon_poll_s = None, None
        if self.config.mem is not None:
            self.balloon = await find_balloon(self.qmp)
            if self.balloon:
                self.balloon_poll_s = await self._balloon_polling(self.balloon)
        self.learned = self.vcpus is not None  # no vCPUs yet (hot-plug pending): ask again

    async def _balloon_polling(self, path: str) -> int | None:
        """The balloon's guest-stats polling interval (s; how often its stats can be fresh),
        turned on first when it is off and the operator allows it
        (`hypervisor.balloon.set_polling_interval_seconds`): the VM's own setting is never
        changed. None when QEMU refuses."""
        prop = "guest-stats-polling-interval"
        interval = self.config.balloon_polling_interval_s
        try:
            current = await self.qmp.execute("qom-get", {"path": path, "property": prop})
            if current == 0 and interval:
                arguments = {"path": path, "property": prop, "value": interval}
                await self.qmp.execute("qom-set", arguments)
                log.info("vm %s: balloon polling turned on (%d s)", self.spec.instance_id, interval)
                current = interval
        except QmpCommandError as exc:  # QEMU refused: mem_* stay absent, QEMU is still up
            log.warning("vm %s: balloon polling unknown: %s", self.spec.instance_id, exc)
            return None
        return current if current.__class__ is int and current >= 0 else None

    async def _qmp_round(self, plan: CyclePlan, replies: Replies) -> QmpError | None:
        """This cycle's QMP commands, all in flight together under one deadline: the plan's,
        query-chardev when due, and query-status when the run status may have changed. The
        replies (or the QmpErrors they failed with) go into `replies`. Returns why QEMU counts
        as unreachable this cycle, if it does: a timeout, a lost connection, or query-status
        failing."""
        if not self.learned:
            try:
                await self._learn()
            except QmpError as exc:
                return exc
        facts = self._facts(self.pid, self.run_status)
        calls: list[QmpCall] = list(dict.fromkeys(plan.qmp_wants(facts)))
        # The guest agent port's state is checked unless the guest agent answered last cycle
        # (if it stopped since, that cycle's exchange times out and the next one checks).
        if self.config.qga_enabled and (self.qga_path is None or not self.qga_answered):
            calls.append(qmp_key("query-chardev"))
        # QEMU announces every run state change with an event (STOP, RESUME, SHUTDOWN,
        # GUEST_PANICKED...): the status read after the last event is still current. It is
        # asked anyway when nothing else is (one command per cycle proves QEMU answers, for
        # StatusCheckFailed_System) and every STATUS_REFRESH_CYCLES cycles.
        mark = self.qmp.event_mark
        ask_status = (
            not calls
            or mark is None
            or mark != self.status_mark
            or plan.cycle - self.status_cycle >= STATUS_REFRESH_CYCLES
        )
        if ask_status:
            calls.insert(0, qmp_key("query-status"))
        results = await self.qmp.execute_all([(c, dict(a) if a else None) for c, a in calls])
        replies.qmp_at = time.monotonic()
        replies.qmp.clear()
        replies.qmp.update(zip(calls, results, strict=True))
        for reply in results:
            if isinstance(reply, QmpError) and not isinstance(reply, QmpCommandError):
                self.status_mark = None
                return reply  # timed out or lost: every reply failed the same way
        if not ask_status:
            return None
        status = results[0]
        if isinstance(status, QmpError):
            self.status_mark = None
            return status
        run_status = status.get("status") if isinstance(status, dict) else None
        self.run_status = run_status if isinstance(run_status, str) else None
        # Taken before the command was sent: an event that crossed the reply asks again.
        self.status_mark = mark if self.run_status is not None else None
        self.status_cycle = plan.cycle
        return None

    def wants_host_name(self) -> bool:
        """Whether the config sends in-guest metrics with the guest's host name as `host`
        (not agent.hostname's)."""
        config = self.config
        return (
            config.host_dimension
            and not config.hostname
            and any(
                getattr(config, plugin) is not None
                for plugin in ("cpu", "disk", "diskio", "net", "mem")
            )
        )

    def _host_name_due(self, cycle: int, enabled: frozenset[str]) -> bool:
        if not self.wants_host_name():
            return False
        if HOST_NAME_COMMAND not in enabled:
            self._host_name_unknown(f"the guest agent does not offer {HOST_NAME_COMMAND}")
            return False
        last = self.host_name_cycle
        return last is None or cycle - last >= HOST_NAME_REFRESH_CYCLES

    def _learn_host_name(self, reply: Any, cycle: int) -> None:
        """Keep the host name the guest gave; a failure or an unusable name keeps the last
        one (the guest agent is asked again at its next contact or refresh)."""
        self.host_name_cycle = cycle
        if isinstance(reply, QgaError):
            self._host_name_unknown(f"{HOST_NAME_COMMAND}: {reply}")
            return
        name = parse_host_name(reply)
        if name is None:
            self._host_name_unknown(f"{HOST_NAME_COMMAND}: not a usable host name: {reply!r:.120}")
            return
        if name != self.host_name and self.host_name is not None:
            log.info(
                "vm %s: guest host name now %r (was %r)",
                self.spec.instance_id,
                name,
                self.host_name,
            )
        self.host_name, self.host_name_problem = name, None

    def _host_name_unknown(self, why: str) -> None:
        """Logged once per reason while no host name is known: the VM's in-guest datums are
        not sent meanwhile (the collectors count them as `host_name.unknown`)."""
        if self.host_name is None and why != self.host_name_problem:
            log.warning(
                "vm %s: guest host name unknown (%s): its in-guest metrics, whose `host` "
                "dimension it is, are not sent",
                self.spec.instance_id,
                why,
            )
        self.host_name_problem = why

    async def _guest_agent_part(
        self, path: str, plan: CyclePlan, facts: VmFacts, replies: Replies
    ) -> tuple[QgaError | None, int]:
        """Connect, and ask every guest agent command the plan wants in one pipelined exchange
        (the resync included), then close: the replies go into `replies`. Returns why the
        exchange failed, if it did, and the stale replies thrown away."""
        client = QgaClient(
            path,
            timeout=self.config.qga_timeout_s,
            max_reply_bytes=self.config.qga_max_reply_bytes,
        )
        try:
            await client.open()
            if self.guest_info is None:
                (info,) = await client.execute_many(["guest-info"])
                if isinstance(info, QgaError):
                    raise info
                self.guest_info = parse_guest_info(info)
                self.host_name_cycle = None  # a new contact: the guest may have been renamed
            enabled = self.guest_info.enabled_commands
            facts = facts._replace(qga_connected=True, qga_commands=enabled)
            wanted = [c for c in dict.fromkeys(plan.qga_wants(facts)) if c in enabled]
            ask_host = self._host_name_due(plan.cycle, enabled)
            # Always at least the resync (when nothing is wanted): it proves the guest agent
            # answers, which the instance status check needs.
            results = await client.execute_many(
                [*wanted, HOST_NAME_COMMAND] if ask_host else wanted
            )
            replies.qga_at = time.monotonic()
            replies.qga.update(zip(wanted, results, strict=False))
            if ask_host:
                self._learn_host_name(results[-1], plan.cycle)
            timed_out = any(isinstance(r, QgaTimeout) for r in results)
        except QgaError as exc:
            self.guest_info = None
            self.qga_state = f"error: {exc}"
            return exc, client.stale_replies
        finally:
            await client.close()
        if not self.qga_seen:
            self.qga_seen = True
            self._remember()
        self.qga_answered = not timed_out
        self.qga_state = f"ok (qemu-ga {self.guest_info.version})"
        return None, client.stale_replies


def parse_host_name(reply: Any) -> str | None:
    """The host name in a guest-get-host-name reply (`{"host-name": str}`; qemu-ga gives
    gethostname(2), the name the CloudWatch Agent's telegraf reads with os.Hostname, or
    "localhost" when that fails). Guest input: None unless it is 1 to HOST_NAME_MAX printable
    characters, not all blanks; non-ASCII ones are escaped as Python does (`wéb` -> `w\\xe9b`),
    as for every guest-supplied dimension value, since CloudWatch takes ASCII only."""
    name = reply.get("host-name") if isinstance(reply, dict) else None
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= HOST_NAME_MAX
        or not name.isprintable()
        or name.isspace()
    ):
        return None
    if not name.isascii():
        name = name.encode("ascii", "backslashreplace").decode("ascii")[:MAX_DIMENSION_VALUE]
    return name


def parse_vcpu_threads(reply: Any) -> tuple[int, ...]:
    """Host thread ids of the vCPUs from query-cpus-fast (each checked: a positive int)."""
    out = []
    for cpu in reply if isinstance(reply, list) else []:
        tid = cpu.get("thread-id") if isinstance(cpu, dict) else None
        if tid.__class__ is int and 0 < tid < 1 << 31:
            out.append(tid)
    return tuple(out)
