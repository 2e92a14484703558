"""Reconciliation of the broker's positions with the tracker's: which differences are real. Pure: no I/O.

A difference is confirmed when it is seen unchanged at two looks in a row and its symbol is not moving (an order
in flight, a fill since the last look, or a published fill the tracker has not applied yet): a fill on its way
through Kafka is a difference for a moment, and must not become a correction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

TOLERANCE = Decimal("1e-9")


@dataclass
class Mismatches:
    """Differences between the broker's positions and the tracker's, confirmed once seen twice in a row unchanged."""

    seen: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)

    def confirm(
        self, brokers: Mapping[str, Decimal], ours: Mapping[str, Decimal], moving: set[str]
    ) -> list[tuple[str, Decimal, Decimal]]:
        """(symbol, ours, brokers) for each difference seen unchanged at the previous look too; a symbol missing on
        either side counts as zero. A confirmed difference is forgotten: after its correction it is gone."""
        now: dict[str, tuple[Decimal, Decimal]] = {}
        for symbol in sorted(set(brokers) | set(ours)):
            pair = (ours.get(symbol, Decimal(0)), brokers.get(symbol, Decimal(0)))
            if symbol not in moving and abs(pair[0] - pair[1]) > TOLERANCE:
                now[symbol] = pair
        confirmed = [(s, o, b) for s, (o, b) in now.items() if self.seen.get(s) == (o, b)]
        self.seen = {s: pair for s, pair in now.items() if s not in {c[0] for c in confirmed}}
        return confirmed
