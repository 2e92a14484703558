"""Alpaca connector: the ``Broker`` contract (``connectors.broker``) over the official alpaca-py client, REST for
orders, account, positions and assets, the ``trade_updates`` WebSocket for order changes."""

from connectors.alpaca.client import AlpacaBroker

__all__ = ["AlpacaBroker"]
