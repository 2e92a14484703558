"""What people ask of a correlation snapshot: extreme pairs, a symbol's neighbours, clusters, diversification.

Pure functions over a square matrix and its symbol list (the read side's ``CorrelationView``), so the CLI and the
plot share them and they are tested without a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import squareform

Float64 = npt.NDArray[np.float64]


def extreme_pairs(symbols: Sequence[str], matrix: Float64, k: int, highest: bool) -> list[dict[str, Any]]:
    """The k most (``highest``) or least correlated distinct pairs, from the extreme inwards."""
    rows, cols = np.triu_indices(len(symbols), k=1)
    values = matrix[rows, cols]
    finite = np.flatnonzero(np.isfinite(values))
    rows, cols, values = rows[finite], cols[finite], values[finite]
    k = min(k, values.size)
    if k <= 0:
        return []
    key = -values if highest else values
    chosen = np.argpartition(key, k - 1)[:k]
    chosen = chosen[np.lexsort((chosen, key[chosen]))]
    return [{"a": symbols[rows[c]], "b": symbols[cols[c]], "correlation": float(values[c])} for c in chosen]


def neighbours(symbols: Sequence[str], matrix: Float64, symbol: str, k: int) -> list[dict[str, Any]]:
    """The k symbols most correlated with ``symbol`` and the k least, most correlated first."""
    if symbol not in symbols:
        raise KeyError(f"{symbol} is not in the snapshot ({len(symbols)} symbols)")
    i = list(symbols).index(symbol)
    others = np.array([j for j in range(len(symbols)) if j != i and np.isfinite(matrix[i, j])], dtype=np.intp)
    order = others[np.argsort(-matrix[i, others], kind="stable")]
    chosen = order if order.size <= 2 * k else np.concatenate([order[:k], order[-k:]])
    return [{"symbol": symbols[j], "correlation": float(matrix[i, j])} for j in chosen]


@dataclass(frozen=True)
class Cluster:
    members: list[str]
    average_correlation: float


def leaf_order(matrix: Float64) -> npt.NDArray[np.intp]:
    """Symbols in hierarchical-clustering leaf order (average linkage on 1 - correlation): blocks sit together."""
    if matrix.shape[0] < 3:
        return np.arange(matrix.shape[0])
    return np.asarray(leaves_list(_linkage(matrix)), dtype=np.intp)


def clusters(symbols: Sequence[str], matrix: Float64, min_correlation: float) -> list[Cluster]:
    """Groups whose members average at least ``min_correlation`` with each other (average linkage), largest first."""
    n = len(symbols)
    if n == 0:
        return []
    labels = np.ones(n, dtype=np.intp) if n < 2 else fcluster(_linkage(matrix), 1 - min_correlation, "distance")
    found = []
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        block = matrix[np.ix_(index, index)]
        off = block[~np.eye(index.size, dtype=bool)]
        average = float(np.nanmean(off)) if off.size else 1.0
        found.append(Cluster([symbols[i] for i in index], average))
    return sorted(found, key=lambda c: (-len(c.members), -c.average_correlation, c.members[0]))


def _linkage(matrix: Float64) -> Float64:
    distance = 1.0 - np.where(np.isfinite(matrix), matrix, 0.0)
    distance = 0.5 * (distance + distance.T)
    np.fill_diagonal(distance, 0.0)
    return np.asarray(linkage(squareform(np.clip(distance, 0.0, 2.0), checks=False), "average"))


def diversification_ratio(
    symbols: Sequence[str], matrix: Float64, weights: Mapping[str, float], volatility: Mapping[str, float]
) -> tuple[float, bool]:
    """(w . sigma) / sqrt(w' Sigma w) of a weight vector over the snapshot's symbols, Sigma = D C D.

    Uses each symbol's volatility where known; with none known it is the correlation-only ratio (all sigma = 1),
    and the second value says so. NaN correlations (pairs with no common returns) count as 0.
    """
    missing = sorted(set(weights) - set(symbols))
    if missing:
        raise KeyError(f"not in the snapshot: {', '.join(missing)}")
    index = np.array([list(symbols).index(s) for s in weights], dtype=np.intp)
    w = np.array(list(weights.values()), dtype=np.float64)
    known = all(s in volatility for s in weights)
    sigma = np.array([volatility[s] for s in weights]) if known else np.ones(w.size)
    corr = np.where(np.isfinite(matrix[np.ix_(index, index)]), matrix[np.ix_(index, index)], 0.0)
    ws = w * sigma
    variance = float(ws @ corr @ ws)
    if variance <= 0:
        raise ValueError("the weights give a portfolio with no variance")
    return float(ws.sum() / np.sqrt(variance)), known


def parse_weights(text: str) -> dict[str, float]:
    """``"SPY=0.5,XLK=0.5"`` -> {"SPY": 0.5, "XLK": 0.5}."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        symbol, sep, value = item.partition("=")
        if not sep or not symbol.strip():
            raise ValueError(f"weight {item!r} is not SYMBOL=WEIGHT")
        weights[symbol.strip()] = float(value)
    if not weights:
        raise ValueError("no weights given")
    return weights
