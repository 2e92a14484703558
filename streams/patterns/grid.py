"""Closes of one market's symbols on one timeframe's grid: the history a pattern scan reads, kept small.

Rows are bar labels in increasing order (a minute bucket ``start // bar_ns``, or a trading-session day); columns
are symbols, added as they first appear. A cell holds the last close applied for that (label, symbol), so bars
applied in time order leave each row with the close of its last bar: the bucket's close. Only ``capacity`` rows
are kept; the close of a dropped row carries into the window as ``base``. Closes are float32 (7 significant
digits, far below a bar's move) to halve the state the agent persists. Pure: numpy only.

Windows are read with each symbol's close carried forward over rows where it did not print, as
``streams.correlation.rolling`` does on its market-time grid.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Float32 = npt.NDArray[np.float32]
Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]


class BarGrid:
    def __init__(self, capacity: int, columns: int = 0) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2 rows")
        self.capacity = capacity
        self.labels: Int64 = np.empty(0, dtype=np.int64)
        self.closes: Float32 = np.empty((0, columns), dtype=np.float32)
        self.base: Float32 = np.full(columns, np.nan, dtype=np.float32)

    @property
    def columns(self) -> int:
        return int(self.base.size)

    def grow(self, columns: int) -> None:
        """Widen to ``columns`` symbols; new columns have no closes yet."""
        extra = columns - self.columns
        if extra <= 0:
            return
        self.closes = np.hstack([self.closes, np.full((self.labels.size, extra), np.nan, dtype=np.float32)])
        self.base = np.concatenate([self.base, np.full(extra, np.nan, dtype=np.float32)])

    def apply(self, labels: Int64, columns: IntP, closes: Float64) -> None:
        """Write bars given in time order; for a repeated (label, column) the last one wins.

        A bar older than every kept row no longer matters (its row left the window) and is dropped.
        """
        if not labels.size:
            return
        order = np.lexsort((np.arange(labels.size), labels, columns))
        labels, columns, closes = labels[order], columns[order], closes[order]
        last = np.ones(labels.size, dtype=np.bool_)
        last[:-1] = (labels[1:] != labels[:-1]) | (columns[1:] != columns[:-1])
        labels, columns, closes = labels[last], columns[last], closes[last]
        if self.labels.size == self.capacity:
            keep = labels >= self.labels[0]
            labels, columns, closes = labels[keep], columns[keep], closes[keep]
        new = np.setdiff1d(labels, self.labels)
        if new.size:
            merged = np.union1d(self.labels, new)
            grown = np.full((merged.size, self.columns), np.nan, dtype=np.float32)
            grown[np.searchsorted(merged, self.labels)] = self.closes
            self.labels, self.closes = merged, grown
        self.closes[np.searchsorted(self.labels, labels), columns] = closes
        self._drop_oldest()

    def _drop_oldest(self) -> None:
        drop = self.labels.size - self.capacity
        if drop <= 0:
            return
        old = self.closes[:drop]
        last = np.where(np.isnan(old), -1, np.arange(drop)[:, None]).max(axis=0)
        cols = np.flatnonzero(last >= 0)
        self.base[cols] = old[last[cols], cols]
        self.labels = self.labels[drop:].copy()
        self.closes = self.closes[drop:].copy()

    def traded(self, rows: int, end: int) -> npt.NDArray[np.bool_]:
        """Whether each symbol printed in each of the ``rows`` rows before row ``end`` (not carried forward)."""
        traded: npt.NDArray[np.bool_] = ~np.isnan(self.closes[max(end - rows, 0) : end])
        return traded

    def window(self, rows: int, end: int | None = None) -> Float64:
        """Closes (float64) of the ``rows`` rows before row ``end`` (default: all), carried forward.

        Fewer rows come back when the grid holds fewer; NaN before a symbol's first close.
        """
        end = self.labels.size if end is None else end
        start = max(end - rows, 0)
        seen = np.where(np.isnan(self.closes[:end]), -1, np.arange(end)[:, None])
        seen = np.maximum.accumulate(seen, axis=0)[start:] if end else np.empty((0, self.columns), dtype=np.intp)
        closes = np.take_along_axis(self.closes[:end], np.maximum(seen, 0), axis=0).astype(np.float64)
        return np.where(seen >= 0, closes, self.base.astype(np.float64))
