"""Kafka client plumbing every layer shares: the producer configuration and the one produce path, the one way to
read a range of a topic, partitioning as the Java client does it, watermarks, lag, and the bounded retry for a broker
that answers but is not ready yet."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

# How long a command waits for a broker that answers but is not ready yet (a brand-new broker creates
# __consumer_offsets on the first group request and needs a few seconds to load its coordinators).
READY_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a broker answers while it elects leaders or loads its group and transaction coordinators. They mean "ask
# again shortly", never "not found": a fresh broker answers NOT_COORDINATOR to its first group requests.
NOT_READY_ERRORS = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_CONTROLLER,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
    }
)


class KafkaNotReady(RuntimeError):
    """The broker kept answering "not ready" past the bound: the message names the step and what to check."""


def until_ready(
    call: Callable[[], T],
    what: str,
    bootstrap: str = "",
    timeout: float = READY_TIMEOUT_S,
    also: Collection[int] = (),
) -> T:
    """``call()``, repeated with back-off while Kafka answers an error of ``NOT_READY_ERRORS`` (or ``also``).

    Any other error is raised at once; a broker still not ready after ``timeout`` raises KafkaNotReady.
    """
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError):
                raise
            if not (error.retriable() or error.code() in NOT_READY_ERRORS or error.code() in also):
                raise
            if time.monotonic() + pause > deadline:
                where = f" at {bootstrap}" if bootstrap else ""
                raise KafkaNotReady(
                    f"{what}: Kafka{where} still answered {error.name()} after {timeout:.0f}s; the broker is not "
                    "ready (still starting, or unhealthy): check `tidemark stack status` and the broker's log"
                ) from exc
            log.info("%s: Kafka answered %s; asking again in %.2fs", what, error.name(), pause)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def producer_config(bootstrap: str, **overrides: object) -> dict[str, object]:
    """Idempotent, acks=all, batched; murmur2 keeps partitions identical to Java and aiokafka (Faust) producers."""
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 20000,
        "batch.size": 4 * 1024 * 1024,
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 1024 * 1024,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",
    }
    config.update(overrides)
    return config


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class ReliableProducer:
    """The one produce path: a full local queue is waited out (never a dropped message) for at most
    ``full_queue_timeout_s`` (then KafkaNotReady: the broker is not taking messages, and the caller's restart resumes
    from what the topic holds), every failed delivery is kept, and ``flush`` raises unless everything produced was
    delivered. ``kafka`` is the client itself, for transactions."""

    def __init__(self, config: Mapping[str, object], what: str, full_queue_timeout_s: float = 120.0) -> None:
        self.kafka = Producer({**config, "on_delivery": self._on_delivery})
        self._what = what
        self._failed: list[str] = []
        self._full_queue_timeout_s = full_queue_timeout_s
        self._bootstrap = str(config.get("bootstrap.servers", ""))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def produce(self, topic: str, value: bytes, key: bytes | str | None = None, partition: int = -1) -> None:
        """``partition`` -1: the key's partition (murmur2); otherwise that one."""
        try:
            self.kafka.produce(topic, value, key, partition=partition)
        except BufferError:
            self._wait_for_room(lambda: self.kafka.produce(topic, value, key, partition=partition))

    def produce_many(self, topic: str, keys: Iterable[bytes | str | None], values: Iterable[bytes]) -> None:
        """One message per (key, value), then the delivery reports that are ready; the loop is inlined (hot path)."""
        produce = self.kafka.produce
        for key, value in zip(keys, values, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                self._wait_for_room(lambda: produce(topic, value, key))  # noqa: B023 - called at once
        self.kafka.poll(0)

    def _wait_for_room(self, produce: Callable[[], None]) -> None:
        deadline = time.monotonic() + self._full_queue_timeout_s
        while True:
            self.kafka.poll(0.05)
            try:
                produce()
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise KafkaNotReady(
                        f"{self._what}: the local queue stayed full for {self._full_queue_timeout_s:.0f}s; Kafka at "
                        f"{self._bootstrap} is not taking messages"
                    ) from None

    def flush(self, timeout: float = 60.0) -> None:
        """Raises unless everything produced since the last flush was delivered (a long-lived producer's next flush
        reports only its own failures)."""
        remaining = self.kafka.flush(timeout)
        failures, self._failed = self._failed, []
        if remaining or failures:
            failed = f"; {len(failures)} failed: {'; '.join(failures[:3])}" if failures else ""
            raise KafkaException(f"{self._what}: {remaining} message(s) undelivered after {timeout:.0f}s{failed}")


BATCH_PAUSE_S = 0.02
"""A gap in the flow this long ends a batch early: a lone event is not held for the rest of the batch window."""


def consume_batch(consumer: Consumer, size: int, within: float, pause: float = BATCH_PAUSE_S) -> list[Message]:
    """Up to ``size`` messages: as many as are ready at once (a backlog fills the batch), then whatever follows
    without a gap of ``pause``; at most ``within`` seconds in all. ``Consumer.consume(size, within)`` alone waits the
    whole window unless ``size`` messages arrive, which made every lone event wait it out."""
    messages: list[Message] = []
    deadline = time.monotonic() + within
    while len(messages) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        arrived = consumer.consume(size - len(messages), timeout=min(pause, left))
        if not arrived and messages:
            break
        messages += arrived
    return messages


def message_count(bootstrap: str, topic: str) -> int:
    """Messages currently in ``topic``: the sum of its partitions' high minus low watermarks."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tidemark-watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        total = 0
        for partition in partitions:
            low, high = watermarks(consumer, TopicPartition(topic, partition))
            total += high - low
        return total
    finally:
        consumer.close()


def watermarks(consumer: Consumer, partition: TopicPartition, timeout: float = 30.0) -> tuple[int, int]:
    """Low and high watermark, asking again while the partition's leadership is still settling.

    A broker that was paused past its session is fenced for about half a second after it resumes: metadata then
    shows no leader and the client answers "Local: Unknown partition" until it holds newer metadata, which it does
    not fetch by itself, so each retry asks for the topic again.
    """

    def query() -> tuple[int, int]:
        try:
            return consumer.get_watermark_offsets(partition, timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError._UNKNOWN_PARTITION:
                consumer.list_topics(partition.topic, timeout=timeout)
            raise

    low, high = until_ready(
        query,
        f"reading the offsets of {partition.topic} [{partition.partition}]",
        timeout=timeout,
        also=(KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION),
    )
    return low, high


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a group's lag: its committed offset (None: never committed) and the partition's end."""

    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        """Records after the committed offset; all of them from offset 0 when the group never committed."""
        return self.end - (self.committed or 0)


def consumer_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Messages of ``topics`` the consumer group has not committed yet (all of them when it never committed)."""
    return sum(p.lag for p in partition_lags(bootstrap, group, topics))


def partition_lags(
    bootstrap: str, group: str, topics: list[str], timeout: float = 30.0, ready_timeout: float = READY_TIMEOUT_S
) -> list[PartitionLag]:
    """``consumer_lag`` per partition, for whoever shows where a group stands (``tidemark status``).

    Read through a consumer that carries the group id without joining the group: its offset fetch waits for a
    coordinator that is still loading, where AdminClient.list_consumer_group_offsets (confluent-kafka 2.16)
    crashes the process on a NOT_COORDINATOR answer. ``timeout`` bounds each request, ``ready_timeout`` the wait
    for a broker that answers "not ready".
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        metadata = {t: consumer.list_topics(t, timeout=timeout).topics[t] for t in topics}
        partitions = [TopicPartition(t, p) for t in topics for p in metadata[t].partitions]
        committed = until_ready(
            lambda: consumer.committed(partitions, timeout=timeout),
            f"reading the committed offsets of group {group}",
            bootstrap,
            ready_timeout,
        )
        return [
            PartitionLag(
                tp.topic, tp.partition, tp.offset if tp.offset >= 0 else None, watermarks(consumer, tp, timeout)[1]
            )
            for tp in committed
        ]
    finally:
        consumer.close()


def read_range(
    consumer: Consumer,
    topic: str,
    starts: Mapping[int, int] | None = None,
    timeout: float = 60.0,
    batch: int = 10_000,
) -> Iterator[Message]:
    """Every record of ``topic`` from each partition's start (``starts``; all partitions from their beginning when
    None) to the partition's end as of now, in partition order per partition.

    The consumer must have ``enable.partition.eof`` on: a partition is done at its end-of-partition event, not by
    counting offsets, since transaction markers take offsets and are never delivered. A consumer error raises at
    once, and so does a range not read within ``timeout``; the generator leaves the consumer unassigned.
    """
    if starts is None:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(f"topic {topic} is not available ({metadata.error if metadata else 'missing'})")
        starts = dict.fromkeys(metadata.partitions, OFFSET_BEGINNING)
    pending: set[int] = set()
    assignment: list[TopicPartition] = []
    for partition, start in starts.items():
        low, high = watermarks(consumer, TopicPartition(topic, partition), timeout)
        if high > max(low, start):
            pending.add(partition)
            assignment.append(TopicPartition(topic, partition, start))
    if not pending:
        return
    consumer.assign(assignment)
    deadline = time.monotonic() + timeout
    try:
        while pending:
            if time.monotonic() > deadline:
                raise KafkaException(
                    f"could not read {topic} (partitions {sorted(pending)}) to its end in {timeout:.0f}s"
                )
            for message in consumer.consume(batch, timeout=0.5):
                error = message.error()
                if error is None:
                    yield message
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                else:
                    raise KafkaException(error)
    finally:
        consumer.unassign()


def range_reader(bootstrap: str, group: str, committed: bool = True, **overrides: object) -> Consumer:
    """A consumer for ``read_range``: never commits, sees only committed transactions unless told otherwise."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            **overrides,
        }
    )
