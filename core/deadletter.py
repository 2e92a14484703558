"""Dead letters: what a processor cannot decode or validate is kept, with its bytes, coordinates and reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from core.consumed import Consumed
from core.events import common_fields, deterministic_event_id, now_ns

DEAD_LETTER_SCHEMA = "tidemark.ops.MessageDeadLettered"
# What of a bad message a dead letter carries: enough for any message our topics accept by default, and small enough
# that the dead letter always fits the dlq topic (a test checks it against the catalogue), so no dead letter is
# refused by the broker and lost. A longer original stays readable at its coordinates in the source topic.
ORIGINAL_VALUE_LIMIT = 2 * 1024 * 1024
ORIGINAL_KEY_LIMIT = 16 * 1024
REASON_LIMIT = 4 * 1024


class Encoder(Protocol):
    """What encodes a record under a schema name (``schemas.codec``'s registry): the contract sits below the codec."""

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes: ...


def dead_letter_record(record: Consumed, reason: str, error_type: str, processor: str) -> dict[str, Any]:
    """One ``MessageDeadLettered``; its id is derived from (processor, topic, partition, offset), so a
    redelivered bad message dead-letters under the same event_id and duplicates are recognisable."""
    event_id = deterministic_event_id("dlq", processor, record.topic, record.partition, record.offset)
    value = b"" if record.value is None else record.value  # the schema's tombstone: empty
    key = record.key
    room = REASON_LIMIT - 512  # for the note on a cut message
    reason = reason if len(reason) <= room else reason[: room - 1] + "…"
    if len(value) > ORIGINAL_VALUE_LIMIT or (key is not None and len(key) > ORIGINAL_KEY_LIMIT):
        reason = (
            f"{reason} (key of {0 if key is None else len(key):,} and value of {len(value):,} bytes: the dead letter "
            f"keeps their first {ORIGINAL_KEY_LIMIT:,} and {ORIGINAL_VALUE_LIMIT:,}; the whole message is at its "
            "offset in the source topic)"
        )
        value = value[:ORIGINAL_VALUE_LIMIT]
        key = None if key is None else key[:ORIGINAL_KEY_LIMIT]
    return {
        **common_fields(processor, now_ns(), event_id=event_id),
        "source_topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "original_key": key,
        "original_value": value,
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
