"""One discovery task from history to evidence: every complexity variant of a family (levels 1 to 5 on each of
the history's timeframes) searched out of sample, then judged. The caller supplies the history and the Optuna
storage; nothing here touches Kafka, a database or Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna

from core.sessions import Market
from streams.discovery.evidence import Evidence, Gates, judge
from streams.discovery.folds import Fold, walk_forward
from streams.discovery.histories import NotEnoughHistory, Table, histories
from streams.discovery.search import History, Search, Trial, Variant
from streams.strategies.base import Family, InvalidParameters

Progress = Callable[[str, int, int], None]
"""(variant key, trials done in the task, trials planned in the task)."""


@dataclass(frozen=True)
class Budget:
    """How hard a task searches: walk-forward folds, trials per free parameter (plus a base), CSCV slices."""

    folds: int = 5
    base_trials: int = 8
    trials_per_parameter: int = 8
    slices: int = 16

    def trials(self, level: int) -> int:
        return self.base_trials + self.trials_per_parameter * level


def _reporter(progress: Progress, key: str, offset: int, planned: int) -> Callable[[int], None]:
    """A search's trial count as the task's: the trials of the variants before it plus this one's."""
    return lambda done: progress(key, offset + done, planned)


def variants(family: Family, timeframes: list[str]) -> list[Variant]:
    return [Variant(family, level, tf) for tf in timeframes for level in range(1, family.levels + 1)]


def run(
    task_id: str,
    family: Family,
    table: Table,
    market: Market,
    cost_per_unit: float,
    storage: optuna.storages.BaseStorage | str,
    gates: Gates = Gates(),
    budget: Budget = Budget(),
    progress: Progress = lambda key, done, planned: None,
) -> Evidence:
    """The task's evidence; NotEnoughHistory or InvalidParameters when the history cannot support it."""
    timeframes = histories(table, market, cost_per_unit)
    grid = timeframes[-1]
    if grid.grid_size < 2 * budget.slices:
        raise NotEnoughHistory(
            f"{grid.grid_size} {grid.timeframe} bars of history: the probability of backtest overfitting needs at "
            f"least {2 * budget.slices} ({budget.slices} CSCV slices of two)"
        )
    planned_variants: list[tuple[Variant, History]] = []
    for history in timeframes:
        for variant in variants(family, [history.timeframe]):
            planned_variants.append((variant, history))
    planned = sum(budget.trials(v.level) for v, _ in planned_variants)
    searched: list[tuple[Variant, History, list[Trial], list[Fold]]] = []
    skipped: list[str] = []
    before = 0
    for variant, history in planned_variants:
        block = history.bars.count // (budget.folds + 1)
        cap = block // 2
        horizon = min(family.horizon(), cap)
        try:
            folds = walk_forward(history.bars.count, budget.folds, horizon)
            search = Search(
                variant,
                history,
                folds,
                storage,
                f"{task_id}/{variant.key}",
                budget.trials(variant.level),
                cap,
                on_trial=_reporter(progress, variant.key, before, planned),
            )
            searched.append((variant, history, search.run(), folds))
        except (ValueError, InvalidParameters) as exc:
            skipped.append(f"{variant.key}: {exc}")
        before += budget.trials(variant.level)
    if len(searched) < 2:
        raise NotEnoughHistory("; ".join(skipped) or "no variant could be searched")
    return judge(searched, gates, budget.slices)
