"""``tidemark demo``: the whole skeleton on the synthetic market, from an empty topic to answers on screen."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connectors.synthetic.daily import DailyRegime, daily_market
from connectors.synthetic.market import Regime, build_universe
from core.kafka import consumer_lag, message_count
from core.settings import DEFAULT_UNIVERSE, DEMO_DATABASE, Context, Settings, get_settings
from projections import read
from projections.migrations import apply_migrations
from projections.sink import SINK_TOPICS
from streams.agents import agents_app_id
from streams.lifecycle.performance import due
from tidemark.topics import delete_prefixed_topics

console = Console(width=None if sys.stdout.isatty() else 120)


PAPER_SESSIONS = 10
"""The demo's paper period (20 sessions by default): a strategy may go live after 10 paper sessions."""
LIVE_SESSIONS = 80
"""Sessions at the end of the daily file replayed after discovery, as the bars that arrive while strategies trade
(16 weeks: a weekly strategy books 14 whole ones, enough for its 10-period paper period)."""


def demo_settings(base: Settings, universe: list[str]) -> Settings:
    """The demo's own topics, consumer group and database (its context), so it can be rerun and never touches
    other data; ``--context demo`` finds them afterwards. Its paper period is short."""
    return base.changed(
        correlation__universe=universe, context=Context.demo, lifecycle__min_paper_sessions=PAPER_SESSIONS
    )


async def _fresh_database(server_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
    finally:
        await conn.close()
    await apply_migrations(dsn)


def _cli(settings: Settings, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "tidemark.cli", *args], env=settings.environment(), check=True)


async def _projected_bars(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await read.bar_count(conn)
    finally:
        await conn.close()


def _wait_for_worker(settings: Settings, expected: int, worker: subprocess.Popen[bytes], timeout: float) -> None:
    with Progress(
        TextColumn("[bold]worker → PostgreSQL"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} bars"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("project", total=expected)
        deadline = time.monotonic() + timeout
        analytics_topics = [settings.topic("md.bars.1m")]
        sink_topics = [settings.topic(name) for name in SINK_TOPICS]
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise typer.Exit(f"the worker exited with code {worker.returncode}; see {_worker_log(settings)}")
            bars = asyncio.run(_projected_bars(settings.postgres_dsn))
            progress.update(task, completed=bars)
            # The analytics runner and the projections of its output trail the bars: done when all have caught up.
            if (
                bars >= expected
                and consumer_lag(settings.kafka.bootstrap, settings.app_id, analytics_topics) == 0
                and consumer_lag(settings.kafka.bootstrap, f"{settings.app_id}-projections", sink_topics) == 0
            ):
                return
            time.sleep(0.5)
    raise typer.Exit(f"the worker had not projected {expected:,} bars after {timeout:.0f}s")


def _worker_log(settings: Settings) -> Path:
    return settings.state_dir / "logs" / "demo-worker.log"


def _regime_table(regimes: tuple[Regime, ...], view: read.CorrelationView | None) -> Table:
    table = Table(title="injected regimes (ground truth) and the correlation the worker measured")
    for column in ("kind", "symbols", "parameters", "active (UTC)", "correlation now"):
        table.add_column(column)
    index = {s: i for i, s in enumerate(view.symbols)} if view else {}
    for regime in regimes:
        params = ", ".join(f"{k}={v:.3g}" for k, v in regime.params.items())
        measured = "—"
        if view and len(regime.symbols) == 2 and all(s in index for s in regime.symbols):
            measured = f"{view.matrix[index[regime.symbols[0]], index[regime.symbols[1]]]:+.3f}"
        span = f"{regime.start:%a %H:%M} → {regime.end:%a %H:%M}"
        table.add_row(regime.kind, " / ".join(regime.symbols), params, span, measured)
    return table


def run_demo(symbols: int, hours: float, seed: int, start: datetime, timeout: float) -> None:
    days = hours / 24
    base = get_settings()
    universe = build_universe(n_symbols=symbols, seed=seed, start=start, days=max(1, int(days + 0.999)))
    regime_symbols = [s for regime in universe.regimes for s in regime.symbols]
    settings = demo_settings(base, list(dict.fromkeys([*DEFAULT_UNIVERSE, *regime_symbols])))
    console.rule("[bold]Tidemark demo")
    console.print(
        f"Kafka {settings.kafka.bootstrap} · PostgreSQL {settings.postgres_dsn.split('@')[-1]} · "
        f"Redis {settings.redis_url.split('@')[-1]}; topics prefixed '{settings.topic_prefix}'"
    )
    # Each run starts clean, so what it shows is this version's work on this market, never an older run's leftovers.
    groups = [
        settings.app_id,
        f"{settings.app_id}-projections",
        f"{settings.app_id}-discovery",
        f"{settings.app_id}-planner",
        agents_app_id(settings),
    ]
    delete_prefixed_topics(settings, groups=groups)
    asyncio.run(_fresh_database(base.postgres_dsn, settings.postgres_dsn))
    _cli(settings, "topics", "create")
    _cli(
        settings,
        "ingest",
        "synthetic",
        "--symbols",
        str(symbols),
        "--seed",
        str(seed),
        "--start",
        start.isoformat(),
        "--days",
        repr(days),
    )
    expected = _published_count(settings)

    log_path = _worker_log(settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tidemark.cli", "worker"],
            env=settings.environment(),
            stdout=log,
            stderr=log,
        )
        try:
            _wait_for_worker(settings, expected, worker, timeout)
            daily_regimes = _discover(settings, seed, expected, worker, timeout)
            console.rule("[bold]The running system, as an operator sees it")
            _cli(settings, "status")
            ops = settings.operations
            console.print(
                f"Each process also serves Prometheus metrics and a liveness check while it runs: "
                f"http://{ops.metrics_host}:{ops.metrics_port}/metrics and /healthz (analytics runner), "
                f"port {ops.metrics_port + 1} (projection sink). The worker restarts a process that dies.",
                soft_wrap=True,
            )
        finally:
            worker.terminate()  # SIGTERM: each process commits what it holds, within 10 s
            worker.wait(timeout=60)

    view = asyncio.run(_latest(settings))
    console.rule("[bold]What the worker found")
    _cli(settings, "query", "correlations", "--top", "10")
    _cli(settings, "query", "stats", "SPY", "XLK", "XLE", "EURUSD", "USDJPY", "MES", *regime_symbols[:4])
    console.print(_regime_table(universe.regimes, view))
    _cli(settings, "query", "currency-strength")
    _cli(settings, "query", "sectors")
    _cli(settings, "query", "signals", "--limit", "15")
    _cli(settings, "query", "alerts", "--limit", "10")
    console.rule("[bold]Strategies discovered")
    console.print(
        "Every pattern signal became a discovery task (one day of minute bars is too little history for most of them: "
        "they fail or are rejected, with the reason), and the daily history was searched on request. Each candidate "
        "is a family at the complexity its walk-forward curve chose, with its net out-of-sample Sharpe ratio, its "
        "deflated Sharpe ratio and PBO over every trial of its task; the ground truth of the daily file is below. "
        "The lifecycle agent moved each into Validation, and on to Paper those that passed every gate; the others "
        "were refused, and the refusal names the gate.",
        soft_wrap=True,
    )
    _cli(settings, "query", "strategies", "--limit", "12")
    console.print(_daily_table(daily_regimes))
    _cli(settings, "lifecycle", "history", "momentum-DTREND-")
    console.rule("[bold]Live strategies and the portfolio")
    _cli(settings, "query", "strategies", "--state", "live")
    _cli(settings, "lifecycle", "performance", "momentum-DTREND-", "--limit", "5")
    _cli(settings, "portfolio", "show")
    frontier = settings.state_dir / "demo-frontier.png"
    _cli(settings, "portfolio", "frontier", "--plot", str(frontier))
    heat_map = settings.state_dir / "demo-correlations.png"
    _cli(settings, "plot", "correlations", "-o", str(heat_map))
    console.print(f"Heat map of the latest correlations: {heat_map}")
    console.print(
        f"The demo's data stays in topics prefixed '{settings.topic_prefix}' and database {DEMO_DATABASE} until the "
        "next demo run starts over. Look at it with `--context demo` (or export TIDEMARK_CONTEXT=demo):"
    )
    (order,) = _wait_for_rows(settings, ORDER_EVENT, 60, "an order")
    for command in next_commands(settings.state_dir / "demo-strategy.png", frontier, order):
        print(f"  {command}")


def next_commands(plot: Path, frontier: Path, order: str) -> list[str]:
    """What to type next, as the user can type it: `tidemark` when it is on PATH, else the path to ours."""
    ours = Path(sys.prefix) / "bin" / "tidemark"
    on_path = shutil.which("tidemark")
    if on_path is not None and Path(on_path).resolve() == ours.resolve():
        cli = "tidemark"
    else:
        cli = os.path.relpath(ours) if ours.is_relative_to(Path.cwd()) else str(ours)
    return [
        f"{cli} --context demo {args}"
        for args in (
            "query bars SPY --limit 5",
            "query correlations --symbol SPY",
            "query correlations --clusters",
            "query sectors",
            "query stats SPY EURUSD --json",
            "query strategies --state passed",
            f"strategy show momentum-DTREND- --plot {plot}",
            "query strategies --state live",
            "lifecycle history momentum-DTREND-",
            "lifecycle performance momentum-DTREND-",
            "portfolio show",
            f"portfolio frontier --plot {frontier}",
            "rebalance propose",
            "orders",
            "positions",
            "reconcile",
            "risk",
            "risk backtest --source sp500 --method HISTORICAL --method CORNISH_FISHER",
            "replay --verify",
            f"explain {order}",
            "discover status",
            "status",
        )
    ]


async def _latest(settings: Settings) -> read.CorrelationView | None:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        return await read.latest_correlation(conn, settings.correlation.universe_name)
    finally:
        await conn.close()


DISCOVERY_WORKERS = 2


def _discover(
    settings: Settings, seed: int, minute_bars: int, worker: subprocess.Popen[bytes], timeout: float
) -> list[DailyRegime]:
    """Daily history replayed from a file, the planner on the signals, two discovery workers, and two searches
    asked for from the command line, as a user would."""
    console.rule("[bold]Discovery: the planner and two workers")
    csv, live_csv = settings.state_dir / "demo-daily.csv", settings.state_dir / "demo-daily-live.csv"
    frame, regimes = daily_market(seed)
    frame.iloc[:-LIVE_SESSIONS].to_csv(csv, index=False)
    frame.iloc[-LIVE_SESSIONS:].to_csv(live_csv, index=False)
    replay = ("--interval", "1d", "--layout", "wide", "--asset-class", "EQUITY")
    _cli(settings, "ingest", "replay", str(csv), *replay)
    daily_bars = message_count(settings.kafka.bootstrap, settings.topic("md.bars.1d"))
    _wait_for_worker(settings, minute_bars + daily_bars, worker, timeout)
    logs = settings.state_dir / "logs"
    helpers = []
    processes = [("planner", ["discover", "planner"]), ("agents", ["agents"]), ("runner", ["strategy", "run"])]
    processes += [("broker", ["broker", "run"])]
    processes += [(f"worker-{i}", ["discover", "worker"]) for i in range(DISCOVERY_WORKERS)]
    for name, args in processes:
        log = open(logs / f"demo-discovery-{name}.log", "wb")  # noqa: SIM115 - owned by the process
        helpers.append(
            subprocess.Popen(
                [sys.executable, "-m", "tidemark.cli", *args],
                env=settings.environment(),
                stdout=log,
                stderr=log,
            )
        )
    try:
        singles = settings.state_dir / "demo-daily-singles.txt"
        singles.write_text("\n".join(s for r in regimes if r.kind != "mean_reverting_pair" for s in r.symbols) + "\n")
        _cli(settings, "discover", "--family", "momentum", "--universe", str(singles), "--interval", "1d")
        for pair in (r for r in regimes if r.kind == "mean_reverting_pair"):
            _cli(settings, "discover", "--family", "pairs", "--symbols", ",".join(pair.symbols), "--interval", "1d")
        _wait_for_tasks(settings, timeout)
        _cli(settings, "discover", "status")
        _wait_for_lifecycle(settings, timeout)
        console.rule("[bold]Paper trading, promotion and the portfolio")
        console.print(
            f"The strategy runner books every Paper strategy on the daily bars that arrive after its backtest's data, "
            f"with the backtest's own signal function; the last {LIVE_SESSIONS} sessions of the file arrive now. "
            f"After {PAPER_SESSIONS} paper sessions (the demo's paper period) it asks the lifecycle for Live with the "
            "paper record as evidence; each promotion re-optimises the portfolio of live strategies.",
            soft_wrap=True,
        )
        _cli(settings, "ingest", "replay", str(live_csv), *replay)
        live_starts = [pd.Timestamp(day, tz="America/New_York").value for day in frame["date"].iloc[-LIVE_SESSIONS:]]
        _wait_for_paper(settings, live_starts, timeout)
        _execute(settings, frame, replay, timeout)
        _risk(settings, timeout)
        _audit(settings)
    finally:
        for helper in helpers:
            helper.terminate()
        for helper in helpers:
            helper.wait(timeout=60)
    return regimes


def _execute(settings: Settings, frame: pd.DataFrame, replay: tuple[str, ...], timeout: float) -> None:
    """The portfolio's latest targets as a rebalance, approved from the command line and filled by the simulated
    broker at the next session's open; then the orders, the positions per strategy and the reconciliation."""
    console.rule("[bold]Execution: the first rebalance, on the simulated broker")
    console.print(
        "The execution agent proposed a rebalance for the portfolio's latest targets: one order per symbol, netting "
        "the strategies that trade it, each strategy's share kept as an allocation. Nothing is sent until it is "
        "approved (or TIDEMARK_BROKER_AUTO_APPROVE=true). The simulated broker (no Alpaca key is set) fills at the "
        "next bar's open, moved by the cost model's spread and slippage.",
        soft_wrap=True,
    )
    rebalance_id, count = _wait_for_rows(
        settings,
        """
        SELECT r.rebalance_id::text, jsonb_array_length(r.orders) FROM portfolio_targets t
        JOIN rebalances r ON r.targets_id = t.event_id::text ORDER BY t.ts DESC, t.source_offset DESC LIMIT 1
        """,
        timeout,
        "a rebalance of the latest targets",
    )
    _cli(settings, "rebalance", "propose")
    _cli(settings, "rebalance", "approve", rebalance_id[:8], "--wait", "0")
    _wait_for_rows(
        settings,
        f"SELECT count(*) FROM orders WHERE rebalance_id = '{rebalance_id}' AND order_id IS NOT NULL "
        f"HAVING count(*) >= {count}",
        timeout,
        "the orders at the broker",
    )
    following = settings.state_dir / "demo-daily-next.csv"
    session = frame.iloc[[-1]].copy()
    session["date"] = (pd.Timestamp(session["date"].iloc[0]) + pd.offsets.BDay(1)).date().isoformat()
    session.to_csv(following, index=False)
    console.print(f"The next session opens (one more day of the daily file, {session['date'].iloc[0]}):")
    _cli(settings, "ingest", "replay", str(following), *replay)
    _cli(settings, "rebalance", "approve", rebalance_id[:8], "--wait", str(int(timeout)))
    _cli(settings, "orders", "--limit", "12")
    _cli(settings, "positions")
    _cli(settings, "reconcile")


def _risk(settings: Settings, timeout: float) -> None:
    """The risk agent's measurement of the filled book, its history as a plot, the VaR methods backtested on twenty
    years of the S&P 500, and the kill switch turned on and off by hand."""
    console.rule("[bold]Risk: VaR, limits and the kill switch")
    console.print(
        "The risk agent measured the book on every fill and price: 1-day VaR and CVaR at 95% and 99% by historical "
        "simulation, the normal and Cornish-Fisher parametric forms and 10,000 Monte Carlo paths from the shrunk "
        "covariance, each strategy's share (component VaR), exposures and drawdown, checked against the limits. "
        "Every approved order passed the same limits first (the pre-trade screen).",
        soft_wrap=True,
    )
    _wait_for_rows(
        settings,
        "SELECT 1 FROM risk_measurements WHERE jsonb_array_length(strategies) > 0 LIMIT 1",
        timeout,
        "a risk measurement of the filled book",
    )
    _cli(settings, "risk", "--plot", str(settings.state_dir / "demo-risk.png"))
    console.print("How well each VaR method would have done on the S&P 500, 1999-2018 (Kupiec and Christoffersen):")
    _cli(settings, "risk", "backtest", "--source", "sp500", "--level", "0.99")
    console.print("The kill switch by hand: while it is on, an approval sends nothing; it survives restarts.")
    _cli(settings, "halt", "--reason", "demo: the kill switch by hand")
    _cli(settings, "resume", "--reason", "demo: cleared")


# An order the causation index holds already (the index is a projection too, and may be a batch behind).
ORDER_EVENT = (
    "SELECT o.place_event_id FROM orders o JOIN event_index e ON e.event_id::text = o.place_event_id"
    " ORDER BY o.placed_at, o.symbol LIMIT 1"
)
SIGNAL_TASK = (
    "SELECT t.event_id::text FROM event_index t JOIN event_causes c ON c.event_id = t.event_id"
    " JOIN event_index s ON s.event_id::text = c.cause_id WHERE t.schema = 'tidemark.discovery.DiscoverStrategy'"
    " AND s.schema = 'tidemark.signals.PatternSignalDetected' ORDER BY t.ts_event, t.event_id LIMIT 1"
)


def _audit(settings: Settings) -> None:
    """Every projection rebuilt from the log and compared with the live one, and one order traced back to the bars."""
    console.rule("[bold]Audit: the projections rebuilt from the log, and an order explained")
    console.print(
        "`tidemark replay --verify` replays every projected topic into a schema of its own, up to exactly the offsets "
        "the live projections applied, and compares each table by a hash of its content.",
        soft_wrap=True,
    )
    _cli(settings, "replay", "--verify")
    (order,) = _wait_for_rows(settings, ORDER_EVENT, 60, "an order")
    console.print("Why this order? `tidemark explain` walks its causes back through the causation index:")
    _cli(settings, "explain", order)
    # Indexed minutes ago (discovery ran long before the orders); a market too small for signals has none.
    task = _first_row(settings, SIGNAL_TASK)
    if task is not None:
        console.print("The planner's tasks go further back: a task, the pattern signal it came from, its bars:")
        _cli(settings, "explain", task[0], "--bars", "3")


def _first_row(settings: Settings, query: str) -> tuple[Any, ...] | None:
    async def first() -> tuple[Any, ...] | None:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            row = await conn.fetchrow(query)
        finally:
            await conn.close()
        return None if row is None else tuple(row)

    return asyncio.run(first())


def _wait_for_rows(settings: Settings, query: str, timeout: float, what: str) -> tuple[Any, ...]:
    """The first row ``query`` returns, once it returns one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _first_row(settings, query)
        if found is not None:
            return found
        time.sleep(0.5)
    raise typer.Exit(f"no {what} after {timeout:.0f}s")


def _wait_for_tasks(settings: Settings, timeout: float) -> None:
    """Until the planner has planned every signal's task and the workers have committed them all."""
    from tidemark.discovery import queue_depth, signals_unplanned

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not signals_unplanned(settings) and queue_depth(settings) == 0:
            return
        time.sleep(1.0)
    raise typer.Exit(f"discovery tasks were still queued after {timeout:.0f}s")


def _wait_for_lifecycle(settings: Settings, timeout: float) -> None:
    """Until the lifecycle agent has answered the three commands of every candidate, and the sink projected them."""

    async def answered() -> bool:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            candidates = await conn.fetchval("SELECT count(*) FROM strategy_candidates")
            answers = await conn.fetchval("SELECT count(*) FROM strategy_transitions")
            return bool(answers >= 3 * candidates)
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(answered()):
            return
        time.sleep(1.0)
    raise typer.Exit(f"the lifecycle had not answered every candidate after {timeout:.0f}s")


def _wait_for_paper(settings: Settings, live_starts: list[int], timeout: float) -> None:
    """Until every Paper or Live strategy has booked the periods the live bars complete (``due``, as the runner
    counts them), and the sink has projected the portfolio's answer to each promotion (targets and their alert, or
    an alert saying why there are none)."""

    async def done() -> bool:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            booked = await conn.fetch(
                """
                SELECT c.timeframe, c.data_end,
                       (SELECT count(*) FROM strategy_performance p WHERE p.strategy_id = s.strategy_id) AS periods
                FROM strategy_states s JOIN strategy_candidates c USING (strategy_id)
                WHERE s.state IN ('PAPER', 'LIVE') AND c.timeframe IN ('1d', '1w')
                """
            )
            promoted = await conn.fetchval(
                "SELECT count(*) FROM strategy_transitions WHERE to_state = 'LIVE' AND accepted"
            )
            answered = await conn.fetchval("SELECT count(*) FROM alerts WHERE kind LIKE 'portfolio.%'")
        finally:
            await conn.close()
        for row in booked:
            end = int(row["data_end"].timestamp() * 1e9)
            after = [s for s in live_starts if s > end]
            expected = len(due(row["timeframe"], after, np.zeros((len(after), 1)), live_starts[-1], end)[0])
            if row["periods"] < expected:
                return False
        return bool(answered >= promoted)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(done()):
            return
        time.sleep(1.0)
    raise typer.Exit(f"the strategy runner had not booked the live sessions after {timeout:.0f}s")


def _daily_table(regimes: list[DailyRegime]) -> Table:
    table = Table(title="the daily file's ground truth")
    for column in ("kind", "symbols", "what was injected"):
        table.add_column(column)
    for regime in regimes:
        table.add_row(regime.kind, " / ".join(regime.symbols), regime.description)
    return table


def _published_count(settings: Settings) -> int:
    return message_count(settings.kafka.bootstrap, settings.topic("md.bars.1m"))
