"""Pattern-signal projection: every PatternSignalDetected into PostgreSQL, the latest per pattern into Redis.

A pattern is (family, symbols, timeframe). Rows are written with the consumer's offsets in the same transaction
(``apply_exactly_once``), and a republished event (same natural key) is stored once; Redis keeps each pattern's
latest signal with the position it came from. ``latest_signals`` is what ``tidemark query signals`` shows.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from projections.analytics import EventProjection
from projections.redis_store import RedisProjection, key

CONSUMER = "projection.signals"
SCHEMA = "tidemark.signals.PatternSignalDetected"

_INSERT = """
INSERT INTO pattern_signals (pattern_family, symbols, timeframe, window_bars, as_of, direction, test, statistic,
                             p_value, adjusted_p_value, correction, tests_in_family, significance, sharpe, psr,
                             half_life, hurst, sharpe_se, deflated_sharpe, params, event_id)
VALUES ($1, $2, $3, $4, timestamptz 'epoch' + ($5::bigint / 1000) * interval '1 microsecond', $6, $7, $8, $9, $10,
        $11, $12, $13, $14, $15, $16, $17, $18, $19, $20::jsonb, $21)
ON CONFLICT DO NOTHING
"""

_FIELDS = (
    "direction",
    "test",
    "statistic",
    "p_value",
    "adjusted_p_value",
    "correction",
    "tests_in_family",
    "significance",
    "sharpe",
    "psr",
    "half_life",
    "hurst",
    "sharpe_se",
    "deflated_sharpe",
)


def signals_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, CONSUMER, _INSERT, _rows, _latest)


def _rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    head = (e["pattern_family"], e["symbols"], e["timeframe"], e["window_bars"], e["as_of_ns"])
    return [(*head, *(e[f] for f in _FIELDS), json.dumps(e["params"], sort_keys=True), e["event_id"])]


def _latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    fields = {f: "" if e[f] is None else str(e[f]) for f in _FIELDS}
    return key("signal", e["pattern_family"], ",".join(e["symbols"]), e["timeframe"]), {
        **fields,
        "as_of_ns": str(e["as_of_ns"]),
        "window_bars": str(e["window_bars"]),
        "params": json.dumps(e["params"], sort_keys=True),
        "event_id": e["event_id"],
    }


async def latest_signals(
    conn: asyncpg.Connection,
    symbol: str | None = None,
    family: str | None = None,
    timeframe: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The latest signal of each pattern matching the filters, newest first (most significant first within)."""
    rows = await conn.fetch(
        """
        SELECT * FROM (
            SELECT DISTINCT ON (pattern_family, symbols, timeframe) *
            FROM pattern_signals
            WHERE ($1::text IS NULL OR $1 = ANY(symbols))
              AND ($2::text IS NULL OR pattern_family = $2)
              AND ($3::text IS NULL OR timeframe = $3)
            ORDER BY pattern_family, symbols, timeframe, as_of DESC
        ) latest
        ORDER BY as_of DESC, adjusted_p_value, pattern_family, symbols
        LIMIT $4
        """,
        symbol,
        family,
        timeframe,
        limit,
    )
    return [
        {
            "as_of": r["as_of"],
            "family": r["pattern_family"],
            "symbols": ",".join(r["symbols"]),
            "timeframe": r["timeframe"],
            "window_bars": r["window_bars"],
            "direction": r["direction"],
            "test": r["test"],
            "statistic": r["statistic"],
            "p_value": r["p_value"],
            "adjusted_p_value": r["adjusted_p_value"],
            "correction": r["correction"],
            "tests_in_family": r["tests_in_family"],
            "sharpe": r["sharpe"],
            "sharpe_se": r["sharpe_se"],
            "psr": r["psr"],
            "dsr": r["deflated_sharpe"],
            "half_life": r["half_life"],
            "hurst": r["hurst"],
            "params": json.loads(r["params"]),
            "event_id": str(r["event_id"]),
        }
        for r in rows
    ]
