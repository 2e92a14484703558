"""The strategy runner's pure part: what a candidate tells it, how sessions are counted per state, and when the
record asks for a promotion or a retirement."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from streams.lifecycle.machine import AUTOMATIC_RETIREMENT, Rules, State
from streams.lifecycle.performance import (
    Recipe,
    StrategyRun,
    Unbookable,
    annualised_sharpe,
    recipe_of,
    sharpe_se,
)
from streams.strategies import MOMENTUM

RULES = Rules(
    min_dsr=0.95,
    max_pbo=0.2,
    min_oos_sharpe=1.0,
    max_parameters=5,
    min_paper_sessions=5,
    paper_sharpe_band=2.0,
    max_tracking_error=0.1,
    retire_window_sessions=8,
    retire_below_sharpe=0.0,
)


def candidate(**changes: Any) -> dict[str, Any]:
    return {
        "event_id": "c-1",
        "strategy_id": "momentum-X-1d-0",
        "family": "momentum",
        "params": {"lookback": "5", "entry": "0.25"},
        "symbols": ["X"],
        "timeframe": "1d",
        "asset_class": "EQUITY",
        "cost_bp": 2.15,
        "data_start_ns": 0,
        "data_end_ns": 365 * 86_400 * 10**9,
        "sharpe_out_of_sample": 1.5,
        "sharpe_out_of_sample_se": 0.6,
    } | changes


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"timeframe": "1w"}, "not 1w"),
        ({"timeframe": "15m"}, "not 15m"),
        ({"family": "astrology"}, "unknown family 'astrology'"),
    ],
)
def test_a_candidate_the_runner_cannot_book_says_why(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(Unbookable, match=error):
        recipe_of(candidate(**changes))


@pytest.mark.parametrize(("asset_class", "bars_per_year"), [("EQUITY", 252.0), ("FX", 260.0), ("FUTURE", 260.0)])
def test_a_recipe_takes_the_candidates_signal_costs_and_calendar(asset_class: str, bars_per_year: float) -> None:
    recipe = recipe_of(candidate(asset_class=asset_class))
    assert recipe.params == {"lookback": 5.0, "entry": 0.25}
    assert recipe.cost_per_unit == pytest.approx(2.15e-4)
    assert recipe.bars_per_year == bars_per_year
    assert (recipe.backtest_sharpe, recipe.backtest_sharpe_se) == (1.5, 0.6)


def test_a_candidate_without_a_standard_error_gets_los_over_its_history() -> None:
    recipe = recipe_of(candidate(sharpe_out_of_sample_se=None))
    count = 365 / 365.25 * 252
    assert recipe.backtest_sharpe_se == pytest.approx(sharpe_se(1.5 / math.sqrt(252), count, 252))


@pytest.mark.parametrize(
    ("per_bar", "count", "expected"),
    [(0.0, 252, 1.0), (0.1, 252, math.sqrt(1.005)), (0.0, 63, 2.0)],
)
def test_sharpe_standard_error_is_los(per_bar: float, count: int, expected: float) -> None:
    assert sharpe_se(per_bar, count, 252) == pytest.approx(expected)


def test_an_annualised_sharpe_ratio_needs_two_returns_and_some_variation() -> None:
    assert annualised_sharpe(np.array([0.01]), 252) is None
    assert annualised_sharpe(np.zeros(5), 252) is None
    returns = np.array([0.01, -0.005, 0.02, 0.0])
    sharpe, se = annualised_sharpe(returns, 252) or (0.0, 0.0)
    assert sharpe == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(252))
    assert se == pytest.approx(sharpe_se(returns.mean() / returns.std(ddof=1), 4, 252))


def a_run(state: State = State.PAPER, rules: Rules = RULES) -> tuple[StrategyRun, np.ndarray]:
    recipe = Recipe("s", "c", MOMENTUM, {"lookback": 5.0, "entry": 0.25}, ("X",), 2e-4, 252.0, 0, 0, 1.5, 0.6)
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(5e-3, 1e-2, (80, 1)), axis=0))
    run = StrategyRun(recipe, rules, state, 3)
    run.warm(list(range(20)), closes[:20])
    return run, closes


def test_paper_asks_for_live_after_each_full_paper_period_with_its_record() -> None:
    run, closes = a_run()
    asks = []
    for t in range(20, 31):
        period = run.book(t, closes[t])
        asks.append((period.sessions, run.ask()))
    promotions = [(sessions, ask) for sessions, ask in asks if ask is not None]
    assert [sessions for sessions, _ in promotions] == [5, 10]
    ask = promotions[0][1]
    assert ask is not None and (ask.kind, ask.target, ask.expected_version) == ("promote", State.LIVE, 3)
    assert ask.evidence["paper_sessions"] == "5" and ask.evidence["backtest_sharpe"] == "1.5"
    assert float(ask.evidence["tracking_error"]) < 1e-12  # the book is the backtest on the same bars
    assert float(ask.evidence["backtest_sharpe_se"]) > 0.6  # the paper record's error widens the band


@pytest.mark.parametrize(("threshold", "retires"), [(50.0, True), (-50.0, False)])
def test_live_asks_to_retire_when_the_trailing_window_is_below_the_rule(threshold: float, retires: bool) -> None:
    rules = Rules(**{**RULES.__dict__, "retire_below_sharpe": threshold})
    run, closes = a_run(State.LIVE, rules)
    asks = [(run.book(t, closes[t]), run.ask()) for t in range(20, 28)]
    assert all(ask is None for _, ask in asks[:-1])  # the window is not full before 8 live sessions
    ask = asks[-1][1]
    assert (ask is not None) == retires
    if ask is not None:
        assert (ask.target, ask.evidence["rule"], ask.evidence["trailing_sessions"]) == (
            State.RETIRED,
            AUTOMATIC_RETIREMENT,
            "8",
        )


def test_a_new_state_counts_its_sessions_afresh_and_an_old_version_changes_nothing() -> None:
    run, closes = a_run()
    for t in range(20, 25):
        run.book(t, closes[t])
    run.awaiting = "cmd"
    with pytest.raises(ValueError, match="waiting for the answer"):
        run.book(25, closes[25])
    run.answered(State.LIVE, 4)
    assert (run.state, run.version, run.awaiting) == (State.LIVE, 4, None)
    period = run.book(25, closes[25])
    assert (period.state, period.sessions, period.cumulative_return) == (
        State.LIVE,
        1,
        pytest.approx(period.net_return),
    )
    run.moved(State.PAPER, 4)  # a redelivered older transition
    assert run.state is State.LIVE
