"""The pattern-scan processor behind the analytics host's ``ProcessorFactory`` contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.kafka import partition_for_key
from schemas.catalogue import topic_spec
from streams.patterns.processor import NAME, TRADED_CLASSES, PatternProcessor
from streams.patterns.scan import ScanConfig

if TYPE_CHECKING:
    from core.settings import Settings


def watched_partitions(settings: Settings) -> frozenset[int]:
    """The partitions of the configured universe: the market clock the analytics processors share."""
    partitions = topic_spec("md.bars.1m").partitions
    return frozenset(partition_for_key(symbol.encode(), partitions) for symbol in settings.correlation.universe)


def scan_config(settings: Settings) -> ScanConfig:
    p = settings.patterns
    return ScanConfig(
        p.alpha, p.correction, p.partners, p.entry_z, p.min_sharpe, p.min_psr, p.min_dsr, p.min_traded_share
    )


def costs(settings: Settings) -> tuple[float, ...]:
    """Cost per unit traded of each market the scan trades, from the settings' cost models."""
    return tuple(settings.costs.model(market).per_unit for market in TRADED_CLASSES)


class PatternFactory:
    name = NAME

    def create(self, settings: Settings) -> PatternProcessor:
        return PatternProcessor(watched_partitions(settings), scan_config(settings), costs(settings))

    def restore(self, data: bytes, settings: Settings) -> PatternProcessor:
        processor = PatternProcessor.from_bytes(data, scan_config(settings), costs(settings))
        if processor.clock.partitions != watched_partitions(settings):
            raise ValueError("the universe's partitions changed")
        return processor


FACTORY = PatternFactory()
