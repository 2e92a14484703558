"""Pure parts of the Polygon REST connector: the retry policy, aggregates into bars, actions into events."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from polygon.rest.models import Agg, Dividend, Split

from connectors.polygon.backfill import BackfillProgress, ProgressStore
from connectors.polygon.corporate_actions import dividend_event, split_event
from connectors.polygon.rest import RetryPolicy, aggs_to_batch, parse_retry_after
from connectors.polygon.symbols import parse_symbol
from schemas.codec import get_registry
from tidemark.backfill import day_range_ns


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (0, None, 1.0),  # no header: exponential backoff from base
        (3, None, 8.0),
        (10, None, 60.0),  # capped
        (0, 5.0, 5.0),  # the header asks for longer than the backoff: honoured
        (4, 5.0, 16.0),  # the backoff has grown past the header
        (10, 120.0, 120.0),  # the server's Retry-After wins even above the cap
        (0, 0.0, 1.0),
    ],
)
def test_wait_is_the_longer_of_retry_after_and_capped_backoff(
    attempt: int, retry_after: float | None, expected: float
) -> None:
    assert RetryPolicy(max_attempts=12, base_s=1.0, cap_s=60.0).wait_s(attempt, retry_after) == expected


NOW = datetime(2024, 6, 3, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Mon, 03 Jun 2024 12:00:30 GMT", 30.0),
        ("Mon, 03 Jun 2024 11:59:00 GMT", 0.0),  # in the past: retry now
        (None, None),
        ("", None),
        ("soon", None),
        ("-3", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def _agg(t: int, **fields: float | None) -> Agg:
    values: dict[str, float | int | None] = {"o": 10.0, "h": 11.0, "l": 9.0, "c": 10.5, "v": 100.0}
    values |= {"vw": 10.2, "n": 7, "t": t}
    values |= fields
    return Agg.from_dict(values)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_minute_aggs_become_a_batch_with_sessions() -> None:
    rows = [
        _agg(_ms("2024-06-03T13:29:00+00:00")),  # 09:29 New York: pre-market
        _agg(_ms("2024-06-03T13:30:00+00:00"), vw=None, n=None),  # the open
        _agg(_ms("2024-06-03T13:31:00+00:00"), c=None),  # no close: dropped
    ]
    batch = aggs_to_batch(parse_symbol("AAPL"), "1m", 60 * 10**9, rows)
    assert batch.symbol.tolist() == ["AAPL", "AAPL"]
    assert batch.interval == "1m"
    assert batch.start_ns.tolist() == [
        _ms("2024-06-03T13:29:00+00:00") * 10**6,
        _ms("2024-06-03T13:30:00+00:00") * 10**6,
    ]
    assert (batch.end_ns - batch.start_ns).tolist() == [60 * 10**9] * 2
    assert batch.regular_session.tolist() == [False, True]
    assert batch.trade_count.tolist() == [7, -1]
    assert batch.vwap[0] == 10.2 and batch.vwap[1] != batch.vwap[1]
    assert batch.asset_class.tolist() == [1, 1]


def test_fx_aggs_use_the_fx_calendar() -> None:
    batch = aggs_to_batch(parse_symbol("C:EURUSD"), "1m", 60 * 10**9, [_agg(_ms("2024-06-08T12:00:00+00:00"))])
    assert batch.symbol.tolist() == ["EURUSD"]
    assert batch.regular_session.tolist() == [False]  # Saturday


def test_split_event() -> None:
    split = Split.from_dict(
        {"id": "E36416cce7", "execution_date": "2020-08-31", "split_from": 1, "split_to": 4, "ticker": "AAPL"}
    )
    event = split_event("AAPL", split)
    assert event is not None
    assert (event["action_type"], event["split_from"], event["split_to"]) == ("SPLIT", "1", "4")
    assert event["ex_date"] == date(2020, 8, 31)
    assert event["action_id"] == "polygon:split:E36416cce7"
    assert event["ts_event"] == int(datetime(2020, 8, 31, tzinfo=UTC).timestamp()) * 10**9
    get_registry().encode("tidemark.marketdata.CorporateActionAnnounced", event)  # valid against the schema
    again = split_event("AAPL", split)
    assert again is not None and again["event_id"] == event["event_id"]
    amended = split_event("AAPL", Split.from_dict({**split.__dict__, "split_to": 5}))
    assert amended is not None and amended["event_id"] != event["event_id"]
    assert amended["action_id"] == event["action_id"]


@pytest.mark.parametrize(
    ("split_from", "split_to", "kind"),
    [(1, 10, "SPLIT"), (10, 1, "REVERSE_SPLIT"), (2, 3, "SPLIT"), (1.5, 1, "REVERSE_SPLIT")],
)
def test_split_kinds(split_from: float, split_to: float, kind: str) -> None:
    split = Split.from_dict({"id": "X", "execution_date": "2024-06-10", "split_from": split_from, "split_to": split_to})
    event = split_event("NVDA", split)
    assert event is not None and event["action_type"] == kind


def test_dividend_event() -> None:
    dividend = Dividend.from_dict(
        {
            "id": "Ediv1",
            "cash_amount": 0.82,
            "currency": "USD",
            "declaration_date": "2020-07-30",
            "dividend_type": "CD",
            "ex_dividend_date": "2020-08-07",
            "frequency": 4,
            "pay_date": "2020-08-13",
            "record_date": "2020-08-10",
            "ticker": "AAPL",
        }
    )
    event = dividend_event("AAPL", dividend)
    assert event is not None
    assert (event["action_type"], event["cash_amount"], event["currency"]) == ("DIVIDEND", "0.82", "USD")
    assert (event["ex_date"], event["pay_date"]) == (date(2020, 8, 7), date(2020, 8, 13))
    assert event["ts_event"] == int(datetime(2020, 7, 30, tzinfo=UTC).timestamp()) * 10**9  # when declared
    get_registry().encode("tidemark.marketdata.CorporateActionAnnounced", event)
    special = dividend_event("AAPL", Dividend.from_dict({**dividend.__dict__, "dividend_type": "SC"}))
    assert special is not None and special["action_type"] == "SPECIAL_DIVIDEND"


@pytest.mark.parametrize(
    "fields",
    [{"ex_dividend_date": None, "cash_amount": 0.5}, {"ex_dividend_date": "2024-01-02", "cash_amount": None}],
)
def test_unusable_dividends_are_skipped(fields: dict[str, object]) -> None:
    assert dividend_event("AAPL", Dividend.from_dict({"id": "x", **fields})) is None


def test_day_range_is_new_york_midnight_to_midnight() -> None:
    start, end = day_range_ns(date(2024, 1, 2), date(2024, 1, 5))
    assert start == int(datetime(2024, 1, 2, 5, tzinfo=UTC).timestamp()) * 10**9
    assert end == int(datetime(2024, 1, 6, 5, tzinfo=UTC).timestamp()) * 10**9


def test_progress_records_round_trip_and_replace(tmp_path: Path) -> None:
    store = ProgressStore(tmp_path / "cp")
    assert store.load("AAPL") is None
    store.save("AAPL", BackfillProgress(through_ns=5, scan_from=3))
    store.save("AAPL", BackfillProgress(through_ns=9, scan_from=4, bars=2, done=True))
    assert store.load("AAPL") == BackfillProgress(through_ns=9, scan_from=4, bars=2, done=True)
    assert sorted(p.name for p in (tmp_path / "cp").iterdir()) == ["AAPL.json"]
