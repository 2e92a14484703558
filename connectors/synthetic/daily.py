"""A small seeded market of daily closes with known regimes, for discovery on daily history (the demo, tests):
three trending stocks (one falling), two cointegrated pairs, and random walks with nothing to find: enough
strategies with an edge for a portfolio of five. Written as the wide CSV that
``tidemark ingest replay --layout wide --interval 1d`` reads, as a user's own file of closes would be."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

DAILY_VOLATILITY = 0.012


@dataclass(frozen=True)
class DailyRegime:
    kind: str
    symbols: tuple[str, ...]
    description: str


def daily_market(
    seed: int, sessions: int = 1260, first_day: str = "2020-01-02"
) -> tuple[pd.DataFrame, list[DailyRegime]]:
    """Closes per weekday: DTREND and DTRENDB drift up and DDOWN down (t-statistic 10 over the history),
    DPAIRA = DPAIRB^1.2 and DPAIRC = DPAIRD^0.8 times an OU spread (half-life 5 sessions), DNOISEA/B/C are random
    walks. The later symbols draw after the first six, so those stay what they were for a seed."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range(first_day, periods=sessions)
    shocks = rng.standard_t(4, (sessions, 6)) * DAILY_VOLATILITY / np.sqrt(2)
    log = np.cumsum(shocks, axis=0)
    log[:, 0] += np.arange(sessions) * 10 * DAILY_VOLATILITY / np.sqrt(sessions)
    kappa = 1 - 0.5 ** (1 / 5)
    spread = lfilter([1.0], [1.0, -(1 - kappa)], rng.normal(0, DAILY_VOLATILITY * 0.6, sessions))
    log[:, 1] = 1.2 * log[:, 2] + spread
    more = np.cumsum(rng.standard_t(4, (sessions, 3)) * DAILY_VOLATILITY / np.sqrt(2), axis=0)
    drift = np.arange(sessions) * 10 * DAILY_VOLATILITY / np.sqrt(sessions)
    more[:, 0] += drift
    more[:, 1] -= drift
    spread = lfilter([1.0], [1.0, -(1 - kappa)], rng.normal(0, DAILY_VOLATILITY * 0.6, sessions))
    more = np.column_stack([more, 0.8 * more[:, 2] + spread])
    closes = 50 * np.exp(np.column_stack([log, more]))
    names = ["DTREND", "DPAIRA", "DPAIRB", "DNOISEA", "DNOISEB", "DNOISEC", "DTRENDB", "DDOWN", "DPAIRD", "DPAIRC"]
    frame = pd.DataFrame(closes, columns=names)
    frame.insert(0, "date", days.strftime("%Y-%m-%d"))
    regimes = [
        DailyRegime("trending", ("DTREND",), "drift with t-statistic 10 over the history"),
        DailyRegime("trending", ("DTRENDB",), "drift with t-statistic 10 over the history"),
        DailyRegime("trending", ("DDOWN",), "drift with t-statistic -10 over the history"),
        DailyRegime("mean_reverting_pair", ("DPAIRA", "DPAIRB"), "log A = 1.2 log B + OU spread, half-life 5 sessions"),
        DailyRegime("mean_reverting_pair", ("DPAIRC", "DPAIRD"), "log C = 0.8 log D + OU spread, half-life 5 sessions"),
        DailyRegime("none", ("DNOISEA", "DNOISEB", "DNOISEC"), "random walks: nothing to find"),
    ]
    return frame, regimes


def write_daily_market(path: Path, seed: int, sessions: int = 1260) -> list[DailyRegime]:
    frame, regimes = daily_market(seed, sessions)
    frame.to_csv(path, index=False)
    return regimes
