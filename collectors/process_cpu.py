"""CPUUtilization from the QEMU process's CPU time (/proc/<pid>/stat utime + stime).

All of QEMU's threads count (vCPUs, emulation, I/O), which is AWS's "physical CPU time incl.
hypervisor" meaning. Utilization = d(cpu seconds) / (d(wall seconds) * vCPUs) * 100, capped at
100: QEMU's own threads can push the process past vcpus * 100%.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from hiveagent.collector import Collector, Emitter, VmView, read_file

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcCpuSample:
    pid: int
    cpu_ticks: int  # utime + stime, in clock ticks (CLK_TCK per second)
    mono_s: float


def read_proc_stat(proc_root: str, pid: int) -> bytes:
    return read_file(f"{proc_root}/{pid}/stat", 4096)


def parse_proc_stat(data: bytes) -> int:
    """utime + stime in ticks. The comm field may hold spaces and parentheses, so split after
    the LAST ')'. Fields after it start at field 3 (state); utime is 14, stime 15."""
    end = data.rfind(b")")
    rest = data[end + 2 :].split() if end >= 0 else []
    if len(rest) < 13 or not (rest[11].isdigit() and rest[12].isdigit()):
        raise ValueError("/proc/<pid>/stat: malformed")
    return int(rest[11]) + int(rest[12])


def cpu_utilization(
    prev: ProcCpuSample, cur: ProcCpuSample, vcpus: int, clk_tck: int = CLK_TCK
) -> float | None:
    """Percent of the VM's vCPU capacity used in the period; None on reset or empty period."""
    if prev.pid != cur.pid or cur.cpu_ticks < prev.cpu_ticks or vcpus < 1:
        return None
    wall = cur.mono_s - prev.mono_s
    if wall <= 0:
        return None
    used = (cur.cpu_ticks - prev.cpu_ticks) / clk_tck
    return min(100.0, 100.0 * used / (wall * vcpus))


class ProcessCpu(Collector[ProcCpuSample]):
    name = "process_cpu"

    def enabled(self, config: object) -> bool:
        # With cpu_source "vcpu_threads", CPUUtilization comes from collectors/vcpu_threads.
        return bool(getattr(config, "ec2_enabled", True)) and (
            getattr(config, "cpu_source", "process") == "process"
        )

    def sample(self, vm: VmView, prev: ProcCpuSample | None) -> ProcCpuSample:
        pid = vm.facts.pid
        assert pid is not None
        data = read_proc_stat(vm.config.proc_root, pid)
        return ProcCpuSample(pid, parse_proc_stat(data), time.monotonic())

    def emit(
        self, prev: ProcCpuSample | None, cur: ProcCpuSample, vm: VmView, out: Emitter
    ) -> None:
        vcpus = vm.facts.vcpus
        if prev is None or not vcpus:
            return
        value = cpu_utilization(prev, cur, vcpus)
        if value is not None:
            out.emit("CPUUtilization", value, {"InstanceId": vm.spec.instance_id})
