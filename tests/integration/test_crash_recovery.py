"""Kill -9 at any point: a restarted worker's projections equal an uninterrupted run's, and its output topics
(read_committed) hold each event once; a restarted connector publishes nothing twice; duplicates that do reach the
topic are ignored downstream and counted.

Every kill lands at a point the test controls, never at one a race happens to pick: the input arrives in stages
(so a worker has work left because the rest was not published yet), runners that must not commit checkpoint once
an hour, a lock holds the bars projection inside its transaction, and connectors are paced to wait years for their
next minute. Each test can only fail when the guarantee it names is broken, however fast or slow the machine."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.publisher import BarPublisher
from connectors.synthetic.market import build_universe, generate_bars
from core.kafka import consumer_lag, message_count, partition_for_key
from core.settings import Settings
from core.supervision import EXIT_FENCED
from projections.sink import SINK_TOPICS
from schemas.catalogue import topic_spec
from schemas.codec import get_registry
from schemas.fastbars import decode_bars
from streams.registry import FACTORIES
from tests.conftest import REPO
from tests.integration.kafka_tools import read_all, worker_caught_up
from tests.integration.test_pipeline import SEED, START, count, expected_bars, fetch, synthetic_args
from tests.services import eventually
from tidemark.topics import planned_partitions

pytestmark = pytest.mark.integration

CRASH_SYMBOLS = 300
CRASH_MINUTES = 1440

_BARS = "SELECT symbol, interval, start_ts, open, high, low, close, volume, vwap, trade_count, source_offset FROM bars"
_STATS = "SELECT * FROM symbol_stats"
_SNAPSHOT_COLUMNS = (
    "universe, timeframe, as_of, window_bars, observations, symbols, {}, avg_correlation, eigen_share,"
    " diversification_ratio, event_id"
)
_SNAPSHOTS = f"SELECT {_SNAPSHOT_COLUMNS.format('upper_q')} FROM correlation_snapshots"
_LATEST = f"SELECT {_SNAPSHOT_COLUMNS.format('upper_f64')} FROM correlation_latest"
_ALERTS = "SELECT * FROM alerts"
_SNAPSHOT_ORDER = ["timeframe", "window_bars", "as_of"]


def table(dsn: str, query: str, order: list[str]) -> pd.DataFrame:
    return pd.DataFrame(fetch(dsn, query)).sort_values(order, ignore_index=True)


def kill(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def publish_minutes(settings: Settings, first: int, last: int, symbols: int = CRASH_SYMBOLS) -> int:
    """Publish the synthetic market's minutes ``[first, last)`` as the connector would (same bars, same ids): the
    input arrives in stages, so "part-way" is a fact of the topic, not a race against the worker. Returns the count."""
    universe = build_universe(n_symbols=symbols, seed=SEED, start=START, days=1)
    publisher = BarPublisher(settings.kafka.bootstrap, settings.topic("md.bars.1m"), source="synthetic")
    published = 0
    for bars in generate_bars(universe, start=START, minutes=last, seed=SEED, skip_minutes=first):
        publisher.publish(bars)
        published += len(bars)
    publisher.flush()
    return published


@contextmanager
def writers_held(dsn: str, table: str) -> Iterator[Callable[[], int]]:
    """Hold an EXCLUSIVE lock on ``table`` (readers pass, writers wait inside their transaction) until the block
    ends; yields a count of the sessions waiting on it."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(dsn))
    try:
        loop.run_until_complete(conn.execute(f"BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE"))
        holder = loop.run_until_complete(conn.fetchval("SELECT pg_backend_pid()"))
        # Asked on fresh connections: pg_stat_activity is a snapshot per transaction.
        query = (
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND $1 = ANY(pg_blocking_pids(pid))"
        )
        yield lambda: int(fetch(dsn, query, holder)[0]["n"])
    finally:
        loop.run_until_complete(conn.close())  # ends the transaction: the lock is released
        loop.close()


MID_FIRST, MID_SECOND = 300, 700  # minutes: the mid-stream test's input arrives as [0, 300), [300, 700), [700, 1440)


def test_worker_killed_mid_stream_recovers_to_the_uninterrupted_projections(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    new_database: Callable[[], str],
) -> None:
    run_cli("topics", "create")
    total = len(expected_bars(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    dsn = isolated.postgres_dsn
    stats = isolated.topic("analytics.stats")
    # Minute windows (60, 390): every 15 minutes from 00:15 to 23:45 of the day (FX trades throughout); daily
    # windows (5, 21): after the NYSE close (21:00 UTC) and the CME and FX closes (22:00 UTC).
    snapshots = 95 * 2 + 2 * 2

    # First kill: the analytics runner holds events in a transaction no checkpoint has committed (its first is an
    # hour away), and the bars projection, having applied the first part, is inside the transaction of the next
    # batch (held there by our lock on the table).
    first = publish_minutes(isolated, 0, MID_FIRST)
    victim = start_worker(isolated.changed(processing__checkpoint_every_s=3600.0))
    eventually(lambda: count(dsn, "bars") == first, timeout=120, what="the bars projection applied the first part")
    eventually(lambda: _uncommitted(isolated, stats) > 0, timeout=120, what="events in an open transaction")
    with writers_held(dsn, "bars") as waiting:
        second = publish_minutes(isolated, MID_FIRST, MID_SECOND)
        eventually(lambda: waiting() > 0, timeout=120, what="the bars projection writing the second part")
        kill(victim)
    assert count(dsn, "bars") == first, "the transaction the kill interrupted never commits"
    assert _analytics_lag(isolated) == first + second, "nothing the first runner did was committed"

    # Second kill: after the analytics runner has committed a checkpoint of everything published so far (and the
    # projections have applied it), before the rest of the bars exist.
    worker = start_worker()
    eventually(lambda: worker_caught_up(isolated), timeout=240, what="the second worker caught up")
    kill(worker)
    assert count(dsn, "bars") == first + second
    rest = publish_minutes(isolated, MID_SECOND, CRASH_MINUTES)
    assert first + second + rest == total == message_count(isolated.kafka.bootstrap, isolated.topic("md.bars.1m"))
    assert _analytics_lag(isolated) == rest, "the runner resumes from a checkpoint part-way through the bars"

    start_worker()
    eventually(lambda: worker_caught_up(isolated), timeout=300, what="the restarted worker caught up")
    assert count(dsn, "bars") == total
    assert count(dsn, "correlation_snapshots") == snapshots

    # An uninterrupted run over the same topic (which its outputs share: both databases project both runs' events).
    reference = isolated.model_copy(update={"app_id": isolated.app_id + "-reference", "postgres_dsn": new_database()})
    start_worker(reference)
    eventually(lambda: worker_caught_up(reference), timeout=300, what="the reference worker caught up")
    eventually(lambda: worker_caught_up(isolated), timeout=120, what="the first projections caught up again")
    assert count(reference.postgres_dsn, "bars") == total
    assert count(reference.postgres_dsn, "correlation_snapshots") == snapshots

    compared = (
        (_BARS, ["symbol", "start_ts"]),
        (_STATS, ["symbol", "timeframe", "window_bars"]),
        (_SNAPSHOTS, _SNAPSHOT_ORDER),
        (_LATEST, _SNAPSHOT_ORDER),
        (_ALERTS, ["event_id"]),
    )
    for query, order in compared:
        pd.testing.assert_frame_equal(table(dsn, query, order), table(reference.postgres_dsn, query, order))
    duplicates = fetch(dsn, "SELECT coalesce(sum(value), 0) AS n FROM projection_counters")[0]["n"]
    assert duplicates == 0, "offsets in the same transaction mean a redelivered bar is skipped, not re-inserted"
    assert message_count(isolated.kafka.bootstrap, isolated.topic("dlq")) == 0

    # The killed run's projections, rebuilt from the log by `tidemark replay`, are identical table by table (the
    # worker still runs: the verification compares one snapshot of the live tables with a rebuild to its offsets).
    verified = run_cli("replay", "--verify", "--json", check=False, timeout=600)
    report = json.loads(verified.stdout or "{}")
    assert verified.returncode == 0 and report["identical"], verified.stdout[-3000:] + verified.stderr
    compared_tables = set(report["tables"])
    assert {"bars", "symbol_stats", "correlation_snapshots", "correlation_latest", "alerts"} <= compared_tables
    assert report["tables"]["bars"]["live"]["rows"] == total
    assert report["rebuild"]["dead_letters"] == {}


ANALYTICS_OUTPUTS = (
    "analytics.stats",
    "analytics.correlations",
    "analytics.currency_strength",
    "analytics.sector_rotation",
    "signals.patterns",
    "alerts",
    "dlq",
)


def _analytics_lag(settings: Settings) -> int:
    return consumer_lag(settings.kafka.bootstrap, settings.app_id, [settings.topic("md.bars.1m")])


def _uncommitted(settings: Settings, topic: str) -> int:
    """Events only a read_uncommitted reader sees: those of open (or aborted) transactions."""
    committed = len(read_all(settings.kafka.bootstrap, topic))
    return len(read_all(settings.kafka.bootstrap, topic, committed=False)) - committed


def _event_ids(settings: Settings) -> list[str]:
    registry = get_registry()
    return [
        registry.decode(value).record["event_id"]
        for name in ANALYTICS_OUTPUTS
        for _, _, _, value in read_all(settings.kafka.bootstrap, settings.topic(name))
    ]


SPLIT = 400  # minutes: the between-checkpoints test's input arrives as [0, 400), then [400, 1440)


def test_worker_killed_between_checkpoints_publishes_each_event_once(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    total = len(expected_bars(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    stats = isolated.topic("analytics.stats")
    hourly = isolated.changed(processing__checkpoint_every_s=3600.0)  # commits only when stopped

    def uncommitted_events() -> int:
        return _uncommitted(isolated, stats)

    # A first worker, stopped by SIGTERM with events in its open transaction, commits them with a checkpoint.
    first = publish_minutes(isolated, 0, SPLIT)
    worker = start_worker(hourly)
    eventually(lambda: uncommitted_events() > 0, timeout=120, interval=0.02, what="events in the first transaction")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    assert uncommitted_events() == 0
    assert _analytics_lag(isolated) < first, "the stop committed the bars behind those events"

    # The rest of the bars arrive after that checkpoint, so the next worker has work left whenever it starts.
    rest = publish_minutes(isolated, SPLIT, CRASH_MINUTES)
    assert first + rest == total == message_count(isolated.kafka.bootstrap, isolated.topic("md.bars.1m"))
    checkpointed_lag = _analytics_lag(isolated)
    assert rest <= checkpointed_lag < total

    # A second one restores that checkpoint, publishes events in a transaction that no checkpoint commits, and dies.
    victim = start_worker(hourly)
    eventually(lambda: uncommitted_events() > 0, timeout=120, interval=0.02, what="events in an open transaction")
    kill(victim)
    assert _analytics_lag(isolated) == checkpointed_lag and uncommitted_events() > 0

    # A third one aborts that transaction, resumes from the same checkpoint, and finishes.
    start_worker()
    eventually(lambda: _analytics_lag(isolated) == 0, timeout=240, what="the restarted runner caught up")
    for log in ("worker-1.log", "worker-2.log"):
        assert f"{len(FACTORIES)} processor state(s) restored" in (tmp_path / log).read_text()
    ids = _event_ids(isolated)
    assert ids and len(ids) == len(set(ids)), "read_committed, every event appears once"

    # An uninterrupted run over the whole input at once (another app id, the same output topics) publishes exactly
    # the same events once more: however the input arrived and wherever the runs stopped, the events are the same.
    reference = isolated.model_copy(update={"app_id": isolated.app_id + "-reference"})
    start_worker(reference)
    eventually(lambda: _analytics_lag(reference) == 0, timeout=240, what="the reference runner caught up")
    assert Counter(_event_ids(isolated)) == {event_id: 2 for event_id in ids}


def test_a_second_worker_with_the_same_app_id_fences_the_first(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    first = start_worker()
    log = tmp_path / "worker-0.log"
    eventually(lambda: "resuming" in log.read_text(), timeout=120, what="the first runner started")
    second = start_worker()
    eventually(lambda: "resuming" in (tmp_path / "worker-1.log").read_text(), timeout=120, what="the second started")
    run_cli(*synthetic_args(symbols=100, minutes=60))  # the first runner's next commit meets the newer instance
    assert first.wait(timeout=120) == EXIT_FENCED  # never restarted: it would only fence the newer one back
    assert "analytics runner fenced: another instance with app id" in log.read_text().replace("\n", " ")
    assert second.poll() is None
    eventually(lambda: _analytics_lag(isolated) == 0, timeout=120, what="the second runner did the work")


def _bar_keys(settings: Settings) -> list[tuple[str, int]]:
    values = [value for _, _, _, value in read_all(settings.kafka.bootstrap, settings.topic("md.bars.1m"))]
    bars, _, failures = decode_bars(values)
    assert not failures
    return list(zip(bars.symbol.tolist(), bars.start_ns.tolist(), strict=True))


# --speed for a connector that must still be running when it is stopped: it publishes its first minute at once and
# the next one a million minutes (about two years) later, so "stopped before it finished" holds by construction.
STALLED = "0.000001"


def _connector(settings: Settings, *args: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidemark.cli", *args, "--speed", STALLED],
        env=settings.environment(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def test_connector_killed_and_rerun_with_the_same_seed_publishes_each_bar_once(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    args = synthetic_args(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES)
    expected = len(expected_bars(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    topic = isolated.topic("md.bars.1m")

    # What an earlier run killed mid-publish leaves: two hours landed, and of the next minute the bars of every
    # partition but one (its batch was still in flight).
    landed = publish_minutes(isolated, 0, 120)
    partitions = planned_partitions(topic_spec("md.bars.1m"), isolated)
    universe = build_universe(n_symbols=CRASH_SYMBOLS, seed=SEED, start=START, days=1)
    behind = partition_for_key(str(universe.symbols[0]).encode(), partitions)
    (minute,) = generate_bars(universe, start=START, minutes=121, seed=SEED, skip_minutes=120)
    lost = np.array([partition_for_key(s.encode(), partitions) == behind for s in minute.symbol.tolist()])
    publisher = BarPublisher(isolated.kafka.bootstrap, topic, source="synthetic")
    publisher.publish(minute.take(~lost))
    publisher.flush()
    landed += int((~lost).sum())

    # The connector resumes, fills that partition's gap at once, then waits for the next minute's turn, years away:
    # it is killed mid-stream with nothing in flight, and the topic holds exactly the first 121 minutes.
    connector = _connector(isolated, *args)
    filled = landed + int(lost.sum())
    eventually(lambda: message_count(isolated.kafka.bootstrap, topic) == filled, timeout=120, what="the gap filled")
    kill(connector)
    interrupted_at = message_count(isolated.kafka.bootstrap, topic)
    assert interrupted_at == filled < expected

    rerun = run_cli(*args)
    assert "resuming" in rerun.stderr
    keys = _bar_keys(isolated)
    assert len(keys) == expected
    assert len(set(keys)) == expected

    # Without resume the same seed republishes everything: the topic now holds each bar twice, the
    # projection stores each once and counts the rest as recognised duplicates.
    run_cli(*args, "--no-resume")
    assert message_count(isolated.kafka.bootstrap, topic) == 2 * expected
    start_worker()
    eventually(
        lambda: (
            fetch(
                isolated.postgres_dsn,
                "SELECT coalesce(sum(value), 0) AS n FROM projection_counters WHERE counter = 'duplicates_ignored'",
            )[0]["n"]
            == expected
        ),
        timeout=240,
    )
    assert count(isolated.postgres_dsn, "bars") == expected


SIGTERM_SYMBOLS = 1200
ALL_OPEN = datetime(2025, 3, 3, 14, 30, tzinfo=UTC)  # the NYSE open: every market trades, each symbol has a bar


def test_connector_stopped_by_sigterm_flushes_everything_it_reports(
    isolated: Settings, run_cli: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    topic = isolated.topic("md.bars.1m")
    universe = build_universe(n_symbols=SIGTERM_SYMBOLS, seed=SEED, start=ALL_OPEN, days=1)
    first_minute = len(next(generate_bars(universe, start=ALL_OPEN, minutes=1, seed=SEED)))
    assert first_minute > 1000
    args = ("--symbols", str(SIGTERM_SYMBOLS), "--seed", str(SEED), "--start", ALL_OPEN.isoformat(), "--days", "1")
    connector = _connector(isolated, "ingest", "synthetic", *args, stderr=subprocess.PIPE)
    # Its first minute published, the connector waits years for the second: the stop finds it mid-stream.
    eventually(lambda: message_count(isolated.kafka.bootstrap, topic) == first_minute, timeout=120)
    connector.send_signal(signal.SIGTERM)
    _, stderr = connector.communicate(timeout=60)
    assert connector.returncode == 130
    reported = re.search(r"interrupted after publishing ([\d,]+) bars", stderr.replace("\n", " "))
    assert reported, stderr
    assert int(reported.group(1).replace(",", "")) >= first_minute
    assert message_count(isolated.kafka.bootstrap, topic) == int(reported.group(1).replace(",", ""))


def test_rerun_after_a_run_that_never_reached_some_partitions_publishes_every_bar_once(
    isolated: Settings, run_cli: Callable[..., Any]
) -> None:
    """A run killed early, under load, may have landed bars in some partitions and none in others: the partitions
    without a tail need every bar from the first minute, whatever the others' tails say."""
    run_cli("topics", "create")
    topic = isolated.topic("md.bars.1m")
    partitions = planned_partitions(topic_spec("md.bars.1m"), isolated)
    universe = build_universe(n_symbols=CRASH_SYMBOLS, seed=SEED, start=START, days=1)
    empty = partition_for_key(str(universe.symbols[0]).encode(), partitions)
    publisher = BarPublisher(isolated.kafka.bootstrap, topic, source="synthetic")
    for bars in generate_bars(universe, start=START, minutes=120, seed=SEED):
        landed = np.array([partition_for_key(s.encode(), partitions) != empty for s in bars.symbol.tolist()])
        publisher.publish(bars.take(landed))
    publisher.flush()

    rerun = run_cli(*synthetic_args(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    assert "resuming" in rerun.stderr
    keys = _bar_keys(isolated)
    expected = len(expected_bars(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    assert len(set(keys)) == expected
    assert len(keys) == expected


def _projections_lag(settings: Settings) -> int:
    topics = [settings.topic(name) for name in SINK_TOPICS]
    return consumer_lag(settings.kafka.bootstrap, f"{settings.app_id}-projections", topics)


def _rewind_group(settings: Settings, group: str, topics: list[str]) -> None:
    """Commit offset 0 for every partition of ``topics`` in ``group`` (which has no members)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": group})
    try:
        metadata = consumer.list_topics(timeout=30).topics
        rewound = [TopicPartition(topic, p, 0) for topic in topics for p in metadata[topic].partitions]
        consumer.commit(offsets=rewound, asynchronous=False)
    finally:
        consumer.close()


def test_sink_killed_between_its_database_and_kafka_commits_shows_no_lag_once_restarted(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    """The projections' offsets live in PostgreSQL; Kafka's copy is bookkeeping committed after the rows. A kill
    between the two leaves Kafka behind, and with nothing new arriving the restarted sink must still say it has
    caught up, or everyone waiting for lag 0 (the demo, an operator) waits for ever."""
    run_cli("topics", "create")
    published = publish_minutes(isolated, 0, 30)
    worker = start_worker()
    eventually(lambda: worker_caught_up(isolated), timeout=180, what="the worker caught up")
    eventually(lambda: _projections_lag(isolated) == 0, timeout=60, what="the sink's Kafka commits")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    # The state the kill leaves: every row and its offset in PostgreSQL, none of the Kafka commits.
    topics = [isolated.topic(name) for name in SINK_TOPICS]
    _rewind_group(isolated, f"{isolated.app_id}-projections", topics)
    assert _projections_lag(isolated) >= published

    start_worker()
    eventually(lambda: _projections_lag(isolated) == 0, timeout=120, what="the restarted sink reporting lag 0")
    assert count(isolated.postgres_dsn, "bars") == published
    duplicates = fetch(isolated.postgres_dsn, "SELECT coalesce(sum(value), 0) AS n FROM projection_counters")[0]["n"]
    assert duplicates == 0, "the restarted sink resumes after the applied rows, so nothing is even redelivered"
