"""Cross-sectional rotation over the universe the rotation engine ranks (sector ETFs, currencies): long the
strongest trailing trends, short the weakest, rebalanced on a fixed beat."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streams.strategies.base import Bars, Family, Float64, InvalidParameters, Parameter
from streams.strategies.rules import bar_changes, calm, descending_ranks_by_row, log_closes, trend_score

MIN_MEMBERS = 3


def rotation(bars: Bars, params: Mapping[str, float]) -> Float64:
    lookback = int(params["lookback"])
    prices = log_closes(bars)
    members = prices.shape[1]
    if members < MIN_MEMBERS:
        raise InvalidParameters(f"rotation needs at least {MIN_MEMBERS} symbols, not {members}")
    top = min(int(params["top"]), members // 2)
    scores = np.column_stack([trend_score(prices[:, i], lookback) for i in range(members)])
    ranks = descending_ranks_by_row(scores)
    ranked = (ranks > 0).sum(axis=1, keepdims=True)
    longs = (ranks >= 1) & (ranks <= top)
    shorts = (ranks > ranked - top) & (ranks > 0)
    weights: Float64 = (longs.astype(np.float64) - shorts) / (2 * top)
    gap = (np.where(longs, scores, 0.0).sum(axis=1) - np.where(shorts, scores, 0.0).sum(axis=1)) / top
    changes = bar_changes(prices)
    market = np.nansum(changes, axis=1) / np.maximum(np.isfinite(changes).sum(axis=1), 1)
    active = (ranked[:, 0] >= 2 * top) & (gap > params["min_gap"]) & calm(market, lookback, params["vol_cap"])
    weights[~active] = 0.0
    beat = int(params["rebalance"])
    if beat > 1:
        held: Float64 = weights[(np.arange(bars.count) // beat) * beat]
        return held
    return weights


ROTATION = Family(
    name="rotation",
    legs=0,
    parameters=(
        Parameter("lookback", 5, 250, 60, integer=True, log=True),
        Parameter("top", 1, 5, 1, integer=True),
        Parameter("rebalance", 1, 20, 1, integer=True),
        Parameter("min_gap", 0.0, 3.0, 0.0),
        Parameter("vol_cap", 1.0, 3.0, np.inf),
    ),
    rule=rotation,
    description="long the top members by trailing return in volatility units, short the bottom ones, half the gross "
    "notional each side; rebalanced every `rebalance` bars, flat when the top-bottom gap is under min_gap",
)
