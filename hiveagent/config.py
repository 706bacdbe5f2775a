"""agent.json: validated once against the shipped JSON Schema, then turned into frozen objects.

The format is the Amazon CloudWatch Agent's (`agent`, `metrics`) plus a `hypervisor` section for
what that agent has no words for. Unlike the CloudWatch Agent, unknown keys are rejected
everywhere, including inside plugins. Every error names the JSON path of the offending value.

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
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from hiveagent.catalog import CATALOG, Family
from hiveagent.wire import MAX_DIMENSIONS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

GUEST_PLUGINS = ("cpu", "diskio", "net", "mem")  # the Config attributes holding a GuestPlugin


def catalog_measurements(plugin: str) -> tuple[str, ...]:
    """The CloudWatch Agent measurement names of one plugin, without the `<plugin>_` prefix, in
    catalog order: its in-guest catalog rows. Also the plugin's default measurement list."""
    prefix = f"{plugin}_"
    names = tuple(
        name.removeprefix(prefix)
        for name, spec in CATALOG.items()
        if spec.family is Family.GUEST and name.startswith(prefix)
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
            node["default"] = list(catalog_measurements(node["x-catalog-default"]))
        for value in node.values():
            _fill_from_catalog(value)
    elif isinstance(node, list):
        for value in node:
            _fill_from_catalog(value)


def _load_schema() -> dict[str, Any]:
    text = resources.files("hiveagent").joinpath("schema/agent.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    _fill_from_catalog(schema)
    return schema


SCHEMA = _load_schema()  # with the catalog's names filled in; do not modify
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# The CloudWatch Agent's measurement names per plugin (without the plugin prefix).
PLUGIN_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    plugin: catalog_measurements(plugin)
    for plugin in SCHEMA["properties"]["metrics"]["properties"]["metrics_collected"]["properties"]
}


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


@dataclass(frozen=True)
class DiskPlugin:
    """metrics.metrics_collected.disk"""

    metrics: tuple[str, ...]  # full CloudWatch Agent names, e.g. "disk_used_percent"
    resources: tuple[str, ...]  # mount points, or ("*",) for all
    ignore_file_system_types: tuple[str, ...]
    drop_device: bool
    interval_s: int  # metrics_collection_interval, else the agent's
    shaping: Shaping

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
    limits: Limits
    spool: SpoolSettings
    publish: PublishSettings
    self_metrics: SelfMetricsSettings
    status_server: StatusServerSettings
    source: str = field(default="<memory>", compare=False)

    def with_run_dir(self, run_dir: str) -> Config:
        """The `--run-dir` override: Spinifex sidecars are read from run_dir."""
        return replace(self, spinifex_run_dir=run_dir)


def json_path(parts: Any) -> str:
    """`$.metrics.metrics_collected.disk` style path from a jsonschema path deque."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error: ValidationError) -> str:
    path = json_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        names = ", ".join(repr(e) for e in extra)
        return f"{path}: unknown key {names}; expected one of: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{path}: {error.message}"
    if error.validator == "type":
        return f"{path}: expected {error.validator_value}, got {json.dumps(error.instance)}"
    if error.validator == "enum":
        options = ", ".join(json.dumps(v) for v in error.validator_value)
        return f"{path}: {json.dumps(error.instance)} is not one of: {options}"
    if error.validator == "oneOf":
        # measurement items: a name, or {name, rename, unit}. Explain in those terms.
        for sub in error.validator_value:
            if "enum" in sub and not isinstance(error.instance, dict):
                options = ", ".join(json.dumps(v) for v in sub["enum"])
                return f"{path}: {json.dumps(error.instance)} is not one of: {options}"
        branch = 1 if isinstance(error.instance, dict) else 0
        relevant = [e for e in error.context or [] if e.relative_schema_path[0] == branch]
        if relevant:
            return _describe(best_match(relevant))
    if error.validator == "pattern" and error.validator_value == "^[^$]*$":
        return (
            f"{path}: {json.dumps(error.instance)}: a static dimension value cannot hold '$'; "
            "the templates are ${aws:InstanceId}, ${aws:ImageId}, ${aws:InstanceType} and "
            "${aws:AutoScalingGroupName}, under the dimension names they fill"
        )
    if error.validator == "pattern" and "a-zA-Z_" in str(error.validator_value):
        return (
            f"{path}: {json.dumps(error.instance)} is not a valid dimension name (letters, "
            "digits and _, not starting with a digit: what every CloudWatch-compatible "
            "endpoint accepts)"
        )
    if error.validator == "const":
        return f"{path}: must be {json.dumps(error.validator_value)}"
    return f"{path}: {error.message}"


def _first_errors(data: Any) -> list[str]:
    errors = sorted(
        _VALIDATOR.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator)
    )
    return [_describe(e) for e in errors]


def _plugin_parts(plugin: str, c: dict[str, Any], source: str) -> tuple[tuple[str, ...], Shaping]:
    """Full metric names and shaping of one plugin section (validated, defaults filled)."""

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


def parse_config(data: Any, source: str = "<memory>") -> Config:
    """Validate a decoded agent.json and build the Config. Raises ConfigError."""
    problems = _first_errors(data)
    if problems:
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems))
    filled = with_defaults(data)
    interval = filled["agent"]["metrics_collection_interval"]
    collected = filled["metrics"]["metrics_collected"]
    hyper = filled["hypervisor"]

    disk = None
    if "disk" in collected:
        d = collected["disk"]
        names, shaping = _plugin_parts("disk", d, source)
        disk = DiskPlugin(
            metrics=names,
            resources=tuple(d["resources"]),
            ignore_file_system_types=tuple(d["ignore_file_system_types"]),
            drop_device=d["drop_device"],
            interval_s=d.get("metrics_collection_interval", interval),
            shaping=shaping,
        )

    plugins: dict[str, GuestPlugin | None] = {}
    for plugin in GUEST_PLUGINS:
        c = collected.get(plugin)
        if c is None:
            plugins[plugin] = None
            continue
        names, shaping = _plugin_parts(plugin, c, source)
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
        limits=_build(Limits, filled),
        spool=_build(SpoolSettings, filled, directory=spool_dir),
        publish=_build(PublishSettings, filled),
        self_metrics=_build(SelfMetricsSettings, filled),
        status_server=_build(StatusServerSettings, filled),
        source=source,
    )
    _check_dimension_counts(config, source)
    return config


def _check_dimension_counts(config: Config, source: str) -> None:
    """Append dimensions that would take a plugin's datums past CloudWatch's 30 dimensions
    make every such datum a refusal: refused here, naming the keys, instead of at send time."""
    metrics_wide = {name for name, template in config.append_dimensions}
    for plugin in ("cpu", "disk", "diskio", "net", "mem"):
        section: DiskPlugin | GuestPlugin | None = getattr(config, plugin)
        if section is None:
            continue
        own = {name for name, _ in section.shaping.append_dimensions}
        for metric in section.metrics:
            dims = set(CATALOG[metric].dimensions) | metrics_wide | own
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
