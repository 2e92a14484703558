"""``AlpacaBroker`` through alpaca-py against the fake Alpaca server: real HTTP and WebSocket on loopback."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from connectors.alpaca import AlpacaBroker
from connectors.alpaca.client import ORDER_EVENTS, ORDER_STATUSES, parse_retry_after
from connectors.broker import (
    Asset,
    BrokerError,
    BrokerUnavailable,
    CredentialsRefused,
    DuplicateClientOrderId,
    OrderRefused,
    OrderRequest,
    RateLimited,
    TradeUpdate,
)
from fakes.alpaca import FakeAlpaca
from tests.conftest import REPO
from tests.services import eventually

KEY, SECRET = "AKTESTKEY0000000001", "s3cr3t-TEST-value-0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca(KEY, SECRET, cash=10_000) as server:
        server.add_asset("AAPL")
        server.set_price("AAPL", "100")
        server.add_asset("MSFT")
        server.set_price("MSFT", "400")
        server.add_asset("BRK.A", fractionable=False)
        server.add_asset("OTCX", tradable=False)
        server.add_asset("BTC/USD", asset_class="crypto")
        yield server


def make_broker(fake: FakeAlpaca, key: str = KEY, secret: str = SECRET, **kwargs: object) -> AlpacaBroker:
    return AlpacaBroker(key, secret, paper=True, rest_url=fake.rest_url, stream_url=fake.stream_url, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def broker(fake: FakeAlpaca) -> Iterator[AlpacaBroker]:
    with make_broker(fake) as connector:
        yield connector


@pytest.fixture
def streaming(fake: FakeAlpaca, broker: AlpacaBroker) -> AlpacaBroker:
    """The broker with its trade-updates stream listening at the fake."""
    broker.start_updates()
    eventually(lambda: fake.listeners() == 1 and broker.listening, timeout=5, what="the stream listens")
    return broker


def buy(client_order_id: str, symbol: str = "AAPL", **amount: Decimal) -> OrderRequest:
    return OrderRequest(client_order_id=client_order_id, symbol=symbol, side="BUY", **amount)  # type: ignore[arg-type]


def collect(broker: AlpacaBroker, n: int, timeout: float = 5) -> list[TradeUpdate]:
    """Exactly ``n`` updates (polling ``updates`` until they are in), then none more for a moment."""
    got: list[TradeUpdate] = []

    def enough() -> bool:
        got.extend(broker.updates(0.05))
        assert len(got) <= n, f"more than {n} updates: {[u.event for u in got]}"
        return len(got) == n

    eventually(enough, timeout=timeout, interval=0, what=f"{n} trade updates")
    return got


def summary(updates: list[TradeUpdate]) -> list[tuple[str, str]]:
    return [(u.event, u.order.client_order_id) for u in updates]


# REST mapping ----------------------------------------------------------------------------------------------------


def test_submit_qty_and_notional_orders(fake: FakeAlpaca, broker: AlpacaBroker) -> None:
    placed = broker.submit(buy("q-1", qty=Decimal("1.123456789")))
    assert (placed.client_order_id, placed.symbol, placed.side, placed.order_type) == ("q-1", "AAPL", "BUY", "MARKET")
    assert (placed.qty, placed.notional, placed.time_in_force, placed.status) == (
        Decimal("1.123456789"),
        None,
        "DAY",
        "PENDING_NEW",
    )
    assert placed.filled_qty == 0 and placed.filled_avg_price is None
    assert placed.created_at_ns == placed.submitted_at_ns and placed.created_at_ns > 1_700_000_000 * 10**9
    cash = broker.submit(buy("n-1", notional=Decimal("250.50")))
    assert (cash.qty, cash.notional) == (None, Decimal("250.5"))
    assert [(o["client_order_id"], o["qty"], o["notional"]) for o in fake.orders()] == [
        ("q-1", "1.123456789", None),
        ("n-1", None, "250.5"),
    ]
    assert fake.requests[-1].method == "POST"


def test_duplicate_client_order_id_is_refused_and_found(broker: AlpacaBroker) -> None:
    first = broker.submit(buy("dup", qty=Decimal(1)))
    with pytest.raises(DuplicateClientOrderId):
        broker.submit(buy("dup", qty=Decimal(2)))
    found = broker.order_by_client_id("dup")
    assert found is not None and found.order_id == first.order_id and found.qty == 1 and found.status == "NEW"
    assert broker.order_by_client_id("never-placed") is None


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (buy("r", symbol="NOPE", qty=Decimal(1)), 'asset "NOPE" not found'),
        (buy("r", symbol="OTCX", qty=Decimal(1)), "not tradable"),
        (buy("r", symbol="BRK.A", notional=Decimal(10)), "not fractionable"),
        (buy("r", qty=Decimal(1000)), "insufficient buying power"),
        (OrderRequest("r", "AAPL", "SELL", qty=Decimal(1)), "insufficient qty available for order"),
        (OrderRequest("r", "AAPL", "BUY"), "exactly one of qty and notional"),
        (OrderRequest("r", "AAPL", "BUY", qty=Decimal(1), order_type="LIMIT"), "only MARKET"),
    ],
)
def test_refused_orders(broker: AlpacaBroker, request_: OrderRequest, message: str) -> None:
    with pytest.raises(OrderRefused, match=message):
        broker.submit(request_)


def test_assets(broker: AlpacaBroker) -> None:
    assert broker.asset("AAPL") == Asset("AAPL", "EQUITY", tradable=True, fractionable=True)
    assert broker.asset("BRK.A") == Asset("BRK.A", "EQUITY", tradable=True, fractionable=False)
    assert broker.asset("OTCX") == Asset("OTCX", "EQUITY", tradable=False, fractionable=True)
    assert broker.asset("BTC/USD") == Asset("BTC/USD", "CRYPTO", tradable=True, fractionable=True)
    assert broker.asset("NOPE") is None


def test_positions_and_account_after_fills_equal_the_fakes(fake: FakeAlpaca, broker: AlpacaBroker) -> None:
    broker.submit(buy("a", qty=Decimal(10)))
    broker.submit(buy("b", symbol="MSFT", notional=Decimal(1000)))
    fake.fill(fraction=0.5)
    fake.fill("AAPL", price="110")
    fake.fill("MSFT")
    fake.set_price("AAPL", "120")
    positions = {p.symbol: p for p in broker.positions()}
    served = {p["symbol"]: p for p in fake.positions()}
    assert set(positions) == set(served) == {"AAPL", "MSFT"}
    for symbol, position in positions.items():
        assert position.qty == Decimal(served[symbol]["qty"])
        assert position.avg_entry_price == Decimal(served[symbol]["avg_entry_price"])
        assert position.market_value == Decimal(served[symbol]["market_value"])
        assert position.asset_class == "EQUITY"
    assert (positions["AAPL"].qty, positions["AAPL"].avg_entry_price) == (10, 105)
    assert positions["AAPL"].unrealized_pl == 150
    account, served_account = broker.account(), fake.account()
    assert account.account_id == fake.account_number and account.paper and not account.trading_blocked
    assert (account.cash, account.equity, account.buying_power) == (
        Decimal(served_account["cash"]),
        Decimal(served_account["equity"]),
        Decimal(served_account["buying_power"]),
    )
    assert account.cash == 10_000 - 1050 - 1000 and positions["MSFT"].qty == Decimal("2.5")
    assert account.last_equity == 10_000 and account.currency == "USD"
    assert make_broker(fake, account_id="paper").account().account_id == "paper"


def test_an_outside_position_change_is_seen(fake: FakeAlpaca, broker: AlpacaBroker) -> None:
    fake.set_position("AAPL", "-3", "90")
    [position] = broker.positions()
    assert (position.symbol, position.qty, position.avg_entry_price) == ("AAPL", -3, 90)


def test_orders_after_pages_oldest_first(fake: FakeAlpaca, broker: AlpacaBroker) -> None:
    broker.page_size = 2
    placed = [broker.submit(buy(f"p-{i}", qty=Decimal(1))) for i in range(5)]
    fake.fill()
    every = broker.orders()
    assert [o.client_order_id for o in every] == [f"p-{i}" for i in range(5)]
    assert {o.status for o in every} == {"FILLED"} and all(o.filled_avg_price == 100 for o in every)
    later = broker.orders(after_ns=placed[2].created_at_ns)
    assert [o.client_order_id for o in later] == ["p-3", "p-4"]
    assert broker.orders(after_ns=placed[4].created_at_ns) == []
    listed = [r for r in fake.requests if r.path == "/v2/orders" and r.method == "GET"]
    assert len(listed) >= 3 and all(r.params["limit"] == "2" and r.params["status"] == "all" for r in listed)


def test_cancel(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    order = streaming.submit(buy("c", qty=Decimal(1)))
    streaming.cancel(order.order_id)
    assert summary(collect(streaming, 2)) == [("NEW", "c"), ("CANCELED", "c")]
    found = streaming.order_by_client_id("c")
    assert found is not None and found.status == "CANCELED"
    with pytest.raises(OrderRefused, match="canceled"):
        streaming.cancel(order.order_id)
    with pytest.raises(OrderRefused, match="not found"):
        streaming.cancel("00000000-0000-0000-0000-000000000000")
    with pytest.raises(OrderRefused, match="not an Alpaca order id"):
        streaming.cancel("c")


# transient failures and credentials ------------------------------------------------------------------------------


def test_429_is_rate_limited_with_retry_after_and_not_retried_by_alpaca_py(
    fake: FakeAlpaca, broker: AlpacaBroker
) -> None:
    fake.fail_next(1, status=429, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        broker.submit(buy("x", qty=Decimal(1)))
    assert caught.value.retry_after_s == 7
    assert [r.status for r in fake.requests] == [429]  # alpaca-py's own retry (3 s sleeps) is off
    assert broker.submit(buy("x", qty=Decimal(1))).client_order_id == "x"


def test_the_fakes_rate_limit_is_rate_limited(fake: FakeAlpaca, broker: AlpacaBroker) -> None:
    fake.rate_limit(2)
    broker.account()
    broker.positions()
    with pytest.raises(RateLimited) as caught:
        broker.orders()
    assert 1 <= caught.value.retry_after_s <= 60 and fake.rate_limited == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_broker_unavailable(fake: FakeAlpaca, broker: AlpacaBroker, status: int) -> None:
    fake.fail_next(1, status=status)
    with pytest.raises(BrokerUnavailable, match=str(status)):
        broker.account()
    assert len(fake.requests) == 1


def test_an_unreachable_server_is_broker_unavailable() -> None:
    with FakeAlpaca(KEY, SECRET) as gone:
        url = gone.rest_url
    with AlpacaBroker(KEY, SECRET, rest_url=url, request_timeout_s=2) as broker, pytest.raises(BrokerUnavailable):
        broker.account()


def test_401_is_credentials_refused_naming_the_variable(fake: FakeAlpaca) -> None:
    with make_broker(fake, secret="wrong-secret") as broker, pytest.raises(CredentialsRefused) as caught:
        broker.account()
    assert caught.value.variable == "TIDEMARK_ALPACA_KEY_ID"
    assert "TIDEMARK_ALPACA_KEY_ID" in str(caught.value) and "401" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # alpaca-py's error holds the headers
    with pytest.raises(CredentialsRefused, match="TIDEMARK_ALPACA_SECRET_KEY"):
        AlpacaBroker(KEY, "")


def test_a_refused_stream_key_surfaces_from_updates(fake: FakeAlpaca) -> None:
    with make_broker(fake, secret="wrong-secret") as broker:

        def refused() -> bool:
            try:
                broker.updates(0.05)
            except CredentialsRefused as exc:
                assert exc.variable == "TIDEMARK_ALPACA_KEY_ID" and "wrong-secret" not in str(exc)
                return True
            return False

        eventually(refused, timeout=5, interval=0, what="the stream's refusal")


def errors_of_every_kind(fake: FakeAlpaca) -> list[BrokerError]:
    """One of each error the broker raises, the key and secret known to it."""
    found: list[BrokerError] = []

    def catch(call: Callable[[], object]) -> None:
        with pytest.raises(BrokerError) as caught:
            call()
        found.append(caught.value)

    with make_broker(fake) as broker:
        broker.submit(buy("d", qty=Decimal(1)))
        catch(lambda: broker.submit(buy("d", qty=Decimal(1))))
        catch(lambda: broker.submit(buy("e", symbol="NOPE", qty=Decimal(1))))
        fake.fail_next(1, status=429)
        catch(broker.account)
        fake.fail_next(1, status=503)
        catch(broker.account)
    with make_broker(fake, secret=SECRET[::-1]) as wrong:
        catch(wrong.positions)
    with FakeAlpaca(KEY, SECRET) as gone:
        url = gone.rest_url
    with AlpacaBroker(KEY, SECRET, rest_url=url, request_timeout_s=2) as unreachable:
        catch(unreachable.account)
    return found


def test_no_error_message_holds_the_key_or_secret(fake: FakeAlpaca) -> None:
    errors = errors_of_every_kind(fake)
    kinds = {type(e) for e in errors}
    assert kinds == {DuplicateClientOrderId, OrderRefused, RateLimited, BrokerUnavailable, CredentialsRefused}
    for error in errors:
        for text in (str(error), repr(error), repr(error.args)):
            assert KEY not in text and SECRET not in text and SECRET[::-1] not in text


def test_nothing_logged_holds_the_key_or_secret(
    fake: FakeAlpaca, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with make_broker(fake) as broker:
        broker.start_updates()
        eventually(lambda: fake.listeners() == 1, timeout=5)
        broker.submit(buy("l", qty=Decimal(1)))
        fake.fill()
        assert len(collect(broker, 2)) == 2
        fake.drop_stream()
        eventually(lambda: fake.listeners() == 1, timeout=10)
    with make_broker(fake, secret="wrong-" + SECRET) as refused:
        refused.start_updates()
        eventually(lambda: fake.auth_attempts >= 3, timeout=5)
        with pytest.raises(CredentialsRefused):
            refused.account()
    assert caplog.records, "DEBUG logging was on"
    logged = caplog.text + capsys.readouterr().err
    assert KEY not in logged and SECRET not in logged
    assert KEY not in repr(make_broker(fake)) and SECRET not in repr(make_broker(fake))


# trade updates ---------------------------------------------------------------------------------------------------


def test_partial_fill_then_fill_with_cumulative_quantity_and_average(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    order = streaming.submit(buy("f", qty=Decimal(10)))
    fake.fill(fraction=0.4)
    fake.fill(price="110")
    new, partial, fill = collect(streaming, 3)
    assert (new.event, new.order.status, new.price, new.execution_id) == ("NEW", "NEW", None, None)
    assert (partial.event, partial.order.status) == ("PARTIAL_FILL", "PARTIALLY_FILLED")
    assert (partial.price, partial.qty, partial.position_qty) == (100, 4, 4)
    assert (partial.order.filled_qty, partial.order.filled_avg_price) == (4, 100)
    assert (fill.event, fill.order.status, fill.price, fill.qty, fill.position_qty) == ("FILL", "FILLED", 110, 6, 10)
    assert (fill.order.filled_qty, fill.order.filled_avg_price) == (10, 106)
    assert fill.order.order_id == order.order_id and fill.order.filled_at_ns is not None
    assert partial.execution_id and fill.execution_id and partial.execution_id != fill.execution_id
    assert new.timestamp_ns < partial.timestamp_ns < fill.timestamp_ns
    served = fake.sent_updates()[-1]
    assert fill.timestamp_ns % 1000 == 0 and served["timestamp"].endswith("Z")


def test_notional_order_fills_at_the_fill_price(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    streaming.submit(buy("n", notional=Decimal("250")))
    fake.fill(price="125")
    _, fill = collect(streaming, 2)
    assert (fill.event, fill.qty, fill.order.notional, fill.order.qty, fill.order.filled_qty) == (
        "FILL",
        2,
        250,
        None,
        2,
    )


def test_rejected_order(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    fake.reject_next("symbol halted")
    placed = streaming.submit(buy("rj", qty=Decimal(1)))
    assert placed.status == "PENDING_NEW"
    [rejected] = collect(streaming, 1)
    assert (rejected.event, rejected.order.status, rejected.order.reject_reason) == (
        "REJECTED",
        "REJECTED",
        "symbol halted",
    )


def test_stream_drop_and_reconnect_still_delivers_later_updates(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    streaming.submit(buy("s", qty=Decimal(2)))
    assert summary(collect(streaming, 1)) == [("NEW", "s")]
    assert fake.drop_stream() == 1
    eventually(lambda: fake.listeners() == 1, timeout=10, what="alpaca-py reconnects")
    fake.fill()
    [fill] = collect(streaming, 1)
    assert (fill.event, fill.order.filled_qty) == ("FILL", 2)
    assert fake.auth_attempts == 2


def test_held_updates_arrive_reversed_and_repeated(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    fake.hold_updates()
    streaming.submit(buy("h", qty=Decimal(4)))
    fake.fill(fraction=0.5)
    fake.fill()
    assert streaming.updates(0) == []
    assert fake.release_updates("reversed", repeat=True) == 3
    got = collect(streaming, 6)
    assert [u.event for u in got] == ["FILL", "PARTIAL_FILL", "NEW"] * 2
    assert [u.order.filled_qty for u in got[:3]] == [4, 2, 0]
    assert got[0] == got[3]  # a redelivery is equal: a consumer can recognise it


def test_held_updates_released_as_is(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    fake.hold_updates()
    streaming.submit(buy("a1", qty=Decimal(1)))
    streaming.submit(buy("a2", qty=Decimal(1)))
    fake.release_updates()
    assert summary(collect(streaming, 2)) == [("NEW", "a1"), ("NEW", "a2")]


def test_dropped_updates_never_arrive_but_orders_has_the_state(fake: FakeAlpaca, streaming: AlpacaBroker) -> None:
    fake.drop_next_updates(2)
    streaming.submit(buy("gone", qty=Decimal(1)))
    fake.fill()
    streaming.submit(buy("seen", qty=Decimal(1)))
    assert summary(collect(streaming, 1)) == [("NEW", "seen")]
    [gone, seen] = streaming.orders()
    assert (gone.client_order_id, gone.status, gone.filled_qty) == ("gone", "FILLED", 1)
    assert (seen.client_order_id, seen.status) == ("seen", "NEW")


def test_updates_waits_at_most_the_timeout(streaming: AlpacaBroker) -> None:
    started = time.monotonic()
    assert streaming.updates(0.2) == []
    assert 0.15 <= time.monotonic() - started < 3


def test_close_stops_the_stream_thread(fake: FakeAlpaca) -> None:
    broker = make_broker(fake)
    broker.start_updates()
    eventually(lambda: fake.listeners() == 1, timeout=5)
    thread = broker._stream_thread
    assert thread is not None and thread.is_alive()
    started = time.monotonic()
    broker.close()
    assert not thread.is_alive() and time.monotonic() - started < 5
    eventually(lambda: fake.listeners() == 0, timeout=5)
    broker.close()  # idempotent
    with pytest.raises(BrokerError, match="closed"):
        broker.updates(0)


# pure parts ------------------------------------------------------------------------------------------------------


def test_status_and_event_symbols_are_the_avro_enums() -> None:
    schema = json.loads((REPO / "schemas/avro/OrderUpdated.avsc").read_text())
    enums = {f["name"]: set(f["type"]["symbols"]) for f in schema["fields"] if "symbols" in f["type"]}
    assert enums["status"] - {"UNKNOWN"} == ORDER_STATUSES
    assert enums["update_event"] - {"UNKNOWN"} == ORDER_EVENTS


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), (" 0 ", 0.0), ("Thu, 01 Jan 2026 00:00:30 GMT", 30.0), (None, None), ("", None), ("soon", None)],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, 1767225600.0) == expected
