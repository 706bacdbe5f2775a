"""One broken or hostile VM never hurts the others.

- A hostile guest agent (tests/hostile_qga.py, a real unix-socket server) in every scenario,
  next to a healthy VM: the real `hiveagent collect --once` process survives, its peak RSS stays
  bounded (measured with wait4), the healthy VM's metrics are complete, what was thrown away is
  counted by reason, and what was kept is clean.
- A cycle over 40 real protocol peers with a tenth of them hung (SIGSTOP): it ends within the
  deadline and every healthy VM is complete.
- VMs paused, killed, restarted with a new pid, their socket deleted or replaced: no crash, no
  negative or spiking values, a clear status.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from hiveagent.config import parse_config
from hiveagent.model import Datum
from tests.bench import start_peers
from tests.harness import Collection, Harness, Vm
from tests.hostile_qga import SCENARIOS, HostileQga

pytestmark = pytest.mark.vm

HEALTHY_NAMES = {
    "StatusCheckFailed", "StatusCheckFailed_System", "StatusCheckFailed_Instance",
    "CPUUtilization", "CPUStealPercent",
    "EBSReadOps", "EBSWriteOps", "EBSReadBytes", "EBSWriteBytes",
    "VolumeReadOps", "VolumeWriteOps", "VolumeReadBytes", "VolumeWriteBytes",
    "VolumeTotalReadTime", "VolumeTotalWriteTime", "VolumeIdleTime", "VolumeQueueLength",
    "disk_used_percent", "disk_free", "disk_total", "disk_used",
}  # fmt: skip


# The CLI, reporting its own peak RSS at exit. VmHWM belongs to the process's own memory map;
# getrusage/wait4's ru_maxrss would include the RSS of the forking parent (pytest) on Linux.
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            sys.stderr.write(line)
atexit.register(hwm)
sys.argv = ['hiveagent'] + sys.argv[1:]
runpy.run_module('hiveagent', run_name='__main__')
"""


class Pair:
    def __init__(self, h: Harness, healthy: Vm, hostile: Vm, host_qga: Path) -> None:
        self.h, self.healthy, self.hostile, self.host_qga = h, healthy, hostile, host_qga


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with Harness(tmp_path_factory.mktemp("isolation")) as h:
        healthy = h.launch_vm(21, boot_guest=False, volumes=((8, False),))
        hostile = h.launch_vm(22, boot_guest=False, volumes=((8, False),))
        host_qga = h.root / "host-qga.sock"
        h.start_host_qga(host_qga)
        h.write_sidecar(healthy, qga_socket=str(host_qga))
        yield Pair(h, healthy, hostile, host_qga)


def collect(pair: Pair, tmp: Path) -> tuple[int, list[dict[str, Any]], str, float]:
    """`hiveagent collect --once` as a process: (rc, datums, stderr, peak RSS MiB)."""
    cfg = {
        "agent": {"metrics_collection_interval": 10},
        # InstanceId on the in-guest datums (the VMs are told apart by it; without
        # append_dimensions they would carry `host` only, which the hostile agent lacks)
        "metrics": {
            "append_dimensions": {"InstanceId": "${aws:InstanceId}"},
            "metrics_collected": {"disk": {}},
        },
        "hypervisor": {
            "discovery": {"spinifex": {"run_dir": str(pair.h.run_dir)}},
            "qmp": {"timeout_seconds": 2},
            "qga": {"timeout_seconds": 1},
            "state_dir": str(tmp / "state"),
            "limits": {"max_filesystems": 64},
        },
    }
    path = tmp / "agent.json"
    path.write_text(json.dumps(cfg))
    out, err = tmp / "out.json", tmp / "err.log"
    with open(out, "wb") as o, open(err, "wb") as e:
        p = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_WRAPPER, "collect", "--once", "--gap", "0.5",
             "--format", "json", "-c", str(path)],
            cwd=REPO, stdout=o, stderr=e, timeout=120,
        )  # fmt: skip
    text = out.read_text()
    log = err.read_text()
    [hwm] = [ln for ln in log.splitlines() if ln.startswith("VmHWM:")]
    return p.returncode, json.loads(text) if text.strip() else [], log, int(hwm.split()[1]) / 1024


def of(datums: list[dict[str, Any]], vm: Vm) -> list[dict[str, Any]]:
    return [
        d
        for d in datums
        if d["dimensions"].get("InstanceId") == vm.instance_id
        or d["dimensions"].get("VolumeId", "").startswith(vm.volumes[0].volume_id)
    ]


@pytest.fixture(scope="module")
def baseline_rss(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> float:
    pair.h.write_sidecar(pair.hostile, qga_socket=str(pair.host_qga))
    rc, datums, err, rss = collect(pair, tmp_path_factory.mktemp("baseline"))
    assert rc == 0, err
    assert {d["name"] for d in of(datums, pair.hostile)} == HEALTHY_NAMES
    print(f"baseline: peak RSS of collect --once {rss:.1f} MiB")
    return rss


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_hostile_guest_agent(
    pair: Pair, baseline_rss: float, tmp_path: Path, scenario: str
) -> None:
    sock = tmp_path / "hostile.sock"
    server = HostileQga(str(sock), scenario)
    pair.h.write_sidecar(pair.hostile, qga_socket=str(sock))
    try:
        t0 = time.monotonic()
        rc, datums, err, rss = collect(pair, tmp_path)
        took = time.monotonic() - t0
    finally:
        server.close()
    print(
        f"{scenario}: rc {rc}, {took:.1f} s, peak RSS {rss:.1f} MiB (baseline {baseline_rss:.1f})"
    )
    assert rc == 0 and "Traceback" not in err, err
    assert rss < baseline_rss + 40, f"memory grew to {rss:.1f} MiB"
    # The healthy VM is complete and clean.
    healthy = of(datums, pair.healthy)
    assert {d["name"] for d in healthy} == HEALTHY_NAMES
    assert all(d["value"] == 0 for d in healthy if d["name"].startswith("StatusCheck"))
    # What the hostile VM got reported is clean: finite, non-negative, sane dimensions.
    hostile = of(datums, pair.hostile)
    assert {"StatusCheckFailed_System", "CPUUtilization"} <= {d["name"] for d in hostile}
    for d in datums:
        assert math.isfinite(d["value"]) and d["value"] >= 0
        for v in d["dimensions"].values():
            assert 0 < len(v) <= 1024 and v.isprintable()
    disks = [d for d in hostile if d["name"] == "disk_used"]
    stats = err.rsplit("collect: ", 1)[-1]
    if scenario == "capped_filesystems":
        assert len(disks) == 64 and "rejected.fsinfo.over_limit=9872" in stats
    elif scenario == "absurd_values":
        paths = {d["dimensions"]["path"] for d in disks}
        assert paths == {"/fine", "/ctl[31m", "/" + "x" * 1023}
        # Counted over collect's two cycles.
        for reason, n in (
            ("bad_size", 8),
            ("used_over_total", 2),
            ("bad_name", 4),
            ("duplicate_mountpoint", 2),
            ("not_an_object", 4),
        ):
            assert f"rejected.fsinfo.{reason}={n}" in stats, stats
        pct = [d for d in hostile if d["name"] == "disk_used_percent"]
        assert all(0 <= d["value"] <= 100 for d in pct)
    elif scenario == "unsolicited_then_right":
        assert [d["value"] for d in disks] == [1000]
        assert "rejected.qga.stale_reply=" in stats
    elif scenario in (
        "endless_stream",
        "wrong_ids",
        "huge_reply",
        "byte_per_second",
        "invalid_utf8",
        "deep_nesting",
        "many_filesystems",
    ):
        assert disks == []
        assert "collector_errors.guest_disk." in stats


def test_a_tenth_hung_does_not_hold_the_cycle(tmp_path: Path) -> None:
    n, hung = 40, 4
    procs = start_peers(tmp_path, n)
    try:
        config = parse_config({
            "agent": {"metrics_collection_interval": 10},
            "metrics": {"append_dimensions": {"InstanceId": "${aws:InstanceId}"},
                        "metrics_collected": {"disk": {}}},
            "hypervisor": {
                "discovery": {"spinifex": {"run_dir": str(tmp_path / "all")}},
                "qmp": {"timeout_seconds": 1}, "qga": {"timeout_seconds": 1},
                "max_concurrent_vms": 8, "state_dir": str(tmp_path / "state"),
            },
        })  # fmt: skip
        agent = Collection(config)
        primed: dict[str, Counter[str]] = {}

        async def run() -> tuple[list[Datum], float, list[Datum]]:
            await agent.cycle()  # connects, primes, learns guest-info
            # (a loaded machine may time a call out in this cycle already: counted apart)
            primed.update({i: Counter(state.errors) for i, state in agent.vms.items()})
            qemus, gas = procs[0::2], procs[1::2]
            for p in qemus[:hung] + gas[hung : 2 * hung]:  # 4 QEMUs, 4 other VMs' agents
                p.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            datums = await agent.cycle()
            took = time.monotonic() - t0
            again = await agent.cycle()  # the hung guest agents' second miss in a row
            await agent.close()
            return datums, took, again

        datums, took, again = asyncio.run(run())
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:  # a thawed qemu-ga once ignored SIGTERM in CI
                p.kill()
                p.wait(10)
    by_vm: dict[str, set[str]] = {}
    for d in datums:
        by_vm.setdefault(dict(d.dimensions).get("InstanceId", ""), set()).add(d.name)
    ids = sorted(agent.vms)
    print(f"{n} peers, {hung} QEMUs and {hung} guest agents hung: cycle {took:.2f} s")
    # Each hung VM costs one deadline (1 s) in one of the 8 slots; the rest share the others.
    assert took < 3.0
    hung_qmp, hung_qga, healthy = ids[:hung], ids[hung : 2 * hung], ids[2 * hung :]
    for i in hung_qmp:
        assert by_vm[i] == {
            "StatusCheckFailed",
            "StatusCheckFailed_System",
            "StatusCheckFailed_Instance",
        }
        assert agent.vms[i].errors["qmp_timeout"] - primed[i]["qmp_timeout"] == 2
    for i in hung_qga:
        assert "CPUUtilization" in by_vm[i] and "disk_used" not in by_vm[i]
        assert agent.vms[i].errors["qga_timeout"] - primed[i]["qga_timeout"] == 2
    for i in healthy:
        assert {"CPUUtilization", "EBSReadOps", "StatusCheckFailed", "disk_used"} <= by_vm[i]
    values, second = ({
        (d.name, dict(d.dimensions)["InstanceId"]): d.value
        for d in cycle
        if d.name.startswith("StatusCheckFailed")
    } for cycle in (datums, again))  # fmt: skip
    assert all(values[("StatusCheckFailed_System", i)] == 1 for i in hung_qmp)
    # The instance check fails on the second silent cycle in a row, not the first.
    assert all(values[("StatusCheckFailed_Instance", i)] == 0 for i in hung_qga)
    assert all(second[("StatusCheckFailed_Instance", i)] == 1 for i in hung_qga)
    assert all(values[("StatusCheckFailed", i)] == 0 for i in healthy)
    assert all(second[("StatusCheckFailed", i)] == 0 for i in healthy)


def test_paused_killed_restarted_and_missing_vms(tmp_path: Path) -> None:
    with Harness(tmp_path) as h:
        vms = [h.launch_vm(k, boot_guest=False, volumes=((8, False),)) for k in (31, 32, 33, 34)]
        paused, killed, restarted, gone = vms
        config = parse_config({
            "agent": {"metrics_collection_interval": 10},
            "hypervisor": {"discovery": {"spinifex": {"run_dir": str(h.run_dir)}},
                           "qmp": {"timeout_seconds": 1}, "qga": {"enabled": False},
                           "state_dir": str(tmp_path / "state")},
        })  # fmt: skip
        agent = Collection(config)

        def value(datums: list[Datum], name: str, vm: Vm) -> float:
            [v] = [
                d.value
                for d in datums
                if d.name == name and dict(d.dimensions).get("InstanceId") == vm.instance_id
            ]
            return v

        async def run() -> None:
            await agent.cycle()
            await agent.cycle()
            await agent.vms[paused.instance_id].session.qmp.execute("stop")
            killed.process.kill()
            old_pid = restarted.pid
            restarted.process.kill()
            restarted.process.wait()
            restarted.qmp_socket.unlink()  # QEMU leaves its socket file behind
            h.launch_vm(33, boot_guest=False, volumes=((8, False),))
            gone.qmp_socket.unlink()
            gone.qmp_socket.write_text("not a socket")
            await agent.vms[gone.instance_id].session.qmp.close()
            datums = await agent.cycle()
            st = {vm.instance_id: agent.vms[vm.instance_id] for vm in vms}
            assert st[paused.instance_id].session.run_status == "paused"
            assert value(datums, "StatusCheckFailed", paused) == 0
            assert value(datums, "StatusCheckFailed_System", killed) == 1
            assert value(datums, "StatusCheckFailed_System", gone) == 1
            assert "cannot connect" in (st[gone.instance_id].last_error or "")
            assert st[restarted.instance_id].session.pid not in (None, old_pid)
            # The restarted VM's counters re-primed: no deltas across two QEMU processes.
            assert not [
                d
                for d in datums
                if d.name == "CPUUtilization"
                and dict(d.dimensions)["InstanceId"] == restarted.instance_id
            ]
            datums = await agent.cycle()
            cpu = value(datums, "CPUUtilization", restarted)
            assert 0 <= cpu <= 100
            assert all(d.value >= 0 and math.isfinite(d.value) for d in datums)
            assert value(datums, "StatusCheckFailed", restarted) == 0
            await agent.close()

        asyncio.run(run())


def test_list_vms_shows_what_a_guest_agent_lacks(pair: Pair, tmp_path: Path) -> None:
    """A guest agent without guest-get-cpustats & co. (an old qemu-ga, a Windows guest): its
    metrics are skipped for that VM, quietly, and list-vms says which."""
    sock = tmp_path / "old.sock"
    server = HostileQga(str(sock), "unsolicited_then_right")  # advertises 4 commands only
    pair.h.write_sidecar(pair.hostile, qga_socket=str(sock))
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"hypervisor": {
        "discovery": {"spinifex": {"run_dir": str(pair.h.run_dir)}},
        "qga": {"timeout_seconds": 2}, "state_dir": str(tmp_path / "s")}}))  # fmt: skip
    try:
        r = subprocess.run(
            [sys.executable, "-m", "hiveagent", "list-vms", "-c", str(cfg), "--format", "json"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    rows = {row["instance_id"]: row for row in json.loads(r.stdout)}
    old = rows[pair.hostile.instance_id]
    assert old["qga_commands"] == ["guest-get-fsinfo"]
    assert old["qga_missing"] == ["guest-get-cpustats", "guest-get-diskstats",
                                  "guest-network-get-interfaces", "guest-get-vcpus"]  # fmt: skip
    healthy = rows[pair.healthy.instance_id]  # the host's qemu-ga 7.2 has them all
    assert healthy["qga_missing"] == []
