"""A task's history on the timeframes discovery backtests: minute bars become session-aligned 15-minute and
hourly bars of the regular session; daily bars stay daily and become weekly. Each history knows its bars per
year (from the market's sessions, never a constant) and maps every bar to the task's coarsest bar, the grid on
which trials of different timeframes are compared. Pure: numpy and the session calendars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.sessions import SESSION_MINUTES, SESSIONS_PER_YEAR, Market, regular_session_mask, session_label, session_open
from core.units import NS_PER_DAY, NS_PER_MINUTE
from streams.discovery.search import History
from streams.strategies.base import Bars

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]

SESSION_SLOTS = 2048
"""An intraday bar's label: its session's day times this, plus its bucket within the session."""

MINUTES_OF = {"1m": 1, "15m": 15, "1h": 60, "1d": 0, "1w": 0}
TIMEFRAMES = {"1m": ("1m", "15m", "1h"), "1d": ("1d", "1w")}
"""The timeframes a task's variants run on, by the interval of the history it reads."""


class NotEnoughHistory(ValueError):
    """The history cannot support a task (too few bars, no regular session, a symbol that never printed)."""


@dataclass(frozen=True)
class Table:
    """Bars of a task's symbols on one base interval: start times (T,), closes and volumes (T, L), NaN where a symbol
    did not print."""

    interval: str
    starts: Int64
    closes: Float64
    volumes: Float64


def _last_per_label(labels: Int64, values: Float64, how: str) -> tuple[Int64, Float64]:
    """One row per distinct label (labels sorted): the last finite value of each column, or the sum."""
    unique, first = np.unique(labels, return_index=True)
    if how == "sum":
        return unique, np.add.reduceat(np.nan_to_num(values), first, axis=0)
    carried = forward_fill(values)
    last = np.concatenate([first[1:], [labels.size]]) - 1
    return unique, carried[last]


def forward_fill(values: Float64) -> Float64:
    """Each column's last finite value carried over the NaNs after it (NaN before its first)."""
    rows = np.arange(values.shape[0])[:, None]
    index = np.maximum.accumulate(np.where(np.isfinite(values), rows, -1), axis=0)
    out: Float64 = np.where(index >= 0, np.take_along_axis(values, np.maximum(index, 0), axis=0), np.nan)
    return out


def _labels(table: Table, market: Market, timeframe: str) -> Int64:
    minutes = MINUTES_OF[timeframe]
    if table.interval == "1m":
        day = session_label(market, table.starts)
        slot = (table.starts - session_open(market, table.starts)) // (minutes * NS_PER_MINUTE)
        return day * SESSION_SLOTS + slot
    day = table.starts // NS_PER_DAY
    return day if timeframe == "1d" else (day + 3) // 7  # 1970-01-01 was a Thursday: weeks start on Monday


def _bars_per_year(market: Market, timeframe: str) -> float:
    minutes = MINUTES_OF[timeframe]
    if minutes:
        return SESSIONS_PER_YEAR[market] * -(-SESSION_MINUTES[market] // minutes)
    return SESSIONS_PER_YEAR[market] / (1 if timeframe == "1d" else 5)


def histories(table: Table, market: Market, cost_per_unit: float) -> list[History]:
    """The task's histories, finest timeframe first, each with its bars' indexes on the coarsest one's grid."""
    if table.interval not in TIMEFRAMES:
        raise NotEnoughHistory(f"discovery reads 1m or 1d bars, not {table.interval}")
    if table.interval == "1m":
        regular = regular_session_mask(market, table.starts)
        table = Table(table.interval, table.starts[regular], table.closes[regular], table.volumes[regular])
    if table.starts.size == 0:
        raise NotEnoughHistory("no bar of the history lies in a regular session")
    never = np.flatnonzero(~np.isfinite(table.closes).any(axis=0))
    if never.size:
        raise NotEnoughHistory(f"leg(s) {never.tolist()} have no close in the history")
    names = TIMEFRAMES[table.interval]
    coarse = _labels(table, market, names[-1])
    coarse_rows = np.unique(coarse)
    out = []
    for name in names:
        labels = _labels(table, market, name)
        rows, closes = _last_per_label(labels, table.closes, "last")
        _, volumes = _last_per_label(labels, table.volumes, "sum")
        if table.interval == "1m":
            day = rows // SESSION_SLOTS
            session_ends = np.concatenate([day[1:] != day[:-1], [True]])
        else:
            session_ends = np.zeros(rows.size, dtype=np.bool_)
        first_minute = np.unique(labels, return_index=True)[1]
        grid = np.searchsorted(coarse_rows, coarse[first_minute])
        bars = Bars(forward_fill(closes), session_ends, _bars_per_year(market, name), volumes)
        out.append(History(name, bars, cost_per_unit, grid.astype(np.int64), int(coarse_rows.size)))
    return out
