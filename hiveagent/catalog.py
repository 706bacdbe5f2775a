"""The metric catalog: every metric hiveagent emits, with unit, dimensions, source and meaning.

Collectors emit through `Emitter` (hiveagent.collector), which refuses a name that is not here or
dimensions that differ from the row, so the catalog and what is emitted cannot drift apart. The
README's metric tables are generated from this module (`hiveagent catalog --markdown`) and a test
checks they match.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Family(Enum):
    """Which configured namespace a metric goes to."""

    EC2 = "ec2"  # hypervisor.ec2.namespace, default Hive/EC2
    EBS = "ebs"  # hypervisor.ebs.namespace, default Hive/EBS
    GUEST = "guest"  # metrics.namespace, default CWAgent
    SELF = "self"  # hypervisor.self_metrics.namespace, default HiveAgent


@dataclass(frozen=True)
class MetricSpec:
    name: str
    family: Family
    unit: str
    dimensions: tuple[str, ...]
    source: str
    semantics: str
    # Of `dimensions`, those a datum may lack (the config leaves them out, or they are not
    # known for a series); the others it always carries.
    optional_dimensions: tuple[str, ...] = ()
    # "total": the value is an amount over its period (summed when periods are combined, as
    # in basic monitoring's 5-minute windows); "gauge": a level or ratio at or over its
    # period (averaged when combined).
    kind: str = "total"
    # Whether a plugin given without `measurement` sends it (the CloudWatch Agent collects
    # cpu time_* only when asked: collect_cpu_time).
    by_default: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("total", "gauge"):
            raise ValueError(f"{self.name}: kind must be total or gauge")
        if self.unit == "Percent" and self.kind != "gauge":
            raise ValueError(f"{self.name}: a percentage is never an amount: kind='gauge'")


_EC2 = ("InstanceId",)
_EBS = ("VolumeId",)

# In-guest metrics carry the CloudWatch Agent's dimensions: each telegraf input's own tags (cpu:
# cpu; disk: path, device, fstype, with mode excluded by the CloudWatch Agent's translator and
# device too with drop_device, translator/translate/metrics/metrics_collect/disk/ruleDropTags.go;
# diskio: name, serial skipped as telegraf's default; net: interface; mem: none), telegraf's
# global `host` tag (the guest's host name) unless agent.omit_hostname, which the ec2tagger
# processor removes when metrics.append_dimensions is set (plugins/processors/ec2tagger/
# ec2tagger.go), and disk's VolumeId when its append_dimensions asks for it. What
# append_dimensions add (InstanceId, ImageId, ...) is added after the catalog's check
# (hiveagent.shaping), and is not listed here.
_HOST = "host"
_CPU = ("cpu", _HOST)
_DISK = ("path", "device", "fstype", _HOST, "VolumeId")
_DISK_OPTIONAL = ("device", _HOST, "VolumeId")
_DISKIO = ("name", _HOST)
_NET = ("interface", _HOST)
_MEM = (_HOST,)


def _guest(
    name: str,
    unit: str,
    dims: tuple[str, ...],
    source: str,
    semantics: str,
    kind: str = "total",
    by_default: bool = True,
    optional: tuple[str, ...] = (_HOST,),
) -> MetricSpec:
    return MetricSpec(name, Family.GUEST, unit, dims, source, semantics, optional, kind, by_default)


_CPU_FIELDS = {
    "idle": "idle",
    "user": "user minus guest (/proc/stat counts guest time inside user; telegraf takes it out)",
    "system": "system",
    "iowait": "iowait",
    "nice": "nice minus guest_nice (/proc/stat counts guest_nice inside nice)",
    "irq": "irq",
    "softirq": "softirq",
    "steal": "steal (time the hypervisor ran something else)",
    "guest": "guest (running nested guests)",
    "guest_nice": "guest_nice",
}
_CPU_TOTAL = (
    "cpu-total: the sum of the online CPUs (qemu-ga omits /proc/stat's all-CPU line; within "
    "9 / period_s points of it, and none for a period in which vCPUs went on- or offline)."
)
_CPU_TIME_FIELDS = {
    "user": "user, guest time included (the field as /proc/stat has it)",
    "system": "system",
    "idle": "idle",
    "nice": "nice, guest_nice included",
    "iowait": "iowait",
    "irq": "irq",
    "softirq": "softirq",
    "steal": "steal",
    "guest": "guest",
    "guest_nice": "guest_nice",
    "active": "everything but idle (user + system + nice + iowait + irq + softirq + steal)",
}
_GUEST_ROWS = (
    *(
        _guest(
            f"cpu_usage_{field}",
            "Percent",
            _CPU,
            "QGA guest-get-cpustats",
            f"Share of CPU time in {what} over the period, per CPU (cpuN) and overall "
            "(cpu-total); telegraf's denominator: user+system+nice+iowait+irq+softirq+steal+"
            f"idle. {_CPU_TOTAL}",
            kind="gauge",
        )
        for field, what in _CPU_FIELDS.items()
    ),
    _guest(
        "cpu_usage_active",
        "Percent",
        _CPU,
        "QGA guest-get-cpustats",
        "100 * (total - idle) / total over the period (telegraf's report_active: iowait counts "
        f"as active). {_CPU_TOTAL}",
        kind="gauge",
    ),
    *(
        _guest(
            f"cpu_time_{field}",
            "None",
            _CPU,
            "QGA guest-get-cpustats",
            f"CPU time in {what}: cumulative seconds since the guest booted, as read "
            "(telegraf's collect_cpu_time; the CloudWatch Agent sends no unit), per CPU and "
            "overall; cpu-total's is below /proc/stat's all-CPU line by under 0.01 s per vCPU, "
            "plus the time of vCPUs now offline. Sent only when asked for by name.",
            kind="gauge",
            by_default=False,
        )
        for field, what in _CPU_TIME_FIELDS.items()
    ),
    _guest(
        "diskio_reads",
        "Count",
        _DISKIO,
        "QGA guest-get-diskstats",
        "Reads completed in the period (read-ios delta). Like every diskio_*: a device whose "
        "counters are all 0 is skipped (gopsutil); resources are names or glob patterns.",
    ),
    _guest(
        "diskio_writes",
        "Count",
        _DISKIO,
        "QGA guest-get-diskstats",
        "Writes completed in the period (write-ios delta).",
    ),
    _guest(
        "diskio_read_bytes",
        "Bytes",
        _DISKIO,
        "QGA guest-get-diskstats",
        "Bytes read in the period (read-sectors delta * 512).",
    ),
    _guest(
        "diskio_write_bytes",
        "Bytes",
        _DISKIO,
        "QGA guest-get-diskstats",
        "Bytes written in the period (write-sectors delta * 512).",
    ),
    _guest(
        "diskio_read_time",
        "Milliseconds",
        _DISKIO,
        "QGA guest-get-diskstats",
        "Time reads spent in the device queue in the period (read-ticks delta).",
    ),
    _guest(
        "diskio_write_time",
        "Milliseconds",
        _DISKIO,
        "QGA guest-get-diskstats",
        "Time writes spent in the device queue in the period (write-ticks delta).",
    ),
    _guest(
        "diskio_io_time",
        "Milliseconds",
        _DISKIO,
        "QGA guest-get-diskstats",
        "Time the device was busy in the period (total-ticks delta).",
    ),
    _guest(
        "diskio_iops_in_progress",
        "Count",
        _DISKIO,
        "QGA guest-get-diskstats",
        "I/O requests in flight when sampled (ios-pgr).",
        kind="gauge",
    ),
    _guest(
        "net_bytes_sent",
        "Bytes",
        _NET,
        "QGA guest-network-get-interfaces",
        "Bytes the interface sent in the period (tx-bytes delta). Like every net_*: with "
        'resources "*", loopback is skipped and only interfaces with an address are '
        "reported (qemu-ga gives counters for those only; telegraf: interfaces that are up); "
        "resources are names or glob patterns.",
    ),
    _guest(
        "net_bytes_recv",
        "Bytes",
        _NET,
        "QGA guest-network-get-interfaces",
        "Bytes the interface received in the period (rx-bytes delta).",
    ),
    _guest(
        "net_packets_sent",
        "Count",
        _NET,
        "QGA guest-network-get-interfaces",
        "Packets sent in the period (tx-packets delta).",
    ),
    _guest(
        "net_packets_recv",
        "Count",
        _NET,
        "QGA guest-network-get-interfaces",
        "Packets received in the period (rx-packets delta).",
    ),
    _guest(
        "net_err_in",
        "Count",
        _NET,
        "QGA guest-network-get-interfaces",
        "Receive errors in the period (rx-errs delta).",
    ),
    _guest(
        "net_err_out",
        "Count",
        _NET,
        "QGA guest-network-get-interfaces",
        "Transmit errors in the period (tx-errs delta).",
    ),
    _guest(
        "net_drop_in",
        "Count",
        _NET,
        "QGA guest-network-get-interfaces",
        "Received packets dropped in the period (rx-dropped delta).",
    ),
    _guest(
        "net_drop_out",
        "Count",
        _NET,
        "QGA guest-network-get-interfaces",
        "Packets dropped on send in the period (tx-dropped delta).",
    ),
    _guest(
        "mem_total",
        "Bytes",
        _MEM,
        "QMP balloon guest-stats",
        "stat-total-memory: the guest's MemTotal (exact).",
        kind="gauge",
    ),
    _guest(
        "mem_available",
        "Bytes",
        _MEM,
        "QMP balloon guest-stats",
        "stat-available-memory: the guest's MemAvailable (exact).",
        kind="gauge",
    ),
    _guest(
        "mem_free",
        "Bytes",
        _MEM,
        "QMP balloon guest-stats",
        "stat-free-memory: the guest's MemFree (exact).",
        kind="gauge",
    ),
    _guest(
        "mem_cached",
        "Bytes",
        _MEM,
        "QMP balloon guest-stats",
        "stat-disk-caches: the kernel's file pages, Cached + Buffers + SwapCached in "
        "/proc/meminfo terms; the CloudWatch Agent's is Cached + SReclaimable, which the balloon "
        "does not report: higher by at most Buffers + SwapCached, lower by at most "
        "SReclaimable.",
        kind="gauge",
    ),
    _guest(
        "mem_used",
        "Bytes",
        _MEM,
        "QMP balloon guest-stats",
        "total - free - disk-caches = total - free - Buffers - Cached - SwapCached; the "
        "CloudWatch Agent's (gopsutil) is total - free - Buffers - (Cached + SReclaimable): "
        "higher by at most SReclaimable (reclaimable slab), lower by at most SwapCached.",
        kind="gauge",
    ),
    _guest(
        "mem_used_percent",
        "Percent",
        _MEM,
        "QMP balloon guest-stats",
        "mem_used / mem_total * 100 (mem_used's difference, over mem_total).",
        kind="gauge",
    ),
    _guest(
        "mem_available_percent",
        "Percent",
        _MEM,
        "QMP balloon guest-stats",
        "mem_available / mem_total * 100 (exact).",
        kind="gauge",
    ),
)


def _self(
    name: str, unit: str, semantics: str, dims: tuple[str, ...] = (), kind: str = "total"
) -> MetricSpec:
    return MetricSpec(name, Family.SELF, unit, dims, "the agent itself", semantics, kind=kind)


# Per-instance block I/O, as AWS reports it on Nitro: EBS* over the instance's EBS volumes,
# Disk* over its instance-store disks only.
_IO_FIELDS = (
    ("ReadOps", "Count", "Completed read operations"),
    ("WriteOps", "Count", "Completed write operations"),
    ("ReadBytes", "Bytes", "Bytes read"),
    ("WriteBytes", "Bytes", "Bytes written"),
)
_IO_GROUPS = (
    ("EBS", "the instance's EBS volumes"),
    (
        "Disk",
        "the instance's instance-store disks: devices that are not volumes (a generic host's "
        "disks without a vol- id; a Spinifex VM has none, so it sends no Disk*)",
    ),
)
_INSTANCE_IO = tuple(
    MetricSpec(
        f"{prefix}{field}",
        Family.EC2,
        unit,
        _EC2,
        "QMP query-blockstats",
        f"{what} in the period, summed over {group}.",
    )
    for prefix, group in _IO_GROUPS
    for field, unit, what in _IO_FIELDS
)

CATALOG: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "CPUUtilization",
            Family.EC2,
            "Percent",
            _EC2,
            "/proc/<qemu pid>/stat",
            "QEMU process CPU time (all threads, incl. emulation and I/O) over wall time "
            "and vCPU count in the period, capped at 100; with hypervisor.ec2.cpu_source "
            "vcpu_threads, the vCPU threads' time only (schedstat).",
            kind="gauge",
        ),
        MetricSpec(
            "CPUStealPercent",
            Family.EC2,
            "Percent",
            _EC2,
            "/proc/<qemu pid>/task/<vCPU tid>/schedstat",
            "Time the vCPU threads were runnable but waiting for a host CPU, over their "
            "capacity (period x vCPUs): the host-side view of steal. Not an AWS metric.",
            kind="gauge",
        ),
        MetricSpec(
            "GuestVCPUsOnline",
            Family.EC2,
            "Count",
            _EC2,
            "QGA guest-get-vcpus",
            "vCPUs the guest has online (sent with the cpu plugin). Not an AWS metric.",
            kind="gauge",
        ),
        MetricSpec(
            "NetworkIn",
            Family.EC2,
            "Bytes",
            _EC2,
            "/proc/<qemu pid>/net/dev",
            "Bytes received by the instance in the period: the tap's tx counter.",
        ),
        MetricSpec(
            "NetworkOut",
            Family.EC2,
            "Bytes",
            _EC2,
            "/proc/<qemu pid>/net/dev",
            "Bytes sent by the instance in the period: the tap's rx counter.",
        ),
        MetricSpec(
            "NetworkPacketsIn",
            Family.EC2,
            "Count",
            _EC2,
            "/proc/<qemu pid>/net/dev",
            "Packets received by the instance in the period (tap tx packets).",
        ),
        MetricSpec(
            "NetworkPacketsOut",
            Family.EC2,
            "Count",
            _EC2,
            "/proc/<qemu pid>/net/dev",
            "Packets sent by the instance in the period (tap rx packets).",
        ),
        *_INSTANCE_IO,
        MetricSpec(
            "StatusCheckFailed",
            Family.EC2,
            "Count",
            _EC2,
            "QMP + guest agent",
            "1 if either status check failed in this cycle, else 0.",
            kind="gauge",
        ),
        MetricSpec(
            "StatusCheckFailed_System",
            Family.EC2,
            "Count",
            _EC2,
            "QMP",
            "1 if QMP is unreachable or QEMU is in an error state (internal-error, "
            "io-error), else 0. Like every status check, not sent while the VM does not run "
            "(shutdown, prelaunch, inmigrate, postmigrate): AWS checks running instances only.",
            kind="gauge",
        ),
        MetricSpec(
            "StatusCheckFailed_Instance",
            Family.EC2,
            "Count",
            _EC2,
            "QMP query-status + guest agent",
            "1 if the guest panicked, or its guest agent is expected (it answered before in "
            "this QEMU process's life, remembered across agent restarts, or QEMU says the "
            "guest holds its port open) and has not answered for two cycles in a row, else 0.",
            kind="gauge",
        ),
        MetricSpec(
            "VolumeReadOps",
            Family.EBS,
            "Count",
            _EBS,
            "QMP query-blockstats",
            "Completed read operations on the volume in the period.",
        ),
        MetricSpec(
            "VolumeWriteOps",
            Family.EBS,
            "Count",
            _EBS,
            "QMP query-blockstats",
            "Completed write operations on the volume in the period.",
        ),
        MetricSpec(
            "VolumeReadBytes",
            Family.EBS,
            "Bytes",
            _EBS,
            "QMP query-blockstats",
            "Bytes read from the volume in the period.",
        ),
        MetricSpec(
            "VolumeWriteBytes",
            Family.EBS,
            "Bytes",
            _EBS,
            "QMP query-blockstats",
            "Bytes written to the volume in the period.",
        ),
        MetricSpec(
            "VolumeTotalReadTime",
            Family.EBS,
            "Seconds",
            _EBS,
            "QMP query-blockstats",
            "Sum of the latencies of the reads completed in the period (may exceed the period).",
        ),
        MetricSpec(
            "VolumeTotalWriteTime",
            Family.EBS,
            "Seconds",
            _EBS,
            "QMP query-blockstats",
            "Sum of the latencies of the writes completed in the period.",
        ),
        MetricSpec(
            "VolumeIdleTime",
            Family.EBS,
            "Seconds",
            _EBS,
            "QMP query-blockstats",
            "Seconds without I/O in the period: the period minus the guest's busy time for "
            "the disk behind the volume (diskstats total-ticks, which counts requests stuck in "
            "flight; disk found by PCI address, needs the diskio plugin); else exactly the "
            "period when no operation completed, otherwise QEMU's idle_time_ns (time since "
            "the last operation, a lower bound).",
        ),
        MetricSpec(
            "VolumeQueueLength",
            Family.EBS,
            "Count",
            _EBS,
            "QMP query-blockstats",
            "Average outstanding requests over the period: the guest's time in queue for the "
            "disk behind the volume (diskstats weight-ticks delta / period, iostat's aqu-sz, "
            "which counts requests stuck in flight) when known; else QEMU's own "
            "avg_rd_queue_depth + avg_wr_queue_depth (timed_stats) when the drive has "
            "stats-intervals; else Little's law over completed requests: (d rd_total_time_ns "
            "+ d wr_total_time_ns) / period_ns.",
            kind="gauge",
        ),
        _guest(
            "disk_used_percent",
            "Percent",
            _DISK,
            "QGA guest-get-fsinfo",
            "used / (used + free) * 100 = used-bytes / total-bytes * 100, as gopsutil and df "
            "compute it (exact).",
            optional=_DISK_OPTIONAL,
            kind="gauge",
        ),
        _guest(
            "disk_free",
            "Bytes",
            _DISK,
            "QGA guest-get-fsinfo",
            "Bytes available to unprivileged users, f_bavail * f_frsize = total-bytes - "
            "used-bytes, gopsutil's Free (exact).",
            optional=_DISK_OPTIONAL,
            kind="gauge",
        ),
        _guest(
            "disk_total",
            "Bytes",
            _DISK,
            "QGA guest-get-fsinfo",
            "Filesystem size, f_blocks * f_frsize: total-bytes-privileged (qemu-ga 9.1+, exact); "
            "before 9.1, total-bytes = used + free, smaller by the space only root may use "
            "((f_bfree - f_bavail) * f_frsize: on ext4 the reserved blocks, 5% by default, plus "
            "up to 2%; 0 on XFS).",
            optional=_DISK_OPTIONAL,
            kind="gauge",
        ),
        _guest(
            "disk_used",
            "Bytes",
            _DISK,
            "QGA guest-get-fsinfo",
            "Used bytes: used-bytes = (f_blocks - f_bfree) * f_frsize, gopsutil's Used (exact).",
            optional=_DISK_OPTIONAL,
            kind="gauge",
        ),
        *_GUEST_ROWS,
        _self("DatumsCollected", "Count", "Datums collected from VMs in the period."),
        _self("DatumsSent", "Count", "Datums the endpoint accepted in the period."),
        _self(
            "DatumsDropped",
            "Count",
            "Datums given up in the period, by reason (rejected.<code>, spool_full, too_old, "
            "spool_corrupt, memory_full, ...). Emitted only for reasons that occurred.",
            ("Reason",),
        ),
        _self("ApiCalls", "Count", "PutMetricData calls in the period."),
        _self("ApiErrors", "Count", "PutMetricData calls that failed in the period."),
        _self("BreakerOpens", "Count", "Times the circuit breaker opened in the period."),
        _self(
            "SpoolBytes", "Bytes", "Bytes in the disk spool at the end of the period.", kind="gauge"
        ),
        _self(
            "SpoolPendingDatums",
            "Count",
            "Datums waiting for the endpoint (disk and memory).",
            kind="gauge",
        ),
        _self(
            "SpoolOldestAge",
            "Seconds",
            "Age of the oldest datum waiting for the endpoint (0 when none waits).",
            kind="gauge",
        ),
        _self("CycleDuration", "Seconds", "Wall time of the last collection cycle.", kind="gauge"),
        _self("VmsSeen", "Count", "VMs found by discovery in the last cycle.", kind="gauge"),
        _self(
            "QmpTimeouts",
            "Count",
            "QMP calls of this VM that hit their deadline in the period (only when > 0).",
            _EC2,
        ),
        _self(
            "QgaTimeouts",
            "Count",
            "Guest agent calls of this VM that hit their deadline in the period (only when > 0).",
            _EC2,
        ),
        _self(
            "AccountDatumsSent",
            "Count",
            "Datums a tenant account's endpoint accepted in the period, signed with its "
            "credentials (routing by account; only when > 0).",
            ("Account",),
        ),
        _self(
            "AccountDatumsDropped",
            "Count",
            "A tenant account's datums given up in the period, by reason (only when > 0).",
            ("Account", "Reason"),
        ),
        _self(
            "AccountPendingDatums",
            "Count",
            "A tenant account's datums waiting in its spool (held, or its endpoint down).",
            ("Account",),
            kind="gauge",
        ),
    )
}


def dimension_list(spec: MetricSpec) -> str:
    """A row's dimensions as the README shows them: an optional one marked with `?`."""
    return ", ".join(f"{d}?" if d in spec.optional_dimensions else d for d in spec.dimensions)


GUEST_DIMENSIONS_NOTE = (
    "The dimensions are the CloudWatch Agent's for the same config (a `?` marks one a datum "
    "may lack): each plugin's own (`cpu`; `path`, `device`, `fstype`; `name`; `interface`; "
    "none for mem); `host`, the guest's host name (qemu-guest-agent's guest-get-host-name; "
    "`agent.hostname` instead, when set), "
    "unless `agent.omit_hostname` is true or `metrics.append_dimensions` is set (even `{}`); "
    "disk's `device` unless `drop_device`; disk's `VolumeId` only when its `append_dimensions` "
    'has `"VolumeId": "${aws:VolumeId}"` and `metrics.append_dimensions` is set, on '
    "filesystems whose disk is a known volume. To these, `metrics.append_dimensions` adds "
    "`InstanceId`, `ImageId`, `InstanceType`, `AutoScalingGroupName` as its templates ask (and "
    "its static values), and a plugin's `append_dimensions` its own."
)


def markdown_table(family: Family) -> str:
    """The README table for one family, one row per metric."""
    lines = [
        "| Metric | Unit | Dimensions | Source | Meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in CATALOG.values():
        if spec.family is family:
            lines.append(
                f"| `{spec.name}` | {spec.unit} | {dimension_list(spec)} "
                f"| {spec.source} | {spec.semantics} |"
            )
    if family is Family.GUEST:
        lines += ["", GUEST_DIMENSIONS_NOTE]
    return "\n".join(lines)


def markdown_tables() -> str:
    titles = {
        Family.EC2: "EC2 instance metrics "
        "(namespace `hypervisor.ec2.namespace`, default `Hive/EC2`)",
        Family.EBS: "EBS volume metrics (namespace `hypervisor.ebs.namespace`, default `Hive/EBS`)",
        Family.GUEST: "In-guest metrics, CloudWatch Agent names "
        "(namespace `metrics.namespace`, default `CWAgent`)",
        Family.SELF: "The agent's own metrics "
        "(namespace `hypervisor.self_metrics.namespace`, default `HiveAgent`)",
    }
    return "\n\n".join(f"### {titles[f]}\n\n{markdown_table(f)}" for f in Family) + "\n"
