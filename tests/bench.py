"""Benchmark: what the agent costs per VM, against N real protocol peers, beside a floor.

    .venv/bin/python -m tests.bench                      # N = 25, 50, 100, 200; prints a table
    .venv/bin/python -m tests.bench --sizes 25,200 --cycles 10 --markdown BENCHMARKS.md

Peers: N guest-less `qemu-system-x86_64` processes (TCG, no guest OS, each with a virtio-blk
volume on a null-co node, virtio-serial with a guest agent port, a balloon, its own QMP socket
and a Spinifex-style sidecar) and N host `qemu-ga` processes in unix-listen mode, named in the
sidecars as the VMs' guest agents (so guest-get-fsinfo answers with the host's filesystems).
moto's server is the endpoint.

Each measurement runs in its own child process, so CPU time and peak RSS are its own:

- agent: collection cycles (the scheduler, then the pipeline) with every registered collector
  and the in-guest plugins (`--collectors all`, the default) or without them
  (`--collectors hypervisor`), then the datums delivered: spooled (fsync) and sent until moto
  accepted them. Two warm-up cycles (connections, priming, guest-info), then `--cycles`
  measured. Delivery is reported per datum: the agent's CPU and, apart, moto's.
- floor: the same socket exchanges per VM and cycle as the agent, done by a minimal asyncio
  client that parses and computes nothing: QMP query-blockstats and qom-get of the balloon's
  guest-stats, in flight together on a long-lived connection, with query-status on the first
  cycle and every tenth, as the agent asks it (QMP events tell it when the run status changed;
  it asks query-chardev only while the guest agent is not answering); reads of /proc/<pid>/stat and
  each vCPU thread's schedstat; a guest agent connection with one write of 0xFF +
  guest-sync-delimited + guest-get-fsinfo, -cpustats, -diskstats,
  guest-network-get-interfaces and guest-get-vcpus (pipelined, as the agent sends them), the
  replies read, closed again. With `--collectors hypervisor`: no balloon stats, and the guest
  agent resync alone.

The peers' firmware halts their vCPU (see `halt_firmware`), so idle peers do not take the CPUs
from the agent being measured.

`--paired-with DIR`: instead of the floor, another checkout's agent runs at the same time as
this one, each on its own half of 2N peers and with its own moto (alternating each round), so
that both see the same machine speed. Every measured child runs this file, with the measured
checkout's hiveagent and tests.harness on its path (HIVEAGENT_BENCH_CODE), so both sides are
measured alike; `--code DIR` measures another checkout alone.

`--backlog`: the spool an endpoint outage leaves (`--backlog-minutes` of `--backlog-vms` VMs,
filled by the measured checkout's own spool), drained by its daemon (hiveagent.daemon.Daemon)
while it collects from the first of `--sizes` peers every `--interval` seconds: the drain's
time, the agent's and moto's CPU, each cycle's wall time during the drain and after, peak RSS.
With `--paired-with`, both checkouts, one after the other, in alternating order.

This is a script that prints figures, not a test; figures depend on the machine (it is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import socket as socket_mod
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The checkout whose agent a measured child runs (`--paired-with`): the measuring code is always
# this file, the measured code that checkout's hiveagent (and tests.harness).
CODE = Path(os.environ.get("HIVEAGENT_BENCH_CODE", REPO)).resolve()
sys.path.insert(0, str(CODE))

from tests.harness import HOST_QGA_BLOCKED, Collection, free_port, hex_id, wait_for  # noqa: E402

CONCURRENCY = 32
WARM_UP_CYCLES = 2  # connections, priming, guest-info
# The guest agent commands the agent asks every cycle with this config, pipelined after the
# resync (guest-get-disks, for the disk map, only every tenth cycle).
QGA_COMMANDS = (
    b"guest-get-fsinfo",
    b"guest-get-cpustats",
    b"guest-get-diskstats",
    b"guest-network-get-interfaces",
    b"guest-get-vcpus",
)
# query-status goes out on the first cycle and every STATUS_REFRESH_CYCLES cycles after (QMP
# events announce run state changes; the peers have none).
QMP_STATUS = b'{"execute":"query-status","id":1}\n'
QMP_BATCH = (
    b'{"execute":"query-blockstats","id":2}\n'
    b'{"execute":"qom-get","arguments":{"path":"/machine/peripheral/balloon0",'
    b'"property":"guest-stats"},"id":3}\n'
)
QGA_BATCH = b'\xff{"execute":"guest-sync-delimited","arguments":{"id":%d}}\n' + b"".join(
    b'{"execute":"%s","id":%d}\n' % (c, n) for n, c in enumerate(QGA_COMMANDS)
)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


# -- peers ----------------------------------------------------------------------------------------


def halt_firmware(path: Path) -> Path:
    """A 64 KiB "BIOS" whose reset vector is `cli; hlt; jmp .-1`: the vCPU halts for good.
    With the stock firmware a guest-less TCG QEMU keeps its vCPU busy looking for something to
    boot (about 1.1% of a CPU each here: 200 peers would take both CPUs from the agent being
    measured); halted, each costs about 0.4%."""
    image = bytearray(65536)
    image[-16:-12] = bytes([0xFA, 0xF4, 0xEB, 0xFD])
    path.write_bytes(bytes(image))
    return path


def start_peers(root: Path, n: int) -> list[subprocess.Popen[bytes]]:
    """n QEMU + n qemu-ga processes; sidecars for all of them in root/all."""
    procs: list[subprocess.Popen[bytes]] = []
    (root / "all").mkdir(parents=True)
    bios = halt_firmware(root / "halt.bin")
    for i in range(n):
        d = root / f"vm{i}"
        d.mkdir()
        vol = hex_id("vol", 0x5000 + i)
        procs.append(
            subprocess.Popen(
                [
                    "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "qemu64",
                    "-m", "32", "-smp", "1", "-nodefaults", "-display", "none",
                    "-no-user-config", "-bios", str(bios),
                    "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
                    "-blockdev", f"driver=null-co,node-name=nbd-{vol},size=67108864",
                    "-device", f"virtio-blk-pci,drive=nbd-{vol},id=vdisk-{vol}",
                    "-device", "virtio-serial-pci",
                    "-chardev", f"socket,path={d}/port.sock,server=on,wait=off,id=qga0",
                    "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                    "-device", "virtio-balloon-pci,id=balloon0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        (d / "ga").mkdir()
        procs.append(
            subprocess.Popen(
                [
                    "qemu-ga",
                    "-m",
                    "unix-listen",
                    "-p",
                    f"{d}/qga.sock",
                    "-t",
                    f"{d}/ga",
                    "-b",
                    HOST_QGA_BLOCKED,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for i in range(n):
        d = root / f"vm{i}"
        wait_for(
            lambda d=d: (d / "qmp.sock").exists() and (d / "qga.sock").exists(), 60, f"peer {i}"
        )
        instance_id = hex_id("i", 0x5000 + i)
        (root / "all" / f"qmp-telemetry-{instance_id}.json").write_text(
            json.dumps(
                {
                    "instance_id": instance_id,
                    "account_id": "000000000000",
                    "vcpus": 1,
                    "period_seconds": 60,
                    "taps": [],
                    "socket": str(d / "qmp.sock"),
                    "qga_socket": str(d / "qga.sock"),
                }
            )
        )
    return procs


def run_dir_for(root: Path, n: int) -> Path:
    """A run directory with the first n sidecars."""
    d = root / f"run{n}"
    d.mkdir(exist_ok=True)
    for p in sorted((root / "all").glob("*.json"))[:n]:
        shutil.copy(p, d / p.name)
    return d


def start_moto(root: Path, name: str = "moto") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(root / f"{name}.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    import socket

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, 30, "moto")
    return p, f"http://127.0.0.1:{port}"


# -- the measured children --------------------------------------------------------------------


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate, then kill what does not end in 30 s (moto holding half a million datums)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_s(pid: int | None) -> float:
    """A process's CPU time so far (user + system), 0 when there is none to read."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM). getrusage's ru_maxrss would include the forking
    parent's RSS on Linux."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


IN_GUEST_PLUGINS = {
    "disk": {"resources": ["*"]},
    "cpu": {"resources": ["*"], "totalcpu": True},
    # The peers' guest agent is the host's qemu-ga: it reports the host's devices (dozens of
    # loop devices, several interfaces). Send what a typical VM has.
    "diskio": {"resources": ["vda"]},
    "net": {"resources": ["lo", "eth0"]},
    "mem": {},
}


def agent_config(
    run_dir: str, endpoint: str, state: str, collectors: str = "all", interval: int = 60
) -> Any:
    from hiveagent.config import parse_config

    return parse_config(
        {
            "agent": {"metrics_collection_interval": interval, "region": "us-east-1"},
            "metrics": {
                "endpoint_override": endpoint,
                # as the sample agent.json: the peers' guest agents share one host name
                "append_dimensions": {"InstanceId": "${aws:InstanceId}"},
                # hypervisor only: no metrics_collected (the CloudWatch Agent refuses it empty)
                **({"metrics_collected": IN_GUEST_PLUGINS} if collectors == "all" else {}),
            },
            "hypervisor": {
                "discovery": {"spinifex": {"run_dir": run_dir}},
                "state_dir": state,
                "max_concurrent_vms": CONCURRENCY,
                "status_server": {"enabled": False},
            },
        }
    )


async def measure_agent(
    run_dir: str,
    cycles: int,
    endpoint: str,
    state: str,
    collectors: str = "all",
    profile: str | None = None,
    moto_pid: int | None = None,
) -> dict[str, Any]:
    from hiveagent.publisher import Publisher
    from hiveagent.scheduler import settle_memory
    from hiveagent.spool import Spool
    from hiveagent.wire import make_client

    config = agent_config(run_dir, endpoint, state, collectors)
    agent = Collection(config)  # the scheduler, then the pipeline, as the daemon runs them
    spool = Spool(config.spool.directory)
    spool.open()
    publisher = Publisher(make_client(config.region, endpoint), spool, config.publish)
    for _ in range(WARM_UP_CYCLES):
        spool.add(await agent.cycle())
        await publisher.flush()
    settle_memory()  # as the daemon does after its second cycle
    collect_cpu, collect_wall, publish_cpu, publish_wall, counts = [], [], [], [], []
    moto_cpu = 0.0
    profiler = None
    if profile:
        import cProfile

        # CPU time, not wall time: a wall-clock profile charges a send() with the time the
        # woken peer runs on this CPU. Only collection is profiled.
        profiler = cProfile.Profile(time.process_time)
    for _ in range(cycles):
        if profiler is not None:
            profiler.enable()
        c0, t0 = time.process_time(), time.perf_counter()
        datums = await agent.cycle()
        c1, t1 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.disable()
        m0 = cpu_s(moto_pid)
        spool.add(datums)  # delivery: spooled (one fsync), then sent until accepted
        await publisher.flush()
        c2, t2 = time.process_time(), time.perf_counter()
        moto_cpu += cpu_s(moto_pid) - m0
        collect_cpu.append(c1 - c0)
        collect_wall.append(t1 - t0)
        publish_cpu.append(c2 - c1)
        publish_wall.append(t2 - t1)
        counts.append(len(datums))
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    vms = len(agent.vms)
    errors = sum(sum(rt.errors.values()) for rt in agent.vms.values())
    await agent.close()
    spool.close()
    return {
        "vms": vms,
        "errors": errors,
        "datums_per_cycle": statistics.median(counts),
        "collect_cpu_s": statistics.median(collect_cpu),
        "collect_wall_s": statistics.median(collect_wall),
        "collect_wall_max_s": max(collect_wall),
        "publish_cpu_s": statistics.median(publish_cpu),
        "publish_wall_s": statistics.median(publish_wall),
        # delivery over all measured cycles: agent CPU and moto's, per datum
        "delivery_cpu_us": sum(publish_cpu) / sum(counts) * 1e6,
        "delivery_wall_us": sum(publish_wall) / sum(counts) * 1e6,
        "moto_cpu_us": moto_cpu / sum(counts) * 1e6,
        "whole_cpu_s": statistics.median(
            a + b for a, b in zip(collect_cpu, publish_cpu, strict=True)
        ),
        "sent": publisher.stats["datums_sent"],
        "publish_errors": publisher.stats["api_errors"],
        "peak_rss_mib": peak_rss_mib(),
    }


async def measure_floor(run_dir: str, cycles: int, collectors: str = "all") -> dict[str, Any]:
    from hiveagent.vm import STATUS_REFRESH_CYCLES

    sidecars = [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("*.json"))]
    limit = asyncio.Semaphore(CONCURRENCY)
    qmp: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, int, list[int]]] = []
    for s in sidecars:
        reader, writer = await asyncio.open_unix_connection(s["socket"])
        await reader.readline()  # greeting
        writer.write(b'{"execute":"qmp_capabilities"}\n')
        await reader.readline()
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_PEERCRED, 12)
        pid = struct.unpack("3i", creds)[0]
        writer.write(b'{"execute":"query-cpus-fast"}\n')
        cpus = json.loads(await reader.readline())["return"]
        qmp.append((reader, writer, pid, [c["thread-id"] for c in cpus]))

    everything = collectors == "all"
    # Without in-guest plugins the agent asks no balloon stats and only resyncs the guest agent
    # (the instance status check).
    qmp_batch = QMP_BATCH if everything else QMP_BATCH.split(b"\n", 1)[0] + b"\n"
    qga_batch = QGA_BATCH if everything else QGA_BATCH.split(b"\n", 1)[0] + b"\n"
    qga_replies = qga_batch.count(b"\n")

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while True:
            line = await reader.readline()
            if b'"return"' in line or b'"error"' in line or not line:
                return line

    async def one(i: int, cycle: int) -> None:
        async with limit:
            reader, writer, pid, tids = qmp[i]
            # In flight together, as the agent sends them.
            batch = qmp_batch if cycle % STATUS_REFRESH_CYCLES else QMP_STATUS + qmp_batch
            writer.write(batch)
            for _ in range(batch.count(b"\n")):
                await reply(reader)
            for path in (f"/proc/{pid}/stat", *(f"/proc/{pid}/task/{t}/schedstat" for t in tids)):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # as the agent reads them
                os.read(fd, 4096)
                os.close(fd)
            # As the agent does: the resync and the cycle's commands in one write, then the
            # replies (the id-less error for 0xFF, 0xFF + the sync reply, one line each).
            loop = asyncio.get_running_loop()
            with socket_mod.socket(socket_mod.AF_UNIX) as g:
                g.setblocking(False)
                await loop.sock_connect(g, sidecars[i]["qga_socket"])
                await loop.sock_sendall(g, qga_batch % random.randrange(1 << 31))
                buf = b""
                while (j := buf.find(b"\xff")) < 0 or buf.count(b"\n", j) < qga_replies:
                    chunk = await loop.sock_recv(g, 65536)
                    if not chunk:
                        raise RuntimeError("guest agent closed the connection")
                    buf += chunk

    for cycle in range(WARM_UP_CYCLES):  # as the agent's
        await asyncio.gather(*(one(i, cycle) for i in range(len(qmp))))
    cpu, wall = [], []
    for cycle in range(WARM_UP_CYCLES, WARM_UP_CYCLES + cycles):
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i, cycle) for i in range(len(qmp))))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    for _, writer, _, _ in qmp:
        writer.close()
    return {
        "vms": len(qmp),
        "cpu_s": statistics.median(cpu),
        "wall_s": statistics.median(wall),
        "peak_rss_mib": peak_rss_mib(),
    }


# -- the backlog: a spool the size of an outage's, drained while collection goes on -------------

# One VM's datums in a cycle with every collector on, as the agent makes them with the sample
# agent.json (InstanceId appended to the in-guest metrics): (namespace, name, unit, dimensions,
# seconds before the cycle's time). "{i}" and "{v}" stand for the VM's instance and volume.
_VM_DATUMS: list[tuple[str, str, str, tuple[tuple[str, str], ...], int]] = [
    *(("Hive/EC2", m, "Count", (("InstanceId", "{i}"),), 0)
      for m in ("StatusCheckFailed_System", "StatusCheckFailed_Instance", "StatusCheckFailed",
                "GuestVCPUsOnline")),
    *(("Hive/EC2", m, u, (("InstanceId", "{i}"),), 60)
      for m, u in (("CPUUtilization", "Percent"), ("CPUStealPercent", "Percent"),
                   ("EBSReadOps", "Count"), ("EBSWriteOps", "Count"),
                   ("EBSReadBytes", "Bytes"), ("EBSWriteBytes", "Bytes"))),
    *(("Hive/EBS", m, u, (("VolumeId", "{v}"),), 60)
      for m, u in (("VolumeIdleTime", "Seconds"), ("VolumeReadOps", "Count"),
                   ("VolumeWriteOps", "Count"), ("VolumeReadBytes", "Bytes"),
                   ("VolumeWriteBytes", "Bytes"), ("VolumeTotalReadTime", "Seconds"),
                   ("VolumeTotalWriteTime", "Seconds"), ("VolumeQueueLength", "Count"))),
    *(("CWAgent", f"disk_{m}", u,
       (("InstanceId", "{i}"), ("device", "vda"), ("fstype", "ext4"), ("path", "/")), 0)
      for m, u in (("used", "Bytes"), ("free", "Bytes"), ("total", "Bytes"),
                   ("used_percent", "Percent"))),
    *(("CWAgent", f"cpu_usage_{m}", "Percent", (("InstanceId", "{i}"), ("cpu", c)), 0)
      for c in ("cpu-total", "cpu0", "cpu1")
      for m in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest",
                "guest_nice", "active")),
    *(("CWAgent", f"diskio_{m}", u, (("InstanceId", "{i}"), ("name", "vda")), 0)
      for m, u in (("reads", "Count"), ("writes", "Count"), ("read_bytes", "Bytes"),
                   ("write_bytes", "Bytes"), ("read_time", "Milliseconds"),
                   ("write_time", "Milliseconds"), ("io_time", "Milliseconds"),
                   ("iops_in_progress", "Count"))),
    *(("CWAgent", f"net_{m}", u, (("InstanceId", "{i}"), ("interface", n)), 0)
      for n in ("eth0", "lo")
      for m, u in (("bytes_sent", "Bytes"), ("bytes_recv", "Bytes"), ("packets_sent", "Count"),
                   ("packets_recv", "Count"), ("err_in", "Count"), ("err_out", "Count"),
                   ("drop_in", "Count"), ("drop_out", "Count"))),
]  # fmt: skip
assert len(_VM_DATUMS) == 79


def synthetic_cycle(vms: int, when: float, rng: random.Random) -> list[Any]:
    """A cycle's datums of `vms` VMs stamped at `when`, shaped as the agent's (_VM_DATUMS),
    with values of the precision real ones have."""
    from hiveagent.model import Datum

    out = []
    for n in range(vms):
        ids = {"{i}": hex_id("i", 0x9000 + n), "{v}": hex_id("vol", 0x9000 + n)}
        for ns, name, unit, dims, before in _VM_DATUMS:
            value = rng.random() * 100 if unit == "Percent" else float(rng.randrange(1 << 30))
            out.append(
                Datum(
                    ns,
                    name,
                    tuple((k, ids.get(v, v)) for k, v in dims),
                    value,
                    unit,
                    when - before,
                    60,
                )
            )
    return out


def fill_backlog(state: str, vms: int, minutes: int) -> dict[str, Any]:
    """The spool an outage of `minutes` leaves behind at `vms` VMs (a cycle a minute), written
    by this checkout's spool as the agent writes it (one `add` a cycle)."""
    from hiveagent.spool import Spool

    spool = Spool(Path(state) / "spool")
    spool.open()
    rng = random.Random(18)
    end = time.time() // 60 * 60
    for k in range(minutes):
        spool.add(synthetic_cycle(vms, end - 60 * (minutes - k), rng))
    spool.close()
    return {"datums": spool.pending_datums, "bytes": spool.total_bytes}


async def measure_backlog(
    run_dir: str,
    endpoint: str,
    state: str,
    interval: int,
    moto_pid: int | None = None,
    after_cycles: int = 3,
    collectors: str = "all",
) -> dict[str, Any]:
    """The daemon (hiveagent.daemon.Daemon, as `hiveagent run`) started on a spool that
    `fill_backlog` filled, the endpoint up: how long the backlog takes to go out, the collection
    cycles' wall and CPU times while it does and after, peak RSS."""
    from hiveagent.daemon import Daemon

    daemon = Daemon(agent_config(run_dir, endpoint, state, collectors, interval))
    cycles: list[tuple[float, float, float]] = []  # (start, end) monotonic, CPU seconds
    collect = daemon.scheduler.collect

    async def timed_collect() -> Any:
        t0, c0 = time.monotonic(), time.process_time()
        result = await collect()
        cycles.append((t0, time.monotonic(), time.process_time() - c0))
        return result

    daemon.scheduler.collect = timed_collect  # type: ignore[method-assign]
    found: dict[str, Any] = {"max_rss_mib": 0.0}

    async def watch() -> None:
        spool, publisher = daemon.spool, daemon.publisher
        while not spool.pending:
            await asyncio.sleep(0.01)
        backlog = {seq for seq, r in spool.pending.items() if r.replayed}
        found["backlog_datums"] = sum(spool.pending[seq].count for seq in backlog)
        while not publisher.counts["api_calls"]:
            await asyncio.sleep(0.002)
        start, cpu0, moto0 = time.monotonic(), time.process_time(), cpu_s(moto_pid)
        while any(seq in spool.pending for seq in backlog):
            found["max_rss_mib"] = max(found["max_rss_mib"], rss_mib())
            await asyncio.sleep(0.05)
        found.update(
            drain_start=start,
            drain_end=time.monotonic(),
            drain_cpu_s=time.process_time() - cpu0,
            moto_cpu_s=cpu_s(moto_pid) - moto0,
        )
        target = len(cycles) + after_cycles
        while len(cycles) < target:
            found["max_rss_mib"] = max(found["max_rss_mib"], rss_mib())
            await asyncio.sleep(0.1)
        daemon.stop.set()

    watcher = asyncio.create_task(watch())
    await daemon.run()
    await watcher
    start, end = found["drain_start"], found["drain_end"]
    during = [c for c in cycles if c[1] > start and c[0] < end]
    after = [c for c in cycles if c[0] >= end]
    cycles_cpu = sum(c[2] for c in during)
    return {
        "vms": len(daemon.scheduler.vms),
        "backlog_datums": found["backlog_datums"],
        "drain_s": end - start,
        "drain_agent_cpu_s": found["drain_cpu_s"],
        # the agent's CPU while draining, less its collection cycles', per backlog datum
        "drain_agent_us": (found["drain_cpu_s"] - cycles_cpu) / found["backlog_datums"] * 1e6,
        "drain_moto_us": found["moto_cpu_s"] / found["backlog_datums"] * 1e6,
        "cycle_wall_during_s": [round(c[1] - c[0], 3) for c in during],
        "cycle_wall_after_s": [round(c[1] - c[0], 3) for c in after],
        "cycle_cpu_during_s": [round(c[2], 3) for c in during],
        "cycle_cpu_after_s": [round(c[2], 3) for c in after],
        "max_rss_mib": found["max_rss_mib"],
        "peak_rss_mib": peak_rss_mib(),
        "dropped": {k: v for k, v in daemon.publisher.stats.items() if k.startswith("dropped")},
    }


def backlog(root: Path, n: int, args: argparse.Namespace) -> None:
    """`--backlog`: the backlog drained by this checkout's agent (and, with --paired-with, by
    the other one's, alternately), each run on the same n peers with a fresh moto."""
    run_dir = str(run_dir_for(root, n))
    sides = [("this", REPO)]
    if args.paired_with:
        sides.append((args.paired_with, Path(args.paired_with).resolve()))
    print(
        "| round | checkout | backlog datums | drain | agent CPU / datum (drain) "
        "| moto CPU / datum | cycle wall during drain | cycle wall after | peak RSS | dropped |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for rnd in range(args.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        for label, code in order:
            state = str(root / f"backlog-{rnd}-{label.replace('/', '_')}")
            moto, endpoint = start_moto(root, f"moto-backlog-{rnd}")
            try:
                fill = {"state": state, "vms": args.backlog_vms, "minutes": args.backlog_minutes}
                [filled] = children([("fill", code, fill)])
                [r] = children(
                    [
                        (
                            "backlog",
                            code,
                            {
                                "run_dir": run_dir,
                                "endpoint": endpoint,
                                "state": state,
                                "interval": args.interval,
                                "moto_pid": moto.pid,
                                "collectors": args.collectors,
                            },
                        )
                    ]
                )
            finally:
                stop(moto)
            during, after = r["cycle_wall_during_s"], r["cycle_wall_after_s"]
            print(
                f"| {rnd + 1} | {label} | {r['backlog_datums']:,} ({filled['bytes'] >> 20} MiB) "
                f"| {r['drain_s']:.1f} s | {r['drain_agent_us']:.1f} µs "
                f"| {r['drain_moto_us']:.1f} µs "
                f"| {', '.join(f'{w * 1e3:.0f}' for w in during)} ms "
                f"| {', '.join(f'{w * 1e3:.0f}' for w in after)} ms "
                f"| {r['peak_rss_mib']:.1f} MiB | {sum(r['dropped'].values())} |",
                flush=True,
            )
            print(f"bench: backlog {label} round {rnd + 1}: {json.dumps(r)}", file=sys.stderr)


# -- running the measured children -------------------------------------------------------------


def child(kind: str, code: Path = REPO, **kw: Any) -> dict[str, Any]:
    return children([(kind, code, kw)])[0]


def children(runs: list[tuple[str, Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Measured children run at the same time, each (kind, checkout whose code it measures,
    arguments); their results in order. Each runs this file, with the checkout's hiveagent."""
    me = str(Path(__file__).resolve())
    procs = [
        subprocess.Popen(
            [sys.executable, me, "--child", kind, "--child-args", json.dumps(kw)],
            cwd=code,
            env={**os.environ, "HIVEAGENT_BENCH_CODE": str(code)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, code, kw in runs
    ]
    results = []
    for (kind, code, _), proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} child ({code}) failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def paired(root: Path, sizes: list[int], args: argparse.Namespace) -> None:
    """This checkout's agent and the one in args.paired_with, at the same time, each on its own
    half of the peers and with its own moto: the machine's speed, which drifts here by up to 2x
    within an hour, is the same for both."""
    other = Path(args.paired_with).resolve()
    motos = [start_moto(root, f"moto-{side}") for side in ("a", "b")]
    try:
        for n in sizes:
            halves = sorted((root / "all").glob("*.json"))
            dirs = [root / f"pair{n}a", root / f"pair{n}b"]
            for d, part in zip(dirs, (halves[:n], halves[n : 2 * n]), strict=True):
                d.mkdir()
                for f in part:
                    shutil.copy(f, d / f.name)
            for rnd in range(args.rounds):
                # Alternate which half (and which moto) each side gets.
                sides = [(REPO, rnd % 2), (other, 1 - rnd % 2)]
                here, there = children(
                    [
                        (
                            "agent",
                            code,
                            {
                                "run_dir": str(dirs[half]),
                                "cycles": args.cycles,
                                "endpoint": motos[half][1],
                                "moto_pid": motos[half][0].pid,
                                "state": str(root / f"state-pair{n}-{rnd}-{i}"),
                                "collectors": args.collectors,
                            },
                        )
                        for i, (code, half) in enumerate(sides)
                    ]
                )
                print(paired_row(n, rnd, here, there), flush=True)
                for label, r in (("this", here), ("other", there)):
                    line = f"bench: N={n} round {rnd + 1} {label}: {json.dumps(r)}"
                    print(line, file=sys.stderr)
    finally:
        for moto, _ in motos:
            stop(moto)


PAIRED_HEAD = (
    "| N VMs | round | collection CPU / VM / cycle | delivery CPU / datum | whole agent CPU / VM "
    "/ cycle | moto CPU / datum | cycle wall (median) | errors |\n"
    "|---|---|---|---|---|---|---|---|"
)


def paired_row(n: int, rnd: int, here: dict[str, Any], there: dict[str, Any]) -> str:
    """Each figure as this checkout's / the other's (ratio)."""

    def cell(a: float, b: float, unit: str = "", digits: int = 3) -> str:
        return f"{a:.{digits}f} / {b:.{digits}f} {unit} ({a / b:.2f})"

    collect = [r["collect_cpu_s"] / r["vms"] * 1e3 for r in (here, there)]
    whole = [r["whole_cpu_s"] / r["vms"] * 1e3 for r in (here, there)]
    return (
        f"| {n} | {rnd + 1} | {cell(collect[0], collect[1], 'ms', 3)} "
        f"| {cell(here['delivery_cpu_us'], there['delivery_cpu_us'], 'µs', 1)} "
        f"| {cell(whole[0], whole[1], 'ms', 3)} "
        f"| {cell(here['moto_cpu_us'], there['moto_cpu_us'], 'µs', 1)} "
        f"| {here['collect_wall_s'] * 1e3:.0f} / {there['collect_wall_s'] * 1e3:.0f} ms "
        f"| {here['errors'] + here['publish_errors']} / "
        f"{there['errors'] + there['publish_errors']} |"
    )


# -- report -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem} MiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| N VMs | collection CPU / VM / cycle | cycle wall (median / max) "
        "| floor CPU / VM / cycle | ratio to floor | peak RSS (agent) | datums / cycle "
        "| delivery CPU / datum | datums/s, agent side, one core | datums/s encoded+sent (wall) "
        "| moto CPU / datum | whole agent CPU / VM / cycle | agent errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        a, f = r["agent"], r["floor"]
        n = a["vms"]
        per_vm = a["collect_cpu_s"] / n * 1000
        floor_vm = f["cpu_s"] / f["vms"] * 1000
        lines.append(
            f"| {n} | {per_vm:.3f} ms | {a['collect_wall_s'] * 1000:.0f} / "
            f"{a['collect_wall_max_s'] * 1000:.0f} ms | {floor_vm:.3f} ms | "
            f"{per_vm / floor_vm:.2f} | {a['peak_rss_mib']:.1f} MiB | "
            f"{a['datums_per_cycle']:.0f} | {a['delivery_cpu_us']:.1f} µs | "
            f"{1e6 / a['delivery_cpu_us']:,.0f} | {1e6 / a['delivery_wall_us']:,.0f} | "
            f"{a['moto_cpu_us']:.1f} µs | {a['whole_cpu_s'] / n * 1000:.3f} ms | "
            f"{a['errors'] + a['publish_errors']} |"
        )
    return "\n".join(lines)


CHILDREN: dict[str, Any] = {
    "agent": measure_agent,
    "floor": measure_floor,
    "backlog": measure_backlog,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25,50,100,200")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument(
        "--collectors",
        choices=("all", "hypervisor"),
        default="all",
        help="every collector (default), or only the hypervisor-side ones (no in-guest plugins)",
    )
    parser.add_argument("--markdown", help="append the results table to this file")
    parser.add_argument("--profile", help="write the agent's cProfile stats to PATH.<N>")
    parser.add_argument(
        "--paired-with",
        metavar="DIR",
        help="instead of the floor, run the agent of another checkout (e.g. a git worktree of "
        "an older commit) at the same time on as many other peers, and print both",
    )
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per size")
    parser.add_argument(
        "--code", metavar="DIR", help="measure another checkout's agent (this file measures it)"
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="the backlog scenario: a spool filled as an outage leaves it (--backlog-vms, "
        "--backlog-minutes), drained by the daemon while it collects from the first of --sizes "
        "peers every --interval seconds",
    )
    parser.add_argument("--backlog-vms", type=int, default=200)
    parser.add_argument("--backlog-minutes", type=int, default=30)
    parser.add_argument("--interval", type=int, default=10, help="backlog: collection interval")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kw = json.loads(args.child_args)
        if args.child == "fill":
            print(json.dumps(fill_backlog(**kw)))
        else:
            print(json.dumps(asyncio.run(CHILDREN[args.child](**kw))))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="hiveagent-bench-"))
    print(f"bench: {machine()}")
    n_peers = sizes[0] if args.backlog else max(sizes) * (2 if args.paired_with else 1)
    print(f"bench: starting {n_peers} QEMU + {n_peers} qemu-ga peers in {root}")
    t0 = time.monotonic()
    peers = start_peers(root, n_peers)
    motos = []
    print(f"bench: peers up in {time.monotonic() - t0:.1f} s")
    rows = []
    try:
        if args.backlog:
            backlog(root, sizes[0], args)
            return 0
        if args.paired_with:
            print("Each cell: this checkout / the other (ratio).\n")
            print(PAIRED_HEAD)
            paired(root, sizes, args)
            return 0
        moto, endpoint = start_moto(root)
        motos.append(moto)
        for n in sizes:
            run_dir = str(run_dir_for(root, n))
            agent = child(
                "agent",
                Path(args.code).resolve() if args.code else REPO,
                run_dir=run_dir,
                cycles=args.cycles,
                endpoint=endpoint,
                state=str(root / f"state{n}"),
                collectors=args.collectors,
                profile=f"{args.profile}.{n}" if args.profile else None,
                moto_pid=moto.pid,
            )
            floor = child("floor", run_dir=run_dir, cycles=args.cycles, collectors=args.collectors)
            rows.append({"agent": agent, "floor": floor})
            print(f"bench: N={n}: agent {json.dumps(agent)}")
            print(f"bench: N={n}: floor {json.dumps(floor)}")
    finally:
        for p in [*peers, *motos]:
            p.terminate()
        for p in [*peers, *motos]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)
    report = table(rows)
    print(report)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d')}, {machine()}\n\n")
            f.write(
                f"Collectors: {args.collectors}; {args.cycles} measured cycles per size (median "
                f"shown).\n\n{report}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
