"""The broker contract (``connectors.broker``), one suite run against every implementation alike: each case places
orders through ``venue.broker`` and makes the market trade through the venue's driver, never through anything
specific to one broker.

A driver (``Venue``) wraps one broker with the controls a test needs: ``add_asset``, ``set_price`` (a price without
a trade), ``fill`` (the market trades at ``price``: open orders of the symbol fill, ``fraction`` of what each has
left), ``fill_price`` (what a market order pays or gets when the market trades at a price: the simulated broker moves
it by its half spread and slippage), and ``wait_for`` (collects trade updates until a condition holds; some brokers
deliver them asynchronously). ``VENUES`` maps a name to a driver factory: adding a broker is one entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from typing import Protocol

import pytest

from connectors.alpaca import AlpacaBroker
from connectors.broker import (
    Asset,
    Broker,
    BrokerOrder,
    DuplicateClientOrderId,
    OrderRefused,
    OrderRequest,
    TradeUpdate,
)
from connectors.simulated import SimulatedBroker
from core.costs import CostModel
from fakes.alpaca import FakeAlpaca

CASH = Decimal(100_000)
WAIT_S = 10.0


class Venue(Protocol):
    broker: Broker
    seen: list[TradeUpdate]

    def add_asset(
        self, symbol: str, tradable: bool = True, fractionable: bool = True, asset_class: str = "EQUITY"
    ) -> None: ...

    def set_price(self, symbol: str, price: Decimal) -> None: ...

    def fill(self, symbol: str, price: Decimal, fraction: Decimal = Decimal(1)) -> None: ...

    def fill_price(self, side: str, price: Decimal) -> Decimal: ...

    def wait_for(self, done: Callable[[list[TradeUpdate]], bool]) -> list[TradeUpdate]: ...


class _Collector:
    """``seen`` and ``wait_for``, shared by the drivers."""

    broker: Broker

    def __init__(self) -> None:
        self.seen: list[TradeUpdate] = []

    def wait_for(self, done: Callable[[list[TradeUpdate]], bool]) -> list[TradeUpdate]:
        deadline = time.monotonic() + WAIT_S
        while not done(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                got = [(u.event, u.order.client_order_id) for u in self.seen]
                raise AssertionError(f"no such trade updates within {WAIT_S}s; got {got}")
            self.seen += self.broker.updates(min(left, 0.5))
        return self.seen


SIM_COSTS = {
    # No commission, so that cash moves by exactly the fills' notional on every broker; the price still moves.
    "EQUITY": CostModel(commission_bp=0.0, half_spread_bp=1.0, slippage_bp=1.0),
    "FX": CostModel(commission_bp=0.0, half_spread_bp=0.5, slippage_bp=0.3),
    "FUTURE": CostModel(commission_bp=0.0, half_spread_bp=0.25, slippage_bp=0.5),
}
BAR_NS = 60_000_000_000


class SimulatedVenue(_Collector):
    """The market is a bar per ``fill``, a minute after the last one, opening at the price with the volume that
    fills the wanted fraction at the broker's participation."""

    def __init__(self) -> None:
        super().__init__()
        self.sim = SimulatedBroker("sim-contract", CASH, SIM_COSTS)
        self.broker = self.sim
        self._start_ns = 0

    def add_asset(
        self, symbol: str, tradable: bool = True, fractionable: bool = True, asset_class: str = "EQUITY"
    ) -> None:
        self.sim.add_asset(Asset(symbol, asset_class, tradable, fractionable))

    def set_price(self, symbol: str, price: Decimal) -> None:
        self.sim.mark(symbol, price)

    def fill(self, symbol: str, price: Decimal, fraction: Decimal = Decimal(1)) -> None:
        volume = Decimal(10) ** 12
        if fraction < 1:
            remaining = sum(
                ((o.qty or Decimal(0)) - o.filled_qty for o in self.sim.orders() if _open(o) and o.symbol == symbol),
                Decimal(0),
            )
            volume = remaining * fraction / self.sim.participation
        self._start_ns += BAR_NS
        self.sim.on_bar(symbol, self._start_ns, price, price, price, price, volume)

    def fill_price(self, side: str, price: Decimal) -> Decimal:
        move = Decimal("0.0002")  # SIM_COSTS["EQUITY"]: half spread + slippage, 2 bp
        return price * (1 + move) if side == "BUY" else price * (1 - move)


@contextmanager
def simulated_venue() -> Iterator[Venue]:
    venue = SimulatedVenue()
    try:
        yield venue
    finally:
        venue.broker.close()


ALPACA_CLASSES = {"EQUITY": "us_equity"}


class AlpacaVenue(_Collector):
    """The fake Alpaca server: its ``fill`` trades at the price itself, with no costs."""

    def __init__(self, fake: FakeAlpaca, broker: AlpacaBroker) -> None:
        super().__init__()
        self.fake = fake
        self.broker = broker

    def add_asset(
        self, symbol: str, tradable: bool = True, fractionable: bool = True, asset_class: str = "EQUITY"
    ) -> None:
        self.fake.add_asset(symbol, tradable, fractionable, ALPACA_CLASSES[asset_class])

    def set_price(self, symbol: str, price: Decimal) -> None:
        self.fake.set_price(symbol, price)

    def fill(self, symbol: str, price: Decimal, fraction: Decimal = Decimal(1)) -> None:
        self.fake.set_price(symbol, price)  # the market trades there: positions are valued at it
        self.fake.fill(symbol, price, fraction=float(fraction))

    def fill_price(self, side: str, price: Decimal) -> Decimal:
        return price


@contextmanager
def alpaca_venue() -> Iterator[Venue]:
    with FakeAlpaca(cash=CASH) as fake:
        broker = AlpacaBroker(
            fake.key_id, fake.secret_key, paper=True, rest_url=fake.rest_url, stream_url=fake.stream_url
        )
        try:
            broker.start_updates()
            deadline = time.monotonic() + WAIT_S
            while not broker.listening:  # updates sent before the stream listens are lost, as at Alpaca
                assert time.monotonic() < deadline, "the trade-updates stream did not start listening"
                time.sleep(0.01)
            yield AlpacaVenue(fake, broker)
        finally:
            broker.close()


VENUES: dict[str, Callable[[], AbstractContextManager[Venue]]] = {
    "simulated": simulated_venue,
    "alpaca": alpaca_venue,
}


@pytest.fixture(params=sorted(VENUES))
def venue(request: pytest.FixtureRequest) -> Iterator[Venue]:
    with VENUES[request.param]() as v:
        yield v


def _open(order: BrokerOrder) -> bool:
    return order.status not in {"FILLED", "CANCELED", "EXPIRED", "REJECTED", "DONE_FOR_DAY", "REPLACED"}


def _events(updates: list[TradeUpdate], client_order_id: str) -> list[str]:
    return [u.event for u in updates if u.order.client_order_id == client_order_id]


def _has(event: str, client_order_id: str) -> Callable[[list[TradeUpdate]], bool]:
    return lambda updates: event in _events(updates, client_order_id)


def _fills(updates: list[TradeUpdate], client_order_id: str) -> list[TradeUpdate]:
    return [u for u in updates if u.order.client_order_id == client_order_id and u.event in ("FILL", "PARTIAL_FILL")]


def _buy(venue: Venue, symbol: str, price: Decimal = Decimal(100)) -> None:
    venue.add_asset(symbol)
    venue.set_price(symbol, price)


def test_a_qty_buy_fills_and_shows_in_positions_and_cash(venue: Venue) -> None:
    _buy(venue, "AAPL")
    cash = venue.broker.account().cash
    placed = venue.broker.submit(OrderRequest("buy-1", "AAPL", "BUY", qty=Decimal(10)))
    assert (placed.client_order_id, placed.symbol, placed.side, placed.qty) == ("buy-1", "AAPL", "BUY", Decimal(10))
    assert placed.filled_qty == 0
    venue.fill("AAPL", Decimal(100))
    updates = venue.wait_for(_has("FILL", "buy-1"))
    price = venue.fill_price("BUY", Decimal(100))
    assert [(u.price, u.qty, u.position_qty) for u in _fills(updates, "buy-1")] == [(price, Decimal(10), Decimal(10))]
    order = venue.broker.order_by_client_id("buy-1")
    assert order is not None
    assert (order.status, order.filled_qty, order.filled_avg_price) == ("FILLED", Decimal(10), price)
    [position] = venue.broker.positions()
    assert (position.symbol, position.qty, position.avg_entry_price) == ("AAPL", Decimal(10), price)
    account = venue.broker.account()
    assert account.cash == cash - 10 * price
    assert account.equity == account.cash + 10 * Decimal(100)


def test_a_notional_buy_spends_at_most_the_notional(venue: Venue) -> None:
    _buy(venue, "MSFT", Decimal(300))
    cash = venue.broker.account().cash
    venue.broker.submit(OrderRequest("notional-1", "MSFT", "BUY", notional=Decimal(1000)))
    venue.fill("MSFT", Decimal(300))
    fills = _fills(venue.wait_for(_has("FILL", "notional-1")), "notional-1")
    spent = sum((u.qty * u.price for u in fills if u.qty is not None and u.price is not None), Decimal(0))
    price = venue.fill_price("BUY", Decimal(300))
    assert Decimal(1000) - price * Decimal("1e-9") <= spent <= Decimal(1000)
    order = venue.broker.order_by_client_id("notional-1")
    assert order is not None and order.status == "FILLED"
    assert order.qty is None and order.notional == Decimal(1000)
    [position] = venue.broker.positions()
    assert position.qty == order.filled_qty == sum((u.qty or Decimal(0) for u in fills), Decimal(0))
    assert venue.broker.account().cash == cash - spent


def test_a_repeated_client_order_id_is_a_duplicate_and_the_first_order_stays(venue: Venue) -> None:
    _buy(venue, "AAPL")
    first = venue.broker.submit(OrderRequest("dup-1", "AAPL", "BUY", qty=Decimal(1)))
    with pytest.raises(DuplicateClientOrderId):
        venue.broker.submit(OrderRequest("dup-1", "AAPL", "BUY", qty=Decimal(2)))
    found = venue.broker.order_by_client_id("dup-1")
    assert found is not None and (found.order_id, found.qty) == (first.order_id, Decimal(1))
    assert [o.client_order_id for o in venue.broker.orders()] == ["dup-1"]
    assert venue.broker.order_by_client_id("never-placed") is None


def test_a_partial_fill_then_a_fill(venue: Venue) -> None:
    _buy(venue, "AAPL")
    venue.broker.submit(OrderRequest("partial-1", "AAPL", "BUY", qty=Decimal(10)))
    venue.fill("AAPL", Decimal(100), fraction=Decimal("0.5"))
    venue.wait_for(_has("PARTIAL_FILL", "partial-1"))
    order = venue.broker.order_by_client_id("partial-1")
    assert order is not None and (order.status, order.filled_qty) == ("PARTIALLY_FILLED", Decimal(5))
    venue.fill("AAPL", Decimal(102))
    fills = _fills(venue.wait_for(_has("FILL", "partial-1")), "partial-1")
    first, second = venue.fill_price("BUY", Decimal(100)), venue.fill_price("BUY", Decimal(102))
    assert [(u.event, u.qty, u.price) for u in fills] == [
        ("PARTIAL_FILL", Decimal(5), first),
        ("FILL", Decimal(5), second),
    ]
    assert [u.order.filled_qty for u in fills] == [Decimal(5), Decimal(10)]  # cumulative, monotone
    assert [u.position_qty for u in fills] == [Decimal(5), Decimal(10)]
    order = venue.broker.order_by_client_id("partial-1")
    assert order is not None and order.status == "FILLED"
    assert order.filled_avg_price == (first + second) / 2
    [position] = venue.broker.positions()
    assert (position.qty, position.avg_entry_price) == (Decimal(10), (first + second) / 2)


def test_a_sell_reduces_the_position_and_a_whole_sell_closes_it(venue: Venue) -> None:
    _buy(venue, "AAPL")
    venue.broker.submit(OrderRequest("sell-buy", "AAPL", "BUY", qty=Decimal(10)))
    venue.fill("AAPL", Decimal(100))
    venue.wait_for(_has("FILL", "sell-buy"))
    cash = venue.broker.account().cash
    venue.broker.submit(OrderRequest("sell-4", "AAPL", "SELL", qty=Decimal(4)))
    venue.fill("AAPL", Decimal(110))
    [fill] = _fills(venue.wait_for(_has("FILL", "sell-4")), "sell-4")
    price = venue.fill_price("SELL", Decimal(110))
    assert (fill.price, fill.qty, fill.position_qty) == (price, Decimal(4), Decimal(6))
    [position] = venue.broker.positions()
    assert (position.qty, position.avg_entry_price) == (Decimal(6), venue.fill_price("BUY", Decimal(100)))
    assert venue.broker.account().cash == cash + 4 * price
    venue.broker.submit(OrderRequest("sell-6", "AAPL", "SELL", qty=Decimal(6)))
    venue.fill("AAPL", Decimal(110))
    [fill] = _fills(venue.wait_for(_has("FILL", "sell-6")), "sell-6")
    assert fill.position_qty == 0
    assert venue.broker.positions() == []


@pytest.mark.parametrize(
    ("held", "sell"),
    [(Decimal(0), Decimal(1)), (Decimal(5), Decimal(6)), (Decimal(5), Decimal("5.5"))],
    ids=["flat", "more-than-held", "a-fraction-more"],
)
def test_selling_more_than_is_held_is_refused(venue: Venue, held: Decimal, sell: Decimal) -> None:
    _buy(venue, "AAPL")
    if held:
        venue.broker.submit(OrderRequest("short-buy", "AAPL", "BUY", qty=held))
        venue.fill("AAPL", Decimal(100))
        venue.wait_for(_has("FILL", "short-buy"))
    with pytest.raises(OrderRefused):
        venue.broker.submit(OrderRequest("short-sell", "AAPL", "SELL", qty=sell))
    assert venue.broker.order_by_client_id("short-sell") is None


def test_an_unknown_symbol_is_refused(venue: Venue) -> None:
    assert venue.broker.asset("NOPE") is None
    with pytest.raises(OrderRefused):
        venue.broker.submit(OrderRequest("unknown-1", "NOPE", "BUY", qty=Decimal(1)))


def test_known_assets_are_described(venue: Venue) -> None:
    venue.add_asset("AAPL", tradable=True, fractionable=True)
    venue.add_asset("BRK.A", tradable=True, fractionable=False)
    assert venue.broker.asset("AAPL") == Asset("AAPL", "EQUITY", tradable=True, fractionable=True)
    assert venue.broker.asset("BRK.A") == Asset("BRK.A", "EQUITY", tradable=True, fractionable=False)
    listed = venue.broker.assets()  # one request: what the connector asks before a rebalance's orders
    assert listed["AAPL"] == venue.broker.asset("AAPL") and listed["BRK.A"] == venue.broker.asset("BRK.A")
    assert "NOPE" not in listed


@pytest.mark.parametrize(
    ("tradable", "fractionable", "qty", "notional"),
    [
        (False, True, Decimal(1), None),
        (True, False, Decimal("0.5"), None),
        (True, False, None, Decimal(100)),
    ],
    ids=["not-tradable", "fraction-of-non-fractionable", "notional-of-non-fractionable"],
)
def test_orders_the_asset_does_not_allow_are_refused(
    venue: Venue, tradable: bool, fractionable: bool, qty: Decimal | None, notional: Decimal | None
) -> None:
    venue.add_asset("XYZ", tradable=tradable, fractionable=fractionable)
    venue.set_price("XYZ", Decimal(50))
    with pytest.raises(OrderRefused):
        venue.broker.submit(OrderRequest("asset-1", "XYZ", "BUY", qty=qty, notional=notional))
    assert venue.broker.orders() == []


@pytest.mark.parametrize(
    ("qty", "notional"),
    [(Decimal(1001), None), (None, Decimal(100_001))],
    ids=["qty", "notional"],
)
def test_a_buy_above_the_buying_power_is_refused(venue: Venue, qty: Decimal | None, notional: Decimal | None) -> None:
    _buy(venue, "AAPL")
    assert venue.broker.account().buying_power == CASH
    with pytest.raises(OrderRefused):
        venue.broker.submit(OrderRequest("rich-1", "AAPL", "BUY", qty=qty, notional=notional))
    assert venue.broker.orders() == []


def test_an_open_order_is_canceled_and_a_done_one_cannot_be(venue: Venue) -> None:
    _buy(venue, "AAPL")
    order = venue.broker.submit(OrderRequest("cancel-1", "AAPL", "BUY", qty=Decimal(1)))
    venue.broker.cancel(order.order_id)
    venue.wait_for(_has("CANCELED", "cancel-1"))
    found = venue.broker.order_by_client_id("cancel-1")
    assert found is not None and (found.status, found.filled_qty) == ("CANCELED", Decimal(0))
    venue.fill("AAPL", Decimal(100))  # nothing left to fill
    assert venue.broker.positions() == []
    with pytest.raises(OrderRefused):
        venue.broker.cancel(order.order_id)


def test_trade_updates_name_their_order_and_every_fill_is_its_own_execution(venue: Venue) -> None:
    _buy(venue, "AAPL")
    ids = ["ex-1", "ex-2", "ex-3"]
    placed = {i: venue.broker.submit(OrderRequest(i, "AAPL", "BUY", qty=Decimal(4))) for i in ids}
    venue.fill("AAPL", Decimal(100), fraction=Decimal("0.5"))
    venue.fill("AAPL", Decimal(101))
    updates = venue.wait_for(lambda seen: all(_has("FILL", i)(seen) for i in ids))
    for update in updates:
        assert update.order.order_id == placed[update.order.client_order_id].order_id
    for i in ids:  # how a partial fill spreads over several orders is the venue's: only the ends are fixed
        events = _events(updates, i)
        assert events[0] == "NEW" and events[-1] == "FILL" and set(events[1:-1]) <= {"PARTIAL_FILL"}
    executions = [u.execution_id for u in updates if u.event in ("FILL", "PARTIAL_FILL")]
    assert "PARTIAL_FILL" in [u.event for u in updates]
    assert None not in executions and len(set(executions)) == len(executions) > len(ids)


def test_orders_lists_every_order_oldest_first(venue: Venue) -> None:
    _buy(venue, "AAPL")
    venue.add_asset("MSFT")
    venue.set_price("MSFT", Decimal(300))
    venue.broker.submit(OrderRequest("list-1", "AAPL", "BUY", qty=Decimal(1)))
    venue.broker.submit(OrderRequest("list-2", "MSFT", "BUY", qty=Decimal(1)))
    third = venue.broker.submit(OrderRequest("list-3", "AAPL", "BUY", qty=Decimal(2)))
    venue.broker.cancel(third.order_id)
    venue.fill("AAPL", Decimal(100))
    venue.wait_for(
        lambda seen: all(_has(e, i)(seen) for e, i in [("FILL", "list-1"), ("NEW", "list-2"), ("CANCELED", "list-3")])
    )
    listed = venue.broker.orders()
    assert [(o.client_order_id, o.status) for o in listed] == [
        ("list-1", "FILLED"),
        ("list-2", "NEW"),
        ("list-3", "CANCELED"),
    ]
    assert [o.client_order_id for o in venue.broker.orders(after_ns=listed[0].created_at_ns - 1)] == [
        "list-1",
        "list-2",
        "list-3",
    ]
