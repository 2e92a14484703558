"""Storage cost of the bars projection: bytes per symbol-year of minute bars in PostgreSQL, beside the same bars
as Avro messages on the topic (the baseline: what the log already stores), in one run.

N symbols x D sessions of 390 regular-hours minute bars go into a fresh, migrated database through the bars
projection's own write path (COPY into its staging table, then its merge), one session of all symbols per
transaction as a live or backfill stream delivers them. ``pg_total_relation_size`` (heap + TOAST + indexes) after
VACUUM ANALYZE, divided by the bars loaded, is extrapolated to 252 x 390 bars (a US equity year); FX (24h x 5 days,
about 374k bars/year) and CME futures (about 23h x 5 days, about 348k) scale by their bar counts.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import asyncpg
import numpy as np

from core.events import deterministic_event_ids_array, stream_hash
from core.settings import get_settings
from core.units import NS_PER_DAY, NS_PER_MINUTE
from projections.bars import _CREATE_STAGE, _MERGE_STAGE, _STAGE_COLUMNS, _stage_records
from projections.migrations import apply_migrations
from schemas.bars import BarBatch
from schemas.fastbars import encode_bars

EQUITY_YEAR = 252 * 390
FX_YEAR = 52 * 5 * 1440
FUTURES_YEAR = 252 * 23 * 60
FIRST_OPEN_NS = 1_704_205_800 * 10**9  # 2024-01-02 14:30 UTC, the NYSE open


def session(symbols: int, day: int, rng: np.random.Generator) -> BarBatch:
    """One 390-minute session of every symbol, time-major (each minute for all symbols), random-walk prices."""
    n = symbols * 390
    start = FIRST_OPEN_NS + day * NS_PER_DAY + np.repeat(np.arange(390, dtype=np.int64) * NS_PER_MINUTE, symbols)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, (390, symbols)), axis=0)).ravel()
    spread = np.abs(rng.normal(0, 0.02, n))
    return BarBatch(
        symbol=np.tile(np.array([f"S{i:04d}" for i in range(symbols)], dtype=object), 390),
        asset_class=np.ones(n, dtype=np.int8),
        interval="1m",
        start_ns=start,
        end_ns=start + NS_PER_MINUTE,
        open=np.round(close * (1 + rng.normal(0, 2e-4, n)), 2),
        high=np.round(close + spread, 2),
        low=np.round(close - spread, 2),
        close=np.round(close, 2),
        volume=rng.integers(100, 50_000, n).astype(np.float64),
        vwap=np.round(close, 4),
        trade_count=rng.integers(1, 500, n).astype(np.int64),
        regular_session=np.ones(n, dtype=np.bool_),
    )


async def load(dsn: str, symbols: int, days: int) -> tuple[int, int, int, int, int]:
    """Loads the market; returns (bars, heap bytes, index bytes, total bytes, Avro bytes on the topic)."""
    rng = np.random.default_rng(5)
    conn = await asyncpg.connect(dsn)
    avro_bytes = bars = 0
    try:
        for day in range(days):
            batch = session(symbols, day, rng)
            streams = np.array([stream_hash("bench", s, "1m") for s in batch.symbol.tolist()], dtype=np.uint64)
            payloads = encode_bars(
                batch, source="polygon", ts_ingest=0, event_ids=deterministic_event_ids_array(streams, batch.start_ns)
            )
            avro_bytes += sum(map(len, payloads))
            offsets = np.arange(bars, bars + len(batch), dtype=np.int64)
            async with conn.transaction():
                await conn.execute(_CREATE_STAGE)
                await conn.copy_records_to_table(
                    "bars_stage", records=_stage_records(batch, offsets), columns=_STAGE_COLUMNS
                )
                bars += int(await conn.fetchval(_MERGE_STAGE))
        await conn.execute("VACUUM ANALYZE bars")
        sizes = await conn.fetchrow(
            "SELECT pg_relation_size('bars') AS heap, pg_indexes_size('bars') AS indexes,"
            " pg_total_relation_size('bars') AS total"
        )
        return bars, sizes["heap"], sizes["indexes"], sizes["total"], avro_bytes
    finally:
        await conn.close()


async def run(symbols: int, days: int) -> None:
    settings = get_settings()
    database = f"tidemark_bench_storage_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.postgres_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = settings.postgres_dsn.rsplit("/", 1)[0] + f"/{database}"
    try:
        await apply_migrations(dsn)
        check = await asyncpg.connect(dsn)
        timescale = await check.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        await check.close()
        bars, heap, indexes, total, avro = await load(dsn, symbols, days)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    per_bar = total / bars
    print(f"storage: {symbols} symbols x {days} sessions x 390 minutes = {bars:,} bars in PostgreSQL")
    print(f"  layout: {'TimescaleDB hypertable (uncompressed chunks)' if timescale else 'plain table, B-tree PK'}")
    print(f"  heap {heap / bars:,.1f} B/bar + indexes {indexes / bars:,.1f} B/bar = {per_bar:,.1f} B/bar")
    print(
        f"  Avro on the topic (baseline, before lz4): {avro / bars:,.1f} B/bar; PostgreSQL/Avro = {total / avro:.2f}x"
    )
    for market, year in (("US equity", EQUITY_YEAR), ("FX", FX_YEAR), ("CME futures", FUTURES_YEAR)):
        print(f"  per symbol-year, {market:<11} ({year:>7,} bars): {per_bar * year / 2**20:8.1f} MiB")


def main(symbols: int = 20, days: int = 20) -> None:
    asyncio.run(run(symbols, days))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--days", type=int, default=20)
    args = parser.parse_args()
    main(args.symbols, args.days)
