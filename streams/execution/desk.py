"""The execution desk of one account: the rebalancer and the position tracker over one state, so the allocations an
order is registered with are in the book before the order can be sent, let alone filled.

Inputs (compact records, in the order of the agent's one-partition inputs topic):

- ``targets`` (a ``PortfolioTargetsSet``): a rebalance is planned against the current holdings
  (``rebalance.plan``) and proposed as ``RebalanceProposed``; with ``auto_approve`` it is approved at once. Targets
  whose strategies' positions or prices the desk has not seen yet (its inputs come from several topics, in no
  guaranteed order between them) wait, and are planned by the input that completes them.
- ``approve`` (an ``ApproveRebalance``): the proposal's orders become ``PlaceOrder`` commands (their allocations
  registered in the tracker first) and its refusals ``OrderRejected`` events. Approving a proposal that a newer one
  superseded, or an unknown one, is refused with a WARNING alert; approving twice sends nothing twice.
- ``update`` (an ``OrderUpdated``): the tracker folds the order's cumulative state (``positions.apply_update``) and
  each strategy whose holding moved gets a ``PositionChanged``.
- ``correction`` (a ``PositionCorrected`` from reconciliation): booked to ``UNATTRIBUTED``, published the same way.
- ``performance``, ``price``, ``account``: the strategies' latest positions, the latest daily close and asset
  class per symbol, the buying power.
- ``halt`` / ``resume`` (``HaltTrading`` / ``ResumeTrading``, from a person or the risk monitor): the kill switch,
  answered by ``TradingHalted`` / ``TradingResumed`` and an alert. While it is on, an approval sends nothing: each
  order is refused with the halt's reason. A halt with flatten sends, at once, the orders that close every position
  the strategies hold (reconciliation's ``UNATTRIBUTED`` holdings excepted, as always).

Between an approval and the commands, the pre-trade risk screen (``screen``, from ``streams.risk.limits``) refuses
each order that would breach a risk limit, with the limit and the numbers; the others go.

Pure: no I/O; the state is JSON. Every output's id derives from its input's id, so a replay decides the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import numpy as np

from core.events import alert_record, common_fields, deterministic_event_id
from streams.execution.positions import (
    UNATTRIBUTED,
    Book,
    Fill,
    apply_correction,
    apply_update,
    quantities,
    register,
)
from streams.execution.rebalance import (
    Allocation,
    Plan,
    PlannedOrder,
    Rules,
    StrategyTarget,
    Venue,
    plan,
)
from streams.risk.limits import Book as RiskBook
from streams.risk.limits import Screened, Trade, refusal_reason

SOURCE = "rebalancer"
TRACKER = "position-tracker"
PROPOSED_SCHEMA = "tidemark.orders.RebalanceProposed"
PLACE_SCHEMA = "tidemark.orders.PlaceOrder"
REJECTED_SCHEMA = "tidemark.orders.OrderRejected"
CHANGED_SCHEMA = "tidemark.orders.PositionChanged"
ALERT_SCHEMA = "tidemark.risk.AlertRaised"
HALTED_SCHEMA = "tidemark.risk.TradingHalted"
RESUMED_SCHEMA = "tidemark.risk.TradingResumed"
KEPT_IDS = 64
"""Ids of superseded and of approved rebalances remembered, to say which an approval names."""
BROKER_TRADES = {"alpaca": frozenset({"EQUITY"}), "simulated": frozenset({"EQUITY", "FX", "FUTURE", "UNKNOWN"})}
"""Asset classes each broker trades: Alpaca no FX and no CME futures; the simulated book everything."""

Event = tuple[str, str, str, dict[str, Any]]
"""(catalogue topic, key, schema, record) of an output."""
Screen = Callable[[Sequence[Trade], RiskBook], list[Screened]]
"""The pre-trade risk screen: each trade onto the book, refused or not (``streams.risk.limits.screen`` with the
account's limits and VaR)."""


@dataclass(frozen=True)
class Policy:
    account: str
    broker: str
    """alpaca or simulated."""
    rules: Rules
    auto_approve: bool


@dataclass
class Desk:
    tracker: Book = field(default_factory=Book)
    strategies: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per strategy: its latest positions (signed fractions of its capital)."""
    positions_end: dict[str, int] = field(default_factory=dict)
    prices: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Per symbol: (latest daily close, asset class)."""
    buying_power: str | None = None
    proposal: dict[str, Any] | None = None
    """The newest RebalanceProposed record: the only one an approval may send (a state of one account's size, not of
    every proposal's: the table writes it after every input)."""
    superseded: list[str] = field(default_factory=list)
    approved: list[str] = field(default_factory=list)
    pending: dict[str, Any] | None = None
    """Targets waiting for a weighted strategy's positions or a price: planned as soon as they arrive."""
    halted: bool = False
    halt_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.to_json(),
            "strategies": self.strategies,
            "positions_end": self.positions_end,
            "prices": {s: list(p) for s, p in self.prices.items()},
            "buying_power": self.buying_power,
            "proposal": self.proposal,
            "superseded": self.superseded,
            "approved": self.approved,
            "pending": self.pending,
            "halted": self.halted,
            "halt_reason": self.halt_reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Desk:
        if not data:
            return cls()
        return cls(
            Book.from_json(data["tracker"]),
            {sid: dict(p) for sid, p in data["strategies"].items()},
            dict(data["positions_end"]),
            {s: (p[0], p[1]) for s, p in data["prices"].items()},
            data["buying_power"],
            data["proposal"],
            list(data["superseded"]),
            list(data["approved"]),
            data["pending"],
            data.get("halted", False),
            data.get("halt_reason", ""),
        )


def compact(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an input event the desk needs, JSON-ready."""
    base = {"kind": kind, "event_id": record["event_id"], "ts_event": record["ts_event"]}
    if kind == "targets":
        weights = [{"strategy_id": w["strategy_id"], "weight": w["weight"]} for w in record["weights"]]
        return {**base, "weights": weights, "capital": record["capital"], "buying_power": record["buying_power"]}
    if kind == "approve":
        return {**base, "rebalance_id": record["rebalance_id"], "approved_by": record["approved_by"]}
    if kind == "update":
        names = ("client_order_id", "order_id", "symbol", "side", "filled_qty", "filled_avg_price")
        return {**base, **{n: record[n] for n in names}}
    if kind == "correction":
        return {**base, "symbol": record["symbol"], "qty_change": record["qty_change"], "price": record["price"]}
    if kind == "performance":
        return {**base, "strategy_id": record["strategy_id"], "end": record["period_end_ns"], **_positions(record)}
    if kind == "price":
        return {
            **base,
            "symbol": record["symbol"],
            "close": repr(record["close"]),
            "asset_class": record["asset_class"],
            "ts": record["start_ns"],
        }
    if kind == "account":
        return {**base, "account_id": record["account_id"], "buying_power": record["buying_power"]}
    if kind in ("halt", "resume"):
        extra = {"flatten": record["flatten"], "breaches": list(record["breaches"])} if kind == "halt" else {}
        return {**base, "reason": record["reason"], "requested_by": record["requested_by"], **extra}
    raise ValueError(f"no input kind {kind!r}")


def _positions(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"positions": {str(k): float(v) for k, v in record["positions"].items()}}


def decide(desk: Desk, record: Mapping[str, Any], policy: Policy, screen: Screen | None = None) -> list[Event]:
    """Apply one input to ``desk``; the events it causes. ``screen``: the pre-trade risk check (None: none)."""
    kind = record["kind"]
    if kind == "halt":
        return _halt(desk, record, policy)
    if kind == "resume":
        return _resume(desk, record, policy)
    if kind in ("performance", "price", "account"):
        if kind == "performance":
            sid = record["strategy_id"]
            if record["end"] >= desk.positions_end.get(sid, -1):
                desk.strategies[sid] = dict(record["positions"])
                desk.positions_end[sid] = record["end"]
        elif kind == "price":
            desk.prices[record["symbol"]] = (record["close"], record["asset_class"])
        else:
            desk.buying_power = record["buying_power"]
        if desk.pending is not None and not missing(desk, desk.pending):
            targets, desk.pending = desk.pending, None
            return _propose(desk, targets, policy, screen)
        return []
    if kind == "targets":
        if missing(desk, record):
            desk.pending = dict(record)  # newer targets replace older waiting ones
            return []
        desk.pending = None
        return _propose(desk, record, policy, screen)
    if kind == "approve":
        return _approve(desk, record, policy, screen)
    if kind == "update":
        fills = apply_update(
            desk.tracker,
            record["client_order_id"],
            record["symbol"],
            record["side"],
            Decimal(record["filled_qty"]),
            None if record["filled_avg_price"] is None else Decimal(record["filled_avg_price"]),
            record["order_id"],
        )
        return _changes(desk, record, policy, fills, "fill")
    if kind == "correction":
        price = Decimal(record["price"]) if record["price"] is not None else Decimal(0)
        fill = apply_correction(desk.tracker, record["symbol"], UNATTRIBUTED, Decimal(record["qty_change"]), price)
        return _changes(desk, record, policy, [fill], "correction")
    raise ValueError(f"no input kind {kind!r}")


def missing(desk: Desk, targets: Mapping[str, Any]) -> list[str]:
    """What the desk must know before it can plan ``targets``: each weighted strategy's positions (planning without
    them would close what the strategy holds) and a price for each symbol they hold."""
    found = []
    for weight in targets["weights"]:
        positions = desk.strategies.get(weight["strategy_id"])
        if positions is None:
            found.append(f"positions of {weight['strategy_id']}")
            continue
        found += [f"price of {s}" for s in positions if s not in desk.prices]
    return found


def venue_of(desk: Desk, broker: str) -> dict[str, Venue]:
    """What the broker trades, by the asset class of each priced symbol."""
    trades = BROKER_TRADES[broker]
    return {
        symbol: Venue(asset_class in trades, True, "EQUITY" if asset_class == "UNKNOWN" else asset_class)
        for symbol, (_, asset_class) in desk.prices.items()
    }


def rebalance_id_of(account: str, targets_id: str) -> str:
    return deterministic_event_id("rebalance", account, targets_id)


def _propose(desk: Desk, record: Mapping[str, Any], policy: Policy, screen: Screen | None) -> list[Event]:
    targets = [
        StrategyTarget(w["strategy_id"], Decimal(w["weight"]), desk.strategies.get(w["strategy_id"], {}))
        for w in record["weights"]
    ]
    power = record["buying_power"] or desk.buying_power
    rebalance_id = rebalance_id_of(policy.account, record["event_id"])
    found = plan(
        rebalance_id,
        targets,
        Decimal(record["capital"]),
        {s: Decimal(p) for s, (p, _) in desk.prices.items()},
        # What reconciliation booked to no strategy is the account holder's, not the portfolio's: never traded.
        {k: q for k, q in quantities(desk.tracker).items() if k[0] != UNATTRIBUTED},
        venue_of(desk, policy.broker),
        policy.rules,
        None if power is None else Decimal(power),
    )
    proposal = _proposal(found, record, policy, power)
    if desk.proposal is not None:
        desk.superseded = [*desk.superseded, desk.proposal["rebalance_id"]][-KEPT_IDS:]
    desk.proposal = proposal
    events: list[Event] = [("orders.rebalances", policy.account, PROPOSED_SCHEMA, proposal)]
    if policy.auto_approve:
        events += _send(desk, proposal, policy, record, "auto", screen)
    return events


def _proposal(found: Plan, record: Mapping[str, Any], policy: Policy, power: str | None) -> dict[str, Any]:
    return {
        **common_fields(SOURCE, record["ts_event"], record["event_id"], found.rebalance_id),
        "account_id": policy.account,
        "rebalance_id": found.rebalance_id,
        "targets_id": record["event_id"],
        "capital": record["capital"],
        "buying_power": power,
        "orders": [_planned(o) for o in found.orders],
        "refused": [
            {"symbol": r.symbol, "strategy_ids": list(r.strategy_ids), "reason": r.reason} for r in found.refusals
        ],
        "skipped": [
            {"symbol": s.symbol, "strategy_ids": list(s.strategy_ids), "reason": s.reason} for s in found.skipped
        ],
        "auto_approved": policy.auto_approve,
        "broker": policy.broker,
    }


def _planned(order: PlannedOrder) -> dict[str, Any]:
    return {
        "event_id": order.event_id,
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side,
        "qty": str(order.qty),
        "price": str(order.price),
        "notional": str(order.notional.quantize(Decimal("0.01"))),
        "allocations": [{"strategy_id": a.strategy_id, "qty": str(a.qty)} for a in order.allocations],
    }


def _approve(desk: Desk, record: Mapping[str, Any], policy: Policy, screen: Screen | None) -> list[Event]:
    rebalance_id = record["rebalance_id"]
    proposal = desk.proposal
    if proposal is None or rebalance_id != proposal["rebalance_id"]:
        why = "was superseded by a newer proposal" if rebalance_id in desk.superseded else "is not known"
        return [_alert(policy, record, "rebalance.refused", "WARNING", f"rebalance {rebalance_id} {why}: nothing sent")]
    if rebalance_id in desk.approved:
        return [_alert(policy, record, "rebalance.approved_again", "INFO", f"rebalance {rebalance_id} was sent before")]
    return _send(desk, proposal, policy, record, record["approved_by"], screen)


def _send(
    desk: Desk,
    proposal: Mapping[str, Any],
    policy: Policy,
    trigger: Mapping[str, Any],
    approved_by: str,
    screen: Screen | None,
) -> list[Event]:
    """The proposal's orders as commands, registered in the tracker first; its refusals, the orders the kill switch
    holds back and those the pre-trade screen refuses as ``OrderRejected``."""
    rebalance_id = proposal["rebalance_id"]
    if desk.halted:
        refused = [
            _rejected(
                policy,
                trigger,
                rebalance_id,
                o["symbol"],
                _strategies(o),
                o["client_order_id"],
                f"trading halted (kill switch): {desk.halt_reason}; nothing sent",
                "kill switch",
            )
            for o in proposal["orders"]
        ]
        message = f"rebalance {rebalance_id} not sent: trading is halted ({desk.halt_reason})"
        return [_alert(policy, trigger, "rebalance.halted", "WARNING", message), *refused]
    desk.approved = [*desk.approved, rebalance_id][-KEPT_IDS:]
    events: list[Event] = []
    sendable = list(proposal["orders"])
    if screen is not None and sendable:
        verdicts = screen([_trade(o) for o in sendable], _risk_book(desk, Decimal(proposal["capital"])))
        refused_keys = {v.trade.key: v for v in verdicts if v.refused_by}
        for order in sendable:
            verdict = refused_keys.get(order["client_order_id"])
            if verdict is not None:
                reason = f"{order['symbol']}: {refusal_reason(verdict)}"
                events.append(
                    _rejected(
                        policy,
                        trigger,
                        rebalance_id,
                        order["symbol"],
                        _strategies(order),
                        order["client_order_id"],
                        reason,
                        "pre-trade risk",
                    )
                )
                events.append(
                    _alert(
                        policy,
                        trigger,
                        "risk.pre_trade_refusal",
                        "WARNING",
                        reason,
                        deterministic_event_id("pre-trade", rebalance_id, order["symbol"]),
                    )
                )
        sendable = [o for o in sendable if o["client_order_id"] not in refused_keys]
    for order in sendable:
        allocations = [Allocation(a["strategy_id"], Decimal(a["qty"])) for a in order["allocations"]]
        register(
            desk.tracker, order["client_order_id"], order["symbol"], order["side"], Decimal(order["qty"]), allocations
        )
        strategies = sorted(a.strategy_id for a in allocations)
        events.append(
            (
                "orders.intents",
                policy.account,
                PLACE_SCHEMA,
                {
                    **common_fields(SOURCE, trigger["ts_event"], rebalance_id, order["event_id"]),
                    "account_id": policy.account,
                    "client_order_id": order["client_order_id"],
                    "symbol": order["symbol"],
                    "side": order["side"],
                    "qty": order["qty"],
                    "notional": None,
                    "order_type": "MARKET",
                    "time_in_force": "DAY",
                    "limit_price": None,
                    "stop_price": None,
                    "extended_hours": False,
                    "strategy_id": strategies[0] if len(strategies) == 1 else None,
                    "reason": f"rebalance {rebalance_id} approved by {approved_by}",
                },
            )
        )
    events += [
        _rejected(policy, trigger, rebalance_id, r["symbol"], r["strategy_ids"], "", r["reason"], "rebalancer")
        for r in proposal["refused"]
    ]
    return events


def _strategies(order: Mapping[str, Any]) -> list[str]:
    return sorted(a["strategy_id"] for a in order["allocations"])


def _rejected(
    policy: Policy,
    trigger: Mapping[str, Any],
    rebalance_id: str,
    symbol: str,
    strategy_ids: list[str],
    client_order_id: str,
    reason: str,
    refused_by: str,
) -> Event:
    # One refusal per (rebalance, symbol, approval): a later approval after a resume is a new decision.
    event_id = deterministic_event_id(
        "order-rejected", rebalance_id, symbol, *([trigger["event_id"]] if refused_by == "kill switch" else [])
    )
    return (
        "orders.intents",
        policy.account,
        REJECTED_SCHEMA,
        {
            **common_fields(SOURCE, trigger["ts_event"], rebalance_id, event_id),
            "account_id": policy.account,
            "symbol": symbol,
            "client_order_id": client_order_id,
            "rebalance_id": rebalance_id,
            "strategy_ids": strategy_ids,
            "reason": reason,
            "refused_by": refused_by,
        },
    )


def _trade(order: Mapping[str, Any]) -> Trade:
    """An order's change of market value per strategy, at the price it was planned with (allocations are signed)."""
    price = float(order["price"])
    return Trade(
        order["client_order_id"],
        order["symbol"],
        {a["strategy_id"]: float(a["qty"]) * price for a in order["allocations"]},
    )


def _risk_book(desk: Desk, equity: Decimal) -> RiskBook:
    """The tracker's holdings at the latest closes, as the risk screen sees them (unattributed ones included: they
    are the account's risk too)."""
    held = quantities(desk.tracker)
    symbols = tuple(sorted({s for _, s in held}))
    strategies = tuple(sorted({sid for sid, _ in held}))
    exposures = np.zeros((len(symbols), len(strategies)))
    for (sid, symbol), qty in held.items():
        price = desk.prices.get(symbol)
        exposures[symbols.index(symbol), strategies.index(sid)] = float(qty) * (float(price[0]) if price else 0.0)
    return RiskBook(symbols, strategies, exposures, float(equity))


def _halt(desk: Desk, record: Mapping[str, Any], policy: Policy) -> list[Event]:
    """The kill switch on (again: the newest reason), and with flatten the orders closing every strategy's holdings,
    sent at once: a halt is the approval of getting out."""
    desk.halted, desk.halt_reason = True, record["reason"]
    events: list[Event] = []
    flatten_id = ""
    if record["flatten"]:
        flatten_id = deterministic_event_id("flatten", policy.account, record["event_id"])
        held = {k: q for k, q in quantities(desk.tracker).items() if k[0] != UNATTRIBUTED}
        found = plan(
            flatten_id,
            [],
            Decimal(0),
            {s: Decimal(p) for s, (p, _) in desk.prices.items()},
            held,
            venue_of(desk, policy.broker),
            replace(policy.rules, no_trade_band=Decimal(0), allow_short=True),
        )
        proposal = {**_proposal(found, {**record, "capital": "0"}, replace(policy, auto_approve=True), None)}
        events.append(("orders.rebalances", policy.account, PROPOSED_SCHEMA, proposal))
        if desk.proposal is not None:
            desk.superseded = [*desk.superseded, desk.proposal["rebalance_id"]][-KEPT_IDS:]
        desk.proposal = None
        halted, desk.halted = desk.halted, False  # the closing orders themselves are not held back
        events += _send(desk, proposal, policy, record, f"kill switch ({record['requested_by']})", None)
        desk.halted = halted
    answer_id = deterministic_event_id("trading-halted", record["event_id"])
    events.append(
        (
            "risk.controls",
            policy.account,
            HALTED_SCHEMA,
            {
                **common_fields(SOURCE, record["ts_event"], record["event_id"], answer_id),
                "account_id": policy.account,
                "reason": record["reason"],
                "flatten": record["flatten"],
                "flatten_rebalance_id": flatten_id,
                "requested_by": record["requested_by"],
                "breaches": record["breaches"],
                "command_id": record["event_id"],
            },
        )
    )
    closing = " and every strategy position is being closed" if record["flatten"] else ""
    message = f"kill switch on for {policy.account}: no new orders{closing} ({record['reason']})"
    events.append(_alert(policy, record, "risk.kill_switch", "CRITICAL", message))
    return events


def _resume(desk: Desk, record: Mapping[str, Any], policy: Policy) -> list[Event]:
    was = desk.halt_reason
    desk.halted, desk.halt_reason = False, ""
    answer_id = deterministic_event_id("trading-resumed", record["event_id"])
    message = f"kill switch off for {policy.account}: approvals send orders again (it was on for: {was or 'nothing'})"
    return [
        (
            "risk.controls",
            policy.account,
            RESUMED_SCHEMA,
            {
                **common_fields(SOURCE, record["ts_event"], record["event_id"], answer_id),
                "account_id": policy.account,
                "reason": record["reason"],
                "requested_by": record["requested_by"],
                "command_id": record["event_id"],
            },
        ),
        _alert(policy, record, "risk.kill_switch_cleared", "INFO", message),
    ]


def _changes(desk: Desk, record: Mapping[str, Any], policy: Policy, fills: list[Fill], cause: str) -> list[Event]:
    events: list[Event] = []
    for fill in fills:
        holding = desk.tracker.holdings.get((fill.strategy_id, fill.symbol))
        qty = holding.qty if holding is not None else Decimal(0)
        avg = holding.avg_price if holding is not None else None
        event_id = deterministic_event_id("position-changed", record["event_id"], fill.strategy_id, fill.symbol)
        events.append(
            (
                "positions",
                policy.account,
                CHANGED_SCHEMA,
                {
                    **common_fields(TRACKER, record["ts_event"], record["event_id"], event_id),
                    "account_id": policy.account,
                    "strategy_id": fill.strategy_id,
                    "symbol": fill.symbol,
                    "qty": str(qty),
                    "qty_change": str(fill.qty),
                    "price": None if cause == "correction" and not fill.price else str(fill.price),
                    "cash_change": str(-fill.cash),
                    "avg_price": None if avg is None else str(avg),
                    "realized_pnl": str(holding.realised if holding is not None else Decimal(0)),
                    "cause": cause,
                    "client_order_id": record.get("client_order_id", ""),
                    "order_id": record.get("order_id", ""),
                },
            )
        )
    return events


def _alert(
    policy: Policy, trigger: Mapping[str, Any], kind: str, severity: str, message: str, event_id: str | None = None
) -> Event:
    event_id = event_id or deterministic_event_id("execution-alert", kind, trigger["event_id"])
    details = {"rebalance_id": trigger.get("rebalance_id", "")}
    record = alert_record(
        SOURCE, trigger["ts_event"], trigger["event_id"], event_id, kind, severity, policy.account, message, details
    )
    return ("alerts", policy.account, ALERT_SCHEMA, record)
