"""Foundation benchmark: connector vs raw producer, and worker vs raw consumer, on the local broker, in one run.

Each figure is printed beside its baseline, measured in the same process on the same bytes, with the ratio.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import asyncpg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.publisher import BarIds, BarPublisher
from connectors.synthetic.market import build_universe, generate_bars
from core.events import now_ns
from core.kafka import ReliableProducer, consumer_lag, producer_config
from core.settings import Settings, get_settings, with_database
from projections.migrations import apply_migrations
from schemas.bars import BarBatch
from schemas.catalogue import kafka_config, topic_spec
from schemas.fastbars import encode_bars
from tidemark.topics import create_topics, delete_prefixed_topics

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    name: str
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def market(symbols: int, minutes: int) -> list[BarBatch]:
    start = datetime(2025, 3, 3, 14, 30, tzinfo=UTC)
    universe = build_universe(n_symbols=symbols, seed=11, start=start, days=1)
    return list(generate_bars(universe, start=start, minutes=minutes, seed=11))


def create_topic(settings: Settings, name: str) -> None:
    spec = topic_spec("md.bars.1m")
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    topic = NewTopic(
        name, num_partitions=settings.kafka.topic_partitions, replication_factor=1, config=kafka_config(spec)
    )
    admin.create_topics([topic])[name].result(timeout=30)


def connector_run(settings: Settings, topic: str, batches: list[BarBatch]) -> Figure:
    publisher = BarPublisher(settings.kafka.bootstrap, topic, source="synthetic")
    started = time.perf_counter()
    for bars in batches:
        publisher.publish(bars)
    publisher.flush()
    return Figure(
        "synthetic connector (ids + Avro encode + produce)",
        sum(map(len, batches)),
        time.perf_counter() - started,
    )


def raw_producer_run(settings: Settings, topic: str, batches: list[BarBatch]) -> Figure:
    ids = BarIds("synthetic")
    encoded = [
        (bars.symbol.tolist(), encode_bars(bars, source="synthetic", ts_ingest=now_ns(), event_ids=ids(bars)))
        for bars in batches
    ]
    # The connector's exact producer settings, so that the ratio is the cost of ids and encoding alone.
    producer = ReliableProducer(
        producer_config(settings.kafka.bootstrap, **{"delivery.report.only.error": True}), "bench baseline"
    )
    count = 0
    started = time.perf_counter()
    for keys, payloads in encoded:
        producer.produce_many(topic, keys, payloads)
        count += len(payloads)
    producer.flush()
    return Figure("raw confluent-kafka producer (same bytes)", count, time.perf_counter() - started)


def raw_consumer_run(settings: Settings, topic: str, expected: int) -> Figure:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    count = 0
    started = time.perf_counter()
    while count < expected:
        for message in consumer.consume(10_000, timeout=1.0):
            if message.error() is None:
                count += 1
    seconds = time.perf_counter() - started
    consumer.close()
    return Figure("raw confluent-kafka consumer loop", count, seconds)


async def _count_bars(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM bars"))
    finally:
        await conn.close()


def fresh_database(settings: Settings, database: str) -> str:
    """``database`` (re)created empty and migrated on the settings' PostgreSQL server; its DSN."""

    async def prepare() -> str:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        dsn = with_database(settings.postgres_dsn, database)
        await apply_migrations(dsn)
        return dsn

    return asyncio.run(prepare())


def drop_database(settings: Settings, database: str) -> None:
    """Remove what ``fresh_database`` made."""

    async def drop() -> None:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


def spawn_worker(settings: Settings, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """``tidemark worker`` in a process of its own with exactly these settings, its output in ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "tidemark.cli", "worker"], env=settings.environment(), stdout=log, stderr=log, cwd=REPO
    )


def projection_run(
    process: subprocess.Popen[bytes], log_name: str, dsn: str, expected: int, name: str
) -> tuple[Figure, float]:
    """From the first bar ``process`` projects into ``dsn`` until the last: the figure, and when the first came."""
    first_count, first_at = 0, 0.0
    deadline = time.monotonic() + 600
    count = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name}: the process exited with {process.returncode}; see {log_name}")
        count = asyncio.run(_count_bars(dsn))
        now = time.perf_counter()
        if count and not first_count:
            first_count, first_at = count, now
        if count >= expected:
            return Figure(name, count - first_count, now - first_at), first_at
        time.sleep(0.05)
    raise TimeoutError(f"{name}: {count} of {expected} bars projected in 600 s")


def worker_run(settings: Settings, expected: int, tag: str) -> tuple[Figure, Figure]:
    """From the worker's first projected bar: until the last is projected (decoded, written, offsets committed in
    the same transaction), and until the analytics runner has committed the whole topic (its group is the app id)."""
    dsn = fresh_database(settings, f"bench_{tag}")
    log = open(REPO / ".tidemark" / f"bench-worker-{tag}.log", "wb")  # noqa: SIM115
    worker = spawn_worker(settings.model_copy(update={"app_id": f"bench-{tag}", "postgres_dsn": dsn}), log)
    deadline = time.monotonic() + 600
    try:
        projected, first_at = projection_run(
            worker, log.name, dsn, expected, "tidemark worker: bars decoded and projected"
        )
        first_count = expected - projected.count
        bars_topic = [settings.topic("md.bars.1m")]
        while consumer_lag(settings.kafka.bootstrap, f"bench-{tag}", bars_topic) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the analytics runner did not catch up in 600 s")
            time.sleep(0.1)
        agent = Figure("  of which the analytics runner", expected - first_count, time.perf_counter() - first_at)
        return projected, agent
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()


def ratio_line(figure: Figure, baseline: Figure, target: float) -> str:
    ratio = figure.rate / baseline.rate
    verdict = "meets" if ratio >= target else "MISSES"
    return (
        f"  {figure.name:<52} {figure.rate:>12,.0f} bars/s\n"
        f"  {baseline.name:<52} {baseline.rate:>12,.0f} bars/s\n"
        f"  ratio {ratio:.1%} ({verdict} the {target:.0%} target)"
    )


def main(symbols: int = 1000, minutes: int = 390) -> None:
    base = get_settings()
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench{tag}."})
    batches = market(symbols, minutes)
    total = sum(map(len, batches))
    print(f"market: {symbols} symbols x {minutes} minutes = {total:,} bars; broker {settings.kafka.bootstrap}")
    connector_topic, raw_topic = settings.topic("md.bars.1m"), settings.topic("bench.raw")
    create_topics(settings)
    create_topic(settings, raw_topic)
    create_topic(settings, settings.topic("bench.connector"))
    # Alternate the two producers and keep each one's best of three: the machine's noise hits both alike.
    raw_producer = connector = None
    for run in range(3):
        raw = raw_producer_run(settings, raw_topic, batches)
        raw_producer = raw if raw_producer is None or raw.rate > raw_producer.rate else raw_producer
        if run == 0:
            connector = connector_run(settings, connector_topic, batches)
        else:
            again = connector_run(settings, settings.topic("bench.connector"), batches)
            connector = again if again.rate > connector.rate else connector
    assert raw_producer is not None and connector is not None
    print("produce:")
    print(ratio_line(connector, raw_producer, 0.5))
    raw_consumer = raw_consumer_run(settings, connector_topic, total)
    worker, agent = worker_run(settings, total, tag)
    print("consume:")
    print(ratio_line(worker, raw_consumer, 0.2))
    print(f"  {agent.name:<52} {agent.rate:>12,.0f} bars/s ({agent.rate / raw_consumer.rate:.1%} of raw; no target)")
    delete_prefixed_topics(settings)


if __name__ == "__main__":
    main()
