"""The lifecycle agent (Faust) on the real broker: candidates become transitions or rejections, commands are
checked against versions, and an agent killed with kill -9 between answers loses none and applies none twice."""

from __future__ import annotations

import json
import os
import random
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from core.events import common_fields, deterministic_event_id
from core.settings import Settings
from schemas.codec import get_registry
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import fetch
from tests.services import eventually
from tests.unit.avro_samples import sample

pytestmark = pytest.mark.integration

AGENTS = ("agents", "--loglevel", "info")
CANDIDATE = "tidemark.strategies.StrategyCandidateDiscovered"
COMMAND = "tidemark.strategies.TransitionStrategy"


def candidate(number: int, passed: bool = True) -> dict[str, Any]:
    """A candidate of the discovery worker's shape; the figures the gates read are set, the rest sampled."""
    registry = get_registry()
    record = sample(registry.schema(CANDIDATE), random.Random(number))
    return {
        **record,
        **common_fields("test", 1_700_000_000_000_000_000 + number, "", deterministic_event_id("c", number)),
        "strategy_id": f"momentum-S{number}",
        "task_id": deterministic_event_id("task", number),
        "complexity": 2,
        "deflated_sharpe": 0.99 if passed else 0.5,
        "pbo": 0.05,
        "sharpe_out_of_sample": 1.8,
        "passed": passed,
        "rejections": [] if passed else ["deflated Sharpe ratio 0.50 < 0.95 over 320 trials"],
    }


def command(strategy: str, expected: int, target: str, reason: str, number: int) -> dict[str, Any]:
    return {
        **common_fields("test", 1_800_000_000_000_000_000 + number, "", deterministic_event_id("cmd", number)),
        "strategy_id": strategy,
        "expected_version": expected,
        "target_state": target,
        "reason": reason,
        "evidence": {},
        "requested_by": "tester@cli",
    }


def publish(settings: Settings, topic: str, records: list[tuple[str, dict[str, Any]]], raw: bytes = b"") -> None:
    registry = get_registry()
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for schema, record in records:
        producer.produce(settings.topic(topic), registry.encode(schema, record), record["strategy_id"].encode())
    if raw:
        producer.produce(settings.topic(topic), raw, b"momentum-S0")
    assert producer.flush(30) == 0


def lifecycle(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    registry = get_registry()
    return [
        (decoded.schema.rpartition(".")[2], decoded.record)
        for decoded in (
            registry.decode(v)
            for _, _, _, v in read_all(settings.kafka.bootstrap, settings.topic("strategies.lifecycle"))
        )
    ]


def published_alerts(settings: Settings) -> list[dict[str, Any]]:
    registry = get_registry()
    return [registry.decode(v).record for _, _, _, v in read_all(settings.kafka.bootstrap, settings.topic("alerts"))]


def states(events: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, int]]:
    """Each strategy's (state, version) by its latest transition."""
    latest: dict[str, tuple[str, int]] = {}
    for kind, event in events:
        if kind == "StrategyTransitioned" and event["version"] > latest.get(event["strategy_id"], ("", 0))[1]:
            latest[event["strategy_id"]] = (event["to_state"], event["version"])
    return latest


def _states_are(settings: Settings, expected: dict[str, tuple[str, int]]) -> bool:
    """As an assertion, so that a wait that runs out names what the topic held last."""
    found = states(lifecycle(settings))
    assert found == expected, f"the topic's latest transitions: {found}"
    return True


def test_candidates_enter_validation_and_paper_or_are_refused_with_the_reason_and_commands_check_versions(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    agent = start_worker(command=AGENTS)
    publish(isolated, "strategies.candidates", [(CANDIDATE, candidate(n, passed=n != 5)) for n in range(6)], b"junk")
    expected = {f"momentum-S{n}": ("PAPER", 3) for n in range(5)} | {"momentum-S5": ("VALIDATION", 2)}
    eventually(lambda: states(lifecycle(isolated)) == expected, timeout=120, interval=1, what="six strategies")
    rejected = [e for kind, e in lifecycle(isolated) if kind == "TransitionRejected"]
    assert [(e["strategy_id"], e["current_state"], e["target_state"], e["reason"]) for e in rejected] == [
        ("momentum-S5", "VALIDATION", "PAPER", "DSR 0.50 < 0.95")
    ]
    paper = next(e for k, e in lifecycle(isolated) if k == "StrategyTransitioned" and e["to_state"] == "PAPER")
    assert json.loads(paper["evidence"]["rule"])["name"] == "validation-gates" and paper["evidence"]["dsr"] == "0.99"

    # The projection (the worker's sink) answers the command line; a person retires one strategy through it.
    start_worker()
    eventually(
        lambda: len(fetch(isolated.postgres_dsn, "SELECT * FROM strategy_transitions")) == 18,
        timeout=120,
        what="every answer projected",
    )
    retired = run_cli("lifecycle", "retire", "momentum-S0", "--reason", "mandate ended")
    assert "momentum-S0: PAPER -> RETIRED (version 4)" in retired.stdout
    publish(isolated, "strategies.commands", [(COMMAND, command("momentum-S1", 1, "RETIRED", "stale view", 2))])
    stale = eventually(
        lambda: [e for k, e in lifecycle(isolated) if k == "TransitionRejected" and e["strategy_id"] == "momentum-S1"],
        timeout=60,
        what="the stale command refused",
    )
    assert stale[0]["reason"] == "expected version 1, the strategy is at version 3"
    eventually(
        lambda: (
            fetch(isolated.postgres_dsn, "SELECT state, version FROM strategy_states WHERE strategy_id = 'momentum-S0'")
            == [{"state": "RETIRED", "version": 4}]
        ),
        timeout=60,
        what="the state projected",
    )
    history = json.loads(run_cli("lifecycle", "history", "momentum-S5", "--json").stdout)
    assert [(h["to_state"], h["accepted"], h["reason"]) for h in history] == [
        ("DISCOVERY", True, "discovered"),
        ("VALIDATION", True, "candidate evidence arrived"),
        ("PAPER", False, "DSR 0.50 < 0.95"),
    ]
    refused = run_cli("lifecycle", "retire", "momentum-S0", "--reason", "again", check=False)
    assert refused.returncode == 1 and "refused: no transition from RETIRED to RETIRED" in refused.stderr
    # Every transition is announced once for people: 5 x 3, 2 for the refused one, the retirement.
    announced = [a for a in published_alerts(isolated) if a["kind"] == "lifecycle.transition"]
    assert len(announced) == len({a["event_id"] for a in announced}) == 18
    retirement = next(a for a in announced if a["details"]["to_state"] == "RETIRED")
    assert (retirement["subject"], retirement["severity"]) == ("momentum-S0", "WARNING")
    assert "PAPER -> RETIRED (version 4): mandate ended" in retirement["message"]
    dead = [get_registry().decode(v).record for _, _, _, v in read_all(isolated.kafka.bootstrap, isolated.topic("dlq"))]
    # The sink projects candidates too, and dead-letters the same record on its own account.
    assert ("lifecycle.candidates", "DecodeError") in {(d["processor"], d["error_type"]) for d in dead}
    assert agent.poll() is None


@pytest.mark.parametrize("answered", [2, 7, 13])
def test_an_agent_killed_between_answers_loses_no_transition_and_applies_none_twice(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path, answered: int
) -> None:
    """Six candidates ask 18 commands; the agent stops answering after ``answered`` of them (so the kill lands at a
    known point, between a table write and the offsets' commit) and is killed; a successor finishes."""
    run_cli("topics", "create")
    drill = start_worker(isolated.changed(lifecycle__pause_after_commands=answered), AGENTS)
    publish(isolated, "strategies.candidates", [(CANDIDATE, candidate(n)) for n in range(6)])
    eventually(
        lambda: f"paused after {answered} commands" in (tmp_path / "worker-0.log").read_text(),
        timeout=120,
        interval=1,
        what="the agent paused",
    )
    os.kill(drill.pid, signal.SIGKILL)
    drill.wait(timeout=30)
    start_worker(command=AGENTS)
    expected = {f"momentum-S{n}": ("PAPER", 3) for n in range(6)}
    eventually(lambda: _states_are(isolated, expected), timeout=180, interval=1, what="every transition")
    events = lifecycle(isolated)
    by_version: dict[tuple[str, int], set[str]] = defaultdict(set)
    answers: dict[str, set[str]] = defaultdict(set)
    for kind, event in events:
        answers[event["causation_id"]].add(event["event_id"])
        if kind == "StrategyTransitioned":
            by_version[(event["strategy_id"], event["version"])].add(event["event_id"])
    assert len(answers) == 18 and all(len(ids) == 1 for ids in answers.values())  # one answer per command
    assert sorted(by_version) == sorted((f"momentum-S{n}", v) for n in range(6) for v in (1, 2, 3))
    assert all(len(ids) == 1 for ids in by_version.values())  # no version applied twice
    assert not any(kind == "TransitionRejected" for kind, _ in events)  # a redelivered command was not re-decided
    announced = {a["event_id"]: a["causation_id"] for a in published_alerts(isolated)}
    transitioned = {e["event_id"] for k, e in events if k == "StrategyTransitioned"}
    assert len(announced) == 18 and set(announced.values()) == transitioned  # one announcement per transition
    assert "answered again, as recorded" in (tmp_path / "worker-1.log").read_text()  # the redelivery happened
