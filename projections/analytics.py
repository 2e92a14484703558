"""Analytics projections: rolling statistics and correlation snapshots into PostgreSQL and Redis."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import numpy as np

from core.consumed import Consumed
from projections.offsets import apply_exactly_once
from projections.redis_store import LatestValue, RedisProjection, key, position

STATS_PROJECTION = "projection.stats"
CORRELATIONS_PROJECTION = "projection.correlations"
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

_SNAPSHOT_COLUMNS = (
    "universe, timeframe, window_bars, as_of, observations, symbols, {matrix}, avg_correlation, eigen_share,"
    " diversification_ratio, event_id"
)
_SNAPSHOT_VALUES = f"($1, $2, $3, {_NS.format('$4::bigint')}, $5, $6, $7, $8, $9, $10, $11)"
_INSERT_HISTORY = f"""
INSERT INTO correlation_snapshots ({_SNAPSHOT_COLUMNS.format(matrix="upper_q")}) VALUES {_SNAPSHOT_VALUES}
ON CONFLICT (universe, timeframe, window_bars, as_of) DO NOTHING
"""
_UPSERT_LATEST = f"""
INSERT INTO correlation_latest ({_SNAPSHOT_COLUMNS.format(matrix="upper_f64")}) VALUES {_SNAPSHOT_VALUES}
ON CONFLICT (universe, timeframe, window_bars) DO UPDATE SET
    as_of = EXCLUDED.as_of, observations = EXCLUDED.observations, symbols = EXCLUDED.symbols,
    upper_f64 = EXCLUDED.upper_f64, avg_correlation = EXCLUDED.avg_correlation, eigen_share = EXCLUDED.eigen_share,
    diversification_ratio = EXCLUDED.diversification_ratio, event_id = EXCLUDED.event_id
WHERE correlation_latest.as_of <= EXCLUDED.as_of
"""
QUANT_SCALE = 32767
QUANT_NAN = -32768


def quantise(upper: Sequence[float] | np.ndarray) -> bytes:
    """The history's encoding of an upper triangle: int16 little-endian, value * 32767, NaN as -32768."""
    values = np.asarray(upper, dtype=np.float64)
    q = np.where(np.isfinite(values), np.rint(np.clip(values, -1.0, 1.0) * QUANT_SCALE), QUANT_NAN)
    return q.astype("<i2").tobytes()


def dequantise(data: bytes) -> np.ndarray:
    q = np.frombuffer(data, dtype="<i2")
    return np.where(q == QUANT_NAN, np.nan, q / QUANT_SCALE)


RowsOf = Callable[[dict[str, Any]], list[tuple[Any, ...]]]
LatestOf = Callable[[dict[str, Any]], tuple[str, dict[str, str]]]


class EventProjection:
    """Decoded events into one table (``statement`` per row; ``rows`` of each event) and their latest value into
    Redis, exactly once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisProjection,
        projection: str,
        statement: str,
        rows: RowsOf,
        latest: LatestOf,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._projection = projection
        self._statement = statement
        self._rows = rows
        self._latest = latest

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]]) -> int:
        """``events[i]`` was decoded from ``records[i]``; returns how many records were new."""
        event_of = {id(r): e for r, e in zip(records, events, strict=True)}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            await conn.executemany(self._statement, [row for c in fresh for row in self._rows(event_of[id(c)])])

        fresh = await apply_exactly_once(self._pool, self._projection, records, write)
        values = []
        # Every record, not only the fresh ones: see BarsProjection.apply (a retry after a Redis outage).
        for record in records:
            redis_key, fields = self._latest(event_of[id(record)])
            values.append(LatestValue(redis_key, position(record.partition, record.offset), fields))
        await self._redis.set_latest(values)
        return len(fresh)


def stats_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, STATS_PROJECTION, _UPSERT_STATS, _stats_rows, _stats_latest)


class CorrelationProjection:
    """Each snapshot into the compact history and the full-precision latest table, and its summary into Redis."""

    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection) -> None:
        self._pool = pool
        self._redis = redis

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]]) -> int:
        event_of = {id(r): e for r, e in zip(records, events, strict=True)}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            chosen = [event_of[id(c)] for c in fresh]
            await conn.executemany(_INSERT_HISTORY, [_snapshot_row(e, quantise(e["matrix"])) for e in chosen])
            upper = [np.asarray(e["matrix"], dtype="<f8").tobytes() for e in chosen]
            await conn.executemany(_UPSERT_LATEST, [_snapshot_row(e, u) for e, u in zip(chosen, upper, strict=True)])

        fresh = await apply_exactly_once(self._pool, CORRELATIONS_PROJECTION, records, write)
        # Every record, not only the fresh ones: see BarsProjection.apply (a retry after a Redis outage).
        latest = [(_snapshot_latest(event_of[id(r)]), position(r.partition, r.offset)) for r in records]
        await self._redis.set_latest(LatestValue(key, at, fields) for (key, fields), at in latest)
        return len(fresh)


def correlation_projection(pool: asyncpg.Pool, redis: RedisProjection) -> CorrelationProjection:
    return CorrelationProjection(pool, redis)


def _stats_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    fields = ("as_of_ns", "last_close", "window_return", "volatility_annualised")
    return key("stats", e["timeframe"], str(e["window_bars"]), e["symbol"]), {k: str(e[k]) for k in fields}


def _snapshot_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Redis keeps the summary and the matrix (float32, base64): 2.7 MB of text for 1,000 symbols, not 10 of JSON."""
    upper = np.asarray(e["matrix"], dtype="<f4").tobytes()
    return key("correlations", e["universe"], e["timeframe"], str(e["window_bars"])), {
        "as_of_ns": str(e["as_of_ns"]),
        "window_bars": str(e["window_bars"]),
        "average_correlation": repr(e["average_correlation"]),
        "largest_eigenvalue_share": repr(e["largest_eigenvalue_share"]),
        "diversification_ratio": repr(e["diversification_ratio"]),
        "symbols": json.dumps(e["symbols"]),
        "upper_triangle_f32le_base64": base64.b64encode(upper).decode(),
    }


def _stats_rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
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
    ]


def _snapshot_row(e: dict[str, Any], matrix: bytes) -> tuple[Any, ...]:
    return (
        e["universe"],
        e["timeframe"],
        e["window_bars"],
        e["as_of_ns"],
        e["observations"],
        e["symbols"],
        matrix,
        e["average_correlation"],
        e["largest_eigenvalue_share"],
        e["diversification_ratio"],
        e["event_id"],
    )
