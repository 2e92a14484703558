"""Corporate-actions projection: md.corporate_actions into ``corporate_actions``, one row per action id, exactly once.

A later event for the same action id (an amendment) replaces the row; the latest action per symbol goes to Redis.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from projections.analytics import EventProjection
from projections.redis_store import RedisProjection, key

CONSUMER = "projection.corporate_actions"
SCHEMA = "tidemark.marketdata.CorporateActionAnnounced"

_UPSERT = """
INSERT INTO corporate_actions (action_id, symbol, action_type, ex_date, split_from, split_to, cash_amount, currency,
                               declaration_date, record_date, pay_date, frequency, new_symbol, source, event_id)
VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric, $7::numeric, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (action_id) DO UPDATE SET
    symbol = EXCLUDED.symbol, action_type = EXCLUDED.action_type, ex_date = EXCLUDED.ex_date,
    split_from = EXCLUDED.split_from, split_to = EXCLUDED.split_to, cash_amount = EXCLUDED.cash_amount,
    currency = EXCLUDED.currency, declaration_date = EXCLUDED.declaration_date, record_date = EXCLUDED.record_date,
    pay_date = EXCLUDED.pay_date, frequency = EXCLUDED.frequency, new_symbol = EXCLUDED.new_symbol,
    source = EXCLUDED.source, event_id = EXCLUDED.event_id
"""


def _rows(e: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            e["action_id"],
            e["symbol"],
            e["action_type"],
            e["ex_date"],
            e["split_from"],
            e["split_to"],
            e["cash_amount"],
            e["currency"],
            e["declaration_date"],
            e["record_date"],
            e["pay_date"],
            e["frequency"],
            e["new_symbol"],
            e["source"],
            e["event_id"],
        )
    ]


def _latest(e: dict[str, Any]) -> tuple[str, dict[str, str]]:
    fields = ("action_id", "action_type", "ex_date", "split_from", "split_to", "cash_amount")
    return key("corporate_action", e["symbol"]), {f: "" if e[f] is None else str(e[f]) for f in fields}


def corporate_actions_projection(pool: asyncpg.Pool, redis: RedisProjection) -> EventProjection:
    return EventProjection(pool, redis, CONSUMER, _UPSERT, _rows, _latest)
