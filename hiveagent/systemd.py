"""sd_notify(3) without libsystemd: READY=1, RELOADING=1, STOPPING=1, STATUS=..., WATCHDOG=1
datagrams to $NOTIFY_SOCKET. Outside systemd (no NOTIFY_SOCKET) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        self.socket: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the event loop on a slow reader: a message that does not fit is
            # dropped (the next STATUS or WATCHDOG replaces it).
            self.socket.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    def notify(self, *fields: str) -> None:
        if self.socket is None or self.address is None:
            return
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            self.socket.sendto(message, self.address)
        except OSError as exc:  # systemd gone or its queue full: never fatal
            log.debug("sd_notify %r: %s", fields, exc)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
