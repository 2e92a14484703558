"""Polygon WebSocket frames into our events, and the ledger that publishes each bar once.

A frame is a JSON array of events. Aggregates become ``BarBatch`` columns (one batch per interval; epoch
milliseconds become UTC nanoseconds; ``regular_session`` from the market's session calendar), trades become
``TradePrinted`` records, and every event that fails validation comes back with its JSON and the reason, for
the dead-letter topic. Validation is column-wise: a frame of well-formed events costs one ``json.loads`` and a
list comprehension per field; only a frame holding a bad value takes the per-event path, for that field.

``BarLedger`` remembers, per symbol, the last published bar and which of the ``window`` bars before it were
published (a sliding bitmap, like an anti-replay window), so a repeated bar is a duplicate, an older bar that
was never published fills a hole, and one older than the window is too late.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numba
import numpy as np
import numpy.typing as npt

from connectors.polygon.symbols import AGG_EVENTS, TRADE_EVENTS, Instrument, Interval, WsMarket
from core.events import deterministic_event_id, now_ns
from core.sessions import market_of, regular_session_mask
from core.units import NS_PER_MS
from schemas.bars import ASSET_CLASSES, BarBatch

SOURCE = "polygon"
STEP_NS: dict[Interval, int] = {"1s": 1_000_000_000, "1m": 60_000_000_000}
_NUMBER = (int, float)
_PRICE_FIELDS = ("o", "h", "l", "c", "v")

Int64 = npt.NDArray[np.int64]
Float64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Universe:
    """The instruments of one WebSocket market, each with a slot (its row in every per-symbol array)."""

    market: WsMarket
    instruments: tuple[Instrument, ...]
    symbols: npt.NDArray[np.object_]
    asset_class: int
    slot_of: dict[str, int]  # WebSocket name -> slot

    @classmethod
    def of(cls, market: WsMarket, instruments: Sequence[Instrument]) -> Universe:
        mine = tuple(i for i in instruments if i.market == market)
        classes = {i.asset_class for i in mine}
        if len(classes) > 1:
            raise ValueError(f"instruments of {market} span asset classes {sorted(classes)}")
        asset_class = ASSET_CLASSES.index(classes.pop()) if classes else 0
        symbols = np.array([i.symbol for i in mine], dtype=object)
        return cls(market, mine, symbols, asset_class, {i.ws_name: k for k, i in enumerate(mine)})

    def __len__(self) -> int:
        return len(self.instruments)


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event (or a whole frame that was not a JSON array) that cannot be published, and why."""

    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Bars:
    batch: BarBatch
    slots: Int64  # each bar's symbol slot in the Universe


@dataclass(slots=True)
class Normalised:
    bars: dict[Interval, Bars] = field(default_factory=dict)
    trades: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)


def _raw(event: object) -> bytes:
    return json.dumps(event, separators=(",", ":"), default=str).encode()


def normalise_frame(frame: str | bytes, universe: Universe) -> Normalised:
    """One WebSocket frame of ``universe.market`` as bars per interval, trades, rejects and status messages."""
    out = Normalised()
    try:
        events = json.loads(frame)
    except ValueError as exc:
        out.rejected.append(Rejected(frame.encode() if isinstance(frame, str) else frame, f"frame is not JSON: {exc}"))
        return out
    if not isinstance(events, list):
        out.rejected.append(Rejected(_raw(events), "frame is not a JSON array of events"))
        return out
    agg_interval = {ev: interval for interval, ev in AGG_EVENTS[universe.market].items()}
    trade_event = TRADE_EVENTS.get(universe.market)
    kinds = [e.get("ev") if type(e) is dict else None for e in events]
    groups: dict[Any, list[Any]] = {}
    try:
        one_kind = len(set(kinds)) == 1
    except TypeError:  # an ev that is a list or an object: not hashable, filed below under None
        one_kind = False
    if one_kind:
        groups[kinds[0]] = events
    else:
        for kind, event in zip(kinds, events, strict=True):
            groups.setdefault(kind if isinstance(kind, str) else None, []).append(event)
    for kind, group in groups.items():
        if kind in agg_interval:
            _aggregates(group, universe, agg_interval[kind], out)
        elif kind is not None and kind == trade_event:
            _trades(group, universe, out)
        elif kind == "status":
            out.statuses.extend(f"{e.get('status')}: {e.get('message')}" for e in group)
        else:
            reason = (
                "event is not a JSON object with an ev field" if kind is None else f"unexpected event type {kind!r}"
            )
            out.rejected.extend(Rejected(_raw(e), reason) for e in group)
    return out


def _numbers(values: list[Any], name: str, dtype: type[np.generic], bad: list[str | None]) -> npt.NDArray[Any]:
    """A column as numpy; entries that are missing or not JSON numbers (of the integer kind for int64 columns)
    get a reason in ``bad`` and a placeholder value."""
    allowed = (int,) if dtype is np.int64 else _NUMBER
    if set(map(type, values)) <= set(allowed):
        try:
            return np.array(values, dtype=dtype)
        except OverflowError:
            pass
    placeholder = 0 if dtype is np.int64 else np.nan
    clean = []
    for i, value in enumerate(values):
        if type(value) in allowed and (dtype is not np.int64 or -(2**62) < value < 2**62):
            clean.append(value)
        else:
            clean.append(placeholder)
            if bad[i] is None:
                bad[i] = f"field {name} is missing or not {'an integer' if dtype is np.int64 else 'a number'}"
    return np.array(clean, dtype=dtype)


def _flag(bad: list[str | None], mask: Bool, reason: str) -> None:
    for i in np.flatnonzero(mask).tolist():
        if bad[i] is None:
            bad[i] = reason


def _aggregates(events: list[Any], universe: Universe, interval: Interval, out: Normalised) -> None:
    n = len(events)
    bad: list[str | None] = [None] * n
    name_field = "pair" if universe.market == "forex" else "sym"
    get_slot = universe.slot_of.get
    names = [e.get(name_field) for e in events]
    slots = np.array([get_slot(x, -1) if type(x) is str else -1 for x in names], dtype=np.int64)
    _flag(bad, slots < 0, f"{name_field} missing or not a subscribed instrument")
    o, h, lo, c, v = (_numbers([e.get(k) for e in events], k, np.float64, bad) for k in _PRICE_FIELDS)
    vw_values = [e.get("vw") for e in events]
    vwap = (
        np.array(vw_values, dtype=np.float64)
        if set(map(type, vw_values)) <= {int, float, type(None)}
        else _numbers([x if x is not None else np.nan for x in vw_values], "vw", np.float64, bad)
    )
    start_ms = _numbers([e.get("s") for e in events], "s", np.int64, bad)
    end_ms = _numbers([e.get("e") for e in events], "e", np.int64, bad)
    counts = [e.get("n") for e in events]
    trade_count = (
        np.array([x if type(x) is int else -1 for x in counts], dtype=np.int64)
        if any(x is not None for x in counts)
        else np.full(n, -1, dtype=np.int64)
    )
    step_ms = STEP_NS[interval] // NS_PER_MS
    with np.errstate(invalid="ignore"):
        _flag(bad, ~np.isfinite(np.column_stack([o, h, lo, c, v])).all(axis=1), "price or volume is not finite")
        _flag(bad, (lo <= 0) | (lo > np.minimum(o, c)) | (h < np.maximum(o, c)), "prices violate 0 < l <= o,c <= h")
        _flag(bad, v < 0, "negative volume")
        _flag(bad, np.isinf(vwap), "vwap is not finite")
    _flag(bad, (start_ms % step_ms != 0) | (end_ms - start_ms != step_ms), f"window s..e is not one aligned {interval}")
    rejected = [i for i, reason in enumerate(bad) if reason is not None]
    out.rejected.extend(Rejected(_raw(events[i]), f"{interval} aggregate: {bad[i]}") for i in rejected)
    keep = np.ones(n, dtype=np.bool_)
    keep[rejected] = False
    if not keep.any():
        return
    start_ns = start_ms[keep] * NS_PER_MS
    kept_slots = slots[keep]
    batch = BarBatch(
        symbol=universe.symbols[kept_slots],
        asset_class=np.full(len(kept_slots), universe.asset_class, dtype=np.int8),
        interval=interval,
        start_ns=start_ns,
        end_ns=end_ms[keep] * NS_PER_MS,
        open=o[keep],
        high=h[keep],
        low=lo[keep],
        close=c[keep],
        volume=v[keep],
        vwap=vwap[keep],
        trade_count=trade_count[keep],
        regular_session=regular_session_mask(market_of(ASSET_CLASSES[universe.asset_class]), start_ns),
    )
    out.bars[interval] = Bars(batch, kept_slots)


def _trades(events: list[Any], universe: Universe, out: Normalised) -> None:
    """Trades stay records: the generic codec encodes them, and they are not the bar hot path."""
    asset_class = ASSET_CLASSES[universe.asset_class]
    for event in events:
        reason = _trade_problem(event, universe)
        if reason is not None:
            out.rejected.append(Rejected(_raw(event), f"trade: {reason}"))
            continue
        symbol = universe.instruments[universe.slot_of[event["sym"]]].symbol
        exchange = str(event.get("x", ""))
        trade_id = str(event.get("i", event.get("q", "")))
        ts_event = event["t"] * NS_PER_MS
        conditions = event.get("c") or []
        sequence = event.get("q")
        tape = event.get("z")
        out.trades.append(
            {
                "event_id": deterministic_event_id(SOURCE, "trade", symbol, exchange, trade_id, ts_event),
                "ts_event": ts_event,
                "ts_ingest": now_ns(),
                "source": SOURCE,
                "causation_id": "",
                "symbol": symbol,
                "asset_class": asset_class,
                "price": float(event["p"]),
                "size": float(event["s"]),
                "exchange": exchange,
                "trade_id": trade_id,
                "conditions": [int(x) for x in conditions],
                "tape": tape if type(tape) is int else None,
                "sequence_number": sequence if type(sequence) is int else None,
                "ts_participant": None,
            }
        )


def _is_number(value: object) -> TypeGuard[float]:
    return type(value) in _NUMBER


def _trade_problem(event: dict[str, Any], universe: Universe) -> str | None:
    if type(event.get("sym")) is not str or event["sym"] not in universe.slot_of:
        return "sym missing or not a subscribed instrument"
    price, size, t = event.get("p"), event.get("s"), event.get("t")
    if not _is_number(price) or not math.isfinite(price) or price <= 0:
        return "price p is missing, not a number or not positive"
    if not _is_number(size) or not math.isfinite(size) or size < 0:
        return "size s is missing, not a number or negative"
    if not isinstance(t, int) or isinstance(t, bool) or not 0 < t < 2**62 // NS_PER_MS:
        return "timestamp t is missing or not epoch milliseconds"
    conditions = event.get("c")
    if conditions is not None and (type(conditions) is not list or any(type(x) is not int for x in conditions)):
        return "conditions c is not a list of integers"
    return None


# The ledger ------------------------------------------------------------------------------------------------------

NEW, FILL, DUPLICATE, TOO_OLD = 0, 1, 2, 3
_NONE = np.iinfo(np.int64).min
WINDOW = 64


@numba.njit(cache=True)
def _admit(slots: Int64, steps: Int64, last: Int64, seen: npt.NDArray[np.uint64], window: int) -> npt.NDArray[np.int8]:
    verdicts = np.empty(len(slots), dtype=np.int8)
    one = np.uint64(1)
    for i in range(len(slots)):
        k = slots[i]
        step = steps[i]
        previous = last[k]
        if previous == _NONE or step > previous:
            shift = step - previous if previous != _NONE else 64
            seen[k] = np.uint64(0) if shift >= 64 else seen[k] << np.uint64(shift)
            seen[k] |= one
            last[k] = step
            verdicts[i] = NEW
            continue
        back = previous - step
        if back >= window:
            verdicts[i] = TOO_OLD
        elif (seen[k] >> np.uint64(back)) & one:
            verdicts[i] = DUPLICATE
        else:
            seen[k] |= one << np.uint64(back)
            verdicts[i] = FILL
    return verdicts


class BarLedger:
    """Which bars of one interval have been published, per symbol slot (see the module docstring)."""

    def __init__(self, n_slots: int, interval: Interval, window: int = WINDOW) -> None:
        if not 1 <= window <= 64:
            raise ValueError("the window is a 64-bit bitmap: 1..64 bars")
        self.step_ns = STEP_NS[interval]
        self.window = window
        self._last = np.full(n_slots, _NONE, dtype=np.int64)
        self._seen = np.zeros(n_slots, dtype=np.uint64)

    def admit(self, slots: Int64, start_ns: Int64) -> npt.NDArray[np.int8]:
        """Record the bars (in the order given) and say for each: NEW, FILL (both to publish), DUPLICATE or TOO_OLD.

        Bars must be recorded only once they are handed to the producer, in the order they are produced.
        """
        steps = np.floor_divide(start_ns, self.step_ns)
        return np.asarray(_admit(slots.astype(np.int64), steps, self._last, self._seen, self.window))

    def last_start_ns(self, slots: Int64) -> Int64:
        """The newest published start per slot; ``NO_BAR`` where none is known."""
        last = self._last[slots]
        return np.where(last == _NONE, NO_BAR, last * self.step_ns)


NO_BAR = _NONE


def admit_in_order(ledger: BarLedger, bars: Bars) -> tuple[Bars, npt.NDArray[np.int8]]:
    """The bars sorted by start (so one frame never publishes a symbol's bars backwards), the verdicts, and the
    publishable subset."""
    order = np.argsort(bars.batch.start_ns, kind="stable")
    batch, slots = bars.batch.take(order), bars.slots[order]
    verdicts = ledger.admit(slots, batch.start_ns)
    publish = verdicts <= FILL
    return Bars(batch.take(publish), slots[publish]), verdicts
