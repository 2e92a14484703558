"""The execution desk (pure): targets wait for what they need, a proposal's approval sends its orders once, fills
and corrections become positions per strategy, and what no strategy owns is never traded."""

from __future__ import annotations

from typing import Any

import pytest

from core.events import deterministic_event_id
from streams.execution.desk import Desk, Policy, decide, missing, rebalance_id_of
from streams.execution.positions import UNATTRIBUTED
from streams.execution.rebalance import Rules

POLICY = Policy("paper", "simulated", Rules(allow_short=True), auto_approve=False)
ALPACA = Policy("paper", "alpaca", Rules(), auto_approve=False)


def _id(*parts: str | int) -> str:
    return deterministic_event_id("test", *parts)


def performance(sid: str, positions: dict[str, float], end: int = 1) -> dict[str, Any]:
    return {"kind": "performance", "event_id": _id("perf", sid, end), "ts_event": end, "strategy_id": sid,
            "end": end, "positions": positions}  # fmt: skip


def price(symbol: str, close: str, asset_class: str = "EQUITY") -> dict[str, Any]:
    return {"kind": "price", "event_id": _id("price", symbol, close), "ts_event": 1, "symbol": symbol,
            "close": close, "asset_class": asset_class}  # fmt: skip


def targets(n: int, weights: dict[str, str], capital: str = "100000") -> dict[str, Any]:
    return {"kind": "targets", "event_id": _id("targets", n), "ts_event": 10 + n,
            "weights": [{"strategy_id": s, "weight": w} for s, w in weights.items()], "capital": capital,
            "buying_power": None}  # fmt: skip


def approve(rebalance_id: str, n: int = 0) -> dict[str, Any]:
    return {"kind": "approve", "event_id": _id("approve", rebalance_id, n), "ts_event": 50,
            "rebalance_id": rebalance_id, "approved_by": "tester"}  # fmt: skip


def update(client_order_id: str, symbol: str, side: str, filled: str, avg: str | None, n: int) -> dict[str, Any]:
    return {"kind": "update", "event_id": _id("update", client_order_id, n), "ts_event": 60 + n,
            "client_order_id": client_order_id, "order_id": f"o-{client_order_id}", "symbol": symbol, "side": side,
            "filled_qty": filled, "filled_avg_price": avg}  # fmt: skip


def ready_desk() -> Desk:
    desk = Desk()
    for record in (
        performance("S1", {"AAA": 0.5}),
        performance("S2", {"AAA": 0.25, "FXX": -0.1}),
        price("AAA", "100"),
        price("FXX", "2", "FX"),
    ):
        assert decide(desk, record, POLICY) == []
    return desk


def schemas(events: list[tuple[str, str, str, dict[str, Any]]]) -> list[str]:
    return [schema.rsplit(".", 1)[1] for _, _, schema, _ in events]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([], ["positions of S1", "positions of S2"]),
        ([performance("S1", {"AAA": 0.5})], ["price of AAA", "positions of S2"]),
        ([performance("S1", {"AAA": 0.5}), performance("S2", {}), price("AAA", "1")], []),
    ],
    ids=["nothing-known", "one-strategy-no-price", "complete"],
)
def test_targets_need_every_weighted_strategys_positions_and_prices(
    inputs: list[dict[str, Any]], expected: list[str]
) -> None:
    desk = Desk()
    for record in inputs:
        decide(desk, record, POLICY)
    assert missing(desk, targets(1, {"S1": "0.5", "S2": "0.5"})) == expected


def test_targets_that_wait_are_proposed_by_the_input_that_completes_them() -> None:
    desk = Desk()
    assert decide(desk, targets(1, {"S1": "1"}), POLICY) == []
    assert decide(desk, performance("S1", {"AAA": 0.5}), POLICY) == []
    events = decide(desk, price("AAA", "100"), POLICY)
    assert schemas(events) == ["RebalanceProposed"]
    proposal = events[0][3]
    assert proposal["rebalance_id"] == rebalance_id_of("paper", _id("targets", 1))
    assert [(o["symbol"], o["side"], o["qty"]) for o in proposal["orders"]] == [("AAA", "BUY", "500.000000000")]


@pytest.mark.parametrize(
    ("policy", "orders", "refused"),
    [
        (POLICY, [("FXX", "SELL"), ("AAA", "BUY")], []),
        (ALPACA, [("AAA", "BUY")], ["FXX: the broker does not trade FX; the strategies stay on the simulated book"]),
    ],
    ids=["simulated-trades-everything", "alpaca-trades-no-fx"],
)
def test_a_proposal_nets_strategies_per_symbol_and_says_what_its_broker_cannot_trade(
    policy: Policy, orders: list[tuple[str, str]], refused: list[str]
) -> None:
    desk = ready_desk()
    proposal = decide(desk, targets(1, {"S1": "0.5", "S2": "0.5"}), policy)[0][3]
    assert [(o["symbol"], o["side"]) for o in proposal["orders"]] == orders
    aaa = next(o for o in proposal["orders"] if o["symbol"] == "AAA")
    assert aaa["qty"] == "375.000000000"  # 0.5 x 100000 x (0.5 + 0.25) / 100
    assert {a["strategy_id"]: a["qty"] for a in aaa["allocations"]} == {"S1": "250.000000000", "S2": "125.000000000"}
    assert [r["reason"] for r in proposal["refused"]] == refused
    assert proposal["broker"] == policy.broker


def test_approval_sends_the_orders_once_and_refuses_superseded_or_unknown_rebalances() -> None:
    desk = ready_desk()
    first = decide(desk, targets(1, {"S1": "0.5", "S2": "0.5"}), POLICY)[0][3]["rebalance_id"]
    second = decide(desk, targets(2, {"S1": "1"}), POLICY)[0][3]["rebalance_id"]
    stale = decide(desk, approve(first), POLICY)
    assert schemas(stale) == ["AlertRaised"] and "superseded" in stale[0][3]["message"]
    unknown = decide(desk, approve("nope"), POLICY)
    assert "is not known" in unknown[0][3]["message"]
    sent = decide(desk, approve(second), POLICY)
    assert schemas(sent) == ["PlaceOrder"]  # S1 alone: 1 x 100000 x 0.5 / 100 of AAA
    assert (sent[0][3]["symbol"], sent[0][3]["qty"], sent[0][3]["causation_id"]) == ("AAA", "500.000000000", second)
    again = decide(desk, approve(second, n=1), POLICY)
    assert schemas(again) == ["AlertRaised"] and again[0][3]["kind"] == "rebalance.approved_again"


def test_fills_in_any_order_become_positions_per_strategy_and_a_correction_goes_to_no_strategy() -> None:
    desk = ready_desk()
    rebalance = decide(desk, targets(1, {"S1": "0.5", "S2": "0.5"}), POLICY)[0][3]["rebalance_id"]
    place = next(e[3] for e in decide(desk, approve(rebalance), POLICY) if e[3]["symbol"] == "AAA")
    cid = place["client_order_id"]
    full = decide(desk, update(cid, "AAA", "BUY", "375", "100", 2), POLICY)  # the final state first
    assert {e[3]["strategy_id"]: e[3]["qty"] for e in full} == {"S1": "250.000000000", "S2": "125.000000000"}
    assert decide(desk, update(cid, "AAA", "BUY", "100", "100", 1), POLICY) == []  # a late partial: nothing twice
    correction = {"kind": "correction", "event_id": _id("corr"), "ts_event": 70, "symbol": "AAA", "qty_change": "1",
                  "price": "100"}  # fmt: skip
    changed = decide(desk, correction, POLICY)
    assert [(e[3]["strategy_id"], e[3]["qty"], e[3]["cause"]) for e in changed] == [(UNATTRIBUTED, "1", "correction")]
    # A new rebalance to the same targets trades nothing: the unattributed share is the account holder's.
    proposal = decide(desk, targets(3, {"S1": "0.5", "S2": "0.5"}), POLICY)[0][3]
    assert [o["symbol"] for o in proposal["orders"]] == ["FXX"]  # AAA is where the targets want it; FXX never filled
