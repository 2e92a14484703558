"""Cointegrated pairs: trade the spread of two log prices around its trailing mean, hedged by a ratio estimated
only from bars up to each decision."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streams.patterns.stats import expanding_hedge, rolling_mean_sd
from streams.strategies.base import Bars, Family, Float64, Parameter
from streams.strategies.rules import bar_changes, calm, log_closes, threshold_positions

HEDGE_WARMUP = 30
"""Bars before the first hedge ratio: a ratio from fewer is too noisy to trade."""


def spread_zscore(y: Float64, x: Float64, beta: Float64, lookback: int) -> Float64:
    """z-score of ``y - beta_t x`` at each bar against the trailing ``lookback`` bars, all priced with that bar's
    hedge ratio ``beta_t`` (the spread's mean and variance from the trailing moments of y and x)."""
    stacked = np.column_stack([y, x, y * x])
    means, sds = rolling_mean_sd(stacked - stacked[:1], lookback)
    my, mx, mxy = means[:, 0] + y[0], means[:, 1] + x[0], means[:, 2] + (y * x)[0]
    scale = lookback / (lookback - 1)
    cov = (mxy - my * mx) * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = sds[:, 0] ** 2 - 2 * beta * cov + beta * beta * sds[:, 1] ** 2
        z: Float64 = (y - beta * x - (my - beta * mx)) / np.sqrt(np.maximum(variance, 0.0))
    return z


def pairs(bars: Bars, params: Mapping[str, float]) -> Float64:
    lookback = int(params["lookback"])
    if bars.count < HEDGE_WARMUP:
        return np.zeros((bars.count, 2))  # no hedge ratio yet: flat, as these bars are in a longer history
    prices = log_closes(bars)
    y, x = prices[:, 0], prices[:, 1]
    beta = expanding_hedge(y[:, None], x[:, None], max(HEDGE_WARMUP, 3))[0][:, 0]
    z = spread_zscore(y, x, beta, lookback)
    entry = params["entry"]
    side = threshold_positions(
        -z,
        entry,
        min(params["exit"], entry),
        -z,
        np.full(z.shape, params["stop"]),
        calm(bar_changes(y - np.nan_to_num(beta) * x), lookback, params["vol_cap"]),
        bars.session_ends,
    )
    gross = 1.0 + np.abs(np.nan_to_num(beta))
    return np.column_stack([side / gross, -side * np.nan_to_num(beta) / gross])


PAIRS = Family(
    name="pairs",
    legs=2,
    parameters=(
        Parameter("lookback", 20, 500, 120, integer=True, log=True),
        Parameter("entry", 0.5, 3.0, 2.0),
        Parameter("exit", -0.5, 1.0, 0.0),
        Parameter("vol_cap", 1.0, 3.0, np.inf),
        Parameter("stop", 0.5, 3.0, np.inf),
    ),
    rule=pairs,
    description="long the spread y - beta x below -entry trailing standard deviations, short above +entry; one "
    "unit of gross notional, beta from an expanding OLS of log prices",
)
