"""The strategy lifecycle as an event-sourced state machine: ``decide`` answers a command with one event (a
transition or a rejection) and ``evolve`` folds a transition into the state. Every rule lives here; the agent that
runs it only feeds commands in and publishes what comes out.

- A strategy's state is the fold of its ``StrategyTransitioned`` events; its version counts them.
- A command names the version it expects: a command issued against an older state is refused, never applied to a
  newer one (optimistic concurrency).
- Promotions are gated on evidence (figures carried by the command, as text, as on the wire); the rule that
  applied, thresholds included, goes into the event as JSON, so an audit shows why a move was allowed.
- Ids are deterministic from the command's id: a redelivered command yields the same event, and ``evolve`` ignores
  a transition it has already applied (version not newer), so applying one twice changes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from core.events import deterministic_event_id


class State(StrEnum):
    DISCOVERY = "DISCOVERY"
    VALIDATION = "VALIDATION"
    PAPER = "PAPER"
    LIVE = "LIVE"
    RETIRED = "RETIRED"


@dataclass(frozen=True)
class Rules:
    """Thresholds of the gates (settings in the agent); each transition event carries the ones it used."""

    min_dsr: float = 0.95
    max_pbo: float = 0.2
    min_oos_sharpe: float = 1.0
    max_parameters: int = 5
    min_paper_sessions: int = 20
    paper_sharpe_band: float = 2.0
    """Paper Sharpe must lie within this many standard errors of the backtest's out-of-sample Sharpe."""
    max_tracking_error: float = 0.10
    """Annualised volatility of paper minus backtest returns over the paper period."""
    retire_window_sessions: int = 60
    retire_below_sharpe: float = 0.0
    """Trailing net Sharpe over the window under which a live strategy retires (F003 FR-010)."""


@dataclass(frozen=True)
class Strategy:
    strategy_id: str
    state: State
    version: int
    since_ns: int


@dataclass(frozen=True)
class TransitionStrategy:
    """Command: move a strategy to ``target``; ``expected_version`` is 0 for a strategy not yet known."""

    command_id: str
    strategy_id: str
    expected_version: int
    target: State
    reason: str
    requested_by: str
    ts_ns: int
    evidence: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StrategyTransitioned:
    event_id: str
    causation_id: str
    strategy_id: str
    from_state: State | None
    to_state: State
    version: int
    reason: str
    evidence: Mapping[str, str]
    requested_by: str
    ts_ns: int


@dataclass(frozen=True)
class TransitionRejected:
    event_id: str
    causation_id: str
    strategy_id: str
    expected_version: int
    current_version: int | None
    current_state: State | None
    target: State
    reason: str
    requested_by: str
    ts_ns: int


class EvidenceMissing(ValueError):
    """A gate needs a figure the command did not carry (or carried as something other than a number)."""


AUTOMATIC_RETIREMENT = "trailing-performance"
"""``evidence["rule"]`` of a retirement the agent asks for by rule, which must then meet it."""

_SUCCESSORS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.DISCOVERY}),
    State.DISCOVERY: frozenset({State.VALIDATION, State.RETIRED}),
    State.VALIDATION: frozenset({State.PAPER, State.RETIRED}),
    State.PAPER: frozenset({State.LIVE, State.RETIRED}),
    State.LIVE: frozenset({State.PAPER, State.RETIRED}),
    State.RETIRED: frozenset(),
}


def allowed(source: State | None, target: State) -> bool:
    return target in _SUCCESSORS[source]


def _figure(evidence: Mapping[str, str], name: str) -> float:
    try:
        value = float(evidence[name])
    except KeyError:
        raise EvidenceMissing(f"evidence lacks {name}") from None
    except ValueError:
        raise EvidenceMissing(f"evidence {name}={evidence[name]!r} is not a number") from None
    if math.isnan(value):
        raise EvidenceMissing(f"evidence {name} is NaN")
    return value


def _failed(*checks: tuple[bool, str]) -> list[str]:
    """The texts of the checks that failed, in order."""
    return [text for bad, text in checks if bad]


def _gate(source: State | None, command: TransitionStrategy, rules: Rules) -> tuple[dict[str, object], list[str]]:
    """The rule for this move and what it finds wrong (empty: passed)."""
    evidence = command.evidence
    target = command.target
    if source is State.DISCOVERY and target is State.VALIDATION:
        rule: dict[str, object] = {"name": "candidate-arrived"}
        return rule, ([] if evidence.get("candidate_id") else ["evidence lacks candidate_id"])
    if source is State.VALIDATION and target is State.PAPER:
        dsr, pbo = _figure(evidence, "dsr"), _figure(evidence, "pbo")
        sharpe, parameters = _figure(evidence, "oos_sharpe"), _figure(evidence, "parameters")
        rule = {
            "name": "validation-gates",
            "min_dsr": rules.min_dsr,
            "max_pbo": rules.max_pbo,
            "min_oos_sharpe": rules.min_oos_sharpe,
            "max_parameters": rules.max_parameters,
        }
        failed = _failed(
            (dsr < rules.min_dsr, f"DSR {dsr:.2f} < {rules.min_dsr:.2f}"),
            (pbo >= rules.max_pbo, f"PBO {pbo:.2f} >= {rules.max_pbo:.2f}"),
            (sharpe < rules.min_oos_sharpe, f"OOS net Sharpe {sharpe:.2f} < {rules.min_oos_sharpe:.2f}"),
            (parameters > rules.max_parameters, f"{parameters:.0f} parameters > {rules.max_parameters}"),
        )
        return rule, failed
    if source is State.PAPER and target is State.LIVE:
        sessions = _figure(evidence, "paper_sessions")
        paper, backtest = _figure(evidence, "paper_sharpe"), _figure(evidence, "backtest_sharpe")
        error, tracking = _figure(evidence, "backtest_sharpe_se"), _figure(evidence, "tracking_error")
        rule = {
            "name": "paper-consistent-with-backtest",
            "min_paper_sessions": rules.min_paper_sessions,
            "paper_sharpe_band": rules.paper_sharpe_band,
            "max_tracking_error": rules.max_tracking_error,
        }
        low, high = backtest - rules.paper_sharpe_band * error, backtest + rules.paper_sharpe_band * error
        failed = _failed(
            (sessions < rules.min_paper_sessions, f"{sessions:.0f} paper sessions < {rules.min_paper_sessions}"),
            (not low <= paper <= high, f"paper Sharpe {paper:.2f} outside the backtest's [{low:.2f}, {high:.2f}]"),
            (tracking > rules.max_tracking_error, f"tracking error {tracking:.3f} > {rules.max_tracking_error}"),
        )
        return rule, failed
    if target is State.RETIRED and evidence.get("rule") == AUTOMATIC_RETIREMENT:
        sessions, sharpe = _figure(evidence, "trailing_sessions"), _figure(evidence, "trailing_sharpe")
        rule = {
            "name": AUTOMATIC_RETIREMENT,
            "window_sessions": rules.retire_window_sessions,
            "below_sharpe": rules.retire_below_sharpe,
        }
        failed = _failed(
            (source is not State.LIVE, f"only a live strategy retires by rule, not a {source}"),
            (sessions < rules.retire_window_sessions, f"{sessions:.0f} sessions < {rules.retire_window_sessions}"),
            (sharpe >= rules.retire_below_sharpe, f"trailing Sharpe {sharpe:.2f} >= {rules.retire_below_sharpe}"),
        )
        return rule, failed
    # Entering discovery, demotion, and retirement by a person or by risk: a reason suffices.
    return {"name": "reason-required"}, ([] if command.reason.strip() else ["no reason given"])


def decide(
    strategy: Strategy | None, command: TransitionStrategy, rules: Rules
) -> StrategyTransitioned | TransitionRejected:
    """The one event answering ``command``: the transition, or the refusal with its reason."""
    source = strategy.state if strategy is not None else None
    version = strategy.version if strategy is not None else 0

    def rejected(reason: str) -> TransitionRejected:
        return TransitionRejected(
            deterministic_event_id("lifecycle-rejected", command.command_id),
            command.command_id,
            command.strategy_id,
            command.expected_version,
            strategy.version if strategy is not None else None,
            source,
            command.target,
            reason,
            command.requested_by,
            command.ts_ns,
        )

    if strategy is not None and strategy.strategy_id != command.strategy_id:
        raise ValueError(f"command for {command.strategy_id} decided against {strategy.strategy_id}")
    if command.expected_version != version:
        return rejected(f"expected version {command.expected_version}, the strategy is at version {version}")
    if not allowed(source, command.target):
        here = source.value if source is not None else "unknown"
        return rejected(f"no transition from {here} to {command.target.value}")
    try:
        rule, failed = _gate(source, command, rules)
    except EvidenceMissing as exc:
        return rejected(str(exc))
    if failed:
        return rejected("; ".join(failed))
    return StrategyTransitioned(
        deterministic_event_id("lifecycle-transitioned", command.command_id),
        command.command_id,
        command.strategy_id,
        source,
        command.target,
        version + 1,
        command.reason,
        {**command.evidence, "rule": json.dumps(rule, sort_keys=True)},
        command.requested_by,
        command.ts_ns,
    )


class VersionGap(ValueError):
    """A transition skips versions: the fold is missing events, and guessing would corrupt the state."""


def evolve(strategy: Strategy | None, event: StrategyTransitioned) -> Strategy:
    """The state after ``event``; an event already folded in (version not newer) leaves it as it is."""
    version = strategy.version if strategy is not None else 0
    if event.version <= version and strategy is not None:
        return strategy
    if event.version != version + 1:
        raise VersionGap(f"{event.strategy_id}: version {event.version} after {version}")
    if strategy is None:
        return Strategy(event.strategy_id, event.to_state, event.version, event.ts_ns)
    return replace(strategy, state=event.to_state, version=event.version, since_ns=event.ts_ns)
