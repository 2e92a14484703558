"""Building blocks the families share: trailing scores, the threshold state machine that turns a score into
positions (entry, exit, stop, volatility filter), and cross-sectional ranks. Pure, causal: every value at a bar
uses that bar and earlier ones only."""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from streams.patterns.stats import rolling_mean_sd
from streams.strategies.base import Bars, Bool, Float64

Int64 = npt.NDArray[np.int64]

VOL_FILTER_SPAN = 5
"""The volatility filter compares the trailing volatility over the lookback with that over this many lookbacks."""


def log_closes(bars: Bars) -> Float64:
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Float64 = np.log(bars.closes)
    return out


def bar_changes(values: Float64) -> Float64:
    """Change from the previous bar, NaN on the first."""
    out = np.full_like(values, np.nan)
    out[1:] = values[1:] - values[:-1]
    return out


def trailing_sd(changes: Float64, lookback: int) -> Float64:
    """Standard deviation of the trailing ``lookback`` changes at each bar (NaN until there are enough)."""
    filled = np.nan_to_num(changes).reshape(changes.shape[0], -1)
    _, sd = rolling_mean_sd(filled, max(int(lookback), 2))
    sd[: int(lookback)] = np.nan
    return sd.reshape(changes.shape)


def trend_score(log_prices: Float64, lookback: int) -> Float64:
    """The trailing ``lookback``-bar log return in units of its own volatility: a t-statistic of the drift."""
    changes = bar_changes(log_prices)
    moved = np.full_like(log_prices, np.nan)
    moved[lookback:] = log_prices[lookback:] - log_prices[:-lookback]
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Float64 = moved / (trailing_sd(changes, lookback) * np.sqrt(lookback))
    return out


def calm(changes: Float64, lookback: int, cap: float) -> Bool:
    """Bars whose trailing volatility is at most ``cap`` times that of the last ``VOL_FILTER_SPAN`` lookbacks (all
    bars when the cap is infinite); a strategy trades only then."""
    if not np.isfinite(cap):
        return np.ones(changes.shape, dtype=np.bool_)
    short = trailing_sd(changes, lookback)
    long = trailing_sd(changes, min(VOL_FILTER_SPAN * lookback, changes.shape[0]))
    return np.asarray(short <= cap * long)


@numba.njit(cache=True)
def threshold_positions(
    score: Float64,
    entry: float,
    exit_: float,
    value: Float64,
    stop_distance: Float64,
    allowed: Bool,
    session_ends: Bool,
) -> Float64:
    """Long from ``score > entry`` until ``score < exit_``, short from ``score < -entry`` until ``score > -exit_``;
    flat where the score is NaN, where trading is not ``allowed``, at each session end, and after the ``value`` moved
    against the position by the ``stop_distance`` set at entry (re-armed once the score is back inside the entry
    band, so a stop is not re-entered at once)."""
    n = score.shape[0]
    out = np.zeros(n)
    side = 0
    armed = True
    entry_value = 0.0
    distance = np.inf
    for t in range(n):
        s = score[t]
        if session_ends[t] or not np.isfinite(s) or not allowed[t]:
            side = 0
            armed = True
            continue
        if (side == 1 and s < exit_) or (side == -1 and s > -exit_):
            side = 0
        elif side != 0 and (value[t] - entry_value) * side < -distance:
            side = 0
            armed = False
        if not armed and abs(s) <= entry:
            armed = True
        if side == 0 and armed:
            if s > entry:
                side = 1
            elif s < -entry:
                side = -1
            if side != 0:
                entry_value = value[t]
                distance = stop_distance[t]
        out[t] = side
    return out


def descending_ranks_by_row(values: Float64) -> Int64:
    """Per row, 1 for the largest finite value, 2 for the next...; ties keep column order; 0 where NaN: the rotation
    engine's ``descending_ranks`` for every bar at once."""
    finite = np.isfinite(values)
    order = np.argsort(np.where(finite, -values, np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, values.shape[1] + 1)[None, :], axis=1)
    out: Int64 = np.where(finite, ranks, 0)
    return out
