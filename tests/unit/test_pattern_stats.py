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
def test_moments_match_pandas_and_scipy(kind: str, length: int, seed: int) -> None:
    s = series(kind, length, 5, seed)
    r = np.diff(s, axis=0)
    frame = pd.DataFrame(s)
    z_ref = ((frame.iloc[-1] - frame.mean()) / frame.std()).to_numpy()
    np.testing.assert_allclose(stats.zscore_last(s), z_ref, rtol=RTOL)
    t, p = stats.t_test(r)
    ref = sps.ttest_1samp(r, 0.0, axis=0)
    np.testing.assert_allclose(t, ref.statistic, rtol=RTOL)
    np.testing.assert_allclose(p, ref.pvalue, rtol=1e-7)
    sharpe_ref = (pd.DataFrame(r).mean() / pd.DataFrame(r).std() * np.sqrt(98_280)).to_numpy()
    np.testing.assert_allclose(stats.sharpe(r, 98_280), sharpe_ref, rtol=RTOL)


@pytest.mark.parametrize(("kind", "length", "seed"), KINDS)
def test_probabilistic_sharpe_matches_the_reference_formula(kind: str, length: int, seed: int) -> None:
    r = np.diff(series(kind, length, 5, seed), axis=0) + 2e-4
    for benchmark in (0.0, 0.05):
        mine = stats.probabilistic_sharpe(r, benchmark)
        for j in range(r.shape[1]):
            x = r[:, j]
            sr = x.mean() / x.std(ddof=1)
            g3, g4 = sps.skew(x), sps.kurtosis(x, fisher=False)
            z = (sr - benchmark) * np.sqrt(len(x) - 1) / np.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
            np.testing.assert_allclose(mine[j], sps.norm.cdf(z), rtol=1e-9)


def test_trading_rule_returns_match_a_direct_loop() -> None:
    s = series("reverting", 200, 3, 31)
    r = np.diff(s, axis=0)
    lookback = 20
    mom = stats.tsmom_returns(r, lookback)
    rev = stats.reversion_returns(s, lookback)
    for j in range(s.shape[1]):
        expected_mom = [np.sign(r[t - lookback : t, j].sum()) * r[t, j] for t in range(lookback, len(r))]
        np.testing.assert_allclose(mom[:, j], expected_mom, rtol=RTOL)
        trailing = pd.Series(s[:, j]).rolling(lookback)
        z = ((s[:, j] - trailing.mean()) / trailing.std(ddof=1)).to_numpy()
        expected_rev = [-z[t] * (s[t + 1, j] - s[t, j]) for t in range(lookback - 1, len(s) - 1)]
        np.testing.assert_allclose(rev[:, j], expected_rev, rtol=1e-7)


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
