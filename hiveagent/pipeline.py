"""The pipeline: what happens to a cycle's raw datums before they are spooled.

Per VM: the metrics-wide append_dimensions resolved for it (sidecar or metadata file), the
CloudWatch Agent's shaping of in-guest datums (hiveagent.shaping), then its monitoring tier
(hiveagent.monitoring): detailed VMs' EC2 datums go as they are (plus the ImageId /
InstanceType series), basic VMs' wait in 5-minute windows. The pipeline owns those windows:
a VM that is gone, or moved to detailed, has its open windows closed here, and so has every VM
at shutdown (`drain`).
"""

from __future__ import annotations

from collections import Counter

from hiveagent.config import Config
from hiveagent.cycle import Cycle
from hiveagent.model import Datum, VmSpec
from hiveagent.monitoring import BasicWindows, detailed_copies, tier
from hiveagent.shaping import MetadataFiles, plugin_shaping, shape, vm_dimensions


class Pipeline:
    def __init__(self, config: Config) -> None:
        self.windows: dict[str, BasicWindows] = {}  # instance id -> its open basic windows
        self.stats: Counter[str] = Counter()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.metadata = MetadataFiles(config.instance_metadata)
        self.shaping = plugin_shaping(config)

    def finish(self, cycle: Cycle) -> list[Datum]:
        """Every VM's datums of one cycle finished, plus the last windows of the VMs gone."""
        out: list[Datum] = []
        for vm in cycle.vms:
            out += self.finish_vm(vm.spec, vm.datums)
        for instance_id in cycle.gone:
            out += self.vm_gone(instance_id)
        self.stats["datums_collected"] += len(out)
        return out

    def finish_vm(self, spec: VmSpec, datums: list[Datum]) -> list[Datum]:
        meta = self.metadata.get(spec.instance_id)
        vm_dims = vm_dimensions(self.config, spec, meta)
        datums = shape(datums, self.config, vm_dims, self.shaping)
        if tier(spec.period_s, self.config.monitoring) == "basic":
            windows = self.windows.get(spec.instance_id)
            if windows is None:
                windows = self.windows[spec.instance_id] = BasicWindows()
            return windows.add(datums)
        if spec.instance_id in self.windows:  # the VM moved to detailed: close what was open
            datums += self.vm_gone(spec.instance_id)
        return detailed_copies(
            datums,
            spec.image_id or meta.image_id,
            spec.instance_type or meta.instance_type,
        )

    def vm_gone(self, instance_id: str) -> list[Datum]:
        """Close a VM's open basic windows (its last partial windows still count)."""
        windows = self.windows.pop(instance_id, None)
        return windows.drain() if windows is not None else []

    def drain(self) -> list[Datum]:
        """Close every open basic-monitoring window (shutdown)."""
        out = [d for windows in self.windows.values() for d in windows.drain()]
        self.windows.clear()
        return out
