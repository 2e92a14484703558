"""Each projected bar keeps where it came from: its BarClosed event id and the partition and offset it was delivered
at, through the real publisher, the real sink process and PostgreSQL; ``bars_behind`` reads exactly those rows back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from confluent_kafka import KafkaError, Message

import connectors.publisher as publisher_module
from connectors.publisher import BarIds, BarPublisher
from core.kafka import ReliableProducer, message_count, producer_config
from core.settings import Settings
from core.units import NS_PER_MINUTE, NS_PER_SECOND
from projections.bar_window import bars_behind
from schemas.bars import BAR_SCHEMA, BarBatch
from schemas.codec import DecodeError, get_registry
from tests.factories import minute_bars
from tests.integration.test_bar_window import duplicates_ignored, sink, start_sink, stop  # noqa: F401 - sink: fixture
from tests.integration.test_pipeline import count, fetch
from tests.services import eventually

pytestmark = pytest.mark.integration

START_NS = int(datetime(2025, 3, 3, 15, 0, tzinfo=UTC).timestamp()) * NS_PER_SECOND
SYMBOLS = ("SPY", "AAPL", "EURUSD", "MESZ5", "QQQ", "XLK")
MINUTES = 30
GAPPY = "QQQ"  # prints only on even minutes
Delivered = tuple[str, int, int, bytes]


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> list[Delivered]:
    """(topic, partition, offset, value) of every message the test's producers deliver, from the delivery reports.

    The publisher asks for reports of failures only (a callback per message costs more than encoding it); here it
    gets every report, and the real producer's callback sees each one as well.
    """
    reports: list[Delivered] = []
    on_delivery = ReliableProducer._on_delivery

    def record(self: ReliableProducer, err: KafkaError | None, msg: Message) -> None:
        topic, partition, offset, value = msg.topic(), msg.partition(), msg.offset(), msg.value()
        if err is None and topic is not None and partition is not None and offset is not None and value is not None:
            reports.append((topic, partition, offset, value))
        on_delivery(self, err, msg)

    def every_report(bootstrap: str, **overrides: Any) -> dict[str, Any]:
        return producer_config(bootstrap, **{**overrides, "delivery.report.only.error": False})

    monkeypatch.setattr(ReliableProducer, "_on_delivery", record)
    monkeypatch.setattr(publisher_module, "producer_config", every_report)
    return reports


def prints(symbol: str, minutes: range) -> list[int]:
    """The minutes of ``minutes`` on which ``symbol`` has a bar."""
    return [m for m in minutes if symbol != GAPPY or m % 2 == 0]


def minute(m: int) -> BarBatch:
    present = [s for s in SYMBOLS if prints(s, range(m, m + 1))]
    bars = minute_bars(present, [START_NS + m * NS_PER_MINUTE] * len(present))
    close = np.array([100.0 * (SYMBOLS.index(s) + 1) + m for s in present])
    return dataclasses.replace(bars, open=close, high=close + 0.5, low=close - 0.5, close=close)


def bars_as_of(dsn: str, symbols: list[str], as_of_ns: int, n: int, interval: str = "1m") -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return await bars_behind(conn, symbols, interval, as_of_ns, n)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_projected_bars_keep_their_event_id_partition_and_offset(
    isolated: Settings,
    run_cli: Callable[..., Any],
    sink: list[subprocess.Popen[bytes]],  # noqa: F811 - the fixture
    delivered: list[Delivered],
    tmp_path: Path,
) -> None:
    run_cli("topics", "create")
    topic = isolated.topic("md.bars.1m")
    publisher = BarPublisher(isolated.kafka.bootstrap, topic, source="synthetic")
    for m in range(MINUTES // 2):
        publisher.publish(minute(m))
    publisher.flush()
    # Not a bar, among SPY's: dead-lettered, and the bars after it in the same batch keep their own ids and offsets.
    junk = ReliableProducer(producer_config(isolated.kafka.bootstrap), "junk")
    junk.produce(topic, b"\xc3\x01 not a bar", "SPY")
    junk.flush()
    for m in range(MINUTES // 2, MINUTES):
        publisher.publish(minute(m))
    # Minute 10 again with other closes: the same (symbol, interval, start) and the same deterministic id, at a later
    # offset. It is a duplicate: counted, and the row keeps the first bar's values, id and position.
    again = minute(10)
    publisher.publish(
        dataclasses.replace(again, open=again.open + 1, high=again.high + 1, low=again.low + 1, close=again.close + 1)
    )
    publisher.flush()

    registry = get_registry()
    first: dict[tuple[str, int], dict[str, Any]] = {}  # (symbol, start_ns) -> the first delivery of that bar
    bars_delivered = 0
    for delivered_topic, partition, offset, value in sorted(delivered, key=lambda d: (d[1], d[2])):
        assert delivered_topic == topic
        try:
            record = registry.decode_as(BAR_SCHEMA, value)
        except DecodeError:
            assert value == b"\xc3\x01 not a bar"
            continue
        bars_delivered += 1
        first.setdefault(
            (record["symbol"], record["start_ns"]),
            {"event_id": record["event_id"], "source_partition": partition, "source_offset": offset},
        )
    published = sum(len(minute(m)) for m in range(MINUTES))
    assert bars_delivered == published + len(again) and len(first) == published
    # The ids are the publisher's deterministic ones, made again here independently of the log.
    ids = BarIds("synthetic")
    for m in range(MINUTES):
        bars = minute(m)
        made = ids(bars).view("S36").reshape(-1).astype(str).tolist()
        assert [first[s, int(t)]["event_id"] for s, t in zip(bars.symbol, bars.start_ns, strict=True)] == made

    proc = start_sink(isolated, sink, tmp_path / "sink.log")
    eventually(
        lambda: duplicates_ignored(isolated.postgres_dsn) == len(again),
        timeout=120,
        what="every bar projected, the republished minute counted as duplicates",
    )
    stop(proc)
    assert count(isolated.postgres_dsn, "bars") == published
    assert message_count(isolated.kafka.bootstrap, isolated.topic("dlq")) == 1  # the junk

    stored = fetch(
        isolated.postgres_dsn,
        "SELECT symbol, (extract(epoch FROM start_ts) * 1000000)::bigint * 1000 AS start_ns, close,"
        " event_id::text AS event_id, source_partition, source_offset FROM bars",
    )
    assert len(stored) == published
    for row in stored:
        assert {k: row[k] for k in ("event_id", "source_partition", "source_offset")} == first[
            row["symbol"], row["start_ns"]
        ], row
        m = (row["start_ns"] - START_NS) // NS_PER_MINUTE
        assert row["close"] == 100.0 * (SYMBOLS.index(row["symbol"]) + 1) + m  # minute 10: the first bar's close

    # The bars behind an event as of the end of minute 19, five per symbol: minutes 15..19 (QQQ: its last five
    # prints, 10..18). A bar still open at as_of (minute 20, as of 20:30) is not behind it; an unknown symbol has none,
    # a repeated one is returned once.
    def expected(symbol: str, minutes: list[int]) -> list[dict[str, Any]]:
        rows = []
        for m in minutes:
            start_ns = START_NS + m * NS_PER_MINUTE
            rows.append(
                {
                    "symbol": symbol,
                    "interval": "1m",
                    "start_ts": datetime.fromtimestamp(start_ns / NS_PER_SECOND, UTC),
                    "end_ts": datetime.fromtimestamp((start_ns + NS_PER_MINUTE) / NS_PER_SECOND, UTC),
                    "close": 100.0 * (SYMBOLS.index(symbol) + 1) + m,
                    **first[symbol, start_ns],
                }
            )
        return rows

    as_of = START_NS + 20 * NS_PER_MINUTE
    want = expected("AAPL", list(range(15, 20))) + expected("QQQ", [10, 12, 14, 16, 18])
    want += expected("SPY", list(range(15, 20)))
    for at in (as_of, as_of + 30 * NS_PER_SECOND, as_of + NS_PER_MINUTE - 1):
        assert bars_as_of(isolated.postgres_dsn, ["SPY", "QQQ", "NOPE", "AAPL", "SPY"], at, 5) == want
    assert bars_as_of(isolated.postgres_dsn, ["SPY"], as_of - 1, 2) == expected("SPY", [17, 18])
    assert bars_as_of(isolated.postgres_dsn, ["SPY"], as_of, 5, "1d") == []
    assert bars_as_of(isolated.postgres_dsn, ["SPY"], START_NS, 5) == []
    everything = bars_as_of(isolated.postgres_dsn, list(SYMBOLS), START_NS + MINUTES * NS_PER_MINUTE, 1000)
    assert everything == [row for s in sorted(SYMBOLS) for row in expected(s, prints(s, range(MINUTES)))]
    with pytest.raises(ValueError, match="negative"):
        bars_as_of(isolated.postgres_dsn, ["SPY"], as_of, -1)
