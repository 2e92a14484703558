"""The causation index: every event of the indexed topics with its position in the log, the ids it names as causes
and the business ids it is known by (``schemas.links``), in PostgreSQL, so that ``tidemark explain`` walks a chain
back with index lookups instead of a scan of the log.

It reads the same records as each topic's own projection (the sink routes them to both), decodes them generically and
writes them exactly once with its own offsets. It never dead-letters: whatever it cannot decode, the topic's own
projection or consumer dead-letters already; it counts it (``undecodable``) and moves on.

Every column is a function of the record and its position, and the result does not depend on the order the records
are applied in, so a rebuild equals the live tables: an event id seen more than once (a republished event) keeps its
first position (the least topic, partition and offset) with that record's fields, and its causes and aliases are
those of every copy.

Bars are not indexed: the bars table holds them, and a bar-derived event stores the window of bars behind it
(``bars``, a ``schemas.links.BarWindow``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.consumed import Consumed
from projections.offsets import add_counter, apply_exactly_once
from schemas.catalogue import CATALOGUE
from schemas.codec import DecodeError, get_registry
from schemas.links import DEFAULT_ROTATION_MOMENTUM, aliases, bar_window, links, summary

log = logging.getLogger("tidemark.projections")

CAUSATION = "causation"
"""The projection's name: it keys its applied offsets and counters."""
NOT_INDEXED = frozenset({"md.bars.1s", "md.bars.1m", "md.bars.1d", "md.trades"})
"""Bars (the bars table holds them; events name their window) and trades (not an input of any processor)."""
INDEXED_TOPICS: tuple[str, ...] = tuple(
    spec.name for spec in CATALOGUE if spec.value_schemas and spec.name not in NOT_INDEXED
)
"""Every topic of the contract but bars and trades (catalogue names); internal topics carry no events."""

_STAGES = """
CREATE TEMP TABLE IF NOT EXISTS event_index_stage (
    event_id text, schema text, topic text, partition int, "offset" bigint, ts_ns bigint, key text, source text,
    summary text, bars text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS event_causes_stage (event_id text, cause_id text, relation text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS event_aliases_stage (alias text, event_id text) ON COMMIT DELETE ROWS;
"""
_INDEX_COLUMNS = ("event_id", "schema", "topic", "partition", "offset", "ts_ns", "key", "source", "summary", "bars")
# The least position of each event id wins, whichever copy came first: the content never depends on the order.
_MERGE = """
INSERT INTO event_index (event_id, schema, topic, partition, "offset", ts_event, key, source, summary, bars)
SELECT DISTINCT ON (event_id::uuid) event_id::uuid, schema, topic, partition, "offset",
       timestamptz 'epoch' + (ts_ns / 1000) * interval '1 microsecond', key, source, summary, bars::jsonb
FROM event_index_stage
ORDER BY event_id::uuid, topic COLLATE "C", partition, "offset"
ON CONFLICT (event_id) DO UPDATE SET
    schema = EXCLUDED.schema, topic = EXCLUDED.topic, partition = EXCLUDED.partition, "offset" = EXCLUDED."offset",
    ts_event = EXCLUDED.ts_event, key = EXCLUDED.key, source = EXCLUDED.source, summary = EXCLUDED.summary,
    bars = EXCLUDED.bars
WHERE (EXCLUDED.topic COLLATE "C", EXCLUDED.partition, EXCLUDED."offset")
    < (event_index.topic COLLATE "C", event_index.partition, event_index."offset");
INSERT INTO event_causes (event_id, cause_id, relation)
SELECT DISTINCT event_id::uuid, cause_id, relation FROM event_causes_stage
ON CONFLICT DO NOTHING;
INSERT INTO event_aliases (alias, event_id)
SELECT DISTINCT alias, event_id::uuid FROM event_aliases_stage
ON CONFLICT DO NOTHING;
"""


@dataclass
class Indexed:
    """What one decodable record adds: its ``event_index`` row, its causes and its aliases."""

    row: tuple[Any, ...]
    causes: list[tuple[str, str, str]]
    aliases: list[tuple[str, str]]


def _text(value: str) -> str:
    """PostgreSQL text holds no NUL character, which a string of any event may: it would fail the whole batch."""
    return value.replace("\x00", "\ufffd")


Outcome = Indexed | str
"""What became of a record: its rows, or the counter it goes to (``undecodable``, ``unindexable``)."""


class CausationIndex:
    """Applies batches of any indexed topic's records exactly once (offsets under ``CAUSATION``)."""

    def __init__(self, pool: asyncpg.Pool, rotation_momentum: int = DEFAULT_ROTATION_MOMENTUM) -> None:
        """``rotation_momentum``: ``TIDEMARK_ROTATION_MOMENTUM``, the part of a sector rotation's bar window its event
        does not say."""
        self._pool = pool
        self._momentum = rotation_momentum

    def outcome(self, record: Consumed) -> Outcome:
        try:
            decoded = get_registry().decode(record.value)
        except DecodeError:
            return "undecodable"
        schema, event = decoded.schema, decoded.record
        try:
            window = bar_window(schema, event, rotation_momentum=self._momentum)
            found = links(schema, event)
            known_as = aliases(schema, event)
            line = summary(schema, event)
        except Exception:  # a bug must not stop the topic's own projection: counted and logged, never dead-lettered
            log.exception("causation index: %s[%d]@%d not indexed", record.topic, record.partition, record.offset)
            return "unindexable"
        event_id = event["event_id"]
        row = (
            event_id,
            schema,
            record.topic,
            record.partition,
            record.offset,
            event["ts_event"],
            None if record.key is None else _text(record.key.decode("utf-8", errors="replace")),
            _text(event["source"]),
            _text(line),
            # jsonb refuses the escaped NUL as text does the character.
            None if window is None else json.dumps(window.to_json(), sort_keys=True).replace("\\u0000", "\\ufffd"),
        )
        return Indexed(
            row,
            [(event_id, _text(link.cause_id), _text(link.relation)) for link in found],
            [(_text(alias), event_id) for alias in known_as],
        )

    async def apply(self, records: Sequence[Consumed]) -> None:
        # Decoded before the transaction, which holds the offsets' row locks: only the writes happen inside it.
        outcomes = {id(record): self.outcome(record) for record in records}

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            found = [outcomes[id(record)] for record in fresh]
            indexed = [o for o in found if isinstance(o, Indexed)]
            await conn.execute(_STAGES)
            await conn.copy_records_to_table(
                "event_index_stage", records=[o.row for o in indexed], columns=_INDEX_COLUMNS
            )
            causes = [cause for o in indexed for cause in o.causes]
            if causes:
                await conn.copy_records_to_table("event_causes_stage", records=causes)
            known_as = [alias for o in indexed for alias in o.aliases]
            if known_as:
                await conn.copy_records_to_table("event_aliases_stage", records=known_as)
            await conn.execute(_MERGE)
            for counter in ("undecodable", "unindexable"):
                await add_counter(conn, CAUSATION, counter, sum(1 for o in found if o == counter))

        await apply_exactly_once(self._pool, CAUSATION, records, write)


# -- the read side of `tidemark explain` ---------------------------------------------------------------------------

_UUID = "'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'"
_EVENT_COLUMNS = 'event_id::text, schema, topic, partition, "offset", ts_event, key, source, summary, bars::text'
# The indexed event a cause id stands for: itself when the index holds it, else the event it is an alias of.
_RESOLVE = f"""
LEFT JOIN LATERAL (
    SELECT i.event_id FROM event_index i
    WHERE i.event_id = CASE WHEN c.cause_id ~ {_UUID} THEN c.cause_id::uuid END
    UNION ALL
    SELECT a.event_id FROM event_aliases a WHERE a.alias = c.cause_id
    LIMIT 1
) r ON true
"""
# Every link on the way back from $1, at most $2 links deep; each (link, depth) once, so a DAG costs its edges, not
# its paths.
_WALK = f"""
WITH RECURSIVE walk(event_id, cause_id, relation, resolved, depth) AS (
    SELECT c.event_id, c.cause_id, c.relation, r.event_id, 1
    FROM event_causes c {_RESOLVE}
    WHERE c.event_id = $1::uuid
  UNION
    SELECT c.event_id, c.cause_id, c.relation, r.event_id, w.depth + 1
    FROM walk w JOIN event_causes c ON c.event_id = w.resolved {_RESOLVE}
    WHERE w.depth < $2
)
SELECT event_id::text, cause_id, relation, resolved::text, min(depth) AS depth FROM walk GROUP BY 1, 2, 3, 4
"""


async def find_events(conn: asyncpg.Connection, ident: str) -> list[asyncpg.Record]:
    """The indexed event with id ``ident``, or the events ``ident`` is an alias of (a client order id, ...)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM event_index"
        f" WHERE event_id = CASE WHEN $1::text ~ {_UUID} THEN $1::text::uuid END"
        f" UNION SELECT {_EVENT_COLUMNS} FROM event_index"
        " WHERE event_id IN (SELECT event_id FROM event_aliases WHERE alias = $1::text)"
        ' ORDER BY topic, partition, "offset"',
        ident,
    )
    return rows


async def walk_causes(conn: asyncpg.Connection, event_id: str, depth: int) -> list[asyncpg.Record]:
    """Every link (event_id, cause_id, relation, resolved, depth) on the way back from ``event_id``, ``depth`` deep."""
    rows: list[asyncpg.Record] = await conn.fetch(_WALK, event_id, depth)
    return rows


async def indexed_events(conn: asyncpg.Connection, event_ids: Sequence[str]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM event_index WHERE event_id = ANY($1::uuid[])", list(event_ids)
    )
    return rows
