"""Backtest-live parity: the paper book, fed one bar at a time, books the positions and net returns the backtest's
kernel computes over the whole history at once, for every family, daily and intraday."""

from __future__ import annotations

import numpy as np
import pytest

from streams.discovery.backtest import net_returns
from streams.lifecycle.paper import PaperBook
from streams.strategies import FAMILIES, Bars

LEGS = {"pairs": 2, "rotation": 5}
COST = 2.15e-4


def history(legs: int, bars: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(2e-4, 1e-2, (bars, legs)), axis=0))


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize(("intraday", "level"), [(False, 1), (False, 5), (True, 3)])
def test_the_book_bar_by_bar_equals_the_backtest_over_the_whole_history(name: str, intraday: bool, level: int) -> None:
    family = FAMILIES[name]
    closes = history(LEGS.get(name, 1), 300, seed=level)
    ends = np.zeros(closes.shape[0], dtype=np.bool_)
    if intraday:
        ends[77::78] = True  # 5-minute bars of a 6.5-hour session
    lookback = family.parameters[0]  # the shortest lookback: the most bars traded
    params = {p.name: p.default for p in family.parameters[:level]} | {lookback.name: lookback.low}
    bars_per_year = 252.0 * (78 if intraday else 1)
    positions = family.positions(Bars(closes, ends, bars_per_year), params)
    expected, _ = net_returns(positions, closes, COST)

    book = PaperBook(family, params, COST, bars_per_year)
    booked = [book.on_bar(closes[t], bool(ends[t])) for t in range(closes.shape[0])]
    np.testing.assert_array_equal(np.array([b.position for b in booked]), positions)
    np.testing.assert_allclose([b.net_return for b in booked], expected, rtol=0, atol=1e-15)
    assert any(np.any(b.traded != 0) for b in booked)  # the case trades: the parity is not of a flat book


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("warm_bars", [0, 1, 40, 299])
def test_a_book_warmed_on_the_history_books_the_rest_as_the_backtest(name: str, warm_bars: int) -> None:
    family = FAMILIES[name]
    closes = history(LEGS.get(name, 1), 300, seed=7)
    ends = np.zeros(closes.shape[0], dtype=np.bool_)
    lookback = family.parameters[0]
    params = {p.name: p.default for p in family.parameters[:2]} | {lookback.name: lookback.low}
    positions = family.positions(Bars(closes, ends, 252.0), params)
    expected, _ = net_returns(positions, closes, COST)

    book = PaperBook(family, params, COST, 252.0)
    book.warm(closes[:warm_bars], ends[:warm_bars])
    booked = [book.on_bar(closes[t], False) for t in range(warm_bars, closes.shape[0])]
    np.testing.assert_array_equal(np.array([b.position for b in booked]), positions[warm_bars:])
    np.testing.assert_allclose([b.net_return for b in booked], expected[warm_bars:], rtol=0, atol=1e-15)
