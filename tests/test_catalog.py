"""The catalog is the single source: README tables come from it, and every collector emits
only catalog names with catalog dimensions (the Emitter enforces it; checked here)."""

from __future__ import annotations

import pytest
from conftest import REPO

from hiveagent.catalog import CATALOG, Family, dimension_list, markdown_tables
from hiveagent.collector import Emitter
from hiveagent.config import parse_config


def test_readme_tables_match_catalog() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- catalog:begin -->\n")[1].split("<!-- catalog:end -->")[0]
    assert section == markdown_tables(), "regenerate with: hiveagent catalog --markdown"
    for name in CATALOG:
        assert f"`{name}`" in section


def test_emitter_refuses_what_the_catalog_lacks() -> None:
    out = Emitter.for_config(parse_config({}), timestamp=1.0)
    with pytest.raises(KeyError):
        out.emit("NoSuchMetric", 1.0, {"InstanceId": "i-1"})
    with pytest.raises(ValueError):
        out.emit("NetworkIn", 1.0, {"VolumeId": "vol-1"})
    out.emit("NetworkIn", float("nan"), {"InstanceId": "i-1"})
    assert out.datums == [] and out.rejected == ["NetworkIn: not a finite number: nan"]
    out.emit("disk_used", 5, {"path": "/", "fstype": "ext4"})  # device dropped, no host
    [d] = out.datums
    assert (d.namespace, d.unit, d.storage_resolution) == ("CWAgent", "Bytes", 60)
    # A collector emits the CloudWatch Agent's telegraf tags only: InstanceId and the other
    # append_dimensions are the pipeline's (hiveagent.shaping).
    with pytest.raises(ValueError):
        out.emit("mem_used", 5, {"InstanceId": "i-1"})
    with pytest.raises(ValueError):
        out.emit("cpu_usage_idle", 5, {"host": "web-1"})  # cpu is not optional
    out.emit("mem_used", 5, {"host": "web-1"})
    out.emit("mem_used", 5, {})


def test_guest_rows_dimensions() -> None:
    """Every in-guest row: the plugin's telegraf tags, always; `host` and (disk) device and
    VolumeId only as the config says; the README marks those with `?`."""
    own = {"cpu": {"cpu"}, "disk": {"path", "device", "fstype"}, "diskio": {"name"},
           "net": {"interface"}, "mem": set()}  # fmt: skip
    for spec in CATALOG.values():
        if spec.family is not Family.GUEST:
            continue
        plugin = spec.name.split("_", 1)[0]
        optional = {"host", "device", "VolumeId"} if plugin == "disk" else {"host"}
        assert set(spec.dimensions) == own[plugin] | optional, spec.name
        assert set(spec.optional_dimensions) == optional, spec.name
    assert dimension_list(CATALOG["cpu_usage_idle"]) == "cpu, host?"


def test_high_resolution_below_60_s() -> None:
    out = Emitter.for_config(
        parse_config({"agent": {"metrics_collection_interval": 10}}), timestamp=1.0
    )
    out.emit("CPUUtilization", 5.0, {"InstanceId": "i-1"})
    assert out.datums[0].storage_resolution == 1 and out.datums[0].namespace == "Hive/EC2"
