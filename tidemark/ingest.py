"""``tidemark ingest``: the connectors that need no account — the synthetic market and file replay."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from connectors.publisher import (
    BarPublisher,
    PublishReport,
    keep_after_positions,
    last_records,
    publish_batches,
    stop_on_signals,
)
from core.kafka import partition_for_key
from core.settings import Settings, get_settings
from schemas.bars import ASSET_CLASSES, BAR_SCHEMA, BarBatch
from schemas.catalogue import CATALOGUE
from schemas.codec import DecodeError, get_registry

ingest_app = typer.Typer(help="Publish market data to Kafka.", no_args_is_help=True)
console = Console(stderr=True)

DEFAULT_START = "2025-03-03T00:00:00+00:00"
# The intervals with a bar topic (md.bars.<interval>): the ones a file can be replayed into.
BAR_INTERVALS = tuple(spec.name.removeprefix("md.bars.") for spec in CATALOGUE if spec.name.startswith("md.bars."))


def parse_utc(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise typer.BadParameter("give a time zone, e.g. 2025-03-03T00:00:00+00:00")
    return parsed.astimezone(UTC)


def _publish_with_progress(
    publisher: BarPublisher, batches: Iterable[BarBatch], total: int | None, speed: float | None
) -> PublishReport:
    with (
        stop_on_signals() as stop,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f} bars"),
            TextColumn("{task.fields[rate]:,.0f} bars/s"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress,
    ):
        task = progress.add_task(f"→ {publisher.topic}", total=total, rate=0.0)

        def on_progress(report: PublishReport) -> None:
            progress.update(task, completed=report.bars, rate=report.rate)

        report = publish_batches(publisher, batches, stop=stop, speed=speed, on_progress=on_progress)
        progress.update(task, completed=report.bars, rate=report.rate)
    return report


def _print_report(report: PublishReport, topic: str) -> None:
    verb = "interrupted after publishing" if report.interrupted else "published"
    console.print(
        f"{verb} {report.bars:,} bars to {topic} in {report.seconds:.1f}s ({report.rate:,.0f} bars/s); "
        f"{report.skipped:,} already in the topic were skipped; every message was flushed"
    )


def published_tail(settings: Settings, topic: str, symbols: tuple[str, ...]) -> dict[int, tuple[int, int]]:
    """Per partition, the (start_ns, symbol rank) of the last bar in the topic: where a rerun resumes."""
    rank = {symbol: i for i, symbol in enumerate(symbols)}
    tail: dict[int, tuple[int, int]] = {}
    registry = get_registry()
    for partition, (_key, value) in last_records(settings.kafka.bootstrap, topic).items():
        try:
            record = registry.decode_as(BAR_SCHEMA, value)
        except DecodeError:
            continue
        symbol_rank = rank.get(record["symbol"])
        if symbol_rank is not None:
            tail[partition] = (record["start_ns"], symbol_rank)
    return tail


@dataclass
class SkipCount:
    bars: int = 0


def skip_published(
    batches: Iterable[BarBatch],
    symbols: tuple[str, ...],
    partitions: int,
    tail: dict[int, tuple[int, int]],
    skipped: SkipCount,
) -> Iterator[BarBatch]:
    """Drops, from the deterministic stream, what an earlier run of the same seed already landed."""
    rank = {symbol: i for i, symbol in enumerate(symbols)}
    partition_of_rank = np.array([partition_for_key(s.encode(), partitions) for s in symbols], dtype=np.int32)
    newest_tail = max((start for start, _ in tail.values()), default=None)
    for bars in batches:
        if newest_tail is not None and len(bars) and int(bars.start_ns.min()) <= newest_tail:
            ranks = np.fromiter((rank[s] for s in bars.symbol.tolist()), dtype=np.int64, count=len(bars))
            kept = keep_after_positions(bars, partition_of_rank[ranks], ranks, tail)
            skipped.bars += len(bars) - len(kept)
            bars = kept
        yield bars


@ingest_app.command("synthetic")
def ingest_synthetic(
    symbols: int = typer.Option(1000, min=2, help="symbols across US equities, FX pairs and micro futures"),
    seed: int = typer.Option(7, help="the same seed always gives the same market"),
    start: str = typer.Option(DEFAULT_START, help="first minute, ISO 8601 with time zone"),
    days: float = typer.Option(1.0, min=0.0, help="calendar days of minute bars"),
    speed: float | None = typer.Option(None, help="pace by bar time: 60 = one market hour per minute"),
    resume: bool = typer.Option(True, help="skip the bars an earlier run with this seed already published"),
    manifest: Path | None = typer.Option(None, help="write the injected regimes to this JSON file"),
) -> None:
    """A seeded synthetic market with correlated groups and recorded mean-reverting and trending regimes."""
    from connectors.synthetic.market import build_universe, generate_bars, minute_index

    settings = get_settings()
    topic = settings.topic("md.bars.1m")
    first_minute = parse_utc(start)
    universe = build_universe(n_symbols=symbols, seed=seed, start=first_minute, days=max(1, math.ceil(days)))
    manifest_path = manifest or settings.state_dir / f"synthetic-seed{seed}-n{symbols}.json"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(universe.to_manifest(), indent=2, default=str))
    console.print(f"universe of {len(universe.symbols)} symbols; injected regimes recorded in {manifest_path}")

    minutes = int(days * 24 * 60)
    symbol_order = tuple(universe.symbols.tolist())
    tail = published_tail(settings, topic, symbol_order) if resume else {}
    partitions = _partitions(settings, topic)
    # Regenerate only from the oldest partition tail on; finer skipping is per partition below. A partition the
    # killed run never reached has no tail and needs every bar from the first minute, so then nothing is skipped.
    used = {partition_for_key(symbol.encode(), partitions) for symbol in symbol_order}
    skip = minute_index(first_minute, min(start for start, _ in tail.values())) if tail and used <= set(tail) else 0
    batches: Iterable[BarBatch] = generate_bars(
        universe, start=first_minute, minutes=minutes, seed=seed, skip_minutes=min(skip, minutes)
    )
    skipped = SkipCount()
    if tail:
        console.print(f"resuming: {len(tail)} partition(s) already hold bars of this market")
        batches = skip_published(batches, symbol_order, partitions, tail, skipped)
    publisher = BarPublisher(settings.kafka.bootstrap, topic, source="synthetic")
    report = _publish_with_progress(publisher, batches, total=None, speed=speed)
    report.skipped = skipped.bars
    _print_report(report, topic)
    if report.interrupted:
        raise typer.Exit(130)


@ingest_app.command("replay")
def ingest_replay(
    path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="CSV (.csv, .csv.gz, .csv.zst, .csv.bz2, .csv.xz) or Parquet file"
    ),
    interval: str = typer.Option("1m", help=f"bar interval of the file: {', '.join(BAR_INTERVALS)}"),
    symbol: str | None = typer.Option(
        None, help="symbol of a file without a symbol column; in a file of several symbols, the one to replay"
    ),
    tz: str | None = typer.Option(
        None, help="zone of times without a UTC offset, e.g. America/New_York (dates of 1d bars need none)"
    ),
    layout: str = typer.Option(
        "ohlcv",
        help="ohlcv: a bar per row; wide: a date/time column and a column of closing prices per symbol, "
        "published as close-only bars (kind CLOSE_ONLY)",
    ),
    speed: float | None = typer.Option(None, help="pace by bar time (1 = real time); as fast as possible if unset"),
    asset_class: str = typer.Option(
        "UNKNOWN", help="EQUITY, FX or FUTURE for a file without an asset_class column; picks the session calendar"
    ),
) -> None:
    """Replay bars from a CSV or Parquet file into Kafka (md.bars.<interval>).

    Times: ISO 8601, US month/day/year (1/4/1999) or epoch numbers. A date on 1d bars starts at New York midnight.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from rich.markup import escape

    from connectors.replay import LAYOUTS, ReplayError, read_bars

    if asset_class.upper() not in ASSET_CLASSES:
        known = ", ".join(ASSET_CLASSES)
        raise typer.BadParameter(f"{asset_class!r} is not one of {known}", param_hint="--asset-class")
    if interval not in BAR_INTERVALS:
        raise typer.BadParameter(f"{interval!r} is not one of {', '.join(BAR_INTERVALS)}", param_hint="--interval")
    if layout not in LAYOUTS:
        raise typer.BadParameter(f"{layout!r} is not one of {', '.join(LAYOUTS)}", param_hint="--layout")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise typer.BadParameter(f"unknown time zone {tz!r}", param_hint="--tz") from exc
    settings = get_settings()
    topic = settings.topic(f"md.bars.{interval}")
    publisher = BarPublisher(settings.kafka.bootstrap, topic, source="replay")
    try:
        bars = read_bars(
            path,
            interval=interval,
            symbol=symbol,
            tz=tz,
            asset_class=asset_class.upper(),
            layout=layout,
        )
        report = _publish_with_progress(publisher, bars, None, speed)
    except ReplayError as exc:
        console.print(f"[red]cannot replay:[/red] {escape(str(exc))}", soft_wrap=True)  # the error names the file
        raise typer.Exit(2) from exc
    _print_report(report, topic)
    if report.interrupted:
        raise typer.Exit(130)


@ingest_app.command("polygon")
def ingest_polygon(
    symbols: str | None = typer.Option(None, help="comma-separated: AAPL, EURUSD (EUR/USD, C:EURUSD), MESZ5, FUT:MES"),
    universe: Path | None = typer.Option(None, exists=True, dir_okay=False, help="file of symbols (# comments)"),
    intervals: str = typer.Option("1s,1m", help="aggregates to stream: 1s, 1m or 1s,1m"),
    trades: bool = typer.Option(False, help="also stream trades to md.trades"),
    backfill: bool = typer.Option(True, help="fill the minute bars missed during a reconnect or restart via REST"),
    progress: float = typer.Option(10.0, min=0.1, help="seconds between progress lines"),
) -> None:
    """Stream live aggregates (and trades) from Polygon's WebSocket feeds until Ctrl-C; each bar is published once."""
    import asyncio

    from confluent_kafka import KafkaException
    from rich.markup import escape

    from connectors.polygon.live import LiveConnector, LiveOptions
    from connectors.polygon.rest import PolygonAuthError
    from connectors.polygon.symbols import Interval, parse_symbols

    if (symbols is None) == (universe is None):
        raise typer.BadParameter("give either --symbols or --universe")
    try:
        instruments = parse_symbols(universe.read_text().splitlines() if universe is not None else [symbols or ""])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    chosen: list[Interval] = []
    for part in filter(None, (p.strip() for p in intervals.split(","))):
        if part not in ("1s", "1m"):
            raise typer.BadParameter(f"interval {part!r} is not 1s or 1m")
        chosen.append("1s" if part == "1s" else "1m")
    settings = get_settings()
    options = LiveOptions(intervals=tuple(dict.fromkeys(chosen)), trades=trades, backfill=backfill, progress_s=progress)
    with stop_on_signals() as stop:
        try:
            connector = LiveConnector(settings, instruments, options, stop=stop)
            _serve_connector_metrics(settings, connector.stats.counts)
            markets = ", ".join(f"{len(u)} {m}" for m, u in connector.universes.items())
            console.print(f"streaming {markets} from {settings.polygon.ws_feed}; Ctrl-C stops", soft_wrap=True)
            asyncio.run(connector.run())
        except PolygonAuthError as exc:
            console.print(f"[red]cannot stream from Polygon:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KafkaException as exc:  # the stop bound cut the last flush short (Kafka away)
            connector.report()
            console.print(
                f"[red]stopped with messages undelivered:[/red] {escape(str(exc))}; the minute bars among them are "
                "fetched over REST when the connector starts again",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
    connector.report()
    console.print("stopped; every message was flushed", soft_wrap=True)


def _serve_connector_metrics(settings: Settings, counts: Callable[[], Mapping[str, int]]) -> None:
    """The live connector's counts on /metrics, two ports above the runner's (0: a port the system picks)."""
    from core.metrics import ProcessMetrics, process_port, serve

    ops = settings.operations
    metrics = ProcessMetrics("polygon-live", ops.liveness_after_s)
    metrics.count_from("tidemark_connector_events", "what the live connector received, published and dropped", counts)
    serve(metrics, ops.metrics_host, process_port(ops.metrics_port, 2))


def _partitions(settings: Settings, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": settings.kafka.bootstrap}).list_topics(topic, timeout=30)
    return len(metadata.topics[topic].partitions)
