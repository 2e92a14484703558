"""What each event type names as its causes, the aliases it is known by, the bars behind it and its summary line: one
table over every schema of the contract, so a new event type fails here until it says what it links to."""

from __future__ import annotations

import random
from typing import Any

import pytest
from avro_samples import named_types, sample

from schemas.codec import get_registry
from schemas.links import RULES, BarWindow, Link, aliases, bar_window, links, short_name, summary

E = "00000000-0000-4000-8000-00000000000e"  # the event's own id
C = "00000000-0000-4000-8000-00000000000c"  # its causation
R = "00000000-0000-4000-8000-000000000001"  # a rebalance
T = "00000000-0000-4000-8000-000000000002"  # a task, targets, ...
K = "00000000-0000-4000-8000-000000000003"  # a candidate
M = "00000000-0000-4000-8000-000000000004"  # a measurement
H = "00000000-0000-4000-8000-000000000005"  # a halt command
I1 = "00000000-0000-4000-8000-000000000006"
I2 = "00000000-0000-4000-8000-000000000007"
COID = "tm-" + E.replace("-", "")
AS_OF = 1_728_072_000_000_000_000


def causation(cause: str = C) -> Link:
    return Link(cause, "causation")


# (schema short name, fields set on a sample record, links, aliases, bar window)
CASES: list[tuple[str, dict[str, Any], list[Link], list[str], BarWindow | None]] = [
    ("AccountReported", {}, [causation()], [], None),
    (
        "AlertRaised",
        {"details": {"limit": "var_99", "measurement_id": "", "targets_id": T, "rebalance_id": R}},
        [causation(), Link(R, "details.rebalance_id"), Link(T, "details.targets_id")],
        [],
        None,
    ),
    ("ApproveRebalance", {"causation_id": R, "rebalance_id": R}, [causation(R), Link(R, "rebalance_id")], [], None),
    ("BarClosed", {"causation_id": ""}, [], [], None),
    ("CorporateActionAnnounced", {"causation_id": ""}, [], [], None),
    (
        "CorrelationSnapshotTaken",
        {"universe": "core", "symbols": ["AAPL", "MSFT"], "timeframe": "1m", "window_bars": 60, "as_of_ns": AS_OF},
        [causation()],
        [],
        BarWindow(("AAPL", "MSFT"), "1m", AS_OF, 61, "1m"),
    ),
    (
        "CorrelationSnapshotTaken",
        {"universe": "core", "symbols": ["AAPL", "SPY"], "timeframe": "1d", "window_bars": 21, "as_of_ns": AS_OF},
        [causation()],
        [],
        BarWindow(("AAPL", "SPY"), "1m", AS_OF, 22, "1d", regular_session=True),
    ),
    ("CorrelationSnapshotTaken", {"universe": "strategies:paper", "symbols": ["S1", "S2"]}, [causation()], [], None),
    (
        "CurrencyStrengthComputed",
        {"pairs": ["EURUSD", "USDJPY"], "timeframe": "1m", "window_bars": 60, "as_of_ns": AS_OF},
        [causation()],
        [],
        BarWindow(("EURUSD", "USDJPY"), "1m", AS_OF, 61, "1m", regular_session=True),
    ),
    ("DiscoverStrategy", {"causation_id": K}, [causation(K)], [], None),
    (
        "DiscoveryProgressed",
        {"causation_id": T, "task_id": T, "candidate_id": K},
        [causation(T), Link(T, "task_id"), Link(K, "candidate_id")],
        [],
        None,
    ),
    (
        "DiscoveryProgressed",
        {"causation_id": T, "task_id": T, "candidate_id": ""},
        [causation(T), Link(T, "task_id")],
        [],
        None,
    ),
    ("HaltTrading", {"causation_id": M}, [causation(M)], [], None),
    ("MessageDeadLettered", {"causation_id": ""}, [], [], None),
    (
        "OrderRejected",
        {"causation_id": R, "rebalance_id": R, "client_order_id": COID},
        [causation(R), Link(R, "rebalance_id")],
        [],
        None,
    ),
    ("OrderUpdated", {"client_order_id": COID}, [causation(), Link(COID, "client_order_id")], [], None),
    ("OrderUpdated", {"causation_id": "", "client_order_id": ""}, [], [], None),
    (
        "PatternSignalDetected",
        {"causation_id": "", "symbols": ["KO", "PEP"], "timeframe": "1h", "window_bars": 100, "as_of_ns": AS_OF},
        [],
        [],
        BarWindow(("KO", "PEP"), "1m", AS_OF, 101, "1h", regular_session=True, whole_rows=True),
    ),
    ("PlaceOrder", {"causation_id": R, "client_order_id": COID}, [causation(R)], [COID], None),
    (
        "PortfolioTargetsSet",
        {"inputs": [I1, I2, C, ""]},
        [causation(), Link(I1, "inputs"), Link(I2, "inputs"), Link(C, "inputs")],
        [],
        None,
    ),
    ("PositionChanged", {"client_order_id": COID}, [causation(), Link(COID, "client_order_id")], [], None),
    ("PositionCorrected", {"causation_id": ""}, [], [], None),
    ("PositionReported", {"causation_id": ""}, [], [], None),
    (
        "RebalanceProposed",
        {"causation_id": T, "rebalance_id": E, "targets_id": T},
        [causation(T), Link(T, "targets_id")],
        [],
        None,
    ),
    ("ResumeTrading", {"causation_id": ""}, [], [], None),
    ("RiskMeasured", {}, [causation()], [], None),
    (
        "SectorRotationComputed",
        {
            "benchmark": "SPY",
            "sectors": [{"symbol": "XLK"}, {"symbol": "XLE"}],
            "timeframe": "1m",
            "window_bars": 60,
            "as_of_ns": AS_OF,
        },
        [causation()],
        [],
        BarWindow(("SPY", "XLK", "XLE"), "1m", AS_OF, 60 + 15 + 1, "1m", regular_session=True),
    ),
    (
        "StrategyCandidateDiscovered",
        {"causation_id": T, "task_id": T},
        [causation(T), Link(T, "task_id")],
        [],
        None,
    ),
    ("StrategyPerformanceRecorded", {"causation_id": K}, [causation(K)], [], None),
    (
        "StrategyTransitioned",
        {"evidence": {"candidate_id": K, "rule": "{}", "dsr": "0.97"}},
        [causation(), Link(K, "evidence.candidate_id")],
        [],
        None,
    ),
    (
        "SymbolStatsComputed",
        {"symbol": "AAPL", "timeframe": "1m", "window_bars": 30, "as_of_ns": AS_OF},
        [causation()],
        [],
        BarWindow(("AAPL",), "1m", AS_OF, 31, "1m"),
    ),
    ("TradePrinted", {"causation_id": ""}, [], [], None),
    (
        "TradingHalted",
        {"causation_id": H, "command_id": H, "flatten_rebalance_id": R},
        [causation(H), Link(H, "command_id"), Link(R, "flatten_rebalance_id")],
        [],
        None,
    ),
    (
        "TradingHalted",
        {"causation_id": H, "command_id": H, "flatten_rebalance_id": ""},
        [causation(H), Link(H, "command_id")],
        [],
        None,
    ),
    ("TradingResumed", {"causation_id": H, "command_id": H}, [causation(H), Link(H, "command_id")], [], None),
    ("TransitionRejected", {}, [causation()], [], None),
    (
        "TransitionStrategy",
        {"evidence": {"measurement_id": M, "var_99": "0.05", "candidate_id": K, "task_id": ""}},
        [causation(), Link(K, "evidence.candidate_id"), Link(M, "evidence.measurement_id")],
        [],
        None,
    ),
]
SCHEMAS = {short_name(name): name for name in get_registry().names}


def record_of(short: str, fields: dict[str, Any], seed: int = 0) -> tuple[str, dict[str, Any]]:
    """A valid record of the schema (random where the case says nothing) with the case's fields; the records of an
    array field are random records with the case's fields."""
    schema = SCHEMAS[short]
    definition = get_registry().schema(schema)
    rnd = random.Random(seed)
    record = sample(definition, rnd)
    record.update(event_id=E, causation_id=C)
    for name, value in fields.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = next(f["type"]["items"] for f in definition["fields"] if f["name"] == name)
            value = [{**sample(items, rnd, named_types(definition)), **item} for item in value]
        record[name] = value
    get_registry().encode(schema, record)  # still valid
    return schema, record


@pytest.mark.parametrize(("short", "fields", "expected", "known_as", "window"), CASES)
def test_links_aliases_and_bars_of_each_event_type(
    short: str, fields: dict[str, Any], expected: list[Link], known_as: list[str], window: BarWindow | None
) -> None:
    schema, record = record_of(short, fields)
    assert links(schema, record) == expected
    assert aliases(schema, record) == known_as
    assert bar_window(schema, record) == window
    assert summary(schema, record).strip()


def test_every_schema_has_a_rule_and_a_case() -> None:
    """A new event type must say what it links to (schemas.links.RULES) and be in the table above."""
    names = set(get_registry().names)
    assert set(RULES) == names
    assert {SCHEMAS[short] for short, *_ in CASES} == names


@pytest.mark.parametrize("schema", sorted(get_registry().names))
def test_any_valid_record_links_and_summarises(schema: str) -> None:
    """Whatever a valid record holds (odd text, NaN, infinities), the index can take it: nothing raises."""
    for seed in range(30):
        record = sample(get_registry().schema(schema), random.Random(seed))
        found = links(schema, record)
        assert all(link.cause_id and link.cause_id != record["event_id"] for link in found)
        assert len(set(found)) == len(found)
        aliases(schema, record)
        window = bar_window(schema, record)
        if window is not None:
            assert BarWindow.from_json(window.to_json()) == window
        assert 0 < len(summary(schema, record)) <= 200


def test_an_event_never_names_itself_and_links_are_listed_once() -> None:
    schema, record = record_of("PortfolioTargetsSet", {"causation_id": E, "inputs": [E, I1, I1]})
    assert links(schema, record) == [Link(I1, "inputs")]


def test_rotation_momentum_is_part_of_the_sector_window() -> None:
    schema, record = record_of(
        "SectorRotationComputed",
        {"benchmark": "SPY", "sectors": [{"symbol": "XLK"}], "timeframe": "1m", "window_bars": 60, "as_of_ns": AS_OF},
    )
    window = bar_window(schema, record, rotation_momentum=5)
    assert window is not None and window.bars_per_symbol == 66


def test_summaries_read_as_a_person_would_say_them() -> None:
    schema, order = record_of(
        "PlaceOrder",
        {
            "side": "BUY",
            "qty": "12.5",
            "notional": None,
            "symbol": "AAPL",
            "reason": f"rebalance {R} approved by auto",
            "strategy_id": None,
        },
    )
    assert summary(schema, order) == "BUY 12.5 AAPL (rebalance)"
    schema, candidate = record_of(
        "StrategyCandidateDiscovered",
        {
            "family": "momentum",
            "symbols": ["AAPL", "MSFT"],
            "timeframe": "1d",
            "deflated_sharpe": 0.9712,
            "sharpe_out_of_sample": 1.31,
            "sharpe_out_of_sample_se": 0.42,
            "pbo": 0.1,
            "strategy_id": "mom-1",
            "passed": True,
        },
    )
    assert (
        summary(schema, candidate) == "momentum AAPL,MSFT 1d: DSR 0.97, OOS Sharpe 1.3 ± 0.4, PBO 0.10 (mom-1, passed)"
    )
    schema, transition = record_of(
        "StrategyTransitioned",
        {
            "strategy_id": "mom-1",
            "from_state": "PAPER",
            "to_state": "LIVE",
            "version": 3,
            "reason": "paper period complete",
        },
    )
    assert summary(schema, transition) == "mom-1: PAPER → LIVE v3: paper period complete"
    schema, long_alert = record_of("AlertRaised", {"message": "x" * 500})
    assert len(summary(schema, long_alert)) == 200 and summary(schema, long_alert).endswith("…")
