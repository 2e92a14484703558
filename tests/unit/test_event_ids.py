"""Vectorised deterministic event ids and stream hashes: pinned, stable, collision-free, valid version-8 UUIDs."""

from __future__ import annotations

import functools
import uuid

import numpy as np
import pytest

from core.events import deterministic_event_ids_array, stream_hash

T0 = 1_700_000_040_000_000_000


def as_text(rows: np.ndarray) -> list[str]:
    return [bytes(r).decode("ascii") for r in rows]


def ids(streams: list[int], positions: list[int]) -> list[str]:
    return as_text(deterministic_event_ids_array(np.array(streams, np.uint64), np.array(positions, np.int64)))


# Pinned outputs: if one of these changes, every republished event gets a new id and duplicates go unnoticed.
@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        pytest.param(("alpaca", "AAPL", "1m"), 9791276515158000067, id="alpaca-AAPL-1m"),
        pytest.param(("a",), 9281090913444811572, id="a"),
        pytest.param((), 14992523415621393802, id="empty"),
    ],
)
def test_stream_hash_is_pinned(parts: tuple[str, ...], expected: int) -> None:
    assert stream_hash(*parts) == expected


@pytest.mark.parametrize(
    ("stream", "position", "expected"),
    [
        pytest.param(0, 0, "00000000-0000-8000-a220-a8397b1dcdaf", id="zero"),
        pytest.param(1, 1, "83ec686c-1600-860a-9ed4-6d8a387f3706", id="one"),
        pytest.param(9791276515158000067, T0, "35d7bf10-00ea-8ad2-8624-01827cadbd42", id="alpaca-AAPL-1m-bar"),
    ],
)
def test_event_ids_are_pinned(stream: int, position: int, expected: str) -> None:
    assert ids([stream], [position]) == [expected]


def test_pinned_ids_in_one_batch_equal_one_at_a_time() -> None:
    streams = [0, 1, 9791276515158000067]
    positions = [0, 1, T0]
    assert ids(streams, positions) == [ids([s], [p])[0] for s, p in zip(streams, positions, strict=True)]


def test_ids_do_not_depend_on_batch_composition() -> None:
    rng = np.random.default_rng(3)
    streams = rng.integers(0, 2**64, 5000, dtype=np.uint64)
    positions = T0 + rng.integers(0, 10**6, 5000) * 60_000_000_000
    whole = deterministic_event_ids_array(streams, positions)
    order = rng.permutation(5000)
    np.testing.assert_array_equal(deterministic_event_ids_array(streams[order], positions[order]), whole[order])
    for a, b in [(0, 1), (17, 1000), (4999, 5000)]:
        np.testing.assert_array_equal(deterministic_event_ids_array(streams[a:b], positions[a:b]), whole[a:b])
    np.testing.assert_array_equal(deterministic_event_ids_array(streams, positions), whole)  # stable across calls


def test_inputs_are_not_modified() -> None:
    streams = np.array([5, 6, 7], np.uint64)
    positions = np.array([T0, -T0, 0], np.int64)
    s, p = streams.copy(), positions.copy()
    deterministic_event_ids_array(streams, positions)
    np.testing.assert_array_equal(streams, s)
    np.testing.assert_array_equal(positions, p)


def test_empty_input() -> None:
    out = deterministic_event_ids_array(np.empty(0, np.uint64), np.empty(0, np.int64))
    assert out.shape == (0, 36) and out.dtype == np.uint8


@functools.cache
def _grid_pairs() -> tuple[np.ndarray, np.ndarray]:
    """200k structured (stream, position) pairs: small and adjacent values are the hard case for a weak mix."""
    streams = np.arange(400, dtype=np.uint64)
    positions = np.arange(500, dtype=np.int64)
    s, p = np.meshgrid(streams, positions, indexing="ij")
    return s.ravel(), p.ravel()


@functools.cache
def _bar_pairs() -> tuple[np.ndarray, np.ndarray]:
    """200k realistic pairs: hashed (source, symbol, interval) streams x minute-bar starts."""
    symbols = [f"SYM{i:04d}" for i in range(200)]
    hashes = np.array([stream_hash("synthetic", s, iv) for s in symbols for iv in ("1m", "5m")], np.uint64)
    starts = T0 + np.arange(500, dtype=np.int64) * 60_000_000_000
    s, p = np.meshgrid(hashes, starts, indexing="ij")
    return s.ravel(), p.ravel()


@functools.cache
def _swapped_pairs() -> tuple[np.ndarray, np.ndarray]:
    """(a, b) and (b, a) both present, plus negative positions (bars before 1970)."""
    rng = np.random.default_rng(11)
    a = rng.integers(0, 2**62, 50_000, dtype=np.int64)
    b = rng.integers(-(2**62), 2**62, 50_000, dtype=np.int64)
    streams = np.concatenate([a, b, a + 1, -a]).view(np.uint64)
    positions = np.concatenate([b, a, b, b])
    return streams, positions


@functools.cache
def ids_of(pairs) -> np.ndarray:  # type: ignore[no-untyped-def]
    rows = deterministic_event_ids_array(*pairs())
    rows.flags.writeable = False
    return rows


@pytest.mark.parametrize("pairs", [_grid_pairs, _bar_pairs, _swapped_pairs], ids=["grid", "bars", "swapped"])
def test_no_collisions_over_200k_pairs(pairs) -> None:  # type: ignore[no-untyped-def]
    streams, positions = pairs()
    assert streams.size == 200_000
    assert np.unique(np.stack([streams, positions.view(np.uint64)], axis=1).view("V16")).size == 200_000
    rows = ids_of(pairs)
    assert np.unique(np.ascontiguousarray(rows).view("S36")).size == 200_000


@pytest.mark.parametrize("pairs", [_grid_pairs, _bar_pairs, _swapped_pairs], ids=["grid", "bars", "swapped"])
def test_ids_are_canonical_rfc_9562_version_8(pairs) -> None:  # type: ignore[no-untyped-def]
    streams, _ = pairs()
    rows = ids_of(pairs)
    assert rows.shape == (streams.size, 36)
    assert (rows[:, [8, 13, 18, 23]] == ord("-")).all()
    hex_columns = np.delete(np.arange(36), [8, 13, 18, 23])
    assert np.isin(rows[:, hex_columns], np.frombuffer(b"0123456789abcdef", np.uint8)).all()
    assert (rows[:, 14] == ord("8")).all()  # version nibble
    assert np.isin(rows[:, 19], np.frombuffer(b"89ab", np.uint8)).all()  # variant 10xx
    for text in as_text(rows[::997]):
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 8 and parsed.variant == uuid.RFC_4122


def test_the_random_bits_are_spread() -> None:
    """Apart from the 6 fixed bits, each bit of the id is set about half the time even for adjacent inputs."""
    rows = ids_of(_grid_pairs)
    hex_columns = np.delete(np.arange(36), [8, 13, 18, 23])
    lookup = np.zeros(256, np.uint8)
    lookup[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
    nibbles = lookup[rows[:, hex_columns]]
    bits = np.unpackbits(nibbles[:, :, None], axis=2)[:, :, 4:]  # (n, 32 nibbles, 4 bits), MSB first
    share = bits.reshape(len(rows), 128).mean(axis=0)
    fixed = np.zeros(128, bool)
    fixed[48:52] = True  # version
    fixed[64:66] = True  # variant
    np.testing.assert_array_equal(share[48:52], [1, 0, 0, 0])
    np.testing.assert_array_equal(share[64:66], [1, 0])
    assert np.all(np.abs(share[~fixed] - 0.5) < 0.01)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(("alpaca", "AAPL", "1m"), ("alpaca", "AAPL", "5m"), id="interval"),
        pytest.param(("alpaca", "AAPL", "1m"), ("polygon", "AAPL", "1m"), id="source"),
        pytest.param(("alpaca", "AAPL", "1m"), ("alpaca", "AAPL"), id="arity"),
        pytest.param(("ab", "c"), ("a", "bc"), id="boundary-moved"),
        pytest.param(("a", ""), ("a",), id="empty-part"),
    ],
)
def test_stream_hash_distinguishes(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert stream_hash(*a) != stream_hash(*b)


def test_stream_hash_no_collisions_over_many_streams() -> None:
    hashes = {
        stream_hash(source, f"{prefix}{i}", interval)
        for source in ("alpaca", "polygon", "synthetic")
        for prefix in ("S", "X/")
        for i in range(5000)
        for interval in ("1m", "5m")
    }
    assert len(hashes) == 3 * 2 * 5000 * 2
    assert all(0 <= h < 2**64 for h in hashes)


def test_stream_hash_is_injective_over_parts_containing_the_separator() -> None:
    assert stream_hash("src", "a\x1fb", "1m") != stream_hash("src\x1fa", "b", "1m")
