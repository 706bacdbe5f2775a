"""The CloudWatch Agent's config applied to datums: append_dimensions (the ${aws:...} templates
resolved per VM from its sidecar or metadata file, and static ones), aggregation_dimensions,
drop_original_metrics, measurement rename/unit, per-plugin intervals; and the wire protocol pin
seen on the wire."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from hiveagent.config import parse_config
from hiveagent.discovery import parse_sidecar
from hiveagent.model import Datum, VmSpec
from hiveagent.shaping import MetadataFiles, parse_metadata, plugin_shaping, shape, vm_dimensions
from hiveagent.wire import make_client
from tests.harness import Collection

SPEC = VmSpec(
    "i-0123456789abcdef0",
    "/x",
    None,
    2,
    None,
    60,
    "000000000000",
    "test",
    image_id="ami-0abc",
    instance_type=None,
    autoscaling_group="web",
)


def datum(name: str, **dims: str) -> Datum:
    ns = "CWAgent" if "_" in name else "Hive/EC2"
    return Datum(ns, name, tuple(sorted(dims.items())), 42.0, "Percent", 1.0, 60)


def test_append_dimensions_templates_and_static(tmp_path: Path) -> None:
    meta = tmp_path / "meta-i-0123456789abcdef0.json"
    meta.write_text(json.dumps({"instance_type": "m5.large", "image_id": "ami-ignored"}))
    config = parse_config(
        {
            "metrics": {
                "append_dimensions": {
                    "InstanceId": "${aws:InstanceId}",
                    "ImageId": "${aws:ImageId}",
                    "InstanceType": "${aws:InstanceType}",
                    "AutoScalingGroupName": "${aws:AutoScalingGroupName}",
                    "Team": "storage",
                }
            },
            "hypervisor": {"instance_metadata": str(tmp_path / "meta-{instance_id}.json")},
        }
    )
    files = MetadataFiles(config.instance_metadata)
    dims = vm_dimensions(config, SPEC, files.get(SPEC.instance_id))
    # The sidecar wins over the metadata file; the file fills what the sidecar lacks.
    # (InstanceId is not in it: every in-guest datum carries it already.)
    assert dims == {
        "ImageId": "ami-0abc",
        "InstanceType": "m5.large",
        "AutoScalingGroupName": "web",
        "Team": "storage",
    }
    # Unknown for a VM: the dimension is left out.
    bare = VmSpec("i-0123456789abcdef1", "/y", None, 1, None, 60, None, "test")
    assert vm_dimensions(config, bare, files.get(bare.instance_id)) == {"Team": "storage"}
    out = shape(
        [
            datum("mem_used_percent", InstanceId=SPEC.instance_id),
            datum("CPUUtilization", InstanceId=SPEC.instance_id),
        ],
        config,
        dims,
        {},
    )
    assert dict(out[0].dimensions) == {"InstanceId": SPEC.instance_id, **dims}
    assert out[1].dimensions == (("InstanceId", SPEC.instance_id),)  # EC2 family untouched


def test_sidecar_and_metadata_file_fields() -> None:
    spec = parse_sidecar(
        json.dumps(
            {"instance_id": "i-0123456789abcdef0", "image_id": "ami-1", "instance_type": "t3.micro"}
        ).encode(),
        "/run/spinifex/qmp-telemetry-i-0123456789abcdef0.json",
    )
    assert (spec.image_id, spec.instance_type, spec.autoscaling_group) == (
        "ami-1",
        "t3.micro",
        None,
    )
    m = parse_metadata(
        b'{"image_id": "ami-2", "instance_type": 7, "autoscaling_group": "\\u0000x"}'
    )
    assert (m.image_id, m.instance_type, m.autoscaling_group) == ("ami-2", None, None)
    with pytest.raises(ValueError):
        parse_metadata(b"[1]")


def test_aggregation_drop_original_and_rename() -> None:
    config = parse_config(
        {
            "metrics": {
                "aggregation_dimensions": [["InstanceId"], []],
                "metrics_collected": {
                    "cpu": {
                        "resources": ["*"],
                        "measurement": [
                            "usage_user",
                            {"name": "usage_idle", "rename": "CPU_IDLE", "unit": "None"},
                        ],
                        "drop_original_metrics": ["cpu_usage_user"],
                        "append_dimensions": {"Tier": "gold"},
                    }
                },
            }
        }
    )
    plugins = plugin_shaping(config)
    inst = SPEC.instance_id
    got = shape(
        [
            datum("cpu_usage_user", InstanceId=inst, cpu="cpu0"),
            datum("cpu_usage_idle", InstanceId=inst, cpu="cpu0"),
        ],
        config,
        {},
        plugins,
    )
    series = {(d.name, d.dimensions, d.unit) for d in got}
    assert series == {
        # user: the original (per CPU) dropped, only its aggregations
        ("cpu_usage_user", (("InstanceId", inst),), "Percent"),
        ("cpu_usage_user", (), "Percent"),
        # idle: renamed and relabelled everywhere, original kept with the plugin's dimension
        ("CPU_IDLE", (("InstanceId", inst), ("Tier", "gold"), ("cpu", "cpu0")), "None"),
        ("CPU_IDLE", (("InstanceId", inst),), "None"),
        ("CPU_IDLE", (), "None"),
    }
    assert {d.value for d in got} == {42.0}  # relabel only


def test_per_plugin_interval_and_resolution(tmp_path: Path) -> None:
    """A real guest-less QEMU with a host qemu-ga as its guest agent: disk every 2nd cycle."""
    from tests.bench import start_peers

    procs = start_peers(tmp_path, 1)
    try:
        config = parse_config(
            {
                "agent": {"metrics_collection_interval": 10},
                "metrics": {
                    "metrics_collected": {
                        "disk": {"metrics_collection_interval": 20},
                        "cpu": {"metrics_collection_interval": 120},
                    }
                },
                "hypervisor": {
                    "discovery": {"spinifex": {"run_dir": str(tmp_path / "all")}},
                    "state_dir": str(tmp_path / "state"),
                },
            }
        )
        agent = Collection(config)

        async def run() -> list[list[Datum]]:
            out = [await agent.cycle() for _ in range(4)]
            await agent.close()
            return out

        cycles = asyncio.run(run())
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    disk = [[d for d in c if d.name == "disk_used"] for c in cycles]
    assert [bool(x) for x in disk] == [True, False, True, False]
    assert {d.storage_resolution for x in disk for d in x} == {1}  # 20 s < 60 s
    assert all(not [d for d in c if d.name.startswith("cpu_usage")] for c in cycles)  # 120 s
    ec2 = [d for c in cycles for d in c if d.name == "StatusCheckFailed"]
    assert len(ec2) == 4 and {d.storage_resolution for d in ec2} == {1}


@pytest.mark.vm
@pytest.mark.parametrize(
    "protocol,content_type",
    [
        ("query", "application/x-www-form-urlencoded; charset=utf-8"),
        ("json", "application/x-amz-json-1.0"),
    ],
)
def test_wire_protocol_pin_on_the_wire(moto_url: str, protocol: str, content_type: str) -> None:
    from tests.fault_proxy import FaultProxy

    proxy = FaultProxy(int(moto_url.rsplit(":", 1)[1]))
    try:
        client = make_client("us-east-1", proxy.url, 5, protocol)
        ns = f"PinTest/{protocol}"
        client.put_metric_data(
            Namespace=ns,
            MetricData=[
                {"MetricName": "M", "Value": 7.0, "Timestamp": time.time(), "Unit": "Count"}
            ],
        )
        assert proxy.log.content_types == {content_type: 1}
        got = make_client("us-east-1", moto_url).list_metrics(Namespace=ns)["Metrics"]
        assert [m["MetricName"] for m in got] == ["M"]
    finally:
        proxy.close()
