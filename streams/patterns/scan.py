"""One pattern scan: every detector on every timeframe panel of the universe, one multiple-testing family.

Pure: closes in, tested candidates out. A panel is one (timeframe, market) window of complete closes, columns in
symbol order. Intraday panels hold regular-session bars only; returns across two sessions (the overnight gap) are
left out of every test and every trade, and the trades are flat over each close. Per panel the detectors are:

- ``MEAN_REVERSION`` (one symbol): Lo-MacKinlay variance-ratio test on log returns (winsorised, ``WINSOR_K``),
  one-sided (VR < 1);
  half-life and Hurst exponent of the log price. Trade: enter against a trailing z-score beyond
  ``entry_z`` (mean and deviation of the ``lookback`` bars up to the decision), exit when it crosses zero.
- ``MOMENTUM`` (one symbol): time-series momentum (hold the sign of the trailing ``lookback`` return); the test
  is the trade's own hypothesis, a positive mean net return, with Newey-West (HAC) standard errors.
- ``PAIRS_MEAN_REVERSION``: each symbol with its ``partners`` most correlated symbols of the same market (returns
  over the window), every distinct pair once, in column order (the first symbol is regressed on the second);
  Engle-Granger test on the whole window of the winsorised log prices; half-life and Hurst exponent of its
  spread. Trade: the spread of a hedge ratio and intercept fitted on the window's bars up to each decision only
  (from ``lookback`` bars on), entered and left as the single trade.

No position depends on a bar after its decision. Every trade is net of the panel's cost per unit traded, and its
Sharpe ratio comes with its standard error. Every hypothesis of the scan (all detectors, timeframes and markets)
is one family: its p-values are adjusted together (Benjamini-Hochberg by default, or Holm), and ``tests`` is the
number of hypotheses with a p-value. A candidate is emitted when its adjusted p-value is below ``alpha`` and its
trade's net Sharpe ratio is at least ``min_sharpe`` (the product's rule) and significantly positive: probabilistic
Sharpe ratio at least ``min_psr`` (a Sharpe ratio of 1 from 390 one-minute bars is 0.06 standard errors from zero).
Every trade also carries its deflated Sharpe ratio (against the best Sharpe ratio ``tests`` unskilled trials would
show), which gates too when ``min_dsr`` is set: the correction already accounts for the search across trials, so
gating on both is Bonferroni-strict on top of a false-discovery rate (see the README for the power either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from core.costs import BP
from streams.patterns import stats

Float64 = npt.NDArray[np.float64]
IntP = npt.NDArray[np.intp]
Objects = npt.NDArray[np.object_]
Correction = Literal["HOLM", "BENJAMINI_HOCHBERG"]

MEAN_REVERSION, MOMENTUM, PAIRS = 0, 1, 2
WINSOR_K = 4.0
"""The variance-ratio and Engle-Granger tests see returns clipped to 4 robust standard deviations: with Student-t(3)
returns their asymptotic p-values fall below 1e-4 about 10 and 7 times too often, and about as often as they should
after clipping; normal returns are clipped about once in 16,000 bars."""
FAMILIES = ("MEAN_REVERSION", "MOMENTUM", "PAIRS_MEAN_REVERSION")
TESTS = ("variance_ratio", "newey_west_t", "engle_granger_adf")


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
    correction: Correction = "BENJAMINI_HOCHBERG"
    partners: int = 3
    entry_z: float = 1.0
    min_sharpe: float = 1.0
    min_psr: float = 0.95
    min_dsr: float = 0.0
    min_traded_share: float = 0.9


@dataclass(frozen=True, slots=True)
class Panel:
    """``closes`` (window + 1, S): positive, complete closes of ``symbols`` on one timeframe and market.

    ``cost`` is the market's cost per unit of notional traded (``core.costs.CostModel.per_unit``). ``session``
    labels each row's trading session for intraday bars: returns across two sessions are not tested and no trade
    holds a position over the close; None for daily bars, where each row is a session.
    """

    timeframe: Timeframe
    market: str
    symbols: Objects
    closes: Float64
    bars_per_year: float
    cost: float
    session: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True, slots=True)
class Candidates:
    """Every tested hypothesis of a scan as columns; ``second`` is -1 for single-symbol patterns.

    Trade figures are net of costs: ``sharpe`` (annualised) with its standard error, ``psr`` against zero, ``dsr``
    deflated by the scan's trials; ``position`` is the trade's position now (+1 long, -1 short, 0 flat; for pairs,
    of the spread).
    """

    family: npt.NDArray[np.int8]
    panel: IntP
    first: IntP
    second: IntP
    statistic: Float64
    p_value: Float64
    adjusted_p_value: Float64
    sharpe: Float64
    sharpe_se: Float64
    gross_sharpe: Float64
    psr: Float64
    dsr: Float64
    sharpe_bar: Float64
    sharpe_factor: Float64
    observations: Float64
    turnover: Float64
    position: Float64
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
    sharpe_se: float
    psr: float
    dsr: float
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
        params = {
            "window": str(tf.window),
            "market": panel.market,
            "bars_per_year": _text(panel.bars_per_year),
            "lookback": str(tf.lookback),
            "cost_bp": _text(panel.cost / BP),
            "gross_sharpe": _text(c.gross_sharpe[i]),
            "turnover": _text(c.turnover[i]),
            "trade_bars": str(int(c.observations[i])),
        }
        position = float(c.position[i])
        direction = "LONG" if position > 0 else "SHORT" if position < 0 else "NEUTRAL"
        if family == MOMENTUM:
            params |= {"mean_return": _text(c.detail[i])}
        else:
            params |= {"zscore": _text(c.zscore[i]), "entry_z": _text(self.config.entry_z)}
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
            sharpe_se=float(c.sharpe_se[i]),
            psr=float(c.psr[i]),
            dsr=float(c.dsr[i]),
            half_life=_optional(c.half_life[i]),
            hurst=_optional(c.hurst[i]),
            params=params,
        )


def _text(value: float) -> str:
    return f"{float(value):.6g}"


def _optional(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def scan(panels: Sequence[Panel], config: ScanConfig = ScanConfig()) -> ScanResult:
    """Run every detector on every panel, correct all their p-values as one family, and deflate every trade's
    Sharpe ratio by the scan's number of trials."""
    parts = [_detect(k, panel, config) for k, panel in enumerate(panels)]
    columns = {name: np.concatenate([p[name] for p in parts]) if parts else np.empty(0) for name in _COLUMNS}
    p = columns["p_value"]
    tested = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(p.size, np.nan)
    correct = stats.holm if config.correction == "HOLM" else stats.benjamini_hochberg
    adjusted[tested] = correct(p[tested])
    dsr = _deflated_sharpe(columns, int(tested.size))
    significant = (columns["psr"] >= config.min_psr) & ~(dsr < config.min_dsr)
    emitted = (adjusted < config.alpha) & (columns["sharpe"] >= config.min_sharpe) & significant
    candidates = Candidates(
        **{name: columns[name] for name in _COLUMNS if name not in _INDEXES},
        family=columns["family"].astype(np.int8),
        panel=columns["panel"].astype(np.intp),
        first=columns["first"].astype(np.intp),
        second=columns["second"].astype(np.intp),
        adjusted_p_value=adjusted,
        dsr=dsr,
        emitted=emitted,
    )
    return ScanResult(tuple(panels), candidates, int(tested.size), config)


def liquid(traded: npt.NDArray[np.bool_], min_traded_share: float) -> npt.NDArray[np.bool_]:
    """Columns that printed in enough rows of a window (rows, S) to be scanned: carried-forward closes of an
    illiquid symbol are runs of zero returns and then a jump, which no test here models."""
    enough: npt.NDArray[np.bool_] = traded.mean(axis=0) >= min_traded_share
    return enough


def _deflated_sharpe(columns: dict[str, Float64], trials: int) -> Float64:
    """PSR of each trade against the expected best per-bar Sharpe ratio of ``trials`` unskilled trades.

    Under the scan's null every trial has a true Sharpe ratio of zero, so each estimate varies only by its own
    sampling error: the benchmark is the trade's standard error times the expected maximum of ``trials`` standard
    normals. (Taking the variance across the scan's trades instead would let the costs of high-turnover trades, whose
    net Sharpe ratios sit far below zero, raise every other trade's bar.)
    """
    sr, factor, n = columns["sharpe_bar"], columns["sharpe_factor"], columns["observations"]
    with np.errstate(divide="ignore", invalid="ignore"):
        benchmark = stats.expected_max_sharpe(trials, factor / (n - 1))
    return stats.probabilistic_sharpe(sr, factor, n, benchmark)


_INDEXES = ("family", "panel", "first", "second")
_COLUMNS = (
    *_INDEXES,
    "statistic",
    "p_value",
    "sharpe",
    "sharpe_se",
    "gross_sharpe",
    "psr",
    "sharpe_bar",
    "sharpe_factor",
    "observations",
    "turnover",
    "position",
    "half_life",
    "hurst",
    "zscore",
    "hedge_ratio",
    "intercept",
    "detail",
)


@dataclass(frozen=True, slots=True)
class _Window:
    """A panel's closes made ready for the detectors: gap-free log prices and the returns that count."""

    log_price: Float64  # (N, S): the first log close plus the within-session returns, overnight gaps removed
    returns: Float64  # (N - 1, S): per-bar log returns, 0 across a session boundary
    within: npt.NDArray[np.bool_]  # (N - 1,): whether each return lies inside one session
    last_of_session: npt.NDArray[np.bool_]  # (N,): rows after which the session closes (trades go flat)

    @classmethod
    def of(cls, panel: Panel) -> _Window:
        raw = np.log(panel.closes)
        session = panel.session
        within = np.ones(raw.shape[0] - 1, np.bool_) if session is None else session[1:] == session[:-1]
        returns = np.where(within[:, None], np.diff(raw, axis=0), 0.0)
        log_price = raw[:1] + np.vstack([np.zeros((1, raw.shape[1])), np.cumsum(returns, axis=0)])
        last = np.append(~within, False)
        return cls(log_price, returns, within, last)

    def flat_overnight(self, positions: Float64) -> Float64:
        flat: Float64 = np.where(self.last_of_session[:, None], 0.0, positions)
        return flat


def _trade(
    legs: list[tuple[Float64, Float64]], warmup: int, panel: Panel, window: _Window
) -> tuple[dict[str, Float64], Float64]:
    """Net-of-cost figures of a trade rule from the first bar its positions can be held (``warmup``), and its net
    returns per bar."""
    legs = [(window.flat_overnight(positions), returns) for positions, returns in legs]
    net, turnover = stats.trade_returns(legs, panel.cost)
    net, turnover = net[warmup - 1 :], turnover[warmup - 1 :]
    sr, factor = stats.sharpe_moments(net)
    observations = float(net.shape[0])
    figures = {
        "sharpe": sr * np.sqrt(panel.bars_per_year),
        "sharpe_se": stats.sharpe_standard_error(factor, observations, panel.bars_per_year),
        "gross_sharpe": stats.sharpe(net + panel.cost * turnover, panel.bars_per_year),
        "psr": stats.probabilistic_sharpe(sr, factor, observations),
        "sharpe_bar": sr,
        "sharpe_factor": factor,
        "observations": np.full(sr.size, observations),
        "turnover": turnover.mean(axis=0),
    }
    return figures, net


def _detect(k: int, panel: Panel, config: ScanConfig) -> dict[str, Float64]:
    """The three detectors on one panel, as columns in the order of ``_COLUMNS``."""
    tf = panel.timeframe
    if panel.closes.shape[0] != tf.window + 1:
        raise ValueError(f"panel {tf.name}/{panel.market} has {panel.closes.shape[0]} closes, not window + 1")
    window = _Window.of(panel)
    log_price, n = window.log_price, panel.closes.shape[1]
    tested_returns = window.returns[window.within]
    robust = stats.winsorize(tested_returns, WINSOR_K)
    nan = np.full(n, np.nan)
    cols = np.arange(n, dtype=np.float64)

    vr, z_vr = stats.variance_ratio(robust, tf.vr_q)
    hurst = stats.hurst(log_price)
    trailing_z = stats.trailing_zscore(log_price, tf.lookback)
    reversion_positions = stats.band_positions(trailing_z, config.entry_z)
    reversion, _ = _trade([(reversion_positions, window.returns)], tf.lookback, panel, window)
    single = {
        "family": np.full(n, MEAN_REVERSION, dtype=np.float64),
        "first": cols,
        "second": np.full(n, -1.0),
        "statistic": z_vr,
        "p_value": ndtr(z_vr),
        **reversion,
        "position": reversion_positions[-1],
        "half_life": stats.half_life(log_price),
        "hurst": hurst,
        "zscore": trailing_z[-1],
        "hedge_ratio": nan,
        "intercept": nan,
        "detail": vr,
    }
    momentum_held = stats.momentum_positions(log_price, tf.lookback)
    momentum_trade, momentum_net = _trade([(momentum_held, window.returns)], tf.lookback, panel, window)
    t, p_t = stats.newey_west_t(momentum_net)
    momentum = {
        "family": np.full(n, MOMENTUM, dtype=np.float64),
        "first": cols,
        "second": np.full(n, -1.0),
        "statistic": t,
        "p_value": p_t,
        **momentum_trade,
        "position": momentum_held[-1],
        "half_life": nan,
        "hurst": hurst,
        "zscore": nan,
        "hedge_ratio": nan,
        "intercept": nan,
        "detail": tested_returns.mean(axis=0),
    }
    pairs = _pairs(window, tested_returns, robust, panel, config)
    parts = (single, momentum, pairs)
    out = {name: np.concatenate([part[name] for part in parts]) for name in _COLUMNS if name != "panel"}
    out["panel"] = np.full(out["family"].size, float(k))
    return out


def _pairs(
    window: _Window, tested_returns: Float64, robust: Float64, panel: Panel, config: ScanConfig
) -> dict[str, Float64]:
    """Engle-Granger on the whole window (of the winsorised prices); the trade holds the spread of a hedge fitted on
    the bars up to each decision only."""
    tf = panel.timeframe
    correlation = stats.correlation_matrix(tested_returns)
    a, b = stats.top_partners(correlation, config.partners)
    m = a.size
    y, x = window.log_price[:, a], window.log_price[:, b]
    robust_price = np.vstack([np.zeros((1, robust.shape[1])), np.cumsum(robust, axis=0)])
    if m:
        stat, p, *_ = stats.engle_granger(robust_price[:, a], robust_price[:, b], tf.adf_lags, finite_sample=True)
        beta, alpha = stats.hedge_ratio(y, x)
    else:
        stat = p = beta = alpha = np.empty(0)
    spread = y - beta * x - alpha
    trailing_beta, trailing_alpha, z = stats.expanding_hedge(y, x, tf.lookback)
    held = stats.band_positions(z, config.entry_z)
    with np.errstate(invalid="ignore"):
        # Units of the spread per unit of gross notional, so costs and returns are per unit of capital.
        units = np.nan_to_num(held / (1.0 + np.abs(trailing_beta)))
    hedge = np.nan_to_num(trailing_beta)
    legs = [(units, window.returns[:, a]), (-units * hedge, window.returns[:, b])]
    trade, _ = _trade(legs, tf.lookback, panel, window)
    return {
        "family": np.full(m, PAIRS, dtype=np.float64),
        "first": a.astype(np.float64),
        "second": b.astype(np.float64),
        "statistic": stat,
        "p_value": p,
        **trade,
        "position": held[-1],
        "half_life": stats.half_life(spread),
        "hurst": stats.hurst(spread),
        "zscore": z[-1],
        "hedge_ratio": trailing_beta[-1],
        "intercept": trailing_alpha[-1],
        "detail": correlation[a, b],
    }
