"""Each pattern kernel against statsmodels, pandas, scipy or a direct per-series formula, on fixed seeded inputs.

Tolerances: 1e-9 relative where the reference runs the same arithmetic in another order (OLS fits, moments);
1e-12 absolute on p-value tables (the same polynomial on the same input).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests
from statsmodels.tools import add_constant
from statsmodels.tsa.adfvalues import mackinnonp
from statsmodels.tsa.stattools import adfuller, coint

from bench.patterns import band_loop
from streams.patterns import stats

RTOL = 1e-9


def series(kind: str, length: int, count: int, seed: int) -> np.ndarray:
    """Columns of log prices: random walks, AR(1) mean reverters, or trending walks with fat-tailed shocks."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(5, (length, count)) * 1e-3
    if kind == "walk":
        return 4.0 + np.cumsum(shocks, axis=0)
    if kind == "trend":
        return 4.0 + np.cumsum(shocks + 3e-4, axis=0)
    out = np.empty((length, count))
    out[0] = 0.0
    phi = rng.uniform(0.5, 0.95, count)
    for t in range(1, length):
        out[t] = phi * out[t - 1] + shocks[t]
    return 4.0 + out


KINDS = [("walk", 390, 11), ("reverting", 390, 12), ("trend", 130, 13), ("reverting", 60, 14)]


@pytest.mark.parametrize(("kind", "length", "seed"), KINDS)
@pytest.mark.parametrize(("lags", "regression"), [(0, "c"), (1, "c"), (3, "c"), (1, "n")])
def test_adf_matches_statsmodels_adfuller(kind: str, length: int, seed: int, lags: int, regression: str) -> None:
    y = series(kind, length, 6, seed)
    mine = stats.adf_tstat(y, lags, regression=regression)  # type: ignore[arg-type]
    ref = [
        adfuller(y[:, j], maxlag=lags, autolag=None, regression=regression, result_object=False)[0]
        for j in range(y.shape[1])
    ]
    np.testing.assert_allclose(mine, ref, rtol=RTOL)


@pytest.mark.parametrize(("n_series", "regression"), [(1, "c"), (2, "c"), (1, "n"), (2, "n")])
def test_mackinnon_p_matches_statsmodels_on_a_grid(n_series: int, regression: str) -> None:
    grid = np.linspace(-25.0, 4.0, 2901)
    mine = stats.mackinnon_p(grid, n_series=n_series, regression=regression)  # type: ignore[arg-type]
    ref = [mackinnonp(t, regression=regression, N=n_series) for t in grid]
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("length", "lags", "seed"), [(390, 1, 21), (130, 0, 22), (60, 2, 23)])
def test_engle_granger_matches_statsmodels_coint(length: int, lags: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = series("walk", length, 5, seed)
    y = 0.3 + rng.uniform(0.7, 1.4, 5) * x + series("reverting", length, 5, seed + 100) - 4.0
    y[:, :2] = series("walk", length, 2, seed + 200)  # two pairs that are not cointegrated
    stat, p, beta, alpha = stats.engle_granger(y, x, lags)
    for j in range(x.shape[1]):
        ref_stat, ref_p, _ = coint(y[:, j], x[:, j], trend="c", maxlag=lags, autolag=None)
        fit = OLS(y[:, j], add_constant(x[:, j])).fit()
        np.testing.assert_allclose([stat[j], beta[j], alpha[j]], [ref_stat, fit.params[1], fit.params[0]], rtol=RTOL)
        np.testing.assert_allclose(p[j], ref_p, rtol=RTOL, atol=1e-15)


def variance_ratio_direct(r: np.ndarray, q: int) -> tuple[float, float]:
    """Lo & MacKinlay (1988), eqs. (12)-(13) and Theorem 3, written term by term for one series."""
    n = len(r)
    mu = r.mean()
    var_a = sum((r[t] - mu) ** 2 for t in range(n)) / (n - 1)
    m = q * (n - q + 1) * (1 - q / n)
    var_c = sum((r[t - q + 1 : t + 1].sum() - q * mu) ** 2 for t in range(q - 1, n)) / m
    vr = var_c / var_a
    denominator = sum((r[t] - mu) ** 2 for t in range(n)) ** 2
    theta = 0.0
    for j in range(1, q):
        delta = n * sum((r[t] - mu) ** 2 * (r[t - j] - mu) ** 2 for t in range(j, n)) / denominator
        theta += (2 * (q - j) / q) ** 2 * delta
    return vr, np.sqrt(n) * (vr - 1) / np.sqrt(theta)


@pytest.mark.parametrize(("kind", "length", "seed"), KINDS)
@pytest.mark.parametrize("q", [2, 5, 10])
def test_variance_ratio_matches_the_direct_formula(kind: str, length: int, seed: int, q: int) -> None:
    r = np.diff(series(kind, length, 4, seed), axis=0)
    vr, z = stats.variance_ratio(r, q)
    ref = np.array([variance_ratio_direct(r[:, j], q) for j in range(r.shape[1])])
    np.testing.assert_allclose(vr, ref[:, 0], rtol=RTOL)
    np.testing.assert_allclose(z, ref[:, 1], rtol=RTOL)


def test_variance_ratio_z_is_standard_normal_for_iid_returns() -> None:
    r = np.random.default_rng(5).standard_normal((1000, 2000))
    _, z = stats.variance_ratio(r, 10)
    assert abs(z.mean()) < 0.1
    assert abs(z.std() - 1.0) < 0.06


@pytest.mark.parametrize(("kind", "length", "seed"), KINDS)
def test_half_life_matches_an_ols_ar1_fit(kind: str, length: int, seed: int) -> None:
    s = series(kind, length, 6, seed)
    mine = stats.half_life(s)
    for j in range(s.shape[1]):
        b = OLS(np.diff(s[:, j]), add_constant(s[:-1, j])).fit().params[1]
        expected = np.log(2) / -np.log(1 + b) if -1 < b < 0 else np.nan
        np.testing.assert_allclose(mine[j], expected, rtol=RTOL)


def test_half_life_recovers_a_known_ar1() -> None:
    rng = np.random.default_rng(8)
    phi = 0.9
    s = np.zeros((20000, 3))
    for t in range(1, len(s)):
        s[t] = phi * s[t - 1] + rng.standard_normal(3)
    np.testing.assert_allclose(stats.half_life(s), np.log(2) / -np.log(phi), rtol=0.08)


@pytest.mark.parametrize(("kind", "length", "seed"), KINDS)
def test_hurst_matches_a_per_series_polyfit(kind: str, length: int, seed: int) -> None:
    s = series(kind, length, 5, seed)
    lags = stats.hurst_lags(length)
    expected = [
        np.polyfit(np.log(lags), [np.log(np.std(s[lag:, j] - s[:-lag, j])) for lag in lags], 1)[0]
        for j in range(s.shape[1])
    ]
    np.testing.assert_allclose(stats.hurst(s), expected, rtol=RTOL)


def test_hurst_separates_walks_from_reverters() -> None:
    walks = stats.hurst(series("walk", 2000, 50, 3))
    reverters = stats.hurst(series("reverting", 2000, 50, 4))
    assert abs(np.median(walks) - 0.5) < 0.05
    assert np.median(reverters) < 0.3


@pytest.mark.parametrize(("kind", "length", "seed"), KINDS)
def test_sharpe_matches_pandas(kind: str, length: int, seed: int) -> None:
    s = series(kind, length, 5, seed)
    r = np.diff(s, axis=0)
    sharpe_ref = (pd.DataFrame(r).mean() / pd.DataFrame(r).std() * np.sqrt(98_280)).to_numpy()
    np.testing.assert_allclose(stats.sharpe(r, 98_280), sharpe_ref, rtol=RTOL)


@pytest.mark.parametrize(("kind", "length", "seed"), KINDS)
def test_probabilistic_sharpe_matches_the_reference_formula(kind: str, length: int, seed: int) -> None:
    r = np.diff(series(kind, length, 5, seed), axis=0) + 2e-4
    for benchmark in (0.0, 0.05):
        mine = stats.probabilistic_sharpe(*stats.sharpe_moments(r), r.shape[0], benchmark)
        for j in range(r.shape[1]):
            x = r[:, j]
            sr = x.mean() / x.std(ddof=1)
            g3, g4 = sps.skew(x), sps.kurtosis(x, fisher=False)
            z = (sr - benchmark) * np.sqrt(len(x) - 1) / np.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
            np.testing.assert_allclose(mine[j], sps.norm.cdf(z), rtol=1e-9)


def test_sharpe_standard_error_is_the_spread_of_the_ratio_for_iid_returns() -> None:
    """Over many independent samples the Sharpe ratios spread as the (Mertens) standard error says."""
    rng = np.random.default_rng(41)
    r = 2e-4 + rng.standard_t(5, (390, 4000)) * 1e-3
    ratios = stats.sharpe(r, 98_280)
    se = stats.sharpe_standard_error(stats.sharpe_moments(r)[1], r.shape[0], 98_280)
    assert abs(np.std(ratios) / np.median(se) - 1.0) < 0.05
    x = r[:, 0]
    sr, g3, g4 = x.mean() / x.std(ddof=1), sps.skew(x), sps.kurtosis(x, fisher=False)
    expected = np.sqrt((1 - g3 * sr + (g4 - 1) / 4 * sr**2) / (len(x) - 1) * 98_280)
    np.testing.assert_allclose(se[0], expected, rtol=1e-9)


@pytest.mark.parametrize(("trials", "tolerance"), [(10, 0.04), (100, 0.02), (1_000, 0.01), (5_000, 0.01)])
def test_expected_max_sharpe_matches_the_simulated_maximum(trials: int, tolerance: float) -> None:
    """Bailey and Lopez de Prado's approximation of E[max] of ``trials`` normals against a simulation: it
    overstates the maximum slightly (conservative) for few trials and converges with more."""
    rng = np.random.default_rng(trials)
    simulated = rng.standard_normal((2_000, trials)).max(axis=1).mean() * 0.1
    assert 0 <= float(stats.expected_max_sharpe(trials, 0.01)) / simulated - 1.0 < tolerance
    assert float(stats.expected_max_sharpe(1, 0.01)) == 0.0


@pytest.mark.parametrize("lags_seed", [(390, 51), (100, 52), (60, 53)])
def test_newey_west_t_matches_statsmodels_hac(lags_seed: tuple[int, int]) -> None:
    length, seed = lags_seed
    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal((length + 1, 3)) * 1e-3
    r = 1e-4 + shocks[1:] + 0.4 * shocks[:-1]  # MA(1): autocorrelated
    t, p = stats.newey_west_t(r)
    lags = stats.newey_west_lags(length)
    for j in range(3):
        fit = OLS(r[:, j], np.ones(length)).fit(cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False})
        np.testing.assert_allclose(t[j], fit.tvalues[0], rtol=1e-9)
        np.testing.assert_allclose(p[j], sps.t.sf(fit.tvalues[0], length - 1), rtol=1e-7)


def test_newey_west_corrects_the_iid_t_of_autocorrelated_returns() -> None:
    """Positively autocorrelated noise makes the iid t-test reject a zero mean far too often; HAC does not."""
    rng = np.random.default_rng(61)
    shocks = rng.standard_normal((391, 20_000))
    r = shocks[1:] + 0.6 * shocks[:-1]
    _, p_hac = stats.newey_west_t(r)
    p_iid = sps.ttest_1samp(r, 0.0, axis=0, alternative="greater").pvalue
    assert np.mean(p_iid < 0.05) > 0.1
    assert abs(np.mean(p_hac < 0.05) - 0.05) < 0.015


def test_band_positions_match_a_bar_by_bar_loop() -> None:
    rng = np.random.default_rng(71)
    z = np.cumsum(rng.standard_normal((500, 6)) * 0.5, axis=0) % 5 - 2.5
    z[:10] = np.nan
    z[100:103, 2] = 0.0
    positions = stats.band_positions(z, 1.0)
    for j in range(z.shape[1]):
        np.testing.assert_array_equal(positions[:, j], band_loop(z[:, j], 1.0))


def test_trailing_statistics_match_pandas_rolling() -> None:
    s = series("walk", 300, 4, 81)
    mean, sd = stats.rolling_mean_sd(s, 25)
    np.testing.assert_allclose(mean, pd.DataFrame(s).rolling(25).mean().to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(sd, pd.DataFrame(s).rolling(25).std().to_numpy(), rtol=1e-6)
    y, x = series("walk", 300, 3, 82), series("walk", 300, 3, 83)
    beta, alpha, z = stats.expanding_hedge(y, x, 40)
    assert np.isnan(beta[:39]).all() and np.isnan(z[:39]).all()
    for j in range(3):
        for t in (39, 150, 299):
            rows = slice(0, t + 1)
            fit = OLS(y[rows, j], add_constant(x[rows, j])).fit()
            np.testing.assert_allclose([alpha[t, j], beta[t, j]], fit.params, rtol=1e-7)
            np.testing.assert_allclose(z[t, j], fit.resid[-1] / np.sqrt(fit.scale), rtol=1e-6)


def test_trade_returns_charge_every_unit_traded() -> None:
    positions = np.array([[0.0], [1.0], [1.0], [-1.0], [0.0], [0.5]])
    returns = np.array([[0.01], [0.02], [-0.01], [0.03], [0.04]])
    net, turnover = stats.trade_returns([(positions, returns)], cost_per_unit=0.001)
    np.testing.assert_allclose(turnover[:, 0], [0.0, 1.0, 0.0, 2.0, 1.0])
    np.testing.assert_allclose(net[:, 0], [0.0, 0.02 - 0.001, -0.01, -0.03 - 0.002, 0.0 - 0.001])


def rule_positions(rule: str, prices: np.ndarray) -> np.ndarray:
    """Positions of every trade rule the scan uses, as the scan computes them."""
    lookback = 25
    if rule == "momentum":
        return stats.momentum_positions(prices, lookback)
    if rule == "reversion":
        return stats.band_positions(stats.trailing_zscore(prices, lookback), 1.0)
    beta, _, z = stats.expanding_hedge(prices[:, :1], prices[:, 1:2], lookback)
    return np.hstack([stats.band_positions(z, 1.0), beta])


@pytest.mark.parametrize("rule", ["momentum", "reversion", "pairs"])
@pytest.mark.parametrize("seed", range(5))
def test_no_position_depends_on_a_later_bar(rule: str, seed: int) -> None:
    """Changing any bar after t never changes a position (or the hedge ratio) decided at t."""
    rng = np.random.default_rng(seed)
    prices = 4.0 + np.cumsum(rng.standard_normal((200, 2)) * 1e-3, axis=0)
    prices[:, 0] += 0.5 * (prices[:, 1] - 4.0)  # pairs need something to hedge
    before = rule_positions(rule, prices)
    later_changed = 0
    for t in rng.integers(30, 199, 8).tolist():
        changed = prices.copy()
        changed[t + 1 :] += np.cumsum(rng.standard_normal((200 - t - 1, 2)) * 5e-3, axis=0)
        after = rule_positions(rule, changed)
        np.testing.assert_array_equal(np.nan_to_num(after[: t + 1], nan=-9), np.nan_to_num(before[: t + 1], nan=-9))
        later_changed += not np.array_equal(np.nan_to_num(after[t + 1 :]), np.nan_to_num(before[t + 1 :]))
    assert later_changed  # the change reached the rule: positions after t moved


def test_winsorize_clips_only_beyond_k_robust_deviations() -> None:
    r = np.array([[0.0], [1.0], [-1.0], [2.0], [-2.0], [100.0], [-0.5], [-50.0], [0.5]])
    clipped = stats.winsorize(r, 4.0)
    bound = 4.0 * 1.4826 * 1.0  # median 0, MAD 1
    np.testing.assert_allclose(clipped[:, 0], [0.0, 1.0, -1.0, 2.0, -2.0, bound, -0.5, -bound, 0.5])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("kernel", "method"), [(stats.holm, "holm"), (stats.benjamini_hochberg, "fdr_bh")])
def test_corrections_match_statsmodels_multipletests(seed: int, kernel: object, method: str) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 300), rng.uniform(0, 1e-4, 20), [0.5, 0.5, 1e-3, 1e-3]])
    rng.shuffle(p)
    expected = multipletests(p, alpha=0.05, method=method)[1]
    np.testing.assert_allclose(kernel(p), expected, rtol=1e-12)  # type: ignore[operator]


def test_correlation_and_top_partners_match_pandas() -> None:
    r = np.diff(series("walk", 390, 40, 9), axis=0)
    r[:, 1] = r[:, 0] + r[:, 1] * 0.3
    ref = pd.DataFrame(r).corr().to_numpy()
    corr = stats.correlation_matrix(r)
    np.testing.assert_allclose(corr, ref, rtol=1e-9, atol=1e-12)
    a, b = stats.top_partners(corr, 2)
    expected = set()
    for i in range(r.shape[1]):
        row = ref[i].copy()
        row[i] = -np.inf
        for j in np.argsort(-row)[:2]:
            expected.add((min(i, int(j)), max(i, int(j))))
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == expected
    assert (0, 1) in expected


def test_degenerate_columns_give_nan_not_errors() -> None:
    y = series("walk", 100, 3, 1)
    y[:, 1] = 4.0  # a symbol that never moved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = stats.adf_tstat(y, 1)
        _, z = stats.variance_ratio(np.diff(y, axis=0), 4)
        s = stats.sharpe(np.diff(y, axis=0), 252)
    assert np.isnan(t[1]) and np.isfinite(t[[0, 2]]).all()
    assert np.isnan(z[1]) and np.isnan(s[1])
