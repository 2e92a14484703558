"""Per-bar net returns of a strategy's positions, the kernel the parameter search runs thousands of times, and the
vectorbt portfolio that reports a chosen candidate (equity, drawdown, trades) from the same positions. Both charge
the asset class's cost on every unit of notional traded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Float64 = npt.NDArray[np.float64]


def bar_returns(closes: Float64) -> Float64:
    """Simple return of each bar over the previous one per leg, (T - 1, L); 0 where a price is missing."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Float64 = np.nan_to_num(closes[1:] / closes[:-1] - 1.0, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def net_returns(positions: Float64, closes: Float64, cost_per_unit: float) -> tuple[Float64, Float64]:
    """Net return and turnover per bar (T,): bar t earns the positions set at the close of bar t - 1 and pays for
    the units traded at its own close (from flat before bar 0), as a broker debits a fill's costs when it happens."""
    gross = np.zeros(positions.shape[0])
    gross[1:] = np.einsum("tl,tl->t", positions[:-1], bar_returns(closes))
    turnover = np.abs(np.diff(positions, axis=0, prepend=0.0)).sum(axis=1)
    return gross - cost_per_unit * turnover, turnover


@dataclass(frozen=True)
class Report:
    """What vectorbt says about one strategy's positions: per-bar returns, equity, and its trades."""

    returns: Float64
    equity: Float64
    max_drawdown: float
    orders: int


def vectorbt_report(positions: Float64, closes: Float64, cost_per_unit: float, freq: str) -> Report:
    """The positions as target shares of one portfolio's equity (legs share its cash), filled at the close of each
    bar where they change (held, and drifting, in between) with ``cost_per_unit`` charged on the value traded."""
    import vectorbt as vbt  # a 6 s import: only where a candidate is reported

    legs = positions.shape[1]
    changed = np.diff(positions, axis=0, prepend=0.0) != 0
    portfolio = vbt.Portfolio.from_orders(
        np.nan_to_num(closes, nan=float(np.nanmean(closes))),
        size=np.where(changed.any(axis=1, keepdims=True), positions, np.nan),
        size_type="targetpercent",
        direction="both",
        fees=cost_per_unit,
        init_cash=1.0,
        cash_sharing=True,
        group_by=np.zeros(legs, dtype=np.int64),
        call_seq="auto",
        freq=freq,
    )
    returns = np.asarray(portfolio.returns(), dtype=np.float64).reshape(-1)
    equity = np.asarray(portfolio.value(), dtype=np.float64).reshape(-1)
    drawdown = float(np.max(1.0 - equity / np.maximum.accumulate(equity)))
    return Report(returns, equity, drawdown, int(portfolio.orders.count().sum()))
