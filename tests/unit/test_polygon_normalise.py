"""Polygon symbols, frame normalisation and the bar ledger: pure logic, table-driven.

The payloads are the recordings in ``tests/fixtures/polygon/`` (Polygon's documented WebSocket and REST message
shapes, one file per message type and market). Expected values are read from the recorded JSON; a malformed
variant is derived here from a recorded message, so the recordings themselves stay as documented.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, time
from functools import cache
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from polygon.rest.models import Agg

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
from connectors.polygon.rest import aggs_to_batch
from connectors.polygon.symbols import (
    Instrument,
    Interval,
    WsMarket,
    parse_symbol,
    parse_symbols,
    subscription_params,
    symbol_of_ws_name,
)
from core.units import NS_PER_MS
from fakes.polygon import FakePolygon
from schemas.bars import ASSET_CLASSES
from schemas.codec import get_registry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "polygon"
AGG_FILES = (
    "ws_stocks_AM.json",
    "ws_stocks_A.json",
    "ws_forex_CA.json",
    "ws_forex_CAS.json",
    "ws_futures_AM.json",
    "ws_futures_A.json",
)
TRADE_FILES = ("ws_stocks_T.json", "ws_futures_T.json")
STATUS_FILE = "ws_status.json"
REST_FILES = ("rest_aggs_stocks_minute.json", "rest_aggs_forex_minute.json", "rest_aggs_stocks_day.json")

MIN_NS = 60_000_000_000
# What Polygon's documentation says, written out here rather than taken from the code under test.
ASSET_CLASS: dict[WsMarket, str] = {"stocks": "EQUITY", "forex": "FX", "futures": "FUTURE"}
NAME_FIELD = {"stocks": "sym", "forex": "pair", "futures": "sym"}
INTERVAL_OF: dict[str, Interval] = {"AM": "1m", "A": "1s", "CA": "1m", "CAS": "1s"}
LENGTH_MS = {"1m": 60_000, "1s": 1_000}
REST_TIMESPAN = {"minute": ("1m", MIN_NS), "day": ("1d", 86_400 * 10**9)}
# Documented aggregate fields the bars do not need: a message without them is still a bar.
OPTIONAL_AGG_FIELDS = {"stocks": ("av", "op", "vw", "a", "z"), "forex": (), "futures": ("dv", "n")}

INSTRUMENTS = parse_symbols(["AAPL", "MSFT", "EURUSD", "GBPUSD", "USDJPY", "MESH5", "MNQH5"])
UNIVERSES: dict[str, Universe] = {market: Universe.of(market, INSTRUMENTS) for market in ASSET_CLASS}
STOCKS, FOREX, FUTURES = UNIVERSES["stocks"], UNIVERSES["forex"], UNIVERSES["futures"]


@cache
def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


def recording(name: str) -> Any:
    """A fresh copy of a recording (tests may change what they get)."""
    return json.loads(_text(name))


def messages_of(name: str) -> list[dict[str, Any]]:
    """Every message of a WebSocket recording, frame after frame."""
    return [message for frame in recording(name) for message in frame]


def wire(payload: Any) -> str:
    """As the feed sends it: compact JSON."""
    return json.dumps(payload, separators=(",", ":"))


def market_and_ev(name: str) -> tuple[WsMarket, str]:
    _, market, ev = Path(name).stem.split("_")
    return cast(WsMarket, market), ev


def slot(asset_class: str, symbol: str) -> int:
    """An instrument's row in its market's Universe: its place among the instruments of that market."""
    return [i.symbol for i in INSTRUMENTS if i.asset_class == asset_class].index(symbol)


NEW_YORK, CHICAGO = ZoneInfo("America/New_York"), ZoneInfo("America/Chicago")


def regular(asset_class: str, ms: int) -> bool:
    """The regular sessions written out for the recorded days (weekdays without holidays or early closes)."""
    at = datetime.fromtimestamp(ms / 1000, UTC)
    if asset_class == "EQUITY":  # NYSE 09:30-16:00 New York
        local = at.astimezone(NEW_YORK)
        return local.weekday() < 5 and time(9, 30) <= local.time() < time(16)
    if asset_class == "FUTURE":  # Globex: Sunday 17:00 to Friday 16:00 Chicago, closed 16:00-17:00 daily
        local, close, reopen = at.astimezone(CHICAGO), time(16), time(17)
    else:  # FX: Sunday 17:00 to Friday 17:00 New York
        local, close, reopen = at.astimezone(NEW_YORK), time(17), time(17)
    day, clock = local.weekday(), local.time()
    weekend = day == 5 or (day == 6 and clock < reopen) or (day == 4 and clock >= close)
    return not weekend and not close <= clock < reopen


def test_every_recording_is_used_and_in_the_documented_container_shape() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names == {*AGG_FILES, *TRADE_FILES, STATUS_FILE, *REST_FILES}
    for name in names - set(REST_FILES):  # frames: JSON arrays of event objects, each with its ev
        frames = recording(name)
        assert frames and all(type(f) is list and f and all("ev" in m for m in f) for f in frames), name
    for name in (*AGG_FILES, *TRADE_FILES):
        assert {m["ev"] for m in messages_of(name)} == {market_and_ev(name)[1]}, name


# Symbols: logic, not payloads ------------------------------------------------------------------------------------


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


def test_the_recorded_events_are_the_ones_subscribed_to() -> None:
    """Each recorded ``ev`` + name is a param the connector subscribes to for those instruments."""
    for name in (*AGG_FILES, *TRADE_FILES):
        market, ev = market_and_ev(name)
        names = {m[NAME_FIELD[market]] for m in messages_of(name)}
        wanted = parse_symbols(n.replace("/", "") for n in names)
        params = subscription_params(wanted, ["1s", "1m"], trades=True)
        assert {f"{ev}.{n}" for n in names} <= set(params), name


# Aggregates ------------------------------------------------------------------------------------------------------

AGG_FRAMES = [
    pytest.param(name, index, id=f"{Path(name).stem}[{index}]")
    for name in AGG_FILES
    for index in range(len(recording(name)))
]


@pytest.mark.parametrize(("name", "index"), AGG_FRAMES)
def test_recorded_aggregate_frames_become_bar_columns_in_nanoseconds(name: str, index: int) -> None:
    market, ev = market_and_ev(name)
    frame = recording(name)[index]
    out = normalise_frame(wire(frame), UNIVERSES[market])
    interval, asset_class = INTERVAL_OF[ev], ASSET_CLASS[market]
    assert not out.rejected and not out.trades and not out.statuses and list(out.bars) == [interval]
    bars = out.bars[interval]
    batch = bars.batch
    symbols = [m[NAME_FIELD[market]].replace("/", "") for m in frame]
    assert batch.interval == interval and batch.symbol.tolist() == symbols
    assert bars.slots.tolist() == [slot(asset_class, s) for s in symbols]
    assert [ASSET_CLASSES[a] for a in batch.asset_class] == [asset_class] * len(frame)
    assert all(m["e"] - m["s"] == LENGTH_MS[interval] for m in frame)  # the recording's own window
    assert batch.start_ns.tolist() == [m["s"] * NS_PER_MS for m in frame]
    assert batch.end_ns.tolist() == [m["e"] * NS_PER_MS for m in frame]
    for column, key in (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"), ("volume", "v")):
        assert getattr(batch, column).tolist() == [float(m[key]) for m in frame], column
    # vw: the window's VWAP (not a, the day's); forex and futures aggregates carry none.
    np.testing.assert_array_equal(batch.vwap, [m.get("vw", np.nan) for m in frame])
    # n: a trade count only futures aggregates carry (z on stocks is the average trade size).
    assert batch.trade_count.tolist() == [m.get("n", -1) for m in frame]
    assert batch.regular_session.tolist() == [regular(asset_class, m["s"]) for m in frame]


def test_the_recordings_hold_bars_in_and_out_of_the_regular_session() -> None:
    for name in ("ws_stocks_AM.json", "ws_forex_CA.json", "ws_futures_AM.json"):
        market, _ = market_and_ev(name)
        sessions = {regular(ASSET_CLASS[market], m["s"]) for m in messages_of(name)}
        assert sessions == ({True, False} if market == "stocks" else {True}), name  # FX and Globex trade at night


@pytest.mark.parametrize("market", sorted(ASSET_CLASS))
def test_one_frame_mixing_every_recorded_event_of_a_market(market: str) -> None:
    """A frame of several event types (aggregates of both intervals, trades, statuses) takes the grouping path."""
    names = [n for n in (*AGG_FILES, *TRADE_FILES) if market_and_ev(n)[0] == market]
    messages = [m for n in names for m in messages_of(n)] + messages_of(STATUS_FILE)
    out = normalise_frame(wire(messages[::-1]), UNIVERSES[market])
    assert not out.rejected
    for name in names:
        ev = market_and_ev(name)[1]
        if ev in INTERVAL_OF:
            got = out.bars[INTERVAL_OF[ev]].batch
            expected = [(m[NAME_FIELD[market]].replace("/", ""), m["s"] * NS_PER_MS) for m in messages_of(name)]
            assert list(zip(got.symbol.tolist(), got.start_ns.tolist(), strict=True)) == expected[::-1]
        else:
            assert [t["ts_event"] for t in out.trades] == [m["t"] * NS_PER_MS for m in messages_of(name)][::-1]
    assert len(out.bars) == 2 and (out.trades or market == "forex")
    assert out.statuses == [f"{m['status']}: {m['message']}" for m in messages_of(STATUS_FILE)][::-1]


def _required_field_cases() -> list[Any]:
    cases = []
    for name in AGG_FILES:
        market, _ = market_and_ev(name)
        for key in (NAME_FIELD[market], "o", "h", "l", "c", "v", "s", "e"):
            if key == NAME_FIELD[market]:
                reason = f"{key} missing or not a subscribed instrument"
            else:
                reason = f"field {key} is missing or not {'an integer' if key in ('s', 'e') else 'a number'}"
            for change in ("removed", "mistyped"):
                cases.append(pytest.param(name, key, change, reason, id=f"{Path(name).stem}-{key}-{change}"))
    return cases


@pytest.mark.parametrize(("name", "key", "change", "reason"), _required_field_cases())
def test_a_recorded_aggregate_without_a_required_field_is_rejected_and_the_rest_kept(
    name: str, key: str, change: str, reason: str
) -> None:
    market, ev = market_and_ev(name)
    first, *rest = messages_of(name)
    bad = dict(first)
    if change == "removed":
        del bad[key]
    else:  # a number as text, a name as a list
        bad[key] = str(first[key]) if key != NAME_FIELD[market] else [first[key]]
    out = normalise_frame(wire([bad, *rest]), UNIVERSES[market])
    interval = INTERVAL_OF[ev]
    assert [r.reason for r in out.rejected] == [f"{interval} aggregate: {reason}"]
    assert json.loads(out.rejected[0].raw) == bad
    batch = out.bars[interval].batch
    assert batch.start_ns.tolist() == [m["s"] * NS_PER_MS for m in rest]
    assert batch.close.tolist() == [m["c"] for m in rest]


@pytest.mark.parametrize("name", [n for n in AGG_FILES if OPTIONAL_AGG_FIELDS[market_and_ev(n)[0]]])
def test_recorded_aggregates_without_their_optional_fields_are_still_bars(name: str) -> None:
    market, ev = market_and_ev(name)
    messages = messages_of(name)
    bare = [{k: v for k, v in m.items() if k not in OPTIONAL_AGG_FIELDS[market]} for m in messages]
    out = normalise_frame(wire(bare), UNIVERSES[market])
    assert not out.rejected
    batch = out.bars[INTERVAL_OF[ev]].batch
    assert batch.close.tolist() == [m["c"] for m in messages] and batch.volume.tolist() == [m["v"] for m in messages]
    assert np.isnan(batch.vwap).all() and (batch.trade_count == -1).all()


AAPL_AM, MSFT_AM = recording("ws_stocks_AM.json")[0]  # the first minute of the session
TOP, BOTTOM = max(AAPL_AM["o"], AAPL_AM["c"]), min(AAPL_AM["o"], AAPL_AM["c"])


def aapl(**fields: Any) -> dict[str, Any]:
    return {**AAPL_AM, **fields}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        pytest.param({k: v for k, v in AAPL_AM.items() if k != "o"}, "field o is missing or not a number", id="no o"),
        pytest.param(aapl(c=str(AAPL_AM["c"])), "field c is missing or not a number", id="c text"),
        pytest.param(aapl(v=True), "field v is missing or not a number", id="v bool"),
        pytest.param(aapl(h=float("nan")), "price or volume is not finite", id="h nan"),
        pytest.param(aapl(l=TOP + 0.01), "prices violate 0 < l <= o,c <= h", id="l above o,c"),
        pytest.param(aapl(h=TOP - 0.01), "prices violate 0 < l <= o,c <= h", id="h below o,c"),
        pytest.param(aapl(l=0.0, o=0.0), "prices violate 0 < l <= o,c <= h", id="zero"),
        pytest.param(aapl(v=-1), "negative volume", id="v negative"),
        pytest.param(aapl(vw=float("inf")), "vwap is not finite", id="vw inf"),
        pytest.param(aapl(vw="x"), "field vw is missing or not a number", id="vw text"),
        pytest.param(aapl(s=AAPL_AM["s"] + 1), "window s..e is not one aligned 1m", id="s unaligned"),
        pytest.param(aapl(e=AAPL_AM["s"] + 120_000), "window s..e is not one aligned 1m", id="two minutes"),
        pytest.param(aapl(s=float(AAPL_AM["s"])), "field s is missing or not an integer", id="s float"),
        pytest.param(aapl(e=2**70), "field e is missing or not an integer", id="e overflow"),
        pytest.param(aapl(sym="TSLA"), "sym missing or not a subscribed instrument", id="not subscribed"),
        pytest.param(aapl(sym=[AAPL_AM["sym"]]), "sym missing or not a subscribed instrument", id="sym list"),
    ],
)
def test_bad_aggregates_are_rejected_with_reasons_and_the_rest_kept(event: dict[str, Any], reason: str) -> None:
    assert BOTTOM >= AAPL_AM["l"] > 0  # the recorded bar itself is sound
    out = normalise_frame(wire([MSFT_AM, event]), STOCKS)
    assert [r.reason for r in out.rejected] == [f"1m aggregate: {reason}"]
    assert json.loads(out.rejected[0].raw) == json.loads(json.dumps(event))
    assert out.bars["1m"].batch.symbol.tolist() == [MSFT_AM["sym"]]


def test_a_null_vwap_is_a_bar_without_one() -> None:
    out = normalise_frame(wire([aapl(vw=None), MSFT_AM]), STOCKS)
    batch = out.bars["1m"].batch
    assert not out.rejected and np.isnan(batch.vwap[0]) and batch.vwap[1] == MSFT_AM["vw"]


# Frames that are not arrays of known events ----------------------------------------------------------------------

AM_FRAME = wire(recording("ws_stocks_AM.json")[0])


@pytest.mark.parametrize(
    ("universe", "frame", "reasons"),
    [
        pytest.param(STOCKS, '[{"ev":"AM"', ["frame is not JSON"], id="truncated"),
        pytest.param(STOCKS, AM_FRAME[: len(AM_FRAME) // 2], ["frame is not JSON"], id="recorded frame cut"),
        pytest.param(STOCKS, '{"ev":"AM"}', ["frame is not a JSON array of events"], id="object"),
        pytest.param(STOCKS, wire(AAPL_AM), ["frame is not a JSON array of events"], id="recorded message bare"),
        pytest.param(STOCKS, "[5]", ["event is not a JSON object with an ev field"], id="number"),
        pytest.param(STOCKS, '[{"sym":"AAPL"}]', ["event is not a JSON object with an ev field"], id="no ev"),
        pytest.param(
            STOCKS,
            wire([{k: v for k, v in AAPL_AM.items() if k != "ev"}, MSFT_AM]),
            ["event is not a JSON object with an ev field"],
            id="recorded without ev",
        ),
        pytest.param(STOCKS, wire([aapl(ev=["AM"])]), ["event is not a JSON object with an ev field"], id="ev a list"),
        pytest.param(
            STOCKS, wire([aapl(ev={"AM": 1}), MSFT_AM]), ["event is not a JSON object with an ev field"], id="ev dict"
        ),
        pytest.param(STOCKS, '[{"ev":"Q","sym":"AAPL"}]', ["unexpected event type 'Q'"], id="quote"),
        pytest.param(STOCKS, wire(recording("ws_stocks_T.json")[0]), [], id="stock trades are expected"),
        pytest.param(
            STOCKS, wire(recording("ws_forex_CA.json")[0]), ["unexpected event type 'CA'"] * 2, id="forex on stocks"
        ),
        pytest.param(FOREX, AM_FRAME, ["unexpected event type 'AM'"] * 2, id="stocks on forex"),
        pytest.param(
            FOREX, wire(recording("ws_stocks_T.json")[0]), ["unexpected event type 'T'"] * 2, id="trades on forex"
        ),
    ],
)
def test_frames_that_are_not_arrays_of_known_events(universe: Universe, frame: str, reasons: list[str]) -> None:
    out = normalise_frame(frame, universe)
    assert len(out.rejected) == len(reasons)
    assert all(r.reason.startswith(reason) for r, reason in zip(out.rejected, reasons, strict=True))


def test_an_event_with_a_list_for_its_type_is_rejected_and_the_rest_of_the_frame_kept() -> None:
    """An unhashable ``ev`` once raised TypeError out of ``normalise_frame``, which ended the live feed."""
    bad = aapl(ev=[AAPL_AM["ev"]])
    out = normalise_frame(wire([bad, MSFT_AM]), STOCKS)
    assert [(json.loads(r.raw), r.reason) for r in out.rejected] == [
        (bad, "event is not a JSON object with an ev field")
    ]
    assert out.bars["1m"].batch.symbol.tolist() == [MSFT_AM["sym"]]


# Status messages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("market", sorted(ASSET_CLASS))
@pytest.mark.parametrize("index", range(len(recording(STATUS_FILE))))
def test_recorded_status_messages_are_reported_not_published(market: str, index: int) -> None:
    frame = recording(STATUS_FILE)[index]
    out = normalise_frame(wire(frame), UNIVERSES[market])
    assert out.statuses == [f"{m['status']}: {m['message']}" for m in frame]
    assert not out.bars and not out.trades and not out.rejected


# Trades ----------------------------------------------------------------------------------------------------------

TRADE_FRAMES = [
    pytest.param(name, index, id=f"{Path(name).stem}[{index}]")
    for name in TRADE_FILES
    for index in range(len(recording(name)))
]


@pytest.mark.parametrize(("name", "index"), TRADE_FRAMES)
def test_recorded_trades_become_trade_printed_records_with_stable_ids(name: str, index: int) -> None:
    market, _ = market_and_ev(name)
    frame = recording(name)[index]
    first = normalise_frame(wire(frame), UNIVERSES[market])
    again = normalise_frame(wire(frame), UNIVERSES[market])
    assert not first.rejected and not first.bars and len(first.trades) == len(frame)
    ids = [t["event_id"] for t in first.trades]
    assert ids == [t["event_id"] for t in again.trades] and len(set(ids)) == len(ids)
    for record, m in zip(first.trades, frame, strict=True):
        assert (record["symbol"], record["asset_class"], record["source"]) == (m["sym"], ASSET_CLASS[market], "polygon")
        assert (record["ts_event"], record["price"], record["size"]) == (m["t"] * NS_PER_MS, m["p"], m["s"])
        # Futures trades carry no exchange, id, conditions or tape: the sequence number stands in for the id.
        assert (record["exchange"], record["trade_id"]) == (str(m.get("x", "")), str(m.get("i", m["q"])))
        assert record["conditions"] == m.get("c", [])
        assert (record["tape"], record["sequence_number"]) == (m.get("z"), m["q"])
        get_registry().encode("tidemark.marketdata.TradePrinted", record)  # a valid event


TRADE = recording("ws_stocks_T.json")[0][0]


def _trade_cases() -> list[Any]:
    reasons = {
        "sym": "sym missing or not a subscribed instrument",
        "p": "price p is missing, not a number or not positive",
        "s": "size s is missing, not a number or negative",
        "t": "timestamp t is missing or not epoch milliseconds",
    }
    cases = [
        pytest.param(name, {"remove": key}, reason, id=f"{Path(name).stem}-{key}-removed")
        for name in TRADE_FILES
        for key, reason in reasons.items()
    ]
    changes = [
        ({"sym": "TSLA"}, reasons["sym"]),
        ({"p": 0}, reasons["p"]),
        ({"p": str(TRADE["p"])}, reasons["p"]),
        ({"s": -5}, reasons["s"]),
        ({"t": TRADE["t"] + 0.5}, reasons["t"]),
        ({"t": None}, reasons["t"]),
        ({"c": [*TRADE["c"], "x"]}, "conditions c is not a list of integers"),
    ]
    cases += [pytest.param("ws_stocks_T.json", change, reason, id=repr(change)) for change, reason in changes]
    return cases


@pytest.mark.parametrize(("name", "change", "reason"), _trade_cases())
def test_bad_trades_are_rejected_and_the_rest_kept(name: str, change: dict[str, Any], reason: str) -> None:
    market, _ = market_and_ev(name)
    first, *rest = messages_of(name)
    bad = {k: v for k, v in first.items() if k != change.get("remove")}
    bad.update({k: v for k, v in change.items() if k != "remove"})
    out = normalise_frame(wire([bad, *rest]), UNIVERSES[market])
    assert [r.reason for r in out.rejected] == [f"trade: {reason}"]
    assert [t["ts_event"] for t in out.trades] == [m["t"] * NS_PER_MS for m in rest]


def test_a_trade_of_only_symbol_price_size_and_time_is_kept() -> None:
    bare = {k: TRADE[k] for k in ("ev", "sym", "p", "s", "t")}
    (record,) = normalise_frame(wire([bare]), STOCKS).trades
    assert (record["exchange"], record["trade_id"], record["conditions"]) == ("", "", [])
    assert (record["tape"], record["sequence_number"]) == (None, None)


# REST aggregates -------------------------------------------------------------------------------------------------

REST_PAGES = [
    pytest.param(name, page, id=f"{Path(name).stem}[{page}]")
    for name in REST_FILES
    for page in range(len(recording(name)))
]


@pytest.mark.parametrize(("name", "page"), REST_PAGES)
def test_recorded_rest_aggregates_become_bars(name: str, page: int) -> None:
    _, _, market, timespan = Path(name).stem.split("_")
    body = recording(name)[page]
    results = body["results"]
    assert body["status"] == "OK" and body["resultsCount"] == len(results)
    assert ("next_url" in body) == (page < len(recording(name)) - 1)  # every page but the last
    interval, bar_ns = REST_TIMESPAN[timespan]
    asset_class = ASSET_CLASS[cast(WsMarket, market)]
    rows = [Agg.from_dict(r) for r in results]  # what RESTClient.list_aggs yields per result
    batch = aggs_to_batch(parse_symbol(body["ticker"]), interval, bar_ns, rows)
    assert batch.interval == interval
    assert batch.symbol.tolist() == [body["ticker"].removeprefix("C:")] * len(results)
    assert [ASSET_CLASSES[a] for a in batch.asset_class] == [asset_class] * len(results)
    assert batch.start_ns.tolist() == [r["t"] * NS_PER_MS for r in results]
    assert batch.end_ns.tolist() == [r["t"] * NS_PER_MS + bar_ns for r in results]
    for column, key in (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"), ("volume", "v"), ("vwap", "vw")):
        assert getattr(batch, column).tolist() == [float(r[key]) for r in results], column
    assert batch.trade_count.tolist() == [r["n"] for r in results]
    # A daily bar is the session's bar; a minute bar is in or out of its market's regular session.
    in_session = [True if timespan == "day" else regular(asset_class, r["t"]) for r in results]
    assert batch.regular_session.tolist() == in_session


def test_the_fake_serves_a_recorded_rest_request_in_the_recorded_shape() -> None:
    pages = recording("rest_aggs_stocks_minute.json")
    key = "fake-key-recorded"
    with FakePolygon(key, page_size=len(pages[0]["results"])) as fake:
        fake.add_bars(pages[0]["ticker"], "minute", [r for p in pages for r in p["results"]])
        url = f"{fake.rest_url}/v2/aggs/ticker/AAPL/range/1/minute/2025-03-03/2025-03-03?adjusted=false&sort=asc"
        served = []
        while url:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                served.append(json.load(response))
            url = served[-1].get("next_url")
    assert len(served) == len(pages)
    for got, recorded in zip(served, pages, strict=True):
        assert set(recorded) <= set(got)
        same = set(recorded) - {"request_id", "next_url"}
        assert {k: got[k] for k in same} == {k: recorded[k] for k in same}


# The ledger: logic, not payloads ---------------------------------------------------------------------------------


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
    """The recorded minutes, newest first and one repeated, publish oldest first and once."""
    messages = [m for frame in reversed(recording("ws_stocks_AM.json")) for m in frame]
    messages.append(messages[1])
    bars = normalise_frame(wire(messages), STOCKS).bars["1m"]
    ready, verdicts = admit_in_order(BarLedger(len(STOCKS), "1m"), bars)
    expected: list[tuple[str, int]] = []
    for m in sorted(messages, key=lambda m: m["s"]):
        if (m["sym"], m["s"] * NS_PER_MS) not in expected:
            expected.append((m["sym"], m["s"] * NS_PER_MS))
    assert sorted(verdicts.tolist()) == [NEW] * len(expected) + [DUPLICATE]
    assert list(zip(ready.batch.symbol.tolist(), ready.batch.start_ns.tolist(), strict=True)) == expected
    assert isinstance(ready, Bars) and ready.slots.tolist() == [slot("EQUITY", s) for s, _ in expected]


def test_a_ledger_window_is_a_64_bit_map() -> None:
    with pytest.raises(ValueError, match="64"):
        BarLedger(1, "1m", window=65)
