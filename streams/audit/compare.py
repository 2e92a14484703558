"""Whether a re-run of processors produced the live run's events: per topic, the decoded events of both runs keyed by
``event_id``, each payload compared field by field.

``ts_ingest`` (the wall-clock time an event was published) is left out: it is the one field the contract lets differ
between two publications of the same fact. Everything else must be equal, floats bit for bit (a NaN equals a NaN:
the same computation gives the same NaN). An event id seen more than once on one side (a re-send after a restart, at
least once) is compared by its first occurrence; the later ones are counted, and one whose payload differs from the
first is counted as inconsistent, since that side disagrees with itself.

Pure: decoded events in, a report out; no Kafka. ``tidemark.rerun`` reads the topics and runs the processors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORED: frozenset[str] = frozenset({"ts_ingest"})
"""Fields that record when an event was published, not what it says."""
EXAMPLES = 5
"""Event ids listed per kind of mismatch (the counts are always whole)."""
FIELDS_SHOWN = 6
"""Differing fields shown per differing event."""
VALUE_WIDTH = 60
"""Characters of a value shown in a difference."""


@dataclass(frozen=True)
class FieldDifference:
    """One field (a path into nested maps and arrays: ``weights[2].weight``) whose values differ; ``live`` and
    ``rerun`` are short texts of the two values (``<absent>`` where a side lacks the field)."""

    path: str
    live: str
    rerun: str


@dataclass(frozen=True)
class Differing:
    """An event both runs published under the same id, with different payloads: the first differing fields."""

    event_id: str
    fields: tuple[FieldDifference, ...]
    more_fields: int = 0
    """Differing fields beyond those listed."""


@dataclass(frozen=True)
class TopicComparison:
    """One topic: how many distinct events each run published, how many are identical, and the mismatches (counts
    whole, ids and differences the first few in the live run's order, or the re-run's for extra ones)."""

    topic: str
    live: int
    rerun: int
    identical: int
    missing: int = 0
    extra: int = 0
    differing: int = 0
    missing_ids: tuple[str, ...] = ()
    extra_ids: tuple[str, ...] = ()
    differences: tuple[Differing, ...] = ()
    live_duplicates: int = 0
    rerun_duplicates: int = 0
    inconsistent: tuple[str, ...] = field(default=())
    """Ids published twice by one side with different payloads (``live:<id>`` or ``rerun:<id>``), the first few."""

    @property
    def ok(self) -> bool:
        """Every event of either run is in the other, with an identical payload, and neither contradicts itself."""
        return not (self.missing or self.extra or self.differing or self.inconsistent)


def comparable(event: Mapping[str, Any], ignored: frozenset[str] = IGNORED) -> dict[str, Any]:
    """The payload that must be equal between the runs."""
    return {name: value for name, value in event.items() if name not in ignored}


def same(a: Any, b: Any) -> bool:
    """Equal as decoded Avro values: maps and arrays element by element, floats exactly, NaN equal to NaN, and a
    float never equal to an int or a bool (a changed type is a difference)."""
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, float) and isinstance(b, float)):
            return False
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


_ABSENT = object()


def short(value: Any, width: int = VALUE_WIDTH) -> str:
    """A value as a line of at most ``width`` characters (floats with every digit: a last-digit difference shows)."""
    if value is _ABSENT:
        return "<absent>"
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def field_differences(live: Any, rerun: Any, path: str = "") -> Iterator[FieldDifference]:
    """The innermost differing paths between two payloads, in field order: into maps by key and into arrays of the
    same length by index; elsewhere the whole value."""
    if isinstance(live, Mapping) and isinstance(rerun, Mapping):
        for key in [*live, *(k for k in rerun if k not in live)]:
            a, b = live.get(key, _ABSENT), rerun.get(key, _ABSENT)
            if a is _ABSENT or b is _ABSENT or not same(a, b):
                yield from field_differences(a, b, f"{path}.{key}" if path else str(key))
        return
    if isinstance(live, list | tuple) and isinstance(rerun, list | tuple) and len(live) == len(rerun):
        for index, (a, b) in enumerate(zip(live, rerun, strict=True)):
            if not same(a, b):
                yield from field_differences(a, b, f"{path}[{index}]")
        return
    yield FieldDifference(path or "(value)", short(live), short(rerun))


def differing(event_id: str, live: Mapping[str, Any], rerun: Mapping[str, Any], shown: int = FIELDS_SHOWN) -> Differing:
    found = list(field_differences(live, rerun))
    return Differing(event_id, tuple(found[:shown]), max(len(found) - shown, 0))


def _first_by_id(
    events: Iterable[Mapping[str, Any]], ignored: frozenset[str], side: str
) -> tuple[dict[str, dict[str, Any]], int, list[str]]:
    """Each id's first payload in order, the number of repeated ids, and the ids repeated with another payload."""
    first: dict[str, dict[str, Any]] = {}
    duplicates = 0
    inconsistent: list[str] = []
    for event in events:
        event_id = str(event["event_id"])
        payload = comparable(event, ignored)
        if event_id not in first:
            first[event_id] = payload
            continue
        duplicates += 1
        if not same(first[event_id], payload) and f"{side}:{event_id}" not in inconsistent:
            inconsistent.append(f"{side}:{event_id}")
    return first, duplicates, inconsistent


def compare_topic(
    topic: str,
    live: Iterable[Mapping[str, Any]],
    rerun: Iterable[Mapping[str, Any]],
    ignored: frozenset[str] = IGNORED,
    examples: int = EXAMPLES,
) -> TopicComparison:
    """The events of one topic, live run against re-run (each a decoded record with an ``event_id``, in log order;
    the caller has kept only the re-run processors' events)."""
    live_by_id, live_dupes, live_bad = _first_by_id(live, ignored, "live")
    rerun_by_id, rerun_dupes, rerun_bad = _first_by_id(rerun, ignored, "rerun")
    missing = [event_id for event_id in live_by_id if event_id not in rerun_by_id]
    extra = [event_id for event_id in rerun_by_id if event_id not in live_by_id]
    identical = 0
    differences: list[Differing] = []
    count = 0
    for event_id, payload in live_by_id.items():
        other = rerun_by_id.get(event_id)
        if other is None:
            continue
        if same(payload, other):
            identical += 1
            continue
        count += 1
        if len(differences) < examples:
            differences.append(differing(event_id, payload, other))
    return TopicComparison(
        topic=topic,
        live=len(live_by_id),
        rerun=len(rerun_by_id),
        identical=identical,
        missing=len(missing),
        extra=len(extra),
        differing=count,
        missing_ids=tuple(missing[:examples]),
        extra_ids=tuple(extra[:examples]),
        differences=tuple(differences),
        live_duplicates=live_dupes,
        rerun_duplicates=rerun_dupes,
        inconsistent=tuple([*live_bad, *rerun_bad][:examples]),
    )


def compare_topics(
    live: Mapping[str, Sequence[Mapping[str, Any]]],
    rerun: Mapping[str, Sequence[Mapping[str, Any]]],
    ignored: frozenset[str] = IGNORED,
    examples: int = EXAMPLES,
) -> list[TopicComparison]:
    """``compare_topic`` for every topic either side names, in the live side's order, then the re-run's."""
    topics = [*live, *(t for t in rerun if t not in live)]
    return [compare_topic(t, live.get(t, ()), rerun.get(t, ()), ignored, examples) for t in topics]
