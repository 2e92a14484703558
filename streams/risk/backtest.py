"""Whether a VaR model's forecasts deserve trust: roll each method forward one day at a time on a trailing window,
count the days the loss beat the forecast, and test those exceptions for the right frequency (Kupiec 1995) and for
independence from one day to the next (Christoffersen 1998). Pure: numpy and scipy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import xlogy
from scipy.stats import chi2

from streams.risk.measures import LEVELS, METHODS, cornish_fisher, historical, moments, parametric

Float64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

SIGNIFICANCE = 0.05
MONTE_CARLO_PATHS = 10_000
SIMULATED_VALUES_PER_CHUNK = 1 << 22  # 32 MiB of float64 scenarios at a time, whatever the history length


def kupiec(exceptions: int, observations: int, level: float) -> tuple[float, float]:
    """Proportion-of-failures LR and its chi2(1) p-value: does the exception rate ``x / T`` differ from the
    ``1 - level`` the model promises? ``xlogy`` makes ``0 ln 0 = 0``, so no exceptions (or all) is a finite LR."""
    if observations <= 0 or not 0 <= exceptions <= observations:
        raise ValueError(f"need 0 <= exceptions <= observations > 0, not {exceptions} of {observations}")
    p = 1.0 - level
    x, t = float(exceptions), float(observations)
    promised = xlogy(t - x, 1.0 - p) + xlogy(x, p)
    observed = xlogy(t - x, 1.0 - x / t) + xlogy(x, x / t)
    lr = max(2.0 * float(observed - promised), 0.0)  # the observed rate is the MLE; only rounding goes below 0
    return lr, float(chi2.sf(lr, 1))


def _transitions(hits: Bool) -> tuple[int, int, int, int]:
    """``n00, n01, n10, n11``: day pairs (yesterday, today) counted by whether each day was an exception."""
    before, after = hits[:-1], hits[1:]
    return (
        int(np.sum(~before & ~after)),
        int(np.sum(~before & after)),
        int(np.sum(before & ~after)),
        int(np.sum(before & after)),
    )


def _rate(count: int, total: int) -> float:
    """A transition probability's MLE; with no days to condition on its counts are zero, so any value leaves the
    likelihood unchanged and 0 keeps it finite."""
    return count / total if total else 0.0


def christoffersen(hits: npt.ArrayLike) -> tuple[float, float]:
    """Independence LR and its chi2(1) p-value: is an exception more (or less) likely the day after one? A
    first-order Markov chain with ``pi01 = P(hit | no hit)`` and ``pi11 = P(hit | hit)`` against one rate ``pi``."""
    n00, n01, n10, n11 = _transitions(np.asarray(hits, dtype=np.bool_))
    pi01, pi11, pi = _rate(n01, n00 + n01), _rate(n11, n10 + n11), _rate(n01 + n11, n00 + n01 + n10 + n11)
    markov = xlogy(n00, 1.0 - pi01) + xlogy(n01, pi01) + xlogy(n10, 1.0 - pi11) + xlogy(n11, pi11)
    independent = xlogy(n00 + n10, 1.0 - pi) + xlogy(n01 + n11, pi)
    lr = max(2.0 * float(markov - independent), 0.0)
    return lr, float(chi2.sf(lr, 1))


@dataclass(frozen=True)
class Coverage:
    """One method's VaR backtest at one level. ``conditional_*`` is Christoffersen's conditional coverage test,
    the sum of the two LRs against chi2(2) (Kupiec here counts all ``observations``, not the ``T - 1``
    transitions, the usual practical form)."""

    method: str
    level: float
    observations: int
    exceptions: int
    expected: float
    rate: float
    kupiec_lr: float
    kupiec_p: float
    christoffersen_lr: float
    christoffersen_p: float
    conditional_lr: float
    conditional_p: float
    significance: float
    verdict: str


def verdict(hits: Bool, level: float, kupiec_p: float, christoffersen_p: float, significance: float) -> str:
    """``accepted``, or every reason to reject: which way the exception count misses and which way exceptions
    depend on each other, since too few exceptions (capital wasted) and too many (risk hidden) call for opposite
    fixes, and so do clustering (a window too slow for volatility) and alternation."""
    reasons = []
    if kupiec_p < significance:
        reasons.append("too many exceptions" if hits.mean() > 1.0 - level else "too few exceptions")
    if christoffersen_p < significance:
        n00, n01, n10, n11 = _transitions(hits)
        clustered = _rate(n11, n10 + n11) > _rate(n01, n00 + n01)
        reasons.append("exceptions cluster" if clustered else "exceptions alternate")
    return "; ".join(reasons) or "accepted"


def _monte_carlo(windows: Float64, level: float, paths: int, seed: int) -> Float64:
    """Empirical VaR of ``paths`` normal scenarios per day at that day's window mean and std: the one-asset case
    of the portfolio Monte Carlo, so it differs from PARAMETRIC only by simulation error. The same standard
    normals serve every day (common random numbers), so day-to-day changes are the window's, not the draw's;
    days go through in chunks so ``paths x days`` scenarios never sit in memory at once."""
    mean, std, _, _ = moments(windows)
    shocks = np.random.default_rng(seed).standard_normal(paths)[:, None]
    days = windows.shape[1]
    chunk = max(1, SIMULATED_VALUES_PER_CHUNK // paths)
    var = np.empty(days)
    for start in range(0, days, chunk):
        part = slice(start, start + chunk)
        var[part], _ = historical(mean[part] + std[part] * shocks, level)
    return var


def forecasts(
    returns: npt.ArrayLike,
    method: str,
    level: float,
    window: int,
    *,
    paths: int = MONTE_CARLO_PATHS,
    seed: int = 0,
) -> Float64:
    """One-day VaR (a positive loss, in return units) for each day ``t`` in ``[window, T)`` from
    ``returns[t - window:t]`` alone, so a backtest never sees the day it forecasts. All days at once: the trailing
    windows are the columns of one strided ``(window, days)`` view that the measures read column by column."""
    series = np.asarray(returns, dtype=np.float64)
    if series.ndim != 1 or not 0 < window < series.size:
        raise ValueError(f"need a 1-D series longer than a positive window, not {series.shape} and {window}")
    if method not in METHODS:
        raise ValueError(f"unknown VaR method {method!r}; expected one of {METHODS}")
    windows = sliding_window_view(series[:-1], window).T  # column j holds returns[j : j + window], for t = window + j
    if method == "HISTORICAL":
        var, _ = historical(windows, level)
    elif method == "MONTE_CARLO":
        var = _monte_carlo(windows, level, paths, seed)
    else:
        mean, std, skew, excess_kurtosis = moments(windows)
        if method == "PARAMETRIC":
            var, _ = parametric(mean, std, level)
        else:
            var, _ = cornish_fisher(mean, std, skew, excess_kurtosis, level)
    return np.asarray(var, dtype=np.float64)


def backtest(
    returns: npt.ArrayLike,
    method: str,
    level: float,
    window: int,
    *,
    paths: int = MONTE_CARLO_PATHS,
    seed: int = 0,
    significance: float = SIGNIFICANCE,
) -> Coverage:
    """Roll ``method`` over ``returns`` and test its exceptions: day ``t`` is one when its return lost more than
    the VaR forecast from the window before it."""
    series = np.asarray(returns, dtype=np.float64)
    var = forecasts(series, method, level, window, paths=paths, seed=seed)
    hits = series[window:] < -var
    observations, exceptions = hits.size, int(hits.sum())
    kupiec_lr, kupiec_p = kupiec(exceptions, observations, level)
    christoffersen_lr, christoffersen_p = christoffersen(hits)
    conditional_lr = kupiec_lr + christoffersen_lr
    return Coverage(
        method=method,
        level=level,
        observations=observations,
        exceptions=exceptions,
        expected=observations * (1.0 - level),
        rate=exceptions / observations,
        kupiec_lr=kupiec_lr,
        kupiec_p=kupiec_p,
        christoffersen_lr=christoffersen_lr,
        christoffersen_p=christoffersen_p,
        conditional_lr=conditional_lr,
        conditional_p=float(chi2.sf(conditional_lr, 2)),
        significance=significance,
        verdict=verdict(hits, level, kupiec_p, christoffersen_p, significance),
    )


def backtest_all(
    returns: npt.ArrayLike,
    methods: tuple[str, ...] = METHODS,
    levels: tuple[float, ...] = LEVELS,
    window: int = 250,
    *,
    paths: int = MONTE_CARLO_PATHS,
    seed: int = 0,
    significance: float = SIGNIFICANCE,
) -> list[Coverage]:
    """Every method at every level on one series, method-major, for the report's table."""
    return [
        backtest(returns, method, level, window, paths=paths, seed=seed, significance=significance)
        for method in methods
        for level in levels
    ]
