"""The ``tidemark`` command line: runs the stack, connectors and worker, and queries the projections."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from core.kafka import KafkaNotReady
from core.settings import Context, get_settings
from tidemark.backfill import backfill_command, corporate_actions_command
from tidemark.discover_cli import discover_app, query_strategies, strategy_app
from tidemark.execution_cli import broker_app, orders_command, positions_command, rebalance_app, reconcile_command
from tidemark.explain_cli import explain_command
from tidemark.ingest import DEFAULT_START, ingest_app
from tidemark.lifecycle_cli import lifecycle_app
from tidemark.portfolio_cli import portfolio_app
from tidemark.replay_cli import replay_command
from tidemark.risk_cli import halt_command, resume_command, risk_app
from tidemark.stack import stack_app
from tidemark.status import status_command
from tidemark.topics import topics_app

app = typer.Typer(help="Tidemark: event-sourced strategy discovery over Kafka.", no_args_is_help=True)
app.add_typer(stack_app, name="stack", help="Start, stop and inspect the local Kafka, PostgreSQL and Redis.")
app.add_typer(topics_app, name="topics", help="Create and list the topics of the event contract.")
db_app = typer.Typer(help="The PostgreSQL projections.", no_args_is_help=True)
query_app = typer.Typer(help="Query the projections.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")
app.command("backfill")(backfill_command)
app.command("status")(status_command)
ingest_app.command("corporate-actions")(corporate_actions_command)
app.add_typer(query_app, name="query")
plot_app = typer.Typer(help="Pictures of the projections.", no_args_is_help=True)
app.add_typer(discover_app, name="discover")
app.add_typer(lifecycle_app, name="lifecycle")
app.add_typer(portfolio_app, name="portfolio")
app.add_typer(broker_app, name="broker")
app.add_typer(rebalance_app, name="rebalance")
app.command("orders")(orders_command)
app.command("positions")(positions_command)
app.command("reconcile")(reconcile_command)
app.add_typer(risk_app, name="risk")
app.command("halt")(halt_command)
app.command("resume")(resume_command)
app.command("replay")(replay_command)
app.command("explain")(explain_command)
app.add_typer(strategy_app, name="strategy")
query_app.command("strategies")(query_strategies)
app.add_typer(plot_app, name="plot")

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
T = TypeVar("T")


@app.callback()
def _options(
    context: Context = typer.Option(
        None,
        "--context",
        help="whose data: default, or demo (what `tidemark demo` made: topics demo.*, database tidemark_demo); "
        "same as TIDEMARK_CONTEXT",
        show_default=False,
    ),
) -> None:
    if context is not None:
        os.environ["TIDEMARK_CONTEXT"] = context.value  # children (the worker's sink) inherit it
        get_settings.cache_clear()


def _run_db(query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def main() -> T:
        conn = await asyncpg.connect(get_settings().postgres_dsn)
        try:
            return await query(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except asyncpg.InvalidCatalogNameError as exc:
        if get_settings().context is Context.demo:
            err_console.print("The demo has not run on this server yet: run `make demo` (or `tidemark demo`) first.")
            raise typer.Exit(2) from exc
        raise
    except (OSError, asyncpg.PostgresError) as exc:
        err_console.print(f"[red]PostgreSQL is not reachable or not migrated:[/red] {exc}")
        err_console.print("Start the local stack with `tidemark stack up`, or set TIDEMARK_POSTGRES_DSN.")
        raise typer.Exit(2) from exc


def _jsonable(value: Any) -> Any:
    """Times as ISO text, exact decimals (money, quantities) as strings so no digit is lost to a float."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _emit(rows: Sequence[dict[str, Any]], title: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(
            json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], indent=2, default=_jsonable) + "\n"
        )
        return
    if not rows:
        console.print(f"[yellow]{title}: nothing yet[/yellow]")
        if get_settings().context is Context.default:
            console.print("(the demo's data is in its own context: add --context demo after `tidemark`)")
        return
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="right" if isinstance(rows[0][column], int | float) else "left")
    for row in rows:
        table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(_jsonable(v)) for v in row.values()))
    console.print(table)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations."""
    from projections.migrations import apply_migrations

    applied = asyncio.run(apply_migrations(get_settings().postgres_dsn))
    console.print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


@app.command()
def worker(
    loglevel: str = typer.Option("info", help="log level: critical, error, warning, info, debug"),
) -> None:
    """Run the worker: the analytics runner and the projection sink as child processes, restarted with back-off
    when one dies; exits 78 when another worker with the same app id took over. Metrics: see `tidemark status`."""
    from core.supervision import configure_logging
    from tidemark.worker import supervise

    configure_logging(loglevel.upper())
    raise typer.Exit(supervise(get_settings().changed(operations__log_level=loglevel.upper())))


@app.command()
def agents(loglevel: str = typer.Option("info", help="log level: critical, error, warning, info, debug")) -> None:
    """Run the domain agents (Faust): the strategy lifecycle, answering candidates and lifecycle commands with
    transitions or rejections on strategies.lifecycle; and the portfolio, re-optimising the live strategies' weights
    on every rotation (portfolio.targets); and execution, turning targets into rebalance proposals and approved
    rebalances into orders (orders.intents), and fills into positions per strategy (positions), halted by the kill
    switch (risk.controls); and risk, measuring VaR, CVaR, exposures and drawdown on every position change and price
    (risk.metrics), and on a breach alerting, halting and demoting. SIGTERM stops it; its state returns from the
    changelog."""
    import faust

    from streams.agents import create_app
    from streams.execution.agent import install as install_execution
    from streams.lifecycle.agent import install as install_lifecycle
    from streams.portfolio.agent import install as install_portfolio
    from streams.risk.agent import install as install_risk

    settings = get_settings()
    agents_app = create_app(settings)
    install_lifecycle(agents_app, settings)
    install_portfolio(agents_app, settings)
    install_execution(agents_app, settings)
    install_risk(agents_app, settings)
    faust.Worker(agents_app, loglevel=loglevel.upper()).execute_from_commandline()


@query_app.command("bars")
def query_bars(
    symbol: str,
    interval: str = typer.Option("1m"),
    limit: int = typer.Option(20, min=1),
    as_json: bool = typer.Option(False, "--json"),
    adjusted: bool = typer.Option(False, "--adjusted", help="adjust for splits and dividends (raw bars unchanged)"),
) -> None:
    """The most recent bars of SYMBOL."""
    from projections import read

    if not adjusted:
        rows = _run_db(lambda conn: read.bars(conn, symbol, interval, limit))
        _emit(rows, f"{symbol} {interval} bars", as_json)
        return
    rows, notes = _run_db(lambda conn: read.adjusted_bars(conn, symbol, interval, limit))
    for note in notes:
        err_console.print(f"[yellow]{note}[/yellow]")
    _emit(rows, f"{symbol} {interval} bars, split- and dividend-adjusted", as_json)


@query_app.command("stats")
def query_stats(
    symbols: list[str] | None = typer.Argument(None, help="only these symbols"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Latest rolling return, annualised volatility and drawdown per symbol."""
    from projections import read

    rows = _run_db(lambda conn: read.stats(conn, symbols))
    _emit(rows, "rolling statistics", as_json)


@query_app.command("correlations")
def query_correlations(
    top: int | None = typer.Option(None, min=1, help="the N most correlated pairs (the default, N=20)"),
    bottom: int | None = typer.Option(None, min=1, help="the N least correlated pairs"),
    symbol: str | None = typer.Option(None, help="this symbol's most and least correlated neighbours"),
    clusters: bool = typer.Option(False, "--clusters", help="hierarchical clusters (average linkage)"),
    min_correlation: float = typer.Option(0.5, help="with --clusters: the average correlation inside a cluster"),
    weights: str | None = typer.Option(None, help="diversification ratio of SYM=w,SYM=w,..."),
    universe: str | None = typer.Option(None),
    timeframe: str | None = typer.Option(None, help="1m or 1d (default: the latest, shortest minute window)"),
    window: int | None = typer.Option(None, help="window length in bars of the timeframe"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The latest correlation snapshot: extreme pairs, a symbol's neighbours, clusters or a diversification ratio."""
    from projections import correlations, read

    async def load(conn: asyncpg.Connection) -> tuple[read.CorrelationView | None, dict[str, float]]:
        view = await read.latest_correlation(conn, universe, timeframe, window)
        return view, (await read.symbol_volatility(conn, view) if view is not None and weights else {})

    view, volatility = _run_db(load)
    if view is None:
        _emit([], "correlations", as_json)
        return
    if not as_json:
        console.print(
            f"universe {view.universe}: {len(view.symbols)} symbols, {view.window_bars}-bar {view.timeframe} window "
            f"as of {view.as_of:%Y-%m-%d %H:%M} UTC; average correlation {_number(view.avg_correlation)}, "
            f"largest-eigenvalue share {_number(view.eigen_share)}, "
            f"equal-weight diversification ratio {_number(view.diversification_ratio)}"
        )
    try:
        if weights:
            ratio, with_vols = correlations.diversification_ratio(
                view.symbols, view.matrix, correlations.parse_weights(weights), volatility
            )
            basis = "window volatilities" if with_vols else "correlations only (no volatility for every symbol)"
            _emit([{"weights": weights, "diversification_ratio": ratio, "basis": basis}], "diversification", as_json)
        elif symbol:
            rows = correlations.neighbours(view.symbols, view.matrix, symbol, top or bottom or 10)
            _emit(rows, f"neighbours of {symbol}", as_json)
        elif clusters:
            found = correlations.clusters(view.symbols, view.matrix, min_correlation)
            rows = [
                {
                    "cluster": i + 1,
                    "size": len(c.members),
                    "average_correlation": c.average_correlation,
                    "members": " ".join(c.members),
                }
                for i, c in enumerate(found)
            ]
            _emit(rows, f"{len(rows)} clusters (average correlation >= {min_correlation:g})", as_json)
        else:
            rows = []
            if top or not bottom:
                rows += [
                    {"side": "top", **p} for p in correlations.extreme_pairs(view.symbols, view.matrix, top or 20, True)
                ]
            if bottom:
                rows += [
                    {"side": "bottom", **p}
                    for p in correlations.extreme_pairs(view.symbols, view.matrix, bottom, False)
                ]
            _emit(rows, "most and least correlated pairs", as_json)
    except (KeyError, ValueError) as exc:
        err_console.print(f"[red]{exc.args[0] if exc.args else exc}[/red]")
        raise typer.Exit(2) from exc


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@query_app.command("alerts")
def query_alerts(
    kind: str | None = typer.Option(None, help="a kind, or its prefix (e.g. correlation.)"),
    since: str | None = typer.Option(None, help="only alerts at or after this ISO 8601 time"),
    limit: int = typer.Option(50, min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The newest alerts: what moved, from what to what, and since when."""
    from projections import read
    from tidemark.ingest import parse_utc

    since_ns = int(parse_utc(since).timestamp() * 1_000_000) * 1000 if since else None
    rows = _run_db(lambda conn: read.alerts(conn, kind, since_ns, limit))
    if not as_json:
        rows = [{k: v for k, v in r.items() if k not in ("details", "event_id")} for r in rows]
    _emit(rows, "alerts", as_json)


@plot_app.command("correlations")
def plot_correlations(
    output: Path = typer.Option(..., "-o", "--output", help="the PNG to write"),
    universe: str | None = typer.Option(None),
    timeframe: str | None = typer.Option(None),
    window: int | None = typer.Option(None),
) -> None:
    """A clustered heat map of the latest correlation snapshot."""
    from projections import read
    from tidemark.plots import correlation_heatmap

    view = _run_db(lambda conn: read.latest_correlation(conn, universe, timeframe, window))
    if view is None:
        err_console.print("[yellow]no correlation snapshot yet[/yellow]")
        raise typer.Exit(1)
    correlation_heatmap(view, output)
    console.print(f"wrote {output} ({len(view.symbols)} symbols, {view.timeframe}:{view.window_bars})")


@query_app.command("currency-strength")
def query_currency_strength(
    basket: str | None = typer.Option(None, help="basket name (default: the most recent snapshot's)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Each currency's mean log return against the rest of its basket in the latest snapshot, strongest first."""
    from projections import rotation

    view = _run_db(lambda conn: rotation.latest_currency_strength(conn, basket))
    _emit_snapshot(view, "basket", "currency strength", as_json)


@query_app.command("sectors")
def query_sectors(
    universe: str | None = typer.Option(None, help="sector universe (default: the most recent snapshot's)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Sector rotation: relative strength and momentum against the benchmark, quadrant, and the snapshot before."""
    from projections import rotation

    view = _run_db(lambda conn: rotation.latest_sector_rotation(conn, universe))
    _emit_snapshot(view, "universe", "sector rotation", as_json)


@query_app.command("signals")
def query_signals(
    symbol: str | None = typer.Option(None, help="only patterns involving this symbol"),
    family: str | None = typer.Option(None, help="MEAN_REVERSION, MOMENTUM or PAIRS_MEAN_REVERSION"),
    timeframe: str | None = typer.Option(None, help="1m, 15m, 1h or 1d"),
    limit: int = typer.Option(50, min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The latest signal of each pattern that survived the multiple-testing correction, newest first."""
    from projections import signals

    rows = _run_db(lambda conn: signals.latest_signals(conn, symbol, family and family.upper(), timeframe, limit))
    if not as_json:
        rows = [_signal_row(r) for r in rows]
    _emit(rows, "pattern signals (Sharpe ratios annualised, net of costs, ± one standard error)", as_json)


_SIGNAL_DETAIL = ("params", "event_id", "correction", "sharpe_se", "window_bars", "statistic", "p_value", "hurst")
"""Columns the table leaves to ``--json``, so the rest fit a terminal."""


def _signal_row(row: dict[str, Any]) -> dict[str, Any]:
    """A signal as the table shows it: the net Sharpe ratio with its standard error in one column."""
    shown: dict[str, Any] = {}
    for name, value in row.items():
        if name == "sharpe":
            se = row["sharpe_se"]
            shown["net sharpe"] = f"{value:.2f}" if se is None else f"{value:.2f} ± {se:.2f}"
        elif name not in _SIGNAL_DETAIL:
            shown[name] = value
    return shown


def _emit_snapshot(view: Any, kind: str, title: str, as_json: bool) -> None:
    """A summary line and the ranked rows; as JSON, each row carries its snapshot's name and time."""
    if view is None:
        _emit([], title, as_json)
        return
    if as_json:
        header = {kind: view.name, "as_of": view.as_of, "timeframe": view.timeframe, "window_bars": view.window_bars}
        _emit([{**header, **row} for row in view.rows], title, as_json)
        return
    console.print(
        f"{kind} {view.name}: {len(view.rows)} ranked, {view.window_bars}-bar {view.timeframe} window as of "
        f"{view.as_of:%Y-%m-%d %H:%M} UTC"
    )
    _emit(view.rows, title, as_json)


@app.command()
def demo(
    symbols: int = typer.Option(1000, min=85, help="size of the synthetic market"),
    hours: float = typer.Option(20.5, min=1.0, help="hours of minute bars (the default ends in US trading hours)"),
    seed: int = typer.Option(7),
    start: str = typer.Option(DEFAULT_START, help="first minute, ISO 8601 with time zone"),
    timeout: float = typer.Option(900, help="seconds to wait for the worker"),
) -> None:
    """Run the skeleton on the synthetic market: topics, connector, worker, projections, and what they found."""
    from tidemark.demo import run_demo
    from tidemark.ingest import parse_utc

    run_demo(symbols, hours, seed, parse_utc(start), timeout)


def main() -> None:
    """The entry point: a broker that never became ready is a one-line message, not a traceback."""
    try:
        app()
    except KafkaNotReady as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
