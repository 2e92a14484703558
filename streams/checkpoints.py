"""The analytics checkpoint's format: one record per processor, keyed by app id and processor name, its state
bytes as the value.

The checkpoint topic is compacted, so reading it to its end and keeping the last value per key gives exactly what
compaction converges to; a tombstone (no value) forgets a processor. Several app ids may share the topic (one per
topic prefix), so each reads back only its own keys. Pure, so the format is tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SEPARATOR = "/"


def checkpoint_records(app_id: str, states: Mapping[str, bytes]) -> list[tuple[bytes, bytes]]:
    """(key, value) records of one checkpoint of ``app_id``."""
    return [(f"{app_id}{SEPARATOR}{name}".encode(), state) for name, state in states.items()]


def latest_states(app_id: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, bytes]:
    """The last state per processor name of ``app_id`` in a checkpoint topic read in order."""
    prefix = f"{app_id}{SEPARATOR}".encode()
    states: dict[str, bytes] = {}
    for key, value in records:
        if key is None or not key.startswith(prefix):
            continue
        name = key[len(prefix) :].decode()
        if value is None:
            states.pop(name, None)
        else:
            states[name] = value
    return states
