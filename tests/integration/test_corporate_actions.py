"""Corporate actions end to end: Polygon splits and dividends -> md.corporate_actions -> PostgreSQL, once; and
`tidemark query bars --adjusted` on AAPL's 4-for-1 split against hand-computed numbers, raw bars untouched."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from core.settings import Settings
from fakes.polygon import FakePolygon
from schemas.codec import get_registry
from tests.integration.kafka_tools import read_all
from tests.integration.test_pipeline import count, fetch
from tests.integration.test_polygon_backfill import KEY, tidemark
from tests.services import eventually
from tidemark.backfill import day_range_ns

pytestmark = pytest.mark.integration

# AAPL's raw daily bars around its 2020 dividend (ex 2020-08-07, $0.82) and 4-for-1 split (ex 2020-08-31).
AAPL_DAYS = {
    "2020-08-06": (441.62, 457.65, 439.19, 455.61, 62_934_000.0),
    "2020-08-07": (452.82, 454.70, 441.17, 444.45, 49_511_403.0),
    "2020-08-28": (504.05, 505.77, 498.31, 499.23, 46_907_479.0),
    "2020-08-31": (127.58, 131.00, 126.00, 129.04, 225_702_700.0),
    "2020-09-01": (132.76, 134.80, 130.53, 134.18, 151_948_100.0),
}


def _day_ms(day: str) -> int:
    """Polygon stamps a daily bar at New York midnight."""
    return day_range_ns(date.fromisoformat(day), date.fromisoformat(day))[0] // 1_000_000


def test_aapl_split_and_dividend_adjust_history_on_read(
    isolated: Settings, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    with FakePolygon(KEY, page_size=1) as fake:  # page size 1: every list is paginated
        settings = isolated.changed(polygon__api_key=KEY, polygon__rest_url=fake.rest_url, state_dir=tmp_path)
        fake.add_bars(
            "AAPL",
            "day",
            [{"t": _day_ms(d), "o": o, "h": h, "l": lo, "c": c, "v": v} for d, (o, h, lo, c, v) in AAPL_DAYS.items()],
        )
        fake.add_split("AAPL", "2020-08-31", 1, 4)
        fake.add_dividend("AAPL", "2020-08-07", 0.82, declaration_date="2020-07-30", pay_date="2020-08-13")
        fake.add_split("NVDA", "2024-06-10", 1, 10)  # another symbol's action stays out of AAPL's history

        first = tidemark(settings, "ingest", "corporate-actions", "--symbols", "AAPL,NVDA")
        assert "3 corporate action(s) of 2 symbol(s): 3 published" in first.stderr
        again = tidemark(settings, "ingest", "corporate-actions", "--symbols", "AAPL,NVDA")
        assert "0 published" in again.stderr and "3 already there" in again.stderr
        tidemark(
            settings, "backfill", "--symbols", "AAPL", "--from", "2020-08-01", "--to", "2020-09-04", "--timespan", "day"
        )

    registry = get_registry()
    topic = read_all(settings.kafka.bootstrap, settings.topic("md.corporate_actions"))
    events = [registry.decode_as("tidemark.marketdata.CorporateActionAnnounced", value) for *_, value in topic]
    assert len(events) == len({e["event_id"] for e in events}) == 3

    start_worker(settings)
    dsn = settings.postgres_dsn
    eventually(lambda: count(dsn, "corporate_actions") == 3 and count(dsn, "bars") == 5, timeout=120)
    rows = fetch(dsn, "SELECT symbol, action_type, ex_date, split_from, split_to, cash_amount FROM corporate_actions")
    assert sorted((r["symbol"], r["action_type"], r["ex_date"]) for r in rows) == [
        ("AAPL", "DIVIDEND", date(2020, 8, 7)),
        ("AAPL", "SPLIT", date(2020, 8, 31)),
        ("NVDA", "SPLIT", date(2024, 6, 10)),
    ]

    adjusted = json.loads(
        tidemark(settings, "query", "bars", "AAPL", "--interval", "1d", "--adjusted", "--json").stdout
    )
    by_day = {row["start_ts"][:10]: row for row in adjusted}
    assert sorted(by_day) == sorted(AAPL_DAYS)
    # Hand-computed: before the split prices / 4 and volumes x 4; before the dividend also x (1 - 0.82 / 455.61),
    # so the 2020-08-06 close becomes (455.61 - 0.82) / 4.
    assert by_day["2020-08-28"]["close"] == pytest.approx(124.8075, rel=1e-12)
    assert by_day["2020-08-28"]["open"] == pytest.approx(126.0125, rel=1e-12)
    assert by_day["2020-08-28"]["volume"] == pytest.approx(187_629_916.0, rel=1e-12)
    assert by_day["2020-08-07"]["close"] == pytest.approx(111.1125, rel=1e-12)
    assert by_day["2020-08-06"]["close"] == pytest.approx(113.6975, rel=1e-12)
    assert by_day["2020-08-06"]["high"] == pytest.approx(457.65 * (1 - 0.82 / 455.61) / 4, rel=1e-12)
    assert by_day["2020-08-06"]["volume"] == pytest.approx(251_736_000.0, rel=1e-12)
    for day in ("2020-08-31", "2020-09-01"):
        assert by_day[day]["close"] == AAPL_DAYS[day][3] and by_day[day]["volume"] == AAPL_DAYS[day][4]

    raw = json.loads(tidemark(settings, "query", "bars", "AAPL", "--interval", "1d", "--json").stdout)
    assert [row["close"] for row in raw] == [values[3] for values in AAPL_DAYS.values()], "raw bars never rewritten"
