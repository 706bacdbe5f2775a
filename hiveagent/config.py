"""agent.json: validated once against the shipped JSON Schema, then turned into frozen objects.

The format is the Amazon CloudWatch Agent's (`agent`, `metrics`) plus a `hypervisor` section for
what that agent has no words for. Unlike the CloudWatch Agent, unknown keys are rejected
everywhere, including inside plugins. Every error names the JSON path of the offending value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

DEFAULT_INTERVAL_S = 60
DEFAULT_SPINIFEX_RUN_DIR = "/run/spinifex"
DISK_MEASUREMENTS = ("used_percent", "free", "total", "used")
# The CloudWatch Agent's measurement names per in-guest plugin (without the plugin prefix).
PLUGIN_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    "cpu": (
        "usage_idle", "usage_user", "usage_system", "usage_iowait", "usage_nice", "usage_irq",
        "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice", "usage_active",
    ),
    "diskio": (
        "reads", "writes", "read_bytes", "write_bytes", "read_time", "write_time", "io_time",
        "iops_in_progress",
    ),
    "net": (
        "bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "err_in", "err_out",
        "drop_in", "drop_out",
    ),
    "mem": ("used_percent", "available_percent", "total", "available", "used", "free", "cached"),
}  # fmt: skip


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
    interval_s: int
    shaping: Shaping = Shaping()

    def wants_mount(self, mountpoint: str) -> bool:
        return "*" in self.resources or mountpoint in self.resources


@dataclass(frozen=True)
class GuestPlugin:
    """metrics.metrics_collected.<cpu|diskio|net|mem>: in-guest metrics through the guest
    agent (mem: the balloon through QMP)."""

    metrics: tuple[str, ...]  # full CloudWatch Agent names, e.g. "cpu_usage_user"
    resources: tuple[str, ...]  # CPUs / devices / interfaces; ("*",) = all
    totalcpu: bool = True  # cpu only: the cpu=cpu-total series
    interval_s: int | None = None  # metrics_collection_interval; None: the agent's
    shaping: Shaping = Shaping()

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

    directory: str  # default <state_dir>/spool
    max_bytes: int = 256 << 20  # oldest data is dropped (and counted) beyond this
    fsync: bool = True  # fsync every append: a datum in the spool survives power loss
    memory_max_datums: int = 100_000  # fallback queue when the disk cannot be written


@dataclass(frozen=True)
class PublishSettings:
    """hypervisor.publish: retries and the circuit breaker in front of the endpoint."""

    timeout_s: float = 10.0  # connect and read timeout of one PutMetricData call
    breaker_failures: int = 3  # consecutive failures that open the breaker
    breaker_open_s: float = 60.0  # how long the endpoint is then considered down
    backoff_base_s: float = 1.0  # full-jitter backoff: uniform(0, min(max, base * 2**n))
    backoff_max_s: float = 30.0
    shutdown_flush_s: float = 10.0  # SIGTERM: flush for at most this long, spool the rest


@dataclass(frozen=True)
class SelfMetricsSettings:
    """hypervisor.self_metrics: the agent's own health, published like any metric."""

    enabled: bool = True
    namespace: str = "HiveAgent"
    interval_s: int = 60


@dataclass(frozen=True)
class StatusServerSettings:
    """hypervisor.status_server: /healthz, /status and /metrics over HTTP."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 9133


@dataclass(frozen=True)
class Limits:
    """hypervisor.limits: per-VM caps on what one guest (or QEMU) can make us report, so one VM
    cannot blow up cardinality (and its owner's bill). What is cut is counted."""

    max_filesystems: int = 64
    max_block_devices: int = 64
    max_interfaces: int = 32
    max_cpus: int = 256
    max_disks: int = 64  # in-guest block devices (diskio)


@dataclass(frozen=True)
class Config:
    interval_s: int
    region: str | None
    debug: bool
    guest_namespace: str
    ec2_enabled: bool
    ec2_namespace: str
    ebs_enabled: bool
    ebs_namespace: str
    endpoint_override: str | None
    force_flush_interval_s: int
    append_dimensions: tuple[tuple[str, str], ...]  # (name, "${aws:...}" or a static value)
    disk: DiskPlugin | None
    spinifex_run_dir: str | None  # None = Spinifex discovery off
    generic: tuple[GenericDiscovery, ...]
    qmp_timeout_s: float
    qga_enabled: bool
    qga_timeout_s: float
    qga_max_reply_bytes: int
    max_concurrent_vms: int
    proc_root: str
    state_dir: str
    aggregation_dimensions: tuple[tuple[str, ...], ...] = ()
    cpu_source: str = "process"  # CPUUtilization from the QEMU process, or "vcpu_threads"
    monitoring: str = "detailed"  # EC2 tier when the sidecar does not say (period_seconds)
    datum_shape: str = "statistic_sets"  # basic-monitoring datums: or value_arrays, single_values
    wire_protocol: str = "auto"  # auto (botocore's choice) | json | query
    instance_metadata: str | None = None  # per-VM metadata file template ({instance_id})
    cpu: GuestPlugin | None = None
    diskio: GuestPlugin | None = None
    net: GuestPlugin | None = None
    mem: GuestPlugin | None = None
    balloon_polling_interval_s: int | None = None  # qom-set it when the guest has none
    vm_deadline_s: float = 10.0  # the whole collection of one VM in one cycle
    limits: Limits = field(default_factory=Limits)
    spool: SpoolSettings = field(default_factory=lambda: SpoolSettings("/var/lib/hiveagent/spool"))
    publish: PublishSettings = field(default_factory=lambda: PublishSettings())
    self_metrics: SelfMetricsSettings = field(default_factory=lambda: SelfMetricsSettings())
    status_server: StatusServerSettings = field(default_factory=lambda: StatusServerSettings())
    source: str = field(default="<memory>", compare=False)

    def with_run_dir(self, run_dir: str) -> Config:
        """The `--run-dir` override: Spinifex sidecars are read from run_dir."""
        return replace(self, spinifex_run_dir=run_dir)


def _schema() -> dict[str, Any]:
    text = resources.files("hiveagent").joinpath("schema/agent.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


_VALIDATOR = jsonschema.Draft202012Validator(_schema())


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


def _plugin_parts(
    plugin: str, c: dict[str, Any], defaults: tuple[str, ...], source: str
) -> tuple[tuple[str, ...], Shaping]:
    """Full metric names and shaping of one plugin section (validated by the schema)."""

    def full(n: str) -> str:
        return n if n.startswith(f"{plugin}_") else f"{plugin}_{n}"

    names, renames = [], []
    for item in c.get("measurement", list(defaults)):
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
    drop = tuple(full(n) for n in c.get("drop_original_metrics", []))
    shaping = Shaping(
        renames=tuple(renames),
        drop_original=drop,
        append_dimensions=tuple(sorted(c.get("append_dimensions", {}).items())),
    )
    return tuple(names), shaping


def parse_config(data: Any, source: str = "<memory>") -> Config:
    """Validate a decoded agent.json and build the Config. Raises ConfigError."""
    problems = _first_errors(data)
    if problems:
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems))
    agent = data.get("agent", {})
    metrics = data.get("metrics", {})
    hyper = data.get("hypervisor", {})
    interval = agent.get("metrics_collection_interval", DEFAULT_INTERVAL_S)
    collected = metrics.get("metrics_collected", {})

    disk = None
    if "disk" in collected:
        d = collected["disk"]
        names, shaping = _plugin_parts("disk", d, DISK_MEASUREMENTS, source)
        disk = DiskPlugin(
            metrics=names,
            resources=tuple(d.get("resources", ["*"])),
            ignore_file_system_types=tuple(d.get("ignore_file_system_types", [])),
            drop_device=d.get("drop_device", False),
            interval_s=d.get("metrics_collection_interval", interval),
            shaping=shaping,
        )

    plugins: dict[str, GuestPlugin | None] = {}
    for plugin, defaults in PLUGIN_MEASUREMENTS.items():
        if plugin not in collected:
            plugins[plugin] = None
            continue
        c = collected[plugin]
        names, shaping = _plugin_parts(plugin, c, defaults, source)
        plugins[plugin] = GuestPlugin(
            metrics=names,
            resources=tuple(c.get("resources", [] if plugin == "cpu" else ["*"])),
            totalcpu=c.get("totalcpu", True),
            interval_s=c.get("metrics_collection_interval"),
            shaping=shaping,
        )
    discovery = hyper.get("discovery", {})
    spinifex = discovery.get("spinifex", {})
    spinifex_dir = (
        spinifex.get("run_dir", DEFAULT_SPINIFEX_RUN_DIR) if spinifex.get("enabled", True) else None
    )
    generic = []
    for i, g in enumerate(discovery.get("generic", [])):
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
        generic.append(GenericDiscovery(g["qmp_glob"], pattern, template, g.get("vcpus")))

    state_dir = hyper.get("state_dir", "/var/lib/hiveagent")
    spool = hyper.get("spool", {})
    publish = hyper.get("publish", {})
    self_metrics = hyper.get("self_metrics", {})
    status = hyper.get("status_server", {})
    qmp = hyper.get("qmp", {})
    qga = hyper.get("qga", {})
    ec2 = hyper.get("ec2", {})
    ebs = hyper.get("ebs", {})
    return Config(
        interval_s=interval,
        region=agent.get("region"),
        debug=agent.get("debug", False),
        guest_namespace=metrics.get("namespace", "CWAgent"),
        ec2_enabled=ec2.get("enabled", True),
        ec2_namespace=ec2.get("namespace", "Hive/EC2"),
        ebs_enabled=ebs.get("enabled", True),
        ebs_namespace=ebs.get("namespace", "Hive/EBS"),
        endpoint_override=metrics.get("endpoint_override"),
        force_flush_interval_s=metrics.get("force_flush_interval", 60),
        append_dimensions=tuple(sorted(metrics.get("append_dimensions", {}).items())),
        cpu_source=ec2.get("cpu_source", "process"),
        monitoring=ec2.get("monitoring", "detailed"),
        datum_shape=metrics.get("datum_shape", "statistic_sets"),
        aggregation_dimensions=tuple(
            tuple(dims) for dims in metrics.get("aggregation_dimensions", [])
        ),
        wire_protocol=metrics.get("wire_protocol", "auto"),
        instance_metadata=hyper.get("instance_metadata"),
        disk=disk,
        spinifex_run_dir=spinifex_dir,
        generic=tuple(generic),
        qmp_timeout_s=float(qmp.get("timeout_seconds", 2.0)),
        qga_enabled=qga.get("enabled", True),
        qga_timeout_s=float(qga.get("timeout_seconds", 3.0)),
        qga_max_reply_bytes=qga.get("max_reply_bytes", 1 << 20),
        max_concurrent_vms=hyper.get("max_concurrent_vms", 32),
        proc_root=hyper.get("proc_root", "/proc"),
        state_dir=state_dir,
        cpu=plugins["cpu"],
        diskio=plugins["diskio"],
        net=plugins["net"],
        mem=plugins["mem"],
        balloon_polling_interval_s=hyper.get("balloon", {}).get("set_polling_interval_seconds"),
        vm_deadline_s=float(
            hyper.get(
                "vm_deadline_seconds",
                max(5.0, 2 * (qmp.get("timeout_seconds", 2.0) + qga.get("timeout_seconds", 3.0))),
            )
        ),
        limits=Limits(
            max_filesystems=hyper.get("limits", {}).get("max_filesystems", Limits.max_filesystems),
            max_block_devices=hyper.get("limits", {}).get(
                "max_block_devices", Limits.max_block_devices
            ),
            max_interfaces=hyper.get("limits", {}).get("max_interfaces", Limits.max_interfaces),
            max_cpus=hyper.get("limits", {}).get("max_cpus", Limits.max_cpus),
            max_disks=hyper.get("limits", {}).get("max_disks", Limits.max_disks),
        ),
        spool=SpoolSettings(
            directory=spool.get("directory", str(Path(state_dir) / "spool")),
            max_bytes=spool.get("max_bytes", SpoolSettings.max_bytes),
            fsync=spool.get("fsync", True),
            memory_max_datums=spool.get("memory_max_datums", SpoolSettings.memory_max_datums),
        ),
        publish=PublishSettings(
            timeout_s=float(publish.get("timeout_seconds", PublishSettings.timeout_s)),
            breaker_failures=publish.get("breaker_failures", PublishSettings.breaker_failures),
            breaker_open_s=float(
                publish.get("breaker_open_seconds", PublishSettings.breaker_open_s)
            ),
            backoff_base_s=float(
                publish.get("backoff_base_seconds", PublishSettings.backoff_base_s)
            ),
            backoff_max_s=float(publish.get("backoff_max_seconds", PublishSettings.backoff_max_s)),
            shutdown_flush_s=float(
                publish.get("shutdown_flush_seconds", PublishSettings.shutdown_flush_s)
            ),
        ),
        self_metrics=SelfMetricsSettings(
            enabled=self_metrics.get("enabled", True),
            namespace=self_metrics.get("namespace", SelfMetricsSettings.namespace),
            interval_s=self_metrics.get("interval_seconds", SelfMetricsSettings.interval_s),
        ),
        status_server=StatusServerSettings(
            enabled=status.get("enabled", True),
            address=status.get("address", StatusServerSettings.address),
            port=status.get("port", StatusServerSettings.port),
        ),
        source=source,
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
