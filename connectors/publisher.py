"""Publishing bars to Kafka: idempotent producer, keyed by symbol, with progress and a clean flush on signals."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import numpy as np
import numpy.typing as npt
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.bars import BarBatch
from schemas.events import deterministic_event_ids_array, now_ns, stream_hash
from schemas.fastbars import encode_bars


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
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class BarIds:
    """Deterministic event ids per (source, symbol, interval, start): a republished bar carries the same id.

    Each symbol's stream hash is computed once per publisher; the ids themselves are made in one numpy pass.
    """

    def __init__(self, source: str) -> None:
        self._source = source
        self._streams: dict[tuple[str, str], int] = {}

    def __call__(self, bars: BarBatch) -> npt.NDArray[np.uint8]:
        streams = self._streams
        interval = bars.interval
        hashes = np.fromiter(
            (
                streams.get((symbol, interval))
                or streams.setdefault((symbol, interval), stream_hash(self._source, symbol, interval))
                for symbol in bars.symbol.tolist()
            ),
            dtype=np.uint64,
            count=len(bars),
        )
        return deterministic_event_ids_array(hashes, bars.start_ns)


@dataclass
class PublishReport:
    bars: int = 0
    batches: int = 0
    skipped: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.bars / self.seconds if self.seconds > 0 else 0.0


class StopFlag:
    """Set by SIGINT/SIGTERM: the publisher finishes the batch in hand, flushes, and returns."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()

    def handle(signum: int, frame: FrameType | None) -> None:
        flag.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class BarPublisher:
    def __init__(self, bootstrap: str, topic: str, source: str, **producer_overrides: object) -> None:
        self.topic = topic
        self.source = source
        # Delivery reports only for failures: a callback per delivered message would cost more than encoding it.
        self._producer = Producer(
            producer_config(
                bootstrap,
                on_delivery=self._on_delivery,
                **{"delivery.report.only.error": True},
                **producer_overrides,
            )
        )
        self._ids = BarIds(source)
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def publish(self, bars: BarBatch) -> None:
        payloads = encode_bars(bars, source=self.source, ts_ingest=now_ns(), event_ids=self._ids(bars))
        produce = self._producer.produce
        for key, value in zip(bars.symbol.tolist(), payloads, strict=True):
            while True:
                try:
                    produce(self.topic, value, key)
                    break
                except BufferError:
                    self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise KafkaException(f"{remaining} messages still undelivered to {self.topic} after {timeout:.0f}s")
        if self._errors:
            raise KafkaException(f"{len(self._errors)} messages failed: {'; '.join(self._errors[:3])}")


def publish_batches(
    publisher: BarPublisher,
    batches: Iterable[BarBatch],
    *,
    stop: StopFlag | None = None,
    speed: float | None = None,
    on_progress: Callable[[PublishReport], None] | None = None,
) -> PublishReport:
    """Publish every batch (or until ``stop``), pacing by bar time when ``speed`` is set, then flush."""
    report = PublishReport()
    started = time.perf_counter()
    first_bar_ns: int | None = None
    for bars in batches:
        if stop:
            report.interrupted = True
            break
        if not len(bars):
            continue
        if speed:
            first_bar_ns = first_bar_ns if first_bar_ns is not None else int(bars.start_ns.min())
            due = (int(bars.start_ns.min()) - first_bar_ns) / 1e9 / speed
            _sleep_unless(stop, due - (time.perf_counter() - started))
        publisher.publish(bars)
        report.bars += len(bars)
        report.batches += 1
        if on_progress is not None:
            report.seconds = time.perf_counter() - started
            on_progress(report)
    publisher.flush()
    report.seconds = time.perf_counter() - started
    return report


def _sleep_unless(stop: StopFlag | None, seconds: float) -> None:
    """Pacing that still answers a signal within 0.1 s."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop:
        time.sleep(min(0.1, deadline - time.monotonic()))


def keep_after_positions(
    bars: BarBatch, partition_of: np.ndarray, symbol_rank: np.ndarray, tail: dict[int, tuple[int, int]]
) -> BarBatch:
    """Drop the bars already in the topic: in each partition, those at or before the partition's tail position.

    Positions are (start_ns, symbol rank) — the deterministic generation order — so resuming after a kill
    republishes nothing that landed and skips nothing that did not.
    """
    if not tail:
        return bars
    parts = partition_of
    tail_start = np.full(parts.max() + 1 if len(parts) else 1, np.iinfo(np.int64).min, dtype=np.int64)
    tail_rank = np.full_like(tail_start, -1)
    for partition, (start_ns, rank) in tail.items():
        if partition < len(tail_start):
            tail_start[partition] = start_ns
            tail_rank[partition] = rank
    keep = (bars.start_ns > tail_start[parts]) | (
        (bars.start_ns == tail_start[parts]) & (symbol_rank > tail_rank[parts])
    )
    return bars if keep.all() else bars.take(keep)


def last_records(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, tuple[bytes | None, bytes]]:
    """The last (key, value) of every non-empty partition of ``topic``: where an interrupted publisher stopped."""
    from confluent_kafka import Consumer, TopicPartition

    from tidemark.topics import watermarks

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tidemark-tail-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        wanted: list[TopicPartition] = []
        for partition in metadata.partitions:
            low, high = watermarks(consumer, TopicPartition(topic, partition), timeout)
            if high > low:
                wanted.append(TopicPartition(topic, partition, high - 1))
        consumer.assign(wanted)
        tails: dict[int, tuple[bytes | None, bytes]] = {}
        deadline = time.monotonic() + timeout
        while len(tails) < len(wanted):
            if time.monotonic() > deadline:
                raise KafkaException(f"could not read the tail of {topic} within {timeout:.0f}s")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            tails[msg.partition()] = (msg.key(), msg.value())
            consumer.incremental_unassign([TopicPartition(topic, msg.partition())])
        return tails
    finally:
        consumer.close()
