"""The portfolio agent (Faust) on the real broker, PostgreSQL and Redis: six live strategies get capped weights and
symbol exposures, a retirement rotates them with an alert, four get none and an alert saying why, and an agent
killed with kill -9 after its first targets loses none and publishes none twice."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from core.events import common_fields, deterministic_event_id
from core.settings import Settings
from schemas.codec import get_registry
from streams.portfolio.agent import answer, inputs_topic_name, policy_of
from tests.integration.kafka_tools import read_all
from tests.integration.test_lifecycle_agent import AGENTS, candidate
from tests.services import eventually
from tests.unit.avro_samples import sample

pytestmark = pytest.mark.integration

PERFORMANCE = "tidemark.strategies.StrategyPerformanceRecorded"
TRANSITIONED = "tidemark.strategies.StrategyTransitioned"
CANDIDATE = "tidemark.strategies.StrategyCandidateDiscovered"
DAY = 86_400 * 10**9
SESSIONS = 40


def sid(n: int) -> str:
    return f"momentum-S{n}"


def positions(n: int) -> dict[str, float]:
    return {f"SYM{n}": 0.6, "SPY": -0.2}


def strategy_candidate(n: int) -> dict[str, Any]:
    return {
        **candidate(n),
        "symbols": sorted(positions(n)),
        # Plain text where the sample has arbitrary strings: the candidates' projection stores these as JSON.
        "family": "momentum",
        "timeframe": "1d",
        "asset_class": "EQUITY",
        "params": {"lookback": "20"},
        "chosen_by": "one_standard_error",
        "curve": [],
        "sharpe_out_of_sample_se": 0.5,
        "dsr_benchmark": 0.5,
        "annual_volatility": 0.12,
    }


def session(n: int, day: int, value: float) -> dict[str, Any]:
    record = sample(get_registry().schema(PERFORMANCE), random.Random(n * 1000 + day))
    return {
        **record,
        **common_fields("test", (day + 1) * DAY, "", deterministic_event_id("perf", n, day)),
        "strategy_id": sid(n),
        "state": "LIVE",
        "period_start_ns": day * DAY,
        "period_end_ns": (day + 1) * DAY,
        "period_return": value,
        "positions": positions(n),
    }


def moved(n: int, before: str, after: str, version: int) -> dict[str, Any]:
    return {
        **common_fields("test", 2_000_000_000_000_000_000 + version, "", deterministic_event_id("move", n, version)),
        "strategy_id": sid(n),
        "from_state": before,
        "to_state": after,
        "version": version,
        "reason": "test",
        "evidence": {},
        "requested_by": "tester",
    }


def publish(settings: Settings, topic: str, schema: str, records: list[dict[str, Any]]) -> None:
    registry = get_registry()
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for record in records:
        producer.produce(settings.topic(topic), registry.encode(schema, record), record["strategy_id"].encode())
    assert producer.flush(30) == 0


def publish_book(settings: Settings, live: int) -> None:
    """Six strategies' candidates and 40 sessions each (correlated a little), then ``live`` of them to LIVE."""
    rng = random.Random(7)
    common = [rng.gauss(0, 0.004) for _ in range(SESSIONS)]
    publish(settings, "strategies.candidates", CANDIDATE, [strategy_candidate(n) for n in range(6)])
    publish(
        settings,
        "strategies.performance",
        PERFORMANCE,
        [session(n, d, common[d] + rng.gauss(0.0008, 0.008)) for n in range(6) for d in range(SESSIONS)],
    )
    publish(settings, "strategies.lifecycle", TRANSITIONED, [moved(n, "PAPER", "LIVE", 4) for n in range(live)])


def events(settings: Settings, topic: str) -> list[dict[str, Any]]:
    registry = get_registry()
    return [registry.decode(v).record for _, _, _, v in read_all(settings.kafka.bootstrap, settings.topic(topic))]


def replayed_targets(settings: Settings) -> set[str]:
    """The targets' ids the agent's inputs topic implies, decided again here in its order: what the topic must hold."""
    policy = policy_of(settings)
    entry: dict[str, Any] | None = None
    found: set[str] = set()
    for _, _, _, value in read_all(settings.kafka.bootstrap, inputs_topic_name(settings)):
        entry, outputs, _ = answer(entry, json.loads(value), policy)
        found |= {get_registry().decode(v).record["event_id"] for t, _, v in outputs if t == "portfolio.targets"}
    return found


def with_weights(settings: Settings, count: int) -> dict[str, Any] | None:
    return next((t for t in reversed(events(settings, "portfolio.targets")) if len(t["weights"]) == count), None)


async def _fill_performance(dsn: str, rows: list[tuple[str, int, float, str]]) -> None:
    """Sessions in the strategy runner's projection, as the frontier reads them."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            """
            INSERT INTO strategy_performance (strategy_id, period_end, period_start, state, period_return, cost,
                cumulative_return, pnl, drawdown, sessions, trades, positions, event_id)
            VALUES ($1, to_timestamp($2 / 1e9), to_timestamp($2 / 1e9 - 86400), $4, $3, 0, 0, 0, 0, 1, 0, '{}',
                gen_random_uuid())
            """,
            rows,
        )
    finally:
        await conn.close()


def test_live_strategies_get_capped_weights_and_exposures_and_a_retirement_rotates_them(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    refused = run_cli("portfolio", "frontier", "--plot", str(tmp_path / "none.png"), check=False)
    assert refused.returncode == 1 and "a frontier needs at least 2" in refused.stderr
    publish_book(isolated, live=6)
    agent = start_worker(command=AGENTS)
    start_worker()
    full = eventually(lambda: with_weights(isolated, 6), timeout=180, interval=1, what="targets over six strategies")
    weights = {w["strategy_id"]: float(w["weight"]) for w in full["weights"]}
    assert all(0 < w <= 0.5 for w in weights.values()) and sum(weights.values()) <= 1.0
    capital = float(full["capital"])
    assert capital == 100_000.0 and full["buying_power"] is None and full["solver"] == "CLARABEL"
    expected = {f"SYM{n}": 0.6 * weights[sid(n)] * capital for n in range(6)} | {
        "SPY": -0.2 * sum(weights.values()) * capital
    }
    assert {e["symbol"]: float(e["notional"]) for e in full["exposures"]} == pytest.approx(expected, abs=0.02)
    # Each held strategy's LIVE transition and candidate, and the latest of its sessions the agent had then.
    inputs = set(full["inputs"])
    assert {deterministic_event_id("move", n, 4) for n in range(6)} <= inputs
    assert {strategy_candidate(n)["event_id"] for n in range(6)} <= inputs
    sessions = [{deterministic_event_id("perf", n, d) for d in range(SESSIONS)} & inputs for n in range(6)]
    assert [len(found) for found in sessions] == [1] * 6 and len(inputs) == 18
    assert full["expected_sharpe_se"] > 0 and full["diversification_ratio"] > 1

    shown = eventually(
        lambda: json.loads(run_cli("portfolio", "show", "--json", check=False).stdout or "{}").get("targets"),
        timeout=120,
        what="the targets projected",
    )
    assert len(shown["weights"]) in (5, 6) and shown["account_id"] == "paper"

    retire = moved(0, "LIVE", "RETIRED", 5)
    publish(isolated, "strategies.lifecycle", TRANSITIONED, [retire])
    rotated = eventually(
        lambda: [t for t in events(isolated, "portfolio.targets") if t["causation_id"] == retire["event_id"]],
        timeout=120,
        what="the rotation's targets",
    )
    assert rotated[0]["reason"] == "rotation: momentum-S0 retired (was LIVE)"
    assert sorted(w["strategy_id"] for w in rotated[0]["weights"]) == [sid(n) for n in range(1, 6)]
    alerts = eventually(
        lambda: [
            a
            for a in events(isolated, "alerts")
            if a["kind"] == "portfolio.rotation" and a["causation_id"] == retire["event_id"]
        ],
        timeout=60,
        what="the rotation announced",
    )
    assert "momentum-S0 retired" in alerts[0]["message"]
    shown = eventually(
        lambda: (
            (s := json.loads(run_cli("portfolio", "show", "--json").stdout)["targets"])["causation_id"]
            == retire["event_id"]
            and s
        ),
        timeout=120,
        what="the rotation projected",
    )
    assert shown["reason"] == rotated[0]["reason"] and len(shown["weights"]) == 5

    rng = random.Random(11)
    rows = [(sid(n), (d + 1) * DAY, rng.gauss(0.001, 0.01), "LIVE") for n in range(6) for d in range(SESSIONS)]
    asyncio.run(_fill_performance(isolated.postgres_dsn, rows))
    drawn = run_cli("portfolio", "frontier", "--plot", str(tmp_path / "frontier.png"))
    assert (tmp_path / "frontier.png").stat().st_size > 10_000 and "5 held" in drawn.stdout
    assert agent.poll() is None


def test_four_live_strategies_build_no_portfolio_and_say_why(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    publish_book(isolated, live=4)
    start_worker(command=AGENTS)
    alert = eventually(
        lambda: next(
            (
                a
                for a in events(isolated, "alerts")
                if a["kind"] == "portfolio.too_few_strategies" and "4 live strategies" in a["message"]
            ),
            None,
        ),
        timeout=180,
        interval=1,
        what="the shortfall announced",
    )
    assert alert["severity"] == "INFO" and alert["message"].startswith("the portfolio stays as it was")
    assert "a portfolio needs at least 5" in alert["message"]
    assert events(isolated, "portfolio.targets") == []


def test_an_agent_killed_after_its_first_targets_loses_none_and_publishes_none_twice(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """The agent stops after its first targets (its table's changelog written, the trigger's offset not committed)
    and is killed; the retirement is published while it is dead; a successor finishes. The topic then holds exactly
    the targets that deciding the agent's inputs again, in their order, gives: one id per trigger, none lost."""
    run_cli("topics", "create")
    publish_book(isolated, live=6)
    drill = start_worker(isolated.changed(portfolio__pause_after_targets=1), AGENTS)
    eventually(
        lambda: "paused after 1 targets" in (tmp_path / "worker-0.log").read_text(),
        timeout=180,
        interval=1,
        what="the agent paused",
    )
    os.kill(drill.pid, signal.SIGKILL)
    drill.wait(timeout=30)
    assert len(events(isolated, "portfolio.targets")) == 1
    retire = moved(0, "LIVE", "RETIRED", 5)
    publish(isolated, "strategies.lifecycle", TRANSITIONED, [retire])
    start_worker(command=AGENTS)
    eventually(
        lambda: any(t["causation_id"] == retire["event_id"] for t in events(isolated, "portfolio.targets")),
        timeout=180,
        interval=1,
        what="the retirement's targets",
    )
    published = events(isolated, "portfolio.targets")
    ids_by_trigger: dict[str, set[str]] = defaultdict(set)
    for targets in published:
        ids_by_trigger[targets["causation_id"]].add(targets["event_id"])
    assert all(len(ids) == 1 for ids in ids_by_trigger.values())  # one targets event per trigger
    assert {t["event_id"] for t in published} == replayed_targets(isolated)  # none lost, none extra
    assert "answered again, as recorded" in (tmp_path / "worker-1.log").read_text()  # the redelivery happened
