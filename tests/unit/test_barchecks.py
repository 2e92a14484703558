"""Semantic validation of decoded bars: each rule, through the bytes a consumer sees, as a table; and the good bars
beside a bad one survive it."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from core.consumed import Consumed
from core.deadletter import dead_letter_record
from core.units import NS_PER_DAY, NS_PER_MINUTE
from schemas.barchecks import LATEST_NS, MAX_AHEAD_NS, MAX_SYMBOL_BYTES, RULES, bar_problems, plausible
from schemas.bars import BAR_SCHEMA, BarBatch
from schemas.codec import DecodeError, get_registry
from schemas.fastbars import decode_bars, to_records
from tests.factories import minute_bars
from tests.unit.test_fastbars import random_batch

REGISTRY = get_registry()
START = 1_741_010_400_000_000_000  # 2025-03-03T14:00:00Z
PUBLISHED = START + NS_PER_MINUTE + 5_000_000_000
NAN, INF = math.nan, math.inf


def record(**changes: Any) -> dict[str, Any]:
    """A valid minute bar (open 100, high 101, low 99, close 100) published 5 s after it closed, with ``changes``."""
    bars = minute_bars(["SPY"], [START])
    base = to_records(bars, source="test", ts_ingest=PUBLISHED, event_ids=[str(uuid.uuid4())])[0]
    return base | changes


def payload(**changes: Any) -> bytes:
    return REGISTRY.encode(BAR_SCHEMA, record(**changes))


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("NaN open", {"open": NAN}, "open is nan: a price must be positive and finite"),
    ("NaN high", {"high": NAN}, "high is nan"),
    ("NaN low", {"low": NAN}, "low is nan"),
    ("NaN close", {"close": NAN}, "close is nan"),
    ("inf high", {"high": INF}, "high is inf"),
    ("-inf low", {"low": -INF}, "low is -inf"),
    ("negative close", {"close": -3.5, "low": -4.0}, "low is -4.0"),
    ("negative open", {"open": -1.0}, "open is -1.0: a price must be positive"),
    ("zero close", {"close": 0.0}, "close is 0.0"),
    ("negative zero low", {"low": -0.0}, "low is -0.0"),
    ("high below low", {"high": 98.0, "open": 98.5, "close": 98.5}, "high 98.0 below low 99.0"),
    ("open above high", {"open": 102.0}, "open 102.0 outside [low 99.0, high 101.0]"),
    ("open below low", {"open": 98.0}, "open 98.0 outside [low 99.0, high 101.0]"),
    ("close above high", {"close": 101.5}, "close 101.5 outside"),
    ("close below low", {"close": 50.0}, "close 50.0 outside"),
    ("negative volume", {"volume": -1.0}, "volume is -1.0: it must be finite and not negative"),
    ("NaN volume", {"volume": NAN}, "volume is nan"),
    ("inf volume", {"volume": INF}, "volume is inf"),
    ("zero vwap", {"vwap": 0.0}, "vwap is 0.0: it must be positive and finite (or null)"),
    ("inf vwap", {"vwap": INF}, "vwap is inf"),
    ("negative trade count", {"trade_count": -7}, "trade_count -7 is negative"),
    ("before 1970", {"start_ns": -NS_PER_MINUTE, "end_ns": 0, "ts_event": 0}, "before 1970"),
    ("end before start", {"end_ns": START - 1, "ts_event": START - 1}, "not after its start"),
    ("zero length", {"end_ns": START, "ts_event": START}, "not after its start"),
    (
        "ten years ahead of publication",
        {"start_ns": START + 3652 * NS_PER_DAY, "end_ns": START + 3652 * NS_PER_DAY + NS_PER_MINUTE},
        "days after it was published",
    ),
    (
        "just past the allowance",
        {"start_ns": PUBLISHED + MAX_AHEAD_NS - NS_PER_MINUTE + 1, "end_ns": PUBLISHED + MAX_AHEAD_NS + 1},
        "a bar from the future",
    ),
    (
        "after 2100, though published later still",
        {"start_ns": LATEST_NS, "end_ns": LATEST_NS + NS_PER_MINUTE, "ts_ingest": LATEST_NS + NS_PER_DAY},
        "after 2100-01-01T00:00:00Z",
    ),
    ("published in 1970", {"ts_ingest": 0}, "days after it was published (1970-01-01T00:00:00Z)"),
    ("unknown interval", {"interval": "5m"}, "unknown interval '5m' (a bar is one of 1s, 1m, 1d)"),
    ("empty interval", {"interval": ""}, "unknown interval ''"),
    ("garbage interval", {"interval": "x" * 5000}, "... (5000 characters)"),
    ("empty symbol", {"symbol": ""}, "empty symbol"),
    ("huge symbol", {"symbol": "A" * 100_000}, f"is 100000 bytes long (at most {MAX_SYMBOL_BYTES})"),
    ("NUL in symbol", {"symbol": "SP\x00Y"}, "control or whitespace"),
    ("newline in symbol", {"symbol": "SPY\n"}, "control or whitespace"),
    ("space in symbol", {"symbol": "S PY"}, "control or whitespace"),
]


@pytest.mark.parametrize(("changes", "reason"), [row[1:] for row in INVALID], ids=[row[0] for row in INVALID])
def test_an_invalid_bar_fails_with_its_reason_and_spares_its_neighbours(changes: dict[str, Any], reason: str) -> None:
    later = record(start_ns=START + NS_PER_MINUTE, end_ns=START + 2 * NS_PER_MINUTE, ts_event=START + 2 * NS_PER_MINUTE)
    payloads = [payload(), payload(**changes), REGISTRY.encode(BAR_SCHEMA, later)]
    batch, rows, failures = decode_bars(payloads)
    assert rows == [0, 2]
    assert len(failures) == 1 and failures[0][0] == 1
    assert reason in failures[0][1], failures[0][1]
    assert batch.interval == "1m"
    np.testing.assert_array_equal(batch.start_ns, [START, START + NS_PER_MINUTE])
    alone, rows_alone, failures_alone = decode_bars([payloads[1]])
    assert len(alone) == 0 and rows_alone == [] and failures_alone == [(0, failures[0][1])]


VALID: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("close-only bar", {"kind": "CLOSE_ONLY", "open": 100.0, "high": 100.0, "low": 100.0, "volume": 0.0}),
    ("zero volume", {"volume": 0.0}),
    ("vwap outside the range (Polygon's vw can be)", {"vwap": 250.0}),
    ("null vwap and trade count", {"vwap": None, "trade_count": None}),
    ("zero trade count", {"trade_count": 0}),
    ("tiny prices", {"open": 1e-300, "high": 1e-300, "low": 1e-300, "close": 1e-300}),
    ("the epoch's first minute", {"start_ns": 0, "end_ns": NS_PER_MINUTE, "ts_event": NS_PER_MINUTE}),
    (
        "a daily bar of the session under way",
        {"interval": "1d", "start_ns": PUBLISHED - NS_PER_DAY // 2, "end_ns": PUBLISHED + NS_PER_DAY // 2},
    ),
    ("ending exactly at the allowance", {"end_ns": PUBLISHED + MAX_AHEAD_NS, "start_ns": PUBLISHED}),
    ("dotted ticker", {"symbol": "BRK.B"}),
    ("non-ASCII symbol", {"symbol": "中国平安"}),
    ("64-byte symbol", {"symbol": "X" * MAX_SYMBOL_BYTES}),
]


@pytest.mark.parametrize("changes", [row[1] for row in VALID], ids=[row[0] for row in VALID])
def test_unusual_but_valid_bars_decode(changes: dict[str, Any]) -> None:
    batch, rows, failures = decode_bars([payload(**changes)])
    assert failures == [] and rows == [0]
    assert batch.symbol[0] == record(**changes)["symbol"]


def test_a_bar_gets_the_first_rule_it_breaks() -> None:
    _, _, failures = decode_bars([payload(open=NAN, high=1.0, volume=-1.0, start_ns=-5)])
    assert failures == [(0, "open is nan: a price must be positive and finite")]


def test_a_stray_interval_fails_alone_even_when_it_comes_first() -> None:
    """The batch's interval is the one most bars have: a misrouted daily bar at the head of a minute batch no longer
    takes the minute bars with it."""
    minutes = [
        payload(start_ns=START + k * NS_PER_MINUTE, end_ns=START + (k + 1) * NS_PER_MINUTE, ts_event=0)
        for k in range(3)
    ]
    daily = payload(interval="1d", end_ns=START + NS_PER_DAY)
    batch, rows, failures = decode_bars([daily, *minutes, payload(interval="1h")])
    assert batch.interval == "1m" and rows == [1, 2, 3]
    assert failures == [
        (0, "interval '1d' differs from '1m'"),
        (4, "unknown interval '1h' (a bar is one of 1s, 1m, 1d)"),
    ]


def test_tombstones_and_empty_values_are_failures_not_errors() -> None:
    batch, rows, failures = decode_bars([None, payload(), b""])
    assert rows == [1] and len(batch) == 1
    assert failures == [(0, "no value (a tombstone)"), (2, "empty value")]
    with pytest.raises(DecodeError, match="tombstone"):
        REGISTRY.decode_as(BAR_SCHEMA, None)
    letter = dead_letter_record(Consumed("md.bars.1m", 3, 17, None, None), "no value (a tombstone)", "DecodeError", "p")
    assert letter["original_value"] == b""
    REGISTRY.encode("tidemark.ops.MessageDeadLettered", letter)


def messy_batch(seed: int, n: int) -> tuple[BarBatch, npt.NDArray[np.int64]]:
    """Bars of which about half are sound (prices ordered, times sane) and the rest broken in random ways, with
    NaN, infinities and signed zeros sprinkled over every float column; and their ts_ingest."""
    rng = np.random.default_rng(seed)
    batch = random_batch(seed, n)
    sound = rng.random(n) < 0.5
    quad = np.sort(np.abs(np.column_stack([batch.open, batch.high, batch.low, batch.close])) + 1, axis=1)
    batch.low[sound], batch.open[sound], batch.close[sound], batch.high[sound] = quad[sound].T
    batch.volume[sound] = np.abs(batch.volume[sound])
    batch.vwap[sound] = np.abs(batch.vwap[sound])
    batch.trade_count[sound] = np.abs(batch.trade_count[sound])
    batch.start_ns[sound] = START + rng.integers(0, 10**6, int(sound.sum())) * NS_PER_MINUTE
    batch.end_ns[sound] = batch.start_ns[sound] + NS_PER_MINUTE
    for column in (batch.open, batch.high, batch.low, batch.close, batch.volume, batch.vwap):
        spoiled = rng.random(n) < 0.03
        column[spoiled] = rng.choice([np.nan, np.inf, -np.inf, -0.0, 0.0, -1.0], int(spoiled.sum()))
    ts_ingest = rng.choice([0, START, 2 * START, 2**63 - 1, -(2**63)], n).astype(np.int64)
    ts_ingest[sound] = batch.end_ns[sound] + rng.integers(-MAX_AHEAD_NS, MAX_AHEAD_NS, int(sound.sum()))
    return batch, ts_ingest


@pytest.mark.parametrize("seed", range(6))
def test_the_fast_path_is_exactly_the_rules(seed: int) -> None:
    batch, ts_ingest = messy_batch(seed, 3000)
    with np.errstate(invalid="ignore", over="ignore"):
        broken = np.logical_or.reduce([rule(batch, ts_ingest) for _, rule, _ in RULES])
    np.testing.assert_array_equal(plausible(batch, ts_ingest), ~broken)
    assert 0.2 < broken.mean() < 0.9  # both kinds are well represented


@pytest.mark.parametrize("seed", range(6))
def test_the_verdict_on_a_bar_does_not_depend_on_its_batch(seed: int) -> None:
    """Vectorised over a batch or alone, each bar gets the same verdict: replays batch differently."""
    batch, ts_ingest = messy_batch(seed, 300)
    together = dict(bar_problems(batch, ts_ingest))
    for i in range(len(batch)):
        alone = bar_problems(batch.take(np.array([i])), ts_ingest[i : i + 1])
        assert alone == ([(0, together[i])] if i in together else [])


def test_refused_huge_symbols_are_not_remembered() -> None:
    """Decoded symbols are cached per process; a flood of huge ones must not grow that cache."""
    from schemas import fastbars

    huge = "H" * 200_000
    _, rows, failures = decode_bars([payload(symbol=huge), payload()])
    assert rows == [1] and "200000 bytes long" in failures[0][1]
    assert huge.encode() not in fastbars._SYMBOLS and b"SPY" in fastbars._SYMBOLS
