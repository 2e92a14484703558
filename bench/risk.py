"""Book risk (``streams/risk/measures.py``) for 50 strategies over 200 symbols: 250 daily returns, 10,000 Monte Carlo
paths, VaR and CVaR at 95% and 99% by all four methods, Euler and tail contributions.

Timed: ``RiskModel.build(...).measure(...)``, the full update when the return history changes ("cold"), and
``measure`` alone on a built model, what every position or price change costs ("warm"). Baseline, in the same run
and interleaved so a busy machine slows both alike: the same measures written the straightforward way (sklearn's
``LedoitWolf``, a pandas quantile per scope column, ``scipy.stats`` per scope, ``multivariate_normal`` scenarios
and their paths x symbols x strategies P&L materialised). The two must agree: the deterministic figures to 1e-8,
Monte Carlo (independent draws) within four standard errors. Target: cold <= 50 ms.
``python -m bench.risk [--strategies 50] [--symbols 200] [--paths 10000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import integrate, stats
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_limits

from streams.risk.measures import LEVELS, METHODS, BookRisk, RiskModel

TARGET_MS = 50.0
LOOKBACK = 250


def _market(observations: int, symbols: int, strategies: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Daily returns with a common factor and fat tails; each strategy long/short in a fifth of the symbols."""
    rng = np.random.default_rng(seed)
    common = rng.standard_t(5, (observations, 1)) * 0.008
    returns = 0.0003 + common * rng.uniform(0.5, 1.5, symbols) + rng.standard_t(5, (observations, symbols)) * 0.012
    held = rng.uniform(size=(symbols, strategies)) < 0.2
    return returns, rng.normal(0.0, 20_000.0, (symbols, strategies)) * held


def _baseline(returns: np.ndarray, exposures: np.ndarray, paths: int, seed: int) -> dict[str, dict[float, np.ndarray]]:
    """Every figure of ``BookRisk`` scope by scope, keyed like it (plus COVARIANCE and the two components)."""
    strategies = exposures.shape[1]
    covariance = LedoitWolf().fit(returns).covariance_
    mean = returns.mean(axis=0)
    history = pd.DataFrame(returns @ exposures)
    history.insert(0, "portfolio", history.sum(axis=1))
    scenarios = np.random.default_rng(seed).multivariate_normal(mean, covariance, size=paths)
    per_symbol = scenarios[:, :, None] * exposures[None, :, :]  # (paths, symbols, strategies)
    simulated = pd.DataFrame(per_symbol.sum(axis=1))
    simulated.insert(0, "portfolio", simulated.sum(axis=1))
    out: dict[str, dict[float, np.ndarray]] = {}
    for level in LEVELS:
        p = 1.0 - level
        for name, frame in (("HISTORICAL", history), ("MONTE_CARLO", simulated)):
            var, cvar = [], []
            for column in frame.columns:
                cut = frame[column].quantile(p, interpolation="lower")
                var.append(-cut)
                cvar.append(-frame[column][frame[column] <= cut].mean())
            out.setdefault(f"{name} VaR", {})[level] = np.array(var)
            out.setdefault(f"{name} CVaR", {})[level] = np.array(cvar)
        var, cvar, cf_var, cf_cvar = [], [], [], []
        for column in history.columns:
            pnl = history[column]
            mu, sigma = pnl.mean(), pnl.std()
            skew, kurtosis = stats.skew(pnl, bias=False), stats.kurtosis(pnl, bias=False)
            z = stats.norm.ppf(p)
            var.append(-stats.norm.ppf(p, loc=mu, scale=sigma))
            cvar.append(-(mu - sigma * stats.norm.pdf(z) / p))

            def expansion(x: float, skew: float = skew, kurtosis: float = kurtosis) -> float:
                return float(
                    x + (x**2 - 1) * skew / 6 + (x**3 - 3 * x) * kurtosis / 24 - (2 * x**3 - 5 * x) * skew**2 / 36
                )

            tail, _ = integrate.quad(lambda x, f=expansion: f(x) * stats.norm.pdf(x), -np.inf, z)
            cf_var.append(-(mu + sigma * expansion(z)))
            cf_cvar.append(-(mu + sigma * tail / p))
        out.setdefault("PARAMETRIC VaR", {})[level] = np.array(var)
        out.setdefault("PARAMETRIC CVaR", {})[level] = np.array(cvar)
        out.setdefault("CORNISH_FISHER VaR", {})[level] = np.array(cf_var)
        out.setdefault("CORNISH_FISHER CVaR", {})[level] = np.array(cf_cvar)
        portfolio = exposures.sum(axis=1)
        sigma_p = math.sqrt(portfolio @ covariance @ portfolio)
        z = stats.norm.ppf(level)
        out.setdefault("COVARIANCE VaR", {})[level] = np.array([z * sigma_p - mean @ portfolio])
        out.setdefault("component VaR", {})[level] = np.array(
            [
                z * (exposures[:, s] @ covariance @ portfolio) / sigma_p - mean @ exposures[:, s]
                for s in range(strategies)
            ]
        )
        worst = simulated["portfolio"] <= simulated["portfolio"].quantile(p, interpolation="lower")
        out.setdefault("component CVaR MC", {})[level] = (
            -simulated.loc[worst].drop(columns="portfolio").mean().to_numpy()
        )
    return out


def _compare(
    ours: BookRisk, baseline: dict[str, dict[float, np.ndarray]], model: RiskModel, exposures: np.ndarray
) -> None:
    """The deterministic figures to 1e-8; Monte Carlo within four of the standard errors of a normal P&L's quantile
    and tail mean at that many paths (different draws, so only statistically)."""
    scopes = np.column_stack((exposures.sum(axis=1), exposures))
    sigma = np.sqrt(np.einsum("is,ij,js->s", scopes, model.cov, scopes))
    for level in LEVELS:
        for method in METHODS[:3]:
            np.testing.assert_allclose(ours.var[method][level], baseline[f"{method} VaR"][level], rtol=1e-8)
            np.testing.assert_allclose(ours.cvar[method][level], baseline[f"{method} CVaR"][level], rtol=1e-8)
        np.testing.assert_allclose(ours.covariance_var[level], baseline["COVARIANCE VaR"][level][0], rtol=1e-8)
        np.testing.assert_allclose(ours.component_var[level], baseline["component VaR"][level], rtol=1e-8, atol=1e-6)
        p, z = 1.0 - level, stats.norm.ppf(1.0 - level)
        var_error = math.sqrt(p * (1 - p) / ours.paths) / stats.norm.pdf(z) * sigma
        tail_mean = -stats.norm.pdf(z) / p
        tail_variance = 1.0 - z * stats.norm.pdf(z) / p - tail_mean**2
        cvar_error = np.sqrt((tail_variance + (1 - p) * (z - tail_mean) ** 2) / (p * ours.paths)) * sigma
        # two independent estimates: the difference's standard error is √2 times either's
        assert np.all(
            np.abs(ours.var["MONTE_CARLO"][level] - baseline["MONTE_CARLO VaR"][level]) <= 4 * math.sqrt(2) * var_error
        )
        assert np.all(
            np.abs(ours.cvar["MONTE_CARLO"][level] - baseline["MONTE_CARLO CVaR"][level])
            <= 4 * math.sqrt(2) * cvar_error
        )
        np.testing.assert_allclose(ours.component_cvar_mc[level].sum(), ours.cvar["MONTE_CARLO"][level][0], rtol=1e-9)
        np.testing.assert_allclose(
            baseline["component CVaR MC"][level].sum(), baseline["MONTE_CARLO CVaR"][level][0], rtol=1e-9
        )


def _milliseconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - started)


def _float32_product(model: RiskModel, exposures: np.ndarray) -> tuple[float, float, float]:
    """The Monte Carlo product with the shocks in float64 and as the model keeps them, float32 (ms, median of 20),
    and the largest change float32 makes to a 99% VaR relative to the largest scope's."""
    wide = dataclasses.replace(model, shocks=model.shocks.astype(np.float64))
    loadings = model.root.T @ exposures
    narrow_loadings = loadings.astype(np.float32)
    wide_ms = statistics.median(_milliseconds(lambda: wide.shocks @ loadings) for _ in range(20))
    narrow_ms = statistics.median(_milliseconds(lambda: model.shocks @ narrow_loadings) for _ in range(20))
    exact, approximate = (m.measure(exposures).var["MONTE_CARLO"][0.99] for m in (wide, model))
    return wide_ms, narrow_ms, float(np.abs(approximate - exact).max() / exact.max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.risk")
    parser.add_argument("--strategies", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of 5 timings of ours and 1 of the baseline")
    args = parser.parse_args(argv)
    returns, exposures = _market(LOOKBACK, args.symbols, args.strategies)
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    model = RiskModel.build(symbols, returns, paths=args.paths, seed=7)
    _compare(model.measure(exposures), _baseline(returns, exposures, args.paths, seed=7), model, exposures)

    def cold(seed: int) -> BookRisk:
        return RiskModel.build(symbols, returns, paths=args.paths, seed=seed).measure(exposures)

    print(
        f"risk: {args.strategies} strategies x {args.symbols} symbols, {LOOKBACK} days, {args.paths:,} paths, "
        f"{len(METHODS)} methods x {len(LEVELS)} levels + components; median of {5 * args.repeats} runs, baseline "
        f"of {args.repeats}, interleaved; the same numbers (deterministic to 1e-8, Monte Carlo within 4 s.e.)"
    )
    seeds = itertools.count(1_000)  # a seed not drawn before: the normals are drawn, as in a process's first build
    for threads in (None, 1):
        fresh: list[float] = []
        daily: list[float] = []  # the seed's normals already drawn: every later rebuild
        warm: list[float] = []
        baseline: list[float] = []
        with threadpool_limits(limits=threads, user_api="blas"):
            for _ in range(args.repeats):
                for _ in range(5):
                    fresh.append(_milliseconds(functools.partial(cold, next(seeds))))
                    daily.append(_milliseconds(lambda: cold(7)))
                    warm.append(_milliseconds(lambda: model.measure(exposures)))
                baseline.append(_milliseconds(lambda: _baseline(returns, exposures, args.paths, seed=7)))
        fresh_ms, daily_ms, warm_ms, baseline_ms = (statistics.median(t) for t in (fresh, daily, warm, baseline))
        setting = "BLAS threads " + (str(threads) if threads else os.environ.get("OPENBLAS_NUM_THREADS", "default"))
        print(f"  {setting}: baseline {baseline_ms:.0f} ms")
        for name, ms in (
            ("full update, cold, normals drawn", fresh_ms),
            ("full update, cold, normals reused", daily_ms),
            ("position/price change, warm", warm_ms),
        ):
            verdict = "" if "warm" in name else f" ({'meets' if ms <= TARGET_MS else 'MISSES'} {TARGET_MS:g} ms)"
            print(f"    {name:<34} {ms:7.1f} ms{verdict:<17} ratio to baseline {baseline_ms / ms:7.1f}x")
    wide_ms, narrow_ms, difference = _float32_product(model, exposures)
    print(
        f"  MC product float64 {wide_ms:.1f} ms, float32 {narrow_ms:.1f} ms; float32 moves a 99% VaR by at most "
        f"{difference:.1e} of the largest (its MC standard error is ~1.6e-02 of it)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
