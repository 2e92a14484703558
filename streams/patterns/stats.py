"""Statistics of the pattern scan, vectorised across many series at once.

Pure kernels: numpy and ``scipy.special`` only, no I/O. Every series function takes a ``(T, S)`` array whose
columns are ``S`` independent series (complete: no NaN) and returns one value per column, so a scan of a thousand
symbols is a handful of array operations instead of a thousand model fits.

Conventions (the references the unit tests compare against are named per function):
- ADF: ``dy_t = [a] + g y_{t-1} + sum_{i=1..k} d_i dy_{t-i} + e_t`` with a fixed lag order ``k`` (statsmodels
  ``adfuller(maxlag=k, autolag=None)``); the statistic is the t-value of g; p-values are MacKinnon's (1994)
  response-surface approximations, ported from statsmodels ``mackinnonp`` and evaluated on arrays.
- Engle-Granger: OLS of y on x with a constant, ADF without constant on the residual, MacKinnon p-value for two
  I(1) series (statsmodels ``coint(trend="c", maxlag=k, autolag=None)``).
- Variance ratio: Lo-MacKinlay (1988) with overlapping q-period returns, both variances bias-corrected, and the
  heteroskedasticity-robust z*(q).
- Hurst exponent: the scaling of the standard deviation of lagged differences, ``sd(x_{t+k} - x_t) ~ k^H``
  (generalised Hurst exponent of order 2), fitted by least squares on log-log over ``k`` = 1, 2, 4, ...
- Half-life: from the AR(1) fit with constant ``ds_t = a + b s_{t-1}``: ``ln 2 / -ln(1 + b)`` for ``-1 < b < 0``.
- Sharpe ratios use the sample standard deviation (ddof=1); the probabilistic Sharpe ratio uses the per-bar
  Sharpe ratio with the biased sample skewness and (non-excess) kurtosis (Bailey & López de Prado, 2012).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr, ndtri, stdtr

Float64 = npt.NDArray[np.float64]
IntP = npt.NDArray[np.intp]
Regression = Literal["c", "n"]

# MacKinnon (1994) tables for N = 1, 2 series, as statsmodels.tsa.adfvalues holds them (already scaled).
_TAU_MAX = {"n": (np.inf, 1.51), "c": (2.74, 0.92)}
_TAU_MIN = {"n": (-19.04, -19.62), "c": (-18.83, -18.86)}
_TAU_STAR = {"n": (-1.04, -1.53), "c": (-1.61, -2.62)}
_TAU_SMALLP = {
    "n": ((0.6344, 1.2378, 3.2496e-2), (1.9129, 1.3857, 3.5322e-2)),
    "c": ((2.1659, 1.4412, 3.8269e-2), (2.92, 1.5012, 3.9796e-2)),
}
_TAU_LARGEP = {
    "n": ((0.4797, 9.3557e-1, -0.6999e-1, 3.3066e-2), (1.5578, 8.558e-1, -2.083e-1, -3.3549e-2)),
    "c": ((1.7339, 9.3202e-1, -1.2745e-1, -1.0368e-2), (2.1945, 6.4695e-1, -2.9198e-1, -4.2377e-2)),
}


# MacKinnon (2010) response surface of the 1% critical value with a constant: b0 + b1/T + b2/T^2 + b3/T^3.
_CRIT_1PCT_C = ((-3.43035, -6.5393, -16.786, -79.433), (-3.89644, -10.9519, -33.527, 0.0))


def finite_sample_scale(nobs: int, n_series: int) -> float:
    """Factor that maps a statistic from ``nobs`` observations onto the asymptotic distribution's scale.

    MacKinnon's p-values are asymptotic and too small in short samples (a 100-bar Engle-Granger test rejects at
    1e-3 about 1.3 times as often as it should). Scaling the statistic by the ratio of the asymptotic to the
    finite-sample 1% critical value (MacKinnon 2010) makes the two agree at 1% and in the tail beyond it.
    """
    b = _CRIT_1PCT_C[n_series - 1]
    finite = b[0] + b[1] / nobs + b[2] / nobs**2 + b[3] / nobs**3
    return b[0] / finite


def mackinnon_p(stat: Float64, n_series: int = 1, regression: Regression = "c") -> Float64:
    """MacKinnon's approximate asymptotic p-value of an ADF (n_series=1) or Engle-Granger (2) statistic."""
    if n_series not in (1, 2):
        raise ValueError("MacKinnon p-values are tabulated here for 1 or 2 series")
    k = n_series - 1
    t = np.asarray(stat, dtype=np.float64)
    small = np.polynomial.polynomial.polyval(t, _TAU_SMALLP[regression][k])
    large = np.polynomial.polynomial.polyval(t, _TAU_LARGEP[regression][k])
    p = ndtr(np.where(t <= _TAU_STAR[regression][k], small, large))
    p = np.where(t > _TAU_MAX[regression][k], 1.0, p)
    p = np.where(t < _TAU_MIN[regression][k], 0.0, p)
    return np.where(np.isnan(t), np.nan, p)


def adf_tstat(y: Float64, lags: int, regression: Regression = "c") -> Float64:
    """ADF t-statistic of g per column of ``y`` (T, S); NaN where the regression is singular."""
    if lags < 0:
        raise ValueError("lags must be non-negative")
    y = np.asarray(y, dtype=np.float64)
    dy = np.diff(y, axis=0)
    nobs = dy.shape[0] - lags
    columns = [y[lags:-1]] + [dy[lags - i : dy.shape[0] - i] for i in range(1, lags + 1)]
    target = dy[lags:]
    constant = int(regression == "c")
    if nobs <= len(columns) + constant:
        raise ValueError("series too short for the ADF regression")
    if constant:
        # Centring every column is the constant's whole effect on the other coefficients, and keeps the
        # normal equations well conditioned for price levels far from zero.
        columns = [c - c.mean(axis=0) for c in columns]
        target = target - target.mean(axis=0)
    x = np.stack(columns, axis=-1).transpose(1, 0, 2)  # (S, nobs, p)
    return _ols_first_tstat(x, target.T, extra_dof=constant)


def _ols_first_tstat(x: Float64, target: Float64, extra_dof: int = 0) -> Float64:
    """t-value of the first coefficient of one OLS per leading index: x (S, n, p), target (S, n).

    ``extra_dof`` counts regressors partialled out beforehand (a constant), for the residual degrees of freedom.
    """
    n, p = x.shape[1], x.shape[2] + extra_dof
    xtx = np.einsum("snp,snq->spq", x, x)
    xty = np.einsum("snp,sn->sp", x, target)
    ok = np.linalg.cond(xtx) < 1e12
    xtx[~ok] = np.eye(x.shape[2])
    inverse = np.linalg.inv(xtx)
    beta = np.einsum("spq,sq->sp", inverse, xty)
    resid = target - np.einsum("snp,sp->sn", x, beta)
    s2 = np.einsum("sn,sn->s", resid, resid) / (n - p)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = beta[:, 0] / np.sqrt(s2 * inverse[:, 0, 0])
    return np.where(ok, t, np.nan)


def hedge_ratio(y: Float64, x: Float64) -> tuple[Float64, Float64]:
    """OLS slope and intercept of each column of y on the same column of x (both (T, S))."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc = x - xm
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.einsum("ts,ts->s", xc, y - ym) / np.einsum("ts,ts->s", xc, xc)
    return beta, ym - beta * xm


def engle_granger(
    y: Float64, x: Float64, lags: int, finite_sample: bool = False
) -> tuple[Float64, Float64, Float64, Float64]:
    """(ADF statistic of the OLS residual, its MacKinnon p-value, hedge ratio, intercept) per column pair.

    ``finite_sample`` takes the p-value at the statistic scaled by ``finite_sample_scale`` (the scan does);
    without it the p-value is statsmodels' asymptotic one.
    """
    beta, alpha = hedge_ratio(y, x)
    spread = y - beta * x - alpha
    stat = adf_tstat(spread, lags, regression="n")
    scale = finite_sample_scale(y.shape[0] - 1 - lags, 2) if finite_sample else 1.0
    return stat, mackinnon_p(stat * scale, n_series=2, regression="c"), beta, alpha


def variance_ratio(returns: Float64, q: int) -> tuple[Float64, Float64]:
    """Lo-MacKinlay VR(q) and its heteroskedasticity-robust z* per column of per-bar returns (T, S)."""
    r = np.asarray(returns, dtype=np.float64)
    n = r.shape[0]
    if not 2 <= q < n:
        raise ValueError("q must be between 2 and the number of returns - 1")
    e = r - r.mean(axis=0)
    ss = np.einsum("ts,ts->s", e, e)
    var_a = ss / (n - 1)
    csum = np.vstack([np.zeros((1, r.shape[1])), np.cumsum(e, axis=0)])
    eq = csum[q:] - csum[:-q]  # overlapping q-sums of demeaned returns
    m = q * (n - q + 1) * (1.0 - q / n)
    var_c = np.einsum("ts,ts->s", eq, eq) / m
    e2 = e * e
    theta = np.zeros(r.shape[1])
    for j in range(1, q):  # q is a handful of lags; each term is one pass over every column
        theta += (2.0 * (q - j) / q) ** 2 * np.einsum("ts,ts->s", e2[j:], e2[:-j])
    with np.errstate(divide="ignore", invalid="ignore"):
        theta *= n / (ss * ss)
        vr = var_c / var_a
        z = np.sqrt(n) * (vr - 1.0) / np.sqrt(theta)
    return vr, z


def winsorize(returns: Float64, k: float) -> Float64:
    """Each column clipped to its median +- ``k`` robust standard deviations (1.4826 MAD)."""
    median = np.median(returns, axis=0)
    spread = k * 1.4826 * np.median(np.abs(returns - median), axis=0)
    clipped: Float64 = np.clip(returns, median - spread, median + spread)
    return clipped


def half_life(series: Float64) -> Float64:
    """Mean-reversion half-life in bars from the AR(1) fit; NaN where the fit does not revert."""
    lagged = series[:-1]
    beta, _ = hedge_ratio(np.diff(series, axis=0), lagged)
    with np.errstate(divide="ignore", invalid="ignore"):
        life = np.log(2.0) / -np.log1p(beta)
    return np.where((beta < 0) & (beta > -1), life, np.nan)


def hurst_lags(length: int) -> IntP:
    """Lags 1, 2, 4, ... up to an eighth of the series, at least 1 and 2."""
    top = max(2, length // 8)
    return np.asarray(2 ** np.arange(int(np.log2(top)) + 1), dtype=np.intp)


def hurst(series: Float64, lags: IntP | None = None) -> Float64:
    """Hurst exponent per column: least-squares slope of log sd(x_{t+τ} - x_t) on log τ."""
    lags = hurst_lags(series.shape[0]) if lags is None else lags
    with np.errstate(divide="ignore"):
        log_sd = np.stack([np.log(np.std(series[lag:] - series[:-lag], axis=0)) for lag in lags.tolist()])
    log_lag = np.log(lags.astype(np.float64))
    centred = log_lag - log_lag.mean()
    with np.errstate(invalid="ignore"):
        slope: Float64 = (centred @ (log_sd - log_sd.mean(axis=0))) / (centred @ centred)
    return slope


def rolling_mean_sd(series: Float64, lookback: int) -> tuple[Float64, Float64]:
    """Mean and sample standard deviation of the trailing ``lookback`` values at each row (NaN before the first full
    window), from running sums of the values less each column's first, so long price levels do not cancel."""
    if not 2 <= lookback <= series.shape[0]:
        raise ValueError("lookback must be between 2 and the number of values")
    shifted = series - series[:1]
    total, squares = _running(shifted, lookback), _running(shifted * shifted, lookback)
    mean = total / lookback
    variance = np.maximum(squares - total * mean, 0.0) / (lookback - 1)
    return _pad(mean + series[:1], lookback), _pad(np.sqrt(variance), lookback)


def _running(values: Float64, lookback: int) -> Float64:
    """Sums of the trailing ``lookback`` rows, for rows ``lookback - 1`` onwards."""
    csum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    out: Float64 = csum[lookback:] - csum[:-lookback]
    return out


def _pad(values: Float64, lookback: int) -> Float64:
    return np.vstack([np.full((lookback - 1, values.shape[1]), np.nan), values])


def trailing_zscore(series: Float64, lookback: int) -> Float64:
    """Distance of each value from the mean of the trailing ``lookback`` values up to it, in their standard
    deviations: what a trader knows at that bar (a z-score against the whole window knows where the series ends)."""
    mean, sd = rolling_mean_sd(series, lookback)
    with np.errstate(divide="ignore", invalid="ignore"):
        z: Float64 = (series - mean) / sd
    return z


def band_positions(z: Float64, entry: float) -> Float64:
    """Reversion positions with hysteresis: long from ``z < -entry`` until ``z >= 0``, short from ``z > entry``
    until ``z <= 0``, flat otherwise (and where z is NaN). Vectorised: each row's position is the sign of the last
    entry unless an exit condition of that side came after it."""
    rows = np.arange(z.shape[0])[:, None]
    side = np.where(z < -entry, 1, np.where(z > entry, -1, 0))
    last_entry = np.maximum.accumulate(np.where(side != 0, rows, -1), axis=0)
    held = np.where(last_entry >= 0, np.take_along_axis(side, np.maximum(last_entry, 0), axis=0), 0)
    last_long_exit = np.maximum.accumulate(np.where(z >= 0, rows, -1), axis=0)
    last_short_exit = np.maximum.accumulate(np.where(z <= 0, rows, -1), axis=0)
    exited = np.where(held > 0, last_long_exit > last_entry, last_short_exit > last_entry)
    positions: Float64 = np.where(exited | np.isnan(z), 0.0, held.astype(np.float64))
    return positions


def momentum_positions(series: Float64, lookback: int) -> Float64:
    """Time-series momentum: hold the sign of the trailing ``lookback``-bar change; flat before ``lookback`` bars."""
    if not 1 <= lookback < series.shape[0]:
        raise ValueError("lookback must be between 1 and the number of values - 1")
    positions = np.zeros_like(series)
    positions[lookback:] = np.sign(series[lookback:] - series[:-lookback])
    return positions


def expanding_hedge(y: Float64, x: Float64, first: int) -> tuple[Float64, Float64, Float64]:
    """Hedge ratio, intercept and spread z-score at each row from the OLS of y on x over every row up to it, from
    row ``first - 1`` on (NaN before): the spread ``y - beta x - alpha`` of the latest bar in residual standard
    errors. Expanding rather than rolling: a hedge ratio from a few dozen bars is too noisy to trade."""
    if not 3 <= first <= y.shape[0]:
        raise ValueError("first must be between 3 and the number of values")
    y0, x0 = y - y[:1], x - x[:1]
    count = np.arange(1, y.shape[0] + 1, dtype=np.float64)[:, None]
    sx, sy = np.cumsum(x0, axis=0), np.cumsum(y0, axis=0)
    sxx, sxy, syy = np.cumsum(x0 * x0, axis=0), np.cumsum(x0 * y0, axis=0), np.cumsum(y0 * y0, axis=0)
    cxx, cxy, cyy = sxx - sx * sx / count, sxy - sx * sy / count, syy - sy * sy / count
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = cxy / cxx
        shift = (sy - beta * sx) / count
        residual_sd = np.sqrt(np.maximum(cyy - beta * cxy, 0.0) / (count - 2))
        z = (y0 - beta * x0 - shift) / residual_sd
    alpha = shift + y[:1] - beta * x[:1]
    early = slice(0, first - 1)
    beta[early] = alpha[early] = z[early] = np.nan
    return beta, alpha, z


def trade_returns(legs: list[tuple[Float64, Float64]], cost_per_unit: float) -> tuple[Float64, Float64]:
    """Net returns per bar of positions held for one bar, and the turnover behind them.

    ``legs`` are (positions (N, S) decided at each bar's close, per-bar returns (N - 1, S)); bar ``i`` earns
    ``p[i-1] * r[i]`` on every leg and pays ``cost_per_unit`` on the units traded at the close before it,
    ``|p[i-1] - p[i-2]|`` (from flat at the start).
    """
    gross: Float64 = np.zeros_like(legs[0][1])
    turnover: Float64 = np.zeros_like(legs[0][1])
    for positions, returns in legs:
        held = positions[:-1]
        gross += held * returns
        turnover += np.abs(np.diff(held, axis=0, prepend=0.0))
    return gross - cost_per_unit * turnover, turnover


def newey_west_lags(n: int) -> int:
    """Newey-West (1994) rule of thumb for the Bartlett kernel: floor(4 (n / 100)^(2/9))."""
    return int(4.0 * (n / 100.0) ** (2.0 / 9.0))


def newey_west_t(returns: Float64) -> tuple[Float64, Float64]:
    """t-statistic of the mean with Newey-West (HAC, Bartlett) standard errors, and its one-sided p-value for a
    positive mean (Student-t with n - 1 degrees of freedom), per column: autocorrelated returns do not inflate it."""
    n = returns.shape[0]
    lags = newey_west_lags(n)
    e = returns - returns.mean(axis=0)
    long_run = np.einsum("ts,ts->s", e, e) / n
    for lag in range(1, lags + 1):
        long_run += 2.0 * (1.0 - lag / (lags + 1.0)) * np.einsum("ts,ts->s", e[lag:], e[:-lag]) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = returns.mean(axis=0) / np.sqrt(np.maximum(long_run, 0.0) / n)
    return t, stdtr(n - 1, -t)


def sharpe(returns: Float64, bars_per_year: float) -> Float64:
    """Annualised Sharpe ratio (zero risk-free rate) per column."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio: Float64 = returns.mean(axis=0) / returns.std(axis=0, ddof=1) * np.sqrt(bars_per_year)
    return ratio


def sharpe_moments(returns: Float64) -> tuple[Float64, Float64]:
    """Per-bar Sharpe ratio and ``1 - skew SR + (kurt - 1) / 4 SR^2``, the variance factor of its estimate."""
    n = returns.shape[0]
    e = returns - returns.mean(axis=0)
    e2 = e * e
    m2 = e2.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.einsum("ts,ts->s", e2, e) / n / m2**1.5
        kurt = np.einsum("ts,ts->s", e2, e2) / n / (m2 * m2)
        sr = returns.mean(axis=0) / returns.std(axis=0, ddof=1)
    return sr, 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr


def probabilistic_sharpe(
    sr: Float64, factor: Float64, observations: Float64 | float, benchmark: Float64 | float = 0.0
) -> Float64:
    """PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) / sqrt(factor)), from ``sharpe_moments`` of T observations; per-bar SR
    and SR* (one benchmark, or one per column)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = ndtr((sr - benchmark) * np.sqrt(np.subtract(observations, 1)) / np.sqrt(factor))
    return np.where(factor > 0, out, np.nan)


def sharpe_standard_error(factor: Float64, observations: Float64 | float, bars_per_year: float) -> Float64:
    """Standard error of the annualised Sharpe ratio (Mertens 2002: non-normal returns), from ``sharpe_moments``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        se: Float64 = np.sqrt(np.where(factor > 0, factor, np.nan) / np.subtract(observations, 1) * bars_per_year)
    return se


_EULER_GAMMA = 0.5772156649015329


def expected_max_sharpe(trials: int, variance: Float64 | float) -> Float64:
    """Expected maximum per-bar Sharpe ratio of ``trials`` unskilled strategies whose Sharpe estimates have this
    variance (Bailey and Lopez de Prado 2014): the benchmark the deflated Sharpe ratio tests against."""
    if trials < 2:
        return np.zeros_like(np.asarray(variance, dtype=np.float64))
    quantiles = (1.0 - _EULER_GAMMA) * ndtri(1.0 - 1.0 / trials) + _EULER_GAMMA * ndtri(1.0 - 1.0 / (trials * np.e))
    out: Float64 = np.sqrt(variance) * quantiles
    return out


def holm(p: Float64) -> Float64:
    """Holm step-down adjusted p-values (statsmodels ``multipletests(method="holm")``)."""
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(p[order] * np.arange(m, 0, -1)), 1.0)
    return adjusted


def benjamini_hochberg(p: Float64) -> Float64:
    """Benjamini-Hochberg step-up adjusted p-values (statsmodels ``multipletests(method="fdr_bh")``)."""
    m = p.size
    order = np.argsort(p, kind="stable")
    raw = p[order] * m / np.arange(1, m + 1)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    return adjusted


def correlation_matrix(returns: Float64) -> Float64:
    """Pearson correlation of the columns (complete data); constant columns give NaN."""
    e = returns - returns.mean(axis=0)
    norm = np.sqrt(np.einsum("ts,ts->s", e, e))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = e / norm
    matrix: Float64 = z.T @ z
    np.clip(matrix, -1.0, 1.0, out=matrix)
    return matrix


def top_partners(correlation: Float64, k: int) -> tuple[IntP, IntP]:
    """Distinct pairs (a < b) formed by each column's ``k`` most correlated others."""
    n = correlation.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty
    key = np.where(np.isnan(correlation), -np.inf, correlation)
    np.fill_diagonal(key, -np.inf)
    best = np.argpartition(-key, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    cols = best.reshape(-1)
    keep = np.isfinite(key[rows, cols])
    a, b = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]
    unique = np.unique(a * n + b)
    return (unique // n).astype(np.intp), (unique % n).astype(np.intp)
