"""Redis projections: latest values, each stored with the (partition, offset) it came from, and sliding windows of
recent bars.

A latest-value write carrying an older position than the stored one is ignored, so replays and restarts are
idempotent. A window holds at most one member per bar start (a later write of the same start replaces it), so
re-applying bars never duplicates them either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from schemas.bars import BAR_KINDS

KEY_PREFIX = "tm"

# KEYS[1]: hash key. ARGV: position (partition * 2^40 + offset, comparable within one key's partition),
# then field/value pairs. Returns 1 when written, 0 when the stored position is newer or equal.
_SET_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], '_position')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], '_position', ARGV[1], unpack(ARGV, 2))
return 1
"""

# KEYS: windows' sorted sets. ARGV: per key, its bar count n, its window in ns, its TTL in seconds and its n bars
# packed as WINDOW_MEMBERs (49 bytes each, one per start, starts ascending). A bar newer than the window's newest is
# added (in bulk); an older one replaces whatever the set holds at its start. Then every bar starting a window or more
# before the newest one goes, and the key expires TTL seconds later. A start is read from its member's first 8 bytes
# (struct: exact, then one rounding to a double, as Redis rounds any score) and formatted back with '%.0f': Lua's own
# number-to-string conversion keeps 14 digits, too few for nanoseconds.
_ADD_TO_WINDOWS = """
local a = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local n, window, ttl, packed = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3]
  a = a + 4
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local newest = top[2] and tonumber(top[2]) or nil
  local fresh = {}
  local start
  for i = 0, n - 1 do
    local member = string.sub(packed, i * 49 + 1, i * 49 + 49)
    start = struct.unpack('<i8', member)
    local score = string.format('%.0f', start)
    if newest == nil or start > newest then
      fresh[#fresh + 1] = score
      fresh[#fresh + 1] = member
      if #fresh >= 1000 then
        redis.call('ZADD', key, unpack(fresh))
        fresh = {}
      end
    else
      redis.call('ZREMRANGEBYSCORE', key, score, score)
      redis.call('ZADD', key, score, member)
    end
  end
  if #fresh > 0 then redis.call('ZADD', key, unpack(fresh)) end
  if newest == nil or start > newest then newest = start end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', newest - window))
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""
# Windows per script call: bounds how long one call holds Redis.
_WINDOWS_PER_CALL = 256

_POSITION_SHIFT = 1 << 40


def position(partition: int, offset: int) -> int:
    return partition * _POSITION_SHIFT + offset


def key(*parts: str) -> str:
    return ":".join((KEY_PREFIX, *parts))


def window_key(interval: str, symbol: str) -> str:
    """The sorted set of a symbol's recent bars of one interval (score: start_ns; member: ``WINDOW_MEMBER``)."""
    return key("window", interval, symbol)


# A window's member: one bar packed little-endian, 49 bytes: start_ns (int64), open, high, low, close, volume
# (float64), kind (uint8, an index into ``schemas.bars.BAR_KINDS``). Binary, not text: formatting floats as text cost
# the sink 4-5 us a bar, packing them a fraction of that, and the member is exact and about half as long. Its first 8
# bytes are the start, so a window holds one member per start.
WINDOW_MEMBER = np.dtype(
    [
        ("start_ns", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("volume", "<f8"),
        ("kind", "u1"),
    ]
)


@dataclass(frozen=True, slots=True)
class LatestValue:
    key: str
    position: int
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class WindowBar:
    """One bar of a Redis window. ``kind`` is ``OHLCV`` or ``CLOSE_ONLY`` (see ``schemas.bars.BAR_KINDS``)."""

    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    kind: str


def pack_window_bars(
    start_ns: npt.NDArray[np.int64],
    open_: npt.NDArray[np.float64],
    high: npt.NDArray[np.float64],
    low: npt.NDArray[np.float64],
    close: npt.NDArray[np.float64],
    volume: npt.NDArray[np.float64],
    kind: npt.NDArray[np.int8],
) -> npt.NDArray[np.void]:
    """Bars as window members (``WINDOW_MEMBER`` rows), in one vectorised pass."""
    packed = np.empty(len(start_ns), dtype=WINDOW_MEMBER)
    packed["start_ns"] = start_ns
    packed["open"] = open_
    packed["high"] = high
    packed["low"] = low
    packed["close"] = close
    packed["volume"] = volume
    packed["kind"] = kind
    return packed


def parse_window_members(members: Sequence[bytes]) -> list[WindowBar]:
    if any(len(member) != WINDOW_MEMBER.itemsize for member in members):
        raise ValueError(f"a window member is not {WINDOW_MEMBER.itemsize} bytes: not a bar window")
    bars = np.frombuffer(b"".join(members), dtype=WINDOW_MEMBER)
    return [
        WindowBar(start, o, h, low, c, v, BAR_KINDS[k])
        for start, o, h, low, c, v, k in zip(
            bars["start_ns"].tolist(),
            bars["open"].tolist(),
            bars["high"].tolist(),
            bars["low"].tolist(),
            bars["close"].tolist(),
            bars["volume"].tolist(),
            bars["kind"].tolist(),
            strict=True,
        )
    ]


@dataclass(frozen=True, slots=True)
class BarWindowUpdate:
    """Bars of one symbol and interval for its window: ``WINDOW_MEMBER`` rows, one per start (the last in log order),
    starts ascending. After them the window keeps the bars starting less than ``window_ns`` before its newest one,
    and expires ``ttl_s`` after this write."""

    key: str
    bars: bytes
    window_ns: int
    ttl_s: int


class RedisProjection:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_SET_IF_NEWER)
        self._windows_script = client.register_script(_ADD_TO_WINDOWS)

    async def set_latest(self, values: Iterable[LatestValue]) -> int:
        """Write every value whose position is newer than the stored one; return how many were written."""
        return await self.write(values)

    async def write(self, values: Iterable[LatestValue], windows: Iterable[BarWindowUpdate] = ()) -> int:
        """``set_latest`` and the windows' updates in one pipelined round trip: one script call per value, and one per
        256 windows (never one per bar). Returns how many values were written."""
        pipe = self._client.pipeline(transaction=False)
        count = 0
        for value in values:
            flat = [item for pair in value.fields.items() for item in pair]
            await self._script(keys=[value.key], args=[value.position, *flat], client=pipe)
            count += 1
        calls = 0
        pending = list(windows)
        for first in range(0, len(pending), _WINDOWS_PER_CALL):
            chunk = pending[first : first + _WINDOWS_PER_CALL]
            args: list[int | bytes] = []
            for window in chunk:
                args += (len(window.bars) // WINDOW_MEMBER.itemsize, window.window_ns, window.ttl_s, window.bars)
            await self._windows_script(keys=[window.key for window in chunk], args=args, client=pipe)
            calls += 1
        if not count and not calls:
            return 0
        results = await pipe.execute()
        return int(sum(results[:count]))

    async def publish(self, channel: str, message: str) -> int:
        """Announce on pub/sub; returns how many subscribers heard it."""
        return int(await self._client.publish(channel, message))


async def recent_bars(
    client: aioredis.Redis, interval: str, symbol: str, since_ns: int | None = None
) -> list[WindowBar]:
    """A symbol's bars in its Redis window (``tm:window:INTERVAL:SYMBOL``), oldest first; only those starting at or
    after ``since_ns`` when given. The window is the last ``TIDEMARK_BAR_WINDOW_S`` of bar time before the symbol's
    newest bar (not of wall-clock time): a symbol that stopped printing keeps its last hour until the key expires,
    twice the window after its last write. Empty when the symbol has no window (an unknown symbol, daily bars).
    Members are binary: ``client`` must not decode responses (redis-py's default)."""
    name = window_key(interval, symbol)
    members = await (client.zrange(name, 0, -1) if since_ns is None else client.zrangebyscore(name, since_ns, "+inf"))
    return parse_window_members(cast(list[bytes], members))
