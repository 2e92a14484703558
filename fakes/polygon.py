"""A local fake Polygon server (WebSocket + REST) speaking the documented wire protocol, so tests and benchmarks
drive the connectors through the official `polygon-api-client` with only its host settings changed.

One aiohttp server on 127.0.0.1 and a random free port serves both sides:

- REST, base URL ``fake.rest_url`` (``RESTClient(api_key, base=fake.rest_url)``):
  ``/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}`` (``from``/``to`` as epoch milliseconds,
  inclusive, or ``YYYY-MM-DD`` as whole UTC days; ``sort``, ``limit``; only multiplier 1 is served),
  ``/v3/reference/splits`` and ``/v3/reference/dividends`` (``ticker`` and ``field[.gt|.gte|.lt|.lte]`` filters,
  ``sort``, ``order`` (default asc), ``limit`` default 10). Every list answers at most ``min(limit, page_size)`` rows
  and a ``next_url`` (absolute, with a ``cursor``) when more remain. The key is accepted as a Bearer token or as
  ``apiKey=``; a wrong or missing key gets 401.
- WebSocket, ``WebSocketClient(api_key, feed=fake.ws_feed, market=M, secure=False)`` for M in stocks, forex,
  futures: sends ``[{"ev":"status","status":"connected"}]``, answers ``auth`` with ``auth_success`` or
  ``auth_failed`` (then closes), ``subscribe``/``unsubscribe`` (``EV.SYM`` or ``EV.*``) with one ``success`` status
  per param, and forwards pushed events to the connections whose subscriptions match ``ev`` + ``sym``/``pair``.

Public API (sync, callable from any thread; ``FakePolygon(api_key, page_size=...)``, used as a context manager):
  data:      ``add_bars(ticker, timespan, rows)`` (rows carry t,o,h,l,c,v,vw,n), ``add_split(...)``,
             ``add_dividend(...)``
  REST:      ``fail_next(count, status=429, retry_after=0)``, ``requests`` (the per-request log)
  WebSocket: ``push(market, events)``, ``push_text(market, text)`` (verbatim, e.g. malformed frames),
             ``drop_connections()`` (TCP abort: the client sees a network drop and reconnects),
             ``subscriptions(market)``, ``connections(market)``, ``auth_attempts``
Recorded payloads (``tests/fixtures/polygon/``) are served as they are: ``push(market, frame)`` per WebSocket frame,
``add_bars(ticker, timespan, page["results"])`` per REST page.
``python -m fakes.polygon [--api-key KEY]`` runs it in the foreground for manual use.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web

from fakes.server import LoopServer

T = TypeVar("T")

MARKETS = ("stocks", "forex", "futures")
TIMESPAN_MS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
AGGS_DEFAULT_LIMIT, AGGS_MAX_LIMIT = 5_000, 50_000
LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT = 10, 1_000
SPLIT_FIELDS = ("id", "execution_date", "split_from", "split_to", "ticker")
DIVIDEND_FIELDS = (
    "id",
    "cash_amount",
    "currency",
    "declaration_date",
    "dividend_type",
    "ex_dividend_date",
    "frequency",
    "pay_date",
    "record_date",
    "ticker",
)


@dataclass(frozen=True)
class RestRequest:
    """One REST request as the fake saw it (the key is never recorded)."""

    path: str
    params: Mapping[str, str]
    status: int


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    request: web.Request
    market: str
    authed: bool = False
    subs: set[str] = field(default_factory=set)

    def wants(self, event: Mapping[str, Any]) -> bool:
        ev = event.get("ev")
        return f"{ev}.*" in self.subs or f"{ev}.{event.get('sym', event.get('pair'))}" in self.subs


def _status(status: str, message: str) -> str:
    return json.dumps([{"ev": "status", "status": status, "message": message}])


def _parse_time_ms(text: str, end: bool) -> int:
    """Aggregates take epoch milliseconds or a date; a date covers the whole UTC day."""
    if text.isdigit():
        return int(text)
    day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    if end:
        day += timedelta(days=1)
        return int(day.timestamp() * 1000) - 1
    return int(day.timestamp() * 1000)


def _encode_cursor(params: Mapping[str, str]) -> str:
    return base64.urlsafe_b64encode(urlencode(sorted(params.items())).encode()).decode()


def _decode_cursor(cursor: str) -> dict[str, str]:
    return dict(parse_qsl(base64.urlsafe_b64decode(cursor.encode()).decode()))


def _matches(record: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    """Polygon's list filters: ``field=value`` and ``field.gt|gte|lt|lte=value`` (string comparison: dates, tickers)."""
    for key, wanted in params.items():
        name, _, op = key.partition(".")
        if name not in record or op not in ("", "gt", "gte", "lt", "lte"):
            continue
        have = str(record[name])
        ok = {
            "": have == wanted,
            "gt": have > wanted,
            "gte": have >= wanted,
            "lt": have < wanted,
            "lte": have <= wanted,
        }[op]
        if not ok:
            return False
    return True


class FakePolygon(LoopServer):
    """Fake Polygon REST + WebSocket server running on its own event loop in a background thread."""

    what = "fake Polygon server"

    def __init__(self, api_key: str = "fake-polygon-key", *, page_size: int = AGGS_MAX_LIMIT) -> None:
        self.api_key = api_key
        self.page_size = page_size
        super().__init__()
        self.auth_attempts = 0
        self._bars: dict[tuple[str, str], tuple[list[int], list[dict[str, Any]]]] = {}
        self._splits: list[dict[str, Any]] = []
        self._dividends: list[dict[str, Any]] = []
        self._failures: list[tuple[int, int]] = []
        self._requests: list[RestRequest] = []
        self._conns: list[_Connection] = []
        self._lock = threading.Lock()

    # lifecycle -------------------------------------------------------------------------------------------------

    @property
    def ws_feed(self) -> str:
        return f"127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{start}/{end}", self._aggs)
        app.router.add_get("/v3/reference/splits", self._splits_handler)
        app.router.add_get("/v3/reference/dividends", self._dividends_handler)
        for market in MARKETS:
            app.router.add_get(f"/{market}", self._ws)

    async def closing(self) -> None:
        for conn in list(self._conns):
            if conn.request.transport is not None:
                conn.request.transport.abort()

    # data ------------------------------------------------------------------------------------------------------

    def add_bars(self, ticker: str, timespan: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Aggregates served by REST; a row with an existing ``t`` replaces the old one."""
        with self._lock:
            times, stored = self._bars.setdefault((ticker, timespan), ([], []))
            for row in rows:
                item = dict(row)
                at = bisect.bisect_left(times, int(item["t"]))
                if at < len(times) and times[at] == int(item["t"]):
                    stored[at] = item
                else:
                    times.insert(at, int(item["t"]))
                    stored.insert(at, item)

    def add_split(self, ticker: str, execution_date: str, split_from: float, split_to: float) -> None:
        with self._lock:
            self._splits.append(
                {
                    "id": f"E{uuid.uuid4().hex[:30]}",
                    "execution_date": execution_date,
                    "split_from": split_from,
                    "split_to": split_to,
                    "ticker": ticker,
                }
            )

    def add_dividend(self, ticker: str, ex_dividend_date: str, cash_amount: float, **fields: Any) -> None:
        """Extra fields: currency, declaration_date, dividend_type, frequency, pay_date, record_date."""
        unknown = set(fields) - set(DIVIDEND_FIELDS)
        if unknown:
            raise ValueError(f"unknown dividend fields: {sorted(unknown)}")
        defaults = {"currency": "USD", "dividend_type": "CD", "frequency": 4}
        with self._lock:
            self._dividends.append(
                {
                    **defaults,
                    **fields,
                    "id": f"E{uuid.uuid4().hex[:30]}",
                    "ticker": ticker,
                    "ex_dividend_date": ex_dividend_date,
                    "cash_amount": cash_amount,
                }
            )

    # REST ------------------------------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 429, retry_after: int = 0) -> None:
        """The next ``count`` authenticated REST requests answer ``status`` (with Retry-After for 429)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    @property
    def requests(self) -> list[RestRequest]:
        with self._lock:
            return list(self._requests)

    def _gate(self, request: web.Request) -> tuple[dict[str, str], web.Response | None]:
        """Authenticate, log and apply injected failures; returns the query (cursor expanded) or the error reply."""
        params = dict(request.query)
        key = params.pop("apiKey", None)
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            key = header.removeprefix("Bearer ")
        if "cursor" in params:
            params = {**_decode_cursor(params.pop("cursor")), **params}
        reply: web.Response | None = None
        if key != self.api_key:
            error = "API Key was not provided" if key is None else "Unknown API Key"
            reply = web.json_response({"status": "ERROR", "request_id": uuid.uuid4().hex, "error": error}, status=401)
        with self._lock:
            if reply is None and self._failures:
                status, retry_after = self._failures.pop(0)
                body = {"status": "ERROR", "request_id": uuid.uuid4().hex, "error": f"injected {status}"}
                headers = {"Retry-After": str(retry_after)} if status == 429 else {}
                reply = web.json_response(body, status=status, headers=headers)
            self._requests.append(RestRequest(request.path, params, 200 if reply is None else reply.status))
        return params, reply

    def _page(self, rows: list[dict[str, Any]], params: Mapping[str, str], default: int, cap: int) -> int:
        return max(1, min(int(params.get("limit", default)), cap, self.page_size, len(rows) or 1))

    async def _aggs(self, request: web.Request) -> web.Response:
        params, reply = self._gate(request)
        if reply is not None:
            return reply
        m = request.match_info
        ticker, timespan = m["ticker"], m["timespan"]
        if m["multiplier"] != "1" or timespan not in TIMESPAN_MS:
            return web.json_response({"status": "ERROR", "error": "the fake serves multiplier 1 only"}, status=400)
        lo, hi = _parse_time_ms(m["start"], end=False), _parse_time_ms(m["end"], end=True)
        descending = params.get("sort", "asc") == "desc"
        with self._lock:
            times, stored = self._bars.get((ticker, timespan), ([], []))
            rows = stored[bisect.bisect_left(times, lo) : bisect.bisect_right(times, hi)]
        if descending:
            rows = rows[::-1]
        page = self._page(rows, params, AGGS_DEFAULT_LIMIT, AGGS_MAX_LIMIT)
        results, more = rows[:page], len(rows) > page
        body: dict[str, Any] = {
            "ticker": ticker,
            "queryCount": len(results),
            "resultsCount": len(results),
            "adjusted": params.get("adjusted", "true") != "false",
            "status": "OK",
            "request_id": uuid.uuid4().hex,
            "count": len(results),
        }
        if results:
            body["results"] = results
        if more:
            last = int(results[-1]["t"])
            start, end = (m["start"], str(last - 1)) if descending else (str(last + 1), m["end"])
            path = f"/v2/aggs/ticker/{ticker}/range/1/{timespan}/{start}/{end}"
            body["next_url"] = f"{self.rest_url}{path}?cursor={_encode_cursor(params)}"
        return web.json_response(body)

    def _list(self, request: web.Request, records: list[dict[str, Any]], date_field: str) -> web.Response:
        params, reply = self._gate(request)
        if reply is not None:
            return reply
        with self._lock:
            rows = [r for r in records if _matches(r, params)]
        sort = params.get("sort", date_field)
        rows.sort(key=lambda r: (str(r.get(sort, "")), r["id"]), reverse=params.get("order", "asc") == "desc")
        offset = int(params.get("offset", "0"))
        rows = rows[offset:]
        page = self._page(rows, params, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT)
        body: dict[str, Any] = {"results": rows[:page], "status": "OK", "request_id": uuid.uuid4().hex}
        if len(rows) > page:
            cursor = _encode_cursor({**params, "offset": str(offset + page)})
            body["next_url"] = f"{self.rest_url}{request.path}?cursor={cursor}"
        return web.json_response(body)

    async def _splits_handler(self, request: web.Request) -> web.Response:
        return self._list(request, self._splits, "execution_date")

    async def _dividends_handler(self, request: web.Request) -> web.Response:
        return self._list(request, self._dividends, "ex_dividend_date")

    # WebSocket -------------------------------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)  # no permessage-deflate: cheap to drive
        await ws.prepare(request)
        conn = _Connection(ws, request, request.path.strip("/"))
        with self._lock:
            self._conns.append(conn)
        try:
            await ws.send_str(_status("connected", "Connected Successfully"))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if not await self._command(conn, msg.data):
                    break
        finally:
            with self._lock:
                self._conns.remove(conn)
            await ws.close()
        return ws

    async def _command(self, conn: _Connection, text: str) -> bool:
        """Handle one client message; False ends the connection."""
        try:
            command = json.loads(text)
            action, params = command["action"], str(command.get("params", ""))
        except (ValueError, KeyError, TypeError):
            await conn.ws.send_str(_status("error", "invalid message"))
            return True
        if action == "auth":
            with self._lock:
                self.auth_attempts += 1
            if params != self.api_key:
                await conn.ws.send_str(_status("auth_failed", "authentication failed"))
                return False
            conn.authed = True
            await conn.ws.send_str(_status("auth_success", "authenticated"))
            return True
        if not conn.authed:
            await conn.ws.send_str(_status("error", "not authorized"))
            return True
        if action not in ("subscribe", "unsubscribe"):
            await conn.ws.send_str(_status("error", f"unknown action: {action}"))
            return True
        topics = [t.strip() for t in params.split(",") if t.strip()]
        with self._lock:
            (conn.subs.update if action == "subscribe" else conn.subs.difference_update)(topics)
        verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
        await conn.ws.send_str(
            json.dumps([{"ev": "status", "status": "success", "message": f"{verb}: {t}"} for t in topics])
        )
        return True

    def _authed(self, market: str | None) -> list[_Connection]:
        with self._lock:
            return [c for c in self._conns if c.authed and (market is None or c.market == market)]

    def push(self, market: str, events: list[Mapping[str, Any]]) -> int:
        """Send the events each subscribed connection of ``market`` wants, as one JSON-array frame; returns
        how many connections got a frame."""

        async def send() -> int:
            sent = 0
            for conn in self._authed(market):
                wanted = [e for e in events if conn.wants(e)]
                if wanted and not conn.ws.closed:
                    await conn.ws.send_str(json.dumps(wanted))
                    sent += 1
            return sent

        return self._call(send())

    def push_text(self, market: str, text: str) -> int:
        """Send ``text`` verbatim to every authenticated connection of ``market`` (waits for the socket to
        take it, so a loop of calls runs at the pace of the slowest client)."""

        async def send() -> int:
            conns = [c for c in self._authed(market) if not c.ws.closed]
            for conn in conns:
                await conn.ws.send_str(text)
            return len(conns)

        return self._call(send())

    def drop_connections(self, market: str | None = None) -> int:
        """Abort the TCP connections (no close frame), as a network failure would."""

        async def drop() -> int:
            conns = self._authed(market)
            for conn in conns:
                if conn.request.transport is not None:
                    conn.request.transport.abort()
            return len(conns)

        return self._call(drop())

    def subscriptions(self, market: str) -> frozenset[str]:
        return frozenset(s for c in self._authed(market) for s in c.subs)

    def connections(self, market: str | None = None) -> int:
        return len(self._authed(market))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fakes.polygon", description="Run a fake Polygon server until Ctrl-C."
    )
    parser.add_argument("--api-key", default="fake-polygon-key")
    parser.add_argument("--page-size", type=int, default=AGGS_MAX_LIMIT)
    args = parser.parse_args()
    with FakePolygon(args.api_key, page_size=args.page_size) as fake:
        print(f"REST {fake.rest_url}  WebSocket feed {fake.ws_feed} (markets {', '.join(MARKETS)})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
