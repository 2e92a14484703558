"""Every message a processor cannot decode or validate lands in ``dlq`` with its bytes, coordinates and reason; the
good ones around it are projected as usual. At volume too: ``bench.fuzz``'s plan and checks, at a few thousand
payloads of every class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from bench.fuzz import CLASSES, GOOD, caught_up, check, make_plan, publish, worker_children
from connectors.publisher import BarIds
from core.events import common_fields, now_ns
from core.settings import Settings
from schemas.bars import BarBatch
from schemas.codec import get_registry
from schemas.fastbars import encode_bars
from tests.factories import minute_bars
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import count
from tests.services import eventually

pytestmark = pytest.mark.integration

MINUTE = 60_000_000_000


def good_bars(n: int) -> BarBatch:
    return minute_bars(["SPY"] * n, [1_741_010_400_000_000_000 + i * MINUTE for i in range(n)])


def test_undecodable_bars_are_dead_lettered_with_their_bytes_and_reason(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    run_cli("topics", "create")
    topic = isolated.topic("md.bars.1m")
    bars = good_bars(4)
    valid = encode_bars(bars, source="test", ts_ingest=now_ns(), event_ids=BarIds("test")(bars))
    wrong_schema = get_registry().encode(
        "tidemark.risk.AlertRaised",
        {
            **common_fields("test", now_ns()),
            "kind": "test",
            "severity": "INFO",
            "subject": "SPY",
            "message": "x",
            "from_value": None,
            "to_value": None,
            "since_ns": None,
            "details": {},
        },
    )
    bad = {
        "random bytes": b"\x00\x01not avro at all",
        "truncated": valid[0][:-5],
        "unknown fingerprint": b"\xc3\x01" + b"\xff" * 8 + valid[0][10:],
        "another event type": wrong_schema,
    }
    sequence = [valid[0], *bad.values(), *valid[1:]]
    producer = Producer({"bootstrap.servers": isolated.kafka.bootstrap})
    for value in sequence:
        producer.produce(topic, value, b"SPY", partition=0)
    assert producer.flush(30) == 0

    start_worker()
    eventually(lambda: count(isolated.postgres_dsn, "bars") == len(valid), timeout=120, what="good bars projected")
    # Both consumers of the bars topic (the projection and the analytics runner) report each bad message.
    processors = {"projection.bars", "analytics.host"}
    dlq = isolated.topic("dlq")
    letters = eventually(
        lambda: (found := read_all(isolated.kafka.bootstrap, dlq)) and len(found) >= len(bad) * 2 and found,
        timeout=120,
        what="dead letters",
    )
    assert len(letters) == len(bad) * len(processors)
    registry = get_registry()
    offsets_of_bad = {value: offset for offset, value in enumerate(sequence) if value in bad.values()}
    seen = set()
    for _, _, key, value in letters:
        letter = registry.decode_as("tidemark.ops.MessageDeadLettered", value)
        assert key == topic.encode()
        assert letter["source_topic"] == topic
        assert letter["partition"] == 0
        assert letter["offset"] == offsets_of_bad[letter["original_value"]]
        assert letter["original_key"] == b"SPY"
        assert letter["reason"] and letter["error_type"]
        seen.add((letter["processor"], letter["offset"]))
    assert seen == {(p, o) for p in processors for o in offsets_of_bad.values()}


def test_bad_input_of_every_class_is_dead_lettered_once_per_reader_and_every_good_bar_is_stored_once(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    """Malformed, truncated, wrong-fingerprint, foreign, empty, huge and semantically invalid payloads mixed with
    good bars on every topic the worker reads: no worker process exits, each bad payload has exactly one dead
    letter (with a reason and its bytes) from each process that reads its topic, and the good bars are all stored,
    once, and nothing else is."""
    run_cli("topics", "create")
    plan = make_plan(bad=2500, good=1500, seed=11)
    where = publish(isolated, plan)
    worker = start_worker()

    def started() -> set[int] | None:
        children = worker_children(worker.pid)
        return children if len(children) == 2 else None

    children = eventually(started, timeout=60, what="the worker's runner and sink started")
    eventually(lambda: caught_up(isolated, plan), timeout=300, interval=0.5, what="runner and sink caught up")
    report = check(isolated, plan, where)

    assert worker.poll() is None, "the worker exited"
    assert worker_children(worker.pid) == children, "a worker process died and was restarted"
    assert report.problems == []
    assert set(report.published) == {*CLASSES, GOOD}
    assert report.letters == report.expected
    assert sum(report.expected.values()) > plan.count() - plan.count(GOOD)  # md.bars.1m has two readers
    assert set(report.example) == set(CLASSES) and all(reason.strip() for reason in report.example.values())
    assert report.good_in_postgres == report.rows_in_postgres == len(plan.good_bars) == plan.count(GOOD)
