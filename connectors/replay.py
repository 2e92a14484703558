"""Read historical bars from CSV (plain or gzip, zstd, bz2, xz compressed) or Parquet files into BarBatches (the
pure part of the replay connector).

Two layouts: ``ohlcv``, one bar per row (with or without a symbol column), and ``wide``, a date/time column and
one column of prices per symbol (research datasets, adjusted-close files), read as CLOSE_ONLY bars.

Times are UTC-offset ISO 8601, US month/day/year (``1/4/1999``, spreadsheet exports) or epoch numbers. On daily
bars a date (or a naive midnight) is the session date, stamped like Polygon's daily bars; other naive times need
the zone they were written in (``tz``, the CLI's ``--tz``).

The reader is strict on purpose: a file is outside input, and a silently misparsed timestamp or price
would poison every projection downstream. Any problem raises `ReplayError` naming the file, the row and
the column, before a single batch is yielded, so a publisher never emits half a file. Rows are sorted by
(start time, symbol) and yielded in batches of ``batch_size``.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from datetime import tzinfo
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import zstandard

from core.sessions import NEW_YORK, market_of, regular_session_mask
from schemas.bars import ASSET_CLASSES, CLOSE_ONLY, BarBatch, Int64

Layout = Literal["ohlcv", "wide"]
LAYOUTS: tuple[Layout, ...] = ("ohlcv", "wide")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.zst", ".csv.bz2", ".csv.xz")
PARQUET_SUFFIXES = (".parquet", ".pq")

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
# A UTC offset after a time of day; a bare date such as 1999-01-04 has none, though it ends in "-04".
_OFFSET_SUFFIX = r":\d{2}(?:[.,]\d+)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
# US month/day/year with a four-digit year and an optional 24-hour time: 1/4/1999, 01/04/1999 09:30:00.
_US_DATE = r"(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(:\d{2}(?:\.\d+)?)?)?"
_FORMATS = "ISO 8601 (1999-01-04, 1999-01-04T09:30:00-05:00), US month/day/year (1/4/1999) or epoch numbers"
_NAIVE_HINT = "add a UTC offset or name its zone with --tz (e.g. --tz America/New_York)"


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
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        # Everything as text: tickers like "NA" stay tickers, and we parse numbers ourselves to report rows.
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], compression="infer")
        except (OSError, EOFError, ValueError, lzma.LZMAError, zstandard.ZstdError) as exc:  # corrupt or truncated
            raise ReplayError(path, f"cannot read the file: {exc}") from exc
    if name.endswith(PARQUET_SUFFIXES):
        frame = pd.read_parquet(path)
        # pandas restores the index it wrote (a DatetimeIndex "Date", say): it is a column of the file.
        return frame if isinstance(frame.index, pd.RangeIndex) else frame.reset_index()
    expected = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise ReplayError(path, f"unsupported file type {''.join(path.suffixes[-2:])!r}: expected {expected}")


def _columns(path: Path, frame: pd.DataFrame) -> dict[str, str]:
    """Map our field names to the file's column names (first alias present wins, case-insensitive)."""
    by_lower = {str(c).strip().lower(): str(c) for c in frame.columns}
    found = {f: next((by_lower[a] for a in names if a in by_lower), None) for f, names in ALIASES.items()}
    for f in REQUIRED:
        if found[f] is None:
            expected = "/".join(ALIASES[f])
            hint = ""
            if found["timestamp"] is not None and not any(found[p] for p in ("open", "high", "low", "close")):
                hint = "; a table with one column of closing prices per symbol reads with --layout wide"
            raise ReplayError(path, f"missing required column {f!r} (any of {expected}){hint}", column=f)
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


def _us_dates_as_iso(text: pd.Series) -> pd.Series:
    """``1/4/1999 9:30`` as ``1999-01-04T09:30``: month/day/year is parsed by an explicit rule, never guessed."""
    parts = text.str.fullmatch(_US_DATE).to_numpy(dtype=bool)
    if not parts.any():
        return text
    found = text[parts].str.extract(_US_DATE)
    day = found[2] + "-" + found[0].str.zfill(2) + "-" + found[1].str.zfill(2)
    time = "T" + found[3].str.zfill(2) + ":" + found[4] + found[5].fillna("")
    out = text.copy()
    out[parts] = day.where(found[3].isna(), day + time).to_numpy()
    return out


def _naive_ns(
    path: Path, column: str, stamps: pd.Series, shown: pd.Series, tz: str | tzinfo | None, daily: bool
) -> Int64:
    """Naive datetimes as UTC ns. On daily bars a date (a naive midnight) is its session date and the bar starts at
    New York midnight of that date, where Polygon's daily aggregates on md.bars.1d start, so a replayed and a
    backfilled history give a session the same bar. Any other naive time is local time in ``tz``."""
    out = np.empty(len(stamps), dtype=np.int64)
    dates = (stamps == stamps.dt.normalize()).to_numpy() if daily else np.zeros(len(stamps), dtype=np.bool_)
    if dates.any():
        out[dates] = _utc_ns(stamps[dates].dt.tz_localize(NEW_YORK))
    timed = ~dates
    if not timed.any():
        return out
    if tz is None:
        i = _first_bad(timed)
        raise ReplayError(
            path, f"naive timestamp {shown.iloc[i]!r}: {_NAIVE_HINT}", row=int(stamps.index[i]) + 1, column=column
        )
    try:
        out[timed] = _utc_ns(stamps[timed].dt.tz_localize(tz, ambiguous="raise", nonexistent="raise"))
    except (ValueError, TypeError) as exc:  # ambiguous or nonexistent local time (DST)
        raise ReplayError(path, f"local time not convertible to UTC: {exc}", column=column) from exc
    return out


def _timestamps_ns(path: Path, column: str, raw: pd.Series, tz: str | tzinfo | None, daily: bool) -> Int64:
    """Bar start times as UTC ns from datetimes, epoch numbers, ISO-8601 or US month/day/year strings."""
    raw = raw.reset_index(drop=True)  # index = row - 1, for error messages
    if raw.isna().any():
        raise ReplayError(path, "missing timestamp", row=_first_bad(raw.isna().to_numpy()) + 1, column=column)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return _utc_ns(raw)
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        return _naive_ns(path, column, raw, raw.astype(str), tz, daily)
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return _epoch_ns(path, column, raw)
    shown = raw.astype(str).str.strip()
    numeric = pd.to_numeric(shown, errors="coerce")
    if numeric.notna().all():
        return _epoch_ns(path, column, numeric)
    text = _us_dates_as_iso(shown)
    has_offset = text.str.contains(_OFFSET_SUFFIX, regex=True).to_numpy()
    out = np.empty(len(text), dtype=np.int64)
    for mask, aware in ((has_offset, True), (~has_offset, False)):
        if not mask.any():
            continue
        part = pd.to_datetime(text[mask], format="ISO8601", utc=aware, errors="coerce")
        if part.isna().any():
            i = int(np.flatnonzero(mask)[_first_bad(part.isna().to_numpy())])
            reason = f"unparsable timestamp {shown.iloc[i]!r}: expected {_FORMATS}"
            if "/" in shown.iloc[i]:
                reason = (
                    f"unparsable date {shown.iloc[i]!r}: dates with slashes are read as US month/day/year with a"
                    " four-digit year (1/4/1999); write any other layout as ISO 8601 (1999-01-04)"
                )
            raise ReplayError(path, reason, row=i + 1, column=column)
        out[mask] = _utc_ns(part) if aware else _naive_ns(path, column, part, shown[mask], tz, daily)
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


def _ohlcv_bars(
    path: Path,
    frame: pd.DataFrame,
    interval: str,
    step: int,
    symbol: str | None,
    tz: str | tzinfo | None,
    asset_class: str,
) -> tuple[BarBatch, npt.NDArray[np.intp], str]:
    """One bar per row: (the bars in file order, each bar's 0-based row, the time column)."""
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
        raise ReplayError(path, "no symbol column (symbol/ticker/sym): name the symbol with --symbol", column="symbol")

    start_ns = _timestamps_ns(path, cols["timestamp"], frame[cols["timestamp"]], tz, step >= _INTERVAL_NS["d"])
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
    bars = BarBatch(
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
        trade_count=np.where(np.isnan(v["trade_count"]), -1, v["trade_count"]).astype(np.int64),
        regular_session=regular.astype(np.bool_),
    )
    return bars, np.arange(len(bars)), cols["timestamp"]


def _wide_bars(
    path: Path,
    frame: pd.DataFrame,
    interval: str,
    step: int,
    symbol: str | None,
    tz: str | tzinfo | None,
    asset_class: str,
) -> tuple[BarBatch, npt.NDArray[np.intp], str]:
    """A date/time column and one column of prices per symbol: a CLOSE_ONLY bar per filled cell (a blank cell is
    a day without a price, e.g. before a listing). Open, high and low repeat the close and volume is 0, so that
    OHLC invariants hold for readers that ignore ``kind``."""
    by_lower = {str(c).strip().lower(): str(c) for c in frame.columns}
    time_column = next((by_lower[a] for a in ALIASES["timestamp"] if a in by_lower), None)
    if time_column is None:
        expected = "/".join(ALIASES["timestamp"])
        raise ReplayError(path, f"a wide table needs a date/time column (any of {expected})", column="timestamp")
    bar_fields = {alias for field in ALIASES if field != "timestamp" for alias in ALIASES[field]}
    columns = [str(c) for c in frame.columns if str(c) != time_column]
    for column in columns:
        if column.strip().lower() in bar_fields:
            raise ReplayError(
                path, "a bar field, not a symbol: a file of OHLCV bars reads with --layout ohlcv", column=column
            )
        if column.startswith("Unnamed: "):  # pandas' name for a blank header
            raise ReplayError(path, "a column without a header: name it after its symbol", column=column)
    if symbol is not None:
        columns = [c for c in columns if c.strip() == symbol]
        if not columns:
            raise ReplayError(path, f"no column for symbol {symbol!r}", column=symbol)
    if not columns:
        raise ReplayError(path, "a wide table needs a column of prices per symbol beside the date/time column")

    times = _timestamps_ns(path, time_column, frame[time_column], tz, step >= _INTERVAL_NS["d"])
    prices = np.column_stack([_numbers(path, frame, c, required=False) for c in columns])  # rows x symbols
    if (prices <= 0).any():
        row, col = np.argwhere(prices <= 0)[0]
        raise ReplayError(path, "price must be positive", row=int(row) + 1, column=columns[col])
    rows, cols = np.nonzero(~np.isnan(prices))
    close = prices[rows, cols]
    start_ns = times[rows]
    classes = np.full(len(close), ASSET_CLASSES.index(asset_class), dtype=np.int8)
    bars = BarBatch(
        symbol=np.array([c.strip() for c in columns], dtype=object)[cols],
        asset_class=classes,
        interval=interval,
        start_ns=start_ns,
        end_ns=start_ns + step,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=np.zeros(len(close)),
        vwap=np.full(len(close), np.nan),
        trade_count=np.full(len(close), -1, dtype=np.int64),
        regular_session=_regular_hours(path, time_column, classes, start_ns, step),
        kind=np.full(len(close), CLOSE_ONLY, dtype=np.int8),
    )
    return bars, rows, time_column


def read_bars(
    path: Path,
    *,
    interval: str = "1m",
    symbol: str | None = None,
    tz: str | tzinfo | None = None,
    asset_class: str = "UNKNOWN",
    layout: Layout = "ohlcv",
    batch_size: int = 10_000,
) -> Iterator[BarBatch]:
    """Yield the file's bars in (start time, symbol) order, ``batch_size`` rows at a time.

    ``layout`` is ``ohlcv`` (one bar per row) or ``wide`` (one column of closing prices per symbol: CLOSE_ONLY
    bars). The time column is the bar start. ``symbol`` names the instrument of an ohlcv file without a symbol
    column; with a symbol column, or with a wide table, it keeps only that symbol. ``tz`` is the zone of naive
    times (without it they are an error, except dates on daily bars: see the module doc). ``asset_class``
    applies when the file has no such column. ``regular_session`` comes from the file when present, else from
    the asset class's session calendar (``core.sessions``; True for daily and longer bars and for
    UNKNOWN). vwap is checked for sign only: venues compute it over trades that OHLC may exclude.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    step = interval_ns(interval)
    frame = _load(path)
    read = _wide_bars if layout == "wide" else _ohlcv_bars
    bars, rows, time_column = read(path, frame, interval, step, symbol, tz, asset_class)
    order = np.lexsort((bars.symbol.astype(str), bars.start_ns))
    sym = bars.symbol[order]
    dup = (np.diff(bars.start_ns[order]) == 0) & (sym[1:] == sym[:-1])
    if dup.any():
        k = int(order[_first_bad(dup) + 1])
        raise ReplayError(path, f"duplicate bar for {bars.symbol[k]!r}", row=int(rows[k]) + 1, column=time_column)
    batch = bars.take(order)
    for lo in range(0, len(batch), batch_size):
        yield batch.take(slice(lo, lo + batch_size))
