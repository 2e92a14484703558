"""The simulated broker beyond the shared contract (``test_broker_contract``): when and at what price orders fill
(the next bar's open, moved and charged by the cost model), participation-capped partial fills, rejection at fill,
expiry, the restart from its own trade updates, determinism and thread safety."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

import pytest

from connectors.broker import (
    Asset,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    OrderRefused,
    OrderRequest,
    TradeUpdate,
)
from connectors.simulated import SimulatedBroker
from core.costs import DEFAULT_COSTS

D = Decimal
MINUTE = 60_000_000_000
ASSETS = {
    "AAPL": Asset("AAPL", "EQUITY", tradable=True, fractionable=True),
    "BRK.A": Asset("BRK.A", "EQUITY", tradable=True, fractionable=False),
    "EURUSD": Asset("EURUSD", "FX", tradable=True, fractionable=True),
    "MES": Asset("MES", "FUTURE", tradable=True, fractionable=False),
    "HALT": Asset("HALT", "EQUITY", tradable=False, fractionable=True),
}


def broker(cash: D = D(100_000), **kwargs: object) -> SimulatedBroker:
    return SimulatedBroker("sim-1", cash, DEFAULT_COSTS, ASSETS, **kwargs)  # type: ignore[arg-type]


def bar(
    b: SimulatedBroker, symbol: str, minute: int, open_: D | str, volume: D | int = 10**9, close: D | None = None
) -> None:
    price = D(open_)
    b.on_bar(symbol, minute * MINUTE, price, price, price, close if close is not None else price, volume)


def buy(qty: D | str | None = None, coid: str = "o-1", symbol: str = "AAPL", **kwargs: object) -> OrderRequest:
    return OrderRequest(coid, symbol, "BUY", qty=None if qty is None else D(qty), **kwargs)  # type: ignore[arg-type]


def sell(qty: D | str, coid: str = "s-1", symbol: str = "AAPL") -> OrderRequest:
    return OrderRequest(coid, symbol, "SELL", qty=D(qty))


def fills(updates: list[TradeUpdate]) -> list[tuple[str, str, D | None, D | None]]:
    return [(u.event, u.order.client_order_id, u.qty, u.price) for u in updates if u.event in ("FILL", "PARTIAL_FILL")]


# -- when and at what price ----------------------------------------------------------------------------------------


def test_an_order_fills_at_the_next_bars_open_not_at_the_bar_it_was_decided_on() -> None:
    b = broker()
    bar(b, "AAPL", 1, "100")
    order = b.submit(buy("10"))
    assert order.created_at_ns == 1 * MINUTE == b.clock_ns
    bar(b, "AAPL", 1, "101")  # bar t again (a repeat, or a late one): not after the order
    bar(b, "MSFT", 2, "50")  # another symbol's next bar
    assert fills(b.updates(0)) == []
    bar(b, "AAPL", 2, "105", close=D(106))
    assert fills(b.updates(0)) == [("FILL", "o-1", D(10), D("105.021"))]  # 105 x (1 + 2 bp)
    filled = b.order_by_client_id("o-1")
    assert filled is not None and filled.filled_at_ns == filled.updated_at_ns == 2 * MINUTE
    assert b.last_prices()["AAPL"] == D(106)


def test_an_order_placed_before_any_bar_waits_for_a_bar_after_the_starting_clock() -> None:
    b = broker(clock_ns=5 * MINUTE)
    b.submit(buy("1"))
    bar(b, "AAPL", 5, "100")
    assert fills(b.updates(0)) == []
    bar(b, "AAPL", 6, "100")
    assert [f[0] for f in fills(b.updates(0))] == ["FILL"]


@pytest.mark.parametrize(
    ("symbol", "side", "open_", "qty", "price", "cash_change"),
    [
        # EQUITY: commission 0.15 bp, half spread 1 bp, slippage 1 bp
        ("AAPL", "BUY", "100", "10", "100.02", "-1000.215003"),  # 1000.2 + 0.015003 commission
        ("AAPL", "SELL", "100", "10", "99.98", "999.785003"),  # 999.8 - 0.014997
        # FX: commission 0.2 bp, half spread 0.5 bp, slippage 0.3 bp
        ("EURUSD", "BUY", "1.1", "100000", "1.100088", "-110011.000176"),  # 110008.8 + 2.200176
        # FUTURE: commission 0.5 bp, half spread 0.25 bp, slippage 0.5 bp
        ("MES", "SELL", "5000", "2", "4999.625", "9998.7500375"),  # 9999.25 - 0.4999625
    ],
)
def test_fills_are_charged_exactly_the_cost_model(
    symbol: str, side: str, open_: str, qty: str, price: str, cash_change: str
) -> None:
    b = broker(D(1_000_000), allow_short=True)
    b.submit(OrderRequest("c-1", symbol, side, qty=D(qty)))
    bar(b, symbol, 1, open_)
    [fill] = [u for u in b.updates(0) if u.event == "FILL"]
    assert (fill.price, fill.qty) == (D(price), D(qty))
    assert b.account().cash - D(1_000_000) == D(cash_change)
    [position] = b.positions()
    signed = D(qty) if side == "BUY" else -D(qty)
    assert (position.qty, position.avg_entry_price, fill.position_qty) == (signed, D(price), signed)


def test_a_notional_buy_converts_to_qty_at_the_fill_price_rounded_down_to_9_places() -> None:
    b = broker()
    b.submit(OrderRequest("n-1", "AAPL", "BUY", notional=D(1000)))
    bar(b, "AAPL", 1, "100")
    assert fills(b.updates(0)) == [("FILL", "n-1", D("9.998000399"), D("100.02"))]  # 1000 / 100.02 = 9.99800039992
    spent = D("9.998000399") * D("100.02")
    assert b.account().cash == D(100_000) - spent * (1 + D("0.000015"))


def test_account_values_positions_at_the_last_price() -> None:
    b = broker(allow_short=True)
    b.submit(buy("10"))
    b.submit(OrderRequest("s-eur", "EURUSD", "SELL", qty=D(1000)))
    bar(b, "AAPL", 1, "100", close=D(110))
    bar(b, "EURUSD", 1, "1.1", close=D("1.2"))
    account = b.account()
    assert (account.long_market_value, account.short_market_value) == (D(1100), D(-1200))
    assert account.equity == account.cash + D(1100) - D(1200)
    assert account.buying_power == account.cash
    aapl = b.positions()[0]
    assert aapl == BrokerPosition(
        "AAPL",
        D(10),
        D("100.02"),
        "EQUITY",
        market_value=D(1100),
        current_price=D(110),
        cost_basis=D("1000.2"),
        unrealized_pl=D("99.8"),
    )


@pytest.mark.parametrize(
    ("trades", "qty", "avg"),
    [
        ([("BUY", "10", "100"), ("BUY", "10", "110")], "20", "105.021"),  # grows: weighted average
        ([("BUY", "10", "100"), ("SELL", "4", "110")], "6", "100.02"),  # reduced: unchanged
        ([("BUY", "10", "100"), ("SELL", "15", "110")], "-5", "109.978"),  # crosses zero: the crossing fill's price
        ([("SELL", "10", "100"), ("BUY", "10", "90")], None, None),  # closed
    ],
    ids=["grow", "reduce", "cross", "close"],
)
def test_average_entry_price(trades: list[tuple[str, str, str]], qty: str | None, avg: str | None) -> None:
    b = broker(allow_short=True)
    for minute, (side, amount, open_) in enumerate(trades, start=1):
        b.submit(OrderRequest(f"t-{minute}", "AAPL", side, qty=D(amount)))
        bar(b, "AAPL", minute, open_)
    expected = [] if qty is None or avg is None else [(D(qty), D(avg))]
    assert [(p.qty, p.avg_entry_price) for p in b.positions()] == expected


# -- partial fills -------------------------------------------------------------------------------------------------


def test_participation_caps_each_bar_and_the_rest_fills_in_later_bars() -> None:
    b = broker(participation=D("0.1"))
    b.submit(buy("25"))
    for minute, open_ in enumerate(["100", "101", "102"], start=1):
        bar(b, "AAPL", minute, open_, volume=100)
    updates = b.updates(0)
    assert fills(updates) == [
        ("PARTIAL_FILL", "o-1", D(10), D("100.02")),
        ("PARTIAL_FILL", "o-1", D(10), D("101.0202")),
        ("FILL", "o-1", D(5), D("102.0204")),
    ]
    assert [u.order.filled_qty for u in updates if u.event != "NEW"] == [D(10), D(20), D(25)]
    assert [u.order.status for u in updates] == ["NEW", "PARTIALLY_FILLED", "PARTIALLY_FILLED", "FILLED"]
    order = b.order_by_client_id("o-1")
    assert order is not None
    assert order.filled_avg_price == (10 * D("100.02") + 10 * D("101.0202") + 5 * D("102.0204")) / 25
    assert [u.execution_id for u in updates if u.execution_id] == [f"{order.order_id}-{n}" for n in (1, 2, 3)]


def test_a_bar_delivered_again_after_a_restore_does_not_fill_twice() -> None:
    """The connector commits a bar's offset after publishing its fills: a kill in between delivers the bar again."""
    first = broker(participation=D("0.1"))
    first.submit(buy("25"))
    bar(first, "AAPL", 1, "100", volume=100)
    published = first.updates(0)
    restored = broker(participation=D("0.1"))
    restored.restore(published)
    bar(restored, "AAPL", 1, "100", volume=100)  # the redelivered bar
    assert fills(restored.updates(0)) == []
    bar(restored, "AAPL", 2, "101", volume=100)
    assert fills(restored.updates(0)) == [("PARTIAL_FILL", "o-1", D(10), D("101.0202"))]
    order = restored.order_by_client_id("o-1")
    assert order is not None and order.filled_qty == D(20)


def test_a_bar_volume_is_shared_by_the_open_orders_oldest_first() -> None:
    b = broker(participation=D("0.5"))
    b.submit(buy("6", coid="first"))
    b.submit(buy("6", coid="second"))
    bar(b, "AAPL", 1, "100", volume=20)  # 10 units: 6 to the first, 4 to the second
    bar(b, "AAPL", 2, "100", volume=20)
    assert [(e, c, q) for e, c, q, _ in fills(b.updates(0))] == [
        ("FILL", "first", D(6)),
        ("PARTIAL_FILL", "second", D(4)),
        ("FILL", "second", D(2)),
    ]


@pytest.mark.parametrize(
    ("symbol", "volume", "filled"),
    [("AAPL", 15, D("1.5")), ("BRK.A", 15, D(1)), ("AAPL", 0, None)],
    ids=["fractionable", "whole-units-only", "no-volume-no-fill"],
)
def test_the_participation_cap_is_rounded_down_to_what_the_asset_trades(
    symbol: str, volume: int, filled: D | None
) -> None:
    b = broker()
    b.submit(buy("5", symbol=symbol))
    bar(b, symbol, 1, "100", volume=volume)
    assert [q for _, _, q, _ in fills(b.updates(0))] == ([] if filled is None else [filled])


def test_a_close_only_bar_has_no_volume_to_cap_the_fill() -> None:
    b = broker()
    b.submit(buy("5"))
    b.on_bar("AAPL", MINUTE, D(100), D(100), D(100), D(100), 0, close_only=True)
    assert [q for _, _, q, _ in fills(b.updates(0))] == [D(5)]


def test_a_notional_order_fills_over_several_bars_until_its_notional_is_spent() -> None:
    b = broker(participation=D("0.1"))
    b.submit(OrderRequest("n-1", "AAPL", "BUY", notional=D(1500)))
    bar(b, "AAPL", 1, "100", volume=100)  # 10 units at most
    bar(b, "AAPL", 2, "100", volume=100)
    got = fills(b.updates(0))
    assert [(e, q) for e, _, q, _ in got] == [("PARTIAL_FILL", D(10)), ("FILL", D("4.997000599"))]
    assert D(1500) - D("100.02") * D("1e-9") <= sum((q * p for _, _, q, p in got if q and p), D(0)) <= D(1500)


# -- rejection, cancel, expiry -------------------------------------------------------------------------------------


def test_a_buy_cash_cannot_pay_when_it_fills_is_rejected_with_the_reason() -> None:
    b = broker(D(1000))
    b.mark("AAPL", D(100))
    b.submit(buy("6", coid="paid"))  # each fits the buying power alone: open orders do not reserve it
    b.submit(buy("6", coid="unpaid"))
    bar(b, "AAPL", 1, "100")
    updates = b.updates(0)
    assert [(u.event, u.order.client_order_id) for u in updates[2:]] == [("FILL", "paid"), ("REJECTED", "unpaid")]
    rejected = updates[-1].order
    assert rejected.status == "REJECTED" and rejected.reject_reason is not None
    assert "insufficient cash" in rejected.reject_reason
    assert b.account().cash == D(1000) - 6 * D("100.02") * (1 + D("0.000015"))
    with pytest.raises(OrderRefused):
        b.cancel(rejected.order_id)


def test_a_sell_that_would_go_short_at_fill_is_rejected() -> None:
    b = broker()
    b.submit(buy("10"))
    bar(b, "AAPL", 1, "100")
    b.submit(OrderRequest("n-sell", "AAPL", "SELL", notional=D(900)))  # ~9 units at 100
    bar(b, "AAPL", 2, "50")  # ... but 18 at 50
    assert [u.event for u in b.updates(0)][-1] == "REJECTED"
    assert [p.qty for p in b.positions()] == [D(10)]


def test_expire_day_expires_open_day_orders_and_keeps_gtc_ones() -> None:
    b = broker(participation=D("0.1"))
    b.submit(buy("20", coid="day"))
    b.submit(buy("1", coid="gtc", time_in_force="GTC"))
    bar(b, "AAPL", 1, "100", volume=100)  # the DAY order takes the bar's 10 units
    b.expire_day(10 * MINUTE)
    expired = [u for u in b.updates(0) if u.event == "EXPIRED"]
    assert [(u.order.client_order_id, u.order.filled_qty, u.timestamp_ns) for u in expired] == [
        ("day", D(10), 10 * MINUTE)
    ]
    assert [(o.client_order_id, o.status) for o in b.orders()] == [("day", "EXPIRED"), ("gtc", "NEW")]


def test_cancel_refuses_unknown_and_finished_orders() -> None:
    b = broker()
    with pytest.raises(OrderRefused, match="unknown"):
        b.cancel("no-such-order")
    order = b.submit(buy("1"))
    bar(b, "AAPL", 1, "100")
    with pytest.raises(OrderRefused, match="FILLED"):
        b.cancel(order.order_id)


# -- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (OrderRequest("v", "AAPL", "BUY", qty=D(1), notional=D(100)), "exactly one"),
        (OrderRequest("v", "AAPL", "BUY"), "exactly one"),
        (OrderRequest("v", "AAPL", "BUY", qty=D(0)), "positive"),
        (OrderRequest("v", "AAPL", "BUY", qty=D(-1)), "positive"),
        (OrderRequest("v", "AAPL", "BUY", qty=D("NaN")), "positive"),
        (OrderRequest("v", "AAPL", "BUY", notional=D("Infinity")), "positive"),
        (OrderRequest("v", "AAPL", "BUY", qty=D("0.0000000001")), "9 decimal places"),
        (OrderRequest("v", "AAPL", "BUY", notional=D("10.005")), "2 decimal places"),
        (OrderRequest("v", "AAPL", "BUY", qty=D(1), order_type="LIMIT"), "MARKET"),
        (OrderRequest("v", "AAPL", "BUY", qty=D(1), time_in_force="IOC"), "time in force"),
        (OrderRequest("v", "AAPL", "BUY", qty=D("0.5"), time_in_force="GTC"), "DAY"),
        (OrderRequest("v", "AAPL", "BUY", notional=D(10), time_in_force="GTC"), "DAY"),
        (OrderRequest("v", "AAPL", "HOLD", qty=D(1)), "side"),
        (OrderRequest("", "AAPL", "BUY", qty=D(1)), "client_order_id"),
        (OrderRequest("v" * 129, "AAPL", "BUY", qty=D(1)), "client_order_id"),
        (OrderRequest("v", "HALT", "BUY", qty=D(1)), "not tradable"),
        (OrderRequest("v", "NOPE", "BUY", qty=D(1)), "unknown symbol"),
        (OrderRequest("v", "BRK.A", "BUY", qty=D("1.5")), "not fractionable"),
        (OrderRequest("v", "AAPL", "SELL", qty=D(1)), "insufficient qty"),
        (OrderRequest("v", "AAPL", "SELL", notional=D(10)), "insufficient qty"),
        (OrderRequest("v", "AAPL", "BUY", qty=D(1000)), "buying power"),  # 100 x 1000 x (1 + 2.15 bp)
    ],
)
def test_submit_refuses(request_: OrderRequest, reason: str) -> None:
    b = broker()
    b.mark("AAPL", D(100))
    with pytest.raises(OrderRefused, match=reason):
        b.submit(request_)
    assert b.orders() == [] and b.updates(0) == []


def test_sells_already_offered_by_open_sells_cannot_be_sold_again() -> None:
    b = broker()
    b.submit(buy("10"))
    bar(b, "AAPL", 1, "100")
    b.submit(sell("6", coid="s-1"))
    with pytest.raises(OrderRefused, match="insufficient qty"):
        b.submit(sell("6", coid="s-2"))
    b.submit(sell("4", coid="s-3"))


def test_short_selling_is_allowed_when_asked_for() -> None:
    b = broker(allow_short=True)
    b.submit(sell("5"))
    bar(b, "AAPL", 1, "100")
    assert [p.qty for p in b.positions()] == [D(-5)]


def test_a_buy_without_a_known_price_is_checked_when_it_fills() -> None:
    b = broker(D(100))
    b.submit(buy("2"))
    bar(b, "AAPL", 1, "100")
    assert [u.event for u in b.updates(0)] == ["NEW", "REJECTED"]


def test_the_constructor_refuses_impossible_settings() -> None:
    with pytest.raises(ValueError, match="participation"):
        broker(participation=D(0))
    with pytest.raises(ValueError, match="cash"):
        broker(D(-1))


# -- restart, determinism, threads ---------------------------------------------------------------------------------


def scenario(b: SimulatedBroker) -> None:
    """Every kind of change: qty and notional orders, partial fills, a sell, a cancel, a rejection, an expiry."""
    bar(b, "AAPL", 0, "100")
    b.submit(buy("30", coid="a-1"))
    b.submit(OrderRequest("a-2", "EURUSD", "BUY", notional=D(5000)))
    b.submit(buy("2", coid="a-3", symbol="BRK.A", time_in_force="GTC"))
    bar(b, "AAPL", 1, "101", volume=100)
    bar(b, "EURUSD", 1, "1.1", volume=10**6)
    bar(b, "AAPL", 2, "102", volume=100)
    b.submit(sell("5", coid="a-4"))
    bar(b, "AAPL", 3, "103", volume=1000)
    b.submit(buy("1000", coid="a-5", symbol="MES"))  # no price yet: rejected when it fills
    bar(b, "MES", 4, "5000", volume=10**6)
    b.submit(buy("1", coid="a-6"))
    b.cancel(b.submit(buy("1", coid="a-7")).order_id)
    b.expire_day(5 * MINUTE)


def state(b: SimulatedBroker) -> tuple[object, ...]:
    return b.account(), b.positions(), b.orders(), b.clock_ns


def continuation(b: SimulatedBroker) -> list[TradeUpdate]:
    b.submit(buy("3", coid="c-1"))
    b.submit(sell("10", coid="c-2"))
    bar(b, "AAPL", 6, "99", volume=50)
    bar(b, "AAPL", 7, "98", volume=50)
    bar(b, "BRK.A", 7, "600000", volume=10)
    return b.updates(0)


def test_a_broker_restored_from_its_updates_has_its_state_and_stays_in_step() -> None:
    original = broker()
    scenario(original)
    published = original.updates(0)
    assert {u.event for u in published} >= {"NEW", "PARTIAL_FILL", "FILL", "CANCELED", "REJECTED", "EXPIRED"}
    restored = broker(clock_ns=original.clock_ns)
    restored.restore(published, last_prices=original.last_prices())
    assert state(restored) == state(original)
    assert restored.updates(0) == []  # nothing published again
    assert restored.order_by_client_id("a-3") == original.order_by_client_id("a-3")
    assert continuation(restored) == continuation(original)
    assert state(restored) == state(original)


def test_restore_counts_repeated_updates_once_and_marks_at_the_last_fill_without_prices() -> None:
    original = broker()
    scenario(original)
    published = original.updates(0)
    restored = broker(clock_ns=original.clock_ns)
    restored.restore([u for u in published for _ in (0, 1)])  # an at-least-once log
    assert (restored.account().cash, restored.positions()[0].qty) == (
        original.account().cash,
        original.positions()[0].qty,
    )
    assert restored.orders() == original.orders()
    last_fill = [u.price for u in published if u.event in ("FILL", "PARTIAL_FILL") and u.order.symbol == "AAPL"][-1]
    assert restored.last_prices()["AAPL"] == last_fill


@pytest.mark.parametrize(
    "spoil",
    [
        lambda updates: updates,  # a broker that already holds orders
        lambda updates: [
            TradeUpdate(u.event, u.order, u.timestamp_ns, u.price, u.qty, D(999), u.execution_id)
            if u.event == "FILL"
            else u
            for u in updates
        ],
    ],
    ids=["not-fresh", "position-contradicts"],
)
def test_restore_refuses_what_it_cannot_rebuild(spoil: Callable[[list[TradeUpdate]], list[TradeUpdate]]) -> None:
    original = broker()
    scenario(original)
    published = original.updates(0)
    target = broker()
    if spoil(published) is published:
        target.submit(buy("1"))
    with pytest.raises(ValueError):
        target.restore(spoil(published))


def test_two_runs_of_one_script_publish_identical_updates() -> None:
    runs = []
    for _ in range(2):
        b = broker()
        scenario(b)
        runs.append(b.updates(0) + continuation(b))
    assert runs[0] == runs[1]
    first: BrokerOrder = runs[0][0].order
    assert broker().submit(buy("30", coid="a-1")).order_id == first.order_id


def test_updates_waits_for_the_first_update_and_close_wakes_it() -> None:
    b = broker()
    assert b.updates(0) == []
    timer = threading.Timer(0.05, lambda: b.submit(buy("1")))
    timer.start()
    assert [u.event for u in b.updates(5)] == ["NEW"]
    timer.join()
    threading.Timer(0.05, b.close).start()
    assert b.updates(5) == []
    with pytest.raises(BrokerError, match="closed"):
        b.submit(buy("1", coid="late"))


def test_orders_from_threads_while_bars_arrive_book_consistently() -> None:
    b = broker(D(10**9))
    b.mark("AAPL", D(100))

    def place(worker: int) -> None:
        for n in range(50):
            b.submit(buy("1", coid=f"w{worker}-{n}"))

    threads = [threading.Thread(target=place, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for minute in range(1, 200):
        bar(b, "AAPL", minute, "100")
    for t in threads:
        t.join()
    bar(b, "AAPL", 200, "100")
    assert all(o.status == "FILLED" for o in b.orders()) and len(b.orders()) == 200
    assert b.positions()[0].qty == 200
    assert b.account().cash == D(10**9) - 200 * D("100.02") * (1 + D("0.000015"))
    assert b.orders(after_ns=b.orders()[-1].created_at_ns) == []
