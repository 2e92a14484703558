"""A Paper or Live strategy run session by session on the bars that arrive after its backtest's data, and the
lifecycle commands its record asks for.

- The book is the family's signal function on the legs' closes, unchanged (``PaperBook``): warmed at once on the
  history the backtest saw, then one bar at a time. Rows are the union of the legs' bar starts, each leg's close
  carried forward over a row it did not print, as the backtest's history is built. A row is booked only once
  every leg has printed at or after it, so a leg that is late never changes a row already booked.
- Sessions are counted in the state the strategy is in. Paper starts with the first session after the data the
  backtest saw, wherever the transition to Paper lands in time, so a replay counts the same sessions.
- After every ``min_paper_sessions`` paper sessions the run asks for Live with the paper record as evidence; a
  Live strategy whose trailing window's Sharpe ratio is below the threshold asks to be retired. It then waits
  for the lifecycle's answer before booking another session, so the state each session is booked in is decided
  by the log, not by how fast the lifecycle agent answered.

Pure: numpy and the strategy families.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.costs import BP
from core.sessions import SESSIONS_PER_YEAR, market_of
from streams.discovery.backtest import net_returns
from streams.lifecycle.machine import AUTOMATIC_RETIREMENT, Rules, State
from streams.lifecycle.paper import Booked, PaperBook
from streams.patterns.stats import sharpe_moments, sharpe_standard_error
from streams.strategies import FAMILIES, Bars, Family

Float64 = npt.NDArray[np.float64]

BOOKED_TIMEFRAMES = frozenset({"1d", "1w"})
"""Timeframes the runner books, from daily bars. Intraday candidates stay in Paper unbooked (the runner says so
once per strategy)."""
BARS_PER_WEEK = 5
NS_PER_DAY = 86_400_000_000_000
MIN_SHARPE_SESSIONS = 10
"""Sessions before a rolling Sharpe ratio is reported: fewer give a standard error above one a year."""


class Unbookable(ValueError):
    """A candidate the runner cannot book (a timeframe it does not run, an unknown family)."""


@dataclass(frozen=True)
class Recipe:
    """What a candidate tells the runner: the signal, its legs, its costs and the backtest it must match."""

    strategy_id: str
    candidate_id: str
    timeframe: str
    family: Family
    params: Mapping[str, float]
    symbols: tuple[str, ...]
    cost_per_unit: float
    bars_per_year: float
    """Of the strategy's timeframe (its book's bars); its record is per session, annualised by sessions_per_year."""
    sessions_per_year: float
    data_start_ns: int
    data_end_ns: int
    backtest_sharpe: float
    backtest_sharpe_se: float


def recipe_of(candidate: Mapping[str, Any]) -> Recipe:
    if candidate["timeframe"] not in BOOKED_TIMEFRAMES:
        raise Unbookable(f"the runner books {sorted(BOOKED_TIMEFRAMES)} strategies, not {candidate['timeframe']}")
    family = FAMILIES.get(candidate["family"])
    if family is None:
        raise Unbookable(f"unknown family {candidate['family']!r}")
    sessions_per_year = SESSIONS_PER_YEAR[market_of(candidate["asset_class"])]
    bars_per_year = sessions_per_year / (BARS_PER_WEEK if candidate["timeframe"] == "1w" else 1)
    sharpe = float(candidate["sharpe_out_of_sample"])
    se = candidate.get("sharpe_out_of_sample_se")
    if se is None:  # an older candidate: Lo's standard error over the span of its history
        years = (candidate["data_end_ns"] - candidate["data_start_ns"]) / (365.25 * 86_400e9)
        se = normal_sharpe_se(sharpe / math.sqrt(bars_per_year), max(years * bars_per_year, 2.0), bars_per_year)
    return Recipe(
        candidate["strategy_id"],
        candidate["event_id"],
        candidate["timeframe"],
        family,
        {name: float(value) for name, value in candidate["params"].items()},
        tuple(candidate["symbols"]),
        float(candidate["cost_bp"]) * BP,
        bars_per_year,
        sessions_per_year,
        int(candidate["data_start_ns"]),
        int(candidate["data_end_ns"]),
        sharpe,
        float(se),
    )


def week_of(start_ns: int) -> int:
    """The week a daily bar falls in, Monday first (1970-01-01 was a Thursday), as the backtest's history labels it."""
    return (start_ns // NS_PER_DAY + 3) // 7


def last_per_week(starts: Sequence[int], closes: Float64) -> tuple[list[int], Float64]:
    """Daily rows (closes carried forward) as weekly ones: each week's last row, as the backtest's history has it."""
    keep = [i for i, start in enumerate(starts) if i + 1 == len(starts) or week_of(starts[i + 1]) != week_of(start)]
    return [starts[i] for i in keep], closes[keep]


@dataclass(frozen=True)
class Due:
    """A bar of the strategy's timeframe ready to book: the starts and the legs' closes of its sessions (daily rows,
    closes carried forward); the bar closes at the last."""

    starts: Sequence[int]
    closes: Float64


def due(
    timeframe: str, starts: Sequence[int], closes: Float64, through_ns: int, history_end_ns: int
) -> tuple[list[Due], int | None]:
    """The periods among the daily rows (after the last one consumed) that can be booked, and the start of the last
    row they consume. A daily row is a period. A week is booked once every leg has printed in a later week
    (``through_ns`` is the latest start all legs reached); the rest of the week the backtest's data ended in is
    consumed unbooked, since the backtest saw that week's close as of its last day."""
    if timeframe == "1d":
        return [Due([s], closes[i : i + 1]) for i, s in enumerate(starts)], (starts[-1] if starts else None)
    complete, cut = week_of(through_ns), week_of(history_end_ns)
    out: list[Due] = []
    consumed: int | None = None
    first = 0
    for i, start in enumerate(starts):
        week = week_of(start)
        if week >= complete:
            break
        if i + 1 < len(starts) and week_of(starts[i + 1]) == week:
            continue
        if week != cut:
            out.append(Due(starts[first : i + 1], closes[first : i + 1]))
        consumed, first = start, i + 1
    return out, consumed


def normal_sharpe_se(per_bar_sharpe: float, count: float, bars_per_year: float) -> float:
    """The annualised standard error of a Sharpe ratio over ``count`` bars of normal returns (Lo 2002): where
    there are no returns to measure skew and kurtosis on."""
    return float(sharpe_standard_error(np.array([1.0 + 0.5 * per_bar_sharpe**2]), count, bars_per_year)[0])


def annualised_sharpe(returns: Float64, bars_per_year: float) -> tuple[float, float] | None:
    """Sharpe ratio and its standard error (Mertens 2002, as the candidates' out-of-sample figures), annualised;
    None when too short or flat."""
    if returns.size < 2 or not float(returns.std(ddof=1)) > 0:
        return None
    sr, factor = sharpe_moments(returns[:, None])
    se = float(sharpe_standard_error(factor, returns.size, bars_per_year)[0])
    if not math.isfinite(se):
        se = normal_sharpe_se(float(sr[0]), returns.size, bars_per_year)
    return float(sr[0]) * math.sqrt(bars_per_year), se


@dataclass(frozen=True)
class Period:
    """One booked session: what the performance event reports."""

    strategy_id: str
    state: State
    start_ns: int
    net_return: float
    cost: float
    cumulative_return: float
    drawdown: float
    rolling_sharpe: float | None
    rolling_sharpe_se: float | None
    sessions: int
    days_underperforming: int
    trades: int
    positions: Mapping[str, float]


@dataclass(frozen=True)
class Ask:
    """A lifecycle command the run asks for after ``period``: ``kind`` is "promote" or "retire"."""

    kind: str
    target: State
    expected_version: int
    reason: str
    evidence: Mapping[str, str]
    after_start_ns: int


@dataclass
class StrategyRun:
    recipe: Recipe
    rules: Rules
    state: State
    version: int
    awaiting: str | None = None
    """The command id whose answer the run waits for before booking on."""
    _book: PaperBook = field(init=False)
    _closes: list[Float64] = field(default_factory=list)
    _bar_returns: list[float] = field(default_factory=list)
    """Net return of each bar booked in the current state: what the backtest's kernel is compared with."""
    _state_returns: list[float] = field(default_factory=list)
    """Net return of each session booked in the current state: the record, its Sharpe ratio and drawdown."""
    _next_ask: int = 0
    _equity: float = 1.0
    _peak: float = 1.0
    _underperforming: int = 0
    _warm: bool = False

    def __post_init__(self) -> None:
        r = self.recipe
        self._book = PaperBook(r.family, r.params, r.cost_per_unit, r.bars_per_year)

    consumed_ns: int | None = None
    """The start of the last daily row the run has taken (warm-up, booked, or passed over)."""

    def warm(self, starts: Sequence[int], closes: Float64) -> None:
        """The backtest's history at once: daily rows up to and including ``data_end_ns``, on the strategy's
        timeframe."""
        if self.recipe.timeframe == "1w":
            starts, closes = last_per_week(starts, closes)
        self._closes.extend(closes)
        self._book.warm(closes, np.zeros(len(starts), dtype=np.bool_))
        self._warm = True
        self.consumed_ns = self.recipe.data_end_ns

    def book(self, bar: Due) -> list[Period]:
        """Book one bar of the strategy's timeframe, and mark each of its sessions to market: the position held
        through the bar is fixed in units at its start, so the sessions' returns compound to the bar's gross
        return exactly; the trade at the bar's close, and its cost, fall in its last session."""
        if not self._warm:
            raise ValueError(f"{self.recipe.strategy_id}: booked before its history was taken")
        if self.awaiting is not None:
            raise ValueError(f"{self.recipe.strategy_id}: booked while waiting for the answer to {self.awaiting}")
        held = self._book.position
        opening = self._closes[-1]
        booked = self._book.on_bar(bar.closes[-1])
        self._closes.append(np.asarray(bar.closes[-1], dtype=np.float64))
        self._bar_returns.append(booked.net_return)
        with np.errstate(divide="ignore", invalid="ignore"):
            moves = np.nan_to_num(bar.closes / opening - 1.0, nan=0.0, posinf=0.0, neginf=0.0)
        values = 1.0 + moves @ held
        values[-1] -= booked.cost
        marks = values / np.concatenate([[1.0], values[:-1]]) - 1.0
        periods = []
        for session, (start_ns, mark) in enumerate(zip(bar.starts, marks, strict=True)):
            last = session == len(bar.starts) - 1
            position = booked.position if last else held
            periods.append(self._mark(start_ns, float(mark), booked.cost if last else 0.0, position, booked, last))
        self.consumed_ns = max(self.consumed_ns or bar.starts[-1], bar.starts[-1])
        return periods

    def _mark(self, start_ns: int, mark: float, cost: float, position: Float64, booked: Booked, last: bool) -> Period:
        self._state_returns.append(mark)
        self._equity *= 1.0 + mark
        self._peak = max(self._peak, self._equity)
        window = np.array(self._state_returns[-self.rules.retire_window_sessions :])
        per_year = self.recipe.sessions_per_year
        rolling = annualised_sharpe(window, per_year) if window.size >= MIN_SHARPE_SESSIONS else None
        if rolling is not None and rolling[0] < self.rules.retire_below_sharpe:
            self._underperforming += 1
        else:
            self._underperforming = 0
        return Period(
            self.recipe.strategy_id,
            self.state,
            start_ns,
            mark,
            cost,
            self._equity - 1.0,
            1.0 - self._equity / self._peak,
            rolling[0] if rolling else None,
            rolling[1] if rolling else None,
            len(self._state_returns),
            self._underperforming,
            int(np.count_nonzero(booked.traded)) if last else 0,
            dict(zip(self.recipe.symbols, (float(p) for p in position), strict=True)),
        )

    def ask(self) -> Ask | None:
        """The command the record now calls for, if any (after the session just booked)."""
        sessions = len(self._state_returns)
        last = self.consumed_ns or self.recipe.data_end_ns
        if self.state is State.PAPER:
            if sessions < max(self._next_ask, self.rules.min_paper_sessions):
                return None
            self._next_ask = sessions + self.rules.min_paper_sessions  # refused: asked again a paper period later
            return Ask("promote", State.LIVE, self.version, "paper period complete", self._paper_evidence(), last)
        if self.state is State.LIVE and sessions >= self.rules.retire_window_sessions:
            window = np.array(self._state_returns[-self.rules.retire_window_sessions :])
            measured = annualised_sharpe(window, self.recipe.sessions_per_year)
            trailing = measured[0] if measured else 0.0
            if trailing >= self.rules.retire_below_sharpe:
                return None
            evidence = {
                "rule": AUTOMATIC_RETIREMENT,
                "trailing_sessions": str(window.size),
                "trailing_sharpe": repr(trailing),
            }
            reason = f"trailing {window.size}-session Sharpe {trailing:.2f} below {self.rules.retire_below_sharpe}"
            return Ask("retire", State.RETIRED, self.version, reason, evidence, last)
        return None

    def _paper_evidence(self) -> dict[str, str]:
        """The paper record beside the backtest's: Sharpe ratios with a band that counts both estimates' errors,
        and the tracking error between the book and the backtest's kernel over the same sessions."""
        paper = np.array(self._state_returns)
        per_year = self.recipe.sessions_per_year
        measured = annualised_sharpe(paper, per_year)
        # A flat book has a Sharpe ratio of 0, known to the standard error of as many sessions.
        paper_sharpe, paper_se = measured or (0.0, normal_sharpe_se(0.0, max(paper.size, 2), per_year))
        bar_returns = np.array(self._bar_returns)
        closes = np.vstack(self._closes)
        bars = Bars(closes, np.zeros(closes.shape[0], dtype=np.bool_), self.recipe.bars_per_year)
        backtest, _ = net_returns(
            self.recipe.family.positions(bars, self.recipe.params), closes, self.recipe.cost_per_unit
        )
        gap = bar_returns - backtest[-bar_returns.size :]
        tracking = float(gap.std(ddof=1) * math.sqrt(self.recipe.bars_per_year)) if bar_returns.size > 1 else 0.0
        return {
            "paper_sessions": str(paper.size),
            "paper_sharpe": repr(paper_sharpe),
            "backtest_sharpe": repr(self.recipe.backtest_sharpe),
            "backtest_sharpe_se": repr(math.hypot(self.recipe.backtest_sharpe_se, paper_se)),
            "tracking_error": repr(tracking),
            "candidate_id": self.recipe.candidate_id,
        }

    def answered(self, to_state: State | None, version: int | None) -> None:
        """The lifecycle's answer to the awaited command: a transition (new state and version) or a refusal."""
        self.awaiting = None
        if to_state is not None and version is not None:
            self.moved(to_state, version)

    def moved(self, to_state: State, version: int) -> None:
        """The strategy changed state (by the run's command or anyone's): sessions count again from here."""
        if version <= self.version:
            return
        if to_state is not self.state:
            self._state_returns, self._bar_returns, self._next_ask = [], [], 0
            self._equity = self._peak = 1.0
            self._underperforming = 0
        self.state, self.version = to_state, version
