"""agent.json: validated once, then turned into frozen objects.

The format is the Amazon CloudWatch Agent's (`agent`, `metrics`, `logs`, ...) plus a `hypervisor`
section for what that agent has no words for. A document is judged in two steps:

1. The CloudWatch Agent's own schema (hiveagent/schema/cloudwatch-agent.schema.json, a copy of
   its translator/config/schema.json): what it refuses is refused, except for what hiveagent
   adds to the format (`_cwa_exempt`, `_HIVEAGENT_KEYS`).
2. hiveagent's schema (hiveagent/schema/agent.schema.json) on what hiveagent serves. Every key of
   the CloudWatch Agent's format that hiveagent does not serve is declared there with
   `x-ignored: <why>`: it is named in a warning and taken out (`Config.warnings`), so nothing
   accepted is silently dropped. Unknown keys are errors everywhere, including inside plugins
   (where the CloudWatch Agent silently ignores typos), with "did you mean" when one known key
   is close. Measurement names are those the CloudWatch Agent registers
   (schema/cloudwatch-agent.measurements.json); one hiveagent.catalog has no row for is warned
   of as one hiveagent cannot produce. Every error and warning names the JSON path.

One declaration each: every key and its default are declared in the schema
(hiveagent/schema/agent.schema.json, JSON Schema's `default`), and nowhere else; the measurement
names a plugin accepts, and its default measurement list, are its rows in hiveagent.catalog and
are put into the schema when it is loaded. A parsed config is the input with every absent key
that has a default filled in (`with_defaults`); each dataclass field below names the key it
holds (`_key`), and settings objects built directly in code (`PublishSettings()`) take their
defaults from the schema too. Only defaults derived from other keys are code (`parse_config`),
and the schema's `description` of those keys says how.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from hiveagent.catalog import CATALOG, Family
from hiveagent.wire import MAX_DIMENSIONS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

GUEST_PLUGINS = ("cpu", "diskio", "net", "mem")  # the Config attributes holding a GuestPlugin


def catalog_measurements(plugin: str, by_default: bool = False) -> tuple[str, ...]:
    """The CloudWatch Agent measurement names of one plugin, without the `<plugin>_` prefix, in
    catalog order: its in-guest catalog rows; with `by_default`, only those sent when the
    plugin names no measurement (its default measurement list)."""
    prefix = f"{plugin}_"
    names = tuple(
        name.removeprefix(prefix)
        for name, spec in CATALOG.items()
        if spec.family is Family.GUEST
        and name.startswith(prefix)
        and (spec.by_default or not by_default)
    )
    if not names:
        raise KeyError(f"hiveagent.catalog has no in-guest rows named {prefix}*")
    return names


def _fill_from_catalog(node: Any) -> None:
    """Give each `x-catalog-enum: <plugin>` node its enum (the names without, then with, the
    plugin prefix) and each `x-catalog-default: <plugin>` node its default list."""
    if isinstance(node, dict):
        if "x-catalog-enum" in node:
            plugin = node["x-catalog-enum"]
            names = catalog_measurements(plugin)
            node["enum"] = [*names, *(f"{plugin}_{n}" for n in names)]
        if "x-catalog-default" in node:
            node["default"] = list(catalog_measurements(node["x-catalog-default"], True))
        for value in node.values():
            _fill_from_catalog(value)
    elif isinstance(node, list):
        for value in node:
            _fill_from_catalog(value)


def _read_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files("hiveagent").joinpath(f"schema/{name}").read_text(encoding="utf-8")
    )
    return data


def _load_schema() -> dict[str, Any]:
    schema = _read_json("agent.schema.json")
    _fill_from_catalog(schema)
    return schema


SCHEMA = _load_schema()  # with the catalog's names filled in; do not modify
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
_COLLECTED = SCHEMA["properties"]["metrics"]["properties"]["metrics_collected"]["properties"]
# The plugins hiveagent serves: metrics_collected's keys that are not x-ignored.
SERVED_PLUGINS = tuple(p for p, node in _COLLECTED.items() if "x-ignored" not in node)
# hiveagent's measurement names per served plugin (without the plugin prefix): catalog rows.
PLUGIN_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    plugin: catalog_measurements(plugin) for plugin in SERVED_PLUGINS
}

# The CloudWatch Agent's own schema (draft-04; MIT License, schema/cloudwatch-agent.LICENSE),
# judged as the CloudWatch Agent does (gojsonschema): 60.0 is an integer, as since draft-06.
CWA_SCHEMA = _read_json("cloudwatch-agent.schema.json")
CwaValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, type_checker=jsonschema.Draft6Validator.TYPE_CHECKER
)
_CWA_VALIDATOR = CwaValidator(CWA_SCHEMA)
# The measurement names the CloudWatch Agent's translator accepts per Linux plugin (no prefix).
CWA_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    plugin: tuple(names)
    for plugin, names in _read_json("cloudwatch-agent.measurements.json").items()
    if not plugin.startswith("$")
}
# The CloudWatch Agent's append_dimensions templates, under the names its ec2tagger processor
# fills them in for metrics.append_dimensions (plugins/processors/ec2tagger/config.go,
# SupportedAppendDimensions); in a plugin's append_dimensions it resolves them under any name
# (translator/translate/util/placeholderUtil.go, ResolveAWSMetadataPlaceholders).
AWS_TEMPLATES = {
    "InstanceId": "${aws:InstanceId}",
    "ImageId": "${aws:ImageId}",
    "InstanceType": "${aws:InstanceType}",
    "AutoScalingGroupName": "${aws:AutoScalingGroupName}",
}
# disk only, and only with metrics.append_dimensions set: the ec2tagger processor maps the disk's
# `device` tag to its volume (translator/translate/otel/processor/ec2taggerprocessor/
# translator.go; the processor exists only when metrics.append_dimensions is set)
VOLUME_TEMPLATE = ("VolumeId", "${aws:VolumeId}")
# Keys parsed into Config but not acted on yet: each is named in a warning while it is here.
# Whoever honours one removes its entry, and the warning from the tests' lists (tests/configs/
# valid/*.warnings, tests/configs/cloudwatch-agent/manifest.json: see the README there).
NOT_YET_HONOURED: dict[str, str] = {}  # CWA keys parsed but not acted on yet, and why


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """`node` with its local `$ref` ("#/$defs/<name>") merged in; the node's own keys win."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: dict[str, Any] = SCHEMA["$defs"][ref.removeprefix("#/$defs/")]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _schema_node(path: str) -> dict[str, Any]:
    node = SCHEMA
    for part in path.split("."):
        properties = _resolve(node).get("properties", {})
        if part not in properties:
            raise KeyError(f"agent.schema.json has no key {path}")
        node = properties[part]
    return node


def schema_default(path: str) -> Any:
    """The default the schema declares for the key at dotted `path`, e.g.
    "hypervisor.publish.timeout_seconds" (a copy). KeyError if it declares none."""
    node = _resolve(_schema_node(path))
    if "default" not in node:
        raise KeyError(f"agent.schema.json declares no default for {path}")
    return copy.deepcopy(node["default"])


def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a valid agent.json with every absent key that has a schema default set to it,
    sections included. Plugins have none: an absent plugin stays absent (off)."""
    filled = copy.deepcopy(data)
    _fill_defaults(SCHEMA, filled)
    return filled


def _fill_defaults(node: dict[str, Any], value: Any) -> None:
    node = _resolve(node)
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key not in value and "default" in _resolve(sub):
                value[key] = copy.deepcopy(_resolve(sub)["default"])
            if key in value:
                _fill_defaults(sub, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _fill_defaults(node["items"], item)


def _key(path: str, convert: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Field metadata: the field holds the config value at dotted `path`, passed through
    `convert` (None stays None: a key without a default that is absent)."""
    _schema_node(path)  # a misspelt path fails at import
    return {"key": path, "convert": convert}


def _setting(path: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A settings field holding the value at `path`, whose default (for objects built in code,
    e.g. `PublishSettings()`, or read as `Limits.max_cpus`) is the schema's."""
    default = schema_default(path)
    return field(
        default=default if convert is None else convert(default), metadata=_key(path, convert)
    )


def _sorted_items(mapping: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(mapping.items()))


def _tuples(lists: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(items) for items in lists)


_D = TypeVar("_D", bound="DataclassInstance")


def _build(cls: type[_D], filled: dict[str, Any], **derived: Any) -> _D:
    """`cls` with each `_key` field set from the filled config, the others from `derived`."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if "key" not in f.metadata:
            continue
        value: Any = filled
        for part in f.metadata["key"].split("."):
            value = value.get(part)
            if value is None:
                break
        convert = f.metadata["convert"]
        values[f.name] = value if convert is None or value is None else convert(value)
    return cls(**values, **derived)


class ConfigError(Exception):
    """A config problem; `str()` is the operator-facing message naming the JSON path."""


@dataclass(frozen=True)
class Shaping:
    """What a plugin's measurement objects, drop_original_metrics and append_dimensions ask
    for: relabelling after collection (names and units), never a different value."""

    renames: tuple[tuple[str, str | None, str | None], ...] = ()  # (metric, rename, unit)
    drop_original: tuple[str, ...] = ()  # only their aggregated copies are sent
    append_dimensions: tuple[tuple[str, str], ...] = ()  # static, this plugin only
    # (name, one of AWS_TEMPLATES' values): this plugin's templates, under any name, resolved
    # per VM (hiveagent.shaping); disk's ${aws:VolumeId} is DiskPlugin.volume_id instead
    append_templates: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DiskPlugin:
    """metrics.metrics_collected.disk"""

    metrics: tuple[str, ...]  # full CloudWatch Agent names, e.g. "disk_used_percent"
    resources: tuple[str, ...]  # mount points, or ("*",) for all
    ignore_file_system_types: tuple[str, ...]
    drop_device: bool
    interval_s: int  # metrics_collection_interval, else the agent's
    shaping: Shaping
    # VolumeId on each series whose disk is a known volume: append_dimensions has "VolumeId":
    # "${aws:VolumeId}", metrics.append_dimensions is set (the CloudWatch Agent's ec2tagger,
    # which fills it in, exists only then) and drop_device is false (it maps the device tag)
    volume_id: bool = False

    def wants_mount(self, mountpoint: str) -> bool:
        return "*" in self.resources or mountpoint in self.resources


@dataclass(frozen=True)
class GuestPlugin:
    """metrics.metrics_collected.<cpu|diskio|net|mem>: in-guest metrics through the guest
    agent (mem: the balloon through QMP)."""

    metrics: tuple[str, ...]  # full CloudWatch Agent names, e.g. "cpu_usage_user"
    resources: tuple[str, ...]  # CPUs / devices / interfaces; ("*",) = all (mem: always)
    totalcpu: bool  # cpu only: the cpu=cpu-total series (False for the other plugins)
    interval_s: int | None  # metrics_collection_interval; None: the agent's
    shaping: Shaping

    def wants(self, resource: str) -> bool:
        return "*" in self.resources or resource in self.resources


@dataclass(frozen=True)
class GenericDiscovery:
    """One hypervisor.discovery.generic entry: QMP sockets by glob, instance id by regex."""

    qmp_glob: str
    instance_id_regex: re.Pattern[str]
    qga_socket: str | None  # template with {instance_id}, {qmp_dir}
    vcpus: int | None


@dataclass(frozen=True)
class SpoolSettings:
    """hypervisor.spool: the durable queue between collection and the endpoint."""

    directory: str  # hypervisor.spool.directory, else <state_dir>/spool
    # oldest data is dropped (and counted) beyond this
    max_bytes: int = _setting("hypervisor.spool.max_bytes")
    # fsync every append: a datum in the spool survives power loss
    fsync: bool = _setting("hypervisor.spool.fsync")
    # fallback queue when the disk cannot be written
    memory_max_datums: int = _setting("hypervisor.spool.memory_max_datums")


@dataclass(frozen=True)
class AccountSettings:
    """hypervisor.accounts: which credentials sign each VM's metrics (routing by account)."""

    # a template with {account_id}, assumed per account through STS
    role_arn: str | None = field(default=None, metadata=_key("hypervisor.accounts.role_arn"))
    external_id: str | None = field(default=None, metadata=_key("hypervisor.accounts.external_id"))
    sts_endpoint: str | None = field(
        default=None, metadata=_key("hypervisor.accounts.sts_endpoint_override")
    )
    profiles: tuple[tuple[str, str], ...] = _setting("hypervisor.accounts.profiles", _sorted_items)
    unrouted: str = _setting("hypervisor.accounts.unrouted")  # default_credentials | hold
    # the EC2 and EBS families of VMs routed to an account under AWS/EC2 and AWS/EBS
    aws_namespaces: bool = _setting("hypervisor.accounts.aws_namespaces")

    @property
    def enabled(self) -> bool:
        return bool(self.role_arn or self.profiles)

    def role_for(self, account_id: str) -> str | None:
        return self.role_arn.format(account_id=account_id) if self.role_arn else None

    def profile_for(self, account_id: str) -> str | None:
        return dict(self.profiles).get(account_id)


@dataclass(frozen=True)
class PublishSettings:
    """hypervisor.publish: retries and the circuit breaker in front of the endpoint."""

    # connect and read timeout of one PutMetricData call
    timeout_s: float = _setting("hypervisor.publish.timeout_seconds", float)
    # consecutive failures that open the breaker
    breaker_failures: int = _setting("hypervisor.publish.breaker_failures")
    # how long the endpoint is then considered down
    breaker_open_s: float = _setting("hypervisor.publish.breaker_open_seconds", float)
    # full-jitter backoff: uniform(0, min(max, base * 2**n))
    backoff_base_s: float = _setting("hypervisor.publish.backoff_base_seconds", float)
    backoff_max_s: float = _setting("hypervisor.publish.backoff_max_seconds", float)
    # SIGTERM: flush for at most this long, spool the rest
    shutdown_flush_s: float = _setting("hypervisor.publish.shutdown_flush_seconds", float)


@dataclass(frozen=True)
class SelfMetricsSettings:
    """hypervisor.self_metrics: the agent's own health, published like any metric."""

    enabled: bool = _setting("hypervisor.self_metrics.enabled")
    namespace: str = _setting("hypervisor.self_metrics.namespace")
    interval_s: int = _setting("hypervisor.self_metrics.interval_seconds")


@dataclass(frozen=True)
class StatusServerSettings:
    """hypervisor.status_server: /healthz, /status and /metrics over HTTP."""

    enabled: bool = _setting("hypervisor.status_server.enabled")
    address: str = _setting("hypervisor.status_server.address")
    port: int = _setting("hypervisor.status_server.port")


@dataclass(frozen=True)
class Limits:
    """hypervisor.limits: per-VM caps on what one guest (or QEMU) can make us report, so one VM
    cannot blow up cardinality (and its owner's bill). What is cut is counted."""

    max_filesystems: int = _setting("hypervisor.limits.max_filesystems")
    max_block_devices: int = _setting("hypervisor.limits.max_block_devices")
    max_interfaces: int = _setting("hypervisor.limits.max_interfaces")
    max_cpus: int = _setting("hypervisor.limits.max_cpus")
    max_disks: int = _setting("hypervisor.limits.max_disks")  # in-guest block devices (diskio)


@dataclass(frozen=True)
class Config:
    """A parsed agent.json. Fields with `_key` metadata hold that key's value (the schema's
    default when absent); the others are built by parse_config."""

    interval_s: int = field(metadata=_key("agent.metrics_collection_interval"))
    region: str | None = field(metadata=_key("agent.region"))
    debug: bool = field(metadata=_key("agent.debug"))
    # the role every AWS call assumes (the CloudWatch Agent's agent.credentials.role_arn)
    role_arn: str | None = field(metadata=_key("agent.credentials.role_arn"))
    # PutMetricData's own role, over role_arn (metrics.credentials.role_arn)
    metrics_role_arn: str | None = field(metadata=_key("metrics.credentials.role_arn"))
    # True: no host dimension on in-guest datums (telegraf's omit_hostname)
    omit_hostname: bool = field(metadata=_key("agent.omit_hostname"))
    # the host dimension's value for every VM (telegraf's agent hostname); None: each guest's
    hostname: str | None = field(metadata=_key("agent.hostname", lambda v: v or None))
    guest_namespace: str = field(metadata=_key("metrics.namespace"))
    ec2_enabled: bool = field(metadata=_key("hypervisor.ec2.enabled"))
    ec2_namespace: str = field(metadata=_key("hypervisor.ec2.namespace"))
    ebs_enabled: bool = field(metadata=_key("hypervisor.ebs.enabled"))
    ebs_namespace: str = field(metadata=_key("hypervisor.ebs.namespace"))
    endpoint_override: str | None = field(metadata=_key("metrics.endpoint_override"))
    force_flush_interval_s: int = field(metadata=_key("metrics.force_flush_interval"))
    # (name, "${aws:...}" or a static value)
    append_dimensions: tuple[tuple[str, str], ...] = field(
        metadata=_key("metrics.append_dimensions", _sorted_items)
    )
    disk: DiskPlugin | None
    spinifex_run_dir: str | None  # None = Spinifex discovery off
    generic: tuple[GenericDiscovery, ...]
    qmp_timeout_s: float = field(metadata=_key("hypervisor.qmp.timeout_seconds", float))
    qga_enabled: bool = field(metadata=_key("hypervisor.qga.enabled"))
    qga_timeout_s: float = field(metadata=_key("hypervisor.qga.timeout_seconds", float))
    qga_max_reply_bytes: int = field(metadata=_key("hypervisor.qga.max_reply_bytes"))
    max_concurrent_vms: int = field(metadata=_key("hypervisor.max_concurrent_vms"))
    proc_root: str = field(metadata=_key("hypervisor.proc_root"))
    state_dir: str = field(metadata=_key("hypervisor.state_dir"))
    aggregation_dimensions: tuple[tuple[str, ...], ...] = field(
        metadata=_key("metrics.aggregation_dimensions", _tuples)
    )
    # CPUUtilization from the QEMU process, or "vcpu_threads"
    cpu_source: str = field(metadata=_key("hypervisor.ec2.cpu_source"))
    # EC2 tier when the sidecar does not say (period_seconds)
    monitoring: str = field(metadata=_key("hypervisor.ec2.monitoring"))
    # basic-monitoring datums: auto, statistic_sets, value_arrays or single_values
    datum_shape: str = field(metadata=_key("metrics.datum_shape"))
    # auto (botocore's choice) | json | query
    wire_protocol: str = field(metadata=_key("metrics.wire_protocol"))
    # per-VM metadata file template ({instance_id})
    instance_metadata: str | None = field(metadata=_key("hypervisor.instance_metadata"))
    cpu: GuestPlugin | None
    diskio: GuestPlugin | None
    net: GuestPlugin | None
    mem: GuestPlugin | None
    # qom-set it when the guest has none
    balloon_polling_interval_s: int | None = field(
        metadata=_key("hypervisor.balloon.set_polling_interval_seconds")
    )
    vm_deadline_s: float  # the whole collection of one VM in one cycle
    # metrics.append_dimensions is present (even {}, or with only entries warned of): the
    # CloudWatch Agent then runs its ec2tagger processor, which removes `host` from every
    # in-guest datum (translator/translate/otel/pipeline/host/translator.go, ec2tagger.go)
    append_dimensions_set: bool
    limits: Limits
    spool: SpoolSettings
    publish: PublishSettings
    accounts: AccountSettings
    self_metrics: SelfMetricsSettings
    status_server: StatusServerSettings
    source: str = field(default="<memory>", compare=False)
    # what the config asks for that hiveagent does not serve, each naming its JSON path and why:
    # printed by check-config, logged when the daemon loads the config
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def host_dimension(self) -> bool:
        """In-guest datums carry `host`, the guest's host name: telegraf's global tag (unless
        agent.omit_hostname), which the ec2tagger removes when metrics.append_dimensions is
        set."""
        return not self.omit_hostname and not self.append_dimensions_set

    def with_run_dir(self, run_dir: str) -> Config:
        """The `--run-dir` override: Spinifex sidecars are read from run_dir."""
        return replace(self, spinifex_run_dir=run_dir)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _child(path: str, key: str | int) -> str:
    """`path` extended by an array index or object key: `$.a[0]`, `$.a.b`, `$.a["b c"]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _PLAIN_KEY.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def json_path(parts: Any) -> str:
    """`$.metrics.metrics_collected.disk` style path from keys and indices (a jsonschema
    path deque, a tuple)."""
    out = "$"
    for part in parts:
        out = _child(out, part)
    return out


def did_you_mean(word: str, known: Any) -> str | None:
    """The one known word close to `word` (difflib ratio 0.75 or more), or None when there are
    none, or several about as close (within 0.05 of the closest)."""
    scores = sorted(
        ((difflib.SequenceMatcher(None, word, k).ratio(), k) for k in known if isinstance(k, str)),
        reverse=True,
    )
    close = [(score, k) for score, k in scores if score >= 0.75]
    if not close or (len(close) > 1 and close[1][0] > close[0][0] - 0.05):
        return None
    return close[0][1]


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unknown_key(where: str, key: str, known: Any) -> str:
    guess = did_you_mean(key, known)
    if guess is not None:
        return f"{where}: unknown key; did you mean {guess!r}?"
    return f"{where}: unknown key; expected one of: {', '.join(sorted(known))}"


def _describe(error: ValidationError, also_known: Any = ()) -> str:
    path = json_path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = {*error.schema.get("properties", {}), *also_known}
        extra = sorted(set(error.instance) - known)
        return "\n  ".join(_unknown_key(_child(path, key), key, known) for key in extra)
    if error.validator == "required":
        return f"{path}: {error.message}"
    if error.validator == "type":
        return f"{path}: expected {error.validator_value}, got {_show(error.instance)}"
    if error.validator == "enum":
        options = ", ".join(json.dumps(v) for v in error.validator_value)
        return f"{path}: {_show(error.instance)} is not one of: {options}"
    context = error.context or []
    if error.validator == "anyOf" and context and all(e.validator == "required" for e in context):
        names = ", ".join(str(e.validator_value[0]) for e in context)
        return f"{path}: needs one of: {names}"
    if error.validator in ("oneOf", "anyOf") and context:
        return "\n  ".join(_describe(e, also_known) for e in _branch_errors(error))
    if error.validator == "pattern" and tuple(error.absolute_path) == ("agent", "region"):
        return f"{path}: {_show(error.instance)} is not a region name botocore accepts"
    if error.validator == "pattern" and tuple(error.absolute_path) == (
        "metrics",
        "endpoint_override",
    ):
        return f"{path}: {_show(error.instance)} is not an http(s) URL"
    if error.validator == "const":
        return f"{path}: must be {json.dumps(error.validator_value)}"
    limit = error.validator_value
    sizes = {
        "minItems": f"needs at least {limit} item(s)",
        "maxItems": f"holds more than {limit} item(s)",
        "minProperties": f"needs at least {limit} key(s)",
        "maxProperties": f"holds more than {limit} keys",
        "minLength": f"{_show(error.instance)} is shorter than {limit} character(s)",
        "maxLength": f"{_show(error.instance)} is longer than {limit} characters",
        "uniqueItems": "holds the same item twice",
        "not": f"{_show(error.instance)} is not allowed here",
    }
    return f"{path}: {sizes.get(str(error.validator), error.message)}"


def _branch_errors(error: ValidationError) -> list[ValidationError]:
    """The errors of the oneOf/anyOf branch the instance was most likely meant for: one whose
    type it has, with the fewest errors (jsonschema's best_match otherwise)."""
    branches: dict[Any, list[ValidationError]] = {}
    for e in error.context or []:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    typed: list[list[ValidationError]] = [
        errors
        for errors in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in errors)
    ]
    if typed:
        typed.sort(key=len)
        return sorted(typed[0], key=lambda e: list(map(str, e.relative_path)))
    return [best_match(error.context or [])]


def _first_errors(data: Any) -> list[str]:
    errors = sorted(
        _VALIDATOR.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator)
    )
    return [_describe(e) for e in errors]


# ---------------------------------------------------------------------------------------------
# Step 1: the CloudWatch Agent's schema.

# hiveagent's own keys inside the CloudWatch Agent's sections, taken out before its schema
# judges a document (`hypervisor` needs nothing: that schema allows any top-level key).
_HIVEAGENT_KEYS = (("metrics", "datum_shape"), ("metrics", "wire_protocol"))


def _cwa_exempt(error: ValidationError) -> bool:
    """The CloudWatch Agent schema's rules hiveagent relaxes on purpose: `metrics` without
    `metrics_collected` (hypervisor metrics only; an empty one stays refused), a served plugin
    without `measurement` (every catalog row of the plugin), cpu `resources` other than ["*"]
    (glob patterns on cpuN)."""
    path = tuple(error.absolute_path)
    if error.validator == "required":
        if path == ("metrics",):
            return "metrics_collected" not in error.instance
        if len(path) == 3 and path[:2] == ("metrics", "metrics_collected"):
            return path[2] in SERVED_PLUGINS and "measurement" not in error.instance
    cpu_resources = ("metrics", "metrics_collected", "cpu", "resources")
    return path[:4] == cpu_resources and error.validator in ("enum", "maxItems")


def _hive_keys(parts: Any) -> set[str]:
    """The keys hiveagent's schema knows in the object at `parts` (for "did you mean")."""
    node: dict[str, Any] = SCHEMA
    for part in parts:
        node = _resolve(node)
        if isinstance(part, int):
            items = node.get("items")
            if not isinstance(items, dict):
                return set()
            node = items
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            return set()
    return set(_resolve(node).get("properties", {}))


def cwa_errors(data: Any) -> list[str]:
    """What the CloudWatch Agent's own schema refuses in `data` (hiveagent's additions aside),
    one message per problem naming its JSON path."""
    doc = copy.deepcopy(data)
    for section, key in _HIVEAGENT_KEYS:
        if isinstance(doc, dict) and isinstance(doc.get(section), dict):
            doc[section].pop(key, None)
    errors = sorted(
        (e for e in _CWA_VALIDATOR.iter_errors(doc) if not _cwa_exempt(e)),
        key=lambda e: (list(map(str, e.absolute_path)), e.validator),
    )
    return [_describe(e, _hive_keys(e.absolute_path)) for e in errors]


# ---------------------------------------------------------------------------------------------
# Step 2: what hiveagent serves, and warnings for what it does not.

_CW_UNITS = {unit.lower(): unit for unit in SCHEMA["$defs"]["unit"]["enum"]}
# The CloudWatch Agent's unit conversion (internal/cloudwatch/unit.go, ToStandardUnit), on the
# lower-cased unit: CloudWatch's own names, then these base units, then a k/M/G/T (or Ki/Mi/
# Gi/Ti) prefix on a base unit; a few count-like units become None; anything else becomes None
# with a warning in its log.
_BASE_UNITS = {
    "": "None",
    "1": "None",
    "ns": "None",
    "%": "Percent",
    "s": "Seconds",
    "us": "Microseconds",
    "ms": "Milliseconds",
    "b": "Bytes",
    "by": "Bytes",
    "bi": "Bits",
    "b/s": "Bytes/Second",
    "by/s": "Bytes/Second",
    "bi/s": "Bits/Second",
}
_NONE_UNITS = frozenset(
    {
        *("sessions", "errors", "threads", "requests"),
        *("{messages}", "{requests}", "{partitions}", "{operations}", "{controllers}"),
        "{elections}",
    }
)
_SECONDS_TIMES = {"min": 60, "h": 3600, "d": 86400}
_PREFIXES = ("ki", "mi", "gi", "ti", "k", "m", "g", "t")  # its order: binary ones first


def cwa_unit(unit: str) -> tuple[str, str | None]:
    """The CloudWatch unit the CloudWatch Agent makes of a measurement's `unit`, and, when
    hiveagent sends None instead (the CloudWatch Agent would not know the unit, or would
    scale the value), why."""
    u = unit.lower()
    if u in _NONE_UNITS:
        return "None", None
    if u in _CW_UNITS:
        return _CW_UNITS[u], None
    if u in _BASE_UNITS:
        return _BASE_UNITS[u], None
    relabel = "hiveagent relabels, it never converts a value"
    if u in _SECONDS_TIMES:
        return "None", (
            f"the CloudWatch Agent would send Seconds, the value multiplied by "
            f"{_SECONDS_TIMES[u]}; {relabel}"
        )
    for prefix in _PREFIXES:
        if not u.startswith(prefix):
            continue
        base = _BASE_UNITS.get(u[len(prefix) :])
        if base in ("Bits", "Bytes", "Bits/Second", "Bytes/Second"):
            step = "kmgt".index(prefix[0])
            scaled = ("Kilo", "Mega", "Giga", "Tera")[step] + base.lower()
            scaled = scaled.replace("/second", "/Second")
            if len(prefix) == 1:
                return scaled, None
            return "None", (
                f"the CloudWatch Agent would send {scaled}, the value multiplied by "
                f"{1.024 ** (step + 1):g}; {relabel}"
            )
        break
    return "None", "not a unit CloudWatch knows, nor one the CloudWatch Agent converts"


_SAFE_DIMENSION = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _dimension_name_warning(name: str, where: str) -> str | None:
    if not 0 < len(name) <= 255 or name.startswith(":") or not name.isascii():
        return (
            f"{where}: {json.dumps(name)} is not a dimension name AWS CloudWatch accepts (1 to "
            "255 ASCII characters, not starting with ':'): datums carrying it will be refused"
        )
    if not name.isprintable():
        return (
            f"{where}: {json.dumps(name)} holds control characters: datums carrying it are refused"
        )
    if not _SAFE_DIMENSION.fullmatch(name):
        return (
            f"{where}: {json.dumps(name)} is not a dimension name every CloudWatch-compatible "
            "endpoint accepts (letters, digits and _, not starting with a digit): AWS "
            "CloudWatch takes it, Spinifex refuses datums carrying it"
        )
    return None


def _template_problem(value: str, plugin: str | None = None) -> str:
    """Why an `append_dimensions` value that looks like a template is not one the CloudWatch
    Agent (nor hiveagent) fills in where it is: in metrics.append_dimensions (`plugin` None),
    or in that plugin's."""
    if value.startswith("${!aws:"):
        return f"{value}: the '!' form leaves the dimension out"
    for known, template in (*AWS_TEMPLATES.items(), VOLUME_TEMPLATE):
        if value != template:
            continue
        if known == VOLUME_TEMPLATE[0]:
            return (
                f"the CloudWatch Agent fills {value} in only under the name {known} of "
                "metrics_collected.disk"
            )
        if plugin is None:
            return f"the CloudWatch Agent fills {value} in only under the name {known}"
    templates = [*AWS_TEMPLATES.values(), VOLUME_TEMPLATE[1]]
    guess = did_you_mean(value, templates)
    hint = f" (did you mean {guess}?)" if guess else f" ({', '.join(templates)})"
    return f"{value} is not a template the CloudWatch Agent fills in{hint}"


def _whole_numbers(value: Any) -> Any:
    """A copy of a decoded document with each whole float (60.0) an int, as the CloudWatch
    Agent reads them."""
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class _Served:
    """The part of a document hiveagent serves (`doc`, the CloudWatch Agent's keys hiveagent
    does not serve taken out), and what was found on the way."""

    doc: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    templates: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # per plugin
    volume_id: bool = False  # disk's append_dimensions asks "VolumeId": "${aws:VolumeId}"


def _take_ignored(node: dict[str, Any], value: Any, path: str, out: _Served) -> None:
    """Warn of and take out every key of `value` its schema node declares `x-ignored`."""
    node = _resolve(node)
    if not isinstance(value, dict):
        return
    properties = node.get("properties", {})
    other = node.get("additionalProperties")
    for key in list(value):
        sub = properties.get(key)
        if sub is None and isinstance(other, dict) and "x-ignored" in other:
            sub = other
        if sub is None:
            continue  # unknown: hiveagent's schema refuses it
        sub = _resolve(sub)
        where = _child(path, key)
        if "x-ignored" not in sub:
            _take_ignored(sub, value[key], where, out)
            continue
        hint = ""
        if sub.get("x-suggest") and key == key.lower():
            guess = did_you_mean(key, properties)
            hint = f" (did you mean {guess!r}?)" if guess else ""
        out.warnings.append(f"{where}: {sub['x-ignored']}; ignored{hint}")
        del value[key]


_ENV_REFERENCE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")
# Values the CloudWatch Agent hands to its OpenTelemetry configuration, which reads ${NAME}
# and ${env:NAME} from the environment (an unset one reads as "").
_ENV_KEYS = (
    ("agent", "region"),
    ("agent", "credentials", "role_arn"),
    ("metrics", "credentials", "role_arn"),
    ("metrics", "namespace"),
    ("metrics", "endpoint_override"),
)


def _expand_environment(out: _Served, environ: Mapping[str, str]) -> None:
    for keys in _ENV_KEYS:
        parent: Any = out.doc
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        value = parent.get(keys[-1])
        if not isinstance(value, str) or not _ENV_REFERENCE.search(value):
            continue
        where = json_path(keys)
        unset = [n for n in _ENV_REFERENCE.findall(value) if n not in environ]
        expanded = _ENV_REFERENCE.sub(lambda m: environ.get(m.group(1), ""), value)
        if unset:
            names = ", ".join(dict.fromkeys(unset))
            read = f"read as {expanded!r}" if expanded else "taken as absent"
            out.warnings.append(f"{where}: {value}: {names} is not set in this environment; {read}")
        elif not expanded:
            out.warnings.append(f"{where}: {value} is empty in this environment; taken as absent")
        if expanded:
            parent[keys[-1]] = expanded
        else:
            del parent[keys[-1]]


def _served_metrics(metrics: dict[str, Any], out: _Served) -> None:
    """metrics: the endpoint's scheme, the namespace, append and aggregation dimensions."""
    endpoint = metrics.get("endpoint_override")
    if isinstance(endpoint, str) and not re.match(r"[^:]+://", endpoint):
        metrics["endpoint_override"] = "https://" + endpoint  # as the AWS SDK for Go does
    namespace = metrics.get("namespace")
    if isinstance(namespace, str) and namespace.startswith(":"):
        out.warnings.append(
            f"$.metrics.namespace: {namespace!r}: AWS CloudWatch refuses a namespace starting "
            "with ':'"
        )
    dims = metrics.get("append_dimensions")
    if isinstance(dims, dict):
        for name, value in list(dims.items()):
            where = _child("$.metrics.append_dimensions", name)
            if not isinstance(value, str):
                continue
            looks_like_template = "${aws:" in value or value.startswith("${!aws:")
            if looks_like_template and AWS_TEMPLATES.get(name) != value:
                out.warnings.append(f"{where}: {_template_problem(value)}; ignored")
                del dims[name]
                continue
            warning = _dimension_name_warning(name, where)
            if warning:
                out.warnings.append(warning)
    rollups = metrics.get("aggregation_dimensions")
    if isinstance(rollups, list):
        for i, names in enumerate(rollups):
            for j, name in enumerate(names if isinstance(names, list) else ()):
                where = _child(_child("$.metrics.aggregation_dimensions", i), j)
                warning = _dimension_name_warning(name, where) if isinstance(name, str) else None
                if warning:
                    out.warnings.append(warning)


def _measurement_name(plugin: str, name: str) -> str:
    """A measurement name as the CloudWatch Agent reads it: trimmed, without the prefix."""
    return name.strip().removeprefix(f"{plugin}_")


def _served_plugin(plugin: str, section: dict[str, Any], out: _Served) -> bool:
    """One served plugin: measurement names, units, drop_original_metrics and append_dimensions
    as hiveagent takes them. False: it can produce nothing, the plugin is off."""
    path = _child("$.metrics.metrics_collected", plugin)
    cannot: dict[str, str] = _resolve(_COLLECTED[plugin]).get("x-cannot-produce", {})
    produced = set(PLUGIN_MEASUREMENTS[plugin])
    known = list(dict.fromkeys([*CWA_MEASUREMENTS.get(plugin, ()), *PLUGIN_MEASUREMENTS[plugin]]))
    errors_before = len(out.errors)

    def is_known(where: str, name: str) -> bool:
        short = _measurement_name(plugin, name)
        if short in known:
            return True
        guess = did_you_mean(short, known)
        if guess is not None:
            prefixed = name.strip().startswith(f"{plugin}_")
            guess = json.dumps(f"{plugin}_{guess}" if prefixed else guess)
            out.errors.append(
                f"{where}: {_show(name)} is not a {plugin} measurement; did you mean {guess}?"
            )
        else:
            options = ", ".join(json.dumps(n) for n in known)
            out.errors.append(
                f"{where}: {_show(name)} is not a {plugin} measurement; expected one of: {options}"
            )
        return False

    items = section.get("measurement")
    if isinstance(items, list):
        mpath = _child(path, "measurement")
        kept: list[Any] = []
        first: dict[str, str] = {}
        for i, item in enumerate(items):
            where = _child(mpath, i)
            if isinstance(item, dict):
                for key in sorted(set(item) - {"name", "rename", "unit"}):
                    out.errors.append(
                        _unknown_key(_child(where, key), key, ("name", "rename", "unit"))
                    )
                name = item.get("name")
                if not isinstance(name, str):
                    out.errors.append(f"{where}: 'name' is a required property")
                    continue
                name_where = _child(where, "name")
            elif isinstance(item, str):
                name, name_where = item, where
            else:
                continue  # the CloudWatch Agent's schema refused it
            if not is_known(name_where, name):
                continue
            short = _measurement_name(plugin, name)
            if short not in produced:
                reason = next(
                    (why for start, why in cannot.items() if short.startswith(start)),
                    "hiveagent.catalog has no such metric",
                )
                out.warnings.append(
                    f"{name_where}: {_show(name)}: hiveagent cannot produce {plugin}_{short}: "
                    f"{reason}; ignored"
                )
                continue
            if short in first:
                out.warnings.append(
                    f"{where}: {_show(name)} names {plugin}_{short} again (so does "
                    f"{first[short]}); collected once, as the first one says"
                )
                continue
            first[short] = where
            if not isinstance(item, dict) or not ({"rename", "unit"} & set(item)):
                kept.append(short)
                continue
            entry: dict[str, Any] = {"name": short}
            rename = item.get("rename")
            if isinstance(rename, str) and rename.strip():
                entry["rename"] = rename.strip()
            unit = item.get("unit")
            if isinstance(unit, str):
                entry["unit"], why = cwa_unit(unit.strip())
                if why is not None:
                    out.warnings.append(
                        f"{_child(where, 'unit')}: {_show(unit)}: {why}; sent as None"
                    )
            kept.append(entry)
        if len(out.errors) > errors_before:
            # refused already: hiveagent's schema judges the rest, not these items again
            section["measurement"] = kept or list(PLUGIN_MEASUREMENTS[plugin][:1])
        elif not kept:
            out.warnings.append(
                f"{mpath}: empty; the CloudWatch Agent collects nothing for {plugin}, and neither "
                "does hiveagent"
                if not items
                else f"{path}: hiveagent can produce none of its measurements; {plugin} is off"
            )
            return False
        else:
            section["measurement"] = kept

    drops = section.get("drop_original_metrics")
    if isinstance(drops, list):
        dpath = _child(path, "drop_original_metrics")
        kept_drops: list[Any] = []
        for i, name in enumerate(drops):
            if not isinstance(name, str):
                kept_drops.append(name)  # hiveagent's schema refuses it
            elif name == "*":  # every metric of the plugin (translator/translate/otel/common/
                kept_drops += PLUGIN_MEASUREMENTS[plugin]  # metrics.go, dropOriginalWildcard)
            elif is_known(_child(dpath, i), name) and _measurement_name(plugin, name) in produced:
                kept_drops.append(_measurement_name(plugin, name))
            # else: a metric hiveagent never produces; there is nothing to drop
        section["drop_original_metrics"] = list(dict.fromkeys(kept_drops))

    dims = section.get("append_dimensions")
    if isinstance(dims, dict):
        apath = _child(path, "append_dimensions")
        for name, value in list(dims.items()):
            where = _child(apath, name)
            # The CloudWatch Agent's translator resolves a plugin's values holding "${aws:"
            # (ResolveAWSMetadataPlaceholders): the four EC2 templates under any name, the rest
            # left out; disk's VolumeId is its ec2tagger's. "${!aws:...}" holds no "${aws:":
            # a static value there, sent as it is.
            if isinstance(value, str) and "${aws:" in value:
                del dims[name]  # a template is not a static value
                if value in AWS_TEMPLATES.values():
                    out.templates.setdefault(plugin, []).append((name, value))
                elif plugin == "disk" and (name, value) == VOLUME_TEMPLATE:
                    out.volume_id = True
                else:
                    out.warnings.append(f"{where}: {_template_problem(value, plugin)}; ignored")
                    continue
            warning = _dimension_name_warning(name, where)
            if warning:
                out.warnings.append(warning)
    return True


def _served(data: dict[str, Any], environ: Mapping[str, str]) -> _Served:
    """What hiveagent serves of a document the CloudWatch Agent's schema accepts, with a
    warning for each thing it does not, and the errors of its own stricter rules."""
    out = _Served(_whole_numbers(data))
    destinations = data.get("metrics", {}).get("metrics_destinations")
    if isinstance(destinations, dict) and "cloudwatch" not in destinations:
        out.warnings.append(
            "$.metrics.metrics_destinations: no cloudwatch: the CloudWatch Agent would send "
            "these metrics to Amazon Managed Service for Prometheus only; hiveagent sends them "
            "to the CloudWatch endpoint"
        )
    _take_ignored(SCHEMA, out.doc, "$", out)
    _expand_environment(out, environ)
    metrics = out.doc.get("metrics")
    for section, key in (
        ("agent", "agent.credentials.role_arn"),
        ("metrics", "metrics.credentials.role_arn"),
    ):
        credentials = out.doc.get(section, {}).get("credentials")
        if key in NOT_YET_HONOURED and isinstance(credentials, dict) and "role_arn" in credentials:
            out.warnings.append(f"$.{key}: {NOT_YET_HONOURED[key]}; ignored")
    if isinstance(metrics, dict):
        _served_metrics(metrics, out)
        collected = metrics.get("metrics_collected")
        if isinstance(collected, dict):
            for plugin in SERVED_PLUGINS:
                settings = collected.get(plugin)
                if isinstance(settings, dict) and not _served_plugin(plugin, settings, out):
                    del collected[plugin]
    return out


_PATH_PART = re.compile(r'\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|\.([^.\[:]+)')


def _path_order(message: str) -> list[tuple[int, str]]:
    """Sort key of a message by the JSON path it starts with, indices in numeric order."""
    path = message.split(": ", 1)[0]
    return [
        (int(index), "") if index else (-1, json.loads(quoted) if quoted else key)
        for index, quoted, key in _PATH_PART.findall(path)
    ]


def _plugin_parts(
    plugin: str, c: dict[str, Any], source: str, templates: list[tuple[str, str]]
) -> tuple[tuple[str, ...], Shaping]:
    """Full metric names and shaping of one plugin section (served, validated, defaults
    filled)."""

    def full(n: str) -> str:
        return n if n.startswith(f"{plugin}_") else f"{plugin}_{n}"

    names, renames = [], []
    for item in c["measurement"]:
        if isinstance(item, dict):
            names.append(full(item["name"]))
            renames.append((full(item["name"]), item.get("rename"), item.get("unit")))
        else:
            names.append(full(item))
    if len(set(names)) != len(names):
        raise ConfigError(
            f"{source}: $.metrics.metrics_collected.{plugin}.measurement: "
            f"the same metric is named twice (with and without the {plugin}_ prefix)"
        )
    shaping = Shaping(
        renames=tuple(renames),
        drop_original=tuple(full(n) for n in c["drop_original_metrics"]),
        append_dimensions=_sorted_items(c["append_dimensions"]),
        append_templates=tuple(sorted(templates)),
    )
    return tuple(names), shaping


def _generic(i: int, g: dict[str, Any], source: str) -> GenericDiscovery:
    where = f"$.hypervisor.discovery.generic[{i}]"
    try:
        pattern = re.compile(g["instance_id_regex"])
    except re.error as exc:
        raise ConfigError(
            f"{source}: {where}.instance_id_regex: not a valid regex: {exc}"
        ) from None
    if "instance_id" not in pattern.groupindex:
        raise ConfigError(
            f"{source}: {where}.instance_id_regex: needs a named group (?P<instance_id>...)"
        )
    template = g.get("qga_socket")
    if template is not None:
        try:
            template.format(instance_id="i", qmp_dir="/d")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"{source}: {where}.qga_socket: bad template ({exc!r}); "
                "use {instance_id} and {qmp_dir}"
            ) from None
    return GenericDiscovery(g["qmp_glob"], pattern, template, g.get("vcpus"))


def parse_config(
    data: Any, source: str = "<memory>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a decoded agent.json and build the Config (its `warnings` naming what is not
    served). `${NAME}` references are read from `environ` (default: os.environ). Raises
    ConfigError."""
    problems = cwa_errors(data)
    if problems:
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems))
    served = _served(data, os.environ if environ is None else environ)
    problems = served.errors + _first_errors(served.doc)
    if problems:
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems))
    # Present at all (before defaults fill it in): the CloudWatch Agent's conf.IsSet.
    append_set = "append_dimensions" in served.doc.get("metrics", {})
    filled = with_defaults(served.doc)
    interval = filled["agent"]["metrics_collection_interval"]
    collected = filled["metrics"]["metrics_collected"]
    hyper = filled["hypervisor"]

    disk = None
    if "disk" in collected:
        d = collected["disk"]
        names, shaping = _plugin_parts("disk", d, source, served.templates.get("disk", []))
        disk = DiskPlugin(
            metrics=names,
            resources=tuple(d["resources"]),
            ignore_file_system_types=tuple(d["ignore_file_system_types"]),
            drop_device=d["drop_device"],
            interval_s=d.get("metrics_collection_interval", interval),
            shaping=shaping,
            volume_id=served.volume_id and append_set and not d["drop_device"],
        )

    plugins: dict[str, GuestPlugin | None] = {}
    for plugin in GUEST_PLUGINS:
        c = collected.get(plugin)
        if c is None:
            plugins[plugin] = None
            continue
        names, shaping = _plugin_parts(plugin, c, source, served.templates.get(plugin, []))
        plugins[plugin] = GuestPlugin(
            metrics=names,
            resources=tuple(c["resources"]) if "resources" in c else ("*",),  # mem has none
            totalcpu="totalcpu" in c and c["totalcpu"],  # only cpu has the key
            interval_s=c.get("metrics_collection_interval"),
            shaping=shaping,
        )

    spinifex = hyper["discovery"]["spinifex"]
    generic = hyper["discovery"]["generic"]
    timeouts = hyper["qmp"]["timeout_seconds"] + hyper["qga"]["timeout_seconds"]
    spool_dir = hyper["spool"].get("directory", str(Path(hyper["state_dir"]) / "spool"))
    config = _build(
        Config,
        filled,
        disk=disk,
        spinifex_run_dir=spinifex["run_dir"] if spinifex["enabled"] else None,
        generic=tuple(_generic(i, g, source) for i, g in enumerate(generic)),
        cpu=plugins["cpu"],
        diskio=plugins["diskio"],
        net=plugins["net"],
        mem=plugins["mem"],
        vm_deadline_s=float(hyper.get("vm_deadline_seconds", max(5.0, 2 * timeouts))),
        append_dimensions_set=append_set,
        limits=_build(Limits, filled),
        spool=_build(SpoolSettings, filled, directory=spool_dir),
        publish=_build(PublishSettings, filled),
        accounts=_build(AccountSettings, filled),
        self_metrics=_build(SelfMetricsSettings, filled),
        status_server=_build(StatusServerSettings, filled),
        source=source,
    )
    warnings = [
        *served.warnings,
        *_dimension_warnings(config, served.volume_id),
        *_check_aws_namespaces(config, source),
    ]
    config = replace(config, warnings=tuple(sorted(warnings, key=_path_order)))
    _check_dimension_counts(config, source)
    return config


TENANT_EC2_NAMESPACE = "AWS/EC2"
AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")
TENANT_EBS_NAMESPACE = "AWS/EBS"


def _check_aws_namespaces(config: Config, source: str) -> list[str]:
    """hypervisor.accounts.aws_namespaces: refused where it cannot work (no routing, or AWS
    CloudWatch itself, which reserves `AWS/`); otherwise the trade-off, as a warning."""
    accounts = config.accounts
    where = "$.hypervisor.accounts.aws_namespaces"
    if not accounts.aws_namespaces:
        return []
    if not accounts.enabled:
        raise ConfigError(
            f"{source}: {where}: needs hypervisor.accounts.role_arn or .profiles: AWS/EC2 and "
            "AWS/EBS are sent for VMs routed to their own account only"
        )
    host = urlsplit(config.endpoint_override or "").hostname or ""
    if config.endpoint_override is None or host.endswith(AWS_HOST_SUFFIXES):
        raise ConfigError(
            f"{source}: {where}: AWS CloudWatch refuses PutMetricData to AWS/ namespaces; "
            "this works only with an endpoint that allows it (set metrics.endpoint_override "
            "to it; not an amazonaws.com endpoint)"
        )
    if TENANT_EC2_NAMESPACE in (config.guest_namespace, config.self_metrics.namespace) or (
        TENANT_EBS_NAMESPACE in (config.guest_namespace, config.self_metrics.namespace)
    ):
        raise ConfigError(
            f"{source}: {where}: metrics.namespace or hypervisor.self_metrics.namespace is "
            "AWS/EC2 or AWS/EBS: their series would mix with the EC2 and EBS families"
        )
    return [
        f"{where}: the EC2 and EBS families of VMs routed to an account go to "
        f"{TENANT_EC2_NAMESPACE} and {TENANT_EBS_NAMESPACE} in that account (instead of "
        f"{config.ec2_namespace} and {config.ebs_namespace}), so its dashboards and alarms on "
        "those namespaces work unchanged. Only if the endpoint lets each account's credentials "
        "write AWS/ namespaces: where it refuses, those datums are refused "
        "(InvalidParameterValue), counted and logged as rejected, and not sent again. The "
        "roles' PutMetricData policies must allow these namespaces: a policy that leaves them "
        "out answers AccessDenied, which holds the account's whole spool (credential errors "
        "are retried) until the policy is mended or spool.max_bytes gives the oldest up. VMs "
        "sent with the default credentials keep the configured namespaces"
    ]


def guest_plugins(config: Config) -> dict[str, DiskPlugin | GuestPlugin]:
    """The in-guest plugins the config turns on, by name."""
    out: dict[str, DiskPlugin | GuestPlugin] = {}
    for plugin in ("cpu", "disk", "diskio", "net", "mem"):
        section: DiskPlugin | GuestPlugin | None = getattr(config, plugin)
        if section is not None:
            out[plugin] = section
    return out


def guest_dimensions(config: Config, plugin: str, metric: str) -> set[str]:
    """Every dimension name an in-guest datum of `metric` (of `plugin`) can carry under this
    config: the catalog's (host only with Config.host_dimension, disk's device unless
    drop_device, VolumeId only with DiskPlugin.volume_id), the plugin's append_dimensions and
    metrics.append_dimensions."""
    section = guest_plugins(config)[plugin]
    spec = CATALOG[metric]
    dims = set(spec.dimensions)
    if not config.host_dimension:
        dims.discard("host")
    if isinstance(section, DiskPlugin):
        if section.drop_device:
            dims.discard("device")
        if not section.volume_id:
            dims.discard("VolumeId")
    shaping = section.shaping
    dims |= {name for name, _ in (*shaping.append_dimensions, *shaping.append_templates)}
    dims |= {name for name, _ in config.append_dimensions}
    if config.append_dimensions_set:
        dims.discard("host")  # the ec2tagger removes it, a plugin's own "host" too
    return dims


def _tells_vms_apart(config: Config, section: DiskPlugin | GuestPlugin) -> bool:
    """Whether a plugin's datums carry the instance id (so two VMs' series never merge): the
    metrics-wide InstanceId template (unless the plugin's own static InstanceId, which the
    ec2tagger does not overwrite, hides it), or a plugin template "${aws:InstanceId}"."""
    instance = AWS_TEMPLATES["InstanceId"]
    if any(template == instance for _, template in section.shaping.append_templates):
        return True
    static = {name for name, _ in section.shaping.append_dimensions}
    return ("InstanceId", instance) in config.append_dimensions and "InstanceId" not in static


def _dimension_warnings(config: Config, volume_asked: bool) -> list[str]:
    """What the in-guest dimension sets of this config mean for the operator: disk's VolumeId
    asked where the CloudWatch Agent would not fill it in, and plugins whose series of
    different VMs would merge (no instance id among their dimensions)."""
    out = []
    disk = config.disk
    where = "$.metrics.metrics_collected.disk.append_dimensions.VolumeId"
    if disk is not None and volume_asked and not config.append_dimensions_set:
        out.append(
            f"{where}: the CloudWatch Agent fills ${{aws:VolumeId}} in only when "
            "metrics.append_dimensions is set (its ec2tagger processor does); ignored"
        )
    elif disk is not None and volume_asked and disk.drop_device:
        out.append(
            f"{where}: drop_device takes out the device tag the CloudWatch Agent finds the "
            "volume by; ignored"
        )
    merging = [p for p, s in guest_plugins(config).items() if not _tells_vms_apart(config, s)]
    if merging:
        names = ", ".join(merging)
        if config.host_dimension and config.hostname:
            why = "carry one `host` for every VM (agent.hostname): all VMs share one series"
        elif config.host_dimension:
            why = (
                "are told apart by `host` only, the guest's host name, which VMs can share "
                "(images boot as localhost, debian, ...): VMs with the same host name share "
                "one series"
            )
        elif config.omit_hostname and not config.append_dimensions_set:
            why = (
                "carry nothing that tells VMs apart (agent.omit_hostname): all VMs share one series"
            )
        else:
            why = (
                "carry nothing that tells VMs apart (metrics.append_dimensions takes out `host`, "
                "as in the CloudWatch Agent): all VMs share one series"
            )
        out.append(
            f'$.metrics.append_dimensions: no "InstanceId": "${{aws:InstanceId}}": the '
            f"in-guest metrics of {names} {why}; add it, as the CloudWatch Agent's wizard does"
        )
    return out


def _check_dimension_counts(config: Config, source: str) -> None:
    """Append dimensions that would take a plugin's datums past CloudWatch's 30 dimensions
    make every such datum a refusal: refused here, naming the keys, instead of at send time."""
    for plugin, section in guest_plugins(config).items():
        for metric in section.metrics:
            dims = guest_dimensions(config, plugin, metric)
            if len(dims) > MAX_DIMENSIONS:
                raise ConfigError(
                    f"{source}: $.metrics.append_dimensions and "
                    f"$.metrics.metrics_collected.{plugin}.append_dimensions: {metric} would "
                    f"carry {len(dims)} dimensions; CloudWatch accepts at most {MAX_DIMENSIONS}"
                )


def load_config(path: str | Path) -> Config:
    """Read, decode and validate agent.json. Raises ConfigError with a clear message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{p}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return parse_config(data, source=str(p))
