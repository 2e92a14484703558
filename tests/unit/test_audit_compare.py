"""The re-run comparison: per topic, live events against re-run events by id, payloads field by field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from streams.audit.compare import (
    FieldDifference,
    compare_topic,
    compare_topics,
    differing,
    same,
    short,
)

A, B, C, D = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))


def event(event_id: str, ts_ingest: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts_event": 100,
        "ts_ingest": ts_ingest,
        "source": "analytics.rolling",
        "causation_id": "",
        "value": 1.5,
        **fields,
    }


@pytest.mark.parametrize(
    ("live", "rerun", "expected"),
    [
        pytest.param([], [], dict(live=0, rerun=0, identical=0), id="both empty"),
        pytest.param(
            [event(A), event(B)],
            [event(B, ts_ingest=9), event(A, ts_ingest=7)],
            dict(live=2, rerun=2, identical=2),
            id="identical in another order and at another publish time",
        ),
        pytest.param(
            [event(A), event(B), event(C)],
            [event(A)],
            dict(live=3, rerun=1, identical=1, missing=2, missing_ids=(B, C)),
            id="missing from the re-run",
        ),
        pytest.param(
            [event(A)],
            [event(A), event(D)],
            dict(live=1, rerun=2, identical=1, extra=1, extra_ids=(D,)),
            id="extra in the re-run",
        ),
        pytest.param(
            [event(A), event(B)],
            [event(A), event(B, value=1.5000000000000002)],
            dict(live=2, rerun=2, identical=1, differing=1),
            id="a last-digit float difference",
        ),
        pytest.param(
            [event(A, value=math.nan)],
            [event(A, value=math.nan)],
            dict(live=1, rerun=1, identical=1),
            id="NaN equals NaN",
        ),
        pytest.param(
            [event(A, value=1.0)],
            [event(A, value=1)],
            dict(live=1, rerun=1, identical=0, differing=1),
            id="a float is not an int",
        ),
        pytest.param(
            [event(A), event(A, ts_ingest=5)],
            [event(A)],
            dict(live=1, rerun=1, identical=1, live_duplicates=1),
            id="a re-sent live event counts once",
        ),
        pytest.param(
            [event(A), event(A, value=2.0)],
            [event(A)],
            dict(live=1, rerun=1, identical=1, live_duplicates=1, inconsistent=(f"live:{A}",)),
            id="a live event re-sent with another payload",
        ),
        pytest.param(
            [event(A, weights=[{"id": "x", "w": "0.5"}])],
            [event(A, weights=[{"id": "x", "w": "0.5"}, {"id": "y", "w": "0.5"}])],
            dict(live=1, rerun=1, identical=0, differing=1),
            id="a nested array of another length",
        ),
    ],
)
def test_compare_topic(live: list[dict[str, Any]], rerun: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    found = compare_topic("alerts", live, rerun)
    defaults = dict(missing=0, extra=0, differing=0, missing_ids=(), extra_ids=(), live_duplicates=0, inconsistent=())
    for name, value in {**defaults, **expected}.items():
        assert getattr(found, name) == value, name
    assert found.ok == (not (found.missing or found.extra or found.differing or found.inconsistent))


@pytest.mark.parametrize(
    ("live", "rerun", "paths"),
    [
        pytest.param(event(A), event(A, ts_ingest=2), [], id="ts_ingest is not compared"),
        pytest.param(event(A, value=1.0), event(A, value=2.0), [("value", "1.0", "2.0")], id="a scalar"),
        pytest.param(
            event(A, details={"a": "1", "b": "2"}),
            event(A, details={"a": "1", "b": "3"}),
            [("details.b", "'2'", "'3'")],
            id="a map's value",
        ),
        pytest.param(
            event(A, details={"a": "1"}),
            event(A, details={"a": "1", "c": "4"}),
            [("details.c", "<absent>", "'4'")],
            id="a key only the re-run has",
        ),
        pytest.param(
            event(A, weights=[{"id": "x", "w": "0.5"}, {"id": "y", "w": "0.5"}]),
            event(A, weights=[{"id": "x", "w": "0.5"}, {"id": "y", "w": "0.4"}]),
            [("weights[1].w", "'0.5'", "'0.4'")],
            id="inside an array of records",
        ),
        pytest.param(
            event(A, symbols=["A", "B"]),
            event(A, symbols=["A"]),
            [("symbols", "['A', 'B']", "['A']")],
            id="an array of another length, whole",
        ),
        pytest.param(
            event(A, causation_id="x", value=3.0),
            event(A, causation_id="y", value=4.0),
            [("causation_id", "'x'", "'y'"), ("value", "3.0", "4.0")],
            id="several fields in field order",
        ),
    ],
)
def test_field_differences(live: dict[str, Any], rerun: dict[str, Any], paths: list[tuple[str, str, str]]) -> None:
    found = compare_topic("t", [live], [rerun])
    if not paths:
        assert found.ok and found.identical == 1
        return
    assert found.differing == 1
    (difference,) = found.differences
    assert difference.event_id == A
    assert [(f.path, f.live, f.rerun) for f in difference.fields] == paths


def test_differences_are_short_and_counted() -> None:
    live = {f"f{i}": i for i in range(10)}
    rerun = {f"f{i}": -i - 1 for i in range(10)}
    found = differing(A, live, rerun, shown=3)
    assert [f.path for f in found.fields] == ["f0", "f1", "f2"] and found.more_fields == 7
    assert short("x" * 200, 20) == "'" + "x" * 18 + "…"
    assert FieldDifference("a", short(None), short(0)) == FieldDifference("a", "None", "0")


def test_examples_are_the_first_few_but_counts_whole() -> None:
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]
    found = compare_topic("t", [event(i) for i in ids], [event(i, value=0.0) for i in ids], examples=3)
    assert found.differing == 20 and [d.event_id for d in found.differences] == ids[:3]


def test_compare_topics_covers_either_side() -> None:
    found = compare_topics({"a": [event(A)], "b": []}, {"b": [event(B)], "c": [event(C)]})
    assert [(c.topic, c.live, c.rerun, c.ok) for c in found] == [
        ("a", 1, 0, False),
        ("b", 0, 1, False),
        ("c", 0, 1, False),
    ]


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (True, 1, False),
        (b"\x00", b"\x00", True),
        ({"x": [1.0, math.nan]}, {"x": [1.0, math.nan]}, True),
        (None, 0, False),
        ((1, 2), [1, 2], True),
    ],
)
def test_same(a: Any, b: Any, equal: bool) -> None:
    assert same(a, b) is equal
