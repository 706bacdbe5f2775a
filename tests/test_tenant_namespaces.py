"""hypervisor.accounts.aws_namespaces (issue 17): the EC2 and EBS families of a VM routed to
an account go under AWS/EC2 and AWS/EBS in that account, where the endpoint lets that
account's credentials write them; nowhere else, and nothing else."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from hiveagent.accounts import DEFAULT, UNASSIGNED, tenant_datums, tenant_rules
from hiveagent.config import Config, PublishSettings, parse_config
from hiveagent.model import Datum
from hiveagent.publisher import Publisher
from hiveagent.spool import Spool
from hiveagent.wire import make_client, namespace_refusal
from tests.strict_endpoint import StrictEndpoint

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
