"""How the lifecycle agent answers a command (pure, without Faust): decided once, recorded, repeated as recorded."""

from __future__ import annotations

from typing import Any

import pytest

from core.events import common_fields, deterministic_event_id
from schemas.codec import get_registry
from streams.lifecycle import agent
from streams.lifecycle.agent import answer, candidate_commands
from streams.lifecycle.machine import Rules


def command(number: int, expected: int, target: str) -> dict[str, Any]:
    return {
        **common_fields("test", number, "", deterministic_event_id("cmd", number)),
        "strategy_id": "pairs-A-B",
        "expected_version": expected,
        "target_state": target,
        "reason": "why",
        "evidence": {},
        "requested_by": "test",
    }


def test_a_command_answered_again_gets_its_recorded_answer_even_after_the_state_moved_on() -> None:
    entry, first, again = answer(None, command(1, 0, "DISCOVERY"), Rules())
    assert not again and (entry["state"], entry["version"]) == ("DISCOVERY", 1)
    entry, _, _ = answer(entry, command(2, 1, "RETIRED"), Rules())
    replayed, repeated, again = answer(entry, command(1, 0, "DISCOVERY"), Rules())
    assert again and repeated == first and replayed == entry  # not decided against version 2: no rejection
    decoded = get_registry().decode(first)
    assert decoded.schema.endswith("StrategyTransitioned") and decoded.record["version"] == 1


def test_the_recorded_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "RECENT", 3)
    entry = None
    for number in range(5):  # the first enters discovery, the rest are refused (stale versions)
        entry, _, _ = answer(entry, command(number, 0, "DISCOVERY"), Rules())
    assert entry is not None and len(entry["recent"]) == 3
    assert list(entry["recent"]) == [deterministic_event_id("cmd", n) for n in (2, 3, 4)]


def test_a_candidate_asks_for_three_moves_with_ids_from_its_own() -> None:
    candidate = {
        "event_id": "00000000-0000-4000-8000-000000000009",
        "strategy_id": "momentum-X",
        "task_id": "t",
        "passed": False,
        "rejections": ["PBO 0.3 >= 0.2"],
        "deflated_sharpe": 0.97,
        "pbo": 0.3,
        "sharpe_out_of_sample": 1.2,
        "complexity": 1,
    }
    commands = candidate_commands(candidate, 5)
    assert [(c["expected_version"], c["target_state"]) for c in commands] == [
        (0, "DISCOVERY"),
        (1, "VALIDATION"),
        (2, "PAPER"),
    ]
    assert [c["event_id"] for c in commands] == [c["event_id"] for c in candidate_commands(candidate, 5)]
    assert commands[2]["evidence"] == {
        "candidate_id": candidate["event_id"],
        "dsr": "0.97",
        "pbo": "0.3",
        "oos_sharpe": "1.2",
        "parameters": "2",
    }
    assert commands[2]["reason"] == "discovery gates failed: PBO 0.3 >= 0.2"
    assert all(c["causation_id"] == candidate["event_id"] for c in commands)
