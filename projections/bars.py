"""Bars projection: md.bars.* into the ``bars`` table (bulk COPY), and into Redis the latest bar per symbol and a
sliding window of each symbol's recent intraday bars.

The window (``tm:window:INTERVAL:SYMBOL``, a sorted set scored by bar start; ``projections.redis_store.recent_bars``
reads it) is what the strategy runner and dashboards read recent bars from. It holds the bars starting less than
``TIDEMARK_BAR_WINDOW_S`` before the symbol's newest bar: with the default hour, the 60 one-minute bars (3600 one-second
bars) of the hour that ends when the newest bar closes. It is trimmed by bar time, not by the wall clock, so a replay
of history leaves the same window as the live run did; the key expires twice the window after its last write, so a
symbol that stops printing does not keep its window for ever. Re-applying bars (a retried batch, a replay, a
republished bar) never duplicates one: a window holds one member per bar start, the one written last in log order.

Only intraday intervals (``WINDOWED_INTERVALS``) have a window: an hour of daily bars is at most one bar, which the
latest-bar hash already holds, and longer daily histories are a PostgreSQL query (``projections.read.bars``).

Each row keeps where its bar came from: the BarClosed ``event_id`` and the ``source_partition`` and ``source_offset``
of the record it was read from (``tidemark explain`` shows them; ``projections.bar_window.bars_behind`` reads them).
Of several bars of one (symbol, interval, start) the first applied is kept with its id and position; the others are
counted as duplicates. Rows projected before the columns existed (migration 0015) have NULL there.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import asyncpg
import numpy as np

from core.consumed import Consumed
from core.units import NS_PER_SECOND
from projections.offsets import add_counter, apply_exactly_once
from projections.redis_store import (
    BarWindowUpdate,
    LatestValue,
    RedisProjection,
    key,
    pack_window_bars,
    position,
    window_key,
)
from schemas.bars import ASSET_CLASSES, BAR_KINDS, BarBatch

CONSUMER = "projection.bars"
# The intervals the sink keeps a Redis window of (see the module's docstring for why not daily bars).
WINDOWED_INTERVALS = ("1s", "1m")
_STAGE_COLUMNS = (
    "symbol",
    "interval",
    "start_ns",
    "end_ns",
    "asset_class",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "regular_session",
    "kind",
    "source_offset",
    "event_id",
    "source_partition",
)
_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS bars_stage (
    symbol text, interval text, start_ns bigint, end_ns bigint, asset_class text,
    open double precision, high double precision, low double precision, close double precision,
    volume double precision, vwap double precision, trade_count bigint, regular_session boolean, kind text,
    source_offset bigint, event_id uuid, source_partition int
) ON COMMIT DELETE ROWS
"""
_MERGE_STAGE = """
WITH inserted AS (
    INSERT INTO bars (symbol, interval, start_ts, end_ts, asset_class, open, high, low, close, volume, vwap,
                      trade_count, regular_session, kind, source_offset, event_id, source_partition)
    SELECT DISTINCT ON (symbol, interval, start_ns)
           symbol, interval,
           timestamptz 'epoch' + (start_ns / 1000) * interval '1 microsecond',
           timestamptz 'epoch' + (end_ns / 1000) * interval '1 microsecond',
           asset_class, open, high, low, close, volume, vwap, trade_count, regular_session, kind, source_offset,
           event_id, source_partition
    FROM bars_stage
    ORDER BY symbol, interval, start_ns, source_offset
    ON CONFLICT (symbol, interval, start_ts) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"""


def _stage_records(
    bars: BarBatch, offsets: np.ndarray | Sequence[int], partitions: Sequence[int] | None = None
) -> list[tuple[object, ...]]:
    """COPY rows of ``_STAGE_COLUMNS``: row i is ``bars`` row i, read at ``offsets[i]`` of ``partitions[i]`` (None:
    unknown). A bar without an event id (a batch not decoded from the log) stages NULL."""
    n = len(bars)
    vwap = np.where(np.isnan(bars.vwap), None, bars.vwap).tolist()
    trade_count = np.where(bars.trade_count < 0, None, bars.trade_count).tolist()
    asset_class = np.asarray(ASSET_CLASSES, dtype=object)[bars.asset_class].tolist()
    return list(
        zip(
            bars.symbol.tolist(),
            [bars.interval] * n,
            bars.start_ns.tolist(),
            bars.end_ns.tolist(),
            asset_class,
            bars.open.tolist(),
            bars.high.tolist(),
            bars.low.tolist(),
            bars.close.tolist(),
            bars.volume.tolist(),
            vwap,
            trade_count,
            bars.regular_session.tolist(),
            np.asarray(BAR_KINDS, dtype=object)[bars.kind].tolist(),
            offsets.tolist() if isinstance(offsets, np.ndarray) else offsets,
            _event_ids(bars),
            [None] * n if partitions is None else partitions,
            strict=True,
        )
    )


def _event_ids(bars: BarBatch) -> list[str | None]:
    """The ids as the str asyncpg encodes as binary uuid in C; None (NULL) for a bar without one."""
    ids = bars.event_id.tolist()
    if len(ids) and (bars.event_id == b"").any():
        return [event_id.decode() or None for event_id in ids]
    return list(map(bytes.decode, ids))


class BarsProjection:
    """Applies decoded bar batches exactly once; duplicates of a (symbol, interval, start) are counted, not stored."""

    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection, window_s: int) -> None:
        """``window_s``: the Redis window of recent bars (``TIDEMARK_BAR_WINDOW_S``)."""
        self._pool = pool
        self._redis = redis
        self._window_s = window_s

    async def apply(self, records: Sequence[Consumed], bars: BarBatch) -> tuple[int, int]:
        """``bars`` row i was decoded from ``records[i]``. Returns (rows inserted, duplicates ignored)."""
        row_of = {id(r): i for i, r in enumerate(records)}
        inserted = 0

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            nonlocal inserted
            rows = np.fromiter((row_of[id(c)] for c in fresh), dtype=np.intp, count=len(fresh))
            chosen = bars.take(rows)
            offsets = [c.offset for c in fresh]
            partitions = [c.partition for c in fresh]
            await conn.execute(_CREATE_STAGE)
            await conn.copy_records_to_table(
                "bars_stage", records=_stage_records(chosen, offsets, partitions), columns=_STAGE_COLUMNS
            )
            inserted = int(await conn.fetchval(_MERGE_STAGE))
            await add_counter(conn, CONSUMER, "duplicates_ignored", len(fresh) - inserted)

        fresh = await apply_exactly_once(self._pool, CONSUMER, records, write)
        if records:
            # The whole batch, also what PostgreSQL had applied: the retry of a batch that met a Redis outage after
            # its PostgreSQL commit must write what that attempt could not (an older position is a no-op).
            # Windows likewise: re-adding a bar the window holds replaces it with itself. One round trip for both.
            await self._redis.write(_latest_per_symbol(records, bars), _window_updates(bars, self._window_s))
        return inserted, len(fresh) - inserted


def _latest_per_symbol(records: Sequence[Consumed], bars: BarBatch) -> list[LatestValue]:
    """The newest bar of each symbol in the batch, as Redis values (one write per symbol, not per bar)."""
    order = np.lexsort((bars.start_ns, bars.symbol.astype(str)))
    symbols = bars.symbol[order]
    last_of_symbol = np.r_[symbols[1:] != symbols[:-1], True]
    values = []
    for i in order[last_of_symbol]:
        rec = records[i]
        values.append(
            LatestValue(
                key=key("bar", bars.interval, str(bars.symbol[i])),
                position=position(rec.partition, rec.offset),
                fields={
                    "start_ns": str(int(bars.start_ns[i])),
                    "open": repr(float(bars.open[i])),
                    "high": repr(float(bars.high[i])),
                    "low": repr(float(bars.low[i])),
                    "close": repr(float(bars.close[i])),
                    "volume": repr(float(bars.volume[i])),
                    "kind": BAR_KINDS[bars.kind[i]],
                },
            )
        )
    return values


def _window_updates(bars: BarBatch, window_s: int) -> list[BarWindowUpdate]:
    """Each symbol's bars of the batch for its window, packed, in one vectorised pass: one update per symbol.

    Of several bars of one start, only the last in log order goes (it would replace the others). Bars starting
    ``window_s`` or more before the symbol's newest bar of the batch are left out: the window's newest bar is at least
    that one, so they would be trimmed at once (a replay's batch sends an hour per symbol, not the whole batch)."""
    if bars.interval not in WINDOWED_INTERVALS or not len(bars):
        return []
    window_ns = window_s * NS_PER_SECOND
    symbols = bars.symbol.astype(str)
    # By symbol, then start, then latest in the log first (records arrive in log order within a partition).
    order = np.lexsort((-np.arange(len(bars)), bars.start_ns, symbols))
    symbols, starts = symbols[order], bars.start_ns[order]
    new_symbol = np.r_[True, symbols[1:] != symbols[:-1]]
    first = np.flatnonzero(new_symbol)
    sizes = np.diff(np.r_[first, len(order)])
    newest = np.repeat(np.maximum.reduceat(starts, first), sizes)
    kept = (new_symbol | np.r_[True, starts[1:] != starts[:-1]]) & (starts > newest - window_ns)
    rows = order[kept]
    packed = pack_window_bars(
        bars.start_ns[rows],
        bars.open[rows],
        bars.high[rows],
        bars.low[rows],
        bars.close[rows],
        bars.volume[rows],
        bars.kind[rows],
    )
    # Every symbol keeps its newest bar, so each one's rows are a non-empty run of ``packed``.
    bounds = np.r_[0, np.cumsum(np.add.reduceat(kept, first))].tolist()
    ttl_s = 2 * window_s
    return [
        BarWindowUpdate(
            key=window_key(bars.interval, str(symbols[at])),
            bars=packed[lo:hi].tobytes(),
            window_ns=window_ns,
            ttl_s=ttl_s,
        )
        for at, (lo, hi) in zip(first.tolist(), pairwise(bounds), strict=True)
    ]
