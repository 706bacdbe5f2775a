"""Config examples: every valid one loads with exactly the warnings its `.warnings` file lists;
every invalid one exits 2 through the real CLI with its expected text (which names the JSON
path) and no traceback. The CloudWatch Agent's own sample configs (tests/configs/cloudwatch-agent,
README there): every one its schema accepts passes check-config with exactly the warnings the
manifest lists, every one it refuses is refused.

`python tests/test_config.py GIT_DIR` refreshes that folder from a clone of
github.com/aws/amazon-cloudwatch-agent (its HEAD).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import REPO

from hiveagent.catalog import CATALOG, Family
from hiveagent.cli import main
from hiveagent.config import (
    CWA_MEASUREMENTS,
    CWA_SCHEMA,
    NOT_YET_HONOURED,
    PLUGIN_MEASUREMENTS,
    SCHEMA,
    SERVED_PLUGINS,
    AccountSettings,
    ConfigError,
    Limits,
    PublishSettings,
    SelfMetricsSettings,
    SpoolSettings,
    StatusServerSettings,
    cwa_unit,
    did_you_mean,
    load_config,
    parse_config,
    schema_default,
    with_defaults,
)

CONFIGS = REPO / "tests" / "configs"
INVALID = sorted((CONFIGS / "invalid").glob("*.json"))
VALID = [*sorted((CONFIGS / "valid").glob("*.json")), REPO / "agent.json"]
CWA = CONFIGS / "cloudwatch-agent"
MANIFEST = CWA / "manifest.json"
CWA_MANIFEST: dict[str, dict[str, Any]] = (
    json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
)


def expected_warnings(path: Path) -> list[str]:
    listed = path.with_suffix(".warnings")
    return listed.read_text().splitlines() if listed.exists() else []


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_configs_load(path: Path) -> None:
    assert list(load_config(path).warnings) == expected_warnings(path)


def test_check_config_prints_the_warnings_on_stderr() -> None:
    path = CONFIGS / "valid" / "cloudwatch-agent-keys.json"
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0 and f"{path}: OK" in proc.stdout, proc.stderr
    assert proc.stderr.splitlines() == [f"warning: {w}" for w in expected_warnings(path)]


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
    assert generic.omit_hostname and not generic.host_dimension
    assert generic.with_run_dir("/tmp/x").spinifex_run_dir == "/tmp/x"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_configs_rejected(path: Path) -> None:
    expected = path.with_suffix(".expected").read_text().strip()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)


# One refused by the CloudWatch Agent's schema, one by hiveagent's, one not JSON.
CLI_INVALID = [
    CONFIGS / "invalid" / name
    for name in ("cwa-agent-debug-string.json", "typo-in-plugin.json", "not-json.json")
]


@pytest.mark.parametrize("path", CLI_INVALID, ids=lambda p: p.stem)
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
    settings = (config.limits, config.spool, config.publish, config.accounts, config.self_metrics)
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
    assert (
        Limits(),
        PublishSettings(),
        AccountSettings(),
        SelfMetricsSettings(),
        StatusServerSettings(),
    ) == (
        config.limits,
        config.publish,
        config.accounts,
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
        section = node["default"] == {} and node.get("type") == "object"
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
    defaults = tuple(name for name in rows if CATALOG[name].by_default)
    assert section["measurement"]["default"] == [n.split("_", 1)[1] for n in defaults]
    parsed = getattr(parse_config({"metrics": {"metrics_collected": {plugin: {}}}}), plugin)
    # The default: every row of the plugin but cpu's time_* (only when named, as the CloudWatch
    # Agent's collect_cpu_time).
    assert parsed.metrics == defaults
    assert plugin != "cpu" or defaults == tuple(n for n in rows if "_time_" not in n)


def test_metric_names_live_only_in_the_catalog() -> None:
    guest = {name for name, spec in CATALOG.items() if spec.family is Family.GUEST}
    assert guest == {f"{p}_{m}" for p, names in PLUGIN_MEASUREMENTS.items() for m in names}
    raw = (REPO / "hiveagent" / "schema" / "agent.schema.json").read_text()
    assert [name for name in guest if json.dumps(name) in raw] == []


# ---------------------------------------------------------------------------------------------
# The CloudWatch Agent's format: its schema's verdict first, then warnings for what hiveagent
# does not serve.


def cwa_samples() -> list[str]:
    """The sample configs under tests/configs/cloudwatch-agent (its subfolders)."""
    return sorted(p.relative_to(CWA).as_posix() for p in CWA.rglob("*.json") if p.parent != CWA)


def cwa_schema_verdict(data: Any) -> str:
    """The verdict of the CloudWatch Agent's schema (the fixture copy, draft-04) on `data`, with
    whole floats integers, as gojsonschema (the CloudWatch Agent's validator) has them."""
    schema = json.loads((CWA / "schema.json").read_text())
    validator = jsonschema.validators.extend(
        jsonschema.Draft4Validator, type_checker=jsonschema.Draft6Validator.TYPE_CHECKER
    )(schema)
    return "valid" if validator.is_valid(data) else "invalid"


def check_config(argv: Sequence[str]) -> tuple[int, str, str]:
    """hiveagent's CLI in this process: exit code, stdout, stderr. The root logger it sets up
    is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check-config", *argv])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()


def warned_paths(*outputs: str) -> list[str]:
    """The JSON path of each `warning: <path>: <why>` line of check-config's output."""
    return sorted(
        line.removeprefix("warning: ").split(": ", 1)[0]
        for output in outputs
        for line in output.splitlines()
        if line.startswith("warning: ")
    )


def test_cwa_fixture_is_complete() -> None:
    """The manifest names every sample, and hiveagent bundles the fixture's schema."""
    assert sorted(CWA_MANIFEST) == cwa_samples()
    assert len(CWA_MANIFEST) >= 150
    bundled = REPO / "hiveagent" / "schema" / "cloudwatch-agent.schema.json"
    assert bundled.read_bytes() == (CWA / "schema.json").read_bytes()
    assert json.loads(bundled.read_text()) == CWA_SCHEMA
    jsonschema.Draft4Validator.check_schema(CWA_SCHEMA)


@pytest.mark.parametrize("name", sorted(CWA_MANIFEST))
def test_cwa_sample(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CloudWatch Agent's schema accepts passes check-config with exactly the warnings
    listed (by JSON path); what it refuses exits 2 naming the path, without a traceback."""
    expected = CWA_MANIFEST[name]
    path = CWA / name
    assert cwa_schema_verdict(json.loads(path.read_text())) == expected["cwa_schema"]
    for variable in [v for v in os.environ if v.startswith("ENV_")]:
        monkeypatch.delenv(variable)  # the samples' ${ENV_...} references stay unset
    code, out, err = check_config(["-c", str(path)])
    assert "Traceback" not in err
    if expected["cwa_schema"] == "valid":
        assert code == 0, err
        assert f"{path}: OK" in out
        assert warned_paths(out, err) == expected["warnings"]
    else:
        assert code == 2 and out == ""
        assert f"{path}: invalid config:\n  $" in err


@pytest.mark.parametrize(
    "name",
    ["sampleConfig/complete_linux_config.json", "sampleSchema/invalidMetricsDestinations.json"],
)
def test_cwa_sample_through_a_subprocess(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENV_")}
    proc = subprocess.run(
        [sys.executable, "-m", "hiveagent", "check-config", "-c", str(CWA / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    expected = CWA_MANIFEST[name]
    assert "Traceback" not in proc.stderr
    if expected["cwa_schema"] == "valid":
        assert proc.returncode == 0
        assert warned_paths(proc.stdout, proc.stderr) == expected["warnings"]
    else:
        assert proc.returncode == 2 and proc.stdout == ""
        assert "$.metrics.metrics_destinations.amp: 'workspace_id' is a required property" in (
            proc.stderr
        )


def test_cwa_samples_pass_and_fail_as_its_schema_says() -> None:
    """The counts, for the record: every sample the CloudWatch Agent's schema accepts passes."""
    verdicts = [v["cwa_schema"] for v in CWA_MANIFEST.values()]
    assert verdicts.count("valid") >= 120 and verdicts.count("invalid") >= 30


def _cwa_properties(node: dict[str, Any]) -> dict[str, Any]:
    """The properties a CloudWatch Agent schema node declares, through $ref and allOf."""
    while "$ref" in node:
        target: Any = CWA_SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    properties = dict(node.get("properties", {}))
    for sub in node.get("allOf", []):
        properties.update(_cwa_properties(sub))
    return properties


@pytest.mark.parametrize(
    "path",
    [
        (),
        ("agent",),
        ("agent", "credentials"),
        ("metrics",),
        ("metrics", "credentials"),
        ("metrics", "metrics_destinations"),
        ("metrics", "metrics_collected"),
        *(("metrics", "metrics_collected", plugin) for plugin in SERVED_PLUGINS),
    ],
    ids=lambda p: ".".join(p) or "$",
)
def test_every_key_of_the_cwa_schema_is_declared(path: tuple[str, ...]) -> None:
    """Each key the CloudWatch Agent's schema declares is one hiveagent serves or one it warns
    of (x-ignored): a key a refreshed schema adds fails here until it is one or the other."""
    cwa: dict[str, Any] = CWA_SCHEMA
    hive: dict[str, Any] = SCHEMA
    for part in path:
        cwa = _cwa_properties(cwa)[part]
        hive = hive["properties"][part]
    assert set(_cwa_properties(cwa)) <= set(hive["properties"])


@pytest.mark.parametrize(
    ("unit", "sent", "warned"),
    [
        ("Percent", "Percent", False),
        ("percent", "Percent", False),
        ("%", "Percent", False),
        ("ms", "Milliseconds", False),
        ("s", "Seconds", False),
        ("By", "Bytes", False),
        ("bytes/second", "Bytes/Second", False),
        ("kBy", "Kilobytes", False),
        ("MBy/s", "Megabytes/Second", False),
        ("Gbi", "Gigabits", False),
        ("Count", "Count", False),
        ("1", "None", False),
        ("{requests}", "None", False),
        ("KiBy", "None", True),  # the CloudWatch Agent would scale the value by 1.024
        ("min", "None", True),  # ... by 60
        ("k%", "None", True),
        ("unit", "None", True),
        ("Percentage", "None", True),
    ],
)
def test_units_as_the_cloudwatch_agent_reads_them(unit: str, sent: str, warned: bool) -> None:
    got, why = cwa_unit(unit)
    assert (got, why is not None) == (sent, warned)


def test_did_you_mean_only_when_one_key_is_close() -> None:
    assert did_you_mean("measurment", ["measurement", "resources"]) == "measurement"
    assert did_you_mean("agnet", ["agent", "metrics", "logs"]) == "agent"
    assert did_you_mean("inodes", ["inodes_free", "inodes_used", "inodes_total"]) is None
    assert did_you_mean("colour", ["agent", "metrics"]) is None


def test_measurement_names_as_the_cloudwatch_agent_reads_them() -> None:
    config = parse_config(
        {
            "metrics": {
                "metrics_collected": {
                    "cpu": {
                        "measurement": [
                            " usage_idle ",
                            "cpu_time_user",
                            {"name": "cpu_usage_user", "rename": " CPU_USER ", "unit": "%"},
                            "cpu_usage_idle",
                        ]
                    },
                    "disk": {"measurement": ["inodes_free", "inodes_total"]},
                    "diskio": {"measurement": []},
                    "mem": {"measurement": ["mem_used_percent", "mem_shared"]},
                }
            }
        }
    )
    assert config.cpu is not None and config.mem is not None
    assert config.cpu.metrics == ("cpu_usage_idle", "cpu_time_user", "cpu_usage_user")
    assert config.cpu.shaping.renames == (("cpu_usage_user", "CPU_USER", "Percent"),)
    assert config.disk is None and config.diskio is None  # nothing they could produce
    assert config.mem.metrics == ("mem_used_percent",)
    assert [w.split(": ", 1)[0] for w in config.warnings] == [
        "$.metrics.append_dimensions",  # no InstanceId: VMs sharing a host name merge
        "$.metrics.metrics_collected.cpu.measurement[3]",  # named twice
        "$.metrics.metrics_collected.disk",
        "$.metrics.metrics_collected.disk.measurement[0]",
        "$.metrics.metrics_collected.disk.measurement[1]",
        "$.metrics.metrics_collected.diskio.measurement",
        "$.metrics.metrics_collected.mem.measurement[1]",
    ]


def test_every_unproduced_cwa_measurement_says_why() -> None:
    """A name the CloudWatch Agent registers that hiveagent's catalog lacks is warned of with a
    reason of its own (x-cannot-produce), not a generic one."""
    collected = SCHEMA["properties"]["metrics"]["properties"]["metrics_collected"]["properties"]
    for plugin in SERVED_PLUGINS:
        reasons = collected[plugin].get("x-cannot-produce", {})
        for name in set(CWA_MEASUREMENTS[plugin]) - set(PLUGIN_MEASUREMENTS[plugin]):
            assert any(name.startswith(start) for start in reasons), f"{plugin}_{name}"


def test_keys_parsed_for_later_and_warned_until_honoured() -> None:
    """role_arn is in Config and named in a warning while NOT_YET_HONOURED lists it;
    omit_hostname and a plugin's append_dimensions templates are honoured (no warning)."""
    config = parse_config(
        {
            "agent": {
                "credentials": {"role_arn": "arn:aws:iam::123456789012:role/agent"},
                "omit_hostname": False,
            },
            "metrics": {
                "credentials": {"role_arn": "arn:aws:iam::123456789012:role/metrics"},
                "append_dimensions": {"InstanceId": "${aws:InstanceId}"},
                "metrics_collected": {
                    "disk": {
                        "measurement": ["used_percent"],
                        "append_dimensions": {
                            "VolumeId": "${aws:VolumeId}",
                            "InstanceType": "${aws:InstanceType}",
                            "Instance": "${aws:InstanceId}",
                            "Team": "storage",
                        },
                    }
                },
            },
        }
    )
    assert config.role_arn == "arn:aws:iam::123456789012:role/agent"
    assert config.metrics_role_arn == "arn:aws:iam::123456789012:role/metrics"
    assert config.omit_hostname is False and parse_config({}).omit_hostname is False
    assert parse_config({"agent": {"omit_hostname": True}}).omit_hostname is True
    assert config.disk is not None
    assert config.disk.shaping.append_dimensions == (("Team", "storage"),)
    # In a plugin, the CloudWatch Agent resolves the EC2 templates under any name
    # (translator/translate/util/placeholderUtil.go, ResolveAWSMetadataPlaceholders); disk's
    # VolumeId is its ec2tagger's, on with metrics.append_dimensions set.
    assert config.disk.shaping.append_templates == (
        ("Instance", "${aws:InstanceId}"),
        ("InstanceType", "${aws:InstanceType}"),
    )
    assert config.disk.volume_id
    warned = {w.split(": ", 1)[0] for w in config.warnings}
    expected = {
        "$.agent.credentials.role_arn": "agent.credentials.role_arn",
        "$.metrics.credentials.role_arn": "metrics.credentials.role_arn",
    }
    assert warned == {path for path, key in expected.items() if key in NOT_YET_HONOURED}
    assert "agent.omit_hostname" not in NOT_YET_HONOURED


def test_host_and_volume_dimensions_as_the_cloudwatch_agent_decides() -> None:
    """`host` unless agent.omit_hostname or metrics.append_dimensions is present at all
    (amazon-cloudwatch-agent translator/translate/otel/pipeline/host/translator.go adds the
    ec2tagger when conf.IsSet(metrics::append_dimensions), and plugins/processors/ec2tagger/
    ec2tagger.go removes "host"); disk's VolumeId needs that ec2tagger and the device tag
    (translator/translate/otel/processor/ec2taggerprocessor/translator.go, DiskDeviceTagKey
    "device"; translator/.../disk/ruleDropTags.go excludes device with drop_device)."""
    disk = {"measurement": ["used_percent"], "append_dimensions": {"VolumeId": "${aws:VolumeId}"}}

    def cfg(agent: dict[str, Any], metrics: dict[str, Any]) -> Any:
        return parse_config({"agent": agent, "metrics": metrics})

    plain = cfg({}, {"metrics_collected": {"disk": disk}})
    assert plain.host_dimension and plain.disk is not None and not plain.disk.volume_id
    assert any(
        w.startswith("$.metrics.metrics_collected.disk.append_dimensions.VolumeId: ")
        and "only when metrics.append_dimensions is set" in w
        for w in plain.warnings
    )
    assert not cfg({"omit_hostname": True}, {"metrics_collected": {"disk": disk}}).host_dimension
    for appended in ({}, {"InstanceId": "${aws:InstanceId}"}, {"ImageId": "${!aws:ImageId}"}):
        c = cfg({"omit_hostname": False}, {"append_dimensions": appended,
                                           "metrics_collected": {"disk": disk}})  # fmt: skip
        assert not c.host_dimension and c.append_dimensions_set
        assert c.disk is not None and c.disk.volume_id
    dropped = cfg({}, {"append_dimensions": {}, "metrics_collected": {
        "disk": {**disk, "drop_device": True}}})  # fmt: skip
    assert dropped.disk is not None and not dropped.disk.volume_id
    assert any("drop_device takes out the device tag" in w for w in dropped.warnings)


@pytest.mark.parametrize(
    "agent,appended,merging,why",
    [
        ({}, None, "cpu, mem", "told apart by `host` only"),
        ({"omit_hostname": True}, None, "cpu, mem", "agent.omit_hostname"),
        ({}, {"ImageId": "${aws:ImageId}"}, "cpu, mem", "takes out `host`"),
        ({}, {"InstanceId": "${aws:InstanceId}"}, None, ""),
    ],
)
def test_check_config_warns_when_vms_series_can_merge(
    agent: dict[str, Any], appended: dict[str, str] | None, merging: str | None, why: str
) -> None:
    """Two VMs can share a host name (and without host nothing else tells them apart): a
    config whose in-guest metrics carry no instance id is warned of. A plugin's own
    "${aws:InstanceId}" (under any name) tells its VMs apart too."""
    metrics: dict[str, Any] = {
        "metrics_collected": {
            "cpu": {},
            "mem": {},
            "disk": {"append_dimensions": {"Vm": "${aws:InstanceId}"}},
        }
    }
    if appended is not None:
        metrics["append_dimensions"] = appended
    config = parse_config({"agent": agent, "metrics": metrics})
    found = [w for w in config.warnings if w.startswith("$.metrics.append_dimensions: no ")]
    if merging is None:
        assert found == []
    else:
        [warning] = found
        assert f"the in-guest metrics of {merging} " in warning and why in warning


def test_environment_references() -> None:
    data = {
        "agent": {"region": "${REGION}"},
        "metrics": {
            "endpoint_override": "${env:ENDPOINT}",
            "namespace": "Fleet/${TEAM}",
            "credentials": {"role_arn": "${ROLE}"},
        },
    }
    environ = {
        "REGION": "eu-west-1",
        "ENDPOINT": "monitoring.example.internal",  # no scheme: https, as the AWS SDK assumes
        "TEAM": "storage",
        "ROLE": "arn:aws:iam::123456789012:role/x",
    }
    config = parse_config(data, environ=environ)
    assert (config.region, config.endpoint_override, config.guest_namespace) == (
        "eu-west-1",
        "https://monitoring.example.internal",
        "Fleet/storage",
    )
    assert config.metrics_role_arn == environ["ROLE"]
    unset = parse_config(data, environ={})
    assert unset.region is None and unset.endpoint_override is None
    assert unset.guest_namespace == "Fleet/" and unset.metrics_role_arn is None
    assert sorted(w.split(": ", 1)[0] for w in unset.warnings) == [
        "$.agent.region",
        "$.metrics.credentials.role_arn",
        "$.metrics.endpoint_override",
        "$.metrics.namespace",
    ]


def test_what_hiveagent_adds_to_the_format() -> None:
    """The CloudWatch Agent schema's rules hiveagent relaxes, and its own keys."""
    parse_config({"metrics": {"endpoint_override": "https://monitoring.example"}})  # no plugins
    everything = parse_config({"metrics": {"metrics_collected": {"cpu": {}}}})
    assert everything.cpu is not None
    assert everything.cpu.metrics == tuple(
        f"cpu_{m}" for m in PLUGIN_MEASUREMENTS["cpu"] if not m.startswith("time_")
    )
    cpus = parse_config({"metrics": {"metrics_collected": {"cpu": {"resources": ["cpu[0-3]"]}}}})
    assert cpus.cpu is not None and cpus.cpu.resources == ("cpu[0-3]",)
    own = parse_config({"metrics": {"datum_shape": "single_values", "wire_protocol": "json"}})
    assert (own.datum_shape, own.wire_protocol) == ("single_values", "json")
    with pytest.raises(ConfigError, match=r"metrics_collected: needs at least 1 key"):
        parse_config({"metrics": {"metrics_collected": {}}})  # refused, as the CloudWatch Agent


def test_whole_floats_are_integers() -> None:
    """60.0 is an integer to the CloudWatch Agent's validator, and an int in Config."""
    config = parse_config({"agent": {"metrics_collection_interval": 30.0}})
    assert config.interval_s == 30 and isinstance(config.interval_s, int)
    with pytest.raises(
        ConfigError, match=r"metrics_collection_interval: expected integer, got 1.5"
    ):
        parse_config({"agent": {"metrics_collection_interval": 1.5}})


# ---------------------------------------------------------------------------------------------
# Refreshing tests/configs/cloudwatch-agent from a clone of the CloudWatch Agent.

SAMPLE_FOLDERS = {
    "translator/tocwconfig/sampleConfig/": "sampleConfig",
    "translator/config/sampleSchema/": "sampleSchema",
}


def refresh_cwa_fixture(git_dir: str) -> None:
    """Copy the sample configs (.json only: the .yaml/.conf/.toml there are the translator's
    outputs) and the schema from HEAD of `git_dir`, the measurement names from its
    registered_metrics.go, and rewrite manifest.json: the schema's verdict on each sample and,
    for a valid one, the paths check-config warns of now (to review in the diff)."""
    import re
    import shutil

    def git(*args: str) -> bytes:
        cmd = ["git", f"--git-dir={git_dir}", *args]
        return subprocess.run(cmd, check=True, capture_output=True).stdout

    for folder in SAMPLE_FOLDERS.values():
        shutil.rmtree(CWA / folder, ignore_errors=True)
    for path in git("ls-tree", "-r", "--name-only", "HEAD").decode().splitlines():
        for prefix, folder in SAMPLE_FOLDERS.items():
            if path.startswith(prefix) and path.endswith(".json"):
                target = CWA / folder / path.removeprefix(prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(git("show", f"HEAD:{path}"))
    schema = git("show", "HEAD:translator/config/schema.json")
    (CWA / "schema.json").write_bytes(schema)
    (REPO / "hiveagent" / "schema" / "cloudwatch-agent.schema.json").write_bytes(schema)
    (REPO / "hiveagent" / "schema" / "cloudwatch-agent.LICENSE").write_bytes(
        git("show", "HEAD:LICENSE")
    )
    commit = git("rev-parse", "HEAD").decode().strip()
    go = git("show", "HEAD:translator/translate/metrics/config/registered_metrics.go").decode()
    linux = go.split("var Registered_Metrics_Linux = map[string][]string{", 1)[1]
    linux = linux.split("\n}\n", 1)[0]
    names = {
        m.group(1): list(dict.fromkeys(re.findall(r'"([^"]+)"', m.group(2))))
        for m in re.finditer(r'"(\w+)":\s*\{([^}]*)\}', linux)
    }
    measurements = REPO / "hiveagent" / "schema" / "cloudwatch-agent.measurements.json"
    comment = json.loads(measurements.read_text())["$comment"]
    comment = re.sub(r"at commit [0-9a-f]{40}", f"at commit {commit}", comment)
    measurements.write_text(json.dumps({"$comment": comment, **names}, indent=2) + "\n")

    for variable in [v for v in os.environ if v.startswith("ENV_")]:
        del os.environ[variable]
    manifest: dict[str, dict[str, Any]] = {}
    for name in cwa_samples():
        verdict = cwa_schema_verdict(json.loads((CWA / name).read_text()))
        manifest[name] = {"cwa_schema": verdict}
        if verdict == "valid":
            _, out, err = check_config(["-c", str(CWA / name)])
            manifest[name]["warnings"] = warned_paths(out, err)
    (CWA / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"refreshed from {commit}: put it in {CWA / 'README.md'}, review `git diff`")


if __name__ == "__main__":
    refresh_cwa_fixture(sys.argv[1])
