"""`tidemark ingest polygon` against the fake Polygon server, through the official client, into the real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from core.deadletter import DEAD_LETTER_SCHEMA
from core.settings import Settings
from fakes.polygon import FakePolygon
from schemas.codec import get_registry
from schemas.fastbars import decode_bars
from tests.integration.kafka_tools import read_all
from tests.services import eventually
from tidemark.topics import create_topics

REPO = Path(__file__).resolve().parents[2]
KEY = "fake-key-7Qx93LmZ"
T0_MS = 1_741_014_000_000  # 2025-03-03 15:00 UTC, a Monday in the NYSE session
MINUTE_MS = 60_000


def agg(symbol: str, minute: int, close: float = 100.0, ev: str = "AM") -> dict[str, Any]:
    start = T0_MS + minute * MINUTE_MS
    name = {"pair": symbol} if "/" in symbol else {"sym": symbol}
    return {"ev": ev, **name, "v": 10, "o": close, "h": close + 1, "l": close - 1, "c": close, "vw": close,
            "s": start, "e": start + MINUTE_MS}  # fmt: skip


def trade(symbol: str, n: int, price: float = 100.0) -> dict[str, Any]:
    """The n-th trade of ``symbol``, one second apart, as the stocks feed sends it (ev T)."""
    return {"ev": "T", "sym": symbol, "i": str(n), "x": 4, "p": price + n, "s": 10, "c": [12], "z": 3, "q": n,
            "t": T0_MS + n * 1_000}  # fmt: skip


def rest_row(minute: int, close: float = 100.0) -> dict[str, Any]:
    return {"t": T0_MS + minute * MINUTE_MS, "o": close, "h": close + 1, "l": close - 1, "c": close, "v": 10,
            "vw": close, "n": 3}  # fmt: skip


@pytest.fixture
def fake() -> Iterator[FakePolygon]:
    with FakePolygon(KEY) as server:
        yield server


def against_fake(settings: Settings, fake: FakePolygon) -> Settings:
    """``settings`` pointed at the fake Polygon server, with the topics created."""
    configured = settings.changed(
        polygon__api_key=SecretStr(KEY),
        polygon__rest_url=fake.rest_url,
        polygon__ws_feed=fake.ws_feed,
        polygon__ws_secure=False,
    )
    create_topics(configured)
    return configured


@pytest.fixture
def settings(isolated: Settings, fake: FakePolygon) -> Settings:
    return against_fake(isolated, fake)


class Connector:
    """One `tidemark ingest polygon` process; stopped with SIGTERM like a service manager would."""

    def __init__(self, settings: Settings, log: Path, *args: str) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidemark.cli", "ingest", "polygon", "--progress", "0.5", *args],
            env=settings.environment(),
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.output()
        self._file.close()
        return self.output()


@pytest.fixture
def start(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Connector]]:
    started: list[Connector] = []

    def run(*args: str, env: Settings | None = None) -> Connector:
        connector = Connector(env or settings, tmp_path / f"connector-{len(started)}.log", *args)
        started.append(connector)
        return connector

    yield run
    for connector in started:
        if connector.proc.poll() is None:
            connector.proc.kill()
            connector.proc.wait(timeout=30)


def bars_in(settings: Settings, interval: str = "1m") -> dict[str, list[tuple[int, float]]]:
    """(start minute, close) per symbol in topic order (one symbol is one partition, so this is its order)."""
    records = read_all(settings.kafka.bootstrap, settings.topic(f"md.bars.{interval}"))
    records.sort(key=lambda r: (r[0], r[1]))
    batch, _, failures = decode_bars([value for *_, value in records])
    assert not failures
    out: dict[str, list[tuple[int, float]]] = {}
    for symbol, start, close in zip(batch.symbol.tolist(), batch.start_ns.tolist(), batch.close.tolist(), strict=True):
        out.setdefault(symbol, []).append(((start // 1_000_000 - T0_MS) // MINUTE_MS, close))
    return out


def minutes(settings: Settings) -> dict[str, list[int]]:
    return {symbol: [m for m, _ in rows] for symbol, rows in bars_in(settings).items()}


def subscribed(fake: FakePolygon, market: str, *params: str, auths: int = 0) -> bool:
    return fake.auth_attempts >= auths and set(params) <= fake.subscriptions(market)


def test_a_drop_is_resubscribed_and_its_gap_filled_from_rest_each_bar_once(
    fake: FakePolygon, settings: Settings, start: Callable[..., Connector]
) -> None:
    connector = start("--symbols", "AAPL,MSFT,EURUSD", "--intervals", "1m")
    eventually(lambda: subscribed(fake, "stocks", "AM.AAPL", "AM.MSFT") and subscribed(fake, "forex", "CA.EUR/USD"))
    for minute in range(3):
        fake.push("stocks", [agg("AAPL", minute), agg("MSFT", minute)])
        fake.push("forex", [agg("EUR/USD", minute, 1.1, ev="CA")])
    eventually(lambda: minutes(settings) == {s: [0, 1, 2] for s in ("AAPL", "MSFT", "EURUSD")})

    # Minutes 3 and 4 happen while the network is down: only REST has them (MSFT did not trade in minute 4).
    fake.add_bars("AAPL", "minute", [rest_row(3, 103), rest_row(4, 104)])
    fake.add_bars("MSFT", "minute", [rest_row(3, 203)])
    fake.add_bars("C:EURUSD", "minute", [rest_row(3, 1.3), rest_row(4, 1.4)])
    assert fake.drop_connections() == 2
    # Both feeds back and subscribed again: an event pushed to a feed not yet subscribed would simply be lost.
    eventually(
        lambda: (
            subscribed(fake, "stocks", "AM.AAPL", "AM.MSFT", auths=4)
            and subscribed(fake, "forex", "CA.EUR/USD")
            and fake.connections() == 2
        )
    )
    fake.push("stocks", [agg("AAPL", 5, 105), agg("MSFT", 5, 205), agg("AAPL", 2)])  # minute 2 again: a duplicate
    fake.push("forex", [agg("EUR/USD", 5, 1.5, ev="CA")])

    eventually(lambda: minutes(settings) == {"AAPL": [0, 1, 2, 3, 4, 5], "MSFT": [0, 1, 2, 3, 5],
                                             "EURUSD": [0, 1, 2, 3, 4, 5]})  # fmt: skip
    bars = bars_in(settings)
    assert [c for _, c in bars["AAPL"][3:]] == [103, 104, 105]
    assert [c for _, c in bars["EURUSD"][3:]] == [1.3, 1.4, 1.5]
    gap_requests = [r.path for r in fake.requests if r.path.startswith("/v2/aggs/")]
    assert sorted(p.split("/")[4] for p in gap_requests) == ["AAPL", "C:EURUSD", "MSFT"]
    last_line = connector.stop().strip().splitlines()[-2]
    assert "reconnects 2" in last_line and "backfilled 5" in last_line and "duplicates 1" in last_line


def test_duplicate_late_and_malformed_frames_are_dropped_counted_or_dead_lettered(
    fake: FakePolygon, settings: Settings, start: Callable[..., Connector]
) -> None:
    connector = start("--symbols", "AAPL,MSFT", "--intervals", "1m")
    eventually(lambda: subscribed(fake, "stocks", "AM.AAPL", "AM.MSFT"))
    fake.push("stocks", [agg("AAPL", 0), agg("MSFT", 0)])
    fake.push("stocks", [agg("AAPL", 0), agg("MSFT", 0)])  # the same frame again
    fake.push("stocks", [agg("AAPL", 100)])
    fake.push("stocks", [agg("AAPL", 98), agg("AAPL", 20)])  # a late bar within the window, one beyond it
    bad_price = {**agg("MSFT", 1), "c": "1.5"}
    inverted = {**agg("MSFT", 2), "h": 50.0}
    unknown = agg("TSLA", 1)
    fake.push_text("stocks", '[{"ev":"AM","sym":"MSFT"')  # truncated frame
    fake.push("stocks", [bad_price, inverted, agg("MSFT", 3)])
    fake.push_text("stocks", json.dumps([unknown]))  # the fake would filter it; the feed might not

    eventually(lambda: minutes(settings) == {"AAPL": [0, 100, 98], "MSFT": [0, 3]})
    dead = eventually(lambda: _dead_letters(settings, 4))
    reasons = sorted(r["reason"] for r in dead)
    assert reasons[0].startswith("1m aggregate: field c is missing or not a number")
    assert any("prices violate" in r for r in reasons)
    assert any("sym missing or not a subscribed instrument" in r for r in reasons)
    assert any(r.startswith("frame is not JSON") for r in reasons)
    assert {r["source_topic"] for r in dead} == {"polygon.ws/stocks"}
    assert b'"c":"1.5"' in next(r["original_value"] for r in dead if "field c" in r["reason"])
    last_line = connector.stop().strip().splitlines()[-2]
    assert "duplicates 2" in last_line and "late 1" in last_line and "hole fills 1" in last_line
    assert "dead letters 4" in last_line


def _dead_letters(settings: Settings, count: int) -> list[dict[str, Any]]:
    records = read_all(settings.kafka.bootstrap, settings.topic("dlq"))
    decoded = [get_registry().decode_as(DEAD_LETTER_SCHEMA, value) for *_, value in records]
    assert len(decoded) == count, decoded
    return decoded


def test_a_restart_resumes_from_the_topic_and_fills_the_downtime(
    fake: FakePolygon, settings: Settings, start: Callable[..., Connector], tmp_path: Path
) -> None:
    first = start("--symbols", "AAPL", "--intervals", "1m")
    eventually(lambda: subscribed(fake, "stocks", "AM.AAPL"))
    fake.push("stocks", [agg("AAPL", 0), agg("AAPL", 1)])
    eventually(lambda: minutes(settings) == {"AAPL": [0, 1]})
    first.stop()

    fake.add_bars("AAPL", "minute", [rest_row(m, 100 + m) for m in range(0, 4)])  # REST also has what we hold
    universe = tmp_path / "universe.txt"
    universe.write_text("# the same symbol, from a file\nAAPL\n")
    second = start("--universe", str(universe), "--intervals", "1m")
    eventually(lambda: subscribed(fake, "stocks", "AM.AAPL", auths=2))
    fake.push("stocks", [agg("AAPL", 1), agg("AAPL", 4, 104)])
    eventually(lambda: minutes(settings) == {"AAPL": [0, 1, 2, 3, 4]})
    output = second.stop()
    assert "2 recent bars already in the topics" in output
    assert "backfilled 2" in output.strip().splitlines()[-2]


def trade_ids(settings: Settings) -> list[str]:
    """The event id of every trade in md.trades, repeats included."""
    records = read_all(settings.kafka.bootstrap, settings.topic("md.trades"))
    return [get_registry().decode_as("tidemark.marketdata.TradePrinted", value)["event_id"] for *_, value in records]


def test_a_restart_publishes_each_trade_once_when_the_feed_sends_it_again(
    fake: FakePolygon, settings: Settings, start: Callable[..., Connector]
) -> None:
    args = ("--symbols", "AAPL,MSFT", "--intervals", "1m", "--trades")
    first = start(*args)
    eventually(lambda: subscribed(fake, "stocks", "T.AAPL", "T.MSFT"))
    replayed: list[Mapping[str, Any]] = [trade(symbol, n) for symbol in ("AAPL", "MSFT") for n in range(3)]
    fake.push("stocks", replayed)
    eventually(lambda: len(trade_ids(settings)) == 6)
    first.stop()
    before = set(trade_ids(settings))

    second = start(*args)
    eventually(lambda: subscribed(fake, "stocks", "T.AAPL", "T.MSFT", auths=2))
    fake.push("stocks", replayed)  # the same trades again, after the restart
    fake.push("stocks", [trade("AAPL", 3), trade("MSFT", 3)])

    def with_both_new_trades() -> list[str]:
        """The new trades come in a later frame, each on its symbol's partition behind any repeat the connector
        published of that symbol: once both are in the topic, so is every repeat."""
        ids = trade_ids(settings)
        return ids if len(set(ids) - before) == 2 else []

    ids = eventually(with_both_new_trades)
    repeated = sorted(event_id for event_id, count in Counter(ids).items() if count > 1)
    assert not repeated, f"published again after the restart: {repeated}"
    assert len(ids) == 8 and before < set(ids)
    output = second.stop()
    assert "6 recent trades already in" in output
    last_line = output.strip().splitlines()[-2]
    assert "trades 2 " in last_line and "duplicates 6" in last_line


def test_a_refused_key_is_a_clear_error_that_never_shows_the_key(
    fake: FakePolygon, settings: Settings, tmp_path: Path
) -> None:
    leaked = "sk-LEAKCHECK-0123456789"
    env = settings.changed(polygon__api_key=SecretStr(leaked)).environment()
    result = subprocess.run(
        [sys.executable, "-m", "tidemark.cli", "ingest", "polygon", "--symbols", "AAPL,EURUSD"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Polygon rejected the API key" in result.stderr
    assert "TIDEMARK_POLYGON_API_KEY" in result.stderr
    assert leaked not in result.stdout + result.stderr
    assert fake.auth_attempts >= 1 and not fake.subscriptions("stocks")
