"""The portfolio agent: the live strategies' weights for one account, re-optimised on every rotation.

Its inputs (candidates, transitions, per-session performance, the broker's account reports) are keyed by strategy
or account over many partitions, and a portfolio needs them all: a forwarding agent per input topic sends a compact
record of each to one internal topic of one partition keyed by the account (``<app id>-portfolio-inputs``), whose
agent keeps the account's ``Book`` in the ``portfolio-book`` table. The order of that topic is the agent's input:
replayed, it decides the same.

- A transition into or out of LIVE (or a change of which strategies can be weighed: a new candidate, enough
  sessions) re-optimises at once: ``PortfolioTargetsSet`` on ``portfolio.targets`` (the rebalance proposal, with the
  reason and the inputs' ids) and an ``AlertRaised`` (``portfolio.rotation`` or ``portfolio.rebalance``).
- Fewer than ``min_strategies`` weighable strategies: no targets, the previous ones stand; an INFO alert
  (``portfolio.too_few_strategies``) says so once per change of the live set.
- A timer every ``refresh_every_s`` (in NYSE hours by default) puts a refresh on the inputs topic. The refresh
  publishes the strategies' correlation matrix as a ``CorrelationSnapshotTaken`` of universe ``strategies:<account>``
  (the sink caches it in Redis and PostgreSQL like every snapshot: stream processors write no Redis), raises
  ``strategy.correlation_breach`` for each new pair of held strategies above the threshold, and re-optimises,
  publishing only when a weight moved by more than ``rebalance_band``.
- A numerical failure that even HRP cannot absorb is a WARNING alert (``portfolio.optimisation_failed``), never a
  crash. Undecodable inputs go to ``dlq``.

Idempotency under at least once: each input that produced events is remembered in the table with those events'
bytes; delivered again, it gets them again and is not decided again. Every output's id comes from the triggering
input's id and the account.

The inputs topic is the agent's input log, refreshes included (the timer only appends one, its wall-clock time as
data): the agent reads no clock itself, so it decides the same outputs again from that log. ``install(...,
forward=False)`` (``tidemark.rerun``) runs the agent on a copy of that log, without the forwarders and the timer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any

import faust
import numpy as np

from core.events import alert_record, common_fields, deterministic_event_id, now_ns
from core.sessions import Market, is_open
from core.settings import Settings
from streams.agents import RAW, Event, agents_app_id, answer_once, input_log, install_forwarders
from streams.portfolio.book import (
    Book,
    Targets,
    aligned_returns,
    apply_account,
    apply_candidate,
    apply_performance,
    apply_transition,
    breaches,
    compact,
    constraints_of,
    correlation,
    eligible,
    live,
    moved,
    rotation,
    targets,
)
from streams.portfolio.optimiser import Constraints, Objective, TooFewStrategies, warm_up

log = logging.getLogger("tidemark.portfolio")

SOURCE = "portfolio-agent"
TARGETS_SCHEMA = "tidemark.portfolio.PortfolioTargetsSet"
ALERT_SCHEMA = "tidemark.risk.AlertRaised"
SNAPSHOT_SCHEMA = "tidemark.analytics.CorrelationSnapshotTaken"
INPUTS: dict[str, dict[str, str | None]] = {
    "strategies.candidates": {"tidemark.strategies.StrategyCandidateDiscovered": "candidate"},
    "strategies.lifecycle": {
        "tidemark.strategies.StrategyTransitioned": "transition",
        "tidemark.strategies.TransitionRejected": None,  # nothing moved
    },
    "strategies.performance": {"tidemark.strategies.StrategyPerformanceRecorded": "performance"},
    "broker.account": {"tidemark.broker.AccountReported": "account"},
}
"""Per input topic: its event types and the kind each is forwarded as (None: ignored)."""
PERIODS_PER_YEAR = 252
"""Performance events are per session (daily)."""
RECENT = 64
"""Triggers whose outputs are remembered: more than a redelivery can span (inputs since the last commit)."""
_METHOD = {
    Objective.MAX_SHARPE: "MAX_SHARPE",
    Objective.MIN_VOLATILITY: "MIN_VOLATILITY",
    Objective.EFFICIENT_RISK: "EFFICIENT_RISK",
    Objective.EFFICIENT_RETURN: "EFFICIENT_RETURN",
    Objective.HRP: "HRP",
}
_NUMERICAL = (ValueError, ArithmeticError, np.linalg.LinAlgError)


@dataclass(frozen=True)
class Policy:
    account: str
    objective: Objective
    constraints: Constraints
    capital: float
    lookback: int
    min_sessions: int
    band: float
    threshold: float


def policy_of(settings: Settings) -> Policy:
    p = settings.portfolio
    return Policy(
        p.account,
        Objective(p.objective),
        constraints_of(p.bounds, p.max_weight, p.min_strategies, PERIODS_PER_YEAR),
        p.capital,
        p.lookback_sessions,
        p.min_sessions,
        p.rebalance_band,
        p.correlation_threshold,
    )


def _weight(value: float) -> str:
    """Rounded down, so the weights' strings never sum above what the optimiser gave."""
    return str(Decimal(repr(value)).quantize(Decimal("1e-8"), ROUND_DOWN))


def _money(value: float) -> str:
    return str(Decimal(repr(value)).quantize(Decimal("0.01"), ROUND_HALF_EVEN))


def _alert(
    policy: Policy,
    trigger: Mapping[str, Any],
    kind: str,
    severity: str,
    message: str,
    details: Mapping[str, str],
    *extra: str,
    values: tuple[float | None, float | None] = (None, None),
) -> Event:
    event_id = deterministic_event_id("portfolio-alert", kind, trigger["event_id"], policy.account, *extra)
    record = alert_record(
        SOURCE,
        trigger["ts_event"],
        trigger["event_id"],
        event_id,
        kind,
        severity,
        policy.account,
        message,
        dict(details),
        values,
    )
    return ("alerts", policy.account, ALERT_SCHEMA, record)


def targets_record(
    found: Targets, policy: Policy, trigger: Mapping[str, Any], reason: str, buying_power: str | None
) -> dict[str, Any]:
    allocation = found.allocation
    if found.scaled:
        reason += f"; exposures scaled down to the buying power (capital {_money(found.capital)})"
    method = "HRP" if allocation.method == "hrp" else _METHOD.get(allocation.objective, "UNKNOWN")
    event_id = deterministic_event_id("portfolio-targets", trigger["event_id"], policy.account)
    return {
        **common_fields(SOURCE, trigger["ts_event"], trigger["event_id"], event_id),
        "account_id": policy.account,
        "method": method,
        "weights": [
            {"strategy_id": sid, "weight": _weight(w), "notional": _money(w * found.capital)}
            for sid, w in found.weights.items()
        ],
        "capital": _money(found.capital),
        "max_weight": repr(policy.constraints.max_weight),
        "min_strategies": policy.constraints.min_strategies,
        "lookback_days": found.sessions,
        "expected_return": found.expected_return,
        "expected_volatility": found.volatility,
        "expected_sharpe": found.sharpe,
        "objective": allocation.objective.value,
        "solver": allocation.method.upper(),
        "reason": reason + "".join(f"; fell back: {attempt}" for attempt in allocation.attempts),
        "buying_power": buying_power,
        "expected_sharpe_se": found.sharpe_se,
        "diversification_ratio": found.diversification_ratio,
        "exposures": [
            {"symbol": symbol, "weight": e, "notional": _money(e * found.capital)}
            for symbol, e in found.exposures.items()
        ],
        "inputs": found.inputs,
    }


def _optimised(book: Book, trigger: Mapping[str, Any], reason: str, policy: Policy, banded: bool) -> list[Event]:
    """The targets and their announcement; or why there are none."""
    account = book.account
    capital = float(account.equity) if account is not None else policy.capital
    buying_power = float(account.buying_power) if account is not None else None
    try:
        found = targets(
            book, policy.constraints, policy.objective, capital, buying_power, policy.lookback, policy.min_sessions
        )
    except TooFewStrategies as exc:
        if book.shortfall == live(book):
            return []
        book.shortfall = live(book)
        message = f"the portfolio stays as it was: {exc}"
        return [_alert(policy, trigger, "portfolio.too_few_strategies", "INFO", message, {"reason": reason})]
    except _NUMERICAL as exc:  # the optimiser falls back to HRP; this is what even HRP could not absorb
        log.exception("portfolio: optimisation failed for %s", trigger["event_id"])
        book.shortfall = None  # not for want of history: tried again at the next rotation or refresh, not per session
        message = f"the portfolio stays as it was: optimisation failed: {type(exc).__name__}: {exc}"
        return [_alert(policy, trigger, "portfolio.optimisation_failed", "WARNING", message, {"reason": reason})]
    if banded and not moved(book.weights, found.weights, policy.band):
        return []
    book.weights, book.shortfall = dict(found.weights), None
    record = targets_record(found, policy, trigger, reason, account.buying_power if account is not None else None)
    kind = "portfolio.rotation" if reason.startswith("rotation") else "portfolio.rebalance"
    weights = ", ".join(f"{w['strategy_id']} {float(w['weight']):.1%}" for w in record["weights"])
    return [
        ("portfolio.targets", policy.account, TARGETS_SCHEMA, record),
        _alert(
            policy,
            trigger,
            kind,
            "INFO",
            f"rebalance proposal ({reason}): {weights}",
            {"targets_id": record["event_id"], "reason": record["reason"]},
        ),
    ]


def _refreshed(book: Book, trigger: Mapping[str, Any], policy: Policy) -> list[Event]:
    """The strategies' correlation snapshot and the alerts for new breaches between held strategies."""
    ids = eligible(book, policy.min_sessions)
    returns = aligned_returns(book, ids, policy.lookback)
    if len(ids) < 2 or len(returns) < 2:
        return []
    found = correlation(returns)
    universe = f"strategies:{policy.account}"
    snapshot = {
        **common_fields(
            SOURCE,
            int(returns.index[-1]),
            trigger["event_id"],
            deterministic_event_id("portfolio-correlation", trigger["event_id"], policy.account),
        ),
        "universe": universe,
        "as_of_ns": int(returns.index[-1]),
        "timeframe": "1d",
        "window_bars": policy.lookback,
        "observations": found.sessions,
        "method": "PEARSON",
        "symbols": found.ids,
        "matrix": found.upper_triangle(),
        "average_correlation": found.average,
        "largest_eigenvalue_share": found.eigen_share,
        "diversification_ratio": found.diversification_ratio,
    }
    events: list[Event] = [("analytics.correlations", universe, SNAPSHOT_SCHEMA, snapshot)]
    current = breaches(found, list(book.weights), policy.threshold)
    for a, b, rho in current:
        if (a, b) not in book.breaches:
            events.append(
                _alert(
                    policy,
                    trigger,
                    "strategy.correlation_breach",
                    "WARNING",
                    f"held strategies {a} and {b} correlate at {rho:.2f} > {policy.threshold:g} "
                    f"over {found.sessions} sessions",
                    {"strategy_a": a, "strategy_b": b, "sessions": str(found.sessions)},
                    a,
                    b,
                    values=(policy.threshold, rho),
                )
            )
    book.breaches = [(a, b) for a, b, _ in current]
    return events


def _common_history_reached(book: Book, weighable: list[str], policy: Policy) -> str | None:
    """Why to try again a portfolio refused for too few common sessions, once the weighable strategies share enough.
    Their set need not change for that: each may have had its sessions, not yet the same ones (a strategy promoted
    before the runner's latest sessions of the others arrive)."""
    if len(weighable) < policy.constraints.min_strategies:
        return None
    common = len(aligned_returns(book, weighable, policy.lookback))
    return f"the weighable strategies share {common} sessions now" if common >= policy.min_sessions else None


def decide(book: Book, record: Mapping[str, Any], policy: Policy) -> list[Event]:
    """Apply one input to ``book``; the events it causes."""
    kind = record["kind"]
    reason: str | None = None
    if kind == "candidate":
        apply_candidate(book, record, PERIODS_PER_YEAR)
    elif kind == "transition":
        reason = rotation(record["strategy_id"], apply_transition(book, record))
    elif kind == "performance":
        apply_performance(book, record, policy.lookback)
    elif kind == "account":
        apply_account(book, record)
    now = eligible(book, policy.min_sessions)
    if reason is None and now != book.eligible and kind != "refresh":
        joined, left = sorted(set(now) - set(book.eligible)), sorted(set(book.eligible) - set(now))
        reason = "weighable strategies changed:" + "".join(
            f" {sign}{', '.join(ids)}" for sign, ids in (("+", joined), ("-", left)) if ids
        )
    book.eligible = now
    if reason is None and kind == "performance" and book.shortfall is not None:
        reason = _common_history_reached(book, now, policy)
    events = _refreshed(book, record, policy) if kind == "refresh" else []
    if kind == "refresh":
        return events + _optimised(book, record, "periodic refresh", policy, banded=True)
    if reason is None:
        return events
    return events + _optimised(book, record, reason, policy, banded=False)


def answer(
    entry: Mapping[str, Any] | None, record: Mapping[str, Any], policy: Policy
) -> tuple[dict[str, Any], list[tuple[str, str, bytes]], bool]:
    """The table entry after ``record``, the encoded events it causes (catalogue topic, key, value), and whether it
    was answered before (its recorded events, then, and the entry unchanged)."""

    def step(state: Any, record: Mapping[str, Any]) -> tuple[Any, list[Event]]:
        book = Book.from_json(state)
        events = decide(book, record, policy)
        return book.to_json(), events

    return answer_once(entry, record, step, RECENT, state_key="book")


def inputs_topic_name(settings: Settings) -> str:
    """Starts with the app id, so the context's topic prefix covers it."""
    return f"{agents_app_id(settings)}-portfolio-inputs"


def install(app: faust.App, settings: Settings, *, forward: bool = True) -> None:
    """The portfolio agents, their table and the refresh timer on ``app``; without ``forward``, the book's agent
    alone (no forwarders, no timer), folding an inputs topic filled by someone else (a re-run's copy of the live
    one)."""
    policy = policy_of(settings)
    account = policy.account
    every_s = settings.portfolio.refresh_every_s
    market_hours_only = settings.portfolio.market_hours_only
    pause_after = settings.portfolio.pause_after_targets
    inputs = input_log(app, inputs_topic_name(settings))

    @app.task
    async def prepare_optimiser() -> None:
        """A rotation's re-optimisation then takes milliseconds: without it the first one took 5.7 s in the demo."""
        warm_up(policy.objective)

    outputs = {name: app.topic(settings.topic(name), **RAW) for name in ("portfolio.targets", "alerts")}
    outputs["analytics.correlations"] = app.topic(settings.topic("analytics.correlations"), **RAW)
    table = app.Table(
        "portfolio-book", partitions=1, schema=faust.Schema(key_serializer="json", value_serializer="json")
    )
    published = 0

    def compact_input(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
        return compact(kind, record)

    if forward:
        install_forwarders(app, settings, inputs, INPUTS, "portfolio", account, compact_input)

    @app.agent(inputs, name="portfolio-book")
    async def keep_book(stream: faust.StreamT[bytes]) -> None:
        nonlocal published
        async for event in stream.events():
            record = json.loads(event.value)
            entry, events, again = answer(table.get(account), record, policy)
            if again:
                log.info("portfolio: input %s answered again, as recorded", record["event_id"])
            else:
                table[account] = entry
            for topic, key, value in events:
                await outputs[topic].send(key=key.encode(), value=value)
            published += sum(topic == "portfolio.targets" for topic, _, _ in events)
            if pause_after and published >= pause_after:
                await app.producer.flush()  # the table's changelog is written: the kill lands after it
                log.warning("portfolio agent: paused after %d targets (fault drill)", published)
                await app.sleep(3600 * 24)

    if not forward:
        return

    @app.timer(interval=every_s)
    async def refresh() -> None:
        """A refresh is an input like the others (its id from the period), so a replay decides it the same."""
        now = now_ns()
        if market_hours_only and not is_open(Market.NYSE, now):
            return
        period = now // int(every_s * 1e9)
        record = {"kind": "refresh", "event_id": deterministic_event_id("portfolio-refresh", account, period)}
        await inputs.send(key=account.encode(), value=json.dumps({**record, "ts_event": now}).encode())
