"""Currency-strength and sector-rotation projections: every snapshot into PostgreSQL, the latest into Redis.

Each event fans out into one row per currency or sector, written with the consumer's offsets in the same
transaction (``apply_exactly_once``); Redis keeps the latest snapshot per basket or universe with the position it
came from. The read functions below are what ``tidemark query currency-strength|sectors`` shows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from projections.analytics import EventProjection
from projections.redis_store import RedisProjection, key

STRENGTH_PROJECTION = "projection.currency_strength"
ROTATION_PROJECTION = "projection.sector_rotation"
_NS = "timestamptz 'epoch' + ($4::bigint / 1000) * interval '1 microsecond'"

_INSERT_STRENGTH = f"""
INSERT INTO currency_strength (basket, timeframe, window_bars, as_of, currency, strength, zscore, rank, pair_count,
                               event_id)
VALUES ($1, $2, $3, {_NS}, $5, $6, $7, $8, $9, $10)
ON CONFLICT (basket, timeframe, window_bars, as_of, currency) DO NOTHING
"""

_INSERT_ROTATION = f"""
INSERT INTO sector_rotation (universe, timeframe, window_bars, as_of, benchmark, symbol, sector, relative_strength,
                             momentum, rank, quadrant, event_id)
VALUES ($1, $2, $3, {_NS}, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (universe, timeframe, window_bars, as_of, symbol) DO NOTHING
"""


def strength_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, STRENGTH_PROJECTION, _INSERT_STRENGTH, _strength_rows, _strength_latest)


def rotation_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, ROTATION_PROJECTION, _INSERT_ROTATION, _rotation_rows, _rotation_latest)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _strength_rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    head = (e["basket"], e["timeframe"], e["window_bars"], e["as_of_ns"])
    pairs = len(e["pairs"])
    return [
        (*head, c["currency"], c["strength"], _finite(c["zscore"]), c["rank"], pairs, e["event_id"])
        for c in e["currencies"]
    ]


def _rotation_rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    head = (e["universe"], e["timeframe"], e["window_bars"], e["as_of_ns"], e["benchmark"])
    return [
        (
            *head,
            s["symbol"],
            s["sector"],
            s["relative_strength"],
            _finite(s["momentum"]),
            s["rank"],
            s["quadrant"],
            e["event_id"],
        )
        for s in e["sectors"]
    ]


def _strength_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    return key("currency_strength", e["basket"], e["timeframe"]), {
        "as_of_ns": str(e["as_of_ns"]),
        "window_bars": str(e["window_bars"]),
        "currencies": json.dumps(
            [{**c, "zscore": _finite(c["zscore"])} for c in e["currencies"]], allow_nan=False, separators=(",", ":")
        ),
    }


def _rotation_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    return key("sector_rotation", e["universe"], e["timeframe"]), {
        "as_of_ns": str(e["as_of_ns"]),
        "window_bars": str(e["window_bars"]),
        "benchmark": e["benchmark"],
        "leader": e["leader"] or "",
        "sectors": json.dumps(
            [{**s, "momentum": _finite(s["momentum"])} for s in e["sectors"]], allow_nan=False, separators=(",", ":")
        ),
    }


@dataclass(frozen=True)
class SnapshotView:
    """The latest snapshot of one basket or universe: its header and one row per currency or sector, by rank."""

    name: str
    timeframe: str
    window_bars: int
    as_of: datetime
    rows: list[dict[str, Any]]


async def latest_currency_strength(conn: asyncpg.Connection, basket: str | None) -> SnapshotView | None:
    rows = await conn.fetch(
        """
        WITH latest AS (
            SELECT basket, timeframe, window_bars, as_of FROM currency_strength
            WHERE $1::text IS NULL OR basket = $1 ORDER BY as_of DESC, basket LIMIT 1
        )
        SELECT s.basket, s.timeframe, s.window_bars, s.as_of, s.rank, s.currency, s.strength, s.zscore, s.pair_count
        FROM currency_strength s JOIN latest USING (basket, timeframe, window_bars, as_of)
        ORDER BY s.rank
        """,
        basket,
    )
    if not rows:
        return None
    first = rows[0]
    return SnapshotView(
        first["basket"],
        first["timeframe"],
        first["window_bars"],
        first["as_of"],
        [{k: r[k] for k in ("rank", "currency", "strength", "zscore", "pair_count")} for r in rows],
    )


async def latest_sector_rotation(conn: asyncpg.Connection, universe: str | None) -> SnapshotView | None:
    """The latest rotation, each sector beside its quadrant and rank in the snapshot before (its rotation)."""
    rows = await conn.fetch(
        """
        WITH latest AS (
            SELECT universe, timeframe, window_bars, as_of FROM sector_rotation
            WHERE $1::text IS NULL OR universe = $1 ORDER BY as_of DESC, universe LIMIT 1
        ), previous AS (
            SELECT max(s.as_of) AS as_of FROM sector_rotation s JOIN latest l USING (universe, timeframe, window_bars)
            WHERE s.as_of < l.as_of
        )
        SELECT s.universe, s.timeframe, s.window_bars, s.as_of, s.rank, s.symbol, s.sector, s.benchmark,
               s.relative_strength, s.momentum, s.quadrant, p.quadrant AS previous_quadrant, p.rank AS previous_rank
        FROM sector_rotation s JOIN latest USING (universe, timeframe, window_bars, as_of)
        LEFT JOIN sector_rotation p ON p.universe = s.universe AND p.timeframe = s.timeframe
            AND p.window_bars = s.window_bars AND p.symbol = s.symbol AND p.as_of = (SELECT as_of FROM previous)
        ORDER BY s.rank
        """,
        universe,
    )
    if not rows:
        return None
    first = rows[0]
    columns = (
        "rank",
        "symbol",
        "sector",
        "benchmark",
        "relative_strength",
        "momentum",
        "quadrant",
        "previous_quadrant",
        "previous_rank",
    )
    return SnapshotView(
        first["universe"],
        first["timeframe"],
        first["window_bars"],
        first["as_of"],
        [{k: r[k] for k in columns} for r in rows],
    )
