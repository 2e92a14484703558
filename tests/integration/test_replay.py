"""`tidemark replay`: a rebuild from the log runs the live projections' own code over exactly the range asked for, into
a schema or a database of its own, and `--verify` finds a difference when there is one.

The time bounds are facts of the topic, not races: the second part of the input is published only after the wall
clock has passed the last timestamp of the first, and the bound lies between them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from core.settings import Settings
from tests.integration.kafka_tools import worker_caught_up
from tests.integration.test_crash_recovery import publish_minutes
from tests.integration.test_pipeline import count, fetch
from tests.services import eventually

pytestmark = pytest.mark.integration

SYMBOLS, FIRST, LAST = 100, 60, 120  # minutes [0, 60) then [60, 120)


def _publish(settings: Settings, first: int, last: int) -> int:
    return publish_minutes(settings, first, last, symbols=SYMBOLS)


def _last_timestamp_ms(settings: Settings) -> int:
    """The newest record timestamp of the bar topic (CreateTime, milliseconds)."""
    topic = settings.topic("md.bars.1m")
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "replay-test-probe"})
    try:
        newest = 0
        for partition in consumer.list_topics(topic, timeout=30).topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            if high > low:
                consumer.assign([TopicPartition(topic, partition, high - 1)])
                message = consumer.poll(30)
                assert message is not None and message.error() is None
                newest = max(newest, message.timestamp()[1])
        return newest
    finally:
        consumer.close()


def _after(ms: int) -> int:
    """A millisecond strictly after ``ms`` that the wall clock has reached."""
    while time.time_ns() // 1_000_000 <= ms:
        time.sleep(0.002)
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _schema_count(dsn: str, schema: str, table: str) -> int:
    return int(fetch(dsn, f'SELECT count(*) AS n FROM "{schema}"."{table}"')[0]["n"])


def test_a_rebuild_covers_exactly_the_time_range_and_projections_asked_for(
    isolated: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    new_database: Callable[[], str],
) -> None:
    run_cli("topics", "create")
    first = _publish(isolated, 0, FIRST)
    boundary = _after(_last_timestamp_ms(isolated))
    _after(boundary)  # every record of the second part is written at or after the boundary
    second = _publish(isolated, FIRST, LAST)
    start_worker()
    eventually(lambda: worker_caught_up(isolated), timeout=240, what="the worker caught up")
    dsn = isolated.postgres_dsn
    assert count(dsn, "bars") == first + second

    later = run_cli("replay", "--projection", "projection.bars", "--from", _iso(boundary), "--json")
    assert json.loads(later.stdout)["applied"] == {"projection.bars": second}
    assert _schema_count(dsn, "replay", "bars") == second
    assert _schema_count(dsn, "replay", "symbol_stats") == 0, "only the projection asked for"

    earlier = run_cli("replay", "--to", _iso(boundary), "--schema", "before", "--json")
    assert json.loads(earlier.stdout)["applied"]["projection.bars"] == first
    assert _schema_count(dsn, "before", "bars") == first
    assert count(dsn, "bars") == first + second, "the live tables are never written"

    elsewhere = new_database()
    refused = run_cli("replay", "--into", elsewhere, check=False)
    assert refused.returncode == 2 and "--replace" in refused.stderr, "a migrated database is not empty"
    into = run_cli("replay", "--into", elsewhere, "--replace", "--json")
    assert json.loads(into.stdout)["applied"]["projection.bars"] == first + second
    assert count(elsewhere, "bars") == first + second
    live = run_cli("replay", "--into", dsn, "--replace", check=False)
    assert live.returncode == 2 and "live database" in live.stderr

    unknown = run_cli("replay", "--projection", "projection.nothing", check=False)
    assert unknown.returncode == 2 and "no projection named projection.nothing" in unknown.stderr


def test_verify_names_the_table_and_the_rows_that_differ(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    published = _publish(isolated, 0, FIRST)
    worker = start_worker()
    eventually(lambda: worker_caught_up(isolated), timeout=240, what="the worker caught up")
    worker.terminate()
    worker.wait(timeout=60)
    identical = json.loads(run_cli("replay", "--verify", "--json").stdout)
    assert identical["identical"] and identical["tables"]["bars"]["live"]["rows"] == published

    # A row changed behind the projections' back: exactly that table differs, and the row is shown both ways.
    fetch(isolated.postgres_dsn, "UPDATE bars SET close = close + 1 WHERE ctid = (SELECT min(ctid) FROM bars)")
    tampered = run_cli("replay", "--verify", "--json", check=False)
    report = json.loads(tampered.stdout)
    assert tampered.returncode == 1 and not report["identical"]
    different = [name for name, table in report["tables"].items() if not table["equal"]]
    assert different == ["bars"]
    assert len(report["tables"]["bars"]["only_live"]) == 1 == len(report["tables"]["bars"]["only_rebuilt"])
