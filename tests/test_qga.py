"""The guest agent client against a real qemu-ga on the host (unix-listen, state-changing commands
blocked) and against small real socket servers replaying recorded or broken streams."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import RECORDED

from collectors.guest_disk import parse_fsinfo
from qga.client import QgaClient, QgaCommandError, QgaProtocolError, QgaTimeout


@pytest.fixture(scope="module")
def host_qga(harness: Any) -> Path:
    path = harness.root / "host-qga.sock"
    harness.start_host_qga(path)
    return Path(path)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_host_qga_info_and_blocked_commands(host_qga: Path) -> None:
    async def go() -> None:
        async with QgaClient(str(host_qga), timeout=5) as c:
            info = await c.guest_info()
            assert "guest-get-fsinfo" in info.enabled_commands
            assert "guest-shutdown" not in info.enabled_commands  # blocked with -b
            with pytest.raises(QgaCommandError) as e:
                await c.execute("guest-shutdown")
            assert e.value.unavailable
            with pytest.raises(QgaCommandError) as e2:
                await c.execute("no-such-command")
            assert e2.value.unavailable and e2.value.error_class == "CommandNotFound"

    run(go())


def test_host_qga_fsinfo_matches_statvfs(host_qga: Path) -> None:
    """qemu-ga on the host reports the host's filesystems: its numbers for / must match
    statvfs (df semantics) within what changes between the two reads."""

    async def go() -> Any:
        async with QgaClient(str(host_qga), timeout=10) as c:
            return await c.execute("guest-get-fsinfo")

    records = {fs.mountpoint: fs for fs in parse_fsinfo(run(go()))}
    root = records["/"]
    st = os.statvfs("/")
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    total = used + st.f_bavail * st.f_frsize
    assert abs(root.used - used) < 64 << 20
    assert abs(root.total - total) < 64 << 20


def test_half_sent_request_from_earlier_client_is_flushed(host_qga: Path) -> None:
    """A client that died mid-request leaves bytes that would swallow our next command; the
    0xFF resync on connect discards them."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(host_qga))
        s.sendall(b'{"execute": "guest-info", "argu')

    async def go() -> Any:
        async with QgaClient(str(host_qga), timeout=5) as c:
            return await c.execute("guest-get-vcpus")

    vcpus = run(go())
    assert isinstance(vcpus, list) and len(vcpus) == os.cpu_count()


class ScriptedAgent:
    """A real unix-socket server playing a fake guest agent: `handler(request, conn)` answers."""

    def __init__(self, path: Path, handler: Any) -> None:
        self.path = path
        self.handler = handler
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buf = b""
            with conn:
                while True:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        req = json.loads(line.lstrip(b"\xff"))
                        try:
                            self.handler(req, conn)
                        except OSError:  # the client gave up (timeouts are part of the tests)
                            buf = b""
                            break

    def close(self) -> None:
        self.sock.close()


def test_recorded_resync_stream_is_understood(tmp_path: Path) -> None:
    """Replays what a real qemu-ga sent a new client (a late reply for an earlier client, the
    id-less parse error for 0xFF, the delimited sync reply), then a reply with a wrong id
    before the right one."""
    recorded = (RECORDED / "qga-resync-stream.bin").read_bytes()

    def handler(req: dict[str, Any], conn: socket.socket) -> None:
        if req["execute"] == "guest-sync-delimited":
            conn.sendall(
                recorded.replace(
                    b'{"return": 7}', json.dumps({"return": req["arguments"]["id"]}).encode()
                )
            )
        else:
            conn.sendall(json.dumps({"return": "stale", "id": req["id"] - 1}).encode() + b"\n")
            conn.sendall(json.dumps({"return": {"ok": 1}, "id": req["id"]}).encode() + b"\n")

    server = ScriptedAgent(tmp_path / "a.sock", handler)
    try:

        async def go() -> tuple[Any, int]:
            async with QgaClient(str(server.path), timeout=3) as c:
                return await c.execute("guest-get-vcpus"), c.stale_replies

        result, stale = run(go())
        assert result == {"ok": 1}
        # The late reply and the parse error come before 0xFF and are discarded as bytes; the
        # wrong-id reply after the sync is read and ignored.
        assert stale == 1
    finally:
        server.close()


def test_timeout_then_resync_never_misattributes(tmp_path: Path) -> None:
    """The first command's reply arrives late, after the deadline; the next command must get
    its own reply, not that one."""
    replies: list[tuple[socket.socket, bytes]] = []

    def handler(req: dict[str, Any], conn: socket.socket) -> None:
        if req["execute"] == "guest-sync-delimited":
            for c, late in replies:  # now deliver the late reply, just before the sync reply
                c.sendall(late)
            replies.clear()
            conn.sendall(b"\xff" + json.dumps({"return": req["arguments"]["id"]}).encode() + b"\n")
        elif req["execute"] == "slow":
            replies.append((conn, json.dumps({"return": "SLOW", "id": req["id"]}).encode() + b"\n"))
        else:
            conn.sendall(json.dumps({"return": "FAST", "id": req["id"]}).encode() + b"\n")

    server = ScriptedAgent(tmp_path / "b.sock", handler)
    try:

        async def go() -> Any:
            async with QgaClient(str(server.path), timeout=0.5) as c:
                with pytest.raises(QgaTimeout):
                    await c.execute("slow")
                return await c.execute("fast")

        assert run(go()) == "FAST"
    finally:
        server.close()


def test_oversized_reply_is_cut_off(tmp_path: Path) -> None:
    def handler(req: dict[str, Any], conn: socket.socket) -> None:
        if req["execute"] == "guest-sync-delimited":
            conn.sendall(b"\xff" + json.dumps({"return": req["arguments"]["id"]}).encode() + b"\n")
        else:
            conn.sendall(b'{"return": "' + b"x" * (300 * 1024))

    server = ScriptedAgent(tmp_path / "c.sock", handler)
    try:

        async def go() -> None:
            async with QgaClient(str(server.path), timeout=3, max_reply_bytes=64 * 1024) as c:
                await c.execute("guest-get-fsinfo")

        with pytest.raises(QgaProtocolError, match="exceeds 65536 bytes"):
            run(go())
    finally:
        server.close()


def test_silent_agent_times_out_on_connect(tmp_path: Path) -> None:
    """qemu-ga not running in the guest: connect succeeds, nothing ever answers."""
    server = ScriptedAgent(tmp_path / "d.sock", lambda req, conn: None)
    try:

        async def go() -> None:
            await QgaClient(str(server.path), timeout=0.3).connect()

        with pytest.raises(QgaTimeout):
            run(go())
    finally:
        server.close()


def test_pipelined_commands_match_one_at_a_time(host_qga: Path) -> None:
    """execute_many on a fresh connection (the resync and the commands in one write) gives the
    same answers as one command at a time, in order, with an unknown command's error in its
    own slot."""

    async def go() -> tuple[list[Any], list[Any]]:
        commands = ["guest-get-vcpus", "no-such-command", "guest-info", "guest-get-vcpus"]
        c = QgaClient(str(host_qga), timeout=5)
        await c.open()
        try:
            many = await c.execute_many(commands)
        finally:
            await c.close()
        one: list[Any] = []
        async with QgaClient(str(host_qga), timeout=5) as c:
            for command in commands:
                try:
                    one.append(await c.execute(command))
                except QgaCommandError as exc:
                    one.append(exc)
        return many, one

    many, one = run(go())
    assert many[0] == one[0] == many[3] and len(many[0]) == os.cpu_count()
    assert isinstance(many[1], QgaCommandError) and many[1].error_class == "CommandNotFound"
    assert many[2]["version"] == one[2]["version"]


class HoldingAgent(ScriptedAgent):
    """Answers in order, like qemu-ga; a command named `slow` holds its answer and every one
    after it until the next resync, which first gets them, late. Records each recv()'s bytes."""

    def __init__(self, path: Path, stale_after: int = 0) -> None:
        self.chunks: list[bytes] = []
        self.stale_after = stale_after
        super().__init__(path, self._answer)

    def _serve(self) -> None:  # as ScriptedAgent, recording chunks
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            held: list[dict[str, Any]] = []
            buf = b""
            with conn:
                while chunk := self._recv(conn):
                    self.chunks.append(chunk)
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        req = json.loads(line.lstrip(b"\xff"))
                        if req["execute"] == "guest-sync-delimited":
                            late, held = held, []
                        elif held or req["execute"] == "slow":
                            held.append(req)
                            continue
                        else:
                            late = []
                        try:
                            for r in [*late, req]:
                                self._answer(r, conn)
                        except OSError:
                            break

    @staticmethod
    def _recv(conn: socket.socket) -> bytes:
        try:
            return conn.recv(65536)
        except OSError:
            return b""

    def _answer(self, req: dict[str, Any], conn: socket.socket) -> None:
        if req["execute"] == "guest-sync-delimited":
            conn.sendall(b"\xff" + json.dumps({"return": req["arguments"]["id"]}).encode() + b"\n")
            return
        for n in range(self.stale_after):  # replies to nobody first
            conn.sendall(json.dumps({"return": n, "id": f"other-{n}"}).encode() + b"\n")
        conn.sendall(json.dumps({"return": req["execute"], "id": req["id"]}).encode() + b"\n")


def test_pipelined_batch_is_one_write_and_a_timeout_fails_the_rest(tmp_path: Path) -> None:
    server = HoldingAgent(tmp_path / "e.sock")
    try:

        async def go() -> tuple[list[Any], list[Any], Any]:
            c = QgaClient(str(server.path), timeout=0.3)
            await c.open()
            try:
                first = await c.execute_many(["a", "b", "c"])
                second = await c.execute_many(["d", "slow", "e"])
                state_after = c.state
                third = await c.execute("f")  # resynchronises first
            finally:
                await c.close()
            return first, second, (state_after, third)

        first, second, (state_after, third) = run(go())
        assert first == ["a", "b", "c"]
        # The sync and the three commands arrived as one write.
        assert server.chunks[0].count(b"\n") == 4 and server.chunks[0].startswith(b"\xff")
        assert second[0] == "d"
        assert isinstance(second[1], QgaTimeout) and "no reply in time (0.3 s per" in str(second[1])
        assert isinstance(second[2], QgaTimeout) and "not answered" in str(second[2])
        assert state_after.value == "unsynced" and third == "f"
    finally:
        server.close()


def test_pipelined_batch_skips_and_counts_stale_replies(tmp_path: Path) -> None:
    """Every reply is preceded by 50 replies with other ids: they are counted and skipped, and
    each command still gets its own reply."""
    server = HoldingAgent(tmp_path / "f.sock", stale_after=50)
    try:

        async def go() -> tuple[list[Any], int]:
            c = QgaClient(str(server.path), timeout=2)
            await c.open()
            try:
                return await c.execute_many(["a", "b"]), c.stale_replies
            finally:
                await c.close()

        results, stale = run(go())
        assert results == ["a", "b"] and stale == 100
    finally:
        server.close()
