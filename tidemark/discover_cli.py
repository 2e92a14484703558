"""``tidemark discover`` (tasks, workers, planner, status), ``tidemark query strategies`` and ``tidemark strategy``."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import typer
from confluent_kafka import Consumer, TopicPartition
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.kafka import watermarks
from core.settings import get_settings
from schemas.codec import get_registry

discover_app = typer.Typer(
    help="Strategy discovery: search strategy families on history and publish ranked, validated candidates.",
    invoke_without_command=True,
)
strategy_app = typer.Typer(
    help="One strategy candidate in full; the runner that books Paper and Live strategies.", no_args_is_help=True
)
log = logging.getLogger("tidemark.discovery")

_DONE = ("FINISHED", "FAILED")


def _requests(family: str, symbols: str | None, universe: Path | None, asset_class: str, interval: str) -> list[Any]:
    from tidemark.discovery import TaskRequest

    if (symbols is None) == (universe is None):
        raise typer.BadParameter("give --symbols or --universe (one of them)")
    lines = [symbols] if symbols else [ln.split("#")[0].strip() for ln in universe.read_text().splitlines()]  # type: ignore[union-attr]
    legs = [tuple(s.strip().upper() for s in line.split(",") if s.strip()) for line in lines if line]
    return [TaskRequest(family, leg, asset_class.upper(), interval) for leg in legs]


@discover_app.callback()
def discover(
    ctx: typer.Context,
    family: str | None = typer.Option(None, help="momentum, reversion, pairs or rotation"),
    symbols: str | None = typer.Option(None, help="the legs, comma-separated (pairs: Y,X; rotation: the universe)"),
    universe: Path | None = typer.Option(None, help="a file with one task's legs per line (comma-separated)"),
    asset_class: str = typer.Option("EQUITY", help="EQUITY, FX or FUTURE: sessions and costs"),
    interval: str = typer.Option("1m", help="history to read: 1m (minute bars) or 1d (daily bars)"),
    wait: bool = typer.Option(True, help="follow the tasks until they finish (a progress bar)"),
    timeout: float = typer.Option(1800.0, help="with --wait: give up waiting after this many seconds"),
) -> None:
    """Queue discovery tasks (workers run them: `tidemark discover worker`) and follow them."""
    if ctx.invoked_subcommand is not None:
        return
    if family is None:
        raise typer.BadParameter("--family is required to queue tasks (or use a subcommand: worker, planner, status)")
    from core.events import now_ns
    from streams.strategies import InvalidParameters
    from tidemark.discovery import TaskPublisher, task_event

    settings = get_settings()
    try:
        tasks = [
            task_event(r, "tidemark-cli", now_ns()) for r in _requests(family, symbols, universe, asset_class, interval)
        ]
    except (InvalidParameters, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    start = topic_ends(settings, "discovery.progress")
    TaskPublisher(settings).publish(tasks)
    typer.echo(f"queued {len(tasks)} task(s): {', '.join(t['event_id'] for t in tasks)}")
    if wait:
        results = _follow(settings, {t["event_id"]: t for t in tasks}, start, timeout)
        failed = [f"{tid}: {reason}" for tid, (stage, reason) in results.items() if stage == "FAILED"]
        for line in failed:
            typer.echo(f"failed {line}", err=True)
        typer.echo("see the candidates: tidemark query strategies")
        if len(results) < len(tasks):
            typer.echo(f"{len(tasks) - len(results)} task(s) still running after {timeout:.0f}s", err=True)
            raise typer.Exit(1)


def topic_ends(settings: Any, name: str) -> dict[int, int]:
    """Each partition's end offset of the catalogue topic ``name``: where to follow from what comes next."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "tidemark-cli-progress"})
    try:
        topic = settings.topic(name)
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions}
    finally:
        consumer.close()


def _follow(settings: Any, tasks: dict[str, dict[str, Any]], start: dict[int, int], timeout: float) -> dict[str, Any]:
    """Read discovery.progress from before the tasks were queued until each finished or failed."""
    registry = get_registry()
    topic = settings.topic("discovery.progress")
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": "tidemark-cli-progress",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    results: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns) as bar:
            rows = {
                tid: bar.add_task(f"{t['family']} {','.join(t['symbols'])}", total=None) for tid, t in tasks.items()
            }
            while len(results) < len(tasks) and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                event = registry.decode_as("tidemark.discovery.DiscoveryProgressed", message.value())
                tid = event["task_id"]
                if tid not in rows:
                    continue
                total = event["trials_planned"] or None
                bar.update(rows[tid], completed=event["trials_done"], total=total)
                if event["stage"] in _DONE:
                    results[tid] = (event["stage"], event["reason"])
                    label = "done" if event["stage"] == "FINISHED" else "failed"
                    bar.update(
                        rows[tid], description=f"{tasks[tid]['family']} {','.join(tasks[tid]['symbols'])}: {label}"
                    )
    finally:
        consumer.close()
    return results


@discover_app.command("worker")
def discover_worker(
    loglevel: str = typer.Option("info", help="log level"),
    max_tasks: int | None = typer.Option(None, help="exit after this many tasks (default: run until SIGTERM)"),
) -> None:
    """Run one discovery worker of the group: takes tasks, searches them, publishes candidates; SIGTERM stops it
    within the stop bound, leaving the task in hand queued (it resumes where its trials stopped)."""
    from core.supervision import start_process
    from tidemark.discovery import DiscoveryWorker

    settings = get_settings()
    watchdog = start_process("discovery-worker", loglevel.upper(), settings.operations.stop_within_s)
    DiscoveryWorker(settings, watchdog).run(max_tasks)


@discover_app.command("planner")
def discover_planner(loglevel: str = typer.Option("info", help="log level")) -> None:
    """Turn new pattern signals into discovery tasks (one per pattern and day), keeping the queue under 100."""
    from core.supervision import start_process
    from tidemark.discovery import run_planner

    settings = get_settings()
    watchdog = start_process("discovery-planner", loglevel.upper(), settings.operations.stop_within_s)
    run_planner(settings, watchdog)


@discover_app.command("status")
def discover_status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Queue depth, tasks per stage, what each worker runs, and the rate of finished tasks."""
    from projections.discovery import tasks
    from tidemark.cli import _emit, _run_db
    from tidemark.discovery import queue_depth

    settings = get_settings()
    depth = queue_depth(settings)
    rows = _run_db(lambda conn: tasks(conn, 1000))
    stages: dict[str, int] = {}
    for row in rows:
        stages[row["stage"]] = stages.get(row["stage"], 0) + 1
    running = [r for r in rows if r["stage"] in ("STARTED", "PROGRESSED")]
    finished = [r for r in rows if r["stage"] == "FINISHED" and r["started_at"] is not None]
    per_hour = None
    if finished:
        span = (max(r["updated_at"] for r in finished) - min(r["started_at"] for r in finished)).total_seconds()
        per_hour = len(finished) / max(span, 1.0) * 3600
    summary = {"queued": depth, **stages, "tasks_per_hour": per_hour}
    if as_json:
        _emit([{**summary, "running": running}], "discovery", True)
        return
    typer.echo(
        f"queue: {depth} task(s) not yet committed by the workers; "
        + ", ".join(f"{k.lower()} {v}" for k, v in stages.items())
        + (f"; {per_hour:.0f} tasks/hour" if per_hour else "")
    )
    if not running:
        typer.echo("running: none")
        return
    _emit(
        [
            {
                "worker": r["worker"],
                "task": r["task_id"][:8],
                "family": r["family"],
                "symbols": r["symbols"],
                "trials": f"{r['trials_done']}/{r['trials_planned']}",
            }
            for r in running
        ],
        "running tasks",
        False,
    )


def _plus_minus(value: float, se: float | None) -> str:
    return f"{value:.2f}" if se is None else f"{value:.2f} ± {se:.2f}"


def strategy_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "rank": i + 1,
            "strategy": r["strategy_id"],
            "family": r["family"],
            "timeframe": r["timeframe"],
            "params": r["complexity"] + 1,
            "oos net sharpe": _plus_minus(r["sharpe_out_of_sample"], r["sharpe_oos_se"]),
            "dsr": round(r["deflated_sharpe"], 3),
            "pbo": None if r["pbo"] is None else round(r["pbo"], 3),
            "trials": r["trials"],
            "score": round(r["score"], 3),
            "gates": "passed" if r["passed"] else "; ".join(r["rejections"]),
            "lifecycle": r["lifecycle_state"] or "",
        }
        for i, r in enumerate(rows)
    ]


def query_strategies(
    family: str | None = typer.Option(None, help="momentum, reversion, pairs or rotation"),
    asset_class: str | None = typer.Option(None, help="EQUITY, FX or FUTURE"),
    state: str | None = typer.Option(
        None,
        help="passed or rejected (the discovery gates), or a lifecycle state: discovery, validation, paper, "
        "live, retired",
    ),
    limit: int = typer.Option(50, min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Strategy candidates ranked by score (net out-of-sample Sharpe x DSR x (1 - PBO) x diversification x
    capacity), with the evidence and their lifecycle state; those that passed every gate first."""
    from projections.discovery import candidates
    from tidemark.cli import _emit, _run_db

    lifecycle_states = ("discovery", "validation", "paper", "live", "retired")
    if state not in (None, "passed", "rejected", *lifecycle_states):
        raise typer.BadParameter(f"--state is passed, rejected or one of {', '.join(lifecycle_states)}")
    passed = None if state not in ("passed", "rejected") else state == "passed"
    lifecycle = state.upper() if state in lifecycle_states else None
    rows = _run_db(lambda conn: candidates(conn, family, asset_class and asset_class.upper(), passed, limit, lifecycle))
    _emit(
        rows if as_json else strategy_rows(rows),
        "strategy candidates (Sharpe ratios annualised, net of costs)",
        as_json,
    )


@strategy_app.command("run")
def strategy_run(loglevel: str = typer.Option("info", help="log level")) -> None:
    """Book every Paper and Live strategy on the daily bars as they arrive (strategies.performance), and ask the
    lifecycle for promotions and retirements when the record calls for them. One per context; SIGTERM stops it."""
    from core.metrics import process_port, serve
    from core.supervision import start_process
    from streams.lifecycle.runner import StrategyRunner

    settings = get_settings()
    ops = settings.operations
    watchdog = start_process("strategy-runner", loglevel.upper(), ops.stop_within_s)
    runner = StrategyRunner(settings, watchdog)
    serve(runner.metrics, ops.metrics_host, process_port(ops.metrics_port, 3))
    runner.run()


@strategy_app.command("show")
def strategy_show(
    strategy_id: str = typer.Argument(..., help="a strategy id, or a unique prefix"),
    plot: Path | None = typer.Option(None, help="draw the complexity curve and the equity curve to this PNG"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One candidate in full: parameters, complexity curve, folds, costs, gates passed and failed."""
    from projections.discovery import candidate
    from tidemark.cli import _emit, _run_db, console

    row = _run_db(lambda conn: candidate(conn, strategy_id))
    if row is None:
        typer.echo(f"no single strategy candidate matches {strategy_id!r}: see `tidemark query strategies`", err=True)
        raise typer.Exit(2)
    if as_json:
        _emit([row], "strategy", True)
    else:
        _show(row, console)
    if plot is not None:
        from tidemark.plots import strategy_plot

        equity = asyncio.run(_equity(row))
        strategy_plot(row, equity, plot)
        typer.echo(f"wrote {plot}")


def _show(row: dict[str, Any], console: Any) -> None:
    evidence = row["evidence"]
    console.print(
        f"[bold]{row['strategy_id']}[/bold]: {row['family']} on {row['symbols']} ({row['asset_class']}), "
        f"{row['timeframe']} bars"
    )
    console.print(f"parameters ({row['complexity'] + 1} free): {row['params']}")
    console.print(
        f"out-of-sample net Sharpe {_plus_minus(row['sharpe_out_of_sample'], row['sharpe_oos_se'])} over "
        f"{evidence['folds']} walk-forward folds; in-sample {row['sharpe_in_sample']:.2f}; PSR {row['psr']:.3f}"
    )
    benchmark = evidence.get("dsr_benchmark")
    console.print(
        f"deflated Sharpe ratio {row['deflated_sharpe']:.3f} over {row['trials']} trials"
        + (f" (benchmark Sharpe {benchmark:.2f})" if benchmark is not None else "")
        + f"; PBO {row['pbo'] if row['pbo'] is None else round(row['pbo'], 3)} (CSCV, {evidence['pbo_slices']} slices)"
    )
    console.print(
        f"annual return {row['annual_return']:.2%}, volatility {row['annual_volatility']:.2%}, max drawdown "
        f"{row['max_drawdown']:.2%}; costs {row['cost_bp']:.2f} bp per unit traded, turnover "
        f"{row['turnover'] or 0:.0f} units a year; capacity: {_share(row['capacity_adv_share'])} of daily volume "
        f"at {evidence.get('capital') or 0:,.0f}"
    )
    console.print(
        f"score {row['score']:.3f}; gates: "
        + ("[green]passed[/green]" if row["passed"] else "[red]" + "; ".join(row["rejections"]) + "[/red]")
    )
    console.print(f"complexity chosen by the {evidence['chosen_by'].replace('_', '-')} rule from:")
    from tidemark.cli import _emit

    _emit(
        [
            {
                "timeframe": p["timeframe"],
                "free parameters": p["free_parameters"],
                "trials": p["trials"],
                "oos net sharpe": _plus_minus(p["oos_sharpe"], p["oos_sharpe_se"]),
                "folds": " ".join(f"{f:.2f}" for f in p["fold_sharpes"]),
            }
            for p in evidence["curve"]
        ],
        "complexity curve",
        False,
    )


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4%}"


async def _equity(row: dict[str, Any]) -> Any:
    """The candidate's net equity curve over its history, recomputed from the bars with its parameters."""
    import numpy as np

    from core.sessions import market_of
    from streams.discovery.backtest import net_returns
    from streams.discovery.histories import histories
    from streams.strategies import family
    from tidemark.discovery import load_table

    settings = get_settings()
    symbols = row["symbols"].split(",")
    interval = "1d" if row["timeframe"] in ("1d", "1w") else "1m"
    start = int(row["data_start"].timestamp() * 1e6) * 1000
    end = int(row["data_end"].timestamp() * 1e6) * 1000 + 1
    table = await load_table(settings.postgres_dsn, symbols, interval, start, end)
    cost = settings.costs.model(row["asset_class"]).per_unit
    history = next(h for h in histories(table, market_of(row["asset_class"]), cost) if h.timeframe == row["timeframe"])
    positions = family(row["family"]).positions(history.bars, {k: float(v) for k, v in row["params"].items()})
    returns, _ = net_returns(positions, history.bars.closes, cost)
    return np.cumprod(1.0 + returns)
