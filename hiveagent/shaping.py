"""What the CloudWatch Agent's config does to in-guest datums after collection, applied per VM:

- `append_dimensions` (metrics-wide): `${aws:InstanceId}`, `${aws:ImageId}`,
  `${aws:InstanceType}`, `${aws:AutoScalingGroupName}` resolved per VM (from its sidecar, or the
  per-VM metadata file `hypervisor.instance_metadata` points to), plus static custom dimensions
  (which the CloudWatch Agent cannot do); a plugin's own `append_dimensions` are static. A
  template that is unknown for a VM adds nothing (as the CloudWatch Agent does off EC2).
- `aggregation_dimensions`: each datum is also sent under every listed dimension subset it
  carries, so CloudWatch aggregates the series that share it (`[]` = the whole namespace).
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
from dataclasses import dataclass
from typing import Any

from hiveagent.config import Config, Shaping
from hiveagent.model import Datum, VmSpec

log = logging.getLogger(__name__)

NO_SHAPING = Shaping()
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


def parse_metadata(data: bytes) -> VmMetadata:
    """The per-VM metadata file: a JSON object; unknown keys ignored, wrong types dropped."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")

    def text(key: str) -> str | None:
        v = obj.get(key)
        return v[:1024] if isinstance(v, str) and v and v.isprintable() else None

    return VmMetadata(text("image_id"), text("instance_type"), text("autoscaling_group"))


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


def vm_dimensions(config: Config, spec: VmSpec, meta: VmMetadata) -> dict[str, str]:
    """The metrics-wide append_dimensions resolved for one VM."""
    out = {}
    for name, template in config.append_dimensions:
        if name == "InstanceId" and template == "${aws:InstanceId}":
            continue  # every in-guest datum carries InstanceId already
        field = TEMPLATES.get(template)
        if field is None:
            out[name] = template  # a static custom dimension
            continue
        value = getattr(spec, field, None) or getattr(meta, field, None)
        if value:
            out[name] = value
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


def shape(
    datums: list[Datum], config: Config, vm_dims: dict[str, str], plugins: dict[str, Shaping]
) -> list[Datum]:
    """Apply append/aggregation dimensions, drops and renames to one VM's datums."""
    if not (vm_dims or config.aggregation_dimensions or plugins):
        return datums
    guest_ns = config.guest_namespace
    out: list[Datum] = []
    for d in datums:
        if d.namespace != guest_ns:
            out.append(d)
            continue
        s = plugins.get(d.name.split("_", 1)[0], NO_SHAPING)  # cpu_..., diskio_..., ...
        dims = dict(d.dimensions)
        dims.update(vm_dims)
        dims.update(s.append_dimensions)
        new_name, unit = d.name, d.unit
        for metric, rename, new_unit in s.renames:
            if metric == d.name:
                new_name, unit = rename or d.name, new_unit or d.unit
        variants = [] if d.name in s.drop_original else [dims]
        for subset in config.aggregation_dimensions:
            if set(subset) <= set(dims):
                variants.append({k: dims[k] for k in subset})
        seen = set()
        for v in variants:
            key = tuple(sorted(v.items()))
            if key in seen:
                continue
            seen.add(key)
            out.append(d._replace(name=new_name, unit=unit, dimensions=key))
    return out
