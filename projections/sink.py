"""The projection writers' consumer: a plain Kafka consumer feeding whole batches to each topic's projection.

A per-event stream framework spends far more time per message than decoding and projecting one costs (Faust tops
out near 12k messages/s per process here; see bench/), so the projections read batches straight from librdkafka,
decode them (bars columnar), and apply them exactly once: the applied offsets commit in the same PostgreSQL
transaction as the rows. Each partition starts from those stored offsets, so the Kafka commit is only
bookkeeping, anything redelivered after a crash is skipped, and a recreated database is refilled from the log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from core import batches
from core.consumed import Consumed
from core.deadletter import dead_letter_messages
from core.kafka import ReliableProducer, consume_batch
from core.metrics import STATISTICS_INTERVAL_MS, ProcessMetrics, process_port, serve
from core.settings import Settings, get_settings
from core.supervision import Watchdog, start_process
from projections.alerts import CONSUMER as ALERTS_PROJECTION
from projections.alerts import AlertsProjection
from projections.analytics import (
    CORRELATIONS_PROJECTION,
    STATS_PROJECTION,
    CorrelationProjection,
    EventProjection,
    correlation_projection,
    stats_projection,
)
from projections.bars import CONSUMER as BARS_PROJECTION
from projections.bars import BarsProjection
from projections.causation import CAUSATION, INDEXED_TOPICS, CausationIndex
from projections.corporate_actions import CONSUMER as ACTIONS_PROJECTION
from projections.corporate_actions import SCHEMA as ACTIONS_SCHEMA
from projections.corporate_actions import corporate_actions_projection
from projections.discovery import (
    CANDIDATE_SCHEMA,
    CANDIDATES,
    PROGRESS,
    PROGRESS_SCHEMA,
    candidates_projection,
    progress_projection,
)
from projections.execution import EXECUTION, ExecutionProjection
from projections.execution import SCHEMAS as EXECUTION_SCHEMAS
from projections.execution import TOPICS as EXECUTION_TOPICS
from projections.lifecycle import (
    LIFECYCLE,
    PERFORMANCE,
    PERFORMANCE_SCHEMA,
    LifecycleProjection,
    performance_projection,
)
from projections.lifecycle import SCHEMAS as LIFECYCLE_SCHEMAS
from projections.offsets import applied_offsets
from projections.portfolio import PORTFOLIO, PortfolioProjection
from projections.portfolio import SCHEMA as PORTFOLIO_SCHEMA
from projections.redis_store import RedisProjection
from projections.risk import RISK, RiskProjection
from projections.risk import SCHEMAS as RISK_SCHEMAS
from projections.risk import TOPICS as RISK_TOPICS
from projections.rotation import (
    ROTATION_PROJECTION,
    STRENGTH_PROJECTION,
    rotation_projection,
    strength_projection,
)
from projections.signals import CONSUMER as SIGNALS_PROJECTION
from projections.signals import SCHEMA as SIGNALS_SCHEMA
from projections.signals import signals_projection
from schemas.catalogue import topic_spec
from schemas.codec import DecodeError, get_registry
from schemas.fastbars import decode_bars

log = logging.getLogger("tidemark.projections")
# Every topic the sink projects into tables of its own (catalogue names).
PROJECTED_TOPICS = (
    "md.bars.1m",
    "md.bars.1d",
    "md.corporate_actions",
    "analytics.stats",
    "alerts",
    "analytics.correlations",
    "analytics.currency_strength",
    "analytics.sector_rotation",
    "signals.patterns",
    "strategies.candidates",
    "discovery.progress",
    "strategies.lifecycle",
    "strategies.performance",
    "portfolio.targets",
    *EXECUTION_TOPICS,
    *RISK_TOPICS,
)
SINK_TOPICS = tuple(dict.fromkeys((*PROJECTED_TOPICS, *INDEXED_TOPICS)))
"""Every topic the sink reads (catalogue names): the projected ones and those only the causation index reads. What
anyone waiting for the sink to catch up, or showing its lag, watches."""


def projection_reader_config(settings: Settings, group: str) -> dict[str, Any]:
    """What the live sink and a rebuild both read with: committed records only (the analytics runner's outputs are
    transactional), end-of-partition events (they carry the offset after a commit marker, see ``_skip_markers``) and
    large fetches (a backlog is read in 20k-record batches)."""
    return {
        "bootstrap.servers": settings.kafka.bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
    }


@dataclass(frozen=True)
class Route:
    """Where one topic's records go: the projection (its name keys its stored offsets) and how."""

    projection: str
    project: batches.Handler


def decode_all(
    records: Sequence[Consumed], schema: str | tuple[str, ...]
) -> tuple[list[Consumed], list[dict[str, Any]], list[str], list[tuple[int, str]]]:
    """Decode each record as ``schema`` (or one of them, for a topic of several event types): the records decoded,
    their events and each one's schema name; the ones that fail are returned as (index, reason) for the DLQ."""
    registry = get_registry()
    schemas = (schema,) if isinstance(schema, str) else schema
    good: list[Consumed] = []
    decoded: list[dict[str, Any]] = []
    names: list[str] = []
    failures: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        try:
            event = registry.decode(record.value)
            if event.schema not in schemas:
                raise DecodeError(f"expected {' or '.join(schemas)}, got {event.schema}")
            decoded.append(event.record)
            names.append(event.schema)
            good.append(record)
        except DecodeError as exc:
            failures.append((index, str(exc)))
    return good, decoded, names, failures


def projection_routes(
    settings: Settings, pool: asyncpg.Pool, redis: RedisProjection, dead_letter: batches.DeadLetter
) -> dict[str, tuple[Route, ...]]:
    """Every projected topic (with the settings' prefix) and the projections its records go to, in order: what the
    live sink and ``tidemark replay`` both run, so a rebuild applies exactly the live code. The keys are
    ``PROJECTED_TOPICS`` and the causation index's ``INDEXED_TOPICS``."""
    bars = BarsProjection(pool, redis, settings.processing.bar_window_s)
    stats = stats_projection(pool, redis)
    correlations = correlation_projection(pool, redis)
    alerts = AlertsProjection(pool, redis)
    strength = strength_projection(pool, redis)
    rotation = rotation_projection(pool, redis)
    signals = signals_projection(pool, redis)
    actions = corporate_actions_projection(pool, redis)
    candidates = candidates_projection(pool, redis)
    progress = progress_projection(pool, redis)
    lifecycle = LifecycleProjection(pool, redis)
    performance = performance_projection(pool, redis)
    portfolio = PortfolioProjection(pool, redis)
    execution = ExecutionProjection(pool, redis)
    risk = RiskProjection(pool, redis)

    async def project_bars(records: Sequence[Consumed]) -> None:
        batch, rows, failures = decode_bars([r.value for r in records])
        await dead_letter(records, failures, BARS_PROJECTION, "DecodeError")
        if len(batch):
            await bars.apply([records[i] for i in rows], batch)

    def project_events(
        name: str,
        schema: str | tuple[str, ...],
        projection: EventProjection
        | CorrelationProjection
        | AlertsProjection
        | LifecycleProjection
        | PortfolioProjection,
    ) -> batches.Handler:
        async def project(records: Sequence[Consumed]) -> None:
            good, events, _, failures = decode_all(records, schema)
            await dead_letter(records, failures, name, "DecodeError")
            await projection.apply(good, events)

        return project

    def project_typed(
        name: str, schemas: tuple[str, ...], projection: ExecutionProjection | RiskProjection
    ) -> batches.Handler:
        """For a projection of several event types that dispatches on each event's schema name."""

        async def project(records: Sequence[Consumed]) -> None:
            good, events, names, failures = decode_all(records, schemas)
            await dead_letter(records, failures, name, "DecodeError")
            await projection.apply(good, events, names)

        return project

    by_name = {
        "md.bars.1m": Route(BARS_PROJECTION, project_bars),
        "md.bars.1d": Route(BARS_PROJECTION, project_bars),
        "md.corporate_actions": Route(ACTIONS_PROJECTION, project_events(ACTIONS_PROJECTION, ACTIONS_SCHEMA, actions)),
        "analytics.stats": Route(
            STATS_PROJECTION, project_events(STATS_PROJECTION, "tidemark.analytics.SymbolStatsComputed", stats)
        ),
        "alerts": Route(ALERTS_PROJECTION, project_events(ALERTS_PROJECTION, "tidemark.risk.AlertRaised", alerts)),
        "analytics.correlations": Route(
            CORRELATIONS_PROJECTION,
            project_events(CORRELATIONS_PROJECTION, "tidemark.analytics.CorrelationSnapshotTaken", correlations),
        ),
        "analytics.currency_strength": Route(
            STRENGTH_PROJECTION,
            project_events(STRENGTH_PROJECTION, "tidemark.analytics.CurrencyStrengthComputed", strength),
        ),
        "analytics.sector_rotation": Route(
            ROTATION_PROJECTION,
            project_events(ROTATION_PROJECTION, "tidemark.analytics.SectorRotationComputed", rotation),
        ),
        "signals.patterns": Route(SIGNALS_PROJECTION, project_events(SIGNALS_PROJECTION, SIGNALS_SCHEMA, signals)),
        "strategies.candidates": Route(CANDIDATES, project_events(CANDIDATES, CANDIDATE_SCHEMA, candidates)),
        "discovery.progress": Route(PROGRESS, project_events(PROGRESS, PROGRESS_SCHEMA, progress)),
        "strategies.lifecycle": Route(LIFECYCLE, project_events(LIFECYCLE, LIFECYCLE_SCHEMAS, lifecycle)),
        "strategies.performance": Route(PERFORMANCE, project_events(PERFORMANCE, PERFORMANCE_SCHEMA, performance)),
        "portfolio.targets": Route(PORTFOLIO, project_events(PORTFOLIO, PORTFOLIO_SCHEMA, portfolio)),
        **{name: Route(EXECUTION, project_typed(EXECUTION, EXECUTION_SCHEMAS, execution)) for name in EXECUTION_TOPICS},
        **{name: Route(RISK, project_typed(RISK, RISK_SCHEMAS, risk)) for name in RISK_TOPICS},
    }
    if set(by_name) != set(PROJECTED_TOPICS):
        raise RuntimeError(
            f"PROJECTED_TOPICS and the sink's routes differ: {sorted(set(by_name) ^ set(PROJECTED_TOPICS))}"
        )
    routes = {settings.topic(name): (by_name[name],) for name in PROJECTED_TOPICS}
    # The causation index reads every indexed topic after its own projection (or alone, for the topics only it reads).
    index = Route(CAUSATION, CausationIndex(pool, settings.rotation.momentum).apply)
    for name in INDEXED_TOPICS:
        routes[settings.topic(name)] = (*routes.get(settings.topic(name), ()), index)
    return routes


async def resume_offsets(pool: asyncpg.Pool, routes: dict[str, tuple[Route, ...]]) -> dict[tuple[str, int], int]:
    """Per partition, the first offset some projection of it has not applied: records before it were applied by every
    projection of their topic, and each projection skips the ones it has (``apply_exactly_once``)."""
    resume: dict[tuple[str, int], int] = {}
    for topic, topic_routes in routes.items():
        applied = [await applied_offsets(pool, route.projection, topic) for route in topic_routes]
        for partition in set().union(*applied):
            resume[(topic, partition)] = min(offsets.get(partition, 0) for offsets in applied)
    return resume


class ProjectionSink:
    def __init__(self, settings: Settings, watchdog: Watchdog | None = None) -> None:
        self.settings = settings
        self.watchdog = watchdog or Watchdog("projection sink", settings.operations.stop_within_s)
        self.stopping = self.watchdog.stopping
        self.metrics = ProcessMetrics("projections", settings.operations.liveness_after_s)
        self._consumer = Consumer(
            {
                **projection_reader_config(settings, f"{settings.app_id}-projections"),
                "auto.offset.reset": "earliest",
                # A restarted sink (or one whose broker was away) rejoins as a new member, and the broker holds the
                # join until the old member's session expires: 10 s, not the default 45 s, bounds that wait.
                # Heartbeats come from librdkafka's own thread, so a long batch never costs the session.
                "session.timeout.ms": 10_000,
                "statistics.interval.ms": STATISTICS_INTERVAL_MS,
                "stats_cb": self.metrics.on_statistics,
            }
        )
        self._resume_at: dict[tuple[str, int], int] = {}
        # A dead letter carries the original bytes, so it can outgrow librdkafka's 1 MB default (bench.fuzz).
        self._dlq = ReliableProducer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "enable.idempotence": True,
                "message.max.bytes": topic_spec("dlq").max_message_bytes,
            },
            "dead-lettering",
        )

    def run(self) -> None:
        """Consume until ``stopping`` is set."""
        asyncio.run(self._run())

    async def _run(self) -> None:
        stall = self.settings.operations.stall_timeout_s
        # Bounded waits: a paused server times out (and the batch is retried) instead of blocking for ever.
        pool = await asyncpg.create_pool(
            self.settings.postgres_dsn, min_size=1, max_size=2, timeout=min(stall, 10.0), command_timeout=stall
        )
        redis_client = aioredis.from_url(
            self.settings.redis_url, socket_timeout=stall, socket_connect_timeout=min(stall, 10.0)
        )
        routes = projection_routes(self.settings, pool, RedisProjection(redis_client), self._dead_letter)
        self._resume_at = await resume_offsets(pool, routes)
        self._consumer.subscribe(list(routes), on_assign=self._seek_to_applied)
        try:
            while not self.stopping.is_set():
                messages = consume_batch(
                    self._consumer, self.settings.processing.batch_size, self.settings.processing.batch_within_s
                )
                by_topic: dict[str, list[Consumed]] = {}
                consumed, ends = self._records(messages)
                for record in consumed:
                    by_topic.setdefault(record.topic, []).append(record)
                for topic, records in by_topic.items():
                    self.metrics.consumed(topic, len(records))
                    for route in routes[topic]:
                        await batches.handle_batch(
                            records, route.projection, route.project, self._dead_letter, self.stopping
                        )
                    self._commit(records)
                    self.metrics.produced([(topic, len(records))])
                    self.metrics.committed()
                self._skip_markers(ends)
            self._commit_applied()
        except batches.Interrupted as exc:
            log.warning("%s; the batch is applied on restart", exc)
        finally:
            self._consumer.close()
            await pool.close()
            await redis_client.aclose()

    def _commit_applied(self) -> None:
        """On a clean stop, Kafka's copy of the applied offsets waits for the broker (the asynchronous commits may
        still be in flight), so that the group's lag reads 0 (`tidemark status`) once everything was applied."""
        applied = [TopicPartition(t, p, offset) for (t, p), offset in self._resume_at.items() if offset >= 0]
        if applied:
            try:
                self._consumer.commit(offsets=applied, asynchronous=False)
            except KafkaException as exc:  # bookkeeping only: the offsets stored with the rows are what count
                log.warning("projections: could not commit the applied offsets to Kafka on stop: %s", exc)

    def _seek_to_applied(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each assigned partition where the projection's own offsets say, not where Kafka's commit does.

        Those offsets are committed to Kafka too: a sink killed after its PostgreSQL commit and before its Kafka
        commit would otherwise show a lag that nothing new ever clears (the applied records are skipped, never
        committed again), and whoever waits for lag 0 (the demo, an operator) would wait for ever.
        """
        for partition in partitions:
            partition.offset = self._resume_at.get((partition.topic, partition.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)
        applied = [partition for partition in partitions if partition.offset >= 0]
        if applied:
            consumer.commit(offsets=applied, asynchronous=True)

    def _records(self, messages: list[Message]) -> tuple[list[Consumed], dict[tuple[str, int], int]]:
        """The records, and the end offset of each partition the batch reached the end of."""
        records = []
        ends: dict[tuple[str, int], int] = {}
        for message in messages:
            error = message.error()
            if error is None:
                records.append(
                    Consumed(message.topic(), message.partition(), message.offset(), message.key(), message.value())
                )
            elif error.code() == KafkaError._PARTITION_EOF:
                ends[(message.topic(), message.partition())] = message.offset()
            else:
                log.warning("projections: consumer error: %s", error)
        return records, ends

    def _skip_markers(self, ends: dict[tuple[str, int], int]) -> None:
        """Commit past the commit markers that end transactional topics (the analytics runner's outputs).

        A marker takes an offset but is never delivered, so committing after the last record would leave a lag of
        one per transaction for ever, and anyone waiting for lag 0 (the demo, an operator) would wait for ever.
        """
        ahead = [
            TopicPartition(topic, partition, end)
            for (topic, partition), end in ends.items()
            if end > self._resume_at.get((topic, partition), 0)
        ]
        for partition in ahead:
            self._resume_at[(partition.topic, partition.partition)] = partition.offset
        if ahead:
            self._consumer.commit(offsets=ahead, asynchronous=True)

    async def _dead_letter(
        self,
        records: Sequence[Consumed],
        failures: Sequence[tuple[int, str]],
        processor: str,
        error_type: str,
    ) -> None:
        for key, value in dead_letter_messages(get_registry(), records, failures, processor, error_type):
            self._dlq.produce(self.settings.topic("dlq"), value, key)
        if failures:
            try:
                self._dlq.flush(30)
            except KafkaException as exc:  # an outage: the batch is retried, never moved past without its letters
                raise OSError(str(exc)) from exc
            self.metrics.dead_lettered(len(failures))
            log.warning("%s: dead-lettered %d message(s), first: %s", processor, len(failures), failures[0][1])

    def _commit(self, records: Sequence[Consumed]) -> None:
        """Tell Kafka where to resume (best effort: the stored offsets, not this, guarantee exactly once)."""
        positions: dict[tuple[str, int], int] = {}
        for record in records:
            positions[(record.topic, record.partition)] = record.offset + 1
            self._resume_at[(record.topic, record.partition)] = record.offset + 1
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
        self._consumer.commit(offsets=offsets, asynchronous=True)


def main() -> None:
    """The sink as a process of the worker. PostgreSQL or Redis unreachable at start: exit 1, and the worker
    restarts it with back-off; outages later are waited out batch by batch."""
    settings = get_settings()
    ops = settings.operations
    sink = ProjectionSink(settings, start_process("projection sink", ops.log_level, ops.stop_within_s))
    serve(sink.metrics, ops.metrics_host, process_port(ops.metrics_port, 1))
    try:
        sink.run()
    except batches.TRANSIENT_ERRORS as exc:
        log.error("projection sink cannot start: %r; PostgreSQL and Redis must be reachable", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
