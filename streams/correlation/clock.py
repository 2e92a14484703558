"""Event-time snapshot clock: a snapshot at boundary T is taken only once every bar before T has been seen.

Each source partition is in time order, so once every partition that carries universe symbols has delivered a
bar starting at or after T, no bar before T can still arrive. Applying bars up to T and no further makes each
snapshot a function of the bars alone — not of batch sizes, fetch interleaving or restarts — which is what lets
a crashed and restarted worker reproduce the snapshots of an uninterrupted run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass
class SnapshotClock:
    every_ns: int
    partitions: frozenset[int]
    high_ns: dict[int, int] = field(default_factory=dict)
    low_ns: dict[int, int] = field(default_factory=dict)
    last_boundary_ns: int | None = None

    def observe(self, partitions: npt.NDArray[np.int32], start_ns: npt.NDArray[np.int64]) -> None:
        """Record the newest bar start per partition (replayed, older bars never move it back)."""
        if not len(partitions):
            return
        order = np.argsort(partitions, kind="stable")
        parts, first = np.unique(partitions[order], return_index=True)
        newest = np.maximum.reduceat(start_ns[order], first)
        oldest = np.minimum.reduceat(start_ns[order], first)
        for partition, high, low in zip(parts.tolist(), newest.tolist(), oldest.tolist(), strict=True):
            self.high_ns[partition] = max(self.high_ns.get(partition, high), high)
            self.low_ns[partition] = min(self.low_ns.get(partition, low), low)

    def watermark_ns(self) -> int | None:
        """Every bar starting before the watermark has been seen; None until each watched partition spoke."""
        if not self.partitions or not self.partitions.issubset(self.high_ns):
            return None
        return min(self.high_ns[p] for p in self.partitions)

    def due(self) -> list[int]:
        """Boundaries (multiples of ``every_ns``) after the first bar, reached by the watermark and not yet taken.

        The first boundary is derived from the oldest bar of every watched partition, which each partition
        delivers first, so it is the same however the partitions were interleaved.
        """
        watermark = self.watermark_ns()
        if watermark is None:
            return []
        if self.last_boundary_ns is None:
            first_bar_ns = min(self.low_ns[p] for p in self.partitions)
            first = (first_bar_ns // self.every_ns + 1) * self.every_ns
        else:
            first = self.last_boundary_ns + self.every_ns
        return list(range(first, watermark + 1, self.every_ns))
