"""From a task's trials to one candidate and its evidence: each variant's out-of-sample score (parameters chosen
on each fold's training samples, scored on its test samples), the complexity-to-performance curve, the complexity
chosen by the one-standard-error rule, and the honesty gates (deflated Sharpe ratio and PBO over every trial of
every variant, out-of-sample net Sharpe, parameter count). Pure: numpy only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.discovery.folds import Fold
from streams.discovery.overfitting import deflated_sharpe, probability_of_overfitting
from streams.discovery.search import History, Trial, Variant, per_bar_sharpe
from streams.patterns.stats import probabilistic_sharpe, sharpe_moments, sharpe_standard_error

Float64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Gates:
    """The thresholds a candidate must meet to pass validation (settings ``TIDEMARK_DISCOVERY_*``)."""

    min_dsr: float = 0.95
    max_pbo: float = 0.2
    min_oos_sharpe: float = 1.0
    max_parameters: int = 5


@dataclass(frozen=True)
class VariantScore:
    """One point of the complexity curve: the annualised out-of-sample net Sharpe ratio of a variant, mean and
    standard error across folds, the trial each fold chose, and the stitched out-of-sample returns."""

    variant: Variant
    trials: int
    folds: Float64
    chosen: tuple[int, ...]
    oos_returns: Float64
    bars_per_year: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.folds))

    @property
    def se(self) -> float:
        return float(np.std(self.folds, ddof=1) / math.sqrt(self.folds.size))


def cross_validate(variant: Variant, history: History, trials: Sequence[Trial], folds: list[Fold]) -> VariantScore:
    """Each fold takes the trial with the best training Sharpe ratio and is scored by that trial's test samples."""
    chosen = tuple(int(np.argmax([t.train[k] for t in trials])) for k in range(len(folds)))
    annual = math.sqrt(history.bars.bars_per_year)
    scores = np.array([trials[c].test[k] * annual for k, c in enumerate(chosen)])
    stitched = np.concatenate(
        [trials[c].returns[f.test_start : f.test_stop] for c, f in zip(chosen, folds, strict=True)]
    )
    return VariantScore(
        variant, len(trials), scores, tuple(trials[c].number for c in chosen), stitched, history.bars.bars_per_year
    )


def one_standard_error(curve: Sequence[VariantScore]) -> int:
    """Index of the simplest variant (fewest free parameters; the best mean among equally simple ones) whose mean
    out-of-sample score is within one standard error of the best one's: complexity must pay for itself."""
    best = max(range(len(curve)), key=lambda i: curve[i].mean)
    floor = curve[best].mean - curve[best].se
    eligible = [i for i, point in enumerate(curve) if point.mean >= floor]
    return min(eligible, key=lambda i: (curve[i].variant.level, -curve[i].mean, i))


def on_grid(trial: Trial, history: History) -> Float64:
    """A trial's per-bar returns summed into the task's coarsest bars, so trials of every timeframe compare."""
    summed: Float64 = np.bincount(history.grid, weights=trial.returns, minlength=history.grid_size).astype(np.float64)
    return summed


@dataclass(frozen=True)
class Evidence:
    """Everything a candidate is judged and ranked by. Sharpe ratios are annualised and net of costs."""

    variant: Variant
    history: History
    params: dict[str, float]
    curve: tuple[VariantScore, ...]
    chosen: int
    in_sample_sharpe: float
    oos_sharpe: float
    oos_sharpe_se: float
    psr: float
    dsr: float
    dsr_benchmark: float
    pbo: float
    trials: int
    max_drawdown: float
    turnover_per_year: float
    returns: Float64
    failed: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failed


SAME_STRATEGY_CORRELATION = 0.9
"""Return streams correlated at least this much (on average, within a cluster) are one strategy to CSCV."""


def strategy_clusters(returns: Float64, min_correlation: float = SAME_STRATEGY_CORRELATION) -> Float64:
    """The trials' return streams as distinct strategies: streams correlated at ``min_correlation`` or more
    (average linkage) become one column, their mean; the trials that never trade are one more.

    CSCV ranks configurations. Counting near-copies many times makes a search that kept to a good region (twenty
    lookbacks riding one trend) look like many good trials, among which the in-sample best is no better out of
    sample than the others: PBO near a coin flip for a strategy whose every variant works. Near-copies are also why
    the out-of-sample rank is of the chosen strategy, not of its exact parameters: the deflated Sharpe ratio still
    counts every trial. With fewer than two clusters there is nothing to choose between, and the distinct streams
    are ranked as they are."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distinct: Float64 = np.unique(returns.T, axis=0).T
    spread = distinct.std(axis=0)
    trading = distinct[:, spread > 0]
    if trading.shape[1] < 2:
        return distinct if distinct.shape[1] >= 2 else returns
    distance = 1.0 - np.clip(np.corrcoef(trading.T), -1.0, 1.0)
    np.fill_diagonal(distance, 0.0)
    labels = fcluster(linkage(squareform(distance, checks=False), "average"), 1.0 - min_correlation, "distance")
    columns = [trading[:, labels == label].mean(axis=1) for label in np.unique(labels)]
    if (spread == 0).any():
        columns.append(np.zeros(distinct.shape[0]))
    if len(columns) < 2:
        return distinct
    return np.column_stack(columns)


def max_drawdown(returns: Float64) -> float:
    equity = np.cumprod(1.0 + returns)
    return float(np.max(1.0 - equity / np.maximum.accumulate(equity))) if returns.size else 0.0


def judge(searched: Sequence[tuple[Variant, History, list[Trial], list[Fold]]], gates: Gates, slices: int) -> Evidence:
    """The candidate of a task: the complexity the curve chooses, refitted on the whole history (its best trial by
    full-history Sharpe ratio), deflated by every trial of every variant on the common grid."""
    curve = tuple(cross_validate(v, h, t, f) for v, h, t, f in searched)
    chosen = one_standard_error(curve)
    variant, history, trials, _ = searched[chosen]
    best = max(trials, key=lambda t: t.sharpe)
    grid = np.column_stack([on_grid(t, h) for _, h, ts, _ in searched for t in ts])
    selected = on_grid(best, history)
    trial_sharpes = np.array([per_bar_sharpe(grid[:, j]) for j in range(grid.shape[1])])
    deflated = deflated_sharpe(selected, trial_sharpes)
    pbo = probability_of_overfitting(strategy_clusters(grid), slices).pbo
    oos = curve[chosen].oos_returns
    sr, factor = sharpe_moments(oos[:, None])
    bars_per_year = history.bars.bars_per_year
    oos_sharpe = float(sr[0] * math.sqrt(bars_per_year))
    oos_se = float(sharpe_standard_error(factor, oos.size, bars_per_year)[0])
    failed = []
    if not deflated.dsr >= gates.min_dsr:
        failed.append(f"deflated Sharpe ratio {deflated.dsr:.2f} < {gates.min_dsr:.2f} over {deflated.trials} trials")
    if not pbo < gates.max_pbo:
        failed.append(f"probability of backtest overfitting {pbo:.2f} >= {gates.max_pbo:.2f}")
    if not oos_sharpe >= gates.min_oos_sharpe:
        failed.append(f"out-of-sample net Sharpe {oos_sharpe:.2f} < {gates.min_oos_sharpe:.2f}")
    if variant.level > gates.max_parameters:
        failed.append(f"{variant.level} free parameters > {gates.max_parameters}")
    return Evidence(
        variant=variant,
        history=history,
        params=best.params,
        curve=curve,
        chosen=chosen,
        in_sample_sharpe=best.sharpe * math.sqrt(bars_per_year),
        oos_sharpe=oos_sharpe,
        oos_sharpe_se=oos_se,
        psr=float(probabilistic_sharpe(sr, factor, oos.size)[0]),
        dsr=deflated.dsr,
        dsr_benchmark=deflated.benchmark,
        pbo=pbo,
        trials=deflated.trials,
        max_drawdown=max_drawdown(best.returns),
        turnover_per_year=float(best.turnover.mean() * bars_per_year),
        returns=best.returns,
        failed=tuple(failed),
    )
