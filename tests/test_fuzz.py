"""Property tests (hypothesis) on everything that decodes untrusted input: the guest agent's
framing over a real socket pair, and every reply decoder. Whatever arrives, the decoders raise
only their documented error and what they return is sane."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.blockstats import COUNTERS, parse_blockstats
from collectors.guest_disk import parse_fsinfo
from collectors.process_cpu import parse_proc_stat
from collectors.tap_net import parse_net_dev
from hiveagent.qom import parse_query_chardev, parse_virtserialports
from qga.client import QgaClient, QgaError, QgaProtocolError, parse_guest_info

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
# Entries that look like the real thing, with any field replaced by anything.
fs_entry = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=20) | json_values,
        "mountpoint": st.text(max_size=2000) | json_values,
        "type": st.sampled_from(["ext4", "xfs", ""]) | json_values,
        "used-bytes": st.integers(-10, 2**70) | json_values,
        "total-bytes": st.integers(-10, 2**70) | json_values,
        "total-bytes-privileged": st.integers(-10, 2**70) | json_values,
    },
)


@given(st.lists(fs_entry | json_values, max_size=40) | json_values, st.integers(1, 50))
def test_fsinfo_decoder(reply: Any, limit: int) -> None:
    rejected: Counter[str] = Counter()
    try:
        records = parse_fsinfo(reply, limit, rejected)
    except ValueError:
        assert not isinstance(reply, list)
        return
    assert len(records) <= limit
    assert len({r.mountpoint for r in records}) == len(records)
    for r in records:
        assert 0 <= r.used <= r.total < 2**63
        for s in (r.mountpoint, r.device, r.fstype):
            assert 0 < len(s) <= 1024 and s.isprintable()
            s.encode("utf-8")  # no lone surrogates: botocore can send it
    assert len(records) + sum(rejected.values()) <= len(reply)


@given(st.lists(json_values | st.fixed_dictionaries(
    {"device": st.text(max_size=10) | json_values,
     "stats": st.dictionaries(st.sampled_from(COUNTERS), st.integers(-5, 2**65) | json_values)},
), max_size=20) | json_values)  # fmt: skip
def test_blockstats_decoder(reply: Any) -> None:
    try:
        devices = parse_blockstats(reply, 8, Counter())
    except ValueError:
        assert not isinstance(reply, list)
        return
    assert len(devices) <= 8
    for counters in devices.values():
        assert counters._fields == COUNTERS and len(counters) == len(COUNTERS)
        assert all(isinstance(v, int) and 0 <= v < 2**64 for v in counters)


@given(json_values)
def test_guest_info_decoder(reply: Any) -> None:
    try:
        info = parse_guest_info(reply)
    except QgaProtocolError:
        return
    assert len(info.version) <= 64
    assert all(isinstance(c, str) and len(c) <= 128 for c in info.enabled_commands)


@given(json_values)
def test_qmp_decoders(reply: Any) -> None:
    try:
        chardevs = parse_query_chardev(reply)
    except ValueError:
        pass
    else:
        assert all(isinstance(k, str) for k in chardevs)
    try:
        ports = parse_virtserialports(reply)
    except ValueError:
        pass
    else:
        assert all(isinstance(p, str) for p in ports)


@given(st.binary(max_size=3000))
def test_proc_decoders(data: bytes) -> None:
    try:
        ticks = parse_proc_stat(data)
    except ValueError:
        pass
    else:
        assert ticks >= 0
    try:
        ifaces = parse_net_dev(data)
    except ValueError:
        pass
    else:
        for counters in ifaces.values():
            assert all(v >= 0 for v in counters)


# -- the framing, over a real socket pair ------------------------------------------------------

junk_line = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"").replace(b"\xff", b""))
junk_json = json_values.map(lambda v: json.dumps(v).encode())


async def _exchange(before_sync: bytes, junk: list[bytes], value: Any) -> Any:
    """The client talks to a scripted peer on a socketpair: the peer answers the sync after
    `before_sync` noise, then sends `junk` lines, then the right reply."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()

    async def peer() -> None:
        theirs.setblocking(False)
        buf = b""
        while b"\n" not in buf:
            buf += await loop.sock_recv(theirs, 4096)
        sync_id = json.loads(buf.split(b"\n")[0].lstrip(b"\xff"))["arguments"]["id"]
        await loop.sock_sendall(
            theirs, before_sync + b"\xff" + json.dumps({"return": sync_id}).encode() + b"\n"
        )
        buf = buf.split(b"\n", 1)[1]
        while b"\n" not in buf:
            buf += await loop.sock_recv(theirs, 4096)
        rid = json.loads(buf.split(b"\n")[0])["id"]
        await loop.sock_sendall(theirs, b"".join(j + b"\n" for j in junk) + json.dumps(
            {"return": value, "id": rid}).encode() + b"\n")  # fmt: skip

    client = QgaClient("socketpair", timeout=2.0, max_reply_bytes=1 << 16)
    task = asyncio.create_task(peer())
    try:
        await client.connect(sock=ours)
        return await client.execute("guest-ping")
    finally:
        await client.close()
        task.cancel()
        theirs.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(junk_line | junk_json, max_size=8), json_values)
def test_framing_finds_the_right_reply_among_noise(
    before_sync: bytes, junk: list[bytes], value: Any
) -> None:
    t0 = time.monotonic()
    try:
        got = asyncio.run(_exchange(before_sync, junk, value))
    except QgaError:
        # Noise before the sync that itself holds 0xFF can hide the real delimiter: the client
        # then gives up at its deadline. Any other noise must never cost the reply.
        assert b"\xff" in before_sync, "reply lost among noise"
        assert time.monotonic() - t0 < 3
        return
    assert json.dumps(got) == json.dumps(value)


@given(st.text(max_size=2000))
def test_a_cleaned_guest_string_is_a_dimension_value_cloudwatch_takes(text: str) -> None:
    """Whatever a guest sends as a mount point, device or interface name becomes either no
    dimension (blank) or one CloudWatch accepts (printable ASCII, non-blank, 1..1024
    characters: AWS's Dimension data type), so the series is kept rather than refused."""
    from hiveagent.collector import clean_dimension
    from hiveagent.model import Datum
    from hiveagent.wire import checked

    value = clean_dimension(text)
    if value is None:
        assert not "".join(ch for ch in text if ch.isprintable()).strip()
        return
    assert value.isascii() and value.isprintable() and value.strip()
    d = Datum("CWAgent", "disk_used_percent", (("path", value),), 1.0, "Percent", 1e9, 60)
    assert checked(d, 1e9)[0] is None
    if text.isascii() and text.isprintable() and len(text) <= 1024:
        assert value == text  # the usual case: untouched
