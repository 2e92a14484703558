"""The currency-strength and sector-rotation processors the analytics host runs: bars in, events out, state as bytes.

Pure: no Kafka, database or Redis code (their factories, which read the settings and the topic layout, are in
``factory.py``).

Both sit on ``AlignedCloses``: the correlation area's event-time ``SnapshotClock`` and ``RollingWindow`` kernel over a
fixed symbol list of one market. Only regular-session bars are applied, and a boundary yields a snapshot only when
such bars arrived since the previous one and the window is full, so nothing is emitted while the market is closed
and every event is a function of the bars alone (same ids and values whatever the batching, or after a restart).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from core.events import alert_record, common_fields, deterministic_event_id
from core.sessions import Market, regular_session_mask
from core.units import NS_PER_MINUTE
from streams.correlation.clock import SnapshotClock
from streams.correlation.rolling import RollingWindow
from streams.processors import BarFrame, Emitted
from streams.rotation.sectors import (
    QUADRANTS,
    SPDR_SECTORS,
    UNKNOWN,
    Rotation,
    RotationSignal,
    confirmed_quadrants,
    relative_rotation,
    rotation_signals,
)
from streams.rotation.strength import basket_of, currency_strength, pair_log_returns

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
Int8 = npt.NDArray[np.int8]
Objects = npt.NDArray[np.object_]

TIMEFRAME = "1m"
STRENGTH_SOURCE = "analytics.currency_strength"
ROTATION_SOURCE = "analytics.sector_rotation"
STRENGTH_SCHEMA = "tidemark.analytics.CurrencyStrengthComputed"
ROTATION_SCHEMA = "tidemark.analytics.SectorRotationComputed"
ALERT_SCHEMA = "tidemark.risk.AlertRaised"
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Window:
    """Carried-forward closes (rows: the last ``bars + 1`` grid times, columns: the symbols) as of ``as_of_ns``."""

    as_of_ns: int
    closes: Float64


class AlignedCloses:
    """Closes of ``symbols`` on their market-time grid, handed out at each snapshot boundary the clock releases.

    Member bars wait in a pending buffer until every watched partition has passed a boundary; then exactly the
    bars before it are applied (late and redelivered bars are idempotent in the window) and, when new bars came in
    since the previous snapshot and the window is full, its closes are returned.
    """

    def __init__(
        self, symbols: Sequence[str], bars: int, every_ns: int, watched: frozenset[int], market: Market
    ) -> None:
        self.symbols = tuple(symbols)
        self.bars = bars
        self.market = market
        self.grid = RollingWindow(self.symbols, bars)
        self.clock = SnapshotClock(every_ns=every_ns, partitions=watched)
        self._members = frozenset(self.symbols)
        self._pending_symbol: Objects = np.empty(0, dtype=object)
        self._pending_start: Int64 = np.empty(0, dtype=np.int64)
        self._pending_close: Float64 = np.empty(0, dtype=np.float64)
        self._fresh = 0

    def advance(self, frame: BarFrame) -> list[Window]:
        self.clock.observe(frame.partition, frame.start_ns)
        member = np.fromiter((s in self._members for s in frame.symbol.tolist()), dtype=np.bool_, count=len(frame))
        member[member] = regular_session_mask(self.market, frame.start_ns[member])
        self._pending_symbol = np.concatenate([self._pending_symbol, frame.symbol[member]])
        self._pending_start = np.concatenate([self._pending_start, frame.start_ns[member]])
        self._pending_close = np.concatenate([self._pending_close, frame.close[member]])
        if self.clock.last_boundary_ns is not None:
            # Late or redelivered bars only shape later snapshots; they never cause one by themselves.
            self._apply_before(self.clock.last_boundary_ns, fresh=False)
        windows = []
        for boundary in self.clock.due():
            self._apply_before(boundary)
            if self._fresh and self.grid.latest_ns is not None:
                as_of, closes = self._closes()
                if closes.shape[0] == self.bars + 1:
                    windows.append(Window(as_of, closes))
                self._fresh = 0
            self.clock.last_boundary_ns = boundary
        return windows

    def _closes(self) -> tuple[int, Float64]:
        # The kernel's aligned, carried-forward closes; RollingWindow has no public accessor for them (yet).
        _, as_of, closes, _ = self.grid._window(None)
        assert as_of is not None
        return as_of, closes

    def _apply_before(self, boundary_ns: int, fresh: bool = True) -> None:
        ready = self._pending_start < boundary_ns
        if not ready.any():
            return
        order = np.argsort(self._pending_start[ready], kind="stable")
        result = self.grid.update(
            self._pending_symbol[ready][order], self._pending_start[ready][order], self._pending_close[ready][order]
        )
        if fresh:
            self._fresh += result.applied
        keep = ~ready
        self._pending_symbol = self._pending_symbol[keep]
        self._pending_start = self._pending_start[keep]
        self._pending_close = self._pending_close[keep]

    def config(self) -> tuple[Any, ...]:
        """What the state depends on: a restored state with another configuration is not valid."""
        return self.symbols, self.bars, str(self.market), self.clock.every_ns, self.clock.partitions

    def meta(self) -> dict[str, Any]:
        return {
            "symbols": self.symbols,
            "bars": self.bars,
            "market": str(self.market),
            "every_ns": self.clock.every_ns,
            "partitions": sorted(self.clock.partitions),
            "high_ns": self.clock.high_ns,
            "low_ns": self.clock.low_ns,
            "last_boundary_ns": self.clock.last_boundary_ns,
            "fresh": self._fresh,
        }

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "grid": np.frombuffer(self.grid.to_bytes(), dtype=np.uint8),
            "pending_symbol": np.asarray(self._pending_symbol.tolist(), dtype=str),
            "pending_start": self._pending_start,
            "pending_close": self._pending_close,
        }

    @classmethod
    def restore(cls, meta: dict[str, Any], arrays: Any) -> AlignedCloses:
        watched = frozenset(meta["partitions"])
        state = cls(meta["symbols"], meta["bars"], meta["every_ns"], watched, Market(meta["market"]))
        state.clock.high_ns = {int(k): v for k, v in meta["high_ns"].items()}
        state.clock.low_ns = {int(k): v for k, v in meta["low_ns"].items()}
        state.clock.last_boundary_ns = meta["last_boundary_ns"]
        state._fresh = meta["fresh"]
        state.grid = RollingWindow.from_bytes(arrays["grid"].tobytes())
        state._pending_symbol = arrays["pending_symbol"].astype(object)
        state._pending_start = arrays["pending_start"]
        state._pending_close = arrays["pending_close"]
        return state


def _pack(meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    header = np.frombuffer(json.dumps({"version": _STATE_VERSION, **meta}).encode(), np.uint8)
    np.savez_compressed(buffer, allow_pickle=False, meta=header, **arrays)
    return buffer.getvalue()


def _unpack(data: bytes) -> tuple[dict[str, Any], Any]:
    try:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        meta: dict[str, Any] = json.loads(arrays["meta"].tobytes())
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"not a rotation processor state: {exc}") from exc
    if meta.get("version") != _STATE_VERSION:
        raise ValueError(f"rotation processor state version {meta.get('version')} is not {_STATE_VERSION}")
    return meta, arrays


def _optional(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class CurrencyStrengthProcessor:
    """Strength of each currency of a basket over the last ``window`` bars, at every snapshot boundary in session."""

    name = "currency_strength"

    def __init__(self, basket: str, closes: AlignedCloses) -> None:
        self.basket = basket
        self.closes = closes
        self._basket = basket_of(closes.symbols)

    @classmethod
    def create(
        cls, basket: str, pairs: Sequence[str], window: int, every_minutes: int, watched: frozenset[int]
    ) -> CurrencyStrengthProcessor:
        basket_of(pairs)  # a malformed pair is a configuration error: say so before anything is watched
        closes = AlignedCloses(pairs, window, every_minutes * NS_PER_MINUTE, watched, Market.FX)
        return cls(basket, closes)

    def config(self) -> tuple[Any, ...]:
        return self.basket, *self.closes.config()

    def process(self, bars: BarFrame) -> list[Emitted]:
        return [self._event(window) for window in self.closes.advance(bars)]

    def _event(self, window: Window) -> Emitted:
        measured = currency_strength(self._basket, pair_log_returns(window.closes))
        ranked = np.flatnonzero(measured.rank)
        ranked = ranked[np.argsort(measured.rank[ranked])]
        pairs = np.isfinite(window.closes[0]) & np.isfinite(window.closes[-1])
        event_id = deterministic_event_id(STRENGTH_SOURCE, self.basket, TIMEFRAME, self.closes.bars, window.as_of_ns)
        event = {
            **common_fields(STRENGTH_SOURCE, window.as_of_ns, event_id=event_id),
            "basket": self.basket,
            "as_of_ns": window.as_of_ns,
            "timeframe": TIMEFRAME,
            "window_bars": self.closes.bars,
            "pairs": [self.closes.symbols[i] for i in np.flatnonzero(pairs).tolist()],
            "currencies": [
                {
                    "currency": self._basket.currencies[i],
                    "strength": float(measured.strength[i]),
                    "zscore": _optional(measured.zscore[i]),
                    "rank": int(measured.rank[i]),
                }
                for i in ranked.tolist()
            ],
        }
        return Emitted("analytics.currency_strength", self.basket.encode(), STRENGTH_SCHEMA, event)

    def to_bytes(self) -> bytes:
        return _pack({"basket": self.basket, **self.closes.meta()}, self.closes.arrays())

    @classmethod
    def from_bytes(cls, data: bytes) -> CurrencyStrengthProcessor:
        meta, arrays = _unpack(data)
        return cls(meta["basket"], AlignedCloses.restore(meta, arrays))


class SectorRotationProcessor:
    """Relative rotation of sector ETFs against a benchmark, with rotation signals as alerts.

    The grid holds the benchmark (column 0) and the sectors; it keeps ``window + momentum`` returns, what the
    RS-momentum of the last bar needs. Between snapshots it remembers each sector's confirmed quadrant and rank.
    """

    name = "sector_rotation"

    def __init__(self, universe: str, closes: AlignedCloses, window: int, momentum: int, top_k: int, band: float):
        if closes.bars != window + momentum:
            raise ValueError("the grid must hold window + momentum returns")
        self.universe = universe
        self.closes = closes
        self.window = window
        self.momentum = momentum
        self.top_k = top_k
        self.band = band
        self.benchmark = closes.symbols[0]
        self.sectors = closes.symbols[1:]
        self.quadrant: Int8 = np.full(len(self.sectors), UNKNOWN, dtype=np.int8)
        self.rank: Int64 = np.zeros(len(self.sectors), dtype=np.int64)
        self.relative_strength: Float64 = np.full(len(self.sectors), np.nan)

    @classmethod
    def create(
        cls,
        universe: str,
        benchmark: str,
        sectors: Sequence[str],
        window: int,
        momentum: int,
        every_minutes: int,
        top_k: int,
        band: float,
        watched: frozenset[int],
    ) -> SectorRotationProcessor:
        symbols = (benchmark, *sectors)
        closes = AlignedCloses(symbols, window + momentum, every_minutes * NS_PER_MINUTE, watched, Market.NYSE)
        return cls(universe, closes, window, momentum, top_k, band)

    def config(self) -> tuple[Any, ...]:
        return self.universe, self.window, self.momentum, self.top_k, self.band, *self.closes.config()

    def process(self, bars: BarFrame) -> list[Emitted]:
        emitted: list[Emitted] = []
        for window in self.closes.advance(bars):
            emitted += self._events(window)
        return emitted

    def _events(self, window: Window) -> list[Emitted]:
        rotation = relative_rotation(window.closes[:, 1:], window.closes[:, 0], self.window, self.momentum)
        ranked = np.flatnonzero(rotation.rank)
        ranked = ranked[np.argsort(rotation.rank[ranked])]
        as_of = window.as_of_ns
        event_id = deterministic_event_id(ROTATION_SOURCE, self.universe, TIMEFRAME, self.window, as_of)
        event = {
            **common_fields(ROTATION_SOURCE, as_of, event_id=event_id),
            "universe": self.universe,
            "benchmark": self.benchmark,
            "as_of_ns": as_of,
            "timeframe": TIMEFRAME,
            "window_bars": self.window,
            "sectors": [
                {
                    "symbol": self.sectors[i],
                    "sector": SPDR_SECTORS.get(self.sectors[i], self.sectors[i]),
                    "relative_strength": float(rotation.relative_strength[i]),
                    "momentum": float(rotation.momentum[i]),
                    "rank": int(rotation.rank[i]),
                    "quadrant": QUADRANTS[rotation.quadrant[i]],
                }
                for i in ranked.tolist()
            ],
            "leader": self.sectors[ranked[0]] if ranked.size else None,
        }
        confirmed = confirmed_quadrants(self.quadrant, rotation, self.band)
        signals = rotation_signals(self.quadrant, confirmed, self.rank, rotation.rank, self.top_k)
        alerts = [self._alert(signal, rotation, as_of, event_id) for signal in signals]
        self.quadrant, self.rank = confirmed, rotation.rank
        self.relative_strength = rotation.relative_strength
        return [Emitted("analytics.sector_rotation", self.universe.encode(), ROTATION_SCHEMA, event), *alerts]

    def _alert(self, signal: RotationSignal, rotation: Rotation, as_of: int, cause: str) -> Emitted:
        symbol = self.sectors[signal.index]
        name = f"{symbol} ({SPDR_SECTORS.get(symbol, symbol)})"
        if signal.kind == "quadrant_change":
            before, after = QUADRANTS[signal.before], QUADRANTS[signal.after]
            message = f"{name} rotated from {before} to {after} against {self.benchmark}"
            values = (
                _optional(self.relative_strength[signal.index]),
                _optional(rotation.relative_strength[signal.index]),
            )
            details = {"from_quadrant": before, "to_quadrant": after}
        else:
            entered = signal.after <= self.top_k
            if self.top_k == 1:
                moved = "took the lead" if entered else "lost the lead"
            else:
                moved = f"{'entered' if entered else 'left'} the top {self.top_k}"
            message = f"{name} {moved} against {self.benchmark} (rank {signal.before} -> {signal.after})"
            values = (float(signal.before), float(signal.after))
            details = {"from_rank": str(signal.before), "to_rank": str(signal.after)}
        event_id = deterministic_event_id(ROTATION_SOURCE, self.universe, signal.kind, symbol, as_of)
        alert = alert_record(
            ROTATION_SOURCE,
            as_of,
            cause,
            event_id,
            f"rotation.{signal.kind}",
            "INFO",
            symbol,
            message,
            {
                "universe": self.universe,
                "benchmark": self.benchmark,
                "relative_strength": repr(float(rotation.relative_strength[signal.index])),
                "momentum": repr(float(rotation.momentum[signal.index])),
                **details,
            },
            values,
        )
        return Emitted("alerts", symbol.encode(), ALERT_SCHEMA, alert)

    def to_bytes(self) -> bytes:
        meta = {
            "universe": self.universe,
            "window": self.window,
            "momentum": self.momentum,
            "top_k": self.top_k,
            "band": self.band,
            **self.closes.meta(),
        }
        arrays = {
            **self.closes.arrays(),
            "quadrant": self.quadrant,
            "rank": self.rank,
            "relative_strength": self.relative_strength,
        }
        return _pack(meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> SectorRotationProcessor:
        meta, arrays = _unpack(data)
        closes = AlignedCloses.restore(meta, arrays)
        processor = cls(meta["universe"], closes, meta["window"], meta["momentum"], meta["top_k"], meta["band"])
        processor.quadrant = arrays["quadrant"]
        processor.rank = arrays["rank"]
        processor.relative_strength = arrays["relative_strength"]
        return processor
