"""Market session calendars: when NYSE, CME Globex and the FX week are open, on UTC nanoseconds.

Each market is a sorted table of non-overlapping sessions ``[open, close)`` with a trading-day label
(days since 1970-01-01), built once per span of years and extended when a time falls outside it; every
query is a ``np.searchsorted`` over that table, so batches of bars are classified without a Python loop.

- ``NYSE``: exchange_calendars ``XNYS`` (holidays, early closes, 09:30-16:00 New York).
- ``CME``: exchange_calendars ``CMES`` for the Globex session dates, holidays and early closes (e.g. 12:00
  Chicago on Thanksgiving and the day after, Labor Day, Christmas Eve); its sessions run 17:00-17:00 Chicago
  back to back, so we end each at 16:00 Chicago on its date (or its earlier early close) to add the daily
  maintenance break. ``us_futures`` runs 18:00-18:00 New York with neither the break nor early closes.
- ``FX``: built here with zoneinfo, because exchange_calendars' ``24/5`` rolls at UTC midnight: one session
  per weekday ``D`` from ``D - 1`` 17:00 to ``D`` 17:00 New York (the FX day and its daily-bar close), so the
  week runs Sunday 17:00 to Friday 17:00 New York. No FX holidays are modelled.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import numpy.typing as npt
import pandas as pd

from core.units import NS_PER_DAY

Int64 = npt.NDArray[np.int64]

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
# A query needs the session after it (next_open/next_close); no market closes longer than this.
_MARGIN_NS = 21 * NS_PER_DAY
# Supported years of query times: labels stay non-negative, and int64 ns ends in 2262.
_FIRST_YEAR, _LAST_YEAR = 1972, 2200


class Market(StrEnum):
    NYSE = "XNYS"
    CME = "CME"
    FX = "FX"


_MARKET_OF = {"EQUITY": Market.NYSE, "FUTURE": Market.CME, "FX": Market.FX}


# For annualising: trading sessions per year, and minutes in one regular session (CME: 23 hours with the break).
SESSIONS_PER_YEAR: dict[Market, float] = {Market.NYSE: 252.0, Market.CME: 260.0, Market.FX: 260.0}
SESSION_MINUTES: dict[Market, int] = {Market.NYSE: 390, Market.CME: 1380, Market.FX: 1440}


def market_of(asset_class: str) -> Market:
    """The session calendar of an asset class as named in ``schemas.bars.ASSET_CLASSES``."""
    try:
        return _MARKET_OF[asset_class]
    except KeyError:
        known = ", ".join(_MARKET_OF)
        raise ValueError(f"no session calendar for asset class {asset_class!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class _Table:
    """Sessions of the years ``first..last``, valid for queries in ``[lo_ns, hi_ns)``."""

    first: int
    last: int
    lo_ns: int
    hi_ns: int
    opens: Int64
    closes: Int64
    labels: Int64  # days since epoch
    edges: Int64  # open0, close0, open1, close1, ...: a time is in a session when it sorts after an odd count

    @classmethod
    def of(cls, first: int, last: int, opens: Int64, closes: Int64, labels: Int64) -> _Table:
        lo = (date(first, 1, 1) - date(1970, 1, 1)).days * NS_PER_DAY + _MARGIN_NS
        hi = (date(last + 1, 1, 1) - date(1970, 1, 1)).days * NS_PER_DAY - _MARGIN_NS
        edges = np.column_stack([opens, closes]).ravel()
        if not (np.diff(edges) >= 0).all() or not (opens < closes).all():
            raise RuntimeError(f"calendar sessions of {first}-{last} overlap or are empty")
        return cls(first, last, lo, hi, opens, closes, labels, edges)


def _ns(index: pd.DatetimeIndex) -> Int64:
    return np.asarray(index.tz_convert("UTC").as_unit("ns").asi8, dtype=np.int64)


def _local_ns(days: pd.DatetimeIndex, hour: int, tz: ZoneInfo) -> Int64:
    """UTC ns of ``hour``:00 local time on each (naive, midnight) day."""
    return _ns((days + pd.Timedelta(hours=hour)).tz_localize(tz))


def _days(index: pd.DatetimeIndex) -> Int64:
    return np.asarray(index.as_unit("ns").asi8 // NS_PER_DAY, dtype=np.int64)


def _exchange(name: str, first: int, last: int) -> tuple[Int64, Int64, pd.DatetimeIndex]:
    with warnings.catch_warnings():  # exchange_calendars 4.13 still reads Series.values, deprecated in pandas 3
        warnings.simplefilter("ignore", pd.errors.Pandas4Warning)
        calendar = xcals.get_calendar(name, start=f"{first}-01-01", end=f"{last}-12-31")
    schedule = calendar.schedule
    labels = pd.DatetimeIndex(schedule.index)
    return _ns(pd.DatetimeIndex(schedule["open"])), _ns(pd.DatetimeIndex(schedule["close"])), labels


def _build(market: Market, first: int, last: int) -> _Table:
    if market is Market.FX:
        days = pd.date_range(f"{first}-01-01", f"{last}-12-31", freq="B")
        opens = _local_ns(days - pd.Timedelta(days=1), 17, NEW_YORK)
        closes = _local_ns(days, 17, NEW_YORK)
    elif market is Market.NYSE:
        opens, closes, days = _exchange("XNYS", first, last)
    else:
        opens, closes, days = _exchange("CMES", first, last)
        closes = np.minimum(closes, _local_ns(days, 16, CHICAGO))
    return _Table.of(first, last, opens, closes, _days(days))


def _year(t_ns: int) -> int:
    return int(np.datetime64(t_ns, "ns").astype("datetime64[Y]").astype(np.int64)) + 1970


_tables: dict[Market, _Table] = {}
_lock = threading.Lock()


def _table(market: Market, t_min: int, t_max: int) -> _Table:
    """The cached table covering ``[t_min, t_max]``, rebuilt over a wider span of years when it does not."""
    table = _tables.get(market)
    if table is not None and table.lo_ns <= t_min and t_max < table.hi_ns:
        return table
    with _lock:
        table = _tables.get(market)
        if table is not None and table.lo_ns <= t_min and t_max < table.hi_ns:
            return table
        year_min, year_max = (_year(t) for t in (t_min, t_max))
        if year_min < _FIRST_YEAR or year_max > _LAST_YEAR:
            bad = t_min if year_min < _FIRST_YEAR else t_max
            raise ValueError(f"time {bad} ns is outside {_FIRST_YEAR}-{_LAST_YEAR}: no session calendar for it")
        year_min, year_max = year_min - 1, year_max + 1  # the margins of _Table reach into the years around
        if table is not None:
            year_min, year_max = min(year_min, table.first), max(year_max, table.last)
        table = _build(market, year_min, year_max)
        _tables[market] = table
        return table


def _edge_index(table: _Table, t: Int64) -> Int64:
    """How many session edges are at or before each time: odd inside session ``index // 2``, even outside.

    At a close that is also the next open (FX), both edges count, so the time is in the next session.
    """
    return np.searchsorted(table.edges, t, side="right")


def _as_times(t_ns: npt.ArrayLike) -> Int64:
    t = np.asarray(t_ns)
    if t.dtype != np.int64:
        raise TypeError(f"times must be int64 UTC nanoseconds, got {t.dtype}")
    return t


def regular_session_mask(market: Market, t_ns: Int64) -> npt.NDArray[np.bool_]:
    """Whether each time lies inside a regular session ``[open, close)``; a bar is regular when its start is."""
    t = _as_times(t_ns)
    if t.size == 0:
        return np.zeros(t.shape, dtype=np.bool_)
    table = _table(market, int(t.min()), int(t.max()))
    return (_edge_index(table, t) & 1).astype(np.bool_)


def _per_session(market: Market, t_ns: Int64, column: Literal["labels", "opens"]) -> Int64:
    """A column of the session table for the session containing each time, -1 outside sessions."""
    t = _as_times(t_ns)
    if t.size == 0:
        return np.zeros(t.shape, dtype=np.int64)
    table = _table(market, int(t.min()), int(t.max()))
    k = _edge_index(table, t)
    values: Int64 = getattr(table, column)
    return np.where(k & 1, values[np.minimum(k // 2, len(values) - 1)], -1)


def session_label(market: Market, t_ns: Int64) -> Int64:
    """Trading day (days since 1970-01-01) of the session containing each time, -1 outside sessions.

    A CME evening or an FX evening after 17:00 New York belongs to the next trading day.
    """
    return _per_session(market, t_ns, "labels")


def session_open(market: Market, t_ns: Int64) -> Int64:
    """Open (UTC ns) of the session containing each time, -1 outside sessions: intraday buckets start there."""
    return _per_session(market, t_ns, "opens")


def is_open(market: Market, t_ns: int) -> bool:
    return bool(regular_session_mask(market, np.array([t_ns], dtype=np.int64))[0])


def next_open(market: Market, t_ns: int) -> int:
    """The first session open strictly after ``t_ns`` (an open at ``t_ns`` itself is not next)."""
    table = _table(market, t_ns, t_ns)
    return int(table.opens[np.searchsorted(table.opens, t_ns, side="right")])


def next_close(market: Market, t_ns: int) -> int:
    """The close of the session containing ``t_ns``, or of the next session when closed (or exactly at a close)."""
    table = _table(market, t_ns, t_ns)
    return int(table.closes[np.searchsorted(table.closes, t_ns, side="right")])
