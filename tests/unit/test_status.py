"""``tidemark status`` judged from facts alone: which groups are the app's, when lag is a stall, and the verdict."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from core.kafka import PartitionLag
from tidemark import status
from tidemark.stack import ServiceStatus
from tidemark.status import (
    BEHIND,
    CATCHING_UP,
    CAUGHT_UP,
    NOT_STARTED,
    OTHER,
    RUNNER,
    SINK,
    STALLED,
    Facts,
    GroupFacts,
    ProjectionFacts,
    app_groups,
    assess,
    judge_group,
)

NOW = datetime(2025, 3, 3, 15, 0, tzinfo=UTC)
BOUND = 120.0


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def service(name: str, up: bool = True) -> ServiceStatus:
    return ServiceStatus(name, f"127.0.0.1:{name}", up, True, "answers" if up else "not answering: refused")


ALL_UP = [service("kafka"), service("postgres"), service("redis")]


def lags(topic: str, *pairs: tuple[int | None, int]) -> list[PartitionLag]:
    """Partitions 0.. of ``topic`` with (committed, end)."""
    return [PartitionLag(topic, p, committed, end) for p, (committed, end) in enumerate(pairs)]


def runner(*pairs: tuple[int | None, int], state: str = "empty") -> GroupFacts:
    return GroupFacts("tidemark", RUNNER, state, lags("md.bars.1m", *pairs))


def sink(*pairs: tuple[int | None, int], state: str = "stable") -> GroupFacts:
    return GroupFacts("tidemark-projections", SINK, state, lags("analytics.stats", *pairs))


def facts(**changes: object) -> Facts:
    base: dict[str, object] = {
        "context": "default",
        "app_id": "tidemark",
        "now": NOW,
        "services": ALL_UP,
        "groups": [runner((10, 10)), sink((5, 5))],
        "checkpoint_read": True,
        "checkpoint_at": ago(3),
        "projections": [ProjectionFacts("projection.bars", 8, 1000, ago(2))],
    }
    return Facts(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lag", "state", "measured", "age", "expected"),
    [
        (0, "empty", True, None, CAUGHT_UP),  # idle since its last checkpoint, however long ago: nothing to do
        (0, "empty", True, 10_000.0, CAUGHT_UP),
        (0, "absent", True, None, NOT_STARTED),
        (5, "empty", True, 3.0, CATCHING_UP),
        (5, "empty", True, BOUND, CATCHING_UP),  # the bound itself is still progress
        (5, "empty", True, BOUND + 0.1, STALLED),
        (5, "absent", True, None, STALLED),  # records waiting and no worker ever checkpointed
        (5, "stable", False, None, BEHIND),  # lag on a group whose progress is not measured: noted, not judged
    ],
)
def test_a_group_is_stalled_only_with_lag_and_no_progress_within_the_bound(
    lag: int, state: str, measured: bool, age: float | None, expected: str
) -> None:
    assert judge_group(lag, state, measured, age, BOUND) == expected


@pytest.mark.parametrize(
    ("app_id", "listed", "expected"),
    [
        ("tidemark", [], ["tidemark", "tidemark-projections"]),
        ("tidemark", ["tidemark-projections", "tidemark"], ["tidemark", "tidemark-projections"]),
        # another app id (recognised by its own -projections group) shares the prefix: not ours
        (
            "tidemark",
            ["tidemark", "tidemark-demo", "tidemark-demo-projections", "tidemark-ab12-projections", "other"],
            ["tidemark", "tidemark-projections"],
        ),
        # a further group of ours (a later agent) is listed after the runner's and the sink's
        ("tidemark", ["tidemark-lifecycle", "tidemark"], ["tidemark", "tidemark-projections", "tidemark-lifecycle"]),
        # a test's second app id nested in the first one's name stays with its own
        (
            "tidemark-ab12",
            ["tidemark-ab12", "tidemark-ab12-reference", "tidemark-ab12-reference-projections", "tidemark-ab12x"],
            ["tidemark-ab12", "tidemark-ab12-projections"],
        ),
        ("tidemark-demo", ["tidemark", "tidemark-projections"], ["tidemark-demo", "tidemark-demo-projections"]),
    ],
)
def test_the_app_groups_are_its_runner_sink_and_prefixed_groups_of_no_other_app(
    app_id: str, listed: list[str], expected: list[str]
) -> None:
    assert app_groups(app_id, listed) == expected


@pytest.mark.parametrize(
    ("changes", "healthy", "verdicts", "problem"),
    [
        ({}, True, [CAUGHT_UP, CAUGHT_UP], None),
        # working through a backlog: checkpoints and projection writes are recent
        ({"groups": [runner((10, 500), (0, 20)), sink((5, 90))]}, True, [CATCHING_UP, CATCHING_UP], None),
        # the runner's last checkpoint is older than the bound while bars wait: stuck
        (
            {"groups": [runner((10, 500)), sink((5, 5))], "checkpoint_at": ago(BOUND + 60)},
            False,
            [STALLED, CAUGHT_UP],
            "group tidemark (analytics runner) stalled: lag 490, checkpoint 3m ago",
        ),
        # bars published, no worker ever ran: both groups absent with everything as lag
        (
            {
                "groups": [runner((None, 7), (None, 3), state="absent"), sink((None, 10), state="absent")],
                "checkpoint_at": None,
                "projections": [],
            },
            False,
            [STALLED, STALLED],
            "group tidemark (analytics runner) stalled: lag 10, no checkpoint yet",
        ),
        # the projections stopped writing while their input grows
        (
            {
                "projections": [ProjectionFacts("projection.bars", 8, 1000, ago(600))],
                "groups": [runner(), sink((5, 9))],
            },
            False,
            [CAUGHT_UP, STALLED],
            "group tidemark-projections (projection sink) stalled: lag 4, projection write 10m ago",
        ),
        # without updated_at the projections' progress is not measured: their lag is noted, never a failure
        (
            {"projections_timed": False, "groups": [runner((10, 10)), sink((5, 9))]},
            True,
            [CAUGHT_UP, BEHIND],
            None,
        ),
        ({"services": [service("kafka", up=False), *ALL_UP[1:]], "groups": None}, False, None, "kafka down"),
        ({"services": [*ALL_UP[:2], service("redis", up=False)]}, False, [CAUGHT_UP, CAUGHT_UP], "redis down"),
        # something that could not be read leaves status unable to vouch for the system
        ({"errors": ["could not read the lag of group tidemark: timed out"]}, False, [CAUGHT_UP, CAUGHT_UP], "timed"),
        # a group of ours that is neither runner nor sink: lag is shown, progress not measured
        (
            {
                "groups": [
                    runner((1, 1)),
                    sink((1, 1)),
                    GroupFacts("tidemark-x", OTHER, "stable", lags("alerts", (0, 4))),
                ]
            },
            True,
            [CAUGHT_UP, CAUGHT_UP, BEHIND],
            None,
        ),
    ],
)
def test_the_verdict_is_unhealthy_for_a_down_service_an_unread_fact_or_a_stalled_group(
    changes: dict[str, object], healthy: bool, verdicts: list[str] | None, problem: str | None
) -> None:
    report = assess(facts(**changes), BOUND)
    assert report.healthy is healthy
    assert report.exit_code == (0 if healthy else 1)
    assert (None if report.groups is None else [g.verdict for g in report.groups]) == verdicts
    if problem is None:
        assert report.problems == []
        assert report.verdict == "healthy"
    else:
        assert any(problem in p for p in report.problems), report.problems
        assert report.verdict.startswith("UNHEALTHY: ")


def test_json_sums_lag_per_topic_and_keeps_each_partition() -> None:
    group = GroupFacts(
        "tidemark-projections", SINK, "stable", lags("md.bars.1m", (3, 10), (None, 4)) + lags("alerts", (2, 2))
    )
    report = assess(facts(groups=[runner((1, 1)), group], missing_topics=["md.trades"]), BOUND)
    document = json.loads(json.dumps(report.to_json()))
    sink_json = document["groups"][1]
    assert sink_json["lag"] == 11
    assert [(t["topic"], t["lag"]) for t in sink_json["topics"]] == [("md.bars.1m", 11), ("alerts", 0)]
    assert sink_json["topics"][0]["partitions"] == [
        {"partition": 0, "committed": 3, "end": 10, "lag": 7},
        {"partition": 1, "committed": None, "end": 4, "lag": 4},
    ]
    assert sink_json["progress"] == "projection write"
    assert sink_json["progress_age_s"] == 2.0
    assert document["checkpoint"] == {"last_at": ago(3).isoformat(), "age_s": 3.0}
    assert document["projections"][0]["age_s"] == 2.0
    assert any("md.trades" in note for note in document["notes"])


def test_ages_are_never_negative_when_clocks_disagree() -> None:
    report = assess(facts(checkpoint_at=NOW + timedelta(seconds=2)), BOUND)
    assert report.checkpoint_age_s == 0.0


def test_the_human_report_names_each_group_and_the_verdict() -> None:
    out = io.StringIO()
    report = assess(facts(groups=[runner((10, 500)), sink((5, 5))], checkpoint_at=ago(BOUND + 60)), BOUND)
    status.render(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "tidemark-projections" in text
    assert "checkpoint 3m ago" in text
    assert "UNHEALTHY: group tidemark (analytics runner) stalled" in text


def test_the_runner_topics_named_here_are_the_runners() -> None:
    from streams.runner import CHECKPOINTS, INPUT_TOPIC

    assert (status.RUNNER_INPUT, status.CHECKPOINT_TOPIC) == (INPUT_TOPIC, CHECKPOINTS)
