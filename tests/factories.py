"""Bars built by hand for tests: one row per (symbol, start), closes 100, 101, ... unless given."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.units import NS_PER_MINUTE
from schemas.bars import BarBatch


def minute_bars(symbols: Sequence[str], starts: Sequence[int], interval: str = "1m") -> BarBatch:
    n = len(symbols)
    start = np.asarray(starts, dtype=np.int64)
    close = 100.0 + np.arange(n, dtype=np.float64)
    return BarBatch(
        symbol=np.array(symbols, dtype=object),
        asset_class=np.ones(n, dtype=np.int8),
        interval=interval,
        start_ns=start,
        end_ns=start + NS_PER_MINUTE,
        open=close,
        high=close + 1,
        low=close - 1,
        close=close,
        volume=np.full(n, 10.0),
        vwap=np.full(n, np.nan),
        trade_count=np.full(n, -1, dtype=np.int64),
        regular_session=np.ones(n, dtype=np.bool_),
    )
