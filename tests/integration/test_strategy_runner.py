"""The strategy runner on the real broker: a strategy validated on 300 sessions paper-trades the sessions after them
with the backtest's positions and net returns, is promoted by the lifecycle agent after its paper period, retired
when its trailing record falls below the rule, and a runner killed with kill -9 while it waits for an answer
publishes nothing twice and loses nothing when it restarts."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.synthetic.daily import daily_market
from core.costs import BP
from core.events import common_fields, deterministic_event_id
from core.settings import Settings
from schemas.codec import get_registry
from streams.discovery.backtest import net_returns
from streams.lifecycle.machine import AUTOMATIC_RETIREMENT
from streams.strategies import MOMENTUM, Bars
from tests.integration.kafka_tools import read_all
from tests.integration.test_lifecycle_agent import AGENTS, CANDIDATE, candidate, lifecycle, publish, states
from tests.integration.test_pipeline import fetch
from tests.services import eventually

pytestmark = pytest.mark.integration

RUNNER = ("strategy", "run", "--loglevel", "info")
HISTORY, SESSIONS = 300, 360
PARAMS = {"lookback": 20.0, "entry": 0.5}
"""As the candidate carries them: decimal strings."""
COST_BP = 2.15
SID = "momentum-DTREND-1d-test"


def daily_bars(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    frame, _ = daily_market(seed=3, sessions=SESSIONS)
    csv = tmp_path / "daily.csv"
    frame[["date", "DTREND"]].to_csv(csv, index=False)
    run_cli("ingest", "replay", str(csv), "--interval", "1d", "--layout", "wide", "--asset-class", "EQUITY")


def published(settings: Settings, topic: str) -> list[dict[str, Any]]:
    registry = get_registry()
    return [registry.decode(v).record for _, _, _, v in read_all(settings.kafka.bootstrap, settings.topic(topic))]


def the_candidate(settings: Settings) -> dict[str, Any]:
    """Validated on the first HISTORY sessions; the rest are the runner's live bars."""
    starts = sorted(bar["start_ns"] for bar in published(settings, "md.bars.1d"))
    assert len(starts) == SESSIONS
    return {
        **candidate(1),
        **common_fields("test", starts[HISTORY - 1], "", deterministic_event_id("candidate", SID)),
        "strategy_id": SID,
        "family": "momentum",
        "symbols": ["DTREND"],
        "timeframe": "1d",
        "params": {name: f"{value:.6g}" for name, value in PARAMS.items()},
        "complexity": 1,
        "asset_class": "EQUITY",
        "cost_bp": COST_BP,
        "data_start_ns": starts[0],
        "data_end_ns": starts[HISTORY - 1],
        "sharpe_out_of_sample": 2.0,
        "sharpe_out_of_sample_se": 0.9,
    }


def backtest(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The backtest's kernel over every bar on the topic: positions and net returns per session."""
    bars = sorted((b["start_ns"], b["close"]) for b in published(settings, "md.bars.1d"))
    closes = np.array([[close] for _, close in bars])
    positions = MOMENTUM.positions(Bars(closes, np.zeros(len(bars), dtype=np.bool_), 252.0), PARAMS)
    returns, _ = net_returns(positions, closes, COST_BP * BP)
    return positions[:, 0], returns


def runner_commands(settings: Settings) -> list[dict[str, Any]]:
    return [c for c in published(settings, "strategies.commands") if c["source"] == "strategy-runner"]


def test_paper_sessions_match_the_backtest_then_the_record_promotes_and_retires_the_strategy(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    settings = isolated.changed(lifecycle__retire_window_sessions=10, lifecycle__retire_below_sharpe=50.0)
    run_cli("topics", "create")
    daily_bars(run_cli, tmp_path)
    start_worker(settings, AGENTS)
    start_worker(settings, RUNNER)
    publish(isolated, "strategies.candidates", [(CANDIDATE, the_candidate(isolated))])

    eventually(lambda: states(lifecycle(isolated)).get(SID) == ("RETIRED", 5), timeout=180, interval=1, what="retired")
    # 20 paper sessions, the promotion, 10 live sessions, the retirement: nothing after it.
    records = eventually(
        lambda: r if len(r := published(isolated, "strategies.performance")) == 30 else None,
        timeout=60,
        what="30 sessions",
    )
    positions, returns = backtest(isolated)
    live = slice(HISTORY, HISTORY + 30)
    np.testing.assert_allclose([r["period_return"] for r in records], returns[live], rtol=0, atol=1e-15)
    np.testing.assert_array_equal([r["positions"]["DTREND"] for r in records], positions[live])
    assert any(p != 0 for p in positions[live])  # the parity is of a book that trades
    assert [(r["state"], r["sessions"]) for r in records] == [("PAPER", n) for n in range(1, 21)] + [
        ("LIVE", n) for n in range(1, 11)
    ]
    assert len({r["event_id"] for r in records}) == 30
    assert float(records[-1]["pnl"]) == pytest.approx(100_000 * returns[HISTORY + 29], abs=0.01)

    promote, retire = runner_commands(isolated)
    assert (promote["target_state"], promote["evidence"]["paper_sessions"]) == ("LIVE", "20")
    assert float(promote["evidence"]["tracking_error"]) < 1e-12  # the book is the backtest on the same bars
    assert promote["causation_id"] == records[19]["event_id"]
    assert (retire["target_state"], retire["evidence"]["trailing_sessions"]) == ("RETIRED", "10")
    # The sink projects the record (a hypertable where TimescaleDB is installed) and the command line reads it.
    start_worker()
    rows = eventually(
        lambda: r if len(r := fetch(isolated.postgres_dsn, "SELECT * FROM strategy_performance")) == 30 else None,
        timeout=120,
        what="the sessions projected",
    )
    assert sorted(row["period_return"] for row in rows) == sorted(returns[live])
    shown = json.loads(run_cli("lifecycle", "performance", SID, "--limit", "5", "--json").stdout)
    assert [(s["state"], s["sessions"]) for s in shown] == [("LIVE", n) for n in range(6, 11)]
    assert shown[-1]["positions"] == {"DTREND": positions[HISTORY + 29]}
    transitions = {e["causation_id"]: e for kind, e in lifecycle(isolated) if kind == "StrategyTransitioned"}
    assert transitions[promote["event_id"]]["to_state"] == "LIVE"
    assert json.loads(transitions[retire["event_id"]]["evidence"]["rule"])["name"] == AUTOMATIC_RETIREMENT


def test_a_runner_killed_while_it_waits_for_an_answer_restarts_without_a_duplicate_or_a_loss(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """The agent answers the candidate's three commands and then no more, so the runner stops at a known point:
    20 paper sessions published and the promotion asked. It is killed there; its successor and a fresh agent
    finish."""
    settings = isolated.changed(lifecycle__retire_window_sessions=10, lifecycle__retire_below_sharpe=50.0)
    run_cli("topics", "create")
    daily_bars(run_cli, tmp_path)
    agent = start_worker(settings.changed(lifecycle__pause_after_commands=3), AGENTS)
    runner = start_worker(settings, RUNNER)
    publish(isolated, "strategies.candidates", [(CANDIDATE, the_candidate(isolated))])
    eventually(
        lambda: len(published(isolated, "strategies.performance")) == 20 and len(runner_commands(isolated)) == 1,
        timeout=180,
        interval=1,
        what="the paper period published and the promotion asked",
    )
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=30)
    start_worker(settings, RUNNER)
    eventually(
        lambda: "asked for LIVE before a restart; waiting for the answer" in (tmp_path / "worker-2.log").read_text(),
        timeout=120,
        interval=1,
        what="the successor caught up to the unanswered promotion",
    )
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(timeout=30)
    start_worker(settings, AGENTS)

    eventually(lambda: states(lifecycle(isolated)).get(SID) == ("RETIRED", 5), timeout=180, interval=1, what="retired")
    records = eventually(
        lambda: r if len(r := published(isolated, "strategies.performance")) >= 30 else None,
        timeout=60,
        what="30 sessions",
    )
    assert len(records) == 30 and len({r["event_id"] for r in records}) == 30
    assert [r["period_start_ns"] for r in records] == sorted({r["period_start_ns"] for r in records})
    assert [c["target_state"] for c in runner_commands(isolated)] == ["LIVE", "RETIRED"]
