"""Markets with nothing to find: the null families the pattern scan's false-discovery rate is measured under.

Every symbol is a random walk (a common factor makes pairs look alike, as in real markets); the families differ in
what makes the asymptotic tests' p-values wrong when they are not robust:

- ``gaussian``: normal, constant-variance returns (the one case where the p-values are exact);
- ``t3``: Student-t returns with 3 degrees of freedom (infinite fourth moment), scaled to the same variance;
- ``garch``: GARCH(1,1) volatility clustering (alpha 0.1, beta 0.85) with normal innovations;
- ``gaps``: an overnight gap of five bars' standard deviations at every session boundary of the intraday panels;
- ``stale``: each symbol prints in a random 55-100% of the bars and its close is carried forward otherwise; the
  panels keep the symbols the scan would (``scan.liquid``).

Intraday panels carry NYSE-like session labels (390 one-minute, 26 fifteen-minute and 7 hourly bars a session),
starting at a random bar of a session. Pure: numpy only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from core.costs import DEFAULT_COSTS
from streams.patterns.processor import TRADED_CLASSES, bars_per_year, buckets_per_session
from streams.patterns.scan import SCAN_TIMEFRAMES, Panel, ScanConfig, Timeframe, liquid

NullFamily = Literal["gaussian", "t3", "garch", "gaps", "stale"]
NULL_FAMILIES: tuple[NullFamily, ...] = ("gaussian", "t3", "garch", "gaps", "stale")
EQUITY = TRADED_CLASSES.index("EQUITY")

Float64 = npt.NDArray[np.float64]


def null_panels(family: NullFamily, seed: int, symbols: int = 12, config: ScanConfig = ScanConfig()) -> list[Panel]:
    """One panel per scan timeframe of ``symbols`` random walks of the given family."""
    rng = np.random.default_rng(seed)
    names = np.array([f"S{i:02d}" for i in range(symbols)], dtype=object)
    panels = []
    for tf in SCAN_TIMEFRAMES:
        rows = tf.window + 1
        session = _sessions(rng, tf, rows)
        shocks = _shocks(family, rng, rows, symbols + 1)
        loadings = rng.uniform(0.3, 1.5, symbols)
        scale = rng.uniform(5e-4, 2e-3, symbols)
        returns = (shocks[:, :1] * loadings * 1e-3 + shocks[:, 1:] * scale) / np.sqrt(
            1 + (loadings * 1e-3 / scale) ** 2
        )
        if family == "gaps" and session is not None:
            boundary = np.append(False, session[1:] != session[:-1])
            returns[boundary] += rng.standard_normal((int(boundary.sum()), symbols)) * 5 * scale
        closes = 50.0 * np.exp(np.cumsum(returns, axis=0))
        keep = np.ones(symbols, dtype=np.bool_)
        if family == "stale":
            traded = rng.random((rows, symbols)) < rng.uniform(0.55, 1.0, symbols)
            traded[0] = True
            closes = _carry_forward(closes, traded)
            keep = liquid(traded, config.min_traded_share)
        per_year = bars_per_year(tf, EQUITY)
        cost = DEFAULT_COSTS["EQUITY"].per_unit
        panels.append(Panel(tf, "EQUITY", names[keep], closes[:, keep], per_year, cost, session))
    return [p for p in panels if p.symbols.size >= 2]


def _sessions(rng: np.random.Generator, tf: Timeframe, rows: int) -> npt.NDArray[np.int64] | None:
    if tf.minutes == 0:
        return None
    per_session = buckets_per_session(tf, EQUITY)
    offset = int(rng.integers(per_session))
    return np.asarray((offset + np.arange(rows)) // per_session, dtype=np.int64)


def _shocks(family: NullFamily, rng: np.random.Generator, rows: int, columns: int) -> Float64:
    """Unit-variance innovations of the family."""
    if family == "t3":
        shocks: Float64 = rng.standard_t(3, (rows, columns)) / np.sqrt(3.0)
        return shocks
    z = rng.standard_normal((rows, columns))
    if family != "garch":
        return z
    omega, alpha, beta = 0.05, 0.1, 0.85  # unconditional variance omega / (1 - alpha - beta) = 1
    variance = np.ones(columns)
    out = np.empty_like(z)
    for t in range(rows):  # a recursion over a few hundred rows, vectorised across the columns
        out[t] = np.sqrt(variance) * z[t]
        variance = omega + alpha * out[t] ** 2 + beta * variance
    return out


def _carry_forward(closes: Float64, traded: npt.NDArray[np.bool_]) -> Float64:
    rows = np.arange(closes.shape[0])[:, None]
    last = np.maximum.accumulate(np.where(traded, rows, 0), axis=0)
    carried: Float64 = np.take_along_axis(closes, last, axis=0)
    return carried
