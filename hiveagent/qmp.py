"""QMP access for one VM: qemu.qmp's QMPClient with a deadline on every call and the QEMU pid
from SO_PEERCRED. What is looked up through it (chardevs, QOM) is in hiveagent.qom."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence
from typing import Any, cast

from qemu.qmp import ExecuteError, Message, QMPClient, QMPError


class QmpError(Exception):
    """Root error of QMP access; `__cause__` keeps the underlying one."""


class QmpTimeout(QmpError):
    pass


class QmpCommandError(QmpError):
    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.error_class = error_class


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a connected unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


class QuietQMPClient(QMPClient):
    """QMPClient without its per-message debug hooks, and counting events instead of keeping
    them.

    qemu.qmp's base `_cb_outbound` and `_cb_inbound` pretty-print every message (json indent=2)
    for a debug log line even when debug logging is off, which was the largest CPU cost of a
    collection cycle (see BENCHMARKS.md); these hooks are documented as meant for subclasses to
    override. Its default all-events listener queues every event and appends it to a history
    list that is never trimmed: on a connection kept for the life of a VM that grows without
    bound (every STOP/RESUME, RTC_CHANGE, BALLOON_CHANGE...). The agent only needs to know
    that something happened (`events_seen`: any event makes it ask query-status again)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.events_seen = 0  # events received on this connection

    def _cb_outbound(self, msg: Message) -> Message:
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        return msg

    async def _event_dispatch(self, msg: Message) -> None:
        self.events_seen += 1

    async def _do_recv(self) -> Message:
        """QMPClient's own (a line read, deserialised at once, raising as it does), as a
        `_Received`, whose lookups do not go through the Mapping protocol in Python."""
        return _Received(await self._readline(), eager=True)


class _Received(Message):
    """A Message read from QEMU, with `in` and `get` straight on its dict. qemu.qmp looks at
    every reply with them (`'event' in msg`, `msg.get('id')`, `'error' in reply`, `'return'
    in reply`), and Message inherits them from Mapping, where each is a Python-level
    `__getitem__` and a miss raises and catches a KeyError."""

    def __contains__(self, key: object) -> bool:
        return key in self._object

    def get(self, key: str, default: Any = None) -> Any:
        return self._object.get(key, default)


class QmpSession:
    """A long-lived QMP connection to one VM's telemetry socket."""

    def __init__(self, path: str, *, timeout: float, name: str = "hiveagent") -> None:
        self.path = path
        self.timeout = timeout
        self.pid: int | None = None
        self._client: QuietQMPClient | None = None
        self._name = name
        self._connections = 0  # successful connects so far

    @property
    def event_mark(self) -> tuple[int, int] | None:
        """Changes whenever QEMU sent an event or the connection was replaced: a run status
        read after this mark was taken is current until the mark changes (QEMU announces
        every run state change with an event: STOP, RESUME, SHUTDOWN, GUEST_PANICKED...).
        None while not connected."""
        if self._client is None:
            return None
        return (self._connections, self._client.events_seen)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self) -> None:
        """Connect and negotiate within one deadline. A QMP socket serves one client: if
        another holds it, no greeting comes and this times out."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        client = QuietQMPClient(self._name)
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.get_running_loop().sock_connect(sock, self.path)
                self.pid = peer_pid(sock)
                await client.connect(sock)
        except TimeoutError as exc:
            sock.close()
            await _quiet_disconnect(client)
            raise QmpTimeout(f"{self.path}: no QMP greeting within {self.timeout:g} s") from exc
        except (OSError, QMPError) as exc:
            sock.close()
            await _quiet_disconnect(client)
            raise QmpError(f"{self.path}: cannot connect: {exc}") from exc
        self._client = client
        self._connections += 1

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command within the deadline (see execute_all): its reply, or raise the
        QmpError it failed with."""
        (reply,) = await self.execute_all([(command, arguments)])
        if isinstance(reply, QmpError):
            raise reply
        return reply

    async def execute_all(self, calls: Sequence[tuple[str, dict[str, Any] | None]]) -> list[Any]:
        """Several commands in flight together (qemu.qmp matches replies by id) under one
        deadline; per command, its reply or the QmpError it failed with. A timeout or a lost
        connection drops the connection (every command not answered gets that error)."""
        if self._client is None:
            raise QmpError(f"{self.path}: not connected")
        execute = self._client.execute_msg
        # execute_msg of a plain dict: it makes a Message of its own from what it is given
        # (a copy, serialised at once, then again once the id is set), so a Message built
        # here would only be thrown away; QMPClient.execute builds an eagerly serialised one
        # (three json.dumps per command instead of two), and copying a Message walks the
        # Mapping protocol key by key in Python where copying a dict is one C call.
        tasks = [
            asyncio.ensure_future(
                execute(cast(Message, {"execute": c, "arguments": a} if a else {"execute": c}))
            )
            for c, a in calls
        ]
        try:
            async with asyncio.timeout(self.timeout):
                # One by one (each task's reply or error is looked at below), all in flight
                # meanwhile: cheaper than asyncio.wait's set, waiter future and callbacks.
                for task in tasks:
                    if not task.done():
                        try:
                            await task
                        except Exception:  # its error is looked at below
                            continue
        except TimeoutError:
            pass
        finally:  # on a timeout, and if this caller is cancelled (the VM's own deadline)
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        results: list[Any] = []
        lost = False
        for (command, _), task in zip(calls, tasks, strict=True):
            exc = None if task.cancelled() else task.exception()
            if task.cancelled():
                err: QmpError = QmpTimeout(f"{command}: no reply within {self.timeout:g} s")
                lost = True
            elif exc is None:
                results.append(task.result())
                continue
            elif isinstance(exc, ExecuteError):
                err = QmpCommandError(command, exc.error_class, exc.error.error.desc)
            elif isinstance(exc, QMPError | OSError | EOFError):
                err = QmpError(f"{command}: connection lost: {exc!r}")
                lost = True
            else:
                raise exc
            err.__cause__ = exc
            results.append(err)
        if lost:
            await self.close()
        return results

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _quiet_disconnect(client)


async def _quiet_disconnect(client: QMPClient) -> None:
    with contextlib.suppress(QMPError, OSError, EOFError, TimeoutError):
        await asyncio.wait_for(client.disconnect(), 1.0)
