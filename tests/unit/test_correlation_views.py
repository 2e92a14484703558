"""Read-side views of a correlation snapshot: extreme pairs, neighbours, clusters, diversification ratio."""

from __future__ import annotations

import numpy as np
import pytest

from projections.analytics import dequantise, quantise
from projections.correlations import (
    clusters,
    diversification_ratio,
    extreme_pairs,
    leaf_order,
    neighbours,
    parse_weights,
)

SYMBOLS = ["A", "B", "C", "D"]
MATRIX = np.array(
    [
        [1.0, 0.9, 0.1, -0.2],
        [0.9, 1.0, 0.0, -0.1],
        [0.1, 0.0, 1.0, 0.8],
        [-0.2, -0.1, 0.8, 1.0],
    ]
)


def test_extreme_pairs() -> None:
    top = extreme_pairs(SYMBOLS, MATRIX, 2, True)
    bottom = extreme_pairs(SYMBOLS, MATRIX, 2, False)
    assert [(p["a"], p["b"], p["correlation"]) for p in top] == [("A", "B", 0.9), ("C", "D", 0.8)]
    assert [(p["a"], p["b"], p["correlation"]) for p in bottom] == [("A", "D", -0.2), ("B", "D", -0.1)]


def test_neighbours_most_correlated_first() -> None:
    assert [r["symbol"] for r in neighbours(SYMBOLS, MATRIX, "A", 5)] == ["B", "C", "D"]
    with pytest.raises(KeyError):
        neighbours(SYMBOLS, MATRIX, "Z", 3)


def test_clusters_and_leaf_order_keep_blocks_together() -> None:
    found = clusters(SYMBOLS, MATRIX, 0.5)
    assert sorted(sorted(c.members) for c in found) == [["A", "B"], ["C", "D"]]
    assert {c.average_correlation for c in found} == {0.9, 0.8}
    order = leaf_order(MATRIX).tolist()
    assert abs(order.index(0) - order.index(1)) == 1 and abs(order.index(2) - order.index(3)) == 1


def test_diversification_ratio() -> None:
    weights = {"A": 0.5, "C": 0.5}
    ratio, with_vols = diversification_ratio(SYMBOLS, MATRIX, weights, {"A": 0.02, "C": 0.01})
    w_sigma = np.array([0.01, 0.005])
    expected = w_sigma.sum() / np.sqrt(w_sigma @ np.array([[1, 0.1], [0.1, 1]]) @ w_sigma)
    assert with_vols and ratio == pytest.approx(expected)
    ratio, with_vols = diversification_ratio(SYMBOLS, MATRIX, weights, {})
    assert not with_vols and ratio == pytest.approx(1 / np.sqrt(0.5 * 1.1))
    with pytest.raises(KeyError):
        diversification_ratio(SYMBOLS, MATRIX, {"Z": 1.0}, {})


def test_parse_weights() -> None:
    assert parse_weights("SPY=0.6, XLK=0.4") == {"SPY": 0.6, "XLK": 0.4}
    with pytest.raises(ValueError):
        parse_weights("SPY")


def test_quantised_history_round_trips_within_half_a_step() -> None:
    values = np.array([-1.0, -0.123456, 0.0, 0.5, 0.999999, 1.0, np.nan])
    back = dequantise(quantise(values))
    assert len(quantise(values)) == 2 * values.size
    np.testing.assert_allclose(back[:-1], values[:-1], atol=0.5 / 32767)
    assert np.isnan(back[-1])
