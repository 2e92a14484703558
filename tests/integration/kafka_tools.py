"""Reading a topic back in tests, through a plain consumer."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from tidemark.topics import watermarks


def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every (partition, offset, key, value) currently in ``topic``."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "tidemark-tests-read", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {}
        for partition in partitions:
            low, high = watermarks(consumer, TopicPartition(topic, partition))
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records: list[tuple[int, int, bytes | None, bytes]] = []
        remaining = sum(ends.values())
        deadline = time.monotonic() + timeout
        while remaining > 0 and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is None:
                    records.append((message.partition(), message.offset(), message.key(), message.value()))
                    remaining -= 1
        if remaining > 0:
            raise AssertionError(f"{remaining} records of {topic} not read within {timeout}s")
        return records
    finally:
        consumer.close()
