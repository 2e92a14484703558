"""`tidemark lifecycle`: a strategy's audited history, and retirement by hand."""

from __future__ import annotations

import getpass
import time
from typing import Any

import typer
from confluent_kafka import Consumer, TopicPartition

from core.settings import get_settings

lifecycle_app = typer.Typer(
    help="The strategy lifecycle: history of a strategy, its paper and live record, retirement by hand."
)


@lifecycle_app.command("history")
def lifecycle_history(
    strategy_id: str = typer.Argument(..., help="a strategy id, or a unique prefix of one"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every answer to a command about the strategy, accepted or refused, with who asked, the rule and figures."""
    from projections.lifecycle import history
    from tidemark.cli import _emit, _run_db

    found = _run_db(lambda conn: history(conn, strategy_id))
    if found is None:
        typer.echo(f"no single strategy's lifecycle matches {strategy_id!r}: see `tidemark query strategies`", err=True)
        raise typer.Exit(2)
    strategy_id, rows = found
    if not as_json:
        rows = [
            {
                "decided_at": r["decided_at"],
                "version": r["version"] if r["accepted"] else "refused",
                "move": f"{r['from_state'] or '-'} -> {r['to_state']}",
                "reason": r["reason"],
                "rule": r["evidence"].get("rule", ""),
                "requested_by": r["requested_by"],
            }
            for r in rows
        ]
    _emit(rows, f"lifecycle of {strategy_id}", as_json)


@lifecycle_app.command("performance")
def lifecycle_performance(
    strategy_id: str = typer.Argument(..., help="a strategy id, or a unique prefix of one"),
    limit: int = typer.Option(20, min=1, help="most recent sessions shown"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The strategy's booked paper and live sessions (`tidemark strategy run`): net return and cost per session,
    since entering its state, drawdown, rolling Sharpe ratio with its standard error, positions."""
    from projections.lifecycle import history, performance
    from tidemark.cli import _emit, _run_db

    found = _run_db(lambda conn: history(conn, strategy_id))
    if found is None:
        typer.echo(f"no single strategy's lifecycle matches {strategy_id!r}: see `tidemark query strategies`", err=True)
        raise typer.Exit(2)
    strategy_id = found[0]
    rows = _run_db(lambda conn: performance(conn, strategy_id, limit))
    if not rows:
        typer.echo(f"{strategy_id} has no booked session yet: it books once in Paper, with `tidemark strategy run`")
        return
    if not as_json:
        rows = [
            {
                "session": r["period_start"].date().isoformat(),
                "state": f"{r['state']} #{r['sessions']}",
                "net return": f"{r['period_return']:+.4%}",
                "cost": f"{r['cost']:.4%}",
                "since state": f"{r['cumulative_return']:+.2%}",
                "drawdown": f"{r['drawdown']:.2%}",
                "Sharpe": "-"
                if r["rolling_sharpe"] is None
                else f"{r['rolling_sharpe']:.2f} ± {r['rolling_sharpe_se']:.2f}",
                "positions": " ".join(f"{s} {w:+.2f}" for s, w in r["positions"].items()),
            }
            for r in rows
        ]
    _emit(rows, f"booked sessions of {strategy_id} (net of costs)", as_json)


@lifecycle_app.command("retire")
def lifecycle_retire(
    strategy_id: str = typer.Argument(..., help="a strategy id"),
    reason: str = typer.Option(..., help="why, in words the audit keeps"),
    timeout: float = typer.Option(30.0, help="seconds to wait for the lifecycle agent's answer"),
) -> None:
    """Retire a strategy: a TransitionStrategy command against its current version, answered by the lifecycle
    agent (`tidemark agents`); exits 1 when it is refused, with the reason."""
    from core.events import common_fields, now_ns
    from core.kafka import ReliableProducer, producer_config
    from projections.lifecycle import state_of
    from schemas.codec import get_registry
    from tidemark.cli import _run_db
    from tidemark.discover_cli import topic_ends

    settings = get_settings()
    current = _run_db(lambda conn: state_of(conn, strategy_id))
    if current is None:
        typer.echo(f"no strategy {strategy_id!r} in the lifecycle: see `tidemark query strategies`", err=True)
        raise typer.Exit(2)
    registry = get_registry()
    command = {
        **common_fields("tidemark-cli", now_ns()),
        "strategy_id": strategy_id,
        "expected_version": current["version"],
        "target_state": "RETIRED",
        "reason": reason,
        "evidence": {},
        "requested_by": f"{getpass.getuser()}@cli",
    }
    start = topic_ends(settings, "strategies.lifecycle")
    producer = ReliableProducer(producer_config(settings.kafka.bootstrap), "publishing a lifecycle command")
    producer.produce(
        settings.topic("strategies.commands"),
        registry.encode("tidemark.strategies.TransitionStrategy", command),
        strategy_id,
    )
    producer.flush()
    answer = _answer(settings, command["event_id"], start, timeout)
    if answer is None:
        typer.echo(f"command {command['event_id']} sent; no answer within {timeout:g} s: is `tidemark agents` running?")
        raise typer.Exit(1)
    if "to_state" not in answer:
        typer.echo(f"refused: {answer['reason']}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{strategy_id}: {answer['from_state']} -> {answer['to_state']} (version {answer['version']})")


def _answer(settings: Any, command_id: str, start: dict[int, int], timeout: float) -> dict[str, Any] | None:
    """The lifecycle's answer to ``command_id``, read from strategies.lifecycle after ``start``."""
    from schemas.codec import get_registry

    registry = get_registry()
    topic = settings.topic("strategies.lifecycle")
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": "tidemark-cli-lifecycle",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            event = registry.decode(message.value()).record
            if event["causation_id"] == command_id:
                return event
        return None
    finally:
        consumer.close()
