"""A task's evidence as the StrategyCandidateDiscovered event: out-of-sample figures, capacity, the ranking score,
the complexity curve. Pure: ids are deterministic, so a task redone after a worker died publishes the same event.

Ranking score (README "Ranking"): ``OOS net Sharpe x DSR x (1 - PBO) x diversification x capacity``, where
diversification is ``1 - max(0, highest correlation with a live strategy)`` (1 while none is live) and capacity is
``min(1, CAPACITY_SHARE / share of daily volume traded at the stated capital)``: full credit up to 1% of ADV.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from core.costs import BP
from core.events import common_fields, deterministic_event_id
from streams.discovery.evidence import Evidence
from streams.discovery.search import History
from streams.strategies.base import Float64

CAPACITY_SHARE = 0.01
CHOSEN_BY = "one_standard_error"


def strategy_id(family: str, symbols: list[str], timeframe: str, params: dict[str, float]) -> str:
    """Readable and deterministic: family, legs, timeframe and a hash of the parameters."""
    text = ",".join(f"{k}={params[k]:.6g}" for k in sorted(params))
    digest = hashlib.sha256(f"{family}|{','.join(symbols)}|{timeframe}|{text}".encode()).hexdigest()[:10]
    return f"{family}-{'-'.join(symbols)}-{timeframe}-{digest}"


def adv_share(positions: Float64, closes: Float64, volumes: Float64 | None, capital: float) -> float | None:
    """The largest share, over legs, of the dollar volume traded in the market that the strategy would trade at
    ``capital`` (the same bars on both sides, so it is a per-day share whatever the timeframe); None without
    volume."""
    if volumes is None:
        return None
    traded = capital * np.abs(np.diff(positions, axis=0, prepend=0.0)).sum(axis=0)
    market = np.nansum(closes * volumes, axis=0)
    if not (market > 0).all():
        return None
    return float(np.max(traded / market))


def score(oos_sharpe: float, dsr: float, pbo: float, live_correlation: float | None, share: float | None) -> float:
    diversification = 1.0 - max(0.0, live_correlation or 0.0)
    capacity = 1.0 if not share else min(1.0, CAPACITY_SHARE / share)
    return oos_sharpe * dsr * (1.0 - pbo) * diversification * capacity


def round_trips(positions: Float64) -> int:
    """Entries from flat plus reversals of the first leg: each starts one round trip."""
    first = np.sign(positions[:, 0])
    before = np.concatenate([[0.0], first[:-1]])
    return int(((first != 0) & (first != before)).sum())


def sortino(returns: Float64, bars_per_year: float) -> float | None:
    downside = np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))
    return float(returns.mean() / downside * math.sqrt(bars_per_year)) if downside > 0 else None


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def candidate_record(
    task: dict[str, Any],
    evidence: Evidence,
    positions: Float64,
    capital: float,
    live_correlation: float | None,
    source: str,
    data_start_ns: int,
    data_end_ns: int,
    folds: int,
    slices: int,
) -> dict[str, Any]:
    """The event; ``positions`` are the chosen parameters' over the evidence's history (trades and capacity)."""
    history = evidence.history
    oos = evidence.curve[evidence.chosen].oos_returns
    bars_per_year = history.bars.bars_per_year
    share = adv_share(positions, history.bars.closes, history.bars.volumes, capital)
    test_start = history.bars.count - oos.size
    symbols = list(task["symbols"])
    sid = strategy_id(task["family"], symbols, evidence.variant.timeframe, evidence.params)
    return {
        **common_fields(source, data_end_ns, task["event_id"], deterministic_event_id("candidate", task["event_id"])),
        "strategy_id": sid,
        "family": task["family"],
        "complexity": evidence.variant.level - 1,
        "symbols": symbols,
        "timeframe": evidence.variant.timeframe,
        "params": {k: f"{v:.6g}" for k, v in evidence.params.items()},
        "trials": evidence.trials,
        "validation": "WALK_FORWARD",
        "data_start_ns": data_start_ns,
        "data_end_ns": data_end_ns,
        "sharpe_in_sample": _finite(evidence.in_sample_sharpe),
        "sharpe_out_of_sample": _finite(evidence.oos_sharpe),
        "deflated_sharpe": _finite(evidence.dsr),
        "psr": _finite(evidence.psr),
        "pbo": evidence.pbo,
        "annual_return": float(oos.mean() * bars_per_year),
        "annual_volatility": float(oos.std(ddof=1) * math.sqrt(bars_per_year)),
        "max_drawdown": evidence.max_drawdown,
        "sortino": sortino(oos, bars_per_year),
        "trades": round_trips(positions[test_start:]),
        "score": _finite(score(evidence.oos_sharpe, evidence.dsr, evidence.pbo, live_correlation, share)),
        "task_id": task["event_id"],
        "asset_class": task["asset_class"],
        "passed": evidence.passed,
        "rejections": list(evidence.failed),
        "sharpe_out_of_sample_se": evidence.oos_sharpe_se,
        "dsr_benchmark": evidence.dsr_benchmark * math.sqrt(_grid_bars_per_year(history)),
        "pbo_slices": slices,
        "folds": folds,
        "cost_bp": history.cost_per_unit / BP,
        "turnover": evidence.turnover_per_year,
        "capacity_adv_share": share,
        "capital": capital,
        "live_correlation": live_correlation,
        "chosen_by": CHOSEN_BY,
        "curve": [
            {
                "timeframe": point.variant.timeframe,
                "free_parameters": point.variant.level,
                "trials": point.trials,
                "oos_sharpe": _finite(point.mean),
                "oos_sharpe_se": _finite(point.se),
                "fold_sharpes": [_finite(float(f)) for f in point.folds],
            }
            for point in evidence.curve
        ],
    }


def _grid_bars_per_year(history: History) -> float:
    """Bars per year of the task's common grid (its coarsest timeframe), on which the DSR benchmark is per bar."""
    return history.bars.bars_per_year * history.grid_size / history.bars.count
