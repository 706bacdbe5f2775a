"""What the CloudWatch Agent's config does to in-guest datums after collection, applied per VM.

A collector emits each in-guest datum with the tags the CloudWatch Agent's telegraf input would
give it (the plugin's own, `host` unless the config leaves it out, disk's VolumeId when asked:
hiveagent.catalog). Then, in the CloudWatch Agent's order:

- a plugin's `append_dimensions` are telegraf input tags (translator/translate/metrics/util/
  commonconfigutil.go, ProcessAppendDimensions): static values, and `${aws:InstanceId}`,
  `${aws:ImageId}`, `${aws:InstanceType}`, `${aws:AutoScalingGroupName}` under any name,
  resolved per VM (its translator resolves them from the instance's metadata,
  translator/translate/util/placeholderUtil.go). telegraf adds them where the input's own
  tags do not have the name, and they win over its global `host` tag (models/makemetric.go);
  disk's `mode` (and `device` with drop_device) are then excluded (tagexclude).
- `append_dimensions` (metrics-wide) are the ec2tagger processor's (plugins/processors/
  ec2tagger/ec2tagger.go, updateOtelAttributes): the four templates, each under its own name,
  added where the datum lacks that name; hiveagent adds static values the same way (the
  CloudWatch Agent ignores them). Its presence alone removes `host` from every datum.
  Templates resolve per VM from its sidecar or the per-VM metadata file
  `hypervisor.instance_metadata` points to; one unknown for a VM adds nothing.
- `aggregation_dimensions`: each datum is also sent under every listed dimension subset it
  carries with fewer names than it has (plugins/outputs/cloudwatch/cloudwatch.go,
  ProcessRollup: a subset as large as the datum's set is skipped), so CloudWatch aggregates
  the series that share it (`[]` = the whole namespace).
- `drop_original_metrics`: those metrics are sent only under their aggregation subsets.
- measurement objects `{name, rename, unit}`: a new name and/or unit label; the value is
  untouched (the CloudWatch Agent does not convert either).

Only the in-guest family (`metrics.namespace`) is shaped; EC2/EBS-style metrics keep AWS's
fixed dimensions.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hiveagent.config import Config, Shaping
from hiveagent.model import Datum, Dimensions, VmSpec

log = logging.getLogger(__name__)

NO_SHAPING = Shaping()
# Dimensions a collector adds that a plugin's append_dimensions override (telegraf's global tag,
# and the ec2tagger's VolumeId, which it adds only where the datum has none).
OVERRIDABLE = frozenset({"host", "VolumeId"})
# Tags the CloudWatch Agent's translator excludes from a plugin's metrics (tagexclude), its own
# append_dimensions included; disk's device too with drop_device.
EXCLUDED = {"disk": frozenset({"mode"})}
TEMPLATES = {
    "${aws:InstanceId}": "instance_id",
    "${aws:ImageId}": "image_id",
    "${aws:InstanceType}": "instance_type",
    "${aws:AutoScalingGroupName}": "autoscaling_group",
}


@dataclass(frozen=True)
class VmMetadata:
    image_id: str | None = None
    instance_type: str | None = None
    autoscaling_group: str | None = None
    account_id: str | None = None  # the account that owns the VM (hiveagent.accounts)


def parse_metadata(data: bytes) -> VmMetadata:
    """The per-VM metadata file: a JSON object; unknown keys ignored, wrong types dropped."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")

    def text(key: str) -> str | None:
        v = obj.get(key)
        return v[:1024] if isinstance(v, str) and v and v.isprintable() else None

    account = obj.get("account_id")
    if not (isinstance(account, str) and len(account) == 12 and account.isdigit()):
        account = None  # an AWS account id is 12 digits; anything else names no account
    return VmMetadata(text("image_id"), text("instance_type"), text("autoscaling_group"), account)


NO_METADATA = VmMetadata()


class MetadataFiles:
    """Reads `hypervisor.instance_metadata` per VM, again only when the file changes."""

    def __init__(self, template: str | None) -> None:
        self.template = template
        self.cache: dict[str, tuple[tuple[int, int, int], VmMetadata]] = {}

    def get(self, instance_id: str) -> VmMetadata:
        if not self.template:
            return NO_METADATA
        path = self.template.format(instance_id=instance_id)
        try:
            st = os.stat(path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self.cache.get(instance_id)
            if cached and cached[0] == key:
                return cached[1]
            with open(path, "rb") as f:
                meta = parse_metadata(f.read(65536))
        except FileNotFoundError:
            return VmMetadata()
        except (OSError, ValueError) as exc:
            log.warning("vm %s: metadata file %s: %s", instance_id, path, exc)
            return VmMetadata()
        self.cache[instance_id] = (key, meta)
        return meta


def template_values(spec: VmSpec, meta: VmMetadata) -> dict[str, str]:
    """The `${aws:...}` templates known for one VM -> their values (the sidecar first, then
    the metadata file); an unknown one is absent."""
    out = {}
    for template, field in TEMPLATES.items():
        value = getattr(spec, field, None) or getattr(meta, field, None)
        if value:
            out[template] = value
    return out


def vm_dimensions(config: Config, values: Mapping[str, str]) -> dict[str, str]:
    """The metrics-wide append_dimensions resolved for one VM (`template_values`)."""
    out = {}
    for name, template in config.append_dimensions:
        if template not in TEMPLATES:
            out[name] = template  # a static custom dimension
        elif template in values:
            out[name] = values[template]
    return out


def plugin_shaping(config: Config) -> dict[str, Shaping]:
    """Metric-name prefix (cpu, disk, ...) -> that plugin's shaping, for plugins that have
    any (an empty dict lets `shape` pass datums through untouched)."""
    out = {}
    for prefix in ("cpu", "disk", "diskio", "net", "mem"):
        plugin: Any = getattr(config, prefix, None)
        if plugin is not None and plugin.shaping != NO_SHAPING:
            out[prefix] = plugin.shaping
    return out


def plugin_dimensions(
    config: Config, prefix: str, s: Shaping, values: Mapping[str, str]
) -> dict[str, str]:
    """A plugin's append_dimensions for one VM: its static values and its templates resolved
    (one unknown for the VM adds nothing), less the tags its plugin excludes."""
    out = dict(s.append_dimensions)
    for name, template in s.append_templates:
        if template in values:
            out[name] = values[template]
    excluded = set(EXCLUDED.get(prefix, ()))
    if prefix == "disk" and config.disk is not None and config.disk.drop_device:
        excluded.add("device")
    for name in excluded:
        out.pop(name, None)
    return out


def _dimension_sets(
    dims: dict[str, str], own: dict[str, str], vm_dims: dict[str, str], config: Config
) -> tuple[Dimensions, list[Dimensions]]:
    """A datum's full dimension set (its collector's, then its plugin's append_dimensions,
    then the metrics-wide ones) and the distinct aggregation subsets it is also sent under."""
    for name, value in own.items():  # telegraf: the input's own tags win
        if name not in dims or name in OVERRIDABLE:
            dims[name] = value
    for name, value in vm_dims.items():  # the ec2tagger: only where the datum has none
        dims.setdefault(name, value)
    if config.append_dimensions_set:
        dims.pop("host", None)  # the ec2tagger's, whatever put it there
    rollups: list[Dimensions] = []
    for subset in config.aggregation_dimensions:
        if len(subset) < len(dims) and all(k in dims for k in subset):
            key = tuple(sorted((k, dims[k]) for k in subset))
            if key not in rollups:
                rollups.append(key)
    return tuple(sorted(dims.items())), rollups


def shape(
    datums: list[Datum],
    config: Config,
    vm_dims: dict[str, str],
    plugins: dict[str, Shaping],
    values: Mapping[str, str] | None = None,
) -> list[Datum]:
    """Apply append/aggregation dimensions, drops and renames to one VM's datums; `values`
    are its `template_values`, for the plugins' templates."""
    if not (vm_dims or config.aggregation_dimensions or plugins or config.append_dimensions_set):
        return datums
    guest_ns = config.guest_namespace
    own = {p: plugin_dimensions(config, p, s, values or {}) for p, s in plugins.items()}
    # (plugin, collector dimensions) -> the datum's full set and its rollups, each sorted:
    # worked out once per series, not per metric of it
    shaped: dict[tuple[str, Dimensions], tuple[Dimensions, list[Dimensions]]] = {}
    out: list[Datum] = []
    append = out.append
    # A datum of the same series as the one before (an Emitter gives all the datums of one
    # emit_all call one dimensions tuple) reuses its sets without hashing the tuple again.
    last_dims: Dimensions | None = None
    last_prefix = ""
    s = NO_SHAPING
    sets: tuple[Dimensions, list[Dimensions]] = ((), [])
    for d in datums:
        ns, name, dims, value, unit, stamp, resolution, samples = d
        if ns != guest_ns:
            append(d)
            continue
        prefix = name.split("_", 1)[0]  # cpu_..., diskio_..., ...
        if dims is not last_dims or prefix != last_prefix:
            s = plugins.get(prefix, NO_SHAPING)
            found = shaped.get((prefix, dims))
            if found is None:
                found = shaped[(prefix, dims)] = _dimension_sets(
                    dict(dims), own.get(prefix, {}), vm_dims, config
                )
            sets, last_dims, last_prefix = found, dims, prefix
        new_name = name
        for metric, rename, new_unit in s.renames:
            if metric == name:
                new_name, unit = rename or name, new_unit or unit
        full, rollups = sets
        if not rollups and not s.drop_original:
            # tuple.__new__ skips the named tuple's Python-level __new__ (as the Emitter does)
            append(_new(Datum, (ns, new_name, full, value, unit, stamp, resolution, samples)))
            continue
        for key in rollups if name in s.drop_original else (full, *rollups):
            append(_new(Datum, (ns, new_name, key, value, unit, stamp, resolution, samples)))
    return out


_new = tuple.__new__
