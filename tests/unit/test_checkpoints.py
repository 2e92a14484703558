"""The analytics checkpoint format: what reading the compacted topic to its end restores."""

from __future__ import annotations

import pytest

from streams.checkpoints import checkpoint_records, latest_states


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], {}),
        ([(b"app/a", b"1")], {"a": b"1"}),
        ([(b"app/a", b"1"), (b"app/b", b"2"), (b"app/a", b"3")], {"a": b"3", "b": b"2"}),  # the last one wins
        ([(b"app/a", b"1"), (b"app/a", None)], {}),  # a tombstone forgets a processor
        ([(b"app/a", b"1"), (b"app/a", None), (b"app/a", b"4")], {"a": b"4"}),
        ([(None, b"x"), (b"app/a", b"")], {"a": b""}),  # keyless records are not checkpoints; empty state is kept
        ([(b"other/a", b"1"), (b"app-2/a", b"2"), (b"app/x.y/z", b"3")], {"x.y/z": b"3"}),  # other app ids' keys
    ],
)
def test_latest_states(records: list[tuple[bytes | None, bytes | None]], expected: dict[str, bytes]) -> None:
    assert latest_states("app", records) == expected


def test_round_trip_of_several_checkpoints_of_several_apps() -> None:
    first = {"analytics.correlation": b"\x00" * 10, "patterns": b"p1"}
    second = {"patterns": b"p2", "rotation.sectors": "é".encode()}
    mine = checkpoint_records("tidemark", first) + checkpoint_records("tidemark", second)
    theirs = checkpoint_records("tidemark-reference", {"patterns": b"other"})
    assert latest_states("tidemark", theirs + mine + theirs) == {**first, **second}
    assert latest_states("tidemark-reference", mine + theirs) == {"patterns": b"other"}
