"""Columnar batches of bars: the hot path moves bars as numpy columns, never as per-bar dicts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

BAR_SCHEMA = "tidemark.marketdata.BarClosed"
ASSET_CLASSES = ("UNKNOWN", "EQUITY", "FX", "FUTURE")
# BarClosed.kind: a CLOSE_ONLY bar observed only its close (open, high and low repeat it, volume is 0).
BAR_KINDS = ("OHLCV", "CLOSE_ONLY")
CLOSE_ONLY = np.int8(BAR_KINDS.index("CLOSE_ONLY"))
# The bar lengths there are topics for (md.bars.1s, md.bars.1m, md.bars.1d): any other interval is not a timeframe.
BAR_INTERVALS = ("1s", "1m", "1d")

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
# BarBatch.event_id: each bar's event id as canonical lower-case UUID text, 36 ASCII bytes, fixed width (no Python
# object per bar); b"" (all zero bytes) where the batch was built without ids.
EVENT_ID_DTYPE = np.dtype("S36")


def no_event_ids(n: int) -> npt.NDArray[np.bytes_]:
    """The ``event_id`` column of n bars whose ids are not known (b"" each)."""
    return np.zeros(n, EVENT_ID_DTYPE)


@dataclass(frozen=True, slots=True)
class BarBatch:
    """N bars as parallel columns. ``vwap`` is NaN and ``trade_count`` is -1 where the venue gave none.

    ``asset_class`` and ``kind`` hold indices into ``ASSET_CLASSES`` and ``BAR_KINDS`` so that encoding needs no
    string lookups. A batch built without ``kind`` is all OHLCV: only sources of close-only bars need to say so.

    ``event_id`` (``EVENT_ID_DTYPE``) is each bar's BarClosed event id where the batch came from the log
    (``schemas.fastbars.decode_bars`` fills it); a batch built without it has b"" for every bar (ids unknown:
    publishers derive them when they encode, see ``connectors.publisher.BarIds``).
    """

    symbol: npt.NDArray[np.object_]
    asset_class: npt.NDArray[np.int8]
    interval: str
    start_ns: Int64
    end_ns: Int64
    open: Float64
    high: Float64
    low: Float64
    close: Float64
    volume: Float64
    vwap: Float64
    trade_count: Int64
    regular_session: npt.NDArray[np.bool_]
    kind: npt.NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, np.int8))
    event_id: npt.NDArray[np.bytes_] = field(default_factory=lambda: no_event_ids(0))

    def __post_init__(self) -> None:
        if len(self.kind) != len(self.symbol):
            if len(self.kind):
                raise ValueError(f"{len(self.kind)} kinds for {len(self.symbol)} bars")
            object.__setattr__(self, "kind", np.zeros(len(self.symbol), np.int8))
        ids = self.event_id
        if not isinstance(ids, np.ndarray) or ids.dtype != EVENT_ID_DTYPE:
            object.__setattr__(self, "event_id", ids := _id_column(ids))
        if len(ids) != len(self.symbol):
            if len(ids):
                raise ValueError(f"{len(ids)} event ids for {len(self.symbol)} bars")
            object.__setattr__(self, "event_id", no_event_ids(len(self.symbol)))

    def __len__(self) -> int:
        return len(self.symbol)

    @staticmethod
    def concat(batches: Sequence[BarBatch]) -> BarBatch:
        """Several batches of the first one's interval as one, column by column."""
        columns = {
            f.name: np.concatenate([getattr(b, f.name) for b in batches])
            for f in fields(BarBatch)
            if f.name != "interval"
        }
        return BarBatch(interval=batches[0].interval, **columns)

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice) -> BarBatch:
        """Rows selected by a mask, index array or slice, as a new batch."""
        return BarBatch(
            symbol=self.symbol[index],
            asset_class=self.asset_class[index],
            interval=self.interval,
            start_ns=self.start_ns[index],
            end_ns=self.end_ns[index],
            open=self.open[index],
            high=self.high[index],
            low=self.low[index],
            close=self.close[index],
            volume=self.volume[index],
            vwap=self.vwap[index],
            trade_count=self.trade_count[index],
            regular_session=self.regular_session[index],
            kind=self.kind[index],
            event_id=self.event_id[index],
        )


def _id_column(ids: object) -> npt.NDArray[np.bytes_]:
    """Ids in another form as an ``EVENT_ID_DTYPE`` column: n x 36 ASCII rows (``deterministic_event_ids_array``)
    as they are; str or bytes values (any spelling ``uuid.UUID`` reads) in canonical lower-case form, "" or b"" as
    unknown. Anything else is a ValueError (numpy alone would cut a longer value to 36 bytes without a word)."""
    if isinstance(ids, np.ndarray) and ids.dtype == np.uint8 and ids.ndim == 2 and ids.shape[1] == 36:
        return np.ascontiguousarray(ids).view(EVENT_ID_DTYPE).reshape(-1).copy()
    values = []
    for value in np.asarray(ids, dtype=object).reshape(-1).tolist():
        text = value.decode("ascii") if isinstance(value, bytes | np.bytes_) else value
        if not isinstance(text, str):
            raise ValueError(f"an event id must be UUID text, not {type(value).__name__}")
        try:
            values.append(str(uuid.UUID(text)).encode() if text else b"")
        except ValueError:
            raise ValueError(f"event id {text[:40]!r} is not a UUID") from None
    return np.array(values, dtype=EVENT_ID_DTYPE).reshape(-1)
