"""The disk spool on real files: replay after reopen, cursor, torn and corrupt records, the byte
bound, and a really full disk (a 256 KiB tmpfs, when we are root). Request sizing: batching at
append, record wire sizes, filling a request, too-old and unreadable records dropped."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hiveagent.spool
from hiveagent.encoding import WireDatums
from hiveagent.ledger import DropLedger
from hiveagent.model import Datum
from hiveagent.spool import (
    HEADER,
    MAGIC,
    MAGIC_WIRE,
    Record,
    Spool,
    SpoolBudget,
    _ranges,
    batches,
    decode_payload,
    decode_wire_payload,
    encode_payload,
    read_records,
    sized_batches,
)
from hiveagent.wire import (
    MAX_AGE_S,
    MAX_DATUMS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    REQUEST_OVERHEAD_BYTES,
    datum_wire_size,
)


def datums(n: int, start: float = 1_700_000_000.0, ns: str = "Hive/EC2") -> list[Datum]:
    return [
        Datum(
            ns,
            "CPUUtilization",
            (("InstanceId", f"i-{k:017x}"),),
            k * 0.5,
            "Percent",
            start + k,
            60,
        )
        for k in range(n)
    ]


class Drops(DropLedger):
    """The drop ledger (`counts` by reason), also keeping each drop's detail."""

    def __init__(self) -> None:
        super().__init__()
        self.details: list[str] = []

    def drop(self, count: int, reason: str, detail: str) -> None:
        super().drop(count, reason, detail)
        self.details.append(detail)


def open_spool(path: Path, drops: Drops | None = None, **kw: int) -> Spool:
    spool = Spool(path, ledger=drops, **kw)  # type: ignore[arg-type]
    spool.open()
    return spool


def test_records_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    first = spool.append("Hive/EC2", datums(3))
    spool.append_many(
        [("Hive/EBS", datums(2, ns="Hive/EBS")), ("CWAgent", datums(1, ns="CWAgent"))]
    )
    spool.done(first)
    spool.commit()
    spool.close()

    again = open_spool(tmp_path)
    assert [(r.namespace, r.count) for r in again.records()] == [("Hive/EBS", 2), ("CWAgent", 1)]
    [ebs, cw] = list(again.records())
    assert again.load(ebs) == datums(2, ns="Hive/EBS")
    assert again.load(cw) == datums(1, ns="CWAgent")
    # The new process appends to a new segment, never to the old tail.
    again.append("Hive/EC2", datums(1))
    assert len(list(tmp_path.glob("*.seg"))) == 2


def test_out_of_order_completion_keeps_the_oldest_pending(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    a, b, c = (spool.append("Hive/EC2", datums(1, start=t)) for t in (1e9, 2e9, 3e9))
    spool.done(b)
    spool.done(c)
    spool.commit()
    spool.close()
    # The cursor stays at a; b and c are remembered as done (8 bytes each: segment, offset).
    assert (tmp_path / "done").stat().st_size == 2 * 8
    again = open_spool(tmp_path)
    # Only a comes back, marked as possibly delivered before: b and c are not sent again.
    assert [(r.oldest, r.replayed) for r in again.records()] == [(1e9, True)]
    for r in again.records():
        again.done(r)
    again.commit()
    # The cursor has passed every mark: the file is emptied.
    assert (tmp_path / "done").stat().st_size == 0
    again.append("Hive/EC2", datums(1, start=4e9))
    again.close()
    assert [(r.oldest, r.replayed) for r in open_spool(tmp_path).records()] == [(4e9, True)]
    assert a.count == 1


def test_done_marks_torn_or_lost_resend_but_lose_nothing(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    records = [spool.append("Hive/EC2", datums(1, start=1e9 + k)) for k in range(4)]
    for r in records[1:]:
        spool.done(r)
    spool.commit()
    spool.close()
    marks = tmp_path / "done"
    with open(marks, "r+b") as f:  # a crash tore the last pair
        f.truncate(3 * 8 - 3)
    again = open_spool(tmp_path)
    # The torn mark's record is sent again (at-least-once); the whole marks hold.
    assert [r.oldest for r in again.records()] == [1e9, 1e9 + 3]
    again.close()
    marks.unlink()
    assert len(list(open_spool(tmp_path).records())) == 4


def test_records_written_by_this_process_are_not_replays(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    r = spool.append("Hive/EC2", datums(1))
    assert r.replayed is False


def test_finished_segments_are_deleted(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=1 << 20)  # 128 KiB segments
    for k in range(40):
        spool.append("Hive/EC2", datums(100, start=1e9 + k * 1000))
    assert len(spool.segment_sizes) > 2
    for r in spool.records():
        spool.done(r)
    spool.commit()
    assert len(list(tmp_path.glob("*.seg"))) == 1  # only the active one


def test_torn_tail_is_counted_not_fatal(tmp_path: Path) -> None:
    drops = Drops()
    spool = open_spool(tmp_path)
    spool.append("Hive/EC2", datums(5))
    spool.append("Hive/EC2", datums(7))
    spool.close()
    [seg] = tmp_path.glob("*.seg")
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 10)  # power lost in the middle of the second record
    again = open_spool(tmp_path, drops)
    assert [r.count for r in again.records()] == [5]
    assert drops.counts == Counter({"spool_corrupt": 7})
    assert again.corrupt_records == 1


def test_flipped_bit_is_counted_and_the_rest_of_the_segment_skipped(tmp_path: Path) -> None:
    drops = Drops()
    spool = open_spool(tmp_path)
    spool.append("Hive/EC2", datums(4))
    spool.append("Hive/EC2", datums(6))
    spool.append("Hive/EC2", datums(8))
    spool.close()
    [seg] = tmp_path.glob("*.seg")
    data = bytearray(seg.read_bytes())
    first_len = HEADER.size + HEADER.unpack_from(data, 0)[2]
    data[first_len + HEADER.size + 3] ^= 0x40  # inside the second record's payload
    seg.write_bytes(bytes(data))
    again = open_spool(tmp_path, drops)
    assert [r.count for r in again.records()] == [4]
    assert drops.counts["spool_corrupt"] == 6  # the header still says how many were lost
    assert "checksum mismatch" in drops.details[0]


def test_garbage_cursor_replays_everything(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    r = spool.append("Hive/EC2", datums(2))
    spool.append("Hive/EC2", datums(3))
    spool.done(r)
    spool.commit()
    spool.close()
    (tmp_path / "cursor").write_bytes(b"\xc1garbage")
    assert [r.count for r in open_spool(tmp_path).records()] == [2, 3]


def test_byte_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    drops = Drops()
    spool = open_spool(tmp_path, drops, max_bytes=1 << 20)
    for k in range(100):
        spool.append("Hive/EC2", datums(200, start=1e9 + k * 1000))
    assert spool.total_bytes <= 1 << 20
    kept = spool.pending_datums
    assert drops.counts["spool_full"] == 100 * 200 - kept > 0
    # What is kept is the newest.
    assert max(r.oldest for r in spool.records()) == 1e9 + 99 * 1000


def seg_bytes(directory: Path) -> int:
    """What the spool's segments take on disk, by the files themselves."""
    return sum(p.stat().st_size for p in directory.rglob("*.seg"))


def test_a_shared_bound_makes_the_stuck_account_pay_for_its_backlog(tmp_path: Path) -> None:
    """hypervisor.spool.max_bytes over the default spool and every account's: an account whose
    datums cannot be delivered grows until the bound, then loses its own oldest; the others,
    which deliver, lose nothing. What waits never exceeds the bound; the directory holds at
    most one segment a spool more (delivered records sharing a segment with a waiting one)."""
    bound = 1 << 20
    budget = SpoolBudget(bound)
    stuck_drops, flowing_drops = Drops(), Drops()
    stuck = Spool(
        tmp_path / "accounts" / "111111111111", ledger=stuck_drops, max_bytes=bound, budget=budget
    )
    flowing = Spool(tmp_path, ledger=flowing_drops, max_bytes=bound, budget=budget)
    stuck.open()
    flowing.open()
    peak = 0
    in_flight: list[Record] = []
    for k in range(150):
        stuck.append("Hive/EC2", datums(200, start=1e9 + k * 1000))
        peak = max(peak, seg_bytes(tmp_path))
        in_flight.append(flowing.append("Hive/EC2", datums(200, start=1e9 + k * 1000)))
        peak = max(peak, seg_bytes(tmp_path))
        if len(in_flight) > 2:  # delivered two cycles late
            flowing.done(in_flight.pop(0))
        flowing.commit()
    assert budget.waiting_bytes <= bound
    assert peak <= bound + 2 * flowing.segment_bytes
    assert budget.total_bytes == seg_bytes(tmp_path)
    assert stuck_drops.counts["spool_full"] == 150 * 200 - stuck.pending_datums > 0
    assert flowing_drops.counts == Counter()
    assert [r.oldest for r in flowing.records()] == [1e9 + 148_000, 1e9 + 149_000]
    # What the stuck account kept is its newest.
    assert max(r.oldest for r in stuck.records()) == 1e9 + 149 * 1000
    assert "spools over 1048576 bytes together" in stuck_drops.details[0]


def test_under_a_shared_bound_accounts_that_deliver_lose_nothing(tmp_path: Path) -> None:
    """Ten accounts that deliver every cycle (one record late) under a bound smaller than their
    segments together: what is delivered but still in a segment is reclaimed before anything
    waiting is given up, so nobody loses a datum; on disk, at most a segment a spool beyond
    what waits."""
    bound = 256 << 10  # their segments (64 KiB each) together take up to 750 KB
    budget = SpoolBudget(bound)
    spools: list[tuple[Spool, Drops, list[Record]]] = []
    for n in range(10):
        drops = Drops()
        spool = Spool(tmp_path / f"{n:012d}", ledger=drops, max_bytes=bound, budget=budget)
        spool.open()
        spools.append((spool, drops, []))
    peak = 0
    for k in range(300):
        for spool, _, in_flight in spools:
            in_flight.append(spool.append("Hive/EC2", datums(200, start=1e9 + k * 1000)))
            if len(in_flight) > 1:
                spool.done(in_flight.pop(0))
            spool.commit()
            peak = max(peak, seg_bytes(tmp_path))
    segment = spools[0][0].segment_bytes
    assert peak <= bound + 10 * segment
    for spool, drops, _ in spools:
        assert drops.counts == Counter()
        assert [r.oldest for r in spool.records()] == [1e9 + 299_000]


def test_a_spool_that_gave_up_its_only_segment_starts_afresh(tmp_path: Path) -> None:
    """Discarding the segment being appended to (a spool with one segment, the largest under
    a shared bound): its records are counted, the next append opens a new segment, and a
    restart replays exactly what was appended after, done marks included."""
    drops = Drops()
    spool = open_spool(tmp_path, drops)
    spool.append("Hive/EC2", datums(5))
    assert spool.discard_oldest("test") and spool.pending_datums == 0
    assert drops.counts["spool_full"] == 5 and not list(tmp_path.glob("*.seg"))
    kept = spool.append("Hive/EC2", datums(3, start=2e9))
    sent = spool.append("Hive/EBS", datums(2, ns="Hive/EBS"))
    spool.done(sent)
    spool.commit()
    spool.close()
    again = open_spool(tmp_path)
    assert [(r.namespace, r.count) for r in again.records()] == [("Hive/EC2", 3)]
    assert again.load(next(again.records())) == datums(3, start=2e9)
    assert kept.count == 3


@pytest.mark.parametrize("emptied_by", ["discarded", "delivered"])
def test_a_spool_emptied_then_restarted_never_takes_new_records_as_delivered(
    tmp_path: Path, emptied_by: str
) -> None:
    """A spool whose segments are all gone (its only segment discarded under the shared bound,
    or everything delivered) keeps a cursor naming a segment past the files. A restart then
    appends to a new segment; if the process dies before it commits, the next start must
    replay those records, not take them for delivered (the cursor is ahead of them)."""
    spool = open_spool(tmp_path)
    record = spool.append("Hive/EC2", datums(4))
    if emptied_by == "discarded":
        spool.discard_oldest("test")
    else:
        spool.done(record)
    spool.close()
    again = open_spool(tmp_path)  # a run that appends nothing (an account's VMs away)
    again.close()
    assert not list(tmp_path.glob("*.seg"))  # the cursor names a segment with no file
    third = open_spool(tmp_path)
    third.append("Hive/EC2", datums(3, start=2e9))
    # dies here: no commit, no close
    fourth = open_spool(tmp_path)
    assert [(r.namespace, r.count) for r in fourth.records()] == [("Hive/EC2", 3)]
    assert fourth.load(next(fourth.records())) == datums(3, start=2e9)


def test_unwritable_directory_falls_back_to_bounded_memory(tmp_path: Path) -> None:
    drops = Drops()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = open_spool(blocker / "spool", drops, memory_max_datums=1000)
    for k in range(15):
        spool.append("Hive/EC2", datums(100, start=1e9 + k * 1000))
    assert not spool.disk_ok and spool.write_errors == 15
    assert spool.memory_datums == 1000
    assert drops.counts["memory_full"] == 500
    first = next(spool.records())
    assert spool.load(first) == datums(100, start=1e9 + 5000)
    spool.close()
    assert drops.counts["shutdown_memory"] == 1000


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root for tmpfs")
def test_full_disk_degrades_to_memory_and_recovers(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        drops = Drops()
        spool = open_spool(mnt / "spool", drops, fsync=0)
        written = 0
        while spool.disk_ok:
            spool.append("Hive/EC2", datums(200, start=1e9 + written))
            written += 1
            assert written < 1000
        assert spool.write_errors == 1 and spool.memory_datums == 200
        # The failed write left no torn record behind: a fresh reader sees only whole ones.
        for seg in sorted((mnt / "spool").glob("*.seg")):
            list(read_records(seg.read_bytes()))
        # Space comes back (the endpoint drained older records): disk writes resume.
        for r in list(spool.records())[: written // 2]:
            spool.done(r)
        spool.commit()
        spool.append("Hive/EC2", datums(10, start=2e9))
        assert spool.disk_ok
        assert spool.pending_datums == (written - 1 - written // 2) * 200 + 200 + 10
        assert drops.counts == Counter()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


names = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)
datum_strategy = st.builds(
    Datum,
    namespace=st.just("NS"),
    name=names,
    dimensions=st.lists(st.tuples(names, names), max_size=4).map(tuple),
    value=st.floats(allow_nan=False, allow_infinity=False),
    unit=st.sampled_from(["Count", "Bytes", "Percent"]),
    timestamp=st.floats(0, 4e9),
    storage_resolution=st.sampled_from([1, 60]),
    samples=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3).map(tuple),
)


@given(st.lists(datum_strategy, min_size=1, max_size=30))
def test_payload_round_trip(ds: list[Datum]) -> None:
    assert decode_payload(encode_payload("NS", ds)) == ("NS", ds)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=6), st.data())
def test_any_truncation_yields_a_prefix(
    tmp_path: Path, sizes: list[int], data: st.DataObject
) -> None:
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    spool = open_spool(d)
    for n in sizes:
        spool.append("NS", datums(n, ns="NS"))
    spool.close()
    [seg] = d.glob("*.seg")
    raw = seg.read_bytes()
    cut = data.draw(st.integers(0, len(raw)))
    seg.write_bytes(raw[:cut])
    drops = Drops()
    again = open_spool(d, drops)
    got = [r.count for r in again.records()]
    assert got == sizes[: len(got)]  # a prefix, in order
    lost = sum(sizes) - sum(got)
    # Whatever is lost was counted, except a record whose very header was cut.
    assert drops.counts["spool_corrupt"] <= lost
    if cut == len(raw):
        assert got == sizes


# -- request sizing -----------------------------------------------------------------------------

request_datums = st.builds(
    Datum,
    namespace=st.sampled_from(["A", "B", "C"]),
    name=st.text(min_size=1, max_size=255),
    dimensions=st.lists(
        st.tuples(st.text(min_size=1, max_size=255), st.text(min_size=1, max_size=1024)),
        max_size=30,
    ).map(tuple),
    value=st.floats(allow_nan=False, allow_infinity=False),
    unit=st.just("Count"),
    timestamp=st.just(0.0),
)


@given(st.lists(request_datums, max_size=2500))
def test_batches_respect_limits_and_keep_everything(items: list[Datum]) -> None:
    items.sort(key=lambda d: d.namespace)
    out = list(batches(items))
    assert [d for b, _ in out for d in b] == items
    for b, size in out:
        assert 1 <= len(b) <= MAX_DATUMS_PER_REQUEST
        assert len({d.namespace for d in b}) == 1
        assert sum(datum_wire_size(d) for d in b) < MAX_REQUEST_BYTES
        assert size == sum(datum_wire_size(d) for d in b)


@given(
    st.lists(
        st.one_of(st.integers(400, 2000), st.integers(2000, 400_000), st.just(997_000)),
        max_size=3000,
    )
)
def test_add_splits_a_namespace_as_sized_batches_does(sizes: list[int]) -> None:
    """`Spool.add`'s split of one namespace's datums (a run of 1000 that fits taken whole) is
    the greedy fill of `sized_batches`, batch for batch."""
    items = [Datum("N", "m", (), float(i), "Count", 0.0) for i in range(len(sizes))]
    split = [(items[a:b], total) for a, b, total in _ranges(sizes)]
    assert split == list(sized_batches(zip(items, sizes, strict=True)))


def test_batches_split_at_1000() -> None:
    items = [Datum("N", "m", (), 1.0, "Count", 0.0)] * 2500
    assert [len(b) for b, _ in batches(items)] == [1000, 1000, 500]


def test_add_sizes_each_record_once_and_a_replay_agrees(tmp_path: Path) -> None:
    mixed = datums(1500, ns="Hive/EC2") + datums(3, ns="CWAgent") + datums(2, ns="Hive/EBS")
    spool = open_spool(tmp_path)
    records = spool.add(reversed(mixed))
    assert [(r.namespace, r.count) for r in records] == [
        ("CWAgent", 3),
        ("Hive/EBS", 2),
        ("Hive/EC2", 1000),
        ("Hive/EC2", 500),
    ]
    assert spool.datums_spooled == 1505
    assert all(r.wire_bytes == sum(map(datum_wire_size, spool.load(r))) > 0 for r in records)
    assert spool.add([]) == [] and spool.datums_spooled == 1505
    spool.close()
    again = open_spool(tmp_path)
    assert [r.wire_bytes for r in again.records()] == [r.wire_bytes for r in records]
    assert again.datums_spooled == 0  # counts what this process added


def test_add_writes_the_audit_log(tmp_path: Path) -> None:
    audit = io.StringIO()
    spool = Spool(tmp_path, audit=audit)
    spool.open()
    spool.add(datums(2, ns="B") + datums(1, ns="A"))
    lines = [json.loads(line) for line in audit.getvalue().splitlines()]
    assert lines == [d.as_json() for d in datums(1, ns="A") + datums(2, ns="B")]


def test_next_request_fills_one_namespace_within_the_limits(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    now = 1_700_100_000.0
    a1 = spool.append("A", datums(600, ns="A"))
    b1 = spool.append("B", datums(10, ns="B"))
    a2 = spool.append("A", datums(300, ns="A"))
    a3 = spool.append("A", datums(200, ns="A"))  # 1100 with a1 and a2: over 1000
    a4 = spool.append("A", datums(100, ns="A"))  # would fit, but the fill stops at a3
    group = spool.next_request(now)
    assert [(r.seq, len(ds)) for r, ds in group] == [(a1.seq, 600), (a2.seq, 300)]
    assert group[0][1] == datums(600, ns="A")
    for r, _ in group:
        spool.done(r)
    assert [r.seq for r, _ in spool.next_request(now)] == [b1.seq]
    spool.done(b1)
    assert [r.seq for r, _ in spool.next_request(now)] == [a3.seq, a4.seq]


def test_next_request_adds_record_sizes_up_to_1_mb(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    each = datum_wire_size(datums(1)[0]._replace(name="x" * 255))
    n = (MAX_REQUEST_BYTES - REQUEST_OVERHEAD_BYTES) // (2 * each)  # two records fit, not three
    big = [d._replace(name="x" * 255) for d in datums(n)]
    records = [spool.append("Hive/EC2", big) for _ in range(3)]
    assert REQUEST_OVERHEAD_BYTES + 3 * records[0].wire_bytes > MAX_REQUEST_BYTES
    assert REQUEST_OVERHEAD_BYTES + 2 * records[0].wire_bytes <= MAX_REQUEST_BYTES
    group = spool.next_request(1_700_100_000.0)
    assert [r.seq for r, _ in group] == [r.seq for r in records[:2]]


def test_next_request_drops_too_old_and_unreadable_with_reasons(tmp_path: Path) -> None:
    drops = Drops()
    now = 1_700_000_000.0 + MAX_AGE_S + 1.5  # datums(n) at +0 and +1 are too old, +2... fresh
    spool = open_spool(tmp_path, drops)
    spool.append("Hive/EC2", datums(2))  # all too old
    spool.append("Hive/EC2", datums(5))  # two too old, three fresh
    spool.append("Hive/EC2", datums(7, start=now))  # fresh, but unreadable when sent
    spool.close()
    again = open_spool(tmp_path, drops)
    [_old, mixed, bad] = list(again.records())
    assert bad.datums is None and bad.segment is not None  # read back from disk when sent
    seg = tmp_path / f"{bad.segment:016d}.seg"
    data = bytearray(seg.read_bytes())
    data[bad.offset + HEADER.size + 3] ^= 0x40
    seg.write_bytes(bytes(data))
    group = again.next_request(now)
    assert [(r.seq, ds) for r, ds in group] == [(mixed.seq, datums(5)[2:])]
    assert drops.counts == Counter({"too_old": 4, "spool_corrupt": 7})
    assert [r.seq for r in again.records()] == [mixed.seq]  # the others are finished
    assert [r.seq for r, _ in again.next_request(now)] == [mixed.seq]
    assert drops.counts == Counter({"too_old": 4, "spool_corrupt": 7})  # a retry: none twice


# -- records shaped for delivery ("HW": JSON fragments) and those written before them ----------


RECENT = float(int(time.time()) // 3600 * 3600)  # one "now" for every example of a run


def fresh(n: int, start: float, ns: str = "Hive/EC2") -> list[Datum]:
    """Datums `add` keeps as JSON fragments (recent: `add` checks them against the clock)."""
    return [d._replace(timestamp=start + k) for k, d in enumerate(datums(n, ns=ns))]


def magics(directory: Path) -> list[bytes]:
    out = []
    for seg in sorted(directory.glob("*.seg")):
        data = seg.read_bytes()
        pos = 0
        while pos < len(data):
            magic, _count, length, _crc = HEADER.unpack_from(data, pos)
            out.append(magic)
            pos += HEADER.size + length
    return out


def test_add_writes_fragments_and_they_read_back_as_the_datums(tmp_path: Path) -> None:
    now = time.time()
    basic = fresh(1, now, ns="Hive/EBS")[0]._replace(samples=(1.0, 2.0))
    spool = open_spool(tmp_path)
    records = spool.add([*fresh(3, now), basic, *fresh(2, now, ns="CWAgent")])
    # JSON fragments where no datum has samples; the datums as they are where one has
    assert [(r.namespace, isinstance(spool.load(r), WireDatums)) for r in records] == [
        ("CWAgent", True),
        ("Hive/EBS", False),
        ("Hive/EC2", True),
    ]
    assert magics(tmp_path) == [MAGIC_WIRE, MAGIC, MAGIC_WIRE]
    spool.close()
    again = open_spool(tmp_path)
    got = [(r.namespace, list(again.load(r)), r.wire_bytes, r.oldest) for r in again.records()]
    assert got == [(r.namespace, list(spool.load(r)), r.wire_bytes, r.oldest) for r in records]
    assert [list(again.load(r)) for r in again.records()] == [
        fresh(2, now, ns="CWAgent"),
        [basic],
        fresh(3, now),
    ]


def test_torn_and_flipped_fragment_records_are_counted_not_fatal(tmp_path: Path) -> None:
    now = time.time()
    spool = open_spool(tmp_path)
    for k, n in enumerate((4, 6, 8)):
        spool.add(fresh(n, now + 100 * k))
    spool.close()
    [seg] = tmp_path.glob("*.seg")
    data = bytearray(seg.read_bytes())
    first = HEADER.size + HEADER.unpack_from(data, 0)[2]
    data[first + HEADER.size + 5] ^= 0x40  # inside the second record's payload
    seg.write_bytes(bytes(data[:-7]))  # and the third torn
    drops = Drops()
    again = open_spool(tmp_path, drops)
    assert [r.count for r in again.records()] == [4]
    assert drops.counts == Counter({"spool_corrupt": 6})  # the rest of the segment skipped
    assert "checksum mismatch" in drops.details[0]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=5), st.data())
def test_any_truncation_of_fragment_records_yields_a_prefix(
    tmp_path: Path, sizes: list[int], data: st.DataObject
) -> None:
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    now = RECENT
    spool = open_spool(d)
    for k, n in enumerate(sizes):
        spool.add(fresh(n, now + 1000 * k, ns="NS"))
    spool.close()
    [seg] = d.glob("*.seg")
    raw = seg.read_bytes()
    cut = data.draw(st.integers(0, len(raw)))
    seg.write_bytes(raw[:cut])
    drops = Drops()
    again = open_spool(d, drops)
    got = [r.count for r in again.records()]
    assert got == sizes[: len(got)]
    assert drops.counts["spool_corrupt"] <= sum(sizes) - sum(got)
    for k, r in enumerate(again.records()):
        assert list(again.load(r)) == fresh(sizes[k], now + 1000 * k, ns="NS")


def test_a_fragment_record_that_decodes_to_nonsense_is_corrupt() -> None:
    import msgpack

    from hiveagent.encoding import deflate

    good = [b"Hive/EC2", deflate.compress(b'{"a": 1}'), [1.0], [400]]
    for bad in (
        [b"Hive/EC2", b"not deflated", [1.0], [400]],
        [b"Hive/EC2", deflate.compress(b'{"a": 1}\n{"b": 2}'), [1.0], [400]],  # 2 fragments
        ["Hive/EC2", deflate.compress(b'{"a": 1}'), [1.0], ["400"]],
        [1, deflate.compress(b'{"a": 1}'), [1.0], [400]],
        "not a list",
    ):
        with pytest.raises(ValueError, match="undecodable"):
            decode_wire_payload(msgpack.packb(bad, use_bin_type=False))
    ns, wire = decode_wire_payload(msgpack.packb(["N", *good[1:]], use_bin_type=True))
    assert ns == "N" and wire.fragments == ['{"a": 1}'] and wire.sizes == [400]


T_BEFORE = 1_700_000_000.0


def before_issue_18(k: int) -> list[Datum]:
    """The datums of tests/data/spool-hr (written by the version before issue 18)."""
    t = T_BEFORE + 60 * k
    i, v = (("InstanceId", "i-0123456789abcdef0"),), (("VolumeId", "vol-0123456789abcdef0"),)
    return [
        Datum("Hive/EC2", "CPUUtilization", i, 12.5 + k, "Percent", t, 60),
        Datum("Hive/EC2", "NetworkIn", i, 2048.0 * k, "Bytes", t, 60, (512.0, 1536.0 * k)),
        Datum("Hive/EBS", "VolumeQueueLength", v, 0.25, "Count", t - 60, 60),
        Datum("CWAgent", "naïve_metric", (*i, ("path", "/var/lib")), 1e100, "None", t + 0.125, 1),
        Datum("CWAgent", "disk_used_percent", (), 99.99999999999999, "Percent", t, 60),
    ]


def test_a_spool_written_before_the_wire_records_replays(tmp_path: Path) -> None:
    """Replay after the upgrade, on the files the previous version wrote (tests/data/spool-hr):
    what it had not delivered comes back, in order, as it was, its delivered records (the
    cursor, a done mark) skipped; new cycles are added as fragment records beside them, and a
    restart replays both kinds; every one of them is sent and accepted, in both protocols."""
    import asyncio

    from hiveagent.config import PublishSettings
    from hiveagent.publisher import Publisher
    from hiveagent.wire import make_client
    from tests.strict_endpoint import StrictEndpoint

    src = Path(__file__).parent / "data" / "spool-hr"
    ebs = Datum(
        "Hive/EBS",
        "VolumeIdleTime",
        (("VolumeId", "vol-0123456789abcdef0"),),
        59.5,
        "Seconds",
        T_BEFORE + 120,
        60,
    )

    def by_ns(ds: list[Datum], ns: str) -> list[Datum]:
        return [d for d in ds if d.namespace == ns]

    old = [
        by_ns(before_issue_18(0), "Hive/EBS"),
        by_ns(before_issue_18(1), "CWAgent"),
        by_ns(before_issue_18(1), "Hive/EBS"),
        by_ns(before_issue_18(1), "Hive/EC2"),
        [ebs],
    ]
    for protocol in ("json", "query"):
        d = tmp_path / protocol
        shutil.copytree(src, d)
        spool = open_spool(d)
        assert [list(spool.load(r)) for r in spool.records()] == old
        assert all(r.replayed for r in spool.records()) and magics(d) == [MAGIC] * 7
        now = time.time()
        # (namespaces of their own: a request takes records of one namespace, and no endpoint
        # takes datums of 2023 and of now together)
        new = fresh(3, now, ns="New/EC2") + fresh(2, now, ns="New/CWAgent")
        spool.add(new)
        spool.close()
        again = open_spool(d)
        assert [list(again.load(r)) for r in again.records()] == [
            *old,
            fresh(2, now, ns="New/CWAgent"),
            fresh(3, now, ns="New/EC2"),
        ]
        assert magics(d) == [MAGIC] * 7 + [MAGIC_WIRE] * 2
        # The old datums are long past CloudWatch's 14 days: the endpoint's clock is set back
        # for them (they go first, oldest first), then to now for the new ones.
        n_old = sum(map(len, old))
        ep = StrictEndpoint("aws")

        def clock(e: StrictEndpoint = ep, n: int = n_old) -> float:
            return T_BEFORE + 3600 if len(e.accepted) < n else time.time()

        ep.clock = clock
        with ep, pytest.MonkeyPatch.context() as mp:
            mp.setattr(hiveagent.spool, "MAX_AGE_S", now)  # nothing is too old to send
            client = make_client("us-east-1", ep.url, 5.0, protocol)
            pub = Publisher(client, again, PublishSettings(breaker_failures=100))
            assert asyncio.run(pub.flush())
            got = sorted((a.namespace, a.name, a.timestamp) for a in ep.accepted)
        sent = [x for ds in old for x in ds] + new
        assert ep.refusals == [] and pub.stats["datums_sent"] == len(sent) == len(got)
        assert got == sorted((x.namespace, x.name, round(x.timestamp, 6)) for x in sent)
