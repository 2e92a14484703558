from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zstandard

from connectors.replay import ReplayError, interval_ns, read_bars
from connectors.synthetic.market import build_universe, generate_bars
from core.units import NS_PER_MINUTE
from schemas.bars import ASSET_CLASSES, BAR_KINDS, CLOSE_ONLY, BarBatch
from tidemark.backfill import day_range_ns

T0 = datetime(2024, 3, 8, 14, 30, tzinfo=UTC)  # 09:30 New York (EST)
T0_NS = int(T0.timestamp()) * 1_000_000_000


def _frame(timestamps: list[object], **overrides: list[object]) -> pd.DataFrame:
    n = len(timestamps)
    columns: dict[str, list[object]] = {
        "symbol": ["AAA", "BBB"] * (n // 2) + ["AAA"] * (n % 2),
        "timestamp": timestamps,
        "open": [10.0] * n,
        "high": [11.0] * n,
        "low": [9.0] * n,
        "close": [10.5] * n,
        "volume": [100.0] * n,
    }
    columns.update(overrides)
    return pd.DataFrame(columns)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def _read(path: Path, **kwargs: object) -> BarBatch:
    batches = list(read_bars(path, **kwargs))  # type: ignore[arg-type]
    return BarBatch(
        **{
            f: np.concatenate([getattr(b, f) for b in batches])
            for f in BarBatch.__dataclass_fields__
            if f != "interval"
        },
        interval=batches[0].interval,
    )


ISO = [
    "2024-03-08T09:31:00-05:00",
    "2024-03-08T14:30:00Z",
    "2024-03-08T15:30:00+01:00",
    "2024-03-08T14:31:00+00:00",
]
EXPECTED = [T0_NS + NS_PER_MINUTE, T0_NS, T0_NS, T0_NS + NS_PER_MINUTE]
EPOCH_S = [t // 1_000_000_000 for t in EXPECTED]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(
    "timestamps",
    [
        pytest.param(ISO, id="iso-with-offsets"),
        pytest.param([s * 1000 for s in EPOCH_S], id="epoch-ms"),
        pytest.param(EPOCH_S, id="epoch-s"),
        pytest.param([s * 1_000_000 for s in EPOCH_S], id="epoch-us"),
        pytest.param(EXPECTED, id="epoch-ns"),
        pytest.param([s + 0.0 for s in EPOCH_S], id="epoch-s-float"),
    ],
)
def test_timestamps_become_utc_in_order(tmp_path: Path, suffix: str, timestamps: list[object]) -> None:
    bars = _read(_write(_frame(timestamps), tmp_path / f"bars{suffix}"))
    assert list(bars.start_ns) == [T0_NS, T0_NS, T0_NS + NS_PER_MINUTE, T0_NS + NS_PER_MINUTE]
    assert list(bars.symbol) == ["AAA", "BBB", "AAA", "BBB"]
    assert (bars.end_ns - bars.start_ns == NS_PER_MINUTE).all()
    assert np.isnan(bars.vwap).all() and (bars.trade_count == -1).all()
    assert (bars.asset_class == ASSET_CLASSES.index("UNKNOWN")).all() and bars.regular_session.all()


def test_parquet_datetime_column_with_zone(tmp_path: Path) -> None:
    stamps = pd.to_datetime(ISO, format="ISO8601", utc=True).tz_convert("America/New_York")
    bars = _read(_write(_frame(list(stamps)), tmp_path / "bars.parquet"))
    assert list(bars.start_ns) == [T0_NS, T0_NS, T0_NS + NS_PER_MINUTE, T0_NS + NS_PER_MINUTE]


@pytest.mark.parametrize(
    ("suffix", "timestamps"),
    [
        (".csv", ["2024-03-08T09:31:00", "2024-03-08T09:30:00"]),
        (".csv", ["2024-03-08 09:31", "2024-03-08T09:30:00-05:00"]),
        (".parquet", ["2024-03-08T09:31:00", "2024-03-08T09:30:00"]),
        (".parquet", list(pd.to_datetime(["2024-03-08T09:31:00", "2024-03-08T09:30:00"]))),
    ],
)
def test_naive_timestamps_need_a_zone(tmp_path: Path, suffix: str, timestamps: list[object]) -> None:
    path = _write(_frame(timestamps), tmp_path / f"bars{suffix}")
    with pytest.raises(ReplayError, match="naive") as info:
        _read(path)
    assert info.value.column == "timestamp" and str(path) in str(info.value)
    bars = _read(path, tz="America/New_York")
    assert sorted(bars.start_ns) == [T0_NS, T0_NS + NS_PER_MINUTE]


def test_aliases_and_optional_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "Ticker": ["EURUSD", "MES"],
            "t": [T0_NS // 1_000_000] * 2,
            "o": [1.08, 5000.0],
            "h": [1.09, 5001.0],
            "l": [1.07, 4999.0],
            "c": [1.085, 5000.5],
            "v": [10.0, 20.0],
            "vw": [1.081, 5000.2],
            "transactions": [7, 9],
            "asset_class": ["fx", "FUTURE"],
        }
    )
    bars = _read(_write(frame, tmp_path / "polygon.csv"), interval="5m")
    assert list(bars.symbol) == ["EURUSD", "MES"]
    assert list(bars.asset_class) == [ASSET_CLASSES.index("FX"), ASSET_CLASSES.index("FUTURE")]
    assert list(bars.vwap) == [1.081, 5000.2] and list(bars.trade_count) == [7, 9]
    assert bars.interval == "5m" and (bars.end_ns - bars.start_ns == 5 * NS_PER_MINUTE).all()


def test_symbol_argument(tmp_path: Path) -> None:
    single = _write(_frame(ISO[:2]).drop(columns="symbol"), tmp_path / "spy.csv")
    with pytest.raises(ReplayError, match="no symbol column"):
        _read(single)
    assert set(_read(single, symbol="SPY").symbol) == {"SPY"}
    multi = _write(_frame(ISO), tmp_path / "multi.csv")
    assert list(_read(multi, symbol="BBB").symbol) == ["BBB", "BBB"]


def test_equity_regular_session_from_hours(tmp_path: Path) -> None:
    stamps = ["2024-03-08T09:29:00-05:00", "2024-03-08T09:30:00-05:00", "2024-03-08T16:00:00-05:00"]
    frame = _frame(stamps).drop(columns="symbol")
    bars = _read(_write(frame, tmp_path / "ext.csv"), asset_class="EQUITY", symbol="AAA")
    assert list(bars.regular_session) == [False, True, False]


@pytest.mark.parametrize(
    ("asset_class", "stamp", "interval", "regular"),
    [
        ("EQUITY", "2024-11-28T10:00:00-05:00", "1m", False),  # Thanksgiving: NYSE closed
        ("EQUITY", "2024-11-29T12:59:00-05:00", "1m", True),  # the day after closes at 13:00
        ("EQUITY", "2024-11-29T13:00:00-05:00", "1m", False),
        ("EQUITY", "2024-11-28T00:00:00-05:00", "1d", True),  # a daily bar is the session's own bar
        ("FUTURE", "2024-03-12T15:59:00-05:00", "1m", True),  # Globex: 16:00-17:00 Chicago break
        ("FUTURE", "2024-03-12T16:00:00-05:00", "1m", False),
        ("FUTURE", "2024-03-12T17:00:00-05:00", "1m", True),
        ("FX", "2024-03-09T12:00:00-05:00", "1m", False),  # Saturday
        ("FX", "2024-03-10T17:00:00-04:00", "1m", True),  # FX week opens Sunday 17:00 New York
        ("UNKNOWN", "2024-03-09T12:00:00-05:00", "1m", True),
    ],
)
def test_regular_session_from_the_calendar(
    tmp_path: Path, asset_class: str, stamp: str, interval: str, regular: bool
) -> None:
    frame = _frame([stamp]).drop(columns="symbol")
    bars = _read(_write(frame, tmp_path / "bars.csv"), asset_class=asset_class, symbol="X", interval=interval)
    assert list(bars.regular_session) == [regular]


@pytest.mark.parametrize("missing", ["close", "timestamp", "volume"])
def test_missing_column_is_named(tmp_path: Path, missing: str) -> None:
    path = _write(_frame(ISO).drop(columns=missing), tmp_path / "bars.csv")
    with pytest.raises(ReplayError, match=f"missing required column '{missing}'") as info:
        _read(path)
    assert info.value.path == path and info.value.column == missing


@pytest.mark.parametrize(
    ("overrides", "row", "column", "reason"),
    [
        ({"high": [11.0, "abc", 11.0, 11.0]}, 2, "high", "not a number"),
        ({"close": [10.5, 10.5, None, 10.5]}, 3, "close", "not a number"),
        ({"low": [9.0, 9.0, 9.0, 10.2]}, 4, "low", "low above open or close"),
        ({"high": [11.0, 10.2, 11.0, 11.0]}, 2, "high", "high below open or close"),
        ({"open": [10.0, -1.0, 10.0, 10.0], "low": [9.0, -2.0, 9.0, 9.0]}, 2, "open", "positive"),
        ({"volume": [1.0, 1.0, 1.0, -5.0]}, 4, "volume", "negative"),
        ({"timestamp": [*ISO[:2], "not a time+01:00", ISO[3]]}, 3, "timestamp", "unparsable"),
        ({"timestamp": [EPOCH_S[0], EPOCH_S[1] * 1000, EPOCH_S[2], EPOCH_S[3]]}, 2, "timestamp", "unit"),
        ({"timestamp": [ISO[0], ISO[0], ISO[2], ISO[3]], "symbol": ["AAA"] * 4}, 2, "timestamp", "duplicate"),
    ],
)
def test_bad_rows_are_reported(
    tmp_path: Path, overrides: dict[str, list[object]], row: int, column: str, reason: str
) -> None:
    path = _write(_frame(ISO, **overrides), tmp_path / "bad.csv")
    with pytest.raises(ReplayError, match=reason) as info:
        _read(path)
    assert (info.value.row, info.value.column) == (row, column)
    assert f"row {row}" in str(info.value) and str(path) in str(info.value)


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="unsupported file type"):
        _read(tmp_path / "bars.json")


@pytest.mark.parametrize(
    ("interval", "ns"), [("1s", 10**9), ("1m", 60 * 10**9), ("15m", 900 * 10**9), ("1d", 86400 * 10**9)]
)
def test_interval_ns(interval: str, ns: int) -> None:
    assert interval_ns(interval) == ns


@pytest.mark.parametrize("interval", ["", "m", "0m", "1w", "1.5m"])
def test_bad_interval(interval: str) -> None:
    with pytest.raises(ValueError, match="unsupported interval"):
        interval_ns(interval)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_synthetic_bars_round_trip_in_batches(tmp_path: Path, suffix: str) -> None:
    universe = build_universe(100, seed=2)
    generated = list(generate_bars(universe, T0, 30, seed=4))
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "symbol": b.symbol,
                    "timestamp": b.start_ns // 1_000_000,
                    "open": b.open,
                    "high": b.high,
                    "low": b.low,
                    "close": b.close,
                    "volume": b.volume,
                    "vwap": b.vwap,
                    "trade_count": b.trade_count,
                    "asset_class": [ASSET_CLASSES[a] for a in b.asset_class],
                }
            )
            for b in generated
        ]
    ).sample(frac=1.0, random_state=0)  # shuffled: the reader restores time order
    path = _write(frame, tmp_path / f"synthetic{suffix}")
    batches = list(read_bars(path, batch_size=1100))
    assert [len(b) for b in batches] == [1100, 1100, 800]
    starts = np.concatenate([b.start_ns for b in batches])
    expected_starts = np.concatenate([b.start_ns for b in generated])
    assert np.array_equal(starts, expected_starts)
    for field in ("close", "high", "low", "vwap"):
        got = np.concatenate([getattr(b, field) for b in batches])
        by_key = dict(zip(zip(np.concatenate([b.symbol for b in batches]), starts, strict=True), got, strict=True))
        want = np.concatenate([getattr(b, field) for b in generated])
        keys = zip(np.concatenate([b.symbol for b in generated]), expected_starts, strict=True)
        np.testing.assert_allclose([by_key[k] for k in keys], want, rtol=1e-12)


# A Yahoo-style daily history as spreadsheets export it: US dates, an "Adj Close" column, no symbol.
YAHOO = (
    "Date,Open,High,Low,Close,Adj Close,Volume\n"
    "1/5/1999,1228.10,1246.11,1228.10,1244.78,1244.78,775000000\n"
    "1/4/1999,1229.23,1248.81,1219.10,1228.10,1228.10,877000000\n"
    "12/31/1998,1231.93,1237.18,1224.96,1229.23,1229.23,719200000\n"
)
YAHOO_DAYS = [date(1998, 12, 31), date(1999, 1, 4), date(1999, 1, 5)]


def _session_start(day: date) -> int:
    """Where a Polygon daily bar of ``day`` starts: the backfill's New York midnight."""
    return day_range_ns(day, day)[0]


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        (".csv", lambda data: data),
        (".csv.gz", gzip.compress),
        (".csv.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
        (".csv.bz2", bz2.compress),
        (".csv.xz", lzma.compress),
    ],
)
def test_compressed_yahoo_daily_csv(tmp_path: Path, suffix: str, compress: Callable[[bytes], bytes]) -> None:
    path = tmp_path / f"SP500{suffix.upper() if suffix == '.csv.gz' else suffix}"  # suffixes match in any case
    path.write_bytes(compress(YAHOO.encode()))
    bars = _read(path, interval="1d", symbol="SPX", asset_class="EQUITY")
    assert list(bars.start_ns) == [_session_start(d) for d in YAHOO_DAYS]
    assert list(bars.close) == [1229.23, 1228.10, 1244.78]  # Close, not Adj Close
    assert list(bars.open) == [1231.93, 1229.23, 1228.10] and list(bars.volume) == [719200000, 877000000, 775000000]
    assert (bars.end_ns - bars.start_ns == 86_400 * 10**9).all() and bars.regular_session.all()
    assert (bars.kind == BAR_KINDS.index("OHLCV")).all() and set(bars.symbol) == {"SPX"}


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.zst", ".csv.bz2", ".csv.xz"])
def test_a_corrupt_compressed_file_is_a_replay_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bars{suffix}"
    path.write_bytes(b"this is not compressed data at all")
    with pytest.raises(ReplayError, match="cannot read the file") as info:
        _read(path, interval="1d", symbol="SPX")
    assert info.value.path == path


@pytest.mark.parametrize(
    ("stamp", "interval", "tz", "expected"),
    [
        ("1/4/1999", "1d", None, _session_start(date(1999, 1, 4))),  # EST
        ("01/04/1999", "1d", None, _session_start(date(1999, 1, 4))),
        ("1999-01-04", "1d", None, _session_start(date(1999, 1, 4))),
        ("1999-01-04 00:00:00", "1d", None, _session_start(date(1999, 1, 4))),
        ("7/1/2024", "1d", None, _session_start(date(2024, 7, 1))),  # EDT
        ("7/1/2024", "1d", "Asia/Tokyo", _session_start(date(2024, 7, 1))),  # a date is a session, in any zone
        (date(2024, 7, 1), "1d", None, _session_start(date(2024, 7, 1))),  # Parquet date32
        (pd.Timestamp("2024-07-01"), "1d", None, _session_start(date(2024, 7, 1))),  # Parquet naive datetime
        ("2024-07-01T00:00:00-04:00", "1d", None, _session_start(date(2024, 7, 1))),
        ("3/8/2024 9:30", "1m", "America/New_York", T0_NS),
        ("03/08/2024 09:30:00", "1m", "America/New_York", T0_NS),
        ("2024-03-08 09:30", "1m", "America/New_York", T0_NS),
        ("2024-03-08 14:30:00", "1m", "UTC", T0_NS),
        ("3/8/2024 16:00", "1d", "America/New_York", T0_NS + 390 * NS_PER_MINUTE),  # a time of day on a daily bar
        (pd.Timestamp("2024-03-08 09:30"), "1m", "America/New_York", T0_NS),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_dates_and_naive_times(
    tmp_path: Path, suffix: str, stamp: object, interval: str, tz: str | None, expected: int
) -> None:
    frame = _frame([stamp]).drop(columns="symbol")
    bars = _read(_write(frame, tmp_path / f"bars{suffix}"), interval=interval, tz=tz, symbol="X")
    assert list(bars.start_ns) == [expected]


@pytest.mark.parametrize(
    ("stamps", "interval", "row", "reason"),
    [
        (["1/4/1999 9:30", "1/4/1999 9:31"], "1m", 1, "naive timestamp '1/4/1999 9:30': .* --tz America/New_York"),
        (["2024-03-08T09:30:00-05:00", "2024-03-08 09:31"], "1m", 2, "naive timestamp '2024-03-08 09:31'.*--tz"),
        (["1/4/1999", "1/5/1999"], "1m", 1, "naive timestamp '1/4/1999'.*--tz"),  # a date is no minute
        (["1/4/1999", "1/5/1999 16:00"], "1d", 2, "naive timestamp '1/5/1999 16:00'.*--tz"),
        (["1/4/1999", "13/1/1999"], "1d", 2, "unparsable date '13/1/1999': .*US month/day/year"),  # day first
        (["1/4/99", "1/5/99"], "1d", 1, "unparsable date '1/4/99': .*four-digit year"),
        (["1999-01-04", "2/30/1999"], "1d", 2, "unparsable date '2/30/1999'"),
        (["1999-01-04", "4 Jan 1999"], "1d", 2, "unparsable timestamp '4 Jan 1999': expected ISO 8601"),
    ],
)
def test_unreadable_times_name_row_column_and_the_fix(
    tmp_path: Path, stamps: list[str], interval: str, row: int, reason: str
) -> None:
    path = _write(_frame(stamps).drop(columns="symbol").rename(columns={"timestamp": "Date"}), tmp_path / "b.csv")
    with pytest.raises(ReplayError, match=reason) as info:
        _read(path, interval=interval, symbol="X")
    assert (info.value.row, info.value.column) == (row, "Date")


def _wide(days: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Date": days,
            "SPY": ["470.5", "472.25", "471.0"],
            "QQQ": ["", "405.75", "406.5"],  # listed later: a blank cell is no bar
            " BRK.B ": ["360.0", "361.5", ""],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_wide_table_of_closes_reads_as_close_only_bars(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"closes{suffix}"
    frame = _wide(["1/2/2024", "1/3/2024", "1/4/2024"])
    if suffix == ".parquet":  # as pandas writes a frame indexed by date
        frame.set_index(pd.to_datetime(frame.pop("Date"), format="%m/%d/%Y")).replace("", None).astype(
            "float64"
        ).to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    bars = _read(path, interval="1d", layout="wide", asset_class="EQUITY")
    days = [_session_start(date(2024, 1, d)) for d in (2, 3, 4)]
    assert list(zip(bars.start_ns, bars.symbol, bars.close, strict=True)) == [
        (days[0], "BRK.B", 360.0),
        (days[0], "SPY", 470.5),
        (days[1], "BRK.B", 361.5),
        (days[1], "QQQ", 405.75),
        (days[1], "SPY", 472.25),
        (days[2], "QQQ", 406.5),
        (days[2], "SPY", 471.0),
    ]
    assert (bars.kind == CLOSE_ONLY).all() and (bars.volume == 0).all()
    assert (bars.open == bars.close).all() and (bars.high == bars.close).all() and (bars.low == bars.close).all()
    assert np.isnan(bars.vwap).all() and (bars.trade_count == -1).all() and bars.regular_session.all()
    assert (bars.asset_class == ASSET_CLASSES.index("EQUITY")).all()
    assert list(_read(path, interval="1d", layout="wide", symbol="QQQ").close) == [405.75, 406.5]
    assert list(_read(path, interval="1d", layout="wide", symbol="BRK.B").close) == [360.0, 361.5]
    with pytest.raises(ReplayError, match="no column for symbol 'IWM'"):
        _read(path, interval="1d", layout="wide", symbol="IWM")


def test_wide_intraday_closes_take_the_zone_and_the_session_calendar(tmp_path: Path) -> None:
    frame = pd.DataFrame({"time": ["2024-03-08 09:29", "2024-03-08 09:30"], "SPY": [510.0, 511.0]})
    path = _write(frame, tmp_path / "minutes.csv")
    bars = _read(path, layout="wide", tz="America/New_York", asset_class="EQUITY")
    assert list(bars.start_ns) == [T0_NS - NS_PER_MINUTE, T0_NS] and list(bars.regular_session) == [False, True]


@pytest.mark.parametrize(
    ("frame", "row", "column", "reason"),
    [
        (_wide(["1/2/2024", "1/3/2024", "1/4/2024"]).assign(SPY=["1", "n/a", "2"]), 2, "SPY", "not a number: 'n/a'"),
        (_wide(["1/2/2024", "1/3/2024", "1/4/2024"]).assign(QQQ=["", "1", "-3"]), 3, "QQQ", "must be positive"),
        (_wide(["1/2/2024", "1/3/2024", "1/3/2024"]), 3, "Date", "duplicate bar for 'QQQ'"),
        (_wide(["1/2/2024", "1/3/2024", "1/4/2024"]).assign(Close=1.0), None, "Close", "--layout ohlcv"),
        (_wide(["1/2/2024", "1/3/2024", "1/4/2024"]).rename(columns={"Date": "Day"}), None, "timestamp", "date/time"),
        (_wide(["1/2/2024", "1/3/2024", "1/4/2024"])[["Date"]], None, None, "a column of prices per symbol"),
        (_wide(["1/2/2024", "1/3/2024", "1/4/2024"]).rename(columns={"QQQ": ""}), None, "Unnamed: 2", "header"),
    ],
)
def test_bad_wide_tables_are_reported(
    tmp_path: Path, frame: pd.DataFrame, row: int | None, column: str | None, reason: str
) -> None:
    path = _write(frame, tmp_path / "wide.csv")
    with pytest.raises(ReplayError, match=reason) as info:
        _read(path, interval="1d", layout="wide")
    assert (info.value.row, info.value.column) == (row, column)


def test_a_wide_table_read_as_ohlcv_says_how_to_read_it(tmp_path: Path) -> None:
    path = _write(_wide(["1/2/2024", "1/3/2024", "1/4/2024"]), tmp_path / "wide.csv")
    with pytest.raises(ReplayError, match="reads with --layout wide"):
        _read(path, interval="1d", symbol="SPY")
