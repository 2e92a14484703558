"""Risk limits: every check on hand-built books against hand computations, and the pre-trade screen (risk-reducing
orders first, refusals with the limit and the numbers, later orders on the accepted ones only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from streams.risk.limits import (
    TOLERANCE,
    Book,
    Check,
    Limits,
    Screened,
    StrategyLimits,
    Trade,
    checks,
    limits_from,
    refusal_reason,
    screen,
)

EQUITY = 100_000.0

Holdings = Mapping[tuple[str, str], float]
"""(symbol, strategy) -> signed market value."""


def book_of(holdings: Holdings, equity: float = EQUITY) -> Book:
    symbols = tuple(sorted({s for s, _ in holdings}))
    strategies = tuple(sorted({sid for _, sid in holdings}))
    exposures = np.zeros((len(symbols), len(strategies)))
    for (symbol, sid), value in holdings.items():
        exposures[symbols.index(symbol), strategies.index(sid)] = value
    return Book(symbols, strategies, exposures, equity)


def table(found: Sequence[Check]) -> list[tuple[str, float, float, bool]]:
    return [(c.name, c.value, c.limit, c.breached) for c in found]


# --- limits_from ----------------------------------------------------------------------------------------------------


def test_limits_from_settings_shaped_mappings_with_partial_overrides() -> None:
    limits = limits_from(
        {"max_var": 0.05, "max_drawdown": 0.15, "max_gross_leverage": 1.5, "max_symbol_exposure": 0.6},
        {"max_var": 0.03, "max_exposure": 0.6, "max_drawdown": 0.25},
        {"tight": {"max_var": 0.01, "max_exposure": 0.2}, "deep": {"max_drawdown": 0.4}},
    )
    assert (limits.max_var, limits.max_drawdown, limits.max_gross_leverage, limits.max_symbol_exposure) == (
        0.05,
        0.15,
        1.5,
        0.6,
    )
    assert limits.of("anyone") == StrategyLimits(max_var=0.03, max_exposure=0.6, max_drawdown=0.25)
    assert limits.of("tight") == StrategyLimits(max_var=0.01, max_exposure=0.2, max_drawdown=0.25)
    assert limits.of("deep") == StrategyLimits(max_var=0.03, max_exposure=0.6, max_drawdown=0.4)


# --- checks ---------------------------------------------------------------------------------------------------------

HAND = limits_from(
    {"max_var": 0.05, "max_drawdown": 0.1, "max_gross_leverage": 0.5, "max_symbol_exposure": 0.25},
    {"max_var": 0.03, "max_exposure": 0.45, "max_drawdown": 0.2},
    {"s2": {"max_exposure": 0.05}},
)
HAND_BOOK = Book(
    ("AAA", "BBB", "CCC"),
    ("s1", "s2", "s3"),
    np.array(
        [
            [30_000.0, -10_000.0, 0.0],
            [-20_000.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],  # flat: no symbol check; s3 flat everywhere: no strategy check
        ]
    ),
    EQUITY,
)
HAND_VAR = np.array([4_000.0, 3_500.0, 500.0, 0.0])  # account, s1, s2, s3


def test_every_limit_on_a_hand_built_book() -> None:
    found = checks(HAND_BOOK, HAND, HAND_VAR, drawdown=0.12, strategy_drawdowns={"s1": 0.2, "s2": 0.25})
    assert table(found) == [
        ("var", pytest.approx(0.04), 0.05, False),  # 4,000 / 100,000
        ("drawdown", 0.12, 0.1, True),
        ("gross_leverage", pytest.approx(0.4), 0.5, False),  # |30k - 10k| + |-20k|: netted per symbol
        ("symbol_exposure:AAA", pytest.approx(0.2), 0.25, False),  # |30k - 10k|
        ("symbol_exposure:BBB", pytest.approx(0.2), 0.25, False),
        ("strategy_exposure:s1", pytest.approx(0.5), 0.45, True),  # |30k| + |-20k|
        ("strategy_var:s1", pytest.approx(0.035), 0.03, True),
        ("strategy_drawdown:s1", 0.2, 0.2, False),  # exactly at the limit
        ("strategy_exposure:s2", pytest.approx(0.1), 0.05, True),  # the override
        ("strategy_var:s2", pytest.approx(0.005), 0.03, False),  # the default, as the override does not name it
        ("strategy_drawdown:s2", 0.25, 0.2, True),
    ]


def test_without_var_or_drawdowns_those_checks_are_absent() -> None:
    assert [c.name for c in checks(HAND_BOOK, HAND, None)] == [
        "gross_leverage",
        "symbol_exposure:AAA",
        "symbol_exposure:BBB",
        "strategy_exposure:s1",
        "strategy_exposure:s2",
    ]


def test_gross_leverage_nets_the_strategies_per_symbol_as_the_broker_holds_it() -> None:
    hedged = book_of({("AAA", "long"): 60_000.0, ("AAA", "short"): -60_000.0, ("BBB", "long"): 30_000.0})
    found = {c.name: c.value for c in checks(hedged, HAND, None)}
    assert found["gross_leverage"] == pytest.approx(0.3)  # the account holds 0 AAA and 30,000 of BBB
    assert "symbol_exposure:AAA" not in found
    assert found["strategy_exposure:long"] == pytest.approx(0.9)  # a strategy's own book is not netted
    assert found["strategy_exposure:short"] == pytest.approx(0.6)


AT = limits_from(
    {"max_var": 0.05, "max_drawdown": 0.1, "max_gross_leverage": 0.5, "max_symbol_exposure": 0.3},
    {"max_var": 0.03, "max_exposure": 0.3, "max_drawdown": 0.2},
    {"s2": {"max_var": 0.02, "max_exposure": 0.2}},
)
AT_HOLDINGS = {("AAA", "s1"): 30_000.0, ("BBB", "s2"): -20_000.0}
AT_VAR = (5_000.0, 3_000.0, 2_000.0)


@pytest.mark.parametrize(
    ("bump", "breached"),
    [
        pytest.param({}, [], id="every-value-exactly-at-its-limit"),
        pytest.param({"var": 1.0}, ["var"], id="var"),
        pytest.param({"s1_var": 1.0}, ["strategy_var:s1"], id="strategy-var"),
        pytest.param({"s2_var": 1.0}, ["strategy_var:s2"], id="strategy-var-override"),
        pytest.param({"drawdown": 1e-6}, ["drawdown"], id="drawdown"),
        pytest.param({"s1_drawdown": 1e-6}, ["strategy_drawdown:s1"], id="strategy-drawdown"),
        pytest.param({"AAA": 1.0}, ["gross_leverage", "symbol_exposure:AAA", "strategy_exposure:s1"], id="AAA"),
        pytest.param({"BBB": -1.0}, ["gross_leverage", "strategy_exposure:s2"], id="BBB-at-s2-override"),
    ],
)
def test_a_value_at_its_limit_is_within_it_and_one_unit_above_breaches(
    bump: dict[str, float], breached: list[str]
) -> None:
    holdings = {(s, sid): v + bump.get(s, 0.0) for (s, sid), v in AT_HOLDINGS.items()}
    var = np.array(AT_VAR) + np.array([bump.get("var", 0.0), bump.get("s1_var", 0.0), bump.get("s2_var", 0.0)])
    found = checks(
        book_of(holdings),
        AT,
        var,
        drawdown=0.1 + bump.get("drawdown", 0.0),
        strategy_drawdowns={"s1": 0.2 + bump.get("s1_drawdown", 0.0)},
    )
    assert len(found) == 10
    assert [c.name for c in found if c.breached] == breached


@pytest.mark.parametrize(
    ("value", "limit", "breached"),
    [
        pytest.param(0.6, 0.6, False, id="equal"),
        pytest.param(0.1 + 0.2, 0.3, False, id="rounding-above-is-equal"),
        pytest.param(0.3 + 2 * TOLERANCE, 0.3, True, id="beyond-the-tolerance"),
        pytest.param(0.61, 0.6, True, id="above"),
        pytest.param(-1.0, 0.0, False, id="below"),
    ],
)
def test_breached_means_above_the_limit_beyond_rounding(value: float, limit: float, breached: bool) -> None:
    assert Check("x", value, limit).breached is breached


@pytest.mark.parametrize(
    ("name", "strategy_id"),
    [
        ("var", None),
        ("drawdown", None),
        ("gross_leverage", None),
        ("symbol_exposure:AAA", None),
        ("symbol_exposure:strategy_x", None),
        ("strategy_var:s1", "s1"),
        ("strategy_exposure:mom:v2", "mom:v2"),
        ("strategy_drawdown:s9", "s9"),
    ],
)
def test_a_checks_strategy_is_the_subject_of_a_strategy_limit_only(name: str, strategy_id: str | None) -> None:
    assert Check(name, 0.0, 1.0).strategy_id == strategy_id


def test_describe_names_the_limit_and_the_numbers() -> None:
    assert Check("symbol_exposure:AAA", 0.71234, 0.6).describe() == "symbol_exposure:AAA 0.7123 > limit 0.6000"


# --- screen ---------------------------------------------------------------------------------------------------------

LIMITS = limits_from(
    {"max_var": 0.08, "max_drawdown": 0.2, "max_gross_leverage": 1.0, "max_symbol_exposure": 0.6},
    {"max_var": 0.5, "max_exposure": 2.0, "max_drawdown": 0.3},
    {"s2": {"max_exposure": 0.2, "max_var": 0.015}},
)


def market_var(book: Book) -> np.ndarray:
    """Everything moves 10% together: the VaR of a scope is a tenth of its net exposure, so a hedge lowers it."""
    return np.asarray(0.1 * np.abs(np.concatenate([[book.exposures.sum()], book.exposures.sum(axis=0)])))


def trade(key: str, symbol: str, **changes: float) -> Trade:
    return Trade(key, symbol, changes)


def outcome(found: Sequence[Screened]) -> list[tuple[str, list[str]]]:
    return [(s.trade.key, [c.name for c in s.refused_by]) for s in found]


@pytest.mark.parametrize(
    ("holdings", "order", "refused_by", "before", "fits"),
    [
        pytest.param(
            {("AAA", "s1"): 50_000.0},
            trade("t", "AAA", s1=20_000.0),
            [("symbol_exposure:AAA", 0.7, 0.6)],
            {"symbol_exposure:AAA": 0.5},
            trade("t", "AAA", s1=10_000.0),
            id="symbol-exposure",
        ),
        pytest.param(
            {("AAA", "s1"): 10_000.0},
            trade("t", "BBB", s1=65_000.0),
            [("symbol_exposure:BBB", 0.65, 0.6)],
            {},
            trade("t", "BBB", s1=50_000.0),
            id="symbol-exposure-of-a-new-symbol",
        ),
        pytest.param(
            {("AAA", "s1"): 50_000.0, ("BBB", "s1"): -40_000.0},
            trade("t", "CCC", s1=15_000.0),
            [("gross_leverage", 1.05, 1.0)],
            {"gross_leverage": 0.9},
            trade("t", "CCC", s1=10_000.0),
            id="gross-leverage",
        ),
        pytest.param(
            {("AAA", "s2"): 10_000.0},
            trade("t", "BBB", s2=-15_000.0),
            [("strategy_exposure:s2", 0.25, 0.2)],
            {"strategy_exposure:s2": 0.1},
            trade("t", "BBB", s2=-10_000.0),
            id="strategy-exposure",
        ),
        pytest.param(
            {("AAA", "s1"): 50_000.0},
            trade("t", "BBB", s1=10_000.0, s2=-25_000.0),
            [("strategy_exposure:s2", 0.25, 0.2), ("strategy_var:s2", 0.025, 0.015)],
            {},
            trade("t", "BBB", s1=10_000.0, s2=-15_000.0),
            id="strategy-exposure-of-a-new-strategy",
        ),
        pytest.param(
            {("AAA", "s1"): 50_000.0, ("BBB", "s1"): 30_000.0},  # VaR 0.08: at the limit
            trade("t", "CCC", s1=5_000.0),
            [("var", 0.085, 0.08)],
            {"var": 0.08},
            trade("t", "CCC", s1=-5_000.0),
            id="var",
        ),
        pytest.param(
            {("AAA", "s2"): 10_000.0},
            trade("t", "BBB", s2=8_000.0),
            [("strategy_var:s2", 0.018, 0.015)],
            {"strategy_var:s2": 0.01},
            trade("t", "BBB", s2=5_000.0),
            id="strategy-var",
        ),
        pytest.param(
            {("AAA", "s1"): 55_000.0},
            trade("t", "AAA", s1=50_000.0),
            [("var", 0.105, 0.08), ("gross_leverage", 1.05, 1.0), ("symbol_exposure:AAA", 1.05, 0.6)],
            {"var": 0.055, "gross_leverage": 0.55, "symbol_exposure:AAA": 0.55},
            trade("t", "AAA", s1=5_000.0),
            id="several-at-once",
        ),
    ],
)
def test_an_order_breaching_a_limit_is_refused_with_the_check_and_the_numbers(
    holdings: Holdings,
    order: Trade,
    refused_by: list[tuple[str, float, float]],
    before: dict[str, float],
    fits: Trade,
) -> None:
    (found,) = screen([order], book_of(holdings), LIMITS, market_var)
    assert found.trade == order
    assert [(c.name, c.limit) for c in found.refused_by] == [(name, limit) for name, _, limit in refused_by]
    assert [c.value for c in found.refused_by] == pytest.approx([value for _, value, _ in refused_by])
    assert all(c.breached for c in found.refused_by)
    assert found.before == pytest.approx(before)
    # A smaller order of the same kind, up to the limit at most, goes.
    assert outcome(screen([fits], book_of(holdings), LIMITS, market_var)) == [("t", [])]


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        pytest.param(
            Screened(trade("t", "AAA"), (Check("symbol_exposure:AAA", 0.7, 0.6),), {"symbol_exposure:AAA": 0.5}),
            "pre-trade risk check: symbol_exposure:AAA would be 0.7000 > limit 0.6000, 0.5000 before it",
            id="breached-further",
        ),
        pytest.param(
            Screened(trade("t", "BBB"), (Check("symbol_exposure:BBB", 0.65, 0.6),), {}),
            "pre-trade risk check: symbol_exposure:BBB would be 0.6500 > limit 0.6000",
            id="new",
        ),
        pytest.param(
            Screened(
                trade("t", "AAA"),
                (Check("var", 0.105, 0.08), Check("strategy_exposure:s2", 0.25, 0.2)),
                {"var": 0.055},
            ),
            "pre-trade risk check: var would be 0.1050 > limit 0.0800, 0.0550 before it; "
            "strategy_exposure:s2 would be 0.2500 > limit 0.2000",
            id="several",
        ),
    ],
)
def test_refusal_reason_names_the_limits_and_the_numbers(found: Screened, reason: str) -> None:
    assert refusal_reason(found) == reason


def test_the_reason_of_a_screened_refusal() -> None:
    (found,) = screen([trade("t", "AAA", s1=20_000.0)], book_of({("AAA", "s1"): 50_000.0}), LIMITS, market_var)
    assert refusal_reason(found) == (
        "pre-trade risk check: symbol_exposure:AAA would be 0.7000 > limit 0.6000, 0.5000 before it"
    )


@pytest.mark.parametrize("sell_first", [False, True], ids=["sell-proposed-last", "sell-proposed-first"])
def test_risk_reducing_orders_go_first_and_make_room_for_the_others(sell_first: bool) -> None:
    breached = book_of({("AAA", "s1"): 70_000.0})  # symbol exposure 0.7 > 0.6
    hedge = trade("hedge", "BBB", s1=-50_000.0)  # alone: gross 1.2 > 1.0
    sell = trade("sell", "AAA", s1=-20_000.0)  # 0.7 -> 0.5: the book is inside its limits again
    found = screen([sell, hedge] if sell_first else [hedge, sell], breached, LIMITS, market_var)
    assert outcome(found) == [("sell", []), ("hedge", [])]  # gross 0.5 + 0.5: exactly at 1.0
    assert outcome(screen([hedge], breached, LIMITS, market_var)) == [("hedge", ["gross_leverage"])]


def test_an_order_reducing_a_breach_it_does_not_clear_is_accepted() -> None:
    breached = book_of({("AAA", "s1"): 90_000.0})  # symbol 0.9 > 0.6, var 0.09 > 0.08
    found = screen([trade("sell", "AAA", s1=-10_000.0)], breached, LIMITS, market_var)
    assert outcome(found) == [("sell", [])]
    reduced = book_of({("AAA", "s1"): 80_000.0})
    after = {c.name: c for c in checks(reduced, LIMITS, market_var(reduced))}
    assert after["symbol_exposure:AAA"].breached  # still breached, but less
    assert not after["var"].breached


def test_a_breached_book_does_not_block_orders_away_from_the_breach() -> None:
    breached = book_of({("AAA", "s1"): 70_000.0})
    found = screen([trade("other", "BBB", s1=-10_000.0)], breached, LIMITS, market_var)
    assert outcome(found) == [("other", [])]  # gross 0.8, var 0.06, BBB 0.1: AAA's breach is not this order's


def test_an_order_worsening_a_breach_is_refused_with_the_breached_value_before() -> None:
    breached = book_of({("AAA", "s1"): 70_000.0})
    (found,) = screen([trade("more", "AAA", s1=1_000.0)], breached, LIMITS, market_var)
    assert [c.name for c in found.refused_by] == ["symbol_exposure:AAA"]
    assert found.refused_by[0].value == pytest.approx(0.71)
    assert found.before == pytest.approx({"symbol_exposure:AAA": 0.7})


def test_later_orders_see_only_the_accepted_ones() -> None:
    start = book_of({("AAA", "s1"): 50_000.0})
    found = screen(
        [
            trade("big", "BBB", s1=70_000.0),  # refused: BBB 0.7, gross 1.2, var 0.12
            trade("hedge", "CCC", s1=-50_000.0),  # gross 1.0 (at the limit) only because "big" did not go
            trade("tiny", "DDD", s1=1_000.0),  # gross 1.01 after the hedge
        ],
        start,
        LIMITS,
        market_var,
    )
    assert outcome(found) == [
        ("big", ["var", "gross_leverage", "symbol_exposure:BBB"]),
        ("hedge", []),
        ("tiny", ["gross_leverage"]),
    ]
    assert found[2].before == pytest.approx({"gross_leverage": 1.0})
    assert found[2].refused_by[0].value == pytest.approx(1.01)


def test_processing_order_is_shrinking_orders_first_then_the_proposals_order() -> None:
    start = book_of({("AAA", "s1"): 30_000.0, ("BBB", "s2"): 10_000.0, ("CCC", "s1"): -20_000.0})
    trades = [
        trade("new", "DDD", s1=1_000.0),
        trade("flip", "BBB", s2=-25_000.0),  # |10k| -> |-15k|: not a reduction
        trade("cut", "AAA", s1=-5_000.0),
        trade("cover", "CCC", s1=5_000.0, s3=3_000.0),  # |-20k| -> |-12k|
        trade("grow", "AAA", s1=0.0, s2=1.0),
    ]
    loose = limits_from(
        {"max_var": 9.0, "max_drawdown": 1.0, "max_gross_leverage": 9.0, "max_symbol_exposure": 9.0},
        {"max_var": 9.0, "max_exposure": 9.0, "max_drawdown": 1.0},
        {},
    )
    found = screen(trades, start, loose, market_var)
    assert outcome(found) == [("cut", []), ("cover", []), ("new", []), ("flip", []), ("grow", [])]


def test_nothing_to_screen() -> None:
    assert screen([], book_of({("AAA", "s1"): 1.0}), LIMITS, market_var) == []


def test_a_var_not_measurable_yet_checks_the_rest() -> None:
    (found,) = screen([trade("t", "AAA", s1=70_000.0)], book_of({}), LIMITS, lambda book: None)
    assert [c.name for c in found.refused_by] == ["symbol_exposure:AAA"]


def _apply(holdings: dict[tuple[str, str], float], order: Trade) -> dict[tuple[str, str], float]:
    after = dict(holdings)
    for sid, change in order.changes.items():
        after[order.symbol, sid] = after.get((order.symbol, sid), 0.0) + change
    return after


def _checked(holdings: Holdings, limits: Limits) -> dict[str, Check]:
    book = book_of(holdings)
    return {c.name: c for c in checks(book, limits, market_var(book))}


@pytest.mark.parametrize("seed", range(25), ids=lambda seed: f"seed-{seed}")
def test_accepted_orders_never_breach_a_limit_the_book_kept_nor_breach_one_further(seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = ["A", "B", "C", "D", "E"]
    strategies = ["s1", "s2", "s3"]
    holdings = {
        (s, sid): float(rng.normal(0.0, 25_000.0)) for s in symbols[:4] for sid in strategies if rng.uniform() < 0.5
    }
    trades = [
        Trade(
            f"t{i}",
            symbols[i],
            {sid: float(rng.normal(0.0, 30_000.0)) for sid in rng.choice(strategies, int(rng.integers(1, 3)), False)},
        )
        for i in rng.permutation(len(symbols))
    ]
    limits = limits_from(
        {
            "max_var": float(rng.uniform(0.02, 0.1)),
            "max_drawdown": 0.2,
            "max_gross_leverage": float(rng.uniform(0.5, 1.5)),
            "max_symbol_exposure": float(rng.uniform(0.2, 0.6)),
        },
        {"max_var": float(rng.uniform(0.02, 0.1)), "max_exposure": float(rng.uniform(0.3, 1.0)), "max_drawdown": 0.3},
        {},
    )
    found = screen(trades, book_of(holdings), limits, market_var)
    assert sorted(s.trade.key for s in found) == sorted(t.key for t in trades)

    def held(symbol: str) -> float:
        return sum(v for (s, _), v in holdings.items() if s == symbol)

    shrinking = [abs(held(t.symbol) + sum(t.changes.values())) < abs(held(t.symbol)) for t in trades]
    expected_order = [t for t, shrinks in zip(trades, shrinking, strict=True) if shrinks] + [
        t for t, shrinks in zip(trades, shrinking, strict=True) if not shrinks
    ]
    assert [s.trade for s in found] == expected_order

    start = _checked(holdings, limits)
    state = dict(holdings)
    for verdict in found:
        now = _checked(state, limits)
        after_holdings = _apply(state, verdict.trade)
        after = _checked(after_holdings, limits)
        if verdict.refused_by:
            for check in verdict.refused_by:
                assert after[check.name].breached and after[check.name].value == pytest.approx(check.value)
                assert check.name not in now or check.value > now[check.name].value - 1e-12
            assert verdict.before == pytest.approx(
                {c.name: now[c.name].value for c in verdict.refused_by if c.name in now}
            )
            continue
        for name, check in after.items():
            if check.breached:
                assert name in now and check.value <= now[name].value + TOLERANCE
        state = after_holdings
    for name, check in _checked(state, limits).items():
        if check.breached:  # what the accepted orders leave breached was breached before, and no further
            assert start[name].breached and check.value <= start[name].value + 1e-9
