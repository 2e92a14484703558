"""A local fake Alpaca trading server (REST + ``trade_updates`` WebSocket) speaking the documented wire protocol, so
tests drive the broker connector through the official ``alpaca-py`` client with only its URLs changed.

One aiohttp server on 127.0.0.1 and a random free port serves both sides:

- REST, ``TradingClient(key, secret, paper=True, url_override=fake.rest_url)``, headers ``APCA-API-KEY-ID`` and
  ``APCA-API-SECRET-KEY`` (a wrong or missing key gets 401 ``{"code":40110000,...}``):
  ``GET /v2/account``, ``GET /v2/positions``, ``GET /v2/positions/{symbol}`` (404 when flat),
  ``POST /v2/orders`` (market orders, ``qty`` or ``notional`` as decimal strings or JSON numbers, ``client_order_id``;
  422 for a repeated client_order_id, an unknown/untradable symbol, fractions of a non-fractionable asset; 403 for
  selling more than held (no shorting: a cash account) or a cost above the buying power),
  ``GET /v2/orders`` (``status=open|closed|all`` (default open), ``after``/``until`` (exclusive/inclusive, on
  ``submitted_at``), ``limit`` (default 50, at most 500), ``direction`` (default desc), ``symbols``, ``side``,
  ``nested`` accepted), ``GET /v2/orders/{id}``, ``GET /v2/orders:by_client_order_id?client_order_id=``,
  ``DELETE /v2/orders/{id}`` (204; 422 when the order is no longer open), ``GET /v2/assets/{symbol}``.
  Orders are accepted as ``pending_new`` (the POST's answer), then become ``new`` with a ``new`` trade update.
- WebSocket ``fake.stream_url`` (``TradingStream(key, secret, paper=True, url_override=fake.stream_url)``):
  ``{"action":"authenticate",...}`` is answered ``authorized`` or ``unauthorized`` (then the socket closes),
  ``{"action":"listen","data":{"streams":["trade_updates"]}}`` with ``listening``; then every trade update is sent
  to each listening connection. Like the real server, frames are binary by default (``binary_frames=False``: text).

Public API (sync, callable from any thread; ``FakeAlpaca(key_id, secret_key, cash=100000, binary_frames=True)``,
used as a context manager):
  market:    ``add_asset(symbol, tradable=True, fractionable=True, asset_class="us_equity")``,
             ``set_price(symbol, price)``
  execution: ``fill(symbol=None, price=None, fraction=1.0)`` (fills open orders; ``fraction`` < 1: a partial fill of
             that share of what remains), ``reject_next(reason)`` (the next order is accepted then rejected),
             ``set_position(symbol, qty, avg_entry_price)`` (a change from outside, for reconciliation)
  REST:      ``fail_next(count, status=429, retry_after=0)``, ``rate_limit(per_minute)`` (None: off),
             ``rate_limited`` (429s served by the limit), ``requests`` (the per-request log)
  stream:    ``drop_stream()`` (TCP abort: the client reconnects), ``hold_updates()``,
             ``release_updates(order="as_is"|"reversed", repeat=False)``, ``drop_next_updates(n)`` (never sent;
             the REST state still has them), ``listeners()``, ``sent_updates()``, ``auth_attempts``
  inspect:   ``orders()``, ``positions()``, ``account()`` (as served, JSON dicts)
Quantities are kept to 9 decimals (rounded down), average prices to 9 decimals (half even); equity is cash plus the
positions at the set prices (their average entry price when none is set); buying power is cash less what open buy
orders hold (equal to cash when none is open).
``python -m fakes.alpaca [--key-id K --secret-key S --cash C]`` runs it in the foreground for manual use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from fakes.server import LoopServer

T = TypeVar("T")

QTY_STEP = Decimal("0.000000001")
OPEN = frozenset({"pending_new", "accepted", "new", "partially_filled"})
ORDERS_DEFAULT_LIMIT, ORDERS_MAX_LIMIT = 50, 500
UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}
UNPROCESSABLE, FORBIDDEN, NOT_FOUND = 40010001, 40310000, 40410000
EXCHANGES = {"us_equity": "NASDAQ", "crypto": "CRYPTO", "us_option": ""}
_LOG_INDEX = web.RequestKey("log_index", int)
_NAMESPACE = uuid.UUID("6f2b0e4c-3c7e-4f7a-9a53-0d1f1c2a7a11")


@dataclass(frozen=True)
class RestRequest:
    """One REST request as the fake saw it (the key is never recorded)."""

    method: str
    path: str
    params: Mapping[str, str]
    status: int


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    request: web.Request
    authed: bool = False
    listening: bool = False


@dataclass
class _Order:
    id: str
    client_order_id: str
    symbol: str
    asset_id: str
    asset_class: str
    side: str
    qty: Decimal | None
    notional: Decimal | None
    time_in_force: str
    created_ns: int
    status: str = "pending_new"
    updated_ns: int = 0
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    filled_avg_price: Decimal | None = None
    filled_ns: int | None = None
    canceled_ns: int | None = None
    failed_ns: int | None = None
    reject_reason: str | None = None
    executions: list[str] = field(default_factory=list)

    def remaining_qty(self, price: Decimal) -> Decimal:
        if self.qty is not None:
            return self.qty - self.filled_qty
        assert self.notional is not None
        return _qty((self.notional - self.filled_notional) / price)

    def reserved(self, price: Decimal | None) -> Decimal:
        """Cash an open buy order holds back from the buying power."""
        if self.side != "buy" or self.status not in OPEN:
            return Decimal(0)
        if self.notional is not None:
            return self.notional - self.filled_notional
        return max(Decimal(0), (self.qty or Decimal(0)) * (price or Decimal(0)) - self.filled_notional)


def _qty(value: Decimal) -> Decimal:
    return value.quantize(QTY_STEP, rounding=ROUND_DOWN)


def _text(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}Z"


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def _parse_time_ns(text: str) -> int:
    """RFC 3339 (``Z`` or an offset, up to nanoseconds; none: UTC) or a date; raises ValueError."""
    text = text.strip().replace(" ", "+")  # an unencoded "+" in a query string arrives as a space
    if len(text) == 10:
        return int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) * 1_000_000_000
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"invalid timestamp: {text!r}")
    whole, digits, offset = match.groups()
    zone = "+00:00" if offset in (None, "Z") else offset
    seconds = int(datetime.fromisoformat(whole + zone).timestamp())
    return seconds * 1_000_000_000 + int((digits or "0")[:9].ljust(9, "0"))


def _decimal(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"invalid {name}") from None
    if not number.is_finite():
        raise ValueError(f"invalid {name}")
    return number


def _error(status: int, code: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"code": code, "message": message, **extra}, status=status)


def _norm(symbol: str) -> str:
    return symbol.upper().replace("/", "")


class FakeAlpaca(LoopServer):
    """Fake Alpaca REST + trade-updates WebSocket server running on its own event loop in a background thread."""

    what = "fake Alpaca server"

    def __init__(
        self,
        key_id: str = "fake-alpaca-key",
        secret_key: str = "fake-alpaca-secret",
        *,
        cash: float | Decimal | str = 100000,
        binary_frames: bool = True,
    ) -> None:
        self.key_id = key_id
        self.secret_key = secret_key
        self.binary_frames = binary_frames
        super().__init__()
        self.auth_attempts = 0
        self.account_id = str(uuid.uuid5(_NAMESPACE, f"account:{key_id}"))
        self.account_number = "PA" + uuid.uuid5(_NAMESPACE, f"number:{key_id}").hex[:10].upper()
        self._cash = Decimal(str(cash))
        self._initial_cash = self._cash
        self._created_ns = time.time_ns()
        self._last_ns = 0
        self._assets: dict[str, dict[str, Any]] = {}
        self._prices: dict[str, Decimal] = {}
        self._positions: dict[str, tuple[Decimal, Decimal]] = {}
        self._orders: dict[str, _Order] = {}
        self._by_client_id: dict[str, str] = {}
        self._rejects: list[str] = []
        self._failures: list[tuple[int, int]] = []
        self._limit: int | None = None
        self._window: deque[float] = deque()
        self._rate_limited = 0
        self._requests: list[RestRequest] = []
        self._conns: list[_Connection] = []
        self._holding = False
        self._held: list[dict[str, Any]] = []
        self._drop = 0
        self._sent: list[dict[str, Any]] = []
        self._lock = threading.RLock()

    # lifecycle -------------------------------------------------------------------------------------------------

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/account", self._account_handler)
        app.router.add_get("/v2/positions", self._positions_handler)
        app.router.add_get("/v2/positions/{symbol:.+}", self._position_handler)
        app.router.add_post("/v2/orders", self._submit_handler)
        app.router.add_get("/v2/orders", self._orders_handler)
        app.router.add_get("/v2/orders:by_client_order_id", self._by_client_id_handler)
        app.router.add_get("/v2/orders/{order_id}", self._order_handler)
        app.router.add_delete("/v2/orders/{order_id}", self._cancel_handler)
        app.router.add_get("/v2/assets", self._assets_handler)
        app.router.add_get("/v2/assets/{symbol:.+}", self._asset_handler)
        app.router.add_get("/stream", self._ws)

    async def closing(self) -> None:
        for conn in list(self._conns):
            if conn.request.transport is not None:
                conn.request.transport.abort()

    def _now_ns(self) -> int:
        """Strictly increasing at microsecond grain, so every order and update has its own time."""
        with self._lock:
            now = max(time.time_ns() // 1000 * 1000, self._last_ns + 1000)
            self._last_ns = now
            return now

    # market ----------------------------------------------------------------------------------------------------

    def add_asset(
        self, symbol: str, tradable: bool = True, fractionable: bool = True, asset_class: str = "us_equity"
    ) -> None:
        with self._lock:
            self._assets[_norm(symbol)] = {
                "id": str(uuid.uuid5(_NAMESPACE, f"asset:{_norm(symbol)}")),
                "class": asset_class,
                "exchange": EXCHANGES.get(asset_class, ""),
                "symbol": symbol,
                "name": f"{symbol} (fake)",
                "status": "active",
                "tradable": tradable,
                "marginable": asset_class == "us_equity",
                "shortable": False,
                "easy_to_borrow": False,
                "fractionable": fractionable,
                "min_order_size": None,
                "min_trade_increment": None,
                "price_increment": None,
                "maintenance_margin_requirement": 100,
                "attributes": ["fractional_eh_enabled"] if fractionable else [],
            }

    def set_price(self, symbol: str, price: float | Decimal | str) -> None:
        with self._lock:
            self._prices[_norm(symbol)] = Decimal(str(price))

    def set_position(self, symbol: str, qty: float | Decimal | str, avg_entry_price: float | Decimal | str) -> None:
        """Change a position as something outside the fake would (a transfer, a corporate action); qty 0 clears it.
        Cash is left alone and no trade update is sent."""
        with self._lock:
            amount = Decimal(str(qty))
            if amount == 0:
                self._positions.pop(_norm(symbol), None)
            else:
                self._positions[_norm(symbol)] = (amount, Decimal(str(avg_entry_price)))

    def reject_next(self, reason: str = "rejected by the fake") -> None:
        """The next order placed is accepted (the POST answers 200) and then rejected with a ``rejected`` update."""
        with self._lock:
            self._rejects.append(reason)

    def fill(self, symbol: str | None = None, price: float | Decimal | str | None = None, fraction: float = 1.0) -> int:
        """Fill the open orders (of ``symbol``, or all) oldest first at ``price`` (default: the set price);
        ``fraction`` < 1 fills that share of each order's remaining quantity as a ``partial_fill``. Returns how
        many orders got an execution."""
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        updates: list[dict[str, Any]] = []
        with self._lock:
            wanted = None if symbol is None else _norm(symbol)
            for order in sorted(self._orders.values(), key=lambda o: o.created_ns):
                if order.status not in OPEN or (wanted is not None and _norm(order.symbol) != wanted):
                    continue
                at = Decimal(str(price)) if price is not None else self._prices.get(_norm(order.symbol))
                if at is None or at <= 0:
                    raise ValueError(f"no price to fill {order.symbol} at: set_price first or pass price")
                update = self._execute(order, at, Decimal(str(fraction)))
                if update is not None:
                    updates.append(update)
        for update in updates:
            self._call(self._publish(update))
        return len(updates)

    def _execute(self, order: _Order, price: Decimal, fraction: Decimal) -> dict[str, Any] | None:
        remaining = order.remaining_qty(price)
        qty = remaining if fraction == 1 else _qty(remaining * fraction)
        if qty <= 0:
            return None
        now = self._now_ns()
        total = order.filled_qty + qty
        paid = (order.filled_avg_price or Decimal(0)) * order.filled_qty + price * qty
        order.filled_avg_price = (paid / total).quantize(QTY_STEP)
        order.filled_qty = total
        order.filled_notional += price * qty
        done = qty == remaining
        order.status = "filled" if done else "partially_filled"
        order.updated_ns = now
        if done:
            order.filled_ns = now
        key = _norm(order.symbol)
        held, avg = self._positions.get(key, (Decimal(0), Decimal(0)))
        signed = qty if order.side == "buy" else -qty
        after = held + signed
        if after == 0:
            self._positions.pop(key, None)
        else:
            if held == 0 or (held > 0) != (after > 0):
                avg = price
            elif (held > 0) == (signed > 0):
                avg = ((held * avg + signed * price) / after).quantize(QTY_STEP)
            self._positions[key] = (after, avg)
        self._cash += -qty * price if order.side == "buy" else qty * price
        execution = str(uuid.uuid4())
        order.executions.append(execution)
        return {
            "event": "fill" if done else "partial_fill",
            "execution_id": execution,
            "order": self._order_json(order),
            "timestamp": _iso(now),
            "price": _text(price),
            "qty": _text(qty),
            "position_qty": _text(after),
        }

    # REST controls ---------------------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 429, retry_after: int = 0) -> None:
        """The next ``count`` authenticated REST requests answer ``status`` (with Retry-After for 429)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def rate_limit(self, per_minute: int | None) -> None:
        """Answer 429 (with Retry-After) to an authenticated request when ``per_minute`` others were served in the
        last 60 seconds; None turns the limit off."""
        with self._lock:
            self._limit = per_minute
            self._window.clear()

    @property
    def rate_limited(self) -> int:
        """How many 429s the rate limit (not ``fail_next``) served."""
        with self._lock:
            return self._rate_limited

    @property
    def requests(self) -> list[RestRequest]:
        with self._lock:
            return list(self._requests)

    def _gate(self, request: web.Request) -> web.Response | None:
        """Authenticate, rate-limit, log and apply injected failures; returns the error reply, if any."""
        reply: web.Response | None = None
        key, secret = request.headers.get("APCA-API-KEY-ID"), request.headers.get("APCA-API-SECRET-KEY")
        with self._lock:
            if key != self.key_id or secret != self.secret_key:
                reply = web.json_response(UNAUTHORIZED, status=401)
            if reply is None and self._limit is not None:
                now = time.monotonic()
                while self._window and now - self._window[0] >= 60:
                    self._window.popleft()
                headers = {"X-RateLimit-Limit": str(self._limit)}
                if len(self._window) >= self._limit:
                    self._rate_limited += 1
                    wait = max(1, math.ceil(60 - (now - self._window[0]))) if self._window else 60
                    headers |= {"Retry-After": str(wait), "X-RateLimit-Remaining": "0"}
                    reply = web.json_response({"code": 42910000, "message": "rate limit exceeded"}, status=429)
                    reply.headers.update(headers)
                else:
                    self._window.append(now)
            if reply is None and self._failures:
                status, retry_after = self._failures.pop(0)
                headers = {"Retry-After": str(retry_after)} if status == 429 else {}
                body = {"code": status * 100000, "message": f"injected {status}"}
                reply = web.json_response(body, status=status, headers=headers)
            request[_LOG_INDEX] = len(self._requests)
            self._requests.append(
                RestRequest(request.method, request.path, dict(request.query), 200 if reply is None else reply.status)
            )
        return reply

    def _answer(self, request: web.Request, reply: web.Response) -> web.Response:
        """Log the status of a reply decided after the gate (a refusal, a 204)."""
        with self._lock:
            at = request[_LOG_INDEX]
            logged = self._requests[at]
            self._requests[at] = RestRequest(logged.method, logged.path, logged.params, reply.status)
        return reply

    # JSON views ------------------------------------------------------------------------------------------------

    def _order_json(self, order: _Order) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": order.id,
            "client_order_id": order.client_order_id,
            "created_at": _iso(order.created_ns),
            "updated_at": _iso(order.updated_ns),
            "submitted_at": _iso(order.created_ns),
            "filled_at": _iso(order.filled_ns),
            "expired_at": None,
            "expires_at": None,
            "canceled_at": _iso(order.canceled_ns),
            "failed_at": _iso(order.failed_ns),
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": order.asset_id,
            "symbol": order.symbol,
            "asset_class": order.asset_class,
            "notional": _text(order.notional),
            "qty": _text(order.qty),
            "filled_qty": _text(order.filled_qty),
            "filled_avg_price": _text(order.filled_avg_price),
            "order_class": "",
            "order_type": "market",
            "type": "market",
            "side": order.side,
            "position_intent": "buy_to_open" if order.side == "buy" else "sell_to_close",
            "time_in_force": order.time_in_force,
            "limit_price": None,
            "stop_price": None,
            "status": order.status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
        }
        if order.reject_reason is not None:
            body["reject_reason"] = order.reject_reason  # not in Alpaca's documented schema; extra fields are ignored
        return body

    def _position_json(self, symbol: str, qty: Decimal, avg: Decimal) -> dict[str, Any]:
        asset = self._assets.get(symbol, {})
        price = self._prices.get(symbol, avg)
        value, basis = qty * price, qty * avg
        pl = value - basis
        return {
            "asset_id": asset.get("id", str(uuid.uuid5(_NAMESPACE, f"asset:{symbol}"))),
            "symbol": asset.get("symbol", symbol),
            "exchange": asset.get("exchange", "NASDAQ"),
            "asset_class": asset.get("class", "us_equity"),
            "asset_marginable": asset.get("marginable", False),
            "qty": _text(qty),
            "qty_available": _text(qty - self._held_for_sells(symbol)),
            "avg_entry_price": _text(avg),
            "side": "long" if qty > 0 else "short",
            "market_value": _text(value),
            "cost_basis": _text(basis),
            "unrealized_pl": _text(pl),
            "unrealized_plpc": _text((pl / basis).quantize(Decimal("0.0000000001"))) if basis else "0",
            "unrealized_intraday_pl": _text(pl),
            "unrealized_intraday_plpc": _text((pl / basis).quantize(Decimal("0.0000000001"))) if basis else "0",
            "current_price": _text(price),
            "lastday_price": _text(price),
            "change_today": "0",
        }

    def _held_for_sells(self, symbol: str) -> Decimal:
        return sum(
            (
                (o.qty or Decimal(0)) - o.filled_qty
                for o in self._orders.values()
                if o.side == "sell" and o.status in OPEN and _norm(o.symbol) == symbol and o.qty is not None
            ),
            Decimal(0),
        )

    def _buying_power(self) -> Decimal:
        held = sum((o.reserved(self._prices.get(_norm(o.symbol))) for o in self._orders.values()), Decimal(0))
        return self._cash - held

    def _account_json(self) -> dict[str, Any]:
        long_value = sum((q * self._prices.get(s, a) for s, (q, a) in self._positions.items() if q > 0), Decimal(0))
        short_value = sum((q * self._prices.get(s, a) for s, (q, a) in self._positions.items() if q < 0), Decimal(0))
        equity = self._cash + long_value + short_value
        power = self._buying_power()
        return {
            "id": self.account_id,
            "account_number": self.account_number,
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": _text(power),
            "regt_buying_power": _text(power),
            "non_marginable_buying_power": _text(power),
            "options_buying_power": _text(power),
            "cash": _text(self._cash),
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "pending_transfer_out": "0",
            "portfolio_value": _text(equity),
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "trade_suspended_by_user": False,
            "created_at": _iso(self._created_ns),
            "multiplier": "1",
            "shorting_enabled": False,
            "equity": _text(equity),
            "last_equity": _text(self._initial_cash),
            "long_market_value": _text(long_value),
            "short_market_value": _text(short_value),
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "options_approved_level": 0,
            "options_trading_level": 0,
        }

    def orders(self) -> list[dict[str, Any]]:
        """Every order, oldest first, as the REST API serves it."""
        with self._lock:
            return [self._order_json(o) for o in sorted(self._orders.values(), key=lambda o: o.created_ns)]

    def positions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._position_json(s, q, a) for s, (q, a) in sorted(self._positions.items())]

    def account(self) -> dict[str, Any]:
        with self._lock:
            return self._account_json()

    # REST handlers ---------------------------------------------------------------------------------------------

    async def _account_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        return reply if reply is not None else web.json_response(self.account())

    async def _positions_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        return reply if reply is not None else web.json_response(self.positions())

    async def _position_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        if reply is not None:
            return reply
        symbol = _norm(request.match_info["symbol"])
        with self._lock:
            held = self._positions.get(symbol)
            if held is None:
                return self._answer(request, _error(404, NOT_FOUND, "position does not exist"))
            return web.json_response(self._position_json(symbol, *held))

    async def _asset_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        if reply is not None:
            return reply
        with self._lock:
            asset = self._assets.get(_norm(request.match_info["symbol"]))
        if asset is None:
            return self._answer(request, _error(404, NOT_FOUND, "asset not found"))
        return web.json_response(asset)

    async def _assets_handler(self, request: web.Request) -> web.Response:
        """``GET /v2/assets`` with the ``status`` and ``asset_class`` filters."""
        reply = self._gate(request)
        if reply is not None:
            return reply
        status, kind = request.query.get("status"), request.query.get("asset_class")
        with self._lock:
            listed = [
                a
                for a in self._assets.values()
                if (status is None or a["status"] == status) and (kind is None or a["class"] == kind)
            ]
        return web.json_response(listed)

    async def _submit_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        if reply is not None:
            return reply
        try:
            body = json.loads(await request.text(), parse_float=Decimal)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            answer, update = self._place(body)
        except ValueError as exc:
            return self._answer(request, _error(422, UNPROCESSABLE, str(exc)))
        if isinstance(answer, web.Response):
            return self._answer(request, answer)
        if update is not None:
            await self._publish(update)
        return web.json_response(answer)

    def _place(self, body: dict[str, Any]) -> tuple[dict[str, Any] | web.Response, dict[str, Any] | None]:
        """Validate and store an order; returns (the POST answer or an error reply, the trade update to send)."""
        symbol = str(body.get("symbol") or "")
        side = str(body.get("side") or "").lower()
        kind = str(body.get("type") or body.get("order_type") or "").lower()
        tif = str(body.get("time_in_force") or "").lower()
        qty, notional = _decimal(body.get("qty"), "qty"), _decimal(body.get("notional"), "notional")
        client_id = str(body.get("client_order_id") or uuid.uuid4())
        if not symbol:
            raise ValueError("symbol is required")
        if side not in ("buy", "sell"):
            raise ValueError(f"invalid side: {side!r}")
        if kind != "market":
            raise ValueError(f"the fake serves market orders only, not {kind!r}")
        if tif not in ("day", "gtc", "ioc", "fok"):
            raise ValueError(f"invalid time_in_force: {tif!r}")
        if (qty is None) == (notional is None):
            raise ValueError("qty or notional is required" if qty is None else "qty and notional cannot both be set")
        amount = qty if qty is not None else notional
        assert amount is not None
        if amount <= 0:
            raise ValueError(f"{'qty' if qty is not None else 'notional'} must be > 0")
        if qty is not None and qty != _qty(qty):
            raise ValueError("qty can have at most 9 decimal places")
        if len(client_id) > 128:
            raise ValueError("client_order_id must be no more than 128 characters")
        with self._lock:
            key = _norm(symbol)
            asset = self._assets.get(key)
            if client_id in self._by_client_id:
                return _error(422, UNPROCESSABLE, "client_order_id must be unique"), None
            if asset is None:
                return _error(422, UNPROCESSABLE, f'asset "{symbol}" not found'), None
            if not asset["tradable"]:
                return _error(422, UNPROCESSABLE, f"asset {symbol} is not tradable"), None
            fractional = notional is not None or (qty is not None and qty != qty.to_integral_value())
            if fractional and not asset["fractionable"]:
                return _error(422, UNPROCESSABLE, f"asset {symbol} is not fractionable"), None
            if fractional and asset["class"] == "us_equity" and tif != "day":
                return _error(422, UNPROCESSABLE, "fractional orders must be DAY orders"), None
            price = self._prices.get(key)
            if side == "sell":
                held = self._positions.get(key, (Decimal(0), Decimal(0)))[0]
                available = held - self._held_for_sells(key)
                wanted = qty if qty is not None else (amount / price if price else None)
                if wanted is None or wanted > available:
                    return _error(
                        403,
                        FORBIDDEN,
                        "insufficient qty available for order",
                        available=_text(available),
                        existing_qty=_text(held),
                        held_for_orders=_text(held - available),
                        symbol=symbol,
                    ), None
            else:
                cost = notional if notional is not None else (qty or Decimal(0)) * (price or Decimal(0))
                power = self._buying_power()
                if cost > power:
                    return _error(
                        403,
                        FORBIDDEN,
                        "insufficient buying power",
                        buying_power=_text(power),
                        cost_basis=_text(cost),
                    ), None
            now = self._now_ns()
            order = _Order(
                id=str(uuid.uuid4()),
                client_order_id=client_id,
                symbol=asset["symbol"],
                asset_id=asset["id"],
                asset_class=asset["class"],
                side=side,
                qty=qty,
                notional=notional,
                time_in_force=tif,
                created_ns=now,
                updated_ns=now,
            )
            self._orders[order.id] = order
            self._by_client_id[client_id] = order.id
            answer = self._order_json(order)
            if self._rejects:
                order.reject_reason = self._rejects.pop(0)
                order.status, event = "rejected", "rejected"
                order.failed_ns = order.updated_ns = self._now_ns()
            else:
                order.status, event = "new", "new"
                order.updated_ns = self._now_ns()
            update = {"event": event, "order": self._order_json(order), "timestamp": _iso(order.updated_ns)}
            return answer, update

    def _select(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        status = params.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise ValueError(f"invalid status: {status!r}")
        after = _parse_time_ns(params["after"]) if params.get("after") else None
        until = _parse_time_ns(params["until"]) if params.get("until") else None
        limit = int(params.get("limit") or ORDERS_DEFAULT_LIMIT)
        if not 1 <= limit <= ORDERS_MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {ORDERS_MAX_LIMIT}")
        direction = params.get("direction", "desc")
        if direction not in ("asc", "desc"):
            raise ValueError(f"invalid direction: {direction!r}")
        symbols = {_norm(s) for s in params.get("symbols", "").split(",") if s.strip()}
        side = params.get("side")
        with self._lock:
            rows = [
                o
                for o in self._orders.values()
                if (status == "all" or (o.status in OPEN) == (status == "open"))
                and (after is None or o.created_ns > after)
                and (until is None or o.created_ns <= until)
                and (not symbols or _norm(o.symbol) in symbols)
                and (side is None or o.side == side)
            ]
            rows.sort(key=lambda o: o.created_ns, reverse=direction == "desc")
            return [self._order_json(o) for o in rows[:limit]]

    async def _orders_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        if reply is not None:
            return reply
        try:
            return web.json_response(self._select(request.query))
        except ValueError as exc:
            return self._answer(request, _error(422, UNPROCESSABLE, str(exc)))

    def _find(self, order_id: str) -> _Order | None:
        with self._lock:
            return self._orders.get(order_id)

    async def _order_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        if reply is not None:
            return reply
        order = self._find(request.match_info["order_id"])
        if order is None:
            return self._answer(request, _error(404, NOT_FOUND, "order not found"))
        with self._lock:
            return web.json_response(self._order_json(order))

    async def _by_client_id_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        if reply is not None:
            return reply
        with self._lock:
            order_id = self._by_client_id.get(request.query.get("client_order_id", ""))
        order = None if order_id is None else self._find(order_id)
        if order is None:
            return self._answer(request, _error(404, NOT_FOUND, "order not found"))
        with self._lock:
            return web.json_response(self._order_json(order))

    async def _cancel_handler(self, request: web.Request) -> web.Response:
        reply = self._gate(request)
        if reply is not None:
            return reply
        with self._lock:
            order = self._orders.get(request.match_info["order_id"])
            if order is None:
                return self._answer(request, _error(404, NOT_FOUND, "order not found"))
            if order.status not in OPEN:
                return self._answer(request, _error(422, 42210000, f'order is already in "{order.status}" state'))
            order.status = "canceled"
            order.canceled_ns = order.updated_ns = self._now_ns()
            update = {"event": "canceled", "order": self._order_json(order), "timestamp": _iso(order.updated_ns)}
        await self._publish(update)
        return self._answer(request, web.Response(status=204))

    # WebSocket -------------------------------------------------------------------------------------------------

    def hold_updates(self) -> None:
        """Keep trade updates back (in order) until ``release_updates``."""
        with self._lock:
            self._holding = True

    def release_updates(self, order: str = "as_is", repeat: bool = False) -> int:
        """Send the held updates, ``as_is`` or ``reversed``, each sequence twice when ``repeat``; stops holding.
        Returns how many were held."""
        if order not in ("as_is", "reversed"):
            raise ValueError("order must be 'as_is' or 'reversed'")
        with self._lock:
            held, self._held, self._holding = self._held, [], False
        batch = held[::-1] if order == "reversed" else held
        self._call(self._send_all(batch * (2 if repeat else 1)))
        return len(held)

    def drop_next_updates(self, n: int) -> None:
        """The next ``n`` trade updates are never sent (the REST state still has them)."""
        with self._lock:
            self._drop += n

    def sent_updates(self) -> list[dict[str, Any]]:
        """The ``data`` of every trade update sent (once per send, not per connection), in order."""
        with self._lock:
            return list(self._sent)

    async def _publish(self, update: dict[str, Any]) -> None:
        with self._lock:
            if self._drop:
                self._drop -= 1
                return
            if self._holding:
                self._held.append(update)
                return
        await self._send_all([update])

    async def _send_all(self, updates: list[dict[str, Any]]) -> None:
        for update in updates:
            with self._lock:
                conns = [c for c in self._conns if c.listening and not c.ws.closed]
                self._sent.append(update)
            frame = {"stream": "trade_updates", "data": update}
            for conn in conns:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._send(conn.ws, frame)

    async def _send(self, ws: web.WebSocketResponse, frame: Mapping[str, Any]) -> None:
        text = json.dumps(frame)
        if self.binary_frames:
            await ws.send_bytes(text.encode())
        else:
            await ws.send_str(text)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        conn = _Connection(ws, request)
        with self._lock:
            self._conns.append(conn)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    text = msg.data
                elif msg.type == WSMsgType.BINARY:
                    text = msg.data.decode(errors="replace")
                else:
                    continue
                if not await self._command(conn, text):
                    break
        finally:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            await ws.close()
        return ws

    async def _command(self, conn: _Connection, text: str) -> bool:
        """Handle one client message; False ends the connection."""
        try:
            command = json.loads(text)
            action, data = command["action"], command.get("data") or {}
        except (ValueError, KeyError, TypeError):
            await self._send(conn.ws, {"stream": "error", "data": {"error_message": "invalid syntax"}})
            return True
        if action in ("authenticate", "auth"):
            with self._lock:
                self.auth_attempts += 1
            ok = data.get("key_id") == self.key_id and data.get("secret_key") == self.secret_key
            status = "authorized" if ok else "unauthorized"
            await self._send(conn.ws, {"stream": "authorization", "data": {"action": "authenticate", "status": status}})
            conn.authed = ok
            return ok
        if not conn.authed:
            await self._send(
                conn.ws,
                {"stream": "authorization", "data": {"action": action, "status": "unauthorized"}},
            )
            return True
        if action == "listen":
            streams = [str(s) for s in data.get("streams", [])]
            with self._lock:
                conn.listening = "trade_updates" in streams
            await self._send(conn.ws, {"stream": "listening", "data": {"streams": streams}})
            return True
        await self._send(conn.ws, {"stream": "error", "data": {"error_message": f"unknown action: {action}"}})
        return True

    def drop_stream(self) -> int:
        """Abort every stream connection (no close frame), as a network failure would; returns how many."""

        async def drop() -> int:
            with self._lock:
                conns, self._conns = list(self._conns), []
            for conn in conns:
                if conn.request.transport is not None:
                    conn.request.transport.abort()
            return len(conns)

        return self._call(drop())

    def listeners(self) -> int:
        """Connections authenticated and listening to ``trade_updates``."""
        with self._lock:
            return sum(1 for c in self._conns if c.listening and not c.ws.closed)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fakes.alpaca", description="Run a fake Alpaca server until Ctrl-C."
    )
    parser.add_argument("--key-id", default="fake-alpaca-key")
    parser.add_argument("--secret-key", default="fake-alpaca-secret")
    parser.add_argument("--cash", default="100000")
    parser.add_argument("--asset", action="append", default=[], help="SYMBOL[=PRICE], repeatable")
    args = parser.parse_args()
    with FakeAlpaca(args.key_id, args.secret_key, cash=Decimal(args.cash)) as fake:
        for spec in args.asset:
            symbol, _, price = spec.partition("=")
            fake.add_asset(symbol)
            if price:
                fake.set_price(symbol, price)
        print(f"REST {fake.rest_url}  stream {fake.stream_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
