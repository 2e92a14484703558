"""The risk monitor (pure), driven with compact records of full events as the risk agent forwards them: the history
closes build, the figures of each RiskMeasured against a direct computation, when it measures, and what a breach sets
off (alerts, one halt per new account breach, one demotion per Live version). Every output encodes with its schema."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pytest
from scipy import stats

from core.events import deterministic_event_id
from schemas.codec import get_registry
from streams.risk.history import History
from streams.risk.limits import limits_from
from streams.risk.monitor import (
    ALERT_SCHEMA,
    HALT_SCHEMA,
    MEASURED_SCHEMA,
    TRANSITION_SCHEMA,
    Event,
    Models,
    Policy,
    RiskBook,
    compact,
    decide,
)

ACCOUNT = "paper"
DAY = 86_400 * 10**9
MINUTE = 60 * 10**9
SECOND = 10**9
T0 = 1_750_000_000 * 10**9 // DAY * DAY
DAYS = 40
NOW = T0 + DAYS * DAY + 10 * 3_600 * SECOND  # the morning after the last daily close
LOOKBACK = 30
EQUITY = 100_000.0

LIMITS = limits_from(
    {"max_var": 0.5, "max_drawdown": 0.1, "max_gross_leverage": 1.5, "max_symbol_exposure": 0.6},
    {"max_var": 0.5, "max_exposure": 2.0, "max_drawdown": 0.3},
    {"s1": {"max_exposure": 0.3}},
)
POLICY = Policy(
    account=ACCOUNT,
    limits=LIMITS,
    method="HISTORICAL",
    level=0.99,
    lookback=LOOKBACK,
    min_observations=10,
    paths=2_000,
    seed=3,
    measure_every_ns=MINUTE,
    default_equity=EQUITY,
    halt_on_breach=True,
    flatten_on_breach=False,
    demote_on_breach=True,
)


def _id(*parts: str | int) -> str:
    return deterministic_event_id("test-risk-monitor", *parts)


def _common(event_id: str, ts: int) -> dict[str, Any]:
    return {"event_id": event_id, "ts_event": ts, "ts_ingest": ts, "source": "test", "causation_id": ""}


INPUT_SCHEMAS = {
    "position": "tidemark.orders.PositionChanged",
    "bar": "tidemark.marketdata.BarClosed",
    "account": "tidemark.broker.AccountReported",
    "performance": "tidemark.strategies.StrategyPerformanceRecorded",
    "lifecycle": "tidemark.strategies.StrategyTransitioned",
    "halted": "tidemark.risk.TradingHalted",
    "resumed": "tidemark.risk.TradingResumed",
}


def _compact(kind: str, full: dict[str, Any]) -> dict[str, Any]:
    get_registry().encode(INPUT_SCHEMAS[kind], full)  # the full record is a valid event
    record = compact(kind, full)
    assert record is not None
    return record


def bar(symbol: str, start: int, close: float, interval: str = "1d") -> dict[str, Any]:
    end = start + (DAY if interval == "1d" else MINUTE)
    return _compact(
        "bar",
        {
            **_common(_id("bar", symbol, interval, start, repr(close)), end),
            "symbol": symbol,
            "asset_class": "EQUITY",
            "interval": interval,
            "start_ns": start,
            "end_ns": end,
            "open": close,
            "high": close,
            "low": close,
            "close": close,
            "volume": 1_000.0,
            "vwap": None,
            "trade_count": None,
            "regular_session": True,
            "kind": "OHLCV",
        },
    )


def tick(symbol: str, ts_event: int, close: float) -> dict[str, Any]:
    """A minute bar ending at ``ts_event``."""
    return bar(symbol, ts_event - MINUTE, close, "1m")


def position(sid: str, symbol: str, qty: str, ts: int, price: str | None = "100") -> dict[str, Any]:
    return _compact(
        "position",
        {
            **_common(_id("position", sid, symbol, qty, ts), ts),
            "account_id": ACCOUNT,
            "strategy_id": sid,
            "symbol": symbol,
            "qty": qty,
            "qty_change": qty,
            "price": price,
            "cash_change": "0",
            "avg_price": price,
            "realized_pnl": "0",
            "cause": "fill",
            "client_order_id": "c",
            "order_id": "o",
        },
    )


def account(equity: str, ts: int) -> dict[str, Any]:
    return _compact(
        "account",
        {
            **_common(_id("account", equity, ts), ts),
            "account_id": ACCOUNT,
            "currency": "USD",
            "cash": equity,
            "buying_power": equity,
            "equity": equity,
            "last_equity": None,
            "long_market_value": None,
            "short_market_value": None,
            "initial_margin": None,
            "maintenance_margin": None,
            "daytrade_count": None,
            "pattern_day_trader": False,
            "trading_blocked": False,
            "paper": True,
        },
    )


def performance(sid: str, drawdown: float, ts: int) -> dict[str, Any]:
    return _compact(
        "performance",
        {
            **_common(_id("performance", sid, ts), ts),
            "strategy_id": sid,
            "state": "LIVE",
            "period_start_ns": ts - DAY,
            "period_end_ns": ts,
            "period_return": 0.0,
            "cumulative_return": -drawdown,
            "pnl": "0",
            "drawdown": drawdown,
            "rolling_sharpe": None,
            "benchmark_return": None,
            "days_underperforming": 0,
            "trades": 0,
            "interval": "1d",
            "sessions": 1,
            "cost": 0.0,
            "rolling_sharpe_se": None,
            "positions": {},
        },
    )


def lifecycle(sid: str, to_state: str, version: int, ts: int) -> dict[str, Any]:
    return _compact(
        "lifecycle",
        {
            **_common(_id("lifecycle", sid, version), ts),
            "strategy_id": sid,
            "from_state": None,
            "to_state": to_state,
            "version": version,
            "reason": "test",
            "evidence": {},
            "requested_by": "tester",
        },
    )


def halted(reason: str, ts: int) -> dict[str, Any]:
    return _compact(
        "halted",
        {
            **_common(_id("halted", ts), ts),
            "account_id": ACCOUNT,
            "reason": reason,
            "flatten": False,
            "flatten_rebalance_id": "",
            "requested_by": "risk",
            "breaches": [],
            "command_id": _id("halt", ts),
        },
    )


def resumed(ts: int) -> dict[str, Any]:
    return _compact(
        "resumed",
        {
            **_common(_id("resumed", ts), ts),
            "account_id": ACCOUNT,
            "reason": "looked at it",
            "requested_by": "tester",
            "command_id": _id("resume", ts),
        },
    )


def path(seed: int, days: int = DAYS, last: float = 100.0) -> list[float]:
    """Daily closes ending exactly at ``last``."""
    steps = np.random.default_rng(seed).standard_t(4, days) * 0.015
    levels = np.cumsum(steps)
    return [float(x) for x in last * np.exp(levels - levels[-1])]


CLOSES = {"AAA": path(1), "BBB": path(2, last=50.0)}


def closes(symbols: Mapping[str, list[float]] = CLOSES) -> list[dict[str, Any]]:
    """Daily bars, day by day, each symbol's last one on the last day."""
    records = []
    for k in range(DAYS):
        for symbol, series in symbols.items():
            offset = DAYS - len(series)
            if k >= offset:
                records.append(bar(symbol, T0 + k * DAY, series[k - offset]))
    return records


class Monitor:
    """One account's monitor with its state, the way the agent keeps it; every output checked against its schema."""

    def __init__(self, policy: Policy = POLICY, models: Models | None = None) -> None:
        self.policy = policy
        self.book = RiskBook()
        self.histories: dict[str, History] = {}
        self.models = models or Models()

    def __call__(self, record: Mapping[str, Any]) -> list[Event]:
        events = decide(self.book, record, self.policy, self.histories, self.models)
        registry = get_registry()
        for topic, key, schema, payload in events:
            registry.encode(schema, payload)
            assert topic in ("risk.metrics", "risk.controls", "strategies.commands", "alerts")
            assert key in (ACCOUNT, payload.get("strategy_id"), payload.get("subject"))
        return events

    def feed(self, records: Iterable[Mapping[str, Any]]) -> list[Event]:
        return [event for record in records for event in self(record)]


def kinds(events: list[Event]) -> list[str]:
    return [schema.rsplit(".", 1)[1] for _, _, schema, _ in events]


def measured(events: list[Event]) -> dict[str, Any]:
    (found,) = [record for _, _, schema, record in events if schema == MEASURED_SCHEMA]
    return found


def estimate(record: Mapping[str, Any], method: str, level: float) -> dict[str, Any]:
    found: list[dict[str, Any]] = [e for e in record["estimates"] if e["method"] == method and e["confidence"] == level]
    assert len(found) == 1
    return found[0]


def returns_of(series: list[float], lookback: int = LOOKBACK) -> np.ndarray:
    tail = np.asarray(series[-(lookback + 1) :])
    return np.asarray(tail[1:] / tail[:-1] - 1.0)


def historical_var(pnl: np.ndarray, level: float) -> float:
    """-quantile at 1-level, inverted CDF: an observed loss, never an interpolation (measures.historical)."""
    return float(-np.quantile(pnl, round(1.0 - level, 12), method="inverted_cdf"))


def historical_cvar(pnl: np.ndarray, level: float) -> float:
    tail = math.ceil(round(len(pnl) * (1.0 - level), 9))
    return float(-np.sort(pnl)[:tail].mean())


def ready(policy: Policy = POLICY) -> Monitor:
    monitor = Monitor(policy)
    assert monitor.feed(closes()) == []  # nothing held: nothing measured
    return monitor


# --- inputs ---------------------------------------------------------------------------------------------------------


def test_compact_keeps_daily_and_minute_bars_only() -> None:
    full = {**_common(_id("x"), 1), "symbol": "AAA", "interval": "5m", "start_ns": 0, "close": 1.0}
    assert compact("bar", full) is None
    assert bar("AAA", T0, 10.0)["kind"] == "close"
    assert tick("AAA", NOW, 10.0)["kind"] == "tick"
    with pytest.raises(ValueError, match="no input kind"):
        compact("nonsense", full)


def test_closes_build_each_symbols_history_to_the_lookback() -> None:
    monitor = ready()
    for symbol, series in CLOSES.items():
        expected = [[T0 + k * DAY, close] for k, close in enumerate(series)][-(LOOKBACK + 1) :]
        assert monitor.histories[symbol] == expected


@pytest.mark.parametrize(
    ("day", "close", "measures"),
    [
        pytest.param(DAYS - 1, CLOSES["AAA"][-1], True, id="redelivered"),  # the same record: the same measurement
        pytest.param(DAYS - 1, 77.0, True, id="same-session-other-close"),
        pytest.param(20, 55.0, False, id="older-session"),
    ],
)
def test_a_close_not_newer_than_the_history_changes_the_history_not(day: int, close: float, measures: bool) -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))
    before = {s: [list(row) for row in h] for s, h in monitor.histories.items()}
    events = monitor(bar("AAA", T0 + day * DAY, close))
    assert monitor.histories == before
    assert bool(events) is measures
    if measures:  # on the history as it was, at the mark this close set
        pnl = returns_of(CLOSES["AAA"]) * 100 * monitor.book.marks["AAA"][1]
        assert estimate(measured(events), "HISTORICAL", 0.99)["var"] == pytest.approx(
            historical_var(pnl, 0.99) / EQUITY
        )


def test_a_close_that_is_not_a_price_raises() -> None:
    monitor = ready()
    with pytest.raises(ValueError, match="not a positive price"):
        monitor(bar("AAA", T0 + DAYS * DAY, 0.0))


# --- one measurement ------------------------------------------------------------------------------------------------


def test_a_position_change_is_measured_as_computed_directly() -> None:
    monitor = ready()
    events = monitor(position("s1", "AAA", "250", NOW))
    assert kinds(events) == ["RiskMeasured"]
    events = monitor(position("s2", "BBB", "-400", NOW + SECOND))
    assert kinds(events) == ["RiskMeasured"]
    record = measured(events)
    cause = _id("position", "s2", "BBB", "-400", NOW + SECOND)
    assert record["event_id"] == deterministic_event_id("risk-measured", ACCOUNT, cause)
    assert record["causation_id"] == cause
    assert record["ts_event"] == NOW + SECOND

    # Marked at the latest closes (100 and 50), not at the fill prices.
    exposures = np.array([[250 * 100.0, 0.0], [0.0, -400 * 50.0]])  # AAA, BBB x s1, s2
    portfolio = exposures.sum(axis=1)
    assert (record["equity"], record["gross_exposure"], record["net_exposure"]) == ("100000.00", "45000.00", "5000.00")
    assert record["leverage"] == pytest.approx(0.45)
    assert [(s["strategy_id"], s["gross_exposure"], s["net_exposure"]) for s in record["strategies"]] == [
        ("s1", "25000.00", "25000.00"),
        ("s2", "20000.00", "-20000.00"),
    ]
    returns = np.column_stack([returns_of(CLOSES["AAA"]), returns_of(CLOSES["BBB"])])
    assert record["observations"] == LOOKBACK
    assert len(record["estimates"]) == 8  # 4 methods x 2 levels
    for level in (0.95, 0.99):
        pnl = returns @ portfolio
        found = estimate(record, "HISTORICAL", level)
        assert found["var"] == pytest.approx(historical_var(pnl, level) / EQUITY, rel=1e-12)
        assert found["cvar"] == pytest.approx(historical_cvar(pnl, level) / EQUITY, rel=1e-12)
        assert found["var_amount"] == f"{historical_var(pnl, level):.2f}"
        for j, strategy in enumerate(record["strategies"]):
            own = estimate(strategy, "HISTORICAL", level)
            assert own["var"] == pytest.approx(historical_var(returns @ exposures[:, j], level) / EQUITY, rel=1e-12)
    limits = {entry["name"]: entry for entry in record["limits"]}
    assert limits["var"]["value"] == pytest.approx(historical_var(returns @ portfolio, 0.99) / EQUITY, rel=1e-12)
    assert limits["gross_leverage"]["value"] == pytest.approx(record["leverage"])
    assert limits["symbol_exposure:AAA"]["value"] == pytest.approx(0.25)
    assert limits["strategy_exposure:s2"]["value"] == pytest.approx(0.2)
    assert record["breaches"] == [] and record["missing_history"] == [] and record["kill_switch"] is False
    assert record["kupiec_p_value"] is None  # 30 days: far too few for a rolling 100-day backtest


def test_opposite_holdings_of_two_strategies_net_in_the_accounts_exposure_and_its_leverage_limit() -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "900", NOW))
    record = measured(monitor(position("s3", "AAA", "-900", NOW + SECOND)))
    assert (record["gross_exposure"], record["net_exposure"], record["leverage"]) == ("0.00", "0.00", 0.0)
    limits = {entry["name"]: entry["value"] for entry in record["limits"]}
    assert limits["gross_leverage"] == 0.0  # the broker holds no AAA
    assert "var" in limits and limits["var"] == 0.0
    assert record["breaches"] == []


def test_a_symbol_without_enough_history_counts_in_exposure_not_in_var() -> None:
    monitor = Monitor()
    monitor.feed(closes({**CLOSES, "NEW": path(3, days=6, last=20.0)}))  # 5 returns < 10
    monitor(position("s2", "AAA", "100", NOW))
    record = measured(monitor(position("s2", "NEW", "1000", NOW + SECOND)))
    assert record["missing_history"] == ["NEW"]
    assert (record["gross_exposure"], record["net_exposure"]) == ("30000.00", "30000.00")  # 10,000 + 20,000
    pnl = returns_of(CLOSES["AAA"]) * 10_000.0  # NEW stays out of the estimate
    assert estimate(record, "HISTORICAL", 0.99)["var"] == pytest.approx(historical_var(pnl, 0.99) / EQUITY)
    assert record["observations"] == LOOKBACK


def test_without_any_history_the_exposures_are_measured_and_no_estimate() -> None:
    monitor = Monitor()
    record = measured(monitor(position("s2", "AAA", "10", NOW, price="123.5")))
    assert record["missing_history"] == ["AAA"]
    assert (record["gross_exposure"], record["estimates"], record["observations"]) == ("1235.00", [], 0)
    assert "var" not in {entry["name"] for entry in record["limits"]}


def test_a_long_history_gets_the_kupiec_p_value_of_the_held_books_historical_var() -> None:
    lookback = 200
    policy = Policy(**{**POLICY.__dict__, "lookback": lookback})
    series = path(11, days=lookback + 1)
    monitor = Monitor(policy)
    monitor.feed(bar("AAA", T0 + k * DAY, close) for k, close in enumerate(series))
    record = measured(monitor(position("s2", "AAA", "-300", NOW)))
    pnl = returns_of(series, lookback) * -30_000.0
    hits = [pnl[t] < min(pnl[t - 100 : t]) for t in range(100, lookback)]  # 99%, 100 days: the worst day is the VaR
    x, n = sum(hits), len(hits)
    lr = -2 * (
        (n - x) * math.log(0.99)
        + x * math.log(0.01)
        - ((n - x) * math.log(1 - x / n) + (x * math.log(x / n) if x else 0))
    )
    assert record["kupiec_p_value"] == pytest.approx(float(stats.chi2.sf(lr, 1)), rel=1e-9)


# --- when it measures -----------------------------------------------------------------------------------------------


def test_ticks_of_a_held_symbol_measure_at_most_once_a_minute_of_market_time() -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))  # measured at NOW
    offsets = [10, 59, 60, 61, 119, 125, 184, 185, 186, 600]
    measured_at = []
    for i, seconds in enumerate(offsets):
        events = monitor(tick("AAA", NOW + seconds * SECOND, 100.0 + i))
        if events:
            assert kinds(events) == ["RiskMeasured"]
            assert measured(events)["gross_exposure"] == f"{100 * (100.0 + i):.2f}"  # marked at this tick
            measured_at.append(seconds)
    assert measured_at == [60, 125, 185, 600]
    assert monitor.book.marks["AAA"] == [NOW + 600 * SECOND, 109.0]  # every tick marks, as of its minute's end


def test_ticks_and_closes_of_symbols_not_held_mark_them_and_measure_nothing() -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))
    assert monitor(tick("BBB", NOW + 5 * MINUTE, 51.0)) == []
    assert monitor.book.marks["BBB"] == [NOW + 5 * MINUTE, 51.0]
    assert monitor(bar("BBB", T0 + DAYS * DAY, 52.0)) == []
    assert monitor.histories["BBB"][-1] == [T0 + DAYS * DAY, 52.0]


def test_a_close_of_a_held_symbol_is_measured_on_the_longer_history() -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))
    events = monitor(bar("AAA", T0 + DAYS * DAY, 90.0))
    series = [*CLOSES["AAA"], 90.0]
    pnl = returns_of(series) * 9_000.0
    assert estimate(measured(events), "HISTORICAL", 0.99)["var"] == pytest.approx(historical_var(pnl, 0.99) / EQUITY)


def test_the_days_close_after_its_ticks_is_measured_on_the_longer_history_and_becomes_the_mark() -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))
    monitor(tick("AAA", NOW + 5 * MINUTE, 101.0))  # a tick of the session whose daily bar comes next
    events = monitor(bar("AAA", T0 + DAYS * DAY, 90.0))
    # The close is the price at the session's end, after every tick of it: it is the mark now.
    assert monitor.book.marks["AAA"] == [T0 + (DAYS + 1) * DAY, 90.0]
    pnl = returns_of([*CLOSES["AAA"], 90.0]) * 9_000.0
    assert estimate(measured(events), "HISTORICAL", 0.99)["var"] == pytest.approx(historical_var(pnl, 0.99) / EQUITY)
    assert measured(events)["gross_exposure"] == "9000.00"
    redelivered = monitor(bar("AAA", T0 + DAYS * DAY, 90.0))
    assert measured(redelivered)["event_id"] == measured(events)["event_id"]  # the same measurement, the same id


@pytest.mark.parametrize(
    ("price_ends", "marked"),
    [
        (NOW - MINUTE, 100.0),  # a minute that ended before the fill: the fill's price stays the mark
        (NOW, 100.5),  # one that ended as the fill happened, delivered after it
        (NOW + MINUTE, 100.5),
    ],
)
def test_a_price_ending_after_a_fill_replaces_the_fills_price_as_the_mark(price_ends: int, marked: float) -> None:
    monitor = ready()  # NEW has no price yet: its fill's price marks it
    monitor(position("s2", "NEW", "100", NOW, price="100"))
    monitor(tick("NEW", price_ends, 100.5))
    assert monitor.book.marks["NEW"][1] == marked


def test_a_fill_during_a_session_is_marked_at_that_sessions_close() -> None:
    """A fill at a wall-clock time (Alpaca) falls inside its session's daily bar, which starts before it: the bar's
    close, taken at the bar's end, is the newer price."""
    monitor = ready()
    monitor(position("s2", "NEW", "100", NOW, price="100"))
    events = monitor(bar("NEW", T0 + DAYS * DAY, 95.0))
    assert T0 + DAYS * DAY < NOW < T0 + (DAYS + 1) * DAY
    assert monitor.book.marks["NEW"] == [T0 + (DAYS + 1) * DAY, 95.0]
    assert measured(events)["gross_exposure"] == "9500.00"


def test_a_close_forwarded_without_its_end_is_timed_by_its_start() -> None:
    """Compact records in a merged input log written before they carried ``end`` still replay."""
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))
    monitor({k: v for k, v in tick("AAA", NOW + 5 * MINUTE, 101.0).items() if k != "end"})
    assert monitor.book.marks["AAA"] == [NOW + 4 * MINUTE, 101.0]


def test_the_account_is_measured_when_its_equity_moves() -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))
    record = measured(monitor(account("120000", NOW + SECOND)))
    assert (record["equity"], record["peak_equity"], record["drawdown"], record["leverage"]) == (
        "120000.00",
        "120000.00",
        0.0,
        pytest.approx(10_000 / 120_000),
    )
    assert monitor(account("120000", NOW + 2 * SECOND)) == []
    record = measured(monitor(account("114000", NOW + 3 * SECOND)))
    assert (record["drawdown"], record["max_drawdown"], record["peak_equity"]) == (
        pytest.approx(0.05),
        pytest.approx(0.05),
        "120000.00",
    )
    record = measured(monitor(account("117000", NOW + 4 * SECOND)))
    assert (record["drawdown"], record["max_drawdown"]) == (pytest.approx(0.025), pytest.approx(0.05))


def test_nothing_held_nothing_measured() -> None:
    monitor = ready()
    assert monitor(account("90000", NOW)) == []
    assert monitor(performance("s1", 0.5, NOW)) == []
    assert monitor(halted("by hand", NOW)) == [] and monitor.book.halted


# --- breaches -------------------------------------------------------------------------------------------------------


def _with(**changes: Any) -> Policy:
    return Policy(**{**POLICY.__dict__, **changes})


@pytest.mark.parametrize("flatten", [False, True], ids=["halt", "halt-and-flatten"])
def test_a_new_account_breach_halts_once_and_again_only_after_it_clears(flatten: bool) -> None:
    monitor = ready(_with(flatten_on_breach=flatten))
    first = position("s2", "AAA", "700", NOW)
    events = monitor(first)
    assert kinds(events) == ["RiskMeasured", "AlertRaised", "HaltTrading"]
    record = measured(events)
    assert record["breaches"] == ["symbol_exposure:AAA"]
    (alert,) = [e[3] for e in events if e[2] == ALERT_SCHEMA]
    assert (alert["severity"], alert["kind"], alert["subject"], alert["causation_id"]) == (
        "CRITICAL",
        "risk.limit_breach",
        ACCOUNT,
        record["event_id"],
    )
    assert (alert["from_value"], alert["to_value"]) == (0.6, pytest.approx(0.7))
    assert alert["details"] == {
        "limit": "symbol_exposure:AAA",
        "measurement_id": record["event_id"],
        "account_id": ACCOUNT,
    }
    (topic, key, _, halt) = next(e for e in events if e[2] == HALT_SCHEMA)
    assert (topic, key) == ("risk.controls", ACCOUNT)
    assert halt["breaches"] == ["symbol_exposure:AAA"]
    assert halt["flatten"] is flatten
    assert halt["reason"] == "risk limit breached: symbol_exposure:AAA 0.7000 > limit 0.6000"
    assert (halt["causation_id"], halt["requested_by"], halt["account_id"]) == (record["event_id"], "risk", ACCOUNT)

    # The breach persists: measured, nothing set off again.
    assert kinds(monitor(position("s2", "AAA", "800", NOW + SECOND))) == ["RiskMeasured"]
    # The desk's answer turns the switch on; a new account breach while it is on alerts and halts nothing.
    record = measured(monitor(halted("risk limit breached", NOW + 2 * SECOND)))
    assert (record["kill_switch"], record["halt_reason"]) == (True, "risk limit breached")
    events = monitor(position("s2", "BBB", "1600", NOW + 3 * SECOND))  # BBB 0.8, gross 1.6
    assert kinds(events) == ["RiskMeasured", "AlertRaised", "AlertRaised"]
    assert [e[3]["details"]["limit"] for e in events[1:]] == ["gross_leverage", "symbol_exposure:BBB"]
    assert all(e[3]["severity"] == "CRITICAL" for e in events[1:])
    assert kinds(monitor(position("s2", "BBB", "0", NOW + 4 * SECOND))) == ["RiskMeasured"]
    # Resumed with AAA still breached: the switch stays off until a limit is breached anew.
    record = measured(monitor(resumed(NOW + 5 * SECOND)))
    assert (record["kill_switch"], record["halt_reason"], record["breaches"]) == (False, "", ["symbol_exposure:AAA"])
    assert kinds(monitor(position("s2", "AAA", "750", NOW + 6 * SECOND))) == ["RiskMeasured"]
    record = measured(monitor(position("s2", "AAA", "500", NOW + 7 * SECOND)))
    assert record["breaches"] == []
    again = monitor(position("s2", "AAA", "700", NOW + 8 * SECOND))
    assert kinds(again) == ["RiskMeasured", "AlertRaised", "HaltTrading"]
    assert again[2][3]["event_id"] != halt["event_id"]
    assert again[2][3]["breaches"] == ["symbol_exposure:AAA"]


def test_without_halt_on_breach_a_breach_only_alerts() -> None:
    monitor = ready(_with(halt_on_breach=False))
    assert kinds(monitor(position("s2", "AAA", "700", NOW))) == ["RiskMeasured", "AlertRaised"]


def test_a_drawdown_breach_of_the_account_halts() -> None:
    monitor = ready()
    monitor(position("s2", "AAA", "100", NOW))
    monitor(account("100000", NOW + SECOND))
    assert kinds(monitor(account("91000", NOW + 2 * SECOND))) == ["RiskMeasured"]  # 9%
    events = monitor(account("89000", NOW + 3 * SECOND))  # 11% > 10%
    assert kinds(events) == ["RiskMeasured", "AlertRaised", "HaltTrading"]
    assert events[1][3]["kind"] == "risk.drawdown_breach"
    assert events[2][3]["breaches"] == ["drawdown"]
    assert events[2][3]["reason"] == "risk limit breached: drawdown 0.1100 > limit 0.1000"


def test_a_breach_of_a_live_strategy_sends_it_back_to_paper_once_per_version() -> None:
    monitor = ready()
    assert monitor(lifecycle("s1", "LIVE", 3, NOW)) == []
    events = monitor(position("s1", "AAA", "400", NOW + SECOND))  # s1: 0.4 > its own 0.3
    assert kinds(events) == ["RiskMeasured", "AlertRaised", "TransitionStrategy"]
    record = measured(events)
    alert = events[1][3]
    assert (alert["severity"], alert["subject"], alert["kind"]) == ("WARNING", "s1", "risk.limit_breach")
    (topic, key, schema, command) = events[2]
    assert (topic, key, schema) == ("strategies.commands", "s1", TRANSITION_SCHEMA)
    assert (command["strategy_id"], command["expected_version"], command["target_state"]) == ("s1", 3, "PAPER")
    assert command["causation_id"] == record["event_id"]
    assert command["requested_by"] == "risk"
    assert command["reason"] == "risk limit breached: strategy_exposure:s1 0.4000 > limit 0.3000"
    assert command["evidence"] == {
        "measurement_id": record["event_id"],
        "strategy_exposure": "0.400000",
        "strategy_exposure_limit": "0.300000",
    }
    # Still breached, same version: nothing again.
    assert kinds(monitor(position("s1", "AAA", "450", NOW + 2 * SECOND))) == ["RiskMeasured"]
    # Demoted, then Live again at a new version while still in breach: one new command with that version.
    assert monitor(lifecycle("s1", "PAPER", 4, NOW + 3 * SECOND)) == []
    assert monitor(lifecycle("s1", "LIVE", 5, NOW + 4 * SECOND)) == []
    events = monitor(position("s1", "AAA", "460", NOW + 5 * SECOND))
    assert kinds(events) == ["RiskMeasured", "TransitionStrategy"]
    assert events[1][3]["expected_version"] == 5
    assert events[1][3]["causation_id"] == measured(events)["event_id"]


@pytest.mark.parametrize(
    ("states", "policy"),
    [
        pytest.param([], POLICY, id="never-live"),
        pytest.param([("PAPER", 2)], POLICY, id="paper"),
        pytest.param([("LIVE", 2), ("RETIRED", 3)], POLICY, id="live-then-retired"),
        pytest.param([("LIVE", 2)], _with(demote_on_breach=False), id="live-without-demote-on-breach"),
        pytest.param([("PAPER", 5), ("LIVE", 4)], POLICY, id="a-late-live-after-a-newer-paper"),
    ],
)
def test_a_strategy_breach_demotes_nothing_unless_live_and_so_set(
    states: list[tuple[str, int]], policy: Policy
) -> None:
    monitor = ready(policy)
    for i, (state, version) in enumerate(states):
        monitor(lifecycle("s1", state, version, NOW + i))
    assert kinds(monitor(position("s1", "AAA", "400", NOW + SECOND))) == ["RiskMeasured", "AlertRaised"]


def test_a_late_older_transition_leaves_a_live_strategy_live() -> None:
    monitor = ready()
    monitor(lifecycle("s1", "LIVE", 4, NOW))
    monitor(lifecycle("s1", "PAPER", 2, NOW + 1))  # redelivered or late: version 4 already decided
    events = monitor(position("s1", "AAA", "400", NOW + SECOND))
    assert kinds(events) == ["RiskMeasured", "AlertRaised", "TransitionStrategy"]
    assert events[2][3]["expected_version"] == 4


def test_a_live_strategys_own_drawdown_breach_demotes_it() -> None:
    monitor = ready()
    monitor(lifecycle("s2", "LIVE", 7, NOW))
    monitor(position("s2", "AAA", "100", NOW + SECOND))
    assert kinds(monitor(performance("s2", 0.3, NOW + 2 * SECOND))) == ["RiskMeasured"]  # at the limit
    events = monitor(performance("s2", 0.31, NOW + 3 * SECOND))
    assert kinds(events) == ["RiskMeasured", "AlertRaised", "TransitionStrategy"]
    assert events[1][3]["kind"] == "risk.drawdown_breach"
    assert (events[2][3]["expected_version"], events[2][3]["evidence"]["strategy_drawdown"]) == (7, "0.310000")
    assert measured(events)["strategies"][0]["drawdown"] == 0.31


def test_halted_and_resumed_flip_the_kill_switch_in_the_measurements() -> None:
    monitor = ready()
    assert measured(monitor(position("s2", "AAA", "100", NOW)))["kill_switch"] is False
    record = measured(monitor(halted("by hand", NOW + SECOND)))
    assert (record["kill_switch"], record["halt_reason"]) == (True, "by hand")
    assert measured(monitor(tick("AAA", NOW + 2 * MINUTE, 101.0)))["kill_switch"] is True
    record = measured(monitor(resumed(NOW + 3 * MINUTE)))
    assert (record["kill_switch"], record["halt_reason"]) == (False, "")


# --- determinism ----------------------------------------------------------------------------------------------------


def script() -> list[dict[str, Any]]:
    return [
        *closes({**CLOSES, "NEW": path(5, days=8, last=10.0)}),
        lifecycle("s1", "LIVE", 1, NOW),
        position("s1", "AAA", "200", NOW + 1),
        position("s2", "BBB", "-300", NOW + 2),
        position("s2", "NEW", "50", NOW + 3),
        *(tick("AAA", NOW + k * 20 * SECOND, 100.0 + k / 10) for k in range(1, 12)),
        account("101000", NOW + 5 * MINUTE),
        performance("s2", 0.05, NOW + 6 * MINUTE),
        position("s1", "AAA", "400", NOW + 7 * MINUTE),  # s1 breaches: demoted
        position("s2", "AAA", "500", NOW + 8 * MINUTE),  # AAA 0.9: halt
        halted("risk", NOW + 9 * MINUTE),
        bar("AAA", T0 + DAYS * DAY, 97.0),
        resumed(NOW + DAY),
        position("s2", "AAA", "0", NOW + DAY + 1),
    ]


def encoded(events: list[Event]) -> list[bytes]:
    """ts_ingest is the wall clock at publication, the one field that is not decided."""
    return [get_registry().encode(schema, {**record, "ts_ingest": 0}) for _, _, schema, record in events]


def test_the_same_inputs_give_byte_identical_outputs() -> None:
    first = Monitor()
    out = first.feed(script())
    assert set(kinds(out)) == {"RiskMeasured", "AlertRaised", "HaltTrading", "TransitionStrategy"}
    again = Monitor().feed(script())
    assert encoded(again) == encoded(out)
    warm = Monitor(models=first.models).feed(script())  # the models cached by the first run change nothing
    assert encoded(warm) == encoded(out)
    ids = [record["event_id"] for _, _, _, record in out]
    assert len(ids) == len(set(ids))


def test_the_book_round_trips_through_json() -> None:
    import json

    monitor = Monitor()
    records = script()
    monitor.feed(records[: len(records) // 2 + 10])
    restored = Monitor()
    restored.book = RiskBook.from_json(json.loads(json.dumps(monitor.book.to_json())))
    restored.histories = json.loads(json.dumps(monitor.histories))
    assert restored.book == monitor.book
    rest = records[len(records) // 2 + 10 :]
    assert encoded(restored.feed(rest)) == encoded(monitor.feed(rest))
