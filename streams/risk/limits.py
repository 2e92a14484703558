"""Risk limits: which are breached now, and which orders of a rebalance may go without breaching one.

The same checks serve the risk agent (every measurement) and the execution desk (the pre-trade screen between an
approval and the orders), so an order the desk lets through is one the risk agent would not flag on its own.
Values are fractions of equity (leverage a multiple); VaR is whatever ``var_of`` measures, at the limit method and
confidence of the settings. Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

TOLERANCE = 1e-12
"""A value equal to its limit is within it: rounding must not turn an order at the limit into a refusal."""


@dataclass(frozen=True)
class StrategyLimits:
    max_var: float
    max_exposure: float
    max_drawdown: float


@dataclass(frozen=True)
class Limits:
    """The account's limits, the limits every strategy has, and the overrides of some strategies."""

    max_var: float
    max_drawdown: float
    max_gross_leverage: float
    max_symbol_exposure: float
    strategy: StrategyLimits
    overrides: Mapping[str, StrategyLimits] = field(default_factory=dict)

    def of(self, strategy_id: str) -> StrategyLimits:
        return self.overrides.get(strategy_id, self.strategy)


def limits_from(
    account: Mapping[str, float], strategy: Mapping[str, float], overrides: Mapping[str, Mapping[str, float]]
) -> Limits:
    """Limits from settings-shaped mappings; an override names only what differs from the strategies' default."""
    default = StrategyLimits(strategy["max_var"], strategy["max_exposure"], strategy["max_drawdown"])
    return Limits(
        account["max_var"],
        account["max_drawdown"],
        account["max_gross_leverage"],
        account["max_symbol_exposure"],
        default,
        {
            sid: StrategyLimits(**{**default.__dict__, **{k: float(v) for k, v in changed.items()}})
            for sid, changed in overrides.items()
        },
    )


@dataclass(frozen=True)
class Check:
    name: str
    """``var``, ``drawdown``, ``gross_leverage``, ``symbol_exposure:<symbol>``, ``strategy_var:<id>``,
    ``strategy_exposure:<id>``, ``strategy_drawdown:<id>``."""
    value: float
    limit: float

    @property
    def breached(self) -> bool:
        return self.value > self.limit + TOLERANCE

    @property
    def strategy_id(self) -> str | None:
        kind, _, subject = self.name.partition(":")
        return subject if kind.startswith("strategy_") else None

    def describe(self) -> str:
        return f"{self.name} {self.value:.4f} > limit {self.limit:.4f}"


@dataclass(frozen=True)
class Book:
    """What the checks look at: signed market values per symbol (rows) and strategy (columns)."""

    symbols: tuple[str, ...]
    strategies: tuple[str, ...]
    exposures: np.ndarray
    equity: float


VarOf = Callable[[Book], np.ndarray | None]
"""The VaR of a book in currency: the account first, then each strategy's (``None``: not measurable yet)."""


def checks(
    book: Book,
    limits: Limits,
    var: np.ndarray | None,
    drawdown: float | None = None,
    strategy_drawdowns: Mapping[str, float] | None = None,
) -> list[Check]:
    """Every limit and where the book stands; a symbol or strategy without exposure has nothing to check."""
    equity = book.equity
    found: list[Check] = []
    if var is not None:
        found.append(Check("var", float(var[0]) / equity, limits.max_var))
    if drawdown is not None:
        found.append(Check("drawdown", drawdown, limits.max_drawdown))
    gross_by_symbol = np.abs(book.exposures.sum(axis=1))  # the strategies netted per symbol, as the broker holds it
    found.append(Check("gross_leverage", float(gross_by_symbol.sum()) / equity, limits.max_gross_leverage))
    found += [
        Check(f"symbol_exposure:{symbol}", float(value) / equity, limits.max_symbol_exposure)
        for symbol, value in zip(book.symbols, gross_by_symbol, strict=True)
        if value > 0
    ]
    gross_by_strategy = np.abs(book.exposures).sum(axis=0)
    for index, sid in enumerate(book.strategies):
        own = limits.of(sid)
        if gross_by_strategy[index] > 0:
            found.append(Check(f"strategy_exposure:{sid}", float(gross_by_strategy[index]) / equity, own.max_exposure))
            if var is not None:
                found.append(Check(f"strategy_var:{sid}", float(var[index + 1]) / equity, own.max_var))
        if strategy_drawdowns is not None and sid in strategy_drawdowns:
            found.append(Check(f"strategy_drawdown:{sid}", strategy_drawdowns[sid], own.max_drawdown))
    return found


@dataclass(frozen=True)
class Trade:
    """One order's effect on the book: the change of market value it brings to each strategy in its symbol."""

    key: str
    symbol: str
    changes: Mapping[str, float]


@dataclass(frozen=True)
class Screened:
    trade: Trade
    refused_by: tuple[Check, ...]
    """The limits the trade would breach or breach further (after, with the value before in ``before``); empty:
    it may go."""
    before: Mapping[str, float]


def screen(trades: Sequence[Trade], book: Book, limits: Limits, var_of: VarOf) -> list[Screened]:
    """Each trade, taken in turn onto the book the accepted ones leave, is refused when it breaches a limit that the
    book did not breach, or breaches one further. Trades that shrink a symbol's exposure go first, so the orders that
    reduce risk are never refused for room that an order adding risk took."""
    symbols = list(book.symbols)
    strategies = list(book.strategies)
    for trade in trades:
        if trade.symbol not in symbols:
            symbols.append(trade.symbol)
        strategies += [sid for sid in trade.changes if sid not in strategies]
    exposures = np.zeros((len(symbols), len(strategies)))
    exposures[: len(book.symbols), : len(book.strategies)] = book.exposures
    current = Book(tuple(symbols), tuple(strategies), exposures, book.equity)
    row = {symbol: i for i, symbol in enumerate(symbols)}
    column = {sid: j for j, sid in enumerate(strategies)}

    def applied(state: Book, trade: Trade) -> Book:
        after = state.exposures.copy()
        for sid, change in trade.changes.items():
            after[row[trade.symbol], column[sid]] += change
        return Book(state.symbols, state.strategies, after, state.equity)

    def shrinks(trade: Trade) -> bool:
        held = float(current.exposures[row[trade.symbol]].sum())
        return abs(held + sum(trade.changes.values())) < abs(held)

    screened = []
    now = {c.name: c for c in checks(current, limits, var_of(current))}
    for trade in sorted(trades, key=lambda t: not shrinks(t)):  # stable: the proposal's order otherwise
        after = applied(current, trade)
        found = checks(after, limits, var_of(after))
        worse = tuple(c for c in found if c.breached and (c.name not in now or c.value > now[c.name].value + TOLERANCE))
        if worse:
            screened.append(Screened(trade, worse, {c.name: now[c.name].value for c in worse if c.name in now}))
            continue
        screened.append(Screened(trade, (), {}))
        current, now = after, {c.name: c for c in found}
    return screened


def refusal_reason(screened: Screened) -> str:
    """The limits and the numbers, for the OrderRejected a person reads."""
    parts = []
    for check in screened.refused_by:
        before = screened.before.get(check.name)
        was = f", {before:.4f} before it" if before is not None else ""
        parts.append(f"{check.name} would be {check.value:.4f} > limit {check.limit:.4f}{was}")
    return "pre-trade risk check: " + "; ".join(parts)
