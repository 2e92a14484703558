"""Projection agents: each consumes one topic in batches and writes it exactly once to PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from faust.types import EventT, StreamT

from projections.analytics import CorrelationProjection, StatsProjection
from projections.bars import BarsProjection
from projections.consumed import Consumed
from schemas.codec import DecodeError, get_registry
from schemas.fastbars import decode_bars
from streams.app import app, consumed, dead_letter, raw_topic, resources, settings

bars_1m = raw_topic("md.bars.1m")
stats_topic = raw_topic("analytics.stats")
correlations_topic = raw_topic("analytics.correlations")


async def batches(stream: StreamT[bytes]) -> AsyncIterator[list[Consumed]]:
    events: Sequence[EventT]
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        yield consumed(events)


def decode_all(
    records: Sequence[Consumed], schema: str
) -> tuple[list[Consumed], list[dict[str, Any]], list[tuple[int, str]]]:
    """Decode each record as ``schema``; the ones that fail are returned as (index, reason) for the DLQ."""
    registry = get_registry()
    good: list[Consumed] = []
    decoded: list[dict[str, Any]] = []
    failures: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        try:
            decoded.append(registry.decode_as(schema, record.value))
            good.append(record)
        except DecodeError as exc:
            failures.append((index, str(exc)))
    return good, decoded, failures


@app.agent(bars_1m, name="project-bars-1m", concurrency=1)
async def project_bars(stream: StreamT[bytes]) -> None:
    processor = "projection.bars"
    async for records in batches(stream):
        bars, rows, failures = decode_bars([r.value for r in records])
        await dead_letter(records, failures, processor)
        if len(bars):
            shared = await resources()
            projection = BarsProjection(shared.pool, shared.redis)
            await projection.apply([records[i] for i in rows], bars)


@app.agent(stats_topic, name="project-stats", concurrency=1)
async def project_stats(stream: StreamT[bytes]) -> None:
    async for records in batches(stream):
        good, events, failures = decode_all(records, "tidemark.analytics.SymbolStatsComputed")
        await dead_letter(records, failures, "projection.stats")
        shared = await resources()
        await StatsProjection(shared.pool, shared.redis).apply(good, events)


@app.agent(correlations_topic, name="project-correlations", concurrency=1)
async def project_correlations(stream: StreamT[bytes]) -> None:
    async for records in batches(stream):
        good, events, failures = decode_all(records, "tidemark.analytics.CorrelationSnapshotTaken")
        await dead_letter(records, failures, "projection.correlations")
        shared = await resources()
        await CorrelationProjection(shared.pool, shared.redis).apply(good, events)
