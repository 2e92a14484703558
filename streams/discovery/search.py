"""The parameter search of one complexity variant: an Optuna study (TPE, seeded) whose trials are backtested on
the whole history once and scored per walk-forward fold, so each fold's parameters can be chosen on its training
samples only. A study lives in whatever Optuna storage it is given (PostgreSQL for workers): a restarted worker
resumes it and only runs the trials still missing.

Pure apart from Optuna's storage, which the caller opens."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import optuna

from streams.discovery.backtest import net_returns
from streams.discovery.folds import Fold
from streams.strategies.base import Bars, Family, InvalidParameters, Parameter

Float64 = npt.NDArray[np.float64]
IntP = npt.NDArray[np.int64]

optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger("tidemark.discovery")


@dataclass(frozen=True)
class History:
    """One timeframe of a task's history: its bars, the cost per unit traded, and for each bar the index of the
    task's coarsest bar it falls in (the common grid on which trials of different timeframes are compared)."""

    timeframe: str
    bars: Bars
    cost_per_unit: float
    grid: IntP
    grid_size: int


@dataclass(frozen=True)
class Variant:
    """A family at one complexity level (its first ``level`` parameters free) on one timeframe."""

    family: Family
    level: int
    timeframe: str

    @property
    def key(self) -> str:
        return f"{self.family.name}/{self.level}/{self.timeframe}"

    def space(self, lookback_cap: int) -> tuple[Parameter, ...]:
        """The free parameters, the lookback's range capped so that a training fold holds several lookbacks."""
        free = list(self.family.free(self.level))
        lookback = free[0]
        if lookback_cap < lookback.low + 1:
            raise InvalidParameters(
                f"{self.key}: the history is too short for a lookback of at least {lookback.low:g} bars"
            )
        free[0] = Parameter(
            lookback.name, lookback.low, min(lookback.high, lookback_cap), lookback.default, True, lookback.log
        )
        return tuple(free)


@dataclass
class Trial:
    """One parameter set's backtest: per-bar net returns and per-bar Sharpe ratios on each fold's training and test
    samples, and on the whole history."""

    number: int
    params: dict[str, float]
    returns: Float64
    turnover: Float64
    train: Float64
    test: Float64
    sharpe: float


def per_bar_sharpe(returns: Float64) -> float:
    sd = float(np.std(returns, ddof=1)) if returns.size > 1 else 0.0
    return float(np.mean(returns)) / sd if sd > 0 else 0.0


def backtest(family: Family, history: History, params: Mapping[str, float], folds: list[Fold], number: int) -> Trial:
    positions = family.positions(history.bars, params)
    returns, turnover = net_returns(positions, history.bars.closes, history.cost_per_unit)
    return Trial(
        number,
        dict(params),
        returns,
        turnover,
        np.array([per_bar_sharpe(returns[f.train]) for f in folds]),
        np.array([per_bar_sharpe(returns[f.test_start : f.test_stop]) for f in folds]),
        per_bar_sharpe(returns),
    )


def study_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def _suggest(trial: optuna.Trial, parameter: Parameter) -> float:
    if parameter.integer:
        return float(trial.suggest_int(parameter.name, int(parameter.low), int(parameter.high), log=parameter.log))
    return trial.suggest_float(parameter.name, parameter.low, parameter.high, log=parameter.log)


SAVE_EVERY = 16
"""Trials a search runs between saves to the shared study: what a killed worker can lose."""


@dataclass
class Search:
    """Runs and resumes one variant's study; ``on_trial`` hears of each finished trial (progress).

    TPE samples from a study in memory that starts with every trial the shared study (``storage``) holds, and the
    finished trials are saved to the shared study ``SAVE_EVERY`` at a time in one round trip: about 50 SQL
    statements per trial when TPE asks the database directly (74 ms a trial on this machine) are what made that
    slower than the backtests. A restarted worker, or a second one on the same study, continues from what was saved.
    """

    variant: Variant
    history: History
    folds: list[Fold]
    storage: optuna.storages.BaseStorage | str
    study_name: str
    planned: int
    lookback_cap: int
    on_trial: Callable[[int], None] = lambda done: None
    _cache: dict[int, Trial] = field(default_factory=dict)

    def run(self) -> list[Trial]:
        space = self.variant.space(self.lookback_cap)
        shared = optuna.create_study(
            storage=self.storage, study_name=self.study_name, direction="maximize", load_if_exists=True
        )
        local = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(
                seed=study_seed(self.study_name), n_startup_trials=min(10, self.planned)
            ),
        )
        saved = shared.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if saved:
            log.info("study %s resumed with %d saved trial(s) of %d", self.study_name, len(saved), self.planned)
        local.add_trials(saved)
        unsaved: list[optuna.trial.FrozenTrial] = []
        done = len(saved)
        while done < self.planned:
            trial = local.ask()
            params = {p.name: _suggest(trial, p) for p in space}
            result = backtest(self.variant.family, self.history, params, self.folds, trial.number)
            self._cache[trial.number] = result
            unsaved.append(local.tell(trial, float(np.mean(result.train))))
            if len(unsaved) == SAVE_EVERY or done + 1 == self.planned:
                shared.add_trials(unsaved)
                unsaved = []
            done += 1
            self.on_trial(done)
        return [self._trial(t) for t in local.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]

    def _trial(self, frozen: optuna.trial.FrozenTrial) -> Trial:
        """A finished trial, backtested again when it was run before a restart (the backtest is deterministic)."""
        if frozen.number not in self._cache:
            params = {k: float(v) for k, v in frozen.params.items()}
            self._cache[frozen.number] = backtest(self.variant.family, self.history, params, self.folds, frozen.number)
        return self._cache[frozen.number]
