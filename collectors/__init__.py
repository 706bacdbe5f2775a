"""Metric sources. Each module is one collector; this is the one place they are registered."""

from collectors.blockstats import BlockStats
from collectors.guest_disk import GuestDisk
from collectors.process_cpu import ProcessCpu
from collectors.status import Status
from collectors.tap_net import TapNet
from hiveagent.collector import Collector

REGISTRY: tuple[type[Collector[object]], ...] = (  # type: ignore[assignment]
    Status,
    ProcessCpu,
    TapNet,
    BlockStats,
    GuestDisk,
)

__all__ = ["REGISTRY"]
