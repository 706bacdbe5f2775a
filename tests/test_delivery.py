"""Nothing collected is lost: the real agent process, real guest-less QEMU VMs, moto's real server.

The agent writes every datum it has spooled to an audit log (`run --audit-log`); afterwards the
endpoint must hold exactly those datums. Endpoint and audit are compared per series and per
minute on SampleCount, Sum, Minimum and Maximum (GetMetricData at a 60 s period).

- an endpoint outage of several minutes (moto stopped, then restarted and its recording
  replayed, so the endpoint keeps what it had accepted before the stop);
- the agent killed with SIGKILL several times (duplicates are counted and bounded);
- a fault-injecting proxy (500s, throttling, resets, slow replies, one invalid datum);
- a torn spool and an over-full spool found at start.

Set HIVEAGENT_TEST_OUTAGE_S to shorten the outage when iterating locally (default 180 s).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from hiveagent.catalog import CATALOG, Family
from hiveagent.model import Datum
from hiveagent.spool import Spool
from hiveagent.wire import make_client
from tests.fault_proxy import FaultProxy
from tests.harness import Harness, free_port, wait_for

pytestmark = pytest.mark.vm

OUTAGE_S = float(os.environ.get("HIVEAGENT_TEST_OUTAGE_S", "180"))
Series = tuple[str, str, tuple[tuple[str, str], ...]]  # namespace, name, dimensions
Stats = tuple[int, float, float, float]  # count, sum, min, max


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(tmp_path_factory.mktemp("delivery")) as h:
        for n in (1, 2):
            h.launch_vm(n, boot_guest=False, volumes=((8, False),))
        yield h


class AgentProcess:
    """`hiveagent run` as a real process with its own state directory and status port."""

    def __init__(self, h: Harness, root: Path, endpoint: str, **hyper: Any) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.audit = root / "audit.jsonl"
        self.log = root / "agent.log"
        self.port = free_port()
        cfg = {
            "agent": {"metrics_collection_interval": 1, "region": "us-east-1"},
            "metrics": {"endpoint_override": endpoint, "force_flush_interval": 2},
            "hypervisor": {
                "discovery": {"spinifex": {"run_dir": str(h.run_dir)}},
                "state_dir": str(root / "state"),
                "qmp": {"timeout_seconds": 1},
                "qga": {"timeout_seconds": 1},
                "publish": {
                    "timeout_seconds": 2,
                    "breaker_open_seconds": 5,
                    "backoff_base_seconds": 0.2,
                    "backoff_max_seconds": 1,
                    "shutdown_flush_seconds": 5,
                },
                "self_metrics": {"interval_seconds": 5},
                "status_server": {"port": self.port},
                **hyper,
            },
        }
        self.config = root / "agent.json"
        self.config.write_text(json.dumps(cfg))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 (handed to the child)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hiveagent",
                "run",
                "-c",
                str(self.config),
                "--audit-log",
                str(self.audit),
                *extra,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        log.close()
        wait_for(lambda: self._get("/healthz") is not None, 30, "agent status server")

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                body = r.read().decode()
        except OSError:
            return None
        return json.loads(body) if path != "/metrics" else body

    def status(self) -> dict[str, Any]:
        s = self._get("/status")
        assert s is not None, (self.process and self.process.poll(), self.log.read_text()[-3000:])
        return dict(s)

    def metrics(self) -> str:
        return str(self._get("/metrics"))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(30)

    def wait_drained(self, timeout: float) -> dict[str, Any]:
        def drained() -> bool:
            s = self.status()
            return bool(s["spool"]["pending_datums"] == 0 and s["publisher"]["in_flight"] == 0)

        wait_for(drained, timeout, "the spool to drain")
        return self.status()


def audit_datums(path: Path) -> list[Datum]:
    out = []
    for line in path.read_text().splitlines():
        j = json.loads(line)
        dims = tuple(sorted(j["dimensions"].items()))
        out.append(Datum(j["namespace"], j["name"], dims, j["value"], j["unit"], j["timestamp"]))
    return out


def bucket_stats(datums: list[Datum], start: int) -> dict[Series, dict[int, Stats]]:
    """What GetMetricData at Period=60 from `start` must show, per series and minute."""
    values: dict[Series, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for d in datums:
        ts = round(d.timestamp, 3)  # botocore sends millisecond timestamps
        values[(d.namespace, d.name, d.dimensions)][int((ts - start) // 60)].append(d.value)
    return {
        key: {b: (len(v), math.fsum(v), min(v), max(v)) for b, v in buckets.items()}
        for key, buckets in values.items()
    }


def endpoint_stats(url: str, series: list[Series], start: int) -> dict[Series, dict[int, Stats]]:
    client = make_client("us-east-1", url)
    out: dict[Series, dict[int, Stats]] = {}
    stats = ("SampleCount", "Sum", "Minimum", "Maximum")
    for chunk_start in range(0, len(series), 100):
        chunk = series[chunk_start : chunk_start + 100]
        queries = [
            {
                "Id": f"q{i}_{j}",
                "MetricStat": {
                    "Metric": {
                        "Namespace": ns,
                        "MetricName": name,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in dims],
                    },
                    "Period": 60,
                    "Stat": stat,
                },
            }
            for i, (ns, name, dims) in enumerate(chunk)
            for j, stat in enumerate(stats)
        ]
        reply = client.get_metric_data(
            MetricDataQueries=queries,
            StartTime=datetime.fromtimestamp(start, UTC),
            EndTime=datetime.fromtimestamp(time.time() + 120, UTC),
        )
        by_id = {r["Id"]: r for r in reply["MetricDataResults"]}
        for i, key in enumerate(chunk):
            per_stat = []
            for j in range(len(stats)):
                r = by_id[f"q{i}_{j}"]
                per_stat.append(
                    {
                        int((t.timestamp() - start) // 60): v
                        for t, v in zip(r["Timestamps"], r["Values"], strict=True)
                    }
                )
            out[key] = {
                b: (int(per_stat[0][b]), per_stat[1][b], per_stat[2][b], per_stat[3][b])
                for b in per_stat[0]
            }
    return out


def compare(url: str, datums: list[Datum]) -> tuple[int, int, list[str]]:
    """(missing, extra, differences) between the audit and the endpoint."""
    start = int(min(d.timestamp for d in datums)) - 1
    # moto's GetMetricData ignores the namespace when dimensions are given: series with the
    # same name and dimensions in two namespaces come back merged, so merge them here too.
    first_ns: dict[tuple[str, Any], str] = {}
    for d in datums:
        first_ns.setdefault((d.name, d.dimensions), d.namespace)
    datums = [d._replace(namespace=first_ns[(d.name, d.dimensions)]) for d in datums]
    expected = bucket_stats(datums, start)
    got = endpoint_stats(url, sorted(expected), start)
    missing = extra = 0
    diffs: list[str] = []
    diffs_count: list[str] = []
    for key, buckets in expected.items():
        for b, (n, total, lo, hi) in buckets.items():
            m, s, mn, mx = got[key].get(b, (0, 0.0, 0.0, 0.0))
            missing += max(0, n - m)
            extra += max(0, m - n)
            if m != n:
                diffs_count.append(f"{key} minute {b}: endpoint {m} audit {n}")
            if m == n and not (
                math.isclose(s, total, rel_tol=1e-9, abs_tol=1e-9) and mn == lo and mx == hi
            ):
                diffs.append(f"{key} minute {b}: endpoint {(m, s, mn, mx)} != {(n, total, lo, hi)}")
        for b in set(got[key]) - set(buckets):
            extra += got[key][b][0]
            diffs_count.append(f"{key} minute {b}: endpoint {got[key][b][0]}, not audited")
    for line in diffs_count[:20]:
        print("count differs:", line)
    return missing, extra, diffs


def test_endpoint_outage_of_minutes_loses_nothing(fleet: Harness, tmp_path: Path) -> None:
    recording = tmp_path / "moto-recording.jsonl"
    url = fleet.start_moto(recording=recording)
    port = fleet.moto_port
    agent = AgentProcess(fleet, tmp_path / "agent", url)
    agent.start()
    wait_for(lambda: agent.status()["publisher"]["stats"].get("datums_sent", 0) > 0, 30, "sends")

    # Stop the endpoint between two flushes, so no request is cut in half.
    def just_flushed() -> bool:
        s = agent.status()
        last = s["publisher"]["last_success"] or 0
        return bool(
            s["spool"]["pending_datums"] == 0
            and s["publisher"]["in_flight"] == 0
            and time.time() - last < 0.5
        )

    wait_for(just_flushed, 30, "a quiet moment after a flush", interval=0.05)
    assert fleet.moto is not None
    fleet.moto.terminate()
    fleet.moto.wait(10)
    down_at = time.time()

    time.sleep(OUTAGE_S)
    during = agent.status()
    assert during["spool"]["pending_datums"] > 0
    assert during["publisher"]["breaker_opens"] >= 1
    assert during["publisher"]["stats"]["api_errors"] >= 3
    # Minutes of data wait in the spool, oldest from about when the endpoint went away.
    assert during["spool"]["oldest_timestamp"] == pytest.approx(down_at, abs=5)

    fleet.start_moto(port=port, recording=recording)
    urllib.request.urlopen(
        urllib.request.Request(f"{url}/moto-api/recorder/replay-recording", method="POST"),
        timeout=60,
    ).read()
    agent.wait_drained(60)
    assert agent.stop() == 0

    datums = audit_datums(agent.audit)
    missing, extra, diffs = compare(url, datums)
    print(
        f"outage {OUTAGE_S:.0f} s: {len(datums)} datums audited, missing {missing}, extra {extra}"
    )
    assert (missing, extra, diffs) == (0, 0, [])
    log = agent.log.read_text()
    assert "circuit breaker open" in log and "dropped" not in log


def test_sigkill_loses_nothing(fleet: Harness, tmp_path: Path) -> None:
    url = fleet.start_moto()
    agent = AgentProcess(fleet, tmp_path / "agent", url)
    rng = random.Random(4)
    kills = 3
    for _ in range(kills):
        agent.start()
        time.sleep(rng.uniform(3, 7))
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    agent.start()
    time.sleep(4)
    agent.wait_drained(30)
    assert agent.stop() == 0

    datums = audit_datums(agent.audit)
    missing, extra, diffs = compare(url, datums)
    print(f"{kills} SIGKILLs: {len(datums)} datums audited, missing {missing}, duplicates {extra}")
    assert missing == 0 and diffs == []
    # At most the requests in flight at each kill come twice: one request is <= 1000 datums,
    # and here a request carries one flush interval of data.
    assert extra <= kills * 1000
    assert "spool: " in agent.log.read_text()  # a restart replayed what the kill left


def test_faults_deliver_the_right_datums(fleet: Harness, tmp_path: Path) -> None:
    moto = fleet.start_moto()
    proxy = FaultProxy(int(moto.rsplit(":", 1)[1]))
    # A VM whose QMP never answers and one whose guest agent never answers.
    hung = [
        Harness.hung_socket(tmp_path / "hung-qmp.sock"),
        Harness.hung_socket(tmp_path / "hung-qga.sock"),
    ]
    fake_id = "i-0000000000000dead"
    (fleet.run_dir / f"qmp-telemetry-{fake_id}.json").write_text(
        json.dumps(
            {
                "instance_id": fake_id,
                "account_id": "000000000000",
                "socket": str(tmp_path / "hung-qmp.sock"),
                "vcpus": 1,
                "period_seconds": 60,
                "taps": [],
            }
        )
    )
    vm2 = fleet.vms[1]
    fleet.write_sidecar(vm2, qga_socket=str(tmp_path / "hung-qga.sock"))
    try:
        proxy.script = ["500", "throttle", "reset", "slow:3", "pass", "500", "slow:0.5"]
        proxy.poison_after = 10
        agent = AgentProcess(fleet, tmp_path / "agent", proxy.url)
        agent.start()
        wait_for(lambda: proxy.log.rejected_requests > 0, 60, "the invalid datum")
        time.sleep(6)
        agent.wait_drained(30)
        metrics = agent.metrics()
        assert agent.stop() == 0
    finally:
        (fleet.run_dir / f"qmp-telemetry-{fake_id}.json").unlink()
        fleet.write_sidecar(vm2)
        proxy.close()
        for s in hung:
            s.close()

    poisoned = proxy.log.poisoned
    assert poisoned is not None
    assert proxy.log.actions["500"] == 2 and proxy.log.actions["reset"] == 1
    datums = audit_datums(agent.audit)
    bad = [
        d
        for d in datums
        if d.name == poisoned["MetricName"]
        and dict(d.dimensions) == {x["Name"]: x["Value"] for x in poisoned["Dimensions"]}
        and round(d.timestamp, 3) == pytest.approx(poisoned["Timestamp"], abs=1e-3)
    ]
    assert len(bad) == 1
    good = [d for d in datums if d is not bad[0]]
    missing, extra, diffs = compare(moto, good)
    print(
        f"faults {dict(proxy.log.actions)}: {len(good)} datums delivered, missing {missing}, "
        f"duplicates {extra} (from a request the agent timed out on: {proxy.log.late_datums})"
    )
    # The request the endpoint answered after the agent's timeout was processed anyway, so
    # its datums arrive twice (at-least-once); nothing else may differ.
    assert proxy.log.late_datums > 0
    assert (missing, extra, diffs) == (0, proxy.log.late_datums, [])
    # The invalid datum was isolated, dropped alone, counted and named in the log.
    assert 'hiveagent_datums_dropped_total{reason="rejected.InvalidParameterValue"} 1' in metrics
    log = agent.log.read_text()
    assert f"{poisoned['MetricName']}{{" in log and "InvalidParameterValue" in log
    assert "circuit breaker open" in log
    # Self-metrics both ways: every catalog row of the agent's own landed, and only those.
    client = make_client("us-east-1", moto)
    landed = {
        m["MetricName"]
        for page in client.get_paginator("list_metrics").paginate(Namespace="HiveAgent")
        for m in page["Metrics"]
    }
    # (the Account* rows come with routing by account: test_accounts)
    assert landed == {
        n for n, s in CATALOG.items() if s.family is Family.SELF and not n.startswith("Account")
    }
    timeouts = [d for d in datums if d.name == "QmpTimeouts"]
    assert timeouts and {dict(d.dimensions)["InstanceId"] for d in timeouts} == {fake_id}
    qga = [d for d in datums if d.name == "QgaTimeouts"]
    assert qga and {dict(d.dimensions)["InstanceId"] for d in qga} == {vm2.instance_id}


def test_spinifex_default_config_basic_vms_every_datum_arrives(
    fleet: Harness, tmp_path: Path
) -> None:
    """Spinifex's CloudWatch service (REFERENCE.md section 7) refuses statistic sets, value
    arrays, and duplicate or out-of-order samples. With the default config (datum_shape "auto")
    and basic-monitoring VMs (period_seconds 300), the 5-minute windows closed at shutdown go
    first as statistic sets, are refused once, and are resent as single values; every datum the
    agent spooled arrives once, and nothing is dropped."""
    url = fleet.start_moto(mode="spinifex")
    endpoint = fleet.endpoint
    assert endpoint is not None and endpoint.mode == "spinifex"
    for vm in fleet.vms:
        fleet.write_sidecar(vm, period_seconds=300)
    try:
        agent = AgentProcess(fleet, tmp_path / "agent", url)
        agent.start()
        time.sleep(8)
        assert agent.stop() == 0  # closes the open windows and sends them
    finally:
        for vm in fleet.vms:
            fleet.write_sidecar(vm)
    log = agent.log.read_text()
    assert "dropped" not in log, log[-3000:]
    assert "datum_shape_fallbacks=1" in log
    datums = audit_datums(agent.audit)
    assert {d.name for d in datums} >= {"CPUUtilization", "StatusCheckFailed", "VolumeIdleTime"}
    missing, extra, diffs = compare(url, datums)
    print(f"spinifex, basic VMs: {len(datums)} datums audited, missing {missing}, extra {extra}")
    assert (missing, extra, diffs) == (0, 0, [])
    # The endpoint refused nothing but the first statistic set's request.
    assert [r.code for r in endpoint.refusals] == ["InvalidParameterValue"]
    assert "StatisticValues" in endpoint.refusals[0].message


def fill_spool(directory: Path, batches: int, start: float) -> None:
    spool = Spool(directory, max_bytes=4 << 20, fsync=False)
    spool.open()
    for k in range(batches):
        spool.append(
            "HiveTest",
            [
                Datum("HiveTest", "Filler", (("Batch", str(k)),), float(i), "Count", start + i, 60)
                for i in range(200)
            ],
        )
    spool.close()


def test_torn_and_overfull_spool_at_start(fleet: Harness, tmp_path: Path) -> None:
    agent = AgentProcess(
        fleet, tmp_path / "agent", "http://127.0.0.1:9", spool={"max_bytes": 1 << 20}
    )
    spool_dir = tmp_path / "agent" / "state" / "spool"
    fill_spool(spool_dir, 400, time.time() - 3600)  # ~2 MiB: twice the bound
    last = max(spool_dir.glob("*.seg"))
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size - 100)  # and a torn tail
    agent.start()
    time.sleep(3)
    s = agent.status()
    assert agent.stop() == 0
    stats = s["publisher"]["stats"]
    assert stats["dropped.spool_corrupt"] == 200
    assert stats["dropped.spool_full"] >= 200 * 100
    assert s["spool"]["bytes"] <= 1 << 20
    log = agent.log.read_text()
    assert "Traceback" not in log
    assert "spool_corrupt" in log and "spool_full" in log
