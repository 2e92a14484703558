"""The bars behind an analytics event, from the ``bars`` projection, with where each bar came from in the log.

``tidemark explain`` shows, for an event derived from bars, the bars it was computed from: each with its BarClosed
event id and the partition and offset of md.bars.INTERVAL it was read at (``projections.bars`` stores them).

Every analytics processor reads md.bars.1m only (``streams.runner.INPUT_TOPIC``): their "1d", "15m" and "1h"
timeframes are built from one-minute bars, so the bars behind any analytics event are rows of interval ``1m``.
What ``bars_behind`` returns is the last N bars of each symbol that ended by ``as_of``. That is exactly a
processor's window when every symbol printed on every minute of it; in general the processors' windows are
defined on a market-time grid (see ``streams.correlation.rolling``: a grid time is a minute on which *any* symbol
of the processor's set printed, and a symbol without a bar there carries its previous close forward):

- ``CorrelationSnapshotTaken`` 1m and ``SymbolStatsComputed``: ``window_bars + 1`` closes on the last
  ``window_bars + 1`` grid minutes of the configured universe (``TIDEMARK_CORRELATION_UNIVERSE``, not only the
  event's ``symbols``) that start before the snapshot boundary; ``as_of_ns`` is the end of the last grid minute.
  A symbol with no bar on the first grid minute starts from its last earlier bar (the carried close).
- ``CorrelationSnapshotTaken`` 1d: ``window_bars + 1`` session days; a day's close is the symbol's last
  regular-session 1m bar of that session starting before the boundary; ``as_of_ns`` is the boundary itself.
- ``PatternSignalDetected``: ``window_bars + 1`` rows of its (timeframe, market) grid ending at the last complete
  row before ``as_of_ns`` (the scan boundary); rows are regular-session minutes, session-aligned 15-minute or
  one-hour buckets (a bucket's close is its last 1m bar), or sessions.
- ``CurrencyStrengthComputed``: ``window_bars + 1`` grid minutes of the configured FX pairs' regular-session bars.
- ``SectorRotationComputed``: ``window + momentum + 1`` grid minutes of the benchmark and the sector ETFs (the
  event's ``window_bars`` is ``window`` alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

# One index range scan per symbol on the primary key (symbol, interval, start_ts), newest first. ``start_ts < as_of``
# bounds the scan (a projected bar ends after it starts: schemas.barchecks), so an old as_of does not read every
# newer bar first; ``end_ts <= as_of`` then drops a bar still open at as_of. Timestamps convert as the projection
# writes them (nanoseconds truncated to microseconds).
_BARS_BEHIND = """
WITH as_of AS (SELECT timestamptz 'epoch' + ($3::bigint / 1000) * interval '1 microsecond' AS ts)
SELECT s.symbol, b.interval, b.start_ts, b.end_ts, b.close, b.event_id, b.source_partition, b.source_offset
FROM (SELECT DISTINCT unnest($1::text[]) AS symbol) s
CROSS JOIN as_of
CROSS JOIN LATERAL (
    SELECT bars.interval, bars.start_ts, bars.end_ts, bars.close, bars.event_id, bars.source_partition,
           bars.source_offset
    FROM bars
    WHERE bars.symbol = s.symbol AND bars.interval = $2 AND bars.start_ts < as_of.ts AND bars.end_ts <= as_of.ts
    ORDER BY bars.start_ts DESC
    LIMIT $4
) b
ORDER BY s.symbol COLLATE "C", b.start_ts
"""


async def bars_behind(
    conn: asyncpg.Connection, symbols: Sequence[str], interval: str, as_of_ns: int, bars_per_symbol: int
) -> list[dict[str, Any]]:
    """Per symbol, its last ``bars_per_symbol`` bars of ``interval`` that ended at or before ``as_of_ns`` (UTC ns).

    Rows are ordered by symbol (code point order, as Python sorts str) then start, each with ``symbol``,
    ``interval``, ``start_ts``, ``end_ts`` (datetimes, UTC), ``close``, ``event_id`` (str; None for a bar projected
    before ids were stored), ``source_partition`` (None likewise) and ``source_offset``. A symbol with fewer bars
    gives what it has; one given twice is returned once. One query: a LATERAL join over the symbols, each an index
    range scan of the primary key.

    For a window of ``window_bars`` returns ask for ``window_bars + 1`` bars (closes), interval ``1m``; see the module
    doc for where a processor's window is not simply the last bars of each symbol.
    """
    if bars_per_symbol < 0:
        raise ValueError("bars_per_symbol must not be negative")
    rows = await conn.fetch(_BARS_BEHIND, list(symbols), interval, as_of_ns, bars_per_symbol)
    return [{**dict(r), "event_id": None if r["event_id"] is None else str(r["event_id"])} for r in rows]
