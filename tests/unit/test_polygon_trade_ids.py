"""The live connector's memory of published trade ids: bounded, refilled at start-up, read from message heads."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.polygon.trade_ids import RecentIds, leading_event_id, newest_share
from core.events import deterministic_event_id
from schemas.codec import get_registry

TRADE_SCHEMA = "tidemark.marketdata.TradePrinted"


@pytest.mark.parametrize(
    ("capacity", "restored", "added", "fresh", "kept"),
    [
        pytest.param(3, [], ["a", "b", "a"], [True, True, False], ["a", "b"], id="a repeat within a run"),
        pytest.param(3, ["a", "b"], ["a", "c"], [False, True], ["a", "b", "c"], id="a repeat of a restored id"),
        pytest.param(2, [], ["a", "b", "c", "a"], [True, True, True, True], ["c", "a"], id="the oldest is forgotten"),
        pytest.param(2, ["a", "b", "c"], ["a", "c"], [True, False], ["c", "a"], id="restoring more than fits"),
        pytest.param(1, [], ["a", "a", "b", "a"], [True, False, True, True], ["a"], id="capacity one"),
        pytest.param(3, ["a", "a", "b"], ["b"], [False], ["a", "b"], id="restored repeats count once"),
    ],
)
def test_recent_ids_drop_repeats_and_stay_bounded(
    capacity: int, restored: list[str], added: list[str], fresh: list[bool], kept: list[str]
) -> None:
    recent = RecentIds(capacity, restored)
    assert [recent.add(event_id) for event_id in added] == fresh
    assert len(recent) == len(kept) <= capacity
    assert all(event_id in recent for event_id in kept)
    assert not [event_id for event_id in {*restored, *added} - set(kept) if event_id in recent]


def test_recent_ids_need_room_for_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecentIds(0)


@pytest.mark.parametrize(
    ("available", "limit", "expected"),
    [
        pytest.param({}, 10, {}, id="nothing in the window"),
        pytest.param({0: 3, 5: 4}, 10, {0: 3, 5: 4}, id="all of it fits"),
        pytest.param({0: 3, 5: 7}, 10, {0: 3, 5: 7}, id="exactly the limit"),
        pytest.param({0: 100, 1: 300}, 100, {0: 25, 1: 75}, id="shared in proportion"),
        pytest.param({0: 1, 1: 1, 2: 1}, 2, {0: 0, 1: 0, 2: 0}, id="rounded down, never over the limit"),
        pytest.param({0: 500_000, 1: 0}, 100, {0: 100, 1: 0}, id="one busy partition takes the whole limit"),
        pytest.param({0: 10, 1: 5}, 0, {0: 0, 1: 0}, id="no room"),
        pytest.param({0: -1, 1: 4}, 10, {0: 0, 1: 4}, id="a negative count reads nothing"),
    ],
)
def test_newest_share(available: dict[int, int], limit: int, expected: dict[int, int]) -> None:
    share = newest_share(available, limit)
    assert share == expected
    assert sum(share.values()) <= limit
    assert all(0 <= share[p] <= max(0, available[p]) for p in available)


def _trade(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "ts_event": 1, "ts_ingest": 2, "source": "polygon", "causation_id": "",
            "symbol": "AAPL", "asset_class": "EQUITY", "price": 101.5, "size": 10.0, "exchange": "4",
            "trade_id": "52983525029461", "conditions": [12, 37], "tape": 3, "sequence_number": 1063,
            "ts_participant": None}  # fmt: skip


EVENT_ID = deterministic_event_id("polygon", "trade", "AAPL", "4", "52983525029461", 1)
HEADER = get_registry().header(TRADE_SCHEMA)
TRADE = get_registry().encode(TRADE_SCHEMA, _trade(EVENT_ID))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(TRADE, EVENT_ID, id="a trade of the current schema"),
        pytest.param(TRADE[:47], EVENT_ID, id="nothing after the id is needed"),
        pytest.param(TRADE[:46], None, id="truncated inside the id"),
        pytest.param(TRADE[:10], None, id="header only"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"\xc3\x01" + bytes(8) + TRADE[10:], None, id="another fingerprint: left to the codec"),
        pytest.param(HEADER + b"\x46" + TRADE[11:], None, id="a string that is not 36 bytes long"),
        pytest.param(HEADER + b"\x48" + b"\xff" * 36, None, id="not ASCII"),
        pytest.param(b"{json}", None, id="not Avro"),
    ],
)
def test_leading_event_id(message: bytes, expected: str | None) -> None:
    assert leading_event_id(message, HEADER) == expected


def test_leading_event_id_is_what_the_codec_decodes() -> None:
    """The shortcut must agree with the codec for every id the connector writes."""
    for n in range(50):
        event_id = deterministic_event_id("polygon", "trade", "MSFT", "12", str(n), n)
        message = get_registry().encode(TRADE_SCHEMA, _trade(event_id))
        assert leading_event_id(message, HEADER) == get_registry().decode_as(TRADE_SCHEMA, message)["event_id"]
