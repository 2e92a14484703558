"""Faust wiring of the analytics host: md.bars.1m batches in, every registered processor's events out.

Each batch is decoded once (columnar) into one ``BarFrame`` that every processor of ``streams.registry`` gets in
turn; each processor's state is one entry of the ``analytics-state`` table, keyed by its name, written straight to
the table's changelog (the recovery path). A restart resumes from the committed offsets with the recovered states,
and re-delivered bars are idempotent in the processors, so their events are reproduced exactly (same ids, values).
"""

from __future__ import annotations

from collections.abc import Sequence

from faust.types import StreamT, TopicT

from projections.consumed import Consumed
from schemas.codec import get_registry
from schemas.fastbars import decode_bars
from streams.app import app, batches, dead_letter, handle_batch, raw_topic, settings
from streams.host import ProcessorHost, bar_frame
from streams.registry import FACTORIES

HOST = "analytics.host"
STATE_MAX_BYTES = 64 * 1024 * 1024

bars_1m = raw_topic("md.bars.1m")
state_table = app.Table(
    "analytics-state",
    default=None,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.topic_partitions,
    use_partitioner=True,
    extra_topic_configs={"max.message.bytes": str(STATE_MAX_BYTES)},
)
app.conf.producer_max_request_size = STATE_MAX_BYTES

_outputs: dict[str, TopicT] = {}


def _stored(name: str) -> bytes | None:
    value = state_table.get(name.encode())
    return bytes(value) if value else None


host = ProcessorHost(FACTORIES, settings, _stored)


@app.on_partitions_revoked.connect
async def _forget_state(app: object, revoked: object, **kwargs: object) -> None:
    """After a rebalance the recovered table, not this process's memory, is the truth."""
    host.forget()


def _output(name: str) -> TopicT:
    if name not in _outputs:
        _outputs[name] = raw_topic(name)
    return _outputs[name]


async def _process(records: Sequence[Consumed]) -> None:
    registry = get_registry()
    bars, rows, failures = decode_bars([r.value for r in records])
    await dead_letter(records, failures, HOST)
    if not len(bars):
        return
    for event in host.process(bar_frame(records, bars, rows)):
        await _output(event.topic).send(key=event.key, value=registry.encode(event.schema, event.event))
    # Straight to the changelog (keyed, so partitioned like any producer would): ``send`` waits for the
    # topic's metadata, which a table write with use_partitioner does not. Recovery reads it back into the table.
    for name, state in host.states().items():
        await state_table.changelog_topic.send(key=name.encode(), value=state)


@app.agent(bars_1m, name="analytics-host", concurrency=1)
async def analytics(stream: StreamT[bytes]) -> None:
    async for records in batches(stream):
        await handle_batch(records, HOST, _process)
