"""The analytics host as pure logic: decoded bar batches in, every registered processor fed, events and state out.

The transport (``streams/runner.py``) reads the records, and publishes what this returns; nothing here touches
Kafka, so the host's guarantees (each processor fed the same frame, state restored or started over by name, one
bad processor never stopping the others' state from being kept) are unit-tested without a broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from schemas.bars import BarBatch
from streams.processors import BarFrame, BarProcessor, Emitted, ProcessorFactory

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("tidemark.streams.host")

StateLoader = Callable[[str], bytes | None]


def bar_frame(partitions: npt.NDArray[np.int32], bars: BarBatch, rows: Sequence[int]) -> BarFrame:
    """The frame of a decoded batch: ``rows[i]`` is the record bar ``i`` was decoded from, ``partitions[j]`` the
    partition of record ``j`` (a column, so the hot path builds no per-record objects)."""
    return BarFrame(partitions[np.asarray(rows, np.intp)], bars.symbol, bars.start_ns, bars.close, bars.asset_class)


class ProcessorHost:
    """The processors of ``factories``, each restored from its stored state (``load(name)``) on first use."""

    def __init__(self, factories: Sequence[ProcessorFactory], settings: Settings, load: StateLoader) -> None:
        names = [factory.name for factory in factories]
        if len(set(names)) != len(names):
            raise ValueError(f"processor names must be unique: {names}")
        self._factories = tuple(factories)
        self._settings = settings
        self._load = load
        self._live: dict[str, BarProcessor] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(factory.name for factory in self._factories)

    def forget(self) -> None:
        """Drop the in-memory processors: after a rebalance the recovered state, not this memory, is the truth."""
        self._live.clear()

    def processor(self, factory: ProcessorFactory) -> BarProcessor:
        if factory.name not in self._live:
            self._live[factory.name] = self._restore(factory)
        return self._live[factory.name]

    def _restore(self, factory: ProcessorFactory) -> BarProcessor:
        stored = self._load(factory.name)
        if stored:
            try:
                return factory.restore(stored, self._settings)
            except ValueError as exc:
                log.warning("processor %s: stored state set aside, starting over (%s)", factory.name, exc)
        return factory.create(self._settings)

    def process(self, frame: BarFrame) -> list[Emitted]:
        """Feed ``frame`` to every processor in registry order; their events in that order."""
        emitted: list[Emitted] = []
        for factory in self._factories:
            emitted += self.processor(factory).process(frame)
        return emitted

    def states(self) -> dict[str, bytes]:
        """The serialised state of every live processor, by name."""
        return {name: processor.to_bytes() for name, processor in self._live.items()}
