"""The Faust app of the domain agents (lifecycle and portfolio now; rebalancer and risk to come): low-rate streams
with state in Faust tables.

Faust runs with ``processing_guarantee="at_least_once"`` (its exactly-once mode has open defects): a message may
be processed again after a crash, so every agent makes its effects idempotent instead (deterministic event ids,
outputs remembered per key in the table and sent again, never decided again). Messages are Avro single-object
bytes, decoded by the project's registry: Faust's serializers see raw bytes only.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import faust

from core.consumed import Consumed
from core.deadletter import dead_letter_messages
from core.settings import Settings
from schemas.catalogue import KEYED_PARTITIONS
from schemas.codec import DecodeError, get_registry

log = logging.getLogger("tidemark.agents")
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
# An agent's merged input log (one partition, one order) is kept as long as the topics it merges: it is what a re-run
# of the agent replays (`tidemark replay --processors`), the only record of the order the forwarders merged them in.
INPUT_LOG_CONFIG = {"retention.ms": "-1"}


def input_log(app: faust.App, name: str) -> faust.TopicT:
    """An agent's input log: one partition, internal, kept forever (``INPUT_LOG_CONFIG``)."""
    return app.topic(name, partitions=1, internal=True, config=INPUT_LOG_CONFIG, **RAW)


"""Topic options of every agent's topics: bytes in and out, the registry encodes and decodes."""


def agents_app_id(settings: Settings) -> str:
    """The app's id: its consumer group, and the start of its internal topics' names (table changelogs, the
    assignor's), which the topic prefix therefore covers: whoever deletes a context's topics deletes its state."""
    return f"{settings.topic_prefix}{settings.app_id}-agents"


def create_app(settings: Settings, store: str = "memory://") -> faust.App:
    """The app; its tables' changelogs (``<app id>-<table>-changelog``) restore the state on start."""
    app_id = agents_app_id(settings)
    datadir = settings.state_dir / "agents" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        store=store,
        processing_guarantee="at_least_once",
        topic_partitions=KEYED_PARTITIONS,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        # A member killed with kill -9 is noticed after this, and its partitions go to the others.
        broker_session_timeout=10.0,
        web_enabled=False,
        datadir=str(datadir),
    )


async def dead_letter(dlq: faust.TopicT, event: faust.types.EventT, processor: str, exc: Exception) -> None:
    """An input an agent cannot decode, to ``dlq`` with its bytes, coordinates and the reason."""
    message = event.message
    record = Consumed(message.topic, message.partition, message.offset, message.key, message.value)
    log.warning("%s: %s[%d]@%d dead-lettered: %s", processor, record.topic, record.partition, record.offset, exc)
    for key, value in dead_letter_messages(get_registry(), [record], [(0, str(exc))], processor, "DecodeError"):
        await dlq.send(key=key, value=value)


Event = tuple[str, str, str, dict[str, Any]]
"""(catalogue topic, key, schema, record) of an agent's output."""
Encoded = tuple[str, str, bytes]
"""(catalogue topic, key, value) of an encoded output."""
Answered = tuple[dict[str, Any], list[Encoded], bool]
"""An agent's table entry after an input, the input's encoded outputs, and whether it was answered before."""


def answer_once(
    entry: Mapping[str, Any] | None,
    record: Mapping[str, Any],
    decide: Callable[[Any, Mapping[str, Any]], tuple[Any, list[Event]]],
    recent_kept: int,
    state_key: str = "state",
    store: MutableMapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[Encoded], bool]:
    """The table entry after ``record``, its encoded outputs, and whether it was answered before.

    An input that produced outputs is remembered (by event id) with their bytes: delivered again after a crash, it
    gets the same bytes and is not decided again. ``decide(state, record)`` returns the new state and the outputs;
    the state is whatever JSON the agent keeps under ``state_key``. The bytes are kept in the entry itself, or, with
    ``store`` (a table of its own), one key per input, so the entry written after every input stays small."""
    entry = dict(entry or {state_key: None, "recent": {}})
    recent: dict[str, list[list[str]]] = dict(entry.get("recent", {}))
    event_id = record["event_id"]
    known = recent.get(event_id) if store is None else store.get(event_id)
    if known is not None:
        return entry, [(t, k, base64.b64decode(v)) for t, k, v in known], True
    registry = get_registry()
    state, events = decide(entry[state_key], record)
    encoded = [(topic, key, registry.encode(schema, event)) for topic, key, schema, event in events]
    if encoded:
        remembered = [[t, k, base64.b64encode(v).decode()] for t, k, v in encoded]
        if store is None:
            recent[event_id] = remembered
            entry["recent"] = dict(list(recent.items())[-recent_kept:])
        else:
            store[event_id] = remembered
            ring = [*entry.get("recent_ids", []), event_id]
            for forgotten in ring[:-recent_kept]:
                store.pop(forgotten, None)
            entry["recent_ids"] = ring[-recent_kept:]
    entry[state_key] = state
    return entry, encoded, False


async def answer_batch(
    batch: Sequence[faust.types.EventT],
    entry: dict[str, Any] | None,
    answer: Callable[[dict[str, Any] | None, Mapping[str, Any]], Answered],
    dlq: faust.TopicT,
    processor: str,
) -> tuple[dict[str, Any] | None, bool, list[Encoded]]:
    """A batch of forwarded inputs answered one by one against one table entry, for an agent that reads and writes
    its entry once per batch and sends the outputs after the write: the entry after the batch, whether it changed,
    and the outputs in order. An input the agent cannot apply (``ValueError``) is dead-lettered, never a crash loop;
    one answered before gets its remembered outputs again."""
    changed = False
    outgoing: list[Encoded] = []
    for event in batch:
        record = json.loads(event.value)
        try:
            after, events, again = answer(entry, record)
        except ValueError as exc:
            await dead_letter(dlq, event, processor, exc)
            continue
        if again:
            log.info("%s: input %s answered again, as recorded", processor, record["event_id"])
        else:
            entry, changed = after, True
        outgoing += events
    return entry, changed, outgoing


def install_forwarders(
    app: faust.App,
    settings: Settings,
    inputs: faust.TopicT,
    sources: Mapping[str, Mapping[str, str | None]],
    area: str,
    account: str,
    compact: Callable[[str, Mapping[str, Any]], dict[str, Any] | None],
    wanted: Callable[[str, bytes | None], bool] | None = None,
) -> None:
    """One agent per source topic that sends a compact JSON record of each input event to ``inputs`` (one partition,
    keyed by ``account``), so one agent sees an account's inputs from topics keyed by symbol, strategy or account in
    one order. ``sources``: per topic, its event types and the kind each is forwarded as (None: ignored);
    ``compact(kind, record)`` returns None for a record the area ignores; ``wanted(topic, key)``, when given, is
    asked before decoding, so a busy topic of which the area needs few keys costs no decoding. Undecodable inputs go
    to ``dlq``."""
    registry = get_registry()
    dlq = app.topic(settings.topic("dlq"), **RAW)

    def forwarder(name: str, kinds: Mapping[str, str | None]) -> None:
        processor = f"{area}.{name.split('.')[-1]}"

        async def forward(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                if wanted is not None and not wanted(name, event.key):
                    continue
                try:
                    decoded = registry.decode(event.value)
                    if decoded.schema not in kinds:
                        raise DecodeError(f"expected {' or '.join(kinds)}, got {decoded.schema}")
                except DecodeError as exc:
                    await dead_letter(dlq, event, processor, exc)
                    continue
                kind = kinds[decoded.schema]
                if kind is None:
                    continue
                if decoded.record.get("account_id", account) != account:
                    continue
                value = compact(kind, decoded.record)
                if value is not None:
                    await inputs.send(key=account.encode(), value=json.dumps(value).encode())

        app.agent(app.topic(settings.topic(name), **RAW), name=f"{area}-{name.split('.')[-1].replace('_', '-')}")(
            forward
        )

    for name, kinds in sources.items():
        forwarder(name, kinds)
