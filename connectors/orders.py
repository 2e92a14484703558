"""The broker connector: ``PlaceOrder`` commands from ``orders.intents`` to the broker, and the broker's answers
(``OrderUpdated``, ``PositionReported``, ``AccountReported``) back to Kafka; the same code for Alpaca and for the
simulated broker (``connectors.broker`` is the contract both implement).

- **Never twice.** An order's ``client_order_id`` is the command's (deterministic from the rebalance and the
  symbol). The intents offset is committed only after the broker's answer is published, so a kill before that
  sends the command again; the broker refuses the repeated id, and the connector looks the order up and publishes its
  state instead. The simulated broker rebuilds itself from its own ``OrderUpdated`` events on start, so it refuses a
  repeat across restarts too.
- **Never lost.** Trade updates are published as they arrive; every ``reconcile_every_s`` the connector also lists
  the broker's orders from the oldest it has not seen finished on, which covers updates the stream dropped
  (Alpaca's stream does not replay them). Every ``OrderUpdated`` carries the order's cumulative state, so the
  tracker applies each fill once whatever the order or repetition of the updates.
- **Paced.** Calls to a rate-limited broker (Alpaca, not the simulated one) stay within ``rate_limit_per_min`` (a
  token bucket); a 429 waits the broker's ``Retry-After``. The time spent waiting for the limit is counted and
  logged, so a slow rebalance says whether the limit or Tidemark took the time.
- **Checked before sending.** A command with a bad quantity, an unknown symbol or one the broker does not trade is
  refused with an ``OrderRejected`` event naming the reason; nothing reaches the broker.
- **Reconciled.** Each cycle publishes the broker's account and positions and compares the positions with the
  tracker's (folded from the ``positions`` topic). A difference that persists over two cycles with no fill in
  between is an ``AlertRaised`` (``reconciliation.mismatch``, both sides) and a ``PositionCorrected``: the broker is
  the source of truth for holdings, and the difference is booked to "unattributed".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from connectors.broker import (
    TERMINAL,
    Asset,
    Broker,
    BrokerAccount,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    BrokerUnavailable,
    DuplicateClientOrderId,
    OrderRefused,
    OrderRequest,
    RateLimited,
    TradeUpdate,
)
from connectors.reconciliation import Mismatches
from core.consumed import Consumed
from core.deadletter import dead_letter_messages
from core.events import alert_record, common_fields, deterministic_event_id, now_ns
from core.kafka import ReliableProducer, producer_config, range_reader, read_range, watermarks
from core.metrics import ProcessMetrics
from core.settings import Settings
from core.supervision import Watchdog
from schemas.codec import DecodeError, get_registry

log = logging.getLogger("tidemark.broker")

PLACE_SCHEMA = "tidemark.orders.PlaceOrder"
REJECTED_SCHEMA = "tidemark.orders.OrderRejected"
UPDATED_SCHEMA = "tidemark.broker.OrderUpdated"
POSITION_SCHEMA = "tidemark.broker.PositionReported"
CORRECTED_SCHEMA = "tidemark.broker.PositionCorrected"
ACCOUNT_SCHEMA = "tidemark.broker.AccountReported"
ALERT_SCHEMA = "tidemark.risk.AlertRaised"
CHANGED_SCHEMA = "tidemark.orders.PositionChanged"
BAR_SCHEMA = "tidemark.marketdata.BarClosed"
ASSET_TTL_S = 3600.0
_STATUS_EVENT = {"FILLED": "FILL", "PARTIALLY_FILLED": "PARTIAL_FILL", "NEW": "NEW", "ACCEPTED": "ACCEPTED"}


class LiveTradingRefused(RuntimeError):
    """Live trading was asked for without both switches; the message says which is missing."""


def make_broker(settings: Settings, live: bool = False) -> Broker:
    """The account's broker: Alpaca when so set (or ``auto`` with a key), else the simulated broker.

    Alpaca's live endpoint needs ``TIDEMARK_ALPACA_PAPER=false`` and ``live=True`` (``--live``) together: either
    alone raises ``LiveTradingRefused``, so no setting on its own can move real money. A missing key raises
    ``CredentialsRefused`` naming the variable."""
    from connectors.simulated import SimulatedBroker

    kind = settings.broker.kind
    alpaca = settings.alpaca
    if kind == "alpaca" or (kind == "auto" and alpaca.key_id is not None):
        if live and alpaca.paper:
            raise LiveTradingRefused("--live needs TIDEMARK_ALPACA_PAPER=false as well; nothing was started")
        if not alpaca.paper and not live:
            raise LiveTradingRefused(
                "TIDEMARK_ALPACA_PAPER=false trades real money: confirm with --live; nothing was started"
            )
        from connectors.alpaca import AlpacaBroker

        return AlpacaBroker(
            alpaca.key_id.get_secret_value() if alpaca.key_id else "",
            alpaca.secret_key.get_secret_value() if alpaca.secret_key else "",
            paper=alpaca.paper,
            rest_url=alpaca.rest_url,
            stream_url=alpaca.stream_url,
            account_id=settings.portfolio.account,
        )
    if live:
        raise LiveTradingRefused(
            "--live needs an Alpaca account (TIDEMARK_ALPACA_KEY_ID); the simulated broker is paper"
        )
    costs = {name: settings.costs.model(name) for name in ("EQUITY", "FX", "FUTURE")}
    return SimulatedBroker(
        settings.portfolio.account,
        Decimal(repr(settings.broker.cash)),
        costs,
        participation=Decimal(repr(settings.broker.participation)),
        allow_short=settings.broker.allow_short,
    )


def asset_of_bar(symbol: str, asset_class: str) -> Asset:
    """What the simulated broker trades: every symbol it has a bar of, fractionally, at its asset class's costs."""
    return Asset(symbol, asset_class if asset_class in ("EQUITY", "FX", "FUTURE") else "EQUITY", True, True)


def read_account_topic(settings: Settings, name: str, schema: str, group: str) -> list[dict[str, Any]]:
    """Every ``schema`` record of the account on topic ``name``, in partition order (one partition per account)."""
    registry = get_registry()
    account = settings.portfolio.account
    reader = range_reader(settings.kafka.bootstrap, group)
    found = []
    try:
        for message in read_range(reader, settings.topic(name), timeout=settings.operations.stall_timeout_s * 4):
            try:
                decoded = registry.decode(message.value())
            except DecodeError:
                continue
            if decoded.schema == schema and decoded.record["account_id"] == account:
                found.append(decoded.record)
    finally:
        reader.close()
    return found


def feed_bar(broker: Any, bar: Mapping[str, Any]) -> None:
    """One decoded ``BarClosed`` to the simulated broker (which learns the symbol's asset class from it)."""
    if broker.asset(bar["symbol"]) is None:
        broker.add_asset(asset_of_bar(bar["symbol"], bar["asset_class"]))
    broker.on_bar(
        bar["symbol"],
        bar["start_ns"],
        Decimal(repr(bar["open"])),
        Decimal(repr(bar["high"])),
        Decimal(repr(bar["low"])),
        Decimal(repr(bar["close"])),
        Decimal(repr(bar["volume"])),
        close_only=bar["kind"] == "CLOSE_ONLY",
    )


def restore_simulated(
    settings: Settings, broker: Any, updates: list[dict[str, Any]], group: str, catch_up: bool = True
) -> dict[int, int]:
    """Rebuild a fresh simulated broker from its published updates; returns the daily bars' partition ends it read.

    The daily bars are read from their start first: every symbol's asset class (its costs) and last price. With
    ``catch_up``, the bars after the oldest unfinished order are then fed again in time order, so an order whose fill
    a kill kept from being published fills now, at the bar it would have filled at (bars that filled before the kill
    fill nothing twice: the broker ignores a bar not after a symbol's latest fill)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in updates:
        latest[record["client_order_id"]] = record
    waiting = [r["created_at_ns"] or r["ts_event"] for r in latest.values() if r["status"] not in TERMINAL]
    open_since = min(waiting) if waiting else None
    registry = get_registry()
    topic = settings.topic("md.bars.1d")
    timeout = settings.operations.stall_timeout_s
    reader = range_reader(settings.kafka.bootstrap, f"{group}-bars-history")
    classes: dict[str, str] = {}
    last: dict[str, Decimal] = {}
    kept: list[dict[str, Any]] = []
    try:
        partitions = reader.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends = {p: watermarks(reader, TopicPartition(topic, p), timeout)[1] for p in partitions}
        for message in read_range(reader, topic, timeout=timeout * 4):
            try:
                bar = registry.decode_as(BAR_SCHEMA, message.value())
            except DecodeError:
                continue
            classes[bar["symbol"]] = bar["asset_class"]
            last[bar["symbol"]] = Decimal(repr(bar["close"]))
            if open_since is not None and bar["start_ns"] > open_since:
                kept.append(bar)
    finally:
        reader.close()
    for symbol, asset_class in classes.items():
        broker.add_asset(asset_of_bar(symbol, asset_class))
    for record in updates:
        if broker.asset(record["symbol"]) is None:
            log.warning("simulated broker: no daily bar of %s; restored as an equity", record["symbol"])
            broker.add_asset(asset_of_bar(record["symbol"], "EQUITY"))
    broker.restore([update_from_record(r) for r in updates], last_prices=last)
    if catch_up:
        for bar in sorted(kept, key=lambda b: b["start_ns"]):
            feed_bar(broker, bar)
    return ends


@dataclass(frozen=True)
class BrokerState:
    broker: str
    positions: dict[str, Decimal]
    open_orders: int


def broker_positions(settings: Settings) -> BrokerState:
    """The broker's positions now: Alpaca's by asking it; the simulated broker's by rebuilding it from its updates."""
    broker = make_broker(settings)
    group = f"{settings.topic_prefix}{settings.app_id}-reconcile-{settings.portfolio.account}"
    try:
        if hasattr(broker, "restore"):
            source = f"{broker.name}-broker"
            records = read_account_topic(settings, "broker.order_updates", UPDATED_SCHEMA, group)
            restore_simulated(settings, broker, [r for r in records if r["source"] == source], group, catch_up=False)
        positions = {p.symbol: p.qty for p in broker.positions()}
        open_orders = sum(o.status not in TERMINAL for o in broker.orders())
        return BrokerState(broker.name, positions, open_orders)
    finally:
        broker.close()


class InvalidOrder(ValueError):
    """A command that cannot become an order; the message says why."""


def _decimal(value: str | None, what: str) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise InvalidOrder(f"{what} {value!r} is not a decimal number") from None
    if not number.is_finite() or number <= 0:
        raise InvalidOrder(f"{what} {value} must be a positive finite number")
    return number


def order_request(record: Mapping[str, Any]) -> OrderRequest:
    """The broker request a ``PlaceOrder`` command stands for; ``InvalidOrder`` says what is wrong with it."""
    qty = _decimal(record.get("qty"), "quantity")
    notional = _decimal(record.get("notional"), "notional")
    if (qty is None) == (notional is None):
        raise InvalidOrder("exactly one of qty and notional must be set")
    if record["side"] not in ("BUY", "SELL"):
        raise InvalidOrder(f"side {record['side']} is neither BUY nor SELL")
    if record["order_type"] != "MARKET":
        raise InvalidOrder(f"order type {record['order_type']}: only market orders are sent")
    return OrderRequest(
        record["client_order_id"], record["symbol"], record["side"], qty, notional, "MARKET", record["time_in_force"]
    )


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def order_updated(account: str, source: str, update: TradeUpdate, causation: str = "") -> dict[str, Any]:
    """An ``OrderUpdated`` record. Its id comes from the order's state after the update (and the fill's execution
    id), so every repetition of one update shares it; a poll's copy of a state has no execution id and an id of its
    own. The tracker applies cumulative states, so either copy books the fill once."""
    order = update.order
    event_id = deterministic_event_id(
        "order-updated", account, order.order_id, update.event, str(order.filled_qty), update.execution_id or ""
    )
    return {
        **common_fields(source, update.timestamp_ns, causation, event_id),
        "account_id": account,
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side,
        "order_type": order.order_type,
        "time_in_force": order.time_in_force,
        "update_event": update.event,
        "status": order.status,
        "qty": _text(order.qty),
        "notional": _text(order.notional),
        "filled_qty": str(order.filled_qty),
        "filled_avg_price": _text(order.filled_avg_price),
        "limit_price": None,
        "stop_price": None,
        "price": _text(update.price),
        "fill_qty": _text(update.qty),
        "position_qty": _text(update.position_qty),
        "execution_id": update.execution_id,
        "reject_reason": order.reject_reason,
        "created_at_ns": order.created_at_ns,
        "submitted_at_ns": order.submitted_at_ns,
        "updated_at_ns": order.updated_at_ns,
        "filled_at_ns": order.filled_at_ns,
    }


def _number(record: Mapping[str, Any], name: str) -> Decimal | None:
    """A decimal-string field of an event that may be null."""
    return None if record.get(name) is None else Decimal(record[name])


def order_from_record(record: Mapping[str, Any]) -> BrokerOrder:
    """The order state an ``OrderUpdated`` carries (the simulated broker's restore reads them back)."""
    return BrokerOrder(
        record["order_id"],
        record["client_order_id"],
        record["symbol"],
        record["side"],
        _number(record, "qty"),
        _number(record, "notional"),
        record["order_type"],
        record["time_in_force"],
        record["status"],
        Decimal(record["filled_qty"]),
        _number(record, "filled_avg_price"),
        record["created_at_ns"] or record["ts_event"],
        record["updated_at_ns"],
        record["submitted_at_ns"],
        record["filled_at_ns"],
        record["reject_reason"],
    )


def update_from_record(record: Mapping[str, Any]) -> TradeUpdate:
    return TradeUpdate(
        record["update_event"],
        order_from_record(record),
        record["ts_event"],
        _number(record, "price"),
        _number(record, "fill_qty"),
        _number(record, "position_qty"),
        record["execution_id"],
    )


def account_reported(account: str, source: str, found: BrokerAccount, ts: int) -> dict[str, Any]:
    return {
        **common_fields(source, ts, "", deterministic_event_id("account-reported", account, ts)),
        "account_id": account,
        "currency": found.currency,
        "cash": str(found.cash),
        "buying_power": str(found.buying_power),
        "equity": str(found.equity),
        "last_equity": _text(found.last_equity),
        "long_market_value": _text(found.long_market_value),
        "short_market_value": _text(found.short_market_value),
        "initial_margin": None,
        "maintenance_margin": None,
        "daytrade_count": None,
        "pattern_day_trader": False,
        "trading_blocked": found.trading_blocked,
        "paper": found.paper,
    }


def position_reported(account: str, source: str, position: BrokerPosition, ts: int) -> dict[str, Any]:
    return {
        **common_fields(source, ts, "", deterministic_event_id("position-reported", account, position.symbol, ts)),
        "account_id": account,
        "symbol": position.symbol,
        "asset_class": position.asset_class if position.asset_class in ("EQUITY", "FX", "FUTURE") else "UNKNOWN",
        "qty": str(position.qty),
        "avg_entry_price": str(position.avg_entry_price),
        "cost_basis": _text(position.cost_basis),
        "market_value": _text(position.market_value),
        "current_price": _text(position.current_price),
        "unrealized_pl": _text(position.unrealized_pl),
        "unrealized_plpc": None,
        "qty_available": None,
    }


class TokenBucket:
    """At most ``per_minute`` calls in any minute, as a bucket that refills continuously."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def wait_s(self) -> float:
        """Seconds to wait before the next call may go; takes its token."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class BrokerConnector:
    """Runs until SIGTERM: commands in, broker events out, reconciliation every ``reconcile_every_s``."""

    def __init__(
        self, settings: Settings, broker: Broker, watchdog: Watchdog, metrics: ProcessMetrics | None = None
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.watchdog = watchdog
        self.account = settings.portfolio.account
        self.source = f"{broker.name}-broker"
        self.metrics = metrics or ProcessMetrics("broker-connector", settings.operations.stall_timeout_s)
        self.registry = get_registry()
        self.bucket = TokenBucket(settings.broker.rate_limit_per_min) if broker.rate_limited else None
        self.group = f"{settings.topic_prefix}{settings.app_id}-broker-{self.account}"
        bootstrap = settings.kafka.bootstrap
        self.producer = ReliableProducer(producer_config(bootstrap, **{"linger.ms": 0}), "broker connector")
        self.commands = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # A connector killed with kill -9 is noticed after this, and its successor takes over.
                "session.timeout.ms": 10_000,
            }
        )
        self.bars: Consumer | None = None
        self.daily_ends: dict[int, int] = {}
        self.tracker = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"{self.group}-tracker", "enable.auto.commit": False}
        )
        self.open: dict[str, tuple[str, Decimal, str, int]] = {}
        """client_order_id -> (status, filled qty, symbol, created) last published, for orders not finished."""
        self.ours: dict[tuple[str, str], Decimal] = {}
        """(strategy, symbol) -> quantity, as the tracker's PositionChanged events say."""
        self.filled_since_look: set[str] = set()
        self.finished: set[str] = set()
        self.published_fill: dict[str, tuple[str, Decimal]] = {}
        """Per order (client order id, or ``broker:`` and the broker's id): its symbol and signed cumulative fill."""
        self.tracked_fill: dict[str, Decimal] = {}
        """Per order: the fill quantity the tracker's ``PositionChanged`` events applied."""
        self.tracked_events: set[str] = set()
        self.assets: dict[str, Asset] = {}
        self.assets_listed = -ASSET_TTL_S
        self.mismatches = Mismatches()
        self.placed = 0
        self.limit_wait_s = 0.0
        self.broker_s = 0.0
        self.metrics.count_from(
            "tidemark_broker_orders",
            "orders placed, rate-limit wait and broker time",
            lambda: {"placed": self.placed, "limit_wait_ms": int(self.limit_wait_s * 1000)},
        )

    # -- start-up ---------------------------------------------------------------------------------------------

    def restore(self) -> None:
        """The orders on record (and, for the simulated broker, its whole state) from ``broker.order_updates``."""
        records = [
            r
            for r in read_account_topic(self.settings, "broker.order_updates", UPDATED_SCHEMA, f"{self.group}-restore")
            if r["source"] == self.source
        ]
        if hasattr(self.broker, "restore"):
            self.daily_ends = restore_simulated(self.settings, self.broker, records, self.group)
        for record in records:
            self._remember(order_from_record(record))
        log.info(
            "broker connector (%s): %d order updates on record, %d orders not finished",
            self.broker.name,
            len(records),
            len(self.open),
        )

    def _remember(self, order: BrokerOrder) -> None:
        """An order's state as published: unfinished orders are polled, and each order's signed cumulative fill is
        what the tracker must have applied before reconciliation may trust its totals. A finished order stays
        finished, whatever stale update follows."""
        key = order.client_order_id or f"broker:{order.order_id}"
        if key in self.finished:
            return
        signed = order.filled_qty if order.side == "BUY" else -order.filled_qty
        if abs(signed) >= abs(self.published_fill.get(key, (order.symbol, Decimal(0)))[1]):
            self.published_fill[key] = (order.symbol, signed)
        if order.status in TERMINAL:
            self.open.pop(order.client_order_id, None)
            self.finished.add(key)
        elif order.client_order_id:
            self.open[order.client_order_id] = (order.status, order.filled_qty, order.symbol, order.created_at_ns)

    # -- the loop ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        timeout = self.settings.operations.stall_timeout_s
        with self.watchdog.bounded("reading the broker's order history; is Kafka reachable?", timeout * 5):
            self.restore()
        self.commands.subscribe([self.settings.topic("orders.intents")])
        positions_topic = self.settings.topic("positions")
        partitions = self.tracker.list_topics(positions_topic, timeout=timeout).topics[positions_topic].partitions
        self.tracker.assign([TopicPartition(positions_topic, p, OFFSET_BEGINNING) for p in partitions])
        if hasattr(self.broker, "on_bar"):
            self.bars = Consumer(
                {
                    "bootstrap.servers": self.settings.kafka.bootstrap,
                    "group.id": f"{self.group}-bars",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "session.timeout.ms": 10_000,
                }
            )
            daily = self.settings.topic("md.bars.1d")

            def resume(consumer: Consumer, partitions: list[TopicPartition]) -> None:
                """The daily bars after those the restore read; the minute bars where the last run committed, or
                from now on (their history is long, and old bars fill no new order)."""
                committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout)}
                for tp in partitions:
                    if tp.topic == daily:
                        tp.offset = self.daily_ends.get(tp.partition, OFFSET_END)
                    elif committed.get((tp.topic, tp.partition), -1) < 0:
                        tp.offset = OFFSET_END
                consumer.assign(partitions)
                log.info("simulated broker: following %d bar partitions", len(partitions))

            self.bars.subscribe([daily, self.settings.topic("md.bars.1m")], on_assign=resume)
        log.info("broker connector (%s) for account %s: following orders.intents", self.broker.name, self.account)
        next_look = 0.0
        try:
            while not self.watchdog.stopping.is_set():
                self._follow_tracker()
                self._take_commands()
                if self.bars is not None:
                    self._take_bars()
                self._publish_updates(self.broker.updates(0.05))
                if time.monotonic() >= next_look:
                    self._look()
                    next_look = time.monotonic() + self.settings.broker.reconcile_every_s
        finally:
            self.producer.flush(timeout)
            self.commands.close()
            self.tracker.close()
            if self.bars is not None:
                self.bars.close()
            self.broker.close()
            log.info(
                "broker connector: %d orders placed; %.1f s waited for the rate limit", self.placed, self.limit_wait_s
            )

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """One broker call within the rate limit; transient failures are retried with back-off until SIGTERM."""
        delay = 0.5
        while True:
            wait = 0.0 if self.bucket is None else self.bucket.wait_s()
            if wait > 0:
                self.limit_wait_s += wait
                self.watchdog.stopping.wait(wait)
            try:
                started = time.monotonic()
                with self.watchdog.bounded(f"broker call: {what}", self.settings.operations.stall_timeout_s * 2):
                    result = call()
                self.broker_s += time.monotonic() - started
                return result
            except RateLimited as exc:
                log.warning("broker rate limit on %s: waiting %.1f s as the broker asks", what, exc.retry_after_s)
                self.limit_wait_s += exc.retry_after_s
                pause = exc.retry_after_s
            except BrokerUnavailable as exc:
                log.warning("broker unavailable on %s (%s): retrying in %.1f s", what, exc, delay)
                pause, delay = delay, min(delay * 2, 30.0)
            if self.watchdog.stopping.wait(pause):
                raise InterruptedError("stopping")

    def _take_commands(self) -> None:
        messages = self.commands.consume(100, 0.05)
        if not messages:
            return
        started, placed, waited = time.monotonic(), self.placed, self.limit_wait_s
        for message in messages:
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("orders.intents: %s", message.error())
                continue
            self.metrics.consumed(message.topic(), 1)
            self._command(message)
        self.producer.flush(self.settings.operations.stall_timeout_s)
        self.commands.commit(asynchronous=False)
        self.metrics.committed()
        if self.placed > placed:
            took, limit = time.monotonic() - started, self.limit_wait_s - waited
            log.info(
                "placed %d orders in %.1f s: %.1f s waiting for the broker's rate limit (%d requests/min), %.1f s the "
                "rest (broker calls and Kafka)",
                self.placed - placed,
                took,
                limit,
                self.settings.broker.rate_limit_per_min,
                took - limit,
            )

    def _command(self, message: Message) -> None:
        try:
            decoded = self.registry.decode(message.value())
        except DecodeError as exc:
            self._dead_letter(message, str(exc))
            return
        if decoded.schema != PLACE_SCHEMA or decoded.record["account_id"] != self.account:
            return  # refusals from the rebalancer, or another account's orders
        record = decoded.record
        try:
            request = order_request(record)
            asset = self._asset(request.symbol)
            if asset is None:
                raise InvalidOrder(f"{request.symbol}: unknown to the {self.broker.name} broker")
            if not asset.tradable:
                raise InvalidOrder(f"{request.symbol}: the {self.broker.name} broker does not trade it")
        except InvalidOrder as exc:
            self._refuse(record, str(exc))
            return
        try:
            order = self._call(f"place {request.client_order_id}", lambda: self.broker.submit(request))
            self.placed += 1
            log.info(
                "placed %s %s %s (%s)", request.side, request.qty or request.notional, request.symbol, order.status
            )
        except DuplicateClientOrderId:
            order = self._call(
                f"look up {request.client_order_id}", lambda: self.broker.order_by_client_id(request.client_order_id)
            )
            log.info("order %s was placed before (%s): not sent again", request.client_order_id, order.status)
        except OrderRefused as exc:
            self._refuse(record, f"refused by the broker: {exc}")
            return
        update = TradeUpdate(
            _STATUS_EVENT.get(order.status, order.status), order, order.updated_at_ns or order.created_at_ns
        )
        self._publish_updates([update], causation=record["event_id"])
        pause = self.settings.broker.pause_after_orders
        if pause and self.placed >= pause:
            log.warning("broker connector: paused after %d orders (fault drill)", self.placed)
            self.watchdog.stopping.wait(3600 * 24)

    def _asset(self, symbol: str) -> Asset | None:
        """The broker's word on a symbol, from one listing of every asset an hour (so a rebalance's orders cost one
        request each against the rate limit, not two); a symbol the listing lacks is asked for once."""
        if time.monotonic() - self.assets_listed > ASSET_TTL_S:
            self.assets = self._call("list assets", self.broker.assets)
            self.assets_listed = time.monotonic()
        if symbol not in self.assets:  # listed since, or learned since (the simulated broker learns from bars)
            asset: Asset | None = self._call(f"asset {symbol}", lambda: self.broker.asset(symbol))
            if asset is None:
                return None
            self.assets[symbol] = asset
        return self.assets[symbol]

    def _refuse(self, record: Mapping[str, Any], reason: str) -> None:
        log.warning("order %s for %s refused: %s", record["client_order_id"], record["symbol"], reason)
        event_id = deterministic_event_id("order-rejected", record["event_id"])
        strategy = record.get("strategy_id")
        self._produce(
            "orders.intents",
            REJECTED_SCHEMA,
            {
                **common_fields(self.source.replace("-broker", "-connector"), now_ns(), record["event_id"], event_id),
                "account_id": self.account,
                "symbol": record["symbol"],
                "client_order_id": record["client_order_id"],
                "rebalance_id": record["causation_id"],
                "strategy_ids": [strategy] if strategy else [],
                "reason": reason,
                "refused_by": "broker-connector",
            },
        )

    def _take_bars(self) -> None:
        assert self.bars is not None
        messages = self.bars.consume(2000, 0.05)
        if not messages:
            return
        for message in messages:
            if message.error() is not None:
                continue
            try:
                bar = self.registry.decode_as(BAR_SCHEMA, message.value())
            except DecodeError:
                continue  # the analytics runner dead-letters bad bars; the broker only prices with good ones
            feed_bar(self.broker, bar)
        self._publish_updates(self.broker.updates(0.0))
        self.producer.flush(self.settings.operations.stall_timeout_s)
        self.bars.commit(asynchronous=False)

    def _publish_updates(self, updates: Iterable[TradeUpdate], causation: str = "") -> None:
        for update in updates:
            record = order_updated(self.account, self.source, update, causation)
            self._produce("broker.order_updates", UPDATED_SCHEMA, record)
            self._remember(update.order)
            if update.event in ("FILL", "PARTIAL_FILL"):
                self.filled_since_look.add(update.order.symbol)

    def _produce(self, name: str, schema: str, record: Mapping[str, Any]) -> None:
        self.producer.produce(self.settings.topic(name), self.registry.encode(schema, record), self.account)
        self.metrics.produced([(self.settings.topic(name), 1)])

    def _dead_letter(self, message: Message, reason: str) -> None:
        consumed = Consumed(message.topic(), message.partition(), message.offset(), message.key(), message.value())
        for key, value in dead_letter_messages(
            self.registry, [consumed], [(0, reason)], "broker-connector", "DecodeError"
        ):
            self.producer.produce(self.settings.topic("dlq"), value, key)
        self.metrics.dead_lettered(1)

    def _follow_tracker(self) -> None:
        for message in self.tracker.consume(2000, 0.0):
            if message.error() is not None:
                continue
            try:
                decoded = self.registry.decode(message.value())
            except DecodeError:
                continue
            record = decoded.record
            if decoded.schema != CHANGED_SCHEMA or record["account_id"] != self.account:
                continue
            self.ours[(record["strategy_id"], record["symbol"])] = Decimal(record["qty"])
            if record["cause"] == "fill" and record["event_id"] not in self.tracked_events:
                self.tracked_events.add(record["event_id"])  # the desk may publish a change again, same id
                key = record["client_order_id"] or f"broker:{record['order_id']}"
                self.tracked_fill[key] = self.tracked_fill.get(key, Decimal(0)) + Decimal(record["qty_change"])

    # -- reconciliation ---------------------------------------------------------------------------------------

    def _look(self) -> None:
        """Ask the broker about unfinished orders, publish its account and positions, and reconcile."""
        try:
            if self.open:
                # One listing from the oldest unfinished order on, not one request per order: the listing costs
                # one request of the rate limit per 500 orders.
                since = min(created for _, _, _, created in self.open.values()) - 1
                listed = self._call("list orders", lambda: self.broker.orders(after_ns=since))
                for order in listed:
                    known = self.open.get(order.client_order_id)
                    if known is not None and (order.status, order.filled_qty) != known[:2]:
                        event = _STATUS_EVENT.get(order.status, order.status)
                        self._publish_updates([TradeUpdate(event, order, order.updated_at_ns or order.created_at_ns)])
            account = self._call("account", self.broker.account)
            positions = self._call("positions", self.broker.positions)
        except (InterruptedError, BrokerError) as exc:
            log.warning("reconciliation skipped: %s", exc)
            return
        ts = now_ns()
        self._produce("broker.account", ACCOUNT_SCHEMA, account_reported(self.account, self.source, account, ts))
        for position in positions:
            self._produce(
                "broker.positions", POSITION_SCHEMA, position_reported(self.account, self.source, position, ts)
            )
        self._follow_tracker()
        brokers = {p.symbol: p.qty for p in positions}
        totals: dict[str, Decimal] = {}
        for (_, symbol), qty in self.ours.items():
            totals[symbol] = totals.get(symbol, Decimal(0)) + qty
        # Symbols whose published fills the tracker has not all applied yet: their difference is in flight too.
        lagging = {s for key, (s, filled) in self.published_fill.items() if self.tracked_fill.get(key, 0) != filled}
        moving = self.filled_since_look | lagging | {symbol for _, _, symbol, _ in self.open.values()}
        self.filled_since_look = set()
        prices = {p.symbol: p.current_price for p in positions}
        for symbol, ours, theirs in self.mismatches.confirm(brokers, totals, moving):
            self._correct(symbol, ours, theirs, prices.get(symbol), ts)
        self.producer.flush(self.settings.operations.stall_timeout_s)

    def _correct(self, symbol: str, ours: Decimal, theirs: Decimal, price: Decimal | None, ts: int) -> None:
        message = f"{symbol}: the broker holds {theirs}, the tracker {ours}; corrected to the broker's"
        log.warning("reconciliation: %s", message)
        event_id = deterministic_event_id("position-corrected", self.account, symbol, str(ours), str(theirs), ts)
        self._produce(
            "broker.positions",
            CORRECTED_SCHEMA,
            {
                **common_fields(self.source, ts, "", event_id),
                "account_id": self.account,
                "symbol": symbol,
                "ours": str(ours),
                "brokers": str(theirs),
                "qty_change": str(theirs - ours),
                "price": _text(price),
                "reason": "reconciliation: the difference persisted over two looks with no fill in between",
            },
        )
        self.producer.produce(
            self.settings.topic("alerts"),
            self.registry.encode(
                ALERT_SCHEMA,
                alert_record(
                    self.source,
                    ts,
                    event_id,
                    deterministic_event_id("reconciliation-alert", event_id),
                    "reconciliation.mismatch",
                    "WARNING",
                    self.account,
                    message,
                    {"symbol": symbol, "tracker": str(ours), "broker": str(theirs)},
                    (float(ours), float(theirs)),
                ),
            ),
            self.account,
        )
