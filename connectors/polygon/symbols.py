"""Our symbols and Polygon's tickers, per market.

Our symbols are venue-neutral: equities as listed (``AAPL``, ``BRK.B``), FX pairs as six letters (``EURUSD``),
futures as the root or contract (``MES``, ``MESZ5``). Polygon names the same instruments differently per API:

| asset class | our symbol | REST ticker | WebSocket market | WebSocket param / event field |
|---|---|---|---|---|
| EQUITY | ``AAPL`` | ``AAPL`` | ``stocks`` | ``AM.AAPL`` / ``sym`` |
| FX | ``EURUSD`` | ``C:EURUSD`` | ``forex`` | ``CA.EUR/USD`` / ``pair`` |
| FUTURE | ``MESZ5`` | ``MESZ5`` | ``futures`` | ``AM.MESZ5`` / ``sym`` |

Input may use any of these spellings (``C:EURUSD`` and ``EUR/USD`` are FX); a six-letter code of two ISO
currencies is FX; a known futures root with a contract code (month letter, one or two year digits) is a future;
anything else that looks like a ticker is an equity. Bare roots collide with equities (``MET`` is MetLife, ``CL``
Colgate), so a continuous future is written ``FUT:MES``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from schemas.bars import ASSET_CLASSES

WsMarket = Literal["stocks", "forex", "futures"]
Interval = Literal["1s", "1m"]

CURRENCIES = frozenset(
    [
        "USD",
        "EUR",
        "JPY",
        "GBP",
        "AUD",
        "NZD",
        "CAD",
        "CHF",
        "SEK",
        "NOK",
        "DKK",
        "HKD",
        "SGD",
        "CNH",
        "MXN",
        "ZAR",
        "TRY",
        "PLN",
        "HUF",
        "CZK",
        "ILS",
        "KRW",
        "INR",
        "BRL",
    ]
)
# CME Group micro and e-mini roots: a symbol is a future when it is one of these with a contract code.
FUTURES_ROOTS = frozenset(
    [
        "MES",
        "MNQ",
        "M2K",
        "MYM",
        "MGC",
        "SIL",
        "MHG",
        "MCL",
        "MBT",
        "MET",
        "M6E",
        "M6A",
        "M6B",
        "MNG",
        "ES",
        "NQ",
        "RTY",
        "YM",
        "GC",
        "SI",
        "HG",
        "CL",
        "NG",
        "ZN",
        "ZB",
        "ZF",
        "ZT",
        "6E",
        "6J",
    ]
)
_CONTRACT = re.compile(r"^(?P<root>[A-Z0-9]{2,3})[FGHJKMNQUVXZ]\d{1,2}$")
_FUTURE = re.compile(r"^[A-Z0-9]{2,3}([FGHJKMNQUVXZ]\d{1,2})?$")
_EQUITY = re.compile(r"^[A-Z][A-Z0-9]{0,5}([.\-][A-Z0-9]{1,3})?$")

MARKET_OF_CLASS: dict[str, WsMarket] = {"EQUITY": "stocks", "FX": "forex", "FUTURE": "futures"}
# WebSocket event types per market: aggregates per interval, and trades (FX has quotes, no trades).
AGG_EVENTS: dict[WsMarket, dict[Interval, str]] = {
    "stocks": {"1s": "A", "1m": "AM"},
    "forex": {"1s": "CAS", "1m": "CA"},
    "futures": {"1s": "A", "1m": "AM"},
}
TRADE_EVENTS: dict[WsMarket, str] = {"stocks": "T", "futures": "T"}
# The REST aggregates timespan of each interval.
TIMESPANS: dict[Interval, str] = {"1s": "second", "1m": "minute"}


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    asset_class: str  # one of schemas.bars.ASSET_CLASSES

    @property
    def asset_class_index(self) -> int:
        return ASSET_CLASSES.index(self.asset_class)

    @property
    def market(self) -> WsMarket:
        return MARKET_OF_CLASS[self.asset_class]

    @property
    def ws_name(self) -> str:
        """The name in WebSocket subscriptions and events (``EUR/USD`` on the forex feed)."""
        return f"{self.symbol[:3]}/{self.symbol[3:]}" if self.asset_class == "FX" else self.symbol

    @property
    def rest_ticker(self) -> str:
        return f"C:{self.symbol}" if self.asset_class == "FX" else self.symbol


def _is_pair(text: str) -> bool:
    return len(text) == 6 and text[:3] in CURRENCIES and text[3:] in CURRENCIES and text[:3] != text[3:]


def parse_symbol(text: str) -> Instrument:
    """Our instrument for any accepted spelling; ValueError naming the input when it is none of them."""
    raw = text.strip().upper()
    if raw.startswith("C:") or (len(raw) == 7 and raw[3] == "/"):
        pair = raw.removeprefix("C:").replace("/", "")
        if _is_pair(pair):
            return Instrument(pair, "FX")
        raise ValueError(f"{text!r} is not a currency pair of two ISO codes (e.g. EURUSD, EUR/USD, C:EURUSD)")
    if raw.startswith("FUT:"):
        if _FUTURE.match(raw[4:]):
            return Instrument(raw[4:], "FUTURE")
        raise ValueError(f"{text!r} is not a futures root or contract (e.g. FUT:MES, MESZ5)")
    if _is_pair(raw):
        return Instrument(raw, "FX")
    contract = _CONTRACT.match(raw)
    if contract is not None and contract["root"] in FUTURES_ROOTS:
        return Instrument(raw, "FUTURE")
    if _EQUITY.match(raw):
        return Instrument(raw, "EQUITY")
    raise ValueError(f"{text!r} is not a ticker, currency pair or futures contract")


def parse_symbols(texts: Iterable[str]) -> tuple[Instrument, ...]:
    """Instruments in first-seen order without repeats; blank entries and ``#`` comments are skipped."""
    seen: dict[str, Instrument] = {}
    for text in texts:
        text = text.split("#", 1)[0].strip()
        for part in filter(None, (p.strip() for p in text.split(","))):
            instrument = parse_symbol(part)
            seen.setdefault(instrument.symbol, instrument)
    return tuple(seen.values())


def subscription_params(instruments: Iterable[Instrument], intervals: Iterable[Interval], trades: bool) -> list[str]:
    """WebSocket params (``AM.AAPL``, ``CA.EUR/USD``, ...) for instruments of one market."""
    params: list[str] = []
    wanted = tuple(intervals)
    for instrument in instruments:
        events = [AGG_EVENTS[instrument.market][interval] for interval in wanted]
        if trades and instrument.market in TRADE_EVENTS:
            events.append(TRADE_EVENTS[instrument.market])
        params.extend(f"{event}.{instrument.ws_name}" for event in events)
    return params


def symbol_of_ws_name(market: WsMarket, name: str) -> str:
    """Our symbol for a name in a WebSocket event of ``market`` (``EUR/USD`` -> ``EURUSD``)."""
    return name.replace("/", "") if market == "forex" else name
