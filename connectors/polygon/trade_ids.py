"""Which trade events the live connector has already published, so each trade id reaches ``md.trades`` once.

Pure logic, no Kafka: the bounded set of recent ids, how much of each partition to read back at start-up, and the
event id at the head of a message. ``live.py`` wires them to the topic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

_UUID_LENGTH = 36
_UUID_PREFIX = bytes([_UUID_LENGTH * 2])  # Avro string length: zigzag varint of 36


class RecentIds:
    """The last ``capacity`` ids seen, the oldest forgotten first, so memory stays bounded however long a run is.

    A deque beside a set: evicting from the front of an insertion-ordered dict rescans the deleted slots on every
    ``next(iter(...))``, which costs tens of microseconds per trade once the dict is full.
    """

    def __init__(self, capacity: int, ids: Iterable[str] = ()) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        for event_id in ids:
            self.add(event_id)

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False when it is already remembered (a repeat to drop)."""
        if event_id in self._ids:
            return False
        if len(self._order) == self.capacity:
            self._ids.discard(self._order.popleft())
        self._order.append(event_id)
        self._ids.add(event_id)
        return True

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._order)


def newest_share(available: Mapping[int, int], limit: int) -> dict[int, int]:
    """How many of each partition's newest records to read so that at most ``limit`` are read in all.

    ``available`` is what each partition holds in the window. When it all fits, everything is read; otherwise
    the limit is shared in proportion to what each holds, which keeps the newest ``limit`` overall when the
    partitions filled at steady rates over the window (their order across partitions is not known before reading).
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    held = {partition: max(0, count) for partition, count in available.items()}
    total = sum(held.values())
    if total <= limit:
        return held
    return {partition: count * limit // total for partition, count in held.items()}


def leading_event_id(message: bytes, header: bytes) -> str | None:
    """The ``event_id`` of a single-object message that starts with ``header``, read from the first body bytes.

    Every event schema starts with ``event_id`` (a UUID string), so for the current schema's header the id is the
    36 bytes after the string's length; this reads them without decoding the record (the strict codec decodes
    about 9k trades/s, and a restart reads back up to 500k). None when the message is of another schema or
    version, or is not shaped so: the caller decodes those with the codec.
    """
    start = len(header)
    end = start + 1 + _UUID_LENGTH
    if len(message) < end or not message.startswith(header) or message[start : start + 1] != _UUID_PREFIX:
        return None
    try:
        return message[start + 1 : end].decode("ascii")
    except UnicodeDecodeError:
        return None
