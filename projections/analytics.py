"""Analytics projections: rolling statistics and correlation snapshots into PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from projections.consumed import Consumed
from projections.offsets import apply_exactly_once
from projections.redis_store import LatestValue, RedisProjection, key, position

STATS_CONSUMER = "projection.stats"
CORRELATIONS_CONSUMER = "projection.correlations"
_NS = "timestamptz 'epoch' + ({} / 1000) * interval '1 microsecond'"

_UPSERT_STATS = f"""
INSERT INTO symbol_stats (symbol, timeframe, window_bars, as_of, bar_count, last_close, window_return, mean_return,
                          stdev_return, volatility_annual, max_drawdown, event_id)
VALUES ($1, $2, $3, {_NS.format("$4::bigint")}, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (symbol, timeframe, window_bars) DO UPDATE SET
    as_of = EXCLUDED.as_of, bar_count = EXCLUDED.bar_count, last_close = EXCLUDED.last_close,
    window_return = EXCLUDED.window_return, mean_return = EXCLUDED.mean_return,
    stdev_return = EXCLUDED.stdev_return, volatility_annual = EXCLUDED.volatility_annual,
    max_drawdown = EXCLUDED.max_drawdown, event_id = EXCLUDED.event_id
WHERE symbol_stats.as_of <= EXCLUDED.as_of
"""

_INSERT_SNAPSHOT = f"""
INSERT INTO correlation_snapshots (universe, timeframe, as_of, window_bars, symbols, upper_triangle, observations,
                                   avg_correlation, eigen_share, diversification_ratio, event_id)
VALUES ($1, $2, {_NS.format("$3::bigint")}, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (universe, timeframe, as_of) DO NOTHING
"""


RowOf = Callable[[dict[str, Any]], tuple[Any, ...]]
LatestOf = Callable[[dict[str, Any]], tuple[str, dict[str, str]]]


class EventProjection:
    """Decoded events into one table (``statement`` per event) and their latest value into Redis, exactly once."""

    def __init__(
        self, pool: asyncpg.Pool, redis: RedisProjection, consumer: str, statement: str, row: RowOf, latest: LatestOf
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._consumer = consumer
        self._statement = statement
        self._row = row
        self._latest = latest

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]]) -> int:
        """``events[i]`` was decoded from ``records[i]``; returns how many records were new."""
        event_of = {id(r): e for r, e in zip(records, events, strict=True)}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            await conn.executemany(self._statement, [self._row(event_of[id(c)]) for c in fresh])

        fresh = await apply_exactly_once(self._pool, self._consumer, records, write)
        values = []
        for record in fresh:
            redis_key, fields = self._latest(event_of[id(record)])
            values.append(LatestValue(redis_key, position(record.partition, record.offset), fields))
        await self._redis.set_latest(values)
        return len(fresh)


def stats_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, STATS_CONSUMER, _UPSERT_STATS, _stats_row, _stats_latest)


def correlation_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, CORRELATIONS_CONSUMER, _INSERT_SNAPSHOT, _snapshot_row, _snapshot_latest)


def _stats_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    fields = ("as_of_ns", "last_close", "window_return", "volatility_annualised")
    return key("stats", e["timeframe"], str(e["window_bars"]), e["symbol"]), {k: str(e[k]) for k in fields}


def _snapshot_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    return key("correlations", e["universe"], e["timeframe"]), {
        "as_of_ns": str(e["as_of_ns"]),
        "window_bars": str(e["window_bars"]),
        "average_correlation": repr(e["average_correlation"]),
        "largest_eigenvalue_share": repr(e["largest_eigenvalue_share"]),
        "symbols": json.dumps(e["symbols"]),
        "upper_triangle": json.dumps(e["matrix"]),
    }


def _stats_row(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["symbol"],
        e["timeframe"],
        e["window_bars"],
        e["as_of_ns"],
        e["bar_count"],
        e["last_close"],
        e["window_return"],
        e["mean_return"],
        e["stdev_return"],
        e["volatility_annualised"],
        e["max_drawdown"],
        e["event_id"],
    )


def _snapshot_row(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["universe"],
        e["timeframe"],
        e["as_of_ns"],
        e["window_bars"],
        e["symbols"],
        e["matrix"],
        e["observations"],
        e["average_correlation"],
        e["largest_eigenvalue_share"],
        e["diversification_ratio"],
        e["event_id"],
    )
