"""A strategy's paper book on live bars: the family's signal function, unchanged, decides the position at each
bar's close from the history so far; the book fills at that close and charges the asset class's cost per unit
traded. Bar by bar it books what the backtest's kernel computes over the whole history at once (the parity the
tests check): the signal function is causal, and the book keeps the history since the backtest's start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streams.strategies import Bars, Family

Float64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Booked:
    """One bar on the book: the position held after its close, what changed hands, and the bar's net return."""

    position: Float64
    traded: Float64
    net_return: float
    cost: float


@dataclass
class PaperBook:
    family: Family
    params: Mapping[str, float]
    cost_per_unit: float
    bars_per_year: float
    _closes: list[Float64] = field(default_factory=list)
    _session_ends: list[bool] = field(default_factory=list)
    _position: Float64 | None = None

    @property
    def position(self) -> Float64:
        """The position held now (flat before the first bar)."""
        if self._position is None:
            return np.zeros(self._closes[-1].shape[0] if self._closes else 0)
        return self._position

    def warm(self, closes: Float64, session_ends: npt.NDArray[np.bool_]) -> None:
        """Take the history before the first booked bar at once: the position at its last close is the one the
        signal function gives over it, so the next ``on_bar`` books what the backtest would (one vectorised call
        instead of one per bar of a history of years)."""
        if self._closes:
            raise ValueError("a book is warmed once, before its first bar")
        rows = np.asarray(closes, dtype=np.float64)
        if rows.shape[0] == 0:
            return
        self._closes.extend(rows)
        self._session_ends.extend(bool(end) for end in session_ends)
        self._position = self._target(len(self._closes))

    def on_bar(self, closes: Float64, session_end: bool = False) -> Booked:
        """Book the bar that just closed at ``closes`` (one price per leg)."""
        row = np.asarray(closes, dtype=np.float64)
        previous_close = self._closes[-1] if self._closes else None
        self._closes.append(row)
        self._session_ends.append(session_end)
        held = self._position if self._position is not None else np.zeros(row.shape[0])
        target = self._target(len(self._closes))
        if previous_close is None:
            gross = 0.0
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                moves = np.nan_to_num(row / previous_close - 1.0, nan=0.0, posinf=0.0, neginf=0.0)
            gross = float(held @ moves)
        traded = target - held
        cost = self.cost_per_unit * float(np.abs(traded).sum())
        self._position = target
        return Booked(target, traded, gross - cost, cost)

    def _target(self, count: int) -> Float64:
        if self.family.resolve(self.params)["lookback"] + 1 > count:
            return np.zeros(self._closes[-1].shape[0])  # warming up: the signal needs a lookback and one bar more
        bars = Bars(np.vstack(self._closes), np.array(self._session_ends, dtype=np.bool_), self.bars_per_year)
        position: Float64 = self.family.positions(bars, self.params)[-1].copy()
        return position
