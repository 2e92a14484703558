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
from confluent_kafka import TopicPartition

from core.events import deterministic_event_ids_array, now_ns, stream_hash
from core.kafka import ReliableProducer, producer_config, range_reader, read_range, watermarks
from schemas.bars import BarBatch
from schemas.fastbars import encode_bars


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
        self._producer = ReliableProducer(
            producer_config(bootstrap, **{"delivery.report.only.error": True}, **producer_overrides),
            f"publishing bars to {topic}",
        )
        self._ids = BarIds(source)

    def publish(self, bars: BarBatch) -> None:
        payloads = encode_bars(bars, source=self.source, ts_ingest=now_ns(), event_ids=self._ids(bars))
        self._producer.produce_many(self.topic, bars.symbol.tolist(), payloads)

    def flush(self, timeout: float = 60.0) -> None:
        self._producer.flush(timeout)


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
            if stop:  # the signal came while waiting for these bars' time: they are not due, so not published
                report.interrupted = True
                break
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
    consumer = range_reader(bootstrap, "tidemark-tail-reader")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        tails_from: dict[int, int] = {}
        for partition in metadata.partitions:
            low, high = watermarks(consumer, TopicPartition(topic, partition), timeout)
            if high > low:
                tails_from[partition] = high - 1
        return {
            message.partition(): (message.key(), message.value())
            for message in read_range(consumer, topic, tails_from, timeout)
        }
    finally:
        consumer.close()
