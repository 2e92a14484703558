"""The portfolio's book and the agent's decisions, without Kafka: priors blended with live returns, who can be weighed,
exposures within buying power, correlation breaches, rotations, and the same answer for a redelivered input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.events import deterministic_event_id
from core.settings import Settings
from schemas.codec import get_registry
from streams.portfolio.agent import answer, policy_of
from streams.portfolio.book import (
    Book,
    Correlation,
    aligned_returns,
    apply_account,
    apply_candidate,
    apply_performance,
    apply_transition,
    breaches,
    constraints_of,
    correlation,
    eligible,
    expected_returns,
    rotation,
    targets,
)
from streams.portfolio.frontier import frontier, highest_return
from streams.portfolio.optimiser import Constraints, Objective, TooFewStrategies

DAY = 86_400 * 10**9


def candidate(sid: str, sharpe: float = 1.5, se: float | None = 0.5, benchmark: float | None = 0.5) -> dict[str, Any]:
    return {
        "kind": "candidate",
        "event_id": deterministic_event_id("c", sid),
        "ts_event": 1,
        "strategy_id": sid,
        "symbols": [f"{sid}-X", "SPY"],
        "sharpe_out_of_sample": sharpe,
        "sharpe_out_of_sample_se": se,
        "dsr_benchmark": benchmark,
        "annual_volatility": 0.1,
    }


def performance(sid: str, day: int, value: float, positions: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "kind": "performance",
        "event_id": deterministic_event_id("p", sid, day),
        "ts_event": day * DAY,
        "strategy_id": sid,
        "period_end_ns": day * DAY,
        "period_return": value,
        "positions": positions if positions is not None else {f"{sid}-X": 0.5, "SPY": -0.25},
    }


def transition(sid: str, to: str, version: int, before: str | None = "PAPER") -> dict[str, Any]:
    return {
        "kind": "transition",
        "event_id": deterministic_event_id("t", sid, version),
        "ts_event": 10**18 + version,
        "strategy_id": sid,
        "from_state": before,
        "to_state": to,
        "version": version,
    }


def book_of(count: int, sessions: int = 60, seed: int = 3, live: int | None = None) -> Book:
    rng = np.random.default_rng(seed)
    book = Book()
    for i in range(count):
        sid = f"s{i}"
        apply_candidate(book, candidate(sid), 252)
        for day in range(sessions):
            apply_performance(book, performance(sid, day, float(rng.normal(0.0006, 0.01))), 252)
        if live is None or i < live:
            apply_transition(book, transition(sid, "LIVE", 4))
    return book


@pytest.mark.parametrize(
    ("sharpe", "se", "benchmark", "realised_daily", "sessions", "expected"),
    [
        # prior 0.1 x max(0, 1.5 - 0.5) = 0.10, worth 252 / 0.5^2 = 1008 sessions
        (1.5, 0.5, 0.5, 0.001, 1008, (0.10 + 0.252) / 2),
        (1.5, 0.5, 0.5, 0.001, 3 * 1008, (0.10 + 3 * 0.252) / 4),
        # no standard error: the prior is worth one year
        (1.5, None, 0.5, 0.001, 252, (0.10 + 0.252) / 2),
        # no benchmark: nothing deflated
        (1.5, 0.5, None, 0.0, 1008, 0.15 / 2),
        # a benchmark above the estimate: the prior is 0, never negative
        (0.4, 0.5, 0.5, 0.001, 1008, 0.252 / 2),
    ],
)
def test_expected_returns_blend_the_deflated_prior_and_the_live_mean_by_precision(
    sharpe: float, se: float | None, benchmark: float | None, realised_daily: float, sessions: int, expected: float
) -> None:
    book = Book()
    apply_candidate(book, candidate("a", sharpe, se, benchmark), 252)
    returns = pd.DataFrame({"a": np.full(sessions, realised_daily)})
    assert expected_returns(book, returns, 252)["a"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        ("PAPER", "LIVE", "rotation: s promoted to LIVE"),
        ("LIVE", "RETIRED", "rotation: s retired (was LIVE)"),
        ("LIVE", "PAPER", "rotation: s moved to PAPER (was LIVE)"),
        ("PAPER", "RETIRED", None),
        ("VALIDATION", "PAPER", None),
    ],
)
def test_only_moves_into_or_out_of_live_are_rotations(before: str, after: str, reason: str | None) -> None:
    assert rotation("s", (before, after)) == reason
    assert rotation("s", None) is None


def test_inputs_applied_twice_leave_the_book_as_once() -> None:
    once, twice = Book(), Book()
    inputs = [candidate("a"), performance("a", 1, 0.01), performance("a", 0, 0.02), transition("a", "LIVE", 4)]
    for record in inputs:
        for book, times in ((once, 1), (twice, 2)):
            for _ in range(times):
                {"candidate": lambda b, r: apply_candidate(b, r, 252), "transition": apply_transition}.get(
                    record["kind"], lambda b, r: apply_performance(b, r, 252)
                )(book, record)
    assert once.to_json() == twice.to_json()
    assert apply_transition(once, transition("a", "LIVE", 3)) is None  # an older version changes nothing
    strategy = once.strategies["a"]
    assert strategy.positions_end_ns == DAY and strategy.performance_id == performance("a", 1, 0.01)["event_id"]
    assert Book.from_json(once.to_json()) == once


def test_the_latest_account_report_wins() -> None:
    book = Book()
    apply_account(book, {"event_id": "b", "ts_event": 2, "buying_power": "50", "equity": "40"})
    apply_account(book, {"event_id": "a", "ts_event": 1, "buying_power": "10", "equity": "10"})
    assert book.account is not None and book.account.event_id == "b"


@pytest.mark.parametrize(
    ("change", "weighable"),
    [
        ("nothing", ["s0", "s1"]),
        ("no candidate", ["s1"]),
        ("too few sessions", ["s1"]),
        ("not live", ["s1"]),
    ],
)
def test_who_can_be_weighed(change: str, weighable: list[str]) -> None:
    book = book_of(2, sessions=30)
    s0 = book.strategies["s0"]
    if change == "no candidate":
        s0.prior_return = None
    elif change == "too few sessions":
        s0.returns = dict(list(s0.returns.items())[:19])
    elif change == "not live":
        s0.state = "PAPER"
    assert eligible(book, 20) == weighable


def test_returns_align_on_the_sessions_every_strategy_has() -> None:
    book = book_of(2, sessions=30)
    del book.strategies["s1"].returns[5 * DAY]
    frame = aligned_returns(book, ["s0", "s1"], 20)
    assert len(frame) == 20 and 5 * DAY not in frame.index and frame.index[-1] == 29 * DAY


@pytest.mark.parametrize(
    ("buying_power", "scaled"),
    [(None, False), (1_000_000.0, False), (50_000.0, True)],
)
def test_targets_weights_capped_exposures_follow_positions_within_buying_power(
    buying_power: float | None, scaled: bool
) -> None:
    book = book_of(6)
    found = targets(book, Constraints(), Objective.MAX_SHARPE, 100_000.0, buying_power, 252, 20)
    assert len(found.weights) >= 5 and max(found.weights.values()) <= 0.5 + 1e-9
    assert sum(found.weights.values()) <= 1 + 1e-9
    expected = {"SPY": -0.25 * sum(found.weights.values())} | {f"{s}-X": 0.5 * w for s, w in found.weights.items()}
    assert found.exposures == pytest.approx(expected)
    gross = sum(abs(e) for e in found.exposures.values()) * found.capital
    assert found.scaled is scaled
    assert gross == pytest.approx(buying_power) if scaled else found.capital == 100_000.0
    assert found.sharpe_se == pytest.approx(np.sqrt((1 + found.sharpe**2 / 252 / 2) / 59 * 252))
    assert found.diversification_ratio > 1
    assert set(found.inputs) >= {book.strategies[s].transition_id for s in found.weights}


@pytest.mark.parametrize(("live", "sessions"), [(4, 60), (6, 10)])
def test_too_few_strategies_say_why(live: int, sessions: int) -> None:
    with pytest.raises(TooFewStrategies, match="a portfolio needs at least 5"):
        targets(book_of(6, sessions=sessions, live=live), Constraints(), Objective.MAX_SHARPE, 1e5, None, 252, 20)


def test_breaches_are_pairs_of_held_strategies_above_the_threshold() -> None:
    matrix = np.array([[1.0, 0.9, 0.85], [0.9, 1.0, 0.2], [0.85, 0.2, 1.0]])
    found = Correlation(["a", "b", "c"], matrix, 30, 0.65, 0.6, 1.2)
    assert breaches(found, ["a", "b", "c"], 0.8) == [("a", "b", 0.9), ("a", "c", 0.85)]
    assert breaches(found, ["a", "c"], 0.8) == [("a", "c", 0.85)]
    assert breaches(found, ["a", "b"], 0.95) == []


def test_correlation_against_numpy() -> None:
    frame = aligned_returns(book_of(4), ["s0", "s1", "s2", "s3"], 252)
    found = correlation(frame)
    assert found.matrix == pytest.approx(np.corrcoef(frame.to_numpy(), rowvar=False))
    assert found.upper_triangle() == pytest.approx(list(found.matrix[np.triu_indices(4, 1)]))
    assert found.eigen_share == pytest.approx(np.linalg.eigvalsh(found.matrix)[-1] / 4)


@pytest.mark.parametrize(
    ("bounds", "parsed"),
    [([], {}), (["a=0.1:0.3", " b = 0:0.2"], {"a": (0.1, 0.3), "b": (0.0, 0.2)})],
)
def test_user_bounds_from_settings(bounds: list[str], parsed: dict[str, tuple[float, float]]) -> None:
    assert dict(constraints_of(bounds, 0.5, 5, 252).bounds) == parsed


def test_a_bound_that_is_not_id_low_high_is_refused() -> None:
    with pytest.raises(ValueError, match="ID=LOW:HIGH"):
        constraints_of(["a=0.1"], 0.5, 5, 252)


def decoded(events: list[tuple[str, str, bytes]]) -> list[tuple[str, dict[str, Any]]]:
    return [(topic, get_registry().decode(value).record) for topic, _, value in events]


def test_the_agent_rotates_says_why_once_when_too_few_and_answers_a_redelivered_input_as_before() -> None:
    policy = policy_of(Settings())
    entry: dict[str, Any] | None = None
    rng = np.random.default_rng(5)
    for i in range(6):
        for record in [candidate(f"s{i}")] + [
            performance(f"s{i}", d, float(rng.normal(5e-4, 0.01))) for d in range(40)
        ]:
            entry, events, _ = answer(entry, record, policy)
            assert not events  # not live yet: nothing to weigh
    outcomes = []
    for i in range(6):
        entry, events, _ = answer(entry, transition(f"s{i}", "LIVE", 4), policy)
        outcomes.append([(t, e.get("kind", "targets")) for t, e in decoded(events)])
    too_few = [("alerts", "portfolio.too_few_strategies")]
    rotated = [("portfolio.targets", "targets"), ("alerts", "portfolio.rotation")]
    assert outcomes == [too_few] * 4 + [rotated] * 2
    retire = transition("s0", "RETIRED", 5, "LIVE")
    entry, events, again = answer(entry, retire, policy)
    (_, targets_event), (_, alert) = decoded(events)
    assert not again and targets_event["reason"] == "rotation: s0 retired (was LIVE)"
    assert targets_event["causation_id"] == retire["event_id"] == alert["causation_id"]
    assert [w["strategy_id"] for w in targets_event["weights"]] == ["s1", "s2", "s3", "s4", "s5"]
    assert targets_event["buying_power"] is None and targets_event["capital"] == "100000.00"
    again_entry, replayed, again = answer(entry, retire, policy)
    assert again and replayed == events and again_entry == entry
    # A refresh with nothing changed: the correlation snapshot, no new targets (no weight moved past the band).
    entry, events, _ = answer(entry, {"kind": "refresh", "event_id": "r", "ts_event": 10**19}, policy)
    assert [t for t, _ in decoded(events)] == ["analytics.correlations"]
    # Down to four live strategies: the portfolio stays as it was, said once.
    entry, events, _ = answer(entry, transition("s1", "RETIRED", 5, "LIVE"), policy)
    assert [e["kind"] for _, e in decoded(events)] == ["portfolio.too_few_strategies"]
    assert "the portfolio stays as it was: 4 live strategies" in decoded(events)[0][1]["message"]
    entry, events, _ = answer(entry, performance("s2", 41, 0.001), policy)
    assert events == []


def test_a_portfolio_refused_for_too_few_common_sessions_is_built_once_they_share_enough() -> None:
    """Each strategy has its sessions, not yet the same ones: the set of weighable strategies does not change when the
    last common session arrives, and the portfolio must be built then (not at the next timer refresh)."""
    policy = policy_of(Settings())
    need, count = policy.min_sessions, policy.constraints.min_strategies
    entry: dict[str, Any] | None = None
    rng = np.random.default_rng(7)
    # s0 has sessions 1..need, the others 0..need-1: need apiece, need - 1 in common.
    for i in range(count):
        days = range(1, need + 1) if i == 0 else range(need)
        for record in [candidate(f"s{i}")] + [performance(f"s{i}", d, float(rng.normal(5e-4, 0.01))) for d in days]:
            entry, events, _ = answer(entry, record, policy)
        entry, events, _ = answer(entry, transition(f"s{i}", "LIVE", 4), policy)
    ((_, refused),) = decoded(events)
    assert refused["kind"] == "portfolio.too_few_strategies"
    assert f"{count} with a candidate and {need}+ sessions of returns ({need - 1} in common)" in refused["message"]
    # Sessions that leave the common count short change nothing, and say nothing again.
    entry, events, _ = answer(entry, performance("s1", need + 1, 0.001), policy)
    assert events == []
    for i in range(1, count - 1):
        entry, events, _ = answer(entry, performance(f"s{i}", need, 0.001), policy)
        assert events == []
    entry, events, _ = answer(entry, performance(f"s{count - 1}", need, 0.001), policy)
    (topic, built), (_, alert) = decoded(events)
    assert topic == "portfolio.targets" and built["reason"] == f"the weighable strategies share {need} sessions now"
    assert len(built["weights"]) >= 1 and alert["kind"] == "portfolio.rebalance"
    # Built: a later session is no reason to re-optimise.
    entry, events, _ = answer(entry, performance("s0", need + 1, 0.001), policy)
    assert events == []


@pytest.mark.parametrize(
    ("mu", "bounds", "expected"),
    [
        ([0.1, 0.2, 0.3], [(0, 0.5)] * 3, 0.5 * 0.3 + 0.5 * 0.2),
        ([0.1, 0.2, 0.3], [(0.2, 0.5)] * 3, 0.2 * 0.1 + 0.3 * 0.2 + 0.5 * 0.3),
        ([0.3, 0.1], [(0, 1.0)] * 2, 0.3),
    ],
)
def test_highest_reachable_return(mu: list[float], bounds: list[tuple[float, float]], expected: float) -> None:
    assert highest_return(pd.Series(mu), bounds) == pytest.approx(expected)


def test_the_frontier_rises_with_volatility_under_the_cap() -> None:
    book = book_of(6)
    returns = aligned_returns(book, eligible(book, 20), 252)
    found = frontier(returns, expected_returns(book, returns, 252), Constraints(), points=15)
    assert len(found.points) >= 10 and set(found.assets) == set(returns.columns)
    vols, rets = zip(*found.points, strict=True)
    assert all(np.diff(rets) >= -1e-9) and all(np.diff(vols) >= -1e-6)
