"""Strategy-level portfolio optimisation with PyPortfolioOpt: weights over strategies' return streams (not over
assets), within the mission's constraints, never failing on a numerical problem.

- Covariance is Ledoit-Wolf shrunk: with hundreds of strategies and a few hundred sessions, the sample
  covariance is singular or close to it.
- At most ``max_weight`` (50%) per strategy and at least ``min_strategies`` (5) with weight: an optimiser free to
  concentrate puts everything in two strategies at 50%. When it does, the strategies it chose and the best of the
  rest (by expected return over volatility) get a floor and it solves again.
- Fewer strategies than ``min_strategies`` build no portfolio: ``TooFewStrategies``; the caller keeps the
  previous targets and says why.
- A solver that fails or finds the problem infeasible hands over to the next, then to HRP (which cannot fail on a
  positive semi-definite covariance); the allocation records each attempt and which method produced the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pandas as pd

SOLVERS = ("CLARABEL", "SCS")
"""cvxpy solvers in the order tried; HRP comes after them."""
POSITIVE = 1e-4
"""A weight above this counts as held."""


class Objective(StrEnum):
    MAX_SHARPE = "max_sharpe"
    MIN_VOLATILITY = "min_volatility"
    EFFICIENT_RISK = "efficient_risk"
    EFFICIENT_RETURN = "efficient_return"
    MIN_CVAR = "min_cvar"
    HRP = "hrp"


@dataclass(frozen=True)
class Constraints:
    max_weight: float = 0.5
    min_strategies: int = 5
    floor: float = 0.02
    """Weight each of the ``min_strategies`` gets when the optimiser concentrated in fewer."""
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """A user's (low, high) per strategy, inside (0, max_weight)."""
    target_volatility: float = 0.10
    target_return: float = 0.10
    cvar_level: float = 0.95
    periods_per_year: int = 252


class TooFewStrategies(ValueError):
    """Not enough strategies to build a portfolio under the minimum count."""


@dataclass(frozen=True)
class Allocation:
    weights: dict[str, float]
    objective: Objective
    method: str
    """The solver (or HRP) whose weights these are."""
    attempts: tuple[str, ...]
    """What failed before, and why."""
    expected_return: float
    volatility: float
    floored: tuple[str, ...] = ()

    @property
    def held(self) -> int:
        return sum(weight > POSITIVE for weight in self.weights.values())


def shrunk_covariance(returns: pd.DataFrame, periods_per_year: int = 252) -> pd.DataFrame:
    from pypfopt import risk_models

    covariance: pd.DataFrame = risk_models.CovarianceShrinkage(
        returns, returns_data=True, frequency=periods_per_year
    ).ledoit_wolf()
    return covariance


def _bounds(names: Sequence[str], constraints: Constraints, floors: Mapping[str, float]) -> list[tuple[float, float]]:
    out = []
    for name in names:
        low, high = constraints.bounds.get(name, (0.0, constraints.max_weight))
        high = min(high, constraints.max_weight)
        out.append((max(low, floors.get(name, 0.0)), high))
    return out


def _solve(
    objective: Objective,
    mu: pd.Series,
    covariance: pd.DataFrame,
    returns: pd.DataFrame,
    bounds: list[tuple[float, float]],
    constraints: Constraints,
    solver: str,
) -> dict[str, float]:
    from pypfopt import EfficientCVaR, EfficientFrontier

    if objective is Objective.MIN_CVAR:
        cvar = EfficientCVaR(mu, returns, beta=constraints.cvar_level, weight_bounds=bounds, solver=solver)
        cvar.min_cvar()
        return {str(k): float(v) for k, v in cvar.clean_weights(cutoff=0.0).items()}
    frontier = EfficientFrontier(mu, covariance, weight_bounds=bounds, solver=solver)
    if objective is Objective.MAX_SHARPE:
        frontier.max_sharpe(risk_free_rate=0.0)
    elif objective is Objective.MIN_VOLATILITY:
        frontier.min_volatility()
    elif objective is Objective.EFFICIENT_RISK:
        frontier.efficient_risk(constraints.target_volatility)
    else:
        frontier.efficient_return(constraints.target_return)
    return {str(k): float(v) for k, v in frontier.clean_weights(cutoff=0.0).items()}


def capped(weights: pd.Series, cap: float) -> pd.Series:
    """Weights summing to 1 with none above ``cap``: the excess goes to the uncapped in proportion."""
    weights = weights.clip(lower=0.0) / weights.clip(lower=0.0).sum()
    for _ in range(len(weights)):
        over = weights > cap + 1e-12
        if not over.any():
            break
        excess = float((weights[over] - cap).sum())
        weights[over] = cap
        free = ~over & (weights < cap)
        base = weights[free].sum()
        weights[free] += excess * (weights[free] / base if base > 0 else 1.0 / free.sum())
    return weights


def _hrp(returns: pd.DataFrame, cap: float) -> dict[str, float]:
    from pypfopt import HRPOpt

    raw = pd.Series(HRPOpt(returns).optimize(), dtype=float)
    return {str(k): float(v) for k, v in capped(raw, cap).items()}


def optimise(
    returns: pd.DataFrame,
    mu: pd.Series,
    objective: Objective,
    constraints: Constraints = Constraints(),
    solvers: Sequence[str] = SOLVERS,
) -> Allocation:
    """Weights over the strategies (the columns of ``returns``, per-period net returns; ``mu`` annualised)."""
    names = [str(c) for c in returns.columns]
    if len(names) < constraints.min_strategies:
        raise TooFewStrategies(
            f"{len(names)} strateg{'y' if len(names) == 1 else 'ies'}: a portfolio needs at least "
            f"{constraints.min_strategies}"
        )
    if constraints.min_strategies * constraints.max_weight < 1.0:
        raise ValueError(f"{constraints.min_strategies} strategies at most {constraints.max_weight:.0%} each")
    from cvxpy.error import DCPError, SolverError
    from pypfopt.exceptions import OptimizationError

    failures = (OptimizationError, SolverError, DCPError, ValueError, ArithmeticError)
    covariance = shrunk_covariance(returns, constraints.periods_per_year)
    attempts: list[str] = []
    floors: dict[str, float] = {}
    weights: dict[str, float] | None = None
    method = "hrp"
    if objective is not Objective.HRP:
        for _ in range(2):  # the second pass only when the first concentrated in too few
            for solver in solvers:
                try:
                    weights = _solve(
                        objective, mu, covariance, returns, _bounds(names, constraints, floors), constraints, solver
                    )
                    method = solver
                    break
                except failures as exc:
                    attempts.append(f"{objective.value} with {solver}: {type(exc).__name__}: {exc}".strip())
                    weights = None
            if weights is None or sum(w > POSITIVE for w in weights.values()) >= constraints.min_strategies:
                break
            floors = _floors(weights, mu, covariance, constraints)
            weights = None
    if weights is None:
        weights = _hrp(returns, constraints.max_weight)
        method = "hrp"
    vector = np.array([weights[n] for n in names])
    annual_mu = float(vector @ mu.reindex(names).to_numpy())
    volatility = float(np.sqrt(vector @ covariance.loc[names, names].to_numpy() @ vector))
    return Allocation(weights, objective, method, tuple(attempts), annual_mu, volatility, tuple(sorted(floors)))


def _floors(
    weights: Mapping[str, float], mu: pd.Series, covariance: pd.DataFrame, constraints: Constraints
) -> dict[str, float]:
    """Floors for the held strategies and the best of the rest, up to ``min_strategies``."""
    held = [n for n, w in weights.items() if w > POSITIVE]
    ratio = mu / np.sqrt(np.diag(covariance.to_numpy()))
    rest = [str(n) for n in ratio.sort_values(ascending=False).index if str(n) not in held]
    chosen = held + rest[: constraints.min_strategies - len(held)]
    return dict.fromkeys(chosen, constraints.floor)


def warm_up(objective: Objective) -> Allocation:
    """Import cvxpy and PyPortfolioOpt and solve a small problem once: about 5 s here the first time, so that a
    long-running agent pays it at start-up rather than in the first rotation after a promotion."""
    rng = np.random.default_rng(0)
    returns = pd.DataFrame(rng.normal(5e-4, 1e-2, (60, 5)), columns=[f"s{i}" for i in range(5)])
    return optimise(returns, returns.mean() * 252, objective)
