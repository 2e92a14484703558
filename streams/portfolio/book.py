"""The portfolio's book of an account (pure): what the portfolio agent knows of each strategy, and the targets it
implies.

Per strategy the book keeps its lifecycle state and version, the prior from its discovery candidate, its realised
per-session net returns (``period_return`` of StrategyPerformanceRecorded, by ``period_end_ns``, the latest
``lookback`` kept), its latest positions, and the ids of the events each came from. Every ``apply_*`` is idempotent:
a record applied twice (at-least-once delivery) leaves the book as once, so the agent needs no dedup of its inputs.

Expected returns blend the prior and the realised mean by precision. The prior is the candidate's deflated
out-of-sample estimate: annual Sharpe ratio ``max(0, SR_oos - SR_benchmark)`` (the Sharpe ratio the deflated
Sharpe ratio tested against, so what selection among many trials explains is taken off) times the out-of-sample
annual volatility. An annual Sharpe ratio estimated from ``T`` sessions has a standard error near ``sqrt(P / T)``
(``P`` sessions a year), so a prior with standard error ``se`` is worth ``n0 = P / se**2`` sessions of live
returns (one year when the candidate gives no standard error). With ``n`` realised sessions of annualised mean
``m``: ``mu = (n0 * prior + n * m) / (n0 + n)``. A short live record barely moves the prior; a long one dominates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from streams.patterns.stats import sharpe_standard_error
from streams.portfolio.optimiser import (
    POSITIVE,
    Allocation,
    Constraints,
    Objective,
    TooFewStrategies,
    optimise,
    shrunk_covariance,
)

LIVE = "LIVE"
COMPACT_FIELDS: dict[str, tuple[str, ...]] = {
    "candidate": (
        "strategy_id",
        "symbols",
        "sharpe_out_of_sample",
        "sharpe_out_of_sample_se",
        "dsr_benchmark",
        "annual_volatility",
    ),
    "transition": ("strategy_id", "from_state", "to_state", "version"),
    "performance": ("strategy_id", "period_end_ns", "period_return", "positions"),
    "account": ("account_id", "buying_power", "equity"),
}
"""What the agent forwards of each input (besides its kind, event id and time): the book reads nothing else."""


def compact(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an input event the book needs, JSON-ready (positions as a plain dict)."""
    out = {"kind": kind, "event_id": record["event_id"], "ts_event": record["ts_event"]}
    for name in COMPACT_FIELDS[kind]:
        value = record[name]
        out[name] = dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, list) else value
    return out


@dataclass
class Strategy:
    strategy_id: str
    state: str | None = None
    version: int = 0
    transition_id: str = ""
    candidate_id: str = ""
    symbols: list[str] = field(default_factory=list)
    prior_return: float | None = None
    """Annualised expected return from the candidate (deflated); None until a candidate is known."""
    prior_sessions: float = 0.0
    """Sessions of live returns the prior is worth (``n0`` of the module's formula)."""
    returns: dict[int, float] = field(default_factory=dict)
    positions: dict[str, float] = field(default_factory=dict)
    positions_end_ns: int = -1
    performance_id: str = ""


@dataclass
class Account:
    event_id: str
    ts_event: int
    buying_power: str
    equity: str


@dataclass
class Book:
    strategies: dict[str, Strategy] = field(default_factory=dict)
    account: Account | None = None
    eligible: list[str] = field(default_factory=list)
    """The strategies the optimiser could weigh at the last decision: a change is a reason to optimise again."""
    shortfall: list[str] | None = None
    """The eligible set the last "too few strategies" alert was about (None: none since the last targets)."""
    weights: dict[str, float] = field(default_factory=dict)
    """The weights last published."""
    breaches: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for entry in data["strategies"].values():
            entry["returns"] = {str(k): v for k, v in entry["returns"].items()}
        data["breaches"] = [list(pair) for pair in self.breaches]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Book:
        if not data:
            return cls()
        strategies = {
            sid: Strategy(**{**entry, "returns": {int(k): float(v) for k, v in entry["returns"].items()}})
            for sid, entry in data["strategies"].items()
        }
        account = Account(**data["account"]) if data["account"] else None
        return cls(
            strategies,
            account,
            list(data["eligible"]),
            None if data["shortfall"] is None else list(data["shortfall"]),
            dict(data["weights"]),
            [(a, b) for a, b in data["breaches"]],
        )


def _strategy(book: Book, strategy_id: str) -> Strategy:
    return book.strategies.setdefault(strategy_id, Strategy(strategy_id))


def apply_candidate(book: Book, record: Mapping[str, Any], periods_per_year: int) -> None:
    """The candidate's deflated out-of-sample estimate becomes the strategy's prior (module docstring)."""
    strategy = _strategy(book, record["strategy_id"])
    benchmark = record["dsr_benchmark"] or 0.0
    sharpe = max(0.0, float(record["sharpe_out_of_sample"]) - float(benchmark))
    se = record["sharpe_out_of_sample_se"]
    strategy.candidate_id = record["event_id"]
    strategy.symbols = sorted(record["symbols"])
    strategy.prior_return = sharpe * float(record["annual_volatility"])
    strategy.prior_sessions = periods_per_year / se**2 if se else float(periods_per_year)


def apply_transition(book: Book, record: Mapping[str, Any]) -> tuple[str | None, str] | None:
    """(from, to) when the transition is newer than the state held; None for one applied before."""
    strategy = _strategy(book, record["strategy_id"])
    if record["version"] <= strategy.version:
        return None
    before = strategy.state
    strategy.state, strategy.version, strategy.transition_id = record["to_state"], record["version"], record["event_id"]
    return before, record["to_state"]


def apply_performance(book: Book, record: Mapping[str, Any], lookback: int) -> None:
    """One session's net return (the last delivered wins for a session), and the positions if it is the latest."""
    strategy = _strategy(book, record["strategy_id"])
    end = int(record["period_end_ns"])
    strategy.returns[end] = float(record["period_return"])
    if len(strategy.returns) > lookback:
        strategy.returns = dict(sorted(strategy.returns.items())[-lookback:])
    if end >= strategy.positions_end_ns:
        strategy.positions = {str(k): float(v) for k, v in record["positions"].items()}
        strategy.positions_end_ns = end
        strategy.performance_id = record["event_id"]


def apply_account(book: Book, record: Mapping[str, Any]) -> None:
    """The latest report by its time; an older one delivered late changes nothing."""
    if book.account is None or record["ts_event"] >= book.account.ts_event:
        book.account = Account(record["event_id"], record["ts_event"], record["buying_power"], record["equity"])


def rotation(strategy_id: str, moved: tuple[str | None, str] | None) -> str | None:
    """The reason to re-optimise when a transition takes the strategy into or out of LIVE, else None."""
    if moved is None or (moved[0] == LIVE) == (moved[1] == LIVE):
        return None
    if moved[1] == LIVE:
        return f"rotation: {strategy_id} promoted to LIVE"
    word = "retired" if moved[1] == "RETIRED" else f"moved to {moved[1]}"
    return f"rotation: {strategy_id} {word} (was LIVE)"


def live(book: Book) -> list[str]:
    return sorted(sid for sid, s in book.strategies.items() if s.state == LIVE)


def eligible(book: Book, min_sessions: int) -> list[str]:
    """LIVE strategies with a prior and enough realised sessions to be weighed."""
    return [
        sid
        for sid in live(book)
        if book.strategies[sid].prior_return is not None and len(book.strategies[sid].returns) >= min_sessions
    ]


def aligned_returns(book: Book, ids: Sequence[str], lookback: int) -> pd.DataFrame:
    """Sessions x strategies: the latest ``lookback`` sessions every one of ``ids`` has a return for (a covariance
    needs common sessions), by ``period_end_ns``."""
    frame = pd.DataFrame({sid: pd.Series(book.strategies[sid].returns, dtype=float) for sid in ids})
    return frame.dropna().sort_index().iloc[-lookback:]


def expected_returns(book: Book, returns: pd.DataFrame, periods_per_year: int) -> pd.Series:
    """Annualised: each strategy's prior blended with its realised mean by precision (module docstring)."""
    n = len(returns)
    out = {}
    for sid in returns.columns:
        strategy = book.strategies[str(sid)]
        prior = strategy.prior_return or 0.0
        realised = float(returns[sid].mean()) * periods_per_year
        out[str(sid)] = (strategy.prior_sessions * prior + n * realised) / (strategy.prior_sessions + n)
    return pd.Series(out, dtype=float)


@dataclass(frozen=True)
class Correlation:
    """The strategies' return correlation (Pearson over the aligned sessions) and its summaries."""

    ids: list[str]
    matrix: npt.NDArray[np.float64]
    sessions: int
    average: float
    eigen_share: float
    diversification_ratio: float
    """Of the equal-weight portfolio: mean volatility over the portfolio's."""

    def upper_triangle(self) -> list[float]:
        rows, cols = np.triu_indices(len(self.ids), k=1)
        return [float(v) for v in self.matrix[rows, cols]]


def correlation(returns: pd.DataFrame) -> Correlation:
    """numpy directly: ``streams.correlation.rolling`` computes correlations of log returns of closes on a bar grid
    it keeps itself; here the returns are given, few and already aligned."""
    values = returns.to_numpy(dtype=np.float64)
    n = values.shape[1]
    matrix = np.corrcoef(values, rowvar=False) if n > 1 else np.ones((1, 1))
    matrix = np.where(np.isfinite(matrix), matrix, 0.0)
    np.fill_diagonal(matrix, 1.0)
    off = matrix[~np.eye(n, dtype=bool)]
    vol = values.std(axis=0, ddof=1)
    covariance = np.cov(values, rowvar=False).reshape(n, n)
    return Correlation(
        [str(c) for c in returns.columns],
        matrix,
        len(values),
        float(off.mean()) if off.size else 1.0,
        float(np.linalg.eigvalsh(matrix)[-1] / n),
        diversification_ratio(np.full(n, 1.0 / n), vol, covariance),
    )


def diversification_ratio(
    weights: npt.NDArray[np.float64], vol: npt.NDArray[np.float64], covariance: npt.NDArray[np.float64]
) -> float:
    """(w . sigma) / sqrt(w' Sigma w): 1 means no diversification. NaN when the portfolio has no variance.

    ``projections.correlations`` has the same ratio over a snapshot's symbols, but streams may not import it."""
    variance = float(weights @ covariance @ weights)
    return float(weights @ vol / np.sqrt(variance)) if variance > 0 else float("nan")


def breaches(found: Correlation, held: Sequence[str], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs of held strategies correlated above ``threshold``, (a, b) in the matrix's order."""
    index = [i for i, sid in enumerate(found.ids) if sid in set(held)]
    return [
        (found.ids[i], found.ids[j], float(found.matrix[i, j]))
        for k, i in enumerate(index)
        for j in index[k + 1 :]
        if found.matrix[i, j] > threshold
    ]


@dataclass(frozen=True)
class Targets:
    allocation: Allocation
    weights: dict[str, float]
    """Held strategies only (weight above ``POSITIVE``), renormalised to the optimiser's sum."""
    exposures: dict[str, float]
    """Per symbol: signed fraction of ``capital`` (the sum over strategies of weight x position)."""
    capital: float
    """Capital allocated: the account's, scaled down so that the gross exposure fits the buying power."""
    scaled: bool
    sessions: int
    expected_return: float
    volatility: float
    sharpe: float | None
    sharpe_se: float | None
    diversification_ratio: float
    inputs: list[str]


def constraints_of(bounds: Sequence[str], max_weight: float, min_strategies: int, periods: int) -> Constraints:
    """Constraints from the settings; ``bounds`` as ``ID=LOW:HIGH``."""
    parsed: dict[str, tuple[float, float]] = {}
    for item in bounds:
        sid, sep, pair = item.partition("=")
        low, colon, high = pair.partition(":")
        if not sep or not colon:
            raise ValueError(f"strategy bound {item!r} is not ID=LOW:HIGH")
        parsed[sid.strip()] = (float(low), float(high))
    return Constraints(max_weight=max_weight, min_strategies=min_strategies, bounds=parsed, periods_per_year=periods)


def targets(
    book: Book,
    constraints: Constraints,
    objective: Objective,
    capital: float,
    buying_power: float | None,
    lookback: int,
    min_sessions: int,
) -> Targets:
    """Weights over the eligible strategies, the symbol exposures they imply, and the expected figures.

    Raises ``TooFewStrategies`` (saying why) when fewer than ``constraints.min_strategies`` LIVE strategies have a
    prior and ``min_sessions`` common sessions of returns: the caller keeps the targets it had.
    """
    ids = eligible(book, min_sessions)
    returns = aligned_returns(book, ids, lookback)
    if len(ids) < constraints.min_strategies or len(returns) < min_sessions:
        raise TooFewStrategies(
            f"{len(live(book))} live strateg{'y' if len(live(book)) == 1 else 'ies'}, {len(ids)} with a candidate and "
            f"{min_sessions}+ sessions of returns ({len(returns)} in common): a portfolio needs at least "
            f"{constraints.min_strategies}"
        )
    periods = constraints.periods_per_year
    mu = expected_returns(book, returns, periods)
    allocation = optimise(returns, mu, objective, constraints)
    weights = {sid: w for sid, w in sorted(allocation.weights.items()) if w > POSITIVE}
    exposures: dict[str, float] = {}
    for sid, weight in weights.items():
        for symbol, position in book.strategies[sid].positions.items():
            exposures[symbol] = exposures.get(symbol, 0.0) + weight * position
    gross = sum(abs(e) for e in exposures.values()) * capital
    budget = capital if buying_power is None else buying_power
    scale = min(1.0, budget / gross) if gross > 0 else 1.0
    vector = np.array([allocation.weights[str(c)] for c in returns.columns])
    covariance = shrunk_covariance(returns, periods).to_numpy()
    sharpe = allocation.expected_return / allocation.volatility if allocation.volatility > 0 else None
    # Lo (2002), normal returns: Var(SR) = (1 + SR^2 / 2) / T per session, annualised.
    se = (
        None
        if sharpe is None
        else float(sharpe_standard_error(np.array(1.0 + (sharpe**2 / periods) / 2.0), len(returns), periods))
    )
    inputs = {book.account.event_id} if book.account is not None else set()
    for sid in weights:
        strategy = book.strategies[sid]
        inputs |= {strategy.candidate_id, strategy.transition_id, strategy.performance_id}
    return Targets(
        allocation,
        weights,
        dict(sorted(exposures.items())),
        capital * scale,
        scale < 1.0,
        len(returns),
        allocation.expected_return,
        allocation.volatility,
        sharpe,
        se,
        diversification_ratio(vector, np.sqrt(np.diag(covariance)), covariance),
        sorted(i for i in inputs if i),
    )


def moved(before: Mapping[str, float], after: Mapping[str, float], band: float) -> bool:
    """Whether any weight (a strategy entering or leaving counts from 0) moved by more than ``band``."""
    return any(abs(after.get(sid, 0.0) - before.get(sid, 0.0)) > band for sid in set(before) | set(after))
