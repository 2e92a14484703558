"""Redis projections: latest values, each stored with the (partition, offset) it came from.

A write carrying an older position than the stored one is ignored, so replays and restarts are idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

KEY_PREFIX = "tm"

# KEYS[1]: hash key. ARGV: position (partition * 2^40 + offset, comparable within one key's partition),
# then field/value pairs. Returns 1 when written, 0 when the stored position is newer or equal.
_SET_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], '_position')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], '_position', ARGV[1], unpack(ARGV, 2))
return 1
"""

_POSITION_SHIFT = 1 << 40


def position(partition: int, offset: int) -> int:
    return partition * _POSITION_SHIFT + offset


def key(*parts: str) -> str:
    return ":".join((KEY_PREFIX, *parts))


@dataclass(frozen=True, slots=True)
class LatestValue:
    key: str
    position: int
    fields: dict[str, str]


class RedisProjection:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_SET_IF_NEWER)

    async def set_latest(self, values: Iterable[LatestValue]) -> int:
        """Write every value whose position is newer than the stored one; return how many were written."""
        pipe = self._client.pipeline(transaction=False)
        count = 0
        for value in values:
            flat = [item for pair in value.fields.items() for item in pair]
            await self._script(keys=[value.key], args=[value.position, *flat], client=pipe)
            count += 1
        if not count:
            return 0
        return int(sum(await pipe.execute()))

    async def publish(self, channel: str, message: str) -> int:
        """Announce on pub/sub; returns how many subscribers heard it."""
        return int(await self._client.publish(channel, message))
