"""Reading a topic back in tests, through a plain consumer."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from tidemark.topics import watermarks


def read_all(
    bootstrap: str, topic: str, timeout: float = 60.0, committed: bool = True
) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every (partition, offset, key, value) in ``topic`` now. read_committed by default, as every consumer of ours
    reads, so records of open or aborted transactions are left out (``committed=False`` shows them). Transaction
    markers take offsets too, so each partition is read to its end-of-partition event rather than counted."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tidemark-tests-read",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        pending = set()
        for partition in partitions:
            low, high = watermarks(consumer, TopicPartition(topic, partition))
            if high > low:
                pending.add(partition)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        records: list[tuple[int, int, bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                error = message.error()
                if error is None:
                    records.append((message.partition(), message.offset(), message.key(), message.value()))
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
        if pending:
            raise AssertionError(f"partitions {sorted(pending)} of {topic} not read to their end within {timeout}s")
        return records
    finally:
        consumer.close()
