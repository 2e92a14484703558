"""Every processor the analytics runner hosts, in the order it feeds them a batch.

Each processing area adds its factory here; the runner checkpoints one state record per factory ``name``.
"""

from __future__ import annotations

from streams.correlation.factory import FACTORY as CORRELATION
from streams.patterns.factory import FACTORY as PATTERNS
from streams.processors import ProcessorFactory
from streams.rotation.factory import CURRENCY_STRENGTH, SECTOR_ROTATION

FACTORIES: list[ProcessorFactory] = [CORRELATION, CURRENCY_STRENGTH, SECTOR_ROTATION, PATTERNS]
