"""VaR backtests against their references: Kupiec's LR against the binomial likelihood ratio and Kupiec's published
non-rejection regions; Christoffersen's LR against hand-counted transitions; rolling forecasts that never see the
day they forecast and agree with a per-day loop; i.i.d. normal returns accepted, GARCH returns caught clustering;
and the known result on twenty years of the S&P 500 that the 99% normal VaR is breached far too often."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from scipy import stats

from streams.risk import backtest as module
from streams.risk.backtest import (
    METHODS,
    backtest,
    backtest_all,
    christoffersen,
    forecasts,
    kupiec,
    verdict,
)


def _xlnx(count: float, probability: float) -> float:
    return count * math.log(probability) if count else 0.0


@pytest.mark.parametrize(
    ("exceptions", "observations", "level"),
    [
        (0, 250, 0.99),
        (1, 250, 0.99),
        (4, 250, 0.99),
        (13, 250, 0.95),
        (25, 250, 0.95),
        (250, 250, 0.99),
        (60, 1000, 0.95),
        (3, 10, 0.9),
        (5000, 5000, 0.95),
    ],
)
def test_kupiec_is_the_binomial_likelihood_ratio_of_the_observed_rate_against_the_promised_one(
    exceptions: int, observations: int, level: float
) -> None:
    x, t, p = exceptions, observations, 1.0 - level
    by_hand = -2 * (_xlnx(t - x, 1 - p) + _xlnx(x, p)) + 2 * (_xlnx(t - x, 1 - x / t) + _xlnx(x, x / t))
    binomial = 2 * (stats.binom.logpmf(x, t, x / t) - stats.binom.logpmf(x, t, p))  # the C(T, x) cancels
    lr, p_value = kupiec(exceptions, observations, level)
    assert lr == pytest.approx(by_hand, rel=1e-12, abs=1e-12)
    assert lr == pytest.approx(binomial, rel=1e-9, abs=1e-9)
    assert p_value == pytest.approx(stats.chi2.sf(by_hand, 1), rel=1e-12)
    assert math.isfinite(lr) and 0.0 <= p_value <= 1.0


@pytest.mark.parametrize(
    ("exceptions", "lr", "accepted"),
    [(0, 5.0252, False), (1, 1.1765, True), (4, 0.7691, True), (6, 3.5554, True), (7, 5.4970, False),
     (8, 7.7336, False), (9, 10.2290, False)],
)  # fmt: skip
def test_kupiec_on_a_year_of_99_percent_var(exceptions: int, lr: float, accepted: bool) -> None:
    """T = 250 at 99%: 2.5 exceptions expected; 1 to 6 pass at 5% (chi2(1) critical value 3.841), none or 7+
    fail, the last the Basel 'yellow zone' territory."""
    statistic, p_value = kupiec(exceptions, 250, 0.99)
    assert statistic == pytest.approx(lr, abs=1e-4)
    assert (p_value >= 0.05) is accepted
    assert bool(statistic <= stats.chi2.ppf(0.95, 1)) is accepted


@pytest.mark.parametrize(
    ("tail", "observations", "lowest", "highest"),
    [
        (0.01, 255, 1, 6), (0.01, 510, 2, 10), (0.01, 1000, 5, 16),
        (0.025, 255, 3, 11), (0.025, 510, 7, 20), (0.025, 1000, 16, 35),
        (0.05, 255, 7, 20), (0.05, 510, 17, 35), (0.05, 1000, 38, 64),
        (0.075, 255, 12, 27), (0.075, 510, 28, 50), (0.075, 1000, 60, 91),
        (0.10, 255, 17, 35), (0.10, 510, 39, 64), (0.10, 1000, 82, 119),
    ],
)  # fmt: skip
def test_kupiec_reproduces_the_published_non_rejection_regions(
    tail: float, observations: int, lowest: int, highest: int
) -> None:
    """Kupiec (1995), as tabulated in Jorion's Value at Risk: exception counts not rejected at 5%. The one cell
    the table prints without a lower bound, 99% over 255 days ('N < 7'), still rejects N = 0 by the statistic
    itself: LR = -2 * 255 * ln 0.99 = 5.13 > 3.84."""
    accepted = [x for x in range(observations + 1) if kupiec(x, observations, 1.0 - tail)[1] >= 0.05]
    assert (min(accepted), max(accepted)) == (lowest, highest)
    assert accepted == list(range(lowest, highest + 1))


@pytest.mark.parametrize(("exceptions", "observations"), [(-1, 10), (11, 10), (0, 0)])
def test_kupiec_refuses_impossible_counts(exceptions: int, observations: int) -> None:
    with pytest.raises(ValueError, match="exceptions"):
        kupiec(exceptions, observations, 0.99)


def _christoffersen_by_hand(n00: int, n01: int, n10: int, n11: int) -> float:
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    markov = _xlnx(n00, 1 - pi01) + _xlnx(n01, pi01) + _xlnx(n10, 1 - pi11) + _xlnx(n11, pi11)
    return 2 * (markov - _xlnx(n00 + n10, 1 - pi) - _xlnx(n01 + n11, pi))


def _counted(hits: list[int]) -> tuple[int, int, int, int]:
    pairs = list(pairwise(hits))
    return pairs.count((0, 0)), pairs.count((0, 1)), pairs.count((1, 0)), pairs.count((1, 1))


@pytest.mark.parametrize(
    ("hits", "counts"),
    [
        ([0, 0, 1, 1, 0, 1, 0, 0], (2, 2, 2, 1)),
        ([0, 1] * 50, (0, 50, 49, 0)),  # alternating: a hit never follows a hit
        ([0] * 45 + [1] * 5 + [0] * 45 + [1] * 5, (88, 2, 1, 8)),  # clustered in two runs
        ([1 if i % 20 == 7 else 0 for i in range(400)], (359, 20, 20, 0)),  # evenly spread, 5%
        ([0] * 100, (99, 0, 0, 0)),
        ([1] * 100, (0, 0, 0, 99)),
        ([0] * 99 + [1], (98, 1, 0, 0)),  # one hit on the last day: nothing conditions on it
        ([1] + [0] * 99, (98, 0, 1, 0)),
    ],
)
def test_christoffersen_is_the_markov_chain_lr_on_the_transition_counts(
    hits: list[int], counts: tuple[int, int, int, int]
) -> None:
    assert _counted(hits) == counts
    lr, p_value = christoffersen(np.array(hits, dtype=bool))
    assert lr == pytest.approx(_christoffersen_by_hand(*counts), rel=1e-12, abs=1e-12)
    assert p_value == pytest.approx(stats.chi2.sf(lr, 1), rel=1e-12)
    assert math.isfinite(lr)


@pytest.mark.parametrize(
    ("hits", "independent"),
    [
        ([0, 1] * 50, False),
        ([0] * 45 + [1] * 5 + [0] * 45 + [1] * 5, False),
        ([1 if i % 20 == 7 else 0 for i in range(400)], True),
        ([0] * 100, True),
        ([1] * 100, True),  # one state throughout: nothing to tell apart
    ],
)
def test_christoffersen_rejects_dependence_either_way_and_nothing_else(hits: list[int], independent: bool) -> None:
    assert (christoffersen(np.array(hits, dtype=bool))[1] >= 0.05) is independent


@pytest.mark.parametrize(
    ("hits", "level", "kupiec_p", "christoffersen_p", "significance", "expected"),
    [
        ([0] * 95 + [1] * 5, 0.95, 0.5, 0.5, 0.05, "accepted"),
        ([0] * 90 + [1] * 10, 0.95, 0.01, 0.5, 0.05, "too many exceptions"),
        ([0] * 100, 0.95, 0.01, 0.5, 0.05, "too few exceptions"),
        ([0] * 90 + [1] * 10, 0.95, 0.5, 0.01, 0.05, "exceptions cluster"),
        ([0, 1] * 50, 0.5, 0.5, 0.01, 0.05, "exceptions alternate"),
        ([0] * 90 + [1] * 10, 0.95, 0.01, 0.01, 0.05, "too many exceptions; exceptions cluster"),
        ([0] * 90 + [1] * 10, 0.95, 0.03, 0.03, 0.01, "accepted"),
        ([0] * 90 + [1] * 10, 0.95, 0.05, 0.05, 0.05, "accepted"),
    ],
)
def test_verdict_names_every_reason_to_reject(
    hits: list[int], level: float, kupiec_p: float, christoffersen_p: float, significance: float, expected: str
) -> None:
    assert verdict(np.array(hits, dtype=bool), level, kupiec_p, christoffersen_p, significance) == expected


def _normal_returns(days: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(3e-4, 1e-2, days)


def _garch_returns(days: int, seed: int) -> np.ndarray:
    """GARCH(1,1) with persistence 0.98 and Student-t(5) shocks: volatility that clusters, as in equity indices."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(5, days) / math.sqrt(5 / 3)
    omega, alpha, beta = 2e-6, 0.10, 0.88
    variance = omega / (1 - alpha - beta)
    returns = np.empty(days)
    for day in range(days):
        returns[day] = math.sqrt(variance) * shocks[day]
        variance = omega + alpha * returns[day] ** 2 + beta * variance
    return returns


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("day", [250, 400, 999])
def test_a_forecast_never_sees_the_day_it_forecasts(method: str, day: int) -> None:
    returns = _normal_returns(1000, 4)
    shocked = returns.copy()
    shocked[day:] = -0.2  # a crash from ``day`` on
    before, after = forecasts(returns, method, 0.99, 250), forecasts(shocked, method, 0.99, 250)
    assert before.shape == (750,)
    np.testing.assert_array_equal(before[: day - 250 + 1], after[: day - 250 + 1])  # up to and including ``day``
    if day + 1 < 1000:
        assert after[day - 250 + 1] > before[day - 250 + 1]  # and the next day's window has it


@pytest.mark.parametrize("window", [250, 333])
@pytest.mark.parametrize("level", [0.95, 0.99])
def test_rolling_forecasts_agree_with_a_loop_over_days(window: int, level: float) -> None:
    returns = _garch_returns(900, 5)
    days = range(window, returns.size)
    trailing = [returns[t - window : t] for t in days]
    z = stats.norm.ppf(1 - level)
    historical = [-np.quantile(w, 1 - level, method="inverted_cdf") for w in trailing]
    normal = [-(w.mean() + w.std(ddof=1) * z) for w in trailing]
    cornish_fisher = []
    for w in trailing:
        s, k = stats.skew(w, bias=False), stats.kurtosis(w, bias=False)
        zcf = z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
        cornish_fisher.append(-(w.mean() + w.std(ddof=1) * zcf))
    np.testing.assert_allclose(forecasts(returns, "HISTORICAL", level, window), historical, rtol=0, atol=0)
    np.testing.assert_allclose(forecasts(returns, "PARAMETRIC", level, window), normal, rtol=1e-10)
    np.testing.assert_allclose(forecasts(returns, "CORNISH_FISHER", level, window), cornish_fisher, rtol=1e-9)
    coverage = backtest(returns, "HISTORICAL", level, window)
    assert coverage.exceptions == sum(returns[t] < -v for t, v in zip(days, historical, strict=True))
    assert coverage.observations == returns.size - window


def test_monte_carlo_is_the_window_normal_at_one_shared_draw_of_shocks() -> None:
    """With the same standard normals every day, the k-th worst scenario of ``mean + std z`` is ``mean + std``
    times the k-th worst shock: the simulated VaR is the parametric one with the draw's quantile for Phi^-1."""
    returns = _garch_returns(800, 6)
    shocks = np.sort(np.random.default_rng(11).standard_normal(4000))
    worst = shocks[math.ceil(round(4000 * 0.01, 9)) - 1]
    windows = np.lib.stride_tricks.sliding_window_view(returns[:-1], 250)
    expected = -(windows.mean(axis=1) + windows.std(axis=1, ddof=1) * worst)
    simulated = forecasts(returns, "MONTE_CARLO", 0.99, 250, paths=4000, seed=11)
    np.testing.assert_allclose(simulated, expected, rtol=1e-12)


def test_monte_carlo_in_chunks_is_the_same_as_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    returns = _normal_returns(700, 7)
    whole = forecasts(returns, "MONTE_CARLO", 0.95, 250, paths=2000)
    monkeypatch.setattr(module, "SIMULATED_VALUES_PER_CHUNK", 2000 * 7)  # 450 days in chunks of 7, the last of 2
    np.testing.assert_array_equal(forecasts(returns, "MONTE_CARLO", 0.95, 250, paths=2000), whole)


def test_monte_carlo_differs_from_parametric_only_by_simulation_error() -> None:
    returns = _garch_returns(600, 8)
    parametric = forecasts(returns, "PARAMETRIC", 0.99, 250)
    np.testing.assert_allclose(forecasts(returns, "MONTE_CARLO", 0.99, 250, paths=400_000), parametric, rtol=0.01)
    rough = forecasts(returns, "MONTE_CARLO", 0.99, 250, paths=500)
    assert not np.allclose(rough, parametric, rtol=0.01)


@pytest.mark.parametrize(
    ("method", "window", "match"), [("GARCH", 250, "unknown VaR method"), ("HISTORICAL", 1000, "window")]
)
def test_forecasts_refuse_unknown_methods_and_windows_as_long_as_the_history(
    method: str, window: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        forecasts(_normal_returns(1000, 9), method, 0.99, window)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("level", [0.95, 0.99])
def test_var_of_iid_normal_returns_passes_both_tests(method: str, level: float) -> None:
    coverage = backtest(_normal_returns(3250, 10), method, level, 250)
    assert coverage.observations == 3000
    assert coverage.expected == pytest.approx(3000 * (1 - level))
    assert coverage.verdict == "accepted"
    assert coverage.kupiec_p >= 0.05 and coverage.christoffersen_p >= 0.05


@pytest.mark.parametrize("method", METHODS)
def test_var_on_a_long_window_of_garch_returns_misses_the_clustering(method: str) -> None:
    coverage = backtest(_garch_returns(5250, 12), method, 0.95, 250)
    assert coverage.christoffersen_p < 0.01
    assert "exceptions cluster" in coverage.verdict


def test_conditional_coverage_is_the_sum_of_the_two_lrs_against_chi2_with_two_degrees() -> None:
    coverage = backtest(_garch_returns(3000, 13), "PARAMETRIC", 0.99, 250)
    assert (coverage.kupiec_lr, coverage.kupiec_p) == kupiec(coverage.exceptions, 2750, 0.99)
    assert coverage.conditional_lr == pytest.approx(coverage.kupiec_lr + coverage.christoffersen_lr, rel=1e-15)
    assert coverage.conditional_p == pytest.approx(stats.chi2.sf(coverage.conditional_lr, 2), rel=1e-12)
    assert coverage.rate == coverage.exceptions / coverage.observations


def test_backtest_all_covers_every_method_at_every_level_in_table_order() -> None:
    table = backtest_all(_normal_returns(600, 14), window=250)
    assert [(c.method, c.level) for c in table] == [(m, lv) for m in METHODS for lv in (0.95, 0.99)]


def test_on_the_sp500_normal_var_is_breached_too_often_and_history_comes_closer() -> None:
    """S&P 500 daily returns 1999-2018 (``arch``'s copy): fat tails make the 99% normal VaR fail Kupiec, the
    empirical quantile lands nearer the promised 1%, and volatility clustering shows at 95% whatever the method."""
    from arch.data import sp500

    returns = sp500.load()["Adj Close"].pct_change().dropna().to_numpy()
    table = {(c.method, c.level): c for c in backtest_all(returns, window=250)}
    normal, empirical = table["PARAMETRIC", 0.99], table["HISTORICAL", 0.99]
    assert normal.exceptions > 2 * normal.expected
    assert normal.kupiec_p < 0.01 and normal.verdict.startswith("too many exceptions")
    assert abs(empirical.rate - 0.01) < abs(normal.rate - 0.01) / 2
    assert abs(table["CORNISH_FISHER", 0.99].rate - 0.01) < abs(normal.rate - 0.01)
    assert all("exceptions cluster" in table[method, 0.95].verdict for method in METHODS)
    simulated = table["MONTE_CARLO", 0.99]
    assert abs(simulated.exceptions - normal.exceptions) <= 0.1 * normal.exceptions
