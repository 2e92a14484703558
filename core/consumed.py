"""The unit every projection and processor works on: one Kafka record with its coordinates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None for a tombstone: outside input can be anything, and must be dead-lettered, not crash
