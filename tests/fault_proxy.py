"""A small fault-injecting HTTP proxy (a real TCP server) for the CloudWatch endpoint.

It sits between the agent and moto's server and, request by request, follows a script: pass
through, answer 500 InternalServiceError, answer 400 Throttling, reset the connection, or reply
slowly. It can also play an endpoint that rejects one particular datum (400
InvalidParameterValue) for every request containing it, as the Spinifex service does for
content it does not accept. It speaks what botocore sends to CloudWatch: AWS JSON 1.0 bodies,
gzip-compressed or not.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# The agent's publish.timeout_seconds in the tests that use this proxy; a request answered
# after LATE_AFTER_S may have outlived it
AGENT_TIMEOUT_S = 2.0
LATE_AFTER_S = 1.0


@dataclass
class ProxyLog:
    actions: Counter[str] = field(default_factory=Counter)
    poisoned: dict[str, Any] | None = None  # the datum rejected, as sent
    rejected_requests: int = 0
    # Datums of requests the client gave up on (timed out) that were forwarded anyway: an
    # endpoint that processed a request too slowly. At-least-once delivery sends them again.
    late_datums: int = 0
    content_types: Counter[str] = field(default_factory=Counter)  # what the client spoke


def _error(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"__type": code, "message": message}).encode()
    return (
        f"HTTP/1.1 {status} Error\r\n"
        "Content-Type: application/x-amz-json-1.0\r\n"
        f"x-amzn-query-error: {code};{'Sender' if status < 500 else 'Receiver'}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.script: list[str] = []  # actions for the next requests; then "pass"
        self.poison_after = -1  # pick a datum to reject from request number N on (-1: never)
        self.log = ProxyLog()
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                reply = await self._respond(head, headers, body, reader, writer)
                if reply is None:
                    return  # connection reset
                writer.write(reply)
                await writer.drain()
                writer.close()
                return
        finally:
            writer.close()

    def _datums(self, headers: dict[str, str], body: bytes) -> list[dict[str, Any]]:
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            data: list[dict[str, Any]] = json.loads(body).get("MetricData", [])
            return data
        except (ValueError, AttributeError):
            return []

    async def _respond(
        self,
        head: bytes,
        headers: dict[str, str],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bytes | None:
        self.requests += 1
        self.log.content_types[headers.get("content-type", "")] += 1
        action = self.script.pop(0) if self.script else "pass"
        if action == "pass" and 0 <= self.poison_after < self.requests:
            datums = self._datums(headers, body)
            if self.log.poisoned is None and len(datums) >= 4:
                self.log.poisoned = datums[len(datums) // 2]
            if self.log.poisoned is not None and self.log.poisoned in datums:
                self.log.rejected_requests += 1
                action = "invalid"
        self.log.actions[action] += 1
        if action == "500":
            return _error(500, "InternalServiceError", "injected")
        if action == "throttle":
            return _error(400, "Throttling", "Rate exceeded")
        if action == "invalid":
            return _error(400, "InvalidParameterValue", "The value for MetricData is invalid")
        if action == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return None
        started = time.monotonic()
        if action.startswith("slow:"):
            await asyncio.sleep(float(action.split(":", 1)[1]))
        # Answered late (scripted, or the upstream slow on a loaded machine): if the agent gave
        # up meanwhile, the upstream gets the datums all the same and the agent sends them
        # again. Counted before the answer is awaited, so that nothing after it can miss it.
        late = time.monotonic() - started >= AGENT_TIMEOUT_S + 0.25
        if late:  # the agent's read timeout ran from before the request arrived: it gave up
            self.log.late_datums += len(self._datums(headers, body))
        answer = await self._forward(head, body)
        elapsed = time.monotonic() - started
        if not late and elapsed > LATE_AFTER_S:
            # Until its timeout has surely passed: it either gives up meanwhile (gone: late)
            # or gets the answer in time.
            try:
                wait = max(0.05, AGENT_TIMEOUT_S + 0.5 - elapsed)
                gone = await asyncio.wait_for(reader.read(1), wait) == b""
            except TimeoutError:
                gone = False
            except OSError:  # reset by the client that gave up
                gone = True
            if gone:
                self.log.late_datums += len(self._datums(headers, body))
        return answer

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        kept = [ln for ln in lines if ln and not ln.lower().startswith("connection:")]
        request = ("\r\n".join(kept) + "\r\nConnection: close\r\n\r\n").encode("latin-1") + body
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
