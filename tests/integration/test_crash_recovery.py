"""Kill -9 at any point: a restarted worker's projections equal an uninterrupted run's, and its output topics
(read_committed) hold each event once; a restarted connector publishes nothing twice; duplicates that do reach the
topic are ignored downstream and counted."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from connectors.publisher import BarPublisher, partition_for_key
from connectors.synthetic.market import build_universe, generate_bars
from schemas.catalogue import topic_spec
from schemas.codec import get_registry
from schemas.fastbars import decode_bars
from streams.registry import FACTORIES
from tests.conftest import REPO
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import SEED, START, count, expected_bars, fetch, synthetic_args
from tests.services import eventually
from tidemark.settings import Settings
from tidemark.topics import consumer_lag, message_count, planned_partitions

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


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_worker_killed_mid_stream_recovers_to_the_uninterrupted_projections(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    new_database: Callable[[], str],
) -> None:
    run_cli("topics", "create")
    run_cli(*synthetic_args(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    total = message_count(isolated.kafka_bootstrap, isolated.topic("md.bars.1m"))
    assert total == len(expected_bars(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))

    dsn = isolated.postgres_dsn
    # Minute windows (60, 390): every 15 minutes from 00:15 to 23:45 of the day (FX trades throughout); daily
    # windows (5, 21): after the NYSE close (21:00 UTC) and the CME and FX closes (22:00 UTC).
    snapshots = 95 * 2 + 2 * 2
    # First kill: while the bars projection is part-way through the topic; the analytics runner (which outpaces it)
    # has committed nothing yet, its first checkpoint being an hour away.
    victim = start_worker(isolated.model_copy(update={"checkpoint_every_s": 3600.0}))
    eventually(lambda: count(dsn, "bars") > 0, timeout=120, interval=0.02, what="the bars projection got going")
    kill(victim)
    assert count(dsn, "bars") < total, "the first kill came too late to interrupt the bars projection"
    assert _analytics_lag(isolated) == total
    # Second kill: once the analytics runner has committed a first checkpoint, before it has read every bar.
    victim = start_worker()
    eventually(lambda: _analytics_lag(isolated) < total, timeout=120, interval=0.02, what="a first checkpoint")
    kill(victim)
    assert _analytics_lag(isolated) > 0, "the second kill came too late to interrupt the runner"

    start_worker()
    eventually(lambda: count(dsn, "bars") == total, timeout=240, what="restarted worker finished the bars")
    eventually(lambda: count(dsn, "correlation_snapshots") == snapshots, timeout=120, what="all snapshots")

    reference = isolated.model_copy(update={"app_id": isolated.app_id + "-reference", "postgres_dsn": new_database()})
    start_worker(reference)
    eventually(lambda: count(reference.postgres_dsn, "bars") == total, timeout=240, what="reference bars")
    eventually(lambda: count(reference.postgres_dsn, "correlation_snapshots") == snapshots, timeout=120)
    eventually(lambda: count(reference.postgres_dsn, "symbol_stats") == count(dsn, "symbol_stats"), timeout=60)

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
    assert message_count(isolated.kafka_bootstrap, isolated.topic("dlq")) == 0


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
    return consumer_lag(settings.kafka_bootstrap, settings.app_id, [settings.topic("md.bars.1m")])


def _uncommitted(settings: Settings, topic: str) -> int:
    """Events only a read_uncommitted reader sees: those of open (or aborted) transactions."""
    committed = len(read_all(settings.kafka_bootstrap, topic))
    return len(read_all(settings.kafka_bootstrap, topic, committed=False)) - committed


def _event_ids(settings: Settings) -> list[str]:
    registry = get_registry()
    return [
        registry.decode(value).record["event_id"]
        for name in ANALYTICS_OUTPUTS
        for _, _, _, value in read_all(settings.kafka_bootstrap, settings.topic(name))
    ]


def test_worker_killed_between_checkpoints_publishes_each_event_once(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    run_cli(*synthetic_args(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    total = message_count(isolated.kafka_bootstrap, isolated.topic("md.bars.1m"))
    stats = isolated.topic("analytics.stats")

    def uncommitted_events() -> int:
        return _uncommitted(isolated, stats)

    # A first worker stopped by SIGTERM part-way commits what it had: a checkpoint, nothing left open.
    worker = start_worker()
    eventually(lambda: _analytics_lag(isolated) < total, timeout=120, interval=0.02, what="a first checkpoint")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    checkpointed_lag = _analytics_lag(isolated)
    assert 0 < checkpointed_lag < total, "the stop came too late to leave bars for the next worker"
    assert uncommitted_events() == 0

    # A second one restores that checkpoint, publishes events in a transaction that no checkpoint commits, and dies.
    between = isolated.model_copy(update={"checkpoint_every_s": 3600.0})
    victim = start_worker(between)
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

    # An uninterrupted run (another app id, the same output topics) publishes exactly the same events once more.
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
    assert first.wait(timeout=120) == 1
    assert "analytics runner fenced: another instance with app id" in log.read_text().replace("\n", " ")
    assert second.poll() is None
    eventually(lambda: _analytics_lag(isolated) == 0, timeout=120, what="the second runner did the work")


def _bar_keys(settings: Settings) -> list[tuple[str, int]]:
    values = [value for _, _, _, value in read_all(settings.kafka_bootstrap, settings.topic("md.bars.1m"))]
    bars, _, failures = decode_bars(values)
    assert not failures
    return list(zip(bars.symbol.tolist(), bars.start_ns.tolist(), strict=True))


def test_connector_killed_and_rerun_with_the_same_seed_publishes_each_bar_once(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    args = synthetic_args(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES)
    expected = len(expected_bars(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES))
    topic = isolated.topic("md.bars.1m")
    connector = subprocess.Popen(
        [sys.executable, "-m", "tidemark.cli", *args, "--speed", "20000"],
        env=isolated.environment(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    eventually(lambda: message_count(isolated.kafka_bootstrap, topic) > 1000, timeout=60, interval=0.05)
    kill(connector)
    interrupted_at = message_count(isolated.kafka_bootstrap, topic)
    assert interrupted_at < expected

    rerun = run_cli(*args)
    assert "resuming" in rerun.stderr
    keys = _bar_keys(isolated)
    assert len(keys) == expected
    assert len(set(keys)) == expected

    # Without resume the same seed republishes everything: the topic now holds each bar twice, the
    # projection stores each once and counts the rest as recognised duplicates.
    run_cli(*args, "--no-resume")
    assert message_count(isolated.kafka_bootstrap, topic) == 2 * expected
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


def test_connector_stopped_by_sigterm_flushes_everything_it_reports(
    isolated: Settings, run_cli: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    topic = isolated.topic("md.bars.1m")
    connector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidemark.cli",
            *synthetic_args(symbols=CRASH_SYMBOLS, minutes=CRASH_MINUTES),
            "--speed",
            "20000",
        ],
        env=isolated.environment(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    eventually(lambda: message_count(isolated.kafka_bootstrap, topic) > 1000, timeout=60, interval=0.05)
    connector.send_signal(signal.SIGTERM)
    _, stderr = connector.communicate(timeout=60)
    assert connector.returncode == 130
    reported = re.search(r"interrupted after publishing ([\d,]+) bars", stderr.replace("\n", " "))
    assert reported, stderr
    assert message_count(isolated.kafka_bootstrap, topic) == int(reported.group(1).replace(",", ""))


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
    publisher = BarPublisher(isolated.kafka_bootstrap, topic, source="synthetic")
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
