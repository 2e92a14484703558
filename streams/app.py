"""The Faust application: one worker process runs every agent; projections and topics are shared resources."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
import faust
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from projections.analytics import CorrelationProjection, StatsProjection
from projections.bars import BarsProjection
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
    bars: BarsProjection
    stats: StatsProjection
    correlations: CorrelationProjection


_resources: Resources | None = None
_resources_lock = asyncio.Lock()


async def resources() -> Resources:
    """Connections opened on first use by any agent and shared by all of them."""
    global _resources
    async with _resources_lock:
        if _resources is None:
            pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=4)
            redis = RedisProjection(aioredis.from_url(settings.redis_url))
            _resources = Resources(
                pool=pool,
                bars=BarsProjection(pool, redis),
                stats=StatsProjection(pool, redis),
                correlations=CorrelationProjection(pool, redis),
            )
        return _resources


def load_agents() -> None:
    """Importing the agent modules registers them with ``app``."""
    from streams import projectors  # noqa: F401
    from streams.correlation import agent  # noqa: F401


dead_letters = raw_topic("dlq")


async def batches(stream: faust.StreamT[bytes]) -> AsyncIterator[list[Consumed]]:
    """The stream as batches of raw records: up to ``batch_size``, or what arrived within ``batch_within_s``."""
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        yield [Consumed(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
               for e in events]


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


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
)


async def handle_batch(
    records: Sequence[Consumed], processor: str, handler: Callable[[Sequence[Consumed]], Awaitable[None]]
) -> None:
    """Run ``handler`` on a batch without ever letting it crash the agent.

    Faust acks a ``take_events`` batch even when the agent raises, so an escaping exception would silently lose
    the batch. Instead, outages (connections, timeouts) are retried with capped backoff until they pass, and any
    other failure dead-letters the batch with the error, so nothing is lost and nothing loops.
    """
    for attempt in itertools.count(1):
        try:
            await handler(records)
            return
        except TRANSIENT_ERRORS as exc:
            delay = min(30.0, 0.25 * 2**attempt)
            app.log.warning("%s: %r; retrying the batch in %.1fs (attempt %d)", processor, exc, delay, attempt)
            await asyncio.sleep(delay)
        except Exception as exc:
            app.log.exception("%s: batch of %d failed; dead-lettering it", processor, len(records))
            reason = f"processing failed: {exc!r}"
            await dead_letter(records, [(i, reason) for i in range(len(records))], processor, type(exc).__name__)
            return
