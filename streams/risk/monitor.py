"""The risk monitor of one account: its holdings marked to the latest prices, measured after every change, checked
against the limits, and what a breach sets off.

Inputs (compact records, in the order of the risk agent's one-partition inputs topic):

- ``position`` (a ``PositionChanged``): a strategy's quantity of a symbol. Measured.
- ``close`` (a daily ``BarClosed``): the symbol's return history (kept per symbol outside the book, in
  ``histories``) and its mark. Measured when the symbol is held.
- ``tick`` (a minute ``BarClosed``): the mark of a held symbol. Measured when ``measure_every_ns`` of market time
  passed since the last measurement, so a burst of ticks costs one measurement a minute, decided by market time
  (a replay measures at the same ticks).
- ``account`` (an ``AccountReported``): equity, its peak and the drawdown. Measured when it moved.
- ``performance`` (a ``StrategyPerformanceRecorded``): the drawdown of a strategy's own book.
- ``lifecycle`` (a ``StrategyTransitioned``): which strategies are Live, at which version.
- ``halted`` / ``resumed`` (``TradingHalted`` / ``TradingResumed``): the kill switch as the desk applied it.

A measurement is a ``RiskMeasured``. A limit breached now and not at the previous measurement raises an alert; a
new breach of an account limit turns the kill switch on (``HaltTrading``, with flatten if so set); a Live strategy
in breach of its own limits goes back to Paper (``TransitionStrategy``, caused by the measurement). A breach that
persists sets off nothing again: after a person resumes, the switch stays off until a limit is breached anew.

Pure: no I/O. Every output's id derives from its input's id.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from core.events import alert_record, common_fields, deterministic_event_id
from streams.risk.backtest import backtest
from streams.risk.history import History, Returns, aligned_returns, appended
from streams.risk.limits import Book, Check, Limits, checks
from streams.risk.measures import METHODS, BookRisk, RiskModel

SOURCE = "risk-monitor"
MEASURED_SCHEMA = "tidemark.risk.RiskMeasured"
HALT_SCHEMA = "tidemark.risk.HaltTrading"
TRANSITION_SCHEMA = "tidemark.strategies.TransitionStrategy"
ALERT_SCHEMA = "tidemark.risk.AlertRaised"
KEPT_DEMOTIONS = 256
KUPIEC_WINDOW = 100
"""Days of the held book's historical P&L each VaR forecast of the Kupiec test looks back on."""

Event = tuple[str, str, str, dict[str, Any]]


@dataclass(frozen=True)
class Policy:
    account: str
    limits: Limits
    method: str
    """VaR method and confidence the VaR limits are checked at."""
    level: float
    lookback: int
    min_observations: int
    paths: int
    seed: int
    measure_every_ns: int
    default_equity: float
    """Equity until the broker first reports the account."""
    halt_on_breach: bool
    flatten_on_breach: bool
    demote_on_breach: bool


@dataclass
class RiskBook:
    holdings: dict[str, dict[str, str]] = field(default_factory=dict)
    """strategy -> symbol -> quantity (decimal string), zero holdings removed."""
    marks: dict[str, list[float]] = field(default_factory=dict)
    """symbol -> [ts_ns, price]: the latest price seen."""
    equity: float | None = None
    peak_equity: float | None = None
    max_drawdown: float = 0.0
    strategy_drawdowns: dict[str, float] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    """Live strategies and their lifecycle version (what a demotion command must expect)."""
    versions: dict[str, int] = field(default_factory=dict)
    """The newest lifecycle version seen per strategy: an older transition arriving late changes nothing."""
    demoted: list[str] = field(default_factory=list)
    """``<strategy>@<version>`` already sent back to Paper: one command per version."""
    halted: bool = False
    halt_reason: str = ""
    breaches: list[str] = field(default_factory=list)
    measured_ns: int = -1

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RiskBook:
        return cls(**{k: v for k, v in (data or {}).items()})


class Models:
    """Risk models by return history: built once per (symbols, latest closes), reused for every fill and tick until
    a new close arrives. Derived state only (rebuilt from the histories), so it lives in the process."""

    def __init__(self, kept: int = 4) -> None:
        self._kept = kept
        self._models: dict[tuple[Any, ...], RiskModel] = {}

    def of(self, returns: Returns, paths: int, seed: int) -> RiskModel | None:
        if not returns.symbols:
            return None
        key = (returns.symbols, returns.last, paths, seed)
        model = self._models.get(key)
        if model is None:
            model = RiskModel.build(returns.symbols, returns.returns, paths, seed)
            kept = list(self._models.items())[-(self._kept - 1) :] if self._kept > 1 else []
            self._models = {**dict(kept), key: model}
        return model


def compact(kind: str, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of an input the monitor needs, JSON-ready; None for what it ignores."""
    base = {"kind": kind, "event_id": record["event_id"], "ts_event": record["ts_event"]}
    if kind == "position":
        names = ("strategy_id", "symbol", "qty", "price")
        return {**base, **{n: record[n] for n in names}}
    if kind == "bar":
        interval = record["interval"]
        if interval not in ("1d", "1m"):
            return None
        kind = "close" if interval == "1d" else "tick"
        return {
            **base,
            "kind": kind,
            "symbol": record["symbol"],
            "ts": record["start_ns"],
            "end": record["end_ns"],
            "close": record["close"],
        }
    if kind == "account":
        return {**base, "equity": record["equity"]}
    if kind == "performance":
        return {**base, "strategy_id": record["strategy_id"], "drawdown": record["drawdown"]}
    if kind == "lifecycle":
        return {**base, **{n: record[n] for n in ("strategy_id", "to_state", "version")}}
    if kind in ("halted", "resumed"):
        return {**base, "reason": record["reason"]}
    raise ValueError(f"no input kind {kind!r}")


def held_symbols(book: RiskBook) -> set[str]:
    return {symbol for positions in book.holdings.values() for symbol in positions}


def decide(
    book: RiskBook, record: Mapping[str, Any], policy: Policy, histories: MutableMapping[str, History], models: Models
) -> list[Event]:
    """Apply one input to ``book`` (and a close to ``histories``); the events it causes."""
    kind = record["kind"]
    ts = record["ts_event"]
    if kind == "position":
        positions = book.holdings.setdefault(record["strategy_id"], {})
        if Decimal(record["qty"]) == 0:
            positions.pop(record["symbol"], None)
        else:
            positions[record["symbol"]] = record["qty"]
        book.holdings = {sid: p for sid, p in book.holdings.items() if p}
        if record["price"] is not None and record["symbol"] not in book.marks:
            book.marks[record["symbol"]] = [ts, float(record["price"])]
        return _measure(book, record, policy, histories, models)
    if kind in ("close", "tick"):
        symbol = record["symbol"]
        longer = None
        if kind == "close":
            longer = appended(histories.get(symbol), record["ts"], float(record["close"]), policy.lookback + 1)
            if longer is not None:
                histories[symbol] = longer
        # A close is the price at its bar's end, the time a fill's price is compared with. Inputs forwarded before
        # compact records carried "end" (they stay in the merged input log) are timed by their bar's start.
        priced_at = record.get("end", record["ts"])
        if symbol in book.marks and priced_at < book.marks[symbol][0]:
            # An older price is no mark; a close that lengthened a held symbol's history still moves its VaR.
            held = longer is not None and symbol in held_symbols(book)
            return _measure(book, record, policy, histories, models) if held else []
        book.marks[symbol] = [priced_at, float(record["close"])]
        if symbol not in held_symbols(book):
            return []
        if kind == "tick" and ts < book.measured_ns + policy.measure_every_ns:
            return []
        return _measure(book, record, policy, histories, models)
    if kind == "account":
        equity = float(record["equity"])
        if equity == book.equity:
            return []
        book.equity = equity
        book.peak_equity = max(book.peak_equity or equity, equity)
        book.max_drawdown = max(book.max_drawdown, _drawdown(book))
        return _measure(book, record, policy, histories, models)
    if kind == "performance":
        book.strategy_drawdowns[record["strategy_id"]] = float(record["drawdown"])
        held = record["strategy_id"] in book.holdings
        return _measure(book, record, policy, histories, models) if held else []
    if kind == "lifecycle":
        sid, version = record["strategy_id"], int(record["version"])
        if version <= book.versions.get(sid, 0):
            return []
        book.versions[sid] = version
        if record["to_state"] == "LIVE":
            book.live[sid] = version
        else:
            book.live.pop(sid, None)
        return []
    if kind in ("halted", "resumed"):
        book.halted = kind == "halted"
        book.halt_reason = record["reason"] if book.halted else ""
        return _measure(book, record, policy, histories, models)
    raise ValueError(f"no input kind {kind!r}")


def _drawdown(book: RiskBook) -> float:
    if book.equity is None or not book.peak_equity:
        return 0.0
    return max(0.0, 1.0 - book.equity / book.peak_equity)


@dataclass(frozen=True)
class Measurement:
    book: Book
    risk: BookRisk | None
    """Of the rows of ``returns.symbols`` only; None while no held symbol has enough history."""
    returns: Returns
    var: np.ndarray | None
    """Per scope (account, then strategies), at the limit method and confidence, over all of ``book``'s rows."""


def measure_book(book: Book, policy: Policy, histories: Mapping[str, History], models: Models) -> Measurement:
    """The risk of ``book``: what the monitor publishes and what the desk's pre-trade screen checks."""
    returns = aligned_returns(histories, book.symbols, policy.lookback, policy.min_observations)
    model = models.of(returns, policy.paths, policy.seed)
    if model is None:
        return Measurement(book, None, returns, None)
    rows = [book.symbols.index(s) for s in returns.symbols]
    risk = model.measure(book.exposures[rows])
    return Measurement(book, risk, returns, risk.var[policy.method][policy.level])


def current_book(book: RiskBook, equity: float) -> Book:
    strategies = tuple(sorted(book.holdings))
    symbols = tuple(sorted(held_symbols(book)))
    exposures = np.zeros((len(symbols), len(strategies)))
    row = {s: i for i, s in enumerate(symbols)}
    for j, sid in enumerate(strategies):
        for symbol, qty in book.holdings[sid].items():
            mark = book.marks.get(symbol)
            exposures[row[symbol], j] = float(qty) * (mark[1] if mark else 0.0)
    return Book(symbols, strategies, exposures, equity)


def _measure(
    book: RiskBook, record: Mapping[str, Any], policy: Policy, histories: Mapping[str, History], models: Models
) -> list[Event]:
    if not book.holdings and not book.breaches:
        return []
    book.measured_ns = record["ts_event"]
    equity = book.equity if book.equity is not None else policy.default_equity
    found = measure_book(current_book(book, equity), policy, histories, models)
    drawdowns = {sid: d for sid, d in book.strategy_drawdowns.items() if sid in book.holdings}
    checked = checks(found.book, policy.limits, found.var, _drawdown(book), drawdowns)
    event_id = deterministic_event_id("risk-measured", policy.account, record["event_id"])
    breached = [c for c in checked if c.breached]
    new = [c for c in breached if c.name not in book.breaches]
    book.breaches = sorted(c.name for c in breached)
    events: list[Event] = [
        ("risk.metrics", policy.account, MEASURED_SCHEMA, _measured(book, found, checked, record, policy, event_id))
    ]
    events += [_alert(policy, record, event_id, check) for check in new]
    account_breaches = [c for c in new if c.strategy_id is None]
    if account_breaches and policy.halt_on_breach and not book.halted:
        events.append(_halt(policy, record, event_id, account_breaches))
    if policy.demote_on_breach:
        events += _demotions(book, policy, record, event_id, [c for c in breached if c.strategy_id is not None])
    return events


def _estimates(risk: BookRisk, scope: int, equity: float) -> list[dict[str, Any]]:
    return [
        {
            "method": method,
            "confidence": level,
            "var": float(risk.var[method][level][scope]) / equity,
            "cvar": float(risk.cvar[method][level][scope]) / equity,
            "var_amount": f"{float(risk.var[method][level][scope]):.2f}",
        }
        for method in METHODS
        for level in risk.levels
    ]


def _measured(
    book: RiskBook, found: Measurement, checked: list[Check], record: Mapping[str, Any], policy: Policy, event_id: str
) -> dict[str, Any]:
    exposures, equity, risk = found.book.exposures, found.book.equity, found.risk
    strategies = []
    measured_column = {sid: j for j, sid in enumerate(found.book.strategies)}
    for sid, j in measured_column.items():
        column = exposures[:, j]
        strategies.append(
            {
                "strategy_id": sid,
                "gross_exposure": f"{float(np.abs(column).sum()):.2f}",
                "net_exposure": f"{float(column.sum()):.2f}",
                "estimates": _estimates(risk, j + 1, equity) if risk is not None else [],
                "component_var_95": float(risk.component_var[0.95][j]) / equity if risk is not None else 0.0,
                "component_var_99": float(risk.component_var[0.99][j]) / equity if risk is not None else 0.0,
                "component_cvar_99": float(risk.component_cvar_mc[0.99][j]) / equity if risk is not None else 0.0,
                "drawdown": book.strategy_drawdowns.get(sid),
            }
        )
    portfolio = exposures.sum(axis=1)
    gross = float(np.abs(portfolio).sum())
    return {
        **common_fields(SOURCE, record["ts_event"], record["event_id"], event_id),
        "account_id": policy.account,
        "horizon_days": 1,
        "observations": risk.observations if risk is not None else 0,
        "equity": f"{equity:.2f}",
        "gross_exposure": f"{gross:.2f}",
        "net_exposure": f"{float(portfolio.sum()):.2f}",
        "estimates": _estimates(risk, 0, equity) if risk is not None else [],
        "drawdown": _drawdown(book),
        "max_drawdown": book.max_drawdown,
        "peak_equity": f"{book.peak_equity if book.peak_equity is not None else equity:.2f}",
        "kupiec_p_value": _kupiec(found, policy),
        "breaches": list(book.breaches),
        "kill_switch": book.halted,
        "leverage": gross / equity,
        "covariance_var_95": risk.covariance_var[0.95] / equity if risk is not None else 0.0,
        "covariance_var_99": risk.covariance_var[0.99] / equity if risk is not None else 0.0,
        "strategies": strategies,
        "limits": [{"name": c.name, "value": c.value, "limit": c.limit, "breached": c.breached} for c in checked],
        "halt_reason": book.halt_reason,
        "missing_history": list(found.returns.missing),
    }


def _kupiec(found: Measurement, policy: Policy) -> float | None:
    """The Kupiec p-value of the historical 99% VaR on the held book's own historical P&L (rolling forecasts over
    ``KUPIEC_WINDOW`` days): whether the method has fitted this book's past."""
    if found.risk is None or found.returns.returns.shape[0] < KUPIEC_WINDOW + 50:
        return None
    rows = [found.book.symbols.index(s) for s in found.returns.symbols]
    pnl = found.returns.returns @ found.book.exposures[rows].sum(axis=1)
    if not np.any(pnl):
        return None
    return float(backtest(pnl, "HISTORICAL", 0.99, KUPIEC_WINDOW).kupiec_p)


def _alert(policy: Policy, record: Mapping[str, Any], measured_id: str, check: Check) -> Event:
    kind = check.name.split(":")[0].removeprefix("strategy_")
    alert_kind = {"var": "risk.var_breach", "drawdown": "risk.drawdown_breach"}.get(kind, "risk.limit_breach")
    subject = check.strategy_id or policy.account
    severity = "WARNING" if check.strategy_id else "CRITICAL"
    message = f"{check.describe()} for {'strategy ' + subject if check.strategy_id else 'account ' + subject}"
    event_id = deterministic_event_id("risk-alert", measured_id, check.name)
    details = {"limit": check.name, "measurement_id": measured_id, "account_id": policy.account}
    alert = alert_record(
        SOURCE, record["ts_event"], measured_id, event_id, alert_kind, severity, subject, message, details
    )
    return ("alerts", subject, ALERT_SCHEMA, {**alert, "from_value": check.limit, "to_value": check.value})


def _halt(policy: Policy, record: Mapping[str, Any], measured_id: str, breached: list[Check]) -> Event:
    event_id = deterministic_event_id("risk-halt", measured_id)
    return (
        "risk.controls",
        policy.account,
        HALT_SCHEMA,
        {
            **common_fields(SOURCE, record["ts_event"], measured_id, event_id),
            "account_id": policy.account,
            "reason": "risk limit breached: " + "; ".join(c.describe() for c in breached),
            "flatten": policy.flatten_on_breach,
            "requested_by": "risk",
            "breaches": [c.name for c in breached],
        },
    )


def _demotions(
    book: RiskBook, policy: Policy, record: Mapping[str, Any], measured_id: str, breached: list[Check]
) -> list[Event]:
    events: list[Event] = []
    by_strategy: dict[str, list[Check]] = {}
    for check in breached:
        by_strategy.setdefault(check.strategy_id or "", []).append(check)
    for sid, found in sorted(by_strategy.items()):
        version = book.live.get(sid)
        if version is None or f"{sid}@{version}" in book.demoted:
            continue
        book.demoted = [*book.demoted, f"{sid}@{version}"][-KEPT_DEMOTIONS:]
        event_id = deterministic_event_id("risk-demotion", measured_id, sid)
        events.append(
            (
                "strategies.commands",
                sid,
                TRANSITION_SCHEMA,
                {
                    **common_fields(SOURCE, record["ts_event"], measured_id, event_id),
                    "strategy_id": sid,
                    "expected_version": version,
                    "target_state": "PAPER",
                    "reason": "risk limit breached: " + "; ".join(c.describe() for c in found),
                    "evidence": {
                        "measurement_id": measured_id,
                        **{c.name.split(":")[0]: f"{c.value:.6f}" for c in found},
                        **{c.name.split(":")[0] + "_limit": f"{c.limit:.6f}" for c in found},
                    },
                    "requested_by": "risk",
                },
            )
        )
    return events
