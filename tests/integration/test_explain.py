"""`tidemark explain` over the causation index: a real chain of events (built with the producers' own record
functions where they are pure: the pattern scan's signal, the planner's task, the lifecycle agent's commands and
answers, the execution desk's proposal, orders and position changes, the broker connector's order updates), published
to Kafka and indexed by the worker's projection sink, walks back from a position change to the bars the pattern signal
was computed from, every event at the topic, partition and offset Kafka reported delivering it to. And the index's
content does not depend on the order its records arrive in."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from connectors.broker import BrokerOrder, TradeUpdate
from connectors.orders import order_updated
from core.consumed import Consumed
from core.events import common_fields, deterministic_event_id
from core.kafka import producer_config
from core.settings import Settings
from core.units import NS_PER_MINUTE
from projections.causation import CAUSATION, CausationIndex
from schemas.catalogue import task_partition
from schemas.codec import get_registry
from schemas.links import summary
from streams.execution.desk import Desk, Policy, compact, decide
from streams.execution.rebalance import Rules
from streams.lifecycle.agent import answer, candidate_commands, rules_of
from streams.patterns.processor import signal_event
from streams.patterns.scan import Signal
from tests.integration.test_pipeline import fetch
from tests.services import eventually
from tests.unit.avro_samples import sample
from tidemark.discovery import request_from_signal, task_event

pytestmark = pytest.mark.integration

ACCOUNT = "paper"
OPEN = 1_728_048_600 * 10**9  # 2024-10-04 13:30 UTC, the NYSE open
AS_OF = OPEN + 60 * NS_PER_MINUTE  # the pattern scan's boundary: 10:30 New York
SYMBOLS = ("KO", "PEP")
Position = tuple[str, int, int]


def sampled(schema: str, seed: int, **fields: Any) -> dict[str, Any]:
    return {**sample(get_registry().schema(f"tidemark.{schema}"), random.Random(seed)), **fields}


class Log:
    """Publishes like the real producers (murmur2 partitions by key) and keeps where Kafka put each event."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(producer_config(settings.kafka.bootstrap))
        self.at: dict[str, Position] = {}
        self.indexed: list[str] = []

    def publish(self, topic: str, key: str, schema: str, record: dict[str, Any], partition: int = -1) -> None:
        event_id = record["event_id"]

        def delivered(err: Any, message: Any) -> None:
            assert err is None, err
            self.at[event_id] = (message.topic(), message.partition(), message.offset())

        value = get_registry().encode(schema, record)
        self.producer.produce(
            self.settings.topic(topic), value, key.encode(), partition=partition, on_delivery=delivered
        )
        if not topic.startswith("md.bars."):
            self.indexed.append(event_id)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def bar(symbol: str, minute: int) -> dict[str, Any]:
    start = OPEN + minute * NS_PER_MINUTE
    return {
        **common_fields("synthetic", start + NS_PER_MINUTE, "", deterministic_event_id("bar", symbol, start)),
        "symbol": symbol,
        "asset_class": "EQUITY",
        "interval": "1m",
        "start_ns": start,
        "end_ns": start + NS_PER_MINUTE,
        "open": 50.0 + minute / 100,
        "high": 50.0 + minute / 100,
        "low": 50.0 + minute / 100,
        "close": 50.0 + minute / 100,
        "volume": 1000.0,
        "vwap": None,
        "trade_count": None,
        "regular_session": minute >= 0,
        "kind": "OHLCV",
    }


def publish_chain(log: Log, settings: Settings) -> dict[str, Any]:
    """From bars to a position change; returns the events by name."""
    chain: dict[str, Any] = {}
    # Pre-market minutes, the scanned hour, and minutes after the scan's boundary.
    for minute in range(-5, 65):
        for symbol in SYMBOLS:
            log.publish("md.bars.1m", symbol, "tidemark.marketdata.BarClosed", bar(symbol, minute))
    found = Signal(
        "PAIRS_MEAN_REVERSION", "LONG", SYMBOLS, "15m", 3, "adf", -4.2, 0.001, 0.004, "HOLM", 12, 0.05,
        1.8, 0.4, 0.99, 0.97, 3.5, 0.3, {"hedge_ratio": "0.9"},
    )  # fmt: skip
    emitted = signal_event(found, AS_OF)
    chain["signal"] = signal = emitted.event
    log.publish(emitted.topic, emitted.key.decode(), emitted.schema, signal)
    request = request_from_signal(signal, "EQUITY")
    assert request is not None
    chain["task"] = task = task_event(request, "discovery-planner", signal["ts_event"])
    log.publish(
        "discovery.tasks",
        "EQUITY",
        "tidemark.discovery.DiscoverStrategy",
        task,
        task_partition("EQUITY", task["event_id"]),
    )
    sid = "pairs-KO-PEP-1"
    chain["candidate"] = candidate = sampled(
        "strategies.StrategyCandidateDiscovered",
        1,
        **common_fields("discovery", AS_OF, task["event_id"], deterministic_event_id("candidate", task["event_id"])),
        strategy_id=sid, family="pairs", symbols=list(SYMBOLS), timeframe="15m", complexity=1, deflated_sharpe=0.99,
        pbo=0.05, sharpe_out_of_sample=2.0, sharpe_out_of_sample_se=0.5, passed=True, rejections=[],
        task_id=task["event_id"], asset_class="EQUITY",
    )  # fmt: skip
    log.publish("strategies.candidates", sid, "tidemark.strategies.StrategyCandidateDiscovered", candidate)
    # The lifecycle agent: the candidate's three commands, each answered against the strategy's state.
    rules = rules_of(settings)
    entry = None
    for number, command in enumerate(candidate_commands(candidate, candidate["ts_event"])):
        log.publish("strategies.commands", sid, "tidemark.strategies.TransitionStrategy", command)
        entry, value, _ = answer(entry, command, rules)
        decided = get_registry().decode(value)
        assert decided.schema == "tidemark.strategies.StrategyTransitioned", decided.record
        chain[f"transition{number}"] = decided.record
        log.publish("strategies.lifecycle", sid, decided.schema, decided.record)
    # The strategy runner's paper session and its promotion to Live on the paper record.
    day = AS_OF + 86_400 * 10**9
    chain["performance"] = performance = sampled(
        "strategies.StrategyPerformanceRecorded",
        2,
        **common_fields("strategy-runner", day, candidate["event_id"], deterministic_event_id("runner", sid, day)),
        strategy_id=sid, state="PAPER", period_end_ns=day, positions={"KO": 0.4, "PEP": 0.3},
    )  # fmt: skip
    log.publish("strategies.performance", sid, "tidemark.strategies.StrategyPerformanceRecorded", performance)
    chain["promote"] = promote = {
        **common_fields("strategy-runner", day, performance["event_id"], deterministic_event_id("promote", sid)),
        "strategy_id": sid,
        "expected_version": 3,
        "target_state": "LIVE",
        "reason": "paper period complete",
        "evidence": {
            "paper_sessions": "1000",
            "paper_sharpe": "2.0",
            "backtest_sharpe": "2.0",
            "backtest_sharpe_se": "0.5",
            "tracking_error": "0.0",
            "candidate_id": candidate["event_id"],
        },
        "requested_by": "strategy-runner",
    }
    log.publish("strategies.commands", sid, "tidemark.strategies.TransitionStrategy", promote)
    _, value, _ = answer(entry, promote, rules)
    chain["live"] = live = get_registry().decode_as("tidemark.strategies.StrategyTransitioned", value)
    log.publish("strategies.lifecycle", sid, "tidemark.strategies.StrategyTransitioned", live)
    # The portfolio agent's targets on the rotation into Live, naming its inputs.
    chain["targets"] = targets = sampled(
        "portfolio.PortfolioTargetsSet",
        3,
        **common_fields("portfolio-agent", day, live["event_id"], deterministic_event_id("targets", live["event_id"])),
        account_id=ACCOUNT, weights=[{"strategy_id": sid, "weight": "0.5", "notional": "50000.00"}],
        capital="100000.00", buying_power=None,
        inputs=sorted([candidate["event_id"], live["event_id"], performance["event_id"]]),
    )  # fmt: skip
    log.publish("portfolio.targets", ACCOUNT, "tidemark.portfolio.PortfolioTargetsSet", targets)
    # The execution desk: auto-approved, so the proposal and its orders at once; then the broker's updates of the KO
    # order (the first names the command, the fill only the client order id) and the tracker's position change.
    desk, policy = Desk(), Policy(ACCOUNT, "simulated", Rules(), auto_approve=True)
    decide(desk, compact("performance", performance), policy)
    for symbol in SYMBOLS:
        decide(desk, compact("price", bar(symbol, 60)), policy)
    events = decide(desk, compact("targets", targets), policy)
    for topic, key, schema, record in events:
        log.publish(topic, key, schema, record)
    chain["proposal"] = next(r for _, _, s, r in events if s == "tidemark.orders.RebalanceProposed")
    chain["order"] = order = next(
        r for _, _, s, r in events if s == "tidemark.orders.PlaceOrder" and r["symbol"] == "KO"
    )
    placed = BrokerOrder(
        "broker-1", order["client_order_id"], "KO", "BUY", Decimal(order["qty"]), None, "MARKET", "DAY", "NEW",
        Decimal(0), None, day,
    )  # fmt: skip
    filled = BrokerOrder(
        "broker-1", order["client_order_id"], "KO", "BUY", Decimal(order["qty"]), None, "MARKET", "DAY", "FILLED",
        Decimal(order["qty"]), Decimal("50.6"), day, day + 1, day, day + 1,
    )  # fmt: skip
    chain["accepted"] = accepted = order_updated(
        ACCOUNT, "simulated-broker", TradeUpdate("NEW", placed, day), order["event_id"]
    )
    fill = TradeUpdate("FILL", filled, day + 1, Decimal("50.6"), Decimal(order["qty"]), Decimal(order["qty"]), "x-1")
    chain["fill"] = fill_record = order_updated(ACCOUNT, "simulated-broker", fill)
    for record in (accepted, fill_record):
        log.publish("broker.order_updates", ACCOUNT, "tidemark.broker.OrderUpdated", record)
    changes = decide(desk, compact("update", fill_record), policy)
    for topic, key, schema, record in changes:
        log.publish(topic, key, schema, record)
    chain["position"] = changes[0][3]
    log.flush()
    return chain


def only(node: dict[str, Any], type_: str) -> dict[str, Any]:
    """The one expanded cause of ``node`` of that type."""
    found = [c for c in node["causes"] if c.get("type") == type_]
    assert len(found) == 1, [(c.get("type"), c.get("see"), c["relations"]) for c in node["causes"]]
    return found[0]


def test_explain_walks_from_a_position_change_back_to_the_bars(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    start_worker()
    log = Log(isolated)
    chain = publish_chain(log, isolated)

    def indexed() -> bool:
        ours = sorted(set(log.indexed))
        rows = fetch(
            isolated.postgres_dsn, "SELECT count(*) AS n FROM event_index WHERE event_id = ANY($1::uuid[])", ours
        )
        bars = fetch(isolated.postgres_dsn, "SELECT count(*) AS n FROM bars WHERE symbol = ANY($1::text[])", SYMBOLS)
        return rows[0]["n"] == len(ours) and bars[0]["n"] == 70 * len(SYMBOLS)

    eventually(indexed, timeout=180, interval=0.5, what="every event indexed and every bar projected")

    root = json.loads(run_cli("explain", chain["position"]["event_id"], "--json", "--bars", "100").stdout)

    def at(node: dict[str, Any], name: str) -> None:
        record = chain[name]
        assert node["event_id"] == record["event_id"], (name, node)
        assert (node["topic"], node["partition"], node["offset"]) == log.at[record["event_id"]], name
        assert node["ts_event"].startswith("2024-10-0"), node["ts_event"]

    at(root, "position")
    assert root["type"] == "PositionChanged" and root["relations"] == []
    fill = only(root, "OrderUpdated")
    at(fill, "fill")
    assert fill["relations"] == ["causation"]
    # The fill names the order only by its client order id: the index resolves it through the order's alias, and the
    # position change's own mention of it is a reference.
    order = only(fill, "PlaceOrder")
    at(order, "order")
    assert order["relations"] == ["client_order_id"]
    assert {"event_id": order["event_id"], "relations": ["client_order_id"], "see": order["event_id"]} in root["causes"]
    assert order["summary"] == f"BUY {chain['order']['qty']} KO (rebalance) for pairs-KO-PEP-1"
    proposal = only(order, "RebalanceProposed")
    at(proposal, "proposal")
    targets = only(proposal, "PortfolioTargetsSet")
    at(targets, "targets")
    assert targets["relations"] == ["causation", "targets_id"]
    live = only(targets, "StrategyTransitioned")
    at(live, "live")
    assert live["relations"] == ["causation", "inputs"] and "PAPER → LIVE v4" in live["summary"]
    promote = only(live, "TransitionStrategy")
    at(promote, "promote")
    performance = only(promote, "StrategyPerformanceRecorded")
    at(performance, "performance")
    candidate = only(performance, "StrategyCandidateDiscovered")
    at(candidate, "candidate")
    assert "DSR 0.99, OOS Sharpe 2.0 ± 0.5" in candidate["summary"]
    task = only(candidate, "DiscoverStrategy")
    at(task, "task")
    assert task["relations"] == ["causation", "task_id"]
    signal = only(task, "PatternSignalDetected")
    at(signal, "signal")
    assert signal["causes"] == []
    # The scan's 4 complete quarter-hours of each leg, each closed by its last minute bar: not the pre-market minutes,
    # not the minutes after the boundary.
    bars = signal["bars"]
    assert (bars["interval"], bars["timeframe"], bars["bars_per_symbol"], bars["found"]) == ("1m", "15m", 4, 8)
    assert bars["symbols"] == list(SYMBOLS) and bars["as_of"] == "2024-10-04T14:30:00Z"
    assert (bars["first_start"], bars["last_end"]) == ("2024-10-04T13:44:00Z", "2024-10-04T14:30:00Z")
    listed = {(b["symbol"], b["start"]): b for b in bars["bars"]}
    assert len(listed) == 8
    for symbol in SYMBOLS:
        for minute in (14, 29, 44, 59):
            record = bar(symbol, minute)
            shown = listed[(symbol, f"2024-10-04T{13 + (30 + minute) // 60}:{(30 + minute) % 60:02d}:00Z")]
            assert (shown["topic"], shown["partition"], shown["offset"]) == log.at[record["event_id"]]
            assert shown["event_id"] == record["event_id"]
    # The other inputs of the targets are references or expanded once; the whole tree names no unindexed event.
    text = json.dumps(root)
    assert '"indexed": false' not in text
    assert text.count(f'"event_id": "{chain["candidate"]["event_id"]}", "type"') == 1

    # The order by its client order id, as text; and a shallow walk says where it stops.
    shown = run_cli("explain", chain["order"]["client_order_id"], "--depth", "2").stdout
    assert "PlaceOrder " + chain["order"]["event_id"] in shown
    assert "PortfolioTargetsSet" in shown and "raise --depth" in shown and "StrategyTransitioned" not in shown
    full = run_cli("explain", chain["task"]["event_id"]).stdout
    assert "bars: 4 × 15m rows of 1m bars of 2 symbols, 2024-10-04T13:44:00Z → 2024-10-04T14:30:00Z" in full  # noqa: RUF001
    assert "md.bars.1m[" in full

    unknown = str(uuid.uuid4())
    missing = run_cli("explain", unknown, check=False)
    assert missing.returncode == 1
    assert f"not in the causation index: {unknown}; is `tidemark worker` running / caught up?" in missing.stderr


def test_the_index_is_the_same_whatever_order_its_records_arrive_in(
    isolated: Settings, new_database: Callable[[], str]
) -> None:
    """A republished event (same id, two positions) keeps its least position whichever copy comes first; causes and
    aliases of every copy are kept; undecodable records are counted, not indexed; a batch applied again adds nothing."""
    registry = get_registry()
    cause = "00000000-0000-4000-8000-000000000001"
    order = sampled(
        "orders.PlaceOrder",
        5,
        **common_fields("rebalancer", 1, cause, "00000000-0000-4000-8000-0000000000aa"),
        client_order_id="tm-000000000000400080000000000000aa",
    )  # fmt: skip
    again = {**order, "causation_id": "00000000-0000-4000-8000-000000000002", "reason": "manual"}
    update = sampled(
        "broker.OrderUpdated",
        6,
        **common_fields("simulated-broker", 2, "", "00000000-0000-4000-8000-0000000000bb"),
        client_order_id=order["client_order_id"],
    )  # fmt: skip
    place = "tidemark.orders.PlaceOrder"
    first = [
        Consumed("orders.intents", 1, 7, b"paper", registry.encode(place, order)),
        Consumed("orders.intents", 1, 8, b"paper", b"\xc3\x01not avro"),
        Consumed("broker.order_updates", 0, 3, b"paper", registry.encode("tidemark.broker.OrderUpdated", update)),
    ]
    second = [Consumed("orders.intents", 2, 0, b"paper", registry.encode(place, again))]

    async def build(dsn: str, batches: list[list[Consumed]]) -> dict[str, list[tuple[Any, ...]]]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            index = CausationIndex(pool)
            for batch in batches:
                await index.apply(batch)
            tables = {}
            for table in ("event_index", "event_causes", "event_aliases", "projection_counters"):
                rows = await pool.fetch(f"SELECT * FROM {table}")
                tables[table] = sorted(tuple(str(v) for v in r.values()) for r in rows)
            return tables
        finally:
            await pool.close()

    forward = asyncio.run(build(isolated.postgres_dsn, [first, second, first]))
    backward = asyncio.run(build(new_database(), [second, list(reversed(first)), second]))
    assert forward == backward
    index = {row[0]: row for row in forward["event_index"]}
    assert index[order["event_id"]][2:5] == ("orders.intents", "1", "7")  # the least position, with its record
    assert index[order["event_id"]][8] == summary(place, order)
    assert sorted(c[1] for c in forward["event_causes"] if c[0] == order["event_id"]) == [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
    ]
    assert ("tm-000000000000400080000000000000aa", order["event_id"]) in forward["event_aliases"]
    assert (CAUSATION, "undecodable", "1") in forward["projection_counters"]
