"""Faults injected under a running worker, on a broker of the test's own: the worker recovers by itself, stops when
told to whatever the broker does, and its results equal an uninterrupted run's.

The moment of each fault is one the test controls: the broker dies while the worker has caught up and the next
bars arrive only once it is back; the broker is paused after the analytics runner has consumed every bar it was
given and cannot commit (its checkpoint is an hour away), so its stop must wait on the broker. How long recovery
takes is measured by ``python -m bench.faults``, never asserted here.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.settings import Settings
from core.supervision import EXIT_STOP_OVERRAN
from fakes.polygon import FakePolygon
from tests.integration.brokers import broker_paused, free_port_pair, kill_broker, own_broker, start_broker
from tests.integration.kafka_tools import worker_caught_up
from tests.integration.test_crash_recovery import (
    _ALERTS,
    _BARS,
    _LATEST,
    _SNAPSHOT_ORDER,
    _SNAPSHOTS,
    _STATS,
    _analytics_lag,
    _event_ids,
    publish_minutes,
    table,
)
from tests.integration.test_pipeline import count
from tests.integration.test_polygon_live import KEY, Connector, against_fake, agg, minutes, subscribed
from tests.services import eventually

pytestmark = pytest.mark.integration

FAULT_SYMBOLS = 100
SPLIT, TOTAL = 240, 480  # minutes: the input arrives as [0, 240), then [240, 480)
COMPARED = (
    (_BARS, ["symbol", "start_ts"]),
    (_STATS, ["symbol", "timeframe", "window_bars"]),
    (_SNAPSHOTS, _SNAPSHOT_ORDER),
    (_LATEST, _SNAPSHOT_ORDER),
    (_ALERTS, ["event_id"]),
)


@pytest.fixture
def faulty(isolated: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The test's settings on a broker of its own, which the test may kill or pause."""
    with own_broker(isolated, tmp_path / "stack") as settings:
        yield settings


def _same_as_an_uninterrupted_run(
    settings: Settings, start_worker: Callable[..., Any], new_database: Callable[[], str]
) -> None:
    """Each output event once (read_committed), then a second worker over the same input projects equal tables."""
    repeated = {event_id: n for event_id, n in Counter(_event_ids(settings)).items() if n > 1}
    assert not repeated, f"{len(repeated)} event ids published more than once"
    reference = settings.model_copy(update={"app_id": settings.app_id + "-reference", "postgres_dsn": new_database()})
    start_worker(reference)
    eventually(lambda: worker_caught_up(reference), timeout=300, what="the reference worker caught up")
    eventually(lambda: worker_caught_up(settings), timeout=120, what="the projections caught up again")
    for query, order in COMPARED:
        pd.testing.assert_frame_equal(
            table(settings.postgres_dsn, query, order), table(reference.postgres_dsn, query, order)
        )


def test_broker_killed_and_restarted_under_a_running_worker_is_recovered_from_without_a_human(
    faulty: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    new_database: Callable[[], str],
) -> None:
    run_cli("topics", "create", settings=faulty)
    first = publish_minutes(faulty, 0, SPLIT, symbols=FAULT_SYMBOLS)
    worker = start_worker(faulty)
    eventually(lambda: worker_caught_up(faulty), timeout=300, what="the worker caught up before the fault")

    kill_broker(faulty)
    start_broker(faulty)  # `tidemark stack up`, as the operator in the issue did
    rest = publish_minutes(faulty, SPLIT, TOTAL, symbols=FAULT_SYMBOLS)
    eventually(lambda: worker_caught_up(faulty), timeout=300, what="the worker recovered by itself and caught up")

    assert worker.poll() is None, "the worker runs on: a failed part is restarted, never left dead"
    assert count(faulty.postgres_dsn, "bars") == first + rest
    _same_as_an_uninterrupted_run(faulty, start_worker, new_database)


def _consumed_by_the_runner(port: int) -> int:
    """The analytics runner's own count of bars consumed, from its /metrics endpoint (-1 while it starts)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:  # URLError included: not listening yet
        return -1
    found = re.findall(r'^tidemark_events_in_total\{process="analytics",topic="[^"]+"\} ([0-9.e+]+)$', text, re.M)
    return int(sum(float(value) for value in found))


def test_sigterm_while_the_broker_is_paused_ends_the_worker_and_the_next_one_loses_nothing(
    faulty: Settings,
    run_cli: Callable[..., Any],
    start_worker: Callable[..., Any],
    new_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    run_cli("topics", "create", settings=faulty)
    published = publish_minutes(faulty, 0, SPLIT, symbols=FAULT_SYMBOLS)
    port = free_port_pair()  # the runner's metrics port; the sink takes the next
    hourly = faulty.changed(processing__checkpoint_every_s=3600.0, operations__metrics_port=port)
    worker = start_worker(hourly)
    eventually(lambda: _consumed_by_the_runner(port) == published, timeout=300, what="the runner consumed every bar")

    with broker_paused(faulty):
        # The runner must commit what it holds before it exits, and the broker does not answer: its stop bound
        # (10 s) ends it, and the worker, which waited for it, exits too.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == EXIT_STOP_OVERRAN
    log = (tmp_path / "worker-0.log").read_text()
    assert "did not stop within 10s" in log, log[-3000:]
    assert _analytics_lag(faulty) == published, "nothing the stopped runner held was committed"

    start_worker(faulty)
    eventually(lambda: worker_caught_up(faulty), timeout=300, what="a new worker did the work")
    assert count(faulty.postgres_dsn, "bars") == published
    _same_as_an_uninterrupted_run(faulty, start_worker, new_database)


def test_sigterm_to_the_live_connector_while_the_broker_is_paused_ends_it_within_its_bound(
    faulty: Settings, tmp_path: Path
) -> None:
    """A bar received while the broker does not answer cannot be delivered: the stop bound (10 s) cuts the last
    flush short, and the connector says what it could not deliver instead of waiting on Kafka."""
    with FakePolygon(KEY) as fake:
        settings = against_fake(faulty, fake)
        connector = Connector(settings, tmp_path / "connector.log", "--symbols", "AAPL", "--intervals", "1m")
        try:
            eventually(lambda: subscribed(fake, "stocks", "AM.AAPL"), timeout=120, what="subscribed")
            fake.push("stocks", [agg("AAPL", 0)])
            eventually(lambda: minutes(settings) == {"AAPL": [0]}, timeout=60, what="the first bar delivered")
            with broker_paused(settings):
                fake.push("stocks", [agg("AAPL", 1)])
                eventually(lambda: "bars 1m 2 " in connector.output(), timeout=60, what="the second bar taken")
                connector.proc.send_signal(signal.SIGTERM)
                assert connector.proc.wait(timeout=60) == 1
        finally:
            if connector.proc.poll() is None:
                connector.proc.kill()
    output = connector.output()
    assert "stopped with messages undelivered" in output and "1 message(s) undelivered" in output, output[-2000:]
