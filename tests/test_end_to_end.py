"""Real guest VM -> hiveagent daemon -> moto's CloudWatch server -> GetMetricData.

The guest is the project's test image under QEMU (KVM when it boots here, else TCG). Known
workloads run inside it through its guest agent; the values read back from the endpoint must
match them exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import REPO

from hiveagent.catalog import CATALOG, Family
from hiveagent.config import catalog_measurements
from hiveagent.wire import make_client
from tests.harness import guest_exec

pytestmark = pytest.mark.vm

SCRATCH_WRITE = (
    "dd if=/dev/zero of=/dev/vdb bs=4096 count=256 oflag=direct 2>/dev/null"
    # and 128 direct reads of 4 KiB from the same scratch disk
    " && dd if=/dev/vdb of=/dev/null bs=4096 count=128 iflag=direct 2>/dev/null"
)
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def run_result(
    harness: Any, moto_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    endpoint = next(f for f in harness.fronts.values() if f.url == moto_url)
    refused_before, accepted_before = len(endpoint.refusals), len(endpoint.accepted)
    vm = harness.launch_vm(1, boot_guest=True, tap=ROOT)
    harness.wait_guest_agent(vm)
    rc, out = asyncio.run(
        guest_exec(
            vm.qga_socket,
            "dd if=/dev/zero of=/mnt/data/known bs=1M count=3 2>/dev/null && sync"
            " && df -B1 /mnt/data | tail -1",
        )
    )
    assert rc == 0, out
    _fs, _blocks, used, avail, *_ = out.split()
    rc, meminfo = asyncio.run(guest_exec(vm.qga_socket, "grep MemTotal /proc/meminfo"))
    assert rc == 0, meminfo
    mem_total = int(meminfo.split()[1]) * 1024
    cfg_path = tmp_path_factory.mktemp("e2e") / "agent.json"
    cfg = json.loads((REPO / "agent.json").read_text())
    cfg["agent"]["metrics_collection_interval"] = 2
    cfg["metrics"]["force_flush_interval"] = 2
    cfg["metrics"]["endpoint_override"] = moto_url
    # cpu time_* go only when named (collect_cpu_time): name every cpu row, so all land.
    cfg["metrics"]["metrics_collected"]["cpu"]["measurement"] = list(catalog_measurements("cpu"))
    cfg["hypervisor"]["discovery"]["spinifex"]["run_dir"] = str(harness.run_dir)
    cfg["hypervisor"]["state_dir"] = str(cfg_path.parent / "state")
    cfg["hypervisor"]["status_server"] = {"port": 0}
    cfg_path.write_text(json.dumps(cfg))
    t0 = time.time()
    agent = subprocess.Popen(
        [sys.executable, "-m", "hiveagent", "run", "-c", str(cfg_path), "--cycles", "12"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(5)  # at least two cycles: counters primed
    t_burn = time.time()
    rc, out = asyncio.run(
        guest_exec(
            vm.qga_socket,
            SCRATCH_WRITE
            + (
                " && arping -c 3 -w 5 -I eth0 169.254.77.77 >/dev/null 2>&1; true"
                if vm.taps
                else ""
            )
            # A CPU burn on one vCPU for 5 s, longer than two 2 s periods.
            + "; timeout 5 dd if=/dev/zero of=/dev/null bs=64k; echo burn $?",
        )
    )
    assert rc == 0 and "burn" in out, out
    burn = (t_burn, time.time(), out)
    log, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, log
    return {
        "vm": vm,
        "t0": t0,
        "t1": time.time(),
        "used": int(used),
        "mem_total": mem_total,
        "burn": burn,
        "avail": int(avail),
        "client": make_client("us-east-1", moto_url),
        "log": log,
        "refused": endpoint.refusals[refused_before:],
        "accepted": endpoint.accepted[accepted_before:],
    }


def test_the_strict_endpoint_refused_nothing(run_result: dict[str, Any]) -> None:
    """Every request went through the strict endpoint (AWS's PutMetricData rules) before moto."""
    assert run_result["refused"] == []
    assert len(run_result["accepted"]) > 100


def fetch(
    r: dict[str, Any], namespace: str, name: str, dims: dict[str, str], unit: str, stat: str = "Sum"
) -> list[tuple[datetime, float]]:
    reply = r["client"].get_metric_data(
        MetricDataQueries=[
            {
                "Id": "q",
                "MetricStat": {
                    "Metric": {
                        "Namespace": namespace,
                        "MetricName": name,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
                    },
                    "Period": 60,
                    "Stat": stat,
                    "Unit": unit,
                },
            }
        ],
        StartTime=datetime.now(UTC) - timedelta(minutes=30),
        EndTime=datetime.now(UTC) + timedelta(minutes=5),
    )
    [result] = reply["MetricDataResults"]
    return list(zip(result["Timestamps"], result["Values"], strict=True))


def total(points: list[tuple[datetime, float]]) -> float:
    return sum(v for _, v in points)


def test_volume_write_matches_known_workload(run_result: dict[str, Any]) -> None:
    vm = run_result["vm"]
    scratch = {"VolumeId": vm.volumes[1].volume_id}
    assert total(fetch(run_result, "Hive/EBS", "VolumeWriteBytes", scratch, "Bytes")) == 1024 * 1024
    assert total(fetch(run_result, "Hive/EBS", "VolumeWriteOps", scratch, "Count")) == 256
    assert total(fetch(run_result, "Hive/EBS", "VolumeReadOps", scratch, "Count")) == 128
    assert total(fetch(run_result, "Hive/EBS", "VolumeReadBytes", scratch, "Bytes")) == 128 * 4096
    assert total(fetch(run_result, "Hive/EBS", "VolumeTotalWriteTime", scratch, "Seconds")) > 0
    queue = fetch(run_result, "Hive/EBS", "VolumeQueueLength", scratch, "Count", "Maximum")
    assert queue and 0 < max(v for _, v in queue) < 64


def test_volume_idle_time_from_the_guest(run_result: dict[str, Any]) -> None:
    """With the guest disk behind the volume known (PCI address), VolumeIdleTime in a period
    with I/O is the period minus the guest's busy time for that disk: idle + busy = period."""
    vm = run_result["vm"]
    scratch = {"VolumeId": vm.volumes[1].volume_id}
    idle = total(fetch(run_result, "Hive/EBS", "VolumeIdleTime", scratch, "Seconds"))
    n = total(fetch(run_result, "Hive/EBS", "VolumeIdleTime", scratch, "Seconds", "SampleCount"))
    busy_ms = total(
        fetch(run_result, "CWAgent", "diskio_io_time",
              {"InstanceId": vm.instance_id, "name": "vdb"}, "Milliseconds")
    )  # fmt: skip
    assert busy_ms > 0
    # Periods are at least the 2 s interval (longer when a TCG cycle overran a tick), and
    # together no longer than the run: idle + busy is their sum.
    assert 2.0 * n * 0.95 <= idle + busy_ms / 1000 <= run_result["t1"] - run_result["t0"]
    lowest = fetch(run_result, "Hive/EBS", "VolumeIdleTime", scratch, "Seconds", "Minimum")
    assert min(v for _, v in lowest) < 2.0


def test_instance_ebs_sums_equal_volume_sums(run_result: dict[str, Any]) -> None:
    """On Nitro, AWS reports an instance's EBS I/O as EBS* (summed over its volumes) and Disk*
    for instance store only: a Spinifex VM's disks are all volumes."""
    vm = run_result["vm"]
    inst = {"InstanceId": vm.instance_id}
    disk = total(fetch(run_result, "Hive/EC2", "EBSWriteBytes", inst, "Bytes"))
    volumes = sum(
        total(fetch(run_result, "Hive/EBS", "VolumeWriteBytes", {"VolumeId": v.volume_id}, "Bytes"))
        for v in vm.volumes
    )
    assert disk == volumes >= 1024 * 1024
    assert total(fetch(run_result, "Hive/EC2", "EBSWriteOps", inst, "Count")) >= 256
    assert not fetch(run_result, "Hive/EC2", "DiskWriteBytes", inst, "Bytes")


def test_guest_filesystem_matches_guest_df(run_result: dict[str, Any]) -> None:
    vm = run_result["vm"]
    dims = {"InstanceId": vm.instance_id, "device": "vda", "fstype": "ext4", "path": "/mnt/data"}
    used = fetch(run_result, "CWAgent", "disk_used", dims, "Bytes", "Maximum")
    free = fetch(run_result, "CWAgent", "disk_free", dims, "Bytes", "Minimum")
    pct = fetch(run_result, "CWAgent", "disk_used_percent", dims, "Percent", "Maximum")
    assert max(v for _, v in used) == run_result["used"]
    assert run_result["used"] >= 3 * 1024 * 1024  # the 3 MiB file is in it
    assert min(v for _, v in free) == run_result["avail"]
    expected = 100 * run_result["used"] / (run_result["used"] + run_result["avail"])
    assert max(v for _, v in pct) == pytest.approx(expected)


def test_status_cpu_and_timestamps(run_result: dict[str, Any]) -> None:
    vm = run_result["vm"]
    inst = {"InstanceId": vm.instance_id}
    system = fetch(run_result, "Hive/EC2", "StatusCheckFailed_System", inst, "Count", "Maximum")
    assert system and max(v for _, v in system) == 0
    samples = fetch(run_result, "Hive/EC2", "StatusCheckFailed", inst, "Count", "SampleCount")
    # One per cycle; a request the agent timed out on and sent again may have been taken
    # the first time too (at-least-once), which its log says ("... datum(s) kept").
    resent = run_result["log"].count("datum(s) kept")
    assert 12 <= total(samples) <= 12 + resent, run_result["log"][-2000:]
    cpu = fetch(run_result, "Hive/EC2", "CPUUtilization", inst, "Percent", "Average")
    assert cpu and all(0 < v <= 100 for _, v in cpu)
    lo = datetime.fromtimestamp(run_result["t0"], UTC) - timedelta(seconds=60)
    hi = datetime.fromtimestamp(run_result["t1"], UTC)
    for ts, _ in cpu + samples:
        assert lo <= ts <= hi


@pytest.mark.skipif(not ROOT, reason="tap devices need root")
def test_network_from_tap(run_result: dict[str, Any]) -> None:
    vm = run_result["vm"]
    inst = {"InstanceId": vm.instance_id}
    assert (
        total(fetch(run_result, "Hive/EC2", "NetworkPacketsOut", inst, "Count")) >= 3
    )  # 3 ARP requests
    assert total(fetch(run_result, "Hive/EC2", "NetworkOut", inst, "Bytes")) >= 3 * 42
    assert total(fetch(run_result, "Hive/EC2", "NetworkIn", inst, "Bytes")) == 0  # isolated link


@pytest.mark.skipif(not ROOT, reason="every catalog row needs a tap")
def test_catalog_both_ways(run_result: dict[str, Any]) -> None:
    """Every metric that landed is in the catalog (with its unit checked above by the Unit
    filter), and every catalog row landed for this VM."""
    client = run_result["client"]
    landed = set()
    # This agent's namespaces (other tests of the session put their own metrics in moto).
    pages = [
        page
        for namespace in ("Hive/EC2", "Hive/EBS", "CWAgent", "HiveAgent")
        for page in client.get_paginator("list_metrics").paginate(Namespace=namespace)
    ]
    for page in pages:
        for m in page["Metrics"]:
            dims = {d["Name"]: d["Value"] for d in m["Dimensions"]}
            spec = CATALOG[m["MetricName"]]
            if spec.family is Family.SELF:
                continue
            required = set(spec.dimensions) - set(spec.optional_dimensions)
            allowed = set(spec.dimensions)
            if spec.family is Family.GUEST:
                # agent.json's metrics.append_dimensions adds InstanceId and, being set, takes
                # `host` off (the CloudWatch Agent's ec2tagger): no host, InstanceId always
                allowed = (allowed - {"host"}) | {"InstanceId"}
                assert "InstanceId" in dims, (m["MetricName"], dims)
            assert required <= set(dims) <= allowed
            if dims.get("InstanceId") == run_result["vm"].instance_id or dims.get("VolumeId") in {
                v.volume_id for v in run_result["vm"].volumes
            }:
                landed.add(m["MetricName"])
    # Disk* is instance store only, which a Spinifex VM has none of (its disks are all
    # volumes): those four rows are produced for a generic host's non-volume disk, checked in
    # test_guest_metrics.test_ebs_and_instance_store_sums.
    instance_store = {"DiskReadOps", "DiskWriteOps", "DiskReadBytes", "DiskWriteBytes"}
    assert not landed & instance_store
    expected = {name for name, spec in CATALOG.items() if spec.family is not Family.SELF}
    assert landed == expected - instance_store


def test_guest_diskio_matches_known_workload(run_result: dict[str, Any]) -> None:
    inst = run_result["vm"].instance_id
    dims = {"InstanceId": inst, "name": "vdb"}
    assert total(fetch(run_result, "CWAgent", "diskio_write_bytes", dims, "Bytes")) == 1 << 20
    assert total(fetch(run_result, "CWAgent", "diskio_writes", dims, "Count")) == 256
    assert total(fetch(run_result, "CWAgent", "diskio_write_time", dims, "Milliseconds")) > 0
    assert total(fetch(run_result, "CWAgent", "diskio_reads", dims, "Count")) == 128
    assert total(fetch(run_result, "CWAgent", "diskio_read_bytes", dims, "Bytes")) == 128 * 4096


def test_guest_cpu_sees_the_burn(run_result: dict[str, Any]) -> None:
    """A dd burning one vCPU for 5 s (two whole periods) shows on one CPU, and cpu-total is the
    mean of the two CPUs. The values are the guest's own /proc/stat accounting: under TCG the
    busy vCPU's thread shares a host CPU and the guest counts it about half busy (seen: 51%);
    under KVM it would be about 100%."""
    inst = run_result["vm"].instance_id

    def peak(metric: str, cpu: str) -> float:
        points = fetch(run_result, "CWAgent", metric, {"InstanceId": inst, "cpu": cpu},
                       "Percent", "Maximum")  # fmt: skip
        return max(v for _, v in points)

    busy = max(peak("cpu_usage_active", "cpu0"), peak("cpu_usage_active", "cpu1"))
    assert busy > 40

    # cpu-total is telegraf's aggregate of every CPU's jiffies: each sample about the mean of
    # the two CPUs' (exactly so when both count the same jiffies), whatever the other vCPU did
    # meanwhile (on a loaded host it is not idle). So the minute averages keep that relation,
    # and the peak is at least half the busy CPU's.
    def averages(cpu: str) -> dict[datetime, float]:
        dims = {"InstanceId": inst, "cpu": cpu}
        return dict(fetch(run_result, "CWAgent", "cpu_usage_active", dims, "Percent", "Average"))

    cpu0, cpu1, total = averages("cpu0"), averages("cpu1"), averages("cpu-total")
    minutes = sorted(set(cpu0) & set(cpu1) & set(total))
    assert minutes
    for t in minutes:
        assert abs(total[t] - (cpu0[t] + cpu1[t]) / 2) < 5, (t, cpu0[t], cpu1[t], total[t])
    assert peak("cpu_usage_active", "cpu-total") > busy / 2 - 5
    system = max(peak("cpu_usage_system", "cpu0"), peak("cpu_usage_system", "cpu1"))
    assert system > 40  # dd from /dev/zero to /dev/null runs in the kernel


def test_guest_vcpus_online(run_result: dict[str, Any]) -> None:
    dims = {"InstanceId": run_result["vm"].instance_id}
    points = fetch(run_result, "Hive/EC2", "GuestVCPUsOnline", dims, "Count", "Maximum")
    assert points and {v for _, v in points} == {2}  # -smp 2, both online in the guest


def test_guest_memory_from_the_balloon(run_result: dict[str, Any]) -> None:
    dims = {"InstanceId": run_result["vm"].instance_id}
    [(_, total_max)] = fetch(run_result, "CWAgent", "mem_total", dims, "Bytes", "Maximum")[:1]
    assert total_max == run_result["mem_total"]  # MemTotal in the guest's /proc/meminfo
    used = fetch(run_result, "CWAgent", "mem_used_percent", dims, "Percent", "Average")
    assert used and all(0 < v < 100 for _, v in used)


@pytest.mark.skipif(not ROOT, reason="tap devices need root")
def test_guest_net_matches_the_tap(run_result: dict[str, Any]) -> None:
    inst = run_result["vm"].instance_id
    dims = {"InstanceId": inst, "interface": "eth0"}
    sent = total(fetch(run_result, "CWAgent", "net_packets_sent", dims, "Count"))
    assert sent >= 3  # the ARP requests
    assert total(fetch(run_result, "CWAgent", "net_bytes_sent", dims, "Bytes")) >= 3 * 42
    assert total(fetch(run_result, "CWAgent", "net_packets_recv", dims, "Count")) == 0
