"""Execution on the real broker, PostgreSQL and Redis: portfolio targets become a rebalance proposal; its approval
becomes orders that the simulated broker fills at the next bar; the tracker's positions per strategy equal the
broker's; bad commands are refused before anything is sent; and a broker connector killed with kill -9 in the middle
of a rebalance places every order exactly once after its restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from core.events import common_fields, deterministic_event_id
from core.settings import Settings
from schemas.codec import get_registry
from tests.integration.kafka_tools import read_all
from tests.integration.test_lifecycle_agent import AGENTS
from tests.services import eventually

pytestmark = pytest.mark.integration

BROKER = ("broker", "run", "--loglevel", "info")
DAY = 86_400 * 10**9
START = 20_000 * DAY  # 2024-10-04
PRICES = {"AAA": 100.0, "BBB": 50.0, "EURUSD": 1.25}
CLASSES = {"AAA": "EQUITY", "BBB": "EQUITY", "EURUSD": "FX"}
POSITIONS = {"S1": {"AAA": 0.5, "BBB": 0.3}, "S2": {"BBB": 0.4, "EURUSD": -0.2}}
WEIGHTS = {"S1": "0.6", "S2": "0.4"}


def produce(settings: Settings, topic: str, schema: str, records: list[dict[str, Any]], key: str) -> None:
    registry = get_registry()
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for record in records:
        producer.produce(settings.topic(topic), registry.encode(schema, record), record.get(key, key).encode())
    assert producer.flush(30) == 0


def bars(settings: Settings, day: int, move: float = 1.0) -> None:
    records = [
        {
            **common_fields("test", START + (day + 1) * DAY, "", deterministic_event_id("bar", symbol, day)),
            "symbol": symbol,
            "asset_class": CLASSES[symbol],
            "interval": "1d",
            "start_ns": START + day * DAY,
            "end_ns": START + (day + 1) * DAY,
            "open": price * move,
            "high": price * move,
            "low": price * move,
            "close": price * move,
            "volume": 1e9,
            "vwap": None,
            "trade_count": None,
            "regular_session": True,
            "kind": "OHLCV",
        }
        for symbol, price in PRICES.items()
    ]
    produce(settings, "md.bars.1d", "tidemark.marketdata.BarClosed", records, "symbol")


def performance(settings: Settings) -> None:
    registry = get_registry()
    base = {
        f["name"]: f.get("default")
        for f in registry.schema("tidemark.strategies.StrategyPerformanceRecorded")["fields"]
    }
    records = [
        {
            **base,
            **common_fields("test", START + DAY, "", deterministic_event_id("perf", sid)),
            "strategy_id": sid,
            "state": "LIVE",
            "period_start_ns": START,
            "period_end_ns": START + DAY,
            "period_return": 0.001,
            "cost": 0.0,
            "cumulative_return": 0.001,
            "pnl": "0",
            "drawdown": 0.0,
            "rolling_sharpe": None,
            "trades": 0,
            "positions": positions,
        }
        for sid, positions in POSITIONS.items()
    ]
    produce(
        settings, "strategies.performance", "tidemark.strategies.StrategyPerformanceRecorded", records, "strategy_id"
    )


def targets(settings: Settings, n: int = 1, capital: str = "100000", power: str | None = None) -> dict[str, Any]:
    registry = get_registry()
    base = {f["name"]: f.get("default") for f in registry.schema("tidemark.portfolio.PortfolioTargetsSet")["fields"]}
    record = {
        **base,
        **common_fields("test", START + DAY + n, "", deterministic_event_id("targets", n)),
        "account_id": "paper",
        "method": "MAX_SHARPE",
        "weights": [{"strategy_id": s, "weight": w, "notional": None} for s, w in WEIGHTS.items()],
        "capital": capital,
        "buying_power": power,
        "max_weight": "0.6",
        "min_strategies": 2,
        "lookback_days": 20,
    }
    produce(settings, "portfolio.targets", "tidemark.portfolio.PortfolioTargetsSet", [record], "account_id")
    return record


def events(settings: Settings, topic: str) -> list[tuple[str, dict[str, Any]]]:
    registry = get_registry()
    found = []
    for _, _, _, value in read_all(settings.kafka.bootstrap, settings.topic(topic)):
        decoded = registry.decode(value)
        found.append((decoded.schema, decoded.record))
    return found


def proposal(settings: Settings, targets_id: str) -> dict[str, Any] | None:
    return next(
        (
            r
            for schema, r in events(settings, "orders.rebalances")
            if schema == "tidemark.orders.RebalanceProposed" and r["targets_id"] == targets_id
        ),
        None,
    )


def kill_when_paused(drill: subprocess.Popen[bytes], log: Path, line: str) -> None:
    """``kill -9`` of a fault drill once its log says it holds still: the test, not a race, picks the moment."""
    eventually(lambda: line in log.read_text(), timeout=120, what=line)
    os.kill(drill.pid, signal.SIGKILL)
    drill.wait(timeout=30)


def one_order_per_client_id(settings: Settings) -> dict[str, set[str]]:
    """The broker's order ids per client order id, as ``broker.order_updates`` holds them; each holds one."""
    orders: dict[str, set[str]] = defaultdict(set)
    for _, record in events(settings, "broker.order_updates"):
        orders[record["client_order_id"]].add(record["order_id"])
    assert all(len(ids) == 1 for ids in orders.values()), orders
    return orders


def reconciled(run_cli: Callable[..., Any]) -> None:
    eventually(
        lambda: json.loads(run_cli("reconcile", "--json").stdout)[0]["differences"] == 0,
        timeout=60,
        what="the tracker equal to the broker",
    )


def expected_quantities() -> dict[tuple[str, str], Decimal]:
    """weight x capital x position / price, rounded toward zero to 9 decimals (what the planner sends)."""
    found = {}
    for sid, positions in POSITIONS.items():
        for symbol, position in positions.items():
            exact = Decimal(WEIGHTS[sid]) * 100_000 * Decimal(repr(position)) / Decimal(repr(PRICES[symbol]))
            found[(sid, symbol)] = exact
    return found


def test_targets_become_a_proposal_orders_fills_and_positions_per_strategy_equal_to_the_brokers(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    bars(isolated, 0)
    performance(isolated)
    start_worker()  # the projection sink (and the analytics runner)
    start_worker(command=AGENTS)
    start_worker(command=BROKER)
    wanted = targets(isolated)
    proposed = eventually(lambda: proposal(isolated, wanted["event_id"]), timeout=180, interval=1, what="a proposal")
    sides = {o["symbol"]: (o["side"], Decimal(o["qty"])) for o in proposed["orders"]}
    expected = expected_quantities()
    assert sides["AAA"] == ("BUY", expected[("S1", "AAA")])
    assert sides["BBB"] == ("BUY", expected[("S1", "BBB")] + expected[("S2", "BBB")])
    assert sides["EURUSD"] == ("SELL", -expected[("S2", "EURUSD")])  # the simulated book trades FX and shorts
    bbb = next(o for o in proposed["orders"] if o["symbol"] == "BBB")
    assert {a["strategy_id"]: Decimal(a["qty"]) for a in bbb["allocations"]} == {
        "S1": expected[("S1", "BBB")],
        "S2": expected[("S2", "BBB")],
    }
    shown = eventually(
        lambda: json.loads(run_cli("rebalance", "propose", "--json", check=False).stdout or "[]"),
        timeout=60,
        what="the proposal projected",
    )
    rebalance_id = proposed["rebalance_id"]
    assert shown[0]["rebalance_id"] == rebalance_id and shown[0]["approved_at"] is None

    approved = run_cli("rebalance", "approve", rebalance_id[:8], "--wait", "0")
    assert f"approved {rebalance_id}: 3 orders" in approved.stdout
    eventually(
        lambda: len({r["client_order_id"] for s, r in events(isolated, "broker.order_updates")}) == 3,
        timeout=120,
        what="three orders accepted by the simulated broker",
    )
    bars(isolated, 1, move=1.01)  # the next session: the simulated broker fills at its open
    finished = run_cli("rebalance", "approve", rebalance_id, "--wait", "120")
    assert "all 3 orders final" in finished.stdout

    def tracked() -> dict[tuple[str, str], Decimal]:
        rows = json.loads(run_cli("positions", "--json").stdout)[0]["positions"]
        return {(r["strategy_id"], r["symbol"]): Decimal(str(r["qty"])) for r in rows}

    positions = eventually(lambda: (p := tracked()) and len(p) == 4 and p, timeout=60, what="four positions")
    assert positions == pytest.approx(expected, abs=Decimal("1e-9"))
    reconciled = run_cli("reconcile", "--json")
    assert json.loads(reconciled.stdout)[0]["differences"] == 0
    updates = [r for s, r in events(isolated, "broker.order_updates") if r["update_event"] == "FILL"]
    assert sorted(r["symbol"] for r in updates) == ["AAA", "BBB", "EURUSD"]
    aaa = next(r for r in updates if r["symbol"] == "AAA")
    assert Decimal(aaa["filled_avg_price"]) == Decimal(repr(101.0)) * (1 + Decimal("2e-4"))  # open + spread + slip


def test_bad_commands_are_refused_with_a_reason_before_anything_is_sent(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    bars(isolated, 0)
    performance(isolated)
    start_worker(command=AGENTS)
    start_worker(command=BROKER)
    # Ten times the buying power: the whole rebalance is refused, with the numbers.
    too_big = targets(isolated, capital="1000000", power="100000")
    refused = eventually(lambda: proposal(isolated, too_big["event_id"]), timeout=120, what="the proposal")
    assert refused["orders"] == [] and "exceed buying power 100,000.00" in refused["refused"][0]["reason"]
    registry = get_registry()
    base = {f["name"]: f.get("default") for f in registry.schema("tidemark.orders.PlaceOrder")["fields"]}

    def command(n: int, symbol: str, qty: str) -> dict[str, Any]:
        return {
            **base,
            **common_fields("test", START + DAY, "", deterministic_event_id("bad", n)),
            "account_id": "paper",
            "client_order_id": f"tm-bad-{n}",
            "symbol": symbol,
            "side": "BUY",
            "qty": qty,
            "order_type": "MARKET",
            "time_in_force": "DAY",
        }

    produce(
        isolated,
        "orders.intents",
        "tidemark.orders.PlaceOrder",
        [command(1, "NOPE", "1"), command(2, "AAA", "NaN"), command(3, "AAA", "-5")],
        "account_id",
    )
    reasons = eventually(
        lambda: (
            (
                found := {
                    r["client_order_id"]: r["reason"]
                    for s, r in events(isolated, "orders.intents")
                    if s == "tidemark.orders.OrderRejected"
                }
            )
            and len(found) == 3
            and found
        ),
        timeout=120,
        what="three refusals",
    )
    assert reasons == {
        "tm-bad-1": "NOPE: unknown to the simulated broker",
        "tm-bad-2": "quantity NaN must be a positive finite number",
        "tm-bad-3": "quantity -5 must be a positive finite number",
    }
    assert not [r for s, r in events(isolated, "broker.order_updates") if r["client_order_id"].startswith("tm-bad")]


def test_a_broker_connector_killed_mid_rebalance_places_each_order_exactly_once(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """The connector stops after placing its first order (the broker's answer published, the command's offset not
    committed) and is killed; its successor restores the simulated broker from its updates, meets the first command
    again, finds the order placed, and places the other two."""
    run_cli("topics", "create")
    bars(isolated, 0)
    performance(isolated)
    start_worker()
    start_worker(command=AGENTS)
    drill = start_worker(isolated.changed(broker__pause_after_orders=1), BROKER)
    wanted = targets(isolated)
    proposed = eventually(lambda: proposal(isolated, wanted["event_id"]), timeout=180, interval=1, what="a proposal")
    run_cli("rebalance", "approve", proposed["rebalance_id"], "--wait", "0")
    kill_when_paused(drill, tmp_path / "worker-2.log", "paused after 1 orders")
    start_worker(command=BROKER)
    eventually(
        lambda: len({r["client_order_id"] for s, r in events(isolated, "broker.order_updates")}) == 3,
        timeout=120,
        what="all three orders placed",
    )
    bars(isolated, 1)
    run_cli("rebalance", "approve", proposed["rebalance_id"], "--wait", "120")
    assert len(one_order_per_client_id(isolated)) == 3
    assert "was placed before" in (tmp_path / "worker-3.log").read_text()  # the repeat was met and looked up
    reconciled(run_cli)


def test_an_execution_agent_killed_mid_rebalance_sends_each_order_once_to_the_broker(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """The agent stops after the first of the approval's three order commands is out (its desk already saved, the
    approval's offset not committed) and is killed; its successor gets the approval again and sends the recorded
    commands again, byte for byte: the broker holds one order per client order id, and the tracker equals it."""
    run_cli("topics", "create")
    bars(isolated, 0)
    performance(isolated)
    start_worker()
    drill = start_worker(isolated.changed(broker__pause_after_intents=1), AGENTS)
    start_worker(command=BROKER)
    wanted = targets(isolated)
    proposed = eventually(lambda: proposal(isolated, wanted["event_id"]), timeout=180, interval=1, what="a proposal")
    run_cli("rebalance", "approve", proposed["rebalance_id"], "--wait", "0")
    kill_when_paused(drill, tmp_path / "worker-1.log", "paused after 1 order commands")
    assert len([r for s, r in events(isolated, "orders.intents") if s == "tidemark.orders.PlaceOrder"]) == 1
    start_worker(command=AGENTS)
    eventually(
        lambda: len({r["client_order_id"] for s, r in events(isolated, "broker.order_updates")}) == 3,
        timeout=180,
        interval=1,
        what="all three orders at the broker",
    )
    commands: dict[str, set[str]] = defaultdict(set)
    for schema, record in events(isolated, "orders.intents"):
        if schema == "tidemark.orders.PlaceOrder":
            commands[record["client_order_id"]].add(record["event_id"])
    assert len(commands) == 3 and all(len(ids) == 1 for ids in commands.values())  # resent, never re-decided
    assert "answered again, as recorded" in (tmp_path / "worker-3.log").read_text()
    bars(isolated, 1)
    run_cli("rebalance", "approve", proposed["rebalance_id"], "--wait", "120")
    assert len(one_order_per_client_id(isolated)) == 3
    reconciled(run_cli)
