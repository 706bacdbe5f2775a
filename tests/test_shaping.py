"""The CloudWatch Agent's config applied to datums: append_dimensions (the ${aws:...} templates
resolved per VM from its sidecar or metadata file, and static ones), aggregation_dimensions,
drop_original_metrics, measurement rename/unit, per-plugin intervals; and the wire protocol pin
seen on the wire."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, recorded

from collectors.guest_cpu import GuestCpu
from collectors.guest_disk import GuestDisk
from collectors.guest_diskio import GuestDiskio
from collectors.guest_mem import GuestMem, parse_guest_stats
from collectors.guest_net import GuestNet
from hiveagent.collector import Collector, Emitter, VmView
from hiveagent.config import parse_config
from hiveagent.cycle import Replies, VmFacts
from hiveagent.discovery import parse_sidecar
from hiveagent.model import Datum, VmSpec
from hiveagent.pipeline import Pipeline
from hiveagent.shaping import (
    MetadataFiles,
    VmMetadata,
    parse_metadata,
    plugin_shaping,
    shape,
    template_values,
    vm_dimensions,
)
from hiveagent.vm import parse_host_name
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
    dims = vm_dimensions(config, template_values(SPEC, files.get(SPEC.instance_id)))
    # The sidecar wins over the metadata file; the file fills what the sidecar lacks.
    assert dims == {
        "InstanceId": SPEC.instance_id,
        "ImageId": "ami-0abc",
        "InstanceType": "m5.large",
        "AutoScalingGroupName": "web",
        "Team": "storage",
    }
    # Unknown for a VM: the dimension is left out.
    bare = VmSpec("i-0123456789abcdef1", "/y", None, 1, None, 60, None, "test")
    assert vm_dimensions(config, template_values(bare, files.get(bare.instance_id))) == {
        "InstanceId": bare.instance_id,
        "Team": "storage",
    }
    out = shape(
        [datum("mem_used_percent"), datum("CPUUtilization", InstanceId=SPEC.instance_id)],
        config,
        dims,
        {},
    )
    assert dict(out[0].dimensions) == dims
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
                "append_dimensions": {"InstanceId": "${aws:InstanceId}"},
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
        [datum("cpu_usage_user", cpu="cpu0"), datum("cpu_usage_idle", cpu="cpu0")],
        config,
        vm_dimensions(config, template_values(SPEC, VmMetadata())),
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
    # No append_dimensions: `host` is the guest's host name, here the host's own (the guest
    # agent is a host qemu-ga: gethostname(2), as the CloudWatch Agent's os.Hostname reads it).
    assert {dict(d.dimensions)["host"] for x in disk for d in x} == {socket.gethostname()}
    assert all("InstanceId" not in dict(d.dimensions) for x in disk for d in x)
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


# ---------------------------------------------------------------------------------------------
# The CloudWatch Agent's dimension sets. For each config (the CloudWatch Agent's own samples in
# tests/configs/cloudwatch-agent/ where possible) the expected series are worked out by hand
# from its source (aws/amazon-cloudwatch-agent at the commit tests/configs/cloudwatch-agent/
# README.md names, and the telegraf inputs it builds, aws/telegraf), not from hiveagent:
#  1. each telegraf input's own tags: cpu {cpu} (plugins/inputs/cpu/cpu.go: cpuN, cpu-total;
#     percpu only with resources "*", translator/translate/metrics/metrics_collect/cpu/
#     rulePerCpu.go; totalcpu default true); disk {path, device, fstype, mode}
#     (plugins/inputs/disk/disk.go, device without "/dev/"); diskio {name}
#     (plugins/inputs/diskio/diskio.go; serial only with skip_serial_number false, and the
#     input's default is true); net {interface} (plugins/inputs/net/net.go); mem none;
#  2. a plugin's append_dimensions are input tags (translator/translate/metrics/util/
#     commonconfigutil.go ProcessAppendDimensions; ${aws:...} values resolved under any name by
#     translator/translate/util/placeholderUtil.go ResolveAWSMetadataPlaceholders), added where
#     the input's own tags lack the name, then telegraf's global `host` tag (config/config.go:
#     unless omit_hostname; models/makemetric.go);
#  3. tagexclude: disk's mode, and device too with drop_device (translator/translate/metrics/
#     metrics_collect/disk/ruleDropTags.go);
#  4. only with metrics.append_dimensions set (translator/translate/otel/pipeline/host/
#     translator.go), the ec2tagger processor: InstanceId, ImageId, InstanceType,
#     AutoScalingGroupName where the template sits under its own name
#     (translator/translate/otel/processor/ec2taggerprocessor/translator.go, plugins/processors/
#     ec2tagger/config.go SupportedAppendDimensions), disk's VolumeId from the device tag when
#     disk's append_dimensions asks, each only where absent, and `host` removed
#     (plugins/processors/ec2tagger/ec2tagger.go updateOtelAttributes);
#  5. the cloudwatch output (plugins/outputs/cloudwatch/cloudwatch.go): each rollup of
#     aggregation_dimensions whose names the datum has, if fewer than the datum's (ProcessRollup);
#     the original not sent for drop_original_metrics (IsDropping), renamed ones by their new
#     name (translator/translate/otel/common/metrics.go GetDropOriginalMetrics).

FULL_SPEC = VmSpec(
    "i-0123456789abcdef0",
    "/x",
    None,
    2,
    None,
    60,
    "000000000000",
    "test",
    image_id="ami-0abc",
    instance_type="t3.micro",
    autoscaling_group="web",
)
EC2 = {
    "InstanceId": "i-0123456789abcdef0",
    "ImageId": "ami-0abc",
    "InstanceType": "t3.micro",
    "AutoScalingGroupName": "web",
}
# The guest's host name: the recorded guest-get-host-name reply (qemu-ga 7.2).
HOST_NAME = recorded("qga-guest-get-host-name")["host-name"]
# The recorded guest (2 vCPUs; vda with ext4 on /mnt/data; diskstats of vda and vdb; lo and
# eth0), plus a root filesystem on a Spinifex volume (its serial names vol-00000000000000b01).
ROOT_FS = {
    "name": "vdb",
    "mountpoint": "/",
    "type": "xfs",
    "used-bytes": 1 << 20,
    "total-bytes": 4 << 20,
    "disk": [{"serial": "vol00000000000000b01", "dev": "/dev/vdb"}],
}
ROOT = {"path": "/", "device": "vdb", "fstype": "xfs"}
DATA = {"path": "/mnt/data", "device": "vda", "fstype": "ext4"}
CPUS = ("cpu0", "cpu1")
DEVICES = ("vda", "vdb")  # both have I/O in the recorded diskstats


def _bumped(reply: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    """The same reply a period later: every counter one higher (cpustats: 100 ms)."""
    out = copy.deepcopy(reply)
    for entry in out:
        stats: dict[str, Any] = entry[key] if key else entry
        for field, value in list(stats.items()):
            if isinstance(value, int) and field not in ("cpu", "major", "minor"):
                stats[field] = value + (100 if key is None else 1)
    return out


def cwa_series(
    doc: dict[str, Any], host: str | None = HOST_NAME, spec: VmSpec = FULL_SPEC
) -> tuple[Counter[tuple[str, frozenset[tuple[str, str]]]], Counter[str]]:
    """What hiveagent sends of a period's in-guest datums for `doc`, the recorded replies and
    the guest's `host` name, through its collectors and pipeline: Counter of (metric, its
    dimensions); and what was held back, by reason."""
    config = parse_config(doc)
    facts = VmFacts(pid=1, host_name=host, qga_connected=True)
    view = VmView(spec, config, facts, Replies(), Counter())
    first: dict[str, Any] = {
        "guest-get-cpustats": recorded("qga-guest-get-cpustats"),
        "guest-get-fsinfo": [ROOT_FS, *recorded("qga-guest-get-fsinfo")],
        "guest-get-diskstats": recorded("qga-guest-get-diskstats"),
        "guest-network-get-interfaces": recorded("qga-guest-network-get-interfaces"),
    }
    later = {
        "guest-get-cpustats": _bumped(first["guest-get-cpustats"], None),
        "guest-get-fsinfo": first["guest-get-fsinfo"],
        "guest-get-diskstats": _bumped(first["guest-get-diskstats"], "stats"),
        "guest-network-get-interfaces": _bumped(
            first["guest-network-get-interfaces"], "statistics"
        ),
    }
    datums: list[Datum] = []
    collectors: list[Collector[Any]] = [GuestCpu(), GuestDisk(), GuestDiskio(), GuestNet()]
    for collector in collectors:
        if not collector.enabled(config):
            continue
        prev: Any = None
        for replies in (first, later):
            view.replies = Replies(qga=replies)
            cur = collector.sample(view, prev)
            out = Emitter.for_config(config, 1.0)
            collector.emit(prev, cur, view, out)
            prev = cur
        datums += out.datums
    if GuestMem().enabled(config):
        balloon = recorded("qmp-qom-get-balloon0-guest-stats")
        sample = parse_guest_stats(balloon, sampled_at=balloon["last-update"] + 1)
        out = Emitter.for_config(config, 1.0)
        GuestMem().emit(sample, sample, view, out)
        datums += out.datums
    sent = Pipeline(config).finish_vm(spec, datums)
    assert all(d.namespace == config.guest_namespace for d in sent)
    return Counter((d.name, frozenset(d.dimensions)) for d in sent), view.rejected


def series(*items: tuple[str, dict[str, str]], times: int = 1) -> Counter[Any]:
    return Counter({(name, frozenset(dims.items())): times for name, dims in items})


def sample_config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (REPO / "tests/configs/cloudwatch-agent/sampleConfig" / name).read_text()
    )
    return data


def test_host_name_recorded() -> None:
    assert parse_host_name(recorded("qga-guest-get-host-name")) == HOST_NAME == "vm"


def test_cwa_basic_config() -> None:
    """basic_config_linux.json: all four EC2 templates, so no host (the ec2tagger removes it);
    disk's own tags."""
    got, _ = cwa_series(sample_config("basic_config_linux.json"))
    assert got == series(
        ("mem_used_percent", EC2),
        ("disk_used_percent", {**ROOT, **EC2}),
        ("disk_used_percent", {**DATA, **EC2}),
    )


def test_cwa_standard_config() -> None:
    """standard_config_linux.json: cpu with totalcpu false and no resources sends nothing
    (percpu false, totalcpu false); diskio by name; inodes_free and swap are not produced."""
    got, _ = cwa_series(sample_config("standard_config_linux.json"))
    assert got == series(
        ("mem_used_percent", EC2),
        ("disk_used_percent", {**ROOT, **EC2}),
        ("disk_used_percent", {**DATA, **EC2}),
        *(("diskio_io_time", {"name": dev, **EC2}) for dev in DEVICES),
    )


def test_cwa_plugin_templates() -> None:
    """append_dimensions_host_metrics.json: cpu's own templates resolved (its translator
    turns them into tags), InstanceId from metrics.append_dimensions, no host."""
    got, _ = cwa_series(sample_config("append_dimensions_host_metrics.json"))
    cpu_tags = {**EC2, "ServiceName": "MyServiceApplication"}
    assert got == series(("cpu_usage_idle", {"cpu": "cpu-total", **cpu_tags}))


def test_cwa_ignore_append_dimensions() -> None:
    """ignore_append_dimensions.json: only ${!aws:...} values, which the ec2tagger does not
    fill in; but append_dimensions is set, so host goes too: mem has no dimension left."""
    got, _ = cwa_series(sample_config("ignore_append_dimensions.json"))
    assert got == series(
        ("mem_used_percent", {}),
        ("disk_used_percent", ROOT),
        ("disk_used_percent", DATA),
    )


def test_cwa_drop_original_without_rollups() -> None:
    """drop_origin_linux.json: per-CPU only (totalcpu false), the plugins' static tags, the
    dropped metrics (one renamed) not sent at all: there is no rollup to send them under."""
    got, _ = cwa_series(sample_config("drop_origin_linux.json"))
    cpu = [{"cpu": c, "d1": "foo", "d2": "bar", **EC2} for c in CPUS]
    root = {**ROOT, "d3": "foo3", "d4": "bar4", **EC2}  # resources: / /dev /sys
    assert got == series(
        *(
            (m, dims)
            for m in ("cpu_usage_nice", "cpu_usage_guest", "cpu_usage_active")
            for dims in cpu
        ),
        *((m, root) for m in ("disk_free", "disk_total", "disk_used")),
    )


def test_cwa_complete_config_rollups() -> None:
    """complete_linux_config.json: omit_hostname, the four templates, rollups [ImageId],
    [InstanceId, InstanceType], [d1] and []: each datum also goes under each rollup whose names
    it has (cpu's d1 only on cpu), originals dropped for CPU_USAGE_IDLE and time_active."""
    got, _ = cwa_series(sample_config("complete_linux_config.json"))
    rollups = [
        {"ImageId": EC2["ImageId"]},
        {"InstanceId": EC2["InstanceId"], "InstanceType": EC2["InstanceType"]},
        {},
    ]
    expected: Counter[Any] = Counter()

    def add(
        name: str,
        dims: dict[str, str],
        extra: tuple[dict[str, str], ...] = (),
        dropped: bool = False,
    ) -> None:
        if not dropped:
            expected.update(series((name, dims)))
        for r in (*rollups, *extra):
            expected.update(series((name, r)))

    for c in CPUS:
        cpu = {"cpu": c, "d1": "foo", "d2": "bar", **EC2}
        add("CPU_USAGE_IDLE", cpu, ({"d1": "foo"},), dropped=True)
        add("cpu_time_active", cpu, ({"d1": "foo"},), dropped=True)
        for m in ("cpu_usage_nice", "cpu_usage_guest", "cpu_usage_active"):
            add(m, cpu, ({"d1": "foo"},))
    for m in ("DISK_FREE", "disk_total", "disk_used"):
        add(m, {**ROOT, "d3": "foo3", "d4": "bar4", **EC2})
    for dev in DEVICES:
        for m in ("reads", "writes", "read_time", "write_time", "io_time"):
            add(f"diskio_{m}", {"name": dev, **EC2})
    for m in ("mem_used", "mem_cached", "mem_total"):
        add(m, EC2)
    for m in ("bytes_sent", "bytes_recv", "drop_in", "drop_out"):
        add(f"net_{m}", {"interface": "eth0", **EC2})
    assert got == expected


def test_cwa_host_without_append_dimensions() -> None:
    """dualstack_config.json and validMetricsDestinations.json: no append_dimensions, so the
    host tag stays, beside cpu's own."""
    got, _ = cwa_series(sample_config("dualstack_config.json"))
    assert got == series(("cpu_usage_active", {"cpu": "cpu-total", "host": HOST_NAME}))
    destinations = json.loads(
        (
            REPO / "tests/configs/cloudwatch-agent/sampleSchema/validMetricsDestinations.json"
        ).read_text()
    )
    got, _ = cwa_series(destinations)
    assert got == series(
        *(("cpu_usage_guest", {"cpu": c, "host": HOST_NAME}) for c in ("cpu-total", *CPUS))
    )


def test_cwa_omit_hostname() -> None:
    """jmx_config_linux.json: omit_hostname and no append_dimensions: cpu's and disk's own
    tags only; dropped originals not sent (no rollups)."""
    got, _ = cwa_series(sample_config("jmx_config_linux.json"))
    assert got == series(
        *(
            (m, {"cpu": c})
            for m in ("cpu_usage_nice", "cpu_usage_guest", "cpu_usage_active")
            for c in ("cpu-total", *CPUS)
        ),
        *((m, ROOT) for m in ("DISK_FREE", "disk_total", "disk_used")),
    )


def test_volume_id_only_when_disk_asks_and_the_ec2tagger_runs() -> None:
    """disk's "VolumeId": "${aws:VolumeId}": the ec2tagger (there only with
    metrics.append_dimensions) adds it from the device tag, on a disk that is a volume;
    drop_device takes the device tag away before it looks."""
    disk = {"measurement": ["used"], "append_dimensions": {"VolumeId": "${aws:VolumeId}"}}
    instance = {"InstanceId": EC2["InstanceId"]}
    appended = {"append_dimensions": {"InstanceId": "${aws:InstanceId}"}}
    got, _ = cwa_series({"metrics": {**appended, "metrics_collected": {"disk": disk}}})
    assert got == series(
        ("disk_used", {**ROOT, "VolumeId": "vol-00000000000000b01", **instance}),
        ("disk_used", {**DATA, **instance}),  # no serial: not a known volume
    )
    got, _ = cwa_series({"metrics": {"metrics_collected": {"disk": disk}}})
    assert got == series(
        ("disk_used", {**ROOT, "host": HOST_NAME}), ("disk_used", {**DATA, "host": HOST_NAME})
    )
    dropped = {
        "metrics": {**appended, "metrics_collected": {"disk": {**disk, "drop_device": True}}}
    }
    got, _ = cwa_series(dropped)
    assert got == series(
        ("disk_used", {"path": "/", "fstype": "xfs", **instance}),
        ("disk_used", {"path": "/mnt/data", "fstype": "ext4", **instance}),
    )


def test_plugin_tags_precedence_and_rollup_sizes() -> None:
    """telegraf's precedence (models/makemetric.go): the input's own tags over the plugin's
    append_dimensions over the global host; disk's tagexclude also takes a plugin's mode
    (and device with drop_device); a rollup as large as the datum's set is not sent, and a
    plugin's template under another name is resolved."""
    doc: dict[str, Any] = {
        "metrics": {
            "aggregation_dimensions": [["cpu", "host"], ["cpu"]],
            "metrics_collected": {
                "cpu": {
                    "measurement": ["usage_idle"],
                    "append_dimensions": {
                        "host": "pinned",
                        "cpu": "x",
                        "Vm": "${aws:InstanceId}",
                    },
                },
                "disk": {
                    "measurement": ["used"],
                    "resources": ["/"],
                    "drop_device": True,
                    "append_dimensions": {"mode": "rw", "device": "sda", "Team": "t"},
                },
                "mem": {"measurement": ["used_percent"]},
            },
        }
    }
    got, _ = cwa_series(doc)
    cpu = {"cpu": "cpu-total", "host": "pinned", "Vm": EC2["InstanceId"]}
    root = {"path": "/", "fstype": "xfs", "Team": "t", "host": HOST_NAME}
    assert got == series(
        ("cpu_usage_idle", cpu),
        ("cpu_usage_idle", {"cpu": "cpu-total", "host": "pinned"}),
        ("cpu_usage_idle", {"cpu": "cpu-total"}),
        ("disk_used", root),
        ("mem_used_percent", {"host": HOST_NAME}),  # [cpu, host] lacks cpu; [cpu] too
    )
    # mem's only dimension is host: a rollup [] (0 names < 1) is sent, [host] (1, not < 1) not
    doc = {
        "metrics": {
            "aggregation_dimensions": [["host"], []],
            "metrics_collected": {"mem": {"measurement": ["used_percent"]}},
        }
    }
    got, _ = cwa_series(doc)
    assert got == series(("mem_used_percent", {"host": HOST_NAME}), ("mem_used_percent", {}))
    # ... and with the original dropped, the [host] rollup is not sent either: nothing is.
    mem = {"measurement": ["used_percent"], "drop_original_metrics": ["used_percent"]}
    doc = {"metrics": {"aggregation_dimensions": [["host"]], "metrics_collected": {"mem": mem}}}
    got, _ = cwa_series(doc)
    assert got == Counter()
    # The ec2tagger removes host whatever put it there, a plugin's append_dimensions too.
    pinned = {"measurement": ["usage_idle"], "append_dimensions": {"host": "pinned"}}
    doc = {"metrics": {"append_dimensions": {}, "metrics_collected": {"cpu": pinned}}}
    got, _ = cwa_series(doc)
    assert got == series(("cpu_usage_idle", {"cpu": "cpu-total"}))


def test_host_name_unknown_holds_the_datums_back() -> None:
    """No host name (the guest agent never answered, or blocks guest-get-host-name) while the
    config wants `host`: without it, nothing would tell this VM's series from another's, so
    its in-guest datums are not sent, each counted as host_name.unknown. A config without
    host (append_dimensions set, or omit_hostname) does not need it."""
    doc = sample_config("dualstack_config.json")
    got, rejected = cwa_series(doc, host=None)
    assert got == Counter() and rejected == Counter({"host_name.unknown": 1})
    doc = {"metrics": {"metrics_collected": {"mem": {}, "cpu": {"resources": ["*"]}}}}
    got, rejected = cwa_series(doc, host=None)
    # mem: its 7 measurements; cpu: 11 usage_* per series, cpu-total and 2 CPUs
    assert got == Counter() and rejected == Counter({"host_name.unknown": 7 + 3 * 11})
    for config in (
        sample_config("basic_config_linux.json"),
        sample_config("jmx_config_linux.json"),
    ):
        got, rejected = cwa_series(config, host=None)
        assert got and not rejected


def test_agent_hostname_is_every_vms_host() -> None:
    """agent.hostname replaces os.Hostname as the host tag (translator/translate/agent/
    ruleHostname.go sets telegraf's agent hostname; telegraf config/config.go reads
    os.Hostname only when it is empty): every VM gets it, the guest's name is not needed, and
    check-config says that all VMs then share one series."""
    doc: dict[str, Any] = {
        "agent": {"hostname": "fleet-1"},
        "metrics": {"metrics_collected": {"mem": {}}},
    }
    for guest in (None, HOST_NAME):
        got, rejected = cwa_series(doc, host=guest)
        assert set(got) == {(m, frozenset({("host", "fleet-1")})) for m, _ in got}
        assert len(got) == 7 and not rejected
    config = parse_config(doc)
    assert any("carry one `host` for every VM (agent.hostname)" in w for w in config.warnings)
    assert parse_config({"agent": {"hostname": ""}}).hostname is None  # empty: none
    got, _ = cwa_series({**doc, "metrics": {"append_dimensions": {}, **doc["metrics"]}})
    assert {dims for _, dims in got} == {frozenset()}  # the ec2tagger takes it off too


def test_drop_original_wildcard() -> None:
    """drop_original_metrics ["*"] drops every metric of the plugin, renamed ones too
    (translator/translate/otel/common/metrics.go GetDropOriginalMetrics, dropOriginalWildcard):
    only the rollups are sent."""
    cpu = {
        "measurement": ["usage_user", {"name": "usage_idle", "rename": "IDLE"}],
        "drop_original_metrics": ["*"],
    }
    doc = {"metrics": {"aggregation_dimensions": [["cpu"]], "metrics_collected": {"cpu": cpu}}}
    got, _ = cwa_series(doc)
    assert got == series(("cpu_usage_user", {"cpu": "cpu-total"}), ("IDLE", {"cpu": "cpu-total"}))
