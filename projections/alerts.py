"""Alerts into PostgreSQL exactly once, and announced on Redis pub/sub only when first stored.

A replay, or a recovered worker re-emitting an alert under the same event id, finds the row already there and
announces nothing, so subscribers hear each alert once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from core.consumed import Consumed
from projections.offsets import apply_exactly_once
from projections.redis_store import RedisProjection, key

CONSUMER = "projection.alerts"
CHANNEL = key("alerts")
_NS = "timestamptz 'epoch' + ({} / 1000) * interval '1 microsecond'"
_INSERT = f"""
INSERT INTO alerts (event_id, ts_event, kind, severity, subject, message, from_value, to_value, since, details,
                    source, causation_id)
VALUES ($1, {_NS.format("$2::bigint")}, $3, $4, $5, $6, $7, $8, {_NS.format("$9::bigint")}, $10::jsonb, $11, $12)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


def announcement(event: dict[str, Any]) -> str:
    """The pub/sub message: the alert as JSON, with its times in UTC nanoseconds."""
    fields = ("event_id", "ts_event", "kind", "severity", "subject", "message", "from_value", "to_value", "since_ns")
    return json.dumps({**{f: event[f] for f in fields}, "details": dict(event["details"])})


class AlertsProjection:
    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection) -> None:
        self._pool = pool
        self._redis = redis

    async def apply(self, records: Sequence[Consumed], events: Sequence[dict[str, Any]]) -> int:
        """``events[i]`` was decoded from ``records[i]``; returns how many alerts were new."""
        event_of = {id(r): e for r, e in zip(records, events, strict=True)}
        stored: list[dict[str, Any]] = []

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            stored.clear()  # a retried transaction starts over
            for record in fresh:
                e = event_of[id(record)]
                inserted = await conn.fetchval(
                    _INSERT,
                    e["event_id"],
                    e["ts_event"],
                    e["kind"],
                    e["severity"],
                    e["subject"],
                    e["message"],
                    e["from_value"],
                    e["to_value"],
                    e["since_ns"],
                    json.dumps(dict(e["details"])),
                    e["source"],
                    e["causation_id"],
                )
                if inserted is not None:
                    stored.append(e)

        await apply_exactly_once(self._pool, CONSUMER, records, write)
        # After the commit: a crash between the two loses an announcement (the row is there), never repeats one.
        for event in stored:
            await self._redis.publish(CHANNEL, announcement(event))
        return len(stored)
