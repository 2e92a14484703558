"""The rolling-statistics processor as pure logic: bars in, deterministic multi-timeframe snapshots out, state as bytes.

It composes the event-time ``SnapshotClock`` with two ``RollingWindow`` kernels: one of minute closes (its longest
minute window; shorter windows are its tail) and one of daily closes (the last close of each symbol's trading
session, by session label). Universe bars wait in a pending buffer until the clock says every bar before a
boundary has arrived; then exactly the bars before the boundary are applied and the snapshots are taken.

Sessions. Minute snapshots are taken at a boundary only when an in-session universe bar arrived since the previous
one (the markets are open); daily snapshots at the first boundary after one of the universe's markets closed a
session. Mixed universes (equities, CME futures, FX) are handled pairwise-complete: a symbol's minute return counts
only when both of its closes lie in the same regular session of its own market (no overnight gaps, no zero returns
from carrying a closed market's price through another market's hours), a daily return only on a trading day of its
market (a holiday carries the close to the next trading day). Each pair is correlated over the returns both have,
so SPY against EURUSD uses the New York hours both trade, and nothing is split into per-market universes.
A symbol enters a window's matrix with at least ``min_coverage`` of the window's returns.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.sessions import Market, market_of, next_close, session_label
from core.units import NS_PER_DAY, NS_PER_MINUTE
from schemas.bars import ASSET_CLASSES
from streams.correlation.clock import SnapshotClock
from streams.correlation.rolling import CorrelationSnapshot, RollingWindow, SymbolStats

_STATE_VERSION = 2
BARS_PER_YEAR_1M = 252 * 390.0
"""Annualisation of minute-bar statistics: a 252-day, 6.5-hour equity year."""
WINDOW_TIMEFRAMES = ("1m", "1d")
CALENDARS = (Market.NYSE, Market.CME, Market.FX)
_NO_TIME = np.iinfo(np.int64).min
# Every market's session of trading day D contains 15:00 UTC of D (NYSE 13:30/14:30-20:00/21:00, CME until 16:00
# Chicago, FX until 17:00 New York): probing it tells whether a market traded on D.
_DAY_PROBE_NS = 15 * 3_600_000_000_000


def _class_markets() -> npt.NDArray[np.int8]:
    """Market index (into ``CALENDARS``) per asset-class index; -1 for a class without a calendar."""
    table = np.full(len(ASSET_CLASSES), -1, np.int8)
    for i, name in enumerate(ASSET_CLASSES):
        try:
            table[i] = CALENDARS.index(market_of(name))
        except ValueError:
            continue
    return table


_CLASS_MARKET = _class_markets()


@dataclass(frozen=True, slots=True)
class Window:
    """One rolling window: ``bars`` returns of ``timeframe`` ("1m" or "1d") bars."""

    timeframe: str
    bars: int

    def __post_init__(self) -> None:
        if self.timeframe not in WINDOW_TIMEFRAMES:
            raise ValueError(f"timeframe {self.timeframe!r} is not one of {WINDOW_TIMEFRAMES}")
        if self.bars < 2:
            raise ValueError("a window needs at least 2 returns")

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"1m:60"`` -> 60 one-minute returns."""
        timeframe, _, bars = text.partition(":")
        if not bars.isdigit():
            raise ValueError(f"window {text!r} is not TIMEFRAME:BARS, e.g. 1m:60 or 1d:21")
        return cls(timeframe.strip(), int(bars))

    def __str__(self) -> str:
        return f"{self.timeframe}:{self.bars}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One window's snapshot at a boundary; ``stats`` only for minute windows."""

    boundary_ns: int
    timeframe: str
    stats: SymbolStats | None
    correlation: CorrelationSnapshot


class RollingProcessor:
    def __init__(
        self,
        universe: Sequence[str],
        windows: Sequence[Window],
        every_minutes: int,
        watched_partitions: frozenset[int],
        min_coverage: float = 1.0,
    ) -> None:
        if not windows:
            raise ValueError("at least one window")
        if not 0 < min_coverage <= 1:
            raise ValueError("min_coverage must be in (0, 1]")
        self.universe = tuple(universe)
        self.windows = tuple(windows)
        self.min_coverage = min_coverage
        minute = [w.bars for w in windows if w.timeframe == "1m"]
        daily = [w.bars for w in windows if w.timeframe == "1d"]
        self.minute = RollingWindow(self.universe, max(minute)) if minute else None
        self.daily = RollingWindow(self.universe, max(daily), bar_ns=NS_PER_DAY) if daily else None
        self.clock = SnapshotClock(every_ns=every_minutes * NS_PER_MINUTE, partitions=watched_partitions)
        self._column = {symbol: i for i, symbol in enumerate(self.universe)}
        self._market = np.full(len(self.universe), -1, np.int8)
        self._daily_last_ns = np.full(len(self.universe), _NO_TIME, np.int64)
        self._pending_column = np.empty(0, dtype=np.intp)
        self._pending_start = np.empty(0, dtype=np.int64)
        self._pending_close = np.empty(0, dtype=np.float64)
        self._minute_fresh = 0
        self._daily_fresh = 0

    def process(
        self,
        partition: npt.NDArray[np.int32],
        symbol: npt.NDArray[np.object_],
        start_ns: npt.NDArray[np.int64],
        close: npt.NDArray[np.float64],
        asset_class: npt.NDArray[np.int8] | None = None,
    ) -> list[Snapshot]:
        """Take one batch of bars from any symbols and partitions; return the snapshots it completes."""
        self.clock.observe(partition, start_ns)
        column = np.fromiter((self._column.get(s, -1) for s in symbol.tolist()), np.intp, len(symbol))
        member = column >= 0
        if asset_class is not None:
            market = _CLASS_MARKET[asset_class[member]]
            known = market >= 0
            self._market[column[member][known]] = market[known]
        self._pending_column = np.concatenate([self._pending_column, column[member]])
        self._pending_start = np.concatenate([self._pending_start, start_ns[member]])
        self._pending_close = np.concatenate([self._pending_close, close[member]])
        if self.clock.last_boundary_ns is not None:
            # Late or redelivered bars: they only shape later snapshots and never cause one by themselves.
            self._apply_before(self.clock.last_boundary_ns, fresh=False)
        snapshots: list[Snapshot] = []
        for boundary in self.clock.due():
            self._apply_before(boundary)
            snapshots += self._snapshots(boundary)
            self.clock.last_boundary_ns = boundary
        return snapshots

    def _apply_before(self, boundary_ns: int, fresh: bool = True) -> None:
        ready = self._pending_start < boundary_ns
        if not ready.any():
            return
        order = np.argsort(self._pending_start[ready], kind="stable")
        column = self._pending_column[ready][order]
        start = self._pending_start[ready][order]
        close = self._pending_close[ready][order]
        keep = ~ready
        self._pending_column = self._pending_column[keep]
        self._pending_start = self._pending_start[keep]
        self._pending_close = self._pending_close[keep]
        usable = np.isfinite(close) & (close > 0)
        column, start, close = column[usable], start[usable], close[usable]
        labels = self._labels(column, start)
        if self.minute is not None:
            self.minute.update_columns(column, start, close)
            if fresh:
                self._minute_fresh += int(np.count_nonzero(labels >= 0))
        if self.daily is not None:
            # A day's close is its latest bar: an older bar (redelivered, late) never replaces a newer one.
            take = (labels >= 0) & (start > self._daily_last_ns[column])
            if take.any():
                self.daily.update_columns(column[take], labels[take] * NS_PER_DAY, close[take])
                np.maximum.at(self._daily_last_ns, column[take], start[take])
                if fresh:
                    self._daily_fresh += int(np.count_nonzero(take))

    def _labels(self, column: npt.NDArray[np.intp], start: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Trading day of each bar's session in its market (-1 outside it); the UTC day where the market is unknown."""
        labels = start // NS_PER_DAY
        market = self._market[column]
        for k, name in enumerate(CALENDARS):
            rows = np.flatnonzero(market == k)
            if rows.size:
                labels[rows] = session_label(name, start[rows])
        return labels

    def _min_periods(self, window: Window) -> int:
        return max(2, math.ceil(window.bars * self.min_coverage))

    def _snapshots(self, boundary_ns: int) -> list[Snapshot]:
        snapshots = []
        if self.minute is not None and self._minute_fresh:
            for window in self.windows:
                if window.timeframe == "1m":
                    valid = self._minute_valid(window.bars)
                    minimum = self._min_periods(window)
                    stats = self.minute.stats(BARS_PER_YEAR_1M, window.bars, min_periods=minimum, valid=valid)
                    correlation = self.minute.correlation(window.bars, min_periods=minimum, valid=valid)
                    snapshots.append(Snapshot(boundary_ns, "1m", stats, correlation))
            self._minute_fresh = 0
        if self.daily is not None and self._daily_fresh and self._session_closed(boundary_ns):
            for window in self.windows:
                if window.timeframe == "1d":
                    valid = self._daily_valid(window.bars)
                    minimum = self._min_periods(window)
                    correlation = self.daily.correlation(window.bars, min_periods=minimum, valid=valid)
                    snapshots.append(Snapshot(boundary_ns, "1d", None, correlation))
            self._daily_fresh = 0
        return snapshots

    def _markets(self) -> list[int]:
        return sorted(set(self._market.tolist()))

    def _minute_valid(self, bars: int) -> npt.NDArray[np.bool_] | None:
        """Returns inside one regular session of the symbol's market: both closes in it, no overnight gap."""
        assert self.minute is not None
        times = self.minute.window_times(bars) * NS_PER_MINUTE
        if times.size < 2 or self._markets() == [-1]:
            return None
        valid = np.ones((times.size - 1, len(self.universe)), dtype=np.bool_)
        for k in self._markets():
            if k >= 0:
                label = session_label(CALENDARS[k], times)
                valid[:, self._market == k] = ((label[1:] >= 0) & (label[1:] == label[:-1]))[:, None]
        return valid

    def _daily_valid(self, bars: int) -> npt.NDArray[np.bool_] | None:
        """Daily returns on the trading days of the symbol's market."""
        assert self.daily is not None
        days = self.daily.window_times(bars)
        if days.size < 2 or self._markets() == [-1]:
            return None
        valid = np.ones((days.size - 1, len(self.universe)), dtype=np.bool_)
        for k in self._markets():
            if k >= 0:
                traded = session_label(CALENDARS[k], days * NS_PER_DAY + _DAY_PROBE_NS) == days
                valid[:, self._market == k] = traded[1:, None]
        return valid

    def _session_closed(self, boundary_ns: int) -> bool:
        """Whether one of the universe's markets closed a session in (previous boundary, boundary]."""
        previous = boundary_ns - self.clock.every_ns
        for k in self._markets():
            if k < 0 and boundary_ns // NS_PER_DAY > previous // NS_PER_DAY:
                return True
            if k >= 0 and next_close(CALENDARS[k], previous) <= boundary_ns:
                return True
        return False

    def to_bytes(self) -> bytes:
        meta = {
            "version": _STATE_VERSION,
            "universe": self.universe,
            "windows": [str(w) for w in self.windows],
            "min_coverage": self.min_coverage,
            "every_ns": self.clock.every_ns,
            "partitions": sorted(self.clock.partitions),
            "high_ns": self.clock.high_ns,
            "low_ns": self.clock.low_ns,
            "last_boundary_ns": self.clock.last_boundary_ns,
            "minute_fresh": self._minute_fresh,
            "daily_fresh": self._daily_fresh,
        }
        empty = np.empty(0, np.uint8)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            minute=np.frombuffer(self.minute.to_bytes(), dtype=np.uint8) if self.minute else empty,
            daily=np.frombuffer(self.daily.to_bytes(), dtype=np.uint8) if self.daily else empty,
            market=self._market,
            daily_last_ns=self._daily_last_ns,
            pending_column=self._pending_column.astype(np.int64),
            pending_start=self._pending_start,
            pending_close=self._pending_close,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RollingProcessor:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        meta = json.loads(arrays["meta"].tobytes())
        if meta["version"] != _STATE_VERSION:
            raise ValueError(f"rolling processor state version {meta['version']} is not {_STATE_VERSION}")
        windows = [Window.parse(w) for w in meta["windows"]]
        processor = cls(meta["universe"], windows, 1, frozenset(meta["partitions"]), meta["min_coverage"])
        processor.clock = SnapshotClock(
            every_ns=meta["every_ns"],
            partitions=frozenset(meta["partitions"]),
            high_ns={int(k): v for k, v in meta["high_ns"].items()},
            low_ns={int(k): v for k, v in meta["low_ns"].items()},
            last_boundary_ns=meta["last_boundary_ns"],
        )
        if processor.minute is not None:
            processor.minute = RollingWindow.from_bytes(arrays["minute"].tobytes())
        if processor.daily is not None:
            processor.daily = RollingWindow.from_bytes(arrays["daily"].tobytes())
        processor._market = arrays["market"]
        processor._daily_last_ns = arrays["daily_last_ns"]
        processor._pending_column = arrays["pending_column"].astype(np.intp)
        processor._pending_start = arrays["pending_start"]
        processor._pending_close = arrays["pending_close"]
        processor._minute_fresh = meta["minute_fresh"]
        processor._daily_fresh = meta["daily_fresh"]
        return processor
