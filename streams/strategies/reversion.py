"""Mean reversion (Bollinger bands): fade a price that strayed from its trailing mean until it comes back."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streams.patterns.stats import trailing_zscore
from streams.strategies.base import Bars, Family, Float64, Parameter
from streams.strategies.rules import bar_changes, calm, log_closes, threshold_positions


def reversion(bars: Bars, params: Mapping[str, float]) -> Float64:
    lookback = int(params["lookback"])
    prices = log_closes(bars)
    z = trailing_zscore(prices, lookback)[:, 0]
    entry = params["entry"]
    positions = threshold_positions(
        -z,
        entry,
        min(params["exit"], entry),
        -z,
        np.full(z.shape, params["stop"]),
        calm(bar_changes(prices[:, 0]), lookback, params["vol_cap"]),
        bars.session_ends,
    )
    return positions[:, None]


REVERSION = Family(
    name="reversion",
    legs=1,
    parameters=(
        Parameter("lookback", 10, 500, 60, integer=True, log=True),
        Parameter("entry", 0.5, 3.0, 2.0),
        Parameter("exit", -0.5, 1.0, 0.0),
        Parameter("vol_cap", 1.0, 3.0, np.inf),
        Parameter("stop", 0.5, 3.0, np.inf),
    ),
    rule=reversion,
    description="long below -entry trailing standard deviations from the trailing mean, short above +entry, out "
    "when the z-score is back past -exit (+exit); the stop is in z-score units beyond the entry",
)
