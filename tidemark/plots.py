"""Pictures for people who would rather look than read: the correlation matrix as a clustered heat map, a strategy's
complexity curve, the portfolio's efficient frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from projections.correlations import leaf_order
from projections.read import CorrelationView
from streams.portfolio.frontier import Frontier

# Up to this many symbols every row and column is labelled; beyond, the map is left to speak through its blocks.
_LABELLED = 80


def correlation_heatmap(view: CorrelationView, path: Path) -> None:
    """Rows and columns in hierarchical-clustering order, so correlated groups show as blocks on the diagonal."""
    order = leaf_order(view.matrix)
    matrix = view.matrix[np.ix_(order, order)]
    symbols = [view.symbols[i] for i in order]
    n = len(symbols)
    size = 10.0 if n > _LABELLED else max(5.0, 0.16 * n + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1.5, size), dpi=150 if n > _LABELLED else 110)
    image = axes.imshow(
        np.ma.masked_invalid(matrix),
        cmap="RdBu_r",
        vmin=-1,
        vmax=1,
        interpolation="nearest" if n <= 400 else "antialiased",
    )
    if n <= _LABELLED:
        font = 8 if n <= 40 else 5
        axes.set_xticks(range(n), symbols, rotation=90, fontsize=font)
        axes.set_yticks(range(n), symbols, fontsize=font)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_xlabel(f"{n} symbols in cluster order")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="correlation")
    axes.set_title(
        f"{view.universe} {view.timeframe}:{view.window_bars} as of {view.as_of:%Y-%m-%d %H:%M} UTC\n"
        f"average {view.avg_correlation or float('nan'):.3f}, "
        f"largest-eigenvalue share {view.eigen_share or float('nan'):.3f}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def strategy_plot(candidate: dict[str, Any], equity: np.ndarray, path: Path) -> None:
    """Left: the complexity curve (out-of-sample net Sharpe ratio per variant, one standard error either side,
    the chosen one marked); right: the candidate's net equity curve over its history."""
    curve = candidate["evidence"]["curve"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=110)
    for timeframe in dict.fromkeys(p["timeframe"] for p in curve):
        points = [p for p in curve if p["timeframe"] == timeframe]
        x = [p["free_parameters"] for p in points]
        y = [p["oos_sharpe"] for p in points]
        left.errorbar(x, y, yerr=[p["oos_sharpe_se"] for p in points], marker="o", capsize=3, label=timeframe)
    chosen = [p for p in curve if p["timeframe"] == candidate["timeframe"]]
    mark = [p for p in chosen if p["free_parameters"] == candidate["complexity"] + 1]
    if mark:
        left.plot(mark[0]["free_parameters"], mark[0]["oos_sharpe"], "k*", markersize=16, label="chosen")
    left.axhline(0.0, color="grey", linewidth=0.8)
    left.set_xlabel("free parameters")
    left.set_ylabel("out-of-sample net Sharpe (annualised)")
    left.set_title("complexity curve (mean ± 1 s.e. over folds)")
    left.legend()
    right.plot(equity, linewidth=1.0)
    pbo = "n/a" if candidate["pbo"] is None else f"{candidate['pbo']:.2f}"
    right.set_title(
        f"{candidate['strategy_id']}: net equity\nOOS Sharpe {candidate['sharpe_out_of_sample']:.2f}, "
        f"DSR {candidate['deflated_sharpe']:.2f}, PBO {pbo}",
        fontsize=9,
    )
    right.set_xlabel(f"{candidate['timeframe']} bars")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def frontier_plot(found: Frontier, chosen: tuple[float, float] | None, title: str, path: Path) -> None:
    """The efficient frontier (annual volatility against expected return), each strategy alone as a labelled point,
    and the portfolio the optimiser chose as a star."""
    figure, axes = plt.subplots(figsize=(8, 6), dpi=110)
    if found.points:
        axes.plot(*zip(*found.points, strict=True), "-", linewidth=1.5, label="efficient frontier")
    vols, rets = zip(*found.assets.values(), strict=True)
    axes.scatter(vols, rets, s=22, color="grey", label="strategies")
    for name, (vol, ret) in found.assets.items():
        axes.annotate(name, (vol, ret), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if chosen is not None:
        axes.plot(chosen[0], chosen[1], "r*", markersize=16, label="chosen portfolio")
    axes.set_xlabel("annual volatility")
    axes.set_ylabel("annual expected return (net)")
    axes.set_title(title, fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
