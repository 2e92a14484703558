"""Polygon backfill through the official RESTClient against the fake server: pagination, 429s, auth errors, and a
backfill killed with -9 and rerun whose topic and projection hold every bar exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from connectors.polygon.backfill import BackfillProgress, ProgressStore, progress_dir
from connectors.polygon.rest import PolygonAuthError, PolygonError, RetryPolicy, fetch_bars, guard, make_client
from core.settings import Settings
from fakes.polygon import FakePolygon
from schemas.fastbars import decode_bars
from tests.conftest import REPO
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import count, fetch
from tests.services import eventually
from tidemark.backfill import day_range_ns

pytestmark = pytest.mark.integration

KEY = "test-polygon-key-5f1c"
MINUTE_MS = 60_000
FIRST, LAST = date(2024, 3, 4), date(2024, 3, 8)  # Monday to Friday, New York days
START_NS, END_NS = day_range_ns(FIRST, LAST)


def minute_rows(first_ms: int, count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.1, count))
    return [
        {"t": first_ms + i * MINUTE_MS, "o": c, "h": c + 0.05, "l": c - 0.05, "c": c, "v": 100.0 + i, "vw": c, "n": 3}
        for i, c in enumerate(close.tolist())
    ]


class GatedPolygon(FakePolygon):
    """The fake with a gate the test controls: ``hold_after(n)`` serves ``n`` more aggregate requests, then answers
    every one 429 with a Retry-After of a day (which the backfill waits out, stoppable) until ``open_gate()``.
    A backfill can then be stopped part-way for certain, where racing a kill against its progress would not be."""

    HELD = (429, 86_400)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate_lock = threading.Lock()
        self._allowance: int | None = None
        self.held = 0

    def hold_after(self, requests: int) -> None:
        with self._gate_lock:
            self._allowance = requests

    def open_gate(self) -> None:
        with self._gate_lock:
            self._allowance = None

    def _gate(self, request: web.Request) -> tuple[dict[str, str], web.Response | None]:
        if request.path.startswith("/v2/aggs/"):
            with self._gate_lock:
                if self._allowance is not None:
                    if self._allowance > 0:
                        self._allowance -= 1
                    else:
                        self.held += 1
                        self._failures.insert(0, self.HELD)  # answered (and logged) as an injected failure
        return super()._gate(request)


@pytest.fixture
def fake() -> Iterator[GatedPolygon]:
    with GatedPolygon(KEY, page_size=700) as server:
        yield server


@pytest.fixture
def settings(isolated: Settings, fake: FakePolygon, tmp_path: Path) -> Settings:
    return isolated.changed(polygon__api_key=KEY, polygon__rest_url=fake.rest_url, state_dir=tmp_path / "state")


def tidemark(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "tidemark.cli", *args],
        env=settings.environment(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"tidemark {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def load_market(fake: FakePolygon, symbols: dict[str, str], minutes: int) -> dict[str, list[int]]:
    """Minute bars every minute from the range's start (24h a day, so every symbol has thousands); returns the
    expected start times (ns) per symbol."""
    first_ms = START_NS // 1_000_000
    expected = {}
    for seed, (symbol, ticker) in enumerate(symbols.items()):
        rows = minute_rows(first_ms, minutes, seed)
        # Bars outside the requested range must not be published.
        rows += minute_rows(END_NS // 1_000_000, 5, seed) + minute_rows(first_ms - 10 * MINUTE_MS, 5, seed)
        fake.add_bars(ticker, "minute", rows)
        expected[symbol] = sorted(r["t"] * 1_000_000 for r in rows if START_NS <= r["t"] * 1_000_000 < END_NS)
    return expected


def topic_bars(settings: Settings, topic: str = "md.bars.1m") -> list[tuple[str, int]]:
    values = [value for _, _, _, value in read_all(settings.kafka.bootstrap, settings.topic(topic))]
    batch, _, failures = decode_bars(values)
    assert not failures
    return list(zip(batch.symbol.tolist(), batch.start_ns.tolist(), strict=True))


def backfill_args(symbols: str, *extra: str) -> tuple[str, ...]:
    return ("backfill", "--symbols", symbols, "--from", FIRST.isoformat(), "--to", LAST.isoformat(), *extra)


def test_fetch_bars_follows_pages_and_waits_out_rate_limits(fake: FakePolygon) -> None:
    first_ms = START_NS // 1_000_000
    fake.add_bars("AAPL", "minute", minute_rows(first_ms, 2000, 1))
    client = make_client(KEY, fake.rest_url, policy=RetryPolicy(base_s=0.05))
    fake.fail_next(1, status=429, retry_after=1)
    fake.fail_next(1, status=429, retry_after=0)

    bars = fetch_bars(client, "AAPL", "minute", START_NS, START_NS + 2000 * MINUTE_MS * 1_000_000)

    assert bars.start_ns.tolist() == [(first_ms + i * MINUTE_MS) * 1_000_000 for i in range(2000)]
    statuses = [r.status for r in fake.requests]
    assert statuses == [429, 429, 200, 200, 200]  # two waits, then three pages of 700
    assert all(r.params.get("adjusted") == "false" for r in fake.requests), "raw bars: we adjust on read"
    stats = guard(client)
    assert stats.rate_limited == 2
    assert stats.waits == [1.0, 0.1], "Retry-After honoured, then the exponential backoff"


def test_a_plain_rest_client_gets_the_policy_too(fake: FakePolygon) -> None:
    from polygon import RESTClient

    fake.add_bars("MSFT", "minute", minute_rows(START_NS // 1_000_000, 10, 2))
    client = RESTClient(api_key=KEY, base=fake.rest_url)
    fake.fail_next(1, status=429, retry_after=0)
    bars = fetch_bars(client, "MSFT", "minute", START_NS, END_NS)
    assert len(bars) == 10
    assert guard(client).rate_limited == 1, "urllib3's hidden retry would not have been counted"


def test_retries_run_out_with_a_clear_error(fake: FakePolygon) -> None:
    client = make_client(KEY, fake.rest_url, policy=RetryPolicy(max_attempts=3, base_s=0.01))
    fake.fail_next(3, status=503)
    with pytest.raises(PolygonError, match="HTTP 503"):
        fetch_bars(client, "AAPL", "minute", START_NS, END_NS)
    assert [r.status for r in fake.requests] == [503, 503, 503]


def test_a_wrong_key_is_named_but_never_shown(fake: FakePolygon, settings: Settings) -> None:
    wrong = "wrong-key-9d2e7"
    with pytest.raises(PolygonAuthError, match="TIDEMARK_POLYGON_API_KEY") as raised:
        fetch_bars(make_client(wrong, fake.rest_url), "AAPL", "minute", START_NS, END_NS)
    assert wrong not in str(raised.value)

    result = tidemark(settings.changed(polygon__api_key=wrong), *backfill_args("AAPL"), check=False)
    assert result.returncode == 2
    assert "TIDEMARK_POLYGON_API_KEY" in result.stderr and wrong not in result.stderr + result.stdout

    missing = tidemark(settings.changed(polygon__api_key=None), *backfill_args("AAPL"), check=False)
    assert missing.returncode == 2 and "set TIDEMARK_POLYGON_API_KEY" in missing.stderr


def test_bad_dates_are_rejected(settings: Settings) -> None:
    result = tidemark(
        settings, "backfill", "--symbols", "AAPL", "--from", "2024-02-30", "--to", "2024-03-01", check=False
    )
    assert result.returncode == 2 and "not a date: '2024-02-30'" in result.stderr
    result = tidemark(
        settings, "backfill", "--symbols", "AAPL", "--from", "2024-03-02", "--to", "2024-03-01", check=False
    )
    assert result.returncode == 2 and "before --from" in result.stderr


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def progress_records(settings: Settings, timespan: str = "minute") -> dict[str, BackfillProgress]:
    folder = progress_dir(settings.state_dir, settings.topic("md.bars.1m"), timespan, START_NS, END_NS)
    store = ProgressStore(folder)
    found = {}
    for path in folder.glob("*.json"):
        progress = store.load(path.stem)
        if progress is not None:
            found[path.stem] = progress
    return found


def test_backfill_killed_mid_run_and_rerun_holds_every_bar_exactly_once(
    fake: GatedPolygon, settings: Settings, start_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    symbols = {"AAPL": "AAPL", "MSFT": "MSFT", "EURUSD": "C:EURUSD"}
    expected = load_market(fake, symbols, minutes=4 * 1440)
    total = sum(len(v) for v in expected.values())
    args = backfill_args(",".join(symbols), "--slice-bars", "150", "--concurrency", "2")
    tidemark(settings, "topics", "create")

    # Four pages of 700 bars are served (each symbol has nine), then both lanes wait out a day-long rate limit: the
    # kill finds the backfill part-way, every slice it published recorded, whatever the machine's speed.
    fake.hold_after(4)
    victim = subprocess.Popen(
        [sys.executable, "-m", "tidemark.cli", *args],
        env=settings.environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    eventually(lambda: fake.held == 2, timeout=120, what="both lanes of the backfill waiting at the gate")
    kill(victim)
    partial = len(topic_bars(settings))
    assert 1000 < partial < total
    assert sum(c.bars for c in progress_records(settings).values()) == partial
    assert not all(c.done for c in progress_records(settings).values())

    fake.open_gate()
    rerun = tidemark(settings, *args)
    assert "0 failed" in rerun.stderr

    published = topic_bars(settings)
    assert len(published) == len(set(published)) == total, "every bar once in the topic"
    for symbol, starts in expected.items():
        assert sorted(start for s, start in published if s == symbol) == starts
    assert all(c.done for c in progress_records(settings).values())

    again = tidemark(settings, *args)
    assert "3 already complete" in again.stderr and len(topic_bars(settings)) == total

    start_worker(settings)
    dsn = settings.postgres_dsn
    eventually(lambda: count(dsn, "bars") == total, timeout=180, what="the projection holds every bar")
    rows = fetch(dsn, "SELECT symbol, asset_class, count(*) AS n FROM bars GROUP BY 1, 2 ORDER BY 1")
    assert [(r["symbol"], r["asset_class"], r["n"]) for r in rows] == [
        (s, "FX" if s == "EURUSD" else "EQUITY", len(expected[s])) for s in sorted(expected)
    ]
    assert not fetch(dsn, "SELECT * FROM projection_counters WHERE counter = 'duplicates_ignored'")


def test_a_crash_between_flush_and_progress_record_publishes_nothing_twice(
    fake: FakePolygon, settings: Settings
) -> None:
    """The window a kill -9 rarely hits, made certain: the topic holds slices the progress does not know of."""
    expected = load_market(fake, {"AAPL": "AAPL"}, minutes=1000)
    args = backfill_args("AAPL", "--slice-bars", "200", "--concurrency", "1")
    tidemark(settings, *args)
    assert len(topic_bars(settings)) == 1000

    folder = progress_dir(settings.state_dir, settings.topic("md.bars.1m"), "minute", START_NS, END_NS)
    store = ProgressStore(folder)
    finished = store.load("AAPL")
    assert finished is not None and finished.done and finished.bars == 1000
    # As if killed right after the third slice's flush: the progress still says two slices (400 bars).
    store.save("AAPL", BackfillProgress(through_ns=expected["AAPL"][399] + 1, scan_from=0, bars=400))

    rerun = tidemark(settings, *args)
    assert "1 resumed past bars found in the topic" in rerun.stderr
    published = topic_bars(settings)
    assert len(published) == len(set(published)) == 1000
    progress = store.load("AAPL")
    assert progress is not None and progress.done


def test_day_bars_go_to_their_own_topic(fake: FakePolygon, settings: Settings) -> None:
    days_ms = [day_range_ns(date(2024, 3, d), date(2024, 3, d))[0] // 1_000_000 for d in (4, 5, 6, 7, 8)]
    fake.add_bars("AAPL", "day", [{"t": t, "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10.0} for t in days_ms])
    result = tidemark(settings, *backfill_args("AAPL", "--timespan", "day"))
    assert "5 bars" in result.stderr
    values = [value for _, _, _, value in read_all(settings.kafka.bootstrap, settings.topic("md.bars.1d"))]
    batch, _, _ = decode_bars(values)
    assert batch.interval == "1d"
    assert batch.start_ns.tolist() == [t * 1_000_000 for t in days_ms]
    assert batch.regular_session.all()
