"""Polygon symbols, frame normalisation and the bar ledger: pure logic, table-driven."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from connectors.polygon.normalise import (
    DUPLICATE,
    FILL,
    NEW,
    NO_BAR,
    TOO_OLD,
    BarLedger,
    Bars,
    Universe,
    admit_in_order,
    normalise_frame,
)
from connectors.polygon.symbols import Instrument, parse_symbol, parse_symbols, subscription_params, symbol_of_ws_name
from schemas.bars import ASSET_CLASSES
from schemas.codec import get_registry

T0_MS = 1_741_014_000_000  # 2025-03-03 15:00 UTC: NYSE open, FX open
NIGHT_MS = 1_741_050_000_000  # 2025-03-04 01:00 UTC: NYSE closed, FX open
MIN = 60_000
MIN_NS = 60_000_000_000
INSTRUMENTS = parse_symbols(["AAPL", "MSFT", "EURUSD", "MESZ5"])
STOCKS = Universe.of("stocks", INSTRUMENTS)
FOREX = Universe.of("forex", INSTRUMENTS)
FUTURES = Universe.of("futures", INSTRUMENTS)


@pytest.mark.parametrize(
    ("text", "symbol", "asset_class"),
    [
        ("AAPL", "AAPL", "EQUITY"),
        (" brk.b ", "BRK.B", "EQUITY"),
        ("EURUSD", "EURUSD", "FX"),
        ("C:EURUSD", "EURUSD", "FX"),
        ("eur/usd", "EURUSD", "FX"),
        ("MESZ5", "MESZ5", "FUTURE"),
        ("ESZ25", "ESZ25", "FUTURE"),
        ("FUT:MES", "MES", "FUTURE"),
        ("MET", "MET", "EQUITY"),  # MetLife, not the micro ether root
        ("CL", "CL", "EQUITY"),  # Colgate-Palmolive, not crude oil
        ("EUREUR", "EUREUR", "EQUITY"),  # not a pair: one currency twice
    ],
)
def test_symbols_are_classified(text: str, symbol: str, asset_class: str) -> None:
    assert parse_symbol(text) == Instrument(symbol, asset_class)


@pytest.mark.parametrize("text", ["", "C:EURXXX", "EUR/XXX", "FUT:", "aapl!", "TOOLONGTICKER"])
def test_bad_symbols_are_refused_with_the_input_named(text: str) -> None:
    with pytest.raises(ValueError, match="is not"):
        parse_symbol(text)


@pytest.mark.parametrize(
    ("instrument", "ws_name", "rest_ticker", "market"),
    [
        (Instrument("AAPL", "EQUITY"), "AAPL", "AAPL", "stocks"),
        (Instrument("EURUSD", "FX"), "EUR/USD", "C:EURUSD", "forex"),
        (Instrument("MESZ5", "FUTURE"), "MESZ5", "MESZ5", "futures"),
    ],
)
def test_polygon_names_per_api(instrument: Instrument, ws_name: str, rest_ticker: str, market: str) -> None:
    assert (instrument.ws_name, instrument.rest_ticker, instrument.market) == (ws_name, rest_ticker, market)
    assert symbol_of_ws_name(instrument.market, ws_name) == instrument.symbol


def test_universe_files_skip_comments_blanks_and_repeats() -> None:
    lines = ["# core", "AAPL, MSFT", "", "EUR/USD  # fx", "C:EURUSD", "aapl"]
    assert [i.symbol for i in parse_symbols(lines)] == ["AAPL", "MSFT", "EURUSD"]


@pytest.mark.parametrize(
    ("intervals", "trades", "expected"),
    [
        (["1m"], False, ["AM.AAPL", "CA.EUR/USD", "AM.MESZ5"]),
        (
            ["1s", "1m"],
            True,
            ["A.AAPL", "AM.AAPL", "T.AAPL", "CAS.EUR/USD", "CA.EUR/USD", "A.MESZ5", "AM.MESZ5", "T.MESZ5"],
        ),  # fmt: skip  FX has quotes, no trades
    ],
)
def test_subscription_params(intervals: list[Any], trades: bool, expected: list[str]) -> None:
    assert subscription_params(parse_symbols(["AAPL", "EURUSD", "MESZ5"]), intervals, trades) == expected


def am(sym: str = "AAPL", start: int = T0_MS, **fields: Any) -> dict[str, Any]:
    event = {"ev": "AM", "sym": sym, "v": 1000, "av": 5000, "op": 10.0, "vw": 10.2, "o": 10.0, "c": 10.5,
             "h": 11.0, "l": 9.5, "a": 10.1, "z": 50, "s": start, "e": start + MIN}  # fmt: skip
    return {**event, **fields}


def test_minute_aggregates_become_bar_columns_in_nanoseconds() -> None:
    frame = json.dumps([am("AAPL"), am("MSFT", NIGHT_MS, vw=None)])
    out = normalise_frame(frame, STOCKS)
    assert not out.rejected and list(out.bars) == ["1m"]
    bars = out.bars["1m"]
    batch = bars.batch
    assert batch.symbol.tolist() == ["AAPL", "MSFT"] and bars.slots.tolist() == [0, 1]
    assert batch.start_ns.tolist() == [T0_MS * 1_000_000, NIGHT_MS * 1_000_000]
    assert (batch.end_ns - batch.start_ns).tolist() == [MIN_NS, MIN_NS]
    assert batch.regular_session.tolist() == [True, False]
    assert [ASSET_CLASSES[a] for a in batch.asset_class] == ["EQUITY", "EQUITY"]
    assert batch.open.tolist() == [10.0, 10.0] and batch.close.tolist() == [10.5, 10.5]
    assert batch.volume.tolist() == [1000.0, 1000.0] and batch.trade_count.tolist() == [-1, -1]
    assert batch.vwap[0] == 10.2 and np.isnan(batch.vwap[1])


def ca(ev: str, length_ms: int) -> dict[str, Any]:
    return {"ev": ev, "pair": "EUR/USD", "o": 1.08, "c": 1.09, "h": 1.1, "l": 1.07, "v": 42, "s": T0_MS,
            "e": T0_MS + length_ms}  # fmt: skip


@pytest.mark.parametrize(
    ("universe", "event", "interval", "symbol", "asset_class"),
    [
        (STOCKS, am(ev="A", e=T0_MS + 1000), "1s", "AAPL", "EQUITY"),
        (FOREX, ca("CA", MIN), "1m", "EURUSD", "FX"),
        (FOREX, ca("CAS", 1000), "1s", "EURUSD", "FX"),
        (FUTURES, am("MESZ5", n=12), "1m", "MESZ5", "FUTURE"),
    ],
)
def test_each_market_and_interval(
    universe: Universe, event: dict[str, Any], interval: str, symbol: str, asset_class: str
) -> None:
    out = normalise_frame(json.dumps([event]), universe)
    assert not out.rejected and list(out.bars) == [interval]
    batch = out.bars[interval].batch  # type: ignore[index]
    assert batch.symbol.tolist() == [symbol] and ASSET_CLASSES[batch.asset_class[0]] == asset_class
    assert batch.trade_count.tolist() == [event.get("n", -1)]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({k: v for k, v in am().items() if k != "o"}, "field o is missing or not a number"),
        (am(c="10.5"), "field c is missing or not a number"),
        (am(v=True), "field v is missing or not a number"),
        (am(h=float("nan")), "price or volume is not finite"),
        (am(l=12.0), "prices violate 0 < l <= o,c <= h"),
        (am(h=10.2), "prices violate 0 < l <= o,c <= h"),
        (am(l=0.0, o=0.0), "prices violate 0 < l <= o,c <= h"),
        (am(v=-1), "negative volume"),
        (am(vw=float("inf")), "vwap is not finite"),
        (am(vw="x"), "field vw is missing or not a number"),
        (am(s=T0_MS + 1), "window s..e is not one aligned 1m"),
        (am(e=T0_MS + 2 * MIN), "window s..e is not one aligned 1m"),
        (am(s=float(T0_MS)), "field s is missing or not an integer"),
        (am(e=2**70), "field e is missing or not an integer"),
        (am("TSLA"), "sym missing or not a subscribed instrument"),
        ({**am(), "sym": ["AAPL"]}, "sym missing or not a subscribed instrument"),
    ],
)
def test_bad_aggregates_are_rejected_with_reasons_and_the_rest_kept(event: dict[str, Any], reason: str) -> None:
    out = normalise_frame(json.dumps([am("MSFT"), event]), STOCKS)
    assert [r.reason for r in out.rejected] == [f"1m aggregate: {reason}"]
    assert json.loads(out.rejected[0].raw) == json.loads(json.dumps(event))
    assert out.bars["1m"].batch.symbol.tolist() == ["MSFT"]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('[{"ev":"AM"', "frame is not JSON"),
        ('{"ev":"AM"}', "frame is not a JSON array of events"),
        ("[5]", "event is not a JSON object with an ev field"),
        ('[{"sym":"AAPL"}]', "event is not a JSON object with an ev field"),
        ('[{"ev":"Q","sym":"AAPL"}]', "unexpected event type 'Q'"),
        ('[{"ev":"T","sym":"AAPL","p":1,"s":1,"t":1}]', None),  # trades of stocks are expected
    ],
)
def test_frames_that_are_not_arrays_of_known_events(frame: str, reason: str | None) -> None:
    out = normalise_frame(frame, STOCKS)
    assert [r.reason.startswith(reason or "") for r in out.rejected] == ([True] if reason else [])


def test_status_messages_are_reported_not_published() -> None:
    frame = '[{"ev":"status","status":"success","message":"subscribed to: AM.AAPL"}]'
    out = normalise_frame(frame, STOCKS)
    assert out.statuses == ["success: subscribed to: AM.AAPL"] and not out.bars and not out.rejected


TRADE = {"ev": "T", "sym": "AAPL", "i": "5096", "x": 10, "p": 161.87, "s": 300, "c": [14, 41], "t": 1651684192462,
         "q": 4009402, "z": 3}  # fmt: skip


def test_trades_become_trade_printed_records_with_stable_ids() -> None:
    first = normalise_frame(json.dumps([TRADE]), STOCKS).trades
    again = normalise_frame(json.dumps([TRADE]), STOCKS).trades
    assert len(first) == 1 and first[0]["event_id"] == again[0]["event_id"]
    record = first[0]
    assert record["ts_event"] == 1651684192462 * 1_000_000
    assert (record["symbol"], record["exchange"], record["trade_id"]) == ("AAPL", "10", "5096")
    assert (record["conditions"], record["tape"], record["sequence_number"]) == ([14, 41], 3, 4009402)
    get_registry().encode("tidemark.marketdata.TradePrinted", record)  # a valid event


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sym": "TSLA"}, "sym missing or not a subscribed instrument"),
        ({"p": 0}, "price p is missing, not a number or not positive"),
        ({"p": "1"}, "price p is missing, not a number or not positive"),
        ({"s": -5}, "size s is missing, not a number or negative"),
        ({"t": 1.5}, "timestamp t is missing or not epoch milliseconds"),
        ({"t": None}, "timestamp t is missing or not epoch milliseconds"),
        ({"c": [1, "x"]}, "conditions c is not a list of integers"),
    ],
)
def test_bad_trades_are_rejected(changes: dict[str, Any], reason: str) -> None:
    out = normalise_frame(json.dumps([{**TRADE, **changes}]), STOCKS)
    assert not out.trades and [r.reason for r in out.rejected] == [f"trade: {reason}"]


@pytest.mark.parametrize(
    ("steps", "verdicts"),
    [
        ([0, 1, 2], [NEW, NEW, NEW]),
        ([0, 0, 1, 1], [NEW, DUPLICATE, NEW, DUPLICATE]),
        ([5, 3, 3, 4], [NEW, FILL, DUPLICATE, FILL]),  # late bars fill holes once
        ([100, 37, 36], [NEW, FILL, TOO_OLD]),  # 63 back is the edge of a 64-bar window
        ([0, 200, 150, 136, 137], [NEW, NEW, FILL, TOO_OLD, FILL]),
        ([0, 64, 0], [NEW, NEW, TOO_OLD]),  # a jump of a whole window forgets everything before
    ],
)
def test_ledger_verdicts(steps: list[int], verdicts: list[int]) -> None:
    ledger = BarLedger(2, "1m")
    start = np.array(steps, dtype=np.int64) * MIN_NS
    got = [int(ledger.admit(np.array([0]), start[i : i + 1])[0]) for i in range(len(steps))]
    assert got == verdicts
    assert ledger.last_start_ns(np.array([0, 1])).tolist() == [max(steps) * MIN_NS, NO_BAR]


def test_ledger_keeps_symbols_apart_and_a_batch_equals_its_rows_one_by_one() -> None:
    rng = np.random.default_rng(3)
    slots = rng.integers(0, 5, 400)
    starts = rng.integers(0, 120, 400) * 1_000_000_000
    whole = BarLedger(5, "1s").admit(slots, starts)
    single = BarLedger(5, "1s")
    one_by_one = [int(single.admit(slots[i : i + 1], starts[i : i + 1])[0]) for i in range(400)]
    assert whole.tolist() == one_by_one
    assert set(whole.tolist()) == {NEW, FILL, DUPLICATE, TOO_OLD}


def test_a_frame_publishes_each_symbol_in_start_order() -> None:
    frame = json.dumps([am("AAPL", T0_MS + 2 * MIN), am("MSFT"), am("AAPL"), am("AAPL", T0_MS + 2 * MIN)])
    bars = normalise_frame(frame, STOCKS).bars["1m"]
    ready, verdicts = admit_in_order(BarLedger(2, "1m"), bars)
    assert sorted(verdicts.tolist()) == [NEW, NEW, NEW, DUPLICATE]
    minutes = (ready.batch.start_ns // MIN_NS - T0_MS // MIN).tolist()
    assert list(zip(ready.batch.symbol.tolist(), minutes, strict=True)) == [("MSFT", 0), ("AAPL", 0), ("AAPL", 2)]
    assert isinstance(ready, Bars) and ready.slots.tolist() == [1, 0, 0]


def test_a_ledger_window_is_a_64_bit_map() -> None:
    with pytest.raises(ValueError, match="64"):
        BarLedger(1, "1m", window=65)
