"""PutMetricData request bodies made straight from datums: byte for byte the body botocore's own
serialiser makes of the same datums (`wire.to_metric_datum` in the datum shape sent, then
`JSONSerializer` / `QuerySerializer` and, for awsQuery, `urlencode`), without building the
parameter dicts and walking them through the shape model (most of the publishing CPU).
tests/test_encoding.py holds every body equal to botocore's, for both protocols and every
shape.

The body is built from cached pieces: a series' head (its name, dimensions, unit and storage
resolution, JSON-escaped or percent-encoded once), a timestamp's rendering (a cycle's datums
share a few); a datum then costs one string format and the repr of its value. The caches are
bounded (cleared whole when full).

A datum's JSON fragment (the object in MetricData) does not depend on its place in the body, so
the spool makes it once, when a cycle's datums are checked (`Spool.add`), and keeps a fresh
record's datums as `WireDatums`: their fragments, read back as Datums only where one is looked
at. A JSON body of such records is their fragments joined.

What is not done here: signing, compressing and sending (botocore does them; `wire.Wire`).
"""

from __future__ import annotations

import calendar
import json
import math
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_str  # what json.dumps uses
from types import ModuleType
from typing import Any, overload
from urllib.parse import quote_plus

from hiveagent.model import Datum

deflate: ModuleType  # zlib's interface: ISA-L's where installed (BENCHMARKS.md, issue 18)
try:  # 6x zlib's speed at level 1 here, and as small; its streams are zlib's
    from isal import isal_zlib as deflate
except ImportError:  # pragma: no cover - a payload without it: the standard library's zlib
    deflate = zlib

PROTOCOLS = ("json", "query")
ISO8601 = "%Y-%m-%dT%H:%M:%SZ"  # botocore.serialize's, without and with microseconds
ISO8601_MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"
CACHE_ENTRIES = 1 << 15  # per cache (a few per series: 79 per VM here); then emptied
_CACHED_HEAD_CHARS = 1024  # longer heads (long dimension values) are built every time
_CACHED_TEXT_CHARS = 256
_P = "\0"  # where a query head's member prefix goes (percent-encoding never leaves a NUL)


def value_arrays(samples: Sequence[float]) -> tuple[list[float], list[float]]:
    """The Values and Counts a datum's samples are sent as (`wire.to_metric_datum`'s)."""
    counts: dict[float, int] = {}
    for v in samples:
        counts[v] = counts.get(v, 0) + 1
    return list(counts), [float(c) for c in counts.values()]


def _special(value: float) -> str | None:
    """botocore's `_handle_float`: how a double that is not finite is sent (as a string)."""
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    if math.isnan(value):
        return "NaN"
    return None


def _json_number(value: Any) -> str:
    """A double (or an int) as botocore's JSON body writes it."""
    text = repr(value)
    if text[-1] <= "9":  # a finite float or an int ends in a digit; inf and nan do not
        return text
    special = _special(value)
    return text if special is None else _json_str(special)


def _query_number(value: Any) -> str:
    """A double (or an int) as botocore's awsQuery body writes it (str, percent-encoded)."""
    text = repr(value)
    if text[-1] <= "9":
        return text.replace("+", "%2B") if "+" in text else text
    special = _special(value)
    return quote_plus(text) if special is None else special


class BodyEncoder:
    """PutMetricData bodies in one wire protocol ("json": AWS JSON 1.0; "query": awsQuery).
    Not thread-safe as a whole: the caches are plain dicts (a lost entry is only work
    redone)."""

    def __init__(self, protocol: str, api_version: str = "2010-08-01") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        self.protocol = protocol
        self.api_version = api_version
        # (name, dimensions, unit, resolution) -> the datum's fields up to its timestamp; only
        # for an int resolution: 60 and 60.0 are one key, but written differently
        self.heads: dict[tuple[str, Any, str, int], str] = {}
        self.stamps: dict[float, str] = {}  # timestamp -> its rendering (of this protocol)
        self._quoted: dict[str, str] = {}  # awsQuery: string -> percent-encoded

    def body(self, namespace: str, datums: Sequence[Datum | str], shape: str) -> bytes:
        """The request body (uncompressed) for these datums of `namespace`, basic-monitoring
        datums in `shape` (statistic_sets, value_arrays, single_values: what
        `wire.to_metric_datum` is given). A datum may be given as its JSON fragment (`fragment`,
        a `WireDatums`' item). Raises what `to_metric_datum` raises for a datum it cannot carry
        (ValueError, OverflowError, OSError: a timestamp out of range)."""
        if self.protocol == "json":
            return self._json(namespace, datums, shape)
        return self._query(namespace, datums, shape)

    def fragment(self, datum: Datum) -> str | None:
        """A datum's JSON fragment, as the JSON body has it; None for a basic-monitoring datum
        (its fragment depends on the datum shape sent) or one whose timestamp the wire cannot
        carry. A JSON encoder's."""
        if self.protocol != "json":
            raise ValueError("JSON fragments come from a JSON encoder")
        _, name, dims, value, unit, ts, res, samples = datum
        if samples:
            return None
        head = self.heads.get((name, dims, unit, res)) if res.__class__ is int else None
        if head is None:
            head = self._json_head(name, dims, unit, res)
        stamp = self.stamps.get(ts)
        if stamp is None:
            try:
                stamp = self._json_stamp(ts)
            except (ValueError, OverflowError, OSError):
                return None
        number = repr(value)
        if number[-1] > "9":
            number = _json_number(value)
        return f'{head}{stamp}, "Value": {number}}}'

    # -- AWS JSON 1.0: json.dumps with its default separators ----------------------------------

    def _json(self, namespace: str, datums: Sequence[Datum | str], shape: str) -> bytes:
        heads, stamps = self.heads, self.stamps
        with_samples = shape in ("statistic_sets", "value_arrays")
        frags: list[str] = []
        append = frags.append
        for item in datums:
            if isinstance(item, str):  # a fragment made before
                append(item)
                continue
            _, name, dims, value, unit, ts, res, samples = item
            head = heads.get((name, dims, unit, res)) if res.__class__ is int else None
            if head is None:
                head = self._json_head(name, dims, unit, res)
            stamp = stamps.get(ts)
            if stamp is None:
                stamp = self._json_stamp(ts)
            if samples and with_samples:
                append(f"{head}{stamp}{_json_samples(samples, shape)}}}")
                continue
            number = repr(value)
            if number[-1] > "9":  # inf, nan (a finite float or an int ends in a digit)
                number = _json_number(value)
            append(f'{head}{stamp}, "Value": {number}}}')
        ns = _json_str(namespace)
        return f'{{"Namespace": {ns}, "MetricData": [{", ".join(frags)}]}}'.encode()

    def _json_head(self, name: str, dims: Any, unit: str, res: Any) -> str:
        pairs = ", ".join(f'{{"Name": {_json_str(k)}, "Value": {_json_str(v)}}}' for k, v in dims)
        head = (
            f'{{"MetricName": {_json_str(name)}, "Dimensions": [{pairs}], '
            f'"Unit": {_json_str(unit)}, "StorageResolution": {res!r}, "Timestamp": '
        )
        if res.__class__ is int and len(head) <= _CACHED_HEAD_CHARS:
            _remember(self.heads, (name, dims, unit, res), head)
        return head

    def json_stamp(self, ts: float) -> str:
        """A timestamp as the JSON body writes it (remembered in `stamps`). Raises ValueError,
        OverflowError or OSError for one out of range."""
        stamp = self.stamps.get(ts)
        return self._json_stamp(ts) if stamp is None else stamp

    def _json_stamp(self, ts: float) -> str:
        when = datetime.fromtimestamp(ts, UTC)  # raises as to_metric_datum does
        seconds = calendar.timegm(when.timetuple())
        if when.microsecond:  # botocore: one rounding, integers first
            stamp = repr((seconds * 10**6 + when.microsecond) / 10**6)
        else:
            stamp = repr(seconds)
        _remember(self.stamps, ts, stamp)
        return stamp

    # -- awsQuery: the serialiser's fields in order, urlencode(doseq=True) ------------------------

    def _query(self, namespace: str, datums: Sequence[Datum | str], shape: str) -> bytes:
        heads, stamps = self.heads, self.stamps
        with_samples = shape in ("statistic_sets", "value_arrays")
        parts = [
            f"Action=PutMetricData&Version={self._q(self.api_version)}"
            f"&Namespace={self._q(namespace)}"
        ]
        append = parts.append
        for i, item in enumerate(datums, 1):
            if isinstance(item, str):  # a JSON fragment made before
                item = datum_from_fragment(namespace, item)
            _, name, dims, value, unit, ts, res, samples = item
            p = f"MetricData.member.{i}."
            head = heads.get((name, dims, unit, res)) if res.__class__ is int else None
            if head is None:
                head = self._query_head(name, dims, unit, res)
            stamp = stamps.get(ts)
            if stamp is None:
                stamp = self._query_stamp(ts)
            fields = f"{p}{head.replace(_P, p)}{stamp}"
            if samples and with_samples:
                append(f"{fields}{_query_samples(samples, shape, p)}")
            else:
                append(f"{fields}&{p}Value={_query_number(value)}")
        return "&".join(parts).encode()

    def _q(self, text: str) -> str:
        quoted = self._quoted.get(text)
        if quoted is None:
            quoted = quote_plus(text)
            if len(text) <= _CACHED_TEXT_CHARS:
                _remember(self._quoted, text, quoted)
        return quoted

    def _query_head(self, name: str, dims: Any, unit: str, res: Any) -> str:
        """`MetricName=...&<P>Dimensions.member.1.Name=...&<P>Timestamp=`, <P> standing for
        the member's prefix (the head is shared by the series' datums at any position)."""
        q = self._q
        if dims:
            pairs = "".join(
                f"&{_P}Dimensions.member.{j}.Name={q(k)}&{_P}Dimensions.member.{j}.Value={q(v)}"
                for j, (k, v) in enumerate(dims, 1)
            )
        else:
            pairs = f"&{_P}Dimensions="  # an empty list is sent, as botocore does
        head = (
            f"MetricName={q(name)}{pairs}&{_P}Unit={q(unit)}"
            f"&{_P}StorageResolution={_query_number(res)}&{_P}Timestamp="
        )
        if res.__class__ is int and len(head) <= _CACHED_HEAD_CHARS:
            _remember(self.heads, (name, dims, unit, res), head)
        return head

    def _query_stamp(self, ts: float) -> str:
        when = datetime.fromtimestamp(ts, UTC)
        stamp = quote_plus(when.strftime(ISO8601_MICRO if when.microsecond else ISO8601))
        _remember(self.stamps, ts, stamp)
        return stamp


def datum_from_fragment(namespace: str, fragment: str, timestamp: float | None = None) -> Datum:
    """The Datum a JSON fragment (of a datum without samples) was made from; its timestamp as
    given (the fragment's is rounded to the microsecond, as the wire has it)."""
    d = json.loads(fragment)
    dims = tuple((x["Name"], x["Value"]) for x in d["Dimensions"])
    when = d["Timestamp"] if timestamp is None else timestamp
    return Datum(
        namespace, d["MetricName"], dims, d["Value"], d["Unit"], when, d["StorageResolution"]
    )


class WireDatums(Sequence[Datum]):
    """A record's datums as their JSON fragments (`BodyEncoder.fragment`, for the body),
    timestamps (to drop those too old where they are sent) and wire sizes
    (`wire.datum_wire_size`). A Sequence of Datums: an item looked at is decoded
    (`datum_from_fragment`), and it compares equal to the list of the Datums it was made of."""

    __slots__ = ("fragments", "namespace", "sizes", "timestamps")

    def __init__(
        self,
        namespace: str,
        fragments: list[str],
        timestamps: list[float],
        sizes: list[int],
    ) -> None:
        self.namespace = namespace
        self.fragments = fragments
        self.timestamps = timestamps
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.fragments)

    @overload
    def __getitem__(self, index: int) -> Datum: ...

    @overload
    def __getitem__(self, index: slice) -> WireDatums: ...

    def __getitem__(self, index: int | slice) -> Datum | WireDatums:
        if isinstance(index, slice):
            return WireDatums(
                self.namespace,
                self.fragments[index],
                self.timestamps[index],
                self.sizes[index],
            )
        return datum_from_fragment(self.namespace, self.fragments[index], self.timestamps[index])

    def __iter__(self) -> Iterator[Datum]:
        for fragment, when in zip(self.fragments, self.timestamps, strict=True):
            yield datum_from_fragment(self.namespace, fragment, when)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WireDatums):
            return (self.namespace, self.fragments, self.timestamps) == (
                other.namespace,
                other.fragments,
                other.timestamps,
            )
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WireDatums({self.namespace!r}, {len(self)} datums)"

    def since(self, cutoff: float) -> WireDatums:
        """Those stamped at or after `cutoff`."""
        keep = [i for i, when in enumerate(self.timestamps) if when >= cutoff]
        return WireDatums(
            self.namespace,
            [self.fragments[i] for i in keep],
            [self.timestamps[i] for i in keep],
            [self.sizes[i] for i in keep],
        )


def _json_samples(samples: Sequence[float], shape: str) -> str:
    if shape == "statistic_sets":
        return (
            f', "StatisticValues": {{"SampleCount": {_json_number(float(len(samples)))}, '
            f'"Sum": {_json_number(math.fsum(samples))}, '
            f'"Minimum": {_json_number(min(samples))}, "Maximum": {_json_number(max(samples))}}}'
        )
    values, counts = value_arrays(samples)
    return (
        f', "Values": [{", ".join(map(_json_number, values))}], '
        f'"Counts": [{", ".join(map(_json_number, counts))}]'
    )


def _query_samples(samples: Sequence[float], shape: str, p: str) -> str:
    if shape == "statistic_sets":
        return (
            f"&{p}StatisticValues.SampleCount={_query_number(float(len(samples)))}"
            f"&{p}StatisticValues.Sum={_query_number(math.fsum(samples))}"
            f"&{p}StatisticValues.Minimum={_query_number(min(samples))}"
            f"&{p}StatisticValues.Maximum={_query_number(max(samples))}"
        )
    values, counts = value_arrays(samples)
    return "".join(
        f"&{p}Values.member.{k}={_query_number(v)}" for k, v in enumerate(values, 1)
    ) + "".join(f"&{p}Counts.member.{k}={_query_number(c)}" for k, c in enumerate(counts, 1))


def _remember(cache: dict[Any, str], key: Any, value: str) -> None:
    if len(cache) >= CACHE_ENTRIES:
        cache.clear()
    cache[key] = value
