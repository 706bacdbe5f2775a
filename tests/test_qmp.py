"""QMP access and the agent's per-VM cycle against real guest-less qemu-system-x86_64 processes."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from qemu.qmp import QMPClient

from hiveagent.config import parse_config
from hiveagent.qmp import QmpCommandError, QmpError, QmpSession, QmpTimeout
from hiveagent.qom import find_guest_agent_chardev
from hiveagent.vm import STATUS_REFRESH_CYCLES
from tests.harness import Collection


@pytest.fixture(scope="module")
def bare_vm(harness: Any) -> Any:
    return harness.launch_vm(50, boot_guest=False, sidecar=False, volumes=((8, False),))


def agent_for(harness: Any, **hyper: Any) -> Collection:
    cfg = {
        "agent": {"metrics_collection_interval": 5},
        "metrics": {"metrics_collected": {"disk": {}}},
        "hypervisor": {
            "discovery": {"spinifex": {"run_dir": str(harness.run_dir)}},
            "qmp": {"timeout_seconds": 2},
            "qga": {"timeout_seconds": 1},
            **hyper,
        },
    }
    return Collection(parse_config(cfg))


def test_pid_from_so_peercred_and_guest_agent_port(bare_vm: Any) -> None:
    async def go() -> tuple[int | None, Any, Any]:
        s = QmpSession(str(bare_vm.qmp_socket), timeout=3)
        await s.connect()
        try:
            return s.pid, await find_guest_agent_chardev(s), await s.execute("query-chardev")
        finally:
            await s.close()

    pid, chardev, chardevs = asyncio.run(go())
    assert pid == bare_vm.pid
    assert chardev == "qga0"
    [qga] = [c for c in chardevs if c["label"] == "qga0"]
    assert qga["frontend-open"] is False  # no guest OS, so no qemu-ga


def test_second_client_times_out_within_deadline(bare_vm: Any) -> None:
    """A QMP socket serves one client: the second gets no greeting and must not hang."""

    async def go() -> float:
        first = QmpSession(str(bare_vm.qmp_socket), timeout=3)
        await first.connect()
        try:
            second = QmpSession(str(bare_vm.qmp_socket), timeout=0.5)
            loop = asyncio.get_running_loop()
            t = loop.time()
            with pytest.raises(QmpTimeout):
                await second.connect()
            return loop.time() - t
        finally:
            await first.close()

    assert asyncio.run(go()) < 1.5


def test_command_error_keeps_class_and_description(bare_vm: Any) -> None:
    async def go() -> None:
        s = QmpSession(str(bare_vm.qmp_socket), timeout=3)
        await s.connect()
        try:
            with pytest.raises(QmpCommandError) as info:
                await s.execute("qom-list", {"path": "/machine/no-such-container"})
            assert info.value.error_class == "DeviceNotFound"
            assert "no-such-container" in str(info.value)
            assert s.connected  # a command error keeps the connection
        finally:
            await s.close()

    asyncio.run(go())


def test_missing_socket_is_a_clear_error(tmp_path: Any) -> None:
    async def go() -> None:
        await QmpSession(str(tmp_path / "nope.sock"), timeout=1).connect()

    with pytest.raises(QmpError, match="cannot connect"):
        asyncio.run(go())


def test_cycle_on_guestless_vm_and_after_kill(harness: Any) -> None:
    """Status checks pass on a healthy guest-less VM; the guest agent is 'not running'; after
    QEMU is killed the system check fails and nothing else is emitted for it."""
    vm = harness.launch_vm(51, boot_guest=False, volumes=((8, False),))
    agent = agent_for(harness)

    async def cycles() -> tuple[list[Any], list[Any], list[Any]]:
        try:
            first = await agent.cycle()
            await asyncio.sleep(1.0)
            second = await agent.cycle()
            vm.process.kill()
            vm.process.wait()
            third = await agent.cycle()
            return first, second, third
        finally:
            await agent.close()

    first, second, third = asyncio.run(cycles())

    def mine(ds: list[Any]) -> dict[str, Any]:
        return {d.name: d for d in ds if dict(d.dimensions).get("InstanceId") == vm.instance_id}

    assert agent.vms[vm.instance_id].session.qga_state == "not running in guest"
    assert set(mine(first)) == {
        "StatusCheckFailed",
        "StatusCheckFailed_System",
        "StatusCheckFailed_Instance",
    }
    two = mine(second)
    assert two["StatusCheckFailed"].value == 0 and two["StatusCheckFailed_System"].value == 0
    assert 0 <= two["CPUUtilization"].value <= 100
    assert two["EBSWriteOps"].value == 0 and two["EBSWriteOps"].unit == "Count"
    assert not [n for n in two if n.startswith("Disk")]  # a Spinifex VM has no instance store
    vol = [d for d in second if d.dimensions == (("VolumeId", vm.volumes[0].volume_id),)]
    assert {d.name for d in vol} >= {"VolumeReadOps", "VolumeWriteBytes", "VolumeQueueLength"}
    three = mine(third)
    assert three["StatusCheckFailed_System"].value == 1 and three["StatusCheckFailed"].value == 1
    assert set(three) == {
        "StatusCheckFailed",
        "StatusCheckFailed_System",
        "StatusCheckFailed_Instance",
    }


def test_restarted_qemu_primes_again_no_spike(harness: Any) -> None:
    """A new QEMU process behind the same socket (new pid, counters from zero) re-primes."""
    vm = harness.launch_vm(52, boot_guest=False, volumes=((8, False),))
    agent = agent_for(harness)

    async def go() -> list[Any]:
        try:
            await agent.cycle()
            vm.process.kill()
            vm.process.wait()
            vm.qmp_socket.unlink()
            harness.launch_vm(52, boot_guest=False, volumes=((8, False),))
            return await agent.cycle()
        finally:
            await agent.close()

    after = asyncio.run(go())
    names = {d.name for d in after if dict(d.dimensions).get("InstanceId") == vm.instance_id}
    assert "CPUUtilization" not in names and "EBSReadOps" not in names  # primed, not a delta
    assert "StatusCheckFailed" in names


def test_vm_socket_held_by_another_client_does_not_delay_others(harness: Any) -> None:
    vm_a = harness.launch_vm(53, boot_guest=False, volumes=((8, False),))
    vm_b = harness.launch_vm(54, boot_guest=False, volumes=((8, False),))
    agent = agent_for(harness, qmp={"timeout_seconds": 1.0})
    hog = socket.socket(socket.AF_UNIX)
    hog.connect(str(vm_a.qmp_socket))  # holds A's only QMP slot

    async def go() -> list[Any]:
        try:
            return await agent.cycle()
        finally:
            await agent.close()

    try:
        datums = asyncio.run(go())
    finally:
        hog.close()
    by_vm = {(dict(d.dimensions).get("InstanceId"), d.name): d.value for d in datums}
    assert by_vm[(vm_a.instance_id, "StatusCheckFailed_System")] == 1
    assert by_vm[(vm_b.instance_id, "StatusCheckFailed_System")] == 0
    assert agent.scheduler.last_cycle_s < 3.0


def test_run_status_follows_qemu_events(harness: Any) -> None:
    """query-status is asked on the first cycle, then again only after QEMU sent an event (here
    STOP and RESUME, caused through the cloud's own monitor) or after STATUS_REFRESH_CYCLES
    cycles; the events are counted, not kept."""
    vm = harness.launch_vm(55, boot_guest=False, volumes=((8, False),), control=True)
    agent = agent_for(harness)

    async def go() -> None:
        control = QMPClient("control-plane")
        await control.connect(str(vm.control_socket))
        try:
            await agent.cycle()
            rt = agent.vms[vm.instance_id]
            assert (rt.session.run_status, rt.session.status_cycle) == ("running", 0)
            for _ in range(2):
                await agent.cycle()
            assert rt.session.status_cycle == 0  # nothing happened: not asked again

            async def event_arrives(command: str) -> None:
                mark = rt.session.qmp.event_mark
                await control.execute(command)
                for _ in range(100):
                    if rt.session.qmp.event_mark != mark:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"no QMP event on the telemetry socket after {command}")

            await event_arrives("stop")
            datums = await agent.cycle()
            assert (rt.session.run_status, rt.session.status_cycle) == ("paused", 3)
            mine = {
                d.name: d.value for d in datums if ("InstanceId", vm.instance_id) in d.dimensions
            }
            assert mine["StatusCheckFailed"] == 0  # paused is not a failure
            await event_arrives("cont")
            await agent.cycle()
            assert (rt.session.run_status, rt.session.status_cycle) == ("running", 4)
            while rt.cycles < 4 + STATUS_REFRESH_CYCLES:
                await agent.cycle()
            assert rt.session.status_cycle == 4
            await agent.cycle()
            assert rt.session.status_cycle == 4 + STATUS_REFRESH_CYCLES  # asked anyway
            client = rt.session.qmp._client
            assert client is not None and client.events_seen == 2
            assert client.events.history == () and client.events.empty()  # nothing kept
        finally:
            await control.disconnect()
            await agent.close()

    asyncio.run(go())


def test_a_gap_is_not_reported_as_one_period(harness: Any) -> None:
    """A datum is one period's value (60 s for detailed EC2/EBS metrics). After a 600 s gap
    (QMP or the guest agent down, a collector failing), the next delta spans ten periods: it
    must start the counters again, counted, instead of landing as one VolumeIdleTime of 600 or
    one period's DiskWriteBytes. The scheduler's clock is driven by the test; the VM is a real
    guest-less QEMU."""
    vm = harness.launch_vm(53, boot_guest=False, volumes=((8, False),))
    cfg = {
        "agent": {"metrics_collection_interval": 60},
        "hypervisor": {
            "discovery": {"spinifex": {"run_dir": str(harness.run_dir)}},
            "qga": {"enabled": False},
        },
    }
    now = [1000.0]
    agent = Collection(parse_config(cfg))
    agent.scheduler.clock = lambda: now[0]

    def volume_datums(datums: list[Any]) -> list[str]:
        vol = vm.volumes[0].volume_id
        return sorted(d.name for d in datums if ("VolumeId", vol) in d.dimensions)

    async def go() -> list[list[str]]:
        out = []
        try:
            for t in (1000.0, 1060.0, 1660.0, 1720.0):  # prime, a period, a gap, a period
                now[0] = t
                out.append(volume_datums(await agent.cycle()))
        finally:
            await agent.close()
        return out

    primed, period, after_gap, next_period = asyncio.run(go())
    assert primed == [] and after_gap == []
    assert "VolumeIdleTime" in period and period == next_period
    state = agent.vms[vm.instance_id]
    assert state.errors["gap.blockstats"] == 1 and state.errors["gap.process_cpu"] == 1
    assert agent.scheduler.stats["reprimed_after_gap"] >= 2


def test_an_outage_and_the_cycles_after_it(harness: Any) -> None:
    """A real outage: the VM's QEMU is stopped (SIGSTOP: its QMP socket accepts but never
    answers) for several periods, then continued. The cycles during it time out and send no
    deltas; the first cycle after it re-primes the counters (a gap longer than 1.5 periods);
    the one after that reports one period again. AWS's definition of VolumeIdleTime: 'the total
    number of seconds in a specified period of time when no read or write operations were
    submitted', so for this guest-less (never busy) VM it is the period itself, never the
    outage: every VolumeIdleTime datum must be at most the period (plus the tick's jitter)."""
    import os
    import signal
    import time

    interval = 2
    vm = harness.launch_vm(57, boot_guest=False, volumes=((8, False),))
    cfg = {
        "agent": {"metrics_collection_interval": interval},
        "hypervisor": {
            "discovery": {"spinifex": {"run_dir": str(harness.run_dir)}},
            "qga": {"enabled": False},
            "qmp": {"timeout_seconds": 0.5},
        },
    }
    agent = Collection(parse_config(cfg))
    vol = vm.volumes[0].volume_id

    def idle(datums: list[Any]) -> list[float]:
        return [
            d.value
            for d in datums
            if d.name == "VolumeIdleTime" and ("VolumeId", vol) in d.dimensions
        ]

    async def go() -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
        async def cycles(n: int) -> list[list[float]]:
            out = []
            for _ in range(n):
                t = time.monotonic()
                out.append(idle(await agent.cycle()))
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))
            return out

        try:
            before = await cycles(2)
            while len(before) < 10 and not (before[-1] and before[-2]):  # a slow start
                before += await cycles(1)
            os.kill(vm.pid, signal.SIGSTOP)
            try:
                during = await cycles(4)  # 8 s: four periods
            finally:
                os.kill(vm.pid, signal.SIGCONT)
            after = await cycles(4)
        finally:
            await agent.close()
        return before, during, after

    before, during, after = asyncio.run(go())
    print("VolumeIdleTime per cycle:", before, during, after)
    assert before[0] == [] and before[-1] and before[-2]  # primed, then a period each
    assert all(c == [] for c in during)  # QMP does not answer: nothing is made up
    assert after[0] == []  # the recovery cycle: re-primed, the outage is not one period
    assert any(after[1:])
    for value in [v for c in before + after for v in c]:
        assert 0 < value <= interval * 1.5  # one period, never the 8 s outage
    state = agent.vms[vm.instance_id]
    assert state.errors["gap.blockstats"] == 1


def test_ec2_and_ebs_deltas_are_stamped_at_the_start_of_their_period(harness: Any) -> None:
    """AWS stamps an EC2 or EBS datapoint with the start of the period it covers (the 12:00
    datapoint of a 1-minute period holds 12:00-12:01). A cycle at the boundary T sends the
    deltas since the previous cycle (T - 60 to T) stamped T - 60; a gauge read whole at T
    (the status checks) keeps T."""
    import time

    vm = harness.launch_vm(58, boot_guest=False, volumes=((8, False),))
    cfg = {
        "agent": {"metrics_collection_interval": 60},
        "hypervisor": {
            "discovery": {"spinifex": {"run_dir": str(harness.run_dir)}},
            "qga": {"enabled": False},
        },
    }
    agent = Collection(parse_config(cfg))

    async def go() -> tuple[float, list[Any]]:
        try:
            while time.time() % 60 > 55:  # both cycles in one minute
                await asyncio.sleep(1)
            await agent.cycle()
            datums = await agent.cycle()
            return time.time(), datums
        finally:
            await agent.close()

    now, datums = asyncio.run(go())
    mine = {d.name: d for d in datums if ("InstanceId", vm.instance_id) in d.dimensions}
    vol = vm.volumes[0].volume_id
    idle = [d for d in datums if d.name == "VolumeIdleTime" and ("VolumeId", vol) in d.dimensions]
    t = now // 60 * 60  # the cycle's period stamp
    assert [d.timestamp for d in idle] == [t - 60]
    assert mine["CPUUtilization"].timestamp == t - 60
    assert mine["StatusCheckFailed"].timestamp == t
