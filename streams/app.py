"""The Faust application: the stateful stream processors (agents) run here; projections run in projections/sink.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import faust

from projections.consumed import Consumed
from streams import runtime
from streams.deadletter import dead_letter_messages
from streams.runtime import Handler
from tidemark.settings import Settings, get_settings

settings: Settings = get_settings()
datadir = settings.state_dir / "faust" / settings.app_id
datadir.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
    store=settings.store,
    datadir=str(datadir),
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


def load_agents() -> None:
    """Importing the agent modules registers them with ``app``."""
    from streams import agent  # noqa: F401


dead_letters = raw_topic("dlq")


async def batches(stream: faust.StreamT[bytes]) -> AsyncIterator[list[Consumed]]:
    """The stream as batches of raw records: up to ``batch_size``, or what arrived within ``batch_within_s``."""
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        yield [
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
    for key, payload in dead_letter_messages(records, failures, processor, error_type):
        await dead_letters.send(key=key, value=payload)
    if failures:
        runtime.log.warning("%s: dead-lettered %d message(s), first: %s", processor, len(failures), failures[0][1])


async def handle_batch(records: Sequence[Consumed], processor: str, handler: Handler) -> None:
    await runtime.handle_batch(records, processor, handler, dead_letter)
