"""Simulated broker: the ``Broker`` contract in memory, filled from bars, for the demo and the tests (no account)."""

from connectors.simulated.broker import SimulatedBroker

__all__ = ["SimulatedBroker"]
