"""Time-series momentum: hold the direction of the trailing trend while it is strong enough."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streams.strategies.base import Bars, Family, Float64, Parameter
from streams.strategies.rules import bar_changes, calm, log_closes, threshold_positions, trailing_sd, trend_score


def momentum(bars: Bars, params: Mapping[str, float]) -> Float64:
    lookback = int(params["lookback"])
    prices = log_closes(bars)[:, 0]
    changes = bar_changes(prices)
    entry = params["entry"]
    positions = threshold_positions(
        trend_score(prices, lookback),
        entry,
        min(params["exit"], entry),
        prices,
        params["stop"] * trailing_sd(changes, lookback) * np.sqrt(lookback),
        calm(changes, lookback, params["vol_cap"]),
        bars.session_ends,
    )
    return positions[:, None]


MOMENTUM = Family(
    name="momentum",
    legs=1,
    parameters=(
        Parameter("lookback", 5, 240, 60, integer=True, log=True),
        Parameter("entry", 0.0, 2.5, 0.0),
        Parameter("exit", -1.0, 1.0, 0.0),
        Parameter("vol_cap", 1.0, 3.0, np.inf),
        Parameter("stop", 0.5, 4.0, np.inf),
    ),
    rule=momentum,
    description="long (short) while the trailing return, in units of its volatility, is above entry (below -entry)",
)
