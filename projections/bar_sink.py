"""The bars projection's consumer: a plain Kafka consumer feeding whole batches to ``BarsProjection``.

Bars are the highest-volume stream, and a per-event stream framework spends far more time per message than
decoding and projecting a bar costs (Faust tops out near 12k messages/s per process here; see bench/). So this
sink reads batches straight from librdkafka, decodes them columnar, and projects them exactly once: the applied
offsets commit in the same PostgreSQL transaction as the rows, and the Kafka commit that follows is only a
starting hint — after a crash, anything redelivered is skipped by the stored offsets.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from projections.bars import CONSUMER, BarsProjection
from projections.consumed import Consumed
from projections.offsets import applied_offsets
from projections.redis_store import RedisProjection
from schemas.fastbars import decode_bars
from streams import runtime
from streams.deadletter import dead_letter_messages
from tidemark.settings import Settings, get_settings

log = logging.getLogger("tidemark.projections.bars")
_PR_SET_PDEATHSIG = 1


class BarSink:
    def __init__(self, settings: Settings, interval: str = "1m") -> None:
        self.settings = settings
        self.topic = settings.topic(f"md.bars.{interval}")
        self.stopping = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.app_id}-{CONSUMER}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
            }
        )
        self._resume_at: dict[int, int] = {}
        self._dlq = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})

    def run(self) -> None:
        """Consume until ``stopping`` is set."""
        asyncio.run(self._run())

    async def _run(self) -> None:
        pool = await asyncpg.create_pool(self.settings.postgres_dsn, min_size=1, max_size=2)
        redis_client = aioredis.from_url(self.settings.redis_url)
        projection = BarsProjection(pool, RedisProjection(redis_client))

        async def project(records: Sequence[Consumed]) -> None:
            bars, rows, failures = decode_bars([r.value for r in records])
            await self._dead_letter(records, failures, CONSUMER, "DecodeError")
            if len(bars):
                await projection.apply([records[i] for i in rows], bars)

        self._resume_at = await applied_offsets(pool, CONSUMER, self.topic)
        self._consumer.subscribe([self.topic], on_assign=self._seek_to_applied)
        try:
            while not self.stopping.is_set():
                messages = self._consumer.consume(self.settings.batch_size, timeout=self.settings.batch_within_s)
                records = self._records(messages)
                if not records:
                    continue
                await runtime.handle_batch(records, CONSUMER, project, self._dead_letter)
                self._commit(records)
        finally:
            self._consumer.close()
            await pool.close()
            await redis_client.aclose()

    def _seek_to_applied(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each assigned partition where the projection's own offsets say, not where Kafka's commit does:
        a restored or recreated database is then refilled from the log instead of silently missing rows."""
        for partition in partitions:
            partition.offset = self._resume_at.get(partition.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)

    def _records(self, messages: list[Message]) -> list[Consumed]:
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(
                    Consumed(message.topic(), message.partition(), message.offset(), message.key(), message.value())
                )
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("%s: consumer error: %s", CONSUMER, error)
        return records

    async def _dead_letter(
        self,
        records: Sequence[Consumed],
        failures: Sequence[tuple[int, str]],
        processor: str,
        error_type: str,
    ) -> None:
        for key, value in dead_letter_messages(records, failures, processor, error_type):
            self._dlq.produce(self.settings.topic("dlq"), value, key)
        if failures:
            remaining = self._dlq.flush(30)
            if remaining:
                raise OSError(f"{remaining} dead letters not acknowledged by Kafka")
            log.warning("%s: dead-lettered %d message(s), first: %s", processor, len(failures), failures[0][1])

    def _commit(self, records: Sequence[Consumed]) -> None:
        """Tell Kafka where to resume (best effort: the stored offsets, not this, guarantee exactly once)."""
        positions: dict[tuple[str, int], int] = {}
        for record in records:
            positions[(record.topic, record.partition)] = record.offset + 1
            self._resume_at[record.partition] = record.offset + 1
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        self._consumer.commit(offsets=offsets, asynchronous=True)


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to the sink when the worker that started it dies, even by kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def spawn_bar_sink() -> subprocess.Popen[bytes]:
    """The sink in a process of its own, so it does not share a GIL with the Faust worker's agents."""
    sink = subprocess.Popen([sys.executable, "-m", "projections.bar_sink"], preexec_fn=_die_with_parent)
    atexit.register(_stop, sink)
    return sink


def _stop(sink: subprocess.Popen[bytes]) -> None:
    if sink.poll() is None:
        sink.terminate()
        try:
            sink.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sink.kill()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    sink = BarSink(get_settings())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sink.stopping.set())
    sink.run()


if __name__ == "__main__":
    main()
