"""VaR and CVaR estimators and the book risk model against direct computations and scipy, numpy and sklearn."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy import integrate, stats
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from streams.risk.measures import (
    LEVELS,
    METHODS,
    RiskModel,
    cornish_fisher,
    covariance_root,
    drawdown,
    historical,
    ledoit_wolf,
    moments,
    parametric,
)


def fat_tailed(observations: int, columns: int, seed: int) -> np.ndarray:
    """Daily P&L with Student-t tails, skew from a squared term, and a different scale per column."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(4, (observations, columns))
    return (shocks - 0.1 * shocks**2) * rng.uniform(100.0, 1000.0, columns)


def market(observations: int, symbols: int, seed: int) -> np.ndarray:
    """Daily simple returns with a common factor, so the covariance has structure for the shrinkage to keep."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0.0, 0.01, (observations, 1))
    return 0.0003 + common * rng.uniform(0.5, 1.5, symbols) + rng.normal(0.0, 0.015, (observations, symbols))


def book(symbols: int, strategies: int, seed: int) -> np.ndarray:
    """Signed market values: each strategy holds about a third of the symbols, long and short."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 10_000.0, (symbols, strategies)) * (rng.uniform(size=(symbols, strategies)) < 0.3)


def normal_var(mean: float, std: float, level: float) -> float:
    return float(-stats.norm.ppf(1.0 - level, loc=mean, scale=std))


def normal_cvar(mean: float, std: float, level: float) -> float:
    cut = stats.norm.ppf(1.0 - level, loc=mean, scale=std)
    return float(-stats.norm.expect(lambda x: x, loc=mean, scale=std, ub=cut, conditional=True))


def textbook_cornish_fisher(z: float, skew: float, kurtosis: float) -> float:
    return z + (z**2 - 1) * skew / 6 + (z**3 - 3 * z) * kurtosis / 24 - (2 * z**3 - 5 * z) * skew**2 / 36


@pytest.mark.parametrize(
    ("observations", "columns", "level", "tail"),
    [
        (250, 1, 0.95, 13),
        (250, 6, 0.99, 3),
        (100, 4, 0.95, 5),  # T·(1-level) an exact integer: 5, not the 6 that 1 - 0.95 = 0.05000000000000004 gives
        (100, 4, 0.99, 1),
        (1000, 3, 0.975, 25),
        (7, 2, 0.95, 1),
    ],
)
def test_historical_is_the_tail_of_the_sorted_array_and_numpys_inverted_cdf_quantile(
    observations: int, columns: int, level: float, tail: int
) -> None:
    pnl = fat_tailed(observations, columns, seed=observations + columns)
    ordered = np.sort(pnl, axis=0)
    var, cvar = historical(pnl, level)
    np.testing.assert_array_equal(var, -ordered[tail - 1])
    np.testing.assert_allclose(cvar, -ordered[:tail].mean(axis=0), rtol=1e-13)
    quantile = np.quantile(pnl, round(1.0 - level, 12), axis=0, method="inverted_cdf")
    np.testing.assert_array_equal(var, -quantile)
    assert np.all(cvar >= var)


def test_historical_on_one_column_equals_the_same_column_in_a_matrix() -> None:
    pnl = fat_tailed(250, 3, seed=5)
    for level in LEVELS:
        one_var, one_cvar = historical(pnl[:, 1], level)
        var, cvar = historical(pnl, level)
        assert (float(one_var), float(one_cvar)) == (var[1], cvar[1])


def test_historical_over_sliding_windows_equals_one_window_at_a_time() -> None:
    """The backtest's call: every window of a long series as one column each."""
    series = fat_tailed(600, 1, seed=9)[:, 0]
    windows = sliding_window_view(series, 250)
    var, cvar = historical(windows.T, 0.99)
    assert var.shape == cvar.shape == (351,)
    for start in (0, 17, 350):
        window = np.sort(series[start : start + 250])
        assert (var[start], cvar[start]) == pytest.approx((-window[2], -window[:3].mean()), rel=1e-13)


@pytest.mark.parametrize(
    ("mean", "std", "level"),
    [(0.0, 1.0, 0.95), (0.0, 1.0, 0.99), (120.0, 2_500.0, 0.95), (-40.0, 800.0, 0.99), (0.001, 0.02, 0.975)],
)
def test_parametric_is_scipys_normal_quantile_and_tail_mean(mean: float, std: float, level: float) -> None:
    var, cvar = parametric(mean, std, level)
    assert float(var) == pytest.approx(normal_var(mean, std, level), rel=1e-12)
    assert float(cvar) == pytest.approx(normal_cvar(mean, std, level), rel=1e-8)
    assert cvar > var


def test_parametric_broadcasts_over_scopes() -> None:
    means, stds = np.array([0.0, 10.0, -5.0]), np.array([100.0, 200.0, 50.0])
    var, cvar = parametric(means, stds, 0.99)
    expected = [(normal_var(m, s, 0.99), normal_cvar(m, s, 0.99)) for m, s in zip(means, stds, strict=True)]
    np.testing.assert_allclose(np.column_stack((var, cvar)), expected, rtol=1e-8)


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99, 0.999])
def test_cornish_fisher_without_skew_or_kurtosis_is_the_normal(level: float) -> None:
    mean, std = np.array([0.0, 50.0]), np.array([1.0, 900.0])
    np.testing.assert_allclose(cornish_fisher(mean, std, 0.0, 0.0, level), parametric(mean, std, level), rtol=1e-12)


@pytest.mark.parametrize(
    ("skew", "kurtosis", "level"),
    [(-0.5, 2.0, 0.95), (-0.5, 2.0, 0.99), (0.3, 1.0, 0.99), (-1.0, 3.0, 0.975), (0.0, 4.0, 0.99), (-0.8, 0.0, 0.95)],
)
def test_cornish_fisher_is_the_textbook_expansion_and_its_cvar_the_tail_average(
    skew: float, kurtosis: float, level: float
) -> None:
    mean, std = 25.0, 1_000.0
    var, cvar = cornish_fisher(mean, std, skew, kurtosis, level)
    z = stats.norm.ppf(1 - level)
    assert float(var) == pytest.approx(-(mean + std * textbook_cornish_fisher(z, skew, kurtosis)), rel=1e-12)
    # the average over u in (0, 1-level) of z_cf(Φ⁻¹(u)), integrated in z = Φ⁻¹(u) where the integrand is smooth
    tail_integral, _ = integrate.quad(
        lambda x: textbook_cornish_fisher(x, skew, kurtosis) * stats.norm.pdf(x), -np.inf, z, epsabs=1e-14
    )
    assert float(cvar) == pytest.approx(-(mean + std * tail_integral / (1.0 - level)), rel=1e-10)
    assert cvar >= var


@pytest.mark.parametrize(("observations", "columns", "seed"), [(250, 5, 1), (30, 2, 2), (4, 3, 3), (1_000, 1, 4)])
def test_moments_are_scipys_bias_corrected_ones_and_pandas(observations: int, columns: int, seed: int) -> None:
    pnl = fat_tailed(observations, columns, seed)
    mean, std, skew, kurtosis = moments(pnl)
    np.testing.assert_allclose(mean, pnl.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, stats.tstd(pnl, axis=0), rtol=1e-12)
    np.testing.assert_allclose(skew, stats.skew(pnl, axis=0, bias=False), rtol=1e-10)
    np.testing.assert_allclose(kurtosis, stats.kurtosis(pnl, axis=0, fisher=True, bias=False), rtol=1e-10)
    frame = pd.DataFrame(pnl)
    np.testing.assert_allclose(np.column_stack((skew, kurtosis)), np.column_stack((frame.skew(), frame.kurt())))


def test_a_flat_pnl_has_zero_moments_and_zero_risk_by_every_formula() -> None:
    pnl = np.column_stack((np.zeros(250), np.full(250, 3.7), fat_tailed(250, 1, seed=8)[:, 0]))
    mean, std, skew, kurtosis = moments(pnl)
    assert (std[:2] == 0).all() and (skew[:2] == 0).all() and (kurtosis[:2] == 0).all()
    assert np.isfinite(skew).all() and np.isfinite(kurtosis).all()
    for level in LEVELS:
        for var, cvar in (parametric(mean, std, level), cornish_fisher(mean, std, skew, kurtosis, level)):
            np.testing.assert_allclose(var[:2], [0.0, -3.7], atol=1e-12)
            np.testing.assert_allclose(cvar[:2], [0.0, -3.7], atol=1e-12)


@pytest.mark.parametrize(
    ("observations", "symbols", "seed"),
    [(250, 200, 1), (250, 20, 2), (60, 120, 3), (30, 1, 4), (5, 3, 5)],
)
def test_ledoit_wolf_is_sklearns(observations: int, symbols: int, seed: int) -> None:
    returns = market(observations, symbols, seed)
    np.testing.assert_allclose(ledoit_wolf(returns), sklearn_ledoit_wolf(returns)[0], rtol=1e-10, atol=1e-18)


def test_ledoit_wolf_with_a_symbol_that_never_moved_is_sklearns_and_positive_definite() -> None:
    returns = market(100, 10, seed=6)
    returns[:, 3] = 0.0
    shrunk = ledoit_wolf(returns)
    np.testing.assert_allclose(shrunk, sklearn_ledoit_wolf(returns)[0], rtol=1e-10, atol=1e-18)
    assert np.linalg.eigvalsh(shrunk).min() > 0


@pytest.mark.parametrize(
    ("cov", "cholesky"),
    [
        (np.array([[4.0, 1.0], [1.0, 3.0]]), True),
        (np.array([[1.0, 1.0], [1.0, 1.0]]), False),  # perfectly correlated: rank one
        (np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), False),  # a symbol that never moved
    ],
)
def test_covariance_root_is_cholesky_or_the_eigen_root_when_not_positive_definite(
    cov: np.ndarray, cholesky: bool
) -> None:
    root = covariance_root(cov)
    np.testing.assert_allclose(root @ root.T, cov, atol=1e-12)
    if cholesky:
        np.testing.assert_array_equal(root, np.linalg.cholesky(cov))


@pytest.mark.parametrize(
    ("equity", "current", "maximum"),
    [
        ([100, 110, 121], 0.0, 0.0),
        ([100, 90, 80], 0.2, 0.2),
        ([100, 80, 120, 108], 0.1, 0.2),
        ([100, 50, 100, 75, 100], 0.0, 0.5),
        ([100, 120, 60, 90], 0.25, 0.5),
        ([100], 0.0, 0.0),
        ([], 0.0, 0.0),
    ],
)
def test_drawdown_from_the_running_peak(equity: list[float], current: float, maximum: float) -> None:
    assert drawdown(np.array(equity, dtype=float)) == pytest.approx((current, maximum), abs=1e-15)


def in_float64(model: RiskModel) -> RiskModel:
    """The model with its float32 shocks widened, so its Monte Carlo figures can be checked to 1e-9 against a
    direct float64 computation (``test_float32_shocks_...`` bounds what the narrow product changes)."""
    return dataclasses.replace(model, shocks=model.shocks.astype(np.float64))


def direct_book_pnl(model: RiskModel, exposures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """History and Monte Carlo P&L per scope (portfolio first), with every scenario's returns materialised."""
    scopes = np.column_stack((exposures.sum(axis=1), exposures))
    scenarios = model.mean + model.shocks.astype(np.float64) @ model.root.T
    return model.returns @ scopes, scenarios @ scopes


@pytest.mark.parametrize(("symbols", "strategies", "seed"), [(30, 4, 1), (60, 10, 2), (5, 1, 3)])
def test_measure_equals_each_estimator_applied_to_the_book_pnl(symbols: int, strategies: int, seed: int) -> None:
    returns, exposures = market(250, symbols, seed), book(symbols, strategies, seed)
    model = in_float64(RiskModel.build([f"S{i}" for i in range(symbols)], returns, paths=4_000, seed=seed))
    risk = model.measure(exposures)
    history, simulated = direct_book_pnl(model, exposures)
    np.testing.assert_allclose(model.cov, sklearn_ledoit_wolf(returns)[0], rtol=1e-10)
    np.testing.assert_allclose(model.root @ model.root.T, model.cov, rtol=1e-10, atol=1e-18)
    assert set(risk.var) == set(risk.cvar) == set(METHODS) and risk.levels == LEVELS
    for level in LEVELS:
        frame = pd.DataFrame(history)
        mean, std = frame.mean().to_numpy(), frame.std().to_numpy()
        skew, kurtosis = frame.skew().to_numpy(), frame.kurt().to_numpy()
        expected = {
            "HISTORICAL": historical(history, level),
            "PARAMETRIC": (
                np.array([normal_var(m, s, level) for m, s in zip(mean, std, strict=True)]),
                np.array([normal_cvar(m, s, level) for m, s in zip(mean, std, strict=True)]),
            ),
            "CORNISH_FISHER": cornish_fisher(mean, std, skew, kurtosis, level),
            "MONTE_CARLO": historical(simulated, level),
        }
        for method, (var, cvar) in expected.items():
            assert risk.var[method][level].shape == risk.cvar[method][level].shape == (strategies + 1,)
            np.testing.assert_allclose(risk.var[method][level], var, rtol=1e-9, err_msg=method)
            np.testing.assert_allclose(risk.cvar[method][level], cvar, rtol=1e-8, err_msg=method)
            assert np.all(risk.cvar[method][level] >= risk.var[method][level] - 1e-9), method
    np.testing.assert_allclose(risk.var["HISTORICAL"][0.99][0], -np.sort(history[:, 0])[2], rtol=1e-12)
    assert (risk.observations, risk.paths) == (250, 4_000)


@pytest.mark.parametrize(
    ("paths", "level", "seed"), [(10_000, 0.95, 1), (10_000, 0.99, 2), (100_000, 0.95, 3), (100_000, 0.99, 4)]
)
def test_monte_carlo_of_one_normal_asset_converges_to_the_normal_within_four_standard_errors(
    paths: int, level: float, seed: int
) -> None:
    """The MC quantile's standard error is √(p(1-p)/N)/φ(z_p) standard deviations; the tail mean's is
    √((Var(X | X ≤ q) + (1-p)(q - ES)²)/(pN)). Four of either is a false alarm once in ~16,000 runs."""
    model = RiskModel.build(["SPY"], market(250, 1, seed=seed), paths=paths, seed=seed)
    position = 50_000.0
    risk = model.measure(np.array([[position]]))
    mean, sigma = float(model.mean[0]) * position, math.sqrt(float(model.cov[0, 0])) * position
    p, z = 1.0 - level, stats.norm.ppf(1.0 - level)
    var_error = math.sqrt(p * (1 - p) / paths) / stats.norm.pdf(z) * sigma
    tail_mean = -stats.norm.pdf(z) / p
    tail_variance = 1.0 - z * stats.norm.pdf(z) / p - tail_mean**2
    cvar_error = math.sqrt((tail_variance + (1 - p) * (z - tail_mean) ** 2) / (p * paths)) * sigma
    assert risk.var["MONTE_CARLO"][level][0] == pytest.approx(normal_var(mean, sigma, level), abs=4 * var_error)
    assert risk.cvar["MONTE_CARLO"][level][0] == pytest.approx(normal_cvar(mean, sigma, level), abs=4 * cvar_error)
    assert risk.covariance_var[level] == pytest.approx(normal_var(mean, sigma, level), rel=1e-12)


@pytest.mark.parametrize(("symbols", "strategies", "seed"), [(200, 50, 1), (40, 6, 2), (10, 2, 3)])
def test_component_var_sums_to_the_covariance_var_and_is_the_euler_derivative(
    symbols: int, strategies: int, seed: int
) -> None:
    returns, exposures = market(250, symbols, seed), book(symbols, strategies, seed)
    model = RiskModel.build([f"S{i}" for i in range(symbols)], returns, paths=1_000, seed=seed)
    risk = model.measure(exposures)
    cov, mean = sklearn_ledoit_wolf(returns)[0], returns.mean(axis=0)

    def covariance_var(book_: np.ndarray, level: float) -> float:
        portfolio = book_.sum(axis=1)
        return normal_var(float(mean @ portfolio), math.sqrt(portfolio @ cov @ portfolio), level)

    for level in LEVELS:
        total = covariance_var(exposures, level)
        assert risk.covariance_var[level] == pytest.approx(total, rel=1e-9)
        assert risk.component_var[level].shape == (strategies,)
        assert risk.component_var[level].sum() == pytest.approx(risk.covariance_var[level], rel=1e-9)
        step = 1e-5
        for strategy in range(0, strategies, max(1, strategies // 5)):
            up, down = exposures.copy(), exposures.copy()
            up[:, strategy] *= 1 + step
            down[:, strategy] *= 1 - step
            derivative = (covariance_var(up, level) - covariance_var(down, level)) / (2 * step)
            assert risk.component_var[level][strategy] == pytest.approx(derivative, rel=1e-6, abs=1e-6 * total)


@pytest.mark.parametrize(("symbols", "strategies", "seed"), [(200, 50, 1), (40, 6, 2), (10, 2, 3)])
def test_monte_carlo_component_cvar_is_each_strategys_loss_in_the_portfolios_tail_and_sums(
    symbols: int, strategies: int, seed: int
) -> None:
    exposures = book(symbols, strategies, seed)
    model = RiskModel.build([f"S{i}" for i in range(symbols)], market(250, symbols, seed), paths=10_000, seed=seed)
    risk = in_float64(model).measure(exposures)
    _, simulated = direct_book_pnl(model, exposures)
    for level, tail in ((0.95, 500), (0.99, 100)):
        worst = np.argsort(simulated[:, 0], kind="stable")[:tail]
        np.testing.assert_allclose(risk.component_cvar_mc[level], -simulated[worst, 1:].mean(axis=0), rtol=1e-9)
        assert risk.component_cvar_mc[level].sum() == pytest.approx(risk.cvar["MONTE_CARLO"][level][0], rel=1e-9)


@pytest.mark.parametrize(("symbols", "strategies", "seed"), [(200, 50, 1), (40, 6, 2)])
def test_float32_shocks_move_the_monte_carlo_figures_by_far_less_than_their_standard_error(
    symbols: int, strategies: int, seed: int
) -> None:
    """At 10,000 paths a 99% VaR's Monte Carlo standard error is about 1.6% of it; the float32 product's rounding
    must stay four orders of magnitude below (here within 1e-5 of the largest scope's figure)."""
    exposures = book(symbols, strategies, seed)
    model = RiskModel.build([f"S{i}" for i in range(symbols)], market(250, symbols, seed), seed=seed)
    assert model.shocks.dtype == np.float32
    narrow, wide = model.measure(exposures), in_float64(model).measure(exposures)
    for level in LEVELS:
        scale = wide.cvar["MONTE_CARLO"][level].max()
        for narrow_figures, wide_figures in ((narrow.var, wide.var), (narrow.cvar, wide.cvar)):
            np.testing.assert_allclose(
                narrow_figures["MONTE_CARLO"][level], wide_figures["MONTE_CARLO"][level], atol=1e-5 * scale
            )
        assert narrow.component_cvar_mc[level].sum() == pytest.approx(narrow.cvar["MONTE_CARLO"][level][0], rel=1e-9)


def test_the_same_history_and_seed_give_the_same_figures_bit_for_bit_and_another_seed_does_not() -> None:
    returns, exposures = market(250, 40, seed=7), book(40, 5, seed=7)
    symbols = [f"S{i}" for i in range(40)]
    model = RiskModel.build(symbols, returns, seed=11)
    drawn = np.random.default_rng(11).standard_normal((10_000, 40), dtype=np.float32)
    np.testing.assert_array_equal(model.shocks, drawn)  # the seed's own draw, whether drawn now or reused
    first, again = model.measure(exposures), RiskModel.build(symbols, returns, seed=11).measure(exposures)
    other = RiskModel.build(symbols, returns, seed=12).measure(exposures)
    for level in LEVELS:
        for method in METHODS:
            np.testing.assert_array_equal(first.var[method][level], again.var[method][level])
            np.testing.assert_array_equal(first.cvar[method][level], again.cvar[method][level])
        np.testing.assert_array_equal(first.component_cvar_mc[level], again.component_cvar_mc[level])
        np.testing.assert_array_equal(first.component_var[level], again.component_var[level])
        assert not np.array_equal(first.var["MONTE_CARLO"][level], other.var["MONTE_CARLO"][level])
        np.testing.assert_array_equal(first.var["HISTORICAL"][level], other.var["HISTORICAL"][level])


def test_a_portfolio_of_one_strategy_is_that_strategy() -> None:
    exposures = book(30, 1, seed=4)
    risk = RiskModel.build([f"S{i}" for i in range(30)], market(250, 30, seed=4)).measure(exposures)
    for level in LEVELS:
        for method in METHODS:
            assert risk.var[method][level][0] == risk.var[method][level][1], method
            assert risk.cvar[method][level][0] == risk.cvar[method][level][1], method
        assert risk.component_var[level][0] == pytest.approx(risk.covariance_var[level], rel=1e-12)
        assert risk.component_cvar_mc[level][0] == pytest.approx(risk.cvar["MONTE_CARLO"][level][0], rel=1e-12)
    assert risk.gross[0] == risk.gross[1] and risk.net[0] == risk.net[1]


def test_gross_and_net_per_scope_net_the_strategies_per_symbol_for_the_portfolio() -> None:
    exposures = np.array([[100.0, -40.0], [-30.0, -30.0], [0.0, 25.0]])
    risk = RiskModel.build(["A", "B", "C"], market(250, 3, seed=1), paths=100).measure(exposures)
    np.testing.assert_array_equal(risk.gross, [60.0 + 60.0 + 25.0, 130.0, 95.0])
    np.testing.assert_array_equal(risk.net, [25.0, 70.0, -45.0])


def test_an_empty_book_has_no_risk() -> None:
    risk = RiskModel.build(["A", "B"], market(250, 2, seed=2), paths=1_000).measure(np.zeros((2, 3)))
    for level in LEVELS:
        for method in METHODS:
            assert not risk.var[method][level].any() and not risk.cvar[method][level].any()
        assert risk.covariance_var[level] == 0.0 and not risk.component_var[level].any()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: historical(np.zeros(10), 1.0), "level 1.0 is not in"),
        (lambda: historical(np.zeros(10), 0.0), "level 0.0 is not in"),
        (lambda: historical(np.zeros((0, 2)), 0.95), "no observations"),
        (lambda: moments(np.zeros(3)), "3 observations"),
        (lambda: RiskModel.build(["A", "B"], np.zeros((10, 3))), r"returns of shape \(10, 3\) for 2 symbols"),
        (
            lambda: RiskModel.build(["A", "B"], market(20, 2, 1), paths=10).measure(np.zeros((3, 1))),
            r"exposures of shape \(3, 1\) for 2 symbols",
        ),
    ],
)
def test_impossible_inputs_are_refused_with_the_reason(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
