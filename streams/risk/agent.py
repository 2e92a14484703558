"""The risk agent (Faust, in ``tidemark agents``): the risk monitor of one account.

As the execution agent: forwarding agents send a compact record of each input (positions, daily and minute bars,
the broker's account, strategy performance and lifecycle, the kill switch's answers) to one internal topic of one
partition keyed by the account (``<app id>-risk-inputs``), whose agent keeps the account's ``RiskBook`` in the
``risk-book`` table and each symbol's daily closes in ``risk-closes`` (``streams.risk.monitor`` says what each input
does). Outputs: ``RiskMeasured`` (risk.metrics), alerts, ``HaltTrading`` (risk.controls) and ``TransitionStrategy``
(strategies.commands) on a breach.

Idempotency under at least once, as the other agents: outputs are remembered per input and sent again, never
decided again; a close already in a history is not appended twice.

The inputs topic is the monitor's input log: the order the forwarders merged the inputs in is a fact it records, and
the monitor, which reads no clock and runs no timer, decides the same outputs again from it. ``install(...,
forward=False)`` (``tidemark.rerun``) runs the monitor on a copy of that log, without the forwarders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

import faust
from threadpoolctl import threadpool_limits

from core.settings import Settings
from streams.agents import (
    RAW,
    Answered,
    Event,
    agents_app_id,
    answer_batch,
    answer_once,
    input_log,
    install_forwarders,
)
from streams.risk.history import History
from streams.risk.limits import Limits, limits_from
from streams.risk.monitor import Models, Policy, RiskBook, compact, decide, held_symbols

log = logging.getLogger("tidemark.risk")

INPUTS: dict[str, dict[str, str | None]] = {
    "positions": {"tidemark.orders.PositionChanged": "position"},
    "md.bars.1d": {"tidemark.marketdata.BarClosed": "bar"},
    "md.bars.1m": {"tidemark.marketdata.BarClosed": "bar"},
    "broker.account": {"tidemark.broker.AccountReported": "account"},
    "strategies.performance": {"tidemark.strategies.StrategyPerformanceRecorded": "performance"},
    "strategies.lifecycle": {
        "tidemark.strategies.StrategyTransitioned": "lifecycle",
        "tidemark.strategies.TransitionRejected": None,
    },
    "risk.controls": {
        "tidemark.risk.TradingHalted": "halted",
        "tidemark.risk.TradingResumed": "resumed",
        "tidemark.risk.HaltTrading": None,  # the desk answers them
        "tidemark.risk.ResumeTrading": None,
    },
}
"""Per input topic: its event types and the kind each is forwarded as (None: ignored)."""
RECENT = 1024
BATCH = 500
BATCH_WITHIN_S = 0.01


def limits_of(settings: Settings) -> Limits:
    risk = settings.risk
    return limits_from(
        {
            "max_var": risk.max_var,
            "max_drawdown": risk.max_drawdown,
            "max_gross_leverage": risk.max_gross_leverage,
            "max_symbol_exposure": risk.max_symbol_exposure,
        },
        {
            "max_var": risk.strategy_max_var,
            "max_exposure": risk.strategy_max_exposure,
            "max_drawdown": risk.strategy_max_drawdown,
        },
        risk.strategy_limits,
    )


def policy_of(settings: Settings) -> Policy:
    risk = settings.risk
    return Policy(
        account=settings.portfolio.account,
        limits=limits_of(settings),
        method=risk.limit_method,
        level=risk.limit_level,
        lookback=risk.lookback_days,
        min_observations=risk.min_observations,
        paths=risk.paths,
        seed=risk.seed,
        measure_every_ns=int(risk.measure_every_s * 1e9),
        default_equity=settings.portfolio.capital,
        halt_on_breach=risk.halt_on_breach,
        flatten_on_breach=risk.flatten_on_breach,
        demote_on_breach=risk.demote_on_breach,
    )


def answer(
    entry: Mapping[str, Any] | None,
    record: Mapping[str, Any],
    policy: Policy,
    histories: MutableMapping[str, History],
    models: Models,
    store: MutableMapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[tuple[str, str, bytes]], bool]:
    """The table entry after ``record`` (its state a ``RiskBook``), its encoded events, and whether it was
    answered before."""

    def step(state: Any, record: Mapping[str, Any]) -> tuple[Any, list[Event]]:
        book = state if isinstance(state, RiskBook) else RiskBook.from_json(state)
        return book, decide(book, record, policy, histories, models)

    return answer_once(entry, record, step, RECENT, store=store)


def inputs_topic_name(settings: Settings) -> str:
    return f"{agents_app_id(settings)}-risk-inputs"


def install(app: faust.App, settings: Settings, *, forward: bool = True) -> None:
    """The risk agents and their tables on ``app``; without ``forward``, the monitor alone, folding an inputs topic
    filled by someone else (a re-run's copy of the live one)."""
    policy = policy_of(settings)
    account = policy.account
    inputs = input_log(app, inputs_topic_name(settings))
    outputs = {
        name: app.topic(settings.topic(name), **RAW)
        for name in ("risk.metrics", "risk.controls", "strategies.commands", "alerts")
    }
    schema = faust.Schema(key_serializer="json", value_serializer="json")
    table = app.Table("risk-book", partitions=1, schema=schema, use_partitioner=True)
    closes = app.Table("risk-closes", partitions=1, schema=schema, use_partitioner=True)
    answers = app.Table("risk-answers", partitions=1, schema=schema, use_partitioner=True)
    dlq = app.topic(settings.topic("dlq"), **RAW)
    models = Models()
    held: set[bytes] | None = None
    """Keys (symbols) of the held symbols, once the monitor has read its book: minute bars of other symbols are
    dropped before decoding (a market's worth of them a minute; the monitor needs a handful)."""

    def wanted(topic: str, key: bytes | None) -> bool:
        return topic != "md.bars.1m" or held is None or key in held

    if forward:
        install_forwarders(app, settings, inputs, INPUTS, "risk", account, compact, wanted)

    @app.agent(inputs, name="risk-monitor")
    async def monitor(stream: faust.StreamT[bytes]) -> None:
        """Inputs in batches, the book read and written once per batch, outputs sent after the write (as the
        execution desk). Closes are written to their own table per symbol as they come."""
        nonlocal held

        def answer_one(entry: dict[str, Any] | None, record: Mapping[str, Any]) -> Answered:
            return answer(entry, record, policy, closes, models, answers)

        async for batch in stream.take_events(BATCH, within=BATCH_WITHIN_S):
            # The products are small: on one BLAS thread they take a quarter of the time two busy threads take.
            with threadpool_limits(1, user_api="blas"):
                entry, changed, outgoing = await answer_batch(
                    batch, table.get(account), answer_one, dlq, "risk.monitor"
                )
            if changed and entry is not None:
                state = entry.get("state")
                table[account] = {**entry, "state": state.to_json()} if isinstance(state, RiskBook) else entry
            if entry is not None:
                book = entry["state"] if isinstance(entry["state"], RiskBook) else RiskBook.from_json(entry["state"])
                held = {symbol.encode() for symbol in held_symbols(book)}
            for topic, key, value in outgoing:
                await outputs[topic].send(key=key.encode(), value=value)
