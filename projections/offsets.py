"""Exactly-once projection writes: rows and the next offset to apply commit in one PostgreSQL transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from core.consumed import Consumed

Writer = Callable[[asyncpg.Connection, Sequence[Consumed]], Awaitable[None]]


async def apply_exactly_once(
    pool: asyncpg.Pool, projection: str, batch: Sequence[Consumed], write: Writer
) -> list[Consumed]:
    """Run ``write`` on the records of ``batch`` not yet applied by ``projection``; return those records.

    The offset rows are locked for the transaction, so two instances of the same projection (a zombie and its
    replacement during a rebalance) cannot both apply the same record.
    """
    if not batch:
        return []
    topics = sorted({c.topic for c in batch})
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM applied_offsets"
            " WHERE consumer = $1 AND topic = ANY($2::text[]) FOR UPDATE",
            projection,
            topics,
        )
        next_offsets = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        fresh = [c for c in batch if c.offset >= next_offsets.get((c.topic, c.partition), 0)]
        if not fresh:
            return []
        await write(conn, fresh)
        advanced: dict[tuple[str, int], int] = {}
        for c in fresh:
            position = (c.topic, c.partition)
            advanced[position] = max(advanced.get(position, 0), c.offset + 1)
        await conn.executemany(
            "INSERT INTO applied_offsets (consumer, topic, partition, next_offset) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (consumer, topic, partition) DO UPDATE"
            " SET next_offset = GREATEST(applied_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
            [(projection, topic, partition, nxt) for (topic, partition), nxt in advanced.items()],
        )
        return fresh


async def add_counter(conn: asyncpg.Connection, projection: str, counter: str, amount: int) -> None:
    if amount:
        await conn.execute(
            "INSERT INTO projection_counters (consumer, counter, value) VALUES ($1, $2, $3)"
            " ON CONFLICT (consumer, counter) DO UPDATE SET value = projection_counters.value + EXCLUDED.value",
            projection,
            counter,
            amount,
        )


async def applied_offsets(pool: asyncpg.Pool, projection: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the next offset ``projection`` has to apply."""
    rows = await pool.fetch(
        "SELECT partition, next_offset FROM applied_offsets WHERE consumer = $1 AND topic = $2", projection, topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}
