"""Which bars of a batch go to which Redis window, in which order (projections.bars._window_updates)."""

from __future__ import annotations

from core.units import NS_PER_MINUTE
from projections.bars import _window_updates
from projections.redis_store import WINDOW_MEMBER, BarWindowUpdate, WindowBar, parse_window_members
from tests.factories import minute_bars

T0 = 1_740_000_000 * 10**9


def bars_of(update: BarWindowUpdate) -> list[WindowBar]:
    size = WINDOW_MEMBER.itemsize
    return parse_window_members([update.bars[i : i + size] for i in range(0, len(update.bars), size)])


def test_bars_are_grouped_per_symbol_one_per_start_the_last_in_the_log_and_only_the_batch_last_window() -> None:
    # Interleaved symbols; BBB's minute 3 arrives twice (a correction, last in the log) and minute 0 out of order.
    symbols = ["AAA", "BBB", "AAA", "BBB", "BBB", "AAA", "BBB", "BBB"]
    minutes = [0, 3, 1, 1, 2, 2, 3, 0]
    bars = minute_bars(symbols, [T0 + m * NS_PER_MINUTE for m in minutes])  # closes 100, 101, ...
    updates = _window_updates(bars, window_s=180)  # three minutes: minute 0 falls out once minute 3 is there
    assert [u.key for u in updates] == ["tm:window:1m:AAA", "tm:window:1m:BBB"]
    aaa, bbb = (bars_of(u) for u in updates)
    assert [((b.start_ns - T0) // NS_PER_MINUTE, b.close) for b in aaa] == [(0, 100.0), (1, 102.0), (2, 105.0)]
    assert [((b.start_ns - T0) // NS_PER_MINUTE, b.close) for b in bbb] == [(1, 103.0), (2, 104.0), (3, 106.0)]
    assert (updates[0].window_ns, updates[0].ttl_s) == (180 * 10**9, 360)


def test_daily_bars_have_no_window() -> None:
    assert _window_updates(minute_bars(["AAA"], [T0], interval="1d"), window_s=3600) == []


def test_a_member_round_trips_every_field() -> None:
    (update,) = _window_updates(minute_bars(["AAA"], [T0]), window_s=3600)
    assert len(update.bars) == WINDOW_MEMBER.itemsize == 49
    (bar,) = bars_of(update)
    assert bar == WindowBar(T0, 100.0, 101.0, 99.0, 100.0, 10.0, "OHLCV")
