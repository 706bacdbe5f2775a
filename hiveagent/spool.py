"""The disk spool: every batch is written here before it is sent, and forgotten only after the
endpoint accepted it (or it was dropped with a counted reason). At-least-once delivery.

Layout under the spool directory:

- `<seq:016d>.seg` segment files of records, appended in order. A process always starts a new
  segment, so a torn tail left by a crash is never appended to.
- `cursor`: msgpack `[segment, offset]` of the oldest record not yet done, written atomically
  (temporary file, fsync, rename). Everything before it is done; segments wholly before it are
  deleted.
- `done`: `segment:u32 offset:u32` pairs (little endian) of records done while an older one was
  still pending, appended before the cursor is written and emptied once the cursor has passed
  them all. A restart skips them, so only what was in flight when the process died is sent
  again (and such records come back marked `replayed`, for the publisher to tell a refused
  duplicate apart from a bad datum).

A record is a 12-byte header `magic:2 count:u16 length:u32 crc32:u32` (little endian) and
`length` bytes of msgpack, in one of two kinds:

- `"HW"`, shaped for delivery (what `add` writes when none of the datums has samples and the
  publisher speaks JSON): `[namespace, deflate(fragments joined by "\n"), [timestamp, ...],
  [wire size, ...]]`, the fragments being the datums' JSON objects as a PutMetricData body
  has them (hiveagent.encoding), so a record read back is sent without decoding it;
- `"HR"`, the datums as they are (every version wrote these; `append`, basic-monitoring
  datums with samples, and awsQuery publishers still do): `[namespace, [[name, [k, v, k, v,
  ...], value, unit, timestamp, resolution(, [sample, ...])], ...]]`.

The count in the header lets a record whose payload is torn or corrupt be counted as that many
dropped datums.

Records may be marked done out of order (one request per namespace); the cursor only moves over
the done prefix, and the `done` marks cover the rest, so a crash resends at most the request
that was in flight.
When the disk cannot be written (full, read-only, I/O error), records are kept in a bounded
memory queue instead, and the loss of those at shutdown or overflow is counted.

The spool also owns request sizing, once: `add` groups a cycle's datums by namespace into
records that each fit one PutMetricData request (at most 1000 datums, under 1 MB on the wire),
and every Record carries its wire size, worked out when it is appended or read back at open.
`next_request` fills a request from the oldest pending record and later ones of the same
namespace by adding those sizes. Every datum given up (corrupt records, the byte and memory
bounds, datums too old for the endpoint) is counted in the DropLedger.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import logging
import operator
import os
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack

from hiveagent.encoding import BodyEncoder, WireDatums, deflate
from hiveagent.ledger import DropLedger
from hiveagent.model import Datum
from hiveagent.wire import (
    AWS_RULES,
    MAX_ABS_VALUE,
    MAX_AGE_S,
    MAX_DATUMS_PER_REQUEST,
    MAX_FUTURE_S,
    MAX_REQUEST_BYTES,
    REQUEST_OVERHEAD_BYTES,
    UNITS_JSON,
    Rules,
    checked,
    datum_label,
    datum_wire_size,
)

log = logging.getLogger(__name__)

HEADER = struct.Struct("<2sHII")
MAGIC = b"HR"  # the datums as they are
MAGIC_WIRE = b"HW"  # their JSON fragments (hiveagent.encoding.WireDatums)
MAX_RECORD_DATUMS = 0xFFFF
MAX_RECORD_BYTES = 8 << 20
HOT_CACHE_DATUMS = 50_000  # datums of freshly written records kept in memory, not re-read
CURSOR = "cursor"
DONE = "done"
DONE_MARK = struct.Struct("<II")  # segment, offset of a record done out of order
SCAN_AHEAD = 2000  # pending records looked at to fill one request


class SpoolCorrupt(Exception):
    """A record cannot be read back; `count` datums (from its header) are lost."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


@dataclass
class Record:
    """One spooled batch: a single namespace, at most 1000 datums."""

    seq: int
    namespace: str
    count: int
    oldest: float  # earliest datum timestamp, epoch seconds
    segment: int | None  # None: memory-only (the disk could not be written)
    offset: int = 0
    length: int = 0  # header + payload bytes
    wire_bytes: int = 0  # its datums' datum_wire_size, summed once (at append or open)
    # kept for memory-only records, and for fresh ones (HOT_CACHE_DATUMS): made by `add`, as
    # WireDatums (their JSON fragments) when none of them has samples
    datums: Sequence[Datum] | None = None
    too_old_counted: int = 0  # datums of it already counted as dropped too_old
    replayed: bool = False  # read back at open: it may have reached the endpoint before


# one namespace's records, with the datums to send (WireDatums: their JSON fragments)
Request = list[tuple[Record, Sequence[Datum]]]


def batches(datums: Iterable[Datum]) -> Iterator[tuple[list[Datum], int]]:
    """Consecutive runs of one namespace, each <= 1000 datums and < 1 MB on the wire, with the
    wire bytes of their datums (request overhead not included)."""
    return sized_batches((d, datum_wire_size(d)) for d in datums)


def sized_batches(items: Iterable[tuple[Datum, int]]) -> Iterator[tuple[list[Datum], int]]:
    """`batches` of (datum, its datum_wire_size) pairs."""
    batch: list[Datum] = []
    size = REQUEST_OVERHEAD_BYTES
    for d, s in items:
        if batch and (
            d.namespace != batch[0].namespace
            or len(batch) >= MAX_DATUMS_PER_REQUEST
            or size + s > MAX_REQUEST_BYTES
        ):
            yield batch, size - REQUEST_OVERHEAD_BYTES
            batch, size = [], REQUEST_OVERHEAD_BYTES
        batch.append(d)
        size += s
    if batch:
        yield batch, size - REQUEST_OVERHEAD_BYTES


_TIMESTAMP = operator.attrgetter("timestamp")
_UNSEEN = "?"  # a namespace without a verdict in Rules.namespaces
# one namespace's datums of a cycle: the datums, their wire sizes, JSON fragments (or None),
# timestamps
_Group = tuple[list[Datum], list[int], list[str | None] | None, list[float]]
_new_datum = tuple.__new__  # a Datum from its eight fields, without the keyword handling
_flatten = itertools.chain.from_iterable


def encode_payload(namespace: str, datums: Sequence[Datum]) -> bytes:
    rows: list[list[Any]] = []
    append = rows.append
    for _, name, dims, value, unit, ts, res, samples in datums:
        if samples:
            append([name, list(_flatten(dims)), value, unit, ts, res, list(samples)])
        else:
            append([name, list(_flatten(dims)), value, unit, ts, res])
    return msgpack.packb([namespace, rows], use_bin_type=True)  # type: ignore[no-any-return]


def decode_payload(payload: bytes) -> tuple[str, list[Datum]]:
    """Inverse of encode_payload. Raises ValueError on anything malformed."""
    try:
        namespace, rows = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=False)
        datums: list[Datum] = []
        append = datums.append
        dims_of: dict[Any, Any] = {}  # a record's datums share a few dimension sets
        for row in rows:
            if len(row) == 6:
                name, flat, value, unit, ts, res = row
                samples: tuple[float, ...] = ()
            else:
                name, flat, value, unit, ts, res, *rest = row
                samples = tuple(map(float, rest[0])) if rest else ()
            dims = dims_of.get(flat)
            if dims is None:
                dims = dims_of[flat] = tuple(zip(flat[0::2], flat[1::2], strict=True))
            append(
                _new_datum(
                    Datum, (namespace, name, dims, float(value), unit, float(ts), int(res), samples)
                )
            )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"undecodable record: {exc}") from None
    if not isinstance(namespace, str):
        raise ValueError("undecodable record: namespace is not a string")
    return namespace, datums


def _ranges(sizes: list[int]) -> Iterator[tuple[int, int, int]]:
    """`sized_batches` of one namespace's datums, given their sizes, as (start, end, wire
    bytes): the same batches, a run of 1000 that fits taken whole."""
    start, n = 0, len(sizes)
    while start < n:
        end = min(n, start + MAX_DATUMS_PER_REQUEST)
        total = sum(itertools.islice(sizes, start, end))
        if REQUEST_OVERHEAD_BYTES + total > MAX_REQUEST_BYTES:  # the greedy fill, as there
            end, total = start + 1, sizes[start]
            while end < n and end - start < MAX_DATUMS_PER_REQUEST:
                if REQUEST_OVERHEAD_BYTES + total + sizes[end] > MAX_REQUEST_BYTES:
                    break
                total += sizes[end]
                end += 1
        yield start, end, total
        start = end


def _oldest(datums: Sequence[Datum]) -> float:
    if isinstance(datums, WireDatums):
        return min(datums.timestamps)
    return float(min(map(_TIMESTAMP, datums)))


def _wire_bytes(datums: Sequence[Datum]) -> int:
    if isinstance(datums, WireDatums):
        return sum(datums.sizes)
    return sum(map(datum_wire_size, datums))


def encode_record(namespace: str, datums: Sequence[Datum]) -> bytes:
    if not 0 < len(datums) <= MAX_RECORD_DATUMS:
        raise ValueError(f"a record holds 1..{MAX_RECORD_DATUMS} datums, not {len(datums)}")
    payload = encode_payload(namespace, datums)
    return HEADER.pack(MAGIC, len(datums), len(payload), zlib.crc32(payload)) + payload


def encode_wire_record(datums: WireDatums) -> bytes:
    """An "HW" record of datums kept as their JSON fragments."""
    if not 0 < len(datums) <= MAX_RECORD_DATUMS:
        raise ValueError(f"a record holds 1..{MAX_RECORD_DATUMS} datums, not {len(datums)}")
    text = "\n".join(datums.fragments).encode()  # JSON escapes every newline in a string
    payload: bytes = msgpack.packb(
        [datums.namespace, deflate.compress(text, 1), datums.timestamps, datums.sizes],
        use_bin_type=True,
    )
    header: bytes = HEADER.pack(MAGIC_WIRE, len(datums), len(payload), zlib.crc32(payload))
    return header + payload


def decode_wire_payload(payload: bytes) -> tuple[str, WireDatums]:
    """Inverse of the payload of encode_wire_record. Raises ValueError on anything malformed."""
    try:
        namespace, blob, timestamps, sizes = msgpack.unpackb(payload, raw=False)
        fragments = deflate.decompress(blob).decode("ascii").split("\n")
    except (ValueError, TypeError, zlib.error, deflate.error, msgpack.UnpackException) as exc:
        raise ValueError(f"undecodable record: {exc}") from None
    if not (
        isinstance(namespace, str)
        and isinstance(timestamps, list)
        and isinstance(sizes, list)
        and len(fragments) == len(timestamps) == len(sizes)
        and all(isinstance(t, float | int) for t in timestamps)
        and all(isinstance(s, int) for s in sizes)
    ):
        raise ValueError("undecodable record: not a namespace and fragments, times and sizes")
    return namespace, WireDatums(namespace, fragments, timestamps, sizes)


def read_records(data: bytes, start: int = 0) -> Iterator[tuple[int, int, str, Sequence[Datum]]]:
    """(offset, length, namespace, datums) of each record in a segment's bytes from `start`
    (the datums of an "HW" record as WireDatums). Stops with SpoolCorrupt at the first torn or
    corrupt record."""
    pos = start
    while pos < len(data):
        if len(data) - pos < HEADER.size:
            raise SpoolCorrupt(f"torn header at offset {pos}", 0)
        magic, count, length, crc = HEADER.unpack_from(data, pos)
        if magic not in (MAGIC, MAGIC_WIRE) or length > MAX_RECORD_BYTES:
            raise SpoolCorrupt(f"bad record header at offset {pos}", 0)
        payload = data[pos + HEADER.size : pos + HEADER.size + length]
        if len(payload) < length:
            raise SpoolCorrupt(f"torn record at offset {pos} ({count} datums)", count)
        if zlib.crc32(payload) != crc:
            raise SpoolCorrupt(f"checksum mismatch at offset {pos} ({count} datums)", count)
        try:
            if magic == MAGIC_WIRE:
                namespace, datums = decode_wire_payload(payload)
            else:
                namespace, datums = decode_payload(payload)  # type: ignore[assignment]
        except ValueError as exc:
            raise SpoolCorrupt(f"{exc} at offset {pos}", count) from None
        yield pos, HEADER.size + length, namespace, datums
        pos += HEADER.size + length


class SpoolBudget:
    """One byte bound over several spools: `hypervisor.spool.max_bytes` holds for what waits
    in the default route's spool and in every account's, together. Over it, first every spool
    deletes the segments in which nothing waits any more (`reclaim`); then the spool with the
    most waiting gives up its oldest segment: an account whose datums cannot be delivered
    pays for its own backlog, and one that delivers keeps what it has. On disk, a spool may
    also hold delivered records in a segment that still has one waiting: at most about one
    segment (max_bytes / 64) a spool beyond the bound."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.spools: list[Spool] = []

    @property
    def waiting_bytes(self) -> int:
        return sum(s.waiting_bytes for s in self.spools)

    @property
    def total_bytes(self) -> int:
        """Bytes on disk, every spool's segments."""
        return sum(s.total_bytes for s in self.spools)

    def enforce(self) -> None:
        if self.waiting_bytes <= self.max_bytes:
            return
        for spool in self.spools:  # first what holds nothing to send any more
            spool.reclaim()
        while self.waiting_bytes > self.max_bytes:
            largest = max(self.spools, key=lambda s: s.waiting_bytes)
            if not largest.discard_oldest(
                f"spools over {self.max_bytes} bytes together; {largest.dir} has the most waiting"
            ):
                return


class Spool:
    """Segment files plus a cursor; see the module docstring."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 256 << 20,
        fsync: bool = True,
        memory_max_datums: int = 100_000,
        ledger: DropLedger | None = None,
        audit: IO[str] | None = None,
        rules: Rules = AWS_RULES,
        budget: SpoolBudget | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.budget = budget  # a bound shared with other spools (each account's)
        if budget is not None:
            budget.spools.append(self)
        # Under a shared bound, smaller segments: each spool's delivered records wait on disk
        # until their segment is done with (at most one segment a spool, see SpoolBudget)
        self.segment_bytes = max(64 << 10, max_bytes // (64 if budget is not None else 8))
        self.fsync = fsync
        self.memory_max_datums = memory_max_datums
        self.ledger = ledger or DropLedger()
        self.audit = audit  # every datum added is written here as a JSON line
        self.rules = rules  # what the endpoint takes (metrics.datum_shape, Spinifex or not)
        # `add` keeps fresh records as their JSON fragments (what the publisher sends, when it
        # speaks JSON: it says so here)
        self.json_fragments = True
        self.encoder = BodyEncoder("json")
        self.pending: OrderedDict[int, Record] = OrderedDict()
        self.segment_sizes: dict[int, int] = {}  # segment number -> bytes on disk
        self.next_seq = 0
        self.active = 0  # the segment appended to (created on the first append)
        self.active_file: io.FileIO | None = None
        self.cursor: tuple[int, int] = (0, 0)
        self.disk_ok = True
        self.memory_datums = 0
        self.cached_datums = 0  # disk records whose datums are also kept in memory
        self._pending_datums = 0
        self.waiting_bytes = 0  # bytes on disk of the records still pending
        self.corrupt_records = 0
        self.write_errors = 0
        self.datums_spooled = 0  # by add()
        self.done_marks: set[tuple[int, int]] = set()  # disk records done, ahead of the cursor
        self.marks_written: set[tuple[int, int]] = set()  # of those, already in the file
        self.marks_in_file = 0  # pairs in the `done` file, obsolete ones included

    # -- opening and replay ------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory, read the cursor and every record after it (oldest first)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            segments = sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())
        except OSError as exc:
            self._disk_failed(f"cannot use spool directory {self.dir}: {exc}")
            return
        self.cursor = self._read_cursor(segments)
        delivered = self._read_done_marks()
        skipped = 0
        for seg in segments:
            path = self._path(seg)
            if seg < self.cursor[0]:
                self._unlink(seg)
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.error("spool: cannot read %s: %s; skipped", path, exc)
                self.corrupt_records += 1
                continue
            self.segment_sizes[seg] = len(data)
            start = self.cursor[1] if seg == self.cursor[0] else 0
            try:
                for offset, length, namespace, datums in read_records(data, start):
                    if (seg, offset) in delivered:
                        skipped += len(datums)
                        self.done_marks.add((seg, offset))
                        self.marks_written.add((seg, offset))
                        continue
                    self._track(
                        Record(
                            self._take_seq(),
                            namespace,
                            len(datums),
                            _oldest(datums),
                            seg,
                            offset,
                            length,
                            wire_bytes=_wire_bytes(datums),
                            replayed=True,
                        )
                    )
            except SpoolCorrupt as exc:
                self.corrupt_records += 1
                self.ledger.drop(
                    exc.count, "spool_corrupt", f"{path}: {exc}; rest of segment skipped"
                )
        # A new segment after every one on disk and never behind the cursor (which may name a
        # segment deleted since: everything was delivered, or discarded), or what is appended
        # now would count as delivered at the next start.
        self.active = max(
            (segments[-1] + 1) if segments else 0,
            self.cursor[0] + (1 if self.cursor[1] else 0),
        )
        self._enforce_limits()  # the bound may have been lowered since the last run
        if self.pending:
            log.info(
                "spool: %d batch(es), %d datum(s) to replay from %s (%d delivered before, skipped)",
                len(self.pending),
                self.pending_datums,
                self.dir,
                skipped,
            )

    def _read_done_marks(self) -> set[tuple[int, int]]:
        """The `done` file's marks at or after the cursor (a torn last pair is ignored)."""
        try:
            data = (self.dir / DONE).read_bytes()
        except FileNotFoundError:
            return set()
        except OSError as exc:
            log.error("spool: cannot read %s: %s; records done before may be resent", DONE, exc)
            return set()
        whole = len(data) - len(data) % DONE_MARK.size
        self.marks_in_file = whole // DONE_MARK.size
        return {m for m in DONE_MARK.iter_unpack(data[:whole]) if m >= self.cursor}

    def _read_cursor(self, segments: list[int]) -> tuple[int, int]:
        path = self.dir / CURSOR
        first = (segments[0], 0) if segments else (0, 0)
        try:
            seg, offset = msgpack.unpackb(path.read_bytes())
            if not (isinstance(seg, int) and isinstance(offset, int) and seg >= 0 <= offset):
                raise ValueError("not two non-negative integers")
            return seg, offset
        except FileNotFoundError:
            return first
        except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
            # Replaying from the start may resend, but loses nothing.
            log.error("spool: cursor unreadable (%s); replaying every segment", exc)
            return first

    # -- appending ----------------------------------------------------------------------------

    def add(self, datums: Iterable[Datum]) -> list[Record]:
        """Spool a cycle's datums: grouped by namespace (in namespace order, each in the order
        given) into records that each fit one request, written with one fsync (kept in memory
        if the disk fails), then audited. Blocking I/O."""
        batches: list[tuple[str, Sequence[Datum], int, Sequence[Datum] | None]] = []
        for namespace, (group, sizes, fragments, stamps) in sorted(self._sendable(datums).items()):
            whole = fragments is not None and None not in fragments
            for start, end, size in _ranges(sizes):
                hot: Sequence[Datum] | None = None
                if whole or (fragments is not None and None not in fragments[start:end]):
                    assert fragments is not None
                    hot = WireDatums(
                        namespace,
                        fragments[start:end],  # type: ignore[arg-type]
                        stamps[start:end],
                        sizes[start:end],
                    )
                batches.append((namespace, group[start:end], size, hot))
        if not batches:
            return []
        records = self._append(batches)
        self.datums_spooled += sum(r.count for r in records)
        if self.audit is not None:
            for _namespace, written, _size, _hot in batches:
                for d in written:
                    self.audit.write(json.dumps(d.as_json()) + "\n")
            self.audit.flush()
        return records

    def _sendable(self, datums: Iterable[Datum]) -> dict[str, _Group]:
        """The datums the endpoint would take (`self.rules`) by namespace, with their wire
        sizes, JSON fragments (None for one with samples; no list when `json_fragments` is off)
        and timestamps; the others are dropped here, counted by reason (`invalid.<why>`),
        instead of failing a request later.

        A datum whose namespace, metric name and dimension set were found good before
        (`Rules`) has the rest checked here, and its fragment made of their remembered JSON."""
        now = time.time()
        rules = self.rules
        namespaces, names, sets = rules.namespaces, rules.metric_names, rules.dimension_sets
        encoder = self.encoder if self.json_fragments else None
        stamps = self.encoder.stamps
        latest = now + MAX_FUTURE_S
        out: dict[str, _Group] = {}
        for d in datums:
            ns, name, dims, value, unit, ts, res, samples = d
            name_hit = names.get(name)
            dims_hit = sets.get(dims)
            if (
                name_hit is None
                or dims_hit is None
                or samples
                or namespaces.get(ns, _UNSEEN) is not None
                or res.__class__ is not int
                or (res != 60 and res != 1)
                or unit not in UNITS_JSON
                or not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE
                or not ts <= latest
            ):  # the whole check: something new, samples, or something to refuse
                why, size = checked(d, now, rules)
                if why is not None:
                    self.ledger.drop(1, f"invalid.{why}", datum_label(d))
                    continue
                fragment = None if encoder is None else encoder.fragment(d)
            else:
                size = name_hit[0] + dims_hit[0]
                fragment = None
                if encoder is not None:
                    stamp = stamps.get(ts)
                    if stamp is None:
                        try:
                            stamp = encoder.json_stamp(ts)
                        except (ValueError, OverflowError, OSError):
                            stamp = None  # too old to send anyway (dropped where it is sent)
                    if stamp is not None:
                        number = repr(value)  # finite: it ends in a digit
                        fragment = (
                            f'{{"MetricName": {name_hit[1]}, "Dimensions": {dims_hit[1]}, '
                            f'"Unit": {UNITS_JSON[unit]}, "StorageResolution": {res}, '
                            f'"Timestamp": {stamp}, "Value": {number}}}'
                        )
            group = out.get(ns)
            if group is None:
                group = out[ns] = ([], [], [] if encoder is not None else None, [])
            group[0].append(d)
            group[1].append(size)
            group[3].append(ts)
            if group[2] is not None:
                group[2].append(fragment)
        return out

    def append(self, namespace: str, datums: Sequence[Datum]) -> Record:
        """Write one batch durably as one record, as is. Blocking I/O."""
        return self.append_many([(namespace, datums)])[0]

    def append_many(self, batches: Sequence[tuple[str, Sequence[Datum]]]) -> list[Record]:
        """Write batches (one record each, as they are) with one fsync. Blocking I/O."""
        return self._append([(ns, ds, sum(map(datum_wire_size, ds)), None) for ns, ds in batches])

    def _append(
        self, batches: Sequence[tuple[str, Sequence[Datum], int, Sequence[Datum] | None]]
    ) -> list[Record]:
        """Write (namespace, datums, wire bytes, the datums as kept in memory or None)
        batches with one fsync for all of them; on a disk error, keep in memory what could not
        be written."""
        records = []
        encoded = []
        for namespace, datums, wire_bytes, hot in batches:
            records.append(
                Record(
                    self._take_seq(),
                    namespace,
                    len(datums),
                    min(map(_TIMESTAMP, datums)),
                    None,
                    datums=list(datums) if hot is None else hot,
                    wire_bytes=wire_bytes,
                )
            )
            if isinstance(hot, WireDatums):  # shaped for delivery
                encoded.append(encode_wire_record(hot))
            else:
                encoded.append(encode_record(namespace, datums))
        try:
            self._write(records, encoded)
        except OSError as exc:
            self.write_errors += 1
            self._disk_failed(f"cannot write to spool {self.dir}: {exc}")
            for r in records:
                self.memory_datums += r.count
        else:
            for r in records:  # on disk now; the newest stay cached so sending needs no read
                if self.cached_datums + r.count <= HOT_CACHE_DATUMS:
                    self.cached_datums += r.count
                else:
                    r.datums = None
            if not self.disk_ok:
                log.warning("spool: writing to %s works again", self.dir)
            self.disk_ok = True
        for r in records:
            self._track(r)
        self._enforce_limits()
        return records

    def _write(self, records: list[Record], encoded: list[bytes]) -> None:
        """All of them or (after a truncate back) none of them."""
        if self.active_file is None or self.segment_sizes[self.active] >= self.segment_bytes:
            self._rotate()
        f = self.active_file
        assert f is not None
        start = self.segment_sizes[self.active]
        try:
            view = memoryview(b"".join(encoded))
            while view:  # unbuffered: a short write is retried, an error raised here
                written = f.write(view)
                if not written:
                    raise OSError(errno.EIO, "write made no progress")
                view = view[written:]
            if self.fsync:
                os.fsync(f.fileno())
        except OSError:
            # Leave no torn record behind if we can; start a new segment if we cannot.
            try:
                f.truncate(start)
                f.seek(start)
            except OSError:
                self._close_active()
            raise
        offset = start
        for r, data in zip(records, encoded, strict=True):
            r.segment, r.offset, r.length = self.active, offset, len(data)
            offset += len(data)
        self.segment_sizes[self.active] = offset

    def _rotate(self) -> None:
        """Open a fresh segment (never one that already holds data)."""
        self._close_active()
        if self.active in self.segment_sizes:
            self.active = max(self.segment_sizes) + 1
        self.dir.mkdir(parents=True, exist_ok=True)
        self.active_file = open(self._path(self.active), "ab", buffering=0)  # noqa: SIM115
        self.segment_sizes[self.active] = self.active_file.tell()

    def _close_active(self) -> None:
        if self.active_file is not None:
            with contextlib.suppress(OSError):
                self.active_file.close()
            self.active_file = None

    def _disk_failed(self, why: str) -> None:
        if self.disk_ok:
            log.error(
                "spool: %s; keeping batches in memory (at most %d datums)",
                why,
                self.memory_max_datums,
            )
        self.disk_ok = False

    # -- reading and completion -------------------------------------------------------------

    def records(self) -> Iterator[Record]:
        """Pending records, oldest first."""
        return iter(list(self.pending.values()))

    def load(self, record: Record) -> Sequence[Datum]:
        """The datums of a pending record (WireDatums as `add` keeps them). Raises
        SpoolCorrupt if they cannot be read back."""
        if record.datums is not None:
            if isinstance(record.datums, WireDatums):
                return record.datums
            return list(record.datums)
        assert record.segment is not None
        try:
            with open(self._path(record.segment), "rb") as f:
                f.seek(record.offset)
                data = f.read(record.length)
        except OSError as exc:
            raise SpoolCorrupt(f"cannot read record: {exc}", record.count) from None
        for _offset, _length, _ns, datums in read_records(data):
            return datums
        raise SpoolCorrupt("record vanished", record.count)

    def next_request(self, now: float) -> Request:
        """The oldest pending record plus later ones of its namespace, within request limits
        (looking at most SCAN_AHEAD records ahead, so draining a long backlog stays linear),
        filled by adding the records' wire sizes. Unreadable records and datums too old for the
        endpoint at wall-clock `now` are dropped here (counted once, however often retried).
        Empty when every record looked at was finished that way (or nothing is pending)."""
        group: Request = []
        finished: list[Record] = []  # nothing left to send in them
        count = 0
        size = REQUEST_OVERHEAD_BYTES
        namespace = None
        cutoff = now - MAX_AGE_S
        for record in itertools.islice(self.pending.values(), SCAN_AHEAD):
            if namespace is not None and record.namespace != namespace:
                continue
            try:
                datums = self.load(record)
            except SpoolCorrupt as exc:
                self.ledger.drop(exc.count, "spool_corrupt", str(exc))
                finished.append(record)
                continue
            rsize = record.wire_bytes
            if record.oldest < cutoff:  # some of them are too old: send only the rest
                if isinstance(datums, WireDatums):
                    fresh: Sequence[Datum] = datums.since(cutoff)
                else:
                    fresh = [d for d in datums if d.timestamp >= cutoff]
                too_old = len(datums) - len(fresh)
                if too_old > record.too_old_counted:
                    self.ledger.drop(
                        too_old - record.too_old_counted,
                        "too_old",
                        "older than the endpoint accepts",
                    )
                    record.too_old_counted = too_old
                if not fresh:
                    finished.append(record)
                    continue
                datums = fresh
                if isinstance(fresh, WireDatums):
                    rsize = sum(fresh.sizes)
                else:
                    rsize = sum(map(datum_wire_size, fresh))
            if group and (
                count + len(datums) > MAX_DATUMS_PER_REQUEST or size + rsize > MAX_REQUEST_BYTES
            ):
                break
            namespace = record.namespace
            group.append((record, datums))
            count += len(datums)
            size += rsize
        for record in finished:
            self.done(record)
        self.commit()
        return group

    def done(self, record: Record) -> None:
        """The record was delivered, or dropped with a counted reason (made durable by the next
        `commit`)."""
        if record.segment is not None and record.seq in self.pending:
            self.done_marks.add((record.segment, record.offset))
        self._forget(record)

    def _forget(self, record: Record) -> None:
        """Take a record out of the pending set, keeping every running figure right."""
        if self.pending.pop(record.seq, None) is None:
            return
        self._pending_datums -= record.count
        if record.segment is not None:
            self.waiting_bytes -= record.length
        if record.segment is None:
            self.memory_datums -= record.count
        elif record.datums is not None:
            self.cached_datums -= record.count

    def commit(self) -> None:
        """Persist the cursor (the oldest pending disk record) and delete finished segments."""
        oldest = next((r for r in self.pending.values() if r.segment is not None), None)
        if oldest is not None:
            assert oldest.segment is not None
            cursor = (oldest.segment, oldest.offset)
        else:
            cursor = (self.active, self.segment_sizes.get(self.active, 0))
        self.done_marks = {m for m in self.done_marks if m >= cursor}
        self.marks_written &= self.done_marks
        if self.done_marks - self.marks_written:
            self._write_done_marks()
        if cursor == self.cursor:
            return
        try:
            tmp = self.dir / (CURSOR + ".tmp")
            with open(tmp, "wb") as f:
                f.write(msgpack.packb(list(cursor)))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.dir / CURSOR)
        except OSError as exc:
            self._disk_failed(f"cannot write the spool cursor: {exc}")
            return
        self.cursor = cursor
        if not self.done_marks and self.marks_in_file:
            try:  # every mark is behind the cursor now
                os.truncate(self.dir / DONE, 0)
                self.marks_in_file = 0
            except OSError as exc:
                log.warning("spool: cannot empty %s: %s", DONE, exc)
        for seg in sorted(self.segment_sizes):
            if seg < cursor[0] and seg != self.active:
                self._unlink(seg)

    def _write_done_marks(self) -> None:
        """Append the new marks (rewrite the file when it is mostly obsolete marks), durably
        before the cursor that relies on them."""
        new = sorted(self.done_marks - self.marks_written)
        rewrite = self.marks_in_file > 2 * len(self.done_marks) + 64
        marks = sorted(self.done_marks) if rewrite else new
        data = b"".join(DONE_MARK.pack(*m) for m in marks)
        try:
            if rewrite:
                tmp = self.dir / (DONE + ".tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    if self.fsync:
                        os.fsync(f.fileno())
                os.replace(tmp, self.dir / DONE)
                self.marks_in_file = len(marks)
            else:
                with open(self.dir / DONE, "ab") as f:
                    f.write(data)
                    f.flush()
                    if self.fsync:
                        os.fsync(f.fileno())
                self.marks_in_file += len(marks)
        except OSError as exc:  # at worst they are sent again after a restart
            log.warning("spool: cannot write %s: %s", DONE, exc)
            return
        self.marks_written |= set(marks)

    def close(self) -> None:
        self.commit()
        self._close_active()
        if self.budget is not None and self in self.budget.spools:
            self.budget.spools.remove(self)
        if self.memory_datums:
            self.ledger.drop(
                self.memory_datums, "shutdown_memory", "kept in memory because the disk failed"
            )
            self.memory_datums = 0

    # -- limits -----------------------------------------------------------------------------

    def _enforce_limits(self) -> None:
        while self.total_bytes > self.max_bytes and len(self.segment_sizes) > 1:
            if min(self.segment_sizes) == self.active:
                break
            self.discard_oldest(f"spool over {self.max_bytes} bytes")
        if self.budget is not None:
            self.budget.enforce()
        while self.memory_datums > self.memory_max_datums:
            victim = next(r for r in self.pending.values() if r.segment is None)
            self._forget(victim)
            self.ledger.drop(
                victim.count, "memory_full", "spool disk unwritable and memory queue full"
            )

    def reclaim(self) -> None:
        """Delete the segments in which no record waits any more (delivered, but kept while
        being appended to, or while an older record waited): bytes that hold nothing to send,
        which a shared bound must not weigh against anyone."""
        waiting = {r.segment for r in self.pending.values() if r.segment is not None}
        for seg in sorted(self.segment_sizes):
            if seg in waiting or not self.segment_sizes[seg]:
                continue
            if seg == self.active:
                self._close_active()
                self.active += 1  # a fresh number: no done mark can name it
            self._unlink(seg)

    def discard_oldest(self, why: str) -> bool:
        """Give up the oldest segment and the records in it, counted as `spool_full`; the
        active segment too when it is the only one (the next append starts a new one). False
        when nothing is on disk."""
        if not self.segment_sizes:
            return False
        oldest = min(self.segment_sizes)
        if oldest == self.active:
            self._close_active()
            self.active += 1  # a fresh number: no done mark can name it
        lost = [r for r in self.pending.values() if r.segment == oldest]
        for r in lost:
            self._forget(r)
        count = sum(r.count for r in lost)
        if count:
            self.ledger.drop(count, "spool_full", f"{why}; oldest segment {oldest} discarded")
        self._unlink(oldest)
        return True

    # -- figures ------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(self.segment_sizes.values())

    @property
    def pending_datums(self) -> int:
        """Datums waiting (disk and memory); kept as a running figure, read every cycle."""
        return self._pending_datums

    def oldest_timestamp(self) -> float | None:
        return min((r.oldest for r in self.pending.values()), default=None)

    def status(self) -> dict[str, Any]:
        return {
            "directory": str(self.dir),
            "disk_ok": self.disk_ok,
            "bytes": self.total_bytes,
            "max_bytes": self.max_bytes,
            "segments": len(self.segment_sizes),
            "pending_batches": len(self.pending),
            "pending_datums": self.pending_datums,
            "memory_datums": self.memory_datums,
            "oldest_timestamp": self.oldest_timestamp(),
            "corrupt_records": self.corrupt_records,
            "write_errors": self.write_errors,
        }

    # -- helpers ------------------------------------------------------------------------------

    def _take_seq(self) -> int:
        self.next_seq += 1
        return self.next_seq

    def _track(self, record: Record) -> None:
        self.pending[record.seq] = record
        self._pending_datums += record.count
        if record.segment is not None:
            self.waiting_bytes += record.length

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:016d}.seg"

    def _unlink(self, segment: int) -> None:
        self.segment_sizes.pop(segment, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(segment).unlink()
