"""Risk through the real projection sink, PostgreSQL and Redis: measurements and the desk's halt and resume answers
become rows and latest values (the commands on the same topic are consumed, not projected, not dead-lettered); the
CLI shows and plots them; `tidemark halt` waits for the answer to its own command; and records delivered again
(a restarted sink) change nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from core.consumed import Consumed
from core.events import common_fields, deterministic_event_id
from core.settings import Settings
from projections.redis_store import RedisProjection
from projections.risk import RiskProjection, control_key, measurement_key
from schemas.codec import get_registry
from tests.integration.test_execution import events, produce
from tests.integration.test_pipeline import count, fetch
from tests.services import eventually

pytestmark = pytest.mark.integration

ACCOUNT = "paper"
DAY = 86_400 * 10**9
START = 20_000 * DAY  # 2024-10-04


def _defaults(schema: str) -> dict[str, Any]:
    return {f["name"]: f.get("default") for f in get_registry().schema(schema)["fields"]}


def measured(day: int, equity: float, var_99: float) -> dict[str, Any]:
    """A measurement at the end of ``day``: one strategy, the account's VaR limit checked (breached above 4%)."""
    breached = var_99 > 0.04
    estimates = [
        {"method": method, "confidence": level, "var": var, "cvar": var * 1.3, "var_amount": f"{var * equity:.2f}"}
        for method in ("HISTORICAL", "PARAMETRIC")
        for level, var in ((0.95, var_99 * 0.7), (0.99, var_99))
    ]
    return {
        **_defaults("tidemark.risk.RiskMeasured"),
        **common_fields("risk-agent", START + (day + 1) * DAY, "", deterministic_event_id("risk", ACCOUNT, day)),
        "account_id": ACCOUNT,
        "horizon_days": 1,
        "observations": 250,
        "equity": f"{equity:.2f}",
        "gross_exposure": f"{equity * 0.9:.2f}",
        "net_exposure": f"{equity * 0.5:.2f}",
        "estimates": estimates,
        "drawdown": 1.0 - equity / 100_000.0,
        "max_drawdown": 1.0 - equity / 100_000.0,
        "peak_equity": "100000.00",
        "kupiec_p_value": 0.42,
        "breaches": ["var_99"] if breached else [],
        "kill_switch": breached,
        "leverage": 0.9,
        "covariance_var_95": var_99 * 0.7,
        "covariance_var_99": var_99,
        "strategies": [
            {
                "strategy_id": "S1",
                "gross_exposure": f"{equity * 0.9:.2f}",
                "net_exposure": f"{equity * 0.5:.2f}",
                "estimates": estimates[2:],
                "component_var_95": var_99 * 0.7,
                "component_var_99": var_99,
                "component_cvar_99": var_99 * 1.3,
                "drawdown": float("nan"),  # JSON has no NaN: stored as null, not a dead-lettered batch
            }
        ],
        "limits": [{"name": "var_99", "value": var_99, "limit": 0.04, "breached": breached}],
        "halt_reason": "var_99 over its limit" if breached else "",
        "missing_history": ["NEWCO"],
    }


def halt(day: int, event_id: str | None = None) -> dict[str, Any]:
    return {
        **common_fields("risk-agent", START + day * DAY, "", event_id),
        "account_id": ACCOUNT,
        "reason": "var_99 over its limit",
        "flatten": True,
        "requested_by": "risk",
        "breaches": ["var_99"],
    }


def halted(command: dict[str, Any]) -> dict[str, Any]:
    return {
        **common_fields("execution-desk", command["ts_event"], command["event_id"]),
        **{k: command[k] for k in ("account_id", "reason", "flatten", "requested_by", "breaches")},
        "flatten_rebalance_id": "rb-flatten-1",
        "command_id": command["event_id"],
    }


def resume(day: int) -> dict[str, Any]:
    return {
        **common_fields("tidemark-cli", START + day * DAY),
        "account_id": ACCOUNT,
        "reason": "limits reviewed",
        "requested_by": "ops@cli",
    }


def resumed(command: dict[str, Any]) -> dict[str, Any]:
    return {
        **common_fields("execution-desk", command["ts_event"], command["event_id"]),
        **{k: command[k] for k in ("account_id", "reason", "requested_by")},
        "command_id": command["event_id"],
    }


def publish_controls(settings: Settings, records: list[tuple[str, dict[str, Any]]]) -> None:
    for schema, record in records:
        produce(settings, "risk.controls", f"tidemark.risk.{schema}", [record], "account_id")


def latest(settings: Settings, name: str) -> dict[str, str]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return cast(dict[str, str], client.hgetall(name))
    finally:
        client.close()


def test_measurements_and_the_desks_answers_reach_postgres_redis_and_the_cli(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    start_worker()
    calm, breach = measured(0, 100_000.0, 0.03), measured(1, 95_000.0, 0.045)
    # The calm one twice, as a producer retry publishes it: same event, a second record.
    produce(isolated, "risk.metrics", "tidemark.risk.RiskMeasured", [calm, calm, breach], "account_id")
    halt_command, resume_command = halt(2), resume(3)
    publish_controls(
        isolated,
        [
            ("HaltTrading", halt_command),
            ("TradingHalted", halted(halt_command)),
            ("ResumeTrading", resume_command),
            ("TradingResumed", resumed(resume_command)),
        ],
    )

    def controls() -> list[dict[str, Any]]:
        rows = fetch(isolated.postgres_dsn, "SELECT * FROM trading_controls ORDER BY source_offset")
        assert len(rows) == 2 and count(isolated.postgres_dsn, "risk_measurements") == 2
        return rows

    halt_row, resume_row = eventually(controls, timeout=120, interval=0.5, what="the risk events projected")
    assert (halt_row["kind"], halt_row["command_id"], halt_row["flatten"], halt_row["flatten_rebalance_id"]) == (
        "halted",
        halt_command["event_id"],
        True,
        "rb-flatten-1",
    )
    assert (halt_row["breaches"], halt_row["requested_by"]) == (["var_99"], "risk")
    assert (resume_row["kind"], resume_row["command_id"], resume_row["flatten"], resume_row["breaches"]) == (
        "resumed",
        resume_command["event_id"],
        False,
        [],
    )
    rows = fetch(isolated.postgres_dsn, "SELECT * FROM risk_measurements ORDER BY ts")
    assert [str(r["event_id"]) for r in rows] == [calm["event_id"], breach["event_id"]]
    assert (str(rows[1]["equity"]), rows[1]["kill_switch"], rows[1]["breaches"]) == ("95000.00", True, ["var_99"])
    assert json.loads(rows[1]["strategies"])[0]["drawdown"] is None
    assert json.loads(rows[1]["limits"]) == breach["limits"]
    assert events(isolated, "dlq") == []  # the commands were consumed, not refused

    stored = eventually(lambda: latest(isolated, measurement_key(ACCOUNT)), what="the measurement in Redis")
    assert json.loads(stored["measurement"])["event_id"] == breach["event_id"]
    assert json.loads(stored["measurement"])["estimates"] == breach["estimates"]
    assert stored["kill_switch"] == "true"
    control = eventually(lambda: latest(isolated, control_key(ACCOUNT)), what="the halt state in Redis")
    assert (control["state"], control["command_id"]) == ("resumed", resume_command["event_id"])

    shown = json.loads(run_cli("risk", "--json").stdout)
    assert shown["measurement"]["event_id"] == breach["event_id"] and shown["measurement"]["equity"] == "95000.00"
    assert shown["control"]["kind"] == "resumed"
    table = run_cli("risk").stdout
    assert "BREACHED" in table and "4,275.00" in table  # the 99% VaR amount: 4.5% of 95,000
    plot = tmp_path / "risk.png"
    assert (
        f"wrote {plot} (2 measurements, 1 daily changes, 1 beyond the 99% VaR)"
        in run_cli("risk", "--plot", str(plot)).stdout
    )
    assert plot.read_bytes()[:4] == b"\x89PNG"
    short = run_cli("risk", "backtest", "--source", "portfolio", check=False)
    assert short.returncode == 2
    assert f"account {ACCOUNT}'s daily equity (risk_measurements): 1 daily returns" in short.stderr


def test_halt_waits_for_the_desks_answer_to_its_own_command(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    run_cli("topics", "create")
    start_worker()
    assert f"no risk measurement for account {ACCOUNT} yet" in run_cli("risk").stdout
    asking = start_worker(command=("halt", "--flatten", "--reason", "drill", "--wait", "120"))

    def command() -> dict[str, Any]:
        found = [r for schema, r in events(isolated, "risk.controls") if schema == "tidemark.risk.HaltTrading"]
        assert len(found) == 1
        return found[0]

    sent = eventually(command, timeout=60, interval=0.5, what="the HaltTrading command")
    assert (sent["account_id"], sent["reason"], sent["flatten"]) == (ACCOUNT, "drill", True)
    assert sent["requested_by"].endswith("@cli") and sent["breaches"] == []
    publish_controls(isolated, [("TradingHalted", halted(sent))])
    assert asking.wait(timeout=120) == 0
    said = (tmp_path / "worker-1.log").read_text()
    assert f"trading halted for {ACCOUNT}" in said and "by " + sent["requested_by"] + ": drill" in said
    assert "rebalance rb-flatten-1 (`tidemark orders --rebalance rb-flatten-1`)" in said

    unanswered = run_cli("resume", "--wait", "2", check=False)
    assert unanswered.returncode == 1
    assert "no TradingResumed within 2 s: the execution agent (`tidemark agents`) must be running" in unanswered.stderr


def test_records_delivered_again_change_nothing(isolated: Settings) -> None:
    """A restarted sink hands over records it applied before: no row is added, and Redis keeps the newest state."""
    command = halt(2, deterministic_event_id("halt", 2))
    decoded = [measured(0, 100_000.0, 0.03), command, halted(command), resumed(resume(3))]
    schemas = [f"tidemark.risk.{name}" for name in ("RiskMeasured", "HaltTrading", "TradingHalted", "TradingResumed")]
    records = [Consumed("risk.metrics", 0, 0, ACCOUNT.encode(), b"")] + [
        Consumed("risk.controls", 0, offset, ACCOUNT.encode(), b"") for offset in range(3)
    ]

    async def apply(batches: list[tuple[int, int]]) -> list[int]:
        pool = await asyncpg.create_pool(isolated.postgres_dsn, min_size=1, max_size=1)
        client = aioredis.from_url(isolated.redis_url)
        try:
            projection = RiskProjection(pool, RedisProjection(client))
            return [await projection.apply(records[a:b], decoded[a:b], schemas[a:b]) for a, b in batches]
        finally:
            await pool.close()
            await client.aclose()

    # The halt answer again after the resumption: older in its partition, so Redis stays "resumed".
    assert asyncio.run(apply([(0, 3), (0, 4), (1, 4), (2, 3)])) == [3, 1, 0, 0]
    assert count(isolated.postgres_dsn, "risk_measurements") == 1
    kinds = fetch(isolated.postgres_dsn, "SELECT kind FROM trading_controls ORDER BY source_offset")
    assert [r["kind"] for r in kinds] == ["halted", "resumed"]
    assert latest(isolated, control_key(ACCOUNT))["state"] == "resumed"
