"""The execution agent (Faust, in ``tidemark agents``): the rebalancer and the position tracker of one account.

Its inputs are keyed by strategy, symbol or account over many partitions; forwarding agents send a compact record
of each to one internal topic of one partition keyed by the account (``<app id>-execution-inputs``), whose agent
keeps the account's ``Desk`` in the ``execution-desk`` table (``streams.execution.desk`` says what each input does).
Outputs: ``RebalanceProposed`` (orders.rebalances), ``PlaceOrder`` and ``OrderRejected`` (orders.intents),
``PositionChanged`` (positions), ``TradingHalted`` and ``TradingResumed`` (risk.controls), alerts.

The pre-trade risk screen measures VaR as the risk agent does, on the daily closes this agent keeps per symbol in
its own ``execution-closes`` table (each agent's state is its own: nothing is read across agents).

Idempotency under at least once, as in the portfolio agent: an input that produced events is remembered with their
bytes; delivered again, it gets them again and is not decided again. Output ids derive from the input's id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from decimal import Decimal
from typing import Any

import faust

from core.settings import Settings
from streams.agents import RAW, Answered, Event, agents_app_id, answer_batch, answer_once, install_forwarders
from streams.execution.desk import Desk, Policy, Screen, compact, decide
from streams.execution.rebalance import Rules
from streams.risk.agent import policy_of as risk_policy_of
from streams.risk.history import History, appended
from streams.risk.limits import Book, Screened, Trade, screen
from streams.risk.monitor import Models, measure_book

log = logging.getLogger("tidemark.execution")

INPUTS: dict[str, dict[str, str | None]] = {
    "portfolio.targets": {"tidemark.portfolio.PortfolioTargetsSet": "targets"},
    "orders.rebalances": {
        "tidemark.orders.ApproveRebalance": "approve",
        "tidemark.orders.RebalanceProposed": None,  # our own
    },
    "broker.order_updates": {"tidemark.broker.OrderUpdated": "update"},
    "broker.positions": {
        "tidemark.broker.PositionCorrected": "correction",
        "tidemark.broker.PositionReported": None,  # the connector reconciles them
    },
    "broker.account": {"tidemark.broker.AccountReported": "account"},
    "strategies.performance": {"tidemark.strategies.StrategyPerformanceRecorded": "performance"},
    "md.bars.1d": {"tidemark.marketdata.BarClosed": "price"},
    "risk.controls": {
        "tidemark.risk.HaltTrading": "halt",
        "tidemark.risk.ResumeTrading": "resume",
        "tidemark.risk.TradingHalted": None,  # our own
        "tidemark.risk.TradingResumed": None,
    },
}
"""Per input topic: its event types and the kind each is forwarded as (None: ignored)."""
RECENT = 1024
"""Inputs whose outputs are remembered: more than a redelivery can span (inputs since the last commit)."""
BATCH = 500
BATCH_WITHIN_S = 0.01
"""Inputs decided together, with one write of the desk: at most ``BATCH``, or what arrived within this."""


def broker_kind(settings: Settings) -> str:
    """The broker the account trades at: ``alpaca`` when so set, or when ``auto`` and an Alpaca key is set."""
    kind = settings.broker.kind
    if kind == "auto":
        return "alpaca" if settings.alpaca.key_id is not None else "simulated"
    return kind


def policy_of(settings: Settings) -> Policy:
    broker = settings.broker
    kind = broker_kind(settings)
    rules = Rules(
        min_order_notional=Decimal(repr(broker.min_order_notional)),
        no_trade_band=Decimal(repr(broker.no_trade_band)),
        allow_short=broker.allow_short and kind == "simulated",
    )
    return Policy(settings.portfolio.account, kind, rules, broker.auto_approve)


def risk_screen(settings: Settings, closes: Mapping[str, History], models: Models) -> Screen:
    """The pre-trade screen with the account's limits, VaR measured on ``closes`` as the risk agent measures it."""
    risk_policy = risk_policy_of(settings)

    def var_of(book: Book) -> Any:
        return measure_book(book, risk_policy, closes, models).var

    def check(trades: Sequence[Trade], book: Book) -> list[Screened]:
        return screen(trades, book, risk_policy.limits, var_of)

    return check


def keep_close(closes: MutableMapping[str, History], record: Mapping[str, Any], keep: int) -> None:
    """A daily close into its symbol's history (a redelivered one changes nothing)."""
    longer = appended(closes.get(record["symbol"]), record.get("ts", record["ts_event"]), float(record["close"]), keep)
    if longer is not None:
        closes[record["symbol"]] = longer


def answer(
    entry: Mapping[str, Any] | None,
    record: Mapping[str, Any],
    policy: Policy,
    store: MutableMapping[str, Any] | None = None,
    check: Screen | None = None,
) -> tuple[dict[str, Any], list[tuple[str, str, bytes]], bool]:
    """The table entry after ``record`` (its state a ``Desk``: ``saved`` makes it JSON), its encoded events, and
    whether it was answered before (``store``: where the outputs are remembered, the ``execution-answers`` table in
    the agent)."""

    def step(state: Any, record: Mapping[str, Any]) -> tuple[Any, list[Event]]:
        desk = state if isinstance(state, Desk) else Desk.from_json(state)
        events = decide(desk, record, policy, check)
        return desk, events

    return answer_once(entry, record, step, RECENT, store=store)


def saved(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as the table stores it: the desk as JSON (within a batch it stays a ``Desk``)."""
    state = entry.get("state")
    return {**entry, "state": state.to_json()} if isinstance(state, Desk) else entry


def inputs_topic_name(settings: Settings) -> str:
    """Starts with the app id, so the context's topic prefix covers it."""
    return f"{agents_app_id(settings)}-execution-inputs"


def install(app: faust.App, settings: Settings) -> None:
    """The execution agents and their table on ``app``."""
    policy = policy_of(settings)
    account = policy.account
    inputs = app.topic(inputs_topic_name(settings), partitions=1, internal=True, **RAW)
    outputs = {
        name: app.topic(settings.topic(name), **RAW)
        for name in ("orders.rebalances", "orders.intents", "positions", "risk.controls", "alerts")
    }
    # One partition, written once per batch of inputs (outside one event's iteration): the producer's partitioner
    # places the changelog records, not the current event.
    schema = faust.Schema(key_serializer="json", value_serializer="json")
    table = app.Table("execution-desk", partitions=1, schema=schema, use_partitioner=True)
    answers = app.Table("execution-answers", partitions=1, schema=schema, use_partitioner=True)
    closes = app.Table("execution-closes", partitions=1, schema=schema, use_partitioner=True)
    check = risk_screen(settings, closes, Models())
    keep = settings.risk.lookback_days + 1
    dlq = app.topic(settings.topic("dlq"), **RAW)
    pause_after = settings.broker.pause_after_intents
    sent = 0
    install_forwarders(app, settings, inputs, INPUTS, "execution", account, compact)

    @app.agent(inputs, name="execution-desk")
    async def keep_desk(stream: faust.StreamT[bytes]) -> None:
        """Inputs in batches: the desk is read and written once per batch (a fill's whole desk per input made 200
        fills take 8 s), and the batch's outputs are sent after the write. A crash before the write has the batch
        decided again; after it, each input's remembered outputs are sent again."""
        nonlocal sent

        def answer_one(entry: dict[str, Any] | None, record: Mapping[str, Any]) -> Answered:
            if record["kind"] == "price":
                keep_close(closes, record, keep)
            return answer(entry, record, policy, answers, check)

        async for batch in stream.take_events(BATCH, within=BATCH_WITHIN_S):
            entry, changed, outgoing = await answer_batch(batch, table.get(account), answer_one, dlq, "execution.desk")
            if changed and entry is not None:
                table[account] = saved(entry)
            for topic, key, value in outgoing:
                await outputs[topic].send(key=key.encode(), value=value)
                sent += topic == "orders.intents"
                if pause_after and sent >= pause_after:
                    await app.producer.flush()  # the desk's changelog and this command are out: the kill lands after
                    log.warning("execution agent: paused after %d order commands (fault drill)", sent)
                    await app.sleep(3600 * 24)
