"""The fake Alpaca server against the official alpaca-py client (REST) and a plain WebSocket client (the stream's
wire protocol), over real loopback sockets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import TradeUpdate
from alpaca.trading.requests import GetOrdersRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from fakes.alpaca import FakeAlpaca
from tests.services import eventually

KEY, SECRET = "test-key-id", "test-secret-key"


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca(KEY, SECRET, cash=10_000) as server:
        server.add_asset("AAPL")
        server.set_price("AAPL", "100")
        server.add_asset("BRK.A", fractionable=False)
        server.set_price("BRK.A", "1000")
        server.add_asset("OTCX", tradable=False)
        server.add_asset("BTC/USD", asset_class="crypto")
        yield server


@pytest.fixture
def client(fake: FakeAlpaca) -> TradingClient:
    trading = TradingClient(KEY, SECRET, paper=True, url_override=fake.rest_url)
    trading._retry = 0  # alpaca-py's own 429/504 retries, tested on their own below
    return trading


def market(symbol: str, side: str = "buy", client_order_id: str | None = None, **amount: float) -> MarketOrderRequest:
    return MarketOrderRequest(
        symbol=symbol,
        side=OrderSide(side),
        time_in_force=TimeInForce.DAY,
        client_order_id=client_order_id,
        **amount,
    )


def refusal(call: Any) -> tuple[int | None, int, str]:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value.status_code, caught.value.code, caught.value.message


# REST ------------------------------------------------------------------------------------------------------------


def test_account_positions_and_assets_parse_as_alpaca_models(fake: FakeAlpaca, client: TradingClient) -> None:
    account = client.get_account()
    assert account.status == "ACTIVE" and account.currency == "USD" and account.trading_blocked is False
    assert Decimal(account.cash) == Decimal(account.equity) == Decimal(account.buying_power) == 10_000
    assert account.account_number == fake.account_number
    assert client.get_all_positions() == []
    asset = client.get_asset("BRK.A")
    assert (asset.symbol, asset.tradable, asset.fractionable, asset.asset_class) == ("BRK.A", True, False, "us_equity")
    assert client.get_asset("BTC/USD").asset_class == "crypto"
    assert refusal(lambda: client.get_asset("NOPE"))[0] == 404
    assert refusal(lambda: client.get_open_position("AAPL"))[0] == 404


def test_a_wrong_or_missing_key_gets_401(fake: FakeAlpaca) -> None:
    wrong = TradingClient(KEY, "not-the-secret", paper=True, url_override=fake.rest_url)
    assert refusal(wrong.get_account) == (401, 40110000, "request is not authorized")
    assert [(r.method, r.path, r.status) for r in fake.requests] == [("GET", "/v2/account", 401)]
    assert SECRET not in repr(fake.requests)


def test_orders_are_accepted_then_new_and_a_repeated_client_order_id_is_refused(
    fake: FakeAlpaca, client: TradingClient
) -> None:
    placed = client.submit_order(market("AAPL", client_order_id="c-1", qty=2))
    assert placed.status == OrderStatus.PENDING_NEW and placed.client_order_id == "c-1" and placed.qty == "2"
    assert client.get_order_by_id(placed.id).status == OrderStatus.NEW
    assert refusal(lambda: client.submit_order(market("AAPL", client_order_id="c-1", qty=1))) == (
        422,
        40010001,
        "client_order_id must be unique",
    )
    assert client.get_order_by_client_id("c-1").id == placed.id
    assert refusal(lambda: client.get_order_by_client_id("c-404"))[0] == 404
    assert len(fake.orders()) == 1


@pytest.mark.parametrize(
    ("order", "status", "message"),
    [
        (market("NOPE", qty=1), 422, 'asset "NOPE" not found'),
        (market("OTCX", qty=1), 422, "asset OTCX is not tradable"),
        (market("BRK.A", notional=500), 422, "asset BRK.A is not fractionable"),
        (market("BRK.A", qty=0.5), 422, "asset BRK.A is not fractionable"),
        (market("AAPL", "sell", qty=1), 403, "insufficient qty available for order"),
        (market("AAPL", qty=101), 403, "insufficient buying power"),
        (market("AAPL", notional=10_001), 403, "insufficient buying power"),
    ],
)
def test_refusals(client: TradingClient, order: MarketOrderRequest, status: int, message: str) -> None:
    got_status, code, got_message = refusal(lambda: client.submit_order(order))
    assert (got_status, got_message) == (status, message)
    assert code == (40010001 if status == 422 else 40310000)


def test_open_orders_hold_buying_power_and_quantity(fake: FakeAlpaca, client: TradingClient) -> None:
    client.submit_order(market("AAPL", qty=60))
    assert Decimal(client.get_account().buying_power) == 4_000 and Decimal(client.get_account().cash) == 10_000
    assert refusal(lambda: client.submit_order(market("AAPL", qty=41)))[0] == 403
    fake.fill()
    client.submit_order(market("AAPL", "sell", qty=50))
    assert refusal(lambda: client.submit_order(market("AAPL", "sell", qty=11)))[2] == (
        "insufficient qty available for order"
    )
    assert client.get_open_position("AAPL").qty_available == "10"


def test_fills_move_cash_positions_and_equity(fake: FakeAlpaca, client: TradingClient) -> None:
    buy = client.submit_order(market("AAPL", qty=10))
    assert fake.fill(fraction=0.4) == 1
    partial = client.get_order_by_id(buy.id)
    assert (partial.status, partial.filled_qty, partial.filled_avg_price) == (OrderStatus.PARTIALLY_FILLED, "4", "100")
    fake.fill(price="110")
    done = client.get_order_by_id(buy.id)
    assert (done.status, done.filled_qty, done.filled_avg_price) == (OrderStatus.FILLED, "10", "106")
    assert done.filled_at is not None
    notional = client.submit_order(market("AAPL", notional=220))
    fake.set_price("AAPL", "110")
    fake.fill("AAPL")
    filled = client.get_order_by_id(notional.id)
    assert (filled.qty, filled.notional, filled.filled_qty, filled.filled_avg_price) == (None, "220", "2", "110")
    position = client.get_open_position("AAPL")
    assert (position.qty, position.side, Decimal(position.avg_entry_price)) == ("12", "long", Decimal("106.666666667"))
    assert (position.market_value, position.current_price) == ("1320", "110")
    account = client.get_account()
    assert Decimal(account.cash) == 10_000 - 400 - 660 - 220
    assert Decimal(account.equity) == Decimal(account.cash) + 1320 == Decimal(fake.account()["equity"])
    client.submit_order(market("AAPL", "sell", qty=12))
    fake.fill(price="120")
    assert client.get_all_positions() == [] and Decimal(client.get_account().cash) == 10_000 - 1280 + 1440


def test_order_listing_filters_sorts_and_limits(fake: FakeAlpaca, client: TradingClient) -> None:
    ids = [client.submit_order(market("AAPL", client_order_id=f"o-{i}", qty=1)).client_order_id for i in range(4)]
    fake.fill()
    client.submit_order(market("AAPL", client_order_id="o-open", qty=1))

    def listed(**query: Any) -> list[str]:
        return [o.client_order_id for o in client.get_orders(GetOrdersRequest(**query))]

    assert listed() == ["o-open"]  # default: open only, newest first
    assert listed(status=QueryOrderStatus.CLOSED, direction="asc") == ids
    assert listed(status=QueryOrderStatus.ALL, limit=2) == ["o-open", "o-3"]
    orders = fake.orders()
    second = datetime.fromisoformat(orders[1]["submitted_at"])
    assert listed(status=QueryOrderStatus.ALL, direction="asc", after=second) == ["o-2", "o-3", "o-open"]
    assert listed(status=QueryOrderStatus.ALL, direction="asc", until=second) == ["o-0", "o-1"]
    assert listed(status=QueryOrderStatus.ALL, after=datetime.now(UTC) + timedelta(days=1)) == []


def test_cancel_open_orders_only(fake: FakeAlpaca, client: TradingClient) -> None:
    order = client.submit_order(market("AAPL", qty=1))
    client.cancel_order_by_id(order.id)
    assert client.get_order_by_id(order.id).status == OrderStatus.CANCELED
    assert refusal(lambda: client.cancel_order_by_id(order.id))[:2] == (422, 42210000)
    filled = client.submit_order(market("AAPL", qty=1))
    fake.fill()
    assert refusal(lambda: client.cancel_order_by_id(filled.id))[2] == 'order is already in "filled" state'
    assert refusal(lambda: client.cancel_order_by_id("00000000-0000-0000-0000-000000000000"))[0] == 404
    assert [r.status for r in fake.requests if r.method == "DELETE"] == [204, 422, 422, 404]


def test_reject_next_accepts_then_rejects(fake: FakeAlpaca, client: TradingClient) -> None:
    fake.reject_next("halted")
    order = client.submit_order(market("AAPL", qty=1))
    assert order.status == OrderStatus.PENDING_NEW
    assert client.get_order_by_id(order.id).status == OrderStatus.REJECTED
    assert fake.orders()[0]["reject_reason"] == "halted"
    assert fake.fill() == 0


def test_alpaca_py_retries_429_and_504_itself_but_not_500(fake: FakeAlpaca) -> None:
    default = TradingClient(KEY, SECRET, paper=True, url_override=fake.rest_url)
    assert (default._retry, default._retry_wait, default._retry_codes) == (3, 3, [429, 504])
    default._retry_wait = 0  # it sleeps a fixed 3 s between tries, whatever Retry-After says
    fake.fail_next(2, status=429, retry_after=30)
    fake.fail_next(1, status=504)
    assert default.get_account().status == "ACTIVE"
    assert [r.status for r in fake.requests] == [429, 429, 504, 200]
    fake.fail_next(1, status=500)
    assert refusal(default.get_account)[0] == 500


def test_rate_limit_answers_429_with_retry_after(fake: FakeAlpaca, client: TradingClient) -> None:
    fake.rate_limit(3)
    for _ in range(3):
        client.get_account()
    with pytest.raises(APIError) as caught:
        client.get_account()
    assert caught.value.status_code == 429
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60
    assert caught.value.response.headers["X-RateLimit-Limit"] == "3"
    assert fake.rate_limited == 1
    fake.rate_limit(None)
    client.get_account()
    assert [r.status for r in fake.requests] == [200, 200, 200, 429, 200]


def test_fail_next_injects_statuses(fake: FakeAlpaca, client: TradingClient) -> None:
    fake.fail_next(1, status=503)
    fake.fail_next(1, status=429, retry_after=7)
    assert refusal(client.get_account)[0] == 503
    with pytest.raises(APIError) as caught:
        client.get_all_positions()
    assert (caught.value.status_code, caught.value.response.headers["Retry-After"]) == (429, "7")
    assert client.get_all_positions() == []


def test_set_position_is_an_outside_change(fake: FakeAlpaca, client: TradingClient) -> None:
    fake.set_position("AAPL", "5", "90")
    position = client.get_open_position("AAPL")
    assert (position.qty, position.avg_entry_price, position.unrealized_pl) == ("5", "90", "50")
    assert Decimal(client.get_account().cash) == 10_000
    fake.set_position("AAPL", 0, 0)
    assert client.get_all_positions() == []


# stream ----------------------------------------------------------------------------------------------------------


def frame(ws: ClientConnection) -> dict[str, Any]:
    data = ws.recv(timeout=5)
    assert isinstance(data, bytes), "Alpaca's trading stream sends binary frames"
    message: dict[str, Any] = json.loads(data)
    return message


@contextmanager
def listen(fake: FakeAlpaca) -> Iterator[ClientConnection]:
    """A plain WebSocket client through the handshake alpaca-py's ``TradingStream`` does."""
    with connect(fake.stream_url) as ws:
        ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}))
        assert frame(ws) == {"stream": "authorization", "data": {"action": "authenticate", "status": "authorized"}}
        ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert frame(ws) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
        yield ws


def events(ws: ClientConnection, n: int) -> list[tuple[str, str]]:
    """The next ``n`` trade updates as (event, client_order_id)."""
    got = []
    for _ in range(n):
        message = frame(ws)
        assert message["stream"] == "trade_updates"
        got.append((message["data"]["event"], message["data"]["order"]["client_order_id"]))
    return got


def test_stream_handshake_and_a_refused_key(fake: FakeAlpaca) -> None:
    with connect(fake.stream_url) as ws:
        ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": "wrong"}}))
        assert frame(ws)["data"] == {"action": "authenticate", "status": "unauthorized"}
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    with listen(fake):
        assert fake.listeners() == 1
    assert fake.auth_attempts == 2
    eventually(lambda: fake.listeners() == 0, timeout=5)


def test_trade_updates_carry_the_fill_and_the_full_order(fake: FakeAlpaca, client: TradingClient) -> None:
    with listen(fake) as ws:
        client.submit_order(market("AAPL", client_order_id="s-1", qty=3))
        assert events(ws, 1) == [("new", "s-1")]
        fake.fill(fraction=0.5)
        message = frame(ws)
        update = TradeUpdate(**message["data"])  # alpaca-py's own model parses it
        assert (update.event, update.price, update.qty, update.position_qty) == ("partial_fill", 100, 1.5, 1.5)
        assert update.execution_id is not None and update.order.filled_qty == "1.5"
        assert message["data"]["timestamp"].endswith("Z")
        fake.fill()
        last = frame(ws)["data"]
        assert (last["event"], last["qty"], last["position_qty"], last["order"]["status"]) == (
            "fill",
            "1.5",
            "3",
            "filled",
        )
        assert last["execution_id"] != message["data"]["execution_id"]
        assert len(fake.sent_updates()) == 3


def test_held_updates_are_released_reversed_and_repeated(fake: FakeAlpaca, client: TradingClient) -> None:
    with listen(fake) as ws:
        fake.hold_updates()
        for name in ("h-1", "h-2"):
            client.submit_order(market("AAPL", client_order_id=name, qty=1))
        assert fake.release_updates("reversed", repeat=True) == 2
        assert events(ws, 4) == [("new", "h-2"), ("new", "h-1")] * 2
        client.submit_order(market("AAPL", client_order_id="h-3", qty=1))  # no longer held
        assert events(ws, 1) == [("new", "h-3")]


def test_dropped_updates_are_never_sent_but_the_state_has_them(fake: FakeAlpaca, client: TradingClient) -> None:
    with listen(fake) as ws:
        fake.drop_next_updates(2)
        client.submit_order(market("AAPL", client_order_id="d-1", qty=1))
        fake.fill()
        client.submit_order(market("AAPL", client_order_id="d-2", qty=1))
        assert events(ws, 1) == [("new", "d-2")]
        assert fake.orders()[0]["status"] == "filled"


def test_drop_stream_aborts_the_connection(fake: FakeAlpaca) -> None:
    with listen(fake) as ws:
        assert fake.drop_stream() == 1
        assert fake.listeners() == 0
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_official_trading_stream_receives_updates_and_reconnects(fake: FakeAlpaca, client: TradingClient) -> None:
    stream = TradingStream(KEY, SECRET, paper=True, url_override=fake.stream_url)
    received: list[TradeUpdate] = []

    async def handler(update: TradeUpdate) -> None:
        received.append(update)

    stream.subscribe_trade_updates(handler)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: fake.listeners() == 1, timeout=5)
        client.submit_order(market("AAPL", client_order_id="t-1", qty=1))
        eventually(lambda: [u.event for u in received] == ["new"], timeout=5)
        fake.drop_stream()
        eventually(lambda: fake.listeners() == 1, timeout=10, what="alpaca-py reconnects")
        fake.fill()
        eventually(lambda: [u.event for u in received] == ["new", "fill"], timeout=5)
        assert received[1].order.status == OrderStatus.FILLED
    finally:
        stream.stop()  # takes effect after the pending recv, which waits up to 5 s: the drop ends that wait
        fake.drop_stream()
        thread.join(10)
    assert not thread.is_alive()
