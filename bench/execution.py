"""Execution through Kafka (issue 14): a 50-strategy, 200-symbol rebalance from its approval to the positions it
leaves, on the simulated broker and against the fake Alpaca server's rate limit; and a trade update's way to the
position in Redis. Every figure is printed beside its baseline, measured in the same run, with the ratio.

The real processes run on the local stack under a topic prefix of their own: ``tidemark worker`` (the projection
sink), ``tidemark agents`` (the execution agent) and ``tidemark broker run``.

1. Simulated broker: 200 EQUITY symbols with a daily bar; 50 strategies whose performance records hold 8 symbols
   each (strategy k holds symbols 4k .. 4k+7, so every symbol is held by two strategies), positions of 0.15-0.18 of
   the strategy's capital (each symbol's change is then above the 0.5 % no-trade band: at 200 symbols an evenly
   spread, unlevered book sits exactly on it); targets of 50 weights of 0.02 on 1,000,000. Once the proposal is out,
   ``ApproveRebalance`` is published and timed to every order at the broker (its ``OrderUpdated`` on
   ``broker.order_updates``), then the next session's bars are published and timed to every fill's
   ``PositionChanged`` in PostgreSQL (``strategy_positions`` equal to the in-process run's book); Redis is checked
   at the end. Baseline: the same plan and fills in-process without Kafka (``rebalance.plan``, the simulated
   broker's ``submit`` and ``on_bar``, ``positions.register`` + ``apply_update``). Target <= 5 s. The simulated
   broker is not rate limited (the connector paces only a broker that is), so this is Tidemark's own time.
2. Trade update -> position in Redis: a second targets event raises strategy S00's weight (8 buy orders, each
   allocated to S00 alone); once approved and at the broker, N cumulative partial fills of one of them are published
   as ``OrderUpdated`` one at a time, each timed from its publication to ``tm:position:<account>:S00:<symbol>``
   holding the new quantity (Redis polled every 0.5 ms), and to its ``PositionChanged`` on ``positions`` (the
   agent's share), on the same stack (the updates do not pass the connector). Baseline: the
   desk's own code on the same updates in-process (``desk.compact`` + ``desk.decide``).
3. Fake Alpaca: the same rebalance on a prefix of its own with the connector pointed at ``fakes.alpaca`` (its rate
   limit and the connector's both at 200/min); approval -> every order placed at the fake, as a ratio to the
   rate-limit floor (orders / rate, and broker requests / rate: each order costs the connector the submit, and an
   asset lookup for a symbol it has not looked up within the hour); then ``fake.fill()`` and every fill back on
   ``broker.order_updates``. The connector's own "waited for the rate limit" seconds come from its log at shutdown.

``python -m bench.execution [--symbols 200] [--strategies 50] [--updates 200] [--alpaca-symbols 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import IO, Any

import asyncpg
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import SecretStr

from bench.pipeline import REPO, drop_database, fresh_database
from connectors.broker import OrderRequest
from connectors.orders import feed_bar, make_broker
from core.events import common_fields, deterministic_event_id, now_ns
from core.kafka import BATCH_PAUSE_S
from core.settings import Settings, get_settings
from fakes.alpaca import FakeAlpaca
from projections.redis_store import key
from schemas.codec import get_registry
from streams.agents import agents_app_id
from streams.execution.agent import policy_of
from streams.execution.desk import Desk, compact, decide
from streams.execution.positions import Book, apply_update, quantities, register
from streams.execution.rebalance import Allocation, StrategyTarget, Venue, plan
from tidemark.topics import create_topics, delete_prefixed_topics

TARGET_S = 5.0
SEED_S = 120.0
"""The issue's starting point: two minutes from approval to positions."""
DAY = 86_400 * 10**9
START = 20_000 * DAY
CAPITAL = "1000000"
CASH = 10_000_000.0
WEIGHT = "0.02"
BOOSTED = "0.06"
"""S00's weight in the second targets: its 8 symbols change by more than the no-trade band, nobody else's does."""
RATE = 200
"""Requests per minute of the fake Alpaca server and of the connector's token bucket."""
BAR_SCHEMA = "tidemark.marketdata.BarClosed"
PERF_SCHEMA = "tidemark.strategies.StrategyPerformanceRecorded"
TARGETS_SCHEMA = "tidemark.portfolio.PortfolioTargetsSet"
PROPOSED_SCHEMA = "tidemark.orders.RebalanceProposed"
APPROVE_SCHEMA = "tidemark.orders.ApproveRebalance"
UPDATED_SCHEMA = "tidemark.broker.OrderUpdated"
TOLERANCE = Decimal("1e-9")
WORKER = ("worker", "--loglevel", "info")
AGENTS = ("agents", "--loglevel", "info")
BROKER = ("broker", "run", "--loglevel", "info")


# -- the market, the strategies and the targets -------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    symbols: list[str]
    prices: dict[str, float]
    positions: dict[str, dict[str, float]]

    @classmethod
    def make(cls, tag: str, n_symbols: int, n_strategies: int) -> Scenario:
        # Unique names: the worker's Redis bar windows are keyed by symbol, in a database others use too.
        symbols = [f"X{tag[:4].upper()}{i:03d}" for i in range(n_symbols)]
        prices = {s: 10.0 + (i * 37 % 190) * 0.5 for i, s in enumerate(symbols)}
        step = max(1, n_symbols // n_strategies)
        positions = {
            f"S{k:02d}": {symbols[(step * k + j) % n_symbols]: 0.15 + 0.01 * (j % 4) for j in range(8)}
            for k in range(n_strategies)
        }
        return cls(symbols, prices, positions)

    def weights(self, boosted: bool = False) -> dict[str, str]:
        return {sid: BOOSTED if boosted and sid == "S00" else WEIGHT for sid in self.positions}


def _fields(schema: str) -> dict[str, Any]:
    return {f["name"]: f.get("default") for f in get_registry().schema(schema)["fields"]}


def bar_records(scenario: Scenario, day: int) -> list[dict[str, Any]]:
    return [
        {
            **common_fields("bench", START + (day + 1) * DAY, "", deterministic_event_id("bench-bar", symbol, day)),
            "symbol": symbol,
            "asset_class": "EQUITY",
            "interval": "1d",
            "start_ns": START + day * DAY,
            "end_ns": START + (day + 1) * DAY,
            "open": price,
            "high": price,
            "low": price,
            "close": price,
            "volume": 1e9,
            "vwap": None,
            "trade_count": None,
            "regular_session": True,
            "kind": "OHLCV",
        }
        for symbol, price in scenario.prices.items()
    ]


def performance_records(scenario: Scenario) -> list[dict[str, Any]]:
    base = _fields(PERF_SCHEMA)
    return [
        {
            **base,
            **common_fields("bench", START + DAY, "", deterministic_event_id("bench-perf", sid)),
            "strategy_id": sid,
            "state": "LIVE",
            "period_start_ns": START,
            "period_end_ns": START + DAY,
            "period_return": 0.001,
            "cost": 0.0,
            "cumulative_return": 0.001,
            "pnl": "0",
            "drawdown": 0.0,
            "rolling_sharpe": None,
            "trades": 0,
            "positions": positions,
        }
        for sid, positions in scenario.positions.items()
    ]


def targets_record(settings: Settings, weights: Mapping[str, str], n: int) -> dict[str, Any]:
    return {
        **_fields(TARGETS_SCHEMA),
        **common_fields(
            "bench", START + DAY + n, "", deterministic_event_id("bench-targets", settings.topic_prefix, n)
        ),
        "account_id": settings.portfolio.account,
        "method": "MAX_SHARPE",
        "weights": [{"strategy_id": s, "weight": w, "notional": None} for s, w in weights.items()],
        "capital": CAPITAL,
        "buying_power": None,
        "max_weight": "0.1",
        "min_strategies": 2,
        "lookback_days": 20,
    }


# -- Kafka, PostgreSQL, Redis and the processes -------------------------------------------------------------------


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = get_registry()
        self.producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 0})

    def send(self, topic: str, schema: str, records: list[dict[str, Any]], key_field: str) -> None:
        for record in records:
            value = self.registry.encode(schema, record)
            self.producer.produce(self.settings.topic(topic), value, str(record.get(key_field, key_field)).encode())
        if self.producer.flush(30) != 0:
            raise RuntimeError(f"records to {topic} undelivered")


class Follower:
    """A topic read from its start and decoded, a poll at a time."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.registry = get_registry()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "group.id": f"bench-follow-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        topic = settings.topic(name)
        partitions = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def poll(self, timeout: float = 0.0) -> list[tuple[str, dict[str, Any]]]:
        found = []
        for message in self.consumer.consume(1000, timeout):
            if message.error() is None:
                decoded = self.registry.decode(message.value())
                found.append((decoded.schema, decoded.record))
        return found

    def close(self) -> None:
        self.consumer.close()


@dataclass
class OrderBoard:
    """The orders on ``broker.order_updates``: each one's latest state."""

    follower: Follower
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self) -> None:
        for schema, record in self.follower.poll():
            if schema != UPDATED_SCHEMA:
                continue
            known = self.latest.get(record["client_order_id"])
            if known is None or Decimal(record["filled_qty"]) >= Decimal(known["filled_qty"]):
                self.latest[record["client_order_id"]] = record

    def at_broker(self, wanted: set[str]) -> bool:
        self.update()
        return wanted <= self.latest.keys()

    def filled(self, wanted: set[str]) -> bool:
        self.update()
        return all(self.latest.get(c, {}).get("status") == "FILLED" for c in wanted)


class Database:
    """One asyncpg connection driven synchronously."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))

    def positions(self, account: str) -> dict[tuple[str, str], Decimal]:
        rows = self.loop.run_until_complete(
            self.conn.fetch("SELECT strategy_id, symbol, qty FROM strategy_positions WHERE account_id = $1", account)
        )
        return {(r["strategy_id"], r["symbol"]): Decimal(r["qty"]) for r in rows}

    def rebalances(self, account: str) -> int:
        return int(
            self.loop.run_until_complete(
                self.conn.fetchval("SELECT count(*) FROM rebalances WHERE account_id = $1", account)
            )
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)
        self.log.close()


def spawn(settings: Settings, command: tuple[str, ...], name: str) -> Proc:
    path = REPO / ".tidemark" / f"bench-execution-{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "wb")  # noqa: SIM115 - owned by the process
    popen = subprocess.Popen(
        [sys.executable, "-m", "tidemark.cli", *command],
        env=settings.environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    return Proc(name, popen, path, log)


def until(check: Callable[[], Any], timeout: float, what: str, procs: list[Proc], interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode} waiting for {what}; see {proc.log_path}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} in {timeout:.0f} s; logs in {REPO / '.tidemark'}/bench-execution-*.log")
        time.sleep(interval)


def proposal_of(follower: Follower, targets_id: str, seen: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    for schema, record in follower.poll():
        if schema == PROPOSED_SCHEMA:
            seen[record["targets_id"]] = record
    return seen.get(targets_id)


def approve(publisher: Publisher, settings: Settings, rebalance_id: str) -> None:
    command = {
        **common_fields("bench", now_ns(), rebalance_id),
        "account_id": settings.portfolio.account,
        "rebalance_id": rebalance_id,
        "approved_by": "bench@execution",
    }
    publisher.send("orders.rebalances", APPROVE_SCHEMA, [command], "account_id")


# -- the in-process baseline ----------------------------------------------------------------------------------------


@dataclass
class Baseline:
    seconds: float
    plan_s: float
    orders: dict[str, tuple[str, Decimal]]
    """symbol -> (side, qty)"""
    book: dict[tuple[str, str], Decimal]


def in_process(settings: Settings, scenario: Scenario) -> Baseline:
    """The rebalance planned, placed, filled by the next bar and booked, without Kafka."""
    policy = policy_of(settings)
    broker = make_broker(settings)
    day0, day1 = bar_records(scenario, 0), bar_records(scenario, 1)
    for bar in day0:
        feed_bar(broker, bar)  # prices and assets, as the connector's restore gives them
    started = time.perf_counter()
    targets = [StrategyTarget(sid, Decimal(w), scenario.positions[sid]) for sid, w in scenario.weights().items()]
    prices = {bar["symbol"]: Decimal(repr(bar["close"])) for bar in day0}
    venue = {s: Venue(True, True, "EQUITY") for s in prices}
    found = plan("baseline", targets, Decimal(CAPITAL), prices, {}, venue, policy.rules, Decimal(repr(CASH)))
    planned = time.perf_counter()
    book = Book()
    for order in found.orders:
        register(book, order.client_order_id, order.symbol, order.side, order.qty, list(order.allocations))
        broker.submit(OrderRequest(order.client_order_id, order.symbol, order.side, order.qty, None, "MARKET", "DAY"))
    for bar in day1:
        broker.on_bar(
            bar["symbol"],
            bar["start_ns"],
            *(Decimal(repr(bar[f])) for f in ("open", "high", "low", "close", "volume")),
        )
    for update in broker.updates(0.0):
        if update.event in ("FILL", "PARTIAL_FILL"):
            o = update.order
            apply_update(book, o.client_order_id, o.symbol, o.side, o.filled_qty, o.filled_avg_price, o.order_id)
    seconds = time.perf_counter() - started
    broker.close()
    if found.refusals or found.skipped:
        raise RuntimeError(f"the baseline plan refused or skipped: {found.refusals[:2]} {found.skipped[:2]}")
    orders = {o.symbol: (o.side, o.qty) for o in found.orders}
    return Baseline(seconds, planned - started, orders, quantities(book))


def desk_baseline(settings: Settings, order: Mapping[str, Any], updates: list[dict[str, Any]]) -> list[float]:
    """The execution desk's code on the same updates in-process: seconds per update."""
    policy = policy_of(settings)
    desk = Desk()
    allocations = [Allocation(a["strategy_id"], Decimal(a["qty"])) for a in order["allocations"]]
    register(desk.tracker, order["client_order_id"], order["symbol"], order["side"], Decimal(order["qty"]), allocations)
    registry = get_registry()
    took = []
    for record in updates:
        encoded = registry.encode(UPDATED_SCHEMA, record)
        started = time.perf_counter()
        events = decide(desk, compact("update", registry.decode_as(UPDATED_SCHEMA, encoded)), policy)
        for _, _, schema, event in events:
            registry.encode(schema, event)
        took.append(time.perf_counter() - started)
    return took


# -- figures 1 and 2: the simulated broker --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def simulated_run(base: Settings, scenario: Scenario, baseline: Baseline, n_updates: int, tag: str) -> None:
    """Figure 1 (and, with ``n_updates``, figure 2) on a stack of its own. The simulated broker is not rate
    limited: the connector paces only a broker that is."""
    database = f"bench_execution_{tag}"
    settings = base.changed(
        topic_prefix=f"bench{tag}.",
        app_id=f"bench-{tag}",
        postgres_dsn=fresh_database(base, database),
        portfolio__account=f"bench{tag}",
        broker__kind="simulated",
        broker__cash=CASH,
        operations__metrics_port=0,
    )
    account = settings.portfolio.account
    procs: list[Proc] = []
    followers: list[Follower] = []
    db: Database | None = None
    cache = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        create_topics(settings)
        publisher = Publisher(settings)
        publisher.send("md.bars.1d", BAR_SCHEMA, bar_records(scenario, 0), "symbol")
        publisher.send("strategies.performance", PERF_SCHEMA, performance_records(scenario), "strategy_id")
        rebalances = Follower(settings, "orders.rebalances")
        board = OrderBoard(Follower(settings, "broker.order_updates"))
        followers += [rebalances, board.follower]
        spawned = time.perf_counter()
        procs += [spawn(settings, WORKER, f"worker-{tag}"), spawn(settings, AGENTS, f"agents-{tag}")]
        procs.append(spawn(settings, BROKER, f"broker-{tag}"))
        targets = targets_record(settings, scenario.weights(), 1)
        publisher.send("portfolio.targets", TARGETS_SCHEMA, [targets], "account_id")
        proposals: dict[str, dict[str, Any]] = {}
        proposed = until(lambda: proposal_of(rebalances, targets["event_id"], proposals), 300, "proposal", procs, 0.05)
        proposed_after = time.perf_counter() - spawned
        planned = {o["symbol"]: (o["side"], Decimal(o["qty"])) for o in proposed["orders"]}
        same_plan = planned == baseline.orders
        db = Database(settings.postgres_dsn)
        until(lambda: db.rebalances(account) > 0, 300, "the proposal projected (the worker up)", procs, 0.1)
        until(lambda: "following orders.intents" in procs[2].text(), 300, "the broker connector up", procs, 0.1)
        ready_after = time.perf_counter() - spawned
        wanted = {o["client_order_id"] for o in proposed["orders"]}
        expected = {k: q for k, q in baseline.book.items() if q != 0}

        def recorded() -> bool:
            found = db.positions(account)
            return len(found) >= len(expected) and all(
                abs(found.get(k, Decimal("NaN")) - q) <= TOLERANCE for k, q in expected.items()
            )

        approved_at = time.perf_counter()
        approve(publisher, settings, proposed["rebalance_id"])
        until(lambda: board.at_broker(wanted), 120, "every order at the broker", procs, 0.002)
        at_broker = time.perf_counter()
        publisher.send("md.bars.1d", BAR_SCHEMA, bar_records(scenario, 1), "symbol")
        bars_at = time.perf_counter()
        until(lambda: board.filled(wanted), 120, "every order filled", procs, 0.002)
        filled_at = time.perf_counter()
        until(recorded, 120, "every fill's position in PostgreSQL", procs, 0.01)
        done_at = time.perf_counter()
        rows = db.positions(account)
        exact = sum(rows.get(k) == q for k, q in expected.items())

        def redis_equal() -> int:
            """The sink writes Redis right after the PostgreSQL transaction the timing above waited for."""
            count = 0
            for (sid, symbol), qty in expected.items():
                value = cache.hget(key("position", account, sid, symbol), "qty")
                count += value is not None and abs(Decimal(value) - qty) <= TOLERANCE
            return count

        deadline = time.monotonic() + 10
        while (in_redis := redis_equal()) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        total = done_at - approved_at
        verdict = "meets" if total <= TARGET_S else "MISSES"
        print(
            f"rebalance on the simulated broker (not rate limited), "
            f"{len(scenario.positions)} strategies x 8 of {len(scenario.symbols)} "
            f"symbols -> {len(wanted)} orders, {len(expected)} positions per strategy; "
            f"broker {settings.kafka.bootstrap} "
            f"(processes up {ready_after:.1f} s after spawn, proposal {proposed_after:.1f} s):"
        )
        print(
            f"  {'approval -> every fill projected (Kafka, 3 processes)':<58} {total:>8.2f} s "
            f"({verdict} the {TARGET_S:.0f} s target; seed {SEED_S:.0f} s: {SEED_S / total:.2f}x its speed)"
        )
        print(f"  {'  approval -> every order at the broker':<58} {at_broker - approved_at:>8.2f} s")
        print(
            f"  {'  next bar published -> every fill in strategy_positions':<58} {done_at - bars_at:>8.2f} s "
            f"(all {len(wanted)} FILLED on broker.order_updates after {filled_at - bars_at:.2f} s)"
        )
        print(
            f"  {'in-process (plan + submit + on_bar + apply_update)':<58} {baseline.seconds:>8.3f} s "
            f"(plan {baseline.plan_s * 1000:.0f} ms)"
        )
        print(f"  ratio Kafka / in-process {total / baseline.seconds:,.0f}x")
        print(
            f"  same plan as in-process: {'yes' if same_plan else 'NO'}; PostgreSQL {exact}/{len(expected)} positions "
            f"exactly the in-process book's; Redis {in_redis}/{len(expected)} equal"
        )
        if n_updates:
            update_latency(settings, scenario, publisher, rebalances, board, cache, procs, n_updates)
    finally:
        for proc in procs:
            proc.stop()
        for follower in followers:
            follower.close()
        if db is not None:
            db.close()
        _forget_redis(cache, account, scenario)
        groups = [settings.app_id, f"{settings.app_id}-projections", agents_app_id(settings)]
        groups += [f"{settings.topic_prefix}{settings.app_id}-broker-{account}{s}" for s in ("", "-bars", "-tracker")]
        delete_prefixed_topics(settings, groups)
        shutil.rmtree(settings.state_dir / "agents" / agents_app_id(settings), ignore_errors=True)
        drop_database(base, database)


def _forget_redis(cache: redis.Redis, account: str, scenario: Scenario) -> None:
    try:
        doomed = list(cache.scan_iter(match=key("position", account, "*"), count=1000))
        doomed += list(cache.scan_iter(match=f"*{scenario.symbols[0][:5]}*", count=1000))
        if doomed:
            cache.delete(*doomed)
    except redis.RedisError as exc:
        print(f"  (could not delete the bench's Redis keys: {exc})")


def update_latency(
    settings: Settings,
    scenario: Scenario,
    publisher: Publisher,
    rebalances: Follower,
    board: OrderBoard,
    cache: redis.Redis,
    procs: list[Proc],
    n_updates: int,
) -> None:
    account = settings.portfolio.account
    targets = targets_record(settings, scenario.weights(boosted=True), 2)
    publisher.send("portfolio.targets", TARGETS_SCHEMA, [targets], "account_id")
    proposals: dict[str, dict[str, Any]] = {}
    proposed = until(lambda: proposal_of(rebalances, targets["event_id"], proposals), 120, "second proposal", procs)
    solo = [o for o in proposed["orders"] if len(o["allocations"]) == 1 and o["side"] == "BUY"]
    if not solo:
        raise RuntimeError(f"the second proposal has no single-strategy buy: {proposed['orders'][:3]}")
    approve(publisher, settings, proposed["rebalance_id"])
    wanted = {o["client_order_id"] for o in proposed["orders"]}
    until(lambda: board.at_broker(wanted), 120, "the second rebalance's orders at the broker", procs)
    order = solo[0]
    sid = order["allocations"][0]["strategy_id"]
    redis_key = key("position", account, sid, order["symbol"])
    before = Decimal(cache.hget(redis_key, "qty") or "0")
    at_broker = board.latest[order["client_order_id"]]
    qty = Decimal(order["qty"])
    price = Decimal(order["price"])
    updates = []
    for k in range(1, n_updates + 1):
        cumulative = (qty * k / n_updates).quantize(Decimal("1e-9"), rounding=ROUND_DOWN) if k < n_updates else qty
        done = k == n_updates
        updates.append(
            {
                **at_broker,
                **common_fields(
                    "bench-fills",
                    START + 2 * DAY + k,
                    "",
                    deterministic_event_id("bench-fill", settings.topic_prefix, k),
                ),
                "update_event": "FILL" if done else "PARTIAL_FILL",
                "status": "FILLED" if done else "PARTIALLY_FILLED",
                "filled_qty": str(cumulative),
                "filled_avg_price": str(price),
                "price": str(price),
                "fill_qty": None,
                "position_qty": None,
                "execution_id": f"bench-{k}",
                "updated_at_ns": START + 2 * DAY + k,
                "filled_at_ns": START + 2 * DAY + k if done else None,
            }
        )
    baseline = desk_baseline(settings, order, updates)
    changes = Follower(settings, "positions")
    latencies, agent = [], []
    try:
        changes.poll(1.0)  # the history: the first rebalance's changes
        for record in updates:
            wanted_qty = before + Decimal(record["filled_qty"])
            started = time.perf_counter()
            publisher.send("broker.order_updates", UPDATED_SCHEMA, [record], "account_id")

            def changed(event_id: str = record["event_id"]) -> bool:
                return any(r["causation_id"] == event_id for _, r in changes.poll(0.0005))

            until(changed, 60, f"the PositionChanged of {record['event_id']}", procs, 0.0)
            agent.append(time.perf_counter() - started)

            def shown(q: Decimal = wanted_qty) -> bool:
                value = cache.hget(redis_key, "qty")
                return value is not None and Decimal(value) == q

            until(shown, 60, f"{redis_key} at {wanted_qty}", procs, 0.0005)
            latencies.append(time.perf_counter() - started)
    finally:
        changes.close()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    b50, b99 = percentile(baseline, 50), percentile(baseline, 99)
    print(
        f"trade update -> position in Redis: {len(latencies)} cumulative partial fills of one {order['symbol']} buy "
        f"({qty} units, allocated to {sid}), published one at a time:"
    )
    print(
        f"  {'OrderUpdated published -> tm:position qty (agent + sink)':<58} p50 {p50 * 1000:>7.1f} ms  "
        f"p99 {p99 * 1000:>7.1f} ms  (max {max(latencies) * 1000:.1f} ms, "
        f"mean {statistics.fmean(latencies) * 1000:.1f} ms)"
    )
    a50, a99 = percentile(agent, 50), percentile(agent, 99)
    print(
        f"  {'  of which published -> PositionChanged on positions':<58} p50 {a50 * 1000:>7.1f} ms  "
        f"p99 {a99 * 1000:>7.1f} ms  (the execution agent, Faust; the rest is the projection sink, "
        f"whose batch waits up to {type(settings.processing).variable('batch_within_s')}="
        f"{settings.processing.batch_within_s:g} s, less at a pause of {BATCH_PAUSE_S:g} s)"
    )
    print(f"  {'in-process desk (compact + decide + encode)':<58} p50 {b50 * 1000:>7.3f} ms  p99 {b99 * 1000:>7.3f} ms")
    print(f"  ratio Kafka / in-process p50 {p50 / b50:,.0f}x, p99 {p99 / b99:,.0f}x")


# -- figure 3: the fake Alpaca server -------------------------------------------------------------------------------


def _limit_wait_s(log_text: str) -> float | None:
    """The connector's ``limit_wait_ms`` counter from its metrics endpoint (its port is in its log), in seconds."""
    found = re.search(r"broker-connector: metrics on (http://[\d.]+:\d+/metrics)", log_text)
    if found is None:
        return None
    try:
        with urllib.request.urlopen(found.group(1), timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    value = re.search(r'tidemark_broker_orders_total\{[^}]*kind="limit_wait_ms"[^}]*\} ([\d.e+]+)', text)
    return None if value is None else float(value.group(1)) / 1000


def alpaca_run(base: Settings, scenario: Scenario, tag: str) -> None:
    fake = FakeAlpaca("bench-key", "bench-secret", cash=CASH * 10)
    fake.start()
    for symbol, price in scenario.prices.items():
        fake.add_asset(symbol)
        fake.set_price(symbol, price)
    fake.rate_limit(RATE)
    settings = base.changed(
        topic_prefix=f"bench{tag}.",
        app_id=f"bench-{tag}",
        portfolio__account=f"bench{tag}",
        broker__kind="alpaca",
        broker__rate_limit_per_min=RATE,
        alpaca__key_id=SecretStr(fake.key_id),
        alpaca__secret_key=SecretStr(fake.secret_key),
        alpaca__rest_url=fake.rest_url,
        alpaca__stream_url=fake.stream_url,
        operations__metrics_port=0,
    )
    account = settings.portfolio.account
    procs: list[Proc] = []
    followers: list[Follower] = []
    try:
        create_topics(settings)
        publisher = Publisher(settings)
        publisher.send("md.bars.1d", BAR_SCHEMA, bar_records(scenario, 0), "symbol")
        publisher.send("strategies.performance", PERF_SCHEMA, performance_records(scenario), "strategy_id")
        rebalances = Follower(settings, "orders.rebalances")
        board = OrderBoard(Follower(settings, "broker.order_updates"))
        followers += [rebalances, board.follower]
        procs += [spawn(settings, AGENTS, f"agents-{tag}"), spawn(settings, BROKER, f"broker-{tag}")]
        targets = targets_record(settings, scenario.weights(), 1)
        publisher.send("portfolio.targets", TARGETS_SCHEMA, [targets], "account_id")
        proposals: dict[str, dict[str, Any]] = {}
        proposed = until(lambda: proposal_of(rebalances, targets["event_id"], proposals), 300, "proposal", procs, 0.05)
        until(lambda: "following orders.intents" in procs[1].text(), 300, "the broker connector up", procs, 0.1)
        n = len(proposed["orders"])
        before = len(fake.requests)
        approved_at = time.perf_counter()
        approve(publisher, settings, proposed["rebalance_id"])
        until(lambda: len(fake.orders()) >= n, 900, "every order placed at the fake", procs, 0.05)
        placed_at = time.perf_counter()
        during = fake.requests[before:]
        waited_then = _limit_wait_s(procs[1].text())
        wanted = {o["client_order_id"] for o in proposed["orders"]}
        until(lambda: board.at_broker(wanted), 120, "every placement on broker.order_updates", procs)
        published_at = time.perf_counter()
        fill_started = time.perf_counter()
        fake.fill()
        until(lambda: board.filled(wanted), 300, "every fill on broker.order_updates", procs)
        filled_at = time.perf_counter()
        limited = fake.rate_limited
        procs[1].stop()
        text = procs[1].text()
        waited = re.search(r"(\d+) orders placed; ([\d.]+) s waited for the rate limit", text)
        retried = len(re.findall(r"broker rate limit on .*: waiting ([\d.]+) s", text))
        served = [r for r in during if r.status != 429]
        kinds = Counter(
            "asset" if "/assets/" in r.path else "submit" if r.method == "POST" else "other" for r in served
        )
        took = placed_at - approved_at
        order_calls = kinds["asset"] + kinds["submit"]
        floor_orders = n / RATE * 60
        floor_calls = order_calls / RATE * 60
        floor_window = (len(served) - 1) // RATE * 60
        print(
            f"rebalance against the fake Alpaca server, {n} orders ({len(scenario.symbols)} symbols), its limit and "
            f"the connector's both {RATE}/min:"
        )
        print(f"  {'approval -> every order placed at the fake':<58} {took:>8.1f} s")
        print(f"  {'floor: orders / allowed rate':<58} {floor_orders:>8.1f} s   ratio {took / floor_orders:.2f}x")
        print(
            f"  {'floor: broker requests / allowed rate':<58} {floor_calls:>8.1f} s   ratio {took / floor_calls:.2f}x "
            f"({kinds['asset']} asset lookups + {kinds['submit']} submits served)"
        )
        print(
            f"  {'floor: all requests served, at most 200 in any 60 s':<58} {floor_window:>8.1f} s   "
            f"ratio {took / floor_window if floor_window else float('inf'):.2f}x ({len(served)} served: "
            f"{kinds['other']} more were the connector's reconciliation polls, account and positions)"
        )
        print(
            f"  binding: requests / rate - {order_calls / n:.2f} requests per order (the submit, and an asset lookup "
            f"for a symbol the hourly listing of assets lacks); each 30 s reconciliation lists the orders, the "
            f"account and the positions from the same budget"
        )
        wait_text = "unknown" if waited_then is None else f"{waited_then:.1f} s"
        if waited:
            print(
                f"  the connector waited for the rate limit {wait_text} by the time all were placed (metrics), "
                f"{waited.group(2)} s by its shutdown (log, {waited.group(1)} orders placed); {retried} of its waits "
                f"were a 429's Retry-After; the fake served {limited} 429s"
            )
        else:
            print(
                f"  the connector waited for the rate limit {wait_text} by the time all were placed (metrics); no "
                f"summary in its log ({procs[1].log_path}); the fake served {limited} 429s"
            )
        print(
            f"  placements on broker.order_updates {published_at - approved_at:.1f} s after approval; "
            f"fake.fill() -> every FILL on broker.order_updates {filled_at - fill_started:.2f} s"
        )
    finally:
        for proc in procs:
            proc.stop()
        for follower in followers:
            follower.close()
        fake.stop()
        groups = [agents_app_id(settings)]
        groups += [f"{settings.topic_prefix}{settings.app_id}-broker-{account}{s}" for s in ("", "-bars", "-tracker")]
        delete_prefixed_topics(settings, groups)
        shutil.rmtree(settings.state_dir / "agents" / agents_app_id(settings), ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.execution", description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--strategies", type=int, default=50)
    parser.add_argument("--updates", type=int, default=200, help="partial fills timed to Redis")
    parser.add_argument("--alpaca-symbols", type=int, default=200, help="symbols of the fake Alpaca run")
    parser.add_argument("--skip-alpaca", action="store_true")
    args = parser.parse_args(argv)
    base = get_settings()
    tag = uuid.uuid4().hex[:8]
    scenario = Scenario.make(tag, args.symbols, args.strategies)
    simulated = base.changed(broker__kind="simulated", broker__cash=CASH)
    baseline = min((in_process(simulated, scenario) for _ in range(3)), key=lambda b: b.seconds)
    simulated_run(base, scenario, baseline, args.updates, tag)
    if not args.skip_alpaca:
        fewer = Scenario.make(tag, args.alpaca_symbols, args.strategies)
        alpaca_run(base, fewer, uuid.uuid4().hex[:8])


if __name__ == "__main__":
    main(sys.argv[1:])
