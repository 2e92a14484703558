"""One pattern scan: every detector on every timeframe panel of the universe, one multiple-testing family.

Pure: closes in, tested candidates out. A panel is one (timeframe, market) window of complete closes, columns in
symbol order. Per panel the detectors are:

- ``MEAN_REVERSION`` (one symbol): Lo-MacKinlay variance-ratio test on log returns, one-sided (VR < 1);
  half-life, Hurst exponent and z-score of the log price; implied trade: hold ``-z`` of the log price.
- ``MOMENTUM`` (one symbol): t-test of the mean log return, two-sided; implied trade: time-series momentum
  (hold the sign of the trailing ``lookback`` return).
- ``PAIRS_MEAN_REVERSION``: each symbol with its ``partners`` most correlated symbols of the same market (returns
  over the window), every distinct pair once, in column order (the first symbol is regressed on the second);
  Engle-Granger test; half-life, Hurst exponent and z-score of the OLS spread; implied trade: hold ``-z`` spreads.

Every hypothesis of the scan (all detectors, timeframes and markets) is one family: its p-values are adjusted
together (Benjamini-Hochberg by default, or Holm), and ``tests`` is the number of hypotheses with a p-value.
A candidate is emitted when its adjusted p-value is below ``alpha`` and the annualised Sharpe ratio of its
implied trade over the window is at least ``min_sharpe``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from streams.patterns import stats

Float64 = npt.NDArray[np.float64]
IntP = npt.NDArray[np.intp]
Objects = npt.NDArray[np.object_]
Correction = Literal["HOLM", "BENJAMINI_HOCHBERG"]

MEAN_REVERSION, MOMENTUM, PAIRS = 0, 1, 2
FAMILIES = ("MEAN_REVERSION", "MOMENTUM", "PAIRS_MEAN_REVERSION")
TESTS = ("variance_ratio", "t_test", "engle_granger_adf")


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A bar size and the window its tests use. ``minutes == 0`` means one bar per trading session (daily)."""

    name: str
    minutes: int
    window: int
    adf_lags: int
    vr_q: int
    lookback: int


SCAN_TIMEFRAMES = (
    Timeframe("1m", 1, 390, 1, 10, 60),
    Timeframe("15m", 15, 100, 1, 4, 25),
    Timeframe("1h", 60, 100, 1, 4, 25),
    Timeframe("1d", 0, 60, 1, 5, 20),
)


@dataclass(frozen=True, slots=True)
class ScanConfig:
    alpha: float = 0.05
    min_sharpe: float = 1.0
    correction: Correction = "BENJAMINI_HOCHBERG"
    partners: int = 3
    entry_z: float = 1.0


@dataclass(frozen=True, slots=True)
class Panel:
    """``closes`` (window + 1, S): positive, complete closes of ``symbols`` on one timeframe and market."""

    timeframe: Timeframe
    market: str
    symbols: Objects
    closes: Float64
    bars_per_year: float


@dataclass(frozen=True, slots=True)
class Candidates:
    """Every tested hypothesis of a scan as columns; ``second`` is -1 for single-symbol patterns."""

    family: npt.NDArray[np.int8]
    panel: IntP
    first: IntP
    second: IntP
    statistic: Float64
    p_value: Float64
    adjusted_p_value: Float64
    sharpe: Float64
    psr: Float64
    half_life: Float64
    hurst: Float64
    zscore: Float64
    hedge_ratio: Float64
    intercept: Float64
    detail: Float64  # variance ratio, mean return per bar, or return correlation of the pair
    emitted: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.family)


@dataclass(frozen=True, slots=True)
class Signal:
    """One emitted candidate with everything the PatternSignalDetected event carries."""

    family: str
    direction: str
    symbols: tuple[str, ...]
    timeframe: str
    window_bars: int
    test: str
    statistic: float
    p_value: float
    adjusted_p_value: float
    correction: str
    tests_in_family: int
    significance: float
    sharpe: float
    psr: float
    half_life: float | None
    hurst: float | None
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class ScanResult:
    panels: tuple[Panel, ...]
    candidates: Candidates
    tests: int
    config: ScanConfig

    def signals(self) -> list[Signal]:
        """The emitted candidates, most significant first (ties in panel and column order)."""
        c = self.candidates
        picked = np.flatnonzero(c.emitted)
        picked = picked[np.lexsort((picked, c.adjusted_p_value[picked]))]
        return [self._signal(int(i)) for i in picked.tolist()]

    def _signal(self, i: int) -> Signal:
        c = self.candidates
        panel = self.panels[int(c.panel[i])]
        tf = panel.timeframe
        family = int(c.family[i])
        symbols = [str(panel.symbols[c.first[i]])]
        params = {"window": str(tf.window), "market": panel.market, "bars_per_year": _text(panel.bars_per_year)}
        if family == MOMENTUM:
            direction = "LONG" if c.statistic[i] > 0 else "SHORT"
            params |= {"lookback": str(tf.lookback), "mean_return": _text(c.detail[i])}
        else:
            z = float(c.zscore[i])
            direction = "NEUTRAL" if abs(z) < self.config.entry_z else ("SHORT" if z > 0 else "LONG")
            params |= {"zscore": _text(z), "entry_z": _text(self.config.entry_z)}
            if family == MEAN_REVERSION:
                params |= {"q": str(tf.vr_q), "variance_ratio": _text(c.detail[i])}
            else:
                symbols.append(str(panel.symbols[c.second[i]]))
                params |= {
                    "adf_lags": str(tf.adf_lags),
                    "hedge_ratio": _text(c.hedge_ratio[i]),
                    "intercept": _text(c.intercept[i]),
                    "correlation": _text(c.detail[i]),
                }
        return Signal(
            family=FAMILIES[family],
            direction=direction,
            symbols=tuple(symbols),
            timeframe=tf.name,
            window_bars=tf.window,
            test=TESTS[family],
            statistic=float(c.statistic[i]),
            p_value=float(c.p_value[i]),
            adjusted_p_value=float(c.adjusted_p_value[i]),
            correction=self.config.correction,
            tests_in_family=self.tests,
            significance=self.config.alpha,
            sharpe=float(c.sharpe[i]),
            psr=float(c.psr[i]),
            half_life=_optional(c.half_life[i]),
            hurst=_optional(c.hurst[i]),
            params=params,
        )


def _text(value: float) -> str:
    return f"{float(value):.6g}"


def _optional(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def scan(panels: Sequence[Panel], config: ScanConfig = ScanConfig()) -> ScanResult:
    """Run every detector on every panel and correct all their p-values as one family."""
    parts = [_detect(k, panel, config) for k, panel in enumerate(panels)]
    columns = {name: np.concatenate([p[name] for p in parts]) if parts else np.empty(0) for name in _COLUMNS}
    p = columns["p_value"]
    tested = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(p.size, np.nan)
    correct = stats.holm if config.correction == "HOLM" else stats.benjamini_hochberg
    adjusted[tested] = correct(p[tested])
    emitted = (adjusted < config.alpha) & (columns["sharpe"] >= config.min_sharpe)
    candidates = Candidates(
        family=columns["family"].astype(np.int8),
        panel=columns["panel"].astype(np.intp),
        first=columns["first"].astype(np.intp),
        second=columns["second"].astype(np.intp),
        statistic=columns["statistic"],
        p_value=p,
        adjusted_p_value=adjusted,
        sharpe=columns["sharpe"],
        psr=columns["psr"],
        half_life=columns["half_life"],
        hurst=columns["hurst"],
        zscore=columns["zscore"],
        hedge_ratio=columns["hedge_ratio"],
        intercept=columns["intercept"],
        detail=columns["detail"],
        emitted=emitted,
    )
    return ScanResult(tuple(panels), candidates, int(tested.size), config)


_COLUMNS = (
    "family",
    "panel",
    "first",
    "second",
    "statistic",
    "p_value",
    "sharpe",
    "psr",
    "half_life",
    "hurst",
    "zscore",
    "hedge_ratio",
    "intercept",
    "detail",
)


def _detect(k: int, panel: Panel, config: ScanConfig) -> dict[str, Float64]:
    """The three detectors on one panel, as columns in the order of ``_COLUMNS``."""
    tf = panel.timeframe
    log_price = np.log(panel.closes)
    n = log_price.shape[1]
    if log_price.shape[0] != tf.window + 1:
        raise ValueError(f"panel {tf.name}/{panel.market} has {log_price.shape[0]} closes, not window + 1")
    returns = np.diff(log_price, axis=0)
    nan = np.full(n, np.nan)
    cols = np.arange(n, dtype=np.float64)

    vr, z_vr = stats.variance_ratio(returns, tf.vr_q)
    hurst = stats.hurst(log_price)
    reversion = stats.reversion_returns(log_price, tf.lookback)
    single = {
        "family": np.full(n, MEAN_REVERSION, dtype=np.float64),
        "first": cols,
        "second": np.full(n, -1.0),
        "statistic": z_vr,
        "p_value": ndtr(z_vr),
        "sharpe": stats.sharpe(reversion, panel.bars_per_year),
        "psr": stats.probabilistic_sharpe(reversion),
        "half_life": stats.half_life(log_price),
        "hurst": hurst,
        "zscore": stats.zscore_last(log_price),
        "hedge_ratio": nan,
        "intercept": nan,
        "detail": vr,
    }
    t, p_t = stats.t_test(returns)
    momentum_trade = stats.tsmom_returns(returns, tf.lookback)
    momentum = {
        "family": np.full(n, MOMENTUM, dtype=np.float64),
        "first": cols,
        "second": np.full(n, -1.0),
        "statistic": t,
        "p_value": p_t,
        "sharpe": stats.sharpe(momentum_trade, panel.bars_per_year),
        "psr": stats.probabilistic_sharpe(momentum_trade),
        "half_life": nan,
        "hurst": hurst,
        "zscore": nan,
        "hedge_ratio": nan,
        "intercept": nan,
        "detail": returns.mean(axis=0),
    }
    pairs = _pairs(log_price, returns, panel, config)
    parts = (single, momentum, pairs)
    out = {name: np.concatenate([part[name] for part in parts]) for name in _COLUMNS if name != "panel"}
    out["panel"] = np.full(out["family"].size, float(k))
    return out


def _pairs(log_price: Float64, returns: Float64, panel: Panel, config: ScanConfig) -> dict[str, Float64]:
    tf = panel.timeframe
    correlation = stats.correlation_matrix(returns)
    a, b = stats.top_partners(correlation, config.partners)
    m = a.size
    y, x = log_price[:, a], log_price[:, b]
    if m:
        stat, p, beta, alpha = stats.engle_granger(y, x, tf.adf_lags, finite_sample=True)
    else:
        stat = p = beta = alpha = np.empty(0)
    spread = y - beta * x - alpha
    trade = stats.reversion_returns(spread, tf.lookback)
    return {
        "family": np.full(m, PAIRS, dtype=np.float64),
        "first": a.astype(np.float64),
        "second": b.astype(np.float64),
        "statistic": stat,
        "p_value": p,
        "sharpe": stats.sharpe(trade, panel.bars_per_year),
        "psr": stats.probabilistic_sharpe(trade),
        "half_life": stats.half_life(spread),
        "hurst": stats.hurst(spread),
        "zscore": stats.zscore_last(spread),
        "hedge_ratio": beta,
        "intercept": alpha,
        "detail": correlation[a, b],
    }
