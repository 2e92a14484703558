"""How likely a selected backtest is a fluke of the search: the deflated Sharpe ratio (Bailey and Lopez de Prado
2014) and the probability of backtest overfitting by combinatorially symmetric cross-validation (Bailey, Borwein,
Lopez de Prado and Zhu 2017). Pure: numpy and scipy only."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import numpy.typing as npt

from streams.patterns.stats import expected_max_sharpe, probabilistic_sharpe, sharpe_moments

Float64 = npt.NDArray[np.float64]

CSCV_SLICES = 16


def variance_factor(sr: float, skew: float, kurtosis: float) -> float:
    """``1 - skew SR + (kurtosis - 1) / 4 SR^2``: how non-normal returns widen the Sharpe ratio's estimate."""
    return 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr


@dataclass(frozen=True)
class Deflated:
    """The deflated Sharpe ratio (a probability) and the expected maximum per-bar Sharpe ratio of the trials
    without skill, which the selected one had to beat."""

    dsr: float
    benchmark: float
    trials: int


def deflated_sharpe(selected: Float64, trial_sharpes: Float64) -> Deflated:
    """DSR of the ``selected`` per-bar returns, deflated by every trial's per-bar Sharpe ratio on the same grid
    (the selected one among them): PSR against the expected maximum of that many unskilled trials."""
    trials = int(np.isfinite(trial_sharpes).sum())
    variance = float(np.nanvar(trial_sharpes, ddof=1)) if trials > 1 else 0.0
    benchmark = float(expected_max_sharpe(trials, variance))
    sr, factor = sharpe_moments(selected[:, None])
    dsr = float(probabilistic_sharpe(sr, factor, selected.shape[0], benchmark)[0])
    return Deflated(dsr, benchmark, trials)


@dataclass(frozen=True)
class Overfitting:
    """PBO: the share of the CSCV splits in which the in-sample best trial ranks in the bottom half out of sample;
    ``logits`` holds each split's logit of that relative rank (the distribution a plot shows)."""

    pbo: float
    logits: Float64
    slices: int


def _block_sums(returns: Float64, slices: int) -> tuple[Float64, Float64, Float64]:
    edges = np.linspace(0, returns.shape[0], slices + 1).round().astype(np.int64)
    sums = np.add.reduceat(returns, edges[:-1], axis=0)
    squares = np.add.reduceat(returns * returns, edges[:-1], axis=0)
    return sums, squares, np.diff(edges).astype(np.float64)


def _sharpes(sums: Float64, squares: Float64, counts: Float64) -> Float64:
    mean = sums / counts[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = (squares - sums * mean) / (counts[:, None] - 1)
        out: Float64 = np.where(variance > 0, mean / np.sqrt(np.maximum(variance, 0.0)), 0.0)
    return out


def probability_of_overfitting(returns: Float64, slices: int = CSCV_SLICES) -> Overfitting:
    """CSCV over a (bars, trials) matrix of per-bar returns on one grid: every split of the ``slices`` contiguous
    blocks into two halves picks the best trial by in-sample Sharpe ratio and ranks it out of sample, rank
    ``w = r / (N + 1)`` (ties counted half), ``logit = ln(w / (1 - w))``; PBO is the share of logits <= 0."""
    bars, trials = returns.shape
    if slices % 2 or slices < 4:
        raise ValueError("CSCV needs an even number of slices, at least 4")
    if trials < 2 or bars < 2 * slices:
        raise ValueError(f"CSCV needs at least 2 trials and {2 * slices} bars, not {trials} and {bars}")
    sums, squares, counts = _block_sums(np.nan_to_num(returns), slices)
    halves = np.array(
        [[b in chosen for b in range(slices)] for chosen in combinations(range(slices), slices // 2)], dtype=np.float64
    )
    insample = _sharpes(halves @ sums, halves @ squares, halves @ counts)
    outside = 1.0 - halves
    oos = _sharpes(outside @ sums, outside @ squares, outside @ counts)
    best = np.argmax(insample, axis=1)
    chosen = oos[np.arange(oos.shape[0]), best][:, None]
    rank = (oos < chosen).sum(axis=1) + 0.5 * ((oos == chosen).sum(axis=1) - 1) + 1
    relative = rank / (trials + 1)
    logits: Float64 = np.log(relative / (1.0 - relative))
    return Overfitting(float(np.mean(logits <= 0)), logits, slices)
