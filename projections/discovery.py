"""Discovery projections: every strategy candidate with its evidence (ranked by ``score``), and the latest stage of
each discovery task. Rows are written with the consumer's offsets in the same transaction; a candidate republished
by a redone task (same event id, same task) is stored once."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from projections.analytics import EventProjection
from projections.redis_store import RedisProjection, key

CANDIDATES = "projection.candidates"
CANDIDATE_SCHEMA = "tidemark.strategies.StrategyCandidateDiscovered"
PROGRESS = "projection.discovery"
PROGRESS_SCHEMA = "tidemark.discovery.DiscoveryProgressed"

_NS = "timestamptz 'epoch' + ({}::bigint / 1000) * interval '1 microsecond'"

_INSERT_CANDIDATE = f"""
INSERT INTO strategy_candidates (strategy_id, event_id, task_id, discovered_at, family, asset_class, symbols,
    timeframe, complexity, params, passed, rejections, score, sharpe_in_sample, sharpe_out_of_sample, sharpe_oos_se,
    psr, deflated_sharpe, dsr_benchmark, pbo, trials, annual_return, annual_volatility, max_drawdown, turnover,
    capacity_adv_share, live_correlation, cost_bp, data_start, data_end, evidence)
VALUES ($1, $2, $3, {_NS.format("$4")}, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    $20, $21, $22, $23, $24, $25, $26, $27, $28, {_NS.format("$29")}, {_NS.format("$30")}, $31::jsonb)
ON CONFLICT DO NOTHING
"""

# Stages only move forward (a late PROGRESSED never hides FINISHED), and a redone task starts again from STARTED.
_UPSERT_TASK = f"""
INSERT INTO discovery_tasks (task_id, family, symbols, stage, trials_done, trials_planned, worker, reason,
    candidate_id, started_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $4 = 'STARTED' THEN {_NS.format("$10")} END, {_NS.format("$10")})
ON CONFLICT (task_id) DO UPDATE SET
    stage = EXCLUDED.stage, trials_done = EXCLUDED.trials_done, trials_planned = EXCLUDED.trials_planned,
    worker = EXCLUDED.worker, reason = EXCLUDED.reason, candidate_id = EXCLUDED.candidate_id,
    started_at = COALESCE(EXCLUDED.started_at, discovery_tasks.started_at), updated_at = EXCLUDED.updated_at
WHERE discovery_tasks.stage NOT IN ('FINISHED') OR EXCLUDED.stage = 'STARTED'
"""

EVIDENCE_FIELDS = ("curve", "folds", "pbo_slices", "chosen_by", "capital", "dsr_benchmark", "sharpe_out_of_sample_se")


def candidates_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, CANDIDATES, _INSERT_CANDIDATE, _candidate_rows, _candidate_latest)


def progress_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, PROGRESS, _UPSERT_TASK, _progress_rows, _progress_latest)


def _candidate_rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    evidence = {f: e[f] for f in EVIDENCE_FIELDS}
    return [
        (
            e["strategy_id"],
            e["event_id"],
            e["task_id"],
            e["ts_event"],
            e["family"],
            e["asset_class"],
            e["symbols"],
            e["timeframe"],
            e["complexity"],
            json.dumps(e["params"], sort_keys=True),
            e["passed"],
            e["rejections"],
            e["score"],
            e["sharpe_in_sample"],
            e["sharpe_out_of_sample"],
            e["sharpe_out_of_sample_se"],
            e["psr"],
            e["deflated_sharpe"],
            e["dsr_benchmark"],
            e["pbo"],
            e["trials"],
            e["annual_return"],
            e["annual_volatility"],
            e["max_drawdown"],
            e["turnover"],
            e["capacity_adv_share"],
            e["live_correlation"],
            e["cost_bp"],
            e["data_start_ns"],
            e["data_end_ns"],
            json.dumps(evidence, sort_keys=True),
        )
    ]


def _candidate_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    return key("candidate", e["strategy_id"]), {
        "family": e["family"],
        "symbols": ",".join(e["symbols"]),
        "timeframe": e["timeframe"],
        "passed": str(e["passed"]).lower(),
        "score": str(e["score"]),
        "sharpe_out_of_sample": str(e["sharpe_out_of_sample"]),
        "deflated_sharpe": str(e["deflated_sharpe"]),
        "pbo": "" if e["pbo"] is None else str(e["pbo"]),
        "event_id": e["event_id"],
    }


def _progress_rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            e["task_id"],
            e["family"],
            e["symbols"],
            e["stage"],
            e["trials_done"],
            e["trials_planned"],
            e["worker"],
            e["reason"],
            e["candidate_id"],
            e["ts_event"],
        )
    ]


def _progress_latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    return key("discovery", e["task_id"]), {
        "stage": e["stage"],
        "trials_done": str(e["trials_done"]),
        "trials_planned": str(e["trials_planned"]),
        "worker": e["worker"],
        "reason": e["reason"],
    }


_CANDIDATE_COLUMNS = """strategy_id, event_id::text AS event_id, task_id, discovered_at, family, asset_class,
    array_to_string(symbols, ',') AS symbols, timeframe, complexity, params, passed, rejections, score,
    sharpe_in_sample, sharpe_out_of_sample, sharpe_oos_se, psr, deflated_sharpe, dsr_benchmark, pbo, trials,
    annual_return, annual_volatility, max_drawdown, turnover, capacity_adv_share, live_correlation, cost_bp,
    data_start, data_end, evidence,
    (SELECT state FROM strategy_states s WHERE s.strategy_id = strategy_candidates.strategy_id) AS lifecycle_state"""


def _decoded(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["params"] = json.loads(out["params"])
    out["evidence"] = json.loads(out["evidence"])
    out["rejections"] = list(out["rejections"])
    return out


async def candidates(
    conn: asyncpg.Connection,
    family: str | None = None,
    asset_class: str | None = None,
    passed: bool | None = None,
    limit: int = 50,
    lifecycle: str | None = None,
) -> list[dict[str, Any]]:
    """Candidates ranked: those that passed first, then by score; ``lifecycle``: only strategies in that state."""
    rows = await conn.fetch(
        f"""
        SELECT {_CANDIDATE_COLUMNS} FROM strategy_candidates
        WHERE ($1::text IS NULL OR family = $1) AND ($2::text IS NULL OR asset_class = $2)
          AND ($3::boolean IS NULL OR passed = $3)
          AND ($5::text IS NULL OR strategy_id IN (SELECT strategy_id FROM strategy_states WHERE state = $5))
        ORDER BY passed DESC, score DESC, strategy_id
        LIMIT $4
        """,
        family,
        asset_class,
        passed,
        limit,
        lifecycle,
    )
    return [_decoded(r) for r in rows]


async def candidate(conn: asyncpg.Connection, strategy_id: str) -> dict[str, Any] | None:
    """One candidate by its strategy id (or a unique prefix of it)."""
    rows = await conn.fetch(
        f"SELECT {_CANDIDATE_COLUMNS} FROM strategy_candidates WHERE strategy_id LIKE $1 || '%' LIMIT 2", strategy_id
    )
    return _decoded(rows[0]) if len(rows) == 1 else None


async def tasks(conn: asyncpg.Connection, limit: int = 50) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT task_id, family, array_to_string(symbols, ',') AS symbols, stage, trials_done, trials_planned, worker,
               reason, candidate_id, started_at, updated_at
        FROM discovery_tasks ORDER BY updated_at DESC LIMIT $1
        """,
        limit,
    )
    return [dict(r) for r in rows]
