"""The rotation processors behind the analytics host's ``ProcessorFactory`` contract, configured from the settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.kafka import partition_for_key
from schemas.catalogue import topic_spec
from streams.rotation.processor import CurrencyStrengthProcessor, SectorRotationProcessor

if TYPE_CHECKING:
    from core.settings import Settings


def _watched(symbols: Sequence[str]) -> frozenset[int]:
    """The md.bars.1m partitions that carry ``symbols``: the ones the snapshot clock waits for."""
    partitions = topic_spec("md.bars.1m").partitions
    return frozenset(partition_for_key(symbol.encode(), partitions) for symbol in symbols)


class CurrencyStrengthFactory:
    name = CurrencyStrengthProcessor.name

    def create(self, settings: Settings) -> CurrencyStrengthProcessor:
        pairs = settings.rotation.currency_pairs
        return CurrencyStrengthProcessor.create(
            settings.rotation.currency_basket,
            pairs,
            settings.rotation.strength_window,
            settings.processing.snapshot_every,
            _watched(pairs),
        )

    def restore(self, data: bytes, settings: Settings) -> CurrencyStrengthProcessor:
        restored = CurrencyStrengthProcessor.from_bytes(data)
        if restored.config() != self.create(settings).config():
            raise ValueError("the currency basket, its window or the snapshot interval was reconfigured")
        return restored


class SectorRotationFactory:
    name = SectorRotationProcessor.name

    def create(self, settings: Settings) -> SectorRotationProcessor:
        return SectorRotationProcessor.create(
            settings.rotation.sector_universe,
            settings.rotation.sector_benchmark,
            settings.rotation.sector_etfs,
            settings.rotation.window,
            settings.rotation.momentum,
            settings.processing.snapshot_every,
            settings.rotation.top_k,
            settings.rotation.band,
            _watched([settings.rotation.sector_benchmark, *settings.rotation.sector_etfs]),
        )

    def restore(self, data: bytes, settings: Settings) -> SectorRotationProcessor:
        restored = SectorRotationProcessor.from_bytes(data)
        if restored.config() != self.create(settings).config():
            raise ValueError("the sector universe, its windows or the snapshot interval was reconfigured")
        return restored


CURRENCY_STRENGTH = CurrencyStrengthFactory()
SECTOR_ROTATION = SectorRotationFactory()
