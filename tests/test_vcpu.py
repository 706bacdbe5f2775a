"""vCPU threads: CPU time and steal from schedstat, against a real QEMU."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collectors.vcpu_threads import VcpuSample, parse_schedstat, vcpu_values
from hiveagent.config import parse_config
from hiveagent.model import Datum
from tests.harness import Collection, Harness


def test_vcpu_values() -> None:
    prev = VcpuSample(7, 100.0, {11: (1_000, 500), 12: (2_000, 0)})
    cur = VcpuSample(7, 102.0, {11: (1_000 + 1_500_000_000, 500 + 200_000_000), 12: (2_000, 0)})
    v = vcpu_values(prev, cur)
    assert v == {"CPUUtilization": pytest.approx(37.5), "CPUStealPercent": pytest.approx(5.0)}  # type: ignore[comparison-overlap]
    assert vcpu_values(prev, VcpuSample(8, 102.0, cur.threads)) is None  # new QEMU process
    assert vcpu_values(cur, prev) is None  # backwards
    assert parse_schedstat(b"824376381 300324062 1960\n") == (824376381, 300324062)
    with pytest.raises(ValueError):
        parse_schedstat(b"-1 x")


@pytest.mark.vm
def test_vcpu_threads_of_a_real_qemu(tmp_path: Path) -> None:
    with Harness(tmp_path) as h:
        vm = h.launch_vm(41, boot_guest=False, volumes=((8, False),), vcpus=2)
        config = parse_config({
            "agent": {"metrics_collection_interval": 10},
            "hypervisor": {"discovery": {"spinifex": {"run_dir": str(h.run_dir)}},
                           "ec2": {"cpu_source": "vcpu_threads"}, "qga": {"enabled": False},
                           "state_dir": str(tmp_path / "state")},
        })  # fmt: skip
        agent = Collection(config)

        async def run() -> list[list[Datum]]:
            out = []
            for _ in range(3):
                out.append(await agent.cycle())
                await asyncio.sleep(0.5)
            await agent.close()
            return out

        cycles = asyncio.run(run())
        # The thread ids QMP gave are the kernel's vCPU threads ("CPU n/TCG" with
        # debug-threads=on).
        rt = agent.vms[vm.instance_id]
        tids = rt.session.vcpu_threads
        comms = {
            int(p.name): (p / "comm").read_text().strip()
            for p in Path(f"/proc/{vm.pid}/task").iterdir()
        }
        assert tids and len(tids) == 2
        assert all(comms[t].startswith("CPU ") for t in tids)
    last = {d.name: d.value for d in cycles[-1]}
    assert 0 <= last["CPUUtilization"] <= 100 and 0 <= last["CPUStealPercent"] <= 100
    assert not [d for d in cycles[0] if d.name == "CPUUtilization"]  # first sample primes
