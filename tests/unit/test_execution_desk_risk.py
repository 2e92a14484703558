"""The execution desk's kill switch and pre-trade risk screen (pure): a halt holds every approval back and, with
flatten, closes what the strategies hold; the screen refuses the orders that would breach a limit and sends the rest.
Every output encodes with its schema."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from core.events import deterministic_event_id
from schemas.codec import get_registry
from streams.execution.desk import Desk, Event, Policy, Screen, compact, decide
from streams.execution.positions import UNATTRIBUTED, quantities
from streams.execution.rebalance import Rules
from streams.risk.limits import Book, Check, Screened, limits_from, screen

ACCOUNT = "paper"
POLICY = Policy(ACCOUNT, "simulated", Rules(allow_short=True), auto_approve=False)
AUTO = Policy(ACCOUNT, "simulated", Rules(allow_short=True), auto_approve=True)
LIMITS = limits_from(
    {"max_var": 0.5, "max_drawdown": 0.2, "max_gross_leverage": 1.0, "max_symbol_exposure": 0.6},
    {"max_var": 0.5, "max_exposure": 2.0, "max_drawdown": 0.3},
    {},
)


def market_var(book: Book) -> np.ndarray:
    """Everything moves 10% together: a tenth of the net exposure of the account and of each strategy."""
    return np.asarray(0.1 * np.abs(np.concatenate([[book.exposures.sum()], book.exposures.sum(axis=0)])))


def risk_screen(limits: Any = LIMITS) -> Screen:
    return lambda trades, book: screen(trades, book, limits, market_var)


def _id(*parts: str | int) -> str:
    return deterministic_event_id("test-desk-risk", *parts)


def _common(event_id: str, ts: int) -> dict[str, Any]:
    return {"event_id": event_id, "ts_event": ts, "ts_ingest": ts, "source": "test", "causation_id": ""}


def _compact(kind: str, schema: str, full: dict[str, Any]) -> dict[str, Any]:
    get_registry().encode(schema, full)  # the full command is a valid event
    return compact(kind, full)


def halt(reason: str, flatten: bool = False, n: int = 0, breaches: Sequence[str] = ()) -> dict[str, Any]:
    full = {**_common(_id("halt", n), 100 + n), "account_id": ACCOUNT, "reason": reason, "flatten": flatten,
            "requested_by": "risk", "breaches": list(breaches)}  # fmt: skip
    return _compact("halt", "tidemark.risk.HaltTrading", full)


def resume(n: int = 0) -> dict[str, Any]:
    full = {**_common(_id("resume", n), 200 + n), "account_id": ACCOUNT, "reason": "checked", "requested_by": "ops"}
    return _compact("resume", "tidemark.risk.ResumeTrading", full)


def approve(rebalance_id: str, n: int = 0) -> dict[str, Any]:
    full = {**_common(_id("approve", rebalance_id, n), 50 + n), "account_id": ACCOUNT, "rebalance_id": rebalance_id,
            "approved_by": "tester"}  # fmt: skip
    return _compact("approve", "tidemark.orders.ApproveRebalance", full)


def performance(sid: str, positions: dict[str, float], end: int = 1) -> dict[str, Any]:
    return {"kind": "performance", "event_id": _id("perf", sid, end), "ts_event": end, "strategy_id": sid,
            "end": end, "positions": positions}  # fmt: skip


def price(symbol: str, close: str) -> dict[str, Any]:
    return {"kind": "price", "event_id": _id("price", symbol, close), "ts_event": 1, "symbol": symbol,
            "close": close, "asset_class": "EQUITY"}  # fmt: skip


def targets(n: int, weights: dict[str, str], capital: str = "100000") -> dict[str, Any]:
    return {"kind": "targets", "event_id": _id("targets", n), "ts_event": 10 + n,
            "weights": [{"strategy_id": s, "weight": w} for s, w in weights.items()], "capital": capital,
            "buying_power": None}  # fmt: skip


def update(order: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The order filled in full at its planned price."""
    return {"kind": "update", "event_id": _id("update", order["client_order_id"], n), "ts_event": 60 + n,
            "client_order_id": order["client_order_id"], "order_id": f"o-{order['client_order_id']}",
            "symbol": order["symbol"], "side": order["side"], "filled_qty": order["qty"],
            "filled_avg_price": order["price"]}  # fmt: skip


def run(desk: Desk, record: Mapping[str, Any], policy: Policy = POLICY, check: Screen | None = None) -> list[Event]:
    events = decide(desk, record, policy, check)
    for topic, key, schema, payload in events:
        get_registry().encode(schema, payload)
        assert key == ACCOUNT and topic in (
            "orders.rebalances",
            "orders.intents",
            "positions",
            "risk.controls",
            "alerts",
        )
    return events


def kinds(events: list[Event]) -> list[str]:
    return [schema.rsplit(".", 1)[1] for _, _, schema, _ in events]


def of(events: list[Event], kind: str) -> list[dict[str, Any]]:
    return [record for _, _, schema, record in events if schema.endswith("." + kind)]


def ready_desk() -> Desk:
    desk = Desk()
    for record in (
        performance("S1", {"AAA": 0.5}),
        performance("S2", {"AAA": 0.25, "BBB": -0.1}),
        price("AAA", "100"),
        price("BBB", "2"),
    ):
        assert run(desk, record) == []
    return desk


def proposed(desk: Desk, n: int = 1, policy: Policy = POLICY) -> dict[str, Any]:
    (proposal,) = of(run(desk, targets(n, {"S1": "0.5", "S2": "0.5"}), policy), "RebalanceProposed")
    assert [(o["symbol"], o["side"], o["qty"]) for o in proposal["orders"]] == [
        ("BBB", "SELL", "2500.000000000"),  # 0.5 x 100,000 x -0.1 / 2
        ("AAA", "BUY", "375.000000000"),  # 0.5 x 100,000 x (0.5 + 0.25) / 100
    ]
    return proposal


def filled_desk() -> Desk:
    """S1 holds 250 AAA, S2 125 AAA and -2,500 BBB; reconciliation found 1 AAA that no strategy owns."""
    desk = ready_desk()
    proposal = proposed(desk)
    sent = of(run(desk, approve(proposal["rebalance_id"])), "PlaceOrder")
    for n, order in enumerate(proposal["orders"]):
        assert sent[n]["client_order_id"] == order["client_order_id"]
        run(desk, update(order, n))
    correction = {"kind": "correction", "event_id": _id("corr"), "ts_event": 70, "symbol": "AAA", "qty_change": "1",
                  "price": "100"}  # fmt: skip
    run(desk, correction)
    assert quantities(desk.tracker) == {
        ("S1", "AAA"): Decimal(250),
        ("S2", "AAA"): Decimal(125),
        ("S2", "BBB"): Decimal(-2500),
        (UNATTRIBUTED, "AAA"): Decimal(1),
    }
    return desk


# --- kill switch ----------------------------------------------------------------------------------------------------


def test_a_halt_is_answered_with_trading_halted_and_a_critical_alert() -> None:
    desk = ready_desk()
    command = halt("risk limit breached: var 0.0600 > limit 0.0500", breaches=["var"])
    events = run(desk, command)
    assert kinds(events) == ["TradingHalted", "AlertRaised"]
    (answer,) = of(events, "TradingHalted")
    assert answer["event_id"] == deterministic_event_id("trading-halted", command["event_id"])
    assert (answer["causation_id"], answer["command_id"]) == (command["event_id"], command["event_id"])
    assert (answer["reason"], answer["flatten"], answer["flatten_rebalance_id"]) == (command["reason"], False, "")
    assert (answer["requested_by"], answer["breaches"], answer["account_id"]) == ("risk", ["var"], ACCOUNT)
    (alert,) = of(events, "AlertRaised")
    assert (alert["kind"], alert["severity"], alert["subject"]) == ("risk.kill_switch", "CRITICAL", ACCOUNT)
    assert command["reason"] in alert["message"]
    assert (desk.halted, desk.halt_reason) == (True, command["reason"])


def test_while_halted_an_approval_sends_nothing_and_after_resume_it_sends_the_orders() -> None:
    desk = ready_desk()
    proposal = proposed(desk)
    run(desk, halt("by hand"))
    approval = approve(proposal["rebalance_id"])
    held = run(desk, approval)
    assert "PlaceOrder" not in kinds(held)
    assert kinds(held) == ["AlertRaised", "OrderRejected", "OrderRejected"]
    alert = of(held, "AlertRaised")[0]
    assert (alert["kind"], alert["severity"]) == ("rebalance.halted", "WARNING")
    rejected = of(held, "OrderRejected")
    assert [(r["symbol"], r["client_order_id"], r["strategy_ids"]) for r in rejected] == [
        (o["symbol"], o["client_order_id"], sorted(a["strategy_id"] for a in o["allocations"]))
        for o in proposal["orders"]
    ]
    assert all(r["refused_by"] == "kill switch" and r["rebalance_id"] == proposal["rebalance_id"] for r in rejected)
    assert all("by hand" in r["reason"] for r in rejected)
    assert quantities(desk.tracker) == {} and desk.tracker.orders == {}  # nothing registered either

    resumed = run(desk, resume())
    assert kinds(resumed) == ["TradingResumed", "AlertRaised"]
    answer = of(resumed, "TradingResumed")[0]
    assert (answer["command_id"], answer["reason"], answer["requested_by"]) == (resume()["event_id"], "checked", "ops")
    assert of(resumed, "AlertRaised")[0]["kind"] == "risk.kill_switch_cleared"
    assert not desk.halted and desk.halt_reason == ""

    sent = run(desk, approval)
    assert kinds(sent) == ["PlaceOrder", "PlaceOrder"]
    assert [(p["symbol"], p["side"], p["qty"], p["client_order_id"]) for p in of(sent, "PlaceOrder")] == [
        (o["symbol"], o["side"], o["qty"], o["client_order_id"]) for o in proposal["orders"]
    ]
    assert kinds(run(desk, approve(proposal["rebalance_id"], n=1))) == ["AlertRaised"]  # sent once only


def test_a_halted_desk_refuses_an_auto_approved_proposal_order_by_order() -> None:
    desk = ready_desk()
    run(desk, halt("by hand"))
    events = run(desk, targets(1, {"S1": "0.5", "S2": "0.5"}), AUTO)
    assert kinds(events) == ["RebalanceProposed", "AlertRaised", "OrderRejected", "OrderRejected"]
    assert {r["refused_by"] for r in of(events, "OrderRejected")} == {"kill switch"}


def test_each_held_back_approval_is_its_own_refusal() -> None:
    desk = ready_desk()
    rebalance_id = proposed(desk)["rebalance_id"]
    run(desk, halt("by hand"))
    first = {r["event_id"] for r in of(run(desk, approve(rebalance_id, n=0)), "OrderRejected")}
    second = {r["event_id"] for r in of(run(desk, approve(rebalance_id, n=1)), "OrderRejected")}
    assert len(first) == len(second) == 2 and not first & second


def test_a_halt_with_flatten_closes_every_strategy_holding_and_not_the_unattributed_one() -> None:
    desk = filled_desk()
    held = {k: q for k, q in quantities(desk.tracker).items() if k[0] != UNATTRIBUTED}
    command = halt("risk limit breached", flatten=True, breaches=["gross_leverage"])
    everything = lambda trades, book: [Screened(t, (Check("x", 1.0, 0.0),), {}) for t in trades]  # noqa: E731
    events = run(desk, command, POLICY, everything)  # a halt is the approval of getting out: never screened
    assert kinds(events) == ["RebalanceProposed", "PlaceOrder", "PlaceOrder", "TradingHalted", "AlertRaised"]
    (proposal,) = of(events, "RebalanceProposed")
    (answer,) = of(events, "TradingHalted")
    assert answer["flatten"] is True
    assert answer["flatten_rebalance_id"] == proposal["rebalance_id"] != ""
    assert proposal["auto_approved"] is True and proposal["refused"] == []
    closing = {(a["strategy_id"], o["symbol"]): Decimal(a["qty"]) for o in proposal["orders"] for a in o["allocations"]}
    assert closing == {key: -qty for key, qty in held.items()}
    assert [(p["symbol"], p["side"], Decimal(p["qty"])) for p in of(events, "PlaceOrder")] == [
        ("AAA", "SELL", Decimal(375)),
        ("BBB", "BUY", Decimal(2500)),
    ]
    assert "every strategy position is being closed" in of(events, "AlertRaised")[0]["message"]
    assert desk.halted
    # Filled, the closing orders leave the strategies flat and the account holder's share where it was.
    for n, order in enumerate(proposal["orders"]):
        run(desk, update(order, 10 + n))
    assert quantities(desk.tracker) == {(UNATTRIBUTED, "AAA"): Decimal(1)}


def test_a_flatten_supersedes_the_open_proposal() -> None:
    desk = filled_desk()
    pending = of(run(desk, targets(2, {"S1": "1"})), "RebalanceProposed")[0]["rebalance_id"]
    run(desk, halt("out", flatten=True))
    run(desk, resume())
    stale = run(desk, approve(pending))
    assert kinds(stale) == ["AlertRaised"] and "superseded" in stale[0][3]["message"]


# --- pre-trade screen -----------------------------------------------------------------------------------------------


def screened_desk() -> tuple[Desk, dict[str, Any]]:
    desk = Desk()
    for record in (performance("S1", {"AAA": 0.5}), performance("S2", {"BBB": 0.3}), price("AAA", "100"),
                   price("BBB", "50")):  # fmt: skip
        run(desk, record)
    (proposal,) = of(run(desk, targets(1, {"S1": "1", "S2": "1"})), "RebalanceProposed")
    assert [(o["symbol"], o["side"], o["qty"]) for o in proposal["orders"]] == [
        ("AAA", "BUY", "500.000000000"),  # 50,000: 0.5 of equity
        ("BBB", "BUY", "600.000000000"),  # 30,000
    ]
    return desk, proposal


def test_the_order_that_would_breach_a_limit_is_refused_and_the_others_sent() -> None:
    desk, proposal = screened_desk()
    tight = limits_from(
        {"max_var": 0.5, "max_drawdown": 0.2, "max_gross_leverage": 1.0, "max_symbol_exposure": 0.4},
        {"max_var": 0.5, "max_exposure": 2.0, "max_drawdown": 0.3},
        {},
    )
    events = run(desk, approve(proposal["rebalance_id"]), POLICY, risk_screen(tight))
    assert kinds(events) == ["OrderRejected", "AlertRaised", "PlaceOrder"]
    (rejected,) = of(events, "OrderRejected")
    aaa = proposal["orders"][0]
    assert (rejected["symbol"], rejected["client_order_id"], rejected["refused_by"]) == (
        "AAA",
        aaa["client_order_id"],
        "pre-trade risk",
    )
    assert rejected["reason"] == "AAA: pre-trade risk check: symbol_exposure:AAA would be 0.5000 > limit 0.4000"
    assert (rejected["strategy_ids"], rejected["rebalance_id"]) == (["S1"], proposal["rebalance_id"])
    (alert,) = of(events, "AlertRaised")
    assert (alert["kind"], alert["severity"], alert["message"]) == (
        "risk.pre_trade_refusal",
        "WARNING",
        rejected["reason"],
    )
    (sent,) = of(events, "PlaceOrder")
    assert (sent["symbol"], sent["qty"], sent["strategy_id"]) == ("BBB", "600.000000000", "S2")
    assert {key: o.symbol for key, o in desk.tracker.orders.items()} == {sent["client_order_id"]: "BBB"}  # sent only


def test_within_the_limits_every_order_is_sent() -> None:
    desk, proposal = screened_desk()
    events = run(desk, approve(proposal["rebalance_id"]), POLICY, risk_screen())
    assert kinds(events) == ["PlaceOrder", "PlaceOrder"]


def test_an_order_breaching_gross_leverage_is_refused_with_the_value_before() -> None:
    desk, proposal = screened_desk()
    low = limits_from(
        {"max_var": 0.5, "max_drawdown": 0.2, "max_gross_leverage": 0.6, "max_symbol_exposure": 0.6},
        {"max_var": 0.5, "max_exposure": 2.0, "max_drawdown": 0.3},
        {},
    )
    events = run(desk, approve(proposal["rebalance_id"]), POLICY, risk_screen(low))
    assert kinds(events) == ["OrderRejected", "AlertRaised", "PlaceOrder"]
    assert of(events, "OrderRejected")[0]["reason"] == (
        "BBB: pre-trade risk check: gross_leverage would be 0.8000 > limit 0.6000, 0.5000 before it"
    )
    assert of(events, "PlaceOrder")[0]["symbol"] == "AAA"


def test_sells_that_reduce_a_breached_exposure_are_sent() -> None:
    desk = Desk()
    for record in (performance("S1", {"AAA": 0.7}), price("AAA", "100"), price("BBB", "100")):
        run(desk, record)
    (first,) = of(run(desk, targets(1, {"S1": "1"})), "RebalanceProposed")
    (order,) = first["orders"]
    run(desk, approve(first["rebalance_id"]))
    run(desk, update(order, 0))
    assert quantities(desk.tracker) == {("S1", "AAA"): Decimal(700)}  # AAA 0.7 > 0.6: breached
    run(desk, performance("S1", {"AAA": 0.3, "BBB": -0.5}, end=2))
    (second,) = of(run(desk, targets(2, {"S1": "1"})), "RebalanceProposed")
    assert [(o["symbol"], o["side"], o["qty"]) for o in second["orders"]] == [
        ("AAA", "SELL", "400.000000000"),
        ("BBB", "SELL", "500.000000000"),
    ]
    # AAA 0.7 -> 0.3, then BBB short 0.5: gross 0.8, every symbol within 0.6.
    events = run(desk, approve(second["rebalance_id"]), POLICY, risk_screen())
    assert kinds(events) == ["PlaceOrder", "PlaceOrder"]


def test_a_buy_worsening_a_breached_exposure_is_refused_with_the_value_before() -> None:
    desk = Desk()
    for record in (performance("S1", {"AAA": 0.7}), price("AAA", "100")):
        run(desk, record)
    (first,) = of(run(desk, targets(1, {"S1": "1"})), "RebalanceProposed")
    run(desk, approve(first["rebalance_id"]))
    run(desk, update(first["orders"][0], 0))
    run(desk, performance("S1", {"AAA": 0.75}, end=2))
    (second,) = of(run(desk, targets(2, {"S1": "1"})), "RebalanceProposed")
    events = run(desk, approve(second["rebalance_id"]), POLICY, risk_screen())
    assert of(events, "OrderRejected")[0]["reason"] == (
        "AAA: pre-trade risk check: symbol_exposure:AAA would be 0.7500 > limit 0.6000, 0.7000 before it"
    )


# --- state ----------------------------------------------------------------------------------------------------------


def _encoded(events: list[Event]) -> list[bytes]:
    return [get_registry().encode(schema, {**record, "ts_ingest": 0}) for _, _, schema, record in events]


@pytest.mark.parametrize("flatten", [False, True], ids=["halt", "halt-and-flatten"])
def test_the_desk_round_trips_through_json_with_the_halt(flatten: bool) -> None:
    desk = filled_desk()
    rebalance_id = of(run(desk, targets(2, {"S1": "1"})), "RebalanceProposed")[0]["rebalance_id"]
    run(desk, halt("halted for the test", flatten=flatten))
    restored = Desk.from_json(json.loads(json.dumps(desk.to_json())))
    assert (restored.halted, restored.halt_reason) == (True, "halted for the test")
    assert restored.to_json() == desk.to_json()
    approval = approve(rebalance_id)
    assert _encoded(run(restored, approval)) == _encoded(run(desk, approval))
    assert _encoded(run(restored, resume())) == _encoded(run(desk, resume()))
    assert Desk.from_json(json.loads(json.dumps(restored.to_json()))).halted is False


def test_a_state_saved_before_the_kill_switch_existed_is_not_halted() -> None:
    saved = ready_desk().to_json()
    del saved["halted"], saved["halt_reason"]
    restored = Desk.from_json(saved)
    assert (restored.halted, restored.halt_reason) == (False, "")
