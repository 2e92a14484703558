"""The rebalance planner: a portfolio's targets and the current holdings in, one order per symbol out.

Pure: no I/O. Money and quantities are ``Decimal``; the strategies' positions arrive as floats (signed fractions of
the strategy's capital, from its latest performance record) and are converted through their shortest ``repr``, so
``0.1`` is ``Decimal("0.1")``, not its binary expansion.

For each strategy and symbol the target quantity is ``weight x capital x position / price``; a strategy that holds a
symbol but is not in the targets (or no longer has a position in it) goes to 0. The strategies' changes on a symbol
are netted into ONE order, rounded toward zero: to ``Rules.qty_decimals`` decimals for fractionable assets, to whole
units otherwise. The order's ``allocations`` are the per-strategy signed changes, each rounded toward zero to
``qty_decimals`` decimals; the rounding residue (``order qty - sum``) goes to the allocation with the largest
absolute change among the strategies that keep a target in the symbol (so a strategy that exits leaves exactly
flat), or among all of them when every strategy exits; ties go to the smallest strategy id. The allocations then
sum to the order's signed quantity exactly.

Nothing is sent for a refusal: an unknown symbol, a symbol the broker does not trade, an unusable price, a target
that is not a finite number, and - when shorts are not allowed - a strategy's short target (that strategy's target
is held at 0, which may still sell what it holds, and the refusal says so). When the buys together exceed the
buying power the WHOLE rebalance is refused: a partial rebalance would leave the portfolio in a state nobody
planned. Sells come before buys in the plan (sells free cash), each group by symbol.

Ids are deterministic: the order for ``symbol`` in rebalance ``rebalance_id`` has the event id
``deterministic_event_id("place-order", rebalance_id, symbol)`` and the client order id ``client_order_id(event_id)``,
so planning the same rebalance again (a replay, a restart) yields the same orders and the broker refuses the
duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, localcontext

from core.events import deterministic_event_id

BUY = "BUY"
SELL = "SELL"
CLIENT_ORDER_ID_PREFIX = "tm-"
CLIENT_ORDER_ID_MAX_LENGTH = 48
"""Alpaca's limit on ``client_order_id``."""
WHOLE_REBALANCE = "*"
"""The ``symbol`` of a refusal of the whole rebalance (buying power)."""
BAND_REASON = "inside the no-trade band"
_PRECISION = 50
"""Decimal digits for the target arithmetic: far more than any quantity or price needs, so only the explicit
rounding toward zero to ``qty_decimals`` ever rounds."""
_UNTRADED = {"FX": "FX", "FUTURE": "futures", "EQUITY": "this equity"}


@dataclass(frozen=True)
class StrategyTarget:
    """One strategy's share of the portfolio and its current positions (signed fractions of its own capital)."""

    strategy_id: str
    weight: Decimal
    positions: Mapping[str, float]


@dataclass(frozen=True)
class Venue:
    """What the broker says about a symbol (``connectors.broker.Asset``)."""

    tradable: bool
    fractionable: bool
    asset_class: str = "EQUITY"


@dataclass(frozen=True)
class Rules:
    min_order_notional: Decimal = Decimal(1)
    """Smallest order worth sending, in account currency (Alpaca's minimum for fractional orders is $1)."""
    no_trade_band: Decimal = Decimal("0.005")
    """Changes smaller than this fraction of the capital (per symbol) are not traded."""
    qty_decimals: int = 9
    """Decimals of a fractional quantity (Alpaca allows 9); also the precision of the allocations."""
    allow_short: bool = False
    """Alpaca's fractional orders are long only."""

    def __post_init__(self) -> None:
        if not (self.min_order_notional.is_finite() and self.min_order_notional >= 0):
            raise ValueError(f"min_order_notional must be a finite non-negative amount, not {self.min_order_notional}")
        if not (self.no_trade_band.is_finite() and 0 <= self.no_trade_band < 1):
            raise ValueError(f"no_trade_band must be a fraction in [0, 1), not {self.no_trade_band}")
        if not 0 <= self.qty_decimals <= 18:
            raise ValueError(f"qty_decimals must be in [0, 18], not {self.qty_decimals}")


@dataclass(frozen=True)
class Allocation:
    """One strategy's signed share of an order (positive: the strategy buys)."""

    strategy_id: str
    qty: Decimal


@dataclass(frozen=True)
class PlannedOrder:
    symbol: str
    side: str
    """BUY or SELL."""
    qty: Decimal
    """Positive."""
    notional: Decimal
    """Estimate: ``qty x price``."""
    price: Decimal
    """The price the plan used."""
    allocations: tuple[Allocation, ...]
    """Signed, by strategy id; they sum to the signed quantity exactly."""
    event_id: str
    client_order_id: str

    @property
    def signed_qty(self) -> Decimal:
        return self.qty if self.side == BUY else -self.qty


@dataclass(frozen=True)
class Refusal:
    """Something the plan will not do, and why (with the numbers)."""

    symbol: str
    strategy_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A symbol left alone on purpose (no-trade band, minimum order, less than one whole unit): not an error."""

    symbol: str
    strategy_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Plan:
    rebalance_id: str
    orders: tuple[PlannedOrder, ...]
    """Sells first, then buys; each group by symbol."""
    refusals: tuple[Refusal, ...]
    skipped: tuple[Skipped, ...]


def client_order_id(event_id: str) -> str:
    """``"tm-"`` and the event id's letters and digits, lower case, cut at 48 characters (Alpaca's limit).

    For a uuid event id that is ``tm-`` and its 32 hex digits (35 characters): nothing is cut, so two different
    event ids never share a client order id, and the same event id always gives the same one.
    """
    body = "".join(c for c in event_id.lower() if c.isascii() and c.isalnum())
    if not body:
        raise ValueError(f"no letters or digits in event id {event_id!r}")
    return (CLIENT_ORDER_ID_PREFIX + body)[:CLIENT_ORDER_ID_MAX_LENGTH]


def order_event_id(rebalance_id: str, symbol: str) -> str:
    """The event id of the PlaceOrder for ``symbol`` in rebalance ``rebalance_id``."""
    return deterministic_event_id("place-order", rebalance_id, symbol)


def plan(
    rebalance_id: str,
    targets: Sequence[StrategyTarget],
    capital: Decimal,
    prices: Mapping[str, Decimal],
    holdings: Mapping[tuple[str, str], Decimal],
    venue: Mapping[str, Venue],
    rules: Rules | None = None,
    buying_power: Decimal | None = None,
) -> Plan:
    """The orders that move ``holdings`` (per (strategy id, symbol)) to the ``targets``, and what was refused or
    skipped. Raises ``ValueError`` for inputs no caller should pass (a non-finite or negative capital, a strategy
    listed twice, a non-finite holding)."""
    rules = rules if rules is not None else Rules()
    if not (capital.is_finite() and capital >= 0):
        raise ValueError(f"capital must be a finite non-negative amount, not {capital}")
    by_id: dict[str, StrategyTarget] = {}
    for target in targets:
        if target.strategy_id in by_id:
            raise ValueError(f"strategy {target.strategy_id} is listed twice in the targets")
        by_id[target.strategy_id] = target
    for key, qty in holdings.items():
        if not qty.is_finite():
            raise ValueError(f"holding {key} is {qty}")
    symbols = sorted({s for t in targets for s in t.positions} | {s for _, s in holdings})
    orders: list[PlannedOrder] = []
    refusals: list[Refusal] = []
    skipped: list[Skipped] = []
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        for symbol in symbols:
            order = _plan_symbol(
                rebalance_id, symbol, by_id, capital, prices, holdings, venue, rules, refusals, skipped
            )
            if order is not None:
                orders.append(order)
        buys = sum((o.notional for o in orders if o.side == BUY), Decimal(0))
        if buying_power is not None and buys > buying_power:
            strategies = sorted({a.strategy_id for o in orders for a in o.allocations})
            reason = (
                f"buys of {_money(buys)} exceed buying power {_money(buying_power)}: the whole rebalance is refused "
                f"({len(orders)} orders), since a partial one would leave the portfolio in a state nobody planned"
            )
            return Plan(rebalance_id, (), (Refusal(WHOLE_REBALANCE, tuple(strategies), reason),), ())
    orders.sort(key=lambda o: (o.side != SELL, o.symbol))
    return Plan(rebalance_id, tuple(orders), tuple(refusals), tuple(skipped))


def _plan_symbol(
    rebalance_id: str,
    symbol: str,
    by_id: Mapping[str, StrategyTarget],
    capital: Decimal,
    prices: Mapping[str, Decimal],
    holdings: Mapping[tuple[str, str], Decimal],
    venue: Mapping[str, Venue],
    rules: Rules,
    refusals: list[Refusal],
    skipped: list[Skipped],
) -> PlannedOrder | None:
    held = {sid: q for (sid, s), q in holdings.items() if s == symbol and q != 0}
    wanted = {sid: t.positions[symbol] for sid, t in by_id.items() if symbol in t.positions}
    wanted = {sid: p for sid, p in wanted.items() if p != 0.0 or by_id[sid].weight.is_nan()}
    sids = tuple(sorted(set(held) | set(wanted)))
    if not sids:
        return None

    def refuse(reason: str, strategy_ids: tuple[str, ...] = sids) -> None:
        refusals.append(Refusal(symbol, strategy_ids, f"{symbol}: {reason}"))

    def skip(reason: str) -> None:
        skipped.append(Skipped(symbol, sids, f"{symbol}: {reason}"))

    where = venue.get(symbol)
    if where is None:
        refuse("unknown to the broker")
        return None
    if not where.tradable:
        kind = _UNTRADED.get(where.asset_class, where.asset_class)
        refuse(f"the broker does not trade {kind}; the strategies stay on the simulated book")
        return None
    price = prices.get(symbol)
    if price is None:
        refuse("no price to size the order with")
        return None
    if not price.is_finite() or price <= 0:
        refuse(f"price {price} is not a positive number")
        return None

    targets: dict[str, Decimal] = {}
    for sid in sids:
        position = wanted.get(sid, 0.0)
        weight = by_id[sid].weight if sid in by_id else Decimal(0)
        if not (math.isfinite(position) and weight.is_finite()):
            refuse(f"the target quantity of {sid} is not a number (weight {weight}, position {position})")
            return None
        target = weight * capital * Decimal(repr(position)) / price
        if target < 0 and not rules.allow_short:
            refuse(
                f"{sid} targets a short of {_qty(-target)} units ({_money(-target * price)}) and the account does not "
                f"sell short; its target is held at 0",
                (sid,),
            )
            target = Decimal(0)
        targets[sid] = target

    deltas = {sid: targets[sid] - held.get(sid, Decimal(0)) for sid in sids}
    net = sum(deltas.values(), Decimal(0))
    change = abs(net) * price
    band = max(rules.min_order_notional, rules.no_trade_band * capital)
    if change < band:
        skip(f"a change of {_money(change)} is {BAND_REASON} ({_money(band)})")
        return None
    step = Decimal(1).scaleb(-rules.qty_decimals) if where.fractionable else Decimal(1)
    qty = net.quantize(step, rounding=ROUND_DOWN)
    if qty == 0:
        if where.fractionable:
            skip(f"a change of {_qty(net)} units rounds to zero at {rules.qty_decimals} decimals")
        else:
            skip(f"a change of {_qty(net)} units is below one whole unit and the broker does not trade fractions of it")
        return None
    notional = abs(qty) * price
    if notional < rules.min_order_notional:
        skip(f"an order of {_money(notional)} is below the minimum order of {_money(rules.min_order_notional)}")
        return None

    allocations = _allocate(qty, deltas, {sid for sid in sids if targets[sid] != 0}, rules.qty_decimals)
    event_id = order_event_id(rebalance_id, symbol)
    return PlannedOrder(
        symbol=symbol,
        side=BUY if qty > 0 else SELL,
        qty=abs(qty),
        notional=notional,
        price=price,
        allocations=allocations,
        event_id=event_id,
        client_order_id=client_order_id(event_id),
    )


def _allocate(
    qty: Decimal, deltas: Mapping[str, Decimal], staying: Iterable[str], decimals: int
) -> tuple[Allocation, ...]:
    """The deltas rounded toward zero, the residue on the largest staying (else largest) one; zeros dropped."""
    step = Decimal(1).scaleb(-decimals)
    rounded = {sid: d.quantize(step, rounding=ROUND_DOWN) for sid, d in deltas.items()}
    residue = qty - sum(rounded.values(), Decimal(0))
    if residue:
        pool = sorted(set(staying)) or sorted(deltas)
        largest = min(pool, key=lambda sid: (-abs(deltas[sid]), sid))
        rounded[largest] += residue
    return tuple(Allocation(sid, q) for sid, q in sorted(rounded.items()) if q != 0)


def _money(amount: Decimal) -> str:
    return f"{amount:,.2f}"


def _qty(qty: Decimal) -> str:
    text = f"{qty:.9f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
