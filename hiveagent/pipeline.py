"""The pipeline: what happens to a cycle's raw datums before they are spooled.

Per VM: the metrics-wide append_dimensions resolved for it (sidecar or metadata file), the
CloudWatch Agent's shaping of in-guest datums (hiveagent.shaping), then its monitoring tier
(hiveagent.monitoring): detailed VMs' EC2 datums go as they are (plus the ImageId /
InstanceType series), basic VMs' wait in 5-minute windows. The pipeline owns those windows:
a VM that is gone, or moved to detailed, has its open windows closed here, and so has every VM
at shutdown (`drain`). A series never goes backwards (hiveagent.monitoring): a VM's first window
is gathered only if it begins after the VM's last detailed datum and after the window the last
shutdown closed early; `drain` writes those stamps to `state_path` for the next start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hiveagent.config import Config
from hiveagent.cycle import Cycle
from hiveagent.model import Datum, VmSpec
from hiveagent.monitoring import BasicWindows, detailed_copies, passes_through, tier
from hiveagent.shaping import (
    MetadataFiles,
    plugin_shaping,
    shape,
    template_values,
    vm_dimensions,
)

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, config: Config, state_path: Path | None = None) -> None:
        self.windows: dict[str, BasicWindows] = {}  # instance id -> its open basic windows
        # instance id -> the latest EC2 stamp sent for it (its last detailed datum, or the
        # window a shutdown closed early): a basic window starting at or before it is not
        # gathered
        self.sent_until: dict[str, float] = {}
        self.routes: dict[str, str] = {}  # instance id -> the route of its datums
        self.state_path = state_path
        if state_path is not None:
            self.sent_until = load_sent_until(state_path, time.time())
        self.stats: Counter[str] = Counter()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.metadata = MetadataFiles(config.instance_metadata)
        self.shaping = plugin_shaping(config)

    def finish(self, cycle: Cycle) -> list[Datum]:
        """Every VM's datums of one cycle finished, plus the last windows of the VMs gone."""
        return [d for ds in self.finish_routed(cycle, lambda spec: "").values() for d in ds]

    def finish_routed(self, cycle: Cycle, route: Callable[[VmSpec], str]) -> dict[str, list[Datum]]:
        """`finish`, with each VM's datums under its route (hiveagent.accounts: the account
        its datums are sent to); a VM gone goes by the route it had."""
        out: dict[str, list[Datum]] = {}
        collected = 0
        for vm in cycle.vms:
            key = route(vm.spec)
            before = self.routes.get(vm.spec.instance_id, key)
            self.routes[vm.spec.instance_id] = key
            if before != key:  # it changed account: what it gathered before is the old one's
                closed = self.vm_gone(vm.spec.instance_id)
                collected += len(closed)
                out.setdefault(before, []).extend(closed)
            datums = self.finish_vm(vm.spec, vm.datums)
            collected += len(datums)
            out.setdefault(key, []).extend(datums)
        for instance_id in cycle.gone:
            datums = self.vm_gone(instance_id)
            collected += len(datums)
            out.setdefault(self.routes.pop(instance_id, ""), []).extend(datums)
        self.stats["datums_collected"] += collected
        return out

    def finish_vm(self, spec: VmSpec, datums: list[Datum]) -> list[Datum]:
        meta = self.metadata.get(spec.instance_id)
        values = template_values(spec, meta)
        vm_dims = vm_dimensions(self.config, values)
        datums = shape(datums, self.config, vm_dims, self.shaping, values)
        if tier(spec.period_s, self.config.monitoring) == "basic":
            windows = self.windows.get(spec.instance_id)
            if windows is None:
                after = self.sent_until.pop(spec.instance_id, -math.inf)
                windows = BasicWindows(not_before=after)
                self.windows[spec.instance_id] = windows
            return windows.add(datums)
        if spec.instance_id in self.windows:  # the VM moved to detailed: close what was open,
            datums = self.vm_gone(spec.instance_id) + datums  # older, so sent first
        stamps = [d.timestamp for d in datums if not passes_through(d)]
        if stamps:
            self.sent_until[spec.instance_id] = max(stamps)
        return detailed_copies(
            datums,
            spec.image_id or meta.image_id,
            spec.instance_type or meta.instance_type,
        )

    def vm_gone(self, instance_id: str) -> list[Datum]:
        """Close a VM's open basic windows (its last partial windows still count)."""
        windows = self.windows.pop(instance_id, None)
        closed = windows.drain() if windows is not None else []
        if closed:  # should it come back within the window, that window is not sent again
            self.sent_until[instance_id] = max(d.timestamp for d in closed)
            if len(self.sent_until) > SENT_UNTIL_MAX:
                cutoff = time.time() - SENT_UNTIL_KEEP_S
                self.sent_until = {k: v for k, v in self.sent_until.items() if v > cutoff}
        else:
            self.sent_until.pop(instance_id, None)
        return closed

    def drain(self) -> list[Datum]:
        """Close every open basic-monitoring window (shutdown), and write down what was sent
        up to when (`state_path`), so the next start does not send those windows again."""
        return [d for ds in self.drain_routed().values() for d in ds]

    def drain_routed(self) -> dict[str, list[Datum]]:
        """`drain`, each VM's windows under its route (as `finish_routed`)."""
        out: dict[str, list[Datum]] = {}
        for instance_id, windows in self.windows.items():
            closed = windows.drain()
            if closed:
                last = max(d.timestamp for d in closed)
                self.sent_until[instance_id] = max(self.sent_until.get(instance_id, last), last)
                out.setdefault(self.routes.get(instance_id, ""), []).extend(closed)
        self.windows.clear()
        if self.state_path is not None:
            save_sent_until(self.state_path, self.sent_until)
        return out


SENT_UNTIL_KEEP_S = 3600  # older stamps cannot hold back a window any more
SENT_UNTIL_MAX = 10_000  # VMs gone are forgotten once there are more than this


def load_sent_until(path: Path, now: float) -> dict[str, float]:
    """What `save_sent_until` wrote at the last shutdown (recent stamps only); a missing or
    unreadable file is an empty one."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): a basic VM's first window may repeat one", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in data.items()
        if isinstance(v, (int, float)) and math.isfinite(v) and v > now - SENT_UNTIL_KEEP_S
    }


def save_sent_until(path: Path, sent_until: dict[str, float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(sent_until, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s (%s): a basic VM's first window may repeat one", path, exc)
