"""Projection agents: each consumes one topic in batches and writes it exactly once to PostgreSQL and Redis.

The bars projection, by far the largest stream, runs on a plain batch consumer instead (projections/bar_sink.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faust.types import StreamT

from projections.consumed import Consumed
from schemas.codec import DecodeError, get_registry
from streams.app import app, batches, dead_letter, handle_batch, raw_topic, resources

stats_topic = raw_topic("analytics.stats")
correlations_topic = raw_topic("analytics.correlations")


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


async def _project_stats(records: Sequence[Consumed]) -> None:
    good, events, failures = decode_all(records, "tidemark.analytics.SymbolStatsComputed")
    await dead_letter(records, failures, "projection.stats")
    await (await resources()).stats.apply(good, events)


async def _project_correlations(records: Sequence[Consumed]) -> None:
    good, events, failures = decode_all(records, "tidemark.analytics.CorrelationSnapshotTaken")
    await dead_letter(records, failures, "projection.correlations")
    await (await resources()).correlations.apply(good, events)


@app.agent(stats_topic, name="project-stats", concurrency=1)
async def project_stats(stream: StreamT[bytes]) -> None:
    async for records in batches(stream):
        await handle_batch(records, "projection.stats", _project_stats)


@app.agent(correlations_topic, name="project-correlations", concurrency=1)
async def project_correlations(stream: StreamT[bytes]) -> None:
    async for records in batches(stream):
        await handle_batch(records, "projection.correlations", _project_correlations)
