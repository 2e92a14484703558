"""Every processor the analytics agent hosts, in the order it feeds them a batch.

Each processing area adds its factory here; the agent keeps one table entry of state per factory ``name``.
"""

from __future__ import annotations

from streams.processors import ProcessorFactory

FACTORIES: list[ProcessorFactory] = []
