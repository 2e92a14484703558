"""``AlpacaBroker``: the ``Broker`` contract over alpaca-py's ``TradingClient`` (REST) and ``TradingStream``
(``trade_updates`` WebSocket).

What it changes in alpaca-py's behaviour, and why:

- No hidden retries. ``RESTClient`` retries 429 and 504 itself (3 times, a fixed 3 s sleep, ``Retry-After``
  ignored) and ``TradingClient`` has no argument to turn that off (``retry_attempts`` lives on ``RESTClient`` only,
  and 0 there means "the default"), so ``_retry`` is set to 0: every 429 comes back as ``RateLimited`` (with the
  server's ``Retry-After``) and every 5xx as ``BrokerUnavailable``, and the caller paces the retries.
- A bounded wait: requests are sent with a timeout (alpaca-py sends none, so a hung connection would block forever).
- Exact decimals: orders are posted with ``qty``/``notional`` as decimal strings (alpaca-py's ``MarketOrderRequest``
  holds them as floats), trade-update ``price``/``qty``/``position_qty`` are read from the raw frame (its
  ``TradeUpdate`` model holds floats) and its timestamp keeps nanoseconds (the pydantic models keep microseconds).
- Credentials never reach a message or a log line: error messages are built here (status, Alpaca's code and
  message, with the key and secret masked should the server echo them) and raised without the alpaca-py exception
  chained (its request object holds the headers); the ``websockets`` logger, which at DEBUG prints every frame
  including the ``authenticate`` one with the secret, gets a logger of its own held at INFO.
- The stream runs ``TradingStream._run_forever`` as a task on a loop of our own in a daemon thread, so ``close``
  cancels it at once (``TradingStream.stop`` only takes effect after the current ``recv``, up to 5 s) and a stream
  whose key is refused (alpaca-py retries that forever with back-off) surfaces as ``CredentialsRefused`` from
  ``updates``. alpaca-py reconnects a dropped stream itself (back-off from 0.5-1 s, doubling to 30 s); trade
  updates sent while it is away are lost, as at the real broker, so a consumer reconciles with ``orders``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetStatus, QueryOrderStatus
from alpaca.trading.models import Asset as AlpacaAsset
from alpaca.trading.models import Order, Position, TradeAccount
from alpaca.trading.requests import GetAssetsRequest, GetOrdersRequest
from alpaca.trading.stream import TradingStream
from pydantic import ValidationError

from connectors.broker import (
    SIDES,
    Asset,
    BrokerAccount,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    BrokerUnavailable,
    CredentialsRefused,
    DuplicateClientOrderId,
    OrderRefused,
    OrderRequest,
    RateLimited,
    TradeUpdate,
)

T = TypeVar("T")

log = logging.getLogger(__name__)
_WS_LOG = logging.getLogger("connectors.alpaca.websocket")
_WS_LOG.setLevel(logging.INFO)  # websockets logs each frame at DEBUG, the authenticate frame (with the secret) too

KEY_VARIABLE = "TIDEMARK_ALPACA_KEY_ID"
SECRET_VARIABLE = "TIDEMARK_ALPACA_SECRET_KEY"
DUPLICATE = "client_order_id must be unique"
ORDER_FORBIDDEN = 40310000
"""Alpaca's code for a 403 about the order (quantity or buying power), not the key."""
DEFAULT_RETRY_AFTER_S = 1.0

ORDER_STATUSES = frozenset(
    {
        "NEW",
        "ACCEPTED",
        "PENDING_NEW",
        "ACCEPTED_FOR_BIDDING",
        "PARTIALLY_FILLED",
        "FILLED",
        "DONE_FOR_DAY",
        "CANCELED",
        "EXPIRED",
        "REPLACED",
        "PENDING_CANCEL",
        "PENDING_REPLACE",
        "STOPPED",
        "REJECTED",
        "SUSPENDED",
        "CALCULATED",
    }
)
"""The ``OrderStatus`` Avro symbols (besides UNKNOWN, which any other Alpaca status maps to)."""
ORDER_EVENTS = frozenset(
    {
        "NEW",
        "ACCEPTED",
        "PENDING_NEW",
        "FILL",
        "PARTIAL_FILL",
        "CANCELED",
        "EXPIRED",
        "DONE_FOR_DAY",
        "REPLACED",
        "REJECTED",
        "STOPPED",
        "SUSPENDED",
        "CALCULATED",
        "PENDING_CANCEL",
        "PENDING_REPLACE",
        "ORDER_CANCEL_REJECTED",
        "ORDER_REPLACE_REJECTED",
    }
)
"""The ``OrderEvent`` Avro symbols (besides UNKNOWN, e.g. for Alpaca's ``restated``)."""
ASSET_CLASSES = {"us_equity": "EQUITY", "crypto": "CRYPTO", "crypto_perp": "CRYPTO", "us_option": "OPTION"}

_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# mapping ---------------------------------------------------------------------------------------------------------


def _symbol(value: Any) -> str:
    """An alpaca-py enum member or a plain string, as an upper-case Avro symbol."""
    return str(getattr(value, "value", value) or "").upper()


def _enum(value: Any, allowed: frozenset[str]) -> str:
    symbol = _symbol(value)
    return symbol if symbol in allowed else "UNKNOWN"


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BrokerError(f"Alpaca sent a number that is not one: {str(value)[:40]!r}") from None


def _ns(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _parse_ns(text: str) -> int:
    """An RFC 3339 timestamp to UTC nanoseconds, keeping all nine fraction digits."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:40]!r}")
    whole, digits, offset = match.groups()
    zone = "+00:00" if offset in (None, "Z") else offset
    seconds = int(datetime.fromisoformat(whole + zone).timestamp())
    return seconds * 1_000_000_000 + int((digits or "0")[:9].ljust(9, "0"))


def _from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def order_from_alpaca(order: Order, reject_reason: str | None = None) -> BrokerOrder:
    filled = _dec(order.filled_qty) or Decimal(0)
    created = _ns(order.created_at)
    assert created is not None
    return BrokerOrder(
        order_id=str(order.id),
        client_order_id=order.client_order_id,
        symbol=order.symbol or "",
        side=_symbol(order.side),
        qty=_dec(order.qty),
        notional=_dec(order.notional),
        order_type=_symbol(order.type or order.order_type) or "UNKNOWN",
        time_in_force=_symbol(order.time_in_force),
        status=_enum(order.status, ORDER_STATUSES),
        filled_qty=filled,
        filled_avg_price=_dec(order.filled_avg_price) if filled else None,
        created_at_ns=created,
        updated_at_ns=_ns(order.updated_at),
        submitted_at_ns=_ns(order.submitted_at),
        filled_at_ns=_ns(order.filled_at),
        reject_reason=reject_reason,
    )


def update_from_alpaca(data: Mapping[str, Any]) -> TradeUpdate:
    """One ``trade_updates`` frame's ``data`` (raw JSON: its decimals and nanoseconds are kept)."""
    raw_order = data["order"]
    execution = data.get("execution_id")
    return TradeUpdate(
        event=_enum(data.get("event"), ORDER_EVENTS),
        order=order_from_alpaca(Order(**raw_order), raw_order.get("reject_reason")),
        timestamp_ns=_parse_ns(str(data["timestamp"])),
        price=_dec(data.get("price")),
        qty=_dec(data.get("qty")),
        position_qty=_dec(data.get("position_qty")),
        execution_id=None if execution is None else str(execution),
    )


def position_from_alpaca(position: Position) -> BrokerPosition:
    qty = abs(_dec(position.qty) or Decimal(0))
    return BrokerPosition(
        symbol=position.symbol,
        qty=-qty if _symbol(position.side) == "SHORT" else qty,
        avg_entry_price=_dec(position.avg_entry_price) or Decimal(0),
        asset_class=ASSET_CLASSES.get(_symbol(position.asset_class).lower(), "UNKNOWN"),
        market_value=_dec(position.market_value),
        current_price=_dec(position.current_price),
        cost_basis=_dec(position.cost_basis),
        unrealized_pl=_dec(position.unrealized_pl),
    )


def asset_from_alpaca(asset: AlpacaAsset) -> Asset:
    return Asset(
        symbol=asset.symbol,
        asset_class=ASSET_CLASSES.get(_symbol(asset.asset_class).lower(), "UNKNOWN"),
        tradable=bool(asset.tradable) and _symbol(asset.status) == "ACTIVE",
        fractionable=bool(asset.fractionable),
    )


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds from ``now_s``: delta-seconds or an HTTP date; None when absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - now_s)
    return seconds if seconds >= 0 else None


# the client ------------------------------------------------------------------------------------------------------


class _TimeoutSession(requests.Session):
    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


class _Stream(TradingStream):
    """``TradingStream`` that remembers whether its key was refused and whether it is listening."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auth_refused = False
        self.listening = threading.Event()

    async def _auth(self) -> None:
        self.listening.clear()
        try:
            await super()._auth()  # type: ignore[no-untyped-call]
        except ValueError:
            self.auth_refused = True
            raise
        self.auth_refused = False

    async def _subscribe_trade_updates(self) -> None:
        await super()._subscribe_trade_updates()
        self.listening.set()

    async def close(self) -> None:
        self.listening.clear()
        await super().close()


class AlpacaBroker:
    """One Alpaca account. REST calls are synchronous and serialised; trade updates arrive on a daemon thread that
    starts with the first ``updates`` (or ``start_updates``) call, so a REST-only use (a CLI check) opens no stream
    (Alpaca may hold only one trade-updates connection per key)."""

    name = "alpaca"
    rate_limited = True
    page_size = 500
    """Orders per ``GET /v2/orders`` page (Alpaca's maximum)."""

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        paper: bool = True,
        rest_url: str | None = None,
        stream_url: str | None = None,
        account_id: str | None = None,
        *,
        request_timeout_s: float = 10.0,
    ) -> None:
        """``account_id``: the id events carry for this account (default: Alpaca's account number)."""
        if not key_id or not secret_key:
            missing = KEY_VARIABLE if not key_id else SECRET_VARIABLE
            raise CredentialsRefused(f"no Alpaca key: set {missing}", variable=missing)
        self._secrets = (key_id, secret_key)
        self._paper = paper
        self._account_id = account_id
        self._client = TradingClient(key_id, secret_key, paper=paper, url_override=rest_url)
        self._client._retry = 0  # alpaca-py would retry 429/504 itself, sleeping 3 s each time
        self._client._session = _TimeoutSession(request_timeout_s)
        self._rest_lock = threading.Lock()
        self._updates: queue.Queue[TradeUpdate] = queue.Queue()
        self.malformed_updates = 0
        self._stream = _Stream(
            key_id,
            secret_key,
            paper=paper,
            raw_data=True,
            url_override=stream_url,
            websocket_params={"ping_interval": 10, "ping_timeout": 180, "max_queue": 1024, "logger": _WS_LOG},
        )
        self._stream.subscribe_trade_updates(self._on_update)
        self._stream_thread: threading.Thread | None = None
        self._stream_loop: asyncio.AbstractEventLoop | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._stream_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"AlpacaBroker(paper={self._paper}, account_id={self._account_id!r})"

    # errors ------------------------------------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, exc: APIError, refusal: type[BrokerError], what: str) -> BrokerError:
        status = exc.status_code
        try:
            body = json.loads(str(exc))
            code, detail = body.get("code"), str(body.get("message", ""))
        except (ValueError, AttributeError):
            code, detail = None, str(exc)[:200]
        detail = self._mask(detail)
        described = f"{what}: HTTP {status}" + (f" code {code}" if code is not None else "") + f": {detail}"
        if status == 401 or (status == 403 and code != ORDER_FORBIDDEN):
            return CredentialsRefused(
                f"Alpaca refused the key ({described}); check {KEY_VARIABLE} and {SECRET_VARIABLE}",
                variable=KEY_VARIABLE,
            )
        if status == 429:
            headers = exc.response.headers if exc.response is not None else {}
            wait = parse_retry_after(headers.get("Retry-After"), time.time())
            return RateLimited(f"Alpaca rate limit ({described})", DEFAULT_RETRY_AFTER_S if wait is None else wait)
        if status is None or status >= 500 or status == 408:
            return BrokerUnavailable(f"Alpaca is unavailable ({described})")
        if status == 422 and DUPLICATE in detail:
            return DuplicateClientOrderId(f"Alpaca already holds this client_order_id ({described})")
        return refusal(f"Alpaca refused {described}")

    def _call(self, what: str, call: Callable[[], T], refusal: type[BrokerError] = BrokerError) -> T:
        """Run one alpaca-py call, its failures as our errors (never chained: alpaca-py's hold the request)."""
        found = self._call_or_none(what, call, refusal, missing_ok=False)
        return found  # type: ignore[return-value]

    def _call_or_none(
        self, what: str, call: Callable[[], T], refusal: type[BrokerError] = BrokerError, missing_ok: bool = True
    ) -> T | None:
        """``_call``, with None for a 404 when ``missing_ok``."""
        error: BrokerError
        try:
            with self._rest_lock:
                return call()
        except APIError as exc:
            if missing_ok and exc.status_code == 404:
                return None
            error = self._error(exc, refusal, what)
        except requests.RequestException as exc:
            error = BrokerUnavailable(f"Alpaca is unreachable ({what}: {type(exc).__name__}: {self._mask(str(exc))})")
        except ValidationError as exc:
            error = BrokerError(f"Alpaca's answer to {what} does not parse ({exc.error_count()} errors)")
        raise error

    # REST --------------------------------------------------------------------------------------------------------

    def account(self) -> BrokerAccount:
        account = self._call("get account", self._client.get_account)
        assert isinstance(account, TradeAccount)
        return BrokerAccount(
            account_id=self._account_id or account.account_number,
            currency=account.currency or "USD",
            cash=_dec(account.cash) or Decimal(0),
            buying_power=_dec(account.buying_power) or Decimal(0),
            equity=_dec(account.equity) or Decimal(0),
            last_equity=_dec(account.last_equity),
            long_market_value=_dec(account.long_market_value),
            short_market_value=_dec(account.short_market_value),
            trading_blocked=bool(account.trading_blocked or account.account_blocked or account.trade_suspended_by_user),
            paper=self._paper,
        )

    def positions(self) -> list[BrokerPosition]:
        positions = self._call("get positions", self._client.get_all_positions)
        assert isinstance(positions, list)
        return [position_from_alpaca(p) for p in positions]

    def asset(self, symbol: str) -> Asset | None:
        asset = self._call_or_none(f"get asset {symbol}", lambda: self._client.get_asset(symbol))
        if asset is None:
            return None
        assert isinstance(asset, AlpacaAsset)
        return asset_from_alpaca(asset)

    def assets(self) -> dict[str, Asset]:
        """Every active asset in one request (``GET /v2/assets?status=active``)."""
        listed = self._call(
            "list assets", lambda: self._client.get_all_assets(GetAssetsRequest(status=AssetStatus.ACTIVE))
        )
        assert isinstance(listed, list)
        return {a.symbol: asset_from_alpaca(a) for a in listed}

    def submit(self, request: OrderRequest) -> BrokerOrder:
        """Place a market order. After ``BrokerUnavailable`` the order may or may not have been placed: look it up
        with ``order_by_client_id`` before placing it again."""
        if (request.qty is None) == (request.notional is None):
            raise OrderRefused("an order needs exactly one of qty and notional")
        if request.side not in SIDES:
            raise OrderRefused(f"unknown side {request.side!r}")
        if request.order_type != "MARKET":
            raise OrderRefused(f"only MARKET orders are supported, not {request.order_type}")
        body: dict[str, str] = {
            "symbol": request.symbol,
            "side": request.side.lower(),
            "type": "market",
            "time_in_force": request.time_in_force.lower(),
            "client_order_id": request.client_order_id,
        }
        if request.qty is not None:
            body["qty"] = format(request.qty, "f")
        else:
            assert request.notional is not None
            body["notional"] = format(request.notional, "f")
        what = f"order {request.client_order_id} ({request.side} {request.symbol})"
        raw = self._call(what, lambda: self._client.post("/orders", body), OrderRefused)
        assert isinstance(raw, dict)
        return self._call(what, lambda: order_from_alpaca(Order(**raw)))

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        order = self._call_or_none(
            f"get order {client_order_id}", lambda: self._client.get_order_by_client_id(client_order_id)
        )
        if order is None:
            return None
        assert isinstance(order, Order)
        return order_from_alpaca(order)

    def orders(self, after_ns: int | None = None) -> list[BrokerOrder]:
        """Every order created after ``after_ns``, oldest first, page by page (``after`` is re-sent from the last
        order of a page, at the microsecond Alpaca's models keep; the overlap is dropped by order id)."""
        found: dict[str, BrokerOrder] = {}
        after = after_ns
        while True:
            query = GetOrdersRequest(
                status=QueryOrderStatus.ALL,
                direction=Sort.ASC,
                limit=self.page_size,
                nested=False,
                after=None if after is None else _from_ns(after),
            )
            page = self._call("list orders", lambda q=query: self._client.get_orders(q))  # type: ignore[misc]
            assert isinstance(page, list)
            fresh = [order_from_alpaca(o) for o in page if str(o.id) not in found]
            for order in fresh:
                found[order.order_id] = order
            if len(page) < self.page_size or not fresh:
                break
            after = max(o.created_at_ns for o in fresh)
        chosen = [o for o in found.values() if after_ns is None or o.created_at_ns > after_ns]
        return sorted(chosen, key=lambda o: (o.created_at_ns, o.order_id))

    def cancel(self, order_id: str) -> None:
        """Ask Alpaca to cancel an open order (the ``CANCELED`` update follows on the stream); ``OrderRefused``
        when it is unknown or no longer open."""
        try:
            uuid.UUID(order_id)
        except ValueError:
            raise OrderRefused(f"not an Alpaca order id: {order_id[:64]!r}") from None
        self._call(f"cancel order {order_id}", lambda: self._client.cancel_order_by_id(order_id), OrderRefused)

    # trade updates -----------------------------------------------------------------------------------------------

    async def _on_update(self, message: Mapping[str, Any]) -> None:
        try:
            update = update_from_alpaca(message["data"])
        except (KeyError, TypeError, ValueError, ValidationError, BrokerError) as exc:
            self.malformed_updates += 1
            log.warning("dropped a trade update that does not parse (%s)", type(exc).__name__)
            return
        self._updates.put(update)

    def start_updates(self) -> None:
        """Connect the trade-updates stream (idempotent; ``updates`` calls it)."""
        with self._stream_lock:
            if self._closed:
                raise BrokerError("the Alpaca broker is closed")
            if self._stream_thread is not None:
                return
            ready = threading.Event()
            self._stream_thread = threading.Thread(
                target=self._run_stream, args=(ready,), name="alpaca-trade-updates", daemon=True
            )
            self._stream_thread.start()
            ready.wait(10)

    @property
    def listening(self) -> bool:
        """True while the stream is authenticated and subscribed to trade updates."""
        return self._stream.listening.is_set()

    def _run_stream(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        task = loop.create_task(self._stream._run_forever())  # type: ignore[no-untyped-call]
        self._stream_loop, self._stream_task = loop, task
        ready.set()
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.error("the Alpaca trade stream stopped: %s", type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(self._stream.close())
            loop.close()

    def updates(self, timeout_s: float) -> list[TradeUpdate]:
        self.start_updates()
        received: list[TradeUpdate] = []
        try:
            first = self._updates.get(timeout=timeout_s) if timeout_s > 0 else self._updates.get_nowait()
        except queue.Empty:
            if self._stream.auth_refused:
                raise CredentialsRefused(
                    f"Alpaca refused the key on the trade-updates stream; check {KEY_VARIABLE} and {SECRET_VARIABLE}",
                    variable=KEY_VARIABLE,
                ) from None
            return received
        received.append(first)
        while True:
            try:
                received.append(self._updates.get_nowait())
            except queue.Empty:
                return received

    def close(self) -> None:
        """Stop the stream (within a few seconds at most) and release the HTTP connections; idempotent."""
        with self._stream_lock:
            self._closed = True
            thread, loop, task = self._stream_thread, self._stream_loop, self._stream_task
        if thread is not None and loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
            thread.join(5)
        self._client._session.close()

    def __enter__(self) -> AlpacaBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
