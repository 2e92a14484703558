"""The strategy-level optimiser (``streams/portfolio/optimiser.py``) for 50 and 500 strategies, beside
PyPortfolioOpt called directly on the same inputs (its default solver, the 50% cap and nothing else of ours).

Targets (issue 13): 50 strategies in at most 0.5 s, 500 in at most 10 s (with the fallback path when a solver
fails). ``python -m bench.portfolio``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from streams.portfolio.optimiser import Objective, optimise, shrunk_covariance

TARGETS = {50: 0.5, 500: 10.0}


def strategies(count: int, sessions: int = 500, seed: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    """Daily net returns of ``count`` strategies: a common factor, Sharpe ratios from 0.3 to 2."""
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.005, 0.015, count)
    sharpe = np.linspace(0.3, 2.0, count)
    returns = rng.normal(0, 0.004, (sessions, 1)) + rng.normal(0, 1, (sessions, count)) * vol
    returns += sharpe * vol / np.sqrt(252)
    frame = pd.DataFrame(returns, columns=[f"s{i:03d}" for i in range(count)])
    return frame, frame.mean() * 252


def _direct(returns: pd.DataFrame, mu: pd.Series, objective: Objective) -> tuple[float, str]:
    """PyPortfolioOpt as its documentation shows it: the time, or the error it stops with."""
    from pypfopt import EfficientFrontier, HRPOpt

    started = time.perf_counter()
    try:
        if objective is Objective.HRP:
            HRPOpt(returns).optimize()
        else:
            frontier = EfficientFrontier(mu, shrunk_covariance(returns), weight_bounds=(0, 0.5))
            getattr(frontier, objective.value)()
    except Exception as exc:  # the baseline's failure, whatever it is, is a result to report
        return time.perf_counter() - started, f"failed: {type(exc).__name__}"
    return time.perf_counter() - started, "ok"


def main(argv: list[str] | None = None) -> None:
    del argv
    optimise(*strategies(10), Objective.MIN_VOLATILITY)  # imports and solver set-up are not part of the timing
    for count, target in TARGETS.items():
        returns, mu = strategies(count)
        for objective in (Objective.MAX_SHARPE, Objective.MIN_VOLATILITY, Objective.HRP):
            started = time.perf_counter()
            allocation = optimise(returns, mu, objective)
            ours = time.perf_counter() - started
            direct, outcome = _direct(returns, mu, objective)
            verdict = "meets" if ours <= target else "MISSES"
            print(
                f"portfolio: {count} strategies, {objective.value:<15} ours {ours:6.2f} s ({verdict} {target:g} s; "
                f"{allocation.method}, {allocation.held} held, {len(allocation.attempts)} failed attempt(s)); "
                f"PyPortfolioOpt directly {direct:6.2f} s ({outcome}); ratio {ours / direct:.2f}x"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
