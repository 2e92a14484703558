"""The analytics runner: md.bars.1m in, every registered processor's events out, exactly once by Kafka transactions.

Faust's per-message machinery tops out near 12k messages/s per process here (see bench/), well under the 20k bars/s
the analytics must sustain, so this reads whole batches straight from librdkafka, like the projection sink. One
consumer is assigned every partition of md.bars.1m (the processors need the whole universe; there is no group
rebalancing), and one transactional producer publishes everything the batches cause: events, dead letters, and,
every ``checkpoint_every_s`` and on stop, a checkpoint (each processor's state, one record per processor name, on
the compacted ``analytics.checkpoints``) together with the consumed positions as the offsets of group ``app_id``.
They commit in one transaction, so a read_committed reader sees outputs, state and offsets advance together or not
at all: a crash (even kill -9) rolls back to the last checkpoint, and the batches after it are processed again into
the same events (processors are deterministic; event ids too), which the aborted transaction never exposed.

One active instance per app id: the transactional id is ``{app_id}-analytics``, so starting a second instance
fences the first, whose next transactional call fails and which then exits 78 (never restarted: it would only fence
the newer one back). Run one runner per app id.

No call may block for ever: a watchdog (core/supervision.py) ends the process (exit 75) when a transactional step
outlasts ``operations.stall_timeout_s``, as librdkafka's ``send_offsets_to_transaction`` does while the transaction
coordinator is away, and the worker restarts it from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from contextlib import AbstractContextManager
from typing import overload

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from core import batches
from core.consumed import Consumed
from core.deadletter import dead_letter_messages
from core.kafka import KafkaNotReady, ReliableProducer, range_reader, read_range, until_ready
from core.metrics import STATISTICS_INTERVAL_MS, ProcessMetrics, process_port, serve
from core.settings import Settings, get_settings
from core.supervision import EXIT_FENCED, Watchdog, start_process
from schemas.catalogue import topic_spec
from schemas.codec import get_registry
from schemas.fastbars import decode_bars
from streams.checkpoints import checkpoint_records, latest_states
from streams.host import ProcessorHost, bar_frame
from streams.registry import FACTORIES

log = logging.getLogger("tidemark.streams.runner")

HOST = "analytics.host"
INPUT_TOPIC = "md.bars.1m"
CHECKPOINTS = "analytics.checkpoints"
KAFKA_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 10.0
FETCH_MAX_BYTES = 64 * 1024 * 1024
OFFSETS_BOUND_S = 10.0
# Start-up reads every processor's checkpoint (tens of MB for a large universe) and waits for the coordinators.
_START_BOUND_S = 12 * KAFKA_TIMEOUT_S

Outbox = list[tuple[str, bytes | None, bytes]]


class FatalKafkaError(RuntimeError):
    """Fenced by a newer instance, or an error the producer cannot recover from: the runner must stop."""

    def __init__(self, message: str, fenced: bool = False) -> None:
        super().__init__(message)
        self.fenced = fenced


class AnalyticsRunner:
    def __init__(self, settings: Settings, watchdog: Watchdog | None = None) -> None:
        self.settings = settings
        self.watchdog = watchdog or Watchdog("analytics runner", settings.operations.stop_within_s)
        self.stopping = self.watchdog.stopping
        self.metrics = ProcessMetrics("analytics", settings.operations.liveness_after_s)
        self._input_topic = settings.topic(INPUT_TOPIC)
        self._checkpoints = settings.topic(CHECKPOINTS)
        bootstrap = settings.kafka.bootstrap
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": settings.app_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "fetch.max.bytes": FETCH_MAX_BYTES,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                "statistics.interval.ms": STATISTICS_INTERVAL_MS,
                "stats_cb": self.metrics.on_statistics,
            }
        )
        self._producer = ReliableProducer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": f"{settings.app_id}-analytics",
                "transaction.timeout.ms": int(KAFKA_TIMEOUT_S * 1000),
                "message.max.bytes": topic_spec(CHECKPOINTS).max_message_bytes,
                "compression.type": "lz4",
                # Java's partitioner, as every other producer (core.kafka.producer_config): a downstream team can
                # compute where a key lives, and a key keeps one partition whoever writes it.
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "delivery.report.only.error": True,
                "error_cb": self._on_error,
            },
            "publishing the analytics outputs",
        )
        self._host = ProcessorHost(FACTORIES, settings, self._stored_state)
        self._partitions: list[int] = []
        self._checkpoint: dict[str, bytes] = {}  # the last committed state of each processor
        self._committed: dict[int, int] = {}  # partition -> next offset, as last committed
        self._positions: dict[int, int] = {}  # partition -> next offset, as consumed
        self._fed = False  # processors have seen bars since the last commit
        self._progress = _Progress()
        self._fatal: KafkaError | None = None

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka reports the cause of a fatal error here; later calls only say that one happened (_FATAL)."""
        if error.fatal():
            self._fatal = error

    def _cause(self, error: KafkaError) -> KafkaError:
        """The fatal error behind ``error`` (produce() only says _FATAL): from error_cb, which poll() serves."""
        try:
            self._producer.kafka.poll(0)
        except KafkaException as exc:
            return exc.args[0]  # type: ignore[no-any-return]
        return self._fatal or error

    def run(self) -> None:
        """Process until ``stopping`` is set, then commit what is open. Raises FatalKafkaError when fenced."""
        asyncio.run(self._run())

    async def _run(self) -> None:
        try:
            with self.watchdog.bounded("starting (fencing older instances, reading the checkpoint)", _START_BOUND_S):
                self._start()
            last_commit = time.monotonic()
            while not self.stopping.is_set():
                messages = self._consumer.consume(
                    self.settings.processing.batch_size, timeout=self.settings.processing.batch_within_s
                )
                batch = Batch(messages)
                if len(batch):
                    self.metrics.consumed(self._input_topic, len(batch))
                    await self._transactional(self._cycle(batch))
                if time.monotonic() - last_commit >= self.settings.processing.checkpoint_every_s:
                    await self._transactional(self._commit())
                    last_commit = time.monotonic()
                self._progress.maybe_log()
            await self._transactional(self._commit())
            log.info("analytics runner stopped; everything consumed is committed")
        finally:
            self._consumer.close()

    async def _transactional(self, step: Awaitable[None]) -> None:
        """Run one step of the transaction; an abortable failure rolls everything back to the last checkpoint."""
        try:
            await step
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if not error.txn_requires_abort():
                raise _fatal(self.settings, self._cause(error)) from exc
            log.warning("transaction failed (%s); aborting it and resuming from the last checkpoint", error)
            with self._kafka_bounded("aborting a transaction"):
                self._producer.kafka.abort_transaction(KAFKA_TIMEOUT_S)
            self._rewind()

    def _kafka_bounded(self, what: str) -> AbstractContextManager[None]:
        """Kafka calls only, never processing: a slow batch (a first JIT compile on a busy machine) is not a hang."""
        return self.watchdog.bounded(f"{what}; is Kafka reachable?", self.settings.operations.stall_timeout_s)

    def _start(self) -> None:
        try:
            # Fences any older instance with our transactional id and aborts the transaction it left open.
            self._producer.kafka.init_transactions(KAFKA_TIMEOUT_S)
        except KafkaException as exc:
            raise _fatal(self.settings, self._cause(exc.args[0])) from exc
        self._partitions = sorted(_partitions(self._consumer, self._input_topic))
        started = time.perf_counter()
        self._checkpoint = read_checkpoint(self.settings)
        committed = until_ready(
            lambda: self._consumer.committed(
                [TopicPartition(self._input_topic, p) for p in self._partitions], timeout=KAFKA_TIMEOUT_S
            ),
            f"reading the committed offsets of group {self.settings.app_id}",
            self.settings.kafka.bootstrap,
        )
        offsets = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        if offsets and not self._checkpoint:
            # Offsets and checkpoints commit together, so offsets without one were not ours (an older worker's).
            log.warning("group %s has offsets but no checkpoint: reprocessing from the start", self.settings.app_id)
            offsets = {}
        self._committed = offsets
        log.info(
            "analytics runner %s: %d processor state(s) restored (%.1f MB) in %.1fs; resuming %s at %s",
            self.settings.app_id,
            len(self._checkpoint),
            sum(map(len, self._checkpoint.values())) / 1e6,
            time.perf_counter() - started,
            self._input_topic,
            {p: self._committed.get(p, "start") for p in self._partitions},
        )
        self._rewind()
        self._progress = _Progress()
        # Start-up leaves a few hundred thousand long-lived objects (numba, fastavro, numpy): out of the cyclic
        # collector's full passes, which otherwise cost about twice what decoding a batch does.
        gc.freeze()

    def _rewind(self) -> None:
        """Back to the last commit: processors restored from its checkpoint, partitions at its offsets."""
        self._host.forget()
        self._positions = dict(self._committed)
        self._fed = False
        self._consumer.assign(
            [TopicPartition(self._input_topic, p, self._committed.get(p, OFFSET_BEGINNING)) for p in self._partitions]
        )
        self._producer.kafka.begin_transaction()

    def _stored_state(self, name: str) -> bytes | None:
        return self._checkpoint.get(name)

    async def _cycle(self, batch: Batch) -> None:
        outbox: Outbox = []

        async def process(_: Sequence[Consumed]) -> None:
            outbox.extend(self._process(batch))  # only on success: a failed batch is dead-lettered instead

        async def dead_letter(
            records: Sequence[Consumed], failures: Sequence[tuple[int, str]], processor: str, error_type: str
        ) -> None:
            outbox.extend(self._dead_letters(records, failures, processor, error_type))

        await batches.handle_batch(batch, HOST, process, dead_letter)
        self._produce(outbox)
        self._positions.update(batch.next_offsets())
        self._progress.bars += len(batch)

    def _process(self, batch: Batch) -> Outbox:
        bars, rows, failures = decode_bars(batch.values)
        outbox = self._dead_letters(batch, failures, HOST, "DecodeError")
        if len(bars):
            self._fed = True
            encode = get_registry().encode
            topic = self.settings.topic
            for event in self._host.process(bar_frame(batch.partitions, bars, rows)):
                outbox.append((topic(event.topic), event.key, encode(event.schema, event.event)))
        self.metrics.produced(Counter(topic for topic, _, _ in outbox).items())
        return outbox

    def _dead_letters(
        self, records: Sequence[Consumed], failures: Sequence[tuple[int, str]], processor: str, error_type: str
    ) -> Outbox:
        if failures:
            log.warning("%s: dead-lettering %d message(s), first: %s", processor, len(failures), failures[0][1])
            self.metrics.dead_lettered(len(failures))
        dlq = self.settings.topic("dlq")
        messages = dead_letter_messages(get_registry(), records, failures, processor, error_type)
        return [(dlq, key, value) for key, value in messages]

    def _produce(self, outbox: Outbox) -> None:
        with self._kafka_bounded("publishing outputs"):  # a full queue waits for the broker
            for topic, key, value in outbox:
                self._producer.produce(topic, value, key)
            self._producer.kafka.poll(0)

    async def _commit(self) -> None:
        """Checkpoint, offsets and everything produced since the last commit, atomically; then a new transaction."""
        complete = len(self._checkpoint) == len(FACTORIES)
        if self._positions == self._committed and (complete or not self._positions):
            return
        started = time.perf_counter()
        states = (
            {factory.name: self._host.processor(factory).to_bytes() for factory in FACTORIES}
            if self._fed or not complete
            else {}
        )
        self._produce(
            [(self._checkpoints, key, value) for key, value in checkpoint_records(self.settings.app_id, states)]
        )
        offsets = [TopicPartition(self._input_topic, p, offset) for p, offset in sorted(self._positions.items())]
        # One small request to the group coordinator, which librdkafka may wait on for ever after the broker was away
        # (its timeout is ignored, issue 5456): a tight bound, so a restart resumes well within 30 s of the broker's
        # return. The commit itself may wait for a large checkpoint's delivery: the general bound.
        with self.watchdog.bounded(
            "sending the consumed offsets to the transaction; is Kafka's group coordinator reachable?",
            min(OFFSETS_BOUND_S, self.settings.operations.stall_timeout_s),
        ):
            self._producer.kafka.send_offsets_to_transaction(
                offsets, self._consumer.consumer_group_metadata(), KAFKA_TIMEOUT_S
            )
        with self._kafka_bounded("committing a checkpoint"):
            self._commit_transaction()
        self._checkpoint.update(states)
        self._committed = dict(self._positions)
        self._fed = False
        self._producer.kafka.begin_transaction()
        self.metrics.committed()
        self._progress.checkpoint(sum(map(len, states.values())), time.perf_counter() - started)

    def _commit_transaction(self) -> None:
        deadline = time.monotonic() + KAFKA_TIMEOUT_S
        while True:
            try:
                self._producer.kafka.commit_transaction(KAFKA_TIMEOUT_S)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or time.monotonic() > deadline:
                    raise
                log.warning("commit not acknowledged yet (%s); retrying", exc.args[0])


class _Progress:
    """Bars/s and checkpoint costs, logged every ``PROGRESS_EVERY_S`` while there is work."""

    def __init__(self) -> None:
        self.bars = 0
        self._commits = 0
        self._bytes = 0
        self._commit_s = 0.0
        self._since = time.monotonic()

    def checkpoint(self, size: int, seconds: float) -> None:
        self._commits += 1
        self._bytes = size or self._bytes
        self._commit_s += seconds

    def maybe_log(self) -> None:
        elapsed = time.monotonic() - self._since
        if elapsed < PROGRESS_EVERY_S:
            return
        if self.bars or self._commits:
            log.info(
                "analytics: %d bars in %.1fs (%.0f bars/s); %d checkpoint(s) of %.1f MB, %.0f ms each on average",
                self.bars,
                elapsed,
                self.bars / elapsed,
                self._commits,
                self._bytes / 1e6,
                1000 * self._commit_s / max(self._commits, 1),
            )
        self.bars, self._commits, self._commit_s, self._since = 0, 0, 0.0, time.monotonic()


class Batch(Sequence[Consumed]):
    """A consumed batch as columns: the hot path needs values and partitions only, so a ``Consumed`` record is
    built just for the few messages that are dead-lettered."""

    def __init__(self, messages: list[Message]) -> None:
        errors = [message.error() for message in messages]
        if any(errors):
            for error in errors:
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    log.warning("analytics: consumer error: %s", error)
            messages = [message for message, error in zip(messages, errors, strict=True) if error is None]
        n = len(messages)
        self._messages = messages
        self.values: list[bytes] = [message.value() for message in messages]
        self.partitions = np.fromiter((message.partition() for message in messages), np.int32, n)
        self._offsets = np.fromiter((message.offset() for message in messages), np.int64, n)

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> Consumed: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Consumed]: ...

    def __getitem__(self, index: int | slice) -> Consumed | Sequence[Consumed]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        message = self._messages[index]
        return Consumed(message.topic(), message.partition(), message.offset(), message.key(), message.value())

    def next_offsets(self) -> dict[int, int]:
        """Partition -> the offset after its last message in the batch."""
        return {int(p): int(self._offsets[self.partitions == p].max()) + 1 for p in np.unique(self.partitions)}


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics[topic]
    if metadata.error is not None or not metadata.partitions:
        raise FatalKafkaError(f"topic {topic} is not available ({metadata.error}); run `tidemark topics create`")
    return list(metadata.partitions)


def read_checkpoint(settings: Settings) -> dict[str, bytes]:
    """Each processor's last committed state: the checkpoint topic read to its end (read_committed)."""
    topic = settings.topic(CHECKPOINTS)
    reader = range_reader(
        settings.kafka.bootstrap,
        f"{settings.app_id}-checkpoint-reader",
        **{"fetch.max.bytes": FETCH_MAX_BYTES, "max.partition.fetch.bytes": FETCH_MAX_BYTES},
    )
    try:
        _partitions(reader, topic)  # a clear error when the topic is missing
        records = read_range(reader, topic, timeout=10 * KAFKA_TIMEOUT_S)
        return latest_states(settings.app_id, ((message.key(), message.value()) for message in records))
    finally:
        reader.close()


def _fatal(settings: Settings, error: KafkaError) -> FatalKafkaError:
    if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH):
        return FatalKafkaError(
            f"analytics runner fenced: another instance with app id {settings.app_id!r} took over "
            f"(transactional id {settings.app_id}-analytics); only one may run per app id ({error})",
            fenced=True,
        )
    return FatalKafkaError(f"analytics runner stopped on a Kafka error it cannot recover from: {error}")


def main() -> None:
    """The runner as a process of the worker: SIGTERM commits what is open and exits 0; see module doc for codes."""
    settings = get_settings()
    ops = settings.operations
    runner = AnalyticsRunner(settings, start_process("analytics runner", ops.log_level, ops.stop_within_s))
    serve(runner.metrics, ops.metrics_host, process_port(ops.metrics_port, 0))
    try:
        runner.run()
    except FatalKafkaError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_FENCED if exc.fenced else 1)
    except KafkaNotReady as exc:
        log.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
