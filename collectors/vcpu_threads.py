"""The VM's vCPU threads, from the host: CPU time and steal.

QMP `query-cpus-fast` names each vCPU's host thread (`thread-id`, read once per QEMU process by
the VM session);
`/proc/<pid>/task/<tid>/schedstat` gives, per thread, nanoseconds spent on a CPU and
nanoseconds spent runnable but waiting for one (run_delay).

- `CPUUtilization` with `hypervisor.ec2.cpu_source: "vcpu_threads"`: the vCPU threads' CPU time
  only (Spinifex's meaning: what the guest itself ran), instead of the whole QEMU process
  (the default, AWS's "including hypervisor" meaning).
- `CPUStealPercent`, always: the vCPUs' waiting time over their capacity in the period. No peer
  reports it; it is the host-side view of a noisy neighbour, the time the guest would see as
  steal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hiveagent.collector import Collector, Emitter, VmView, read_file


@dataclass(frozen=True)
class VcpuSample:
    pid: int
    mono_s: float
    threads: dict[int, tuple[int, int]]  # tid -> (ns on CPU, ns waiting to run)


def parse_schedstat(data: bytes) -> tuple[int, int]:
    """(run ns, run_delay ns) from a schedstat file: "<run> <wait> <timeslices>"."""
    fields = data.split()
    if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
        raise ValueError("schedstat: malformed")
    return int(fields[0]), int(fields[1])


def read_schedstat(proc_root: str, pid: int, tid: int) -> bytes:
    return read_file(f"{proc_root}/{pid}/task/{tid}/schedstat", 256)


def vcpu_values(prev: VcpuSample, cur: VcpuSample) -> dict[str, float] | None:
    """Utilization and steal, percent of the vCPUs' capacity over the period; None when the
    process or its threads changed (re-prime)."""
    if prev.pid != cur.pid or set(prev.threads) != set(cur.threads) or not cur.threads:
        return None
    wall_ns = (cur.mono_s - prev.mono_s) * 1e9
    if wall_ns <= 0:
        return None
    run = wait = 0
    for tid, (r, w) in cur.threads.items():
        pr, pw = prev.threads[tid]
        if r < pr or w < pw:
            return None
        run += r - pr
        wait += w - pw
    capacity = wall_ns * len(cur.threads)
    return {
        "CPUUtilization": min(100.0, 100.0 * run / capacity),
        "CPUStealPercent": min(100.0, 100.0 * wait / capacity),
    }


class VcpuThreads(Collector[VcpuSample]):
    name = "vcpu_threads"

    def enabled(self, config: object) -> bool:
        return bool(getattr(config, "ec2_enabled", True))

    def sample(self, vm: VmView, prev: VcpuSample | None) -> VcpuSample:
        pid = vm.facts.pid
        assert pid is not None
        root = vm.config.proc_root
        threads = {}
        for tid in vm.facts.vcpu_threads:
            threads[tid] = parse_schedstat(read_schedstat(root, pid, tid))
        return VcpuSample(pid, time.monotonic(), threads)

    def emit(self, prev: VcpuSample | None, cur: VcpuSample, vm: VmView, out: Emitter) -> None:
        if prev is None:
            return
        values = vcpu_values(prev, cur)
        if values is None:
            return
        dims = {"InstanceId": vm.spec.instance_id}
        out.emit("CPUStealPercent", values["CPUStealPercent"], dims)
        if vm.config.cpu_source == "vcpu_threads":
            out.emit("CPUUtilization", values["CPUUtilization"], dims)
