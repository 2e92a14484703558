"""Daily close histories and the aligned return matrix: hand-computed returns on aligned and misaligned calendars,
and pandas (outer join, carry forward, back fill, pct_change) as the independent reference on random calendars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streams.risk.history import History, aligned_returns, appended

DAY = 86_400 * 10**9
T0 = 1_750_000_000 * 10**9 // DAY * DAY  # a realistic midnight in ns: the matrix must keep such stamps apart


def day(k: int) -> int:
    return T0 + k * DAY


def history(closes: dict[int, float]) -> History:
    return [[day(k), close] for k, close in sorted(closes.items())]


# --- appended -------------------------------------------------------------------------------------------------------


def test_the_first_close_starts_a_history() -> None:
    assert appended(None, day(1), 100.0, 5) == [[day(1), 100.0]]
    assert appended([], day(1), 100.0, 5) == [[day(1), 100.0]]


def test_a_newer_close_is_appended_and_the_input_is_not_changed() -> None:
    before = history({1: 100.0, 2: 101.0})
    kept = [list(row) for row in before]
    assert appended(before, day(3), 102.5, 5) == history({1: 100.0, 2: 101.0, 3: 102.5})
    assert before == kept


@pytest.mark.parametrize(
    ("ts", "close"),
    [
        pytest.param(day(2), 101.0, id="redelivered-same-close"),
        pytest.param(day(2), 99.0, id="same-time-other-price"),
        pytest.param(day(1), 100.0, id="older-than-the-latest"),
        pytest.param(day(0), 120.0, id="older-than-all"),
        pytest.param(day(2), float("nan"), id="same-time-bad-price-ignored-as-a-redelivery"),
    ],
)
def test_a_close_not_newer_than_the_latest_changes_nothing(ts: int, close: float) -> None:
    assert appended(history({1: 100.0, 2: 101.0}), ts, close, 5) is None


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        pytest.param(3, {3: 103.0, 4: 104.0, 5: 105.0}, id="full-drops-the-oldest"),
        pytest.param(4, {2: 102.0, 3: 103.0, 4: 104.0, 5: 105.0}, id="one-below-keep-grows"),
        pytest.param(10, {2: 102.0, 3: 103.0, 4: 104.0, 5: 105.0}, id="below-keep-grows"),
        pytest.param(1, {5: 105.0}, id="keep-one"),
    ],
)
def test_the_history_keeps_the_last_keep_closes(keep: int, expected: dict[int, float]) -> None:
    before = history({2: 102.0, 3: 103.0, 4: 104.0})
    assert appended(before, day(5), 105.0, keep) == history(expected)


def test_keeping_appends_in_a_loop_holds_the_bound() -> None:
    found: History | None = None
    for k in range(1, 40):
        found = appended(found, day(k), 100.0 + k, 11)
        assert found is not None and len(found) == min(k, 11)
    assert found == history({k: 100.0 + k for k in range(29, 40)})


@pytest.mark.parametrize("close", [0.0, -1.0, -0.0, float("nan"), float("inf"), float("-inf")])
def test_a_close_that_is_not_a_positive_price_raises(close: float) -> None:
    with pytest.raises(ValueError, match="is not a positive price"):
        appended(history({1: 100.0}), day(2), close, 5)
    with pytest.raises(ValueError, match="is not a positive price"):
        appended(None, day(2), close, 5)


# --- aligned_returns ------------------------------------------------------------------------------------------------


def test_aligned_calendars_give_the_simple_returns_of_each_symbol() -> None:
    histories = {
        "AAA": history({1: 100.0, 2: 110.0, 3: 99.0, 4: 99.0}),
        "BBB": history({1: 50.0, 2: 55.0, 3: 55.0, 4: 44.0}),
    }
    found = aligned_returns(histories, ["AAA", "BBB"], lookback=10, min_observations=2)
    assert found.symbols == ("AAA", "BBB")
    assert found.missing == ()
    assert found.last == (day(4), day(4))
    expected = [[0.10, 0.10], [-0.10, 0.0], [0.0, -0.20]]  # 110/100-1, 99/110-1, 99/99-1 | 55/50-1, 55/55-1, 44/55-1
    np.testing.assert_allclose(found.returns, expected, rtol=0, atol=1e-15)


def test_a_session_a_symbol_misses_carries_its_previous_close() -> None:
    histories = {
        "AAA": history({1: 100.0, 2: 102.0, 3: 104.04, 4: 101.9592}),
        "BBB": history({1: 50.0, 3: 60.0, 4: 54.0}),  # no close on day 2: 50 carried (0%), then 60/50-1
    }
    found = aligned_returns(histories, ["AAA", "BBB"], lookback=10, min_observations=2)
    expected = [[0.02, 0.0], [0.02, 0.20], [-0.02, -0.10]]
    np.testing.assert_allclose(found.returns, expected, rtol=0, atol=1e-12)
    assert found.last == (day(4), day(4))


def test_a_symbol_whose_last_close_is_older_carries_it_to_the_end() -> None:
    histories = {"AAA": history({1: 10.0, 2: 11.0, 3: 12.1, 4: 13.31}), "BBB": history({1: 4.0, 2: 5.0, 3: 4.0})}
    found = aligned_returns(histories, ["AAA", "BBB"], lookback=10, min_observations=2)
    np.testing.assert_allclose(found.returns, [[0.1, 0.25], [0.1, -0.2], [0.1, 0.0]], rtol=0, atol=1e-12)
    assert found.last == (day(4), day(3))


def test_a_late_starting_symbol_has_zero_returns_before_its_first_close() -> None:
    histories = {
        "AAA": history({1: 100.0, 2: 101.0, 3: 102.01, 4: 103.0301, 5: 104.060401}),
        "NEW": history({3: 20.0, 4: 21.0, 5: 18.9}),
    }
    found = aligned_returns(histories, ["NEW", "AAA"], lookback=10, min_observations=2)
    assert found.symbols == ("NEW", "AAA")  # the order asked for, not the histories' order
    expected = [[0.0, 0.01], [0.0, 0.01], [0.05, 0.01], [-0.10, 0.01]]
    np.testing.assert_allclose(found.returns, expected, rtol=0, atol=1e-12)


def test_the_window_is_the_last_lookback_sessions_of_the_union() -> None:
    # AAA trades every day, BBB every other day: with lookback 3 the window is days 5..8 (4 closes, 3 returns);
    # BBB's close of day 4 is before the window and still carried into day 5.
    histories = {
        "AAA": history({k: 100.0 + k for k in range(1, 9)}),
        "BBB": history({2: 10.0, 4: 20.0, 6: 25.0, 8: 30.0}),
    }
    found = aligned_returns(histories, ["AAA", "BBB"], lookback=3, min_observations=3)
    expected = [[106 / 105 - 1, 25 / 20 - 1], [107 / 106 - 1, 0.0], [108 / 107 - 1, 30 / 25 - 1]]
    np.testing.assert_allclose(found.returns, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("lengths", "min_observations", "symbols", "kept", "missing"),
    [
        pytest.param({"A": 5, "B": 5}, 4, ["A", "B"], ("A", "B"), (), id="exactly-min-returns-kept"),
        pytest.param({"A": 5, "B": 4}, 4, ["A", "B"], ("A",), ("B",), id="one-return-short-missing"),
        pytest.param({"A": 5}, 4, ["B", "A", "C"], ("A",), ("B", "C"), id="no-history-missing-in-asked-order"),
        pytest.param({"A": 1, "B": 2}, 1, ["B", "A"], ("B",), ("A",), id="a-single-close-has-no-return"),
        pytest.param({"A": 3, "B": 3}, 5, ["A", "B"], (), ("A", "B"), id="nothing-kept"),
        pytest.param({}, 1, [], (), (), id="nothing-asked"),
    ],
)
def test_symbols_with_too_short_histories_are_missing(
    lengths: dict[str, int],
    min_observations: int,
    symbols: list[str],
    kept: tuple[str, ...],
    missing: tuple[str, ...],
) -> None:
    histories = {s: history({k: 10.0 + k + i for k in range(n)}) for i, (s, n) in enumerate(lengths.items())}
    found = aligned_returns(histories, symbols, lookback=20, min_observations=min_observations)
    assert found.symbols == kept
    assert found.missing == missing
    assert found.returns.shape[1] == len(kept) if kept else found.returns.shape == (0, 0)
    assert found.last == tuple(day(lengths[s] - 1) for s in kept)


def test_a_missing_symbol_does_not_change_the_calendar_of_the_others() -> None:
    base = {"AAA": history({1: 100.0, 3: 110.0, 4: 121.0})}
    alone = aligned_returns(base, ["AAA"], lookback=10, min_observations=2)
    with_short = aligned_returns({**base, "SHORT": history({2: 5.0})}, ["AAA", "SHORT"], 10, 2)
    assert with_short.missing == ("SHORT",)
    np.testing.assert_array_equal(with_short.returns, alone.returns)
    np.testing.assert_allclose(alone.returns, [[0.1], [0.1]], rtol=0, atol=1e-15)


def pandas_returns(histories: dict[str, History], symbols: list[str], lookback: int) -> np.ndarray:
    """Outer join on time, carry forward, back fill (a late start does not move), last lookback+1 sessions."""
    frame = pd.concat(
        {s: pd.Series([c for _, c in histories[s]], index=[int(t) for t, _ in histories[s]]) for s in symbols}, axis=1
    ).sort_index()
    closes = frame.ffill().bfill().iloc[-(lookback + 1) :]
    return np.asarray(closes.pct_change().iloc[1:][symbols].to_numpy(), dtype=float)


@pytest.mark.parametrize("seed", range(12), ids=lambda seed: f"seed-{seed}")
def test_random_calendars_match_pandas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lookback = int(rng.integers(5, 40))
    symbols = [f"S{i}" for i in range(int(rng.integers(1, 6)))]
    histories: dict[str, History] = {}
    for symbol in symbols:
        start = int(rng.integers(0, 30))
        days = [k for k in range(start, 80) if rng.uniform() < 0.8]
        closes = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, len(days))))
        found: History | None = None
        for k, close in zip(days, closes, strict=True):
            found = appended(found, day(k), float(close), lookback + 1) or found
        if found:
            histories[symbol] = found
    asked = list(rng.permutation(symbols))
    result = aligned_returns(histories, asked, lookback, min_observations=3)
    kept = [s for s in asked if len(histories.get(s, [])) > 3]
    assert list(result.symbols) == kept
    assert list(result.missing) == [s for s in asked if s not in kept]
    if kept:
        np.testing.assert_allclose(result.returns, pandas_returns(histories, kept, lookback), rtol=1e-12, atol=1e-15)
        assert result.returns.shape[0] <= lookback
