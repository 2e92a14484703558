"""The determinism DESIGN.md §4 promises, shown: a live run, then ``tidemark.rerun`` re-runs its processors from the
copied inputs into a prefix of its own and finds every event id and payload again: the analytics runner on synthetic
bars, the lifecycle agent with the strategy runner on a strategy's paper and live record, and the portfolio and risk
agents from their live input logs (the forwarders' merge of their inputs in arrival order, and the portfolio's
timed refreshes)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, ConfigResource
from rich.console import Console

from core.events import common_fields, deterministic_event_id
from core.kafka import consumer_lag
from core.settings import Settings
from streams.portfolio.agent import inputs_topic_name as portfolio_inputs
from streams.risk.agent import inputs_topic_name as risk_inputs
from tests.conftest import REPO
from tests.integration.kafka_tools import read_all
from tests.integration.test_execution import PRICES, START, produce
from tests.integration.test_lifecycle_agent import AGENTS, CANDIDATE, lifecycle, publish, states
from tests.integration.test_pipeline import synthetic_args
from tests.integration.test_portfolio_agent import TRANSITIONED, events, moved, publish_book, sid, with_weights
from tests.integration.test_portfolio_agent import publish as publish_transitions
from tests.integration.test_risk import DAY, HISTORY
from tests.integration.test_risk import daily_bars as risk_bars
from tests.integration.test_strategy_runner import RUNNER, SID, daily_bars, published, the_candidate
from tests.services import eventually
from tidemark.rerun import RerunReport, catalogue, print_report, rerun_processors

pytestmark = pytest.mark.integration


def topics_named(settings: Settings, prefix: str) -> list[str]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "tidemark-tests-topics"})
    try:
        return [name for name in consumer.list_topics(timeout=30).topics if name.startswith(prefix)]
    finally:
        consumer.close()


def live_analytics(settings: Settings, log: Path) -> None:
    """The live run: the analytics runner as the worker runs it, until it has committed every bar."""
    with open(log, "wb") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "streams.runner"], env=settings.environment(), stdout=out, stderr=out, cwd=REPO
        )
        try:
            eventually(
                lambda: (
                    runner.poll() is None
                    and consumer_lag(settings.kafka.bootstrap, settings.app_id, [settings.topic("md.bars.1m")]) == 0
                ),
                timeout=180,
                interval=0.5,
                what="the live analytics runner committed every bar",
            )
        finally:
            runner.terminate()
            runner.wait(timeout=60)


def rerun(settings: Settings, processors: list[str], log_dir: Path) -> tuple[RerunReport, str]:
    """The re-run and its printed report (shown with -s, with the steps it was told)."""
    said: list[str] = []
    report = rerun_processors(settings, processors, None, 240, said.append, log_dir=log_dir)
    shown = io.StringIO()
    print_report(report, Console(file=shown, width=200), as_json=False)
    print("\n".join(said), shown.getvalue(), sep="\n")
    return report, shown.getvalue()


def test_the_analytics_rerun_publishes_the_same_events(
    isolated: Settings, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    run_cli(*synthetic_args(minutes=960))
    live_analytics(isolated, tmp_path / "live-runner.log")

    report, shown = rerun(isolated, ["analytics"], tmp_path)

    assert report.finished, shown
    assert report.prefix.startswith("rerun-") and report.prefix.endswith(isolated.topic_prefix)
    assert [(c.topic, c.left_out) for c in report.copied] == [("md.bars.1m", 0)] and report.copied[0].copied > 0
    (analytics,) = report.processors
    topics = {t.topic: t for t in analytics.topics}
    for name in catalogue()["analytics"].outputs:
        assert topics[name].live > 0, f"the live run should have published {name}"
    assert report.ok, shown
    assert all(t.identical == t.live == t.rerun for t in analytics.topics)
    assert "identical: every event id and payload" in shown
    assert [run.returncode for run in report.runs] == [0]  # SIGTERM: committed what it held, exited cleanly
    assert topics_named(isolated, report.prefix) == []  # the re-run cleans up after itself


def test_the_lifecycle_rerun_publishes_the_same_events(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """The lifecycle agent and the strategy runner, which answer each other: a strategy validated on 300 sessions is
    paper-traded, promoted, and retired by its record (the strategy runner's test); re-run from the candidate and
    the daily bars, they publish the same commands, transitions, alerts and sessions."""
    settings = isolated.changed(lifecycle__retire_window_sessions=10, lifecycle__retire_below_sharpe=50.0)
    run_cli("topics", "create")
    daily_bars(run_cli, tmp_path)
    live = [start_worker(settings, AGENTS), start_worker(settings, RUNNER)]
    publish(isolated, "strategies.candidates", [(CANDIDATE, the_candidate(isolated))])
    eventually(lambda: states(lifecycle(isolated)).get(SID) == ("RETIRED", 5), timeout=180, interval=1, what="retired")
    eventually(lambda: len(published(isolated, "strategies.performance")) == 30, timeout=60, what="30 sessions")
    for process in live:
        process.terminate()
        process.wait(timeout=60)

    report, shown = rerun(settings, ["lifecycle"], tmp_path)

    assert report.finished, shown
    copied = {c.topic: (c.copied, c.left_out) for c in report.copied}
    assert copied["strategies.candidates"] == (1, 0) and copied["md.bars.1d"] == (360, 0)
    assert copied["strategies.commands"] == (0, 5)  # 3 for the candidate, the promotion and the retirement
    (result,) = report.processors
    counts = {t.topic: t.live for t in result.topics}
    assert counts == {"strategies.commands": 5, "strategies.lifecycle": 5, "alerts": 5, "strategies.performance": 30}
    assert report.ok, shown
    assert sorted(run.name for run in report.runs) == ["agents", "strategy-runner"]
    assert topics_named(isolated, report.prefix) == []


HOLDINGS = ((0, "AAA", "400"), (0, "BBB", "500"), (1, "BBB", "800"))
"""Strategy, symbol, quantity: S0 ends at 65% of the equity gross (its limit 60%: demoted), BBB at 65% (the account's
symbol limit 60%: halted)."""


def position(number: int, strategy: int, symbol: str, qty: str) -> dict[str, Any]:
    price = str(PRICES[symbol])
    return {
        **common_fields("test", START + HISTORY * DAY + number, "", deterministic_event_id("position", number)),
        "account_id": "paper",
        "strategy_id": sid(strategy),
        "symbol": symbol,
        "qty": qty,
        "qty_change": qty,
        "price": price,
        "cash_change": "0",
        "avg_price": price,
        "realized_pnl": "0",
        "cause": "fill",
        "client_order_id": f"coid-{number}",
        "order_id": f"order-{number}",
    }


def from_risk(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return [e for e in events(settings, topic) if e["source"] == "risk-monitor"]


def in_paper(settings: Settings) -> set[str]:
    """The strategies the lifecycle agent put in Paper (the candidates' own path, besides the tests' transitions)."""
    return {e["strategy_id"] for k, e in lifecycle(settings) if e["source"] != "test" and e["to_state"] == "PAPER"}


def refreshed(settings: Settings) -> list[dict[str, Any]]:
    """The strategies' correlation snapshots the portfolio's refreshes published."""
    return [e for e in events(settings, "analytics.correlations") if e["source"] == "portfolio-agent"]


def test_the_portfolio_and_risk_reruns_publish_the_same_events_from_their_input_logs(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """The live agents (with the lifecycle agent, which takes the candidates to Paper, and the execution desk, which
    answers the halt) take their inputs in stages: six live strategies' books, S0 live again, then positions that
    breach its limits and the account's, then closes and minute bars, with the portfolio's timer refreshing every 2 s
    throughout. Re-run from their input logs, without forwarders or
    timer, the portfolio and risk agents publish every event again, the refreshes' snapshots too."""
    settings = isolated.changed(portfolio__refresh_every_s=2.0, portfolio__market_hours_only=False)
    run_cli("topics", "create")
    publish_book(isolated, live=6)
    risk_bars(isolated, 0, HISTORY - 1)
    agents = start_worker(settings, AGENTS)
    eventually(lambda: with_weights(isolated, 6), timeout=120, interval=1, what="targets over six strategies")
    eventually(lambda: in_paper(isolated) == {sid(n) for n in range(6)}, timeout=60, what="the candidates in paper")
    publish_transitions(isolated, "strategies.lifecycle", TRANSITIONED, [moved(0, "PAPER", "LIVE", 10)])
    produce(
        isolated,
        "positions",
        "tidemark.orders.PositionChanged",
        [position(n, *h) for n, h in enumerate(HOLDINGS)],
        "account_id",
    )
    eventually(
        lambda: from_risk(isolated, "risk.controls") and from_risk(isolated, "strategies.commands"),
        timeout=60,
        what="the account halted and S0 demoted",
    )
    risk_bars(isolated, HISTORY, HISTORY + 1)
    risk_bars(isolated, HISTORY, HISTORY + 1, "1m")
    last_close = deterministic_event_id("bar", "BBB", HISTORY + 1, "1d")
    eventually(
        lambda: any(m["causation_id"] == last_close for m in from_risk(isolated, "risk.metrics")),
        timeout=60,
        what="the last close measured",
    )
    eventually(lambda: len(refreshed(isolated)) >= 3, timeout=30, what="three refreshes")
    agents.terminate()
    agents.wait(timeout=60)

    report, shown = rerun(settings, ["portfolio", "risk"], tmp_path)

    assert report.finished, shown
    logs = {c.topic: c for c in report.copied}
    assert sorted(logs) == sorted([portfolio_inputs(isolated), risk_inputs(isolated)])  # no source topic copied
    refreshes = [
        v
        for _, o, _, v in read_all(isolated.kafka.bootstrap, portfolio_inputs(isolated))
        if o < logs[portfolio_inputs(isolated)].copied and json.loads(v)["kind"] == "refresh"
    ]
    assert len(refreshes) >= 3
    admin = AdminClient({"bootstrap.servers": isolated.kafka.bootstrap})
    for log in logs:  # what a re-run replays is kept as long as the topics it merges
        (described,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, log)]).values()
        assert described.result()["retention.ms"].value == "-1", log
    counts = {(p.name, t.topic): t.live for p in report.processors for t in p.topics}
    assert counts[("portfolio", "portfolio.targets")] >= 1 and counts[("portfolio", "analytics.correlations")] >= 3
    assert counts[("risk", "risk.metrics")] >= 4 and counts[("risk", "risk.controls")] >= 1
    assert counts[("risk", "strategies.commands")] >= 1 and counts[("risk", "alerts")] >= 2
    assert report.ok, shown
    assert all(t.identical == t.live == t.rerun for p in report.processors for t in p.topics)
    assert [run.returncode for run in report.runs] == [0]
    assert topics_named(isolated, report.prefix) == []
