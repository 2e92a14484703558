"""Semantic checks on decoded bars: what is well-formed Avro but cannot be a market bar.

The decoder (``schemas.fastbars``) proves that a message is a BarClosed; these rules decide whether it is a bar a
processor may use. Without them a NaN close poisons every rolling statistic it enters, a symbol with a NUL byte
fails the PostgreSQL COPY of a whole batch, and a bar dated 2200 holds a snapshot clock for ever. The checks are
numpy masks over the decoded columns, so a clean batch costs a few vector comparisons; a reason is formatted only
for the rows that fail.

Time is judged against the message itself, never the wall clock, because processors must reach the same verdict
when the log is replayed years later. A bar "from the future" ends more than ``MAX_AHEAD_NS`` after its own
``ts_ingest``: a closed bar cannot end after it was published (the slack covers clock skew and the daily bar of a
session still under way), and ``LATEST_NS`` bounds what a wrong ``ts_ingest`` could excuse.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from core.units import NS_PER_DAY, NS_PER_SECOND
from schemas.bars import BAR_INTERVALS, BarBatch

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

MAX_AHEAD_NS = 7 * NS_PER_DAY
LATEST_NS = 4_102_444_800 * NS_PER_SECOND  # 2100-01-01T00:00:00Z
# Longer than any venue's ticker (an OCC option symbol is 21 characters), short enough for a B-tree key.
MAX_SYMBOL_BYTES = 64
# How much of an offending text a reason quotes: a reason is for a person, the original bytes are in the letter.
_QUOTE = 40
# ts_ingest clipped to this before subtracting it, so that end_ns - ts_ingest cannot wrap around in int64.
_CLIP = 2**62


def quoted(text: str) -> str:
    """``text`` for a reason: repr, cut to ``_QUOTE`` characters."""
    return repr(text) if len(text) <= _QUOTE else f"{text[:_QUOTE]!r}... ({len(text)} characters)"


def symbol_problem(symbol: str) -> str | None:
    """Why ``symbol`` cannot key a bar, or None: empty, too long, or with characters (NUL, control, whitespace)
    that PostgreSQL text, Redis keys and the CLI cannot carry faithfully."""
    if not symbol:
        return "empty symbol"
    size = len(symbol) if symbol.isascii() else len(symbol.encode("utf-8"))
    if size > MAX_SYMBOL_BYTES:
        return f"symbol {quoted(symbol)} is {size} bytes long (at most {MAX_SYMBOL_BYTES})"
    # isprintable() is False for every control, format and separator character except the ASCII space.
    if not symbol.isprintable() or " " in symbol:
        return f"symbol {quoted(symbol)} has control or whitespace characters"
    return None


def interval_problem(interval: str) -> str:
    """The reason for a bar whose interval is not one there is a topic for."""
    return f"unknown interval {quoted(interval)} (a bar is one of {', '.join(BAR_INTERVALS)})"


def _iso(ns: int) -> str:
    return str(np.datetime_as_string(np.datetime64(ns, "ns"), unit="s")) + "Z"


def _price(name: str) -> tuple[str, Callable[[BarBatch, I64], Mask], Callable[[BarBatch, I64, int], str]]:
    def broken(b: BarBatch, _: I64) -> Mask:
        values = getattr(b, name)
        return np.asarray(~((values > 0) & (values < np.inf)))

    def reason(b: BarBatch, _: I64, i: int) -> str:
        return f"{name} is {float(getattr(b, name)[i])!r}: a price must be positive and finite"

    return name, broken, reason


def _outside(name: str) -> tuple[str, Callable[[BarBatch, I64], Mask], Callable[[BarBatch, I64, int], str]]:
    def broken(b: BarBatch, _: I64) -> Mask:
        values = getattr(b, name)
        return np.asarray((values < b.low) | (values > b.high))

    def reason(b: BarBatch, _: I64, i: int) -> str:
        value = float(getattr(b, name)[i])
        return f"{name} {value!r} outside [low {float(b.low[i])!r}, high {float(b.high[i])!r}]"

    return name, broken, reason


# (name, which rows break the rule, the reason for row i). Order matters: a row gets the first rule it breaks, and
# the later masks may assume the earlier rules hold (the ahead-of-publication arithmetic needs sane times).
RULES: tuple[tuple[str, Callable[[BarBatch, I64], Mask], Callable[[BarBatch, I64, int], str]], ...] = (
    _price("open"),
    _price("high"),
    _price("low"),
    _price("close"),
    (
        "high<low",
        lambda b, _: np.asarray(b.high < b.low),
        lambda b, _, i: f"high {float(b.high[i])!r} below low {float(b.low[i])!r}",
    ),
    _outside("open"),
    _outside("close"),
    (
        "volume",
        lambda b, _: np.asarray(~((b.volume >= 0) & (b.volume < np.inf))),
        lambda b, _, i: f"volume is {float(b.volume[i])!r}: it must be finite and not negative",
    ),
    (
        "vwap",
        lambda b, _: np.asarray(~np.isnan(b.vwap) & ~((b.vwap > 0) & (b.vwap < np.inf))),
        lambda b, _, i: f"vwap is {float(b.vwap[i])!r}: it must be positive and finite (or null)",
    ),
    (
        "trade_count",
        lambda b, _: np.asarray(b.trade_count < -1),  # -1 stands for null
        lambda b, _, i: f"trade_count {int(b.trade_count[i])} is negative",
    ),
    (
        "before 1970",
        lambda b, _: np.asarray(b.start_ns < 0),
        lambda b, _, i: f"starts {_iso(int(b.start_ns[i]))}, before 1970",
    ),
    (
        "end<=start",
        lambda b, _: np.asarray(b.end_ns <= b.start_ns),
        lambda b, _, i: f"ends {_iso(int(b.end_ns[i]))}, not after its start {_iso(int(b.start_ns[i]))}",
    ),
    (
        "after 2100",
        lambda b, _: np.asarray(b.end_ns > LATEST_NS),
        lambda b, _, i: f"ends {_iso(int(b.end_ns[i]))}, after {_iso(LATEST_NS)}",
    ),
    (
        "future",
        lambda b, ts: np.asarray(b.end_ns - np.clip(ts, -_CLIP, _CLIP) > MAX_AHEAD_NS),
        lambda b, ts, i: (
            f"ends {_iso(int(b.end_ns[i]))}, {(int(b.end_ns[i]) - int(ts[i])) / NS_PER_DAY:,.1f} days after it was"
            f" published ({_iso(int(ts[i]))}): a bar from the future"
        ),
    ),
)


def plausible(bars: BarBatch, ts_ingest: I64) -> Mask:
    """True where a bar breaks no rule: the conjunction of ``RULES`` in a third of their comparisons (a low that is
    positive and at most open and close, which are at most a finite high, bounds all four prices), for the batch
    that is clean, as nearly every batch is."""
    low, high = bars.low, bars.high
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (low > 0) & (low <= bars.open) & (low <= bars.close) & (bars.open <= high) & (bars.close <= high)
        ok &= (high < np.inf) & (bars.volume >= 0) & (bars.volume < np.inf) & (bars.trade_count >= -1)
        ok &= np.isnan(bars.vwap) | ((bars.vwap > 0) & (bars.vwap < np.inf))
        ok &= (bars.start_ns >= 0) & (bars.end_ns > bars.start_ns) & (bars.end_ns <= LATEST_NS)
        ok &= bars.end_ns - np.clip(ts_ingest, -_CLIP, _CLIP) <= MAX_AHEAD_NS
    return np.asarray(ok)


def bar_problems(bars: BarBatch, ts_ingest: I64) -> list[tuple[int, str]]:
    """(row, reason) for every bar of ``bars`` that breaks a rule, with the first rule it breaks, in row order.

    ``ts_ingest`` is each bar's message ts_ingest (when it was published), which the future check is relative to.
    """
    failing = np.flatnonzero(~plausible(bars, ts_ingest))
    if len(failing) == 0:
        return []
    suspects, published = bars.take(failing), ts_ingest[failing]
    with np.errstate(invalid="ignore", over="ignore"):
        masks = np.stack([broken(suspects, published) for _, broken, _ in RULES])
    first = np.argmax(masks, axis=0)
    return [(int(failing[j]), RULES[int(k)][2](suspects, published, j)) for j, k in enumerate(first.tolist())]
