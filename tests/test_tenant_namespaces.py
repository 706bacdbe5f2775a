"""hypervisor.accounts.aws_namespaces (issue 17): the EC2 and EBS families of a VM routed to
an account go under AWS/EC2 and AWS/EBS in that account, where the endpoint lets that
account's credentials write them; nowhere else, and nothing else."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from hiveagent.accounts import DEFAULT, UNASSIGNED, tenant_datums, tenant_rules
from hiveagent.config import Config, PublishSettings, parse_config
from hiveagent.model import Datum
from hiveagent.publisher import Publisher
from hiveagent.spool import Spool
from hiveagent.wire import make_client, namespace_refusal
from tests.harness import Harness, wait_for
from tests.strict_endpoint import StrictEndpoint
from tests.test_delivery import AgentProcess

CONFIGS = Path(__file__).parent / "configs"
TENANT = "111111111111"
T = 1_700_000_000.0


def config(**accounts: object) -> Config:
    doc = json.loads((CONFIGS / "valid" / "tenant-aws-namespaces.json").read_text())
    doc["hypervisor"]["accounts"].update(accounts)
    return parse_config(doc)


def datum(namespace: str, name: str, unit: str = "Count") -> Datum:
    return Datum(namespace, name, (("InstanceId", "i-0123456789abcdef0"),), 1.0, unit, T, 60)


def test_only_the_ec2_and_ebs_families_of_a_routed_vm_are_renamed() -> None:
    c = config()
    sent = [
        datum("Hive/EC2", "CPUUtilization", "Percent"),
        datum("Hive/EBS", "VolumeReadOps"),
        datum("CWAgent", "mem_used_percent", "Percent"),
        datum("HiveAgent", "DatumsSent"),
    ]
    assert [d.namespace for d in tenant_datums(c, TENANT, sent)] == [
        "AWS/EC2",  # AWS's own namespaces for these families (REFERENCE §5)
        "AWS/EBS",
        "CWAgent",
        "HiveAgent",
    ]
    # Only the namespace changes.
    assert [d._replace(namespace="") for d in tenant_datums(c, TENANT, sent)] == [
        d._replace(namespace="") for d in sent
    ]
    # The agent's own route, and VMs held for want of an account, keep the configured ones.
    assert tenant_datums(c, DEFAULT, sent) == sent
    assert tenant_datums(c, UNASSIGNED, sent) == sent
    assert tenant_datums(config(aws_namespaces=False), TENANT, sent) == sent


def test_a_namespace_shared_with_the_guest_family_renames_only_ec2_and_ebs() -> None:
    doc = json.loads((CONFIGS / "valid" / "tenant-aws-namespaces.json").read_text())
    doc["metrics"]["namespace"] = "Hive"
    doc["hypervisor"]["ec2"] = {"namespace": "Hive"}
    c = parse_config(doc)
    out = tenant_datums(
        c, TENANT, [datum("Hive", "CPUUtilization", "Percent"), datum("Hive", "mem_used", "Bytes")]
    )
    assert [d.namespace for d in out] == ["AWS/EC2", "Hive"]


def test_ec2_and_ebs_sharing_one_namespace_go_each_to_their_own() -> None:
    doc = json.loads((CONFIGS / "valid" / "tenant-aws-namespaces.json").read_text())
    doc["hypervisor"]["ec2"] = {"namespace": "Hive/VM"}
    doc["hypervisor"]["ebs"] = {"namespace": "Hive/VM"}
    c = parse_config(doc)
    sent = [datum("Hive/VM", "CPUUtilization", "Percent"), datum("Hive/VM", "VolumeIdleTime")]
    assert [d.namespace for d in tenant_datums(c, TENANT, sent)] == ["AWS/EC2", "AWS/EBS"]


def test_the_tenant_spool_takes_aws_ec2_and_ebs_and_nothing_else_reserved(tmp_path: Path) -> None:
    c = config()
    rules = tenant_rules(c, TENANT)
    assert namespace_refusal("AWS/EC2", rules) is None
    assert namespace_refusal("AWS/EBS", rules) is None
    assert namespace_refusal("AWS/Lambda", rules) == "reserved_namespace"
    assert namespace_refusal("AWS/EC2", tenant_rules(c, DEFAULT)) == "reserved_namespace"
    spool = Spool(tmp_path, fsync=False, rules=rules)
    spool.open()
    now = time.time()
    ds = [datum("Hive/EC2", "CPUUtilization", "Percent")._replace(timestamp=now)]
    spool.add(tenant_datums(c, TENANT, ds))
    assert spool.pending_datums == 1 and spool.ledger.stats() == {}
    [record] = spool.records()
    assert record.namespace == "AWS/EC2"


def test_a_refused_namespace_costs_one_request_and_is_counted(tmp_path: Path) -> None:
    """An endpoint that does not let these credentials write AWS/EC2 refuses the request for
    its namespace, whatever its datums (AWS's rule): the publisher drops the batch in one go,
    counted as rejected, instead of halving it down to one request per datum; the other
    namespaces' datums still arrive."""
    c = config()
    now = time.time()
    sent = [
        datum("Hive/EC2", "CPUUtilization", "Percent")._replace(
            dimensions=(("InstanceId", f"i-{k:017x}"),), timestamp=now
        )
        for k in range(30)
    ] + [datum("CWAgent", "mem_used_percent", "Percent")._replace(timestamp=now)]
    spool = Spool(tmp_path, fsync=False, rules=tenant_rules(c, TENANT))
    spool.open()
    spool.add(tenant_datums(c, TENANT, sent))
    with StrictEndpoint("aws") as endpoint:
        publisher = Publisher(make_client("us-east-1", endpoint.url, 5.0), spool, PublishSettings())
        assert asyncio.run(publisher.flush())
        refused = [r for r in endpoint.requests if r.code is not None]
        assert [(r.status, r.code) for r in refused] == [(400, "InvalidParameterValue")]
        assert [(d.namespace, d.name) for d in endpoint.accepted] == [
            ("CWAgent", "mem_used_percent")
        ]
    assert spool.ledger.stats() == {"dropped.rejected.InvalidParameterValue": 30}
    assert spool.pending_datums == 0


ROLE = "arn:aws:iam::{account_id}:role/HiveAgentPublisher"
ALLOWED, REFUSED = "444444444444", "555555555555"


def series_in(
    url: str, account: str, namespace: str
) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """(metric, dimensions) of the series in `account`'s `namespace`, read back with that
    account's own credentials."""
    client = make_client("us-east-1", url, 10.0, role_arn=ROLE.format(account_id=account))
    return {
        (m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
        for page in client.get_paginator("list_metrics").paginate(Namespace=namespace)
        for m in page["Metrics"]
    }


@pytest.mark.vm
def test_tenants_get_aws_ec2_and_ebs_where_the_endpoint_lets_their_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end (moto as STS and CloudWatch behind the strict endpoint, which lets only the
    first account's role write `AWS/` namespaces, as a private cloud's service role would):
    the first tenant finds its VM's EC2 and EBS series under AWS/EC2 and AWS/EBS, with the
    dimensions AWS gives them, and nothing under Hive/; the second's are refused for their
    namespace, counted as rejected in its account's drops, one request a batch; /status's
    spool_bytes_all_accounts is what the spool directory holds."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHIVEAGENTTEST0002")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hive-secret-2")
    with Harness(tmp_path / "h") as h:
        vms = {}
        for n, account in enumerate((ALLOWED, REFUSED), 81):
            vm = h.launch_vm(n, boot_guest=False, volumes=((8, False),), sidecar=False)
            h.write_sidecar(vm, account_id=account)
            vms[account] = vm
        url = h.start_moto()
        endpoint = h.endpoint
        assert endpoint is not None
        endpoint.reserved_namespace_roles = {ROLE.format(account_id=ALLOWED)}
        agent = AgentProcess(
            h, tmp_path / "agent", url, accounts={"role_arn": ROLE, "aws_namespaces": True}
        )
        agent.start()

        def stats(account: str) -> dict[str, int]:
            t = agent.status()["accounts"].get(account, {})
            return dict(t.get("publisher", {}).get("stats", {}))

        wait_for(
            lambda: (
                stats(ALLOWED).get("datums_sent", 0) >= 20
                and stats(REFUSED).get("dropped.rejected.InvalidParameterValue", 0) >= 10
            ),
            40,
            "the first account sending, the second refused",
        )
        refusals = [r.message for r in endpoint.refusals]
        time.sleep(0.5)  # the agent has counted what the endpoint refused by now

        def on_disk() -> int:
            return sum(p.stat().st_size for p in (tmp_path / "agent").rglob("*.seg"))

        before = on_disk()
        status = agent.status()
        after = on_disk()
        assert agent.stop() == 0
        # every spool, the agent's own included: what the files held just before and after
        # (a cycle's records, a few KB, may have come or gone in between)
        low, high = min(before, after), max(before, after)
        assert low - (8 << 10) <= status["spool_bytes_all_accounts"] <= high + (8 << 10)

        allowed = vms[ALLOWED]
        [volume] = [v.volume_id for v in allowed.volumes]
        ec2 = series_in(url, ALLOWED, "AWS/EC2")
        ebs = series_in(url, ALLOWED, "AWS/EBS")
        # AWS's dimensions: InstanceId for the instance, VolumeId for the volume (REFERENCE §5)
        assert ("CPUUtilization", (("InstanceId", allowed.instance_id),)) in ec2
        assert ("StatusCheckFailed", (("InstanceId", allowed.instance_id),)) in ec2
        assert ("VolumeReadOps", (("VolumeId", volume),)) in ebs
        assert {dict(dims).get("InstanceId") for _, dims in ec2} == {allowed.instance_id}
        assert series_in(url, ALLOWED, "Hive/EC2") == set()
        assert series_in(url, ALLOWED, "Hive/EBS") == set()
        assert series_in(url, REFUSED, "AWS/EC2") == set()
        assert series_in(url, REFUSED, "AWS/EBS") == set()
        # Refused for the namespace only, never for anything else.
        assert refusals and all("for parameter Namespace is invalid" in m for m in refusals)
        # One refused request a batch (a flush's datums of one namespace): at most as many as
        # the datums refused. Halving a batch of n >= 2 datums costs 2n - 1 refused requests.
        refused = status["accounts"][REFUSED]["publisher"]["stats"]
        assert len(refusals) <= refused["dropped.rejected.InvalidParameterValue"]
