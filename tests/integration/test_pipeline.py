"""The walking skeleton end to end: synthetic connector → Kafka → worker subprocess → PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest
import redis

from connectors.synthetic.market import build_universe, generate_bars
from core.kafka import message_count
from core.settings import Settings
from projections.analytics import dequantise
from schemas.bars import BarBatch
from tests.integration.kafka_tools import worker_caught_up
from tests.services import eventually

pytestmark = pytest.mark.integration

START = datetime(2025, 3, 3, 13, 0, tzinfo=UTC)  # equities open at 14:30 UTC on this (winter-time) Monday
MINUTES = 180
SYMBOLS = 100
SEED = 7


def synthetic_args(symbols: int = SYMBOLS, minutes: int = MINUTES, seed: int = SEED) -> list[str]:
    return [
        "ingest",
        "synthetic",
        "--symbols",
        str(symbols),
        "--seed",
        str(seed),
        "--start",
        START.isoformat(),
        "--days",
        repr(minutes / 1440),
    ]


def expected_bars(symbols: int = SYMBOLS, minutes: int = MINUTES, seed: int = SEED) -> pd.DataFrame:
    """What the connector must have published: the same deterministic market, generated in-process."""
    universe = build_universe(n_symbols=symbols, seed=seed, start=START, days=1)
    frames = [_frame(b) for b in generate_bars(universe, start=START, minutes=minutes, seed=seed)]
    return pd.concat(frames, ignore_index=True)


def _frame(bars: BarBatch) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": bars.symbol.astype(str),
            "start_ns": bars.start_ns,
            "close": bars.close,
            "volume": bars.volume,
        }
    )


def fetch(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def count(dsn: str, table: str) -> int:
    return int(fetch(dsn, f"SELECT count(*) AS n FROM {table}")[0]["n"])


def projected_bars(dsn: str) -> pd.DataFrame:
    rows = fetch(
        dsn,
        "SELECT symbol, (extract(epoch FROM start_ts) * 1e9)::bigint AS start_ns, close, volume FROM bars",
    )
    return pd.DataFrame(rows)


def market_time_correlation(bars: pd.DataFrame, symbols: list[str], before_ns: int, window: int) -> pd.DataFrame:
    """An independent reference: closes on the universe's market-time grid, carried forward, pandas corr."""
    universe = bars[bars.symbol.isin(symbols) & (bars.start_ns < before_ns)]
    closes = universe.pivot(index="start_ns", columns="symbol", values="close").sort_index().ffill()
    returns = np.log(closes.iloc[-(window + 1) :]).diff().iloc[1:]
    return returns.corr()


def latest_of(settings: Settings, key: str) -> dict[bytes, bytes]:
    return redis.Redis.from_url(settings.redis_url).hgetall(key)  # type: ignore[return-value]


def test_synthetic_bars_flow_through_the_worker_into_the_projections(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    published = run_cli(*synthetic_args())
    expected = expected_bars()
    assert f"published {len(expected):,} bars" in published.stderr
    assert message_count(isolated.kafka.bootstrap, isolated.topic("md.bars.1m")) == len(expected)

    start_worker()
    eventually(lambda: count(isolated.postgres_dsn, "bars") == len(expected), timeout=180, what="all bars projected")

    got = projected_bars(isolated.postgres_dsn).sort_values(["symbol", "start_ns"], ignore_index=True)
    want = expected.sort_values(["symbol", "start_ns"], ignore_index=True)
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)

    # Redis is written after each PostgreSQL commit: the latest bar gets there a moment after its row.
    last_spy = want[want.symbol == "SPY"].iloc[-1]
    latest = eventually(
        lambda: (
            (found := latest_of(isolated, "tm:bar:1m:SPY")) and int(found[b"start_ns"]) == last_spy.start_ns and found
        ),
        what="the latest SPY bar in Redis",
    )
    assert float(latest[b"close"]) == last_spy.close

    # Snapshots every 15 market minutes from 13:15 to 15:45 (the watermark reaches 15:59, not 16:00), for each
    # minute window; no market closed a session before 16:00 UTC, so no daily window has a snapshot yet.
    boundaries = 11
    per_window = "SELECT timeframe, window_bars, count(*) AS n FROM correlation_snapshots GROUP BY 1, 2 ORDER BY 1, 2"
    eventually(
        lambda: (
            fetch(isolated.postgres_dsn, per_window)
            == [{"timeframe": "1m", "window_bars": w, "n": boundaries} for w in (60, 390)]
        ),
        timeout=60,
        what="every correlation snapshot projected",
    )
    # Statistics and correlations are projected from topics of their own: wait for all of it, not one table.
    eventually(lambda: worker_caught_up(isolated), timeout=120, what="the worker caught up")
    snapshot = run_cli("query", "correlations", "--top", "5", "--json")
    pairs = json.loads(snapshot.stdout)
    assert len(pairs) == 5

    last = fetch(
        isolated.postgres_dsn,
        "SELECT (extract(epoch FROM as_of) * 1e9)::bigint AS as_of_ns, symbols, upper_f64, window_bars"
        " FROM correlation_latest WHERE timeframe = '1m' AND window_bars = 60",
    )[0]
    assert last["as_of_ns"] == int(pd.Timestamp("2025-03-03T15:45Z").value)
    symbols = list(last["symbols"])
    assert set(symbols) == set(isolated.correlation.universe)
    reference = market_time_correlation(want, isolated.correlation.universe, last["as_of_ns"], last["window_bars"])
    n = len(symbols)
    rows, cols = np.triu_indices(n, 1)
    reference_upper = reference.loc[symbols, symbols].to_numpy()[rows, cols]
    np.testing.assert_allclose(np.frombuffer(last["upper_f64"], dtype="<f8"), reference_upper, atol=1e-9)
    history = fetch(
        isolated.postgres_dsn,
        "SELECT upper_q FROM correlation_snapshots WHERE timeframe = '1m' AND window_bars = 60 ORDER BY as_of DESC",
    )[0]
    np.testing.assert_allclose(dequantise(history["upper_q"]), reference_upper, atol=0.5 / 32767 + 1e-12)
    cached = eventually(
        lambda: (
            (found := latest_of(isolated, f"tm:correlations:{isolated.correlation.universe_name}:1m:60"))
            and int(found[b"as_of_ns"]) == last["as_of_ns"]
            and found
        ),
        what="the latest correlations in Redis",
    )
    upper_f32 = np.frombuffer(base64.b64decode(cached[b"upper_triangle_f32le_base64"]), dtype="<f4")
    np.testing.assert_allclose(upper_f32, reference_upper, atol=1e-6)
    top = pairs[0]
    assert top["correlation"] == pytest.approx(reference.loc[top["a"], top["b"]], abs=1e-9)

    assert count(isolated.postgres_dsn, "symbol_stats") == 2 * len(isolated.correlation.universe)
    spy = fetch(
        isolated.postgres_dsn,
        "SELECT window_return, last_close FROM symbol_stats WHERE symbol = 'SPY' AND window_bars = 60",
    )[0]
    spy_closes = want[(want.symbol == "SPY") & (want.start_ns < last["as_of_ns"])].close.to_numpy()
    assert spy["last_close"] == spy_closes[-1]
    assert spy["window_return"] == pytest.approx(spy_closes[-1] / spy_closes[-61] - 1, rel=1e-12)

    stats = json.loads(run_cli("query", "stats", "SPY", "--json").stdout)
    assert [(row["symbol"], row["window_bars"]) for row in stats] == [("SPY", 60), ("SPY", 390)]
    listed = json.loads(run_cli("query", "bars", "SPY", "--limit", "3", "--json").stdout)
    assert [row["close"] for row in listed] == list(spy_all := want[want.symbol == "SPY"].close.to_numpy()[-3:])
    assert len(spy_all) == 3
