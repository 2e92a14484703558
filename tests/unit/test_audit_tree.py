"""The explain tree from the causation index's rows (DAGs shown once, unindexed causes, depth), and the bars behind a
bar-derived event as the processors form their rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.units import NS_PER_MINUTE
from schemas.links import BarWindow
from streams.audit.tree import Edge, Indexed, Node, build, to_json, windows
from streams.audit.window import Bar, fetch_limit, minutes_of, window_bars

T0 = datetime(2024, 10, 4, 14, 0, tzinfo=UTC)


def indexed(event_id: str, schema: str, minute: int, window: BarWindow | None = None) -> Indexed:
    return Indexed(
        event_id,
        f"tidemark.x.{schema}",
        "t",
        0,
        minute,
        T0.replace(minute=minute),
        None,
        "test",
        f"{schema} {event_id}",
        window,
    )


WINDOW = BarWindow(("AAPL",), "1m", 0, 3, "1m")
EVENTS = {
    "order": indexed("order", "PlaceOrder", 9),
    "rebalance": indexed("rebalance", "RebalanceProposed", 8),
    "targets": indexed("targets", "PortfolioTargetsSet", 7),
    "transition": indexed("transition", "StrategyTransitioned", 6),
    "command": indexed("command", "TransitionStrategy", 5),
    "candidate": indexed("candidate", "StrategyCandidateDiscovered", 4),
    "task": indexed("task", "DiscoverStrategy", 3),
    "signal": indexed("signal", "PatternSignalDetected", 2, WINDOW),
}
EDGES = [
    Edge("order", "rebalance", "causation", "rebalance"),
    Edge("rebalance", "targets", "causation", "targets"),
    Edge("rebalance", "targets", "targets_id", "targets"),
    Edge("targets", "transition", "inputs", "transition"),
    Edge("targets", "candidate", "inputs", "candidate"),
    Edge("targets", "account-1", "inputs", None),
    Edge("transition", "command", "causation", "command"),
    Edge("transition", "candidate", "evidence.candidate_id", "candidate"),
    Edge("command", "candidate", "causation", "candidate"),
    Edge("candidate", "task", "causation", "task"),
    Edge("candidate", "task", "task_id", "task"),
    Edge("task", "signal", "causation", "signal"),
]


def shape(node: Node, depth: int = 0) -> list[str]:
    """The tree as indented lines: id, relations, and `see` / `?` marks."""
    mark = "?" if node.event is None else ("see " if node.see else "")
    line = f"{'  ' * depth}{mark}{node.event_id} [{','.join(node.relations)}]" + (" …" if node.truncated else "")
    out = [line]
    for child in node.causes:
        out += shape(child, depth + 1)
    return out


def test_a_chain_walks_back_with_shared_causes_once_and_unindexed_ones_named() -> None:
    tree = build(EVENTS["order"], EVENTS, EDGES, depth=20)
    assert shape(tree) == [
        "order []",
        "  rebalance [causation]",
        "    targets [causation,targets_id]",
        # inputs: oldest first
        "      candidate [inputs]",
        "        task [causation,task_id]",
        "          signal [causation]",
        "      transition [inputs]",
        "        command [causation]",
        "          see candidate [causation]",
        "        see candidate [evidence.candidate_id]",
        "      ?account-1 [inputs]",
    ]
    assert [e.event_id for e in windows(tree)] == ["signal"]


def test_depth_limits_the_walk_and_marks_what_is_cut() -> None:
    tree = build(EVENTS["order"], EVENTS, EDGES, depth=2)
    assert shape(tree) == ["order []", "  rebalance [causation]", "    targets [causation,targets_id] …"]
    assert to_json(tree)["causes"][0]["causes"][0]["truncated"] is True


def test_a_cycle_ends_in_a_reference() -> None:
    events = {"a": indexed("a", "A", 1), "b": indexed("b", "B", 2)}
    edges = [Edge("a", "b", "causation", "b"), Edge("b", "a", "causation", "a")]
    assert shape(build(events["a"], events, edges, 20)) == ["a []", "  b [causation]", "    see a [causation]"]


def test_json_carries_every_field_and_the_bars() -> None:
    tree = build(EVENTS["task"], EVENTS, EDGES, depth=20)
    found = to_json(tree, {"signal": {"count": 3}})
    assert found == {
        "event_id": "task",
        "type": "DiscoverStrategy",
        "schema": "tidemark.x.DiscoverStrategy",
        "topic": "t",
        "partition": 0,
        "offset": 3,
        "ts_event": "2024-10-04T14:03:00Z",
        "key": None,
        "source": "test",
        "summary": "DiscoverStrategy task",
        "relations": [],
        "causes": [
            {
                **{k: v for k, v in to_json(build(EVENTS["signal"], EVENTS, [], 20)).items() if k != "relations"},
                "relations": ["causation"],
                "bars": {"count": 3},
            }
        ],
    }
    unindexed = to_json(build(EVENTS["targets"], EVENTS, EDGES, 1))["causes"][-1]
    assert unindexed == {"event_id": "account-1", "relations": ["inputs"], "indexed": False}


# -- windows -----------------------------------------------------------------------------------------------------

DAY3 = int(datetime(2024, 10, 3, 13, 30, tzinfo=UTC).timestamp()) * 10**9  # NYSE opens (9:30 New York)
DAY4 = int(datetime(2024, 10, 4, 13, 30, tzinfo=UTC).timestamp()) * 10**9
CLOSE4 = DAY4 + 390 * NS_PER_MINUTE  # 20:00 UTC


def minute_bars(symbol: str, first_ns: int, count: int, asset_class: str = "EQUITY") -> list[Bar]:
    return [
        Bar(symbol, first_ns + i * NS_PER_MINUTE, first_ns + (i + 1) * NS_PER_MINUTE, asset_class, 100.0 + i, i)
        for i in range(count)
    ]


def test_every_bar_is_a_row_of_a_minute_window() -> None:
    bars = minute_bars("AAPL", DAY4 - 10 * NS_PER_MINUTE, 40)  # ten pre-market minutes, then the session
    window = BarWindow(("AAPL",), "1m", DAY4 + 25 * NS_PER_MINUTE, 31, "1m")
    chosen = window_bars(window, reversed(bars))
    assert [b.start_ns for b in chosen] == [b.start_ns for b in bars[4:35]]
    regular = BarWindow(("AAPL",), "1m", DAY4 + 25 * NS_PER_MINUTE, 31, "1m", regular_session=True)
    assert [b.start_ns for b in window_bars(regular, bars)] == [b.start_ns for b in bars[10:35]]
    assert fetch_limit(window, "EQUITY") == 31


def test_hour_rows_are_session_aligned_and_a_forming_one_is_left_out() -> None:
    bars = minute_bars("KO", DAY3, 390) + minute_bars("KO", DAY4, 320)
    # 14:30 New York on day 4: the scan at the boundary sees rows 09:30, 10:30, ..., 13:30 of day 4 (the 14:30 bucket
    # would still be forming, and no bar of it arrived before the boundary anyway).
    as_of = DAY4 + 5 * 60 * NS_PER_MINUTE
    window = BarWindow(("KO",), "1m", as_of, 10, "1h", regular_session=True, whole_rows=True)
    chosen = window_bars(window, bars)
    closing_minutes_day4 = [59, 119, 179, 239, 299]
    closing_minutes_day3 = [179, 239, 299, 359, 389]  # the last bucket of a session is the short 15:30-16:00 one
    assert [b.start_ns for b in chosen] == [DAY3 + m * NS_PER_MINUTE for m in closing_minutes_day3] + [
        DAY4 + m * NS_PER_MINUTE for m in closing_minutes_day4
    ]
    # Half an hour into a bucket, it is still forming: not scanned.
    inside = BarWindow(("KO",), "1m", as_of - 30 * NS_PER_MINUTE, 3, "1h", regular_session=True, whole_rows=True)
    assert [b.start_ns for b in window_bars(inside, bars)] == [DAY4 + m * NS_PER_MINUTE for m in (119, 179, 239)]
    assert fetch_limit(window, "EQUITY") == 11 * 60
    assert minutes_of("15m") == 15 and minutes_of("1d") is None
    with pytest.raises(ValueError):
        minutes_of("1w")


def test_session_rows_close_with_their_last_bar_and_a_session_closing_at_the_boundary_still_forms() -> None:
    bars = minute_bars("KO", DAY3, 390) + minute_bars("KO", DAY4, 390)
    scan = BarWindow(("KO",), "1m", CLOSE4, 2, "1d", regular_session=True, whole_rows=True)
    assert [b.start_ns for b in window_bars(scan, bars)] == [DAY3 + 389 * NS_PER_MINUTE]
    later = BarWindow(("KO",), "1m", CLOSE4 + 60 * NS_PER_MINUTE, 2, "1d", regular_session=True, whole_rows=True)
    assert [b.start_ns for b in window_bars(later, bars)] == [DAY3 + 389 * NS_PER_MINUTE, DAY4 + 389 * NS_PER_MINUTE]
    # A correlation's daily rows take the latest bar of each session, complete or not.
    snapshot = BarWindow(("KO",), "1m", DAY4 + 100 * NS_PER_MINUTE, 2, "1d", regular_session=True)
    assert [b.start_ns for b in window_bars(snapshot, bars)] == [DAY3 + 389 * NS_PER_MINUTE, DAY4 + 99 * NS_PER_MINUTE]
    assert fetch_limit(snapshot, "EQUITY") == 3 * 390 and fetch_limit(snapshot, "FX") == 3 * 1440


def test_nothing_before_the_window_means_no_rows() -> None:
    window = BarWindow(("KO",), "1m", DAY3, 5, "1d", regular_session=True, whole_rows=True)
    assert window_bars(window, minute_bars("KO", DAY4, 10)) == []
