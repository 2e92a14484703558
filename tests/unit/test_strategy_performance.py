"""The strategy runner's pure part: what a candidate tells it, how sessions are counted per state, and when the
record asks for a promotion or a retirement."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from streams.discovery.backtest import net_returns
from streams.lifecycle.machine import AUTOMATIC_RETIREMENT, Rules, State
from streams.lifecycle.performance import (
    NS_PER_DAY,
    Due,
    Recipe,
    StrategyRun,
    Unbookable,
    annualised_sharpe,
    due,
    last_per_week,
    normal_sharpe_se,
    recipe_of,
)
from streams.strategies import MOMENTUM, Bars

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
        ({"timeframe": "1h"}, "not 1h"),
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
    assert recipe.backtest_sharpe_se == pytest.approx(normal_sharpe_se(1.5 / math.sqrt(252), count, 252))


@pytest.mark.parametrize(
    ("per_bar", "count", "expected"),
    [(0.0, 253, 1.0), (0.1, 253, math.sqrt(1.005)), (0.0, 64, 2.0)],
)
def test_a_normal_sharpe_standard_error_is_los(per_bar: float, count: int, expected: float) -> None:
    assert normal_sharpe_se(per_bar, count, 252) == pytest.approx(expected)


def test_an_annualised_sharpe_ratio_needs_two_returns_and_some_variation_and_has_mertens_error() -> None:
    assert annualised_sharpe(np.array([0.01]), 252) is None
    assert annualised_sharpe(np.zeros(5), 252) is None
    returns = np.random.default_rng(5).standard_t(3, 500) * 0.01 + 0.001
    sharpe, se = annualised_sharpe(returns, 252) or (0.0, 0.0)
    per_bar = returns.mean() / returns.std(ddof=1)
    assert sharpe == pytest.approx(per_bar * math.sqrt(252))
    centred = returns - returns.mean()
    skew = (centred**3).mean() / (centred**2).mean() ** 1.5
    kurt = (centred**4).mean() / (centred**2).mean() ** 2
    mertens = math.sqrt((1 - skew * per_bar + (kurt - 1) / 4 * per_bar**2) / (returns.size - 1) * 252)
    assert se == pytest.approx(mertens)
    assert se > normal_sharpe_se(per_bar, returns.size, 252)  # fat tails widen it


def a_run(state: State = State.PAPER, rules: Rules = RULES) -> tuple[StrategyRun, np.ndarray]:
    params = {"lookback": 5.0, "entry": 0.25}
    recipe = Recipe("s", "c", "1d", MOMENTUM, params, ("X",), 2e-4, 252.0, 252.0, 0, 0, 1.5, 0.6)
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(5e-3, 1e-2, (80, 1)), axis=0))
    run = StrategyRun(recipe, rules, state, 3)
    run.warm(list(range(20)), closes[:20])
    return run, closes


def test_paper_asks_for_live_after_each_full_paper_period_with_its_record() -> None:
    run, closes = a_run()
    asks = []
    for t in range(20, 31):
        (period,) = run.book(Due([t], closes[t : t + 1]))
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
    asks = [(run.book(Due([t], closes[t : t + 1]))[0], run.ask()) for t in range(20, 28)]
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
        run.book(Due([t], closes[t : t + 1]))
    run.awaiting = "cmd"
    with pytest.raises(ValueError, match="waiting for the answer"):
        run.book(Due([25], closes[25:26]))
    run.answered(State.LIVE, 4)
    assert (run.state, run.version, run.awaiting) == (State.LIVE, 4, None)
    (period,) = run.book(Due([25], closes[25:26]))
    assert (period.state, period.sessions, period.cumulative_return) == (
        State.LIVE,
        1,
        pytest.approx(period.net_return),
    )
    run.moved(State.PAPER, 4)  # a redelivered older transition
    assert run.state is State.LIVE


MONDAY = 4 * NS_PER_DAY  # 1970-01-05


def weekdays(count: int) -> list[int]:
    """Starts of ``count`` weekdays from a Monday."""
    return [MONDAY + (week * 7 + day) * NS_PER_DAY for week in range(count // 5 + 1) for day in range(5)][:count]


@pytest.mark.parametrize(
    ("timeframe", "through_day", "history_end_day", "booked", "consumed_day"),
    [
        ("1d", 9, 0, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9)], 9),
        ("1w", 9, -10, [(0, 4)], 4),  # the second week is booked once a leg prints in the third
        ("1w", 10, -10, [(0, 4), (5, 9)], 9),
        ("1w", 10, 2, [(5, 9)], 9),  # the rest of the week the backtest ended in is passed over
        ("1w", 3, -10, [], None),
    ],
)
def test_periods_are_due_when_every_leg_has_printed_past_them(
    timeframe: str, through_day: int, history_end_day: int, booked: list[tuple[int, int]], consumed_day: int | None
) -> None:
    starts = weekdays(15)
    rows = [s for s in starts if s <= starts[through_day]]
    closes = np.arange(len(rows), dtype=np.float64)[:, None]
    history_end = MONDAY + history_end_day * NS_PER_DAY
    periods, consumed = due(timeframe, rows, closes, starts[through_day], history_end)
    day = {s: i for i, s in enumerate(starts)}
    assert [(day[p.starts[0]], day[p.starts[-1]]) for p in periods] == booked
    assert [float(p.closes[-1, 0]) for p in periods] == [float(last) for _, last in booked]
    assert (day[consumed] if consumed is not None else None) == consumed_day


def test_a_weekly_strategy_booked_week_by_week_equals_the_backtest_on_weekly_closes() -> None:
    starts = weekdays(400)
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(1e-3, 1e-2, (400, 1)), axis=0))
    weekly_starts, weekly = last_per_week(starts, closes)
    assert len(weekly_starts) == 80 and weekly_starts[0] == starts[4]
    params = {"lookback": 5.0, "entry": 0.25}
    positions = MOMENTUM.positions(Bars(weekly, np.zeros(80, dtype=np.bool_), 50.4), params)
    expected, _ = net_returns(positions, weekly, 2e-4)

    history_end = starts[199]  # a Friday: the backtest saw 40 whole weeks
    recipe = Recipe("s", "c", "1w", MOMENTUM, params, ("X",), 2e-4, 50.4, 252.0, starts[0], history_end, 1.5, 0.6)
    run = StrategyRun(recipe, RULES, State.LIVE, 4)
    run.warm(starts[:200], closes[:200])
    weeks, _ = due("1w", starts[200:], closes[200:], starts[-1], history_end)
    assert len(weeks) == 39  # the last week is not complete until a later one starts
    sessions = [run.book(week) for week in weeks]
    assert [len(week) for week in sessions] == [5] * 39  # each session marked to market
    np.testing.assert_array_equal([week[-1].positions["X"] for week in sessions], positions[40:79, 0])
    np.testing.assert_array_equal([week[0].positions["X"] for week in sessions], positions[39:78, 0])  # held
    compounded = [np.prod([1 + s.net_return for s in week]) - 1 for week in sessions]
    np.testing.assert_allclose(compounded, expected[40:79], rtol=0, atol=1e-14)
    assert all(s.cost == 0 for week in sessions for s in week[:-1])  # the trade is at the week's close
