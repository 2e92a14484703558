"""The position tracker: broker updates (cumulative, possibly repeated, reordered or dropped) folded into positions
per strategy at average cost."""

from __future__ import annotations

import random
from decimal import Decimal as D

import pytest

from streams.execution.positions import (
    UNATTRIBUTED,
    Book,
    Fill,
    Holding,
    apply_correction,
    apply_update,
    quantities,
    register,
)
from streams.execution.rebalance import BUY, SELL, Allocation

Update = tuple[D, D | None]


def allocs(**qty: str) -> list[Allocation]:
    return [Allocation(sid, D(q)) for sid, q in qty.items()]


def book_with(order: str = "o1", side: str = BUY, qty: str = "10", **allocations: str) -> Book:
    book = Book()
    register(book, order, "AAPL", side, D(qty), allocs(**(allocations or {"a": "6", "b": "4"})))
    return book


def feed(book: Book, updates: list[Update], order: str = "o1", side: str = BUY) -> list[Fill]:
    return [fill for cum, avg in updates for fill in apply_update(book, order, "AAPL", side, cum, avg)]


def state(book: Book) -> dict[str, tuple[D, D, D, D]]:
    return {sid: (h.qty, h.cost, h.realised, book.cash.get(sid, D(0))) for (sid, _), h in sorted(book.holdings.items())}


FULL = {"a": (D(6), D(606), D(0), D(-606)), "b": (D(4), D(404), D(0), D(-404))}


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        pytest.param([(D(5), D(100)), (D(10), D(101))], FULL, id="partial-then-full"),
        pytest.param([(D(5), D(100)), (D(5), D(100)), (D(10), D(101)), (D(10), D(101))], FULL, id="duplicates"),
        pytest.param([(D(10), D(101)), (D(5), D(100))], FULL, id="reversed"),
        pytest.param([(D(3), D(99)), (D(6), D(100)), (D(10), D(101))], FULL, id="three-in-order"),
        pytest.param([(D(3), D(99)), (D(10), D(101))], FULL, id="dropped-middle-of-three"),
        pytest.param([(D(0), None), (D(10), D(101))], FULL, id="accepted-then-filled"),
        pytest.param(
            [(D(5), D(100))],
            {"a": (D(3), D(300), D(0), D(-300)), "b": (D(2), D(200), D(0), D(-200))},
            id="partial-only",
        ),
    ],
)
def test_cumulative_updates(updates: list[Update], expected: dict[str, tuple[D, D, D, D]]) -> None:
    book = book_with()
    feed(book, updates)
    assert state(book) == expected
    assert sum(quantities(book).values()) == sum(q for q, *_ in expected.values())


def test_fills_returned_are_the_changes() -> None:
    book = book_with()
    assert feed(book, [(D(5), D(100))]) == [
        Fill("a", "AAPL", D(3), D(100), D(300)),
        Fill("b", "AAPL", D(2), D(100), D(200)),
    ]
    # 10 at 101 on average after 5 at 100: the second five cost 510, i.e. 102 each
    assert feed(book, [(D(10), D(101))]) == [
        Fill("a", "AAPL", D(3), D(102), D(306)),
        Fill("b", "AAPL", D(2), D(102), D(204)),
    ]
    assert feed(book, [(D(10), D(101)), (D(7), D("100.5"))]) == []


def test_a_stale_update_changes_nothing() -> None:
    book = book_with()
    feed(book, [(D(10), D(101))])
    before = book.to_json()
    assert feed(book, [(D(5), D(100)), (D(10), D(101)), (D(0), None)]) == []
    assert book.to_json() == before


@pytest.mark.parametrize(
    ("side", "allocations", "held", "expected"),
    [
        pytest.param(
            BUY,
            {"a": "15", "b": "-5"},
            {"b": ("5", "90")},
            # b sold 5 bought at 90 for 100: realises 50
            {"a": (D(15), D(1500), D(0), D(-1500)), "b": (D(0), D(0), D(50), D(500 - 450))},
            id="opposite-sign-allocations-cross-internally",
        ),
        pytest.param(
            SELL,
            {"a": "-4", "b": "-6"},
            {"a": ("10", "80"), "b": ("6", "120")},
            {"a": (D(6), D(480), D(80), D(400 - 800)), "b": (D(0), D(0), D(-120), D(600 - 720))},
            id="sell-realises-against-average-cost",
        ),
        pytest.param(
            SELL,
            {"a": "-10"},
            {"a": ("4", "90")},
            # closes 4 (realises 40), opens a short of 6 at 100: cost -600
            {"a": (D(-6), D(-600), D(40), D(1000 - 360))},
            id="sell-through-zero-opens-a-short",
        ),
    ],
)
def test_average_cost_and_realised(
    side: str,
    allocations: dict[str, str],
    held: dict[str, tuple[str, str]],
    expected: dict[str, tuple[D, D, D, D]],
) -> None:
    book = Book()
    for sid, (qty, price) in held.items():
        apply_correction(book, "AAPL", sid, D(qty), D(price))
    register(book, "o1", "AAPL", side, D(10), allocs(**allocations))
    feed(book, [(D(10), D(100))], side=side)
    assert state(book) == expected


def test_a_short_covered_realises_the_price_fall() -> None:
    book = Book()
    apply_correction(book, "AAPL", "a", D(-10), D(100))
    register(book, "o1", "AAPL", BUY, D(4), allocs(a="4"))
    feed(book, [(D(4), D(90))])
    assert book.holdings["a", "AAPL"] == Holding(D(-6), D(-600), D(40))
    assert book.holdings["a", "AAPL"].avg_price == D(100)


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        pytest.param(
            [(D("4.5"), D(200))],
            {"a": (D("2.7"), D(540), D(0), D(-540)), "b": (D("1.8"), D(360), D(0), D(-360))},
            id="notional-partial",
        ),
        pytest.param(
            [(D("4.9995"), D("200.02"))],
            {
                "a": (D("2.9997"), D("599.999994"), D(0), D("-599.999994")),
                "b": (D("1.9998"), D("399.999996"), D(0), D("-399.999996")),
            },
            id="notional-full-at-a-slightly-different-price",
        ),
        pytest.param(
            [(D(3), D(300)), (D(1), D(300)), (D(3), D(300))],
            {"a": (D("1.8"), D(540), D(0), D(-540)), "b": (D("1.2"), D(360), D(0), D(-360))},
            id="notional-out-of-order",
        ),
    ],
)
def test_notional_orders_share_by_notional(updates: list[Update], expected: dict[str, tuple[D, D, D, D]]) -> None:
    book = Book()
    register(book, "o1", "AAPL", BUY, None, allocs(a="600", b="400"), notional=D(1000))
    feed(book, updates)
    assert state(book) == expected


def test_an_unregistered_order_is_unattributed() -> None:
    book = Book()
    fills = apply_update(book, "", "AAPL", SELL, D(2), D(50), order_id="broker-9")
    assert fills == [Fill(UNATTRIBUTED, "AAPL", D(-2), D(50), D(-100))]
    assert apply_update(book, "", "AAPL", SELL, D(2), D(50), order_id="broker-9") == []
    assert quantities(book) == {(UNATTRIBUTED, "AAPL"): D(-2)}
    assert "broker:broker-9" in book.orders
    with pytest.raises(ValueError, match="client_order_id or an order_id"):
        apply_update(book, "", "AAPL", SELL, D(2), D(50))


def test_registering_after_the_first_fills_moves_them_to_the_strategies() -> None:
    book = Book()
    feed(book, [(D(5), D(100))])
    assert quantities(book) == {(UNATTRIBUTED, "AAPL"): D(5)}
    moved = register(book, "o1", "AAPL", BUY, D(10), allocs(a="6", b="4"))
    assert moved == [
        Fill("a", "AAPL", D(3), D(100), D(300)),
        Fill("b", "AAPL", D(2), D(100), D(200)),
        Fill(UNATTRIBUTED, "AAPL", D(-5), D(100), D(-500)),
    ]
    feed(book, [(D(10), D(101))])
    assert state(book) == FULL | {UNATTRIBUTED: (D(0), D(0), D(0), D(0))}
    assert register(book, "o1", "AAPL", BUY, D(10), allocs(a="6", b="4")) == []  # idempotent
    with pytest.raises(ValueError, match="already registered differently"):
        register(book, "o1", "AAPL", BUY, D(10), allocs(a="5", b="5"))


@pytest.mark.parametrize(
    ("qty", "allocations", "notional", "message"),
    [
        pytest.param(D(10), allocs(a="6", b="3"), None, "sum to 9", id="allocations-do-not-sum"),
        pytest.param(None, allocs(a="6"), None, "exactly one of qty and notional", id="no-size"),
        pytest.param(D(6), allocs(a="6"), D(600), "exactly one of qty and notional", id="both-sizes"),
        pytest.param(D(-6), allocs(a="-6"), None, "not positive", id="negative-size"),
        pytest.param(D(6), allocs(a="3") + allocs(a="3"), None, "allocated twice", id="strategy-twice"),
    ],
)
def test_register_refuses_inconsistent_orders(
    qty: D | None, allocations: list[Allocation], notional: D | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        register(Book(), "o1", "AAPL", BUY, qty, allocations, notional=notional)


def test_register_without_allocations_is_unattributed() -> None:
    book = Book()
    register(book, "o1", "AAPL", BUY, D(3), [])
    feed(book, [(D(3), D(10))])
    assert quantities(book) == {(UNATTRIBUTED, "AAPL"): D(3)}


def test_an_update_that_disagrees_with_the_order_is_refused() -> None:
    book = book_with()
    with pytest.raises(ValueError, match="is BUY AAPL"):
        apply_update(book, "o1", "AAPL", SELL, D(1), D(100))
    with pytest.raises(ValueError, match="average price None"):
        apply_update(book, "o1", "AAPL", BUY, D(1), None)


@pytest.mark.parametrize(
    ("qty", "price", "expected"),
    [
        pytest.param(D(2), D(50), Holding(D(12), D(1100), D(0)), id="add-at-a-price"),
        pytest.param(D(10), D(0), Holding(D(20), D(1000), D(0)), id="split-costs-nothing"),
        pytest.param(D(-4), D(120), Holding(D(6), D(600), D(80)), id="remove-at-a-price"),
    ],
)
def test_corrections(qty: D, price: D, expected: Holding) -> None:
    book = Book()
    apply_correction(book, "AAPL", "a", D(10), D(100))
    fill = apply_correction(book, "AAPL", "a", qty, price)
    assert fill == Fill("a", "AAPL", qty, price, qty * price)
    assert book.holdings["a", "AAPL"] == expected
    assert book.cash["a"] == -1000 - qty * price


def test_json_round_trip() -> None:
    book = book_with()
    feed(book, [(D(5), D("100.37"))])
    register(book, "o2", "MSFT", SELL, None, allocs(a="-300"), notional=D(300))
    apply_update(book, "", "TSLA", BUY, D("0.5"), D(250), order_id="outside")
    apply_correction(book, "SPY", UNATTRIBUTED, D(-2), D(0))
    text = book.to_json()
    again = Book.from_json(text)
    assert again == book
    assert again.to_json() == text
    feed(again, [(D(10), D("100.5"))])
    feed(book, [(D(10), D("100.5"))])
    assert again == book
    assert quantities(book) == {
        ("a", "AAPL"): D(6),
        ("b", "AAPL"): D(4),
        (UNATTRIBUTED, "SPY"): D(-2),
        (UNATTRIBUTED, "TSLA"): D("0.5"),
    }


Order = tuple[str, str, str, D | None, D | None, list[Allocation], list[Update]]
SEEDED = [("a", "AAPL", "50"), ("b", "MSFT", "20"), ("c", "SPY", "80"), ("d", "AAPL", "5")]


def random_orders(rng: random.Random, both_sides: bool) -> list[Order]:
    """Orders with random allocations (quantity or notional) and random increasing cumulative fills at drifting
    average prices; with ``both_sides`` also sells, and strategies netted the other way inside an order."""
    orders: list[Order] = []
    for n in range(6):
        symbol = ["AAPL", "MSFT", "SPY"][n % 3]
        side = rng.choice([BUY, SELL]) if both_sides else BUY
        sign = 1 if side == BUY else -1
        sids = rng.sample(["a", "b", "c", "d"], rng.randint(1, 4))
        amounts = [D(rng.randint(1, 10**5)) / 1000 for _ in sids]
        if both_sides and len(sids) > 1:
            amounts[0] = -min(amounts[0], sum(amounts[1:], D(0))) / 2  # trades the other way, netted inside the order
        size = sum(amounts, D(0))
        notional_order = rng.random() < 0.3
        allocations = [Allocation(sid, sign * a) for sid, a in zip(sids, amounts, strict=True)]
        final = (size / D(rng.randint(50, 150))).quantize(D("1e-9")) if notional_order else size
        cums = sorted({(final * rng.randint(1, 999) / 1000).quantize(D("1e-9")) for _ in range(rng.randint(0, 6))})
        updates: list[Update] = [(D(0), None)]
        price = D(rng.randint(5000, 50000)) / 100
        for cum in [*cums, final]:
            price += D(rng.randint(-300, 300)) / 100
            updates.append((cum, price))
        qty, notional = (None, size) if notional_order else (size, None)
        orders.append((f"o{n}", symbol, side, qty, notional, allocations, updates))
    return orders


def replay(orders: list[Order], deliveries: list[tuple[str, str, str, Update]]) -> Book:
    book = Book()
    for sid, symbol, held in SEEDED:
        apply_correction(book, symbol, sid, D(held), D(100))
    for order_id, symbol, side, qty, notional, allocations, _ in orders:
        register(book, order_id, symbol, side, qty, allocations, notional=notional)
    for order_id, symbol, side, (cum, avg) in deliveries:
        apply_update(book, order_id, symbol, side, cum, avg)
    return book


def deliveries(rng: random.Random, orders: list[Order]) -> tuple[list[tuple[str, str, str, Update]], ...]:
    """In order, and shuffled with repeats (every update at least once, the orders' updates interleaved)."""
    in_order = [(o, symbol, side, u) for o, symbol, side, _, _, _, updates in orders for u in updates]
    shuffled = in_order + [rng.choice(in_order) for _ in range(len(in_order))]
    rng.shuffle(shuffled)
    return in_order, shuffled


@pytest.mark.parametrize("seed", range(25), ids=lambda seed: f"seed-{seed}")
def test_shuffled_repeated_delivery_books_the_same_book_as_in_order_delivery(seed: int) -> None:
    rng = random.Random(seed)
    orders = random_orders(rng, both_sides=False)
    in_order, shuffled = deliveries(rng, orders)
    expected = replay(orders, in_order)
    assert replay(orders, shuffled) == expected
    assert replay(orders, shuffled).to_json() == expected.to_json()
    for order_id, _, _, _, _, _, updates in orders:  # every order booked to its last update
        assert expected.orders[order_id].filled_qty == updates[-1][0]


@pytest.mark.parametrize("seed", range(25), ids=lambda seed: f"seed-{seed}")
def test_shuffled_delivery_with_sells_and_crossings_books_the_same_quantities_and_cash(seed: int) -> None:
    """Quantities, cash flows and each holding's cost minus realised (the cash put in) do not depend on the
    delivery. The split between cost and realised does when a strategy goes through zero inside one order: every
    update gives the close and the open their own prices; a skipped update leaves only the average."""
    rng = random.Random(seed)
    orders = random_orders(rng, both_sides=True)
    in_order, shuffled = deliveries(rng, orders)
    expected, got = replay(orders, in_order), replay(orders, shuffled)
    assert got.orders == expected.orders
    assert got.cash == expected.cash
    assert quantities(got) == quantities(expected)
    assert got.holdings.keys() == expected.holdings.keys()
    for key, holding in expected.holdings.items():
        put_in = got.holdings[key].cost - got.holdings[key].realised
        assert abs(put_in - (holding.cost - holding.realised)) < D("1e-30")


def test_a_completed_quantity_order_books_each_planned_allocation_exactly() -> None:
    book = Book()
    register(book, "o1", "AAPL", BUY, D(1), allocs(a="0.333333333", b="0.333333333", c="0.333333334"))
    feed(book, [(D("0.1"), D(10)), (D("0.4"), D(11)), (D("0.7"), D(12)), (D(1), D(13))])
    assert quantities(book) == {
        ("a", "AAPL"): D("0.333333333"),
        ("b", "AAPL"): D("0.333333333"),
        ("c", "AAPL"): D("0.333333334"),
    }
    assert sum(book.cash.values()) == D(-13)
