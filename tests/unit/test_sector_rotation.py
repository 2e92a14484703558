"""Relative rotation kernel against a direct recomputation of the RS-ratio and RS-momentum, quadrants and signals."""

from __future__ import annotations

import numpy as np
import numpy.testing as npt
import pytest

from streams.rotation.sectors import (
    IMPROVING,
    LAGGING,
    LEADING,
    QUADRANTS,
    UNKNOWN,
    WEAKENING,
    Rotation,
    RotationSignal,
    confirmed_quadrants,
    quadrants,
    relative_rotation,
    rotation_signals,
)


def direct(sector: list[float], benchmark: list[float], n: int, m: int) -> tuple[float, float]:
    """RS-ratio = 100 * RS_t / RS_{t-n}; RS-momentum = 100 * RS-ratio_t / RS-ratio_{t-m}; RS = sector / benchmark."""
    rs = [s / b for s, b in zip(sector, benchmark, strict=True)]
    ratio_now = 100 * rs[-1] / rs[-1 - n]
    ratio_before = 100 * rs[-1 - m] / rs[-1 - m - n]
    return ratio_now, 100 * ratio_now / ratio_before


@pytest.mark.parametrize(("seed", "window", "momentum", "extra"), [(0, 60, 15, 0), (1, 10, 3, 7), (2, 1, 1, 0)])
def test_matches_the_direct_formula(seed: int, window: int, momentum: int, extra: int) -> None:
    rng = np.random.default_rng(seed)
    rows = window + momentum + 1 + extra
    benchmark = 480 * np.exp(np.cumsum(rng.normal(0, 4e-4, rows)))
    closes = 50 * np.exp(np.cumsum(rng.normal(0, 6e-4, (rows, 11)), axis=0))
    rotation = relative_rotation(closes, benchmark, window, momentum)
    for j in range(11):
        rs, mom = direct(closes[:, j].tolist(), benchmark.tolist(), window, momentum)
        assert rotation.relative_strength[j] == pytest.approx(rs, rel=1e-12)
        assert rotation.momentum[j] == pytest.approx(mom, rel=1e-12)
    order = np.argsort(-rotation.relative_strength, kind="stable")
    assert rotation.rank[order].tolist() == list(range(1, 12))


def path(kind: str, rows: int) -> np.ndarray:
    """A log relative-strength path ending at the last row: rising or falling, accelerating or decelerating."""
    t = np.arange(rows, dtype=np.float64) / rows
    shape = {
        "rising-faster": t**2,
        "rising-slower": -((1 - t) ** 2),
        "falling-faster": -(t**2),
        "falling-slower": (1 - t) ** 2,
    }[kind]
    return 0.01 * shape


@pytest.mark.parametrize(
    ("kind", "quadrant"),
    [
        ("rising-faster", "LEADING"),
        ("rising-slower", "WEAKENING"),
        ("falling-faster", "LAGGING"),
        ("falling-slower", "IMPROVING"),
    ],
)
@pytest.mark.parametrize("benchmark_drift", [0.0, 3e-4, -5e-4])
def test_quadrants_follow_the_relative_trend_whatever_the_benchmark_does(
    kind: str, quadrant: str, benchmark_drift: float
) -> None:
    rows = 60 + 15 + 1
    benchmark = 480 * np.exp(benchmark_drift * np.arange(rows))
    sector = benchmark * np.exp(path(kind, rows))
    rotation = relative_rotation(sector[:, None], benchmark, 60, 15)
    assert QUADRANTS[rotation.quadrant[0]] == quadrant


def test_the_outperformer_ranks_first_and_leads() -> None:
    rows = 60 + 15 + 1
    benchmark = np.full(rows, 100.0)
    closes = np.column_stack(
        [
            benchmark * np.exp(path("falling-faster", rows)),
            benchmark * np.exp(path("rising-faster", rows)),  # the outperformer
            benchmark,  # exactly in line: 100/100 counts as strong and rising
        ]
    )
    rotation = relative_rotation(closes, benchmark, 60, 15)
    assert rotation.rank.tolist() == [3, 1, 2]
    assert [QUADRANTS[q] for q in rotation.quadrant] == ["LAGGING", "LEADING", "LEADING"]
    npt.assert_allclose(rotation.relative_strength[2], 100.0)
    npt.assert_allclose(rotation.momentum[2], 100.0)


def test_a_sector_missing_a_close_it_needs_is_unknown_and_unranked() -> None:
    rows = 10 + 3 + 1
    benchmark = np.linspace(100, 101, rows)
    rising, falling = (benchmark * np.exp(path(kind, rows)) for kind in ("rising-faster", "falling-faster"))
    closes = np.column_stack([rising * np.exp(path("rising-faster", rows)), rising, falling])
    closes[0, 0] = np.nan  # the oldest close the momentum needs
    rotation = relative_rotation(closes, benchmark, 10, 3)
    assert np.isnan(rotation.momentum[0]) and np.isfinite(rotation.relative_strength[0])
    assert rotation.quadrant.tolist() == [UNKNOWN, LEADING, LAGGING]
    assert rotation.rank.tolist() == [1, 2, 3]  # ranked by RS-ratio, which it has
    closes[-1, 1] = np.nan
    assert relative_rotation(closes, benchmark, 10, 3).rank.tolist() == [1, 0, 2]


@pytest.mark.parametrize(("rows", "window", "momentum"), [(10, 10, 1), (5, 2, 3), (20, 0, 3)])
def test_too_short_a_history_is_an_error(rows: int, window: int, momentum: int) -> None:
    with pytest.raises(ValueError):
        relative_rotation(np.ones((rows, 2)), np.ones(rows), window, momentum)


@pytest.mark.parametrize(
    ("rs", "mom", "quadrant"),
    [
        (101.0, 100.5, LEADING),
        (101.0, 99.5, WEAKENING),
        (99.0, 99.5, LAGGING),
        (99.0, 100.5, IMPROVING),
        (100.0, 100.0, LEADING),
        (100.0, 99.99, WEAKENING),
        (99.99, 100.0, IMPROVING),
        (np.nan, 100.5, UNKNOWN),
        (101.0, np.nan, UNKNOWN),
    ],
)
def test_quadrant_table(rs: float, mom: float, quadrant: int) -> None:
    assert quadrants(np.array([rs]), np.array([mom])).tolist() == [quadrant]


def rotation_of(points: list[tuple[float, float]]) -> Rotation:
    rs = np.array([p[0] for p in points])
    mom = np.array([p[1] for p in points])
    return Rotation(rs, mom, np.zeros(len(points), dtype=np.int64), quadrants(rs, mom))


@pytest.mark.parametrize(
    ("previous", "point", "band", "confirmed"),
    [
        (UNKNOWN, (100.01, 99.99), 0.05, WEAKENING),  # nothing confirmed yet: take it wherever it is
        (LEADING, (100.01, 99.99), 0.05, LEADING),  # within the band of the momentum axis: keep
        (LEADING, (100.2, 99.9), 0.05, WEAKENING),  # clearly across
        (LEADING, (100.01, 99.99), 0.0, WEAKENING),  # no band
        (LAGGING, (99.0, 100.04), 0.05, LAGGING),
        (LAGGING, (99.0, 100.06), 0.05, IMPROVING),
        (IMPROVING, (np.nan, 101.0), 0.05, IMPROVING),  # no data: keep what was confirmed
    ],
)
def test_confirmed_quadrants_need_the_point_clear_of_the_axes(
    previous: int, point: tuple[float, float], band: float, confirmed: int
) -> None:
    got = confirmed_quadrants(np.array([previous], dtype=np.int8), rotation_of([point]), band)
    assert got.tolist() == [confirmed]


@pytest.mark.parametrize(
    ("previous_quadrant", "quadrant", "previous_rank", "rank", "signals"),
    [
        ([LEADING, LAGGING], [LEADING, LAGGING], [1, 2], [1, 2], []),
        ([LEADING, LAGGING], [WEAKENING, LAGGING], [1, 2], [1, 2], [("quadrant_change", 0, LEADING, WEAKENING)]),
        ([UNKNOWN, LAGGING], [LEADING, IMPROVING], [0, 2], [1, 2], [("quadrant_change", 1, LAGGING, IMPROVING)]),
        ([LEADING, LAGGING, LAGGING], [LEADING, LAGGING, LAGGING], [1, 2, 3], [2, 1, 3], []),  # within the top 2
        (
            [LEADING, LAGGING, LAGGING],
            [LEADING, LAGGING, IMPROVING],
            [2, 1, 3],
            [1, 3, 2],
            [("quadrant_change", 2, LAGGING, IMPROVING), ("rank_cross", 1, 1, 3), ("rank_cross", 2, 3, 2)],
        ),
        ([LEADING, LAGGING], [LEADING, LAGGING], [0, 3], [1, 3], []),  # newly ranked: nothing crossed
    ],
)
def test_rotation_signals_table(
    previous_quadrant: list[int],
    quadrant: list[int],
    previous_rank: list[int],
    rank: list[int],
    signals: list[tuple[str, int, int, int]],
) -> None:
    got = rotation_signals(
        np.array(previous_quadrant, dtype=np.int8),
        np.array(quadrant, dtype=np.int8),
        np.array(previous_rank, dtype=np.int64),
        np.array(rank, dtype=np.int64),
        top_k=2,
    )
    assert got == [RotationSignal(*s) for s in signals]  # type: ignore[arg-type]
