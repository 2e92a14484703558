"""The efficient frontier over strategies (pure): the least volatile portfolio for each expected return, under the
same bounds as the optimiser, for `tidemark portfolio frontier`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from streams.portfolio.optimiser import Constraints, _bounds, shrunk_covariance


@dataclass(frozen=True)
class Frontier:
    points: list[tuple[float, float]]
    """(annual volatility, annual expected return), by return."""
    assets: dict[str, tuple[float, float]]
    """Each strategy alone: (volatility, expected return)."""


def highest_return(mu: pd.Series, bounds: list[tuple[float, float]]) -> float:
    """The largest expected return weights within ``bounds`` summing to 1 can reach: every lower bound, then the
    rest to the best strategies first, each up to its upper bound."""
    weights = np.array([low for low, _ in bounds], dtype=np.float64)
    room = 1.0 - weights.sum()
    for i in np.argsort(-mu.to_numpy(), kind="stable"):
        add = min(bounds[i][1] - weights[i], room)
        weights[i] += add
        room -= add
    return float(weights @ mu.to_numpy())


def frontier(returns: pd.DataFrame, mu: pd.Series, constraints: Constraints, points: int = 40) -> Frontier:
    """Target returns from the minimum-volatility portfolio's to the highest reachable; a target the solver cannot
    meet is left out rather than failing the picture."""
    from pypfopt import EfficientFrontier
    from pypfopt.exceptions import OptimizationError

    names = [str(c) for c in returns.columns]
    covariance = shrunk_covariance(returns, constraints.periods_per_year)
    bounds = _bounds(names, constraints, {})
    mu = mu.reindex(names)
    lowest = EfficientFrontier(mu, covariance, weight_bounds=bounds)
    lowest.min_volatility()
    start, _, _ = lowest.portfolio_performance()
    found: list[tuple[float, float]] = []
    for target in np.linspace(start, highest_return(mu, bounds), points):
        curve = EfficientFrontier(mu, covariance, weight_bounds=bounds)
        try:
            curve.efficient_return(float(target))
        except (OptimizationError, ValueError):
            continue
        expected, volatility, _ = curve.portfolio_performance()
        found.append((float(volatility), float(expected)))
    vol = np.sqrt(np.diag(covariance.to_numpy()))
    return Frontier(found, {n: (float(v), float(mu[n])) for n, v in zip(names, vol, strict=True)})
