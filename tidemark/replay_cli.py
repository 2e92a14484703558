"""``tidemark replay``: rebuild the projections from the log into a schema or database of their own, and prove the
rebuild equal to the live tables (``--verify``)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import asyncpg
import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.settings import Settings, get_settings
from projections.replay import (
    DEFAULT_REDIS_DB,
    DEFAULT_SCHEMA,
    Difference,
    Outcome,
    Plan,
    Rebuild,
    ReplayError,
    TableDigest,
    Target,
    compare,
    live_offsets,
    prepare_target,
    redis_database,
    schema_dsn,
)
from tidemark.ingest import parse_utc
from tidemark.rerun import PROCESSOR_NAMES, RerunError, print_report, rerun_processors

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def replay_command(
    verify: bool = typer.Option(
        False,
        "--verify",
        help="rebuild up to exactly what the live projections applied, then compare every table by content hash "
        "(exit 1 on any difference, with the first rows that differ)",
    ),
    from_time: str = typer.Option(None, "--from", help="replay records written at or after this ISO 8601 time"),
    to_time: str = typer.Option(None, "--to", help="replay records written before this ISO 8601 time"),
    projection: list[str] = typer.Option(None, "--projection", help="rebuild only these projections (repeatable)"),
    into: str = typer.Option(
        None, "--into", help="rebuild into this PostgreSQL database (DSN) instead of a schema of the live one"
    ),
    schema: str = typer.Option(DEFAULT_SCHEMA, "--schema", help="the live database's schema to rebuild into"),
    redis_url: str = typer.Option(
        None,
        "--redis",
        help=f"Redis database for the rebuilt cache; default: the live server's database {DEFAULT_REDIS_DB}",
    ),
    replace: bool = typer.Option(False, "--replace", help="let --into drop the tables the database already holds"),
    processors: str = typer.Option(
        None,
        "--processors",
        help="instead of the projections: re-run these processors (comma-separated: "
        f"{', '.join(PROCESSOR_NAMES)}) under a topic prefix of their own, from copies of their inputs (the source "
        "topics; for portfolio and risk, their merged inputs log), and compare their events with the live ones by "
        "id and payload (exit 1 on any difference)",
    ),
    prefix: str = typer.Option(None, "--prefix", help="with --processors: the re-run's topic prefix"),
    timeout: float = typer.Option(900, "--timeout", help="with --processors: seconds to wait for the re-run"),
    keep: bool = typer.Option(False, "--keep", help="with --processors: keep the re-run's topics"),
    as_json: bool = typer.Option(False, "--json", help="the outcome as JSON"),
) -> None:
    """Rebuild every projection from the topics, with progress; --verify proves it identical to the live one."""
    settings = get_settings()
    if processors:
        raise typer.Exit(_rerun(settings, processors, prefix, timeout, keep, as_json))
    if verify and (from_time or to_time or projection):
        err_console.print("--verify rebuilds everything the live projections applied: drop --from, --to, --projection")
        raise typer.Exit(2)
    from_ms = int(parse_utc(from_time).timestamp() * 1000) if from_time else None
    to_ms = int(parse_utc(to_time).timestamp() * 1000) if to_time else None
    target = (
        Target(into, "public", "the database named by --into")
        if into
        else Target(schema_dsn(settings.postgres_dsn, schema), schema, f"schema {schema}")
    )
    cache = redis_url or redis_database(settings.redis_url, DEFAULT_REDIS_DB)
    try:
        result = asyncio.run(
            _replay(settings, target, cache, projection or [], verify, (from_ms, to_ms), replace, as_json)
        )
    except ReplayError as exc:
        err_console.print(f"[red]replay:[/red] {exc}")
        raise typer.Exit(2) from exc
    except (OSError, asyncpg.PostgresError, KafkaException) as exc:
        err_console.print(f"[red]replay: a service is not reachable:[/red] {exc}")
        err_console.print("Start the stack with `tidemark stack up` (or check TIDEMARK_KAFKA_BOOTSTRAP and the DSN).")
        raise typer.Exit(2) from exc
    raise typer.Exit(result)


def _rerun(settings: Settings, processors: str, prefix: str | None, timeout: float, keep: bool, as_json: bool) -> int:
    names = [name.strip() for name in processors.split(",") if name.strip()]
    try:
        report = rerun_processors(
            settings, names, prefix, timeout, lambda step: err_console.print(step, soft_wrap=True), keep=keep
        )
    except (ValueError, RerunError) as exc:
        err_console.print(f"[red]replay --processors:[/red] {exc}")
        return 2
    print_report(report, console, as_json)
    return 0 if report.ok else 1


async def _replay(
    settings: Settings,
    target: Target,
    cache: str,
    projections: list[str],
    verify: bool,
    window_ms: tuple[int | None, int | None],
    replace: bool,
    as_json: bool,
) -> int:
    await prepare_target(target, settings.postgres_dsn, replace)
    rebuild = Rebuild(settings, target, cache, projections, stall_s=settings.operations.stall_timeout_s * 4)
    if not verify:
        outcome = await _with_progress(rebuild, as_json, from_ms=window_ms[0], to_ms=window_ms[1])
        _report_rebuild(outcome, target, as_json)
        return 0
    live = await asyncpg.connect(settings.postgres_dsn)
    rebuilt = await asyncpg.connect(target.dsn)
    try:
        # One snapshot: the offsets read here are exactly what the live tables hold while they are hashed below.
        async with live.transaction(isolation="repeatable_read", readonly=True):
            ends = await live_offsets(live)
            outcome = await _with_progress(rebuild, as_json, live_ends=ends)
            equal, differences, other = await compare(live, "public", rebuilt, target.schema)
    finally:
        await live.close()
        await rebuilt.close()
    _report_rebuild(outcome, target, as_json, verifying=True)
    _report_verify(equal, differences, other, _outcome_json(outcome, target) if as_json else None)
    return 1 if differences else 0


async def _with_progress(rebuild: Rebuild, quiet: bool, **bounds: Any) -> Outcome:
    if quiet:
        return await rebuild.run(**bounds)
    with Progress(
        TextColumn("[bold]rebuilding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records {task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        task = bar.add_task("rebuild", total=None, rate=0.0)
        loop = asyncio.get_running_loop()
        started = loop.time()

        def on_plan(plan: Plan) -> Any:
            bar.update(task, total=sum(max(0, p.end - p.start) for p in plan.values()))

            def advance(done: int, total: int) -> None:
                elapsed = loop.time() - started
                bar.update(task, completed=done, total=total, rate=done / elapsed if elapsed > 0 else 0.0)

            return advance

        return await rebuild.run(progress=on_plan, **bounds)


def _report_rebuild(outcome: Outcome, target: Target, as_json: bool, verifying: bool = False) -> None:
    if as_json:
        if not verifying:
            sys.stdout.write(json.dumps(_outcome_json(outcome, target), indent=2) + "\n")
        return
    console.print(
        f"Rebuilt {sum(outcome.applied.values()):,} projection writes from {outcome.read:,} records into "
        f"{target.label} in {outcome.seconds:.1f} s ({outcome.rate:,.0f} records/s)."
    )
    if outcome.truncated:
        deleted = ", ".join(f"{topic} {count:,}" for topic, count in sorted(outcome.truncated.items()))
        console.print(
            f"[yellow]Retention had deleted the first records of some topics, not rebuilt:[/yellow] {deleted}."
        )
    if outcome.dead_letters:
        letters = ", ".join(f"{name} {count}" for name, count in sorted(outcome.dead_letters.items()))
        console.print(f"Records the live sink dead-lettered, skipped again (not re-sent): {letters}.")


def _outcome_json(outcome: Outcome, target: Target) -> dict[str, Any]:
    return {
        "target": target.label,
        "records": outcome.read,
        "seconds": round(outcome.seconds, 3),
        "records_per_s": round(outcome.rate),
        "applied": outcome.applied,
        "dead_letters": outcome.dead_letters,
        "deleted_by_retention": outcome.truncated,
    }


def _digest_json(digest: TableDigest | None) -> dict[str, Any] | None:
    return None if digest is None else {"rows": digest.rows, "sha256": digest.digest}


def _report_verify(
    equal: list[tuple[TableDigest, TableDigest]],
    differences: list[Difference],
    other: list[str],
    rebuild_json: dict[str, Any] | None,
) -> None:
    """A table of digests (JSON with the rebuild's figures when ``rebuild_json`` is given)."""
    if rebuild_json is not None:
        body = {
            "identical": not differences,
            "rebuild": rebuild_json,
            "tables": {
                live.table: {"live": _digest_json(live), "rebuilt": _digest_json(ours), "equal": True}
                for live, ours in equal
            }
            | {
                d.table: {
                    "live": _digest_json(d.live),
                    "rebuilt": _digest_json(d.rebuilt),
                    "equal": False,
                    "only_live": d.only_live,
                    "only_rebuilt": d.only_rebuilt,
                }
                for d in differences
            },
            "not_projections": other,
        }
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
        return
    table = Table(title="Live projections against their rebuild from the log (sha256 of the sorted row md5s)")
    for column in ("table", "rows", "live", "rebuilt", ""):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for live, ours in equal:
        table.add_row(live.table, f"{live.rows:,}", live.digest[:16], ours.digest[:16], "[green]identical[/green]")
    for d in differences:
        rows = f"{d.live.rows if d.live else '-'} / {d.rebuilt.rows if d.rebuilt else '-'}"
        table.add_row(
            d.table,
            rows,
            d.live.digest[:16] if d.live else "-",
            d.rebuilt.digest[:16] if d.rebuilt else "-",
            "[red]DIFFERENT[/red]",
        )
    console.print(table)
    for d in differences:
        console.print(f"[red]{d.table}[/red]: first rows only the live table holds:", soft_wrap=True)
        for row in d.only_live or ["(none)"]:
            console.print(f"  - {row}", soft_wrap=True, markup=False)
        console.print("  first rows only the rebuild holds:")
        for row in d.only_rebuilt or ["(none)"]:
            console.print(f"  + {row}", soft_wrap=True, markup=False)
    if other:
        console.print(f"Not projections (no migration makes them), not compared: {', '.join(other)}.")
    verdict = "[green]identical[/green]" if not differences else f"[red]{len(differences)} table(s) differ[/red]"
    console.print(f"{len(equal) + len(differences)} tables compared: {verdict}.")
