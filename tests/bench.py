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
  (`--collectors hypervisor`), then the datums spooled (fsync) and sent to moto. Two warm-up
  cycles (connections, priming, guest-info), then `--cycles` measured.
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
this one, each on its own half of 2N peers (alternating halves each round), so that both see
the same machine speed.

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
sys.path.insert(0, str(REPO))

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


def start_moto(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(root / "moto.log", "wb"),  # noqa: SIM115
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


async def measure_agent(
    run_dir: str,
    cycles: int,
    endpoint: str,
    state: str,
    collectors: str = "all",
    profile: str | None = None,
) -> dict[str, Any]:
    from hiveagent.config import parse_config
    from hiveagent.publisher import Publisher
    from hiveagent.scheduler import settle_memory
    from hiveagent.spool import Spool
    from hiveagent.wire import make_client

    config = parse_config(
        {
            "agent": {"metrics_collection_interval": 60, "region": "us-east-1"},
            "metrics": {
                "endpoint_override": endpoint,
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
    agent = Collection(config)  # the scheduler, then the pipeline, as the daemon runs them
    spool = Spool(config.spool.directory)
    spool.open()
    publisher = Publisher(make_client(config.region, endpoint), spool, config.publish)
    for _ in range(WARM_UP_CYCLES):
        spool.add(await agent.cycle())
        await publisher.flush()
    settle_memory()  # as the daemon does after its second cycle
    collect_cpu, collect_wall, publish_cpu, publish_wall, counts = [], [], [], [], []
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
        spool.add(datums)
        await publisher.flush()
        c2, t2 = time.process_time(), time.perf_counter()
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


def child(kind: str, **kw: Any) -> dict[str, Any]:
    return children([(kind, REPO, kw)])[0]


def children(runs: list[tuple[str, Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Measured children run at the same time, each (kind, checkout to run it from, arguments);
    their results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.bench", "--child", kind, "--child-args", json.dumps(kw)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, cwd, kw in runs
    ]
    results = []
    for (kind, cwd, _), proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} child ({cwd}) failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def paired(root: Path, sizes: list[int], args: argparse.Namespace, endpoint: str) -> None:
    """This checkout's agent and the one in args.paired_with, at the same time, each on its own
    half of the peers: the machine's speed, which drifts here by up to 2x within an hour, is the
    same for both."""
    other = Path(args.paired_with).resolve()
    for n in sizes:
        halves = sorted((root / "all").glob("*.json"))
        dirs = [root / f"pair{n}a", root / f"pair{n}b"]
        for d, part in zip(dirs, (halves[:n], halves[n : 2 * n]), strict=True):
            d.mkdir()
            for f in part:
                shutil.copy(f, d / f.name)
        for rnd in range(args.rounds):
            # Alternate which half each side gets.
            sides = [(REPO, dirs[rnd % 2]), (other, dirs[1 - rnd % 2])]
            here, there = children(
                [
                    (
                        "agent",
                        cwd,
                        {
                            "run_dir": str(d),
                            "cycles": args.cycles,
                            "endpoint": endpoint,
                            "state": str(root / f"state-pair{n}-{rnd}-{i}"),
                            "collectors": args.collectors,
                        },
                    )
                    for i, (cwd, d) in enumerate(sides)
                ]
            )
            per_vm = [r["collect_cpu_s"] / r["vms"] * 1e3 for r in (here, there)]
            print(
                f"| {n} | {rnd + 1} | {per_vm[0]:.3f} ms | {per_vm[1]:.3f} ms "
                f"| {per_vm[0] / per_vm[1]:.2f} | {here['collect_wall_s'] * 1e3:.0f} / "
                f"{there['collect_wall_s'] * 1e3:.0f} ms | {here['errors']} / {there['errors']} |",
                flush=True,
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
        "| N VMs | agent CPU / VM / cycle | cycle wall (median / max) | floor CPU / VM / cycle "
        "| ratio to floor | peak RSS (agent) | datums / cycle | datums/s encoded+sent "
        "| publish CPU / datum | agent errors |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        a, f = r["agent"], r["floor"]
        n = a["vms"]
        per_vm = a["collect_cpu_s"] / n * 1000
        floor_vm = f["cpu_s"] / f["vms"] * 1000
        rate = a["datums_per_cycle"] / a["publish_wall_s"] if a["publish_wall_s"] else 0
        lines.append(
            f"| {n} | {per_vm:.3f} ms | {a['collect_wall_s'] * 1000:.0f} / "
            f"{a['collect_wall_max_s'] * 1000:.0f} ms | {floor_vm:.3f} ms | "
            f"{per_vm / floor_vm:.2f} | {a['peak_rss_mib']:.1f} MiB | "
            f"{a['datums_per_cycle']:.0f} | {rate:,.0f} | "
            f"{a['publish_cpu_s'] / a['datums_per_cycle'] * 1e6:.0f} µs | "
            f"{a['errors'] + a['publish_errors']} |"
        )
    return "\n".join(lines)


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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kw = json.loads(args.child_args)
        fn = measure_agent if args.child == "agent" else measure_floor
        print(json.dumps(asyncio.run(fn(**kw))))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="hiveagent-bench-"))
    print(f"bench: {machine()}")
    n_peers = max(sizes) * (2 if args.paired_with else 1)
    print(f"bench: starting {n_peers} QEMU + {n_peers} qemu-ga peers in {root}")
    t0 = time.monotonic()
    peers = start_peers(root, n_peers)
    moto, endpoint = start_moto(root)
    print(f"bench: peers up in {time.monotonic() - t0:.1f} s")
    rows = []
    try:
        if args.paired_with:
            print(f"| N VMs | round | agent CPU / VM / cycle: this checkout | {args.paired_with} "
                  "| ratio | cycle wall (median) | agent errors |")  # fmt: skip
            print("|---|---|---|---|---|---|---|")
            paired(root, sizes, args, endpoint)
            return 0
        for n in sizes:
            run_dir = str(run_dir_for(root, n))
            agent = child(
                "agent",
                run_dir=run_dir,
                cycles=args.cycles,
                endpoint=endpoint,
                state=str(root / f"state{n}"),
                collectors=args.collectors,
                profile=f"{args.profile}.{n}" if args.profile else None,
            )
            floor = child("floor", run_dir=run_dir, cycles=args.cycles, collectors=args.collectors)
            rows.append({"agent": agent, "floor": floor})
            print(f"bench: N={n}: agent {json.dumps(agent)}")
            print(f"bench: N={n}: floor {json.dumps(floor)}")
    finally:
        for p in [*peers, moto]:
            p.terminate()
        for p in [*peers, moto]:
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
