"""The contract between the analytics runner and the pure processors it hosts.

The runner (``streams/runner.py``) reads each bar batch once, decodes it once (columnar), and hands the same
``BarFrame`` to every processor: correlations, currency strength, sector rotation, pattern scans. Per-message
overhead is what dominates a stream worker, so the processors share one read instead of each consuming the bars.

A processor is pure: no Kafka, database or Redis code. It turns bars into events (topic name from the catalogue,
key, full Avro schema name, event dict with a deterministic ``event_id``) and serialises its whole state to bytes,
which the runner checkpoints to Kafka in the transaction that publishes its events. Given the same bars it must
emit the same events whatever the batching, so a crashed and restarted worker repeats exactly what it would have
emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from core.settings import Settings


@dataclass(frozen=True, slots=True)
class BarFrame:
    """One decoded batch of bars of any symbols, in delivery order; ``partition`` is the source partition.

    ``asset_class`` holds indices into ``schemas.bars.ASSET_CLASSES`` (the bar decoder's column); None only where
    a caller built a frame without it, and then session-aware processors treat every bar as an equity's.
    """

    partition: npt.NDArray[np.int32]
    symbol: npt.NDArray[np.object_]
    start_ns: npt.NDArray[np.int64]
    close: npt.NDArray[np.float64]
    asset_class: npt.NDArray[np.int8] | None = None

    def __len__(self) -> int:
        return len(self.symbol)


@dataclass(frozen=True, slots=True)
class Emitted:
    """An event a processor wants published: ``topic`` is the catalogue name (the runner adds the prefix)."""

    topic: str
    key: bytes
    schema: str
    event: dict[str, Any]


class BarProcessor(Protocol):
    """What the analytics runner hosts. ``name`` keys its state in the runner's checkpoint."""

    name: str

    def process(self, bars: BarFrame) -> list[Emitted]: ...

    def to_bytes(self) -> bytes: ...


class ProcessorFactory(Protocol):
    """How the runner makes a processor fresh, or rebuilds it from the bytes its last checkpoint holds.

    ``restore`` raises ValueError when the stored state no longer fits the settings (a reconfigured universe, an
    older state version); the runner then logs it and starts that processor over.
    """

    name: str

    def create(self, settings: Settings) -> BarProcessor: ...

    def restore(self, data: bytes, settings: Settings) -> BarProcessor: ...
