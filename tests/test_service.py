"""The daemon as systemd runs it: sd_notify messages on a real notify socket, journald log
priorities, and SIGHUP reloads (an invalid config keeps the old one; a valid one switches the
endpoint without losing a spooled datum)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Harness, free_port, wait_for
from tests.test_delivery import AgentProcess, audit_datums, compare

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def one_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(tmp_path_factory.mktemp("service")) as h:
        h.launch_vm(7, boot_guest=False, volumes=((8, False),))
        yield h


class NotifySocket:
    """What systemd listens on: a unix datagram socket, read continuously by a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()

    def saw(self, field: str) -> bool:
        return any(field in m.split("\n") for m in list(self.messages))

    def pump(self) -> list[str]:
        return list(self.messages)


def test_notify_reload_and_journal(one_vm: Harness, tmp_path: Path) -> None:
    moto = one_vm.start_moto()
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    agent = AgentProcess(
        one_vm, tmp_path / "agent", down, publish={"breaker_open_seconds": 2, "timeout_seconds": 1}
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    agent.start(
        env={
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": "1000000",
            "JOURNAL_STREAM": "8:1234",
        }
    )
    wait_for(lambda: notify.saw("READY=1"), 20, "READY=1")
    wait_for(lambda: notify.saw("WATCHDOG=1"), 5, "a watchdog ping")
    wait_for(
        lambda: any(m.startswith("STATUS=1 VMs, cycle") for m in notify.pump()),
        10,
        "a STATUS line after a cycle",
    )
    wait_for(lambda: agent.status()["spool"]["pending_datums"] > 50, 20, "a backlog")

    # An invalid config: logged, the old one keeps running.
    cfg = json.loads(agent.config.read_text())
    agent.config.write_text(json.dumps({**cfg, "agent": {"metrics_collection_intervall": 1}}))
    cycles = agent.status()["cycles"]
    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in agent.log.read_text(), 10, "the reload error")
    assert (
        "$.agent.metrics_collection_intervall: unknown key; "
        "did you mean 'metrics_collection_interval'?"
    ) in agent.log.read_text()
    wait_for(lambda: agent.status()["cycles"] >= cycles + 2, 10, "cycles after a bad reload")
    assert agent.status()["reloads"] == 0
    assert notify.saw("RELOADING=1")

    # A valid one: new endpoint and EC2 namespace; the backlog follows to the new endpoint.
    cfg["metrics"]["endpoint_override"] = moto
    cfg["hypervisor"]["ec2"] = {"namespace": "Hive/EC2b"}
    agent.config.write_text(json.dumps(cfg))
    backlog = agent.status()["spool"]["pending_datums"]
    agent.process.send_signal(signal.SIGHUP)
    wait_for(lambda: agent.status()["reloads"] == 1, 10, "the reload")
    time.sleep(3)
    agent.wait_drained(30)
    assert agent.stop() == 0
    assert notify.saw("STOPPING=1")
    notify.close()

    datums = audit_datums(agent.audit)
    namespaces = {d.namespace for d in datums}
    assert {"Hive/EC2", "Hive/EC2b", "Hive/EBS"} <= namespaces
    missing, extra, diffs = compare(moto, datums)
    print(
        f"reload: backlog {backlog} datums at the switch; {len(datums)} audited; "
        f"missing {missing}, extra {extra}"
    )
    assert (missing, extra, diffs) == (0, 0, [])
    # journald priorities: <6> info, <3> errors (the failed reload), <4> warnings.
    lines = agent.log.read_text().splitlines()
    assert any(ln.startswith("<6>hiveagent: hiveagent ") for ln in lines)
    assert any(ln.startswith("<3>hiveagent: reload failed") for ln in lines)
    assert all(ln.startswith("<") for ln in lines if ln.strip())
