"""The rebalance planner: targets and holdings into one order per symbol, with exact per-strategy allocations,
refusals that say why with the numbers, and deterministic ids."""

from __future__ import annotations

import random
from collections.abc import Mapping
from decimal import Decimal as D

import pytest

from core.events import deterministic_event_id
from streams.execution.rebalance import (
    BUY,
    SELL,
    WHOLE_REBALANCE,
    Allocation,
    Plan,
    Rules,
    StrategyTarget,
    Venue,
    client_order_id,
    plan,
)

CAPITAL = D(100_000)
STOCK = Venue(tradable=True, fractionable=True, asset_class="EQUITY")
WHOLE = Venue(tradable=True, fractionable=False, asset_class="EQUITY")
VENUES = {
    "AAPL": STOCK,
    "MSFT": STOCK,
    "SPY": WHOLE,
    "EURUSD": Venue(tradable=False, fractionable=False, asset_class="FX"),
    "MESZ6": Venue(tradable=False, fractionable=False, asset_class="FUTURE"),
}
PRICES = {"AAPL": D(100), "MSFT": D(250), "SPY": D("412.5"), "EURUSD": D("1.08"), "MESZ6": D(6000)}


def target(sid: str, weight: str, **positions: float) -> StrategyTarget:
    return StrategyTarget(sid, D(weight), positions)


def run(
    targets: list[StrategyTarget],
    holdings: Mapping[tuple[str, str], D] | None = None,
    prices: Mapping[str, D] = PRICES,
    rules: Rules | None = None,
    buying_power: D | None = None,
    rebalance_id: str = "rebalance-1",
) -> Plan:
    return plan(rebalance_id, targets, CAPITAL, prices, holdings or {}, VENUES, rules, buying_power)


def orders(result: Plan) -> list[tuple[str, str, D, tuple[Allocation, ...]]]:
    return [(o.symbol, o.side, o.qty, o.allocations) for o in result.orders]


@pytest.mark.parametrize(
    ("targets", "holdings", "expected"),
    [
        pytest.param(
            [target("a", "0.5", AAPL=0.4), target("b", "0.5", AAPL=0.2)],
            {("a", "AAPL"): D(50)},
            [("AAPL", BUY, D(250), (Allocation("a", D(150)), Allocation("b", D(100))))],
            id="two-strategies-net-into-one-buy",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.4), target("b", "0.5", AAPL=0.1)],
            {("b", "AAPL"): D(120)},
            [("AAPL", BUY, D(130), (Allocation("a", D(200)), Allocation("b", D(-70))))],
            id="opposite-changes-net-inside-one-order",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.1)],
            {("a", "AAPL"): D(50), ("b", "AAPL"): D(30)},
            [("AAPL", SELL, D(30), (Allocation("b", D(-30)),))],
            id="strategy-out-of-the-targets-exits",
        ),
        pytest.param(
            [target("a", "0.5", MSFT=0.2)],
            {("a", "AAPL"): D("12.5"), ("a", "MSFT"): D(40)},
            [("AAPL", SELL, D("12.5"), (Allocation("a", D("-12.5")),))],
            id="position-dropped-by-a-strategy-exits-msft-unchanged",
        ),
        pytest.param(
            [target("a", "0.3", AAPL=1 / 3)],
            {},
            [("AAPL", BUY, D("99.999999999"), (Allocation("a", D("99.999999999")),))],
            id="fractional-qty-rounded-down-to-9-decimals",
        ),
        pytest.param(
            [target("a", "0.5", SPY=0.3)],
            {},
            [("SPY", BUY, D(36), (Allocation("a", D(36)),))],
            id="whole-units-for-non-fractionable-36.36-to-36",
        ),
        pytest.param(
            [target("a", "0.5", SPY=0.3), target("b", "0.2", SPY=0.1)],
            {},
            # a 36.363636363.., b 4.848484848..: net 41.21.. -> 41; the residue -0.212121211 goes to a (largest)
            [("SPY", BUY, D(41), (Allocation("a", D("36.151515152")), Allocation("b", D("4.848484848"))))],
            id="whole-units-residue-on-the-largest-change",
        ),
        pytest.param(
            [target("a", "0.5", SPY=0.1)],
            {("a", "SPY"): D(10), ("x", "SPY"): D(10)},
            # a 12.1212.. (+2.1212..), x exits -10: net -7.88 -> SELL 7; the residue goes to a, so x leaves flat
            [("SPY", SELL, D(7), (Allocation("a", D(3)), Allocation("x", D(-10))))],
            id="exiting-strategy-leaves-exactly-flat",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.4, MSFT=0.1)],
            {("a", "MSFT"): D(100)},
            [
                ("MSFT", SELL, D(80), (Allocation("a", D(-80)),)),
                ("AAPL", BUY, D(200), (Allocation("a", D(200)),)),
            ],
            id="sells-before-buys",
        ),
    ],
)
def test_orders(
    targets: list[StrategyTarget],
    holdings: dict[tuple[str, str], D],
    expected: list[tuple[str, str, D, tuple[Allocation, ...]]],
) -> None:
    result = run(targets, holdings)
    assert orders(result) == expected
    assert result.refusals == ()
    for order in result.orders:
        assert sum(a.qty for a in order.allocations) == order.signed_qty
        assert order.notional == order.qty * PRICES[order.symbol]
        assert order.price == PRICES[order.symbol]


@pytest.mark.parametrize(
    ("targets", "holdings", "rules", "reason"),
    [
        pytest.param(
            [target("a", "0.5", AAPL=0.008)],  # 4 shares: 400 < 0.5% of 100,000
            {},
            None,
            "AAPL: a change of 400.00 is inside the no-trade band (500.00)",
            id="no-trade-band",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.2)],
            {("a", "AAPL"): D("99.996")},  # target 100: a change of 0.40
            Rules(no_trade_band=D(0)),
            "AAPL: a change of 0.40 is inside the no-trade band (1.00)",
            id="min-order-notional-as-the-band",
        ),
        pytest.param(
            [target("a", "0.5", SPY=0.004)],  # 0.48 of a unit
            {},
            Rules(no_trade_band=D(0), min_order_notional=D(0)),
            "SPY: a change of 0.484848485 units is below one whole unit and the broker does not trade fractions of it",
            id="less-than-one-unit-of-a-non-fractionable-asset",
        ),
        pytest.param(
            [target("a", "0.5", SPY=0.012)],  # 1.45 units -> 1 unit of 412.50
            {},
            Rules(no_trade_band=D(0), min_order_notional=D(500)),
            "SPY: an order of 412.50 is below the minimum order of 500.00",
            id="min-order-notional-after-rounding-to-whole-units",
        ),
    ],
)
def test_skipped(targets: list[StrategyTarget], holdings: dict[tuple[str, str], D], rules: Rules, reason: str) -> None:
    result = run(targets, holdings, rules=rules)
    assert result.orders == ()
    assert result.refusals == ()
    assert [s.reason for s in result.skipped] == [reason]


def test_the_band_is_the_larger_of_minimum_and_fraction_of_capital() -> None:
    just_outside = run([target("a", "0.5", AAPL=0.01)])  # 500.00: not below 500
    assert orders(just_outside) == [("AAPL", BUY, D(5), (Allocation("a", D(5)),))]
    assert run([target("a", "0.5", AAPL=0.01)], rules=Rules(min_order_notional=D(501))).orders == ()


@pytest.mark.parametrize(
    ("targets", "holdings", "prices", "refusal"),
    [
        pytest.param(
            [target("a", "0.5", AAPLX=0.2)], {}, PRICES, ("AAPLX", ("a",), "AAPLX: unknown to the broker"), id="unknown"
        ),
        pytest.param(
            [target("a", "0.5", EURUSD=0.2)],
            {},
            PRICES,
            ("EURUSD", ("a",), "EURUSD: the broker does not trade FX; the strategies stay on the simulated book"),
            id="fx",
        ),
        pytest.param(
            [target("a", "0.5", MESZ6=-0.2), target("b", "0.1", MESZ6=0.1)],
            {},
            PRICES,
            (
                "MESZ6",
                ("a", "b"),
                "MESZ6: the broker does not trade futures; the strategies stay on the simulated book",
            ),
            id="futures",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.2)],
            {},
            {"MSFT": D(250)},
            ("AAPL", ("a",), "AAPL: no price to size the order with"),
            id="price-missing",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.2)],
            {},
            {"AAPL": D(0)},
            ("AAPL", ("a",), "AAPL: price 0 is not a positive number"),
            id="price-zero",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.2)],
            {},
            {"AAPL": D("-3.5")},
            ("AAPL", ("a",), "AAPL: price -3.5 is not a positive number"),
            id="price-negative",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=0.2)],
            {},
            {"AAPL": D("NaN")},
            ("AAPL", ("a",), "AAPL: price NaN is not a positive number"),
            id="price-nan",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=float("nan"))],
            {("b", "AAPL"): D(3)},
            PRICES,
            ("AAPL", ("a", "b"), "AAPL: the target quantity of a is not a number (weight 0.5, position nan)"),
            id="target-nan",
        ),
        pytest.param(
            [target("a", "0.5", AAPL=float("inf"))],
            {},
            PRICES,
            ("AAPL", ("a",), "AAPL: the target quantity of a is not a number (weight 0.5, position inf)"),
            id="target-inf",
        ),
        pytest.param(
            [target("a", "NaN", AAPL=0.2)],
            {},
            PRICES,
            ("AAPL", ("a",), "AAPL: the target quantity of a is not a number (weight NaN, position 0.2)"),
            id="weight-nan",
        ),
    ],
)
def test_refused_symbols_send_nothing(
    targets: list[StrategyTarget],
    holdings: dict[tuple[str, str], D],
    prices: dict[str, D],
    refusal: tuple[str, tuple[str, ...], str],
) -> None:
    result = run([*targets, target("z", "0.1", MSFT=0.5)], holdings, prices={**prices, "MSFT": D(250)})
    assert [(r.symbol, r.strategy_ids, r.reason) for r in result.refusals] == [refusal]
    assert orders(result) == [("MSFT", BUY, D(20), (Allocation("z", D(20)),))]  # the rest of the plan goes ahead


@pytest.mark.parametrize(
    ("holding", "expected_orders"),
    [
        pytest.param(D(0), [], id="from-flat-nothing-is-sent"),
        pytest.param(D(30), [("AAPL", SELL, D(30), (Allocation("a", D(-30)),))], id="a-long-is-sold-to-flat"),
    ],
)
def test_a_short_target_is_refused_and_held_at_zero(holding: D, expected_orders: list[object]) -> None:
    result = run([target("a", "0.5", AAPL=-0.2)], {("a", "AAPL"): holding})
    assert [(r.symbol, r.strategy_ids, r.reason) for r in result.refusals] == [
        (
            "AAPL",
            ("a",),
            "AAPL: a targets a short of 100 units (10,000.00) and the account does not sell short; its target is "
            "held at 0",
        )
    ]
    assert orders(result) == expected_orders


def test_shorts_are_planned_when_allowed() -> None:
    result = run([target("a", "0.5", AAPL=-0.2)], {("a", "AAPL"): D(30)}, rules=Rules(allow_short=True))
    assert orders(result) == [("AAPL", SELL, D(130), (Allocation("a", D(-130)),))]
    assert result.refusals == ()


@pytest.mark.parametrize(
    ("buying_power", "refused"),
    [
        pytest.param(D(29_999), True, id="one-below-the-buys"),
        pytest.param(D(30_000), False, id="exactly-the-buys"),
        pytest.param(None, False, id="unknown-buying-power"),
    ],
)
def test_buys_above_buying_power_refuse_the_whole_rebalance(buying_power: D | None, refused: bool) -> None:
    targets = [target("a", "0.5", AAPL=0.4, MSFT=0.1), target("b", "0.2", AAPL=0.5)]  # buys 20,000 + 10,000
    holdings = {("a", "MSFT"): D(100)}  # a sell of 80 MSFT (20,000) does not count
    result = run(targets, holdings, buying_power=buying_power)
    if refused:
        assert result.orders == ()
        assert result.skipped == ()
        assert [(r.symbol, r.strategy_ids) for r in result.refusals] == [(WHOLE_REBALANCE, ("a", "b"))]
        assert result.refusals[0].reason.startswith("buys of 30,000.00 exceed buying power 29,999.00")
    else:
        assert [(o.symbol, o.side, o.notional) for o in result.orders] == [
            ("MSFT", SELL, D(20_000)),
            ("AAPL", BUY, D(30_000)),
        ]


@pytest.mark.parametrize("seed", range(20), ids=lambda seed: f"seed-{seed}")
def test_allocations_sum_exactly_to_the_order(seed: int) -> None:
    rng = random.Random(seed)
    symbols = ["AAPL", "MSFT", "SPY"]
    targets = [
        StrategyTarget(f"s{i}", D(str(round(rng.uniform(0, 0.5), 4))), {s: rng.uniform(0, 1) for s in symbols})
        for i in range(rng.randint(1, 5))
    ]
    holdings = {(f"s{i}", s): D(str(round(rng.uniform(0, 200), 9))) for i in range(6) for s in symbols}
    prices = {s: D(str(round(rng.uniform(5, 900), 2))) for s in symbols}
    result = run(targets, holdings, prices=prices, rules=Rules(no_trade_band=D(0)))
    assert result.orders
    for order in result.orders:
        assert sum(a.qty for a in order.allocations) == order.signed_qty
        assert order.qty > 0
        assert order.qty == order.qty.quantize(D(1) if order.symbol == "SPY" else D("1e-9"))
        assert [a.strategy_id for a in order.allocations] == sorted({a.strategy_id for a in order.allocations})
        assert all(a.qty == a.qty.quantize(D("1e-9")) and a.qty != 0 for a in order.allocations)
        for allocation in order.allocations:  # no strategy ends short
            assert holdings.get((allocation.strategy_id, order.symbol), D(0)) + allocation.qty >= 0


def test_ids_are_deterministic() -> None:
    targets = [target("a", "0.5", AAPL=0.4, MSFT=0.1)]
    first, again = run(targets), run(targets)
    other = run(targets, rebalance_id="rebalance-2")
    assert [(o.event_id, o.client_order_id) for o in first.orders] == [
        (o.event_id, o.client_order_id) for o in again.orders
    ]
    assert first.orders[0].event_id == deterministic_event_id("place-order", "rebalance-1", "AAPL")
    assert first.orders[0].client_order_id == "tm-" + first.orders[0].event_id.replace("-", "")
    ids = {o.client_order_id for o in first.orders} | {o.client_order_id for o in other.orders}
    assert len(ids) == 4  # per symbol and per rebalance
    assert all(len(i) == 35 <= 48 for i in ids)


@pytest.mark.parametrize(
    ("event_id", "expected"),
    [
        pytest.param(
            "1B623210-3427-5bdd-8e1c-d7abcb361b72", "tm-1b62321034275bdd8e1cd7abcb361b72", id="uuid-kept-whole"
        ),
        pytest.param("x" * 60, "tm-" + "x" * 45, id="long-cut-at-48"),
        pytest.param("a_b c/1", "tm-abc1", id="only-letters-and-digits"),
    ],
)
def test_client_order_id(event_id: str, expected: str) -> None:
    assert client_order_id(event_id) == expected
    assert len(client_order_id(event_id)) <= 48


def test_client_order_id_needs_letters_or_digits() -> None:
    with pytest.raises(ValueError, match="no letters or digits"):
        client_order_id("--")


@pytest.mark.parametrize(
    ("capital", "targets", "message"),
    [
        pytest.param(D(-1), [], "capital", id="negative-capital"),
        pytest.param(D("NaN"), [], "capital", id="nan-capital"),
        pytest.param(CAPITAL, [target("a", "0.1"), target("a", "0.2")], "listed twice", id="duplicate-strategy"),
    ],
)
def test_inputs_no_caller_should_pass(capital: D, targets: list[StrategyTarget], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan("r", targets, capital, PRICES, {}, VENUES)


def test_flat_symbols_are_not_mentioned() -> None:
    result = run([target("a", "0.5", AAPL=0.0, EURUSD=0.0)], {("b", "AAPLX"): D(0)})
    assert result == Plan("rebalance-1", (), (), ())
