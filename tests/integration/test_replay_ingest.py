"""``tidemark ingest replay``: a file's bars reach the topic exactly as written; a bad file publishes nothing."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.kafka import message_count
from core.settings import Settings
from schemas.bars import ASSET_CLASSES, BAR_KINDS, BarBatch
from schemas.fastbars import decode_bars
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import count, expected_bars, fetch
from tests.services import eventually
from tidemark.backfill import day_range_ns

pytestmark = pytest.mark.integration


def bars_file(path: Path, frame: pd.DataFrame) -> Path:
    out = pd.DataFrame(
        {
            "symbol": frame.symbol,
            "timestamp": pd.to_datetime(frame.start_ns, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "open": frame.close,
            "high": frame.close,
            "low": frame.close,
            "close": frame.close,
            "volume": frame.volume,
        }
    )
    if path.suffix == ".parquet":
        out.to_parquet(path)
    else:
        out.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_replayed_file_lands_in_the_topic_bar_for_bar(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path, suffix: str
) -> None:
    run_cli("topics", "create")
    frame = expected_bars().head(5000)
    result = run_cli("ingest", "replay", str(bars_file(tmp_path / f"bars{suffix}", frame)))
    assert "published 5,000 bars" in result.stderr
    values = [value for _, _, _, value in read_all(isolated.kafka.bootstrap, isolated.topic("md.bars.1m"))]
    bars, _, failures = decode_bars(values)
    assert not failures
    got = pd.DataFrame({"symbol": bars.symbol.astype(str), "start_ns": bars.start_ns, "close": bars.close})
    want = frame[["symbol", "start_ns", "close"]]
    pd.testing.assert_frame_equal(
        got.sort_values(["symbol", "start_ns"], ignore_index=True),
        want.sort_values(["symbol", "start_ns"], ignore_index=True),
        check_dtype=False,
    )
    assert np.all(bars.end_ns - bars.start_ns == 60_000_000_000)


def test_a_bad_file_is_rejected_with_its_row_and_publishes_nothing(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    frame = expected_bars().head(100).reset_index(drop=True)
    path = bars_file(tmp_path / "bars.csv", frame)
    lines = path.read_text().splitlines()
    lines[42] = lines[42].replace(lines[42].split(",")[2], "not-a-price", 1)
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("ingest", "replay", str(path), check=False)
    assert result.returncode == 2
    assert "row 42" in result.stderr.replace("\n", " ")
    assert message_count(isolated.kafka.bootstrap, isolated.topic("md.bars.1m")) == 0


def test_replayed_equity_bars_carry_the_nyse_session_flag(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    stamps = ["2024-11-27T09:29:00-05:00", "2024-11-27T09:30:00-05:00", "2024-11-28T10:00:00-05:00"]  # Thanksgiving
    path = tmp_path / "spy.csv"
    pd.DataFrame({"timestamp": stamps, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 5}).to_csv(
        path, index=False
    )
    run_cli("ingest", "replay", str(path), "--symbol", "SPY", "--asset-class", "equity")
    values = [value for _, _, _, value in read_all(isolated.kafka.bootstrap, isolated.topic("md.bars.1m"))]
    bars, _, failures = decode_bars(values)
    assert not failures
    order = np.argsort(bars.start_ns)
    assert bars.regular_session[order].tolist() == [False, True, False]
    assert (bars.asset_class == ASSET_CLASSES.index("EQUITY")).all()


def topic_bars(settings: Settings, topic: str) -> BarBatch:
    """Every bar of the topic, in (start, symbol) order."""
    bars, _, failures = decode_bars([value for *_, value in read_all(settings.kafka.bootstrap, settings.topic(topic))])
    assert not failures
    return bars.take(np.lexsort((bars.symbol.astype(str), bars.start_ns)))


def new_york_midnight(day: date) -> int:
    """Where the Polygon backfill's daily bar of ``day`` starts."""
    return day_range_ns(day, day)[0]


def test_gzipped_yahoo_daily_history_lands_on_md_bars_1d_at_session_dates(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    path = tmp_path / "sp500.csv.gz"
    path.write_bytes(
        gzip.compress(
            b"Date,Open,High,Low,Close,Adj Close,Volume\n"
            b"12/31/1998,1231.93,1237.18,1224.96,1229.23,1229.23,719200000\n"
            b"1/4/1999,1229.23,1248.81,1219.10,1228.10,1228.10,877000000\n"
            b"1/5/1999,1228.10,1246.11,1228.10,1244.78,1244.78,775000000\n"
        )
    )
    result = run_cli("ingest", "replay", str(path), "--interval", "1d", "--symbol", "SPX", "--asset-class", "EQUITY")
    assert "published 3 bars" in result.stderr
    bars = topic_bars(isolated, "md.bars.1d")
    days = [date(1998, 12, 31), date(1999, 1, 4), date(1999, 1, 5)]
    assert bars.start_ns.tolist() == [new_york_midnight(d) for d in days]
    assert (bars.end_ns - bars.start_ns == 86_400 * 10**9).all()
    assert bars.close.tolist() == [1229.23, 1228.10, 1244.78] and bars.high.tolist() == [1237.18, 1248.81, 1246.11]
    assert set(bars.symbol) == {"SPX"} and (bars.asset_class == ASSET_CLASSES.index("EQUITY")).all()
    assert (bars.kind == BAR_KINDS.index("OHLCV")).all()


def test_naive_intraday_times_are_read_in_the_zone_given_by_tz(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    path = tmp_path / "spy.csv"
    pd.DataFrame(
        {
            "Date": ["7/1/2024 9:29", "7/1/2024 9:30", "7/1/2024 15:59"],  # New York summer time: UTC-4
            "Open": [1.0, 2.0, 3.0],
            "High": [1.0, 2.0, 3.0],
            "Low": [1.0, 2.0, 3.0],
            "Close": [1.0, 2.0, 3.0],
            "Volume": 5,
        }
    ).to_csv(path, index=False)
    run_cli("ingest", "replay", str(path), "--symbol", "SPY", "--asset-class", "EQUITY", "--tz", "America/New_York")
    bars = topic_bars(isolated, "md.bars.1m")
    utc = pd.to_datetime(["2024-07-01T13:29Z", "2024-07-01T13:30Z", "2024-07-01T19:59Z"]).as_unit("ns")
    assert bars.start_ns.tolist() == utc.asi8.tolist()
    assert bars.close.tolist() == [1.0, 2.0, 3.0] and bars.regular_session.tolist() == [False, True, True]


def test_naive_intraday_times_without_tz_are_rejected_naming_the_option(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    path = tmp_path / "spy.csv"
    pd.DataFrame({"time": ["2024-07-01 09:30"], "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 5}).to_csv(
        path, index=False
    )
    result = run_cli("ingest", "replay", str(path), "--symbol", "SPY", check=False)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "row 1, column 'time': naive timestamp '2024-07-01 09:30'" in message
    assert "--tz America/New_York" in message
    assert message_count(isolated.kafka.bootstrap, isolated.topic("md.bars.1m")) == 0


def test_unsupported_interval_lists_the_accepted_ones(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("timestamp,open,high,low,close,volume\n")
    result = run_cli("ingest", "replay", str(path), "--interval", "5m", check=False)
    assert result.returncode == 2
    assert "'5m' is not one of 1s, 1m, 1d" in " ".join(result.stderr.split())


def test_wide_table_of_closes_becomes_close_only_bars_through_to_the_projection(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    run_cli("topics", "create")
    wide = tmp_path / "closes.csv"
    pd.DataFrame(
        {"Date": ["1/2/2024", "1/3/2024", "1/4/2024"], "SPY": [470.5, 472.25, 471.0], "QQQ": [None, 405.75, 406.5]}
    ).to_csv(wide, index=False)
    result = run_cli("ingest", "replay", str(wide), "--interval", "1d", "--layout", "wide", "--asset-class", "EQUITY")
    assert "published 5 bars" in result.stderr
    ohlcv = tmp_path / "iwm.csv"
    ohlcv.write_text("Date,Open,High,Low,Close,Volume\n1/2/2024,200,202,199,201,1000\n")
    run_cli("ingest", "replay", str(ohlcv), "--interval", "1d", "--symbol", "IWM", "--asset-class", "EQUITY")

    bars = topic_bars(isolated, "md.bars.1d")
    days = [new_york_midnight(date(2024, 1, d)) for d in (2, 3, 4)]
    assert list(zip(bars.start_ns.tolist(), bars.symbol, bars.close.tolist(), strict=True)) == [
        (days[0], "IWM", 201.0),
        (days[0], "SPY", 470.5),
        (days[1], "QQQ", 405.75),
        (days[1], "SPY", 472.25),
        (days[2], "QQQ", 406.5),
        (days[2], "SPY", 471.0),
    ]
    kinds = [BAR_KINDS[k] for k in bars.kind]
    assert kinds == ["OHLCV"] + ["CLOSE_ONLY"] * 5
    close_only = bars.kind == BAR_KINDS.index("CLOSE_ONLY")
    assert (bars.open[close_only] == bars.close[close_only]).all() and (bars.volume[close_only] == 0).all()

    start_worker(isolated)
    eventually(lambda: count(isolated.postgres_dsn, "bars") == 6, timeout=120, what="the daily bars projected")
    rows = fetch(isolated.postgres_dsn, "SELECT symbol, kind FROM bars ORDER BY start_ts, symbol")
    assert [(r["symbol"], r["kind"]) for r in rows] == list(zip(bars.symbol, kinds, strict=True))
    shown = json.loads(run_cli("query", "bars", "QQQ", "--interval", "1d", "--json").stdout)
    assert [(row["close"], row["kind"]) for row in shown] == [(405.75, "CLOSE_ONLY"), (406.5, "CLOSE_ONLY")]
