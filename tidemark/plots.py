"""Pictures for people who would rather look than read: the correlation matrix as a clustered heat map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from projections.correlations import leaf_order
from projections.read import CorrelationView

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
