"""Config examples: every valid one loads; every invalid one exits 2 through the real CLI with
its expected text (which names the JSON path) and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import REPO

from hiveagent.catalog import CATALOG, Family
from hiveagent.config import (
    PLUGIN_MEASUREMENTS,
    SCHEMA,
    ConfigError,
    Limits,
    PublishSettings,
    SelfMetricsSettings,
    SpoolSettings,
    StatusServerSettings,
    load_config,
    parse_config,
    schema_default,
    with_defaults,
)

CONFIGS = REPO / "tests" / "configs"
INVALID = sorted((CONFIGS / "invalid").glob("*.json"))


@pytest.mark.parametrize(
    "path", [*sorted((CONFIGS / "valid").glob("*.json")), REPO / "agent.json"], ids=lambda p: p.name
)
def test_valid_configs_load(path: Path) -> None:
    load_config(path)


def test_defaults_and_values() -> None:
    minimal = load_config(CONFIGS / "valid" / "minimal.json")
    assert (
        minimal.interval_s,
        minimal.guest_namespace,
        minimal.ec2_namespace,
        minimal.ebs_namespace,
    ) == (60, "CWAgent", "Hive/EC2", "Hive/EBS")
    assert minimal.spinifex_run_dir == "/run/spinifex" and minimal.disk is None
    generic = load_config(CONFIGS / "valid" / "generic-host.json")
    assert generic.spinifex_run_dir is None
    [g] = generic.generic
    m = g.instance_id_regex.search("/var/lib/libvirt/qemu/web-1.monitor")
    assert m is not None and m.group("instance_id") == "web-1"
    assert generic.disk is not None and generic.disk.metrics == ("disk_used_percent",)
    assert generic.disk.drop_device and generic.qga_max_reply_bytes == 262144
    assert generic.with_run_dir("/tmp/x").spinifex_run_dir == "/tmp/x"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_configs_rejected(path: Path) -> None:
    expected = path.with_suffix(".expected").read_text().strip()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)


@pytest.mark.parametrize("path", INVALID[:4], ids=lambda p: p.stem)
@pytest.mark.parametrize("command", ["check-config", "run", "list-vms"])
def test_cli_exit_code_2_without_traceback(path: Path, command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", command, "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert path.with_suffix(".expected").read_text().strip() in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_missing_file_is_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", "check-config", "-c", "/nonexistent.json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "/nonexistent.json: no such file" in proc.stderr


def test_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", "--version"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0 and proc.stdout.startswith("hiveagent 0.")


def _schema_defaults(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, schema node) of every key the schema gives a default, plugins excepted."""
    if "$ref" in node:
        node = {**SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]], **node}
    for key, sub in node.get("properties", {}).items():
        where = f"{path}.{key}".lstrip(".")
        if "default" in sub:
            yield where, sub
        if where != "metrics.metrics_collected":  # plugins: test_plugin_measurements_...
            yield from _schema_defaults(sub, where)


def test_defaults_are_declared_once_in_the_schema() -> None:
    """Parsing {} gives exactly the schema's defaults: every field holding a key reads it, a
    settings class's own defaults are the schema's, and every default the schema declares is
    read by something. Only defaults derived from other keys are code."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(with_defaults({}))  # defaults are valid
    config = parse_config({})
    settings = (config.limits, config.spool, config.publish, config.self_metrics)
    keyed = set()
    for obj in (config, *settings, config.status_server):
        for f in fields(obj):
            if "key" not in f.metadata:
                continue
            path, convert = f.metadata["key"], f.metadata["convert"]
            keyed.add(path)
            try:
                expected = schema_default(path)
            except KeyError:  # no default: absent is None
                expected = None
            if convert is not None and expected is not None:
                expected = convert(expected)
            assert getattr(obj, f.name) == expected, path
            # Config's fields have no default of their own; a settings class's is the schema's
            assert f.default == (MISSING if obj is config else expected), path
    assert (Limits(), PublishSettings(), SelfMetricsSettings(), StatusServerSettings()) == (
        config.limits,
        config.publish,
        config.self_metrics,
        config.status_server,
    )
    assert SpoolSettings(config.spool.directory) == config.spool
    assert Limits.max_filesystems == schema_default("hypervisor.limits.max_filesystems")

    read_by_code = {
        "hypervisor.discovery.spinifex.enabled",
        "hypervisor.discovery.spinifex.run_dir",
        "hypervisor.discovery.generic",
    }
    for path, node in _schema_defaults(SCHEMA):
        section = node["default"] == {} and node.get("additionalProperties") is False
        assert section or path in keyed | read_by_code, f"{path}: a default nothing reads"

    # Defaults derived from other keys: code, described in the schema.
    hyper = SCHEMA["properties"]["hypervisor"]["properties"]
    assert config.spinifex_run_dir == schema_default("hypervisor.discovery.spinifex.run_dir")
    assert config.generic == ()
    assert config.spool.directory == str(Path(config.state_dir) / "spool")
    assert "<state_dir>/spool" in hyper["spool"]["properties"]["directory"]["description"]
    assert config.vm_deadline_s == max(5.0, 2 * (config.qmp_timeout_s + config.qga_timeout_s))
    assert "qmp.timeout_seconds" in hyper["vm_deadline_seconds"]["description"]
    assert config.disk is None and config.cpu is None  # plugins: off unless named


@pytest.mark.parametrize("plugin", list(PLUGIN_MEASUREMENTS))
def test_plugin_measurements_are_the_catalog_rows(plugin: str) -> None:
    """A plugin's measurement names (schema enums, default list) are its catalog rows."""
    rows = tuple(
        name
        for name, spec in CATALOG.items()
        if spec.family is Family.GUEST and name.startswith(f"{plugin}_")
    )
    assert rows and tuple(f"{plugin}_{m}" for m in PLUGIN_MEASUREMENTS[plugin]) == rows
    collected = SCHEMA["properties"]["metrics"]["properties"]["metrics_collected"]["properties"]
    section = collected[plugin]["properties"]
    names = [*PLUGIN_MEASUREMENTS[plugin], *rows]  # without the prefix, then with it
    assert section["measurement"]["items"]["oneOf"][0]["enum"] == names
    assert section["measurement"]["items"]["oneOf"][1]["properties"]["name"]["enum"] == names
    assert section["drop_original_metrics"]["items"]["enum"] == names
    assert section["measurement"]["default"] == list(PLUGIN_MEASUREMENTS[plugin])
    parsed = getattr(parse_config({"metrics": {"metrics_collected": {plugin: {}}}}), plugin)
    assert parsed.metrics == rows  # the default: every row of the plugin


def test_metric_names_live_only_in_the_catalog() -> None:
    guest = {name for name, spec in CATALOG.items() if spec.family is Family.GUEST}
    assert guest == {f"{p}_{m}" for p, names in PLUGIN_MEASUREMENTS.items() for m in names}
    raw = (REPO / "hiveagent" / "schema" / "agent.schema.json").read_text()
    assert [name for name in guest if json.dumps(name) in raw] == []
