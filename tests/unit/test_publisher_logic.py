"""The pure parts of the bar publisher: resume positions, key partitioning and deterministic bar ids."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from connectors.publisher import BarIds, StopFlag, keep_after_positions, publish_batches
from core.events import deterministic_event_ids_array, stream_hash
from core.kafka import partition_for_key
from core.units import NS_PER_SECOND
from schemas.bars import BarBatch
from tests.factories import minute_bars

M = 60_000_000_000
T0 = 1_700_000_100 * 1_000_000_000


def batch(symbols: list[str], starts: list[int], interval: str = "1m") -> BarBatch:
    return minute_bars(symbols, starts, interval)


# ---------------------------------------------------------------------------------------------- keep_after_positions

SYMBOLS = ["A", "B", "C", "D", "E"]  # rank = index; partition of symbol: A,C,E -> 0; B,D -> 1
PART = {"A": 0, "B": 1, "C": 0, "D": 1, "E": 0}


def grid(minutes: int) -> BarBatch:
    """Generation order: by start, then symbol rank."""
    return batch([s for _ in range(minutes) for s in SYMBOLS], [T0 + m * M for m in range(minutes) for _ in SYMBOLS])


def kept(bars: BarBatch, tail: dict[int, tuple[int, int]]) -> list[tuple[int, str]]:
    rank = np.array([SYMBOLS.index(s) for s in bars.symbol], dtype=np.int64)
    part = np.array([PART[s] for s in bars.symbol], dtype=np.int32)
    out = keep_after_positions(bars, part, rank, tail)
    return [((int(t) - T0) // M, s) for t, s in zip(out.start_ns, out.symbol, strict=True)]


ALL_3 = [(m, s) for m in range(3) for s in SYMBOLS]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        pytest.param({}, ALL_3, id="no-tail-keeps-all"),
        pytest.param({0: (T0 + M, 4), 1: (T0 + M, 3)}, [(2, s) for s in SYMBOLS], id="both-at-minute-1-last-symbol"),
        pytest.param(
            {0: (T0 + M, 0)},
            [(0, "B"), (0, "D"), (1, "B"), (1, "C"), (1, "D"), (1, "E"), *[(2, s) for s in SYMBOLS]],
            id="tail-on-first-symbol-of-a-minute",
        ),
        pytest.param(
            {0: (T0 + M, 2)},
            [(0, "B"), (0, "D"), (1, "B"), (1, "D"), (1, "E"), *[(2, s) for s in SYMBOLS]],
            id="same-start-higher-rank-kept",
        ),
        pytest.param({0: (T0 + 2 * M, 4), 1: (T0 + 2 * M, 3)}, [], id="everything-already-there"),
        pytest.param({0: (T0 + 9 * M, 0), 1: (T0 + 9 * M, 0)}, [], id="tail-beyond-the-batch"),
        pytest.param({0: (T0 - M, 4), 1: (T0 - M, 4)}, ALL_3, id="tail-before-the-batch"),
        pytest.param({0: (T0, -1)}, ALL_3, id="rank-minus-one-keeps-its-minute"),
        pytest.param(
            {1: (T0, 1)},
            [(0, "A"), (0, "C"), (0, "D"), (0, "E"), *[(m, s) for m in (1, 2) for s in SYMBOLS]],
            id="only-partition-1-has-a-tail",
        ),
        pytest.param({5: (T0 + 9 * M, 4)}, ALL_3, id="tail-of-a-partition-without-bars"),
        pytest.param(
            {0: (T0 + M, 2), 7: (T0 + 9 * M, 4)},
            [(0, "B"), (0, "D"), (1, "B"), (1, "D"), (1, "E"), *[(2, s) for s in SYMBOLS]],
            id="extra-high-partition-in-tail",
        ),
    ],
)
def test_keep_after_positions(tail: dict[int, tuple[int, int]], expected: list[tuple[int, str]]) -> None:
    assert kept(grid(3), tail) == expected


def test_keep_after_positions_returns_the_same_batch_when_nothing_is_dropped() -> None:
    bars = grid(2)
    rank = np.array([SYMBOLS.index(s) for s in bars.symbol])
    part = np.array([PART[s] for s in bars.symbol], dtype=np.int32)
    assert keep_after_positions(bars, part, rank, {}) is bars
    assert keep_after_positions(bars, part, rank, {0: (T0 - M, 0)}) is bars
    out = keep_after_positions(bars, part, rank, {0: (T0, 0)})
    assert out is not bars and len(out) == len(bars) - 1
    np.testing.assert_array_equal(out.close, bars.close[1:])  # every column follows the selection
    np.testing.assert_array_equal(out.end_ns, bars.end_ns[1:])


def test_keep_after_positions_on_an_empty_batch() -> None:
    empty = batch([], [])
    out = keep_after_positions(empty, np.empty(0, np.int32), np.empty(0, np.int64), {0: (T0, 1)})
    assert len(out) == 0


@pytest.mark.parametrize("seed", range(20))
def test_keep_after_positions_matches_a_per_bar_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    partitions = int(rng.integers(1, 6))
    symbols = [f"S{i}" for i in range(12)]
    pick = rng.integers(0, len(symbols), n)
    starts = T0 + rng.integers(0, 20, n) * M
    bars = batch([symbols[i] for i in pick], starts.tolist())
    part = rng.integers(0, partitions, len(symbols)).astype(np.int32)[pick]
    tail = {
        int(p): (int(T0 + rng.integers(-2, 22) * M), int(rng.integers(-1, len(symbols))))
        for p in range(partitions + 2)
        if rng.random() < 0.7
    }
    out = keep_after_positions(bars, part, pick, tail)
    expected = [
        i
        for i in range(n)
        if int(part[i]) not in tail or (int(starts[i]), int(pick[i])) > tail[int(part[i])]  # lexicographic
    ]
    np.testing.assert_array_equal(out.start_ns, starts[expected])
    assert out.symbol.tolist() == [symbols[pick[i]] for i in expected]


# -------------------------------------------------------------------------------------------------- partition_for_key

# Java client: Utils.murmur2 (signed) of these keys, as pinned in Kafka's UtilsTest.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("partitions", [1, 2, 3, 6, 12, 50, 97])
@pytest.mark.parametrize("key", list(JAVA_MURMUR2))
def test_partition_for_key_matches_the_java_partitioner(key: bytes, partitions: int) -> None:
    assert partition_for_key(key, partitions) == (JAVA_MURMUR2[key] & 0x7FFFFFFF) % partitions


def _keys() -> list[bytes]:
    rng = np.random.default_rng(0)
    tickers = ["AAPL", "MSFT", "BTC/USD", "ES=F", "EURUSD", "BRK.B", "", "a", "é", "\x00"]
    tickers += [
        "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./-"), int(k))) for k in rng.integers(1, 40, 200)
    ]
    return [t.encode() for t in tickers] + [bytes(rng.integers(0, 256, int(k), dtype=np.uint8)) for k in range(17)]


@pytest.mark.parametrize("partitions", [1, 3, 7, 16, 64])
def test_partition_for_key_matches_aiokafka_default_partitioner(partitions: int) -> None:
    partitioner = DefaultPartitioner()
    every = list(range(partitions))
    for key in _keys():
        expected = partitioner(key, every, every)
        assert partition_for_key(key, partitions) == expected, key
        assert 0 <= expected < partitions


# ------------------------------------------------------------------------------------------------------------- BarIds


def ids(bar_ids: BarIds, bars: BarBatch) -> list[str]:
    rows = bar_ids(bars)
    assert rows.dtype == np.uint8 and rows.shape == (len(bars), 36)
    return [bytes(r).decode("ascii") for r in rows]


def one(source: str, symbol: str, start: int, interval: str = "1m") -> str:
    return ids(BarIds(source), batch([symbol], [start], interval))[0]


BASE = ("alpaca", "AAPL", T0, "1m")


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(("alpaca", "AAPL", T0 + M, "1m"), id="start"),
        pytest.param(("alpaca", "AAPL", T0 + 1, "1m"), id="start-1ns"),
        pytest.param(("alpaca", "MSFT", T0, "1m"), id="symbol"),
        pytest.param(("alpaca", "AAPl", T0, "1m"), id="symbol-case"),
        pytest.param(("polygon", "AAPL", T0, "1m"), id="source"),
        pytest.param(("alpaca", "AAPL", T0, "5m"), id="interval"),
        pytest.param(("alpacaAAPL", "", T0, "1m"), id="parts-moved"),
    ],
)
def test_bar_ids_differ_when_any_identity_part_differs(other: tuple[str, str, int, str]) -> None:
    assert one(*BASE) != one(*other)


def test_bar_ids_are_deterministic_across_instances_batches_and_calls() -> None:
    bars = batch(["AAPL", "MSFT", "AAPL", "BTC/USD"], [T0, T0, T0 + M, T0 + 2 * M])
    first = BarIds("alpaca")
    a = ids(first, bars)
    assert ids(first, bars) == a  # cached stream hashes give the same ids
    assert ids(BarIds("alpaca"), bars) == a
    # the same bar in another batch, at another row
    assert ids(BarIds("alpaca"), batch(["X", "AAPL"], [T0, T0 + M]))[1] == a[2]
    assert len(set(a)) == len(a)


def test_bar_ids_are_the_vectorised_event_ids_of_the_stream_hash() -> None:
    bars = batch(["AAPL", "MSFT", "EURUSD"], [T0, T0 + M, T0 + 2 * M], interval="1m")
    hashes = np.array([stream_hash("alpaca", s, "1m") for s in bars.symbol], dtype=np.uint64)
    np.testing.assert_array_equal(BarIds("alpaca")(bars), deterministic_event_ids_array(hashes, bars.start_ns))


def test_bar_ids_are_version_8_rfc_9562_uuids() -> None:
    rng = np.random.default_rng(1)
    symbols = [f"S{i}" for i in rng.integers(0, 50, 2000)]
    starts = (T0 + rng.integers(0, 10_000, 2000) * M).tolist()
    for text in ids(BarIds("synthetic"), batch(symbols, starts)):
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical, lower-case, hyphenated
        assert parsed.version == 8
        assert parsed.variant == uuid.RFC_4122


def test_bar_ids_of_an_empty_batch() -> None:
    assert BarIds("alpaca")(batch([], [])).shape == (0, 36)


# ----------------------------------------------------------------------------------------------------- publish_batches
class _Recording:
    """Stands where a BarPublisher does: keeps what it was given (the pacing logic is under test, not Kafka)."""

    def __init__(self) -> None:
        self.published: list[BarBatch] = []
        self.flushed = 0

    def publish(self, bars: BarBatch) -> None:
        self.published.append(bars)

    def flush(self) -> None:
        self.flushed += 1


class _StopDuringWait(StopFlag):
    """Not set when the loop looks before a batch; set from the first look inside the pacing wait on."""

    def __init__(self, looks_before_set: int) -> None:
        super().__init__()
        self._looks = looks_before_set

    def __bool__(self) -> bool:
        self._looks -= 1
        return self._looks < 0


def test_a_stop_during_the_pacing_wait_publishes_nothing_more_and_flushes() -> None:
    first = minute_bars(["SPY"], [0])
    later = minute_bars(["SPY"], [3_600 * NS_PER_SECOND])  # due an hour of bar time later, at speed 1
    publisher = _Recording()
    # Looks: before the first batch (no wait: it is due at once), before the second, then inside its wait.
    report = publish_batches(publisher, [first, later], stop=_StopDuringWait(2), speed=1.0)  # type: ignore[arg-type]
    assert [len(b) for b in publisher.published] == [1]
    assert report.interrupted and report.bars == 1
    assert publisher.flushed == 1


def test_without_a_stop_every_batch_is_published_once() -> None:
    batches = [minute_bars(["SPY", "XLK"], [i * 60 * NS_PER_SECOND] * 2) for i in range(3)]
    publisher = _Recording()
    report = publish_batches(publisher, batches, stop=StopFlag())  # type: ignore[arg-type]
    assert publisher.published == batches
    assert (report.bars, report.batches, report.interrupted) == (6, 3, False)
