"""``tidemark status``: one look at the whole system for an operator: which services answer, how far behind each
consumer group of this app id is, how old the analytics checkpoint and the projections' last write are, and a
verdict with an exit code a script or a cron job can act on.

Gathering (services, Kafka, PostgreSQL) is bounded per call and turns every failure into a reported fact; judging
(``assess``) is pure, so the rules are tested without services.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import typer
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, TopicPartition
from rich.console import Console
from rich.table import Table

from core.kafka import PartitionLag, partition_lags, range_reader, read_range, watermarks
from core.settings import Settings, get_settings
from tidemark.stack import ServiceStatus

# The runner's input and checkpoint topics (streams.runner.INPUT_TOPIC and CHECKPOINTS, kept equal by a unit test):
# importing the runner would load the whole analytics stack just to print a status.
RUNNER_INPUT = "md.bars.1m"
CHECKPOINT_TOPIC = "analytics.checkpoints"
RUNNER = "analytics runner"
SINK = "projection sink"
OTHER = "other"
SINK_SUFFIX = "-projections"
# A group with lag and no progress for this long is stalled (the bound of the processes' own liveness checks).
REQUEST_TIMEOUT_S = 5.0
# Checkpoint records read back from the topic's end at first: one checkpoint is a record per processor plus the
# transaction's commit marker. The window grows when other app ids' checkpoints share the topic.
CHECKPOINT_TAIL = 8

CAUGHT_UP = "caught up"
CATCHING_UP = "catching up"
STALLED = "stalled"
BEHIND = "behind, progress not measured"
NOT_STARTED = "not started"

_quiet = logging.getLogger("tidemark.status.rdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False  # a broker that goes away mid-status is reported once, not as librdkafka's log lines


# --- facts: what was observed -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupFacts:
    """A consumer group as the broker knows it (``state`` "absent": never seen), with its lag per partition."""

    group: str
    role: str
    state: str
    partitions: Sequence[PartitionLag]


@dataclass(frozen=True)
class ProjectionFacts:
    """One projection's stored offsets: how many partitions, the next offsets' sum, and when it last wrote."""

    projection: str
    partitions: int
    applied: int
    last_applied_at: datetime | None


@dataclass(frozen=True)
class Facts:
    """Everything gathered at ``now``. ``None`` means "could not be read"; the reason is in ``errors``."""

    context: str
    app_id: str
    now: datetime
    services: Sequence[ServiceStatus]
    groups: Sequence[GroupFacts] | None = None
    checkpoint_read: bool = False
    checkpoint_at: datetime | None = None  # the newest checkpoint record's Kafka timestamp; None: none yet
    projections: Sequence[ProjectionFacts] | None = None
    projections_timed: bool = True  # applied_offsets has updated_at: the projections' progress can be measured
    missing_topics: Sequence[str] = ()
    errors: Sequence[str] = ()


# --- the pure part: facts to rows and a verdict -----------------------------------------------------------


def app_groups(app_id: str, listed: Iterable[str]) -> list[str]:
    """This app id's consumer groups among ``listed``: its runner and sink groups always, then any other group named
    ``{app_id}-...`` that is not another app id's. An app id is recognised by its ``-projections`` group, so
    ``tidemark-demo`` (with ``tidemark-demo-projections``) is not taken for a group of ``tidemark``."""
    names = set(listed)
    roots = {name.removesuffix(SINK_SUFFIX) for name in names if name.endswith(SINK_SUFFIX)} | {app_id}

    def owner(name: str) -> str | None:
        owners = [r for r in roots if name == r or name.startswith(f"{r}-")]
        return max(owners, key=len) if owners else None

    own = sorted(name for name in names if owner(name) == app_id)
    expected = [app_id, f"{app_id}{SINK_SUFFIX}"]
    return expected + [name for name in own if name not in expected]


def role_of(app_id: str, group: str) -> str:
    if group == app_id:
        return RUNNER
    if group == f"{app_id}{SINK_SUFFIX}":
        return SINK
    return OTHER


@dataclass(frozen=True)
class GroupRow:
    """A group's standing: lag in total, per topic and per partition, its last progress and the verdict on it."""

    group: str
    role: str
    state: str
    lag: int
    topics: dict[str, int]
    partitions: Sequence[PartitionLag]
    progress: str | None  # what progress is measured by: "checkpoint", "projection write" (None: not measured)
    progress_at: datetime | None
    progress_age_s: float | None
    verdict: str


@dataclass(frozen=True)
class Report:
    """What ``tidemark status`` prints; ``problems`` make it unhealthy (exit 1), ``notes`` do not."""

    context: str
    app_id: str
    now: datetime
    stall_after_s: float
    services: Sequence[ServiceStatus]
    groups: Sequence[GroupRow] | None
    checkpoint_at: datetime | None
    checkpoint_age_s: float | None
    projections: Sequence[ProjectionFacts] | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    @property
    def verdict(self) -> str:
        return "healthy" if self.healthy else "UNHEALTHY: " + "; ".join(self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "app_id": self.app_id,
            "checked_at": self.now.isoformat(),
            "healthy": self.healthy,
            "verdict": self.verdict,
            "problems": self.problems,
            "notes": self.notes,
            "stall_after_s": self.stall_after_s,
            "services": [
                {"name": s.name, "address": s.address, "up": s.running, "managed": s.managed, "detail": s.detail}
                for s in self.services
            ],
            "groups": None if self.groups is None else [_group_json(g) for g in self.groups],
            "checkpoint": {
                "last_at": _iso(self.checkpoint_at),
                "age_s": self.checkpoint_age_s,
            },
            "projections": None
            if self.projections is None
            else [
                {
                    "projection": p.projection,
                    "partitions": p.partitions,
                    "applied": p.applied,
                    "last_applied_at": _iso(p.last_applied_at),
                    "age_s": _age(self.now, p.last_applied_at),
                }
                for p in self.projections
            ],
        }


def _group_json(row: GroupRow) -> dict[str, Any]:
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for p in row.partitions:
        by_topic.setdefault(p.topic, []).append(
            {"partition": p.partition, "committed": p.committed, "end": p.end, "lag": p.lag}
        )
    return {
        "group": row.group,
        "role": row.role,
        "state": row.state,
        "lag": row.lag,
        "verdict": row.verdict,
        "progress": row.progress,
        "progress_at": _iso(row.progress_at),
        "progress_age_s": row.progress_age_s,
        "topics": [
            {"topic": topic, "lag": lag, "partitions": by_topic.get(topic, [])} for topic, lag in row.topics.items()
        ],
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _age(now: datetime, at: datetime | None) -> float | None:
    """Seconds since ``at``, never negative (clocks of two hosts may disagree by a little)."""
    return None if at is None else max((now - at).total_seconds(), 0.0)


def _progress(facts: Facts, role: str) -> tuple[str | None, datetime | None]:
    """How a role's progress is measured, and its last progress (None: never): the runner's checkpoints, the
    sink's last applied offsets; (None, None) when it cannot be measured."""
    if role == RUNNER and facts.checkpoint_read:
        return "checkpoint", facts.checkpoint_at
    if role == SINK and facts.projections is not None and facts.projections_timed:
        stamps = [p.last_applied_at for p in facts.projections if p.last_applied_at is not None]
        return "projection write", max(stamps, default=None)
    return None, None


def judge_group(lag: int, state: str, measured: bool, age_s: float | None, stall_after_s: float) -> str:
    """No lag is fine; lag is fine while the group progressed within ``stall_after_s``; lag with no progress
    (none ever, or too long ago) is stalled. Lag on a group whose progress is not measured is only noted."""
    if lag <= 0:
        return NOT_STARTED if state == "absent" else CAUGHT_UP
    if not measured:
        return BEHIND
    if age_s is None or age_s > stall_after_s:
        return STALLED
    return CATCHING_UP


def _describe(row: GroupRow, stall_after_s: float) -> str:
    if row.progress_age_s is None:
        since = f"no {row.progress} yet"
    else:
        since = f"{row.progress} {_duration(row.progress_age_s)} ago"
    return f"group {row.group} ({row.role}) stalled: lag {row.lag:,}, {since} (bound {_duration(stall_after_s)})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def assess(facts: Facts, stall_after_s: float) -> Report:
    """The rows and the verdict for ``facts``: unhealthy when a service is down, something could not be read, or a
    group is stalled (lag > 0 and no progress for longer than ``stall_after_s``)."""
    problems = [f"{s.name} down ({s.detail})" for s in facts.services if not s.running]
    problems += list(facts.errors)
    notes: list[str] = []
    rows: list[GroupRow] | None = None
    if facts.groups is not None:
        rows = []
        for group in facts.groups:
            topics: dict[str, int] = {}
            for p in group.partitions:
                topics[p.topic] = topics.get(p.topic, 0) + p.lag
            lag = sum(topics.values())
            progress, at = _progress(facts, group.role)
            age = _age(facts.now, at)
            verdict = judge_group(lag, group.state, progress is not None, age, stall_after_s)
            row = GroupRow(
                group.group, group.role, group.state, lag, topics, group.partitions, progress, at, age, verdict
            )
            rows.append(row)
            if verdict == STALLED:
                problems.append(_describe(row, stall_after_s))
            elif verdict == BEHIND:
                notes.append(f"group {row.group} has lag {lag:,}; its progress is not measured here")
    if facts.missing_topics:
        notes.append(
            f"{len(facts.missing_topics)} topic(s) not created yet ({', '.join(facts.missing_topics[:3])}"
            f"{', ...' if len(facts.missing_topics) > 3 else ''}): `tidemark topics create`"
        )
    if facts.projections is not None and not facts.projections_timed:
        notes.append("applied_offsets has no updated_at column: projections show their applied offsets only")
    return Report(
        facts.context,
        facts.app_id,
        facts.now,
        stall_after_s,
        facts.services,
        rows,
        facts.checkpoint_at,
        _age(facts.now, facts.checkpoint_at),
        facts.projections,
        problems,
        notes,
    )


# --- gathering: bounded reads of the services -------------------------------------------------------------


def gather(settings: Settings, timeout: float = REQUEST_TIMEOUT_S) -> Facts:
    """Ask every service, each request bounded by ``timeout``; a failure becomes an error in the facts."""
    from tidemark.stack import status as service_status

    services = service_status(settings)
    up = {s.name: s.running for s in services}
    facts = Facts(settings.context.value, settings.app_id, datetime.now(UTC), services)
    errors: list[str] = []
    found: dict[str, Any] = {}
    if up.get("kafka"):
        found.update(_gather_kafka(settings, timeout, errors))
    if up.get("postgres"):
        found.update(_gather_projections(settings, timeout, errors))
    return replace(facts, **found, errors=errors)


def _gather_kafka(settings: Settings, timeout: float, errors: list[str]) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    from projections.sink import SINK_TOPICS
    from schemas.catalogue import CATALOGUE

    found: dict[str, Any] = {}
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka.bootstrap, "logger": _quiet}
    admin = AdminClient(config)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
        listed = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout + 1)
    except Exception as exc:  # the broker answered the probe but not this: reported, not raised
        errors.append(f"could not list Kafka topics and consumer groups: {_reason(exc)}")
        return found
    errors += [f"listing consumer groups: {_reason(e)}" for e in listed.errors]
    states = {g.group_id: g.state.name.lower() for g in listed.valid}
    catalogue = [settings.topic(spec.name) for spec in CATALOGUE]
    found["missing_topics"] = [t for t in catalogue if t not in existing]
    declared = {
        RUNNER: [settings.topic(RUNNER_INPUT)],
        SINK: [settings.topic(name) for name in SINK_TOPICS],
        OTHER: catalogue,
    }
    groups = []
    for group in app_groups(settings.app_id, states):
        role = role_of(settings.app_id, group)
        topics = [t for t in declared[role] if t in existing]
        try:
            partitions = (
                partition_lags(settings.kafka.bootstrap, group, topics, timeout=timeout, ready_timeout=timeout)
                if topics
                else []
            )
        except Exception as exc:  # a group that cannot be read is a problem to show, not a traceback
            errors.append(f"could not read the lag of group {group}: {_reason(exc)}")
            continue
        if role == OTHER:  # only the topics it consumes: those it has committed offsets on
            consumed = {p.topic for p in partitions if p.committed is not None}
            partitions = [p for p in partitions if p.topic in consumed]
        groups.append(GroupFacts(group, role, states.get(group, "absent"), partitions))
    found["groups"] = groups
    checkpoints = settings.topic(CHECKPOINT_TOPIC)
    try:
        found["checkpoint_at"] = _last_checkpoint(settings, checkpoints, timeout) if checkpoints in existing else None
        found["checkpoint_read"] = True
    except Exception as exc:  # reported as an unreadable checkpoint
        errors.append(f"could not read {checkpoints}: {_reason(exc)}")
    return found


def _last_checkpoint(settings: Settings, topic: str, timeout: float) -> datetime | None:
    """The Kafka timestamp of this app id's newest committed checkpoint record, read back from each partition's end
    (the topic is shared by the app ids of one topic prefix, so the window widens until one of ours shows up)."""
    from streams.checkpoints import SEPARATOR

    prefix = f"{settings.app_id}{SEPARATOR}".encode()
    reader = range_reader(settings.kafka.bootstrap, f"{settings.app_id}-status", logger=_quiet)
    try:
        partitions = reader.list_topics(topic, timeout=timeout).topics[topic].partitions
        newest: int | None = None
        for partition in partitions:
            low, high = watermarks(reader, TopicPartition(topic, partition), timeout)
            span = CHECKPOINT_TAIL
            while high > low:
                start = max(low, high - span)
                stamps = [
                    m.timestamp()[1]
                    for m in read_range(reader, topic, {partition: start}, timeout)
                    if (m.key() or b"").startswith(prefix) and m.timestamp()[0] != TIMESTAMP_NOT_AVAILABLE
                ]
                if stamps:
                    newest = max(stamps + ([newest] if newest is not None else []))
                if stamps or start == low:
                    break
                span *= 16
        return None if newest is None else datetime.fromtimestamp(newest / 1000, UTC)
    finally:
        reader.close()


def _gather_projections(settings: Settings, timeout: float, errors: list[str]) -> dict[str, Any]:
    try:
        timed, rows = asyncio.run(_read_projections(settings, timeout))
    except Exception as exc:  # not migrated, or gone since the probe: reported
        errors.append(f"could not read the projections' offsets: {_reason(exc)}")
        return {}
    return {"projections": rows, "projections_timed": timed}


async def _read_projections(settings: Settings, timeout: float) -> tuple[bool, list[ProjectionFacts]]:
    """Per projection of this context's topics: partitions, applied offsets and (when the column exists) the last
    write; the schema is only inspected, never changed."""
    import asyncpg

    conn = await asyncpg.connect(settings.postgres_dsn, timeout=timeout)
    try:
        timed = bool(
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'applied_offsets' AND column_name = 'updated_at'",
                timeout=timeout,
            )
        )
        last = "max(updated_at)" if timed else "NULL::timestamptz"
        rows = await conn.fetch(
            f"SELECT consumer, count(*) AS partitions, sum(next_offset)::bigint AS applied, {last} AS last_applied_at"
            " FROM applied_offsets WHERE starts_with(topic, $1) GROUP BY consumer ORDER BY consumer",
            settings.topic_prefix,
            timeout=timeout,
        )
    finally:
        await conn.close(timeout=timeout)
    return timed, [ProjectionFacts(r["consumer"], r["partitions"], r["applied"], r["last_applied_at"]) for r in rows]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the command ------------------------------------------------------------------------------------------


def status_command(
    as_json: bool = typer.Option(False, "--json", help="everything as JSON, with the lag of each partition"),
    stall_after: float | None = typer.Option(
        None,
        "--stall-after",
        min=1.0,
        help="seconds without progress after which a group with lag is stalled (progress: the analytics "
        "checkpoint for the runner's group, the last applied offset for the projections'); default: "
        "TIDEMARK_LIVENESS_AFTER_S, the bound the processes' /healthz uses",
    ),
    timeout: float = typer.Option(REQUEST_TIMEOUT_S, min=0.5, help="seconds each Kafka or PostgreSQL request may take"),
) -> None:
    """Health of the whole system for this context: services up, lag of every consumer group of the app id,
    age of the last analytics checkpoint and of the projections' last write.

    Exit 0 when healthy; 1 when a service is down, something could not be read, or a group is stalled: lag > 0
    and no progress (no checkpoint, nothing applied) for longer than --stall-after seconds.
    """
    settings = get_settings()
    report = assess(gather(settings, timeout), stall_after or settings.operations.liveness_after_s)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render(report, Console(width=None if sys.stdout.isatty() else 160))
    if not report.healthy:
        raise typer.Exit(report.exit_code)


def render(report: Report, console: Console) -> None:
    """The report as tables: services, groups per topic, the projections; then notes and the verdict."""
    console.print(f"tidemark status: context {report.context}, app id {report.app_id}", highlight=False)
    services = Table(title="services", title_justify="left")
    for column in ("service", "address", "state", "detail"):
        services.add_column(column)
    for s in report.services:
        services.add_row(s.name, s.address, "[green]up[/green]" if s.running else "[red]down[/red]", s.detail)
    console.print(services)
    if report.groups is None:
        console.print("[yellow]consumer groups: not read (Kafka unavailable)[/yellow]")
    else:
        groups = Table(title="consumer groups", title_justify="left")
        for column in ("group", "role", "state", "topic", "lag", "progress", "verdict"):
            groups.add_column(column, justify="right" if column == "lag" else "left")
        for g in report.groups:
            if g.progress is None:
                progress = "not measured"
            elif g.progress_age_s is None:
                progress = f"no {g.progress} yet"
            else:
                progress = f"{g.progress} {_duration(g.progress_age_s)} ago"
            colour = {STALLED: "red", CATCHING_UP: "yellow", BEHIND: "yellow"}.get(g.verdict, "green")
            verdict = f"[{colour}]{g.verdict}[/{colour}]"
            topics = list(g.topics.items()) or [("(no topic yet)", 0)]
            for i, (topic, lag) in enumerate(topics):
                first = i == 0
                groups.add_row(
                    g.group if first else "",
                    g.role if first else "",
                    g.state if first else "",
                    topic,
                    f"{lag:,}",
                    progress if first else "",
                    verdict if first else "",
                )
        console.print(groups)
    if report.checkpoint_age_s is not None and report.checkpoint_at is not None:
        console.print(
            f"analytics checkpoint: {report.checkpoint_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({_duration(report.checkpoint_age_s)} ago)",
            highlight=False,
        )
    elif report.groups is not None:
        console.print("analytics checkpoint: none yet")
    if report.projections is not None:
        table = Table(title="projections", title_justify="left")
        for column in ("projection", "partitions", "applied offsets", "last applied"):
            table.add_column(column, justify="right" if column != "projection" else "left")
        for p in report.projections:
            age = _age(report.now, p.last_applied_at)
            table.add_row(
                p.projection, str(p.partitions), f"{p.applied:,}", "n/a" if age is None else f"{_duration(age)} ago"
            )
        if report.projections:
            console.print(table)
        else:
            console.print("projections: nothing applied yet")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    colour = "green" if report.healthy else "red"
    console.print(f"[{colour}]{report.verdict}[/{colour}]", highlight=False)
