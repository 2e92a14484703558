"""PatternProcessor: the events are a function of the bars alone — not of batching, interleaving, replay or restarts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from functools import cache

import numpy as np
import pytest

from connectors.synthetic.market import build_universe, generate_bars
from core.kafka import partition_for_key
from schemas.codec import get_registry
from streams.patterns.processor import SCHEMA, TOPIC, PatternProcessor
from streams.patterns.scan import SCAN_TIMEFRAMES
from streams.processors import BarFrame

START = datetime(2025, 3, 3, tzinfo=UTC)
PARTITIONS = 4


@cache
def market() -> BarFrame:
    """Four days of a 100-symbol synthetic market, each symbol on its Kafka partition, in generation order."""
    universe = build_universe(100, 11, start=START, days=4)
    batches = list(generate_bars(universe, START, 4 * 1440, 11))
    symbol = np.concatenate([b.symbol for b in batches])
    partition_of = {s: partition_for_key(s.encode(), PARTITIONS) for s in universe.symbols.tolist()}
    return BarFrame(
        np.array([partition_of[s] for s in symbol.tolist()], dtype=np.int32),
        symbol,
        np.concatenate([b.start_ns for b in batches]),
        np.concatenate([b.close for b in batches]),
        np.concatenate([b.asset_class for b in batches]),
    )


def take(frame: BarFrame, index: np.ndarray | slice) -> BarFrame:
    assert frame.asset_class is not None
    return BarFrame(
        frame.partition[index], frame.symbol[index], frame.start_ns[index], frame.close[index], frame.asset_class[index]
    )


def interleaved(frame: BarFrame, seed: int) -> BarFrame:
    """Each partition stays in time order, but partitions are merged in a random order (as a consumer fetches)."""
    rng = np.random.default_rng(seed)
    lanes = [np.flatnonzero(frame.partition == p) for p in range(PARTITIONS)]
    order = np.repeat(np.arange(PARTITIONS), [lane.size for lane in lanes])
    rng.shuffle(order)
    index = np.empty(order.size, dtype=np.intp)
    for p, lane in enumerate(lanes):
        index[order == p] = lane
    return take(frame, index)


def run(frame: BarFrame, cuts: list[int], restart_at: frozenset[int] = frozenset(), replay: int = 0) -> list[dict]:
    """Feed the frame in the chunks between ``cuts``; at chunk indices in ``restart_at`` rebuild the processor
    from its bytes and redeliver the last ``replay`` bars first (an uncommitted tail)."""
    processor = PatternProcessor(frozenset(range(PARTITIONS)))
    events = []
    bounds = [0, *cuts, len(frame)]
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if k in restart_at:
            processor = PatternProcessor.from_bytes(processor.to_bytes())
            lo = max(lo - replay, 0)
        events += processor.process(take(frame, slice(lo, hi)))
    assert all(e.topic == TOPIC and e.schema == SCHEMA for e in events)
    return [{k: v for k, v in e.event.items() if k != "ts_ingest"} for e in events]


@cache
def reference() -> tuple[dict, ...]:
    return tuple(run(market(), []))


def test_the_reference_run_emits_valid_events() -> None:
    events = reference()
    assert events, "the market should yield signals for the comparisons below to mean anything"
    registry = get_registry()
    for event in events:
        assert registry.decode(registry.encode(SCHEMA, {**event, "ts_ingest": 0}))[1]["event_id"] == event["event_id"]
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["timeframe"] for e in events} <= {tf.name for tf in SCAN_TIMEFRAMES}


@pytest.mark.parametrize("batch", [50_000, 7_919])
def test_events_do_not_depend_on_batch_size(batch: int) -> None:
    frame = market()
    assert run(frame, list(range(batch, len(frame), batch))) == list(reference())


def test_events_do_not_depend_on_partition_interleaving() -> None:
    frame = interleaved(market(), seed=5)
    assert run(frame, list(range(30_011, len(frame), 30_011))) == list(reference())


def test_restarts_from_state_with_redelivery_repeat_the_same_events() -> None:
    frame = market()
    cuts = list(range(40_000, len(frame), 40_000))
    events = run(frame, cuts, restart_at=frozenset(range(1, len(cuts) + 1, 2)), replay=3_000)
    # Redelivered bars after a restart re-emit nothing new: the scans they belong to were already taken.
    assert events == list(reference())


def test_state_round_trip_is_exact_and_compact() -> None:
    frame = market()
    processor = PatternProcessor(frozenset(range(PARTITIONS)))
    processor.process(take(frame, slice(0, len(frame) * 2 // 3)))
    data = processor.to_bytes()
    restored = PatternProcessor.from_bytes(data)
    assert restored.to_bytes() == data
    rest = take(frame, slice(len(frame) * 2 // 3, None))
    strip = lambda events: [{k: v for k, v in e.event.items() if k != "ts_ingest"} for e in events]  # noqa: E731
    assert strip(restored.process(rest)) == strip(processor.process(rest))
    # float32 closes: (391 + 101 + 101 + 62) rows x 100 symbols x 4 bytes = 262 kB before compression.
    assert len(data) < 200_000


def test_a_state_of_other_timeframes_is_refused() -> None:
    data = PatternProcessor(frozenset({0})).to_bytes()
    with pytest.raises(ValueError, match="timeframes"):
        PatternProcessor.from_bytes(data, timeframes=SCAN_TIMEFRAMES[:2])
    with pytest.raises(ValueError, match="not a pattern processor state"):
        PatternProcessor.from_bytes(b"garbage")
