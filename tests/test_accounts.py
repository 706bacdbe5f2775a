"""Every VM's metrics land in the account that owns the VM (issue 17): the real agent process,
guest-less QEMU VMs of three accounts (and one with none), moto's server as both STS and
CloudWatch behind the strict endpoint. moto keeps each account's metrics apart by the
credentials a request is signed with, as AWS does, so reading back with one account's
credentials shows what landed in that account.

How moto decides the account (moto 5, moto/core/responses.py `get_current_account` and
moto/iam/models.py `get_account_id_from`): the access key a request is signed with is looked up
among every account's IAM access keys; not found, it is the default account 123456789012 (the
agent's own keys here). STS AssumeRole of `arn:aws:iam::<account>:role/...` makes its temporary
key in <account>'s IAM (moto/sts/models.py `_create_access_key`; moto does not need the role to
exist), and an IAM CreateAccessKey signed with such a key makes a long-term key of that account:
what a profile of the shared credentials file holds.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from hiveagent.model import Datum
from hiveagent.spool import Spool
from hiveagent.wire import make_client
from tests.harness import Harness, Vm, wait_for
from tests.strict_endpoint import RequestInfo, StrictEndpoint
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


def fresh_endpoint(h: Harness, monkeypatch: pytest.MonkeyPatch) -> tuple[str, StrictEndpoint]:
    """The agent's own credentials in the environment (this process's too, for reading back),
    and a fresh moto behind the strict endpoint: its URL and the endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    url = h.start_moto()
    assert h.endpoint is not None
    return url, h.endpoint


def instances_in(
    url: str,
    account: str | None,
    *,
    external_id: str | None = None,
    keys: tuple[str, str] | None = None,
) -> set[str]:
    """The InstanceIds of the Hive/EC2 series that landed in `account` (None: the agent's
    own), read back with that account's credentials: its role (assumed with `external_id`),
    or its own long-term `keys` (access key id, secret)."""
    if keys is not None:
        client = boto3.client(
            "cloudwatch",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id=keys[0],
            aws_secret_access_key=keys[1],
        )
    else:
        role = ROLE.format(account_id=account) if account else None
        client = make_client("us-east-1", url, 10.0, role_arn=role, external_id=external_id)
    return {
        d["Value"]
        for page in client.get_paginator("list_metrics").paginate(Namespace="Hive/EC2")
        for m in page["Metrics"]
        for d in m["Dimensions"]
        if d["Name"] == "InstanceId"
    }


# -- helpers -------------------------------------------------------------------------------------
AGENT_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
EXTERNAL_ID = "hive-host-7"


def role_of(account: str) -> str:
    return ROLE.format(account_id=account)


def status_of(agent: AgentProcess) -> dict[str, Any]:
    """The agent's /status, waiting out a stall of a few seconds (a shared machine under load
    can keep the agent from answering within AgentProcess's 2 s)."""

    def answer() -> Any:
        p = agent.process
        assert p is not None and p.poll() is None, agent.log.read_text()[-3000:]
        return agent._get("/status")

    return dict(wait_for(answer, 20, "the agent's /status", interval=0.2))


def accounts_status(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    return dict(status_of(agent)["accounts"])


def sent(tenant: dict[str, Any]) -> int:
    return int(tenant.get("publisher", {}).get("stats", {}).get("datums_sent", 0))


def pending(tenant: dict[str, Any]) -> int:
    return int(tenant.get("spool", {}).get("pending_datums", 0))


def drops(tenant: dict[str, Any]) -> dict[str, int]:
    """Every datum the account gave up (the publisher's and the spool's ledger)."""
    counts = {**tenant.get("publisher", {}).get("stats", {}), **tenant.get("dropped", {})}
    return {k: v for k, v in counts.items() if k.startswith("dropped.")}


def owner(d: Any, vms: dict[str, Vm]) -> str | None:
    """The account whose VM an accepted datum is of (by its InstanceId or VolumeId), or None
    (the agent's own metrics)."""
    for account, vm in vms.items():
        if d.dimensions.get("InstanceId") == vm.instance_id or d.dimensions.get("VolumeId") in {
            v.volume_id for v in vm.volumes
        }:
            return account
    return None


class Running:
    """The agent process, stopped (killed if need be) when the test leaves, passed or not."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent

    def __enter__(self) -> AgentProcess:
        return self.agent

    def __exit__(self, *exc: object) -> None:
        p = self.agent.process
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)


def reconfigure(agent: AgentProcess, accounts: dict[str, Any]) -> None:
    """Rewrite the agent's hypervisor.accounts and reload it (SIGHUP, hiveagent.daemon), back
    once the reload is done."""
    config = json.loads(agent.config.read_text())
    config["hypervisor"]["accounts"] = accounts
    agent.config.write_text(json.dumps(config))
    before = status_of(agent)["reloads"]
    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)
    wait_for(lambda: status_of(agent)["reloads"] > before, 10, "the reload")


def test_each_account_gets_its_own_vms_and_a_broken_one_holds_back_only_itself(
    fleet: tuple[Harness, dict[str, Vm]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, vms = fleet
    url, endpoint = fresh_endpoint(h, monkeypatch)
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
    with Running(agent):
        agent.start(env={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})

        def sending(account: str) -> bool:
            t = accounts_status(agent).get(account, {})
            return bool(t.get("publisher", {}).get("stats", {}).get("datums_sent", 0) > 0)

        wait_for(lambda: sending(ACCOUNTS[0]) and sending(ACCOUNTS[1]), 30, "two accounts sending")
        time.sleep(4)
        status = accounts_status(agent)
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
            lambda: accounts_status(agent)[broken]["spool"]["pending_datums"] == 0,
            30,
            "the third account drained",
        )
        snapshot = json.dumps(status_of(agent))
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


# -- external id -------------------------------------------------------------------------------
def test_a_role_demanding_an_external_id_holds_its_account_until_the_config_sends_it(
    fleet: tuple[Harness, dict[str, Vm]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first account's role trusts the host only with the external id `hive-host-7` (its
    trust policy's sts:ExternalId condition, enforced by the strict endpoint as STS does: 403
    AccessDenied to an AssumeRole without it or with another). Run without an external id,
    then reloaded with a wrong one, that account's datums wait in its spool, counted, none
    dropped, while the other two accounts (roles without the condition, which STS assumes
    whatever external id comes along) flow; reloaded with the right one, its backlog goes out,
    into its own account."""
    h, vms = fleet
    url, endpoint = fresh_endpoint(h, monkeypatch)
    strict, *others = ACCOUNTS
    endpoint.required_external_ids = {role_of(strict): EXTERNAL_ID}

    def refused_with(external_id: str | None) -> bool:
        return any(
            c.role_arn == role_of(strict) and c.status == 403 and c.external_id == external_id
            for c in list(endpoint.assume_role_calls)
        )

    def held_while_others_flow(external_id: str | None, before: dict[str, Any]) -> bool:
        """The strict role refused with `external_id`, the others sending on since `before`
        (or the strict account dropped something: the test fails on it at once)."""
        now = accounts_status(agent)
        if drops(now.get(strict, {})):
            return True
        return refused_with(external_id) and all(
            sent(now.get(a, {})) > sent(before.get(a, {})) for a in others
        )

    agent = AgentProcess(h, tmp_path / "agent", url, accounts={"role_arn": ROLE})
    with Running(agent):
        agent.start(env=AGENT_ENV)
        wait_for(
            lambda: held_while_others_flow(None, {}),
            30,
            "the others sending, the strict role refused without an external id",
        )
        assert drops(accounts_status(agent)[strict]) == {}
        reconfigure(agent, {"role_arn": ROLE, "external_id": "hive-host-8"})
        before = accounts_status(agent)
        wait_for(
            lambda: held_while_others_flow("hive-host-8", before),
            30,
            "the others still sending, the strict role refused with the wrong external id",
        )
        status = accounts_status(agent)
        held = status[strict]
        assert pending(held) > 0 and sent(held) == 0, held
        assert drops(held) == {}, held
        assert "AccessDenied" in (held["publisher"]["last_error"] or ""), held
        for account in others:
            assert status[account]["state"] == "sending" and drops(status[account]) == {}
        strict_calls = [c for c in endpoint.assume_role_calls if c.role_arn == role_of(strict)]
        assert {(c.external_id, c.status) for c in strict_calls} == {
            (None, 403),
            ("hive-host-8", 403),
        }
        waiting = pending(held)

        reconfigure(agent, {"role_arn": ROLE, "external_id": EXTERNAL_ID})
        wait_for(
            lambda: sent(accounts_status(agent)[strict]) >= waiting,
            30,
            "the strict account's backlog",
        )
        wait_for(
            lambda: pending(accounts_status(agent)[strict]) == 0, 30, "the strict account drained"
        )
        assert drops(accounts_status(agent)[strict]) == {}
        assert agent.stop() == 0

    strict_calls = [c for c in endpoint.assume_role_calls if c.role_arn == role_of(strict)]
    issued = {c.access_key for c in strict_calls if c.status == 200}
    assert issued and {c.external_id for c in strict_calls if c.status == 200} == {EXTERNAL_ID}
    delivered = [d for d in endpoint.accepted if d.access_key in issued]
    # Everything counted as waiting arrived, with the strict role's keys, and only its VM's.
    assert len(delivered) >= waiting
    assert {owner(d, vms) for d in delivered} == {strict}
    assert endpoint.refused.get("ExpiredToken", 0) == 0
    for account in ACCOUNTS:
        assert instances_in(url, account, external_id=EXTERNAL_ID) == {vms[account].instance_id}


# -- profiles ----------------------------------------------------------------------------------
def iam_user_keys(moto_url: str, account: str, user: str) -> tuple[str, str]:
    """A long-term access key of an IAM user made in `account` (the module docstring: made
    with a key of that account, which an AssumeRole of a role in it gives)."""
    own = {"aws_access_key_id": "AKIATESTSETUP0000001", "aws_secret_access_key": "setup"}
    where = {"region_name": "us-east-1", "endpoint_url": moto_url}
    creds = boto3.client("sts", **where, **own).assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/Setup", RoleSessionName="test-setup"
    )["Credentials"]
    iam = boto3.client(
        "iam",
        **where,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    keys = (key["AccessKeyId"], key["SecretAccessKey"])
    identity = boto3.client(
        "sts", **where, aws_access_key_id=keys[0], aws_secret_access_key=keys[1]
    ).get_caller_identity()
    assert identity["Account"] == account  # whose key it is, to moto as to AWS
    return keys


def test_an_account_routed_by_a_profile_signs_with_that_profiles_own_keys(
    fleet: tuple[Harness, dict[str, Vm]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hypervisor.accounts.profiles names a profile of the shared credentials file for the
    second account, whose keys are an IAM user's of that account; the others go by the role
    template. The profile comes first (README: "the profile named for the account in
    profiles, else the role_arn template"): the second account's role is made unassumable and
    never asked for. Read back with the profile's own keys, that account holds exactly its
    VM's series; every datum of that VM went signed with the profile's key, and nothing else
    did; the profile's keys show in neither the log nor /status."""
    h, vms = fleet
    url, endpoint = fresh_endpoint(h, monkeypatch)
    profiled = ACCOUNTS[1]
    endpoint.denied_roles = {role_of(profiled)}
    keys = iam_user_keys(f"http://127.0.0.1:{h.moto_port}", profiled, "hive-tenant-b")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[tenant-b]\naws_access_key_id = {keys[0]}\naws_secret_access_key = {keys[1]}\n"
    )
    config_file = tmp_path / "config"
    config_file.write_text("[profile tenant-b]\nregion = us-east-1\n")
    agent = AgentProcess(
        h,
        tmp_path / "agent",
        url,
        accounts={"role_arn": ROLE, "profiles": {profiled: "tenant-b"}, "unrouted": "hold"},
    )
    with Running(agent):
        agent.start(
            env={
                **AGENT_ENV,
                "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
                "AWS_CONFIG_FILE": str(config_file),
            }
        )

        def role_asked() -> list[Any]:
            return [c for c in endpoint.assume_role_calls if c.role_arn == role_of(profiled)]

        wait_for(
            lambda: (
                all(sent(accounts_status(agent).get(a, {})) > 0 for a in ACCOUNTS) or role_asked()
            ),
            30,
            "every account sending",
        )
        assert role_asked() == []
        snapshot = json.dumps(status_of(agent))
        assert agent.stop() == 0

    assert role_asked() == []
    assert instances_in(url, profiled, keys=keys) == {vms[profiled].instance_id}
    for account in ACCOUNTS:
        if account != profiled:
            assert instances_in(url, account) == {vms[account].instance_id}
    mine = [d for d in endpoint.accepted if owner(d, vms) == profiled]
    assert mine and {d.access_key for d in mine} == {keys[0]}
    assert {owner(d, vms) for d in endpoint.accepted if d.access_key == keys[0]} == {profiled}
    for text in (agent.log.read_text(), snapshot):
        assert keys[0] not in text and keys[1] not in text


# -- credential refresh ------------------------------------------------------------------------
LIFETIME_S = 8.0


def test_short_lived_role_credentials_are_renewed_and_a_failed_renewal_holds_only_its_account(
    fleet: tuple[Harness, dict[str, Vm]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The strict endpoint gives every AssumeRole's credentials a lifetime of 4 s and refuses
    a PutMetricData signed with an expired key (403 ExpiredToken, as AWS does).

    What this relies on, from botocore (botocore/credentials.py, the version in the venv): the
    agent's role credentials are a DeferredRefreshableCredentials over an
    AssumeRoleCredentialFetcher (hiveagent.wire._assume_role), with RefreshableCredentials'
    default windows: `_advisory_refresh_timeout` 15 min, `_mandatory_refresh_timeout` 10 min.
    Every signing calls get_frozen_credentials -> _refresh: with less than 15 min left it
    refreshes; with less than 10 min left the refresh is mandatory, and a failed mandatory
    refresh raises (the PutMetricData fails with STS's error) instead of signing with the old
    key. The fetcher's own cache (CachedCredentialFetcher) also counts credentials with under
    15 min left as expired, so each refresh is a real AssumeRole. After a refresh botocore
    raises if the new credentials are already expired; they are good for over 3 s here.
    So at 4 s (< 10 min) every signing of a tenant's PutMetricData is preceded by an
    AssumeRole, and each key signs one request at most: the accounts keep sending for longer
    than a key lives with no ExpiredToken, and once the third account's role is denied its
    datums wait in its spool (its last good key is not used again, not even while it still
    lives) until the role is allowed again."""
    h, vms = fleet
    url, endpoint = fresh_endpoint(h, monkeypatch)
    endpoint.credential_lifetime_s = LIFETIME_S
    roles = {account: role_of(account) for account in ACCOUNTS}

    def puts(account: str) -> list[RequestInfo]:
        """The PutMetricData requests accepted with keys of the account's role."""
        return [
            r
            for r in list(endpoint.requests)
            if r.status == 200 and endpoint.role_of(r.access_key) == roles[account]
        ]

    def outlived_a_key(account: str) -> bool:
        """Sent with the role's keys for longer than one key lives."""
        done = puts(account)
        if len(done) < 3:
            return False
        first = endpoint.issued_keys[done[0].access_key or ""]
        return done[-1].received - first.issued > LIFETIME_S + 1

    def expired() -> int:
        return endpoint.refused.get("ExpiredToken", 0)

    def reused_keys() -> dict[str, int]:
        """Role keys that signed more than one request (a renewal before every use: none)."""
        uses = Counter(
            r.access_key
            for r in list(endpoint.requests)
            if endpoint.role_of(r.access_key) in roles.values()
        )
        return {key: n for key, n in uses.items() if key and n > 1}

    def refusals_of(role: str) -> int:
        return sum(
            1 for c in list(endpoint.assume_role_calls) if c.role_arn == role and c.status == 403
        )

    agent = AgentProcess(h, tmp_path / "agent", url, accounts={"role_arn": ROLE})
    with Running(agent):
        agent.start(env=AGENT_ENV)
        wait_for(
            lambda: all(outlived_a_key(a) for a in ACCOUNTS) or expired(),
            40,
            "keys outlived",
        )
        assert expired() == 0
        assert reused_keys() == {}
        for account in ACCOUNTS:
            assumed = [c for c in endpoint.assume_role_calls if c.role_arn == roles[account]]
            assert len([c for c in assumed if c.status == 200]) > 1, account
            for r in puts(account):
                key = endpoint.issued_keys[r.access_key or ""]
                assert key.expiration is not None
                assert key.issued <= r.received < key.expiration

        broken = ACCOUNTS[2]
        endpoint.denied_roles = {roles[broken]}
        wait_for(lambda: refusals_of(roles[broken]) > 0, 20, "a renewal refused")
        time.sleep(1)  # a request signed just before is answered by now
        first, t1 = accounts_status(agent), time.time()
        refused_by_then = refusals_of(roles[broken])

        def held_while_others_flow() -> bool:
            now = accounts_status(agent)
            return (
                refusals_of(roles[broken]) > refused_by_then  # retried, and refused again
                and all(sent(now[a]) > sent(first[a]) for a in ACCOUNTS[:2])
                and pending(now[broken]) > pending(first[broken])
            )

        wait_for(
            lambda: held_while_others_flow() or expired(),
            30,
            "the others sending on, the third account retrying and holding",
        )
        second, t2 = accounts_status(agent), time.time()
        assert expired() == 0
        assert reused_keys() == {}  # the last good key was not used again after the refusal
        assert sent(second[broken]) == sent(first[broken]), second[broken]
        assert drops(second[broken]) == {}, second[broken]
        assert not [
            r
            for r in list(endpoint.requests)
            if t1 <= r.received <= t2 and endpoint.role_of(r.access_key) == roles[broken]
        ]
        waiting = pending(second[broken])

        endpoint.denied_roles = set()
        allowed = time.time()
        wait_for(
            lambda: sent(accounts_status(agent)[broken]) >= sent(second[broken]) + waiting,
            30,
            "the third account's backlog",
        )
        assert drops(accounts_status(agent)[broken]) == {}
        assert agent.stop() == 0

    after = [
        d
        for d in endpoint.accepted
        if endpoint.role_of(d.access_key) == roles[broken]
        and endpoint.issued_keys[d.access_key or ""].issued >= allowed
    ]
    assert len(after) >= waiting
    assert {owner(d, vms) for d in after} == {broken}
    assert expired() == 0
    assert reused_keys() == {}
    for account in ACCOUNTS:
        assert instances_in(url, account) == {vms[account].instance_id}


def test_credentials_expired_on_arrival_hold_the_accounts_until_sts_gives_good_ones(
    fleet: tuple[Harness, dict[str, Vm]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STS's credentials already expired by the host's clock (a host clock running ahead of
    STS's by more than their lifetime; here the endpoint gives them a lifetime of 0 s): botocore
    raises RuntimeError("Credentials were refreshed, but the refreshed credentials are still
    expired.") from the refresh (RefreshableCredentials._protected_refresh), not a ClientError
    nor a BotoCoreError. The agent must treat it as the credential failure it is: the datums
    wait, the account retries, and once STS gives good credentials they go out.

    Before the fix, Publisher._put let the RuntimeError through, Publisher.flush raised it, and
    Daemon._tenant_sender ended: one AssumeRole per account, then nothing until a reload or a
    restart, while /status showed the account `sending` with no error and its spool grew."""
    h, vms = fleet
    url, endpoint = fresh_endpoint(h, monkeypatch)
    endpoint.credential_lifetime_s = 0.0
    roles = {account: role_of(account) for account in ACCOUNTS}

    def assumed(account: str) -> int:
        return sum(1 for c in list(endpoint.assume_role_calls) if c.role_arn == roles[account])

    agent = AgentProcess(h, tmp_path / "agent", url, accounts={"role_arn": ROLE})
    with Running(agent):
        agent.start(env=AGENT_ENV)
        wait_for(
            lambda: all(assumed(a) >= 2 for a in ACCOUNTS),
            15,
            "every account trying again for good credentials",
        )
        status = accounts_status(agent)
        for account in ACCOUNTS:
            assert sent(status[account]) == 0 and pending(status[account]) > 0, status[account]
            assert drops(status[account]) == {}, status[account]
        endpoint.credential_lifetime_s = None  # STS's clock and the host's agree again
        wait_for(
            lambda: all(
                sent(t) > 0 and not drops(t)
                for a, t in accounts_status(agent).items()
                if a in ACCOUNTS
            ),
            20,
            "every account sending",
        )
        assert agent.stop() == 0
    for account in ACCOUNTS:
        assert instances_in(url, account) == {vms[account].instance_id}
