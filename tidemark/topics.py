"""Create and inspect the catalogue's topics on the cluster (``tidemark topics create|list``).

Topics the catalogue sizes with ``KEYED_PARTITIONS`` are created with ``KafkaSettings.topic_partitions`` instead,
so one setting sizes everything keyed by symbol or strategy; Faust (the domain agents of the coming issues)
sizes its changelog and repartition topics with it too, and they must stay co-partitioned with the topics they
read. Every other topic gets the catalogue's count.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass

import typer
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from core.kafka import until_ready
from core.settings import Settings, get_settings
from schemas.catalogue import CATALOGUE, KEYED_PARTITIONS, TopicSpec, kafka_config

ADMIN_TIMEOUT_S = 15.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicRow:
    name: str
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: str
    value_schemas: tuple[str, ...]
    exists: bool


def planned_partitions(spec: TopicSpec, settings: Settings) -> int:
    return settings.kafka.topic_partitions if spec.partitions == KEYED_PARTITIONS else spec.partitions


def _admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka.bootstrap})


def _existing(admin: AdminClient) -> dict[str, int]:
    """Topic name -> partition count of what the cluster has now."""
    metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def create_topics(settings: Settings) -> list[str]:
    """Create every missing catalogue topic; existing ones are left alone. Returns the names created."""
    admin = _admin(settings)
    created: list[str] = []

    def create_missing() -> None:
        existing = _existing(admin)
        wanted = [
            NewTopic(
                settings.topic(spec.name),
                num_partitions=planned_partitions(spec, settings),
                replication_factor=settings.kafka.replication_factor,
                config=kafka_config(spec),
            )
            for spec in CATALOGUE
            if settings.topic(spec.name) not in existing
        ]
        for name, future in admin.create_topics(wanted, request_timeout=ADMIN_TIMEOUT_S).items() if wanted else ():
            try:
                future.result()
            except KafkaException as exc:
                # Another process may have created it between our listing and our request.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            else:
                created.append(name)

    until_ready(create_missing, "creating topics", settings.kafka.bootstrap)
    _wait_for_leaders(admin, created)
    return sorted(created)


def delete_prefixed_topics(settings: Settings, groups: Sequence[str] = ()) -> list[str]:
    """Delete every topic under ``settings.topic_prefix``, and the consumer ``groups`` named (benchmarks, the demo).

    Refuses an empty prefix: that would be the whole cluster.
    """
    if not settings.topic_prefix:
        raise ValueError("refusing to delete topics without a topic prefix")
    admin = _admin(settings)
    doomed = sorted(name for name in _existing(admin) if name.startswith(settings.topic_prefix))

    def delete(futures: dict[str, Future[None]], gone: int) -> None:
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != gone:
                    raise

    if doomed:
        until_ready(
            lambda: delete(
                admin.delete_topics(doomed, request_timeout=ADMIN_TIMEOUT_S), KafkaError.UNKNOWN_TOPIC_OR_PART
            ),
            f"deleting topics {settings.topic_prefix}*",
            settings.kafka.bootstrap,
        )
    if groups:
        until_ready(
            lambda: delete(
                admin.delete_consumer_groups(list(groups), request_timeout=ADMIN_TIMEOUT_S),
                KafkaError.GROUP_ID_NOT_FOUND,
            ),
            f"deleting consumer groups {', '.join(groups)}",
            settings.kafka.bootstrap,
        )
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while set(doomed) & set(_existing(admin)):
        if time.monotonic() > deadline:
            raise KafkaException(f"topics still present {ADMIN_TIMEOUT_S:.0f}s after deletion")
        time.sleep(0.1)
    return doomed


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float = ADMIN_TIMEOUT_S) -> None:
    """A new topic's partitions take a moment to elect leaders; until then producers and offset look-ups fail."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        topics = admin.list_topics(timeout=timeout).topics
        pending = {
            name
            for name in pending
            if name not in topics or any(p.leader < 0 for p in topics[name].partitions.values())
        }
        if pending and time.monotonic() > deadline:
            raise KafkaException(f"no partition leaders after {timeout:.0f}s for: {', '.join(sorted(pending))}")
        if pending:
            time.sleep(0.05)


def list_topics(settings: Settings) -> list[TopicRow]:
    """The catalogue as the cluster sees it: actual partitions where the topic exists, planned otherwise."""
    existing = _existing(_admin(settings))
    rows = []
    for spec in CATALOGUE:
        name = settings.topic(spec.name)
        rows.append(
            TopicRow(
                name=name,
                key=spec.key,
                partitions=existing.get(name, planned_partitions(spec, settings)),
                retention_ms=spec.retention_ms,
                cleanup_policy=spec.cleanup_policy,
                value_schemas=spec.value_schemas,
                exists=name in existing,
            )
        )
    return rows


topics_app = typer.Typer(help="Kafka topics of the event contract.", no_args_is_help=True)


def _retention(ms: int) -> str:
    if ms < 0:
        return "forever"
    days, rest = divmod(ms, 86_400_000)
    return f"{days}d" if rest == 0 else f"{ms} ms"


@topics_app.command("create")
def create_command(as_json: bool = typer.Option(False, "--json", help="print JSON instead of text")) -> None:
    """Create the missing topics of the catalogue (existing topics are left alone)."""
    settings = get_settings()
    created = create_topics(settings)
    kept = [spec.name for spec in CATALOGUE if settings.topic(spec.name) not in created]
    if as_json:
        typer.echo(json.dumps({"created": created, "existing": [settings.topic(name) for name in kept]}))
        return
    console = Console()
    for name in created:
        console.print(f"[green]created[/green] {name}")
    console.print(f"{len(created)} created, {len(kept)} already present")


@topics_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Show every catalogue topic, its key, partitions, retention and value schemas, and whether it exists."""
    rows = list_topics(get_settings())
    if as_json:
        typer.echo(json.dumps([asdict(row) for row in rows]))
        return
    table = Table(title="Tidemark topics")
    for column in ("topic", "key", "partitions", "retention", "cleanup", "value schemas", "exists"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.name,
            row.key,
            str(row.partitions),
            _retention(row.retention_ms),
            row.cleanup_policy,
            "\n".join(name.rpartition(".")[2] for name in row.value_schemas),
            "[green]yes[/green]" if row.exists else "[red]no[/red]",
        )
    Console().print(table)
