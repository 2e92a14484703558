"""The broker contract: what Tidemark needs from a broker, with two implementations (``connectors.alpaca``, through
alpaca-py, and ``connectors.simulated``, which needs no account) that one contract test suite checks alike.

Pure: dataclasses, errors and a Protocol, no I/O. Money and quantities are ``Decimal`` (events carry them as decimal
strings); times are UTC nanoseconds. Order sides, types, times in force, statuses and update events use the symbols
of the Avro enums (``schemas/avro/OrderSide.avsc`` ...), upper case.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

SIDES = ("BUY", "SELL")
TERMINAL = frozenset({"FILLED", "CANCELED", "EXPIRED", "REJECTED", "DONE_FOR_DAY", "REPLACED"})
"""Order statuses after which nothing more fills."""


@dataclass(frozen=True)
class OrderRequest:
    """An order to place. Exactly one of ``qty`` and ``notional`` is set (notional: a cash amount, fractional)."""

    client_order_id: str
    symbol: str
    side: str
    qty: Decimal | None = None
    notional: Decimal | None = None
    order_type: str = "MARKET"
    time_in_force: str = "DAY"


@dataclass(frozen=True)
class BrokerOrder:
    """An order as the broker holds it after its latest change."""

    order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal | None
    notional: Decimal | None
    order_type: str
    time_in_force: str
    status: str
    filled_qty: Decimal
    """Cumulative."""
    filled_avg_price: Decimal | None
    created_at_ns: int
    updated_at_ns: int | None = None
    submitted_at_ns: int | None = None
    filled_at_ns: int | None = None
    reject_reason: str | None = None


@dataclass(frozen=True)
class TradeUpdate:
    """One change of an order (Alpaca's ``trade_updates``): ``event`` is an ``OrderEvent`` symbol (NEW, FILL,
    PARTIAL_FILL, CANCELED, REJECTED, EXPIRED, ...); for fills ``price``/``qty`` are the fill's own."""

    event: str
    order: BrokerOrder
    timestamp_ns: int
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None
    execution_id: str | None = None


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    qty: Decimal
    """Signed: negative for a short."""
    avg_entry_price: Decimal
    asset_class: str = "EQUITY"
    market_value: Decimal | None = None
    current_price: Decimal | None = None
    cost_basis: Decimal | None = None
    unrealized_pl: Decimal | None = None


@dataclass(frozen=True)
class BrokerAccount:
    account_id: str
    currency: str
    cash: Decimal
    buying_power: Decimal
    equity: Decimal
    last_equity: Decimal | None = None
    long_market_value: Decimal | None = None
    short_market_value: Decimal | None = None
    trading_blocked: bool = False
    paper: bool = True


@dataclass(frozen=True)
class Asset:
    symbol: str
    asset_class: str
    """EQUITY, FX, FUTURE (``schemas.bars.ASSET_CLASSES``)."""
    tradable: bool
    fractionable: bool


class BrokerError(Exception):
    """A broker call failed; the message is safe to log (it never holds a credential)."""


class DuplicateClientOrderId(BrokerError):
    """The broker already holds an order with this client_order_id: the order was placed before."""


class OrderRefused(BrokerError):
    """The broker refused the order itself (not the transport): a final answer, not worth a retry."""


class RateLimited(BrokerError):
    """Too many requests; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or answered 5xx: retry with back-off."""


class CredentialsRefused(BrokerError):
    """The broker refused the key; ``variable`` names the environment variable to fix."""

    def __init__(self, message: str, variable: str) -> None:
        super().__init__(message)
        self.variable = variable


class Broker(Protocol):
    """One account at one broker. REST-like calls are synchronous; trade updates are collected by ``updates``."""

    name: str
    """``alpaca`` or ``simulated``: the ``source`` of the events published for it."""
    rate_limited: bool
    """Whether calls count against a request rate limit (the connector paces them only then)."""

    def account(self) -> BrokerAccount: ...

    def positions(self) -> list[BrokerPosition]: ...

    def asset(self, symbol: str) -> Asset | None:
        """None for a symbol the broker does not know."""
        ...

    def assets(self) -> dict[str, Asset]:
        """Every asset the broker trades or knows, by symbol, in one request."""
        ...

    def submit(self, request: OrderRequest) -> BrokerOrder:
        """Place an order. Raises ``DuplicateClientOrderId`` when its client_order_id was used before,
        ``OrderRefused`` for a final refusal, ``RateLimited``/``BrokerUnavailable`` for transient ones."""
        ...

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None: ...

    def orders(self, after_ns: int | None = None) -> list[BrokerOrder]:
        """Every order (all statuses) created after ``after_ns``, oldest first."""
        ...

    def cancel(self, order_id: str) -> None: ...

    def updates(self, timeout_s: float) -> list[TradeUpdate]:
        """Trade updates received since the last call, waiting up to ``timeout_s`` for the first one."""
        ...

    def close(self) -> None: ...
