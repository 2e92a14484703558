"""Read-side helpers: the stored upper triangle back to a matrix, and the strongest pairs of a snapshot."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pytest

from core.units import NS_PER_MINUTE
from projections.read import CorrelationView, square_matrix, top_pairs
from streams.correlation.rolling import RollingWindow

NAN = float("nan")


@pytest.mark.parametrize(
    ("upper", "n", "expected"),
    [
        pytest.param([], 0, np.empty((0, 0)), id="empty"),
        pytest.param([], 1, [[1.0]], id="one-symbol"),
        pytest.param([0.25], 2, [[1.0, 0.25], [0.25, 1.0]], id="two"),
        pytest.param(
            [0.1, 0.2, 0.3], 3, [[1.0, 0.1, 0.2], [0.1, 1.0, 0.3], [0.2, 0.3, 1.0]], id="three-row-major-layout"
        ),
        pytest.param(
            [1, 2, 3, 4, 5, 6],
            4,
            [[1, 1, 2, 3], [1, 1, 4, 5], [2, 4, 1, 6], [3, 5, 6, 1]],
            id="four-row-major-layout",
        ),
        pytest.param([NAN, -0.5, NAN], 3, [[1, NAN, -0.5], [NAN, 1, NAN], [-0.5, NAN, 1]], id="nan-kept"),
        pytest.param((0.5,), 2, [[1, 0.5], [0.5, 1]], id="tuple"),
        pytest.param(np.array([-1.0]), 2, [[1, -1], [-1, 1]], id="ndarray"),
        pytest.param([None, 0.5, 0.25], 3, [[1, NAN, 0.5], [NAN, 1, 0.25], [0.5, 0.25, 1]], id="sql-null-is-nan"),
    ],
)
def test_square_matrix(upper, n: int, expected) -> None:  # type: ignore[no-untyped-def]
    matrix = square_matrix(upper, n)
    assert matrix.shape == (n, n) and matrix.dtype == np.float64
    npt.assert_array_equal(matrix, np.asarray(expected, dtype=np.float64))
    npt.assert_array_equal(matrix, matrix.T)
    npt.assert_array_equal(np.diag(matrix), np.ones(n))


@pytest.mark.parametrize(("length", "n"), [(2, 3), (4, 3), (0, 2), (2, 1), (5, 4)])
def test_square_matrix_refuses_a_triangle_of_the_wrong_size(length: int, n: int) -> None:
    with pytest.raises(ValueError):
        square_matrix([0.5] * length, n)


@pytest.mark.parametrize("n", [1, 3])
def test_square_matrix_refuses_a_one_element_triangle_of_the_wrong_size(n: int) -> None:
    with pytest.raises(ValueError):
        square_matrix([0.5], n)


@pytest.mark.parametrize("n", [2, 3, 5, 17, 64])
def test_square_matrix_inverts_numpy_triu_layout(n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.uniform(-1, 1, (n, n))
    symmetric = (a + a.T) / 2
    np.fill_diagonal(symmetric, 1.0)
    npt.assert_array_equal(square_matrix(symmetric[np.triu_indices(n, 1)], n), symmetric)


def _snapshot(seed: int, late: int):  # type: ignore[no-untyped-def]
    """A real CorrelationSnapshot; ``late`` symbols start late (pairwise-complete entries), one symbol is flat."""
    rng = np.random.default_rng(seed)
    symbols = [f"S{i}" for i in range(7)]
    window = RollingWindow(symbols, 30, min_periods=5)
    minutes = 40
    closes = 100 * np.exp(
        np.cumsum(rng.normal(0, 1e-3, (minutes, len(symbols))) + rng.normal(0, 1e-3, (minutes, 1)), 0)
    )
    closes[:, 6] = 50.0  # flat: no defined correlation, left out of the snapshot
    present = np.ones_like(closes, dtype=bool)
    present[:25, 6 - late : 6] = False
    t, j = np.nonzero(present)
    window.update(np.array(symbols, dtype=object)[j], t.astype(np.int64) * NS_PER_MINUTE, closes[t, j])
    return window.correlation()


@pytest.mark.parametrize(("seed", "late"), [(0, 0), (1, 2), (2, 4)])
def test_square_matrix_round_trips_the_snapshot_encoding(seed: int, late: int) -> None:
    snap = _snapshot(seed, late)
    n = len(snap.symbol)
    assert n == 6 and "S6" not in snap.symbol.tolist()
    stored = snap.upper_triangle().tolist()  # what the projection writes (float8[])
    assert len(stored) == n * (n - 1) // 2
    npt.assert_array_equal(square_matrix(stored, n), snap.matrix)


def view(symbols: list[str], upper: list[float]) -> CorrelationView:
    return CorrelationView(
        universe="test",
        timeframe="1m",
        as_of=None,
        window_bars=30,
        observations=30,
        symbols=symbols,
        matrix=square_matrix(upper, len(symbols)),
        avg_correlation=None,
        eigen_share=None,
        diversification_ratio=None,
    )


ABCD = ["A", "B", "C", "D"]
# pairs in triu order: AB AC AD BC BD CD
UPPER = [0.5, -0.9, 0.1, NAN, 0.7, -0.3]


def pairs(rows: list[dict]) -> list[tuple[str, str, float]]:  # type: ignore[type-arg]
    return [(r["a"], r["b"], r["correlation"]) for r in rows]


@pytest.mark.parametrize(
    ("symbols", "upper", "k", "expected"),
    [
        pytest.param(ABCD, UPPER, 1, [("A", "C", -0.9)], id="strongest-is-negative"),
        pytest.param(ABCD, UPPER, 3, [("A", "C", -0.9), ("B", "D", 0.7), ("A", "B", 0.5)], id="k3"),
        pytest.param(
            ABCD,
            UPPER,
            5,
            [("A", "C", -0.9), ("B", "D", 0.7), ("A", "B", 0.5), ("C", "D", -0.3), ("A", "D", 0.1)],
            id="all-finite-nan-skipped",
        ),
        pytest.param(
            ABCD,
            UPPER,
            100,
            [("A", "C", -0.9), ("B", "D", 0.7), ("A", "B", 0.5), ("C", "D", -0.3), ("A", "D", 0.1)],
            id="k-larger-than-pairs",
        ),
        pytest.param(ABCD, UPPER, 0, [], id="k0"),
        pytest.param(["A", "B", "C"], [NAN, NAN, NAN], 3, [], id="all-nan"),
        pytest.param(["A"], [], 5, [], id="one-symbol"),
        pytest.param([], [], 5, [], id="no-symbols"),
        pytest.param(
            ["A", "B", "C"], [0.4, -0.4, 0.4], 3, [("A", "B", 0.4), ("A", "C", -0.4), ("B", "C", 0.4)], id="ties-triu"
        ),
        pytest.param(["A", "B", "C"], [0.4, -0.4, 0.4], 2, [("A", "B", 0.4), ("A", "C", -0.4)], id="ties-cut"),
        pytest.param(
            ["A", "B", "C"], [1.0, -1.0, 0.0], 3, [("A", "B", 1.0), ("A", "C", -1.0), ("B", "C", 0.0)], id="x"
        ),
    ],
)
def test_top_pairs(symbols: list[str], upper: list[float], k: int, expected: list[tuple[str, str, float]]) -> None:
    rows = top_pairs(view(symbols, upper), k)
    assert pairs(rows) == expected
    assert all(type(r["correlation"]) is float for r in rows)


@pytest.mark.parametrize("seed", range(10))
def test_top_pairs_matches_a_sorted_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    symbols = [f"S{i}" for i in range(n)]
    upper = np.round(rng.uniform(-1, 1, n * (n - 1) // 2), 2)  # rounding makes |value| ties common
    upper[rng.random(upper.size) < 0.1] = np.nan
    k = int(rng.integers(1, upper.size + 5))
    got = pairs(top_pairs(view(symbols, upper.tolist()), k))
    ia, ib = np.triu_indices(n, 1)
    reference = sorted(
        ((symbols[i], symbols[j], float(v)) for i, j, v in zip(ia, ib, upper, strict=True) if np.isfinite(v)),
        key=lambda p: -abs(p[2]),  # sorted() is stable: ties stay in triangle order
    )[:k]
    # strongest first, the same magnitudes; which of several equal-|value| pairs comes first (or makes the cut)
    # is not specified, so pairs are compared as sets above the cut and checked for membership at it
    assert [abs(v) for *_, v in got] == [abs(v) for *_, v in reference]
    cut = abs(reference[-1][2])
    assert {p for p in got if abs(p[2]) > cut} == {p for p in reference if abs(p[2]) > cut}
    tied = {p for p in zip(ia, ib, upper, strict=True) if abs(p[2]) == cut}
    assert {p for p in got if abs(p[2]) == cut} <= {(symbols[i], symbols[j], float(v)) for i, j, v in tied}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_pairs_with_ties_returns_tied_pairs(k: int) -> None:
    rows = pairs(top_pairs(view(["A", "B", "C"], [0.4, -0.4, 0.4]), k))
    assert len(rows) == k and len(set(rows)) == k
    assert set(rows) <= {("A", "B", 0.4), ("A", "C", -0.4), ("B", "C", 0.4)}
