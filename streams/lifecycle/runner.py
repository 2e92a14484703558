"""The strategy runner: every Paper and Live strategy booked session by session on the daily bars, its record
published on strategies.performance, and the promotions and retirements its record calls for sent as lifecycle
commands.

Everything it publishes is a function of the log (bars, candidates, transitions), so a restart recomputes it from
the start and publishes only what is not yet there: outputs go out in Kafka transactions under one transactional
id (which also fences a second runner), and on start the runner reads its committed outputs first. A kill at any
point leaves either a whole transaction or none; nothing is published twice, nothing is lost.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from core.consumed import Consumed
from core.deadletter import dead_letter_messages
from core.events import common_fields, deterministic_event_id
from core.kafka import producer_config, range_reader, read_range
from core.metrics import STATISTICS_INTERVAL_MS, ProcessMetrics
from core.settings import Settings
from core.supervision import Watchdog
from schemas.codec import DecodeError, get_registry
from streams.lifecycle.agent import (
    CANDIDATE_SCHEMA,
    COMMAND_SCHEMA,
    REJECTED_SCHEMA,
    TRANSITIONED_SCHEMA,
    rules_of,
)
from streams.lifecycle.machine import State
from streams.lifecycle.performance import NS_PER_DAY, Ask, Period, Recipe, StrategyRun, Unbookable, due, recipe_of

log = logging.getLogger("tidemark.strategy_runner")

SOURCE = "strategy-runner"
BAR_SCHEMA = "tidemark.marketdata.BarClosed"
PERFORMANCE_SCHEMA = "tidemark.strategies.StrategyPerformanceRecorded"
BOOKED = frozenset({State.PAPER, State.LIVE})
PROGRESS_EVERY_S = 30.0


def runner_id(settings: Settings) -> str:
    """Consumer group and transactional id: one runner per context; a second one fences the first."""
    return f"{settings.topic_prefix}{settings.app_id}-strategy-runner"


class Closes:
    """Each symbol's daily closes by bar start, in start order; a bar seen again replaces its close."""

    def __init__(self) -> None:
        self.starts: dict[str, list[int]] = defaultdict(list)
        self.closes: dict[str, list[float]] = defaultdict(list)

    def add(self, symbol: str, start_ns: int, close: float) -> None:
        starts, closes = self.starts[symbol], self.closes[symbol]
        at = bisect.bisect_left(starts, start_ns)
        if at < len(starts) and starts[at] == start_ns:
            closes[at] = close
        else:
            starts.insert(at, start_ns)
            closes.insert(at, close)

    def latest(self, symbol: str) -> int | None:
        starts = self.starts.get(symbol)
        return starts[-1] if starts else None

    def rows(self, symbols: tuple[str, ...], after: int | None, through: int) -> tuple[list[int], np.ndarray]:
        """Rows (the union of the legs' starts) in (after, through], each leg's close carried forward."""
        spans = []
        for symbol in symbols:
            starts = self.starts[symbol]
            low = 0 if after is None else bisect.bisect_right(starts, after)
            spans.append(starts[low : bisect.bisect_right(starts, through)])
        union = sorted({s for span in spans for s in span})
        out = np.full((len(union), len(symbols)), np.nan)
        for leg, symbol in enumerate(symbols):
            starts, closes = self.starts[symbol], self.closes[symbol]
            for row, start in enumerate(union):
                at = bisect.bisect_right(starts, start) - 1
                if at >= 0:
                    out[row, leg] = closes[at]
        return union, out


class StrategyRunner:
    def __init__(self, settings: Settings, watchdog: Watchdog) -> None:
        self.settings = settings
        self.watchdog = watchdog
        self.rules = rules_of(settings)
        self.notional = Decimal(str(settings.lifecycle.paper_notional))
        self._registry = get_registry()
        self._closes = Closes()
        self._candidates: dict[str, Mapping[str, Any]] = {}
        self._states: dict[str, tuple[State, int, str]] = {}  # strategy -> (state, version, candidate id)
        self._runs: dict[str, StrategyRun] = {}
        self._unbookable: set[str] = set()
        self._published_through: dict[str, int] = {}  # strategy -> last period end already on the topic
        self._commands_sent: set[str] = set()
        self._answers: dict[str, tuple[State | None, int | None, str]] = {}  # answers read before their session
        self._outbox: list[tuple[str, str, bytes]] = []
        self.booked = 0
        self.published = 0
        group = runner_id(settings)
        self._producer = Producer(
            producer_config(settings.kafka.bootstrap, **{"transactional.id": group, "linger.ms": 5})
        )
        self.metrics = ProcessMetrics("strategy-runner", settings.operations.liveness_after_s)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "statistics.interval.ms": STATISTICS_INTERVAL_MS,
                "stats_cb": self.metrics.on_statistics,
            }
        )

    def run(self) -> None:
        """Until SIGTERM."""
        timeout = self.settings.operations.stall_timeout_s
        with self.watchdog.bounded("fencing an older runner; is Kafka reachable?", timeout):
            self._producer.init_transactions(timeout)
        with self.watchdog.bounded("reading what earlier runs published", timeout * 4):
            self._read_own_outputs()
        topics = [self.settings.topic(n) for n in ("strategies.candidates", "strategies.lifecycle", "md.bars.1d")]
        assignment = []
        for topic in topics:
            metadata = self._consumer.list_topics(topic, timeout=timeout).topics[topic]
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        self._consumer.assign(assignment)
        log.info("strategy runner: following %s", ", ".join(topics))
        last_progress = time.monotonic()
        try:
            while not self.watchdog.stopping.is_set():
                messages = self._consumer.consume(2000, 0.5)
                for message in messages:
                    self._dispatch(message)
                for topic, count in Counter(m.topic() for m in messages if m.error() is None).items():
                    self.metrics.consumed(topic, count)
                if messages:  # bars, candidates and answers are all that move a run
                    self._advance()
                    self._publish()
                if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                    self._log_progress()
                    last_progress = time.monotonic()
        finally:
            self._log_progress()
            self._consumer.close()

    def _log_progress(self) -> None:
        live = sum(run.state is State.LIVE for run in self._runs.values())
        log.info(
            "strategy runner: %d strategies booked (%d live), %d sessions booked, %d events published",
            len(self._runs),
            live,
            self.booked,
            self.published,
        )

    def _read_own_outputs(self) -> None:
        reader = range_reader(self.settings.kafka.bootstrap, runner_id(self.settings) + "-outputs")
        try:
            for message in read_range(reader, self.settings.topic("strategies.performance")):
                event = self._registry.decode_as(PERFORMANCE_SCHEMA, message.value())
                sid = event["strategy_id"]
                self._published_through[sid] = max(self._published_through.get(sid, 0), event["period_end_ns"])
            for message in read_range(reader, self.settings.topic("strategies.commands")):
                event = self._registry.decode_as(COMMAND_SCHEMA, message.value())
                if event["source"] == SOURCE:
                    self._commands_sent.add(event["event_id"])
        finally:
            reader.close()
        log.info(
            "strategy runner: %d strategies already have performance on the topic; %d commands already sent",
            len(self._published_through),
            len(self._commands_sent),
        )

    def _dispatch(self, message: Message) -> None:
        if message.error() is not None:
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("strategy runner: %s", message.error().str())
            return
        try:
            schema, event = self._registry.decode(message.value())
        except DecodeError as exc:
            self._dead_letter(message, str(exc))
            return
        if schema == BAR_SCHEMA:
            self._closes.add(event["symbol"], event["start_ns"], event["close"])
        elif schema == CANDIDATE_SCHEMA:
            self._candidates[event["event_id"]] = event
            self._start_waiting_runs(event["event_id"])
        elif schema == TRANSITIONED_SCHEMA:
            self._transitioned(event)
        elif schema == REJECTED_SCHEMA and event["causation_id"] in self._commands_sent:
            self._answer(event["strategy_id"], event["causation_id"], None, None, event["reason"])

    def _transitioned(self, event: Mapping[str, Any]) -> None:
        sid, target, version = event["strategy_id"], State(event["to_state"]), event["version"]
        if event["causation_id"] in self._commands_sent:
            self._answer(sid, event["causation_id"], target, version, event["reason"])
            return
        run = self._runs.get(sid)
        if run is not None:
            run.moved(target, version)
            self._leave_if_unbooked(run, event["reason"])
            return
        candidate_id = event["evidence"].get("candidate_id", self._states.get(sid, (None, 0, ""))[2])
        self._states[sid] = (target, version, candidate_id)
        if target in BOOKED:
            self._start_run(sid)

    def _answer(self, sid: str, command_id: str, target: State | None, version: int | None, reason: str) -> None:
        """An answer to one of the runner's commands takes effect when the run reaches the session that asked
        (at once in a live run; later when a restart replays bars behind the lifecycle), never before it."""
        run = self._runs.get(sid)
        if run is None or run.awaiting != command_id:
            self._answers[command_id] = (target, version, reason)
            return
        if target is None:
            log.info("strategy runner: %s stays %s: %s", sid, run.state.value, reason)
        run.answered(target, version)
        self._leave_if_unbooked(run, reason)

    def _leave_if_unbooked(self, run: StrategyRun, reason: str) -> None:
        if run.state not in BOOKED:
            log.info("strategy runner: %s left the book (%s: %s)", run.recipe.strategy_id, run.state.value, reason)
            del self._runs[run.recipe.strategy_id]

    def _start_waiting_runs(self, candidate_id: str) -> None:
        for sid, (state, _, cid) in list(self._states.items()):
            if cid == candidate_id and state in BOOKED and sid not in self._runs:
                self._start_run(sid)

    def _start_run(self, sid: str) -> None:
        state, version, candidate_id = self._states[sid]
        candidate = self._candidates.get(candidate_id)
        if candidate is None or sid in self._unbookable:
            return  # its candidate comes later on another partition: the run starts when it does
        try:
            recipe = recipe_of(candidate)
        except Unbookable as exc:
            self._unbookable.add(sid)
            log.warning("strategy runner: %s stays unbooked: %s", sid, exc)
            return
        self._runs[sid] = StrategyRun(recipe, self.rules, state, version)
        log.info("strategy runner: booking %s (%s) from %s", sid, state.value, ", ".join(recipe.symbols))

    def _advance(self) -> None:
        """Book every session all of a run's legs have reached; ask for what the record calls for."""
        for sid, run in list(self._runs.items()):
            recipe = run.recipe
            latest = [self._closes.latest(s) for s in recipe.symbols]
            if any(start is None for start in latest):
                continue
            through = min(start for start in latest if start is not None)
            if run.consumed_ns is None:
                if through <= recipe.data_end_ns:
                    continue
                starts, closes = self._closes.rows(recipe.symbols, recipe.data_start_ns - 1, recipe.data_end_ns)
                run.warm(starts, closes)
            if run.consumed_ns is not None and through <= run.consumed_ns:
                continue
            starts, closes = self._closes.rows(recipe.symbols, run.consumed_ns, through)
            periods, consumed = due(recipe.timeframe, starts, closes, through, recipe.data_end_ns)
            for bar in periods:
                if run.awaiting is not None or sid not in self._runs:
                    break
                for period in run.book(bar):
                    self.booked += 1
                    self._record(recipe, period)
                ask = run.ask()
                if ask is not None:
                    run.awaiting = self._command(recipe, ask)
                    if run.awaiting in self._answers:
                        self._answer(sid, run.awaiting, *self._answers.pop(run.awaiting))
            else:
                if consumed is not None:  # every due period booked: the rows passed over are consumed too
                    run.consumed_ns = max(run.consumed_ns or consumed, consumed)

    def _record(self, recipe: Recipe, period: Period) -> None:
        """One session, marked to market (a weekly strategy's sessions are published when its week is booked)."""
        end_ns = period.start_ns + NS_PER_DAY
        if end_ns <= self._published_through.get(recipe.strategy_id, -1):
            return
        event = {
            **common_fields(
                SOURCE, end_ns, recipe.candidate_id, deterministic_event_id(SOURCE, recipe.strategy_id, period.start_ns)
            ),
            "strategy_id": recipe.strategy_id,
            "state": period.state.value,
            "period_start_ns": period.start_ns,
            "period_end_ns": end_ns,
            "period_return": period.net_return,
            "cumulative_return": period.cumulative_return,
            "pnl": str((self.notional * Decimal(repr(period.net_return))).quantize(Decimal("0.01"))),
            "drawdown": period.drawdown,
            "rolling_sharpe": period.rolling_sharpe,
            "benchmark_return": None,
            "days_underperforming": period.days_underperforming,
            "trades": period.trades,
            "interval": "1d",
            "sessions": period.sessions,
            "cost": period.cost,
            "rolling_sharpe_se": period.rolling_sharpe_se,
            "positions": dict(period.positions),
        }
        self._outbox.append(
            ("strategies.performance", recipe.strategy_id, self._registry.encode(PERFORMANCE_SCHEMA, event))
        )

    def _command(self, recipe: Recipe, ask: Ask) -> str:
        """The command's id; sent unless an earlier run of the runner sent it already."""
        command_id = deterministic_event_id(SOURCE, recipe.strategy_id, ask.kind, ask.after_start_ns)
        if command_id in self._commands_sent:
            log.info(
                "strategy runner: %s asked for %s before a restart; waiting for the answer",
                recipe.strategy_id,
                ask.target.value,
            )
            return command_id
        performance_id = deterministic_event_id(SOURCE, recipe.strategy_id, ask.after_start_ns)
        command = {
            **common_fields(SOURCE, ask.after_start_ns + NS_PER_DAY, performance_id, command_id),
            "strategy_id": recipe.strategy_id,
            "expected_version": ask.expected_version,
            "target_state": ask.target.value,
            "reason": ask.reason,
            "evidence": dict(ask.evidence),
            "requested_by": SOURCE,
        }
        self._outbox.append(("strategies.commands", recipe.strategy_id, self._registry.encode(COMMAND_SCHEMA, command)))
        self._commands_sent.add(command_id)
        log.info("strategy runner: %s asks for %s: %s", recipe.strategy_id, ask.target.value, ask.reason)
        return command_id

    def _publish(self) -> None:
        if not self._outbox:
            return
        timeout = self.settings.operations.stall_timeout_s
        with self.watchdog.bounded("publishing strategy performance; is Kafka reachable?", timeout):
            self._producer.begin_transaction()
            for topic, key, value in self._outbox:
                self._producer.produce(self.settings.topic(topic), value, key)
            self._producer.commit_transaction(timeout)
        self.published += len(self._outbox)
        self.metrics.produced(Counter(topic for topic, _, _ in self._outbox).items())
        self.metrics.committed()
        self._outbox = []

    def _dead_letter(self, message: Message, reason: str) -> None:
        record = Consumed(message.topic(), message.partition(), message.offset(), message.key(), message.value())
        log.warning(
            "strategy runner: %s[%d]@%d dead-lettered: %s", record.topic, record.partition, record.offset, reason
        )
        for key, value in dead_letter_messages(self._registry, [record], [(0, reason)], SOURCE, "DecodeError"):
            self._outbox.append(("dlq", key.decode(), value))
