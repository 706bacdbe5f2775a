"""Metric sources. Each module is one collector; this is the one place they are registered."""

from collectors.blockstats import BlockStats
from collectors.guest_cpu import GuestCpu
from collectors.guest_disk import GuestDisk
from collectors.guest_diskio import GuestDiskio
from collectors.guest_mem import GuestMem
from collectors.guest_net import GuestNet
from collectors.guest_vcpus import GuestVcpus
from collectors.process_cpu import ProcessCpu
from collectors.status import Status
from collectors.tap_net import TapNet
from collectors.vcpu_threads import VcpuThreads
from hiveagent.collector import Collector

REGISTRY: tuple[type[Collector[object]], ...] = (  # type: ignore[assignment]
    Status,
    ProcessCpu,
    VcpuThreads,
    TapNet,
    BlockStats,
    GuestDisk,
    GuestCpu,
    GuestDiskio,
    GuestNet,
    GuestMem,
    GuestVcpus,
)

__all__ = ["REGISTRY"]
