"""The lifecycle agents: candidates in, commands out; commands in, transitions or rejections out.

- ``candidates``: a discovered candidate asks for three moves of its strategy, as commands with ids derived from
  the candidate's: into Discovery, on to Validation (the candidate is the evidence), and on to Paper with the
  gates' figures. The state machine decides each; a candidate that failed a gate stays in Validation with the
  rejection saying which.
- ``lifecycle``: decides each command against the strategy's state in the table and publishes the one event that
  answers it. The table keeps, per strategy, the state and the answers to its recent commands: a command seen
  again (redelivered after a crash, at least once) gets its recorded answer again, byte for byte, and is never
  decided against a state it has already moved.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any

import faust

from core.events import alert_record, common_fields, deterministic_event_id
from core.settings import Settings
from schemas.catalogue import KEYED_PARTITIONS
from schemas.codec import DecodeError, get_registry
from streams.agents import RAW, dead_letter
from streams.lifecycle.machine import (
    Rules,
    State,
    Strategy,
    StrategyTransitioned,
    TransitionRejected,
    TransitionStrategy,
    decide,
    evolve,
)

log = logging.getLogger("tidemark.lifecycle")

COMMAND_SCHEMA = "tidemark.strategies.TransitionStrategy"
TRANSITIONED_SCHEMA = "tidemark.strategies.StrategyTransitioned"
REJECTED_SCHEMA = "tidemark.strategies.TransitionRejected"
CANDIDATE_SCHEMA = "tidemark.strategies.StrategyCandidateDiscovered"
ALERT_SCHEMA = "tidemark.risk.AlertRaised"
SOURCE = "lifecycle-agent"
RECENT = 256
"""Answers remembered per strategy: more than a redelivery can span (commands since the last committed offset)."""


def rules_of(settings: Settings) -> Rules:
    gates, lifecycle = settings.discovery, settings.lifecycle
    return Rules(
        min_dsr=gates.min_dsr,
        max_pbo=gates.max_pbo,
        min_oos_sharpe=gates.min_oos_sharpe,
        max_parameters=gates.max_parameters,
        min_paper_sessions=lifecycle.min_paper_sessions,
        paper_sharpe_band=lifecycle.paper_sharpe_band,
        max_tracking_error=lifecycle.max_tracking_error,
        retire_window_sessions=lifecycle.retire_window_sessions,
        retire_below_sharpe=lifecycle.retire_below_sharpe,
    )


def candidate_commands(candidate: Mapping[str, Any], ts_ns: int) -> list[dict[str, Any]]:
    """The three commands a candidate asks for, with ids derived from its event id."""
    sid = candidate["strategy_id"]
    steps = [
        (State.DISCOVERY, "discovered", {"task_id": candidate["task_id"]}),
        (State.VALIDATION, "candidate evidence arrived", {"candidate_id": candidate["event_id"]}),
        (
            State.PAPER,
            "discovery gates " + ("passed" if candidate["passed"] else "failed: " + "; ".join(candidate["rejections"])),
            {
                "candidate_id": candidate["event_id"],
                "dsr": repr(candidate["deflated_sharpe"]),
                "pbo": repr(candidate["pbo"]),
                "oos_sharpe": repr(candidate["sharpe_out_of_sample"]),
                "parameters": str(candidate["complexity"] + 1),
            },
        ),
    ]
    return [
        {
            **common_fields(
                SOURCE,
                ts_ns,
                candidate["event_id"],
                deterministic_event_id("lifecycle-command", candidate["event_id"], step),
            ),
            "strategy_id": sid,
            "expected_version": step,
            "target_state": target.value,
            "reason": reason,
            "evidence": evidence,
            "requested_by": SOURCE,
        }
        for step, (target, reason, evidence) in enumerate(steps)
    ]


def command_of(record: Mapping[str, Any]) -> TransitionStrategy:
    return TransitionStrategy(
        record["event_id"],
        record["strategy_id"],
        record["expected_version"],
        State(record["target_state"]),
        record["reason"],
        record["requested_by"],
        record["ts_event"],
        dict(record["evidence"]),
    )


def record_of(outcome: StrategyTransitioned | TransitionRejected) -> tuple[str, dict[str, Any]]:
    """The Avro schema and record of a decided event."""
    if isinstance(outcome, StrategyTransitioned):
        return TRANSITIONED_SCHEMA, {
            **common_fields(SOURCE, outcome.ts_ns, outcome.causation_id, outcome.event_id),
            "strategy_id": outcome.strategy_id,
            "from_state": outcome.from_state.value if outcome.from_state is not None else None,
            "to_state": outcome.to_state.value,
            "version": outcome.version,
            "reason": outcome.reason,
            "evidence": dict(outcome.evidence),
            "requested_by": outcome.requested_by,
        }
    return REJECTED_SCHEMA, {
        **common_fields(SOURCE, outcome.ts_ns, outcome.causation_id, outcome.event_id),
        "strategy_id": outcome.strategy_id,
        "expected_version": outcome.expected_version,
        "current_version": outcome.current_version,
        "current_state": outcome.current_state.value if outcome.current_state is not None else None,
        "target_state": outcome.target.value,
        "reason": outcome.reason,
        "requested_by": outcome.requested_by,
    }


def transition_alert(transition: Mapping[str, Any]) -> dict[str, Any]:
    """The announcement of a transition for people (alerts topic, then Redis pub/sub by the sink): its id derives
    from the transition's, so an answer sent again announces nothing new."""
    sid, source, target = transition["strategy_id"], transition["from_state"], transition["to_state"]
    return alert_record(
        SOURCE,
        transition["ts_event"],
        transition["event_id"],
        deterministic_event_id("lifecycle-alert", transition["event_id"]),
        "lifecycle.transition",
        "WARNING" if target == State.RETIRED.value else "INFO",
        sid,
        f"{sid}: {source or '-'} -> {target} (version {transition['version']}): {transition['reason']}",
        {
            "from_state": source or "",
            "to_state": target,
            "version": str(transition["version"]),
            "requested_by": transition["requested_by"],
        },
    )


def strategy_of(entry: Mapping[str, Any] | None, strategy_id: str) -> Strategy | None:
    if not entry or entry.get("state") is None:
        return None
    return Strategy(strategy_id, State(entry["state"]), int(entry["version"]), int(entry["since_ns"]))


def answer(
    entry: Mapping[str, Any] | None, record: Mapping[str, Any], rules: Rules
) -> tuple[dict[str, Any], bytes, bool]:
    """The table entry after ``record`` (a command), the encoded event that answers it, and whether the command
    was answered before (its recorded answer, then, and the entry unchanged)."""
    entry = dict(entry or {"state": None, "version": 0, "since_ns": 0, "recent": {}})
    recent: dict[str, str] = dict(entry["recent"])
    if record["event_id"] in recent:
        return entry, base64.b64decode(recent[record["event_id"]]), True
    strategy = strategy_of(entry, record["strategy_id"])
    outcome = decide(strategy, command_of(record), rules)
    schema, event = record_of(outcome)
    value = get_registry().encode(schema, event)
    if isinstance(outcome, StrategyTransitioned):
        moved = evolve(strategy, outcome)
        entry.update(state=moved.state.value, version=moved.version, since_ns=moved.since_ns)
    recent[record["event_id"]] = base64.b64encode(value).decode()
    entry["recent"] = dict(list(recent.items())[-RECENT:])
    return entry, value, False


def install(app: faust.App, settings: Settings) -> None:
    """The lifecycle agents and their table on ``app``."""
    registry = get_registry()
    rules = rules_of(settings)
    pause_after = settings.lifecycle.pause_after_commands
    candidates = app.topic(settings.topic("strategies.candidates"), **RAW)
    commands = app.topic(settings.topic("strategies.commands"), **RAW)
    lifecycle = app.topic(settings.topic("strategies.lifecycle"), **RAW)
    alerts = app.topic(settings.topic("alerts"), **RAW)
    dlq = app.topic(settings.topic("dlq"), **RAW)
    table = app.Table(
        "lifecycle-state",
        partitions=KEYED_PARTITIONS,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
    )
    answered = 0

    @app.agent(candidates, name="lifecycle-candidates")
    async def from_candidates(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                candidate = registry.decode_as(CANDIDATE_SCHEMA, event.value)
            except DecodeError as exc:
                await dead_letter(dlq, event, "lifecycle.candidates", exc)
                continue
            for command in candidate_commands(candidate, candidate["ts_event"]):
                await commands.send(key=command["strategy_id"].encode(), value=registry.encode(COMMAND_SCHEMA, command))

    @app.agent(commands, name="lifecycle-commands")
    async def decide_commands(stream: faust.StreamT[bytes]) -> None:
        nonlocal answered
        async for event in stream.events():
            try:
                record = registry.decode_as(COMMAND_SCHEMA, event.value)
            except DecodeError as exc:
                await dead_letter(dlq, event, "lifecycle.commands", exc)
                continue
            sid = record["strategy_id"]
            entry, value, again = answer(table.get(sid), record, rules)
            if again:
                log.info("lifecycle: command %s for %s answered again, as recorded", record["event_id"], sid)
            else:
                table[sid] = entry
            await lifecycle.send(key=sid.encode(), value=value)
            decided = registry.decode(value)
            if decided.schema == TRANSITIONED_SCHEMA:
                await alerts.send(
                    key=sid.encode(), value=registry.encode(ALERT_SCHEMA, transition_alert(decided.record))
                )
            answered += 1
            if pause_after and answered >= pause_after:
                await app.producer.flush()  # the table's changelog is written: the kill lands after it
                log.warning("lifecycle agent: paused after %d commands (fault drill)", answered)
                await app.sleep(3600 * 24)
