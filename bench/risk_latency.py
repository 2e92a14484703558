"""Price tick -> RiskMeasured in Redis (issue 15): how long after a held symbol's minute bar is published the
account's risk, measured on it, is what ``tm:risk:<account>`` shows; p50 and p99, beside a baseline measured on the
same ticks in the same run.

The real processes run on the local stack under a topic prefix, app id, account and PostgreSQL database of their
own: ``tidemark worker`` (the projection sink) and ``tidemark agents`` (the risk agent among the others).

Setup: S symbols with D sessions of daily closes (a seeded random walk, 1-2 % a day), then ``PositionChanged``
records for N strategies holding 8 symbols each (strategy k holds symbols step*k .. step*k+7, step = S // N, so
every symbol is held), each measured by the risk agent; the setup ends when the measurement of the last of them is
in Redis. The closes reach the agent's one-partition inputs topic before the positions are published (a close of a
held symbol is measured, and each would rebuild the risk model: the positions come after so none is).

Timed: T minute bars (``md.bars.1m``, interval 1m) of held symbols, one at a time, each 61 s of market time after
the previous one (the agent measures on a tick when ``TIDEMARK_RISK_MEASURE_EVERY_S``, 60 s, of market time passed
since its last measurement), each from just before it is produced to ``tm:risk:<account>`` holding its measurement
(the ``RiskMeasured`` whose causation_id is the tick's event id; its event id is the agent's deterministic one).
Baseline, the same ticks: the time to that ``RiskMeasured`` on ``risk.metrics`` (a consumer following it), the
agent's share; the rest is the projection sink's. For scale, the monitor's own work on the same ticks in-process
(decode, compact, ``decide``, encode).

``python -m bench.risk_latency [--ticks 100] [--symbols 50] [--strategies 10] [--sessions 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import redis
from confluent_kafka import Consumer, TopicPartition

from bench.execution import (
    AGENTS,
    BAR_SCHEMA,
    DAY,
    START,
    WORKER,
    Follower,
    Proc,
    Publisher,
    Scenario,
    bar_records,
    percentile,
    spawn,
    until,
)
from bench.pipeline import drop_database, fresh_database
from core.events import common_fields, deterministic_event_id
from core.kafka import BATCH_PAUSE_S
from core.settings import Settings, get_settings
from projections.risk import control_key, measurement_key
from schemas.codec import get_registry
from streams.agents import agents_app_id
from streams.risk import agent as risk_agent
from streams.risk.agent import inputs_topic_name, policy_of
from streams.risk.history import History
from streams.risk.monitor import MEASURED_SCHEMA, Models, RiskBook, compact, decide
from tidemark.topics import create_topics, delete_prefixed_topics

POSITION_SCHEMA = "tidemark.orders.PositionChanged"
MINUTE = 60 * 10**9
TICK_GAP = 61 * 10**9
"""Market time between two ticks: over the agent's 60 s between measurements on ticks alone."""
GROSS = 0.5
"""The held book's gross exposure as a fraction of the default equity: well inside every default limit."""
PER_TICK_S = 15.0
"""A tick whose measurement is not in Redis by then counts as missed; the run stops after ``MISSES`` of them."""
MISSES = 3


# -- the market and the book ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Market:
    symbols: list[str]
    closes: np.ndarray
    """sessions x symbols."""
    holdings: dict[str, dict[str, str]]
    """strategy -> symbol -> signed quantity (decimal string)."""

    @classmethod
    def make(cls, tag: str, n_symbols: int, n_strategies: int, sessions: int, equity: float, seed: int = 15) -> Market:
        # Unique names: the worker's Redis bar windows are keyed by symbol, in a database others use too.
        symbols = [f"R{tag.upper()}{i:03d}" for i in range(n_symbols)]
        rng = np.random.default_rng(seed)
        start = rng.uniform(20.0, 200.0, n_symbols)
        vol = rng.uniform(0.01, 0.02, n_symbols)
        closes = start * np.exp(np.cumsum(rng.normal(0.0, 1.0, (sessions, n_symbols)) * vol, axis=0))
        step = max(1, n_symbols // n_strategies)
        notional = equity * GROSS / (8 * n_strategies)
        holdings: dict[str, dict[str, str]] = {}
        for k in range(n_strategies):
            book = holdings.setdefault(f"S{k:02d}", {})
            for j in range(8):
                i = (step * k + j) % n_symbols
                qty = max(1, round(notional / closes[-1, i])) * (-1 if j % 4 == 3 else 1)
                book[symbols[i]] = str(qty)
        return cls(symbols, closes, holdings)

    def held(self) -> list[str]:
        found = {s for book in self.holdings.values() for s in book}
        return [s for s in self.symbols if s in found]

    def daily_bars(self) -> list[dict[str, Any]]:
        """Every session's closes (``bar_records`` of ``bench.execution``, one flat bar per symbol and session)."""
        records = []
        for day in range(len(self.closes)):
            prices = {s: float(self.closes[day, i]) for i, s in enumerate(self.symbols)}
            records += bar_records(Scenario(self.symbols, prices, {}), day)
        return records

    def position_records(self, settings: Settings) -> list[dict[str, Any]]:
        last = {s: Decimal(f"{self.closes[-1, i]:.4f}") for i, s in enumerate(self.symbols)}
        at = START + len(self.closes) * DAY
        records = []
        for n, (sid, book) in enumerate(self.holdings.items()):
            for m, (symbol, qty) in enumerate(book.items()):
                price = last[symbol]
                records.append(
                    {
                        **common_fields(
                            "bench-risk",
                            at + 8 * n + m,
                            "",
                            deterministic_event_id("bench-risk-position", settings.topic_prefix, sid, symbol),
                        ),
                        "account_id": settings.portfolio.account,
                        "strategy_id": sid,
                        "symbol": symbol,
                        "qty": qty,
                        "qty_change": qty,
                        "price": str(price),
                        "cash_change": str(-Decimal(qty) * price),
                        "avg_price": str(price),
                        "realized_pnl": "0",
                        "cause": "fill",
                        "client_order_id": f"bench-{sid}-{symbol}",
                        "order_id": f"bench-{sid}-{symbol}",
                    }
                )
        return records

    def ticks(self, settings: Settings, n: int, seed: int = 16) -> list[dict[str, Any]]:
        """``n`` minute bars, round-robin over the held symbols, ``TICK_GAP`` apart, starting ten minutes after the
        positions (their ts_event is the last measurement's before the ticks)."""
        rng = np.random.default_rng(seed)
        held = self.held()
        price = {s: float(self.closes[-1, self.symbols.index(s)]) for s in held}
        first = START + len(self.closes) * DAY + 10 * MINUTE
        records = []
        for k in range(n):
            symbol = held[k % len(held)]
            price[symbol] *= float(np.exp(rng.normal(0.0, 0.001)))
            start = first + k * TICK_GAP
            records.append(
                {
                    **common_fields(
                        "bench-risk",
                        start + MINUTE,
                        "",
                        deterministic_event_id("bench-risk-tick", settings.topic_prefix, k),
                    ),
                    "symbol": symbol,
                    "asset_class": "EQUITY",
                    "interval": "1m",
                    "start_ns": start,
                    "end_ns": start + MINUTE,
                    "open": price[symbol],
                    "high": price[symbol],
                    "low": price[symbol],
                    "close": price[symbol],
                    "volume": 1e5,
                    "vwap": None,
                    "trade_count": None,
                    "regular_session": True,
                    "kind": "OHLCV",
                }
            )
        return records


# -- the baseline's scale: the monitor in-process ---------------------------------------------------------------


def in_process(
    settings: Settings, bars: list[dict[str, Any]], positions: list[dict[str, Any]], ticks: list[dict[str, Any]]
) -> tuple[list[float], int]:
    """Seconds per tick of the risk monitor's own work (Avro decode, compact, JSON both ways as the forwarder and the
    agent do, ``decide``, encode), on a book built from the same inputs; and how many ticks were measured."""
    registry = get_registry()
    policy = policy_of(settings)
    book, models = RiskBook(), Models()
    histories: dict[str, History] = {}

    def feed(kind: str, schema: str, record: dict[str, Any]) -> list[Any]:
        decoded = registry.decode_as(schema, registry.encode(schema, record))
        forwarded = json.loads(json.dumps(compact(kind, decoded)))
        events = decide(book, forwarded, policy, histories, models)
        return [registry.encode(schema, event) for _, _, schema, event in events]

    for record in bars:
        feed("bar", BAR_SCHEMA, record)
    for record in positions:
        feed("position", POSITION_SCHEMA, record)
    took, measured = [], 0
    for record in ticks:
        encoded = registry.encode(BAR_SCHEMA, record)
        started = time.perf_counter()
        forwarded = json.loads(json.dumps(compact("bar", registry.decode_as(BAR_SCHEMA, encoded))))
        events = decide(book, forwarded, policy, histories, models)
        for _, _, schema, event in events:
            registry.encode(schema, event)
        took.append(time.perf_counter() - started)
        measured += any(schema == MEASURED_SCHEMA for _, _, schema, _ in events)
    return took, measured


# -- the stack ----------------------------------------------------------------------------------------------------


def forwarded_count(settings: Settings, probe: Consumer) -> int:
    """Records on the risk agent's inputs topic (one partition); 0 while Faust has not created it. Lists every topic
    rather than asking for this one, so the broker never auto-creates it."""
    name = inputs_topic_name(settings)
    if name not in probe.list_topics(timeout=10).topics:
        return 0
    _, high = probe.get_watermark_offsets(TopicPartition(name, 0), timeout=10)
    return int(high)


@dataclass
class Measured:
    """The RiskMeasured records seen on risk.metrics, by causation id."""

    follower: Follower
    by_cause: dict[str, dict[str, Any]]
    order: list[str]

    def update(self, timeout: float = 0.0) -> None:
        for schema, record in self.follower.poll(timeout):
            if schema == MEASURED_SCHEMA:
                self.by_cause[record["causation_id"]] = record
                self.order.append(record["causation_id"])


def redis_cleanup(cache: redis.Redis, account: str, symbol_mark: str) -> None:
    try:
        doomed = [measurement_key(account), control_key(account)]
        for pattern in (f"*{account}*", f"*{symbol_mark}*"):
            doomed += list(cache.scan_iter(match=pattern, count=1000))
        cache.delete(*doomed)
    except redis.RedisError as exc:
        print(f"  (could not delete the bench's Redis keys: {exc})")


def projected_count(dsn: str, account: str, ids: list[str]) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM risk_measurements WHERE account_id = $1 AND event_id::text = ANY($2)",
                    account,
                    ids,
                )
            )
        finally:
            await conn.close()

    return asyncio.run(count())


def run(base: Settings, args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    database = f"bench_risk_latency_{tag}"
    settings = base.changed(
        topic_prefix=f"benchrisk{tag}.",
        app_id=f"bench-risk-{tag}",
        portfolio__account=f"bench{tag}",
        operations__metrics_port=0,
    )
    account = settings.portfolio.account
    market = Market.make(tag, args.symbols, args.strategies, args.sessions, settings.portfolio.capital)
    bars, positions, ticks = market.daily_bars(), market.position_records(settings), market.ticks(settings, args.ticks)
    local, local_measured = in_process(settings, bars, positions, ticks)
    procs: list[Proc] = []
    followers: list[Follower] = []
    probe: Consumer | None = None
    cache = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    redis_key = measurement_key(account)
    started_at = time.perf_counter()
    try:
        settings = settings.changed(postgres_dsn=fresh_database(base, database))
        create_topics(settings)
        publisher = Publisher(settings)
        publisher.send("md.bars.1d", BAR_SCHEMA, bars, "symbol")
        metrics = Measured(Follower(settings, "risk.metrics"), {}, [])
        followers.append(metrics.follower)
        procs += [spawn(settings, WORKER, f"risk-worker-{tag}"), spawn(settings, AGENTS, f"risk-agents-{tag}")]
        probe = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": f"bench-probe-{tag}"})
        until(lambda: forwarded_count(settings, probe) >= len(bars), 150, "the closes on the risk inputs", procs, 0.1)
        closes_in = time.perf_counter() - started_at
        publisher.send("positions", POSITION_SCHEMA, positions, "account_id")
        wanted = {r["event_id"] for r in positions}

        def all_measured() -> bool:
            metrics.update(0.05)
            return wanted <= metrics.by_cause.keys()

        until(all_measured, 120, "every position measured", procs, 0.0)
        last = metrics.by_cause[[c for c in metrics.order if c in wanted][-1]]
        until(lambda: cache.hget(redis_key, "event_id") == last["event_id"], 60, "the setup in Redis", procs, 0.01)
        setup_s = time.perf_counter() - started_at
        if len(last["strategies"]) != len(market.holdings) or last["missing_history"] or not last["estimates"]:
            print(
                f"  (setup measurement unexpected: {len(last['strategies'])} strategies, "
                f"missing {last['missing_history']}, {len(last['estimates'])} estimates)"
            )

        total, agent, missed = [], [], []
        for record in ticks:
            cause = record["event_id"]
            expected = deterministic_event_id("risk-measured", account, cause)
            seen: dict[str, float] = {}
            began = time.perf_counter()
            publisher.send("md.bars.1m", BAR_SCHEMA, [record], "symbol")

            def done(
                cause: str = cause, expected: str = expected, seen: dict[str, float] = seen, began: float = began
            ) -> bool:
                if "topic" not in seen:
                    metrics.update(0.0005)
                    if cause in metrics.by_cause:
                        seen["topic"] = time.perf_counter() - began
                if "redis" not in seen and cache.hget(redis_key, "event_id") == expected:
                    seen["redis"] = time.perf_counter() - began
                return len(seen) == 2

            try:
                until(done, PER_TICK_S, f"the measurement of tick {cause}", procs, 0.0)
            except TimeoutError:
                missed.append((record, dict(seen)))
                if len(missed) >= MISSES:
                    break
                continue
            total.append(seen["redis"])
            agent.append(seen["topic"])
        timed_s = time.perf_counter() - started_at - setup_s

        sent = ticks[: len(total) + len(missed)]
        metrics.update(0.5)
        measured_ids = [metrics.by_cause[t["event_id"]]["event_id"] for t in sent if t["event_id"] in metrics.by_cause]
        in_pg = projected_count(settings.postgres_dsn, account, measured_ids)
        stored: dict[str, str] = cache.hgetall(redis_key)  # type: ignore[assignment]
        shown = json.loads(stored.get("measurement", "{}"))
        latest = sent[-1]
        causation = "the last tick's" if shown.get("causation_id") == latest["event_id"] else shown.get("causation_id")
        stamp = "the last tick's" if stored.get("ts_event") == str(latest["ts_event"]) else stored.get("ts_event")
        dlq = Follower(settings, "dlq")
        followers.append(dlq)
        dead = dlq.poll(1.0)
        breached = sorted({b for t in sent if (m := metrics.by_cause.get(t["event_id"])) for b in m["breaches"]})
        report(settings, market, args, total, agent, local, local_measured, missed, closes_in, setup_s, timed_s)
        print(
            f"  checks: {len(measured_ids)}/{len(sent)} ticks sent measured on risk.metrics, {in_pg} of them in "
            f"risk_measurements; Redis at the end: causation {causation}, ts_event {stamp}; breaches "
            f"{breached or 'none'}; kill switch {stored.get('kill_switch')}; {len(dead)} dead letters on dlq"
        )
        for record, seen in missed:
            where = "on risk.metrics, never in Redis" if "topic" in seen else "never on risk.metrics"
            print(f"  MISSED tick {record['event_id']} ({record['symbol']}, ts_event {record['ts_event']}): {where}")
    finally:
        for proc in procs:
            proc.stop()
        for follower in followers:
            follower.close()
        if probe is not None:
            probe.close()
        redis_cleanup(cache, account, f"R{tag.upper()}")
        groups = [settings.app_id, f"{settings.app_id}-projections", agents_app_id(settings)]
        delete_prefixed_topics(settings, groups)
        shutil.rmtree(settings.state_dir / "agents" / agents_app_id(settings), ignore_errors=True)
        drop_database(base, database)


def report(
    settings: Settings,
    market: Market,
    args: argparse.Namespace,
    total: list[float],
    agent: list[float],
    local: list[float],
    local_measured: int,
    missed: list[Any],
    closes_in: float,
    setup_s: float,
    timed_s: float,
) -> None:
    n_positions = sum(len(b) for b in market.holdings.values())
    print(
        f"price tick -> RiskMeasured in Redis: {len(market.holdings)} strategies x 8 of {len(market.symbols)} symbols "
        f"({n_positions} positions), {len(market.closes)} daily closes each, {settings.risk.paths:,} MC paths; "
        f"{len(total)} of {args.ticks} 1m ticks timed one at a time; broker {settings.kafka.bootstrap} "
        f"(closes on the risk inputs {closes_in:.1f} s after start, setup measured in Redis {setup_s:.1f} s, "
        f"ticks {timed_s:.1f} s)"
    )
    if not total:
        print("  no tick measured in Redis: no figures")
        return
    p50, p99 = percentile(total, 50), percentile(total, 99)
    a50, a99 = percentile(agent, 50), percentile(agent, 99)
    sink = [t - a for t, a in zip(total, agent, strict=True)]
    l50, l99 = percentile(local, 50), percentile(local, 99)
    print(
        f"  {'BarClosed published -> tm:risk measurement (agent + sink)':<60} p50 {p50 * 1000:>7.1f} ms  "
        f"p99 {p99 * 1000:>7.1f} ms  (max {max(total) * 1000:.1f}, mean {statistics.fmean(total) * 1000:.1f} ms)"
    )
    print(
        f"  {'baseline: published -> RiskMeasured on risk.metrics (agent)':<60} p50 {a50 * 1000:>7.1f} ms  "
        f"p99 {a99 * 1000:>7.1f} ms  (max {max(agent) * 1000:.1f}, mean {statistics.fmean(agent) * 1000:.1f} ms)"
    )
    print(
        f"  {'  the rest: risk.metrics -> Redis (projection sink)':<60} p50 {percentile(sink, 50) * 1000:>7.1f} ms  "
        f"p99 {percentile(sink, 99) * 1000:>7.1f} ms"
    )
    print(
        f"  {'  for scale: the monitor in-process (decode..decide..encode)':<60} p50 {l50 * 1000:>7.2f} ms  "
        f"p99 {l99 * 1000:>7.2f} ms  ({local_measured}/{len(local)} ticks measured)"
    )
    print(
        f"  ratio Redis / risk.metrics p50 {p50 / a50:.2f}x, p99 {p99 / a99:.2f}x; "
        f"agent share of p50 {a50 / p50:.0%}, sink share {1 - a50 / p50:.0%}"
    )
    within, size = (type(settings.processing).variable(n) for n in ("batch_within_s", "batch_size"))
    every = type(settings.risk).variable("measure_every_s")
    print(
        f"  bounds: sink batches of up to {size}={settings.processing.batch_size} within {within}="
        f"{settings.processing.batch_within_s:g} s, ended early by a pause of {BATCH_PAUSE_S:g} s; "
        f"risk agent take_events({risk_agent.BATCH}, "
        f"within={risk_agent.BATCH_WITHIN_S:g} s); {every}={settings.risk.measure_every_s:g} (ticks "
        f"{TICK_GAP // 10**9} s apart); {len(missed)} ticks missed (waited {PER_TICK_S:g} s each)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.risk_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=100, help="minute bars timed to Redis, one at a time")
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--strategies", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=60, help="daily closes per symbol before the positions")
    args = parser.parse_args(argv)
    run(get_settings(), args)


if __name__ == "__main__":
    main(sys.argv[1:])
