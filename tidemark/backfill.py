"""``tidemark backfill`` and ``tidemark ingest corporate-actions``: Polygon history over REST into Kafka.

Dates are calendar days in New York (the US market's day): ``--from 2024-01-02 --to 2024-01-05`` covers
2024-01-02 00:00 to 2024-01-06 00:00 America/New_York, which holds the whole extended equity session of each day
and the daily bars Polygon stamps at New York midnight.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.settings import Settings, get_settings

console = Console(stderr=True)
NEW_YORK = ZoneInfo("America/New_York")
TOPIC_OF_TIMESPAN = {"minute": "md.bars.1m", "day": "md.bars.1d"}


def parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not a date: {value!r} (use YYYY-MM-DD, e.g. 2024-01-02)", param_hint=option) from exc


def day_range_ns(first: date, last: date) -> tuple[int, int]:
    """[first 00:00, last + 1 day 00:00) New York, in UTC nanoseconds."""

    def midnight(day: date) -> int:
        return int(datetime.combine(day, time(0), tzinfo=NEW_YORK).timestamp()) * 1_000_000_000

    return midnight(first), midnight(last + timedelta(days=1))


def read_symbols(symbols: str | None, universe: Path | None) -> tuple[str, ...]:
    """Our symbols from ``--symbols`` and/or a ``--universe`` file (one or more per line, ``#`` comments)."""
    from connectors.polygon.symbols import parse_symbols

    texts: list[str] = []
    if symbols:
        texts.append(symbols)
    if universe is not None:
        texts.extend(universe.read_text().splitlines())
    try:
        instruments = parse_symbols(texts)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--symbols/--universe") from exc
    if not instruments:
        raise typer.BadParameter("give --symbols AAPL,MSFT or --universe FILE", param_hint="--symbols/--universe")
    return tuple(i.symbol for i in instruments)


def api_key(settings: Settings) -> str:
    key = settings.polygon.api_key.get_secret_value() if settings.polygon.api_key else ""
    if not key:
        console.print("[red]no Polygon API key:[/red] set TIDEMARK_POLYGON_API_KEY (or put it in .env)", soft_wrap=True)
        raise typer.Exit(2)
    return key


@contextmanager
def stop_event() -> Iterator[threading.Event]:
    """Set by SIGINT/SIGTERM: workers finish the slice in hand, progress it and return."""
    event = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def backfill_command(
    symbols: str | None = typer.Option(None, "--symbols", help="comma-separated symbols, e.g. AAPL,MSFT,EURUSD"),
    universe: Path | None = typer.Option(None, "--universe", exists=True, dir_okay=False, help="file of symbols"),
    first: str = typer.Option(..., "--from", help="first day, YYYY-MM-DD (New York)"),
    last: str = typer.Option(..., "--to", help="last day, inclusive, YYYY-MM-DD (New York)"),
    timespan: str = typer.Option("minute", "--timespan", help="minute (-> md.bars.1m) or day (-> md.bars.1d)"),
    concurrency: int = typer.Option(4, min=1, max=32, help="symbols fetched at once"),
    slice_bars: int = typer.Option(20_000, min=1, help="bars per publish-and-progress step"),
) -> None:
    """Backfill Polygon history (raw, unadjusted) into Kafka; rerun to resume after an interruption."""
    from connectors.polygon.backfill import Backfill, BackfillReport, ProgressStore, progress_dir
    from connectors.polygon.rest import PolygonAuthError, make_client
    from tidemark.topics import create_topics

    if timespan not in TOPIC_OF_TIMESPAN:
        raise typer.BadParameter("use minute or day", param_hint="--timespan")
    start_day, end_day = parse_day(first, "--from"), parse_day(last, "--to")
    if end_day < start_day:
        raise typer.BadParameter(f"--to {end_day} is before --from {start_day}", param_hint="--to")
    wanted = read_symbols(symbols, universe)
    settings = get_settings()
    key = api_key(settings)
    start_ns, end_ns = day_range_ns(start_day, end_day)
    topic = settings.topic(TOPIC_OF_TIMESPAN[timespan])
    create_topics(settings)
    partitions = _partitions(settings, topic)
    store = ProgressStore(progress_dir(settings.state_dir, topic, timespan, start_ns, end_ns))

    with stop_event() as stop, _progress() as progress:
        task = progress.add_task(f"→ {topic}", total=len(wanted), bars=0, rate=0.0, limited=0, waited=0.0, now="")

        def on_progress(report: BackfillReport) -> None:
            progress.update(
                task,
                completed=report.done + report.already_done + len(report.failed),
                bars=report.bars,
                rate=report.bars / max(progress.tasks[0].elapsed or 0.0, 1e-9),
                limited=report.rate_limited,
                waited=report.waited_s,
                now=",".join(sorted(report.current)[:3]),
            )

        backfill = Backfill(
            bootstrap=settings.kafka.bootstrap,
            topic=topic,
            partitions=partitions,
            store=store,
            new_client=lambda: make_client(key, settings.polygon.rest_url, stop=stop),
            timespan=timespan,
            start_ns=start_ns,
            end_ns=end_ns,
            slice_bars=slice_bars,
            stop=stop,
            on_progress=on_progress,
        )
        try:
            report = backfill.run(wanted, concurrency=concurrency)
        except PolygonAuthError as exc:
            console.print(f"[red]{exc}[/red]", soft_wrap=True)
            raise typer.Exit(2) from exc
        on_progress(report)

    console.print(
        f"{'interrupted: ' if report.interrupted else ''}{report.done} symbol(s) completed, {report.already_done} "
        f"already complete, {len(report.failed)} failed; {report.bars:,} bars to {topic} in {report.seconds:.1f}s "
        f"({report.rate:,.0f} bars/s); {report.rate_limited} rate limit(s) waited out ({report.waited_s:.1f}s); "
        f"{report.resumed_past} resumed past bars found in the topic. Progress records: {store.directory}",
        soft_wrap=True,
    )
    for symbol, reason in sorted(report.failed.items()):
        console.print(f"[red]{symbol}:[/red] {reason}", soft_wrap=True)
    if report.interrupted:
        raise typer.Exit(130)
    if report.failed:
        raise typer.Exit(1)


def corporate_actions_command(
    symbols: str | None = typer.Option(None, "--symbols", help="comma-separated symbols, e.g. AAPL,NVDA"),
    universe: Path | None = typer.Option(None, "--universe", exists=True, dir_okay=False, help="file of symbols"),
    first: str | None = typer.Option(None, "--from", help="earliest ex-date, YYYY-MM-DD (default: all)"),
    last: str | None = typer.Option(None, "--to", help="latest ex-date, YYYY-MM-DD (default: all)"),
) -> None:
    """Publish Polygon's splits and dividends to md.corporate_actions (already published ones are skipped)."""
    from connectors.polygon.corporate_actions import fetch_actions, publish_actions
    from connectors.polygon.rest import PolygonError, make_client
    from tidemark.topics import create_topics

    start_day = parse_day(first, "--from") if first else None
    end_day = parse_day(last, "--to") if last else None
    wanted = read_symbols(symbols, universe)
    settings = get_settings()
    client = make_client(api_key(settings), settings.polygon.rest_url)
    events = []
    unusable = 0
    try:
        for symbol in wanted:
            found, bad = fetch_actions(client, symbol, start_day, end_day)
            events.extend(found)
            unusable += bad
    except PolygonError as exc:
        console.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(2) from exc
    topic = settings.topic("md.corporate_actions")
    create_topics(settings)
    published, known = publish_actions(settings.kafka.bootstrap, topic, events)
    console.print(
        f"{len(events)} corporate action(s) of {len(wanted)} symbol(s): {published} published to {topic}, "
        f"{known} already there" + (f"; {unusable} without a usable date or amount were skipped" if unusable else ""),
        soft_wrap=True,
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("symbols {task.fields[bars]:,} bars {task.fields[rate]:,.0f}/s"),
        TextColumn("429s {task.fields[limited]} ({task.fields[waited]:.0f}s)"),
        TextColumn("{task.fields[now]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _partitions(settings: Settings, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": settings.kafka.bootstrap}).list_topics(topic, timeout=30)
    return len(metadata.topics[topic].partitions)
