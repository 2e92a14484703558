"""`tidemark explain EVENT_ID`: why an event happened, walked back through the causation index
(``projections.causation``) to its first causes and the bars they were computed from, as a tree; ``--json`` for
machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import typer
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from core.kafka import partition_for_key
from core.settings import Settings, get_settings
from projections.causation import find_events, indexed_events, walk_causes
from schemas.catalogue import topic_spec
from schemas.links import BarWindow, short_name
from streams.audit.tree import Edge, Indexed, Node, build, iso, ns_iso, to_json, windows
from streams.audit.window import Bar, fetch_limit, window_bars

NOT_INDEXED = "not in the causation index: {ident}; is `tidemark worker` running / caught up?"
_NS = "timestamptz 'epoch' + ($3::bigint / 1000) * interval '1 microsecond'"


@dataclass(frozen=True)
class Explained:
    tree: Node
    bars: dict[str, dict[str, Any]]
    """Per bar-derived event id in the tree: the bars behind it (``bars_json``)."""


def explain_command(
    event_id: str = typer.Argument(..., help="an event id, or an id an event is also known by (a client order id)"),
    as_json: bool = typer.Option(False, "--json", help="the tree as nested JSON objects"),
    depth: int = typer.Option(20, "--depth", min=1, help="how many causes deep to walk back"),
    bars: int = typer.Option(5, "--bars", min=0, help="bars listed under each bar-derived event (the newest)"),
) -> None:
    """Why EVENT_ID happened: its causes, their causes, ... down to the bars, as a tree with each event's topic,
    partition, offset and time. Read from the causation index that `tidemark worker` keeps in PostgreSQL."""
    from tidemark.cli import _run_db

    settings = get_settings()
    found = _run_db(lambda conn: explain(conn, settings, event_id, depth, bars))
    if isinstance(found, list):
        if not found:
            typer.echo(NOT_INDEXED.format(ident=event_id), err=True)
            raise typer.Exit(1)
        typer.echo(f"{event_id} is an alias of {len(found)} events; explain one of them:", err=True)
        for event in found:
            typer.echo(f"  {_line(event).plain}", err=True)
        raise typer.Exit(2)
    if as_json:
        sys.stdout.write(json.dumps(to_json(found.tree, found.bars), indent=2, ensure_ascii=False) + "\n")
        return
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    console.print(render(found))


async def explain(
    conn: asyncpg.Connection, settings: Settings, ident: str, depth: int, shown_bars: int
) -> Explained | list[Indexed]:
    """The tree of ``ident``'s causes with the bars behind its bar-derived events; or the events ``ident`` names when
    it is not exactly one (none: not indexed; several: an ambiguous alias)."""
    roots = [_indexed(r) for r in await find_events(conn, ident)]
    if len(roots) != 1:
        return roots
    root = roots[0]
    # One link deeper than shown, so that the tree can say where it was cut.
    links = await walk_causes(conn, root.event_id, depth + 1)
    edges = [Edge(r["event_id"], r["cause_id"], r["relation"], r["resolved"]) for r in links]
    resolved = sorted({e.resolved for e in edges if e.resolved is not None})
    events = {root.event_id: root, **{e.event_id: e for e in map(_indexed, await indexed_events(conn, resolved))}}
    tree = build(root, events, edges, depth)
    found = {}
    for event in windows(tree):
        assert event.window is not None
        found[event.event_id] = bars_json(event.window, await bars_behind(conn, event.window), shown_bars, settings)
    return Explained(tree, found)


def _indexed(row: asyncpg.Record) -> Indexed:
    window = BarWindow.from_json(json.loads(row["bars"])) if row["bars"] is not None else None
    return Indexed(
        row["event_id"],
        row["schema"],
        row["topic"],
        row["partition"],
        row["offset"],
        row["ts_event"],
        row["key"],
        row["source"],
        row["summary"],
        window,
    )


# -- the bars behind an event ---------------------------------------------------------------------------------------


async def bars_behind(conn: asyncpg.Connection, window: BarWindow) -> list[Bar]:
    """The closing bar of each row of ``window`` for every symbol (``streams.audit.window``), oldest first.

    ``projections.bar_window.bars_behind`` reads each symbol's last N bars; a window of regular-session bars, or of
    15m, 1h or session rows, needs the regular-session filter and a per-symbol bound on the bars its rows can hold
    (``fetch_limit``, by the symbol's market), hence this query. A bar projected before its id and partition were
    stored (migration 0015) has its key's partition (murmur2, as every producer of bars partitions) and no id."""
    # Each symbol's newest bar says its market, which bounds how many bars its rows can hold.
    newest = await conn.fetch(
        "SELECT s.symbol, b.asset_class FROM unnest($1::text[]) AS s(symbol) CROSS JOIN LATERAL ("
        f"  SELECT asset_class FROM bars WHERE symbol = s.symbol AND interval = $2 AND start_ts < {_NS}"
        "  ORDER BY start_ts DESC LIMIT 1) b",
        list(window.symbols),
        window.interval,
        window.as_of_ns,
    )
    classes = {r["symbol"]: r["asset_class"] for r in newest}
    symbols = [s for s in window.symbols if s in classes]
    if not symbols:
        return []
    rows = await conn.fetch(
        "SELECT b.symbol, (extract(epoch FROM b.start_ts) * 1000000)::bigint * 1000 AS start_ns,"
        " (extract(epoch FROM b.end_ts) * 1000000)::bigint * 1000 AS end_ns, b.asset_class, b.close, b.source_offset,"
        " b.source_partition, b.event_id::text"
        " FROM unnest($1::text[], $4::int[]) AS s(symbol, n) CROSS JOIN LATERAL ("
        f"  SELECT * FROM bars WHERE symbol = s.symbol AND interval = $2 AND start_ts < {_NS}"
        + ("  AND regular_session" if window.regular_session else "")
        + "  ORDER BY start_ts DESC LIMIT s.n) b",
        symbols,
        window.interval,
        window.as_of_ns,
        [fetch_limit(window, classes[s]) for s in symbols],
    )
    partitions = topic_spec(f"md.bars.{window.interval}").partitions
    by_symbol: dict[str, list[Bar]] = {}
    for r in rows:
        partition = r["source_partition"]
        by_symbol.setdefault(r["symbol"], []).append(
            Bar(
                r["symbol"],
                r["start_ns"],
                r["end_ns"],
                r["asset_class"],
                r["close"],
                r["source_offset"],
                partition if partition is not None else partition_for_key(r["symbol"].encode(), partitions),
                r["event_id"],
            )
        )
    return [bar for symbol in symbols for bar in window_bars(window, by_symbol.get(symbol, []))]


def bars_json(window: BarWindow, found: Sequence[Bar], shown: int, settings: Settings) -> dict[str, Any]:
    """The window, what the bars table holds of it, and its ``shown`` newest bars with where each is in the log."""
    topic = settings.topic(f"md.bars.{window.interval}")
    newest = sorted(sorted(found, key=lambda b: (b.start_ns, b.symbol))[-shown:] if shown else [], key=_when)
    return {
        **window.to_json(),
        "as_of": ns_iso(window.as_of_ns),
        "topic": topic,
        "found": len(found),
        "symbols_found": len({b.symbol for b in found}),
        "first_start": ns_iso(min(b.start_ns for b in found)) if found else None,
        "last_end": ns_iso(max(b.end_ns for b in found)) if found else None,
        "bars": [
            {
                "symbol": b.symbol,
                "start": ns_iso(b.start_ns),
                "end": ns_iso(b.end_ns),
                "close": b.close,
                "event_id": b.event_id,
                "topic": topic,
                "partition": b.partition,
                "offset": b.offset,
            }
            for b in newest
        ],
    }


def _when(bar: Bar) -> tuple[int, str]:
    return (bar.start_ns, bar.symbol)


# -- the tree as text -----------------------------------------------------------------------------------------------


def _line(event: Indexed, relations: Sequence[str] = ()) -> Text:
    text = Text()
    if relations:
        text.append(f"({', '.join(relations)}) ", style="dim")
    text.append(short_name(event.schema), style="bold")
    text.append(f" {event.event_id} ")
    text.append(f"{event.topic}[{event.partition}]@{event.offset}", style="cyan")
    text.append(f" {iso(event.ts_event)}", style="dim")
    text.append(f"  {event.summary}")
    return text


def _bars_label(found: dict[str, Any]) -> Text:
    rows = (
        f"{found['interval']} bars"
        if found["timeframe"] == found["interval"]
        else f"{found['timeframe']} rows of {found['interval']} bars"
    )
    count = len(found["symbols"])
    plural = "s" if count != 1 else ""
    text = Text(f"bars: {found['bars_per_symbol']} × {rows} of {count} symbol{plural}", "bold")  # noqa: RUF001
    if found["found"]:
        text.append(f", {found['first_start']} → {found['last_end']}")
    expected = found["bars_per_symbol"] * count
    if found["found"] != expected:
        text.append(f" ({found['found']} of {expected} in the bars table)", style="yellow")
    return text


def _bar_line(bar: dict[str, Any]) -> Text:
    text = Text(f"{bar['symbol']} {bar['start']} close {bar['close']:g} ")
    text.append(bar["event_id"] or "(id not stored)")
    text.append(f" {bar['topic']}[{bar['partition']}]@{bar['offset']}", style="cyan")
    return text


def render(found: Explained) -> Tree:
    def add(parent: Tree | None, node: Node) -> Tree:
        if node.event is None:
            label = Text(f"({', '.join(node.relations)}) ", style="dim")
            label.append(f"(not indexed: {node.cause_id})", style="yellow")
        elif node.see:
            label = Text(f"({', '.join(node.relations)}) ", style="dim")
            label.append(f"↑ see {node.event.event_id}", style="dim")
        else:
            label = _line(node.event, node.relations)
            if node.truncated:
                label.append("  … (deeper causes: raise --depth)", style="dim")
        branch = Tree(label) if parent is None else parent.add(label)
        if node.event is not None and not node.see:
            bars = found.bars.get(node.event.event_id)
            if bars is not None:
                listing = branch.add(_bars_label(bars))
                for bar in bars["bars"]:
                    listing.add(_bar_line(bar))
            for child in node.causes:
                add(branch, child)
        return branch

    return add(None, found.tree)
