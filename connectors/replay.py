"""Read historical bars from CSV or Parquet files into BarBatches (the pure part of the replay connector).

The reader is strict on purpose: a file is outside input, and a silently misparsed timestamp or price
would poison every projection downstream. Any problem raises `ReplayError` naming the file, the row and
the column, before a single batch is yielded, so a publisher never emits half a file. Rows are sorted by
(start time, symbol) and yielded in batches of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import tzinfo
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from connectors.sessions import market_of, regular_session_mask
from schemas.bars import ASSET_CLASSES, BarBatch, Int64

ALIASES: dict[str, tuple[str, ...]] = {
    "symbol": ("symbol", "ticker", "sym"),
    "timestamp": ("timestamp", "ts", "time", "start", "datetime", "date", "window_start", "t"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "v"),
    "vwap": ("vwap", "vw"),
    "trade_count": ("trade_count", "transactions", "trades", "n"),
    "asset_class": ("asset_class",),
    "regular_session": ("regular_session",),
}
REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")
_INTERVAL_NS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}
# Epoch magnitude thresholds: below 1e11 is seconds (until year 5138), then ms, us, ns.
_EPOCH_UNITS = ((1e11, 1_000_000_000, "s"), (1e14, 1_000_000, "ms"), (1e17, 1_000, "us"), (np.inf, 1, "ns"))
_OFFSET_SUFFIX = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


class ReplayError(ValueError):
    """A file that cannot be replayed as-is; ``row`` is the 1-based data row (header excluded)."""

    def __init__(self, path: Path, reason: str, *, row: int | None = None, column: str | None = None) -> None:
        self.path, self.reason, self.row, self.column = path, reason, row, column
        where = "".join([f", row {row}" if row is not None else "", f", column {column!r}" if column else ""])
        super().__init__(f"{path}{where}: {reason}")


def interval_ns(interval: str) -> int:
    """Length of an interval such as ``1s``, ``1m``, ``5m``, ``1h``, ``1d`` in nanoseconds."""
    count, unit = interval[:-1], interval[-1:]
    if not count.isdigit() or unit not in _INTERVAL_NS or int(count) == 0:
        raise ValueError(f"unsupported interval {interval!r}")
    return int(count) * _INTERVAL_NS[unit]


def _load(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Everything as text: tickers like "NA" stay tickers, and we parse numbers ourselves to report rows.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ReplayError(path, f"unsupported file type {suffix!r}: expected .csv or .parquet")


def _columns(path: Path, frame: pd.DataFrame) -> dict[str, str]:
    """Map our field names to the file's column names (first alias present wins, case-insensitive)."""
    by_lower = {str(c).strip().lower(): str(c) for c in frame.columns}
    found = {f: next((by_lower[a] for a in names if a in by_lower), None) for f, names in ALIASES.items()}
    for f in REQUIRED:
        if found[f] is None:
            expected = "/".join(ALIASES[f])
            raise ReplayError(path, f"missing required column {f!r} (any of {expected})", column=f)
    return {f: c for f, c in found.items() if c is not None}


def _first_bad(mask: npt.NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(mask)[0])


def _numbers(path: Path, frame: pd.DataFrame, column: str, *, required: bool) -> npt.NDArray[np.float64]:
    raw = frame[column]
    values = np.asarray(pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
    bad = np.isnan(values) & (raw.notna().to_numpy() | required)
    if bad.any():
        i = _first_bad(bad)
        raise ReplayError(path, f"not a number: {raw.iloc[i]!r}", row=i + 1, column=column)
    return values


def _epoch_ns(path: Path, column: str, values: pd.Series) -> Int64:
    """Epoch numbers to ns, the unit inferred from magnitude and required to be the same on every row."""
    as_float = values.to_numpy(dtype=np.float64)
    magnitude = np.abs(as_float)
    unit = np.searchsorted(np.array([t for t, _, _ in _EPOCH_UNITS]), magnitude, side="right")
    if (unit != unit[0]).any():
        i = _first_bad(unit != unit[0])
        raise ReplayError(
            path,
            f"epoch value {values.iloc[i]!r} has a different unit than row 1 ({_EPOCH_UNITS[unit[0]][2]})",
            row=i + 1,
            column=column,
        )
    scale = _EPOCH_UNITS[int(unit[0])][1]
    if pd.api.types.is_integer_dtype(values.dtype):
        return np.asarray(values.to_numpy(dtype=np.int64) * scale, dtype=np.int64)
    return np.asarray(np.round(as_float * scale), dtype=np.int64)


def _utc_ns(stamps: pd.Series) -> Int64:
    naive_utc = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return np.asarray(naive_utc.to_numpy(dtype="datetime64[ns]").view(np.int64), dtype=np.int64)


def _timestamps_ns(path: Path, column: str, raw: pd.Series, tz: str | tzinfo | None) -> Int64:
    """Bar start times as UTC ns from datetimes, epoch numbers or ISO-8601 strings."""
    if raw.isna().any():
        raise ReplayError(path, "missing timestamp", row=_first_bad(raw.isna().to_numpy()) + 1, column=column)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return _utc_ns(raw)
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        if tz is None:
            raise ReplayError(path, "naive timestamps: pass tz= to say which zone they are in", column=column)
        local = raw.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise")
        return _utc_ns(local)
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return _epoch_ns(path, column, raw)
    text = raw.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        return _epoch_ns(path, column, numeric)
    has_offset = text.str.contains(_OFFSET_SUFFIX, regex=True).to_numpy()
    if not has_offset.all() and tz is None:
        i = _first_bad(~has_offset)
        raise ReplayError(
            path, f"naive timestamp {text.iloc[i]!r}: add a UTC offset or pass tz=", row=i + 1, column=column
        )
    out = np.empty(len(text), dtype=np.int64)
    for mask, localize in ((has_offset, False), (~has_offset, True)):
        if not mask.any():
            continue
        part = pd.to_datetime(text[mask], format="ISO8601", utc=not localize, errors="coerce")
        if part.isna().any():
            i = int(np.flatnonzero(mask)[_first_bad(part.isna().to_numpy())])
            raise ReplayError(path, f"unparsable timestamp {text.iloc[i]!r}", row=i + 1, column=column)
        if localize:
            try:
                part = part.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise")
            except (ValueError, TypeError) as exc:  # ambiguous or nonexistent local time (DST)
                raise ReplayError(path, f"local time not convertible to UTC: {exc}", column=column) from exc
        out[mask] = _utc_ns(part)
    return out


def _asset_classes(path: Path, frame: pd.DataFrame, column: str | None, default: str) -> npt.NDArray[np.int8]:
    if column is None:
        return np.full(len(frame), ASSET_CLASSES.index(default), dtype=np.int8)
    names = frame[column].astype(str).str.strip().str.upper()
    known = names.isin(ASSET_CLASSES).to_numpy()
    if not known.all():
        i = _first_bad(~known)
        raise ReplayError(path, f"unknown asset class {frame[column].iloc[i]!r}", row=i + 1, column=column)
    lookup = {name: k for k, name in enumerate(ASSET_CLASSES)}
    return np.asarray(names.map(lookup).to_numpy(), dtype=np.int8)


def _regular_hours(
    path: Path, column: str, classes: npt.NDArray[np.int8], start_ns: Int64, step: int
) -> npt.NDArray[np.bool_]:
    """Intraday bars are regular when they start inside their market's session; daily and longer bars are the
    session's own bar, and an UNKNOWN asset class has no calendar to say otherwise."""
    regular = np.ones(len(start_ns), dtype=np.bool_)
    if step >= _INTERVAL_NS["d"]:
        return regular
    for k, name in enumerate(ASSET_CLASSES):
        rows = classes == k
        if name == "UNKNOWN" or not rows.any():
            continue
        try:
            regular[rows] = regular_session_mask(market_of(name), start_ns[rows])
        except ValueError as exc:  # a time the calendars do not cover
            raise ReplayError(path, str(exc), column=column) from exc
    return regular


def _check_bars(path: Path, cols: dict[str, str], v: dict[str, npt.NDArray[np.float64]]) -> None:
    checks = (
        ("open", v["open"] <= 0, "price must be positive"),
        ("high", v["high"] <= 0, "price must be positive"),
        ("low", v["low"] <= 0, "price must be positive"),
        ("close", v["close"] <= 0, "price must be positive"),
        ("volume", v["volume"] < 0, "volume must not be negative"),
        ("low", v["low"] > np.minimum(v["open"], v["close"]), "low above open or close"),
        ("high", v["high"] < np.maximum(v["open"], v["close"]), "high below open or close"),
        ("vwap", v["vwap"] <= 0, "vwap must be positive"),
        ("trade_count", v["trade_count"] < 0, "trade count must not be negative"),
    )
    for field, bad, reason in checks:
        if bad.any():
            raise ReplayError(path, reason, row=_first_bad(bad) + 1, column=cols.get(field, field))


def read_bars(
    path: Path,
    *,
    interval: str = "1m",
    symbol: str | None = None,
    tz: str | tzinfo | None = None,
    asset_class: str = "UNKNOWN",
    batch_size: int = 10_000,
) -> Iterator[BarBatch]:
    """Yield the file's bars in (start time, symbol) order, ``batch_size`` rows at a time.

    ``timestamp`` is the bar start. ``symbol`` names the instrument of a file without a symbol column;
    with a symbol column it keeps only that symbol's rows. ``tz`` is the zone of naive timestamps
    (without it they are an error). ``asset_class`` applies when the file has no such column.
    ``regular_session`` comes from the file when present, else from the asset class's session calendar
    (``connectors.sessions``; True for daily and longer bars and for UNKNOWN). vwap is checked for sign
    only: venues compute it over trades that OHLC may exclude.
    """
    step = interval_ns(interval)
    frame = _load(path)
    cols = _columns(path, frame)
    if "symbol" in cols:
        symbols = frame[cols["symbol"]]
        if symbols.isna().any():
            raise ReplayError(path, "missing symbol", row=_first_bad(symbols.isna().to_numpy()) + 1)
        if symbol is not None:
            frame = frame[(symbols == symbol).to_numpy()].reset_index(drop=True)
        sym = frame[cols["symbol"]].astype(str).str.strip().to_numpy(dtype=object)
    elif symbol is not None:
        sym = np.full(len(frame), symbol, dtype=object)
    else:
        raise ReplayError(path, "no symbol column (symbol/ticker/sym) and no symbol= given", column="symbol")

    start_ns = _timestamps_ns(path, cols["timestamp"], frame[cols["timestamp"]], tz)
    v = {f: _numbers(path, frame, cols[f], required=True) for f in REQUIRED[1:]}
    for f in ("vwap", "trade_count"):
        v[f] = _numbers(path, frame, cols[f], required=False) if f in cols else np.full(len(frame), np.nan)
    _check_bars(path, cols, v)
    classes = _asset_classes(path, frame, cols.get("asset_class"), asset_class)
    if "regular_session" in cols:
        flags = frame[cols["regular_session"]].astype(str).str.strip().str.lower()
        regular = flags.isin(("true", "1", "t", "yes")).to_numpy()
    else:
        regular = _regular_hours(path, cols["timestamp"], classes, start_ns, step)

    order = np.lexsort((sym.astype(str), start_ns))
    dup = (np.diff(start_ns[order]) == 0) & (sym[order][1:] == sym[order][:-1])
    if dup.any():
        row = int(order[_first_bad(dup) + 1]) + 1
        raise ReplayError(path, f"duplicate bar for {sym[row - 1]!r}", row=row, column=cols["timestamp"])
    trade_count = np.where(np.isnan(v["trade_count"]), -1, v["trade_count"]).astype(np.int64)
    batch = BarBatch(
        symbol=sym,
        asset_class=classes,
        interval=interval,
        start_ns=start_ns,
        end_ns=start_ns + step,
        open=v["open"],
        high=v["high"],
        low=v["low"],
        close=v["close"],
        volume=v["volume"],
        vwap=v["vwap"],
        trade_count=trade_count,
        regular_session=regular.astype(np.bool_),
    ).take(order)
    for lo in range(0, len(batch), batch_size):
        yield batch.take(slice(lo, lo + batch_size))
