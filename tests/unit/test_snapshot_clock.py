"""SnapshotClock: an event-time watermark over source partitions and the snapshot boundaries it makes due."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.units import NS_PER_MINUTE
from streams.correlation.clock import SnapshotClock

M = NS_PER_MINUTE
T0 = 1_700_000_100 * 1_000_000_000  # a whole minute and a whole 5 minutes (1_700_000_100 / 300 is integral)


def clock(partitions: set[int], every_minutes: int = 1) -> SnapshotClock:
    return SnapshotClock(every_ns=every_minutes * M, partitions=frozenset(partitions))


def observe(c: SnapshotClock, rows: list[tuple[int, int]]) -> None:
    """rows: (partition, start_ns)."""
    parts = np.array([p for p, _ in rows], dtype=np.int32)
    starts = np.array([s for _, s in rows], dtype=np.int64)
    c.observe(parts, starts)


def take(c: SnapshotClock) -> list[int]:
    """What the processor does with due(): take the boundaries and remember the last one."""
    due = c.due()
    if due:
        c.last_boundary_ns = due[-1]
    return due


@pytest.mark.parametrize(
    ("watched", "batches", "expected"),
    [
        pytest.param({0, 1}, [], None, id="nothing-seen"),
        pytest.param({0, 1}, [[(0, T0)]], None, id="one-of-two-spoke"),
        pytest.param({0, 1}, [[(0, T0), (0, T0 + 5 * M)]], None, id="one-partition-many-bars"),
        pytest.param({0, 1}, [[(0, T0)], [(1, T0 + 3 * M)]], T0, id="min-of-newest"),
        pytest.param({0, 1}, [[(0, T0 + 7 * M), (1, T0 + 3 * M)]], T0 + 3 * M, id="one-batch-two-partitions"),
        pytest.param({0, 1}, [[(0, T0), (2, T0 + 9 * M)]], None, id="unwatched-does-not-count-as-spoken"),
        pytest.param({0}, [[(0, T0 + 2 * M), (2, T0)]], T0 + 2 * M, id="unwatched-lower-ignored"),
        pytest.param({0, 1}, [[(0, T0 + 4 * M), (1, T0 + 4 * M), (2, T0 - 60 * M)]], T0 + 4 * M, id="unwatched-old"),
        pytest.param({0, 1, 2}, [[(0, T0 + M), (1, T0 + 2 * M), (2, T0 + 3 * M)]], T0 + M, id="three-partitions"),
        pytest.param(
            {0, 1},
            [[(0, T0), (0, T0 + M), (0, T0 + 2 * M)], [(1, T0 + 5 * M), (1, T0 + 6 * M)]],
            T0 + 2 * M,
            id="newest-per-partition",
        ),
        pytest.param(set(), [[(0, T0)]], None, id="no-watched-partitions"),
    ],
)
def test_watermark(watched: set[int], batches: list[list[tuple[int, int]]], expected: int | None) -> None:
    c = clock(watched)
    for batch in batches:
        observe(c, batch)
    assert c.watermark_ns() == expected


@pytest.mark.parametrize(
    "replay",
    [
        pytest.param([(0, T0)], id="replay-first-bar"),
        pytest.param([(0, T0 + 5 * M), (1, T0 + 2 * M)], id="replay-both"),
        pytest.param([(1, T0 - 30 * M)], id="older-than-anything"),
        pytest.param([(0, T0 + 9 * M), (0, T0 + 3 * M)], id="newest-then-older-in-one-batch"),
    ],
)
def test_replayed_older_bars_never_move_the_watermark_back(replay: list[tuple[int, int]]) -> None:
    c = clock({0, 1})
    observe(c, [(0, T0), (0, T0 + 9 * M), (1, T0), (1, T0 + 6 * M)])
    assert c.watermark_ns() == T0 + 6 * M
    high_before = dict(c.high_ns)
    observe(c, replay)
    assert c.watermark_ns() == T0 + 6 * M
    assert c.high_ns == high_before


def test_empty_batch_is_a_no_op() -> None:
    c = clock({0})
    observe(c, [])
    assert c.high_ns == {} and c.low_ns == {}
    assert c.watermark_ns() is None
    assert c.due() == []


def test_observe_tracks_newest_and_oldest_per_partition_of_unsorted_batch() -> None:
    c = clock({0, 1, 2})
    observe(c, [(2, T0 + 4 * M), (0, T0 + 2 * M), (2, T0 + M), (1, T0), (0, T0 + 7 * M), (2, T0 + 9 * M)])
    assert c.high_ns == {0: T0 + 7 * M, 1: T0, 2: T0 + 9 * M}
    assert c.low_ns == {0: T0 + 2 * M, 1: T0, 2: T0 + M}


S = 10**9


@pytest.mark.parametrize(
    ("every", "first_bar", "watermark", "last", "expected"),
    [
        # the first boundary is the multiple of every_ns strictly after the oldest first bar
        pytest.param(1, T0, T0, None, [], id="watermark-on-first-bar"),
        pytest.param(1, T0, T0 + 59 * S, None, [], id="watermark-short-of-boundary"),
        pytest.param(1, T0, T0 + M, None, [T0 + M], id="watermark-on-boundary-inclusive"),
        pytest.param(1, T0, T0 + 3 * M, None, [T0 + M, T0 + 2 * M, T0 + 3 * M], id="up-to-watermark"),
        pytest.param(1, T0 + 30 * S, T0 + 2 * M + 30 * S, None, [T0 + M, T0 + 2 * M], id="unaligned-bars"),
        pytest.param(1, T0 - 2 * M, T0, None, [T0 - M, T0], id="older-first-bar"),
        pytest.param(5, T0, T0 + 4 * M, None, [], id="every-5-not-reached"),
        pytest.param(5, T0, T0 + 5 * M, None, [T0 + 5 * M], id="every-5-reached-exactly"),
        pytest.param(5, T0, T0 + 14 * M, None, [T0 + 5 * M, T0 + 10 * M], id="every-5-two"),
        pytest.param(5, T0 + 3 * M, T0 + 11 * M, None, [T0 + 5 * M, T0 + 10 * M], id="every-5-first-mid-period"),
        pytest.param(5, T0 + 5 * M, T0 + 5 * M, None, [], id="every-5-first-bar-on-boundary"),
        pytest.param(5, T0 + 5 * M, T0 + 10 * M, None, [T0 + 10 * M], id="every-5-strictly-after-first-bar"),
        pytest.param(5, T0 + 4 * M + 59 * S, T0 + 5 * M, None, [T0 + 5 * M], id="every-5-first-bar-just-before"),
        # resume after last_boundary_ns
        pytest.param(1, T0, T0 + 3 * M, T0 + M, [T0 + 2 * M, T0 + 3 * M], id="resume"),
        pytest.param(1, T0, T0 + 3 * M, T0 + 3 * M, [], id="resume-nothing-new"),
        pytest.param(5, T0, T0 + 20 * M, T0 + 10 * M, [T0 + 15 * M, T0 + 20 * M], id="resume-every-5"),
        pytest.param(5, T0, T0 + 24 * M, T0 + 10 * M, [T0 + 15 * M, T0 + 20 * M], id="resume-every-5-mid"),
        pytest.param(1, T0, T0 + 3 * M, T0 + 7 * M, [], id="last-beyond-watermark"),
        pytest.param(
            1, T0 + 50 * M, T0 + 52 * M, T0 + 49 * M, [T0 + 50 * M, T0 + 51 * M, T0 + 52 * M], id="last-overrides-first"
        ),
    ],
)
def test_due(every: int, first_bar: int, watermark: int, last: int | None, expected: list[int]) -> None:
    c = clock({0, 1}, every)
    c.last_boundary_ns = last
    observe(c, [(0, first_bar), (1, watermark), (0, watermark + 7 * M)])
    assert c.watermark_ns() == watermark
    due = c.due()
    assert due == expected
    assert all(b % (every * M) == 0 for b in due)
    assert c.due() == due, "due() is a query: it does not take the boundaries itself"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param(
            [(0, T0), (0, T0 + 3 * M), (1, T0 + 2 * M), (7, T0 - 50 * M)], [T0 + M, T0 + 2 * M], id="unwatched-old-bar"
        ),
        pytest.param(
            [(0, T0), (0, T0 + 3 * M), (1, T0 + 2 * M), (7, T0 + 90 * M)], [T0 + M, T0 + 2 * M], id="unwatched-new-bar"
        ),
        pytest.param([(0, T0 + 2 * M), (1, T0 + M), (1, T0 + 2 * M)], [T0 + 2 * M], id="first-bar-on-other-partition"),
    ],
)
def test_due_uses_only_watched_partitions(rows: list[tuple[int, int]], expected: list[int]) -> None:
    c = clock({0, 1})
    observe(c, rows)
    assert c.due() == expected


def test_due_is_empty_without_watermark() -> None:
    c = clock({0, 1})
    observe(c, [(0, T0), (0, T0 + 30 * M)])
    assert c.due() == []


def test_due_resumes_after_the_boundaries_taken() -> None:
    c = clock({0, 1})
    observe(c, [(0, T0), (1, T0), (0, T0 + 2 * M), (1, T0 + 2 * M)])
    assert take(c) == [T0 + M, T0 + 2 * M]
    assert take(c) == []
    observe(c, [(0, T0 + 5 * M)])
    assert take(c) == []  # partition 1 still at T0 + 2m
    observe(c, [(1, T0 + 4 * M)])
    assert take(c) == [T0 + 3 * M, T0 + 4 * M]
    observe(c, [(0, T0 + M), (1, T0 + M)])  # replay
    assert take(c) == []


def _stream(rng: np.random.Generator, partitions: int, minutes: int) -> list[list[tuple[int, int]]]:
    """Per-partition bars in time order (several symbols a minute, random gaps and late starts)."""
    streams = []
    for p in range(partitions):
        first = int(rng.integers(0, 5))
        rows = []
        for minute in range(first, minutes):
            if rng.random() < 0.2:
                continue
            rows += [(p, T0 + 17 * 10**9 + minute * M)] * int(rng.integers(1, 4))  # bars start mid-minute too
        streams.append(rows)
    return streams


def _interleave(rng: np.random.Generator, streams: list[list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """Random merge of the partitions keeping each one's order, cut at random batch boundaries."""
    cursors = [0] * len(streams)
    merged = []
    while any(c < len(s) for c, s in zip(cursors, streams, strict=True)):
        live = [i for i, s in enumerate(streams) if cursors[i] < len(s)]
        i = int(rng.choice(live))
        n = int(rng.integers(1, 8))
        merged += streams[i][cursors[i] : cursors[i] + n]
        cursors[i] += n
    cuts = np.sort(rng.choice(np.arange(1, len(merged)), size=int(rng.integers(0, 30)), replace=False))
    bounds = [0, *cuts.tolist(), len(merged)]
    return [merged[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("every", [1, 5])
@pytest.mark.parametrize("seed", range(12))
def test_boundaries_do_not_depend_on_batching_or_interleaving(seed: int, every: int) -> None:
    rng = np.random.default_rng(seed)
    streams = _stream(rng, partitions=3, minutes=60)
    everything = [row for s in streams for row in s]

    reference = clock({0, 1, 2}, every)
    observe(reference, everything)
    expected = take(reference)
    watermark = min(s[-1][1] for s in streams)
    first_bar = min(s[0][1] for s in streams)
    assert expected == list(range((first_bar // (every * M) + 1) * every * M, watermark + 1, every * M))
    assert expected, "the scenario should produce boundaries"

    for _ in range(5):
        c = clock({0, 1, 2}, every)
        taken: list[int] = []
        for batch in _interleave(rng, streams):
            observe(c, batch)
            got = take(c)
            if got:
                # every boundary taken is reached by every partition already delivered up to it
                assert got[-1] <= c.watermark_ns()
            taken += got
        assert taken == expected
        assert c.watermark_ns() == reference.watermark_ns()


@pytest.mark.parametrize("seed", range(4))
def test_boundaries_are_never_taken_before_every_earlier_bar_was_seen(seed: int) -> None:
    """Safety: when boundary T is due, no bar with start < T is still to come on a watched partition."""
    rng = np.random.default_rng(100 + seed)
    streams = _stream(rng, partitions=3, minutes=40)
    c = clock({0, 1, 2})
    delivered = [0] * len(streams)
    for batch in _interleave(rng, streams):
        observe(c, batch)
        for partition, _ in batch:
            delivered[partition] += 1
        for boundary in take(c):
            remaining = [row for p, s in enumerate(streams) for row in s[delivered[p] :]]
            assert all(start >= boundary for _, start in remaining)
