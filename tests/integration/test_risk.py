"""Risk on the real broker, PostgreSQL and Redis: fills and prices are measured (RiskMeasured), the pre-trade screen
refuses the order that would breach a limit and sends the others, a breach turns the kill switch on by itself and
approvals send nothing until a person resumes, and the halted state and the risk book survive a kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from core.events import common_fields, deterministic_event_id
from core.settings import Settings
from schemas.codec import get_registry
from tests.integration.kafka_tools import read_all
from tests.integration.test_execution import BROKER, CLASSES, DAY, PRICES, START, events, performance, produce, proposal
from tests.integration.test_execution import targets as publish_targets
from tests.integration.test_lifecycle_agent import AGENTS
from tests.services import eventually

pytestmark = pytest.mark.integration

HISTORY = 30
"""Sessions of daily closes before the targets: more than the 20 returns the estimates need."""
SECOND = 1_000
"""The second targets' number: their time is a microsecond after the first's (the projection's resolution)."""


def closes() -> dict[str, np.ndarray]:
    """A seeded random walk of 1% a day per symbol, ending at ``PRICES`` (what the orders are sized at)."""
    rng = np.random.default_rng(7)
    found = {}
    for symbol, price in PRICES.items():
        walk = np.exp(np.cumsum(rng.normal(0, 0.01, HISTORY + 2)))
        found[symbol] = price * walk / walk[HISTORY - 1]
    return found


def daily_bars(settings: Settings, first: int, last: int, interval: str = "1d") -> None:
    """Bars of the sessions ``first``..``last`` (inclusive); session ``HISTORY`` fills the orders."""
    path = closes()
    length = DAY if interval == "1d" else 60 * 10**9
    records = [
        {
            **common_fields(
                "test", START + day * DAY + length, "", deterministic_event_id("bar", symbol, day, interval)
            ),
            "symbol": symbol,
            "asset_class": CLASSES[symbol],
            "interval": interval,
            "start_ns": START + day * DAY,
            "end_ns": START + day * DAY + length,
            "open": float(path[symbol][day]),
            "high": float(path[symbol][day]),
            "low": float(path[symbol][day]),
            "close": float(path[symbol][day]),
            "volume": 1e9,
            "vwap": None,
            "trade_count": None,
            "regular_session": True,
            "kind": "OHLCV",
        }
        for day in range(first, last + 1)
        for symbol in PRICES
    ]
    produce(settings, f"md.bars.{interval}", "tidemark.marketdata.BarClosed", records, "symbol")


def measurements(settings: Settings) -> list[dict[str, Any]]:
    return [r for s, r in events(settings, "risk.metrics")]


def controls(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    return events(settings, "risk.controls")


def rejections(settings: Settings) -> list[dict[str, Any]]:
    return [r for s, r in events(settings, "orders.intents") if s == "tidemark.orders.OrderRejected"]


def placed(settings: Settings) -> list[dict[str, Any]]:
    return [r for s, r in events(settings, "orders.intents") if s == "tidemark.orders.PlaceOrder"]


def approved_book(
    settings: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], agents: Settings | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The closes, the strategies' positions, the sink, the agents (with ``agents``' settings if given) and the
    broker running, and the targets' proposal approved: the orders the next session fills. The agents' process and
    the proposal."""
    run_cli("topics", "create")
    daily_bars(settings, 0, HISTORY - 1)
    performance(settings)
    start_worker()
    process = start_worker(agents, AGENTS)
    start_worker(command=BROKER)
    wanted = publish_targets(settings)
    proposed = eventually(lambda: proposal(settings, wanted["event_id"]), timeout=180, interval=1, what="a proposal")
    run_cli("rebalance", "approve", proposed["rebalance_id"], "--wait", "0")
    return process, proposed


def both_strategies_measured(settings: Settings) -> dict[str, Any]:
    """The newest measurement of both strategies' filled holdings."""
    return eventually(
        lambda: [m for m in measurements(settings) if len(m["strategies"]) == 2 and m["estimates"]],
        timeout=180,
        what="a measurement of both strategies' holdings",
    )[-1]


def test_fills_are_measured_and_the_pre_trade_screen_refuses_the_order_that_would_breach_a_limit(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    """BBB would be 34% of equity against a 32% limit: refused with the numbers; AAA (30%) and EURUSD (8%) go.
    The fills are measured with all four methods, and a minute bar of a held symbol is measured again."""
    _, proposed = approved_book(isolated, run_cli, start_worker, isolated.changed(risk__max_symbol_exposure=0.32))
    refused = eventually(lambda: rejections(isolated), timeout=120, what="the pre-trade refusal")
    assert [(r["symbol"], r["refused_by"]) for r in refused] == [("BBB", "pre-trade risk")]
    assert "symbol_exposure:BBB would be 0.34" in refused[0]["reason"] and "limit 0.3200" in refused[0]["reason"]
    assert sorted(o["symbol"] for o in placed(isolated)) == ["AAA", "EURUSD"]

    daily_bars(isolated, HISTORY, HISTORY)  # the fills
    measured = both_strategies_measured(isolated)
    methods = {(e["method"], e["confidence"]) for e in measured["estimates"]}
    assert methods == {
        (m, c) for m in ("HISTORICAL", "PARAMETRIC", "CORNISH_FISHER", "MONTE_CARLO") for c in (0.95, 0.99)
    }
    assert all(0 < e["var"] <= e["cvar"] < 0.2 for e in measured["estimates"])
    assert measured["observations"] >= 20 and measured["missing_history"] == []
    components = sum(s["component_var_99"] for s in measured["strategies"])
    assert components == pytest.approx(measured["covariance_var_99"], rel=1e-9)
    marks = {symbol: path[HISTORY] for symbol, path in closes().items()}
    held = {o["symbol"]: float(o["qty"]) for o in proposed["orders"] if o["symbol"] != "BBB"}
    assert float(measured["gross_exposure"]) == pytest.approx(sum(q * marks[s] for s, q in held.items()), abs=0.01)

    before = len(measurements(isolated))
    daily_bars(isolated, HISTORY + 1, HISTORY + 1, interval="1m")  # a tick of held symbols, a session later
    eventually(lambda: len(measurements(isolated)) > before, timeout=60, what="the tick measured")
    shown = eventually(
        lambda: json.loads(run_cli("risk", "--json").stdout)["measurement"], timeout=60, what="risk projected"
    )
    assert len(shown["estimates"]) == 8 and shown["kill_switch"] is False


def test_a_breach_halts_trading_until_a_person_resumes(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    """The book is filled within the limits; then the risk manager tightens the VaR limit to 0.1% and the next price
    breaches it: a CRITICAL alert and a halt by the risk monitor, which the desk answers. The next approval sends
    nothing (each order refused by the kill switch); after `tidemark resume` the same approval sends its orders
    (they reduce the book, so the pre-trade screen lets them through the breached limit)."""
    agents, _ = approved_book(isolated, run_cli, start_worker)
    daily_bars(isolated, HISTORY, HISTORY)
    both_strategies_measured(isolated)
    assert measurements(isolated)[-1]["breaches"] == []
    agents.terminate()
    agents.wait(timeout=60)
    start_worker(isolated.changed(risk__max_var=0.001), AGENTS)
    daily_bars(isolated, HISTORY + 1, HISTORY + 1, interval="1m")
    halted = eventually(
        lambda: [r for s, r in controls(isolated) if s == "tidemark.risk.TradingHalted"], timeout=180, what="a halt"
    )
    assert halted[0]["requested_by"] == "risk" and halted[0]["breaches"] == ["var"]
    kinds = {r["kind"]: r for s, r in events(isolated, "alerts")}
    assert kinds["risk.var_breach"]["severity"] == "CRITICAL" and "risk.kill_switch" in kinds
    eventually(lambda: measurements(isolated)[-1]["kill_switch"], timeout=60, what="the switch measured on")

    wanted = publish_targets(isolated, SECOND, capital="50000")
    second = eventually(lambda: proposal(isolated, wanted["event_id"]), timeout=120, what="a second proposal")
    assert second["orders"]
    sent_before = len(placed(isolated))
    run_cli("rebalance", "approve", second["rebalance_id"], "--wait", "0")
    held_back = eventually(
        lambda: [r for r in rejections(isolated) if r["refused_by"] == "kill switch"], timeout=60, what="refusals"
    )
    assert len(held_back) == len(second["orders"]) and "trading halted" in held_back[0]["reason"]
    assert len(placed(isolated)) == sent_before

    run_cli("resume", "--reason", "limit reviewed")
    assert [s for s, r in controls(isolated)][-1] == "tidemark.risk.TradingResumed"
    run_cli("rebalance", "approve", second["rebalance_id"], "--wait", "0")

    def answered() -> tuple[int, list[dict[str, Any]]] | None:
        sent = len(placed(isolated)) - sent_before
        screened = [r for r in rejections(isolated) if r["refused_by"] == "pre-trade risk"]
        return (sent, screened) if sent + len(screened) == len(second["orders"]) else None

    sent, screened = eventually(answered, timeout=60, what="every order sent or screened")
    # Selling AAA and BBB shrinks the VaR and goes; covering the EURUSD short may remove a hedge: screened if so.
    assert sent >= 2 and all("var would be" in r["reason"] for r in screened)


def test_the_halt_and_the_risk_book_survive_a_kill_9(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    """Halted by hand, the agents are killed with kill -9 after their measurement; restarted, they still refuse
    approvals, measure the same holdings on the next price, and every measurement id has one payload."""
    agents, _ = approved_book(isolated, run_cli, start_worker)
    daily_bars(isolated, HISTORY, HISTORY)
    first = both_strategies_measured(isolated)
    run_cli("halt", "--reason", "drill")
    eventually(lambda: measurements(isolated)[-1]["kill_switch"], timeout=60, what="the switch measured on")
    os.kill(agents.pid, signal.SIGKILL)
    agents.wait(timeout=30)

    start_worker(command=AGENTS)
    daily_bars(isolated, HISTORY + 1, HISTORY + 1, interval="1m")
    after = eventually(
        lambda: [m for m in measurements(isolated) if m["ts_event"] > first["ts_event"] + DAY / 2],
        timeout=180,
        what="a measurement after the restart",
    )[-1]
    assert after["kill_switch"] and after["halt_reason"] == "drill"
    assert {s["strategy_id"] for s in after["strategies"]} == {"S1", "S2"}

    wanted = publish_targets(isolated, SECOND, capital="120000")
    second = eventually(lambda: proposal(isolated, wanted["event_id"]), timeout=120, what="a proposal")
    run_cli("rebalance", "approve", second["rebalance_id"], "--wait", "0")
    eventually(
        lambda: [r for r in rejections(isolated) if r["refused_by"] == "kill switch"], timeout=60, what="refusals"
    )
    payloads: dict[str, set[bytes]] = defaultdict(set)
    for _, _, _, value in read_all(isolated.kafka.bootstrap, isolated.topic("risk.metrics")):
        payloads[get_registry().decode(value).record["event_id"]].add(value)
    assert all(len(p) == 1 for p in payloads.values())
