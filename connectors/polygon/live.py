"""Live Polygon connector: aggregates (and optionally trades) from the WebSocket feeds into Kafka, each bar once.

One official ``WebSocketClient`` per market the symbols need (stocks, forex, futures), all on one event loop,
with ``raw=True``: frames are normalised column-wise by ``normalise.py`` rather than into one model object per
event. Bars go to ``md.bars.1s``/``md.bars.1m`` through ``BarPublisher`` (idempotent producer, keyed by symbol,
deterministic ids), trades to ``md.trades``, invalid events to ``dlq`` with their JSON and the reason.

Each bar is published once: a ``BarLedger`` per (market, interval) drops duplicates and bars too late to fill a
hole, and is rebuilt at start-up from what the topics already hold. Each trade is published once per event id: the
last ``RECENT_TRADES`` ids are remembered (``trade_ids.RecentIds``), and at start-up the set is refilled with the ids
of the trades ``md.trades`` received over the last ``trade_window_ns``. The client reconnects by itself (websockets'
backoff) and resubscribes; we notice a new connection, and for each symbol compare the first minute bar after it
with the last one published: a gap is fetched through REST (``rest.fetch_bars``) while that symbol's newer live
bars are held, so its bars reach the topic in start order. The same check runs after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, TopicPartition
from polygon import WebSocketClient
from polygon.exceptions import AuthError

from connectors.polygon.normalise import (
    DUPLICATE,
    FILL,
    NO_BAR,
    SOURCE,
    STEP_NS,
    TOO_OLD,
    BarLedger,
    Bars,
    Rejected,
    Universe,
    admit_in_order,
    normalise_frame,
)
from connectors.polygon.rest import KEY_VARIABLE, PolygonAuthError, PolygonError, fetch_bars, make_client
from connectors.polygon.symbols import TIMESPANS, Instrument, Interval, WsMarket, subscription_params
from connectors.polygon.trade_ids import RecentIds, leading_event_id, newest_share
from connectors.publisher import BarPublisher, StopFlag
from core.deadletter import DEAD_LETTER_SCHEMA
from core.events import common_fields, deterministic_event_id, now_ns
from core.kafka import ReliableProducer, producer_config, range_reader, read_range, watermarks
from core.settings import Settings
from core.units import NS_PER_HOUR, NS_PER_MINUTE
from schemas.bars import BarBatch
from schemas.codec import DecodeError, get_registry
from schemas.fastbars import decode_bars

TRADE_SCHEMA = "tidemark.marketdata.TradePrinted"
CONNECTOR_NAME = "polygon-live"
RECENT_TRADES = 500_000  # trade ids remembered to drop repeated trade events (in a run and across restarts)
MAX_FRAME_BYTES = 1 << 24
Key = tuple[WsMarket, Interval]


@dataclass(frozen=True)
class LiveOptions:
    intervals: tuple[Interval, ...] = ("1s", "1m")
    trades: bool = False
    backfill: bool = True  # fill gaps after a reconnect or restart through REST (minute bars)
    max_gap_ns: int = 24 * NS_PER_HOUR  # a longer gap is filled only over its last max_gap_ns
    progress_s: float = 10.0
    recover: bool = True  # rebuild the ledgers (and the recent trade ids) from the topics at start-up
    # Trades received this long before a restart are read back (at most RECENT_TRADES ids). The feeds never replay
    # by themselves: a restarted connector can receive again only what is still on its way (seconds), what another
    # run overlapping it during a deploy publishes, or, switched to the 15-minute delayed feed, the last 15 minutes.
    trade_window_ns: int = 15 * NS_PER_MINUTE


@dataclass
class LiveStats:
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    bars: dict[str, int] = field(default_factory=dict)
    trades: int = 0
    duplicates: int = 0
    late: int = 0
    hole_fills: int = 0
    dead_letters: int = 0
    reconnects: int = 0
    backfilled: int = 0
    backfill_failures: int = 0
    recovered: int = 0
    recovered_trades: int = 0

    @property
    def published_bars(self) -> int:
        return sum(self.bars.values())

    def counts(self) -> dict[str, int]:
        """Everything counted, flat, for the metrics endpoint."""
        flat = {f"bars_{interval}": count for interval, count in self.bars.items()}
        for name in (
            "frames", "trades", "duplicates", "late", "hole_fills", "dead_letters", "reconnects", "backfilled",
            "backfill_failures", "recovered", "recovered_trades",
        ):  # fmt: skip
            flat[name] = getattr(self, name)
        return flat

    def line(self, rate: float, held: int) -> str:
        per_interval = " ".join(f"{k} {v:,}" for k, v in sorted(self.bars.items()))
        return (
            f"polygon: {rate:,.0f} bars/s | bars {per_interval or 0} | trades {self.trades:,} | "
            f"duplicates {self.duplicates:,} | late {self.late:,} | hole fills {self.hole_fills:,} | "
            f"dead letters {self.dead_letters:,} | reconnects {self.reconnects:,} | "
            f"backfilled {self.backfilled:,} ({self.backfill_failures:,} failed, {held:,} symbols held)"
        )


class LiveConnector:
    def __init__(
        self,
        settings: Settings,
        instruments: Sequence[Instrument],
        options: LiveOptions | None = None,
        stop: StopFlag | None = None,
        out: TextIO = sys.stderr,
    ) -> None:
        if settings.polygon.api_key is None or not settings.polygon.api_key.get_secret_value():
            raise PolygonAuthError(f"no Polygon API key: set {KEY_VARIABLE}")
        if not instruments:
            raise ValueError("no symbols to stream")
        self.settings = settings
        self.options = options or LiveOptions()
        self.stop = stop if stop is not None else StopFlag()
        self.stats = LiveStats()
        self._out = out
        self._key = settings.polygon.api_key.get_secret_value()
        markets: tuple[WsMarket, ...] = ("stocks", "forex", "futures")
        self.universes = {m: u for m in markets if len(u := Universe.of(m, instruments))}
        intervals = self.options.intervals
        self._ledgers = {(m, i): BarLedger(len(u), i) for m, u in self.universes.items() for i in intervals}
        # Gap checks and holds exist for the intervals REST can fill.
        gap_keys: list[Key] = [(m, i) for m, i in self._ledgers if self.options.backfill and i == "1m"]
        self._check: dict[Key, npt.NDArray[np.bool_]] = {k: np.zeros(len(self.universes[k[0]]), bool) for k in gap_keys}
        self._held: dict[Key, npt.NDArray[np.bool_]] = {k: np.zeros(len(self.universes[k[0]]), bool) for k in gap_keys}
        self._pending: dict[Key, list[Bars]] = {key: [] for key in gap_keys}
        self._connection: dict[WsMarket, object] = {}
        self._publishers = {
            i: BarPublisher(settings.kafka.bootstrap, settings.topic(f"md.bars.{i}"), source=SOURCE) for i in intervals
        }
        self._producer = ReliableProducer(
            producer_config(settings.kafka.bootstrap, **{"delivery.report.only.error": True}),
            "publishing trades and dead letters",
        )
        self._trades_topic = settings.topic("md.trades")
        self._dlq_topic = settings.topic("dlq")
        self._recent_trades = RecentIds(RECENT_TRADES)
        self._rest = make_client(self._key, settings.polygon.rest_url) if gap_keys else None
        self._rest_pool = ThreadPoolExecutor(1, thread_name_prefix="polygon-backfill")
        self._backfills: set[asyncio.Task[None]] = set()

    # running ---------------------------------------------------------------------------------------------------

    async def run(self) -> LiveStats:
        """Stream until ``stop`` is set; then, within ``operations.stop_within_s``, finish the backfills in hand and
        flush everything. What the bound cuts off raises (KafkaException) with the count: the minute bars among it
        are fetched over REST when the connector starts again, as after any gap."""
        if self.options.recover:
            self._recover()
        clients = {
            market: WebSocketClient(
                api_key=self._key,
                feed=self.settings.polygon.ws_feed,
                market=market,
                raw=True,
                secure=self.settings.polygon.ws_secure,
                subscriptions=subscription_params(universe.instruments, self.options.intervals, self.options.trades),
                max_reconnects=None,
            )
            for market, universe in self.universes.items()
        }
        tasks = {
            asyncio.create_task(client.connect(self._processor(market, client), max_size=MAX_FRAME_BYTES)): market
            for market, client in clients.items()
        }
        try:
            await self._watch(tasks)
        finally:
            deadline = time.monotonic() + self.settings.operations.stop_within_s

            def left(reserve: float = 0.0) -> float:
                return max(deadline - time.monotonic() - reserve, 0.1)

            for client in clients.values():
                if client.websocket is not None:
                    with contextlib.suppress(TimeoutError):  # a feed that does not answer the close
                        await asyncio.wait_for(client.close(), timeout=left(reserve=4.0))
            _, running = await asyncio.wait(tasks, timeout=min(5.0, left(reserve=4.0)))
            for task in running:
                task.cancel()
            if self._backfills:
                await asyncio.wait(self._backfills, timeout=left(reserve=3.0))
            self._rest_pool.shutdown(wait=False, cancel_futures=True)
            self.flush(deadline=deadline)
        return self.stats

    async def _watch(self, tasks: dict[asyncio.Task[None], WsMarket]) -> None:
        last_report, last_bars = time.monotonic(), 0
        while not self.stop:
            done, _ = await asyncio.wait(tasks, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                try:
                    task.result()
                except AuthError as exc:
                    raise PolygonAuthError(
                        f"Polygon rejected the API key on the {tasks[task]} feed ({exc}); "
                        f"set {KEY_VARIABLE} to a key entitled to it"
                    ) from None
                raise RuntimeError(f"the {tasks[task]} feed closed the connection")
            now = time.monotonic()
            if now - last_report >= self.options.progress_s:
                rate = (self.stats.published_bars - last_bars) / (now - last_report)
                self.report(rate)
                last_report, last_bars = now, self.stats.published_bars
            self._producer.kafka.poll(0)  # delivery reports: failures are kept for flush to raise

    def report(self, rate: float | None = None) -> None:
        if rate is None:
            rate = self.stats.published_bars / max(1e-9, time.monotonic() - self.stats.started)
        held = sum(int(h.sum()) for h in self._held.values())
        print(self.stats.line(rate, held), file=self._out, flush=True)

    def _processor(self, market: WsMarket, client: WebSocketClient) -> Any:
        async def process(frame: str | bytes) -> None:
            connection = client.websocket
            if connection is not self._connection.get(market):
                if market in self._connection:
                    self.stats.reconnects += 1
                    self._expect_gaps(market)
                self._connection[market] = connection
            self.on_frame(market, frame)

        return process

    # frames ----------------------------------------------------------------------------------------------------

    def on_frame(self, market: WsMarket, frame: str | bytes) -> None:
        self.stats.frames += 1
        out = normalise_frame(frame, self.universes[market])
        for status in out.statuses:
            if not status.startswith("success"):
                print(f"polygon {market}: {status}", file=self._out, flush=True)
        if out.rejected:
            self._dead_letter(market, out.rejected)
        if out.trades:
            self._publish_trades(out.trades)
        for interval, bars in out.bars.items():
            self._route(market, interval, bars)

    def _expect_gaps(self, market: WsMarket) -> None:
        for (m, _), check in self._check.items():
            if m == market:
                check[:] = True

    def _route(self, market: WsMarket, interval: Interval, bars: Bars) -> None:
        key = (market, interval)
        held = self._held.get(key)
        if held is not None:
            if self._check[key][bars.slots].any():
                self._detect_gaps(key, bars)
            wait = held[bars.slots]
            if wait.any():
                self._pending[key].append(_take(bars, wait))
                bars = _take(bars, ~wait)
        self._publish_bars(key, bars)

    def _detect_gaps(self, key: Key, bars: Bars) -> None:
        """For symbols whose first new bar since a (re)connect this is: hold them and fetch what they missed."""
        check, ledger = self._check[key], self._ledgers[key]
        slots, starts = bars.slots, bars.batch.start_ns
        last = ledger.last_start_ns(slots)
        rows = check[slots] & ((last == NO_BAR) | (starts > last))  # repeats of old bars do not end the check
        slots, starts, last = slots[rows], starts[rows], last[rows]
        order = np.lexsort((starts, slots))
        slots, first_row = np.unique(slots[order], return_index=True)
        first, last = starts[order][first_row], last[order][first_row]
        check[slots] = False
        gap = (last != NO_BAR) & (first - last > ledger.step_ns)
        lows = np.maximum(last[gap] + ledger.step_ns, first[gap] - self.options.max_gap_ns)
        for slot, low, high in zip(slots[gap].tolist(), lows.tolist(), first[gap].tolist(), strict=True):
            self._held[key][slot] = True
            task = asyncio.get_running_loop().create_task(self._backfill(key, slot, low, high))
            self._backfills.add(task)
            task.add_done_callback(self._backfills.discard)

    async def _backfill(self, key: Key, slot: int, low: int, high: int) -> None:
        market, interval = key
        symbol = str(self.universes[market].symbols[slot])
        batch: BarBatch | None = None
        try:
            batch = await asyncio.get_running_loop().run_in_executor(
                self._rest_pool, fetch_bars, self._rest, symbol, TIMESPANS[interval], low, high
            )
        except PolygonError as exc:
            self.stats.backfill_failures += 1
            print(f"polygon: could not fill the {interval} gap of {symbol}: {exc}", file=self._out, flush=True)
        self._release(key, slot, batch)

    def _release(self, key: Key, slot: int, batch: BarBatch | None) -> None:
        """Publish the fetched gap, then the live bars held meanwhile, in arrival order."""
        if batch is not None and len(batch):
            published = self._publish_bars(key, Bars(batch, np.full(len(batch), slot, dtype=np.int64)))
            self.stats.backfilled += published
        pending = self._pending[key]
        self._held[key][slot] = False
        self._pending[key] = [_take(p, p.slots != slot) for p in pending if (p.slots != slot).any()]
        for piece in pending:
            mine = piece.slots == slot
            if mine.any():
                self._publish_bars(key, _take(piece, mine))

    def _publish_bars(self, key: Key, bars: Bars) -> int:
        if not len(bars.slots):
            return 0
        ready, verdicts = admit_in_order(self._ledgers[key], bars)
        counts = np.bincount(verdicts, minlength=4)
        self.stats.duplicates += int(counts[DUPLICATE])
        self.stats.late += int(counts[TOO_OLD])
        self.stats.hole_fills += int(counts[FILL])
        if len(ready.slots):
            self._publishers[key[1]].publish(ready.batch)
            self.stats.bars[key[1]] = self.stats.bars.get(key[1], 0) + len(ready.slots)
        return len(ready.slots)

    def _publish_trades(self, trades: list[dict[str, Any]]) -> None:
        registry, recent = get_registry(), self._recent_trades
        for record in trades:
            if not recent.add(record["event_id"]):
                self.stats.duplicates += 1
                continue
            self._producer.produce(self._trades_topic, registry.encode(TRADE_SCHEMA, record), record["symbol"].encode())
            self.stats.trades += 1

    def _dead_letter(self, market: WsMarket, rejected: list[Rejected]) -> None:
        """Invalid events keep their JSON; the WebSocket feed stands where a source topic would (no offsets)."""
        registry, source = get_registry(), f"polygon.ws/{market}"
        for item in rejected:
            digest = hashlib.sha256(item.raw + item.reason.encode()).hexdigest()
            record = {
                **common_fields(
                    CONNECTOR_NAME, now_ns(), event_id=deterministic_event_id("dlq", CONNECTOR_NAME, source, digest)
                ),
                "source_topic": source,
                "partition": -1,
                "offset": -1,
                "original_key": None,
                "original_value": item.raw,
                "reason": item.reason,
                "error_type": "InvalidEvent",
                "processor": CONNECTOR_NAME,
            }
            self._producer.produce(self._dlq_topic, registry.encode(DEAD_LETTER_SCHEMA, record), source.encode())
            self.stats.dead_letters += 1

    def flush(self, timeout: float = 60.0, deadline: float | None = None) -> None:
        """Everything delivered within ``timeout`` (all producers together by ``deadline``, when given)."""
        end = deadline if deadline is not None else time.monotonic() + timeout
        for publisher in self._publishers.values():
            publisher.flush(max(end - time.monotonic(), 0.1))
        self._producer.flush(max(end - time.monotonic(), 0.1))

    # start-up --------------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild the ledgers from the bars the topics hold (any source), so a restart publishes nothing twice
        and the first bar of each symbol is checked for a gap; and the recent trade ids, for the same reason.

        Only at start-up: a reconnect within a run keeps the ledgers and the trade ids in memory.
        """
        if self.options.trades:
            self._recover_trades()
        slot_of = {
            symbol: (market, slot)
            for market, universe in self.universes.items()
            for slot, symbol in enumerate(universe.symbols.tolist())
        }
        for interval, publisher in self._publishers.items():
            lookback = self.options.max_gap_ns if interval == "1m" else 64 * STEP_NS[interval]
            batch = read_bars_since(self.settings.kafka.bootstrap, publisher.topic, (now_ns() - lookback) // 10**6)
            if batch is None:
                continue
            where = [slot_of.get(symbol) for symbol in batch.symbol.tolist()]
            for market in self.universes:
                mine = np.array([w is not None and w[0] == market for w in where], dtype=np.bool_)
                if not mine.any():
                    continue
                slots = np.array([w[1] for w in where if w is not None and w[0] == market], dtype=np.int64)
                key = (market, interval)
                admit_in_order(self._ledgers[key], Bars(batch.take(mine), slots))
                self.stats.recovered += int(mine.sum())
                if key in self._check:
                    self._check[key][slots] = True
        if self.stats.recovered:
            print(f"polygon: {self.stats.recovered:,} recent bars already in the topics", file=self._out, flush=True)

    def _recover_trades(self) -> None:
        """Remember the trades published over the last ``trade_window_ns``, so the feed sending them again after a
        restart publishes none twice (the in-memory set alone forgets them when the process ends)."""
        since_ms = (now_ns() - self.options.trade_window_ns) // 10**6
        ids = read_trade_ids_since(self.settings.kafka.bootstrap, self._trades_topic, since_ms, RECENT_TRADES)
        self._recent_trades = RecentIds(RECENT_TRADES, ids)
        self.stats.recovered_trades = len(self._recent_trades)
        if self.stats.recovered_trades:
            count, topic = self.stats.recovered_trades, self._trades_topic
            print(f"polygon: {count:,} recent trades already in {topic}", file=self._out, flush=True)


def _take(bars: Bars, mask: npt.NDArray[np.bool_]) -> Bars:
    return Bars(bars.batch.take(mask), bars.slots[mask])


def _offsets_since(consumer: Consumer, topic: str, since_ms: int, timeout: float) -> dict[int, int]:
    """Each partition's first offset produced at or after ``since_ms`` (Kafka timestamps); partitions with none are
    left out, and so is a topic that does not exist."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return {}
    starts = consumer.offsets_for_times(
        [TopicPartition(topic, p, since_ms) for p in metadata.partitions], timeout=timeout
    )
    return {tp.partition: tp.offset for tp in starts if tp.offset >= 0}


def read_bars_since(bootstrap: str, topic: str, since_ms: int, timeout: float = 60.0) -> BarBatch | None:
    """The bars of ``topic`` produced at or after ``since_ms`` (Kafka timestamps), up to the current end."""
    consumer = range_reader(bootstrap, "tidemark-polygon-recovery")
    try:
        since = _offsets_since(consumer, topic, since_ms, timeout)
        if not since:
            return None
        payloads = [message.value() for message in read_range(consumer, topic, since, timeout)]
        if not payloads:
            return None
        batch, _, _ = decode_bars(payloads)
        return batch if len(batch) else None
    finally:
        consumer.close()


def read_trade_ids_since(bootstrap: str, topic: str, since_ms: int, limit: int, timeout: float = 60.0) -> list[str]:
    """The event ids of the trades ``topic`` received at or after ``since_ms`` (Kafka timestamps), at most ``limit``
    of the newest (shared between partitions by ``newest_share``), so a restart reads and keeps a bounded amount.

    Messages this connector's schema version wrote give their id from the first body bytes; any other message is
    decoded by the codec, and one that does not decode as a trade is no trade of ours and is skipped.
    """
    registry = get_registry()
    header = registry.header(TRADE_SCHEMA)
    consumer = range_reader(bootstrap, "tidemark-polygon-recovery")
    try:
        since = _offsets_since(consumer, topic, since_ms, timeout)
        ends = {p: watermarks(consumer, TopicPartition(topic, p), timeout)[1] for p in since}
        take = newest_share({p: ends[p] - offset for p, offset in since.items()}, limit)
        starts = {p: ends[p] - count for p, count in take.items() if count > 0}
        ids: list[str] = []
        for message in read_range(consumer, topic, starts, timeout):
            value = message.value() or b""
            event_id = leading_event_id(value, header)
            if event_id is None:
                try:
                    event_id = str(registry.decode_as(TRADE_SCHEMA, value)["event_id"])
                except DecodeError:
                    continue
            ids.append(event_id)
        return ids
    finally:
        consumer.close()
