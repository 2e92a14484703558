"""Discovery on the real stack: daily bars replayed and projected, tasks queued from the command line, workers in
one consumer group, candidates projected once, and a worker killed with kill -9 mid-task."""

from __future__ import annotations

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

from core.settings import Settings
from schemas.codec import get_registry
from streams.discovery.task import Budget
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import count, fetch
from tests.services import eventually
from tidemark.discovery import optuna_url, progress_channel

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
