"""Read side used by the CLI: plain rows from the projections, never from Kafka."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np


async def bars(conn: asyncpg.Connection, symbol: str, interval: str, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT start_ts, open, high, low, close, volume, vwap, trade_count, regular_session"
        " FROM bars WHERE symbol = $1 AND interval = $2 ORDER BY start_ts DESC LIMIT $3",
        symbol,
        interval,
        limit,
    )
    return [dict(r) for r in reversed(rows)]


async def bar_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM bars"))


async def stats(conn: asyncpg.Connection, symbols: Sequence[str] | None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT symbol, timeframe, window_bars, as_of, last_close, window_return, volatility_annual, max_drawdown"
        " FROM symbol_stats WHERE $1::text[] IS NULL OR symbol = ANY($1) ORDER BY symbol, timeframe, window_bars",
        list(symbols) if symbols else None,
    )
    return [dict(r) for r in rows]


@dataclass(frozen=True)
class CorrelationView:
    universe: str
    timeframe: str
    as_of: Any
    window_bars: int
    observations: int
    symbols: list[str]
    matrix: np.ndarray
    avg_correlation: float | None
    eigen_share: float | None
    diversification_ratio: float | None


async def latest_correlation(conn: asyncpg.Connection, universe: str | None) -> CorrelationView | None:
    row = await conn.fetchrow(
        "SELECT universe, timeframe, as_of, window_bars, observations, symbols, upper_triangle, avg_correlation,"
        " eigen_share, diversification_ratio FROM correlation_snapshots"
        " WHERE $1::text IS NULL OR universe = $1 ORDER BY as_of DESC LIMIT 1",
        universe,
    )
    if row is None:
        return None
    return CorrelationView(
        universe=row["universe"],
        timeframe=row["timeframe"],
        as_of=row["as_of"],
        window_bars=row["window_bars"],
        observations=row["observations"],
        symbols=list(row["symbols"]),
        matrix=square_matrix(row["upper_triangle"], len(row["symbols"])),
        avg_correlation=row["avg_correlation"],
        eigen_share=row["eigen_share"],
        diversification_ratio=row["diversification_ratio"],
    )


def square_matrix(upper_triangle: Sequence[float], n: int) -> np.ndarray:
    """The symmetric n x n matrix (unit diagonal) from its strict upper triangle, row-major."""
    matrix = np.eye(n)
    rows, cols = np.triu_indices(n, k=1)
    values = np.asarray(upper_triangle, dtype=np.float64)
    if len(values) != len(rows):
        raise ValueError(f"{len(values)} values are not the upper triangle of a {n} x {n} matrix")
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix


def top_pairs(view: CorrelationView, k: int) -> list[dict[str, Any]]:
    """The k pairs with the largest |correlation|, strongest first."""
    n = len(view.symbols)
    upper_i, upper_j = np.triu_indices(n, k=1)
    values = view.matrix[upper_i, upper_j]
    finite = np.isfinite(values)
    upper_i, upper_j, values = upper_i[finite], upper_j[finite], values[finite]
    k = min(k, len(values))
    if k == 0:
        return []
    chosen = np.argpartition(-np.abs(values), k - 1)[:k]
    chosen = chosen[np.argsort(-np.abs(values[chosen]), kind="stable")]
    return [
        {"a": view.symbols[upper_i[c]], "b": view.symbols[upper_j[c]], "correlation": float(values[c])} for c in chosen
    ]
