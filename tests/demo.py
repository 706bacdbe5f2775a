"""The demo: two real VMs, moto's CloudWatch server on loopback, the agent for a few cycles with
the sample agent.json, then the metrics read back from the endpoint with GetMetricData.

    bash tests/dev.sh demo        (sets everything up first)
    .venv/bin/python -m tests.demo

Exits non-zero if nothing landed at the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hiveagent.catalog import CATALOG  # noqa: E402
from hiveagent.wire import make_client  # noqa: E402
from tests.harness import Harness, guest_exec  # noqa: E402

INTERVAL_S = 5
CYCLES = 6


def main() -> int:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    root = Path(tempfile.mkdtemp(prefix="hiveagent-demo-"))
    with Harness(root) as h:
        print(f"demo: working in {root}")
        url = h.start_moto()
        print(f"demo: moto CloudWatch server at {url}")
        tap = os.geteuid() == 0
        vms = [h.launch_vm(n, boot_guest=True, tap=tap) for n in (1, 2)]
        print(
            f"demo: booting {len(vms)} VMs ({vms[0].accel.upper()}): "
            + ", ".join(v.instance_id for v in vms)
        )
        t = time.monotonic()
        for vm in vms:
            h.wait_guest_agent(vm)
        print(f"demo: guest agents answered after {time.monotonic() - t:.0f} s")

        cfg = json.loads((REPO / "agent.json").read_text())
        cfg["agent"]["metrics_collection_interval"] = INTERVAL_S
        cfg["metrics"]["force_flush_interval"] = INTERVAL_S
        cfg["metrics"]["endpoint_override"] = url
        cfg["hypervisor"]["discovery"]["spinifex"]["run_dir"] = str(h.run_dir)
        cfg["hypervisor"]["state_dir"] = str(root / "state")
        cfg_path = root / "agent.json"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        print(f"demo: running hiveagent for {CYCLES} cycles of {INTERVAL_S} s")
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hiveagent",
                "run",
                "-c",
                str(cfg_path),
                "--cycles",
                str(CYCLES),
            ],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc = psutil.Process(agent.pid)
        time.sleep(INTERVAL_S * 1.5)
        # Workloads: VM 1 writes 4 MiB to its scratch volume, VM 2 a 8 MiB file to its data disk.
        asyncio.run(
            guest_exec(
                vms[0].qga_socket,
                "dd if=/dev/zero of=/dev/vdb bs=65536 count=64 oflag=direct 2>/dev/null",
            )
        )
        asyncio.run(
            guest_exec(
                vms[1].qga_socket,
                "dd if=/dev/zero of=/mnt/data/demo bs=1M count=8 2>/dev/null; sync",
            )
        )
        peak_rss = 0
        cpu = None
        while agent.poll() is None:
            try:
                peak_rss = max(peak_rss, proc.memory_info().rss)
                cpu = proc.cpu_times()
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)
        _, log = agent.communicate()
        if agent.returncode != 0:
            print(log, file=sys.stderr)
            print(f"demo: the agent failed (exit {agent.returncode})", file=sys.stderr)
            return 1
        return report(url, vms, peak_rss, cpu)


def report(url: str, vms: list, peak_rss: int, cpu: object) -> int:  # type: ignore[type-arg]
    client = make_client("us-east-1", url)
    unique = {}  # moto's ListMetrics repeats series that have several dimensions
    for page in client.get_paginator("list_metrics").paginate():
        for m in page["Metrics"]:
            key = (
                m["Namespace"],
                m["MetricName"],
                tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])),
            )
            unique[key] = m
    metrics = list(unique.values())
    queries = []
    for i, m in enumerate(
        sorted(metrics, key=lambda m: (m["Namespace"], str(m["Dimensions"]), m["MetricName"]))
    ):
        spec = CATALOG[m["MetricName"]]
        # An amount per period adds up over the minutes; a level does not (the catalog's kind).
        stat = (
            "Sum"
            if spec.kind == "total"
            and not spec.name.startswith(("StatusCheck", "disk_", "mem_", "cpu_time_"))
            else "Maximum"
        )
        queries.append(
            (
                m,
                stat,
                {
                    "Id": f"m{i}",
                    "MetricStat": {"Metric": m, "Period": 300, "Stat": stat, "Unit": spec.unit},
                },
            )
        )
    rows = []
    end = datetime.now(UTC) + timedelta(minutes=1)
    for start in range(0, len(queries), 500):
        chunk = queries[start : start + 500]
        reply = client.get_metric_data(
            MetricDataQueries=[q for _, _, q in chunk],
            StartTime=end - timedelta(hours=1),
            EndTime=end,
        )
        by_id = {r["Id"]: r for r in reply["MetricDataResults"]}
        for m, stat, q in chunk:
            values = by_id[q["Id"]]["Values"]
            if values:
                value = sum(values) if stat == "Sum" else max(values)
                dims = ",".join(f"{d['Name']}={d['Value']}" for d in m["Dimensions"])
                rows.append(
                    (
                        m["Namespace"],
                        m["MetricName"],
                        stat,
                        value,
                        CATALOG[m["MetricName"]].unit,
                        dims,
                    )
                )
    print()
    print(f"{'namespace':<9} {'metric':<27} {'stat':<7} {'value':>14} {'unit':<8} dimensions")
    for r in rows:
        print(f"{r[0]:<9} {r[1]:<27} {r[2]:<7} {r[3]:>14.6g} {r[4]:<8} {r[5]}")
    print()
    print(f"demo: {len(rows)} metric series came back from the endpoint for {len(vms)} VMs")
    if cpu is not None:
        print(
            f"demo: agent CPU {cpu.user + cpu.system:.2f} s over {CYCLES} cycles "  # type: ignore[attr-defined]
            f"(incl. start-up), peak RSS {peak_rss / 2**20:.0f} MiB"
        )
    if not rows:
        print("demo: FAILED: nothing landed at the endpoint", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
