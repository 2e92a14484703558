"""The pattern processor reads each market's regular session only: what enters its grids, and what a scan sees."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from core.units import NS_PER_MINUTE
from schemas.bars import ASSET_CLASSES
from streams.patterns.processor import SESSION_SLOTS, TRADED_CLASSES, PatternProcessor
from streams.patterns.scan import SCAN_TIMEFRAMES
from streams.processors import BarFrame

EQUITY = ASSET_CLASSES.index("EQUITY")
HOURLY = [tf.name for tf in SCAN_TIMEFRAMES].index("1h")
MINUTE = [tf.name for tf in SCAN_TIMEFRAMES].index("1m")


def ns(utc: str) -> int:
    return int(datetime.fromisoformat(utc).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def equity_minutes(first: str, last: str, symbols: dict[str, float], seed: int = 1) -> BarFrame:
    """One bar a minute in [first, last] for each symbol that prints in that share of the minutes."""
    rng = np.random.default_rng(seed)
    minutes = np.arange(ns(first), ns(last) + 1, NS_PER_MINUTE, dtype=np.int64)
    starts, names, closes = [], [], []
    for name, share in symbols.items():
        printed = minutes[rng.random(minutes.size) < share]
        starts.append(printed)
        names += [name] * printed.size
        closes.append(50.0 * np.exp(np.cumsum(rng.standard_normal(printed.size) * 1e-3)))
    start = np.concatenate(starts)
    order = np.argsort(start, kind="stable")
    return BarFrame(
        np.zeros(start.size, dtype=np.int32),
        np.array(names, dtype=object)[order],
        start[order],
        np.concatenate(closes)[order],
        np.full(start.size, EQUITY, dtype=np.int8),
    )


def test_extended_hours_never_enter_the_grids_and_buckets_start_at_the_open() -> None:
    # Monday 2025-03-03 and Tuesday (EST: the session is 14:30-21:00 UTC), from 04:00 to 20:00 New York.
    bars = [equity_minutes(f"2025-03-0{d} 09:00", f"2025-03-{d + 1:02d} 00:59", {"AAA": 1.0}, d) for d in (3, 4)]
    processor = PatternProcessor(frozenset({0}))
    for frame in bars:
        processor.process(frame)
    processor.process(equity_minutes("2025-03-05 14:30", "2025-03-05 14:31", {"AAA": 1.0}))  # moves the clock on
    hourly = processor.grids[HOURLY][TRADED_CLASSES.index("EQUITY")]
    slots = hourly.labels % SESSION_SLOTS
    days = hourly.labels // SESSION_SLOTS
    assert np.unique(days).size == 3  # Monday, Tuesday, and Wednesday's first minutes
    for day in np.unique(days)[:2]:
        assert slots[days == day].tolist() == [0, 1, 2, 3, 4, 5, 6]  # 09:30, 10:30, ... 15:30 (the short one)
    minute = processor.grids[MINUTE][TRADED_CLASSES.index("EQUITY")]
    assert (minute.labels % SESSION_SLOTS < 390).all()
    # Every close in the hourly grid is the close of the last regular-session minute of its bucket.
    frame = bars[1]
    last_regular = frame.close[frame.start_ns == ns("2025-03-04 20:59")][0]
    assert hourly.closes[days == np.unique(days)[1]][-1, 0] == np.float32(last_regular)


def test_a_symbol_that_rarely_prints_is_not_scanned() -> None:
    processor = PatternProcessor(frozenset({0}))
    frame = equity_minutes("2025-03-03 14:30", "2025-03-04 20:59", {"LIQ": 1.0, "THIN": 0.5, "MOST": 0.95})
    processor.process(frame)
    processor.scanned[:] = np.iinfo(np.int64).min
    panels = {p.timeframe.name: p for p in processor._panels(ns("2025-03-04 21:00"))}
    assert panels["1m"].symbols.tolist() == ["LIQ", "MOST"]
    assert panels["1m"].session is not None and np.unique(panels["1m"].session).size == 2


def test_a_bucket_still_forming_at_the_scan_is_left_for_the_next() -> None:
    processor = PatternProcessor(frozenset({0}))
    processor.process(equity_minutes("2025-03-03 14:30", "2025-03-04 15:10", {"AAA": 1.0}))
    processor.scanned[:] = np.iinfo(np.int64).min
    hourly = processor.grids[HOURLY][TRADED_CLASSES.index("EQUITY")]
    assert hourly.labels[-1] % SESSION_SLOTS == 0  # Tuesday's 09:30-10:30 bucket has bars up to 10:00
    processor._panels(ns("2025-03-04 15:00"))  # 10:00 New York: that bucket is still forming
    assert processor.scanned[HOURLY, 0] == hourly.labels[-2]  # Monday's last bucket is the newest scanned
