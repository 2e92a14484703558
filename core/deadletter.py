"""Dead letters: what a processor cannot decode or validate is kept, with its bytes, coordinates and reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from core.consumed import Consumed
from core.events import common_fields, deterministic_event_id, now_ns

DEAD_LETTER_SCHEMA = "tidemark.ops.MessageDeadLettered"


class Encoder(Protocol):
    """What encodes a record under a schema name (``schemas.codec``'s registry): the contract sits below the codec."""

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes: ...


def dead_letter_record(record: Consumed, reason: str, error_type: str, processor: str) -> dict[str, Any]:
    """One ``MessageDeadLettered``; its id is derived from (processor, topic, partition, offset), so a
    redelivered bad message dead-letters under the same event_id and duplicates are recognisable."""
    event_id = deterministic_event_id("dlq", processor, record.topic, record.partition, record.offset)
    return {
        **common_fields(processor, now_ns(), event_id=event_id),
        "source_topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "original_key": record.key,
        "original_value": b"" if record.value is None else record.value,  # the schema's tombstone: empty
        "reason": reason,
        "error_type": error_type,
        "processor": processor,
    }


def dead_letter_messages(
    encoder: Encoder,
    records: Sequence[Consumed],
    failures: Sequence[tuple[int, str]],
    processor: str,
    error_type: str,
) -> list[tuple[bytes, bytes]]:
    """(key, value) messages for the ``dlq`` topic, keyed by the source topic."""
    return [
        (
            records[index].topic.encode(),
            encoder.encode(DEAD_LETTER_SCHEMA, dead_letter_record(records[index], reason, error_type, processor)),
        )
        for index, reason in failures
    ]
