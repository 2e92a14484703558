"""``tidemark status --json`` against the real services: an app id with nothing running, bars that no worker
consumes (a stall, exit 1), and the same bars after the worker caught up (healthy, lag 0, a checkpoint age)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from core.kafka import message_count
from core.settings import Settings
from tests.integration.kafka_tools import worker_caught_up
from tests.integration.test_pipeline import synthetic_args
from tests.services import eventually

pytestmark = pytest.mark.integration


def status_json(run_cli: Callable[..., Any], exit_code: int) -> dict[str, Any]:
    result = run_cli("status", "--json", check=False)
    assert result.returncode == exit_code, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def groups_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["group"]: g for g in document["groups"]}


def test_status_shows_services_lag_and_checkpoint_before_and_after_the_worker(
    isolated: Settings, run_cli: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    runner, sink = isolated.app_id, f"{isolated.app_id}-projections"
    bars = isolated.topic("md.bars.1m")

    # Nothing yet for this app id: every service answers, its two groups are not on the broker, nothing to do.
    empty = status_json(run_cli, 0)
    assert empty["app_id"] == isolated.app_id
    assert [(s["name"], s["up"]) for s in empty["services"]] == [("kafka", True), ("postgres", True), ("redis", True)]
    assert [(g["group"], g["state"], g["lag"], g["verdict"]) for g in empty["groups"]] == [
        (runner, "absent", 0, "not started"),
        (sink, "absent", 0, "not started"),
    ]
    assert empty["checkpoint"] == {"last_at": None, "age_s": None}
    assert empty["projections"] == []
    assert any("topics create" in note for note in empty["notes"])

    # Bars and no worker: everything published is lag of both groups, with no checkpoint ever: stalled, exit 1.
    run_cli("topics", "create")
    run_cli(*synthetic_args(minutes=60))
    published = message_count(isolated.kafka.bootstrap, bars)
    assert published > 0
    waiting = status_json(run_cli, 1)
    assert waiting["healthy"] is False
    waiting_groups = groups_of(waiting)
    assert (waiting_groups[runner]["lag"], waiting_groups[runner]["verdict"]) == (published, "stalled")
    [runner_topic] = waiting_groups[runner]["topics"]
    assert runner_topic["topic"] == bars
    assert len(runner_topic["partitions"]) == isolated.kafka.topic_partitions
    assert all(p["committed"] is None and p["lag"] == p["end"] for p in runner_topic["partitions"])
    assert sum(p["lag"] for p in runner_topic["partitions"]) == published
    sink_bars = next(t for t in waiting_groups[sink]["topics"] if t["topic"] == bars)
    assert sink_bars["lag"] == published
    assert f"group {runner} (analytics runner) stalled: lag {published:,}, no checkpoint yet" in waiting["verdict"]

    # The worker processes them: once its outputs are projected, status is healthy with lag 0 everywhere.
    start_worker()
    eventually(lambda: worker_caught_up(isolated), timeout=180, what="the worker caught up")
    # The sink records its offsets in Kafka just after its PostgreSQL commit: wait for status to see that too.
    healthy = eventually(
        lambda: (r := run_cli("status", "--json", check=False)).returncode == 0 and json.loads(r.stdout),
        timeout=60,
        what="tidemark status healthy",
    )
    assert healthy["problems"] == []
    caught_up = groups_of(healthy)
    assert list(caught_up)[:2] == [runner, sink]
    for name in (runner, sink):
        group = caught_up[name]
        assert (group["state"] != "absent", group["lag"], group["verdict"]) == (True, 0, "caught up"), group
        for topic in group["topics"]:
            # every record consumed; a partition that never had one was never committed
            assert all(
                p["lag"] == 0 and p["committed"] in (p["end"], None if p["end"] == 0 else p["end"])
                for p in topic["partitions"]
            ), topic
    assert sum(p["end"] for p in caught_up[runner]["topics"][0]["partitions"]) == published

    checkpoint = healthy["checkpoint"]
    assert checkpoint["last_at"] is not None and checkpoint["age_s"] >= 0
    assert (caught_up[runner]["progress"], caught_up[runner]["progress_at"]) == ("checkpoint", checkpoint["last_at"])
    projections = {p["projection"]: p for p in healthy["projections"]}
    assert projections["projection.bars"]["applied"] == published
    assert projections["projection.bars"]["last_applied_at"] is not None
    assert projections["projection.bars"]["age_s"] >= 0
    assert caught_up[sink]["progress"] == "projection write"

    table = run_cli("status")
    assert "healthy" in table.stdout.splitlines()[-1]
    assert runner in table.stdout and "analytics checkpoint:" in table.stdout
