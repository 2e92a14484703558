"""Portfolio projections: every targets proposal, written with the consumer's offsets in the same transaction; and
the reads the portfolio commands need (the latest targets, the live strategies' returns and priors)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg
import pandas as pd

from core.consumed import Consumed
from projections.offsets import apply_exactly_once
from projections.redis_store import RedisProjection

PORTFOLIO = "projection.portfolio"
SCHEMA = "tidemark.portfolio.PortfolioTargetsSet"

_INSERT = """
INSERT INTO portfolio_targets (event_id, account_id, ts, objective, method, solver, reason, capital, buying_power,
    max_weight, min_strategies, lookback_sessions, expected_return, expected_volatility, expected_sharpe,
    expected_sharpe_se, diversification_ratio, weights, exposures, inputs, causation_id, source_partition,
    source_offset)
VALUES ($1, $2, timestamptz 'epoch' + ($3::bigint / 1000) * interval '1 microsecond', $4, $5, $6, $7, $8::numeric,
    $9::numeric, $10::numeric, $11, $12, $13, $14, $15, $16, $17, $18::jsonb, $19::jsonb, $20, $21, $22, $23)
ON CONFLICT (event_id) DO NOTHING
"""


def _row(record: Consumed, e: dict[str, Any]) -> tuple[Any, ...]:
    weights = [
        {"strategy_id": w["strategy_id"], "weight": w["weight"], "notional": w["notional"]} for w in e["weights"]
    ]
    exposures = [{"symbol": x["symbol"], "weight": x["weight"], "notional": x["notional"]} for x in e["exposures"]]
    return (
        e["event_id"], e["account_id"], e["ts_event"], e["objective"], e["method"], e["solver"], e["reason"],
        e["capital"], e["buying_power"], e["max_weight"], e["min_strategies"], e["lookback_days"],
        e["expected_return"], e["expected_volatility"], e["expected_sharpe"], e["expected_sharpe_se"],
        e["diversification_ratio"], json.dumps(weights), json.dumps(exposures), list(e["inputs"]),
        e["causation_id"], record.partition, record.offset,
    )  # fmt: skip


class PortfolioProjection:
    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection) -> None:
        self._pool = pool

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]]) -> int:
        """``events[i]`` was decoded from ``records[i]``; returns how many records were new."""
        event_of = {id(r): e for r, e in zip(records, events, strict=True)}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            await conn.executemany(_INSERT, [_row(c, event_of[id(c)]) for c in fresh])

        return len(await apply_exactly_once(self._pool, PORTFOLIO, records, write))


async def latest_targets(conn: asyncpg.Connection, account: str) -> dict[str, Any] | None:
    """The account's newest targets (by time, then by position in the topic)."""
    row = await conn.fetchrow(
        """
        SELECT event_id::text AS event_id, account_id, ts, objective, method, solver, reason, capital::text AS capital,
               buying_power::text AS buying_power, max_weight::text AS max_weight, min_strategies, lookback_sessions,
               expected_return, expected_volatility, expected_sharpe, expected_sharpe_se, diversification_ratio,
               weights, exposures, inputs, causation_id
        FROM portfolio_targets WHERE account_id = $1 ORDER BY ts DESC, source_offset DESC LIMIT 1
        """,
        account,
    )
    if row is None:
        return None
    return {**dict(row), "weights": json.loads(row["weights"]), "exposures": json.loads(row["exposures"])}


async def live_returns(conn: asyncpg.Connection, lookback: int) -> pd.DataFrame:
    """Sessions (period_end) x LIVE strategies: their latest ``lookback`` realised net per-session returns.

    The one place that reads the strategy runner's projection (``strategy_performance``) for the portfolio, and
    which strategies are LIVE now (``strategy_states``)."""
    rows = await conn.fetch(
        """
        SELECT p.strategy_id, p.period_end, p.period_return FROM (
            SELECT strategy_id, period_end, period_return,
                   row_number() OVER (PARTITION BY strategy_id ORDER BY period_end DESC) AS age
            FROM strategy_performance) p
        JOIN strategy_states s ON s.strategy_id = p.strategy_id AND s.state = 'LIVE'
        WHERE p.age <= $1
        """,
        lookback,
    )
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame([dict(r) for r in rows])
    return frame.pivot(index="period_end", columns="strategy_id", values="period_return").sort_index()


async def latest_candidates(conn: asyncpg.Connection, strategy_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Each strategy's latest candidate, with the fields the portfolio's prior reads (as the event names them)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (strategy_id) event_id::text AS event_id, strategy_id, symbols, sharpe_out_of_sample,
               sharpe_oos_se AS sharpe_out_of_sample_se, dsr_benchmark, annual_volatility
        FROM strategy_candidates WHERE strategy_id = ANY($1::text[]) ORDER BY strategy_id, discovered_at DESC
        """,
        list(strategy_ids),
    )
    return [dict(r) for r in rows]
