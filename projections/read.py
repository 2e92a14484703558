"""Read side used by the CLI: plain rows from the projections, never from Kafka."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np


async def bars(conn: asyncpg.Connection, symbol: str, interval: str, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT start_ts, open, high, low, close, volume, vwap, trade_count, regular_session, kind"
        " FROM bars WHERE symbol = $1 AND interval = $2 ORDER BY start_ts DESC LIMIT $3",
        symbol,
        interval,
        limit,
    )
    return [dict(r) for r in reversed(rows)]


# Each action of the symbol with the close its dividend factor divides by: the last daily close before the ex-date,
# else the last regular-session close of the queried interval (the ex-date starts at New York midnight).
_ACTIONS = """
SELECT a.action_id, a.action_type, a.ex_date, a.split_from::float8 AS split_from, a.split_to::float8 AS split_to,
       a.cash_amount::float8 AS cash_amount,
       COALESCE(
           (SELECT b.close FROM bars b WHERE b.symbol = a.symbol AND b.interval = '1d'
              AND b.start_ts < (a.ex_date::timestamp AT TIME ZONE 'America/New_York') ORDER BY b.start_ts DESC LIMIT 1),
           (SELECT b.close FROM bars b WHERE b.symbol = a.symbol AND b.interval = $2 AND b.regular_session
              AND b.start_ts < (a.ex_date::timestamp AT TIME ZONE 'America/New_York') ORDER BY b.start_ts DESC LIMIT 1)
       ) AS prev_close
FROM corporate_actions a WHERE a.symbol = $1 ORDER BY a.ex_date, a.action_id
"""
_PRICES = ("open", "high", "low", "close", "vwap")


async def adjusted_bars(
    conn: asyncpg.Connection, symbol: str, interval: str, limit: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """The latest bars adjusted for the symbol's splits and dividends (computed here; raw rows are untouched),
    and a note for each action that could not be applied."""
    from projections.adjust import action_factors, cumulative, cutoff_ns

    rows = await bars(conn, symbol, interval, limit)
    actions = await conn.fetch(_ACTIONS, symbol, interval)
    # Actions are few: one row each; NULL fields become NaN, which action_factors treats as "does not apply".
    numeric = ("split_from", "split_to", "cash_amount", "prev_close")
    columns = {n: np.array([a[n] for a in actions], dtype=np.float64) for n in numeric}
    factors = action_factors(
        [a["action_type"] for a in actions],
        np.array([cutoff_ns(a["ex_date"], "America/New_York") for a in actions], dtype=np.int64),
        columns["split_from"],
        columns["split_to"],
        columns["cash_amount"],
        columns["prev_close"],
    )
    start_ns = np.array([int(r["start_ts"].timestamp() * 1_000_000) * 1000 for r in rows], dtype=np.int64)
    price, volume = cumulative(factors, start_ns)
    for i, row in enumerate(rows):
        for name in _PRICES:
            if row[name] is not None:
                row[name] = row[name] * float(price[i])
        row["volume"] = row["volume"] * float(volume[i])
        row["price_factor"] = float(price[i])
    # Sorted by ex-date in SQL, so the factors (sorted by cutoff) line up with the rows.
    notes = [
        f"{a['action_type']} {a['action_id']} (ex {a['ex_date']}) not applied: no ratio, amount or previous close"
        for a, ignored in zip(actions, factors.ignored.tolist(), strict=True)
        if ignored
    ]
    return rows, notes


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


_VIEW_COLUMNS = (
    "universe, timeframe, as_of, window_bars, observations, symbols, {matrix}, avg_correlation, eigen_share,"
    " diversification_ratio"
)


def _view(row: asyncpg.Record, upper: np.ndarray) -> CorrelationView:
    return CorrelationView(
        universe=row["universe"],
        timeframe=row["timeframe"],
        as_of=row["as_of"],
        window_bars=row["window_bars"],
        observations=row["observations"],
        symbols=list(row["symbols"]),
        matrix=square_matrix(upper, len(row["symbols"])),
        avg_correlation=row["avg_correlation"],
        eigen_share=row["eigen_share"],
        diversification_ratio=row["diversification_ratio"],
    )


async def latest_correlation(
    conn: asyncpg.Connection, universe: str | None, timeframe: str | None = None, window: int | None = None
) -> CorrelationView | None:
    """The latest snapshot at full precision; by default the shortest minute window of the newest universe."""
    row = await conn.fetchrow(
        f"SELECT {_VIEW_COLUMNS.format(matrix='upper_f64')} FROM correlation_latest"
        " WHERE ($1::text IS NULL OR universe = $1) AND ($2::text IS NULL OR timeframe = $2)"
        " AND ($3::int IS NULL OR window_bars = $3)"
        " ORDER BY as_of DESC, timeframe <> '1m', window_bars LIMIT 1",
        universe,
        timeframe,
        window,
    )
    return None if row is None else _view(row, np.frombuffer(row["upper_f64"], dtype="<f8"))


async def correlation_history(
    conn: asyncpg.Connection, universe: str, timeframe: str, window: int, limit: int
) -> list[CorrelationView]:
    """The window's most recent snapshots from the compact history (int16-quantised: 3e-5 resolution), oldest first."""
    from projections.analytics import dequantise

    rows = await conn.fetch(
        f"SELECT {_VIEW_COLUMNS.format(matrix='upper_q')} FROM correlation_snapshots"
        " WHERE universe = $1 AND timeframe = $2 AND window_bars = $3 ORDER BY as_of DESC LIMIT $4",
        universe,
        timeframe,
        window,
        limit,
    )
    return [_view(row, dequantise(row["upper_q"])) for row in reversed(rows)]


async def symbol_volatility(conn: asyncpg.Connection, view: CorrelationView) -> dict[str, float]:
    """Per-bar return volatility of the view's symbols from the stats of the same window (minute windows only)."""
    rows = await conn.fetch(
        "SELECT symbol, stdev_return FROM symbol_stats WHERE timeframe = $1 AND window_bars = $2"
        " AND symbol = ANY($3::text[]) AND stdev_return > 0",
        view.timeframe,
        view.window_bars,
        view.symbols,
    )
    return {r["symbol"]: float(r["stdev_return"]) for r in rows}


async def alerts(conn: asyncpg.Connection, kind: str | None, since_ns: int | None, limit: int) -> list[dict[str, Any]]:
    """The newest alerts (optionally of one kind, or a kind prefix such as ``correlation.``), newest first."""
    rows = await conn.fetch(
        "SELECT ts_event, kind, severity, subject, message, from_value, to_value, since, details, event_id"
        " FROM alerts WHERE ($1::text IS NULL OR kind = $1 OR kind LIKE $1 || '%')"
        " AND ($2::bigint IS NULL OR ts_event >= timestamptz 'epoch' + ($2::bigint / 1000) * interval '1 microsecond')"
        " ORDER BY ts_event DESC, event_id LIMIT $3",
        kind,
        since_ns,
        limit,
    )
    return [{**dict(r), "details": json.loads(r["details"]), "event_id": str(r["event_id"])} for r in rows]


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
