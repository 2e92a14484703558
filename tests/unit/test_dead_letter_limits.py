"""A dead letter always fits the dlq topic, so the broker never refuses one and a bad message is never lost."""

from __future__ import annotations

import pytest

from core.consumed import Consumed
from core.deadletter import (
    DEAD_LETTER_SCHEMA,
    ORIGINAL_KEY_LIMIT,
    ORIGINAL_VALUE_LIMIT,
    REASON_LIMIT,
    dead_letter_messages,
    dead_letter_record,
)
from schemas.catalogue import topic_spec
from schemas.codec import get_registry


@pytest.mark.parametrize(
    ("key_bytes", "value_bytes", "cut"),
    [
        (10, 1_000, False),
        (10, ORIGINAL_VALUE_LIMIT, False),
        (10, ORIGINAL_VALUE_LIMIT + 1, True),
        (ORIGINAL_KEY_LIMIT + 1, 10, True),
        (ORIGINAL_KEY_LIMIT * 4, 8 * 1024 * 1024, True),  # the largest message a topic of ours accepts
    ],
)
def test_the_dead_letter_of_any_message_fits_the_dlq_topic(key_bytes: int, value_bytes: int, cut: bool) -> None:
    record = Consumed("analytics.correlations", 2, 41, b"k" * key_bytes, b"v" * value_bytes)
    ((_, encoded),) = dead_letter_messages(get_registry(), [record], [(0, "x" * 10 * REASON_LIMIT)], "sink", "E")
    assert len(encoded) < topic_spec("dlq").max_message_bytes
    letter = get_registry().decode_as(DEAD_LETTER_SCHEMA, encoded)
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == ("analytics.correlations", 2, 41)
    assert len(letter["reason"]) <= REASON_LIMIT
    assert letter["original_value"] == record.value[:ORIGINAL_VALUE_LIMIT]  # type: ignore[index]
    assert (len(letter["original_value"]) < value_bytes or len(letter["original_key"]) < key_bytes) is cut


def test_a_cut_dead_letter_says_so_and_where_the_whole_message_is() -> None:
    record = Consumed("analytics.correlations", 0, 7, None, b"v" * (ORIGINAL_VALUE_LIMIT + 5))
    letter = dead_letter_record(record, "not Avro", "DecodeError", "sink")
    assert letter["reason"].startswith("not Avro (key of 0 and value of 2,097,157 bytes")
    assert letter["reason"].endswith("the whole message is at its offset in the source topic)")
    long_reason = dead_letter_record(record, "x" * 10 * REASON_LIMIT, "DecodeError", "sink")["reason"]
    assert len(long_reason) <= REASON_LIMIT
    assert long_reason.endswith("the whole message is at its offset in the source topic)")
