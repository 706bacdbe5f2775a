"""A hostile guest agent: a real unix-socket server that speaks just enough of the QGA protocol
to get a client past guest-sync-delimited, then misbehaves in one of several ways when asked
for guest-info or guest-get-fsinfo. Every scenario is something a broken or malicious guest can
send down its virtio-serial port.

    python -m tests.hostile_qga SOCKET SCENARIO
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

GOOD_INFO = {
    "version": "7.2.0",
    "supported_commands": [
        {"name": n, "enabled": True, "success-response": True}
        for n in ("guest-sync-delimited", "guest-info", "guest-get-fsinfo", "guest-ping")
    ],
}
FS = {
    "name": "vda",
    "mountpoint": "/",
    "type": "ext4",
    "used-bytes": 1000,
    "total-bytes": 4000,
    "disk": [],
}

SCENARIOS = (
    "endless_stream",  # stale replies forever
    "huge_reply",  # a 100 MB line
    "byte_per_second",  # the right reply, one byte a second
    "invalid_utf8",  # undecodable bytes instead of a reply
    "deep_nesting",  # [[[[... 100,000 deep
    "many_filesystems",  # 100,000 filesystems (10+ MB)
    "capped_filesystems",  # 5,000 small filesystems (< 1 MiB): the per-VM cap applies
    "absurd_values",  # negative, huge, float, NaN-ish, used > total, control chars, long names
    "wrong_ids",  # replies with other ids only
    "unsolicited_then_right",  # replies to commands never sent, then the right reply
    "never_answers",  # silent, even to guest-sync-delimited
)


def absurd_filesystems() -> list[Any]:
    return [
        {**FS, "mountpoint": "/neg", "used-bytes": -5},
        {**FS, "mountpoint": "/huge", "used-bytes": 2**200, "total-bytes": 2**201},
        {**FS, "mountpoint": "/float", "used-bytes": 1.5},
        {**FS, "mountpoint": "/bool", "used-bytes": True},
        {**FS, "mountpoint": "/over", "used-bytes": 5000, "total-bytes": 10},
        {**FS, "mountpoint": "/ctl\x00\x1b[31m\n", "used-bytes": 1, "total-bytes": 2},
        {**FS, "mountpoint": "/" + "x" * 5000, "used-bytes": 1, "total-bytes": 2},
        {**FS, "mountpoint": "\udc80\ud800", "used-bytes": 1, "total-bytes": 2},
        {**FS, "mountpoint": 42},
        "not an object",
        None,
        {**FS, "mountpoint": "/fine", "used-bytes": 10, "total-bytes": 20},
        {**FS, "mountpoint": "/fine", "used-bytes": 11, "total-bytes": 20},
    ]


def serve(srv: socket.socket, scenario: str, stop: threading.Event) -> None:
    srv.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(conn, scenario, stop), daemon=True).start()
    srv.close()


def send(conn: socket.socket, obj: Any) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


def handle(conn: socket.socket, scenario: str, stop: threading.Event) -> None:
    buf = b""
    try:
        while not stop.is_set():
            data = conn.recv(65536)
            if not data:
                return
            buf += data.replace(b"\xff", b"")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                req = json.loads(line)
                if scenario == "never_answers":
                    continue
                if req["execute"] == "guest-sync-delimited":
                    conn.sendall(b"\xff")
                    send(conn, {"return": req["arguments"]["id"]})
                elif req["execute"] == "guest-info":
                    send(conn, {"return": GOOD_INFO, "id": req.get("id")})
                else:
                    misbehave(conn, scenario, req.get("id"), stop)
    except (OSError, ValueError):
        return
    finally:
        conn.close()


def misbehave(conn: socket.socket, scenario: str, rid: Any, stop: threading.Event) -> None:
    if scenario == "endless_stream":
        n = 0
        while not stop.is_set():
            n += 1
            send(conn, {"return": [FS], "id": f"stale-{n}"})
    elif scenario == "huge_reply":
        conn.sendall(b'{"return": [{"name": "')
        chunk = b"A" * (1 << 20)
        for _ in range(100):
            conn.sendall(chunk)
        conn.sendall(b'"}], "id": ' + json.dumps(rid).encode() + b"}\n")
    elif scenario == "byte_per_second":
        for b in json.dumps({"return": [FS], "id": rid}).encode() + b"\n":
            if stop.is_set():
                return
            conn.sendall(bytes([b]))
            time.sleep(1)
    elif scenario == "invalid_utf8":
        conn.sendall(
            b'{"return": [{"name": "\xff\xfe\xc3\x28", "mountpoint": "/"}], "id": '
            + json.dumps(rid).encode()
            + b"}\n"
        )
    elif scenario == "deep_nesting":
        conn.sendall(
            b'{"return": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b', "id": '
            + json.dumps(rid).encode()
            + b"}\n"
        )
    elif scenario == "many_filesystems":
        fss = [{**FS, "mountpoint": f"/m{i}"} for i in range(100_000)]
        send(conn, {"return": fss, "id": rid})
    elif scenario == "capped_filesystems":
        fss = [
            {"name": "v", "mountpoint": f"/{i}", "type": "x", "used-bytes": 1, "total-bytes": 2}
            for i in range(5000)
        ]
        send(conn, {"return": fss, "id": rid})
    elif scenario == "absurd_values":
        send(conn, {"return": absurd_filesystems(), "id": rid})
    elif scenario == "wrong_ids":
        for i in range(50):
            send(conn, {"return": [FS], "id": f"not-yours-{i}"})
    elif scenario == "unsolicited_then_right":
        for i in range(20):
            send(conn, {"return": {"pid": i}, "id": 10**9 + i})
            send(conn, {"error": {"class": "GenericError", "desc": "for someone else"}})
        send(conn, {"return": [FS], "id": rid})


class HostileQga:
    def __init__(self, path: str, scenario: str) -> None:
        assert scenario in SCENARIOS, scenario
        self.stop = threading.Event()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(8)
        self.thread = threading.Thread(target=serve, args=(srv, scenario, self.stop), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


if __name__ == "__main__":
    HostileQga(sys.argv[1], sys.argv[2])
    threading.Event().wait()
