"""Faust wiring of the rolling-statistics processor: bars in, SymbolStatsComputed and CorrelationSnapshotTaken out.

The processor's whole state lives in one Faust table entry per universe, written once per batch; the table's
changelog is the recovery path. A restart resumes from the committed offsets with the recovered state, and
re-delivered bars are idempotent in the kernel, so snapshots are reproduced exactly (same event ids and values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from faust.types import StreamT

from connectors.publisher import partition_for_key
from projections.consumed import Consumed
from schemas.catalogue import topic_spec
from schemas.codec import get_registry
from schemas.events import common_fields, deterministic_event_id
from schemas.fastbars import decode_bars
from streams.app import app, batches, dead_letter, handle_batch, raw_topic, settings
from streams.correlation.processor import BARS_PER_YEAR_1M, RollingProcessor, Snapshot

PROCESSOR = "analytics.rolling"
TIMEFRAME = "1m"
STATE_MAX_BYTES = 64 * 1024 * 1024

bars_1m = raw_topic("md.bars.1m")
stats_out = raw_topic("analytics.stats")
correlations_out = raw_topic("analytics.correlations")
state_table = app.Table(
    "rolling-state",
    default=None,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.topic_partitions,
    use_partitioner=True,
    extra_topic_configs={"max.message.bytes": str(STATE_MAX_BYTES)},
)
app.conf.producer_max_request_size = STATE_MAX_BYTES

_processors: dict[bytes, RollingProcessor] = {}


@app.on_partitions_revoked.connect
async def _forget_state(app: object, revoked: object, **kwargs: object) -> None:
    """After a rebalance the recovered table, not this process's memory, is the truth."""
    _processors.clear()


def _new_processor() -> RollingProcessor:
    partitions = topic_spec("md.bars.1m").partitions
    watched = frozenset(partition_for_key(symbol.encode(), partitions) for symbol in settings.universe)
    return RollingProcessor(settings.universe, settings.correlation_window, settings.snapshot_every, watched)


def _processor(key: bytes) -> RollingProcessor:
    """The in-memory processor, rebuilt from the recovered table entry after a restart or rebalance.

    A stored state for another symbol list (the universe was reconfigured) is set aside: the snapshots start over.
    """
    if key not in _processors:
        stored = state_table.get(key)
        recovered = RollingProcessor.from_bytes(stored) if stored else None
        if recovered is not None and recovered.universe != tuple(settings.universe):
            app.log.warning("universe %s was reconfigured; its rolling state starts over", key.decode())
            recovered = None
        _processors[key] = recovered or _new_processor()
    return _processors[key]


def snapshot_events(universe: str, snapshot: Snapshot) -> tuple[list[tuple[bytes, dict[str, Any]]], dict[str, Any]]:
    """The events of one snapshot; ids derive from (universe, timeframe, window, as_of) so a replay repeats them."""
    corr = snapshot.correlation
    as_of = int(corr.as_of_ns or snapshot.boundary_ns)
    corr_id = deterministic_event_id(PROCESSOR, universe, TIMEFRAME, corr.window_bars, as_of)
    correlation = {
        **common_fields(PROCESSOR, as_of, event_id=corr_id),
        "universe": universe,
        "as_of_ns": as_of,
        "timeframe": TIMEFRAME,
        "window_bars": corr.window_bars,
        "observations": corr.observations,
        "method": "PEARSON",
        "symbols": [str(s) for s in corr.symbol.tolist()],
        "matrix": corr.upper_triangle().tolist(),
        "average_correlation": float(corr.mean_correlation),
        "largest_eigenvalue_share": float(corr.eigen_share),
        "diversification_ratio": _optional(corr.diversification_ratio),
    }
    stats = snapshot.stats
    present = np.flatnonzero(stats.count > 0)
    per_symbol = []
    for i in present.tolist():
        symbol = str(stats.symbol[i])
        event_id = deterministic_event_id(PROCESSOR, "stats", symbol, TIMEFRAME, stats.window_bars, as_of)
        per_symbol.append(
            (
                symbol.encode(),
                {
                    **common_fields(PROCESSOR, as_of, causation_id=corr_id, event_id=event_id),
                    "symbol": symbol,
                    "timeframe": TIMEFRAME,
                    "window_bars": stats.window_bars,
                    "bar_count": int(stats.count[i]),
                    "as_of_ns": as_of,
                    "last_close": float(stats.last_close[i]),
                    "window_return": float(stats.window_return[i]),
                    "mean_return": float(stats.mean_return[i]),
                    "stdev_return": float(stats.volatility[i]),
                    "volatility_annualised": float(stats.volatility_annual[i]),
                    "bars_per_year": BARS_PER_YEAR_1M,
                    "max_drawdown": _optional(stats.max_drawdown[i]),
                },
            )
        )
    return per_symbol, correlation


def _optional(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


async def _roll(records: Sequence[Consumed]) -> None:
    registry = get_registry()
    universe_key = settings.universe_name.encode()
    bars, rows, failures = decode_bars([r.value for r in records])
    await dead_letter(records, failures, PROCESSOR)
    if not len(bars):
        return
    partitions = np.fromiter((records[i].partition for i in rows), dtype=np.int32, count=len(rows))
    processor = _processor(universe_key)
    for snapshot in processor.process(partitions, bars.symbol, bars.start_ns, bars.close):
        per_symbol, correlation = snapshot_events(settings.universe_name, snapshot)
        for key, event in per_symbol:
            await stats_out.send(key=key, value=registry.encode("tidemark.analytics.SymbolStatsComputed", event))
        await correlations_out.send(
            key=universe_key,
            value=registry.encode("tidemark.analytics.CorrelationSnapshotTaken", correlation),
        )
    # Straight to the changelog (keyed, so partitioned like any producer would): ``send`` waits for the
    # topic's metadata, which a table write with use_partitioner does not. Recovery reads it back into the table.
    await state_table.changelog_topic.send(key=universe_key, value=processor.to_bytes())


@app.agent(bars_1m, name="rolling-stats-1m", concurrency=1)
async def rolling_stats(stream: StreamT[bytes]) -> None:
    async for records in batches(stream):
        await handle_batch(records, PROCESSOR, _roll)
