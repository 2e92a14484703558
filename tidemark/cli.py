"""The ``tidemark`` command line: runs the stack, connectors and worker, and queries the projections."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from tidemark.ingest import DEFAULT_START, ingest_app
from tidemark.settings import get_settings
from tidemark.stack import stack_app
from tidemark.topics import topics_app

app = typer.Typer(help="Tidemark: event-sourced strategy discovery over Kafka.", no_args_is_help=True)
app.add_typer(stack_app, name="stack", help="Start, stop and inspect the local Kafka, PostgreSQL and Redis.")
app.add_typer(topics_app, name="topics", help="Create and list the topics of the event contract.")
db_app = typer.Typer(help="The PostgreSQL projections.", no_args_is_help=True)
query_app = typer.Typer(help="Query the projections.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")
app.add_typer(query_app, name="query")

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
T = TypeVar("T")


def _run_db(query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def main() -> T:
        conn = await asyncpg.connect(get_settings().postgres_dsn)
        try:
            return await query(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(main())
    except (OSError, asyncpg.PostgresError) as exc:
        err_console.print(f"[red]PostgreSQL is not reachable or not migrated:[/red] {exc}")
        err_console.print("Start the local stack with `tidemark stack up`, or set TIDEMARK_POSTGRES_DSN.")
        raise typer.Exit(2) from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _emit(rows: Sequence[dict[str, Any]], title: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], indent=2) + "\n")
        return
    if not rows:
        console.print(f"[yellow]{title}: nothing yet[/yellow]")
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
    loglevel: str = typer.Option("warn", help="Faust log level: crit, error, warn, info, debug"),
) -> None:
    """Run the worker: the Faust stream processors, and the projection writers in a batch-consuming process."""
    from projections.sink import spawn_projection_sink
    from streams.app import app as faust_app
    from streams.app import load_agents

    load_agents()
    spawn_projection_sink()
    sys.argv = ["tidemark-worker", "worker", "--loglevel", loglevel, "--without-web"]
    faust_app.main()


@query_app.command("bars")
def query_bars(
    symbol: str,
    interval: str = typer.Option("1m"),
    limit: int = typer.Option(20, min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The most recent bars of SYMBOL."""
    from projections import read

    rows = _run_db(lambda conn: read.bars(conn, symbol, interval, limit))
    _emit(rows, f"{symbol} {interval} bars", as_json)


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
    top: int = typer.Option(20, min=1),
    universe: str | None = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The most strongly correlated pairs of the latest snapshot."""
    from projections import read

    view = _run_db(lambda conn: read.latest_correlation(conn, universe))
    if view is None:
        _emit([], "correlations", as_json)
        return
    pairs = read.top_pairs(view, top)
    if not as_json:
        console.print(
            f"universe {view.universe}: {len(view.symbols)} symbols, {view.window_bars}-bar window as of "
            f"{view.as_of:%Y-%m-%d %H:%M} UTC; average correlation {view.avg_correlation or float('nan'):.3f}, "
            f"largest-eigenvalue share {view.eigen_share or float('nan'):.3f}"
        )
    _emit(pairs, f"top {len(pairs)} pairs", as_json)


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
    app()


if __name__ == "__main__":
    main()
