"""Lifecycle projections: every transition and refusal (the audit trail), and each strategy's current state,
written with the consumer's offsets in the same transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from core.consumed import Consumed
from projections.analytics import EventProjection
from projections.offsets import apply_exactly_once
from projections.redis_store import LatestValue, RedisProjection, key, position

LIFECYCLE = "projection.lifecycle"
SCHEMAS = ("tidemark.strategies.StrategyTransitioned", "tidemark.strategies.TransitionRejected")

_NS = "timestamptz 'epoch' + ({}::bigint / 1000) * interval '1 microsecond'"

_INSERT_ANSWER = f"""
INSERT INTO strategy_transitions (event_id, strategy_id, accepted, from_state, to_state, version, expected_version,
    reason, evidence, requested_by, causation_id, decided_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, {_NS.format("$12")})
ON CONFLICT DO NOTHING
"""

_UPSERT_STATE = f"""
INSERT INTO strategy_states (strategy_id, state, version, since, reason, event_id)
VALUES ($1, $2, $3, {_NS.format("$4")}, $5, $6)
ON CONFLICT (strategy_id) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version, since = EXCLUDED.since,
    reason = EXCLUDED.reason, event_id = EXCLUDED.event_id
WHERE strategy_states.version < EXCLUDED.version
"""


def accepted(event: dict[str, Any]) -> bool:
    return "to_state" in event


def _answer_row(e: dict[str, Any]) -> tuple[Any, ...]:
    if accepted(e):
        return (
            e["event_id"], e["strategy_id"], True, e["from_state"], e["to_state"], e["version"], e["version"] - 1,
            e["reason"], json.dumps(e["evidence"], sort_keys=True), e["requested_by"], e["causation_id"], e["ts_event"],
        )  # fmt: skip
    return (
        e["event_id"], e["strategy_id"], False, e["current_state"], e["target_state"], None, e["expected_version"],
        e["reason"], "{}", e["requested_by"], e["causation_id"], e["ts_event"],
    )  # fmt: skip


class LifecycleProjection:
    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection) -> None:
        self._pool = pool
        self._redis = redis

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]]) -> int:
        """``events[i]`` was decoded from ``records[i]``; returns how many records were new."""
        event_of = {id(r): e for r, e in zip(records, events, strict=True)}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            answers = [event_of[id(c)] for c in fresh]
            await conn.executemany(_INSERT_ANSWER, [_answer_row(e) for e in answers])
            await conn.executemany(
                _UPSERT_STATE,
                [
                    (e["strategy_id"], e["to_state"], e["version"], e["ts_event"], e["reason"], e["event_id"])
                    for e in answers
                    if accepted(e)
                ],
            )

        fresh = await apply_exactly_once(self._pool, LIFECYCLE, records, write)
        await self._redis.set_latest(
            [
                LatestValue(
                    key("strategy", e["strategy_id"]),
                    position(r.partition, r.offset),
                    {"state": e["to_state"], "version": str(e["version"]), "event_id": e["event_id"]},
                )
                for r in records
                if accepted(e := event_of[id(r)])
            ]
        )
        return len(fresh)


async def history(conn: asyncpg.Connection, strategy_id: str) -> tuple[str, list[dict[str, Any]]] | None:
    """The strategy (an id, or a unique prefix of one) and every answer to a command about it, in the order
    decided; None when no single strategy matches."""
    found = await conn.fetch(
        "SELECT DISTINCT strategy_id FROM strategy_transitions WHERE strategy_id LIKE $1 || '%' LIMIT 2", strategy_id
    )
    exact = [r["strategy_id"] for r in found if r["strategy_id"] == strategy_id]
    if len(found) != 1 and not exact:
        return None
    chosen = exact[0] if exact else found[0]["strategy_id"]
    rows = await conn.fetch(
        """
        SELECT event_id::text AS event_id, accepted, from_state, to_state, version, expected_version, reason,
               evidence, requested_by, causation_id, decided_at
        FROM strategy_transitions WHERE strategy_id = $1 ORDER BY decided_at, version NULLS LAST, event_id
        """,
        chosen,
    )
    return chosen, [{**dict(r), "evidence": json.loads(r["evidence"])} for r in rows]


async def states(conn: asyncpg.Connection, state: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT strategy_id, state, version, since, reason, event_id::text AS event_id FROM strategy_states
        WHERE $1::text IS NULL OR state = $1 ORDER BY strategy_id
        """,
        state,
    )
    return [dict(r) for r in rows]


async def state_of(conn: asyncpg.Connection, strategy_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT state, version FROM strategy_states WHERE strategy_id = $1", strategy_id)
    return dict(row) if row is not None else None


PERFORMANCE = "projection.strategy_performance"
PERFORMANCE_SCHEMA = "tidemark.strategies.StrategyPerformanceRecorded"

_UPSERT_PERFORMANCE = f"""
INSERT INTO strategy_performance (strategy_id, period_end, period_start, state, period_return, cost,
    cumulative_return, pnl, drawdown, rolling_sharpe, rolling_sharpe_se, sessions, trades, positions, event_id)
VALUES ($1, {_NS.format("$2")}, {_NS.format("$3")}, $4, $5, $6, $7, $8::numeric, $9, $10, $11, $12, $13,
    $14::jsonb, $15)
ON CONFLICT (strategy_id, period_end) DO NOTHING
"""


def _performance_rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            e["strategy_id"], e["period_end_ns"], e["period_start_ns"], e["state"], e["period_return"], e["cost"],
            e["cumulative_return"], e["pnl"], e["drawdown"], e["rolling_sharpe"], e["rolling_sharpe_se"],
            e["sessions"], e["trades"], json.dumps(e["positions"], sort_keys=True), e["event_id"],
        )
    ]  # fmt: skip


def _performance_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    sharpe = e["rolling_sharpe"]
    return key("strategy", e["strategy_id"], "performance"), {
        "state": e["state"],
        "period_end_ns": str(e["period_end_ns"]),
        "period_return": repr(e["period_return"]),
        "cumulative_return": repr(e["cumulative_return"]),
        "drawdown": repr(e["drawdown"]),
        "rolling_sharpe": "" if sharpe is None else repr(sharpe),
        "sessions": str(e["sessions"]),
        "event_id": e["event_id"],
    }


def performance_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    """One row per strategy and period (a period published again is the same row), and the latest in Redis."""
    return EventProjection(pool, redis, PERFORMANCE, _UPSERT_PERFORMANCE, _performance_rows, _performance_latest)


async def performance(conn: asyncpg.Connection, strategy_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The strategy's most recent booked periods, oldest first."""
    rows = await conn.fetch(
        """
        SELECT * FROM (
            SELECT period_start, period_end, state, period_return, cost, cumulative_return, pnl::text AS pnl, drawdown,
                   rolling_sharpe, rolling_sharpe_se, sessions, trades, positions, event_id::text AS event_id
            FROM strategy_performance WHERE strategy_id = $1 ORDER BY period_end DESC LIMIT $2
        ) recent ORDER BY period_end
        """,
        strategy_id,
        limit,
    )
    return [{**dict(r), "positions": json.loads(r["positions"])} for r in rows]
