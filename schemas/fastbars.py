"""BarClosed messages from and to columnar batches, without a Python object per field.

Produces exactly the bytes of the generic codec (``schemas.codec``) and accepts exactly the messages it
accepts, but does the byte work in two numba kernels over the whole batch. Strings are rare enough to be
handled per distinct value (symbols) or only checked when they are not plain ASCII. Messages written with the
released v1 schema (before ``kind``) decode too, as OHLCV bars, like the codec resolves them.

Each bar's event id comes back in the batch's ``event_id`` column (fixed-width ASCII, ``schemas.bars.EVENT_ID_DTYPE``):
the kernel copies it while checking it, so no Python object is made per id. It is the UUID in canonical lower-case
form, ``str(uuid.UUID(record["event_id"]))`` of the codec's record, whichever spelling the writer used.

``decode_bars`` also validates by default: a message that decodes but is not a usable bar (NaN or negative prices,
high below low, a bar from the future, an unknown interval, an unusable symbol: ``schemas.barchecks``) comes back
as a failure with its reason, like a malformed one, so every consumer dead-letters it the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from schemas.barchecks import MAX_SYMBOL_BYTES, bar_problems, interval_problem, symbol_problem
from schemas.bars import ASSET_CLASSES, BAR_INTERVALS, BAR_KINDS, BAR_SCHEMA, EVENT_ID_DTYPE, BarBatch
from schemas.codec import DecodeError, EncodeError, get_registry

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

_OK, _SHORT, _FOREIGN, _TRUNCATED, _VARINT, _NEGATIVE, _ENUM, _UNION, _BOOLEAN, _TRAILING, _KIND = range(11)
_REASONS = {
    _SHORT: "not an Avro single-object message (marker C3 01 and 8-byte fingerprint)",
    _TRUNCATED: "truncated body",
    _VARINT: "malformed varint (overlong or beyond 64 bits)",
    _NEGATIVE: "negative string length",
    _ENUM: "asset_class enum index out of range",
    _UNION: "union branch index out of range",
    _BOOLEAN: "boolean byte other than 0 or 1",
    _TRAILING: "bytes after the end of the record",
    _KIND: "kind enum index out of range",
}
# The release whose BarClosed ends at regular_session: the layout this module decodes besides the current one.
_V1 = "v1"
# A row whose strings are not all ASCII, or whose event_id is not a lower/upper-case canonical UUID, is
# re-checked with the generic codec (rare).
_SLOW = np.int8(-1)
_NAN_BYTES = np.frombuffer(np.array([np.nan], "<f8").tobytes(), np.uint8)
_KNOWN_INTERVALS = {interval.encode(): interval for interval in BAR_INTERVALS}
# Symbols seen, as bytes -> _symbol_entry: a market has a few thousand, each decoded and checked once per process
# instead of once per batch. Only symbols short enough to be valid are kept, and it is cleared when full, so bad
# input (random or huge symbols) cannot grow it without bound.
_SYMBOLS: dict[bytes, tuple[str, str | None, str | None]] = {}
_SYMBOL_CACHE = 1 << 16


def to_records(
    batch: BarBatch, *, source: str, ts_ingest: int, event_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The batch as BarClosed records for the generic codec: the reference ``encode_bars`` must match.

    Without ``event_ids`` the batch's own ``event_id`` column is used (every bar must have one)."""
    if event_ids is None:
        event_ids = [event_id.decode("ascii") for event_id in _own_ids(batch).tolist()]
    if len(event_ids) != len(batch):
        raise EncodeError(f"{len(event_ids)} event ids for {len(batch)} bars")
    return [
        {
            "event_id": event_ids[i],
            "ts_event": int(batch.end_ns[i]),
            "ts_ingest": ts_ingest,
            "source": source,
            "causation_id": "",
            "symbol": batch.symbol[i],
            "asset_class": ASSET_CLASSES[batch.asset_class[i]],
            "interval": batch.interval,
            "start_ns": int(batch.start_ns[i]),
            "end_ns": int(batch.end_ns[i]),
            "open": float(batch.open[i]),
            "high": float(batch.high[i]),
            "low": float(batch.low[i]),
            "close": float(batch.close[i]),
            "volume": float(batch.volume[i]),
            "vwap": None if np.isnan(batch.vwap[i]) else float(batch.vwap[i]),
            "trade_count": None if batch.trade_count[i] == -1 else int(batch.trade_count[i]),
            "regular_session": bool(batch.regular_session[i]),
            "kind": BAR_KINDS[batch.kind[i]],
        }
        for i in range(len(batch))
    ]


# --------------------------------------------------------------------------------------------- kernels


@numba.njit(cache=True, inline="always")
def _zigzag(value: int) -> np.uint64:
    return (np.uint64(value) << np.uint64(1)) ^ np.uint64(value >> 63)


@numba.njit(cache=True, inline="always")
def _varint_size(zz: np.uint64) -> int:
    size = 1
    while zz >= np.uint64(0x80):
        zz >>= np.uint64(7)
        size += 1
    return size


@numba.njit(cache=True, inline="always")
def _put_varint(buf: U8, pos: int, zz: np.uint64) -> int:
    while zz >= np.uint64(0x80):
        buf[pos] = np.uint8((zz & np.uint64(0x7F)) | np.uint64(0x80))
        zz >>= np.uint64(7)
        pos += 1
    buf[pos] = np.uint8(zz)
    return pos + 1


@numba.njit(cache=True, inline="always")
def _put(buf: U8, pos: int, src: U8, start: int, stop: int) -> int:
    for k in range(start, stop):
        buf[pos] = src[k]
        pos += 1
    return pos


@numba.njit(cache=True)
def _encode_kernel(
    header: U8,
    ids: U8,
    id_off: I64,
    ts_ingest: int,
    middle: U8,
    symbols: U8,
    symbol_off: I64,
    codes: I64,
    asset_class: npt.NDArray[np.int8],
    interval: U8,
    start_ns: I64,
    end_ns: I64,
    prices: U8,
    vwap: U8,
    vwap_null: npt.NDArray[np.bool_],
    trade_count: I64,
    regular_session: npt.NDArray[np.bool_],
    kind: npt.NDArray[np.int8],
) -> tuple[U8, I64]:
    n = codes.shape[0]
    zz_ingest = _zigzag(ts_ingest)
    fixed = header.shape[0] + _varint_size(zz_ingest) + middle.shape[0] + 1 + interval.shape[0] + 40 + 1 + 1 + 1 + 1
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    for i in range(n):
        size = fixed + (id_off[i + 1] - id_off[i]) + 2 * _varint_size(_zigzag(end_ns[i]))
        size += symbol_off[codes[i] + 1] - symbol_off[codes[i]] + _varint_size(_zigzag(start_ns[i]))
        if not vwap_null[i]:
            size += 8
        if trade_count[i] != -1:
            size += _varint_size(_zigzag(trade_count[i]))
        offsets[i + 1] = offsets[i] + size
    buf = np.empty(offsets[n], np.uint8)
    for i in range(n):
        pos = _put(buf, offsets[i], header, 0, header.shape[0])
        pos = _put(buf, pos, ids, id_off[i], id_off[i + 1])
        pos = _put_varint(buf, pos, _zigzag(end_ns[i]))
        pos = _put_varint(buf, pos, zz_ingest)
        pos = _put(buf, pos, middle, 0, middle.shape[0])
        pos = _put(buf, pos, symbols, symbol_off[codes[i]], symbol_off[codes[i] + 1])
        buf[pos] = np.uint8(asset_class[i] * 2)
        pos = _put(buf, pos + 1, interval, 0, interval.shape[0])
        pos = _put_varint(buf, pos, _zigzag(start_ns[i]))
        pos = _put_varint(buf, pos, _zigzag(end_ns[i]))
        pos = _put(buf, pos, prices, 40 * i, 40 * i + 40)
        if vwap_null[i]:
            buf[pos] = 0
            pos += 1
        else:
            buf[pos] = 2
            pos = _put(buf, pos + 1, vwap, 8 * i, 8 * i + 8)
        if trade_count[i] == -1:
            buf[pos] = 0
            pos += 1
        else:
            buf[pos] = 2
            pos = _put_varint(buf, pos + 1, _zigzag(trade_count[i]))
        buf[pos] = np.uint8(1 if regular_session[i] else 0)
        buf[pos + 1] = np.uint8(kind[i] * 2)
    return buf, offsets


@numba.njit(cache=True, inline="always")
def _get_varint(buf: U8, pos: int, stop: int) -> tuple[int, int, int]:
    """(value, new position, status) of the zig-zag varint at ``pos``, rejecting what no writer produces."""
    result = np.uint64(0)
    shift = np.uint64(0)
    for count in range(10):
        if pos >= stop:
            return 0, pos, _TRUNCATED
        byte = buf[pos]
        pos += 1
        if count == 9 and byte > 1:
            return 0, pos, _VARINT
        result |= np.uint64(byte & 0x7F) << shift
        if byte < 0x80:
            if count > 0 and byte == 0:
                return 0, pos, _VARINT
            return int(np.int64(result >> np.uint64(1)) ^ -np.int64(result & np.uint64(1))), pos, _OK
        shift += np.uint64(7)
    return 0, pos, _VARINT


@numba.njit(cache=True, inline="always")
def _get_string(buf: U8, pos: int, stop: int) -> tuple[int, int, int, bool]:
    """(start, end, status, ascii) of the string at ``pos``."""
    length, pos, status = _get_varint(buf, pos, stop)
    if status != _OK:
        return pos, pos, status, True
    if length < 0:
        return pos, pos, _NEGATIVE, True
    if length > stop - pos:
        return pos, pos, _TRUNCATED, True
    ascii_only = True
    for k in range(pos, pos + length):
        if buf[k] >= 0x80:
            ascii_only = False
            break
    return pos, pos + length, _OK, ascii_only


@numba.njit(cache=True, inline="always")
def _take_uuid(buf: U8, start: int, stop: int, out: U8, row: int) -> bool:
    """Whether ``buf[start:stop]`` is canonical UUID text (either case); as it is checked, it is copied to ``out[row]``
    in lower case (``| 0x20`` leaves digits and dashes as they are). A row that is not canonical is left partly
    written: the caller fills it from the codec's record."""
    if stop - start != 36:
        return False
    for k in range(36):
        c = buf[start + k]
        if k == 8 or k == 13 or k == 18 or k == 23:
            if c != 45:
                return False
        elif not (48 <= c <= 57 or 97 <= c <= 102 or 65 <= c <= 70):
            return False
        out[row, k] = c | 0x20
    return True


@numba.njit(cache=True)
def _decode_kernel(
    blob: U8, offsets: I64, header: U8, v1_header: U8, nan: U8, n_kinds: int
) -> tuple[npt.NDArray[np.int8], I64, I64, U8, npt.NDArray[np.int8], U8]:
    n = offsets.shape[0] - 1
    status = np.zeros(n, np.int8)
    ids = np.empty((n, 36), np.uint8)  # event_id, lower case (filled by the caller for _SLOW rows)
    spans = np.zeros((n, 4), np.int64)  # symbol start/end, interval start/end
    ints = np.zeros((n, 4), np.int64)  # start_ns, end_ns, trade_count (-1 for null), ts_ingest
    floats = np.zeros((n, 48), np.uint8)  # open, high, low, close, volume, vwap (NaN for null) as bytes
    flags = np.zeros((n, 3), np.int8)  # asset_class, regular_session, kind (0 = OHLCV for v1 messages)
    for i in range(n):
        pos, stop = offsets[i], offsets[i + 1]
        if stop - pos < 10 or blob[pos] != header[0] or blob[pos + 1] != header[1]:
            status[i] = _SHORT
            continue
        current = True
        v1 = True
        for k in range(2, 10):
            if blob[pos + k] != header[k]:
                current = False
            if blob[pos + k] != v1_header[k]:
                v1 = False
        if not (current or v1):
            status[i] = _FOREIGN
            continue
        pos += 10
        slow = False
        a, b, st, ascii_only = _get_string(blob, pos, stop)  # event_id
        if st != _OK:
            status[i] = st
            continue
        slow = not ascii_only or not _take_uuid(blob, a, b, ids, i)
        pos = b
        st = _OK
        _, pos, st = _get_varint(blob, pos, stop)  # ts_event
        if st == _OK:
            ints[i, 3], pos, st = _get_varint(blob, pos, stop)  # ts_ingest
        if st != _OK:
            status[i] = st
            continue
        for _ in range(2):  # source, causation_id
            a, b, st, ascii_only = _get_string(blob, pos, stop)
            if st != _OK:
                break
            slow = slow or not ascii_only
            pos = b
        if st != _OK:
            status[i] = st
            continue
        a, b, st, ascii_only = _get_string(blob, pos, stop)  # symbol: decoded per distinct value later
        if st != _OK:
            status[i] = st
            continue
        spans[i, 0], spans[i, 1], pos = a, b, b
        klass, pos, st = _get_varint(blob, pos, stop)
        if st != _OK:
            status[i] = st
            continue
        if klass < 0 or klass >= 4:
            status[i] = _ENUM
            continue
        flags[i, 0] = klass
        a, b, st, ascii_only = _get_string(blob, pos, stop)  # interval
        if st != _OK:
            status[i] = st
            continue
        slow = slow or not ascii_only
        spans[i, 2], spans[i, 3], pos = a, b, b
        for k in range(2):  # start_ns, end_ns
            ints[i, k], pos, st = _get_varint(blob, pos, stop)
            if st != _OK:
                break
        if st != _OK:
            status[i] = st
            continue
        if stop - pos < 41:
            status[i] = _TRUNCATED
            continue
        for k in range(40):
            floats[i, k] = blob[pos + k]
        pos += 40
        branch = blob[pos]
        pos += 1
        if branch == 0:
            for k in range(8):
                floats[i, 40 + k] = nan[k]
        elif branch == 2:
            if stop - pos < 8:
                status[i] = _TRUNCATED
                continue
            for k in range(8):
                floats[i, 40 + k] = blob[pos + k]
            pos += 8
        else:
            status[i] = _UNION
            continue
        if pos >= stop:
            status[i] = _TRUNCATED
            continue
        branch = blob[pos]
        pos += 1
        if branch == 0:
            ints[i, 2] = -1
        elif branch == 2:
            ints[i, 2], pos, st = _get_varint(blob, pos, stop)
            if st != _OK:
                status[i] = st
                continue
        else:
            status[i] = _UNION
            continue
        if pos >= stop:
            status[i] = _TRUNCATED
            continue
        if blob[pos] > 1:
            status[i] = _BOOLEAN
            continue
        flags[i, 1] = blob[pos]
        pos += 1
        if current:
            kind, pos, st = _get_varint(blob, pos, stop)
            if st != _OK:
                status[i] = st
                continue
            if kind < 0 or kind >= n_kinds:
                status[i] = _KIND
                continue
            flags[i, 2] = kind
        if pos != stop:
            status[i] = _TRAILING
            continue
        if slow:
            status[i] = _SLOW
    return status, spans, ints, floats, flags, ids


# ------------------------------------------------------------------------------------------ public API


def _string_bytes(text: str) -> bytes:
    data = text.encode("utf-8")
    zz = len(data) << 1
    prefix = bytearray()
    while zz >= 0x80:
        prefix.append((zz & 0x7F) | 0x80)
        zz >>= 7
    prefix.append(zz)
    return bytes(prefix) + data


def _u8(data: bytes) -> U8:
    return np.frombuffer(data, np.uint8)


def _canonical_rows(rows: U8) -> npt.NDArray[np.bool_]:
    """Which n x 36 ASCII rows are canonical UUID text (hex digits with dashes at 8, 13, 18, 23)."""
    dashes = rows[:, [8, 13, 18, 23]] == ord("-")
    hexdigits = np.delete(rows, [8, 13, 18, 23], axis=1)
    lowered = hexdigits | 0x20
    is_hex = ((hexdigits >= ord("0")) & (hexdigits <= ord("9"))) | ((lowered >= ord("a")) & (lowered <= ord("f")))
    return np.asarray(dashes.all(axis=1) & is_hex.all(axis=1))


def _prefixed_rows(rows: U8) -> tuple[U8, I64]:
    """Canonical ids as Avro strings: each 36 ASCII bytes behind the length prefix 0x48."""
    prefixed = np.empty((len(rows), 37), np.uint8)
    prefixed[:, 0] = 72
    prefixed[:, 1:] = rows
    return prefixed.reshape(-1), np.arange(0, 37 * len(rows) + 1, 37, dtype=np.int64)


def _own_ids(batch: BarBatch) -> npt.NDArray[np.bytes_]:
    """The batch's ``event_id`` column, for encoding: every bar must have an id."""
    missing = np.flatnonzero(batch.event_id == b"")
    if len(missing):
        raise EncodeError(f"bar {int(missing[0])} has no event id (pass event_ids=)")
    return batch.event_id


def _checked_ids(event_ids: Sequence[str] | U8 | npt.NDArray[np.bytes_]) -> tuple[U8, I64]:
    """The ids as one byte blob with offsets, after the same UUID check the codec makes.

    An n x 36 uint8 array of ASCII ids (as ``deterministic_event_ids_array`` makes), or an ``EVENT_ID_DTYPE`` column
    (``BarBatch.event_id``), skips the per-id strings.
    """
    if isinstance(event_ids, np.ndarray):
        rows: U8 = event_ids  # type: ignore[assignment]  # checked next
        if event_ids.dtype == EVENT_ID_DTYPE and event_ids.ndim == 1:
            rows = np.ascontiguousarray(event_ids).view(np.uint8).reshape(-1, 36)
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 36:
            raise EncodeError("an event id array must be n x 36 ASCII bytes")
        bad = np.flatnonzero(~_canonical_rows(rows))
        if len(bad):
            raise EncodeError(f"event_id is not a UUID: {rows[bad[0]].tobytes()!r}")
        return _prefixed_rows(rows)
    try:
        joined = "".join(event_ids)
    except TypeError:
        raise EncodeError("event_id must be a UUID string") from None
    blob = joined.encode("utf-8", errors="strict")
    lengths = np.fromiter(map(len, event_ids), np.int64, len(event_ids))
    if len(blob) == len(joined) and np.all(lengths == 36):
        suspect = np.flatnonzero(~_canonical_rows(_u8(blob).reshape(-1, 36)))
    else:
        suspect = np.arange(len(event_ids))
    for i in suspect.tolist():
        try:
            uuid.UUID(event_ids[i])
        except ValueError:
            raise EncodeError(f"event_id is not a UUID: {event_ids[i]!r}") from None
    if not len(suspect):
        return _prefixed_rows(_u8(blob).reshape(-1, 36))
    prefixes = [_string_bytes(event_id) for event_id in event_ids]
    lengths = np.fromiter(map(len, prefixes), np.int64, len(prefixes))
    offsets = np.zeros(len(event_ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _u8(b"".join(prefixes)), offsets


def encode_bars(
    batch: BarBatch,
    *,
    source: str,
    ts_ingest: int,
    event_ids: Sequence[str] | U8 | npt.NDArray[np.bytes_] | None = None,
) -> list[bytes]:
    """One BarClosed single-object message per bar, byte-identical to the generic codec's.

    ``event_ids``: strings, n x 36 ASCII rows or an ``EVENT_ID_DTYPE`` column; without them the batch's own
    ``event_id`` column (a decoded batch's ids: every bar must have one). The ids written are the ones given, in the
    case given; the batch's ``event_id`` column is not consulted when ``event_ids`` is.
    """
    if event_ids is None:
        event_ids = _own_ids(batch)
    n = len(batch)
    if len(event_ids) != n:
        raise EncodeError(f"{len(event_ids)} event ids for {n} bars")
    if n == 0:
        return []
    registry = get_registry()
    if np.any((batch.asset_class < 0) | (batch.asset_class >= len(ASSET_CLASSES))):
        raise EncodeError("asset_class index out of range")
    if np.any((batch.kind < 0) | (batch.kind >= len(BAR_KINDS))):
        raise EncodeError("kind index out of range")
    try:
        id_blob, id_off = _checked_ids(event_ids)
        distinct: dict[str, int] = {}
        codes = np.fromiter((distinct.setdefault(symbol, len(distinct)) for symbol in batch.symbol), np.int64, n)
        if not all(isinstance(symbol, str) for symbol in distinct):
            raise EncodeError("symbol must be a string")
        encoded = [_string_bytes(symbol) for symbol in distinct]
        middle = _string_bytes(source) + b"\x00"
        interval = _string_bytes(batch.interval)
    except UnicodeEncodeError as exc:
        raise EncodeError(f"text is not encodable as UTF-8: {exc}") from exc
    symbol_off = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(item) for item in encoded], out=symbol_off[1:])
    prices = np.ascontiguousarray(
        np.column_stack([batch.open, batch.high, batch.low, batch.close, batch.volume]), dtype="<f8"
    )
    vwap = np.ascontiguousarray(batch.vwap, dtype="<f8")
    buf, offsets = _encode_kernel(
        _u8(registry.header(BAR_SCHEMA)),
        id_blob,
        id_off,
        ts_ingest,
        _u8(middle),
        _u8(b"".join(encoded)),
        symbol_off,
        codes,
        np.ascontiguousarray(batch.asset_class, dtype=np.int8),
        _u8(interval),
        np.ascontiguousarray(batch.start_ns, dtype=np.int64),
        np.ascontiguousarray(batch.end_ns, dtype=np.int64),
        prices.view(np.uint8).reshape(-1),
        vwap.view(np.uint8),
        np.isnan(vwap),
        np.ascontiguousarray(batch.trade_count, dtype=np.int64),
        np.ascontiguousarray(batch.regular_session, dtype=np.bool_),
        np.ascontiguousarray(batch.kind, dtype=np.int8),
    )
    data = buf.tobytes()
    bounds = offsets.tolist()
    return [data[bounds[i] : bounds[i + 1]] for i in range(n)]


def _empty_batch(interval: str) -> BarBatch:
    f = np.empty(0, np.float64)
    return BarBatch(
        symbol=np.empty(0, object),
        asset_class=np.empty(0, np.int8),
        interval=interval,
        start_ns=np.empty(0, np.int64),
        end_ns=np.empty(0, np.int64),
        open=f,
        high=f.copy(),
        low=f.copy(),
        close=f.copy(),
        volume=f.copy(),
        vwap=f.copy(),
        trade_count=np.empty(0, np.int64),
        regular_session=np.empty(0, np.bool_),
    )


def _foreign_reason(payload: bytes) -> str:
    try:
        schema = get_registry().decode(payload).schema
    except DecodeError as exc:
        return str(exc)
    return f"not a BarClosed: {schema}"


def _same_text(blob: U8, lo: I64, hi: I64, text: bytes) -> npt.NDArray[np.bool_]:
    """Which of the byte spans ``blob[lo:hi]`` equal ``text``, without a Python object per span."""
    same = (hi - lo) == len(text)
    if len(text) and same.any():
        window = lo[same, None] + np.arange(len(text))
        same[same] = (blob[window] == _u8(text)).all(axis=1)
    return np.asarray(same)


def _first_interval(
    blob: U8, data: bytes, rows: I64, lo: I64, hi: I64, keep: npt.NDArray[np.bool_], bad: list[tuple[int, str]]
) -> str:
    """The interval of the first row; rows of any other interval are failures (the unvalidated rule)."""
    first = data[lo[0] : hi[0]]
    try:
        interval_text = first.decode("utf-8")
    except UnicodeDecodeError:  # unreachable: the kernel or the codec checked it
        interval_text = first.decode("utf-8", "replace")
    for j in np.flatnonzero(~_same_text(blob, lo, hi, first)).tolist():
        keep[j] = False
        other = data[lo[j] : hi[j]].decode("utf-8")
        bad.append((int(rows[j]), f"interval {other!r} differs from {interval_text!r}"))
    return interval_text


def _majority_interval(
    blob: U8, data: bytes, rows: I64, lo: I64, hi: I64, keep: npt.NDArray[np.bool_], bad: list[tuple[int, str]]
) -> str:
    """The known interval most rows have (the earliest on a tie): a stray bar of another interval, or of none we
    know, fails alone instead of taking the rest of its batch with it because it happened to come first."""
    first = data[lo[0] : hi[0]]
    if first in _KNOWN_INTERVALS:
        same = _same_text(blob, lo, hi, first)
        if same.all():  # the usual batch: one known interval, found in one vector comparison
            return _KNOWN_INTERVALS[first]
    masks = [_same_text(blob, lo, hi, interval.encode()) for interval in BAR_INTERVALS]
    counts = [int(mask.sum()) for mask in masks]
    firsts = [int(np.argmax(mask)) if count else len(rows) for mask, count in zip(masks, counts, strict=True)]
    chosen = min(range(len(BAR_INTERVALS)), key=lambda k: (-counts[k], firsts[k]))
    for j in np.flatnonzero(~masks[chosen]).tolist():
        keep[j] = False
        other = data[lo[j] : hi[j]].decode("utf-8", "replace")
        known = other in BAR_INTERVALS
        reason = f"interval {other!r} differs from {BAR_INTERVALS[chosen]!r}" if known else interval_problem(other)
        bad.append((int(rows[j]), reason))
    return BAR_INTERVALS[chosen]


def _symbol_entry(raw: bytes) -> tuple[str, str | None, str | None]:
    """(text, why it is not UTF-8, why no bar may carry it) of one symbol's bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # unreachable: the kernel or the codec checked it
        return "", f"symbol is not UTF-8: {exc}", None
    return text, None, symbol_problem(text)


def _empty_reason(payload: bytes | None) -> str | None:
    if payload is None:
        return "no value (a tombstone)"
    return "empty value" if len(payload) == 0 else None


def decode_bars(
    payloads: Sequence[bytes | None], *, validate: bool = True
) -> tuple[BarBatch, list[int], list[tuple[int, str]]]:
    """Decode BarClosed messages into one batch: (good rows, their indices in ``payloads``, (index, reason)
    for every payload that is malformed, of another schema, or of another interval than the batch's).

    With ``validate`` (the default: what every consumer wants) a bar must also pass ``schemas.barchecks``, and the
    batch's interval is the known one most bars have; without it (the codec-equivalence tests) any decodable bar
    is returned and the first good row sets the interval. A None payload (a tombstone) is a failure, not an error.

    The batch's ``event_id`` column holds each bar's event id (canonical, lower case: see the module doc);
    ts_event, ts_ingest, source and causation_id are validated but not returned: BarBatch has no columns for them.
    A vwap or trade_count that is null comes back as NaN or -1.
    """
    registry = get_registry()
    n = len(payloads)
    try:
        lengths = np.fromiter(map(len, payloads), np.int64, n)  # type: ignore[arg-type]
        present: Sequence[bytes] = payloads  # type: ignore[assignment]
    except TypeError:  # a tombstone among them (rare): decoded as empty, which the kernel rejects
        present = [b"" if payload is None else payload for payload in payloads]
        lengths = np.fromiter(map(len, present), np.int64, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    blob = _u8(b"".join(present))
    status, spans, ints, floats, flags, ids = _decode_kernel(
        blob,
        offsets,
        _u8(registry.header(BAR_SCHEMA)),
        _u8(registry.header(BAR_SCHEMA, _V1)),
        _NAN_BYTES,
        len(BAR_KINDS),
    )
    bad: list[tuple[int, str]] = []
    for i in np.flatnonzero(status > 0).tolist():
        code = int(status[i])
        reason = _empty_reason(payloads[i]) if code == _SHORT else None
        bad.append((i, reason or (_foreign_reason(present[i]) if code == _FOREIGN else _REASONS[code])))
    for i in np.flatnonzero(status == _SLOW).tolist():
        try:
            record = registry.decode_as(BAR_SCHEMA, present[i])
        except DecodeError as exc:
            status[i] = _TRUNCATED  # any non-zero code marks the row bad; the reason is the codec's
            bad.append((i, str(exc)))
            continue
        ids[i] = _u8(str(uuid.UUID(record["event_id"])).encode("ascii"))  # the codec checked it is a UUID
    rows = np.flatnonzero(status <= 0)
    data = blob.tobytes()
    keep = np.ones(len(rows), np.bool_)
    interval_text = ""
    if len(rows):
        pick = _majority_interval if validate else _first_interval
        interval_text = pick(blob, data, rows, spans[rows, 2], spans[rows, 3], keep, bad)
    texts: list[str] = []
    kept = keep.tolist()
    known = _SYMBOLS
    for j, (start, stop) in enumerate(spans[rows, :2].tolist()):
        raw = data[start:stop]
        entry = known.get(raw)
        if entry is None:
            entry = _symbol_entry(raw)
            if len(raw) <= MAX_SYMBOL_BYTES:  # a megabyte of "symbol" is refused, and not kept
                if len(known) >= _SYMBOL_CACHE:
                    known.clear()
                known[raw] = entry
        text, unreadable, problem = entry
        if (unreadable or (validate and problem)) and kept[j]:  # kept: one reason per message
            kept[j] = keep[j] = False
            bad.append((int(rows[j]), unreadable or str(problem)))
        texts.append(text)
    column = np.empty(len(rows), object)
    column[:] = texts
    rows = rows[keep]
    if len(rows) == 0:
        bad.sort()
        return _empty_batch(interval_text), [], bad
    values = floats[rows].view("<f8")
    batch = BarBatch(
        symbol=column[keep],
        asset_class=flags[rows, 0].astype(np.int8),
        interval=interval_text,
        start_ns=ints[rows, 0],
        end_ns=ints[rows, 1],
        open=values[:, 0].copy(),
        high=values[:, 1].copy(),
        low=values[:, 2].copy(),
        close=values[:, 3].copy(),
        volume=values[:, 4].copy(),
        vwap=values[:, 5].copy(),
        trade_count=ints[rows, 2],
        regular_session=flags[rows, 1].astype(np.bool_),
        kind=flags[rows, 2].astype(np.int8),
        event_id=(ids if len(rows) == n else ids[rows]).view(EVENT_ID_DTYPE).reshape(-1),
    )
    if validate:
        failures = bar_problems(batch, ints[rows, 3])
        if failures:
            usable = np.ones(len(rows), np.bool_)
            for j, reason in failures:
                usable[j] = False
                bad.append((int(rows[j]), reason))
            batch, rows = batch.take(usable), rows[usable]
    bad.sort()
    return batch, rows.tolist(), bad
