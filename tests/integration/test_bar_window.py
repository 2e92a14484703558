"""The Redis window of recent bars, through the real projection sink: Kafka → sink process → PostgreSQL and Redis.

The window of a symbol holds the bars starting less than TIDEMARK_BAR_WINDOW_S (an hour) before its newest bar: the
60 one-minute bars of the hour that ends when the newest bar closes."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from connectors.publisher import BarPublisher
from core.settings import Settings
from core.units import NS_PER_MINUTE
from projections.bars import CONSUMER
from projections.redis_store import WindowBar, recent_bars, window_key
from schemas.bars import BarBatch
from tests.conftest import REPO
from tests.factories import minute_bars
from tests.integration.test_pipeline import count, fetch
from tests.services import eventually

pytestmark = pytest.mark.integration

START_NS = int(datetime(2025, 3, 3, 13, 0, tzinfo=UTC).timestamp()) * 10**9
SYMBOLS = ("SPY", "EURUSD", "MES")
MINUTES = 120  # two hours of 1m bars per symbol
WINDOW_BARS = 60  # the window: an hour of one-minute bars


def close_of(symbol: int, minute: int) -> float:
    return 100.0 * (symbol + 1) + 0.25 * minute


def market(minutes: range = range(MINUTES)) -> list[BarBatch]:
    """One batch per minute, every symbol, with closes that tell each (symbol, minute) apart."""
    batches = []
    for minute in minutes:
        bars = minute_bars(list(SYMBOLS), [START_NS + minute * NS_PER_MINUTE] * len(SYMBOLS))
        close = np.array([close_of(s, minute) for s in range(len(SYMBOLS))])
        batches.append(dataclasses.replace(bars, open=close - 0.1, high=close + 0.5, low=close - 0.5, close=close))
    return batches


def publish(settings: Settings, batches: list[BarBatch]) -> int:
    publisher = BarPublisher(settings.kafka.bootstrap, settings.topic("md.bars.1m"), source="synthetic")
    for bars in batches:
        publisher.publish(bars)
    publisher.flush()
    return sum(len(b) for b in batches)


@pytest.fixture
def sink(isolated: Settings, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Projection sink processes (``python -m projections.sink``) started by the test; killed if left running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def start_sink(settings: Settings, procs: list[subprocess.Popen[bytes]], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "projections.sink"],
        env=settings.environment(),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    procs.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the sink finishes the batch in hand (PostgreSQL, then Redis) and exits, so Redis is final after it."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def window(settings: Settings, symbol: str) -> list[WindowBar]:
    async def read() -> list[WindowBar]:
        client = aioredis.from_url(settings.redis_url)
        try:
            return await recent_bars(client, "1m", symbol)
        finally:
            await client.aclose()

    return asyncio.run(read())


def expected_window(symbol: int, newest_minute: int = MINUTES - 1) -> list[tuple[int, float]]:
    first = newest_minute - WINDOW_BARS + 1
    return [(START_NS + m * NS_PER_MINUTE, close_of(symbol, m)) for m in range(first, newest_minute + 1)]


def duplicates_ignored(dsn: str) -> int:
    rows = fetch(
        dsn,
        "SELECT coalesce(sum(value), 0) AS n FROM projection_counters WHERE consumer = $1"
        " AND counter = 'duplicates_ignored'",
        CONSUMER,
    )
    return int(rows[0]["n"])


def test_each_symbols_window_holds_its_last_hour_once_however_often_its_bars_arrive(
    isolated: Settings, run_cli: Callable[..., Any], sink: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    assert isolated.processing.bar_window_s == 3600
    run_cli("topics", "create")
    published = publish(isolated, market())
    assert published == MINUTES * len(SYMBOLS)

    first = start_sink(isolated, sink, tmp_path / "sink-0.log")
    eventually(lambda: count(isolated.postgres_dsn, "bars") == published, timeout=120, what="every bar projected")
    for i, symbol in enumerate(SYMBOLS):
        eventually(
            lambda i=i, symbol=symbol: [(b.start_ns, b.close) for b in window(isolated, symbol)] == expected_window(i),
            timeout=30,
            what=f"{symbol}'s window of its last hour",
        )
    stop(first)

    client = redis.Redis.from_url(isolated.redis_url)
    before: dict[str, list[bytes]] = {}
    for i, symbol in enumerate(SYMBOLS):
        bars = window(isolated, symbol)
        # Exactly the last 60 minutes, oldest first, with every field of each bar; two hours went through.
        assert len(bars) == WINDOW_BARS
        assert [(b.start_ns, b.close) for b in bars] == expected_window(i)
        newest = bars[-1]
        assert (newest.open, newest.high, newest.low, newest.volume, newest.kind) == (
            close_of(i, MINUTES - 1) - 0.1,
            close_of(i, MINUTES - 1) + 0.5,
            close_of(i, MINUTES - 1) - 0.5,
            10.0,
            "OHLCV",
        )
        assert bars[-1].start_ns - bars[0].start_ns == (WINDOW_BARS - 1) * NS_PER_MINUTE
        key = window_key("1m", symbol)
        assert 0 < client.ttl(key) <= 2 * isolated.processing.bar_window_s
        before[symbol] = client.zrange(key, 0, -1)  # type: ignore[assignment]
    assert not client.exists(window_key("1d", SYMBOLS[0]))

    # Re-delivery: the sink starts again from scratch offsets (its PostgreSQL offsets gone) over the same bars
    # published a second time, the last minute of SPY corrected. Everything is applied again, twice over.
    fetch(isolated.postgres_dsn, "DELETE FROM applied_offsets WHERE consumer = $1 RETURNING 1", CONSUMER)
    again = market()
    last = again[-1]
    moved = np.where(np.arange(len(last)) == 0, 1.0, 0.0)
    again[-1] = dataclasses.replace(
        last, open=last.open + moved, high=last.high + moved, low=last.low + moved, close=last.close + moved
    )
    publish(isolated, again)

    second = start_sink(isolated, sink, tmp_path / "sink-1.log")
    eventually(
        lambda: duplicates_ignored(isolated.postgres_dsn) == 2 * published,
        timeout=120,
        what="every bar re-applied (counted as a duplicate)",
    )
    stop(second)
    assert count(isolated.postgres_dsn, "bars") == published

    for i, symbol in enumerate(SYMBOLS):
        members = client.zrange(window_key("1m", symbol), 0, -1)
        assert len(members) == WINDOW_BARS, f"{symbol}: duplicated or lost members"
        bars = window(isolated, symbol)
        want = expected_window(i)
        if symbol == "SPY":
            # A republished bar replaces the one of the same start (last in log order wins): one member per start.
            want[-1] = (want[-1][0], want[-1][1] + 1.0)
            assert members[:-1] == before[symbol][:-1] and members[-1] != before[symbol][-1]
        else:
            assert members == before[symbol]
        assert [(b.start_ns, b.close) for b in bars] == want

    # Bounded: another hour of bars moves every window on; it keeps its 60 bars, none older than an hour.
    publish(isolated, market(range(MINUTES, MINUTES + 60)))
    third = start_sink(isolated, sink, tmp_path / "sink-2.log")
    eventually(
        lambda: count(isolated.postgres_dsn, "bars") == published + 60 * len(SYMBOLS),
        timeout=120,
        what="the third hour projected",
    )
    stop(third)
    for i, symbol in enumerate(SYMBOLS):
        assert client.zcard(window_key("1m", symbol)) == WINDOW_BARS
        assert [(b.start_ns, b.close) for b in window(isolated, symbol)] == expected_window(i, MINUTES + 59)

    # A late bar from before the window (a connector re-running an old day) does not re-enter it.
    publish(isolated, market(range(0, 1)))
    fourth = start_sink(isolated, sink, tmp_path / "sink-3.log")
    eventually(
        lambda: duplicates_ignored(isolated.postgres_dsn) == 2 * published + len(SYMBOLS),
        timeout=120,
        what="the late bars counted",
    )
    stop(fourth)
    for i, symbol in enumerate(SYMBOLS):
        assert [(b.start_ns, b.close) for b in window(isolated, symbol)] == expected_window(i, MINUTES + 59)
