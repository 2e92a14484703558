"""The pattern-scan processor: minute bars in, PatternSignalDetected events out, state as bytes.

Bars wait in a pending buffer until the event-time ``SnapshotClock`` (the same market clock as the correlation
processor: the partitions of the configured universe) says no earlier bar can still arrive; they are then applied
to one ``BarGrid`` per (timeframe, market). Only bars of a market's regular session (``core.sessions``) count:
equity pre- and post-market bars and CME's maintenance break never enter a grid. Intraday buckets (1, 15 and 60
minutes) are aligned to each session's open, so the 09:30 open starts an hour and the last bucket of the day is
the short one; daily rows are trading sessions. Every ``SCAN_EVERY_MINUTES`` market minutes (boundary T, epoch
aligned) one scan runs over the bars before T: each (timeframe, market) with a row it has not scanned yet — for
daily bars, a session that has closed by T — contributes a panel of the symbols with a complete window in which
they printed in at least ``min_traded_share`` of the rows (carried-forward closes of an illiquid symbol are runs
of zero returns and then a jump), and the scan's candidates are corrected as one family. A scan is a function of
the bars before T alone, so the events (ids included) are the same whatever the batching, and after a restart.

Bars of partitions outside the clock's set that arrive after their scan only shape later scans.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.costs import DEFAULT_COSTS
from core.events import common_fields, deterministic_event_id
from core.sessions import (
    SESSION_MINUTES,
    SESSIONS_PER_YEAR,
    Market,
    market_of,
    next_close,
    session_label,
    session_open,
)
from core.units import NS_PER_MINUTE
from schemas.bars import ASSET_CLASSES
from streams.correlation.clock import SnapshotClock
from streams.patterns.grid import BarGrid
from streams.patterns.scan import SCAN_TIMEFRAMES, Panel, ScanConfig, Signal, Timeframe, liquid, scan
from streams.processors import BarFrame, Emitted

NAME = "patterns"
SOURCE = "analytics.patterns"
TOPIC = "signals.patterns"
SCHEMA = "tidemark.signals.PatternSignalDetected"
SCAN_EVERY_MINUTES = 60
_STATE_VERSION = 2

TRADED_CLASSES = ("EQUITY", "FX", "FUTURE")
"""Grids are per market: ``ASSET_CLASSES`` minus UNKNOWN, which is treated as an equity (see BarFrame)."""
_MARKET_OF_CLASS = np.array([0, 0, 1, 2], dtype=np.int8)  # ASSET_CLASSES index -> TRADED_CLASSES index
assert tuple(ASSET_CLASSES[1:]) == TRADED_CLASSES
_SESSIONS: tuple[Market, ...] = tuple(market_of(m) for m in TRADED_CLASSES)
DEFAULT_CLASS_COSTS = tuple(DEFAULT_COSTS[m].per_unit for m in TRADED_CLASSES)
# An intraday row's label is its session's day times this, plus its bucket within the session (< 1440 minutes).
SESSION_SLOTS = 2048


def buckets_per_session(timeframe: Timeframe, market: int) -> int:
    """Rows of one regular session of ``TRADED_CLASSES[market]``: its session-aligned buckets (the last may be
    short), or 1 for daily rows."""
    if timeframe.minutes == 0:
        return 1
    return -(-SESSION_MINUTES[_SESSIONS[market]] // timeframe.minutes)


def bars_per_year(timeframe: Timeframe, market: int) -> float:
    """Rows per year, for annualising: sessions times the rows of one."""
    return SESSIONS_PER_YEAR[_SESSIONS[market]] * buckets_per_session(timeframe, market)


def _forming(market: Market, timeframe: Timeframe, boundary_ns: int) -> int:
    """Label of the row still forming at the boundary, -1 if none: the session in progress for daily rows, the
    bucket in progress (ending after the boundary, before its session's close) for intraday ones."""
    before = np.array([boundary_ns - 1], dtype=np.int64)
    day = int(session_label(market, before)[0])
    if day < 0 or timeframe.minutes == 0:
        return day
    opened = int(session_open(market, before)[0])
    bucket_ns = timeframe.minutes * NS_PER_MINUTE
    slot = (boundary_ns - 1 - opened) // bucket_ns
    ends = min(opened + (slot + 1) * bucket_ns, next_close(market, boundary_ns - 1))
    return day * SESSION_SLOTS + slot if ends > boundary_ns else -1


@dataclass
class _Symbols:
    """Symbol ids in arrival order, each with its market and its column in that market's grids."""

    names: list[str] = field(default_factory=list)
    market: list[int] = field(default_factory=list)
    column: list[int] = field(default_factory=list)
    per_market: list[list[int]] = field(default_factory=lambda: [[] for _ in TRADED_CLASSES])

    def ids(self, symbols: npt.NDArray[np.object_], asset_class: npt.NDArray[np.int8] | None) -> npt.NDArray[np.intp]:
        """Id of each bar's symbol, registering new ones (one dict look-up per distinct symbol of the batch)."""
        unique, first, inverse = np.unique(symbols.astype(str), return_index=True, return_inverse=True)
        known = {name: i for i, name in enumerate(self.names)}
        classes = np.ones(len(symbols), dtype=np.int8) if asset_class is None else asset_class
        out = np.empty(unique.size, dtype=np.intp)
        for k, (name, row) in enumerate(zip(unique.tolist(), first.tolist(), strict=True)):
            if name not in known:
                market = int(_MARKET_OF_CLASS[int(classes[row])])
                known[name] = len(self.names)
                self.names.append(name)
                self.market.append(market)
                self.column.append(len(self.per_market[market]))
                self.per_market[market].append(known[name])
            out[k] = known[name]
        return out[inverse.reshape(-1)]


class PatternProcessor:
    name = NAME

    def __init__(
        self,
        watched_partitions: frozenset[int],
        config: ScanConfig = ScanConfig(),
        costs: tuple[float, ...] = DEFAULT_CLASS_COSTS,
        timeframes: tuple[Timeframe, ...] = SCAN_TIMEFRAMES,
        every_minutes: int = SCAN_EVERY_MINUTES,
    ) -> None:
        """``costs``: cost per unit of notional traded of each of ``TRADED_CLASSES`` (``CostModel.per_unit``)."""
        if len(costs) != len(TRADED_CLASSES):
            raise ValueError(f"one cost per traded class {TRADED_CLASSES}, got {costs}")
        self.costs = costs
        self.config = config
        self.timeframes = timeframes
        self.clock = SnapshotClock(every_ns=every_minutes * NS_PER_MINUTE, partitions=watched_partitions)
        self.symbols = _Symbols()
        # Daily grids keep one row more: the session still in progress.
        self.grids = [[BarGrid(tf.window + 1 + (tf.minutes == 0)) for _ in TRADED_CLASSES] for tf in timeframes]
        self.scanned = np.full((len(timeframes), len(TRADED_CLASSES)), np.iinfo(np.int64).min, dtype=np.int64)
        self._pending_id = np.empty(0, dtype=np.intp)
        self._pending_start = np.empty(0, dtype=np.int64)
        self._pending_close = np.empty(0, dtype=np.float64)

    def process(self, bars: BarFrame) -> list[Emitted]:
        self.clock.observe(bars.partition, bars.start_ns)
        usable = np.isfinite(bars.close) & (bars.close > 0)
        classes = None if bars.asset_class is None else bars.asset_class[usable]
        ids = self.symbols.ids(bars.symbol[usable], classes)
        self._pending_id = np.concatenate([self._pending_id, ids])
        self._pending_start = np.concatenate([self._pending_start, bars.start_ns[usable]])
        self._pending_close = np.concatenate([self._pending_close, bars.close[usable]])
        emitted: list[Emitted] = []
        for boundary in self.clock.due():
            self._apply_before(boundary)
            emitted += self._scan(boundary)
            self.clock.last_boundary_ns = boundary
        watermark = self.clock.watermark_ns()
        if watermark is not None and self.clock.last_boundary_ns is not None:
            # Final: no bar before the watermark can still come from a watched partition, and the next boundary
            # lies beyond it, so applying these now cannot change what any scan sees.
            self._apply_before(watermark)
        return emitted

    def _apply_before(self, boundary_ns: int) -> None:
        ready = self._pending_start < boundary_ns
        if not ready.any():
            return
        order = np.argsort(self._pending_start[ready], kind="stable")
        ids = self._pending_id[ready][order]
        start = self._pending_start[ready][order]
        close = self._pending_close[ready][order]
        keep = ~ready
        self._pending_id, self._pending_start, self._pending_close = (
            self._pending_id[keep],
            self._pending_start[keep],
            self._pending_close[keep],
        )
        market = np.asarray(self.symbols.market, dtype=np.int8)[ids]
        column = np.asarray(self.symbols.column, dtype=np.intp)[ids]
        for m in range(len(TRADED_CLASSES)):
            mine = np.flatnonzero(market == m)
            if not mine.size:
                continue
            days = session_label(_SESSIONS[m], start[mine])
            into_session = start[mine] - session_open(_SESSIONS[m], start[mine])
            for t, tf in enumerate(self.timeframes):
                labels = days * SESSION_SLOTS + into_session // (tf.minutes * NS_PER_MINUTE) if tf.minutes else days
                valid = days >= 0
                grid = self.grids[t][m]
                grid.grow(len(self.symbols.per_market[m]))
                grid.apply(labels[valid], column[mine][valid], close[mine][valid])

    def _panels(self, boundary_ns: int) -> list[Panel]:
        """One panel per (timeframe, market) with an unscanned complete row; marks those rows scanned."""
        panels = []
        for t, tf in enumerate(self.timeframes):
            for m, market in enumerate(TRADED_CLASSES):
                grid = self.grids[t][m]
                end = grid.labels.size
                if end:
                    end -= int(grid.labels[-1] == _forming(_SESSIONS[m], tf, boundary_ns))
                if end == 0 or grid.labels[end - 1] <= self.scanned[t, m]:
                    continue
                self.scanned[t, m] = grid.labels[end - 1]
                rows = tf.window + 1
                closes = grid.window(rows, end)
                if closes.shape[0] < rows:
                    continue
                enough = liquid(grid.traded(rows, end), self.config.min_traded_share)
                usable = np.flatnonzero((closes > 0).all(axis=0) & enough)
                names = np.array([self.symbols.names[i] for i in self.symbols.per_market[m]], dtype=object)
                order = usable[np.argsort(names[usable].astype(str), kind="stable")]
                session = grid.labels[end - rows : end] // SESSION_SLOTS if tf.minutes else None
                if order.size:
                    panel = Panel(
                        tf, market, names[order], closes[:, order], bars_per_year(tf, m), self.costs[m], session
                    )
                    panels.append(panel)
        return panels

    def _scan(self, boundary_ns: int) -> list[Emitted]:
        panels = self._panels(boundary_ns)
        if not panels:
            return []
        return [signal_event(signal, boundary_ns) for signal in scan(panels, self.config).signals()]

    def to_bytes(self) -> bytes:
        meta = {
            "version": _STATE_VERSION,
            "timeframes": [list(_timeframe_key(tf)) for tf in self.timeframes],
            "every_ns": self.clock.every_ns,
            "partitions": sorted(self.clock.partitions),
            "high_ns": self.clock.high_ns,
            "low_ns": self.clock.low_ns,
            "last_boundary_ns": self.clock.last_boundary_ns,
            "symbols": self.symbols.names,
            "market": self.symbols.market,
        }
        arrays: dict[str, npt.NDArray[Any]] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "scanned": self.scanned,
            "pending_id": self._pending_id.astype(np.int32),
            "pending_start": self._pending_start,
            "pending_close": self._pending_close,
        }
        for t, row in enumerate(self.grids):
            for m, grid in enumerate(row):
                arrays[f"labels_{t}_{m}"] = grid.labels
                arrays[f"closes_{t}_{m}"] = _pack(grid.closes)
                arrays[f"base_{t}_{m}"] = grid.base
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        config: ScanConfig = ScanConfig(),
        costs: tuple[float, ...] = DEFAULT_CLASS_COSTS,
        timeframes: tuple[Timeframe, ...] = SCAN_TIMEFRAMES,
    ) -> PatternProcessor:
        """Rebuild a processor; ValueError when the state is of another version or other timeframes.

        The state is bars and clocks only, so the scan's configuration and costs may change between runs.
        """
        try:
            arrays = np.load(io.BytesIO(data), allow_pickle=False)
            meta = json.loads(arrays["meta"].tobytes())
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"not a pattern processor state: {exc}") from exc
        if meta.get("version") != _STATE_VERSION:
            raise ValueError(f"pattern state version {meta.get('version')} is not {_STATE_VERSION}")
        if meta["timeframes"] != [list(_timeframe_key(tf)) for tf in timeframes]:
            raise ValueError("the pattern timeframes changed")
        processor = cls(frozenset(meta["partitions"]), config, costs, timeframes, meta["every_ns"] // NS_PER_MINUTE)
        clock = processor.clock
        clock.high_ns = {int(k): v for k, v in meta["high_ns"].items()}
        clock.low_ns = {int(k): v for k, v in meta["low_ns"].items()}
        clock.last_boundary_ns = meta["last_boundary_ns"]
        for name, market in zip(meta["symbols"], meta["market"], strict=True):
            processor.symbols.names.append(name)
            processor.symbols.market.append(market)
            processor.symbols.column.append(len(processor.symbols.per_market[market]))
            processor.symbols.per_market[market].append(len(processor.symbols.names) - 1)
        processor.scanned = arrays["scanned"]
        processor._pending_id = arrays["pending_id"].astype(np.intp)
        processor._pending_start = arrays["pending_start"]
        processor._pending_close = arrays["pending_close"]
        for t, row in enumerate(processor.grids):
            for m, grid in enumerate(row):
                grid.labels = arrays[f"labels_{t}_{m}"]
                grid.base = arrays[f"base_{t}_{m}"]
                grid.closes = _unpack(arrays[f"closes_{t}_{m}"], grid.labels.size, grid.base.size)
        return processor


def _pack(closes: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Byte planes of the float32 closes, zlib level 1: about 0.64 of the raw size at a fraction of deflate's time
    (the state is written once per batch)."""
    planes = np.ascontiguousarray(closes).view(np.uint8).reshape(-1, 4).T.tobytes()
    return np.frombuffer(zlib.compress(planes, 1), dtype=np.uint8)


def _unpack(packed: npt.NDArray[np.uint8], rows: int, columns: int) -> npt.NDArray[np.float32]:
    planes = np.frombuffer(zlib.decompress(packed.tobytes()), dtype=np.uint8).reshape(4, -1)
    return np.ascontiguousarray(planes.T).view(np.float32).reshape(rows, columns)


def _timeframe_key(tf: Timeframe) -> tuple[str, int, int, int, int, int]:
    return (tf.name, tf.minutes, tf.window, tf.adf_lags, tf.vr_q, tf.lookback)


def signal_event(signal: Signal, as_of_ns: int) -> Emitted:
    """The event of one signal; its id derives from (family, symbols, timeframe, window, as_of)."""
    key = ",".join(signal.symbols)
    event_id = deterministic_event_id(SOURCE, signal.family, key, signal.timeframe, signal.window_bars, as_of_ns)
    event = {
        **common_fields(SOURCE, as_of_ns, event_id=event_id),
        "pattern_family": signal.family,
        "direction": signal.direction,
        "symbols": list(signal.symbols),
        "timeframe": signal.timeframe,
        "window_bars": signal.window_bars,
        "as_of_ns": as_of_ns,
        "test": signal.test,
        "statistic": signal.statistic,
        "p_value": signal.p_value,
        "adjusted_p_value": signal.adjusted_p_value,
        "correction": signal.correction,
        "tests_in_family": signal.tests_in_family,
        "significance": signal.significance,
        "sharpe": signal.sharpe,
        "sharpe_se": signal.sharpe_se,
        "psr": signal.psr,
        "deflated_sharpe": signal.dsr,
        "half_life": signal.half_life,
        "hurst": signal.hurst,
        "params": signal.params,
    }
    return Emitted(TOPIC, key.encode(), SCHEMA, event)
