"""Lag from librdkafka's statistics, liveness, and the endpoints an operator scrapes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from core.metrics import (
    ProcessMetrics,
    lags_from_statistics,
    liveness,
    process_port,
    reconnects_from_statistics,
    serve,
)


def _partition(**offsets: int) -> dict[str, int]:
    base = {"ls_offset": -1, "hi_offset": -1, "app_offset": -1, "committed_offset": -1, "lo_offset": -1}
    return {**base, **offsets}


@pytest.mark.parametrize(
    ("partition", "lag"),
    [
        (_partition(ls_offset=100, hi_offset=100, app_offset=40), 60),  # consumed up to 40
        (_partition(ls_offset=90, hi_offset=100, app_offset=40), 50),  # an open transaction: the LSO is the end
        (_partition(ls_offset=100, app_offset=100), 0),
        (_partition(ls_offset=100, committed_offset=70), 30),  # nothing consumed yet in this run
        (_partition(ls_offset=100, lo_offset=10), 90),  # nothing consumed, nothing committed
        (_partition(hi_offset=100, app_offset=99), 1),  # read_uncommitted: no LSO reported
        (_partition(ls_offset=5, app_offset=7), 0),  # never negative
    ],
)
def test_lag_is_the_end_minus_what_the_application_was_given(partition: dict[str, int], lag: int) -> None:
    stats = {"topics": {"md.bars.1m": {"partitions": {"0": partition}}}}
    assert lags_from_statistics(stats) == {("md.bars.1m", 0): lag}


def test_partitions_without_offsets_and_the_unassigned_pseudo_partition_are_left_out() -> None:
    stats: dict[str, Any] = {
        "topics": {
            "t": {
                "partitions": {
                    "-1": _partition(ls_offset=5, app_offset=0),
                    "3": _partition(),
                    "4": _partition(ls_offset=8, app_offset=2),
                }
            }
        }
    }
    assert lags_from_statistics(stats) == {("t", 4): 6}


@pytest.mark.parametrize(("connects", "reconnects"), [([1], 0), ([1, 1, 1], 0), ([3], 2), ([0, 4, 2], 4), ([], 0)])
def test_reconnects_count_connections_beyond_the_first(connects: list[int], reconnects: int) -> None:
    stats = {"brokers": {f"b{i}": {"connects": n} for i, n in enumerate(connects)}}
    assert reconnects_from_statistics(stats) == reconnects


@pytest.mark.parametrize(
    ("lag", "since_progress_s", "alive"),
    [(0, 10_000.0, True), (5, 10.0, True), (5, 120.0, True), (5, 120.1, False), (1, 1e9, False)],
)
def test_only_lag_without_progress_past_the_bound_is_stuck(lag: int, since_progress_s: float, alive: bool) -> None:
    assert liveness(lag, since_progress_s, 120.0)[0] is alive


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_process_with_lag_that_stops_progressing_turns_unhealthy_and_recovers_when_it_moves() -> None:
    clock = _Clock()
    metrics = ProcessMetrics("analytics", liveness_after_s=60.0, clock=clock)
    stats = {"topics": {"md.bars.1m": {"partitions": {"0": _partition(ls_offset=500, app_offset=100)}}}}
    metrics.on_statistics(json.dumps(stats))
    clock.now += 61
    assert metrics.alive()[0] is False
    metrics.consumed("md.bars.1m", 400)
    assert metrics.alive()[0] is True


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def test_metrics_and_liveness_are_served_over_http() -> None:
    clock = _Clock()
    metrics = ProcessMetrics("projections", liveness_after_s=30.0, clock=clock)
    port = serve(metrics, "127.0.0.1", 0)
    assert port
    metrics.consumed("md.bars.1m", 7)
    metrics.produced([("md.bars.1m", 7)])
    metrics.dead_lettered(2)
    metrics.committed()
    metrics.on_statistics(
        json.dumps({"topics": {"md.bars.1m": {"partitions": {"2": _partition(ls_offset=10, app_offset=3)}}}})
    )
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert 'tidemark_events_in_total{process="projections",topic="md.bars.1m"} 7.0' in text
    assert 'tidemark_dead_letters_total{process="projections"} 2.0' in text
    assert 'tidemark_consumer_lag{partition="2",process="projections",topic="md.bars.1m"} 7.0' in text
    assert "tidemark_last_commit_timestamp_seconds" in text
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    clock.now += 31
    status, text = _get(f"http://127.0.0.1:{port}/healthz")
    assert status == 503 and "stuck: lag 7" in text


def test_a_taken_port_leaves_the_process_running_without_metrics() -> None:
    first = serve(ProcessMetrics("a", 60.0), "127.0.0.1", 0)
    assert first is not None
    assert serve(ProcessMetrics("b", 60.0), "127.0.0.1", first) is None


def test_counts_kept_elsewhere_are_read_at_scrape_time() -> None:
    counts = {"frames": 3, "bars_1m": 2}
    metrics = ProcessMetrics("polygon-live", 60.0)
    metrics.count_from("tidemark_connector_events", "test counts", lambda: counts)
    port = serve(metrics, "127.0.0.1", 0)
    counts["frames"] = 10
    text = _get(f"http://127.0.0.1:{port}/metrics")[1]
    assert 'tidemark_connector_events_total{kind="frames",process="polygon-live"} 10.0' in text
    assert 'tidemark_connector_events_total{kind="bars_1m",process="polygon-live"} 2.0' in text


@pytest.mark.parametrize(("base", "offset", "port"), [(9464, 0, 9464), (9464, 1, 9465), (9464, 2, 9466), (0, 1, 0)])
def test_each_process_has_its_port_and_a_base_of_zero_lets_the_system_pick(base: int, offset: int, port: int) -> None:
    assert process_port(base, offset) == port
