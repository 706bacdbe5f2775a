"""StatusCheckFailed, _System and _Instance: 0 or 1 every cycle, in both monitoring tiers, for a
VM that runs. AWS runs status checks on running instances only: a stopped one reports none. So
a VM whose guest is off (`shutdown`: powered off with QEMU kept, `-no-shutdown`), not started
yet (`prelaunch`, `inmigrate`) or moved away (`postmigrate`) reports no status checks at all;
paused is running for this purpose (a paused VM passes).

_System: QMP unreachable (connect or command failed) or QEMU in `internal-error` / `io-error`.
_Instance: the guest panicked (`guest-panicked`), or its guest agent is expected (it answered
before during this QEMU process's life, remembered across agent restarts in state_dir, or QEMU
says the guest holds its port open) but has been silent, or closed its port, for two
consecutive cycles.
StatusCheckFailed: either of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from hiveagent.collector import Collector, Emitter, VmView

SYSTEM_FAILED_STATES = frozenset({"internal-error", "io-error"})
NOT_RUNNING_STATES = frozenset({"shutdown", "prelaunch", "inmigrate", "postmigrate"})
INSTANCE_FAILED_STATES = frozenset({"guest-panicked"})


# The guest agent must miss this many consecutive cycles before the instance check fails: one
# missed exchange (a busy guest, a slow reply) is not a hung guest.
QGA_MISSES_TO_FAIL = 2


@dataclass(frozen=True)
class StatusSample:
    qmp_ok: bool
    run_status: str | None
    qga_expected: bool
    qga_ok: bool
    qga_misses: int = 0  # consecutive cycles expected and silent, this one included


def status_checks(s: StatusSample) -> tuple[int, int] | None:
    """(system_failed, instance_failed), each 0 or 1; None when the instance does not run
    (no status checks, as for a stopped EC2 instance)."""
    if s.qmp_ok and s.run_status in NOT_RUNNING_STATES:
        return None
    system = int(not s.qmp_ok or s.run_status in SYSTEM_FAILED_STATES)
    silent = s.qga_expected and not s.qga_ok and s.qga_misses >= QGA_MISSES_TO_FAIL
    instance = int(s.qmp_ok and (s.run_status in INSTANCE_FAILED_STATES or silent))
    return system, instance


class Status(Collector[StatusSample]):
    name = "status"
    needs_qmp = False
    deltas = False  # read whole each cycle

    def enabled(self, config: object) -> bool:
        return bool(getattr(config, "ec2_enabled", True))

    def sample(self, vm: VmView, prev: StatusSample | None) -> StatusSample:
        facts = vm.facts
        return StatusSample(
            qmp_ok=facts.qmp_error is None,
            run_status=facts.run_status,
            qga_expected=facts.qga_expected,
            qga_ok=facts.qga_connected,
            qga_misses=facts.qga_misses,
        )

    def emit(self, prev: StatusSample | None, cur: StatusSample, vm: VmView, out: Emitter) -> None:
        checks = status_checks(cur)
        if checks is None:
            return
        system, instance = checks
        values = {
            "StatusCheckFailed_System": system,
            "StatusCheckFailed_Instance": instance,
            "StatusCheckFailed": max(system, instance),
        }
        out.emit_all(values, {"InstanceId": vm.spec.instance_id})
