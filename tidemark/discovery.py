"""Discovery's processes: tasks from pattern signals and from people, the worker group that searches them, and the
status of the queue.

- A task is a ``DiscoverStrategy`` command on ``discovery.tasks``; its id is deterministic (family, legs, interval,
  history bounds and the day it was planned), so a signal repeated by every hourly scan plans one task a day.
- Workers are one Kafka consumer group. A worker publishes the task's candidate and its FINISHED progress, waits
  for both to be delivered, and only then commits the task's offset: a worker killed at any point leaves the task
  uncommitted, another worker redoes it (its Optuna studies, kept in PostgreSQL, resume with the trials done) and
  publishes the same candidate event id, which the projection stores once.
- A task that cannot run (unknown symbol, too little history, invalid parameters) ends as FAILED with the reason
  and is committed: never a crashed worker or a stuck partition.
- A worker keeps serving its consumer group during a task (its partitions paused, the group polled after every
  trial), so a worker that joins takes its share of the partitions at once instead of after the longest task
  finishes. The assignment is round robin, which revokes every partition at a rebalance: a worker drops the task
  in hand at its next trial, and whoever is assigned the partition resumes its studies (the trials not yet saved,
  at most 15, are redone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import optuna
import redis
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from core.consumed import Consumed
from core.deadletter import dead_letter_messages
from core.events import common_fields, deterministic_event_id, now_ns
from core.kafka import ReliableProducer, consumer_lag, partition_lags, producer_config, range_reader, read_range
from core.sessions import market_of
from core.settings import Settings
from core.supervision import Watchdog
from core.units import NS_PER_DAY
from schemas.catalogue import task_partition
from schemas.codec import DecodeError, get_registry
from streams.discovery.candidate import candidate_record
from streams.discovery.evidence import Gates
from streams.discovery.histories import NotEnoughHistory, Table
from streams.discovery.task import Budget, run
from streams.strategies import InvalidParameters, family

log = logging.getLogger("tidemark.discovery")

TASK_SCHEMA = "tidemark.discovery.DiscoverStrategy"
PROGRESS_SCHEMA = "tidemark.discovery.DiscoveryProgressed"
CANDIDATE_SCHEMA = "tidemark.strategies.StrategyCandidateDiscovered"
SIGNAL_SCHEMA = "tidemark.signals.PatternSignalDetected"
FAMILY_OF_PATTERN = {"MOMENTUM": "momentum", "MEAN_REVERSION": "reversion", "PAIRS_MEAN_REVERSION": "pairs"}
INTERVALS = ("1m", "1d")
PROGRESS_EVERY_S = 2.0
HISTORY_LIMIT = 2_000_000
"""Most bars per symbol a task reads: 5 years of regular-session minutes."""


class Stopping(Exception):
    """SIGTERM arrived during a task: it stays uncommitted and is redone (resumed) by the next worker."""


class Handed(Exception):
    """A rebalance revoked the running task's partition: whoever is assigned it next resumes the task."""


def worker_group(settings: Settings) -> str:
    return f"{settings.app_id}-discovery"


def planner_group(settings: Settings) -> str:
    return f"{settings.app_id}-planner"


def progress_channel(settings: Settings) -> str:
    return f"{settings.topic_prefix}discovery"


@dataclass(frozen=True)
class TaskRequest:
    """What to search: a family on some legs' history (all of it when the bounds are 0)."""

    family: str
    symbols: tuple[str, ...]
    asset_class: str
    interval: str
    start_ns: int = 0
    end_ns: int = 0
    causation_id: str = ""

    def check(self) -> None:
        fam = family(self.family)
        if self.interval not in INTERVALS:
            raise InvalidParameters(f"interval {self.interval!r}: discovery reads {' or '.join(INTERVALS)} bars")
        if fam.legs and len(self.symbols) != fam.legs:
            raise InvalidParameters(f"{fam.name} trades {fam.legs} symbol(s), got {len(self.symbols)}")
        market_of(self.asset_class)


def task_event(request: TaskRequest, source: str, planned_ns: int) -> dict[str, Any]:
    """The DiscoverStrategy command; ``planned_ns`` (a signal's market time, or now) names the day in its id."""
    request.check()
    task_id = deterministic_event_id(
        "discovery-task",
        request.family,
        ",".join(request.symbols),
        request.asset_class,
        request.interval,
        request.start_ns,
        request.end_ns,
        planned_ns // NS_PER_DAY,
    )
    return {
        **common_fields(source, planned_ns, request.causation_id, task_id),
        "family": request.family,
        "symbols": list(request.symbols),
        "asset_class": request.asset_class,
        "interval": request.interval,
        "start_ns": request.start_ns,
        "end_ns": request.end_ns,
    }


def request_from_signal(signal: dict[str, Any], asset_class: str) -> TaskRequest | None:
    """The task a pattern signal asks for (None for a pattern no family trades)."""
    name = FAMILY_OF_PATTERN.get(signal["pattern_family"])
    if name is None:
        return None
    interval = "1d" if signal["timeframe"] == "1d" else "1m"
    return TaskRequest(name, tuple(signal["symbols"]), asset_class, interval, causation_id=signal["event_id"])


def signals_unplanned(settings: Settings) -> bool:
    """Whether signals.patterns holds a signal after the planner's committed offsets. Not its lag: the runner
    writes signals in transactions, whose commit markers take offsets and are never delivered."""
    topic = settings.topic("signals.patterns")
    committed = {
        p.partition: p.committed or 0
        for p in partition_lags(settings.kafka.bootstrap, planner_group(settings), [topic])
    }
    consumer = range_reader(settings.kafka.bootstrap, f"{planner_group(settings)}-check")
    try:
        return any(True for _ in read_range(consumer, topic, committed))
    finally:
        consumer.close()


def queue_depth(settings: Settings) -> int:
    """Tasks the worker group has not committed yet."""
    return consumer_lag(settings.kafka.bootstrap, worker_group(settings), [settings.topic("discovery.tasks")])


class TaskPublisher:
    """Publishes tasks, holding back while the queue is full (back-pressure) and ``stopping`` is not set."""

    def __init__(self, settings: Settings, stopping: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self._stopping = stopping
        self._producer = ReliableProducer(producer_config(settings.kafka.bootstrap), "publishing discovery tasks")
        self._registry = get_registry()

    def publish(self, tasks: Iterable[dict[str, Any]]) -> int:
        """The number of tasks delivered: fewer than given when ``stopping`` was set while the queue was full."""
        max_queue = self.settings.discovery.max_queue
        topic = self.settings.topic("discovery.tasks")
        sent = 0
        room = max_queue - queue_depth(self.settings)
        for task in tasks:
            if room <= 0:
                log.info("discovery queue full (at most %d tasks): waiting for the workers", max_queue)
            while room <= 0:
                self._producer.flush()
                if self._stopping():
                    return sent
                time.sleep(1.0)
                room = max_queue - queue_depth(self.settings)
            value = self._registry.encode(TASK_SCHEMA, task)
            partition = task_partition(task["asset_class"], task["event_id"])
            self._producer.produce(topic, value, task["asset_class"], partition)
            sent += 1
            room -= 1
        self._producer.flush()
        return sent


def _worker_name() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


def optuna_url(dsn: str) -> str:
    """SQLAlchemy's URL of the projections database, through psycopg 3."""
    scheme, _, rest = dsn.partition("://")
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"TIDEMARK_POSTGRES_DSN must be a postgresql:// URL, not {scheme}://")
    return f"postgresql+psycopg://{rest}"


async def load_table(dsn: str, symbols: Sequence[str], interval: str, start_ns: int, end_ns: int) -> Table:
    """The legs' split- and dividend-adjusted bars from the projection, aligned on their start times."""
    from projections.read import adjusted_bars

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        series = []
        for symbol in symbols:
            rows, _ = await adjusted_bars(conn, symbol, interval, HISTORY_LIMIT)
            starts = np.array([int(r["start_ts"].timestamp() * 1_000_000) * 1000 for r in rows], dtype=np.int64)
            keep = (starts >= start_ns) & ((starts < end_ns) if end_ns else True)
            if not keep.any():
                raise NotEnoughHistory(f"no {interval} bars of {symbol} in the projection (unknown symbol?)")
            closes = np.array([r["close"] for r in rows], dtype=np.float64)[keep]
            volumes = np.array([r["volume"] for r in rows], dtype=np.float64)[keep]
            series.append((starts[keep], closes, volumes))
    finally:
        await conn.close()
    starts = np.unique(np.concatenate([s for s, _, _ in series]))
    closes = np.full((starts.size, len(series)), np.nan)
    volumes = np.zeros((starts.size, len(series)))
    for leg, (s, c, v) in enumerate(series):
        rows_of = np.searchsorted(starts, s)
        closes[rows_of, leg] = c
        volumes[rows_of, leg] = v
    return Table(interval, starts, closes, volumes)


class DiscoveryWorker:
    """One member of the worker group: a task at a time, committed only after its results are delivered."""

    def __init__(self, settings: Settings, watchdog: Watchdog) -> None:
        self.settings = settings
        self.watchdog = watchdog
        found = settings.discovery
        self.budget = Budget(found.folds, found.base_trials, found.trials_per_parameter, found.cscv_slices)
        self.gates = Gates(found.min_dsr, found.max_pbo, found.min_oos_sharpe, found.max_parameters)
        self.capital = found.capital
        self.name = _worker_name()
        self.source = f"discovery-worker/{self.name}"
        self._registry = get_registry()
        self._producer = ReliableProducer(producer_config(settings.kafka.bootstrap), "publishing discovery results")
        self._redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.operations.stall_timeout_s,
            socket_connect_timeout=10,
        )
        self._storage: optuna.storages.RDBStorage | None = None
        self._last_progress = 0.0
        self._consumer: Consumer
        self._running: tuple[str, int] | None = None
        self._handed = False
        self.done = 0

    def storage(self) -> optuna.storages.RDBStorage:
        if self._storage is None:
            self._storage = optuna.storages.RDBStorage(
                optuna_url(self.settings.postgres_dsn),
                engine_kwargs={"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}},
            )
        return self._storage

    def run(self, max_tasks: int | None = None) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka.bootstrap,
                "group.id": worker_group(self.settings),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "max.poll.interval.ms": 30 * 60 * 1000,
                # A worker killed with kill -9 hands its tasks on after this; heartbeats come from librdkafka's
                # thread, so a long task does not count against it.
                "session.timeout.ms": 10_000,
                # Round robin over the asset classes' contiguous partition ranges gives every worker partitions of
                # each class while there are no more workers than a class has partitions (a sticky assignor handed
                # a second worker only FX and futures partitions, and it idled beside a queue of equity tasks).
                "partition.assignment.strategy": "roundrobin",
            }
        )
        self._consumer = consumer
        consumer.subscribe(
            [self.settings.topic("discovery.tasks")],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._revoked,
        )
        log.info("discovery worker %s: waiting for tasks", self.name)
        try:
            while not self.watchdog.stopping.is_set() and (max_tasks is None or self.done < max_tasks):
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error() is not None:
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("discovery worker: %s", message.error().str())
                    continue
                self._running = (message.topic(), message.partition())
                self._handed = False
                consumer.pause(consumer.assignment())
                try:
                    self._handle(message)
                except Stopping:
                    log.info("discovery worker %s: stopped during a task; it stays queued and resumes", self.name)
                    return
                except Handed:
                    log.info(
                        "discovery worker %s: a rebalance revoked the task's partition; its assignee resumes it",
                        self.name,
                    )
                    continue
                finally:
                    self._running = None
                    consumer.resume(consumer.assignment())
                consumer.commit(message=message, asynchronous=False)
                self.done += 1
        finally:
            consumer.close()

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """A partition paused during a task stays paused through its revocation and return (librdkafka keeps the
        flag): each assignment sets it afresh."""
        consumer.assign(partitions)
        if self._running is not None:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._running in {(p.topic, p.partition) for p in partitions}:
            self._handed = True

    def _serve_group(self) -> None:
        """Joins a rebalance while a task runs; raises Handed once the task's partition is revoked."""
        message = self._consumer.poll(0)
        if message is not None and message.error() is None:
            # A partition assigned in the same poll, before its pause: its task waits for the end of this one.
            place = TopicPartition(message.topic(), message.partition(), message.offset())
            self._consumer.seek(place)
            self._consumer.pause([place])
        if self._handed:
            raise Handed()

    def _handle(self, message: Message) -> None:
        try:
            task = self._registry.decode_as(TASK_SCHEMA, message.value())
        except DecodeError as exc:
            record = Consumed(message.topic(), message.partition(), message.offset(), message.key(), message.value())
            log.warning(
                "discovery task at %s[%d]@%d dead-lettered: %s", record.topic, record.partition, record.offset, exc
            )
            for key, value in dead_letter_messages(
                self._registry, [record], [(0, str(exc))], "discovery-worker", "DecodeError"
            ):
                self._producer.produce(self.settings.topic("dlq"), value, key)
            self._producer.flush()
            return
        self._progress(task, "STARTED", 0, 0)
        try:
            self._search(task)
        except (NotEnoughHistory, InvalidParameters, ValueError) as exc:
            log.warning("discovery task %s failed: %s", task["event_id"], exc)
            self._progress(task, "FAILED", 0, 0, reason=str(exc))
        self._producer.flush()

    def _search(self, task: dict[str, Any]) -> None:
        request = TaskRequest(
            task["family"],
            tuple(task["symbols"]),
            task["asset_class"],
            task["interval"],
            task["start_ns"],
            task["end_ns"],
        )
        request.check()
        fam = family(task["family"])
        table = asyncio.run(
            load_table(self.settings.postgres_dsn, request.symbols, request.interval, request.start_ns, request.end_ns)
        )
        cost = self.settings.costs.model(request.asset_class).per_unit

        pause_after = self.settings.discovery.pause_after_trials

        def progress(_key: str, done: int, planned: int) -> None:
            if pause_after and done >= pause_after:
                log.warning("discovery worker %s: paused after %d trials (fault drill)", self.name, done)
                self._progress(task, "PROGRESSED", done, planned)
                self._producer.flush()
                while not self.watchdog.stopping.wait(0.5):
                    self._serve_group()
            if self.watchdog.stopping.is_set():
                raise Stopping()
            self._serve_group()
            if time.monotonic() - self._last_progress >= PROGRESS_EVERY_S:
                self._progress(task, "PROGRESSED", done, planned)

        evidence = run(
            task["event_id"],
            fam,
            table,
            market_of(request.asset_class),
            cost,
            self.storage(),
            self.gates,
            self.budget,
            progress,
        )
        positions = fam.positions(evidence.history.bars, evidence.params)
        candidate = candidate_record(
            task,
            evidence,
            positions,
            self.capital,
            None,
            self.source,
            int(table.starts[0]),
            int(table.starts[-1]),
            self.budget.folds,
            self.budget.slices,
        )
        self._producer.produce(
            self.settings.topic("strategies.candidates"),
            self._registry.encode(CANDIDATE_SCHEMA, candidate),
            candidate["strategy_id"],
        )
        self._progress(task, "FINISHED", evidence.trials, evidence.trials, candidate=candidate["event_id"])
        log.info(
            "discovery task %s: %s %s, OOS net Sharpe %.2f, DSR %.2f, PBO %.2f: %s",
            task["event_id"],
            candidate["strategy_id"],
            evidence.variant.key,
            evidence.oos_sharpe,
            evidence.dsr,
            evidence.pbo,
            "passed" if evidence.passed else "; ".join(evidence.failed),
        )

    def _progress(
        self, task: dict[str, Any], stage: str, done: int, planned: int, reason: str = "", candidate: str = ""
    ) -> None:
        self._last_progress = time.monotonic()
        event = {
            **common_fields(
                self.source,
                now_ns(),
                task["event_id"],
                deterministic_event_id("discovery-progress", task["event_id"], stage, done, self.name),
            ),
            "task_id": task["event_id"],
            "stage": stage,
            "family": task["family"],
            "symbols": list(task["symbols"]),
            "trials_done": done,
            "trials_planned": planned,
            "worker": self.name,
            "reason": reason,
            "candidate_id": candidate,
        }
        self._producer.produce(
            self.settings.topic("discovery.progress"), self._registry.encode(PROGRESS_SCHEMA, event), task["event_id"]
        )
        self._producer.kafka.poll(0)
        try:
            self._redis.publish(progress_channel(self.settings), json.dumps(event))
        except redis.RedisError as exc:
            log.warning("discovery progress not published to Redis (dashboards miss it): %s", exc)


async def _asset_classes(dsn: str, symbols: Sequence[str]) -> dict[str, str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT ON (symbol) symbol, asset_class FROM bars WHERE symbol = ANY($1::text[]) ORDER BY symbol",
            list(symbols),
        )
        return {r["symbol"]: r["asset_class"] for r in rows}
    finally:
        await conn.close()


def run_planner(settings: Settings, watchdog: Watchdog) -> None:
    """Pattern signals in, tasks out; a signal's offset is committed once its task is delivered. The task id is
    deterministic per pattern and day, so a signal seen again (every hourly scan, or after a restart) plans the
    same task, which the workers' candidates and the projection store once."""
    registry = get_registry()
    publisher = TaskPublisher(settings, watchdog.stopping.is_set)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": planner_group(settings),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.topic("signals.patterns")])
    dead_letters = ReliableProducer(producer_config(settings.kafka.bootstrap), "dead-lettering signals")
    planned: set[str] = set()

    def commit(messages: list[Message]) -> None:
        ends: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                place = (message.topic(), message.partition())
                ends[place] = max(ends.get(place, 0), message.offset() + 1)
        if ends:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)

    try:
        while not watchdog.stopping.is_set():
            messages = consumer.consume(100, 1.0)
            signals = []
            undecodable: list[tuple[Consumed, str]] = []
            for message in messages:
                if message.error() is not None:
                    continue
                try:
                    signals.append(registry.decode_as(SIGNAL_SCHEMA, message.value()))
                except DecodeError as exc:
                    record = Consumed(
                        message.topic(), message.partition(), message.offset(), message.key(), message.value()
                    )
                    log.warning(
                        "planner: signal at %s[%d]@%d dead-lettered: %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        exc,
                    )
                    undecodable.append((record, str(exc)))
            if undecodable:
                dead = dead_letter_messages(
                    registry,
                    [r for r, _ in undecodable],
                    [(i, reason) for i, (_, reason) in enumerate(undecodable)],
                    "discovery-planner",
                    "DecodeError",
                )
                for key, value in dead:
                    dead_letters.produce(settings.topic("dlq"), value, key)
                dead_letters.flush()
            if not signals:
                commit(messages)
                continue
            classes = asyncio.run(
                _asset_classes(settings.postgres_dsn, sorted({s for e in signals for s in e["symbols"]}))
            )
            tasks = []
            for signal in signals:
                asset_class = classes.get(signal["symbols"][0], "EQUITY")
                request = request_from_signal(signal, "EQUITY" if asset_class == "UNKNOWN" else asset_class)
                if request is None:
                    continue
                task = task_event(request, "discovery-planner", signal["ts_event"])
                if task["event_id"] not in planned:
                    planned.add(task["event_id"])
                    tasks.append(task)
            if publisher.publish(tasks) < len(tasks):
                log.info("planner: stopped while the queue was full; the signals not yet planned stay uncommitted")
                return
            if tasks:
                log.info("planner: %d signal(s) -> %d new task(s)", len(signals), len(tasks))
            commit(messages)
    finally:
        consumer.close()
