"""The causation tree of ``tidemark explain``: the index's rows (events and the links between them) as a tree rooted at
the explained event, walking back to its causes.

Causes form a DAG (a portfolio's targets name the candidate that a transition's command names too): an event is
expanded where the walk first meets it, depth first in the order shown, and every later mention is a reference to it
(``see``). Causes of one event that name the same indexed event under several fields (an order update's causation
and its ``client_order_id``) are one child with every relation. A cause the index does not hold is a leaf with its
id. Pure: the rows come from ``projections.causation``'s tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.links import CAUSATION, BarWindow, short_name


@dataclass(frozen=True)
class Indexed:
    """One row of ``event_index``."""

    event_id: str
    schema: str
    topic: str
    partition: int
    offset: int
    ts_event: datetime
    key: str | None
    source: str
    summary: str
    window: BarWindow | None = None


@dataclass(frozen=True)
class Edge:
    """One row of ``event_causes``: ``event_id`` names ``cause_id`` in ``relation``; ``resolved`` is the indexed event
    the id (or alias) stands for, None when the index has none."""

    event_id: str
    cause_id: str
    relation: str
    resolved: str | None


@dataclass
class Node:
    cause_id: str
    """The id as the child named it (an event id, or an alias such as a client order id); the root's own id."""
    relations: tuple[str, ...]
    """The fields of the child that name it (empty for the root)."""
    event: Indexed | None
    """None: not in the index."""
    see: bool = False
    """Shown in full earlier in the tree."""
    truncated: bool = False
    """It has causes beyond the depth asked for."""
    causes: list[Node] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        return self.event.event_id if self.event is not None else self.cause_id


def build(root: Indexed, events: Mapping[str, Indexed], edges: Iterable[Edge], depth: int) -> Node:
    """The tree of ``root``'s causes down to ``depth`` levels (``events``: every indexed event the edges resolve to)."""
    named: dict[str, dict[str, tuple[str, list[str]]]] = {}
    for edge in edges:
        target = edge.resolved if edge.resolved is not None and edge.resolved in events else f"?{edge.cause_id}"
        _, relations = named.setdefault(edge.event_id, {}).setdefault(target, (edge.cause_id, []))
        if edge.relation not in relations:
            relations.append(edge.relation)
    expanded: set[str] = set()

    def visit(node: Node, level: int) -> Node:
        assert node.event is not None
        expanded.add(node.event.event_id)
        children = named.get(node.event.event_id, {})
        if children and level >= depth:
            node.truncated = True
            return node
        for target, (cause_id, relations) in sorted(children.items(), key=lambda item: _order(item, events)):
            event = None if target.startswith("?") else events[target]
            child = Node(cause_id, tuple(sorted(relations, key=_relation_rank)), event)
            if event is None:
                node.causes.append(child)
            elif event.event_id in expanded:
                child.see = True
                node.causes.append(child)
            else:
                node.causes.append(visit(child, level + 1))
        return node

    return visit(Node(root.event_id, (), root), 0)


def _relation_rank(relation: str) -> tuple[int, str]:
    return (0 if relation == CAUSATION else 1, relation)


def _order(item: tuple[str, tuple[str, list[str]]], events: Mapping[str, Indexed]) -> tuple[Any, ...]:
    """Causation first, then by the naming field, then oldest first; ids last, so the order is total."""
    target, (cause_id, relations) = item
    event = events.get(target)
    when = event.ts_event.timestamp() if event is not None else float("inf")
    return (min(_relation_rank(r) for r in relations), when, cause_id)


def iso(moment: datetime) -> str:
    """UTC, ISO 8601 with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ns_iso(ns: int) -> str:
    """UTC nanoseconds as ISO 8601 (microseconds) with a Z."""
    return iso(datetime.fromtimestamp(ns // 1000 / 1_000_000, tz=UTC))


def event_json(event: Indexed) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": short_name(event.schema),
        "schema": event.schema,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "ts_event": iso(event.ts_event),
        "key": event.key,
        "source": event.source,
        "summary": event.summary,
    }


def to_json(node: Node, bars: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The tree as nested objects: each event's fields, ``relations`` (how the event below names it), its ``causes``
    and, for a bar-derived event, its ``bars`` (from ``bars``, by event id). A cause the index does not hold is
    ``{"event_id", "relations", "indexed": false}``, a later mention ``{"event_id", "relations", "see": id}``."""
    if node.event is None:
        return {"event_id": node.cause_id, "relations": list(node.relations), "indexed": False}
    if node.see:
        return {"event_id": node.event.event_id, "relations": list(node.relations), "see": node.event.event_id}
    out: dict[str, Any] = {**event_json(node.event), "relations": list(node.relations)}
    out["causes"] = [to_json(child, bars) for child in node.causes]
    if node.truncated:
        out["truncated"] = True
    if bars is not None and node.event.event_id in bars:
        out["bars"] = bars[node.event.event_id]
    return out


def windows(node: Node) -> list[Indexed]:
    """The bar-derived events expanded in the tree, in the order shown."""
    found = []
    if node.event is not None and not node.see:
        if node.event.window is not None:
            found.append(node.event)
        for child in node.causes:
            found += windows(child)
    return found
