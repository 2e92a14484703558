"""Bars projection: md.bars.* into the ``bars`` table (bulk COPY) and the latest bar per symbol into Redis."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import numpy as np

from core.consumed import Consumed
from projections.offsets import add_counter, apply_exactly_once
from projections.redis_store import LatestValue, RedisProjection, key, position
from schemas.bars import ASSET_CLASSES, BAR_KINDS, BarBatch

CONSUMER = "projection.bars"
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
)
_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS bars_stage (
    symbol text, interval text, start_ns bigint, end_ns bigint, asset_class text,
    open double precision, high double precision, low double precision, close double precision,
    volume double precision, vwap double precision, trade_count bigint, regular_session boolean, kind text,
    source_offset bigint
) ON COMMIT DELETE ROWS
"""
_MERGE_STAGE = """
WITH inserted AS (
    INSERT INTO bars (symbol, interval, start_ts, end_ts, asset_class, open, high, low, close, volume, vwap,
                      trade_count, regular_session, kind, source_offset)
    SELECT DISTINCT ON (symbol, interval, start_ns)
           symbol, interval,
           timestamptz 'epoch' + (start_ns / 1000) * interval '1 microsecond',
           timestamptz 'epoch' + (end_ns / 1000) * interval '1 microsecond',
           asset_class, open, high, low, close, volume, vwap, trade_count, regular_session, kind, source_offset
    FROM bars_stage
    ORDER BY symbol, interval, start_ns, source_offset
    ON CONFLICT (symbol, interval, start_ts) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"""


def _stage_records(bars: BarBatch, offsets: np.ndarray) -> list[tuple[object, ...]]:
    vwap = np.where(np.isnan(bars.vwap), None, bars.vwap).tolist()
    trade_count = np.where(bars.trade_count < 0, None, bars.trade_count).tolist()
    asset_class = np.asarray(ASSET_CLASSES, dtype=object)[bars.asset_class].tolist()
    return list(
        zip(
            bars.symbol.tolist(),
            [bars.interval] * len(bars),
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
            offsets.tolist(),
            strict=True,
        )
    )


class BarsProjection:
    """Applies decoded bar batches exactly once; duplicates of a (symbol, interval, start) are counted, not stored."""

    def __init__(self, pool: asyncpg.Pool, redis: RedisProjection) -> None:
        self._pool = pool
        self._redis = redis

    async def apply(self, records: Sequence[Consumed], bars: BarBatch) -> tuple[int, int]:
        """``bars`` row i was decoded from ``records[i]``. Returns (rows inserted, duplicates ignored)."""
        row_of = {id(r): i for i, r in enumerate(records)}
        inserted = 0

        async def write(conn: asyncpg.Connection, fresh: Sequence[Consumed]) -> None:
            nonlocal inserted
            rows = np.fromiter((row_of[id(c)] for c in fresh), dtype=np.intp, count=len(fresh))
            chosen = bars.take(rows)
            offsets = np.fromiter((c.offset for c in fresh), dtype=np.int64, count=len(fresh))
            await conn.execute(_CREATE_STAGE)
            await conn.copy_records_to_table(
                "bars_stage", records=_stage_records(chosen, offsets), columns=_STAGE_COLUMNS
            )
            inserted = int(await conn.fetchval(_MERGE_STAGE))
            await add_counter(conn, CONSUMER, "duplicates_ignored", len(fresh) - inserted)

        fresh = await apply_exactly_once(self._pool, CONSUMER, records, write)
        if records:
            # The whole batch, also what PostgreSQL had applied: the retry of a batch that met a Redis outage after
            # its PostgreSQL commit must write what that attempt could not (an older position is a no-op).
            await self._redis.set_latest(_latest_per_symbol(records, bars))
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
