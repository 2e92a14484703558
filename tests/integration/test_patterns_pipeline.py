"""Pattern signals end to end: synthetic bars → worker → signals.patterns → PostgreSQL/Redis → `tidemark query`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest
import redis
import redis.asyncio as aioredis

from connectors.synthetic.market import build_universe, generate_bars
from core.consumed import Consumed
from core.kafka import partition_for_key
from core.settings import Settings
from projections.redis_store import RedisProjection
from projections.signals import signals_projection
from schemas.catalogue import topic_spec
from streams.patterns.factory import FACTORY
from streams.processors import BarFrame
from tests.integration.test_pipeline import count, fetch, latest_of
from tests.services import eventually

pytestmark = pytest.mark.integration

START = datetime(2025, 3, 3, tzinfo=UTC)  # Monday 00:00 UTC: FX and futures trade all night, equities from 14:30
MINUTES = 16 * 60
SYMBOLS, SEED = 100, 7


def expected_events(settings: Settings) -> list[dict[str, Any]]:
    """Independent of the worker: the pure processor over the connector's deterministic bars in one batch."""
    universe = build_universe(n_symbols=SYMBOLS, seed=SEED, start=START, days=1)
    batches = list(generate_bars(universe, start=START, minutes=MINUTES, seed=SEED))
    symbol = np.concatenate([b.symbol for b in batches])
    partitions = topic_spec("md.bars.1m").partitions
    frame = BarFrame(
        np.array([partition_for_key(s.encode(), partitions) for s in symbol.tolist()], dtype=np.int32),
        symbol,
        np.concatenate([b.start_ns for b in batches]),
        np.concatenate([b.close for b in batches]),
        np.concatenate([b.asset_class for b in batches]),
    )
    return [e.event for e in FACTORY.create(settings).process(frame)]


def test_pattern_signals_reach_the_cli(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    run_cli(
        "ingest", "synthetic", "--symbols", str(SYMBOLS), "--seed", str(SEED), "--start", START.isoformat(),
        "--days", repr(MINUTES / 1440),
    )  # fmt: skip
    expected = expected_events(isolated)
    assert len(expected) >= 3, "the chosen market should yield signals"
    start_worker()

    eventually(lambda: count(isolated.postgres_dsn, "pattern_signals") == len(expected), timeout=300, what="signals")
    stored = fetch(isolated.postgres_dsn, "SELECT * FROM pattern_signals")
    by_id = {str(r["event_id"]): r for r in stored}
    assert set(by_id) == {e["event_id"] for e in expected}
    for event in expected:
        row = by_id[event["event_id"]]
        assert row["symbols"] == event["symbols"] and row["pattern_family"] == event["pattern_family"]
        assert row["statistic"] == pytest.approx(event["statistic"], rel=1e-12)
        assert row["adjusted_p_value"] == pytest.approx(event["adjusted_p_value"], rel=1e-12)
        assert row["sharpe_se"] == pytest.approx(event["sharpe_se"], rel=1e-12)
        assert row["deflated_sharpe"] == pytest.approx(event["deflated_sharpe"], rel=1e-12)
        assert row["tests_in_family"] == event["tests_in_family"]
        assert json.loads(row["params"]) == event["params"]

    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event in expected:
        pattern = (event["pattern_family"], ",".join(event["symbols"]), event["timeframe"])
        if pattern not in latest or event["as_of_ns"] > latest[pattern]["as_of_ns"]:
            latest[pattern] = event
    rows = json.loads(run_cli("query", "signals", "--json").stdout)
    assert {(r["family"], r["symbols"], r["timeframe"]): r["event_id"] for r in rows} == {
        p: e["event_id"] for p, e in latest.items()
    }
    as_of = [pd.Timestamp(r["as_of"]).value for r in rows]
    assert as_of == sorted(as_of, reverse=True)

    symbol = expected[0]["symbols"][0]
    filtered = json.loads(run_cli("query", "signals", "--symbol", symbol, "--json").stdout)
    assert filtered and all(symbol in r["symbols"].split(",") for r in filtered)
    assert json.loads(run_cli("query", "signals", "--family", "seasonality", "--json").stdout) == []
    table = run_cli("query", "signals").stdout
    assert "pattern signals" in table and "±" in table  # every Sharpe ratio with its standard error

    first = latest[(expected[0]["pattern_family"], ",".join(expected[0]["symbols"]), expected[0]["timeframe"])]
    key = f"tm:signal:{first['pattern_family']}:{','.join(first['symbols'])}:{first['timeframe']}"
    # Redis is written after each PostgreSQL commit: the latest signal gets there a moment after its row.
    cached = eventually(
        lambda: (found := latest_of(isolated, key)) and int(found[b"as_of_ns"]) == first["as_of_ns"] and found,
        what="the latest signal in Redis",
    )
    assert cached[b"event_id"].decode() == first["event_id"]


def signal_event(as_of_ns: int, statistic: float) -> dict[str, Any]:
    return {
        "event_id": f"00000000-0000-4000-8000-{as_of_ns % 10**12:012d}",
        "pattern_family": "PAIRS_MEAN_REVERSION",
        "direction": "SHORT",
        "symbols": ["AAA", "BBB"],
        "timeframe": "15m",
        "window_bars": 100,
        "as_of_ns": as_of_ns,
        "test": "engle_granger_adf",
        "statistic": statistic,
        "p_value": 1e-6,
        "adjusted_p_value": 1e-3,
        "correction": "BENJAMINI_HOCHBERG",
        "tests_in_family": 500,
        "significance": 0.05,
        "sharpe": 3.0,
        "sharpe_se": 1.2,
        "psr": 0.99,
        "deflated_sharpe": 0.4,
        "half_life": None,
        "hurst": 0.3,
        "params": {"hedge_ratio": "1.1"},
    }


def test_signals_projection_applies_each_record_once(isolated: Settings) -> None:
    """Redelivered records (a restarted sink) add no rows and leave Redis at the newest signal."""
    t0 = int(pd.Timestamp("2025-03-03T15:00Z").value)
    events = [signal_event(t0 + i * 3600 * 10**9, -5.0 - i) for i in range(3)]
    records = [Consumed("signals.patterns", 0, offset, b"AAA,BBB", b"") for offset in range(3)]

    async def apply(batches: list[tuple[int, int]]) -> list[int]:
        pool = await asyncpg.create_pool(isolated.postgres_dsn, min_size=1, max_size=1)
        client = aioredis.from_url(isolated.redis_url)
        try:
            projection = signals_projection(pool, RedisProjection(client))
            return [await projection.apply(records[a:b], events[a:b]) for a, b in batches]
        finally:
            await pool.close()
            await client.aclose()

    assert asyncio.run(apply([(0, 2), (0, 3), (1, 3)])) == [2, 1, 0]
    rows = fetch(isolated.postgres_dsn, "SELECT statistic, half_life FROM pattern_signals ORDER BY as_of")
    assert [r["statistic"] for r in rows] == [-5.0, -6.0, -7.0] and rows[0]["half_life"] is None
    cached = redis.Redis.from_url(isolated.redis_url).hgetall("tm:signal:PAIRS_MEAN_REVERSION:AAA,BBB:15m")
    assert int(cached[b"as_of_ns"]) == events[-1]["as_of_ns"] and cached[b"half_life"] == b""
