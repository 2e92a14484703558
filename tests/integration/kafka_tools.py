"""Reading a topic back in tests, through a plain consumer; and whether the worker has caught up with the topics."""

from __future__ import annotations

import asyncio

import asyncpg
from confluent_kafka import OFFSET_BEGINNING

from core.kafka import consumer_lag, range_reader, read_range
from core.settings import Settings
from projections.sink import SINK_TOPICS


def read_all(
    bootstrap: str, topic: str, timeout: float = 60.0, committed: bool = True
) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every (partition, offset, key, value) in ``topic`` now. read_committed by default, as every consumer of ours
    reads, so records of open or aborted transactions are left out (``committed=False`` shows them)."""
    consumer = range_reader(bootstrap, "tidemark-tests-read", committed=committed)
    try:
        return [
            (message.partition(), message.offset(), message.key(), message.value())
            for message in read_range(consumer, topic, timeout=timeout)
        ]
    finally:
        consumer.close()


def records_from(bootstrap: str, topic: str, positions: dict[int, int], timeout: float = 60.0) -> bool:
    """Whether ``topic`` holds a committed record at or after ``positions[p]`` (the start when absent) in any
    partition. Offsets alone cannot tell: a transaction's commit marker takes one and is never delivered."""
    consumer = range_reader(bootstrap, "tidemark-tests-read")
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        starts = {p: positions.get(p, OFFSET_BEGINNING) for p in partitions}
        return any(True for _ in read_range(consumer, topic, starts, timeout))
    finally:
        consumer.close()


def worker_caught_up(settings: Settings) -> bool:
    """Everything in the topics has reached PostgreSQL through the worker: the analytics runner has committed every
    bar (its offsets commit with its outputs), then every committed record of each topic the sink reads lies before the
    offsets the projections stored with their rows. Exact, where Kafka's record of the sink's offsets is only
    bookkeeping (committed after the rows, and not at all for records a restarted sink finds already applied).
    Redis is written after each PostgreSQL commit, so this says nothing about Redis. Dead-lettered records never
    count as applied: not for tests that dead-letter."""
    if consumer_lag(settings.kafka.bootstrap, settings.app_id, [settings.topic("md.bars.1m")]):
        return False
    applied = asyncio.run(_applied_offsets(settings.postgres_dsn))
    for name in SINK_TOPICS:
        topic = settings.topic(name)
        positions = {partition: offset for (t, partition), offset in applied.items() if t == topic}
        if records_from(settings.kafka.bootstrap, topic, positions):
            return False
    return True


async def _applied_offsets(dsn: str) -> dict[tuple[str, int], int]:
    conn = await asyncpg.connect(dsn)
    try:
        # The least over the projections of a topic (its own and the causation index): all of them have applied it.
        rows = await conn.fetch("SELECT topic, partition, min(next_offset) AS n FROM applied_offsets GROUP BY 1, 2")
        return {(r["topic"], r["partition"]): r["n"] for r in rows}
    finally:
        await conn.close()
