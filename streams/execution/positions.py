"""The position tracker: broker order updates folded into positions per strategy. (Their reconciliation with the
broker's positions runs in the broker connector, ``connectors.reconciliation``, and comes back here as a
correction.)

Pure: no I/O; the ``Book`` is a plain mutable dataclass that round-trips through JSON (``to_json``/``from_json``).
Money and quantities are ``Decimal``.

Out-of-order and duplicate safe by construction. The broker reports each order's CUMULATIVE filled quantity and
average price; the book remembers, per order, what it has applied (``filled_qty``, ``filled_notional``). An update
whose cumulative quantity is not above what was applied is stale or repeated and changes nothing; one that skips a
dropped update applies the whole difference. The new fill is ``q = cum - applied`` with cash
``cum x avg - applied_notional``, so the cash booked over an order's life is exactly ``final cum x final avg``.

Attribution is cumulative too: at a cumulative fill ``S`` (signed: BUY positive) each strategy's share is
``S x amount_i / total`` rounded toward zero to ``QTY_DECIMALS`` decimals, with the residue on the largest
allocation (ties: smallest strategy id) so the shares sum to ``S`` exactly; its cash share is the order's cumulative
notional split in proportion to the quantity shares, rounded to ``CASH_DECIMALS`` with the residue on the same
strategy. A fill books, per strategy, the change of its share between the applied and the new cumulative state. So
the strategies' quantities and cash after an order depend only on the order's final state - not on which updates
arrived, or in what order - and when a quantity order fills completely each strategy gets exactly its planned delta.

Quantity orders: the allocation amounts are the planned signed quantities (``rebalance.Allocation.qty``), ``total``
is the signed order quantity. Notional orders (the quantity is unknown until the fills): the amounts are the
strategies' signed CASH amounts and ``total`` their sum, so the fills are shared in proportion to each strategy's
notional share. An order the book never registered (placed outside Tidemark) is booked entirely to
``UNATTRIBUTED``; registering it later moves what was booked so far to the strategies.

Costs: the average cost method. ``Holding.cost`` is the signed cash paid for the current quantity (positive for a
long, negative - cash received - for a short), so ``cost / qty`` is the average price. A fill that increases the
position adds its cash to the cost; one that reduces it releases the average cost of the closed part and realises
``proceeds - released cost`` into ``Holding.realised``; one that crosses zero closes, then opens the rest at the fill's
price. ``Book.cash`` is each strategy's cash flow: payments negative, receipts positive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from streams.execution.rebalance import BUY, SELL, Allocation

UNATTRIBUTED = "unattributed"
"""The strategy id of positions nobody in Tidemark ordered: outside orders and reconciliation corrections."""
QTY_DECIMALS = 9
CASH_DECIMALS = 12
_PRECISION = 50
_ZERO = Decimal(0)


@dataclass
class Holding:
    qty: Decimal = _ZERO
    """Signed."""
    cost: Decimal = _ZERO
    """Signed cash paid for ``qty`` (average cost method): positive for a long, negative for a short."""
    realised: Decimal = _ZERO
    """Profit and loss realised by reductions, accumulated."""

    @property
    def avg_price(self) -> Decimal | None:
        return self.cost / self.qty if self.qty else None


@dataclass
class OrderProgress:
    symbol: str
    side: str
    allocations: tuple[Allocation, ...]
    """Signed amounts in the order's unit: quantities for a quantity order, cash for a notional order."""
    qty: Decimal | None = None
    notional: Decimal | None = None
    registered: bool = True
    """False for an order first seen in an update (placed outside Tidemark): booked to ``UNATTRIBUTED``."""
    filled_qty: Decimal = _ZERO
    """Cumulative quantity applied."""
    filled_notional: Decimal = _ZERO
    """Cumulative cash applied (``filled_qty x filled_avg_price``), positive."""


@dataclass(frozen=True)
class Fill:
    """A change the book made to one strategy's holding: what the caller publishes."""

    strategy_id: str
    symbol: str
    qty: Decimal
    """Signed: positive when the strategy bought."""
    price: Decimal
    """The price of the fill (for an order fill: the price of the quantity newly filled)."""
    cash: Decimal
    """Signed cash paid: positive for a purchase; the strategy's cash flow changed by minus this."""


@dataclass
class Book:
    holdings: dict[tuple[str, str], Holding] = field(default_factory=dict)
    """Per (strategy id, symbol)."""
    cash: dict[str, Decimal] = field(default_factory=dict)
    """Per strategy: receipts minus payments."""
    orders: dict[str, OrderProgress] = field(default_factory=dict)
    """Per order key: the client order id (``"broker:" + order id`` for an outside order without one)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "holdings": [
                    {
                        "strategy_id": sid,
                        "symbol": sym,
                        "qty": str(h.qty),
                        "cost": str(h.cost),
                        "realised": str(h.realised),
                    }
                    for (sid, sym), h in sorted(self.holdings.items())
                ],
                "cash": {sid: str(c) for sid, c in sorted(self.cash.items())},
                "orders": {key: _order_json(o) for key, o in sorted(self.orders.items())},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Book:
        data = json.loads(text)
        return cls(
            holdings={
                (h["strategy_id"], h["symbol"]): Holding(Decimal(h["qty"]), Decimal(h["cost"]), Decimal(h["realised"]))
                for h in data["holdings"]
            },
            cash={sid: Decimal(c) for sid, c in data["cash"].items()},
            orders={key: _order_from_json(o) for key, o in data["orders"].items()},
        )


def _optional(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _order_json(order: OrderProgress) -> dict[str, Any]:
    return {
        "symbol": order.symbol,
        "side": order.side,
        "allocations": [[a.strategy_id, str(a.qty)] for a in order.allocations],
        "qty": _optional(order.qty),
        "notional": _optional(order.notional),
        "registered": order.registered,
        "filled_qty": str(order.filled_qty),
        "filled_notional": str(order.filled_notional),
    }


def _order_from_json(data: Mapping[str, Any]) -> OrderProgress:
    return OrderProgress(
        symbol=data["symbol"],
        side=data["side"],
        allocations=tuple(Allocation(sid, Decimal(q)) for sid, q in data["allocations"]),
        qty=None if data["qty"] is None else Decimal(data["qty"]),
        notional=None if data["notional"] is None else Decimal(data["notional"]),
        registered=data["registered"],
        filled_qty=Decimal(data["filled_qty"]),
        filled_notional=Decimal(data["filled_notional"]),
    )


def order_key(client_order_id: str, order_id: str = "") -> str:
    """The book's key of an order: its client order id, else (an outside order without one) the broker's id."""
    if client_order_id:
        return client_order_id
    if order_id:
        return f"broker:{order_id}"
    raise ValueError("an order update needs a client_order_id or an order_id")


def register(
    book: Book,
    client_order_id: str,
    symbol: str,
    side: str,
    qty: Decimal | None,
    allocations: Sequence[Allocation],
    notional: Decimal | None = None,
) -> list[Fill]:
    """Record an order's allocations (from its PlaceOrder). Exactly one of ``qty`` (positive; allocations are signed
    quantities summing to the signed qty) and ``notional`` (positive; allocations are signed cash amounts summing to
    the signed notional) is set. Registering the same order again changes nothing. When updates for the order
    arrived first (booked to ``UNATTRIBUTED``), what they booked moves to the strategies: the returned fills."""
    _check_side(side)
    if (qty is None) == (notional is None):
        raise ValueError(f"order {client_order_id}: exactly one of qty and notional, not qty={qty} notional={notional}")
    size = qty if qty is not None else notional
    assert size is not None
    if not (size.is_finite() and size > 0):
        raise ValueError(f"order {client_order_id}: size {size} is not positive")
    if not allocations:
        allocations = [Allocation(UNATTRIBUTED, size if side == BUY else -size)]
    ordered = tuple(sorted(allocations, key=lambda a: a.strategy_id))
    if len({a.strategy_id for a in ordered}) != len(ordered):
        raise ValueError(f"order {client_order_id}: a strategy is allocated twice")
    signed = size if side == BUY else -size
    if sum((a.qty for a in ordered), _ZERO) != signed:
        raise ValueError(f"order {client_order_id}: allocations sum to {sum(a.qty for a in ordered)}, not {signed}")
    key = order_key(client_order_id)
    known = book.orders.get(key)
    if known is not None and known.registered:
        if (known.symbol, known.side, known.allocations, known.qty, known.notional) != (
            symbol,
            side,
            ordered,
            qty,
            notional,
        ):
            raise ValueError(f"order {client_order_id} is already registered differently")
        return []
    progress = OrderProgress(symbol, side, ordered, qty, notional)
    if known is None:
        book.orders[key] = progress
        return []
    if known.symbol != symbol or known.side != side:
        raise ValueError(f"order {client_order_id}: updates said {known.side} {known.symbol}, not {side} {symbol}")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        before = _shares(known, known.filled_qty, known.filled_notional)
        progress.filled_qty, progress.filled_notional = known.filled_qty, known.filled_notional
        after = _shares(progress, progress.filled_qty, progress.filled_notional)
        book.orders[key] = progress
        return _book_changes(book, symbol, before, after, _step_price(known.filled_qty, known.filled_notional))


def apply_update(
    book: Book,
    client_order_id: str,
    symbol: str,
    side: str,
    cumulative_filled_qty: Decimal,
    filled_avg_price: Decimal | None,
    order_id: str = "",
) -> list[Fill]:
    """Fold one broker update (the order's cumulative state) into the book; the fills it booked, by strategy id.

    A stale or repeated update (cumulative quantity not above what was applied) changes nothing and returns [].
    ``order_id`` keys an outside order that has no client order id.
    """
    _check_side(side)
    if not (cumulative_filled_qty.is_finite() and cumulative_filled_qty >= 0):
        raise ValueError(f"order {client_order_id or order_id}: cumulative filled qty {cumulative_filled_qty}")
    key = order_key(client_order_id, order_id)
    progress = book.orders.get(key)
    if progress is None:
        progress = OrderProgress(symbol, side, (Allocation(UNATTRIBUTED, Decimal(1 if side == BUY else -1)),))
        progress.registered = False
        book.orders[key] = progress
    elif progress.symbol != symbol or progress.side != side:
        raise ValueError(f"order {key} is {progress.side} {progress.symbol}, the update says {side} {symbol}")
    if cumulative_filled_qty <= progress.filled_qty:
        return []
    if filled_avg_price is None or not (filled_avg_price.is_finite() and filled_avg_price > 0):
        raise ValueError(f"order {key}: filled {cumulative_filled_qty} at average price {filled_avg_price}")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        notional = cumulative_filled_qty * filled_avg_price
        q = cumulative_filled_qty - progress.filled_qty
        price = _step_price(q, notional - progress.filled_notional)
        before = _shares(progress, progress.filled_qty, progress.filled_notional)
        after = _shares(progress, cumulative_filled_qty, notional)
        progress.filled_qty, progress.filled_notional = cumulative_filled_qty, notional
        return _book_changes(book, symbol, before, after, price)


def apply_correction(book: Book, symbol: str, strategy_id: str, qty_delta: Decimal, price: Decimal) -> Fill:
    """Book an explicit change of a holding as a trade at ``price`` (cash ``qty_delta x price``). Pass price 0 for a
    change without cash (a split, a transfer in): the average price of the holding then absorbs it."""
    if not (qty_delta.is_finite() and price.is_finite() and price >= 0):
        raise ValueError(f"correction of {strategy_id} {symbol}: {qty_delta} at {price}")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        fill = Fill(strategy_id, symbol, qty_delta, price, qty_delta * price)
        _book_fill(book, fill)
        return fill


def quantities(book: Book) -> dict[tuple[str, str], Decimal]:
    """Non-zero quantity per (strategy id, symbol): the planner's ``holdings``."""
    return {key: h.qty for key, h in sorted(book.holdings.items()) if h.qty != 0}


def _check_side(side: str) -> None:
    if side not in (BUY, SELL):
        raise ValueError(f"side must be BUY or SELL, not {side!r}")


def _step_price(qty: Decimal, cash: Decimal) -> Decimal:
    """The price of a fill, to ``CASH_DECIMALS`` decimals at most (informational: the cash is booked exactly)."""
    if not qty:
        return _ZERO
    price = cash / qty
    exponent = price.as_tuple().exponent
    assert isinstance(exponent, int)
    return price.quantize(Decimal(1).scaleb(-CASH_DECIMALS)) if exponent < -CASH_DECIMALS else price


def _shares(order: OrderProgress, filled_qty: Decimal, filled_notional: Decimal) -> dict[str, tuple[Decimal, Decimal]]:
    """Each strategy's (signed qty, signed cash) of the order at a cumulative state; the sums are exact."""
    signed = filled_qty if order.side == BUY else -filled_qty
    cash = filled_notional if order.side == BUY else -filled_notional
    total = sum((a.qty for a in order.allocations), _ZERO)
    if total == 0:
        raise ValueError(f"order on {order.symbol}: its allocations sum to zero")
    step = Decimal(1).scaleb(-QTY_DECIMALS)
    qty_shares = {
        a.strategy_id: (signed * a.qty / total).quantize(step, rounding=ROUND_DOWN) for a in order.allocations
    }
    largest = min(order.allocations, key=lambda a: (-abs(a.qty), a.strategy_id)).strategy_id
    qty_shares[largest] += signed - sum(qty_shares.values(), _ZERO)
    cent = Decimal(1).scaleb(-CASH_DECIMALS)
    cash_shares = {
        sid: (cash * q / signed).quantize(cent, rounding=ROUND_HALF_EVEN) if signed else _ZERO
        for sid, q in qty_shares.items()
    }
    cash_shares[largest] += cash - sum(cash_shares.values(), _ZERO)
    return {sid: (qty_shares[sid], cash_shares[sid]) for sid in sorted(qty_shares)}


def _book_changes(
    book: Book,
    symbol: str,
    before: Mapping[str, tuple[Decimal, Decimal]],
    after: Mapping[str, tuple[Decimal, Decimal]],
    price: Decimal,
) -> list[Fill]:
    fills = []
    for sid in sorted(set(before) | set(after)):
        q0, c0 = before.get(sid, (_ZERO, _ZERO))
        q1, c1 = after.get(sid, (_ZERO, _ZERO))
        if q1 != q0 or c1 != c0:
            fill = Fill(sid, symbol, q1 - q0, price, c1 - c0)
            _book_fill(book, fill)
            fills.append(fill)
    return fills


def _book_fill(book: Book, fill: Fill) -> None:
    """Apply one strategy's fill to its holding (average cost) and cash flow."""
    holding = book.holdings.setdefault((fill.strategy_id, fill.symbol), Holding())
    book.cash[fill.strategy_id] = book.cash.get(fill.strategy_id, _ZERO) - fill.cash
    q, cash = fill.qty, fill.cash
    if q == 0:
        if holding.qty:
            holding.cost += cash
        else:
            holding.realised -= cash
    elif holding.qty == 0 or (holding.qty > 0) == (q > 0):
        holding.qty += q
        holding.cost += cash
    else:
        closing = q if abs(q) <= abs(holding.qty) else -holding.qty
        closing_cash = cash if closing == q else cash * closing / q
        released = holding.cost if closing == -holding.qty else holding.cost * -closing / holding.qty
        holding.realised += -closing_cash - released
        holding.qty += closing
        holding.cost -= released
        if closing != q:
            holding.qty += q - closing
            holding.cost += cash - closing_cash
