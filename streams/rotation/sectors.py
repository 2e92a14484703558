"""Sector rotation: relative strength and momentum of sector ETFs against a benchmark, as in a relative rotation graph.

With ``RS = sector close / benchmark close`` on the market-time grid, over a window of ``n`` bars and a momentum
lookback of ``m`` bars:

- relative strength ``RS-ratio_t = 100 * RS_t / RS_{t-n}``: the sector's performance over the window relative to the
  benchmark's, 100 = in line (101 = outperformed by 1%);
- momentum ``RS-momentum_t = 100 * RS-ratio_t / RS-ratio_{t-m}``: how the relative strength itself moved over the last
  ``m`` bars, 100 = flat.

The quadrants follow the graph's clockwise rotation: LEADING (strong and rising), WEAKENING (strong, falling), LAGGING
(weak, falling), IMPROVING (weak, rising); a value exactly at 100 counts as strong or rising. Rotation signals are
changes of a sector's *confirmed* quadrant (a point within ``band`` of an axis keeps the quadrant it had, so a sector
hovering around 100 does not signal every snapshot) and crossings of the top-``k`` boundary of the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from streams.rotation.ranks import descending_ranks

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
Int8 = npt.NDArray[np.int8]

QUADRANTS = ("UNKNOWN", "LEADING", "WEAKENING", "LAGGING", "IMPROVING")
"""The RotationQuadrant symbols of the SectorRotationComputed schema; kernels use their indices."""
UNKNOWN, LEADING, WEAKENING, LAGGING, IMPROVING = range(len(QUADRANTS))

SPDR_SECTORS = {
    "XLB": "Materials",
    "XLC": "Communication Services",
    "XLE": "Energy",
    "XLF": "Financials",
    "XLI": "Industrials",
    "XLK": "Technology",
    "XLP": "Consumer Staples",
    "XLRE": "Real Estate",
    "XLU": "Utilities",
    "XLV": "Health Care",
    "XLY": "Consumer Discretionary",
}
"""The Select Sector SPDR ETFs and the GICS sectors they track."""


@dataclass(frozen=True, slots=True)
class Rotation:
    """Per sector: RS-ratio, RS-momentum (NaN without enough data), rank by RS-ratio (0 = unranked), quadrant."""

    relative_strength: Float64
    momentum: Float64
    rank: Int64
    quadrant: Int8


def relative_rotation(closes: Float64, benchmark: Float64, window: int, momentum: int) -> Rotation:
    """Rotation at the last row of ``closes`` (rows = grid times, columns = sectors) against ``benchmark`` closes.

    Needs at least ``window + momentum + 1`` rows; a sector missing any of the four closes used is NaN/UNKNOWN.
    """
    if window < 1 or momentum < 1:
        raise ValueError("window and momentum must be at least one bar")
    if closes.shape[0] < window + momentum + 1 or benchmark.shape[0] != closes.shape[0]:
        raise ValueError(f"need {window + momentum + 1} aligned rows of sector and benchmark closes")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_rs = np.log(closes) - np.log(benchmark)[:, None]
    now = log_rs[-1] - log_rs[-1 - window]
    before = log_rs[-1 - momentum] - log_rs[-1 - momentum - window]
    relative_strength = 100.0 * np.exp(now)
    rs_momentum = 100.0 * np.exp(now - before)
    return Rotation(
        relative_strength,
        rs_momentum,
        descending_ranks(relative_strength),
        quadrants(relative_strength, rs_momentum),
    )


def quadrants(relative_strength: Float64, momentum: Float64) -> Int8:
    strong = relative_strength >= 100.0
    rising = momentum >= 100.0
    quadrant = np.where(strong, np.where(rising, LEADING, WEAKENING), np.where(rising, IMPROVING, LAGGING))
    known = np.isfinite(relative_strength) & np.isfinite(momentum)
    return np.where(known, quadrant, UNKNOWN).astype(np.int8)


def confirmed_quadrants(previous: Int8, rotation: Rotation, band: float) -> Int8:
    """The new confirmed quadrant per sector: the current one unless the point is within ``band`` of an axis.

    A sector with no confirmed quadrant yet takes its current one wherever it lies.
    """
    clear = (np.abs(rotation.relative_strength - 100.0) >= band) & (np.abs(rotation.momentum - 100.0) >= band)
    take = (clear | (previous == UNKNOWN)) & (rotation.quadrant != UNKNOWN)
    return np.where(take, rotation.quadrant, previous).astype(np.int8)


SignalKind = Literal["quadrant_change", "rank_cross"]


@dataclass(frozen=True, slots=True)
class RotationSignal:
    """Sector ``index`` moved from ``before`` to ``after``: quadrant indices, or ranks for a top-k crossing."""

    kind: SignalKind
    index: int
    before: int
    after: int


def rotation_signals(
    previous_quadrant: Int8, quadrant: Int8, previous_rank: Int64, rank: Int64, top_k: int
) -> list[RotationSignal]:
    """Confirmed-quadrant changes, then entries into and exits from the top ``top_k``, each in sector order."""
    changed = (previous_quadrant != UNKNOWN) & (quadrant != UNKNOWN) & (previous_quadrant != quadrant)
    ranked = (previous_rank > 0) & (rank > 0)
    crossed = ranked & ((previous_rank <= top_k) != (rank <= top_k))
    signals = [
        RotationSignal("quadrant_change", i, int(previous_quadrant[i]), int(quadrant[i]))
        for i in np.flatnonzero(changed).tolist()
    ]
    signals += [
        RotationSignal("rank_cross", i, int(previous_rank[i]), int(rank[i])) for i in np.flatnonzero(crossed).tolist()
    ]
    return signals
