"""Every VM's metrics land in the account that owns the VM (issue 17): the real agent process,
guest-less QEMU VMs of three accounts (and one with none), moto's server as both STS and
CloudWatch behind the strict endpoint. moto keeps each account's metrics apart by the
credentials a request is signed with, as AWS does, so reading back with one account's
credentials shows what landed in that account.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hiveagent.model import Datum
from hiveagent.spool import Spool
from hiveagent.wire import make_client
from tests.harness import Harness, Vm, wait_for
from tests.test_delivery import AgentProcess

pytestmark = pytest.mark.vm

ACCOUNTS = ("111111111111", "222222222222", "333333333333")
ROLE = "arn:aws:iam::{account_id}:role/HiveAgentPublisher"
# The agent's own (default chain) credentials, distinctive so that a leak is found by grep.
ACCESS_KEY = "AKIAHIVEAGENTTEST0001"
SECRET_KEY = "hive/secret+5d41402abc4b2a76b9719d911017c592"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, dict[str, Vm]]]:
    with Harness(tmp_path_factory.mktemp("accounts")) as h:
        vms = {}
        for n, account in enumerate((*ACCOUNTS, None), 71):
            vm = h.launch_vm(n, boot_guest=False, volumes=((8, False),), sidecar=False)
            h.write_sidecar(vm, account_id=account)
            vms[account or "none"] = vm
        yield h, vms


def instances_in(url: str, account: str | None) -> set[str]:
    """The InstanceIds of the Hive/EC2 series that landed in `account` (None: the agent's
    own), read back with that account's credentials."""
    role = ROLE.format(account_id=account) if account else None
    client = make_client("us-east-1", url, 10.0, role_arn=role)
    return {
        d["Value"]
        for page in client.get_paginator("list_metrics").paginate(Namespace="Hive/EC2")
        for m in page["Metrics"]
        for d in m["Dimensions"]
        if d["Name"] == "InstanceId"
    }


def test_each_account_gets_its_own_vms_and_a_broken_one_holds_back_only_itself(
    fleet: tuple[Harness, dict[str, Vm]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, vms = fleet
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    url = h.start_moto()
    endpoint = h.endpoint
    assert endpoint is not None
    broken = ACCOUNTS[2]
    endpoint.denied_roles = {ROLE.format(account_id=broken)}  # its role is not there yet
    agent = AgentProcess(
        h, tmp_path / "agent", url, accounts={"role_arn": ROLE, "unrouted": "hold"}
    )
    # What an earlier version spooled (no account) is delivered to the agent's own account.
    old = Spool(tmp_path / "agent" / "state" / "spool", fsync=False)
    old.open()
    before = time.time() - 120
    old.append("Upgrade", [Datum("Upgrade", "Old", (("K", "v"),), 1.0, "Count", before, 60)])
    old.close()
    agent.start(env={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})

    def sending(account: str) -> bool:
        t = agent.status()["accounts"].get(account, {})
        return bool(t.get("publisher", {}).get("stats", {}).get("datums_sent", 0) > 0)

    wait_for(lambda: sending(ACCOUNTS[0]) and sending(ACCOUNTS[1]), 30, "two accounts sending")
    time.sleep(4)
    status = agent.status()["accounts"]
    # The two good accounts keep up; the broken one waits in its spool, its breaker open,
    # nothing of it dropped; the VM with no account is held (hypervisor.accounts.unrouted).
    for account in ACCOUNTS[:2]:
        assert status[account]["state"] == "sending"
        assert status[account]["spool"]["pending_datums"] < 200, status[account]
    waiting = status[broken]
    assert waiting["spool"]["pending_datums"] > 0
    assert waiting["publisher"]["stats"].get("datums_sent", 0) == 0
    assert waiting["publisher"]["breaker_opens"] >= 1
    assert not [k for k in waiting["publisher"]["stats"] if k.startswith("dropped.")]
    assert status["unassigned"]["state"] == "held"
    assert status["unassigned"]["spool"]["pending_datums"] > 0

    endpoint.denied_roles = set()  # the role now exists: its backlog goes out
    wait_for(lambda: sending(broken), 30, "the third account's backlog")
    wait_for(
        lambda: agent.status()["accounts"][broken]["spool"]["pending_datums"] == 0,
        30,
        "the third account drained",
    )
    snapshot = json.dumps(agent.status())
    assert agent.stop() == 0

    for account, vm in zip(ACCOUNTS, (vms[a] for a in ACCOUNTS), strict=True):
        assert instances_in(url, account) == {vm.instance_id}, account
    assert instances_in(url, None) == set()  # the agent's own account holds no tenant's VM
    assert vms["none"].instance_id not in set().union(*(instances_in(url, a) for a in ACCOUNTS))
    own = make_client("us-east-1", url, 10.0)
    upgraded = own.list_metrics(Namespace="Upgrade")["Metrics"]
    assert [m["MetricName"] for m in upgraded] == ["Old"]
    # Per-account self-metrics, in the agent's own account.
    per_account = {
        (m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
        for page in own.get_paginator("list_metrics").paginate(Namespace="HiveAgent")
        for m in page["Metrics"]
        if m["MetricName"].startswith("Account")
    }
    for account in ACCOUNTS[:2]:  # the third sent after the last self-metrics, maybe
        assert ("AccountDatumsSent", (("Account", account),)) in per_account
    for account in (*ACCOUNTS, "unassigned"):
        assert ("AccountPendingDatums", (("Account", account),)) in per_account

    # No credentials in the log, /status or the spool: neither the agent's own nor the
    # temporary ones it was given per account (the endpoint saw their access key ids).
    secrets = {ACCESS_KEY, SECRET_KEY} | {
        r.access_key for r in endpoint.requests if r.access_key and r.access_key.startswith("ASIA")
    }
    assert len(secrets) >= 2 + len(ACCOUNTS)
    spooled = b"".join(
        p.read_bytes() for p in (tmp_path / "agent" / "state").rglob("*") if p.is_file()
    )
    for text in (agent.log.read_text(), snapshot):
        assert not [s for s in secrets if s in text]
    assert not [s for s in secrets if s.encode() in spooled]
