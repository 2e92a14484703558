"""RollingProcessor: snapshots are a function of the bars alone — not of batching, interleaving, replay or restarts."""

from __future__ import annotations

import functools
import io
import itertools
import json
from dataclasses import dataclass, fields

import numpy as np
import numpy.testing as npt
import pytest

from core.units import NS_PER_MINUTE
from streams.correlation.processor import BARS_PER_YEAR_1M, RollingProcessor, Snapshot, Window
from streams.correlation.rolling import RollingWindow

M = NS_PER_MINUTE
T0 = 1_700_000_100 * 1_000_000_000  # a whole minute and a whole 5 minutes
UNIVERSE = ("S0", "S1", "S2", "S3", "S4", "S5")
OUTSIDERS = ("X0", "X1", "X2")
PARTITIONS = 3
WINDOW = 10


@dataclass(frozen=True)
class Bars:
    """Parallel columns, in delivery order."""

    partition: np.ndarray
    symbol: np.ndarray
    start_ns: np.ndarray
    close: np.ndarray

    def __len__(self) -> int:
        return len(self.symbol)

    def take(self, index: np.ndarray | slice) -> Bars:
        return Bars(self.partition[index], self.symbol[index], self.start_ns[index], self.close[index])

    @staticmethod
    def concat(parts: list[Bars]) -> Bars:
        return Bars(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Bars)))


def make_bars(
    seed: int,
    minutes: int = 80,
    closed: tuple[int, int] | None = None,
    gap_rate: float = 0.1,
    partitions: int = PARTITIONS,
) -> list[Bars]:
    """Per-partition streams in time order: factor-driven random walks on a minute grid.

    Symbol i lives on partition i % partitions. S5 starts late; universe symbols are silent in the minutes
    ``closed`` (the market is shut) while the outsiders (crypto-like) keep printing on every partition.
    """
    rng = np.random.default_rng(seed)
    names = np.array(UNIVERSE + OUTSIDERS, dtype=object)
    beta = rng.uniform(-1.0, 1.5, names.size)
    returns = rng.normal(0.0, 1e-3, minutes)[:, None] * beta + rng.normal(0.0, 1e-3, (minutes, names.size))
    closes = 100.0 * np.exp(np.cumsum(returns, axis=0))
    present = rng.random(closes.shape) >= gap_rate
    present[:, len(UNIVERSE) :] = True  # outsiders never miss a minute: they keep every partition moving
    present[0, : len(UNIVERSE) - 1] = True
    present[: minutes // 4, len(UNIVERSE) - 1] = False  # S5 starts late
    if closed is not None:
        present[closed[0] : closed[1], : len(UNIVERSE)] = False
    t, j = np.nonzero(present)  # row-major: time order, then symbol order
    part = (j % partitions).astype(np.int32)
    bars = Bars(part, names[j], T0 + t.astype(np.int64) * M, closes[t, j])
    return [bars.take(np.flatnonzero(part == p)) for p in range(partitions)]


def interleave(rng: np.random.Generator, streams: list[Bars], max_run: int = 8, batches: int = 40) -> list[Bars]:
    """A random merge of the partitions (each keeps its order), cut at random batch boundaries."""
    cursors = [0] * len(streams)
    runs = []
    while True:
        live = [i for i, s in enumerate(streams) if cursors[i] < len(s)]
        if not live:
            break
        i = int(rng.choice(live))
        n = int(rng.integers(1, max_run + 1))
        runs.append(streams[i].take(slice(cursors[i], cursors[i] + n)))
        cursors[i] += n
    merged = Bars.concat(runs)
    cuts = np.sort(rng.choice(np.arange(1, len(merged)), size=min(batches, len(merged) - 1), replace=False))
    bounds = [0, *cuts.tolist(), len(merged)]
    return [merged.take(slice(a, b)) for a, b in itertools.pairwise(bounds)]


def processor(every_minutes: int = 1, window: int = WINDOW) -> RollingProcessor:
    return RollingProcessor(UNIVERSE, [Window("1m", window)], every_minutes, frozenset(range(PARTITIONS)))


def run(proc: RollingProcessor, batches: list[Bars]) -> list[Snapshot]:
    snapshots: list[Snapshot] = []
    for b in batches:
        snapshots += proc.process(b.partition, b.symbol, b.start_ns, b.close)
    return snapshots


def assert_same_stats(actual, expected) -> None:  # type: ignore[no-untyped-def]
    for f in fields(actual):
        a, e = getattr(actual, f.name), getattr(expected, f.name)
        if isinstance(e, np.ndarray):
            assert a.dtype == e.dtype, f.name
            npt.assert_array_equal(a, e, err_msg=f.name, strict=True)  # NaN == NaN here
        elif isinstance(e, float):
            npt.assert_array_equal(a, e, err_msg=f.name)
        else:
            assert a == e, f.name


def assert_same_snapshots(actual: list[Snapshot], expected: list[Snapshot]) -> None:
    assert [s.boundary_ns for s in actual] == [s.boundary_ns for s in expected]
    for a, e in zip(actual, expected, strict=True):
        assert_same_stats(a.stats, e.stats)
        assert_same_stats(a.correlation, e.correlation)
        npt.assert_array_equal(a.correlation.upper_triangle(), e.correlation.upper_triangle())


def reference_snapshot(streams: list[Bars], boundary_ns: int, window: int = WINDOW) -> RollingWindow:
    """A RollingWindow fed, in one batch, exactly the universe bars that start before the boundary."""
    everything = Bars.concat(streams)
    before = everything.take(np.flatnonzero(everything.start_ns < boundary_ns))
    state = RollingWindow(UNIVERSE, window)
    state.update(before.symbol, before.start_ns, before.close)
    return state


def expected_boundaries(streams: list[Bars], every_minutes: int) -> list[int]:
    """Boundaries reached by the final watermark that have a universe bar since the previous boundary."""
    every = every_minutes * M
    everything = Bars.concat(streams)
    watermark = min(int(s.start_ns.max()) for s in streams)
    first = (int(everything.start_ns.min()) // every + 1) * every
    universe = everything.start_ns[np.isin(everything.symbol, UNIVERSE)]
    return [t for t in range(first, watermark + 1, every) if np.any((universe >= t - every) & (universe < t))]


SCENARIOS = [
    pytest.param(0, 1, None, id="every-1m"),
    pytest.param(1, 5, None, id="every-5m"),
    pytest.param(2, 1, (35, 50), id="every-1m-market-closed"),
    pytest.param(3, 5, (33, 52), id="every-5m-market-closed"),
    pytest.param(4, 3, (20, 26), id="every-3m-short-close"),
]


@functools.cache
def baseline(seed: int, every: int, closed: tuple[int, int] | None) -> tuple[list[Bars], list[Snapshot]]:
    """The streams and their one-batch snapshots (cached: read-only in every test)."""
    streams = make_bars(seed, closed=closed)
    return streams, run(processor(every), [Bars.concat(streams)])


@pytest.mark.parametrize(("seed", "every", "closed"), SCENARIOS)
def test_one_batch_snapshots_match_a_window_fed_only_earlier_bars(
    seed: int, every: int, closed: tuple[int, int] | None
) -> None:
    streams, snapshots = baseline(seed, every, closed)
    assert [s.boundary_ns for s in snapshots] == expected_boundaries(streams, every)
    assert len(snapshots) >= 5
    for snap in snapshots:
        reference = reference_snapshot(streams, snap.boundary_ns)
        assert_same_stats(snap.stats, reference.stats(BARS_PER_YEAR_1M))
        assert_same_stats(snap.correlation, reference.correlation())
        assert snap.stats.as_of_ns is not None and snap.stats.as_of_ns <= snap.boundary_ns
        npt.assert_array_equal(snap.stats.symbol, np.array(UNIVERSE, dtype=object))
    # the warm snapshots have a real correlation matrix
    warm = snapshots[-1].correlation
    assert warm.matrix.shape[0] >= 2 and np.isfinite(warm.matrix).all()


@pytest.mark.parametrize(("seed", "every", "closed"), SCENARIOS)
@pytest.mark.parametrize(("max_run", "batches"), [(1, 500), (8, 40), (50, 5), (3, 1000)])
def test_snapshots_do_not_depend_on_batching_or_interleaving(
    seed: int, every: int, closed: tuple[int, int] | None, max_run: int, batches: int
) -> None:
    streams, expected = baseline(seed, every, closed)
    rng = np.random.default_rng([seed, max_run, batches])
    for _ in range(2):
        assert_same_snapshots(run(processor(every), interleave(rng, streams, max_run, batches)), expected)


@pytest.mark.parametrize(("seed", "every", "closed"), SCENARIOS[:2])
@pytest.mark.parametrize("lag", [0, 1, 3])
def test_a_redelivered_batch_changes_nothing_while_the_market_is_open(
    seed: int, every: int, closed: tuple[int, int] | None, lag: int
) -> None:
    """At-least-once: a batch delivered again ``lag`` batches later leaves every snapshot as it was."""
    streams, expected = baseline(seed, every, closed)
    rng = np.random.default_rng([seed, lag])
    for _ in range(2):
        batches = interleave(rng, streams)
        i = int(rng.integers(0, len(batches) - lag))
        replayed = [*batches[: i + lag + 1], batches[i], *batches[i + lag + 1 :]]
        assert_same_snapshots(run(processor(every), replayed), expected)


@pytest.mark.parametrize(("seed", "every", "closed"), SCENARIOS)
def test_redelivering_the_first_batch_straight_away_changes_nothing(
    seed: int, every: int, closed: tuple[int, int] | None
) -> None:
    """A consumer that re-reads its first fetch (e.g. a rebalance before the first commit)."""
    streams, expected = baseline(seed, every, closed)
    rng = np.random.default_rng(seed)
    batches = interleave(rng, streams, batches=10)
    head = run(processor(every), batches[:1])
    proc = processor(every)
    got = run(proc, batches[:1])
    assert_same_snapshots(got, head)
    # redeliver the first batch straight away: nothing has been snapshotted since, so it must be invisible
    got += run(proc, batches[:1])
    got += run(proc, batches[1:])
    assert_same_snapshots(got, expected)


def test_a_redelivered_batch_while_the_market_is_closed_adds_no_snapshot() -> None:
    universe = ("A", "B")
    proc = RollingProcessor(universe, [Window("1m", 3)], 1, frozenset({0}))

    def bars(symbols: list[str], minute: int) -> tuple[np.ndarray, ...]:
        n = len(symbols)
        close = 100.0 + minute + np.arange(n)
        return (
            np.zeros(n, np.int32),
            np.array(symbols, dtype=object),
            np.full(n, T0 + minute * M, np.int64),
            close,
        )

    open_session = [bars(["A", "B", "X"], m) for m in range(6)]
    snaps = [s for b in open_session for s in proc.process(*b)]
    assert [s.boundary_ns for s in snaps] == [T0 + m * M for m in range(1, 6)]
    snaps = proc.process(*bars(["X"], 6))  # closed: only an outsider prints
    assert [s.boundary_ns for s in snaps] == [T0 + 6 * M]  # the last open minute (5) is completed
    assert proc.process(*bars(["X"], 7)) == []  # nothing new in minute 6
    assert proc.process(*open_session[4]) == []  # a redelivered open-session batch
    # still nothing new in the universe: boundary T0 + 8m must yield no snapshot
    assert proc.process(*bars(["X"], 8)) == []


@pytest.mark.parametrize(("seed", "every", "closed"), SCENARIOS)
@pytest.mark.parametrize("cut", [0.1, 0.45, 0.8])
def test_serialising_mid_stream_and_continuing_gives_the_same_snapshots(
    seed: int, every: int, closed: tuple[int, int] | None, cut: float
) -> None:
    streams, expected = baseline(seed, every, closed)
    batches = interleave(np.random.default_rng([seed, 7]), streams, batches=30)
    split = int(cut * len(batches))
    proc = processor(every)
    got = run(proc, batches[:split])
    data = proc.to_bytes()
    restored = RollingProcessor.from_bytes(data)
    assert restored.to_bytes() == data, "state round-trips exactly"
    assert restored.universe == UNIVERSE
    assert restored.clock == proc.clock
    got += run(restored, batches[split:])
    assert_same_snapshots(got, expected)


def test_serialising_with_pending_bars_keeps_them() -> None:
    streams = make_bars(5)
    proc = processor(5)
    run(proc, [s.take(slice(0, 40)) for s in streams])
    assert proc._pending_start.size > 0, "the scenario should leave bars waiting for a boundary"
    restored = RollingProcessor.from_bytes(proc.to_bytes())
    npt.assert_array_equal(restored._pending_start, proc._pending_start)
    npt.assert_array_equal(restored._pending_close, proc._pending_close)
    npt.assert_array_equal(restored._pending_column, proc._pending_column)


def test_state_of_an_unknown_version_is_refused() -> None:
    data = processor().to_bytes()
    arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))
    meta = json.loads(arrays["meta"].tobytes())
    meta["version"] = 999
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(ValueError, match="version 999"):
        RollingProcessor.from_bytes(buffer.getvalue())


@pytest.mark.parametrize(("seed", "every", "closed"), SCENARIOS[:3])
def test_non_universe_symbols_are_ignored(seed: int, every: int, closed: tuple[int, int] | None) -> None:
    """Outsiders only move the clock: their closes (even absurd ones) never reach a snapshot."""
    streams, expected = baseline(seed, every, closed)
    rng = np.random.default_rng(seed)
    altered = []
    for s in streams:
        outside = ~np.isin(s.symbol, UNIVERSE)
        close = s.close.copy()
        close[outside] = rng.choice([np.nan, -1.0, 0.0, 1e12, 3.0], outside.sum())
        symbol = s.symbol.copy()
        symbol[outside] = np.array([f"Z{i}" for i in range(outside.sum())], dtype=object)
        altered.append(Bars(s.partition, symbol, s.start_ns, close))
    got = run(processor(every), interleave(rng, altered))
    assert_same_snapshots(got, expected)
    for snap in got:
        assert set(snap.correlation.symbol.tolist()) <= set(UNIVERSE)


def test_outsiders_alone_yield_no_snapshot() -> None:
    streams = make_bars(6)
    outsiders = [s.take(np.flatnonzero(~np.isin(s.symbol, UNIVERSE))) for s in streams]
    proc = processor()
    assert run(proc, outsiders) == []
    assert proc.clock.last_boundary_ns is not None, "the clock still advanced"


def test_nothing_before_every_watched_partition_spoke() -> None:
    streams = make_bars(7)
    proc = processor()
    assert run(proc, [streams[0], streams[1]]) == []
    assert proc.clock.watermark_ns() is None
    snaps = run(proc, [streams[2]])
    assert [s.boundary_ns for s in snaps] == expected_boundaries(streams, 1)


def test_snapshot_for_boundary_excludes_bars_at_the_boundary() -> None:
    """A bar starting exactly at T belongs to the next snapshot, even when delivered in the same batch."""
    universe = ("A", "B")
    proc = RollingProcessor(universe, [Window("1m", 2)], 1, frozenset({0, 1}))
    minutes = np.arange(5)
    rng = np.random.default_rng(0)
    a = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 5)))
    b = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 5)))
    part = np.array([0, 1] * 5, np.int32)
    sym = np.array(["A", "B"] * 5, dtype=object)
    start = np.repeat(T0 + minutes * M, 2)
    close = np.column_stack([a, b]).ravel()
    snaps = proc.process(part, sym, start, close)
    assert [s.boundary_ns for s in snaps] == [T0 + m * M for m in range(1, 5)]
    for snap in snaps:
        m = (snap.boundary_ns - T0) // M
        npt.assert_array_equal(snap.stats.last_close, [a[m - 1], b[m - 1]])
        assert snap.stats.as_of_ns == snap.boundary_ns
