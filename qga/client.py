"""asyncio client for qemu-ga over a unix socket.

Why not qemu.qmp: qemu-ga sends no greeting, answers the 0xFF resync byte with an id-less error
and prefixes the sync reply with 0xFF, all of which qemu.qmp's QMPClient treats as fatal.

Protocol (REFERENCE.md section 2): newline-delimited JSON, one command at a time, one client at a
time. A client that timed out earlier may have left a half-sent request or late replies in the
channel, so every new connection, and every command after a timeout, first resynchronises:
write 0xFF then `guest-sync-delimited {id}`; discard all bytes up to the 0xFF qemu-ga puts
before its reply; then read replies until the one carrying `return == id`. Every command is
sent with its own `id` and only the reply echoing that id is accepted, so a stale reply can never
be taken for another command's answer.

State machine: DISCONNECTED -> (open) -> UNSYNCED -> (sync) -> READY; a timeout or a bad reply
while READY -> UNSYNCED (resync before the next command); a closed socket, an oversized reply
or a failed sync -> CLOSED (the owner makes a new client).

Pipelining: qemu-ga reads commands as a stream and answers them one at a time, in order, so
`execute_many` writes the resync (when due) and several commands at once and then reads the
replies: one write and a few reads instead of a round trip per command. Each reply still has its
deadline: after the resync, the commands share one of `timeout` per command (a reply that
comes early leaves its time to the later ones; replies to nobody do not add any).

Guest replies are untrusted: every read is bounded by `max_reply_bytes` and every call by a
deadline.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 65536


class QgaError(Exception):
    """Root of every error this client raises; `__cause__` keeps the underlying one."""


class QgaTimeout(QgaError):
    """The guest agent did not answer within the deadline."""


class QgaClosedError(QgaError):
    """The connection is closed or could not be opened."""


class QgaProtocolError(QgaError):
    """The guest agent sent something that is not a valid, bounded reply."""


class QgaCommandError(QgaError):
    """The guest agent answered with an error object."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc

    @property
    def unavailable(self) -> bool:
        """The command does not exist, is disabled, or is unsupported in this guest."""
        return (
            self.error_class == "CommandNotFound"
            or "has been disabled" in self.desc
            or "not currently supported" in self.desc
        )


class QgaState(enum.Enum):
    DISCONNECTED = "disconnected"
    UNSYNCED = "unsynced"
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True)
class GuestInfo:
    """guest-info: the agent's version and the commands it has enabled."""

    version: str
    enabled_commands: frozenset[str]


def parse_guest_info(reply: Any) -> GuestInfo:
    """Validate a guest-info `return` value field by field."""
    if not isinstance(reply, dict):
        raise QgaProtocolError("guest-info: reply is not an object")
    version = reply.get("version")
    commands = reply.get("supported_commands")
    if not isinstance(version, str) or not isinstance(commands, list):
        raise QgaProtocolError("guest-info: missing version or supported_commands")
    enabled = set()
    for entry in commands:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and entry.get("enabled") is True
            and len(entry["name"]) <= 128
        ):
            enabled.add(entry["name"])
    return GuestInfo(version=version[:64], enabled_commands=frozenset(enabled))


# The C scanner behind json.loads (JSONDecoder's defaults, as json.loads uses them).
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
# command -> its request line, with %d for the id (commands come from the collectors' wants)
_REQUEST_LINES: dict[str, bytes] = {}


def _request_line(command: str) -> bytes:
    line = _REQUEST_LINES.get(command)
    if line is None:
        name = json.dumps(command).encode().replace(b"%", b"%%")
        line = b'{"execute": %s, "id": %%d}\n' % name
        if len(_REQUEST_LINES) < 256:
            _REQUEST_LINES[command] = line
    return line


class QgaClient:
    """One connection to one guest agent socket. Not safe for concurrent commands: a lock
    serialises them, as qemu-ga requires."""

    def __init__(
        self,
        path: str,
        *,
        timeout: float = 3.0,
        max_reply_bytes: int = 1 << 20,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self.state = QgaState.DISCONNECTED
        self.stale_replies = 0  # replies read and ignored (wrong id, id-less errors)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._lock = asyncio.Lock()
        self._ids = itertools.count(random.randrange(1, 1 << 30))

    # -- connection ---------------------------------------------------------------------------

    async def connect(self, sock: socket.socket | None = None) -> None:
        """Open the socket (or use `sock`, already connected: a vsock or a socketpair) and
        resynchronise, within one deadline each."""
        await self.open(sock)
        async with self._lock:
            await self._sync()

    async def open(self, sock: socket.socket | None = None) -> None:
        """Open the socket (or use `sock`) without resynchronising: the client is UNSYNCED,
        and its first command (or `execute_many`) resynchronises first."""
        if self.state is not QgaState.DISCONNECTED:
            raise QgaClosedError(f"{self.path}: connect() in state {self.state.value}")
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                try:
                    sock.connect(self.path)  # a unix socket connects at once, or says EAGAIN
                except BlockingIOError:
                    async with asyncio.timeout(self.timeout):
                        await loop.sock_connect(sock, self.path)
            except TimeoutError as exc:
                sock.close()
                self.state = QgaState.CLOSED
                raise QgaTimeout(f"{self.path}: connect timed out") from exc
            except OSError as exc:
                sock.close()
                self.state = QgaState.CLOSED
                raise QgaClosedError(f"{self.path}: cannot connect: {exc.strerror or exc}") from exc
        else:
            sock.setblocking(False)
        self._sock = sock
        self.state = QgaState.UNSYNCED

    async def close(self) -> None:
        """Close the socket (at once: nothing is buffered on our side)."""
        self.state = QgaState.CLOSED
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    async def __aenter__(self) -> QgaClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- commands -----------------------------------------------------------------------------

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its `return` value; raises QgaError subclasses."""
        async with self._lock:
            if self.state is QgaState.UNSYNCED:
                await self._sync()
            if self.state is not QgaState.READY:
                raise QgaClosedError(f"{self.path}: not connected ({self.state.value})")
            msg_id = next(self._ids)
            msg: dict[str, Any] = {"execute": command, "id": msg_id}
            if arguments:
                msg["arguments"] = arguments
            try:
                async with asyncio.timeout(self.timeout):
                    await self._send(json.dumps(msg).encode() + b"\n")
                    while True:
                        reply = await self._read_object()
                        if reply.get("id") == msg_id:
                            break
                        self.stale_replies += 1
            except TimeoutError as exc:
                self.state = QgaState.UNSYNCED
                raise QgaTimeout(f"{command}: no reply within {self.timeout:g} s") from exc
            return self._outcome(command, reply)

    async def execute_many(self, commands: Sequence[str]) -> list[Any]:
        """Run argument-less commands pipelined (see the module docstring) and return, per
        command in order, its `return` value or the QgaError it failed with. The resync has
        `timeout`, the commands `timeout` each, shared. A failed resync raises (the client is
        then CLOSED). After a timeout the client is UNSYNCED; the first command not answered
        gets a QgaTimeout and the ones after it a QgaTimeout saying so."""
        async with self._lock:
            if self.state not in (QgaState.READY, QgaState.UNSYNCED):
                raise QgaClosedError(f"{self.path}: not connected ({self.state.value})")
            sync_id = random.randrange(1, 1 << 31) if self.state is QgaState.UNSYNCED else None
            ids = [next(self._ids) for _ in commands]
            request = b"".join(
                _request_line(command) % msg_id
                for command, msg_id in zip(commands, ids, strict=True)
            )
            if sync_id is not None:
                request = self._sync_request(sync_id) + request
            results: list[Any] = [None] * len(commands)
            pending = dict(zip(ids, range(len(commands)), strict=True))
            synced = sync_id is None
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.timeout) as deadline:
                    await self._send(request)
                    if sync_id is not None:
                        await self._await_sync(sync_id)
                        synced = True
                    if commands:
                        deadline.reschedule(loop.time() + self.timeout * len(commands))
                    while pending:
                        reply = await self._read_object()
                        msg_id = reply.get("id")
                        if msg_id.__class__ is not int or msg_id not in pending:
                            self.stale_replies += 1
                            continue
                        i = pending.pop(msg_id)
                        try:
                            results[i] = self._outcome(commands[i], reply)
                        except QgaError as exc:
                            results[i] = exc
            except TimeoutError as exc:
                if not synced:
                    await self.close()
                    raise QgaTimeout(
                        f"{self.path}: guest-sync-delimited: no reply within {self.timeout:g} s"
                    ) from exc
                if self.state is QgaState.READY:
                    self.state = QgaState.UNSYNCED
                self._fail_pending(commands, results, pending, QgaTimeout, exc)
            except QgaError as exc:  # the connection was lost or a reply was unbounded
                if not synced:
                    await self.close()
                    raise
                kind = QgaProtocolError if isinstance(exc, QgaProtocolError) else QgaClosedError
                self._fail_pending(commands, results, pending, kind, exc)
            return results

    def _fail_pending(
        self,
        commands: Sequence[str],
        results: list[Any],
        pending: dict[int, int],
        kind: type[QgaError],
        cause: Exception,
    ) -> None:
        """Every command still unanswered gets an error of `kind`."""
        first = True
        for i in sorted(pending.values()):
            why = (
                f"no reply in time ({self.timeout:g} s per command)"
                if kind is QgaTimeout
                else str(cause)
            )
            if not first:
                why = f"not answered: an earlier command failed ({why})"
            error = kind(f"{commands[i]}: {why}")
            error.__cause__ = cause
            results[i] = error
            first = False

    def _outcome(self, command: str, reply: dict[str, Any]) -> Any:
        """A reply's `return` value, or raise the QgaError it stands for."""
        if "error" in reply:
            err = reply["error"]
            if not isinstance(err, dict):
                raise QgaProtocolError(f"{command}: malformed error reply")
            raise self._command_error(command, err)
        if "return" not in reply:
            self.state = QgaState.UNSYNCED
            raise QgaProtocolError(f"{command}: reply has neither return nor error")
        return reply["return"]

    async def guest_info(self) -> GuestInfo:
        return parse_guest_info(await self.execute("guest-info"))

    @staticmethod
    def _command_error(command: str, err: dict[str, Any]) -> QgaCommandError:
        cls = err.get("class")
        desc = err.get("desc")
        return QgaCommandError(
            command,
            cls[:64] if isinstance(cls, str) else "?",
            desc[:256] if isinstance(desc, str) else "",
        )

    # -- framing ------------------------------------------------------------------------------

    @staticmethod
    def _sync_request(sync_id: int) -> bytes:
        return b'\xff{"execute": "guest-sync-delimited", "arguments": {"id": %d}}\n' % sync_id

    async def _await_sync(self, sync_id: int) -> None:
        """Discard everything through the 0xFF, then replies until the sync's; READY."""
        await self._discard_through_delimiter()
        while True:
            reply = await self._read_object()
            if reply.get("return") == sync_id:
                break
            self.stale_replies += 1
        self.state = QgaState.READY

    async def _sync(self) -> None:
        """0xFF + guest-sync-delimited; on failure the client is CLOSED."""
        sync_id = random.randrange(1, 1 << 31)
        try:
            async with asyncio.timeout(self.timeout):
                await self._send(self._sync_request(sync_id))
                await self._await_sync(sync_id)
        except TimeoutError as exc:
            await self.close()
            raise QgaTimeout(
                f"{self.path}: guest-sync-delimited: no reply within {self.timeout:g} s"
            ) from exc
        except QgaError:
            await self.close()
            raise

    async def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise QgaClosedError(f"{self.path}: not connected")
        try:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)
        except OSError as exc:
            await self.close()
            raise QgaClosedError(f"{self.path}: write failed: {exc}") from exc

    async def _fill(self) -> None:
        if self._sock is None:
            raise QgaClosedError(f"{self.path}: not connected")
        try:
            chunk = await asyncio.get_running_loop().sock_recv(self._sock, _CHUNK)
        except OSError as exc:
            await self.close()
            raise QgaClosedError(f"{self.path}: read failed: {exc}") from exc
        if not chunk:
            await self.close()
            raise QgaClosedError(f"{self.path}: guest agent closed the connection")
        self._buf += chunk

    async def _discard_through_delimiter(self) -> None:
        """Drop every byte up to and including the first 0xFF (bounded by max_reply_bytes)."""
        discarded = 0
        while True:
            i = self._buf.find(0xFF)
            if i >= 0:
                del self._buf[: i + 1]
                return
            discarded += len(self._buf)
            self._buf.clear()
            if discarded > self.max_reply_bytes:
                raise QgaProtocolError(f"{self.path}: no sync delimiter within {discarded} bytes")
            await self._fill()

    async def _read_line(self) -> bytes:
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                return line
            start = len(self._buf)
            if start > self.max_reply_bytes:
                await self.close()
                raise QgaProtocolError(
                    f"{self.path}: reply exceeds {self.max_reply_bytes} bytes; connection dropped"
                )
            await self._fill()

    async def _read_object(self) -> dict[str, Any]:
        """The next reply object; blank lines and non-object JSON count as stale."""
        while True:
            line = (await self._read_line()).strip()
            if not line:
                continue
            # json.loads without its two Python frames and whitespace matches (the line is
            # stripped): the C scanner, then json.loads's own check that nothing but the
            # value is there ("Extra data")
            text, end = "", -1
            try:
                text = line.decode()  # invalid UTF-8 is a ValueError too
                obj, end = _scan_json(text, 0)
            except (ValueError, RecursionError, StopIteration):  # StopIteration: no value
                end = -1
            if end != len(text):
                self.stale_replies += 1
                log.debug("%s: ignoring undecodable line of %d bytes", self.path, len(line))
                continue
            if isinstance(obj, dict):
                return obj
            self.stale_replies += 1
