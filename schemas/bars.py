"""Columnar batches of bars: the hot path moves bars as numpy columns, never as per-bar dicts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BAR_SCHEMA = "tidemark.marketdata.BarClosed"
ASSET_CLASSES = ("UNKNOWN", "EQUITY", "FX", "FUTURE")

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BarBatch:
    """N bars as parallel columns. ``vwap`` is NaN and ``trade_count`` is -1 where the venue gave none.

    ``asset_class`` holds indices into ``ASSET_CLASSES`` so that encoding needs no string lookups.
    """

    symbol: npt.NDArray[np.object_]
    asset_class: npt.NDArray[np.int8]
    interval: str
    start_ns: Int64
    end_ns: Int64
    open: Float64
    high: Float64
    low: Float64
    close: Float64
    volume: Float64
    vwap: Float64
    trade_count: Int64
    regular_session: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.symbol)

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice) -> BarBatch:
        """Rows selected by a mask, index array or slice, as a new batch."""
        return BarBatch(
            symbol=self.symbol[index],
            asset_class=self.asset_class[index],
            interval=self.interval,
            start_ns=self.start_ns[index],
            end_ns=self.end_ns[index],
            open=self.open[index],
            high=self.high[index],
            low=self.low[index],
            close=self.close[index],
            volume=self.volume[index],
            vwap=self.vwap[index],
            trade_count=self.trade_count[index],
            regular_session=self.regular_session[index],
        )
