"""The Faust app of the domain agents (lifecycle and portfolio now; rebalancer and risk to come): low-rate streams
with state in Faust tables.

Faust runs with ``processing_guarantee="at_least_once"`` (its exactly-once mode has open defects): a message may
be processed again after a crash, so every agent makes its effects idempotent instead (deterministic event ids,
outputs remembered per key in the table and sent again, never decided again). Messages are Avro single-object
bytes, decoded by the project's registry: Faust's serializers see raw bytes only.
"""

from __future__ import annotations

import logging

import faust

from core.consumed import Consumed
from core.deadletter import dead_letter_messages
from core.settings import Settings
from schemas.catalogue import KEYED_PARTITIONS
from schemas.codec import get_registry

log = logging.getLogger("tidemark.agents")
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
"""Topic options of every agent's topics: bytes in and out, the registry encodes and decodes."""


def agents_app_id(settings: Settings) -> str:
    """The app's id: its consumer group, and the start of its internal topics' names (table changelogs, the
    assignor's), which the topic prefix therefore covers: whoever deletes a context's topics deletes its state."""
    return f"{settings.topic_prefix}{settings.app_id}-agents"


def create_app(settings: Settings, store: str = "memory://") -> faust.App:
    """The app; its tables' changelogs (``<app id>-<table>-changelog``) restore the state on start."""
    app_id = agents_app_id(settings)
    datadir = settings.state_dir / "agents" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store=store,
        processing_guarantee="at_least_once",
        topic_partitions=KEYED_PARTITIONS,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        # A member killed with kill -9 is noticed after this, and its partitions go to the others.
        broker_session_timeout=10.0,
        web_enabled=False,
        datadir=str(datadir),
    )


async def dead_letter(dlq: faust.TopicT, event: faust.types.EventT, processor: str, exc: Exception) -> None:
    """An input an agent cannot decode, to ``dlq`` with its bytes, coordinates and the reason."""
    message = event.message
    record = Consumed(message.topic, message.partition, message.offset, message.key, message.value)
    log.warning("%s: %s[%d]@%d dead-lettered: %s", processor, record.topic, record.partition, record.offset, exc)
    for key, value in dead_letter_messages(get_registry(), [record], [(0, str(exc))], processor, "DecodeError"):
        await dlq.send(key=key, value=value)
