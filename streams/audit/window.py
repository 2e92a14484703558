"""The bars behind a bar-derived event: of each symbol's bars starting before the event's ``as_of_ns``, the closing bar
of each of the newest ``bars_per_symbol`` rows of its window (``schemas.links.BarWindow``), as the processors build
those rows: every bar a row, or session-aligned 15m/1h buckets, or whole sessions, of the symbol's own market
(``core.sessions``).

Pure: the caller reads the bars (``fetch_limit`` says how many of a symbol's newest bars can matter at most).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from core.sessions import SESSION_MINUTES, Market, market_of, next_close, session_label, session_open
from core.units import NS_PER_MINUTE
from schemas.links import BarWindow

SESSION_SLOTS = 2048
"""Buckets per session label, as ``streams.patterns.processor`` numbers intraday rows."""


@dataclass(frozen=True)
class Bar:
    """One bar as the bars table holds it, with where it is in the log (partition and event id when known)."""

    symbol: str
    start_ns: int
    end_ns: int
    asset_class: str
    close: float
    offset: int
    partition: int | None = None
    event_id: str | None = None


def minutes_of(timeframe: str) -> int | None:
    """Minutes of an intraday timeframe (``1m``, ``15m``, ``1h``); None for sessions (``1d``)."""
    if timeframe.endswith("d"):
        return None
    number, unit = timeframe[:-1], timeframe[-1]
    if not number.isdigit() or unit not in "mh":
        raise ValueError(f"timeframe {timeframe!r} is not N m, N h or 1d")
    return int(number) * (60 if unit == "h" else 1)


def market(asset_class: str) -> Market:
    """The symbol's session calendar; an unknown asset class counts as an equity, as the processors count it."""
    return market_of(asset_class if asset_class in ("EQUITY", "FX", "FUTURE") else "EQUITY")


def fetch_limit(window: BarWindow, asset_class: str) -> int:
    """How many of a symbol's newest bars (of ``window.interval``, before ``as_of_ns``, regular-session ones only when
    the window says so) can hold its rows: one bar a minute at most, plus a row still forming."""
    if window.timeframe == window.interval:
        return window.bars_per_symbol
    minutes = minutes_of(window.timeframe) or SESSION_MINUTES[market(asset_class)]
    step = minutes_of(window.interval) or SESSION_MINUTES[market(asset_class)]
    return (window.bars_per_symbol + 1) * max(1, minutes // step)


def window_bars(window: BarWindow, bars: Iterable[Bar]) -> list[Bar]:
    """Of one symbol's bars (any order), the closing bar of each of the window's newest rows, oldest first."""
    found = sorted((b for b in bars if b.start_ns < window.as_of_ns), key=lambda b: b.start_ns)
    if not found:
        return []
    every_bar = window.timeframe == window.interval and not window.regular_session
    return (found if every_bar else _rows(window, found))[-window.bars_per_symbol :]


def _rows(window: BarWindow, bars: list[Bar]) -> list[Bar]:
    """The last bar of each row the processors would form, oldest first."""
    calendar = market(bars[-1].asset_class)
    starts = np.array([b.start_ns for b in bars], dtype=np.int64)
    days = session_label(calendar, starts)
    minutes = minutes_of(window.timeframe)
    if window.timeframe == window.interval:
        return [b for b, day in zip(bars, days.tolist(), strict=True) if day >= 0]
    if minutes is None:
        labels = days
    else:
        opens = session_open(calendar, starts)
        labels = np.where(days >= 0, days * SESSION_SLOTS + (starts - opens) // (minutes * NS_PER_MINUTE), -1)
    closing: dict[int, Bar] = {}
    for bar, label in zip(bars, labels.tolist(), strict=True):
        if label >= 0:
            closing[label] = bar  # in time order: the last one stays
    chosen = sorted(closing.items())
    if window.whole_rows:
        chosen = [(label, bar) for label, bar in chosen if _whole(calendar, bar, label, minutes, window.as_of_ns)]
    return [bar for _, bar in chosen]


def _whole(calendar: Market, bar: Bar, label: int, minutes: int | None, as_of_ns: int) -> bool:
    """Whether the row of ``bar`` was complete at ``as_of_ns`` as a pattern scan sees it: a bucket that ended by then
    (at most at its session's close); a session that closed before it (the session of ``as_of_ns - 1`` is the one
    still forming, even when it closes at ``as_of_ns``)."""
    close = next_close(calendar, bar.start_ns)
    if minutes is None:
        return close < as_of_ns
    opened = int(session_open(calendar, np.array([bar.start_ns], dtype=np.int64))[0])
    slot = label % SESSION_SLOTS
    return min(opened + (slot + 1) * minutes * NS_PER_MINUTE, close) <= as_of_ns
