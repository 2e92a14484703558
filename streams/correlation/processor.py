"""The rolling-statistics processor as pure logic: bars in, deterministic snapshots out, state as bytes.

It composes the event-time ``SnapshotClock`` with the ``RollingWindow`` kernel. Universe bars wait in a
pending buffer until the clock says every bar before a boundary has arrived; then exactly the bars before
the boundary are applied and the snapshot is taken. A boundary with no new bar since the previous snapshot
(the universe's markets closed) yields nothing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.correlation.clock import MINUTE_NS, SnapshotClock
from streams.correlation.rolling import CorrelationSnapshot, RollingWindow, SymbolStats

_STATE_VERSION = 1
BARS_PER_YEAR_1M = 252 * 390.0
"""Annualisation of minute-bar statistics: a 252-day, 6.5-hour equity year."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    boundary_ns: int
    stats: SymbolStats
    correlation: CorrelationSnapshot


class RollingProcessor:
    def __init__(
        self,
        universe: Sequence[str],
        window: int,
        every_minutes: int,
        watched_partitions: frozenset[int],
        window_state: RollingWindow | None = None,
        clock: SnapshotClock | None = None,
    ) -> None:
        self.universe = tuple(universe)
        self.window = window_state or RollingWindow(self.universe, window)
        self.clock = clock or SnapshotClock(every_ns=every_minutes * MINUTE_NS, partitions=watched_partitions)
        self._members = frozenset(self.universe)
        self._pending_symbol = np.empty(0, dtype=object)
        self._pending_start = np.empty(0, dtype=np.int64)
        self._pending_close = np.empty(0, dtype=np.float64)
        self._applied_since_snapshot = 0

    def process(
        self,
        partition: npt.NDArray[np.int32],
        symbol: npt.NDArray[np.object_],
        start_ns: npt.NDArray[np.int64],
        close: npt.NDArray[np.float64],
    ) -> list[Snapshot]:
        """Take one batch of bars from any symbols and partitions; return the snapshots it completes."""
        self.clock.observe(partition, start_ns)
        member = np.fromiter((s in self._members for s in symbol.tolist()), dtype=bool, count=len(symbol))
        self._pending_symbol = np.concatenate([self._pending_symbol, symbol[member]])
        self._pending_start = np.concatenate([self._pending_start, start_ns[member]])
        self._pending_close = np.concatenate([self._pending_close, close[member]])
        if self.clock.last_boundary_ns is not None:
            # Late or redelivered bars: they only shape later snapshots and never cause one by themselves.
            self._apply_before(self.clock.last_boundary_ns, fresh=False)
        snapshots = []
        for boundary in self.clock.due():
            self._apply_before(boundary)
            if self._applied_since_snapshot:
                snapshots.append(Snapshot(boundary, self.window.stats(BARS_PER_YEAR_1M), self.window.correlation()))
                self._applied_since_snapshot = 0
            self.clock.last_boundary_ns = boundary
        return snapshots

    def _apply_before(self, boundary_ns: int, fresh: bool = True) -> None:
        ready = self._pending_start < boundary_ns
        if not ready.any():
            return
        order = np.argsort(self._pending_start[ready], kind="stable")
        result = self.window.update(
            self._pending_symbol[ready][order],
            self._pending_start[ready][order],
            self._pending_close[ready][order],
        )
        if fresh:
            self._applied_since_snapshot += result.applied
        keep = ~ready
        self._pending_symbol = self._pending_symbol[keep]
        self._pending_start = self._pending_start[keep]
        self._pending_close = self._pending_close[keep]

    def to_bytes(self) -> bytes:
        meta = {
            "version": _STATE_VERSION,
            "universe": self.universe,
            "every_ns": self.clock.every_ns,
            "partitions": sorted(self.clock.partitions),
            "high_ns": self.clock.high_ns,
            "low_ns": self.clock.low_ns,
            "last_boundary_ns": self.clock.last_boundary_ns,
            "applied_since_snapshot": self._applied_since_snapshot,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            window=np.frombuffer(self.window.to_bytes(), dtype=np.uint8),
            pending_symbol=np.asarray(self._pending_symbol.tolist(), dtype=str),
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
        clock = SnapshotClock(
            every_ns=meta["every_ns"],
            partitions=frozenset(meta["partitions"]),
            high_ns={int(k): v for k, v in meta["high_ns"].items()},
            low_ns={int(k): v for k, v in meta["low_ns"].items()},
            last_boundary_ns=meta["last_boundary_ns"],
        )
        window = RollingWindow.from_bytes(arrays["window"].tobytes())
        processor = cls(meta["universe"], window.capacity - 1, 1, clock.partitions, window_state=window, clock=clock)
        processor._pending_symbol = arrays["pending_symbol"].astype(object)
        processor._pending_start = arrays["pending_start"]
        processor._pending_close = arrays["pending_close"]
        processor._applied_since_snapshot = meta["applied_since_snapshot"]
        return processor
