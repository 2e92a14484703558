"""Discovery on the real stack: daily bars replayed and projected, tasks queued from the command line, workers in
one consumer group, candidates projected once, and a worker killed with kill -9 mid-task."""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import redis
from confluent_kafka import Producer

from core.events import common_fields
from core.settings import Settings
from core.units import NS_PER_DAY
from schemas.catalogue import task_partition, task_partitions
from schemas.codec import get_registry
from streams.discovery.task import Budget
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import count, fetch
from tests.services import eventually
from tidemark.discovery import (
    SIGNAL_SCHEMA,
    TaskPublisher,
    TaskRequest,
    optuna_url,
    progress_channel,
    request_from_signal,
    signals_unplanned,
    task_event,
)

pytestmark = pytest.mark.integration

SESSIONS = 1260  # five years of daily bars


def write_history(path: Path) -> Path:
    """Wide CSV of daily closes: TREND drifts (t = 12 over the history), NOISE and OTHER are random walks."""
    rng = np.random.default_rng(11)
    days = pd.bdate_range("2019-01-02", periods=SESSIONS)
    returns = rng.normal(0, 0.01, (SESSIONS, 3))
    returns[:, 0] += 12 * 0.01 / np.sqrt(SESSIONS)
    closes = 100 * np.exp(np.cumsum(returns, axis=0))
    frame = pd.DataFrame(closes, columns=["TREND", "NOISE", "OTHER"])
    frame.insert(0, "date", days.strftime("%Y-%m-%d"))
    frame.to_csv(path, index=False)
    return path


DISCOVERY_WORKER = ("discover", "worker")


def progress(settings: Settings) -> list[dict[str, Any]]:
    registry = get_registry()
    return [
        registry.decode(v).record
        for _, _, _, v in read_all(settings.kafka.bootstrap, settings.topic("discovery.progress"))
    ]


def history_projected(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    csv = write_history(tmp_path / "daily.csv")
    run_cli("ingest", "replay", str(csv), "--interval", "1d", "--layout", "wide", "--asset-class", "EQUITY")
    start_worker()
    eventually(
        lambda: count(isolated.postgres_dsn, "bars") == 3 * SESSIONS, timeout=180, what="the daily bars projected"
    )


def test_tasks_queued_from_the_cli_become_ranked_candidates_and_bad_tasks_fail_with_a_reason(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    history_projected(isolated, run_cli, start_worker, tmp_path)
    dashboard = redis.Redis.from_url(isolated.redis_url).pubsub()
    dashboard.subscribe(progress_channel(isolated))
    worker = start_worker(command=DISCOVERY_WORKER)
    universe = tmp_path / "universe.txt"
    universe.write_text("TREND\nNOISE\nNOPE  # not a symbol Tidemark has\n")
    done = run_cli("discover", "--family", "momentum", "--universe", str(universe), "--interval", "1d", check=False)
    assert done.returncode == 0, done.stderr
    assert "failed" in done.stderr and "no 1d bars of NOPE in the projection" in done.stderr
    eventually(lambda: count(isolated.postgres_dsn, "strategy_candidates") == 2, timeout=120, what="two candidates")
    rows = fetch(isolated.postgres_dsn, "SELECT * FROM strategy_candidates ORDER BY passed DESC, score DESC")
    assert [r["symbols"] for r in rows] == [["TREND"], ["NOISE"]]
    trend, noise = rows
    assert trend["passed"] and trend["rejections"] == []
    assert trend["deflated_sharpe"] >= 0.95 and trend["pbo"] < 0.2 and trend["sharpe_out_of_sample"] >= 1.0
    assert trend["trials"] == 2 * sum(Budget().trials(level) for level in range(1, 6))
    assert not noise["passed"] and noise["rejections"]
    listed = run_cli("query", "strategies", "--json")
    assert '"strategy_id"' in listed.stdout and trend["strategy_id"] in listed.stdout
    shown = run_cli("strategy", "show", trend["strategy_id"], "--plot", str(tmp_path / "s.png"))
    assert "complexity curve" in shown.stdout and (tmp_path / "s.png").stat().st_size > 10_000
    stages = {(e["symbols"][0], e["stage"]) for e in progress(isolated)}
    assert {("TREND", "FINISHED"), ("NOISE", "FINISHED"), ("NOPE", "FAILED")} <= stages
    assert worker.poll() is None  # the bad task did not end the worker
    heard = [
        json.loads(m["data"]) for m in iter(lambda: dashboard.get_message(timeout=1.0), None) if m["type"] == "message"
    ]
    assert {(e["symbols"][0], e["stage"]) for e in heard} == stages
    status = run_cli("discover", "status")
    assert "queue: 0 task(s)" in status.stdout


def test_a_worker_killed_mid_task_loses_nothing_and_the_task_yields_one_candidate(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    history_projected(isolated, run_cli, start_worker, tmp_path)
    paused = start_worker(isolated.changed(discovery__pause_after_trials=36), DISCOVERY_WORKER)
    run_cli("discover", "--family", "reversion", "--symbols", "OTHER", "--interval", "1d", "--no-wait")
    # The moment of the kill is controlled: the worker stops making progress after its 36th trial (the first
    # variant's 16 and 16 of the second's 24 saved, 4 not) and says so.
    eventually(
        lambda: any(e["stage"] == "PROGRESSED" and e["trials_done"] == 36 for e in progress(isolated)),
        timeout=120,
        what="the first worker paused after 36 trials",
    )
    os.kill(paused.pid, signal.SIGKILL)
    paused.wait(timeout=30)
    successor = start_worker(command=DISCOVERY_WORKER)
    eventually(lambda: count(isolated.postgres_dsn, "strategy_candidates") == 1, timeout=180, what="the candidate")
    log = (tmp_path / "worker-2.log").read_text()  # worker-0 is the analytics worker, worker-1 the paused one
    assert "resumed with 16 saved trial(s) of 16" in log and "resumed with 16 saved trial(s) of 24" in log
    task_id = fetch(isolated.postgres_dsn, "SELECT task_id FROM strategy_candidates")[0]["task_id"]
    storage = optuna.storages.RDBStorage(optuna_url(isolated.postgres_dsn))
    trials = sum(
        len(
            optuna.load_study(study_name=s.study_name, storage=storage).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,)
            )
        )
        for s in optuna.get_all_study_summaries(storage)
        if s.study_name.startswith(task_id)
    )
    assert trials == 2 * sum(Budget().trials(level) for level in range(1, 6))  # every trial once: none lost or repeated
    candidates = [
        get_registry().decode(v).record["event_id"]
        for _, _, _, v in read_all(isolated.kafka.bootstrap, isolated.topic("strategies.candidates"))
    ]
    assert len(set(candidates)) == 1
    assert successor.poll() is None


def one_task_per_equity_partition() -> list[dict[str, Any]]:
    """A task on every equity partition of discovery.tasks: families, legs and history bounds varied until each
    partition has one (the partition follows from the task id)."""
    tasks: dict[int, dict[str, Any]] = {}
    for skipped_days, symbol, name in itertools.product(
        range(100), ("TREND", "NOISE", "OTHER"), ("momentum", "reversion")
    ):
        start_ns = int(pd.Timestamp("2019-01-02", tz="UTC").value) + skipped_days * NS_PER_DAY
        task = task_event(TaskRequest(name, (symbol,), "EQUITY", "1d", start_ns), "test", 0)
        tasks.setdefault(task_partition("EQUITY", task["event_id"]), task)
    assert sorted(tasks) == list(task_partitions("EQUITY"))
    return list(tasks.values())


def test_ten_workers_run_ten_equity_tasks_at_once_and_a_worker_joining_mid_task_gets_its_share(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    history_projected(isolated, run_cli, start_worker, tmp_path)
    # Every worker holds still after its task's first trial, so the moment counted is one the test controls: ten
    # tasks begun and none finished.
    drill = isolated.changed(discovery__pause_after_trials=1)
    first = start_worker(drill, DISCOVERY_WORKER)
    TaskPublisher(isolated).publish(one_task_per_equity_partition())  # 12 tasks

    def paused() -> dict[str, str]:
        """Each worker's task, if its latest event says it is paused in one."""
        latest: dict[str, dict[str, Any]] = {}
        for event in sorted(progress(isolated), key=lambda e: e["ts_event"]):
            latest[event["worker"]] = event
        return {w: e["task_id"] for w, e in latest.items() if e["stage"] == "PROGRESSED" and e["trials_done"] >= 1}

    eventually(lambda: len(paused()) == 1, timeout=120, interval=1, what="the first worker paused in a task")
    # The first worker holds every partition and is mid-task; nine more join the group now.
    others = [start_worker(drill, DISCOVERY_WORKER) for _ in range(9)]
    running = eventually(
        lambda: len(set((found := paused()).values())) == 10 and found, timeout=300, interval=2, what="10 tasks"
    )
    assert len(running) == 10  # ten workers, each paused in a task of its own
    assert not any(e["stage"] == "FINISHED" for e in progress(isolated))
    assert all(worker.poll() is None for worker in [first, *others])


def pattern_signal(event_id: str, pattern: str, symbol: str) -> dict[str, Any]:
    """A daily pattern signal of the scan's shape."""
    return {
        **common_fields("test-scan", int(pd.Timestamp("2026-12-04T21:00Z").value), "", event_id),
        "pattern_family": pattern,
        "direction": "LONG",
        "symbols": [symbol],
        "timeframe": "1d",
        "window_bars": 250,
        "as_of_ns": int(pd.Timestamp("2026-12-04T21:00Z").value),
        "test": "newey_west_t",
        "statistic": 4.0,
        "p_value": 1e-5,
        "adjusted_p_value": 1e-3,
        "correction": "BENJAMINI_HOCHBERG",
        "tests_in_family": 40,
        "significance": 0.05,
        "sharpe": 1.5,
        "psr": 0.99,
        "half_life": None,
        "hurst": None,
        "sharpe_se": 0.4,
        "deflated_sharpe": 0.9,
        "params": {},
    }


def test_the_planner_turns_signals_into_one_task_each_holds_back_at_a_full_queue_and_dead_letters_bad_ones(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    history_projected(isolated, run_cli, start_worker, tmp_path)
    trend = pattern_signal("00000000-0000-4000-8000-000000000001", "MOMENTUM", "TREND")
    again = pattern_signal("00000000-0000-4000-8000-000000000002", "MOMENTUM", "TREND")  # the next scan, same day
    noise = pattern_signal("00000000-0000-4000-8000-000000000003", "MEAN_REVERSION", "NOISE")
    registry = get_registry()
    producer = Producer({"bootstrap.servers": isolated.kafka.bootstrap})
    for value in [registry.encode(SIGNAL_SCHEMA, trend), registry.encode(SIGNAL_SCHEMA, again), b"not avro"]:
        producer.produce(isolated.topic("signals.patterns"), value, b"TREND", partition=0)
    producer.produce(isolated.topic("signals.patterns"), registry.encode(SIGNAL_SCHEMA, noise), b"NOISE", partition=0)
    assert producer.flush(30) == 0
    planner = start_worker(isolated.changed(discovery__max_queue=1), ("discover", "planner"))

    def tasks() -> list[dict[str, Any]]:
        return [
            registry.decode(v).record
            for _, _, _, v in read_all(isolated.kafka.bootstrap, isolated.topic("discovery.tasks"))
        ]

    planner_log = tmp_path / "worker-1.log"
    eventually(lambda: "discovery queue full" in planner_log.read_text(), timeout=60, what="the planner held back")
    first = tasks()  # no worker yet: the queue stays full, so this is all the planner can have sent
    expected = task_event(request_from_signal(trend, "EQUITY"), "discovery-planner", trend["ts_event"])
    assert [t["event_id"] for t in first] == [expected["event_id"]]
    assert first[0]["causation_id"] == trend["event_id"] and first[0]["family"] == "momentum"
    dead = [registry.decode(v).record for _, _, _, v in read_all(isolated.kafka.bootstrap, isolated.topic("dlq"))]
    # The projection sink reads the topic too, and dead-letters the same record on its own account.
    planners = [(d["offset"], d["error_type"]) for d in dead if d["processor"] == "discovery-planner"]
    assert planners == [(2, "DecodeError")]

    # SIGTERM while held back: the planner stops at once, and the signal it could not plan stays uncommitted.
    planner.send_signal(signal.SIGTERM)
    assert planner.wait(timeout=30) == 0
    assert signals_unplanned(isolated)

    successor = start_worker(isolated.changed(discovery__max_queue=1), ("discover", "planner"))
    start_worker(command=DISCOVERY_WORKER)  # drains the queue: the planner sends the held-back task

    def distinct_tasks() -> set[tuple[str, str, tuple[str, ...]]]:
        return {(t["event_id"], t["family"], tuple(t["symbols"])) for t in tasks()}

    planned = eventually(lambda: len(found := distinct_tasks()) == 2 and found, timeout=180, interval=1, what="tasks")
    # The successor plans the TREND signal again, under the same task id: a worker redoes it, resuming its studies.
    assert {(family, symbols) for _, family, symbols in planned} == {
        ("momentum", ("TREND",)),
        ("reversion", ("NOISE",)),
    }
    eventually(lambda: not signals_unplanned(isolated), timeout=60, what="every signal committed")
    assert successor.poll() is None
