"""Real components for the tests and the demo: QEMU VMs (guest-less or booting the test guest),
host qemu-ga in unix-listen mode, moto's CloudWatch server, Spinifex sidecars.

Everything started here is a real process; `Harness.close()` (or the context manager) stops
them all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiveagent.config import Config
from hiveagent.model import Datum
from hiveagent.pipeline import Pipeline
from hiveagent.scheduler import Scheduler, VmState
from tests.strict_endpoint import Mode, StrictEndpoint

REPO = Path(__file__).resolve().parent.parent
GUEST_DIR = Path(os.environ.get("HIVEAGENT_GUEST_DIR", REPO / ".cache" / "guest"))
# State-changing guest agent commands: blocked on host qemu-ga (guest-shutdown would power off
# the host). 7.2 has no --allow-rpcs.
HOST_QGA_BLOCKED = ",".join(
    [
        "guest-shutdown",
        "guest-exec",
        "guest-exec-status",
        "guest-file-open",
        "guest-file-close",
        "guest-file-read",
        "guest-file-write",
        "guest-file-seek",
        "guest-file-flush",
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-freeze-list",
        "guest-fsfreeze-thaw",
        "guest-fstrim",
        "guest-suspend-disk",
        "guest-suspend-ram",
        "guest-suspend-hybrid",
        "guest-set-time",
        "guest-set-user-password",
        "guest-set-vcpus",
        "guest-set-memory-blocks",
        "guest-ssh-add-authorized-keys",
        "guest-ssh-remove-authorized-keys",
        "guest-network-get-route",
    ]
)


class Collection:
    """The daemon's collection stages in its order, for tests that drive cycles themselves:
    the scheduler collects a cycle, the pipeline finishes it."""

    def __init__(self, config: Config) -> None:
        self.scheduler = Scheduler(config)
        self.pipeline = Pipeline(config)

    @property
    def vms(self) -> dict[str, VmState]:
        return self.scheduler.vms

    async def cycle(self) -> list[Datum]:
        return self.pipeline.finish(await self.scheduler.collect())

    def drain_windows(self) -> list[Datum]:
        return self.pipeline.drain()

    async def close(self) -> None:
        await self.scheduler.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def hex_id(prefix: str, n: int) -> str:
    return f"{prefix}-{n:017x}"


@dataclass
class Volume:
    volume_id: str  # vol-...
    image: Path
    size_mb: int
    ext4: bool


@dataclass
class Vm:
    instance_id: str
    dir: Path
    qmp_socket: Path
    qga_socket: Path
    volumes: list[Volume]
    process: subprocess.Popen[bytes]
    console: Path
    accel: str
    vcpus: int
    taps: list[str] = field(default_factory=list)
    control_socket: Path | None = None  # a second QMP monitor, the cloud's own (control=True)

    @property
    def pid(self) -> int:
        return self.process.pid


class Harness:
    """Owns every process it starts; close() stops them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.vms: list[Vm] = []
        self._accel: str | None = os.environ.get("HIVEAGENT_TEST_ACCEL") or None
        self.moto: subprocess.Popen[bytes] | None = None
        self.moto_port = 0
        self.fronts: dict[int, StrictEndpoint] = {}  # by moto's port
        self.endpoint: StrictEndpoint | None = None  # the one start_moto returned last

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in reversed(self.processes):
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()
        for front in self.fronts.values():
            front.stop()
        self.fronts.clear()

    # -- endpoint -----------------------------------------------------------------------------

    def start_moto(
        self,
        port: int | None = None,
        recording: Path | None = None,
        mode: Mode = "aws",
    ) -> str:
        """moto's server on `port` (a free one by default) behind a StrictEndpoint in `mode`
        (it refuses what AWS, or Spinifex, refuses; moto stores and answers the rest); the
        URL is the strict endpoint's. With `recording`, every request is appended to that file
        (moto's recorder), so a restarted server can replay them. Started again on the same
        `port` (after `moto.terminate()`, an outage), the same strict endpoint stays in front."""
        port = port or free_port()
        env = dict(os.environ)
        if recording is not None:
            env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(recording))
        log = open(self.root / "moto.log", "ab")  # noqa: SIM115 (outlives this call)
        p = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.processes.append(p)
        self.moto = p
        self.moto_port = port

        def up() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return True
            return False

        wait_for(up, 30, "moto server")
        front = self.fronts.get(port)
        if front is None or front.mode != mode:
            if front is not None:
                front.stop()
            front = StrictEndpoint(mode, upstream=f"http://127.0.0.1:{port}")
            front.start()
            self.fronts[port] = front
        self.endpoint = front
        return front.url

    # -- guest agent on the host ----------------------------------------------------------------

    def start_host_qga(self, path: Path) -> subprocess.Popen[bytes]:
        state = path.parent / (path.name + ".state")
        state.mkdir(exist_ok=True)
        p = subprocess.Popen(
            [
                "qemu-ga",
                "-m",
                "unix-listen",
                "-p",
                str(path),
                "-t",
                str(state),
                "-b",
                HOST_QGA_BLOCKED,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(p)
        wait_for(path.exists, 10, f"qemu-ga socket {path}")
        return p

    # -- VMs ----------------------------------------------------------------------------------

    def launch_vm(
        self,
        n: int,
        *,
        boot_guest: bool,
        volumes: tuple[tuple[int, bool], ...] = ((64, True), (16, False)),
        vcpus: int = 2,
        memory_mb: int = 256,
        sidecar: bool = True,
        balloon_poll_s: int = 2,
        tap: bool = False,
        control: bool = False,
    ) -> Vm:
        """Start one VM the Spinifex way. volumes: (size MiB, ext4?) each; the guest mounts the
        first ext4 one on /mnt/data. Without boot_guest, QEMU runs with no guest OS. control:
        a second QMP monitor beside the telemetry one, as the cloud's control plane has."""
        instance_id = hex_id("i", 0xA000 + n)
        d = self.root / instance_id
        d.mkdir(parents=True, exist_ok=True)
        qmp = self.run_dir / f"qmp-telemetry-{instance_id}.sock"
        qga = d / "qga.sock"
        console = d / "console.log"
        vols = []
        for i, (size, ext4) in enumerate(volumes):
            vol_id = hex_id("vol", 0xB000 + n * 16 + i)
            img = d / f"{vol_id}.img"
            with open(img, "wb") as f:
                f.truncate(size << 20)
            if ext4:
                # No lazy init: background inode-table zeroing would write to the disk in tests.
                subprocess.run(
                    [
                        "mkfs.ext4",
                        "-q",
                        "-F",
                        "-E",
                        "lazy_itable_init=0,lazy_journal_init=0",
                        str(img),
                    ],
                    check=True,
                )
            vols.append(Volume(vol_id, img, size, ext4))
        accel = self.accel() if boot_guest else "tcg"
        cmd = [
            "qemu-system-x86_64",
            "-name",
            f"{instance_id},debug-threads=on",
            "-machine",
            f"q35,accel={accel}",
            "-cpu",
            "qemu64" if accel == "kvm" else "max",
            "-smp",
            str(vcpus),
            "-m",
            str(memory_mb),
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-qmp",
            f"unix:{qmp},server=on,wait=off",
            *(["-qmp", f"unix:{d / 'control.sock'},server=on,wait=off"] if control else []),
            "-chardev",
            f"socket,path={qga},server=on,wait=off,id=qga0",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=qgaport0",
            "-device",
            f"virtio-balloon-pci,id=balloon0,guest-stats-polling-interval={balloon_poll_s}",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-serial",
            f"file:{console}",
        ]
        # Spinifex names taps "tap" + the ENI id without "eni-", cut to 15 characters.
        eni_id = f"eni-{n:04x}{0xC0FFEE:013x}"
        tap_name = f"tap{eni_id[4:]}"[:15]
        if tap:
            cmd += ["-netdev", f"tap,id=n0,ifname={tap_name},script=no,downscript=no"]
        else:
            cmd += ["-netdev", "user,id=n0"]
        for v in vols:
            node = f"nbd-{v.volume_id}"
            cmd += [
                "-blockdev",
                f"driver=file,filename={v.image},node-name={node}",
                "-device",
                f"virtio-blk-pci,drive={node},id=vdisk-{v.volume_id},"
                f"serial={v.volume_id.replace('-', '')}",
            ]
        if boot_guest:
            build_guest_image()
            cmd += [
                "-kernel",
                str(GUEST_DIR / "vmlinuz"),
                "-initrd",
                str(GUEST_DIR / "initrd.img"),
                "-append",
                "console=ttyS0 edd=off panic=-1 quiet",
            ]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(d / "qemu.err", "wb"))  # noqa: SIM115
        self.processes.append(p)
        wait_for(lambda: qmp.exists() or p.poll() is not None, 20, f"QMP socket of {instance_id}")
        if p.poll() is not None:
            raise RuntimeError(f"QEMU exited: {(d / 'qemu.err').read_text()}")
        vm = Vm(instance_id, d, qmp, qga, vols, p, console, accel, vcpus)
        if control:
            vm.control_socket = d / "control.sock"
        if tap:
            # An isolated link: no address, no IPv6 chatter from the host; only the guest talks.
            subprocess.run(["sysctl", "-q", f"net.ipv6.conf.{tap_name}.disable_ipv6=1"], check=True)
            subprocess.run(["ip", "link", "set", tap_name, "up"], check=True)
            vm.taps = [tap_name]
        if sidecar:
            self.write_sidecar(vm)
        self.vms.append(vm)
        return vm

    @staticmethod
    def hung_socket(path: Path) -> socket.socket:
        """A unix socket that accepts connections (into its backlog) and never says a word: a
        QMP or guest agent peer that hangs."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(64)
        return s

    def write_sidecar(self, vm: Vm, **extra: object) -> Path:
        path = self.run_dir / f"qmp-telemetry-{vm.instance_id}.json"
        body = {
            "instance_id": vm.instance_id,
            "account_id": "000000000000",
            "vcpus": vm.vcpus,
            "period_seconds": 60,
            "taps": vm.taps,
            "socket": vm.qmp_socket.name,
            **extra,
        }
        path.write_text(json.dumps(body))
        os.chmod(path, 0o600)
        return path

    def accel(self) -> str:
        """kvm when a guest boots under it here, else tcg (decided once, by a probe boot)."""
        if self._accel is None:
            self._accel = probe_kvm(self.root / "kvm-probe")
        return self._accel

    def wait_guest_agent(self, vm: Vm, timeout: float = 90) -> None:
        async def ping() -> bool:
            from qga.client import QgaClient, QgaError

            try:
                async with QgaClient(str(vm.qga_socket), timeout=2) as c:
                    await c.execute("guest-ping")
                    return True
            except QgaError:
                return False

        wait_for(
            lambda: b"starting qemu-ga" in _read(vm.console) and asyncio.run(ping()),
            timeout,
            f"guest agent of {vm.instance_id}",
            interval=0.5,
        )


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError:
        return b""


def build_guest_image() -> None:
    if not (GUEST_DIR / "initrd.img").exists() or not (GUEST_DIR / "stamp").exists():
        subprocess.run(
            ["bash", str(REPO / "tests/guest/build-image.sh"), str(GUEST_DIR)], check=True
        )


def probe_kvm(d: Path) -> str:
    """Boot the test kernel under KVM for a few seconds: if it prints nothing to the console
    (this host's nested KVM hangs it early), use TCG."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    build_guest_image()
    d.mkdir(parents=True, exist_ok=True)
    console = d / "console.log"
    console.unlink(missing_ok=True)
    p = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "qemu64",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-kernel",
            str(GUEST_DIR / "vmlinuz"),
            "-initrd",
            str(GUEST_DIR / "initrd.img"),
            "-append",
            "console=ttyS0 edd=off panic=-1",
            "-serial",
            f"file:{console}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: b"Linux version" in _read(console) or p.poll() is not None, 5, "kvm")
        ok = p.poll() is None
    except TimeoutError:
        ok = False
    finally:
        p.kill()
        p.wait()
    return "kvm" if ok else "tcg"


async def guest_exec(qga_socket: Path, script: str, timeout: float = 60) -> tuple[int, str]:
    """Run a shell command in the test guest through its agent (guest-exec); (exit code, output).
    Test tooling only: the agent itself never sends state-changing commands."""
    from qga.client import QgaClient

    # One connection per command, as the agent does: a guest agent serves one client at a
    # time, and a test that held it for a whole command would block the agent's cycles.
    async def call(command: str, arguments: dict[str, Any]) -> Any:
        async with QgaClient(str(qga_socket), timeout=10) as c:
            return await c.execute(command, arguments)

    started = await call(
        "guest-exec", {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True}
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await call("guest-exec-status", {"pid": started["pid"]})
        if st.get("exited"):
            out = base64.b64decode(st.get("out-data", "")).decode()
            err = base64.b64decode(st.get("err-data", "")).decode()
            return int(st.get("exitcode", -1)), out + err
        await asyncio.sleep(0.2)
    raise TimeoutError(f"guest command did not finish: {script}")


def kill_process_tree(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGKILL)


def which(tool: str) -> bool:
    return shutil.which(tool) is not None
