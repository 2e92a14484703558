"""Risk projections: every measurement of an account (risk.metrics) and every answer of the execution desk to a halt
or resume command (risk.controls), written with the consumer's offsets in the same transaction, and the latest of
each in Redis; and the reads of `tidemark risk`, `halt` and `resume`.

The halt and resume commands share risk.controls with their answers: they are consumed (their offsets advance) but
not projected, since only the desk's answer says what happened."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import date
from typing import Any

import asyncpg

from core.consumed import Consumed
from projections.offsets import apply_exactly_once
from projections.redis_store import LatestValue, RedisProjection, key, position

RISK = "projection.risk"
SCHEMAS = (
    "tidemark.risk.RiskMeasured",
    "tidemark.risk.HaltTrading",
    "tidemark.risk.ResumeTrading",
    "tidemark.risk.TradingHalted",
    "tidemark.risk.TradingResumed",
)
TOPICS = ("risk.metrics", "risk.controls")

_NS = "timestamptz 'epoch' + ({}::bigint / 1000) * interval '1 microsecond'"

_MEASUREMENT = f"""
INSERT INTO risk_measurements (event_id, account_id, ts, horizon_days, observations, equity, gross_exposure,
    net_exposure, peak_equity, leverage, drawdown, max_drawdown, kupiec_p_value, covariance_var_95, covariance_var_99,
    kill_switch, halt_reason, breaches, estimates, strategies, limits, missing_history, source_partition,
    source_offset)
VALUES ($1, $2, {_NS.format("$3")}, $4, $5, $6::numeric, $7::numeric, $8::numeric, $9::numeric, $10, $11, $12, $13,
    $14, $15, $16, $17, $18, $19::jsonb, $20::jsonb, $21::jsonb, $22, $23, $24)
ON CONFLICT (event_id, ts) DO NOTHING
"""
_CONTROL = f"""
INSERT INTO trading_controls (event_id, account_id, ts, kind, reason, flatten, flatten_rebalance_id, requested_by,
    breaches, command_id, source_partition, source_offset)
VALUES ($1, $2, {_NS.format("$3")}, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (event_id) DO NOTHING
"""


def _finite(value: Any) -> Any:
    """The value with every NaN or infinity inside it as None: JSON has neither, and jsonb refuses the text
    ``json.dumps`` writes for them, which would dead-letter the whole batch."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {name: _finite(item) for name, item in value.items()}
    return value


def _json(value: Any) -> str:
    return json.dumps(_finite(value), allow_nan=False, separators=(",", ":"))


_KINDS = {
    "tidemark.risk.RiskMeasured": "measured",
    "tidemark.risk.TradingHalted": "halted",
    "tidemark.risk.TradingResumed": "resumed",
}
"""What each projected event is; the halt and resume commands are not projected."""


def _measurement_row(record: Consumed, e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["event_id"], e["account_id"], e["ts_event"], e["horizon_days"], e["observations"], e["equity"],
        e["gross_exposure"], e["net_exposure"], e["peak_equity"], e["leverage"], e["drawdown"], e["max_drawdown"],
        e["kupiec_p_value"], e["covariance_var_95"], e["covariance_var_99"], e["kill_switch"], e["halt_reason"],
        list(e["breaches"]), _json(e["estimates"]), _json(e["strategies"]), _json(e["limits"]),
        list(e["missing_history"]), record.partition, record.offset,
    )  # fmt: skip


def _control_row(record: Consumed, e: dict[str, Any], kind: str) -> tuple[Any, ...]:
    """A resumption has no flatten, closing rebalance or breaches: false and empty, as a halt without them."""
    return (
        e["event_id"], e["account_id"], e["ts_event"], kind, e["reason"], e.get("flatten", False),
        e.get("flatten_rebalance_id", ""), e["requested_by"], list(e.get("breaches", ())), e["command_id"],
        record.partition, record.offset,
    )  # fmt: skip


def measurement_key(account: str) -> str:
    """``tm:risk:<account>``: the account's latest RiskMeasured, whole, as JSON (field ``measurement``)."""
    return key("risk", account)


def control_key(account: str) -> str:
    """``tm:risk:<account>:control``: whether the account's trading is halted, after the desk's latest answer."""
    return key("risk", account, "control")


def _latest(record: Consumed, e: dict[str, Any], kind: str) -> LatestValue:
    at = position(record.partition, record.offset)
    if kind == "measured":
        return LatestValue(
            measurement_key(e["account_id"]),
            at,
            {
                "event_id": e["event_id"],
                "ts_event": str(e["ts_event"]),
                "kill_switch": str(e["kill_switch"]).lower(),
                "measurement": _json(e),
            },
        )
    return LatestValue(
        control_key(e["account_id"]),
        at,
        {
            "event_id": e["event_id"],
            "ts_event": str(e["ts_event"]),
            "state": kind,
            "reason": e["reason"],
            "requested_by": e["requested_by"],
            "command_id": e["command_id"],
        },
    )


class RiskProjection:
    """RiskMeasured into ``risk_measurements``, TradingHalted and TradingResumed into ``trading_controls``; the
    latest of each account to Redis (``measurement_key``, ``control_key``)."""

    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection) -> None:
        self._pool = pool
        self._redis = redis

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]], schemas: Sequence[str]) -> int:
        """``events[i]`` was decoded from ``records[i]`` with schema ``schemas[i]``; returns how many records were
        new (commands included)."""
        kinds = [(r, e, _KINDS.get(schema)) for r, e, schema in zip(records, events, schemas, strict=True)]
        kind_of = {id(record): (event, kind) for record, event, kind in kinds}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            measurements, controls = [], []
            for record in fresh:
                event, kind = kind_of[id(record)]
                if kind == "measured":
                    measurements.append(_measurement_row(record, event))
                elif kind is not None:
                    controls.append(_control_row(record, event, kind))
            if measurements:
                await conn.executemany(_MEASUREMENT, measurements)
            if controls:
                await conn.executemany(_CONTROL, controls)

        fresh = await apply_exactly_once(self._pool, RISK, records, write)
        await self._redis.set_latest(_latest(record, event, kind) for record, event, kind in kinds if kind is not None)
        return len(fresh)


# -- reads ------------------------------------------------------------------------------------------------------

_JSON_COLUMNS = ("estimates", "strategies", "limits")


async def latest_measurement(conn: asyncpg.Connection, account: str) -> dict[str, Any] | None:
    """The account's newest measurement (by market time, then by position in the topic), money as Decimal."""
    row = await conn.fetchrow(
        """
        SELECT event_id::text AS event_id, account_id, ts, horizon_days, observations, equity, gross_exposure,
               net_exposure, peak_equity, leverage, drawdown, max_drawdown, kupiec_p_value, covariance_var_95,
               covariance_var_99, kill_switch, halt_reason, breaches, estimates, strategies, limits, missing_history
        FROM risk_measurements WHERE account_id = $1 ORDER BY ts DESC, source_offset DESC LIMIT 1
        """,
        account,
    )
    if row is None:
        return None
    return {**dict(row), **{name: json.loads(row[name]) for name in _JSON_COLUMNS}}


async def measurement_history(conn: asyncpg.Connection, account: str, method: str) -> list[dict[str, Any]]:
    """Every measurement of the account, oldest first: equity, drawdowns, and ``method``'s VaR at 95% and 99%
    (None where the measurement has no such estimate)."""
    rows = await conn.fetch(
        """
        SELECT ts, equity::float8 AS equity, drawdown, max_drawdown,
               (SELECT (e ->> 'var')::float8 FROM jsonb_array_elements(estimates) e
                WHERE e ->> 'method' = $2 AND (e ->> 'confidence')::float8 = 0.95) AS var_95,
               (SELECT (e ->> 'var')::float8 FROM jsonb_array_elements(estimates) e
                WHERE e ->> 'method' = $2 AND (e ->> 'confidence')::float8 = 0.99) AS var_99
        FROM risk_measurements WHERE account_id = $1 ORDER BY ts, source_offset
        """,
        account,
        method,
    )
    return [dict(r) for r in rows]


async def daily_equity(conn: asyncpg.Connection, account: str) -> list[tuple[date, float]]:
    """The account's equity at its last measurement of each UTC day, oldest first."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (day) (ts AT TIME ZONE 'UTC')::date AS day, equity::float8 AS equity
        FROM risk_measurements WHERE account_id = $1 ORDER BY day, ts DESC, source_offset DESC
        """,
        account,
    )
    return [(r["day"], r["equity"]) for r in rows]


async def strategy_daily_returns(conn: asyncpg.Connection, strategy_id: str) -> list[tuple[date, list[float]]]:
    """A strategy's booked net period returns grouped by the UTC day their periods end, oldest first: a day of
    minute bars has many, a daily strategy one."""
    rows = await conn.fetch(
        """
        SELECT (period_end AT TIME ZONE 'UTC')::date AS day, array_agg(period_return ORDER BY period_end) AS returns
        FROM strategy_performance WHERE strategy_id = $1 GROUP BY 1 ORDER BY 1
        """,
        strategy_id,
    )
    return [(r["day"], list(r["returns"])) for r in rows]


_CONTROL_COLUMNS = """
    event_id::text AS event_id, account_id, ts, kind, reason, flatten, flatten_rebalance_id, requested_by, breaches,
    command_id
"""


async def latest_control(conn: asyncpg.Connection, account: str) -> dict[str, Any] | None:
    """The desk's latest answer for the account (in the order of its partition): halted or resumed, and why."""
    row = await conn.fetchrow(
        f"SELECT {_CONTROL_COLUMNS} FROM trading_controls WHERE account_id = $1 ORDER BY source_offset DESC LIMIT 1",
        account,
    )
    return None if row is None else dict(row)


async def control_answering(conn: asyncpg.Connection, command_id: str) -> dict[str, Any] | None:
    """The desk's answer to a halt or resume command, once projected."""
    row = await conn.fetchrow(f"SELECT {_CONTROL_COLUMNS} FROM trading_controls WHERE command_id = $1", command_id)
    return None if row is None else dict(row)
