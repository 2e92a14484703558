"""The Faust application: one worker process runs every agent; projections and topics are shared resources."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import faust
import redis.asyncio as aioredis

from projections.consumed import Consumed
from projections.redis_store import RedisProjection
from schemas.codec import get_registry
from streams.deadletter import DEAD_LETTER_SCHEMA, dead_letter_record
from tidemark.settings import Settings, get_settings

settings: Settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
    store=settings.store,
    processing_guarantee="at_least_once",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.replication_factor,
    stream_wait_empty=False,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    broker_commit_every=10_000,
    broker_commit_interval=1.0,
    stream_buffer_maxsize=settings.batch_size * 2,
    autodiscover=False,
)


def raw_topic(name: str) -> faust.TopicT:
    """Our values are Avro single-object bytes decoded by the agents themselves, so a bad one can be dead-lettered."""
    return app.topic(
        settings.topic(name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


@dataclass(frozen=True)
class Resources:
    pool: asyncpg.Pool
    redis: RedisProjection


_resources: Resources | None = None
_resources_lock = asyncio.Lock()


async def resources() -> Resources:
    """Connections opened on first use by any agent and shared by all of them."""
    global _resources
    async with _resources_lock:
        if _resources is None:
            pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=4)
            client = aioredis.from_url(settings.redis_url)
            _resources = Resources(pool=pool, redis=RedisProjection(client))
        return _resources


def load_agents() -> None:
    """Importing the agent modules registers them with ``app``."""
    from streams import projectors  # noqa: F401
    from streams.correlation import agent  # noqa: F401


dead_letters = raw_topic("dlq")


def consumed(events: Sequence[faust.types.EventT]) -> list[Consumed]:
    return [
        Consumed(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
        for e in events
    ]


async def dead_letter(
    records: Sequence[Consumed],
    failures: Sequence[tuple[int, str]],
    processor: str,
    error_type: str = "DecodeError",
) -> None:
    """Publish each failed record to ``dlq``; Faust flushes the producer before it commits the offsets."""
    registry = get_registry()
    for index, reason in failures:
        record = records[index]
        payload = registry.encode(
            DEAD_LETTER_SCHEMA, dead_letter_record(record, reason, error_type, processor)
        )
        await dead_letters.send(key=record.topic.encode(), value=payload)
    if failures:
        app.log.warning(
            "%s: dead-lettered %d message(s), first: %s", processor, len(failures), failures[0][1]
        )
