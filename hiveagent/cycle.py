"""What a cycle yields. Per VM, between the VM session (which asks) and the collectors (which
read): the facts the session knows about the VM and the replies to what was asked; the session
fills these from the plan the scheduler gives it and knows no collector, a collector reads them
and asks nothing itself. Per cycle, between the scheduler and the pipeline: every VM's raw
datums and the VMs gone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hiveagent.model import Datum, VmSpec

# A QMP command with its arguments, hashable: (command, sorted argument items).
QmpCall = tuple[str, tuple[tuple[str, Any], ...]]


def qmp_key(command: str, arguments: Mapping[str, Any] | None = None) -> QmpCall:
    return command, tuple(sorted((arguments or {}).items()))


class NotAsked(LookupError):
    """A collector read a reply it did not declare among its wants (a bug in the collector)."""


class VmFacts(NamedTuple):
    """What the VM session knows about one VM in this cycle (a named tuple: several are made
    per VM and cycle)."""

    pid: int | None = None  # QEMU's pid (SO_PEERCRED); None when QMP is down this cycle
    qmp_error: str | None = None  # why QMP counts as unreachable this cycle
    run_status: str | None = None  # query-status `status`, as last read
    vcpus: int | None = None  # the VM's vCPUs (sidecar, else query-cpus-fast)
    vcpu_threads: tuple[int, ...] = ()  # host thread ids of the vCPUs (query-cpus-fast)
    balloon: str | None = None  # QOM path of the virtio-balloon, when the VM has one
    qga_connected: bool = False  # the guest agent answered this cycle's exchange
    qga_commands: frozenset[str] = frozenset()  # enabled in the guest agent (when connected)
    qga_expected: bool = False  # the guest agent should answer (seen, or its port is open)
    qga_error: str | None = None  # why the guest agent exchange failed this cycle
    qga_misses: int = 0  # consecutive cycles it was expected and did not answer
    balloon_poll_s: int | None = None  # the balloon's guest-stats polling interval, s
    # The guest's host name (guest-get-host-name), as last learnt; None: never learnt for this
    # QEMU process. In-guest datums carry it as the CloudWatch Agent's `host` dimension.
    host_name: str | None = None


@dataclass
class Replies:
    """This cycle's replies, each the value or the error it failed with (QmpError, QgaError)."""

    qmp: dict[QmpCall, Any] = field(default_factory=dict)
    qga: dict[str, Any] = field(default_factory=dict)
    # time.monotonic() when the QMP replies, and the guest agent replies, came back: the time
    # a counter read through them belongs to (not when a collector gets to it)
    qmp_at: float = 0.0
    qga_at: float = 0.0


@dataclass(frozen=True)
class VmCycle:
    """One VM's raw datums of one cycle."""

    spec: VmSpec
    datums: list[Datum]


@dataclass(frozen=True)
class Cycle:
    """One collection over every VM: the VMs' raw datums, and the VMs gone since the last."""

    vms: list[VmCycle]
    gone: list[str]
