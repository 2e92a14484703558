"""Currency strength and sector rotation end to end: synthetic bars → worker → PostgreSQL/Redis → `tidemark query`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest
import redis
import redis.asyncio as aioredis

from core.consumed import Consumed
from core.settings import Settings
from projections.redis_store import RedisProjection
from projections.rotation import rotation_projection
from tests.integration.test_pipeline import count, expected_bars, fetch, latest_of, synthetic_args
from tests.services import eventually

pytestmark = pytest.mark.integration

STRENGTH_WINDOW = 30
ROTATION_WINDOW, MOMENTUM = 20, 10


def grid_before(bars: pd.DataFrame, symbols: list[str], before_ns: int, rows: int) -> pd.DataFrame:
    """Independent reference: the symbols' closes on their own market-time grid, carried forward (pandas)."""
    chosen = bars[bars.symbol.isin(symbols) & (bars.start_ns < before_ns)]
    closes = chosen.pivot(index="start_ns", columns="symbol", values="close").sort_index().ffill()
    return closes.iloc[-rows:][symbols]


def test_currency_strength_and_sector_rotation_reach_the_cli(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    settings = isolated.changed(
        rotation__strength_window=STRENGTH_WINDOW, rotation__window=ROTATION_WINDOW, rotation__momentum=MOMENTUM
    )
    run_cli("topics", "create")
    run_cli(*synthetic_args())
    bars = expected_bars()
    start_worker(settings)

    # FX trades from 13:00: the 30-bar window is full from 13:31, so 13:45 to 15:45 (the watermark stops at 15:59).
    eventually(lambda: count(isolated.postgres_dsn, "currency_strength") == 9 * 8, timeout=240, what="strengths")
    rows = json.loads(run_cli("query", "currency-strength", "--json").stdout)
    last = int(pd.Timestamp("2025-03-03T15:45Z").value)
    assert [r["rank"] for r in rows] == list(range(1, 9))
    assert {r["basket"] for r in rows} == {"G8"} and {r["window_bars"] for r in rows} == {STRENGTH_WINDOW}
    assert pd.Timestamp(rows[0]["as_of"]).value == last
    pairs = settings.rotation.currency_pairs
    grid = grid_before(bars, pairs, last, STRENGTH_WINDOW + 1)
    returns = np.log(grid.iloc[-1] / grid.iloc[0])
    against: dict[str, list[float]] = {}
    for pair, r in returns.items():
        against.setdefault(pair[:3], []).append(r)
        against.setdefault(pair[3:], []).append(-r)
    want = {c: float(np.mean(rs)) for c, rs in against.items()}
    assert {r["currency"]: r["strength"] for r in rows} == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert [r["currency"] for r in rows] == sorted(want, key=lambda c: -want[c])
    assert all(r["pair_count"] == 28 for r in rows)
    # Redis is written after each PostgreSQL commit: the latest snapshot gets there a moment after its rows.
    latest = eventually(
        lambda: (
            (found := latest_of(isolated, "tm:currency_strength:G8:1m")) and int(found[b"as_of_ns"]) == last and found
        ),
        what="the latest currency strength in Redis",
    )
    assert [c["currency"] for c in json.loads(latest[b"currencies"])] == [r["currency"] for r in rows]

    # The NYSE opens at 14:30: the 30-bar grid is full from 15:01, so snapshots at 15:15, 15:30 and 15:45.
    eventually(lambda: count(isolated.postgres_dsn, "sector_rotation") == 3 * 11, timeout=120, what="rotations")
    sectors = json.loads(run_cli("query", "sectors", "--json").stdout)
    assert [s["rank"] for s in sectors] == list(range(1, 12))
    assert pd.Timestamp(sectors[0]["as_of"]).value == last
    etfs = settings.rotation.sector_etfs
    grid = grid_before(bars, ["SPY", *etfs], last, ROTATION_WINDOW + MOMENTUM + 1)
    rs = grid[etfs].div(grid["SPY"], axis=0)
    ratio = 100 * rs.iloc[-1] / rs.iloc[-1 - ROTATION_WINDOW]
    momentum = 100 * ratio / (100 * rs.iloc[-1 - MOMENTUM] / rs.iloc[0])
    assert {s["symbol"]: s["relative_strength"] for s in sectors} == pytest.approx(ratio.to_dict(), rel=1e-12)
    assert {s["symbol"]: s["momentum"] for s in sectors} == pytest.approx(momentum.to_dict(), rel=1e-12)
    assert [s["symbol"] for s in sectors] == ratio.sort_values(ascending=False).index.tolist()
    assert all(s["previous_quadrant"] in ("LEADING", "WEAKENING", "LAGGING", "IMPROVING") for s in sectors)
    assert {s["benchmark"] for s in sectors} == {"SPY"}

    table = run_cli("query", "sectors").stdout
    assert "universe spdr_sectors: 11 ranked, 20-bar 1m window as of 2025-03-03 15:45 UTC" in table
    assert "currency strength" in run_cli("query", "currency-strength").stdout


def rotation_event(as_of_ns: int, momentum: float) -> dict[str, Any]:
    sector = {"symbol": "XLK", "sector": "Technology", "relative_strength": 100.5, "rank": 1, "quadrant": "LEADING"}
    return {
        "event_id": f"00000000-0000-4000-8000-{as_of_ns % 10**12:012d}",
        "universe": "spdr_sectors",
        "benchmark": "SPY",
        "as_of_ns": as_of_ns,
        "timeframe": "1m",
        "window_bars": 60,
        "sectors": [{**sector, "momentum": momentum}],
        "leader": "XLK",
    }


def test_rotation_projection_applies_each_record_once(isolated: Settings) -> None:
    """Redelivered records (a restarted sink) add no rows and leave Redis at the newest snapshot."""
    t0 = int(pd.Timestamp("2025-03-03T15:00Z").value)
    events = [rotation_event(t0 + i * 15 * 60 * 10**9, m) for i, m in enumerate([100.2, float("nan"), 99.7])]
    records = [Consumed("analytics.sector_rotation", 0, offset, b"spdr_sectors", b"") for offset in range(3)]

    async def apply(batches: list[tuple[int, int]]) -> list[int]:
        pool = await asyncpg.create_pool(isolated.postgres_dsn, min_size=1, max_size=1)
        client = aioredis.from_url(isolated.redis_url)
        try:
            projection = rotation_projection(pool, RedisProjection(client))
            return [await projection.apply(records[a:b], events[a:b]) for a, b in batches]
        finally:
            await pool.close()
            await client.aclose()

    assert asyncio.run(apply([(0, 2), (0, 3), (1, 3)])) == [2, 1, 0]
    rows = fetch(isolated.postgres_dsn, "SELECT momentum FROM sector_rotation ORDER BY as_of")
    assert len(rows) == 3 and rows[0]["momentum"] == 100.2 and rows[1]["momentum"] is None
    latest = redis.Redis.from_url(isolated.redis_url).hgetall("tm:sector_rotation:spdr_sectors:1m")
    assert int(latest[b"as_of_ns"]) == events[-1]["as_of_ns"]
    assert json.loads(latest[b"sectors"])[0]["momentum"] == 99.7
