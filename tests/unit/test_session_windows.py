"""Session-aware, multi-timeframe snapshots on a mixed universe (NYSE equities and FX) around the NYSE close."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.units import NS_PER_MINUTE
from streams.correlation.processor import RollingProcessor, Window

UNIVERSE = ("E1", "E2", "F1", "F2")
CLASSES = np.array([1, 1, 2, 2], np.int8)  # EQUITY, EQUITY, FX, FX
START = pd.Timestamp("2025-03-03T19:30Z").value  # NYSE closes 21:00 UTC (winter), FX at 22:00 UTC
MINUTES = 180


def market() -> pd.DataFrame:
    """Minute closes; equities print only in their session, FX throughout."""
    rng = np.random.default_rng(3)
    factor = rng.normal(0, 1e-3, (MINUTES, 1))
    closes = 100 * np.exp(np.cumsum(factor + rng.normal(0, 1e-3, (MINUTES, 4)), axis=0))
    times = START + np.arange(MINUTES, dtype=np.int64) * NS_PER_MINUTE
    frame = pd.DataFrame(closes, index=times, columns=list(UNIVERSE))
    frame.loc[frame.index >= pd.Timestamp("2025-03-03T21:00Z").value, ["E1", "E2"]] = np.nan
    return frame


def run(frame: pd.DataFrame, windows: list[Window], batch: int) -> list:  # type: ignore[type-arg]
    long = frame.stack().reset_index()
    long.columns = ["start", "symbol", "close"]
    symbol = long.symbol.to_numpy(dtype=object)
    classes = CLASSES[[UNIVERSE.index(s) for s in symbol]]
    proc = RollingProcessor(UNIVERSE, windows, 15, frozenset({0}), min_coverage=0.5)
    snapshots = []
    for i in range(0, len(long), batch):
        part = slice(i, i + batch)
        n = len(long.start[part])
        snapshots += proc.process(
            np.zeros(n, np.int32), symbol[part], long.start.to_numpy()[part], long.close.to_numpy()[part], classes[part]
        )
    return snapshots


@pytest.mark.parametrize("batch", [7, 100, 10_000])
def test_pairs_use_the_returns_both_have_in_session(batch: int) -> None:
    frame = market()
    snapshots = run(frame, [Window("1m", 60), Window("1d", 2)], batch)
    minute = {s.boundary_ns: s for s in snapshots if s.timeframe == "1m"}
    after_close = pd.Timestamp("2025-03-03T21:15Z").value
    snap = minute[after_close].correlation
    assert list(snap.symbol) == list(UNIVERSE), "45 in-session equity returns of 60 are enough at 50% coverage"
    # Reference: returns inside each symbol's session only, pairwise complete (pandas), over the window's grid.
    closes = frame[frame.index < after_close].ffill().iloc[-61:]
    returns = np.log(closes).diff().iloc[1:]
    returns.loc[returns.index >= pd.Timestamp("2025-03-03T21:00Z").value, ["E1", "E2"]] = np.nan
    np.testing.assert_allclose(snap.matrix, returns.corr().to_numpy(), atol=1e-12)
    # Once the window holds fewer than 30 equity returns, equities leave the matrix instead of showing flat prices.
    late = minute[pd.Timestamp("2025-03-03T21:45Z").value].correlation
    assert list(late.symbol) == ["F1", "F2"]


def test_daily_snapshots_follow_session_closes_and_do_not_depend_on_batching() -> None:
    frame = market()
    days = [s.boundary_ns for s in run(frame, [Window("1m", 60), Window("1d", 2)], 50) if s.timeframe == "1d"]
    assert days == [pd.Timestamp("2025-03-03T21:00Z").value, pd.Timestamp("2025-03-03T22:00Z").value]
    one = run(frame, [Window("1m", 60), Window("1d", 2)], 10_000)
    many = run(frame, [Window("1m", 60), Window("1d", 2)], 3)
    assert [(s.timeframe, s.boundary_ns) for s in one] == [(s.timeframe, s.boundary_ns) for s in many]
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a.correlation.matrix, b.correlation.matrix)
