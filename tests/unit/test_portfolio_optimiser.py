"""The strategy-level optimiser: caps, the minimum count, solver fallback, and PyPortfolioOpt's own answer where
no constraint of ours binds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streams.portfolio.optimiser import (
    POSITIVE,
    Constraints,
    Objective,
    TooFewStrategies,
    capped,
    optimise,
    shrunk_covariance,
    warm_up,
)


def strategies(count: int, seed: int = 1, sessions: int = 500) -> tuple[pd.DataFrame, pd.Series]:
    """Daily net returns of ``count`` strategies, Sharpe ratios spread from 0.3 to 2, some correlation."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 0.004, (sessions, 1))
    sharpe = np.linspace(0.3, 2.0, count)
    vol = rng.uniform(0.005, 0.015, count)
    returns = common + rng.normal(0, 1, (sessions, count)) * vol + sharpe * vol / np.sqrt(252)
    frame = pd.DataFrame(returns, columns=[f"s{i:03d}" for i in range(count)])
    return frame, frame.mean() * 252


@pytest.mark.parametrize("objective", list(Objective))
def test_every_objective_caps_each_strategy_at_half_and_holds_at_least_five(objective: Objective) -> None:
    returns, mu = strategies(12)
    allocation = optimise(returns, mu, objective, Constraints(target_volatility=0.12, target_return=0.10))
    weights = np.array(list(allocation.weights.values()))
    assert weights.sum() == pytest.approx(1.0, abs=1e-4)
    assert weights.max() <= 0.5 + 1e-6 and weights.min() >= -1e-8
    assert allocation.held >= 5
    assert allocation.method == ("hrp" if objective is Objective.HRP else "CLARABEL")


def test_a_concentrated_optimum_is_spread_over_five_with_the_floor_named() -> None:
    """Two strategies far better than the rest: max Sharpe alone holds only them; the floor brings in three more."""
    returns, mu = strategies(8, seed=2)
    mu.iloc[:2] = 3.0
    allocation = optimise(returns, mu, Objective.MAX_SHARPE)
    assert allocation.held >= 5 and len(allocation.floored) == 5
    assert all(allocation.weights[name] >= 0.02 - 1e-6 for name in allocation.floored)
    assert {"s000", "s001"} <= set(allocation.floored)


def test_without_binding_constraints_the_weights_are_pypfopts_own() -> None:
    from pypfopt import EfficientFrontier

    returns, mu = strategies(10, seed=3)
    direct = EfficientFrontier(mu, shrunk_covariance(returns), weight_bounds=(0, 0.5)).min_volatility()
    ours = optimise(returns, mu, Objective.MIN_VOLATILITY).weights
    assert sum(w > POSITIVE for w in direct.values()) >= 5
    np.testing.assert_allclose([ours[k] for k in direct], list(direct.values()), atol=1e-4)


def test_fewer_than_five_strategies_build_no_portfolio() -> None:
    returns, mu = strategies(4)
    with pytest.raises(TooFewStrategies, match="4 strategies: a portfolio needs at least 5"):
        optimise(returns, mu, Objective.MAX_SHARPE)


def test_a_failing_solver_hands_over_and_the_attempt_is_recorded() -> None:
    returns, mu = strategies(8)
    allocation = optimise(returns, mu, Objective.MIN_VOLATILITY, solvers=("NO_SUCH_SOLVER", "CLARABEL"))
    assert allocation.method == "CLARABEL"
    assert len(allocation.attempts) == 1 and allocation.attempts[0].startswith("min_volatility with NO_SUCH_SOLVER")


def test_when_every_solver_fails_hrp_answers_within_the_cap() -> None:
    """Max Sharpe has no answer when no strategy earns more than the risk-free rate."""
    returns, mu = strategies(8)
    allocation = optimise(returns, -mu.abs(), Objective.MAX_SHARPE)
    assert allocation.method == "hrp" and len(allocation.attempts) == 2
    assert max(allocation.weights.values()) <= 0.5 + 1e-9 and allocation.held >= 5


def test_user_bounds_hold() -> None:
    returns, mu = strategies(8)
    bounds = {"s007": (0.0, 0.05), "s000": (0.10, 0.5)}
    weights = optimise(returns, mu, Objective.MAX_SHARPE, Constraints(bounds=bounds)).weights
    assert weights["s007"] <= 0.05 + 1e-6 and weights["s000"] >= 0.10 - 1e-6


@pytest.mark.parametrize(
    ("raw", "cap", "expected"),
    [
        ([0.7, 0.2, 0.1], 0.5, [0.5, 0.2 + 0.2 * 2 / 3, 0.1 + 0.2 / 3]),
        ([0.25, 0.25, 0.25, 0.25], 0.5, [0.25] * 4),
        ([0.9, 0.05, 0.05, 0.0], 0.4, [0.4, 0.3, 0.3, 0.0]),
    ],
)
def test_capped_moves_the_excess_to_the_others_in_proportion(
    raw: list[float], cap: float, expected: list[float]
) -> None:
    np.testing.assert_allclose(capped(pd.Series(raw), cap).to_numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("objective", [Objective.MAX_SHARPE, Objective.MIN_VOLATILITY, Objective.HRP])
def test_the_warm_up_solves_a_small_problem_within_the_constraints(objective: Objective) -> None:
    allocation = warm_up(objective)
    assert allocation.held == 5 and sum(allocation.weights.values()) == pytest.approx(1.0, abs=1e-4)  # 5 decimals
    assert max(allocation.weights.values()) <= 0.5 + 1e-9
