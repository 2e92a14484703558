"""Fault injection under steady ingest (issue 10): each fault hits a running ``tidemark worker`` on a stack of the
run's own (Kafka, PostgreSQL and Redis in a temporary state dir, on free ports), so the shared stack is never
touched. Each scenario checks that nothing was lost or duplicated and measures how long recovery took.

Per scenario: fresh topics, app id, database and Redis database; ``tidemark topics create``; a worker subprocess;
a thread publishing the synthetic market in stages of ``STAGE_MINUTES`` every ``STAGE_EVERY_S`` (a stage counts as
published once Kafka acknowledged it). The fault lands at a moment the bench controls, never one a race picks:
ingest is held after a stage, the worker catches up with it, then the service is hit and ingest resumes (a stage
sent to a broker that is down waits in the producer). Once the service is back, ingest goes on; then it stops, the
worker catches up, and the checks run.

Measured from the moment the service answers again (``stack up`` returned; SIGCONT for a paused broker):

- resumed: the runner's and the sink's first commit after it, from their ``tidemark_last_commit_timestamp_seconds``
  (polled every 0.1 s; the target of issue 10 is 30 s);
- caught up: the runner has committed, and the bars projection has applied, every bar published up to then (the
  bars that waited in the producer during a Kafka outage included), while ingest goes on.

Checked: the worker never exited; bars in PostgreSQL == bars published; no duplicate counted by the projections;
each analytics output event id once on its topic (read_committed); analytics lag 0 and projection group lag 0;
Redis's latest bar of every symbol equal to PostgreSQL's (for the Redis restart, also right after the restart,
before newer bars can overwrite what the outage missed); no dead letter.

``python -m bench.faults [--only NAME ...] [--symbols N] [--keep]``; exit 1 when any scenario fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

import asyncpg
import redis
from confluent_kafka import Consumer, TopicPartition

from connectors.publisher import BarPublisher
from connectors.synthetic.market import build_universe, generate_bars
from core.kafka import consumer_lag, message_count, partition_lags, watermarks
from core.settings import Settings, with_database
from projections.bars import CONSUMER as BARS_PROJECTION
from projections.migrations import apply_migrations
from projections.sink import PROJECTED_TOPICS
from schemas.bars import BarBatch
from tests.integration.brokers import free_port_pair
from tests.integration.kafka_tools import read_all, worker_caught_up
from tests.integration.test_crash_recovery import ANALYTICS_OUTPUTS, _event_ids
from tests.integration.test_pipeline import SEED, START
from tidemark import stack
from tidemark.topics import delete_prefixed_topics
from tidemark.worker import _die_with_parent

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

STAGE_MINUTES = 2  # market minutes per stage
STAGE_EVERY_S = 0.5  # between stages: about 240 market minutes per minute of ingest
MAX_MINUTES = 1440  # the market's length; ingest stops early if a scenario ever runs through it
WARM_STAGES = 20  # stages published before the first fault
KAFKA_DOWN_S = 15.0  # how long a killed broker stays down
SERVICE_DOWN_S = 10.0  # how long PostgreSQL or Redis stays down
REDIS_SETTLE_S = 15.0  # Redis still down and ingest held: time for the sink to show whether it waits for Redis
PAUSE_S = 75.0  # SIGSTOP: past the 45 s session and 60 s transaction timeouts
KILL_AFTER_S = 3.0  # broker down this long before the runner or sink is killed
POST_S = 20.0  # ingest goes on at least this long after the service is back
RETRY_CAP_S = 5.0  # core/batches.py: a batch that met an outage is retried at most this far apart
RESUME_TARGET_S = 30.0  # issue 10: every process resumes within 30 s of the service answering again
RECOVERY_BOUND_S = 180.0  # longest wait for resuming and catching up after the service is back
CATCH_UP_BOUND_S = 300.0  # longest wait for the worker to catch up once ingest stopped
FLUSH_TIMEOUT_S = 600.0  # a stage waits this long in the producer for a broker that is down or paused
POLL_S = 0.1  # metrics polling

_LAST_COMMIT = re.compile(r'^tidemark_last_commit_timestamp_seconds\{process="(\w+)"\} (\S+)$', re.M)
_EVENTS_IN = re.compile(r'^tidemark_events_in_total\{process="analytics",topic="[^"]*"\} (\S+)$', re.M)
# librdkafka's complaints while the broker is down are expected: into the run's log directory, not the report.
RDKAFKA_LOG = logging.getLogger("bench.faults.rdkafka")
RDKAFKA_LOG.propagate = False
_CHILD_EXIT = re.compile(r"worker: (analytics runner|projection sink) exited (-?\d+)")


class ScenarioFailed(Exception):
    """A scenario could not go on (a bound passed, the worker died); the message is the table's reason."""


def _until(predicate: Callable[[], T | bool | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Bounded poll; ScenarioFailed names ``what`` when the bound passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(query, *args, timeout=30))
        finally:
            await conn.close()

    return asyncio.run(run())


# --- ingest ----------------------------------------------------------------------------------------------


class Ingest(threading.Thread):
    """Steady ingest from a thread: the synthetic market (the connector's bars and ids) stage by stage, each stage
    flushed before it counts as published, so ``published`` is exactly what Kafka acknowledged. ``hold`` stops it
    between two stages: the moment of a fault is then a fact, not a race."""

    def __init__(self, settings: Settings, symbols: int) -> None:
        super().__init__(name="ingest", daemon=True)
        universe = build_universe(n_symbols=symbols, seed=SEED, start=START, days=1)
        self._batches: Iterator[BarBatch] = generate_bars(universe, start=START, minutes=MAX_MINUTES, seed=SEED)
        self._publisher: BarPublisher | None = BarPublisher(
            settings.kafka.bootstrap, settings.topic("md.bars.1m"), source="synthetic", logger=RDKAFKA_LOG
        )
        self._cond = threading.Condition()
        self._open = True
        self._busy = False
        self._closing = False
        self._wake = threading.Event()
        self.published = 0
        self.stages = 0
        self.flushed_at = 0.0  # wall time of the last acknowledged stage
        self.exhausted = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._open or self._closing)
                    if self._closing:
                        return
                    self._busy = True
                stage = list(itertools.islice(self._batches, STAGE_MINUTES))
                if not stage:
                    self.exhausted = True
                    return
                assert self._publisher is not None
                for bars in stage:
                    self._publisher.publish(bars)
                self._publisher.flush(FLUSH_TIMEOUT_S)
                with self._cond:
                    self._busy = False
                    self.published += sum(map(len, stage))
                    self.stages += 1
                    self.flushed_at = time.time()
                    self._cond.notify_all()
                self._wake.wait(STAGE_EVERY_S)
        except BaseException as exc:  # reported as the scenario's failure
            self.error = exc
        finally:
            self._publisher = None  # its producer goes with it, before the stack does
            with self._cond:
                self._busy = False
                self._closing = True
                self._cond.notify_all()

    def hold(self) -> None:
        """No stage after the one in flight; returns once that one is acknowledged (Kafka must be up)."""
        with self._cond:
            self._open = False
            if not self._cond.wait_for(lambda: not self._busy, timeout=FLUSH_TIMEOUT_S):
                raise ScenarioFailed("ingest: a stage was not acknowledged")

    def resume(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._wake.set()
        self.join(FLUSH_TIMEOUT_S + 10)
        if self.is_alive():
            raise ScenarioFailed("ingest: the last stage was never acknowledged")

    def wait_stages(self, count: int, timeout: float) -> None:
        _until(lambda: self.stages >= count or self.error, timeout, f"ingest: {count} stages published")


# --- the worker's metrics ---------------------------------------------------------------------------------


class Commits(threading.Thread):
    """Polls the runner's and the sink's /metrics: each one's first commit after a mark, and the bars the runner
    consumed. A child being restarted simply does not answer for a while."""

    def __init__(self, port: int) -> None:
        super().__init__(name="metrics", daemon=True)
        self._ports = {"analytics": port, "projections": port + 1}
        self._lock = threading.Lock()
        self._mark: float | None = None
        self.first: dict[str, float] = {}  # process -> first commit time (unix) after the mark
        self.consumed = -1  # bars the current runner consumed (-1: not answering)
        self._done = threading.Event()

    def mark(self, at: float) -> None:
        with self._lock:
            self._mark = at
            self.first = {}

    def run(self) -> None:
        while not self._done.wait(POLL_S):
            for process, port in self._ports.items():
                text = _scrape(port)
                if text is None:
                    if process == "analytics":
                        self.consumed = -1
                    continue
                if process == "analytics":
                    self.consumed = int(sum(float(v) for v in _EVENTS_IN.findall(text)))
                for name, value in _LAST_COMMIT.findall(text):
                    with self._lock:
                        if self._mark is not None and float(value) > self._mark and name not in self.first:
                            self.first[name] = float(value)

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


# --- the run's own stack ----------------------------------------------------------------------------------


def own_stack(root: Path) -> Settings:
    """Settings for Kafka, PostgreSQL and Redis in ``root`` on free ports: the shared stack stays untouched. The
    ports lie below the ephemeral range (free_port_pair): a restarted service must get its port back, and the
    clients reconnecting meanwhile take theirs from that range."""
    ports: list[int] = []  # Kafka's (its controller takes the next), PostgreSQL's, Redis's: three distinct pairs
    while len(ports) < 3:
        port = free_port_pair()
        if all(abs(port - other) > 1 for other in ports):
            ports.append(port)
    kafka, postgres, redis_port = ports
    return Settings().changed(
        state_dir=root,
        kafka__bootstrap=f"127.0.0.1:{kafka}",
        postgres_dsn=f"postgresql://tidemark@127.0.0.1:{postgres}/tidemark",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
    )


def stop_service(settings: Settings, name: str, signum: signal.Signals) -> None:
    """Signal a service of the run's stack and wait until it is gone."""
    pid = stack.service_pid(settings, name)
    if pid is None:
        raise ScenarioFailed(f"{name} is not running")
    os.kill(pid, signum)
    _until(lambda: stack.service_pid(settings, name) is None, 60, f"{name} gone after {signum.name}")


def restore(settings: Settings, name: str) -> float:
    """``stack up`` for one service; the moment it answers again (unix time)."""
    stack.up(settings, services=[name])
    return time.time()


# --- one scenario -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    fault: str
    checked: str = ""
    runner_s: float | None = None
    sink_s: float | None = None
    caught_up_s: float | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Trial:
    """One scenario's names, worker, ingest and metrics on the run's stack."""

    def __init__(self, base: Settings, name: str, index: int, symbols: int, logs: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.base = base
        self.port = free_port_pair()  # the runner's metrics; the sink's is the next
        self.settings = base.changed(
            topic_prefix=f"faults-{tag}.",
            app_id=f"faults-{name}-{tag}",
            postgres_dsn=with_database(base.postgres_dsn, f"faults_{tag}"),
            redis_url=base.redis_url.rsplit("/", 1)[0] + f"/{index % 15 + 1}",
            operations__metrics_port=self.port,
        )
        self.log_path = logs / f"{name}-worker.log"
        self.symbols = symbols
        self.worker: subprocess.Popen[bytes] | None = None
        self.ingest: Ingest | None = None
        self.commits = Commits(self.port)
        self.paused_pid: int | None = None  # a broker this scenario stopped with SIGSTOP

    def start(self) -> None:
        asyncio.run(self._create_database())
        redis.Redis.from_url(self.settings.redis_url).flushdb()
        subprocess.run(
            [sys.executable, "-m", "tidemark.cli", "topics", "create"],
            env=self.settings.environment(),
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=300,
        )
        with self.log_path.open("wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "tidemark.cli", "worker", "--loglevel", "info"],
                env=self.settings.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                preexec_fn=_die_with_parent,  # never outlives the bench, even on kill -9
            )
        self.commits.start()
        self.ingest = Ingest(self.settings, self.symbols)
        self.ingest.start()

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(self.base.postgres_dsn, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.settings.postgres_dsn.rsplit("/", 1)[1]}"')
        finally:
            await conn.close()
        await apply_migrations(self.settings.postgres_dsn)

    @property
    def feed(self) -> Ingest:
        assert self.ingest is not None
        return self.ingest

    def alive(self) -> None:
        assert self.worker is not None
        if self.worker.poll() is not None:
            raise ScenarioFailed(f"the worker exited {self.worker.returncode}")
        if self.feed.error is not None:
            raise ScenarioFailed(f"ingest failed: {self.feed.error}")

    def caught_up(self) -> bool:
        self.alive()
        return worker_caught_up(self.settings)

    def settle(self) -> None:
        """The moment of a fault: ingest held after a stage, and the worker caught up with everything before it."""
        self.feed.wait_stages(WARM_STAGES, 300)
        self.feed.hold()
        _until(self.caught_up, CATCH_UP_BOUND_S, "the worker caught up before the fault", interval=0.5)

    def child_pid(self, module: str) -> int:
        """The pid of the worker's child running ``module`` (streams.runner or projections.sink)."""
        assert self.worker is not None
        for task in Path(f"/proc/{self.worker.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except FileNotFoundError:
                    continue
                if module.encode() in argv:
                    return int(pid)
        raise ScenarioFailed(f"no child of the worker runs {module}")

    def recover(self, outcome: Outcome, back_at: float) -> None:
        """From the service's return: resumed and caught up (ingest going on), then ingest stops and the worker
        catches up with everything."""
        self.commits.mark(back_at)
        target: dict[int, int] | None = None
        caught_at: float | None = None
        deadline = back_at + RECOVERY_BOUND_S
        while time.time() < deadline:
            self.alive()
            if target is None and self.feed.flushed_at > back_at:
                target = _ends(self.settings, self.settings.topic("md.bars.1m"))
            if target is not None and caught_at is None and _reached(self.settings, target):
                caught_at = time.time()
            if len(self.commits.first) == 2 and caught_at is not None and time.time() >= back_at + POST_S:
                break
            time.sleep(0.5)
        first = dict(self.commits.first)
        outcome.runner_s = first["analytics"] - back_at if "analytics" in first else None
        outcome.sink_s = first["projections"] - back_at if "projections" in first else None
        outcome.caught_up_s = caught_at - back_at if caught_at is not None else None
        for who, seconds in (("runner", outcome.runner_s), ("sink", outcome.sink_s)):
            if seconds is None:
                outcome.failures.append(f"{who} did not commit within {RECOVERY_BOUND_S:.0f}s")
            elif seconds > RESUME_TARGET_S:
                outcome.failures.append(f"{who} resumed after {seconds:.0f}s (target {RESUME_TARGET_S:.0f}s)")
        if caught_at is None:
            outcome.failures.append(f"backlog not caught up within {RECOVERY_BOUND_S:.0f}s")
        self.feed.stop()
        self.alive()
        _until(self.caught_up, CATCH_UP_BOUND_S, "the worker caught up after ingest stopped", interval=0.5)

    def check(self, outcome: Outcome) -> None:
        """No loss, no duplicate, lag 0, Redis equal to PostgreSQL, nothing dead-lettered, the worker alive."""
        settings, published = self.settings, self.feed.published
        failures = outcome.failures
        assert self.worker is not None
        if self.worker.poll() is not None:
            failures.append(f"the worker exited {self.worker.returncode}")
        bars = int(_fetch(settings.postgres_dsn, "SELECT count(*) AS n FROM bars")[0]["n"])
        if bars != published:
            failures.append(f"{bars:,} bars in PostgreSQL, {published:,} published")
        duplicates = int(
            _fetch(settings.postgres_dsn, "SELECT coalesce(sum(value), 0) AS n FROM projection_counters")[0]["n"]
        )
        if duplicates:
            failures.append(f"{duplicates} duplicates counted by the projections")
        ids = _event_ids(settings)
        repeated = sum(1 for n in Counter(ids).values() if n > 1)
        if repeated:
            failures.append(f"{repeated} output event ids more than once")
        runner_lag = consumer_lag(settings.kafka.bootstrap, settings.app_id, [settings.topic("md.bars.1m")])
        if runner_lag:
            failures.append(f"analytics lag {runner_lag}")
        sink_group = f"{settings.app_id}-projections"
        sink_topics = [settings.topic(name) for name in PROJECTED_TOPICS]
        try:
            _until(lambda: consumer_lag(settings.kafka.bootstrap, sink_group, sink_topics) == 0, 30, "projection lag 0")
            sink_lag = 0
        except ScenarioFailed:
            sink_lag = consumer_lag(settings.kafka.bootstrap, sink_group, sink_topics)
            failures.append(f"projection group lag {sink_lag}")
        stale = _stale_in_redis(settings)
        if stale:
            failures.append(f"Redis latest bar differs from PostgreSQL for {stale} symbol(s)")
        dead = message_count(settings.kafka.bootstrap, settings.topic("dlq"))
        if dead:
            failures.append(f"{dead} dead letter(s)")
        outcome.checked = (
            f"worker never exited; bars in PG {bars:,} / published {published:,}; duplicates {duplicates}; "
            f"{len(ids):,} output event ids, {repeated} repeated; lag {runner_lag} (runner) / {sink_lag} (sink); "
            f"Redis stale {stale}; dead letters {dead}"
        )
        aborted = sum(
            len(read_all(settings.kafka.bootstrap, settings.topic(name), committed=False))
            - len(read_all(settings.kafka.bootstrap, settings.topic(name)))
            for name in ANALYTICS_OUTPUTS
        )
        outcome.notes.append(f"{aborted} output record(s) of aborted transactions")
        restarts = Counter(_CHILD_EXIT.findall(self.log_path.read_text(errors="replace")))
        if restarts:
            outcome.notes.append(
                "restarts: " + ", ".join(f"{who} exit {code} x{n}" for (who, code), n in sorted(restarts.items()))
            )
        else:
            outcome.notes.append("no child restarted")

    def close(self) -> None:
        """Whatever happened: the broker running again, ingest and worker stopped, the scenario's topics deleted."""
        if self.paused_pid is not None:
            _signal(self.paused_pid, signal.SIGCONT)
        if self.ingest is not None and self.ingest.is_alive():
            with contextlib.suppress(ScenarioFailed):  # a daemon thread: the run goes on
                self.ingest.stop()
        self.commits.stop()
        gc.collect()  # the ingest's producer (a reference cycle) closes now, not when the stack is gone
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(30)
        stack.up(self.base)  # a service a failed scenario left down
        delete_prefixed_topics(self.settings, groups=[self.settings.app_id, f"{self.settings.app_id}-projections"])


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's end offset now."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "tidemark-bench-faults"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions}
    finally:
        consumer.close()


def _reached(settings: Settings, ends: dict[int, int]) -> bool:
    """The runner committed, and the bars projection applied, every bar before ``ends``."""
    topic = settings.topic("md.bars.1m")
    committed = {
        p.partition: p.committed or 0 for p in partition_lags(settings.kafka.bootstrap, settings.app_id, [topic])
    }
    if any(committed.get(p, 0) < end for p, end in ends.items()):
        return False
    rows = _fetch(
        settings.postgres_dsn,
        "SELECT partition, next_offset FROM applied_offsets WHERE consumer = $1 AND topic = $2",
        BARS_PROJECTION,
        topic,
    )
    applied = {r["partition"]: r["next_offset"] for r in rows}
    return all(applied.get(p, 0) >= end for p, end in ends.items())


def _stale_in_redis(settings: Settings) -> int:
    """Symbols whose latest bar in Redis is not PostgreSQL's latest (the bars projection writes both)."""
    rows = _fetch(
        settings.postgres_dsn,
        "SELECT symbol, (extract(epoch FROM max(start_ts)) * 1000000)::bigint * 1000 AS ns FROM bars"
        " WHERE interval = '1m' GROUP BY symbol",
    )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    try:
        pipe = client.pipeline(transaction=False)
        for row in rows:
            pipe.hget(f"tm:bar:1m:{row['symbol']}", "start_ns")
        stored = pipe.execute()
    finally:
        client.close()
    return sum(1 for row, value in zip(rows, stored, strict=True) if value is None or int(value) != row["ns"])


# --- the faults -------------------------------------------------------------------------------------------


def broker_kill(trial: Trial, outcome: Outcome) -> float:
    trial.settle()
    stop_service(trial.base, "kafka", signal.SIGKILL)
    trial.feed.resume()  # the next stage waits in the producer
    time.sleep(KAFKA_DOWN_S)
    return restore(trial.base, "kafka")


def broker_pause(trial: Trial, outcome: Outcome) -> float:
    trial.settle()
    consumed = trial.commits.consumed
    trial.feed.resume()
    # Paused as soon as the runner has consumed bars of the next stage: its open transaction then holds their
    # offsets (and outputs, at a snapshot), unless its checkpoint (every second) came first.
    _until(lambda: trial.commits.consumed > consumed, 60, "the runner consuming the next stage", interval=0.02)
    pid = stack.service_pid(trial.base, "kafka")
    if pid is None:
        raise ScenarioFailed("kafka is not running")
    os.kill(pid, signal.SIGSTOP)
    trial.paused_pid = pid
    time.sleep(PAUSE_S)
    os.kill(pid, signal.SIGCONT)
    trial.paused_pid = None
    return time.time()


def _service_restart(name: str, signum: signal.Signals) -> Callable[[Trial, Outcome], float]:
    def restart(trial: Trial, outcome: Outcome) -> float:
        trial.settle()
        stop_service(trial.base, name, signum)
        trial.feed.resume()  # bars keep arriving in Kafka while the service is down
        time.sleep(SERVICE_DOWN_S)
        return restore(trial.base, name)

    return restart


def redis_restart(trial: Trial, outcome: Outcome) -> float:
    """Bars arrive only while Redis is down; Redis comes back once the sink has either applied them to PostgreSQL
    (going on without Redis) or shown that it waits. Ingest holds until Redis equals PostgreSQL again, or a bound
    passes: newer bars would otherwise overwrite what the outage missed and hide it."""
    trial.settle()
    stop_service(trial.base, "redis", signal.SIGTERM)
    trial.feed.resume()
    time.sleep(SERVICE_DOWN_S)
    trial.feed.hold()
    # A sink that waits for Redis stops here; one that went on without it has all the outage's bars in PostgreSQL.
    try:
        _until(trial.caught_up, REDIS_SETTLE_S, "the bars of the outage in PostgreSQL", interval=0.5)
        outcome.notes.append("the sink went on without Redis")
    except ScenarioFailed:
        outcome.notes.append("the sink waited for Redis")
    back_at = restore(trial.base, "redis")
    try:  # a batch that met the outage is retried at most RETRY_CAP_S apart
        _until(lambda: _stale_in_redis(trial.settings) == 0, 2 * RETRY_CAP_S, "Redis equal to PostgreSQL")
    except ScenarioFailed:
        stale = _stale_in_redis(trial.settings)
        outcome.failures.append(f"after the restart, Redis's latest bar stayed stale for {stale} symbol(s)")
    outcome.notes.append(f"ingest held {time.time() - back_at:.1f} s after the restart for the Redis check")
    trial.feed.resume()
    return back_at


def _killed_while_broker_down(module: str) -> Callable[[Trial, Outcome], float]:
    def fault(trial: Trial, outcome: Outcome) -> float:
        trial.settle()
        stop_service(trial.base, "kafka", signal.SIGKILL)
        trial.feed.resume()
        time.sleep(KILL_AFTER_S)
        os.kill(trial.child_pid(module), signal.SIGKILL)
        time.sleep(KAFKA_DOWN_S - KILL_AFTER_S)
        return restore(trial.base, "kafka")

    return fault


@dataclass(frozen=True)
class Scenario:
    fault: str
    inject: Callable[[Trial, Outcome], float]  # returns when the service answers again (unix time)


SCENARIOS: dict[str, Scenario] = {
    "broker-kill": Scenario(f"Kafka broker kill -9, down {KAFKA_DOWN_S:.0f} s, `stack up`", broker_kill),
    "broker-pause": Scenario(
        f"Kafka broker SIGSTOP {PAUSE_S:.0f} s (> 45 s session, 60 s transaction timeout), SIGCONT", broker_pause
    ),
    "postgres-restart": Scenario(
        f"PostgreSQL fast shutdown (SIGINT), down {SERVICE_DOWN_S:.0f} s, `stack up`",
        _service_restart("postgres", signal.SIGINT),
    ),
    "redis-restart": Scenario(f"Redis SIGTERM, down {SERVICE_DOWN_S:.0f} s, `stack up`", redis_restart),
    "runner-killed-broker-down": Scenario(
        f"analytics runner kill -9 while the broker is down (kill -9, {KAFKA_DOWN_S:.0f} s)",
        _killed_while_broker_down("streams.runner"),
    ),
    "sink-killed-broker-down": Scenario(
        f"projection sink kill -9 while the broker is down (kill -9, {KAFKA_DOWN_S:.0f} s)",
        _killed_while_broker_down("projections.sink"),
    ),
}


def run_scenario(base: Settings, name: str, index: int, symbols: int, logs: Path) -> Outcome:
    scenario = SCENARIOS[name]
    outcome = Outcome(name, scenario.fault)
    trial = Trial(base, name, index, symbols, logs)
    started = time.monotonic()
    try:
        trial.start()
        back_at = scenario.inject(trial, outcome)
        trial.recover(outcome, back_at)
        trial.check(outcome)
    except ScenarioFailed as exc:
        outcome.failures.append(str(exc))
    except Exception as exc:  # reported in the table; the next scenario still runs
        outcome.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            trial.close()
        except Exception as exc:
            outcome.failures.append(f"cleanup: {type(exc).__name__}: {exc}")
    if trial.ingest is not None and trial.ingest.exhausted:
        outcome.notes.append(f"ingest ran through the market's {MAX_MINUTES} minutes")
    outcome.notes.append(f"{trial.feed.published if trial.ingest else 0:,} bars published")
    outcome.notes.append(f"{time.monotonic() - started:.0f} s; log {trial.log_path}")
    return outcome


# --- report -----------------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def table(outcomes: list[Outcome]) -> str:
    """Markdown, so that it can go into the README as it is."""
    rows = [
        "| fault | checked | resumed after (runner / sink) | caught up after | result |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        result = "PASS" if not o.failures else "FAIL: " + "; ".join(o.failures)
        resumed = f"{_seconds(o.runner_s)} / {_seconds(o.sink_s)}"
        rows.append(f"| {o.fault} | {o.checked or '-'} | {resumed} | {_seconds(o.caught_up_s)} | {result} |")
    return "\n".join(rows)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run through its cleanup: the worker stopped, the stack down."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), metavar="NAME", help="repeatable")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, stack data)")
    args = parser.parse_args(argv)
    names = [name for name in SCENARIOS if not args.only or name in args.only]
    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="tidemark-faults-"))
    logs = root / "logs"
    logs.mkdir()
    RDKAFKA_LOG.addHandler(logging.FileHandler(logs / "rdkafka.log"))
    base = own_stack(root / "stack")
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        print(f"faults: own stack in {root} (Kafka {base.kafka.bootstrap}); {args.symbols} symbols", flush=True)
        stack.up(base)
        for index, name in enumerate(names):
            print(f"  {name}: {SCENARIOS[name].fault} ...", flush=True)
            outcome = run_scenario(base, name, index, args.symbols, logs)
            outcomes.append(outcome)
            verdict = "PASS" if not outcome.failures else "FAIL"
            print(f"  {name}: {verdict}; " + "; ".join(outcome.notes), flush=True)
    finally:
        stack.down(base)
        failed = not outcomes or any(o.failures for o in outcomes) or len(outcomes) < len(names)
        if args.keep:
            print(f"run directory kept: {root}")
        elif failed:
            if (root / "stack" / "logs").is_dir():  # Kafka's, PostgreSQL's and Redis's own logs
                shutil.copytree(root / "stack" / "logs", logs / "stack", dirs_exist_ok=True)
            shutil.rmtree(root / "stack", ignore_errors=True)
            print(f"logs kept in {logs}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nfault injection, {args.symbols} symbols, {time.monotonic() - started:.0f} s:")
    print(table(outcomes))
    for o in outcomes:
        print(f"  {o.name}: " + "; ".join(o.notes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
