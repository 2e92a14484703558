"""The lifecycle state machine: every allowed and every forbidden transition, each gate, versions and replays."""

from __future__ import annotations

import itertools
import json

import pytest

from streams.lifecycle.machine import (
    AUTOMATIC_RETIREMENT,
    Rules,
    State,
    Strategy,
    StrategyTransitioned,
    TransitionRejected,
    TransitionStrategy,
    VersionGap,
    allowed,
    decide,
    evolve,
)

RULES = Rules()
PASSING = {
    State.VALIDATION: {"candidate_id": "0b8f6a0e-7c1e-5d7e-9c1a-3f1f6a0e7c1e"},
    State.PAPER: {"dsr": "0.99", "pbo": "0.05", "oos_sharpe": "1.8", "parameters": "3"},
    State.LIVE: {
        "paper_sessions": "25",
        "paper_sharpe": "1.5",
        "backtest_sharpe": "1.8",
        "backtest_sharpe_se": "0.5",
        "tracking_error": "0.04",
    },
}
ALLOWED = {
    (None, State.DISCOVERY),
    (State.DISCOVERY, State.VALIDATION),
    (State.DISCOVERY, State.RETIRED),
    (State.VALIDATION, State.PAPER),
    (State.VALIDATION, State.RETIRED),
    (State.PAPER, State.LIVE),
    (State.PAPER, State.RETIRED),
    (State.LIVE, State.PAPER),
    (State.LIVE, State.RETIRED),
}


def at(state: State | None, version: int = 3) -> Strategy | None:
    return None if state is None else Strategy("momentum-SPY", state, version, 1)


def command(
    target: State, version: int = 3, evidence: dict[str, str] | None = None, reason: str = "because", cid: str = "c1"
) -> TransitionStrategy:
    figures = PASSING.get(target, {}) if evidence is None else evidence
    return TransitionStrategy(cid, "momentum-SPY", version, target, reason, "test", 10, figures)


@pytest.mark.parametrize(("source", "target"), list(itertools.product([None, *State], State)))
def test_every_pair_of_states_is_allowed_or_refused_as_the_table_says(source: State | None, target: State) -> None:
    version = 0 if source is None else 3
    outcome = decide(at(source), command(target, version), RULES)
    assert allowed(source, target) == ((source, target) in ALLOWED)
    if (source, target) in ALLOWED:
        assert isinstance(outcome, StrategyTransitioned)
        assert (outcome.from_state, outcome.to_state, outcome.version) == (source, target, version + 1)
        assert json.loads(outcome.evidence["rule"])["name"]
        after = evolve(at(source), outcome)
        assert (after.state, after.version, after.since_ns) == (target, version + 1, 10)
    else:
        assert isinstance(outcome, TransitionRejected)
        assert outcome.reason.startswith("no transition from")
        assert (outcome.current_state, outcome.target) == (source, target)


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"dsr": "0.90"}, "DSR 0.90 < 0.95"),
        ({"pbo": "0.20"}, "PBO 0.20 >= 0.20"),
        ({"oos_sharpe": "0.99"}, "OOS net Sharpe 0.99 < 1.00"),
        ({"parameters": "6"}, "6 parameters > 5"),
        ({"dsr": "nan"}, "evidence dsr is NaN"),
        ({"pbo": "high"}, "evidence pbo='high' is not a number"),
    ],
)
def test_validation_to_paper_needs_every_discovery_gate(changed: dict[str, str], reason: str) -> None:
    outcome = decide(at(State.VALIDATION), command(State.PAPER, evidence={**PASSING[State.PAPER], **changed}), RULES)
    assert isinstance(outcome, TransitionRejected) and outcome.reason == reason
    assert (outcome.current_state, outcome.current_version) == (State.VALIDATION, 3)


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"paper_sessions": "19"}, "19 paper sessions < 20"),
        ({"paper_sharpe": "0.7"}, "paper Sharpe 0.70 outside the backtest's [0.80, 2.80]"),
        ({"paper_sharpe": "3.0"}, "paper Sharpe 3.00 outside the backtest's [0.80, 2.80]"),  # too good is a bug
        ({"tracking_error": "0.2"}, "tracking error 0.200 > 0.1"),
    ],
)
def test_paper_to_live_needs_a_paper_period_consistent_with_the_backtest(changed: dict[str, str], reason: str) -> None:
    outcome = decide(at(State.PAPER), command(State.LIVE, evidence={**PASSING[State.LIVE], **changed}), RULES)
    assert isinstance(outcome, TransitionRejected) and outcome.reason == reason


def test_several_failed_gates_are_all_named() -> None:
    evidence = {**PASSING[State.PAPER], "dsr": "0.5", "parameters": "7"}
    outcome = decide(at(State.VALIDATION), command(State.PAPER, evidence=evidence), RULES)
    assert isinstance(outcome, TransitionRejected) and outcome.reason == "DSR 0.50 < 0.95; 7 parameters > 5"


def test_a_missing_figure_is_named() -> None:
    outcome = decide(at(State.VALIDATION), command(State.PAPER, evidence={"dsr": "0.99"}), RULES)
    assert isinstance(outcome, TransitionRejected) and outcome.reason == "evidence lacks pbo"
    unvalidated = decide(at(State.DISCOVERY), command(State.VALIDATION, evidence={}), RULES)
    assert isinstance(unvalidated, TransitionRejected) and unvalidated.reason == "evidence lacks candidate_id"


@pytest.mark.parametrize(
    ("source", "sessions", "sharpe", "reason"),
    [
        (State.LIVE, "60", "-0.4", None),
        (State.LIVE, "59", "-0.4", "59 sessions < 60"),
        (State.LIVE, "60", "0.1", "trailing Sharpe 0.10 >= 0.0"),
        (State.PAPER, "60", "-0.4", "only a live strategy retires by rule, not a PAPER"),
    ],
)
def test_retirement_by_rule_needs_sixty_sessions_below_the_threshold(
    source: State, sessions: str, sharpe: str, reason: str | None
) -> None:
    evidence = {"rule": AUTOMATIC_RETIREMENT, "trailing_sessions": sessions, "trailing_sharpe": sharpe}
    outcome = decide(at(source), command(State.RETIRED, evidence=evidence, reason="underperformed"), RULES)
    if reason is None:
        assert isinstance(outcome, StrategyTransitioned)
        assert json.loads(outcome.evidence["rule"]) == {
            "below_sharpe": 0.0,
            "name": AUTOMATIC_RETIREMENT,
            "window_sessions": 60,
        }
    else:
        assert isinstance(outcome, TransitionRejected) and outcome.reason == reason


def test_a_person_retires_a_strategy_with_a_reason_and_not_without() -> None:
    assert isinstance(
        decide(at(State.LIVE), command(State.RETIRED, reason="mandate ended"), RULES), StrategyTransitioned
    )
    refused = decide(at(State.LIVE), command(State.RETIRED, reason="  "), RULES)
    assert isinstance(refused, TransitionRejected) and refused.reason == "no reason given"


def test_the_thresholds_come_from_the_rules_and_travel_in_the_event() -> None:
    strict = Rules(min_dsr=0.999)
    assert isinstance(decide(at(State.VALIDATION), command(State.PAPER), strict), TransitionRejected)
    moved = decide(at(State.VALIDATION), command(State.PAPER), Rules(min_dsr=0.5))
    assert isinstance(moved, StrategyTransitioned) and json.loads(moved.evidence["rule"])["min_dsr"] == 0.5
    assert moved.evidence["dsr"] == "0.99"  # the figures that justified it, beside the rule


@pytest.mark.parametrize(("expected", "current"), [(2, 3), (4, 3), (1, 0)])
def test_a_command_against_another_version_is_refused(expected: int, current: int) -> None:
    strategy = at(State.VALIDATION, current) if current else None
    outcome = decide(strategy, command(State.PAPER if current else State.DISCOVERY, expected), RULES)
    assert isinstance(outcome, TransitionRejected)
    assert outcome.reason == f"expected version {expected}, the strategy is at version {current}"


def test_the_same_command_decides_the_same_event_and_folds_in_once() -> None:
    first = decide(at(State.VALIDATION), command(State.PAPER, cid="cmd-7"), RULES)
    again = decide(at(State.VALIDATION), command(State.PAPER, cid="cmd-7"), RULES)
    other = decide(at(State.VALIDATION), command(State.PAPER, cid="cmd-8"), RULES)
    assert isinstance(first, StrategyTransitioned) and first == again and first.event_id != other.event_id
    assert first.causation_id == "cmd-7"
    once = evolve(at(State.VALIDATION), first)
    assert evolve(once, first) == once  # redelivered: already applied


def test_a_fold_that_skips_a_version_fails_loudly() -> None:
    moved = decide(at(State.VALIDATION), command(State.PAPER), RULES)
    assert isinstance(moved, StrategyTransitioned)
    with pytest.raises(VersionGap, match="version 4 after 1"):
        evolve(at(State.VALIDATION, 1), moved)
    with pytest.raises(VersionGap):
        evolve(None, moved)


def test_a_strategy_folded_from_its_history_is_where_the_last_event_left_it() -> None:
    path = [State.DISCOVERY, State.VALIDATION, State.PAPER, State.LIVE, State.PAPER, State.LIVE, State.RETIRED]
    strategy = None
    for step, target in enumerate(path):
        outcome = decide(strategy, command(target, step, cid=f"c{step}"), RULES)
        assert isinstance(outcome, StrategyTransitioned), outcome
        strategy = evolve(strategy, outcome)
    assert strategy == Strategy("momentum-SPY", State.RETIRED, len(path), 10)
