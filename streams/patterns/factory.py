"""The pattern-scan processor behind the analytics host's ``ProcessorFactory`` contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.kafka import partition_for_key
from schemas.catalogue import topic_spec
from streams.patterns.processor import NAME, PatternProcessor

if TYPE_CHECKING:
    from core.settings import Settings


def watched_partitions(settings: Settings) -> frozenset[int]:
    """The partitions of the configured universe: the market clock the analytics processors share."""
    partitions = topic_spec("md.bars.1m").partitions
    return frozenset(partition_for_key(symbol.encode(), partitions) for symbol in settings.correlation.universe)


class PatternFactory:
    name = NAME

    def create(self, settings: Settings) -> PatternProcessor:
        return PatternProcessor(watched_partitions(settings))

    def restore(self, data: bytes, settings: Settings) -> PatternProcessor:
        processor = PatternProcessor.from_bytes(data)
        if processor.clock.partitions != watched_partitions(settings):
            raise ValueError("the universe's partitions changed")
        return processor


FACTORY = PatternFactory()
