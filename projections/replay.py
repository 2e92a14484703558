"""Rebuilding the projections from the log, and proving a rebuild equal to the live tables (``tidemark replay``).

A rebuild runs the live sink's own routes (``projection_routes``) over a bounded range of every projected
partition, into a fresh schema or database and a separate Redis database, so what it proves is the live code. Dead
letters are counted, not sent again: the live sink sent them already.

Verification reads the live tables and their applied offsets in one repeatable-read snapshot, rebuilds up to exactly
those offsets (each projection to its own), and compares every table by a canonical content hash: the md5 of each
row's text under fixed output settings, sorted bytewise and hashed again, so neither row order, physical layout nor
collation matters. Columns that hold the wall clock of the write (not a fact of the log) are left out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from confluent_kafka import Consumer, KafkaError, TopicPartition

from core import batches
from core.consumed import Consumed
from core.kafka import consume_batch, watermarks
from core.settings import Settings
from projections.migrations import apply_migrations
from projections.redis_store import KEY_PREFIX, RedisProjection
from projections.sink import Route, projection_reader_config, projection_routes

log = logging.getLogger("tidemark.replay")

# Columns that record when a row was written, not what the log says: a rebuild cannot (and need not) repeat them.
WALL_CLOCK_COLUMNS = {"applied_offsets": ("updated_at",), "schema_migrations": ("applied_at",)}
# Output settings that make a row's text canonical: the same values print the same on any session.
CANONICAL_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}
DEFAULT_SCHEMA = "replay"
# The rebuild's Redis is the live server's database 15 unless told otherwise: the live cache is never touched.
DEFAULT_REDIS_DB = 15
_BATCH = 20_000


class ReplayError(RuntimeError):
    """A replay that cannot start or cannot finish, with what to do about it."""


def schema_dsn(dsn: str, schema: str) -> str:
    """``dsn`` with the schema first on the search path (asyncpg passes unknown query parameters as settings)."""
    if not schema.isidentifier():
        raise ReplayError(f"schema name {schema!r} is not a plain identifier")
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", f"{schema},public"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def redis_database(url: str, database: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass(frozen=True)
class Target:
    """Where a rebuild writes: a DSN (its search path names the schema) and the schema its tables land in."""

    dsn: str
    schema: str
    label: str


async def prepare_target(target: Target, live_dsn: str, replace: bool) -> list[str]:
    """An empty, migrated target: the replay schema is dropped and made again; a database named by ``--into`` must
    hold no tables unless ``replace``. Returns the migrations applied."""
    conn = await asyncpg.connect(target.dsn)
    try:
        if target.schema == "public":
            tables = await _tables(conn, "public")
            if tables and not replace:
                raise ReplayError(
                    f"{target.label} already holds {len(tables)} table(s) ({', '.join(tables[:5])}...); "
                    "name an empty database, or pass --replace to drop them"
                )
            if same_database(target.dsn, live_dsn):
                raise ReplayError("--into names the live database: a rebuild needs a database of its own")
            for table in tables:
                await conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
        else:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')
            await conn.execute(f'CREATE SCHEMA "{target.schema}"')
    finally:
        await conn.close()
    return await apply_migrations(target.dsn)


def same_database(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port, pa.path) == (pb.hostname, pb.port, pb.path)


async def _tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'"
        " ORDER BY table_name",
        schema,
    )
    return [r["table_name"] for r in rows]


# ---- the plan: which records each projection applies ----------------------------------------------------------


@dataclass
class PartitionPlan:
    """One partition's range: records from ``start`` on, each projection up to its own (exclusive) end."""

    start: int
    ends: dict[str, int]

    @property
    def end(self) -> int:
        return max(self.ends.values(), default=self.start)


Plan = dict[tuple[str, int], PartitionPlan]


def offsets_at(consumer: Consumer, topic: str, partitions: Sequence[int], ts_ms: int) -> dict[int, int]:
    """Per partition, the first offset whose timestamp is at or after ``ts_ms`` (the high watermark if none)."""
    found = consumer.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in partitions], timeout=30)
    result = {}
    for tp in found:
        result[tp.partition] = (
            tp.offset if tp.offset >= 0 else watermarks(consumer, TopicPartition(topic, tp.partition))[1]
        )
    return result


def plan_replay(
    consumer: Consumer,
    routes: dict[str, tuple[Route, ...]],
    from_ms: int | None = None,
    to_ms: int | None = None,
    live_ends: dict[tuple[str, str, int], int] | None = None,
) -> tuple[Plan, dict[str, int]]:
    """The range of every partition of the routed topics, and per topic the records retention deleted before it.

    ``live_ends`` (projection, topic, partition) → next offset bounds each projection to what the live one applied;
    otherwise every projection runs to ``to_ms`` or to the end of the log (the last stable offset: read_committed).
    A verification needs every record the live projections applied: a log that lacks some is an error.
    """
    plan: Plan = {}
    truncated: dict[str, int] = {}
    missing: list[str] = []
    for topic, topic_routes in routes.items():
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            raise ReplayError(f"topic {topic}: {metadata.error.str()} (create the topics: `tidemark topics create`)")
        partitions = sorted(metadata.partitions)
        starts = offsets_at(consumer, topic, partitions, from_ms) if from_ms is not None else {}
        stops = offsets_at(consumer, topic, partitions, to_ms) if to_ms is not None else {}
        for partition in partitions:
            low, high = watermarks(consumer, TopicPartition(topic, partition))
            start = max(low, starts.get(partition, low))
            if from_ms is None and low > 0:
                truncated[topic] = truncated.get(topic, 0) + low
            if live_ends is not None:
                ends = {r.projection: live_ends.get((r.projection, topic, partition), 0) for r in topic_routes}
                if max(ends.values()) > high:
                    missing.append(f"{topic}[{partition}] applied up to {max(ends.values())}, the log ends at {high}")
            else:
                stop = stops.get(partition, high)
                ends = {r.projection: stop for r in topic_routes}
            plan[(topic, partition)] = PartitionPlan(start, ends)
    if live_ends is not None and truncated:
        missing += [f"{topic}: retention deleted its first {count:,} record(s)" for topic, count in truncated.items()]
    if missing:
        raise ReplayError(
            "the live projections applied records the log no longer holds (topics deleted or recreated, or past "
            "their retention), so a rebuild cannot be compared with them: "
            + "; ".join(missing[:5])
            + (f"; and {len(missing) - 5} more partition(s)" if len(missing) > 5 else "")
        )
    return plan, truncated


# ---- the rebuild ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a rebuild did: records read and applied per projection, dead letters seen again, records retention had
    deleted before its range (per topic), the time it took."""

    read: int = 0
    applied: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int], None]


class Rebuild:
    """Runs the live projections' routes over a plan, into a target database and Redis."""

    def __init__(
        self, settings: Settings, target: Target, redis_url: str, projections: Sequence[str] = (), stall_s: float = 60.0
    ) -> None:
        self.settings = settings
        self.target = target
        self.redis_url = redis_url
        self.projections = tuple(projections)
        self.stall_s = stall_s
        self.outcome = Outcome()

    def consumer(self) -> Consumer:
        # Never subscribed or committed: the plan assigns the partitions and their offsets.
        return Consumer(projection_reader_config(self.settings, f"{self.settings.app_id}-replay"))

    async def _dead_letter(
        self, records: Sequence[Consumed], failures: Sequence[tuple[int, str]], processor: str, error_type: str
    ) -> None:
        if failures:
            self.outcome.dead_letters[processor] = self.outcome.dead_letters.get(processor, 0) + len(failures)

    def routes(self, pool: asyncpg.Pool, redis: RedisProjection) -> dict[str, tuple[Route, ...]]:
        routes = projection_routes(self.settings, pool, redis, self._dead_letter)
        if not self.projections:
            return routes
        known = {route.projection for topic_routes in routes.values() for route in topic_routes}
        unknown = sorted(set(self.projections) - known)
        if unknown:
            raise ReplayError(f"no projection named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        chosen = {t: tuple(r for r in rs if r.projection in self.projections) for t, rs in routes.items()}
        return {t: rs for t, rs in chosen.items() if rs}

    async def run(
        self,
        from_ms: int | None = None,
        to_ms: int | None = None,
        live_ends: dict[tuple[str, str, int], int] | None = None,
        progress: Callable[[Plan], Progress] | None = None,
    ) -> Outcome:
        pool = await asyncpg.create_pool(self.target.dsn, min_size=1, max_size=2, command_timeout=300)
        redis_client = aioredis.from_url(self.redis_url, socket_timeout=30, socket_connect_timeout=10)
        consumer = self.consumer()
        try:
            await _clear_cache(redis_client)
            routes = self.routes(pool, RedisProjection(redis_client))
            plan, self.outcome.truncated = await asyncio.to_thread(
                plan_replay, consumer, routes, from_ms, to_ms, live_ends
            )
            report = progress(plan) if progress else None
            await self._consume(consumer, routes, plan, report)
        finally:
            consumer.close()
            await pool.close()
            await redis_client.aclose()
        return self.outcome

    async def _consume(
        self, consumer: Consumer, routes: dict[str, tuple[Route, ...]], plan: Plan, report: Progress | None
    ) -> None:
        pending = {tp: p for tp, p in plan.items() if p.end > p.start}
        position = {tp: p.start for tp, p in pending.items()}
        total = sum(p.end - p.start for p in pending.values())
        if pending:
            consumer.assign([TopicPartition(t, p, plan[(t, p)].start) for t, p in pending])
        started = time.monotonic()
        last_progress = started
        while pending:
            messages = await asyncio.to_thread(consume_batch, consumer, _BATCH, 1.0)
            by_topic: dict[str, list[Consumed]] = {}
            for message in messages:
                tp = (message.topic(), message.partition())
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        position[tp] = max(position.get(tp, 0), message.offset())
                        continue
                    raise ReplayError(f"reading {tp[0]}[{tp[1]}]: {error.str()}")
                if tp not in pending or message.offset() >= pending[tp].end:
                    continue
                position[tp] = message.offset() + 1
                by_topic.setdefault(tp[0], []).append(
                    Consumed(tp[0], tp[1], message.offset(), message.key(), message.value())
                )
            for topic, records in by_topic.items():
                self.outcome.read += len(records)
                for route in routes[topic]:
                    mine = [r for r in records if r.offset < pending[(r.topic, r.partition)].ends[route.projection]]
                    if mine:
                        await batches.handle_batch(mine, route.projection, route.project, self._dead_letter)
                        self.outcome.applied[route.projection] = self.outcome.applied.get(route.projection, 0) + len(
                            mine
                        )
            done = [tp for tp, p in pending.items() if position[tp] >= p.end]
            for tp in done:
                del pending[tp]
            if done:
                consumer.incremental_unassign([TopicPartition(t, p) for t, p in done])
            now = time.monotonic()
            if messages:
                last_progress = now
            elif now - last_progress > self.stall_s:
                stuck = ", ".join(
                    f"{t}[{p}] at {position[(t, p)]} of {e.end}" for (t, p), e in list(pending.items())[:5]
                )
                raise ReplayError(
                    f"no records for {self.stall_s:.0f} s while {len(pending)} partition(s) were not done: {stuck}"
                )
            if report:
                report(sum(min(position[tp], p.end) - p.start for tp, p in plan.items() if p.end > p.start), total)
        self.outcome.seconds = time.monotonic() - started


async def _clear_cache(client: aioredis.Redis) -> None:
    """The rebuild's cache starts empty: every key under Tidemark's prefix goes (nothing else in that database)."""
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


# ---- verification -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableDigest:
    table: str
    rows: int
    digest: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Difference:
    """A table whose content differs: its digests and the first rows found on one side only."""

    table: str
    live: TableDigest | None
    rebuilt: TableDigest | None
    only_live: list[str]
    only_rebuilt: list[str]


async def canonical(conn: asyncpg.Connection) -> None:
    for name, value in CANONICAL_SETTINGS.items():
        await conn.execute(f"SELECT set_config('{name}', $1, false)", value)


async def _columns(conn: asyncpg.Connection, schema: str, table: str) -> tuple[str, ...]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
        " ORDER BY column_name",
        schema,
        table,
    )
    skip = WALL_CLOCK_COLUMNS.get(table, ())
    return tuple(r["column_name"] for r in rows if r["column_name"] not in skip)


def _row_text(columns: Sequence[str]) -> str:
    return "ROW(" + ", ".join(f'"{c}"' for c in columns) + ")::text"


async def table_digest(conn: asyncpg.Connection, schema: str, table: str, columns: Sequence[str]) -> TableDigest:
    """Row count and sha256 of the bytewise-sorted md5s of every row's canonical text (columns by name)."""
    row = _row_text(columns)
    hashes = await conn.fetch(f'SELECT md5({row}) AS h FROM "{schema}"."{table}"')
    ordered = sorted(r["h"] for r in hashes)
    digest = hashlib.sha256("\n".join(ordered).encode()).hexdigest()
    return TableDigest(table, len(ordered), digest, tuple(columns))


async def differing_rows(
    live: asyncpg.Connection,
    live_schema: str,
    rebuilt: asyncpg.Connection,
    rebuilt_schema: str,
    table: str,
    columns: Sequence[str],
    limit: int = 5,
) -> tuple[list[str], list[str]]:
    """The first rows (canonical text, sorted) that only one side holds."""
    row = _row_text(columns)
    query = f'SELECT md5({row}) AS h FROM "{{}}"."{table}"'
    live_hashes = {r["h"] for r in await live.fetch(query.format(live_schema))}
    rebuilt_hashes = {r["h"] for r in await rebuilt.fetch(query.format(rebuilt_schema))}

    async def rows(conn: asyncpg.Connection, schema: str, wanted: set[str]) -> list[str]:
        if not wanted:
            return []
        found = await conn.fetch(
            f'SELECT {row} AS r FROM "{schema}"."{table}" WHERE md5({row}) = ANY($1::text[])', list(wanted)
        )
        return sorted(r["r"] for r in found)[:limit]

    return (
        await rows(live, live_schema, live_hashes - rebuilt_hashes),
        await rows(rebuilt, rebuilt_schema, rebuilt_hashes - live_hashes),
    )


async def live_offsets(conn: asyncpg.Connection) -> dict[tuple[str, str, int], int]:
    rows = await conn.fetch("SELECT consumer, topic, partition, next_offset FROM applied_offsets")
    return {(r["consumer"], r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def compare(
    live: asyncpg.Connection, live_schema: str, rebuilt: asyncpg.Connection, rebuilt_schema: str
) -> tuple[list[tuple[TableDigest, TableDigest]], list[Difference], list[str]]:
    """Digests of every table the rebuild made, both sides; the tables that differ; live tables it did not make."""
    await canonical(live)
    await canonical(rebuilt)
    made = await _tables(rebuilt, rebuilt_schema)
    live_tables = set(await _tables(live, live_schema))
    equal: list[tuple[TableDigest, TableDigest]] = []
    differences: list[Difference] = []
    for table in made:
        columns = await _columns(rebuilt, rebuilt_schema, table)
        ours = await table_digest(rebuilt, rebuilt_schema, table, columns)
        if table not in live_tables:
            differences.append(Difference(table, None, ours, [], []))
            continue
        if await _columns(live, live_schema, table) != columns:
            differences.append(Difference(table, None, ours, ["(the live table has other columns)"], []))
            continue
        theirs = await table_digest(live, live_schema, table, columns)
        if theirs.digest == ours.digest:
            equal.append((theirs, ours))
        else:
            only_live, only_rebuilt = await differing_rows(live, live_schema, rebuilt, rebuilt_schema, table, columns)
            differences.append(Difference(table, theirs, ours, only_live, only_rebuilt))
    return equal, differences, sorted(live_tables - set(made))
