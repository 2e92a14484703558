"""The simulated broker: the ``Broker`` contract kept in memory and filled from bars, the default when no Alpaca key is
set (the demo and the tests trade through it). Deterministic: no wall clock and no randomness decide anything.

Its clock is market time: ``on_bar`` moves it to the bar's start, and an order is stamped with it when placed. An
order fills at the open of the first bar of its symbol that starts after it was placed (the next bar, never the one
it was decided on), at that open moved against it by the asset class's half spread and slippage (``core.costs``); the
commission is charged to cash on the fill's notional. One bar fills at most ``participation`` of its volume across the
symbol's open orders, oldest first: the rest fills in later bars (``PARTIAL_FILL`` ... ``FILL``). A notional order
buys or sells ``notional / fill price`` units, rounded down to 9 decimal places (whole units for a non-fractionable
asset), bar after bar until less than a cent (or one unit step) of its notional remains.

Refusals raise ``OrderRefused`` at ``submit``: unknown or non-tradable symbol, not exactly one positive finite
qty/notional, a fraction of a non-fractionable asset, a fractional order that is not a DAY market order, anything but
a MARKET order with DAY or GTC, a sell of more than is held and not yet offered by open sells (unless
``allow_short``), a buy costing more than the buying power at the last known price (a cash account: buying power is
the cash; open orders do not reserve it). A buy that cash cannot pay when it fills, or a sell that would go short, is
``REJECTED`` then, with the reason.

Event-sourced restart: a fresh instance built with the same arguments and given every ``TradeUpdate`` the old one
published (``restore``) rebuilds its orders, positions and cash exactly, without publishing them again. A bar whose
start is not after the symbol's latest bar (or, after a restore, its latest fill) is ignored, so bars delivered again
after a restart never fill twice.

Public API (every method is thread-safe; bars may arrive on one thread while orders come from another):
  market:   ``on_bar(symbol, start_ns, open, high, low, close, volume, close_only=False)``, ``mark(symbol, price)``
            (a last price without a trade), ``expire_day(now_ns)`` (open DAY orders -> EXPIRED), ``add_asset(asset)``
  contract: ``account()``, ``positions()``, ``asset()``, ``submit()``, ``order_by_client_id()``, ``orders()``,
            ``cancel()``, ``updates(timeout_s)``, ``close()``
  state:    ``restore(updates, last_prices=None)``, ``clock_ns``, ``last_prices()``
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal

from connectors.broker import (
    SIDES,
    TERMINAL,
    Asset,
    BrokerAccount,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    DuplicateClientOrderId,
    OrderRefused,
    OrderRequest,
    TradeUpdate,
)
from core.costs import CostModel

ZERO = Decimal(0)
ONE = Decimal(1)
QTY_STEP = Decimal("1e-9")
"""Smallest fraction of a unit traded (Alpaca's: 9 decimal places)."""
CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("1e15")
MAX_CLIENT_ORDER_ID = 128
TIMES_IN_FORCE = ("DAY", "GTC")
FILL_EVENTS = ("FILL", "PARTIAL_FILL")
_BP = Decimal("0.0001")
_ORDER_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "https://tidemark/brokers/simulated/orders")


def _bp(value: float) -> Decimal:
    """A cost model's basis points as an exact fraction (0.15 bp -> 0.000015, not the float's binary expansion)."""
    return Decimal(repr(value)) * _BP


def _floor(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_FLOOR) * step


@dataclass
class _Order:
    state: BrokerOrder
    fills: int = 0
    spent: Decimal = ZERO
    """Notional filled so far: the sum of fill qty x fill price."""


@dataclass
class _Position:
    qty: Decimal
    avg_entry_price: Decimal


class SimulatedBroker:
    """One simulated cash account; see the module docstring."""

    name = "simulated"
    rate_limited = False

    def __init__(
        self,
        account_id: str,
        cash: Decimal,
        costs: Mapping[str, CostModel],
        assets: Mapping[str, Asset] | None = None,
        participation: Decimal = Decimal("0.1"),
        allow_short: bool = False,
        clock_ns: int = 0,
        currency: str = "USD",
    ) -> None:
        if not cash.is_finite() or cash < 0:
            raise ValueError(f"cash must be finite and not negative: {cash}")
        if not ZERO < participation <= ONE:
            raise ValueError(f"participation must be in (0, 1]: {participation}")
        self.account_id = account_id
        self.currency = currency
        self.participation = participation
        self.allow_short = allow_short
        self._costs = dict(costs)
        self._assets = dict(assets or {})
        self._cash = cash
        self._clock = clock_ns
        self._orders: dict[str, _Order] = {}
        """Every order by order_id, in creation order."""
        self._open: dict[str, _Order] = {}
        """The orders not in a terminal status, in creation order."""
        self._by_client: dict[str, str] = {}
        self._positions: dict[str, _Position] = {}
        self._last: dict[str, Decimal] = {}
        self._bar_starts: dict[str, int] = {}
        """Per symbol: the start of the latest bar that filled or could have filled (a bar seen again is ignored)."""
        self._queue: list[TradeUpdate] = []
        self._closed = False
        self._cond = threading.Condition(threading.RLock())

    # -- market --------------------------------------------------------------------------------------------------

    @property
    def clock_ns(self) -> int:
        """Market time: the start of the latest bar seen (or ``expire_day``'s time), never going back."""
        with self._cond:
            return self._clock

    def last_prices(self) -> dict[str, Decimal]:
        with self._cond:
            return dict(self._last)

    def add_asset(self, asset: Asset) -> None:
        with self._cond:
            self._assets[asset.symbol] = asset

    def mark(self, symbol: str, price: Decimal) -> None:
        """The last price of ``symbol`` without a trade (a quote): for buying-power checks and market values."""
        with self._cond:
            self._last[symbol] = price

    def on_bar(
        self,
        symbol: str,
        start_ns: int,
        open: Decimal,
        high: Decimal,
        low: Decimal,
        close: Decimal,
        volume: Decimal | int,
        close_only: bool = False,
    ) -> None:
        """A bar of ``symbol`` closed: fills its symbol's orders placed before ``start_ns`` at ``open``, at most
        ``participation`` x ``volume`` in all (no cap for a ``close_only`` bar, whose volume is unknown), then
        marks ``close`` as the last price. ``high`` and ``low`` are not used by market orders."""
        if not open.is_finite() or open <= 0:
            raise ValueError(f"{symbol} bar at {start_ns}: open must be positive, not {open}")
        with self._cond:
            self._check_open()
            if start_ns <= self._bar_starts.get(symbol, -1):
                return  # seen before (a consumer's redelivery after a restart): it already filled what it could
            self._bar_starts[symbol] = start_ns
            self._clock = max(self._clock, start_ns)
            asset = self._assets.get(symbol)
            if asset is not None:
                step = QTY_STEP if asset.fractionable else ONE
                capacity = None if close_only else _floor(self.participation * Decimal(volume), step)
                for record in [r for r in self._open.values() if r.state.symbol == symbol]:
                    if capacity is not None and capacity <= 0:
                        break
                    if record.state.created_at_ns < start_ns:
                        filled = self._fill(record, asset, open, capacity, start_ns)
                        if capacity is not None:
                            capacity -= filled
            self._last[symbol] = close

    def expire_day(self, now_ns: int) -> None:
        """The session ended at ``now_ns``: every open DAY order expires (GTC orders stay)."""
        with self._cond:
            self._clock = max(self._clock, now_ns)
            for record in [r for r in self._open.values() if r.state.time_in_force == "DAY"]:
                expired = replace(record.state, status="EXPIRED", updated_at_ns=self._clock)
                self._change(record, TradeUpdate("EXPIRED", expired, self._clock))

    # -- the Broker contract -------------------------------------------------------------------------------------

    def account(self) -> BrokerAccount:
        with self._cond:
            long_value = sum((v for v in self._market_values().values() if v > 0), ZERO)
            short_value = sum((v for v in self._market_values().values() if v < 0), ZERO)
            return BrokerAccount(
                account_id=self.account_id,
                currency=self.currency,
                cash=self._cash,
                buying_power=self._cash,
                equity=self._cash + long_value + short_value,
                long_market_value=long_value,
                short_market_value=short_value,
                paper=True,
            )

    def positions(self) -> list[BrokerPosition]:
        with self._cond:
            found = []
            for symbol in sorted(self._positions):
                position = self._positions[symbol]
                price = self._last.get(symbol, position.avg_entry_price)
                asset = self._assets.get(symbol)
                cost_basis = position.qty * position.avg_entry_price
                found.append(
                    BrokerPosition(
                        symbol=symbol,
                        qty=position.qty,
                        avg_entry_price=position.avg_entry_price,
                        asset_class=asset.asset_class if asset else "EQUITY",
                        market_value=position.qty * price,
                        current_price=price,
                        cost_basis=cost_basis,
                        unrealized_pl=position.qty * price - cost_basis,
                    )
                )
            return found

    def assets(self) -> dict[str, Asset]:
        with self._cond:
            return dict(self._assets)

    def asset(self, symbol: str) -> Asset | None:
        with self._cond:
            return self._assets.get(symbol)

    def submit(self, request: OrderRequest) -> BrokerOrder:
        with self._cond:
            self._check_open()
            if request.client_order_id in self._by_client:
                raise DuplicateClientOrderId(f"client_order_id {request.client_order_id!r} was used before")
            self._validate(request)
            order = BrokerOrder(
                order_id=str(uuid.uuid5(_ORDER_IDS, f"{self.account_id}/{request.client_order_id}")),
                client_order_id=request.client_order_id,
                symbol=request.symbol,
                side=request.side,
                qty=request.qty,
                notional=request.notional,
                order_type=request.order_type,
                time_in_force=request.time_in_force,
                status="NEW",
                filled_qty=ZERO,
                filled_avg_price=None,
                created_at_ns=self._clock,
                updated_at_ns=self._clock,
                submitted_at_ns=self._clock,
            )
            record = _Order(order)
            self._orders[order.order_id] = record
            self._open[order.order_id] = record
            self._by_client[order.client_order_id] = order.order_id
            self._emit(TradeUpdate("NEW", order, self._clock))
            return order

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        with self._cond:
            order_id = self._by_client.get(client_order_id)
            return None if order_id is None else self._orders[order_id].state

    def orders(self, after_ns: int | None = None) -> list[BrokerOrder]:
        with self._cond:
            return [r.state for r in self._orders.values() if after_ns is None or r.state.created_at_ns > after_ns]

    def cancel(self, order_id: str) -> None:
        with self._cond:
            self._check_open()
            record = self._open.get(order_id)
            if record is None:
                state = "unknown" if order_id not in self._orders else self._orders[order_id].state.status
                raise OrderRefused(f"order {order_id} cannot be canceled: it is {state}")
            canceled = replace(record.state, status="CANCELED", updated_at_ns=self._clock)
            self._change(record, TradeUpdate("CANCELED", canceled, self._clock))

    def updates(self, timeout_s: float) -> list[TradeUpdate]:
        with self._cond:
            if not self._queue and not self._closed and timeout_s > 0:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed, timeout=timeout_s)
            drained, self._queue = self._queue, []
            return drained

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- restart -------------------------------------------------------------------------------------------------

    def restore(self, updates: Iterable[TradeUpdate], last_prices: Mapping[str, Decimal] | None = None) -> None:
        """Rebuilds the state the updates describe, on a fresh instance made with the arguments the one that
        published them had (the same cash, costs and assets; ``clock_ns`` the latest bar start the caller knows).
        Repeated updates (an at-least-once log) count once; nothing is published again. Positions are valued at
        ``last_prices`` where given, else at their latest fill price until a bar or ``mark`` brings a price.
        Raises ``ValueError`` when the broker already holds orders or the updates contradict themselves."""
        with self._cond:
            if self._orders:
                raise ValueError("restore needs a fresh broker: this one holds orders")
            seen: set[TradeUpdate] = set()
            for update in updates:
                if update not in seen:
                    seen.add(update)
                    self._replay(update)
            self._last.update(last_prices or {})

    def _replay(self, update: TradeUpdate) -> None:
        order = update.order
        record = self._orders.get(order.order_id)
        if record is None:
            if order.client_order_id in self._by_client:
                raise ValueError(f"two orders with client_order_id {order.client_order_id!r}")
            record = self._orders[order.order_id] = _Order(order)
            self._by_client[order.client_order_id] = order.order_id
        # A fill without its own price and quantity is a state the connector read by polling, not a fill: the fill
        # itself is in the log too, with them. It moves the order's state only.
        if update.event in FILL_EVENTS and update.price is not None and update.qty is not None:
            asset = self._assets.get(order.symbol)
            if asset is None or asset.asset_class not in self._costs:
                raise ValueError(f"a fill of {order.symbol}, whose asset or cost model this broker lacks")
            position_qty = self._book(record, self._costs[asset.asset_class], update.price, update.qty)
            if update.position_qty is not None and position_qty != update.position_qty:
                raise ValueError(
                    f"{order.symbol}: restored position {position_qty} but the update says {update.position_qty}"
                )
            self._last[order.symbol] = update.price
            # A fill is stamped with its bar's start: that bar must not fill again after the restart.
            self._bar_starts[order.symbol] = max(self._bar_starts.get(order.symbol, -1), update.timestamp_ns)
        known = record.state
        # The log is at least once, and polled states may come late: an order's state only moves forward.
        if (order.filled_qty, order.status in TERMINAL) >= (known.filled_qty, known.status in TERMINAL):
            record.state = order
        if record.state.status in TERMINAL:
            self._open.pop(order.order_id, None)
        else:
            self._open[order.order_id] = record
        self._clock = max(self._clock, update.timestamp_ns, order.created_at_ns)

    # -- internals (callers hold the lock) -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError("the simulated broker is closed")

    def _emit(self, update: TradeUpdate) -> None:
        self._queue.append(update)
        self._cond.notify_all()

    def _change(self, record: _Order, update: TradeUpdate) -> None:
        record.state = update.order
        if update.order.status in TERMINAL:
            self._open.pop(update.order.order_id, None)
        self._emit(update)

    def _market_values(self) -> dict[str, Decimal]:
        return {symbol: p.qty * self._last.get(symbol, p.avg_entry_price) for symbol, p in self._positions.items()}

    def _available_to_sell(self, symbol: str) -> Decimal:
        """Held minus what open sells still offer (a notional sell counted at the last price, when one is known)."""
        position = self._positions.get(symbol)
        available = position.qty if position else ZERO
        price = self._last.get(symbol)
        for record in self._open.values():
            order = record.state
            if order.symbol != symbol or order.side != "SELL":
                continue
            if order.qty is not None:
                available -= order.qty - order.filled_qty
            elif price is not None and order.notional is not None:
                available -= (order.notional - record.spent) / price
        return available

    def _validate(self, request: OrderRequest) -> None:
        def refuse(reason: str) -> OrderRefused:
            return OrderRefused(f"order {request.client_order_id!r} refused: {reason}")

        if not request.client_order_id or len(request.client_order_id) > MAX_CLIENT_ORDER_ID:
            raise refuse(f"client_order_id must have 1 to {MAX_CLIENT_ORDER_ID} characters")
        asset = self._assets.get(request.symbol)
        if asset is None:
            raise refuse(f"unknown symbol {request.symbol!r}")
        if not asset.tradable:
            raise refuse(f"{request.symbol} is not tradable")
        costs = self._costs.get(asset.asset_class)
        if costs is None:
            raise refuse(f"no cost model for asset class {asset.asset_class}")
        if request.side not in SIDES:
            raise refuse(f"side must be one of {SIDES}, not {request.side!r}")
        if request.order_type != "MARKET":
            raise refuse(f"only MARKET orders are simulated, not {request.order_type}")
        if request.time_in_force not in TIMES_IN_FORCE:
            raise refuse(f"time in force must be one of {TIMES_IN_FORCE}, not {request.time_in_force}")
        if (request.qty is None) == (request.notional is None):
            raise refuse("exactly one of qty and notional must be set")
        amount = request.qty if request.qty is not None else request.notional
        assert amount is not None
        if not amount.is_finite() or not ZERO < amount <= MAX_AMOUNT:
            raise refuse(f"qty or notional must be positive and finite (at most {MAX_AMOUNT}), not {amount}")
        if request.qty is not None and request.qty != request.qty.quantize(QTY_STEP):
            raise refuse(f"qty {request.qty} has more than 9 decimal places")
        if request.notional is not None and request.notional != request.notional.quantize(CENT):
            raise refuse(f"notional {request.notional} has more than 2 decimal places")
        fractional = request.qty is None or request.qty != request.qty.to_integral_value()
        if fractional and not asset.fractionable:
            raise refuse(f"{request.symbol} is not fractionable: whole-unit qty orders only")
        if fractional and request.time_in_force != "DAY":
            raise refuse("fractional and notional orders must be DAY market orders")
        price = self._last.get(request.symbol)
        if request.side == "BUY":
            if request.notional is not None:
                need: Decimal | None = request.notional * (ONE + _bp(costs.commission_bp))
            elif price is not None and request.qty is not None:
                need = request.qty * price * (ONE + _bp(costs.per_unit_bp))
            else:
                need = None  # no price yet: checked when it fills
            if need is not None and need > self._cash:
                raise refuse(f"insufficient buying power: needs about {need:f}, has {self._cash:f}")
        elif not self.allow_short:
            available = self._available_to_sell(request.symbol)
            if request.qty is not None:
                wanted: Decimal | None = request.qty
            else:
                assert request.notional is not None
                wanted = None if price is None else request.notional / price
            if available <= 0 or (wanted is not None and wanted > available):
                raise refuse(f"insufficient qty available to sell: {max(available, ZERO):f} (short selling is off)")

    def _fill(self, record: _Order, asset: Asset, open_price: Decimal, capacity: Decimal | None, ts: int) -> Decimal:
        """Fills what the bar allows of one order at ``open_price`` adjusted for costs; returns the qty filled."""
        order = record.state
        costs = self._costs[asset.asset_class]
        move = _bp(costs.half_spread_bp) + _bp(costs.slippage_bp)
        price = open_price * (ONE + move if order.side == "BUY" else ONE - move)
        step = QTY_STEP if asset.fractionable else ONE
        if order.qty is not None:
            wanted = order.qty - order.filled_qty
        else:
            assert order.notional is not None
            wanted = _floor((order.notional - record.spent) / price, step)
        qty = wanted if capacity is None else min(wanted, capacity)
        if qty <= 0:
            return ZERO
        gross = qty * price
        cost = gross * (ONE + _bp(costs.commission_bp))
        position = self._positions.get(order.symbol)
        held = position.qty if position else ZERO
        reason = None
        if order.side == "BUY" and cost > self._cash:
            reason = f"insufficient cash at fill: {qty:f} at {price:f} costs {cost:f}, cash is {self._cash:f}"
        elif order.side == "SELL" and not self.allow_short and qty > held:
            reason = f"selling {qty:f} of {order.symbol} would go short: {held:f} held"
        if reason is not None:
            rejected = replace(order, status="REJECTED", updated_at_ns=ts, reject_reason=reason)
            self._change(record, TradeUpdate("REJECTED", rejected, ts))
            return ZERO
        position_qty = self._book(record, costs, price, qty)
        filled_qty = order.filled_qty + qty
        if order.qty is not None:
            done = filled_qty == order.qty
        else:
            assert order.notional is not None
            done = order.notional - record.spent < max(CENT, price * step)
        state = replace(
            order,
            status="FILLED" if done else "PARTIALLY_FILLED",
            filled_qty=filled_qty,
            filled_avg_price=record.spent / filled_qty,
            updated_at_ns=ts,
            filled_at_ns=ts if done else None,
        )
        self._change(
            record,
            TradeUpdate(
                "FILL" if done else "PARTIAL_FILL",
                state,
                ts,
                price=price,
                qty=qty,
                position_qty=position_qty,
                execution_id=f"{order.order_id}-{record.fills}",
            ),
        )
        return qty

    def _book(self, record: _Order, costs: CostModel, price: Decimal, qty: Decimal) -> Decimal:
        """Books one fill into cash, the position and the order's notional; returns the position qty after it."""
        gross = qty * price
        commission = gross * _bp(costs.commission_bp)
        buy = record.state.side == "BUY"
        self._cash += -gross - commission if buy else gross - commission
        record.spent += gross
        record.fills += 1
        symbol = record.state.symbol
        position = self._positions.get(symbol, _Position(ZERO, ZERO))
        signed = qty if buy else -qty
        after = position.qty + signed
        if after == 0:
            self._positions.pop(symbol, None)
            return after
        if position.qty == 0 or (position.qty > 0) == buy:
            average = (position.qty * position.avg_entry_price + signed * price) / after
        elif (position.qty > 0) == (after > 0):
            average = position.avg_entry_price
        else:
            average = price
        self._positions[symbol] = _Position(after, average)
        return after
