"""A small asyncio client for the QEMU guest agent (qemu-ga)."""

from qga.client import (
    QgaClient,
    QgaClosedError,
    QgaCommandError,
    QgaError,
    QgaProtocolError,
    QgaState,
    QgaTimeout,
)

__all__ = [
    "QgaClient",
    "QgaClosedError",
    "QgaCommandError",
    "QgaError",
    "QgaProtocolError",
    "QgaState",
    "QgaTimeout",
]
