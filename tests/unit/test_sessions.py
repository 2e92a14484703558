from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest

from core import sessions
from core.sessions import (
    Market,
    is_open,
    market_of,
    next_close,
    next_open,
    regular_session_mask,
    session_label,
    session_open,
)
from core.units import NS_PER_MINUTE

# The references below call exchange_calendars, which still reads Series.values (deprecated in pandas 3).
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

NYSE, CME, FX = Market.NYSE, Market.CME, Market.FX
NEW_YORK, CHICAGO = ZoneInfo("America/New_York"), ZoneInfo("America/Chicago")


def ns(utc: str) -> int:
    """``"2026-03-09 13:30"`` (UTC) as epoch nanoseconds."""
    return int(datetime.fromisoformat(utc).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def day(d: str) -> int:
    return (date.fromisoformat(d) - date(1970, 1, 1)).days


# --- asset classes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("asset_class", "market"), [("EQUITY", NYSE), ("FUTURE", CME), ("FX", FX)])
def test_market_of(asset_class: str, market: Market) -> None:
    assert market_of(asset_class) is market


@pytest.mark.parametrize("asset_class", ["UNKNOWN", "equity", "CRYPTO", ""])
def test_market_of_unknown_asset_class(asset_class: str) -> None:
    with pytest.raises(ValueError, match="no session calendar for asset class"):
        market_of(asset_class)


# --- open or closed ---------------------------------------------------------------------------------------

OPEN_CASES = [
    # NYSE 09:30-16:00 New York: 13:30-20:00 UTC under EDT, 14:30-21:00 UTC under EST.
    (NYSE, "2026-03-06 14:29", False),  # Friday before DST starts on 2026-03-08 (EST)
    (NYSE, "2026-03-06 14:30", True),
    (NYSE, "2026-03-06 20:59", True),
    (NYSE, "2026-03-06 21:00", False),
    (NYSE, "2026-03-09 13:29", False),  # Monday after (EDT)
    (NYSE, "2026-03-09 13:30", True),
    (NYSE, "2026-03-09 19:59", True),
    (NYSE, "2026-03-09 20:00", False),
    (NYSE, "2026-10-30 13:30", True),  # Friday before DST ends on 2026-11-01 (EDT)
    (NYSE, "2026-11-02 13:30", False),  # Monday after (EST)
    (NYSE, "2026-11-02 14:30", True),
    (NYSE, "2025-03-07 14:30", True),  # 2025 switches: 2025-03-09 and 2025-11-02
    (NYSE, "2025-03-10 13:30", True),
    (NYSE, "2025-10-31 13:30", True),
    (NYSE, "2025-11-03 13:30", False),
    (NYSE, "2025-11-03 14:30", True),
    (NYSE, "2026-03-07 15:00", False),  # Saturday
    (NYSE, "2026-07-03 15:00", False),  # Independence Day observed (July 4 is a Saturday)
    (NYSE, "2026-11-26 15:00", False),  # Thanksgiving
    (NYSE, "2026-11-27 14:30", True),  # day after Thanksgiving: closes 13:00 New York
    (NYSE, "2026-11-27 17:59", True),
    (NYSE, "2026-11-27 18:00", False),
    # CME Globex: 17:00 to 16:00 Chicago with the 16:00-17:00 break; Sunday 17:00 to Friday 16:00.
    (CME, "2026-03-09 20:59", True),  # Monday, CDT: break 21:00-22:00 UTC
    (CME, "2026-03-09 21:00", False),
    (CME, "2026-03-09 21:59", False),
    (CME, "2026-03-09 22:00", True),
    (CME, "2026-11-03 21:59", True),  # Tuesday, CST: break 22:00-23:00 UTC
    (CME, "2026-11-03 22:00", False),
    (CME, "2026-11-03 22:59", False),
    (CME, "2026-11-03 23:00", True),
    (CME, "2026-03-06 21:59", True),  # Friday close 16:00 CST
    (CME, "2026-03-06 22:00", False),
    (CME, "2026-03-07 12:00", False),  # Saturday
    (CME, "2026-03-08 21:59", False),  # Sunday open 17:00 CDT (clocks went forward that morning)
    (CME, "2026-03-08 22:00", True),
    (CME, "2026-10-30 20:59", True),  # Friday close 16:00 CDT
    (CME, "2026-10-30 21:00", False),
    (CME, "2026-11-01 22:59", False),  # Sunday open 17:00 CST (clocks went back that morning)
    (CME, "2026-11-01 23:00", True),
    (CME, "2026-11-26 17:59", True),  # Thanksgiving: halts 12:00 Chicago, reopens 17:00
    (CME, "2026-11-26 18:00", False),
    (CME, "2026-11-26 23:00", True),
    (CME, "2026-07-03 16:59", True),  # Independence Day observed: halts 12:00 CDT
    (CME, "2026-07-03 17:00", False),
    # FX week: Sunday 17:00 to Friday 17:00 New York, no daily break.
    (FX, "2026-03-06 21:59", True),  # Friday, EST
    (FX, "2026-03-06 22:00", False),
    (FX, "2026-03-07 12:00", False),
    (FX, "2026-03-08 20:59", False),  # Sunday, EDT
    (FX, "2026-03-08 21:00", True),
    (FX, "2026-03-11 21:00", True),  # 17:00 New York midweek: the next FX day starts at once
    (FX, "2026-10-30 20:59", True),  # Friday, EDT
    (FX, "2026-10-30 21:00", False),
    (FX, "2026-11-01 21:59", False),  # Sunday, EST
    (FX, "2026-11-01 22:00", True),
    (FX, "2025-03-09 20:59", False),
    (FX, "2025-03-09 21:00", True),
    (FX, "2025-11-02 21:59", False),
    (FX, "2025-11-02 22:00", True),
    (FX, "2026-11-26 15:00", True),  # no FX holidays
]


@pytest.mark.parametrize(("market", "utc", "expected"), OPEN_CASES)
def test_is_open(market: Market, utc: str, expected: bool) -> None:
    assert is_open(market, ns(utc)) is expected


@pytest.mark.parametrize("market", list(Market))
def test_mask_matches_the_table(market: Market) -> None:
    cases = [(ns(utc), expected) for m, utc, expected in OPEN_CASES if m is market]
    t = np.array([c[0] for c in cases], dtype=np.int64)
    assert regular_session_mask(market, t).tolist() == [c[1] for c in cases]


# --- next open and next close ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "utc", "opens", "closes"),
    [
        (NYSE, "2026-03-09 13:30", "2026-03-10 13:30", "2026-03-09 20:00"),  # exactly at the open
        (NYSE, "2026-03-09 20:00", "2026-03-10 13:30", "2026-03-10 20:00"),  # exactly at the close
        (NYSE, "2026-03-06 21:00", "2026-03-09 13:30", "2026-03-09 20:00"),  # Friday close over the DST weekend
        (NYSE, "2026-11-25 21:00", "2026-11-27 14:30", "2026-11-27 18:00"),  # over Thanksgiving to an early close
        (NYSE, "2026-11-27 18:00", "2026-11-30 14:30", "2026-11-30 21:00"),
        (CME, "2026-03-09 21:30", "2026-03-09 22:00", "2026-03-10 21:00"),  # inside the daily break
        (CME, "2026-03-09 21:00", "2026-03-09 22:00", "2026-03-10 21:00"),  # exactly at the close
        (CME, "2026-03-09 22:00", "2026-03-10 22:00", "2026-03-10 21:00"),  # exactly at the open
        (CME, "2026-03-07 12:00", "2026-03-08 22:00", "2026-03-09 21:00"),  # weekend, across the DST switch
        (CME, "2026-11-26 12:00", "2026-11-26 23:00", "2026-11-26 18:00"),  # Thanksgiving early halt
        (FX, "2026-03-07 12:00", "2026-03-08 21:00", "2026-03-09 21:00"),
        (FX, "2026-03-06 22:00", "2026-03-08 21:00", "2026-03-09 21:00"),  # exactly at the Friday close
        (FX, "2026-03-08 21:00", "2026-03-09 21:00", "2026-03-09 21:00"),  # exactly at the Sunday open
        (FX, "2026-03-11 15:00", "2026-03-11 21:00", "2026-03-11 21:00"),  # FX days roll at 17:00 New York
        (FX, "2026-10-30 20:00", "2026-11-01 22:00", "2026-10-30 21:00"),
    ],
)
def test_next_open_and_close(market: Market, utc: str, opens: str, closes: str) -> None:
    assert next_open(market, ns(utc)) == ns(opens)
    assert next_close(market, ns(utc)) == ns(closes)


# --- trading-day labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "utc", "label"),
    [
        (NYSE, "2026-11-27 17:00", "2026-11-27"),
        (NYSE, "2026-11-27 18:00", None),
        (CME, "2026-03-08 22:00", "2026-03-09"),  # Sunday evening trades Monday's session
        (CME, "2026-03-09 20:59", "2026-03-09"),
        (CME, "2026-03-09 21:30", None),  # daily break
        (CME, "2026-03-09 23:00", "2026-03-10"),  # Monday evening belongs to Tuesday
        (CME, "2026-11-26 23:30", "2026-11-27"),  # Thanksgiving evening belongs to Friday
        (CME, "2026-01-01 23:00", "2026-01-02"),  # New Year's Day evening opens Friday's session
        (FX, "2026-03-08 21:00", "2026-03-09"),
        (FX, "2026-03-11 20:59", "2026-03-11"),
        (FX, "2026-03-11 21:00", "2026-03-12"),
        (FX, "2026-03-07 12:00", None),
        (FX, "2026-11-06 21:59", "2026-11-06"),  # Friday, EST
    ],
)
def test_session_label(market: Market, utc: str, label: str | None) -> None:
    got = session_label(market, np.array([ns(utc)], dtype=np.int64))
    assert got.tolist() == [day(label) if label else -1]


@pytest.mark.parametrize(
    ("market", "utc", "opened"),
    [
        (NYSE, "2026-11-27 17:00", "2026-11-27 14:30"),
        (NYSE, "2026-11-27 14:29", None),  # pre-market
        (NYSE, "2026-03-09 13:30", "2026-03-09 13:30"),  # the open itself, EDT
        (CME, "2026-03-09 20:59", "2026-03-08 22:00"),  # Monday's session opened Sunday 17:00 Chicago (CDT)
        (CME, "2026-03-09 21:30", None),  # daily break
        (FX, "2026-03-11 21:00", "2026-03-11 21:00"),  # 17:00 New York starts the next FX day
        (FX, "2026-03-07 12:00", None),
    ],
)
def test_session_open(market: Market, utc: str, opened: str | None) -> None:
    got = session_open(market, np.array([ns(utc)], dtype=np.int64))
    assert got.tolist() == [ns(opened) if opened else -1]


# --- vectorised against independent references on random times -------------------------------------------


def _random_minutes(seed: int, n: int, first: str = "2024-06-01", days: int = 900) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ns(f"{first} 00:00") + rng.integers(0, days * 1440, n, dtype=np.int64) * NS_PER_MINUTE


def _fx_reference(t: int) -> tuple[bool, int]:
    """FX rule from wall-clock New York time: open unless Friday 17:00 to Sunday 17:00; day rolls at 17:00."""
    local = datetime.fromtimestamp(t / 1e9, UTC).astimezone(NEW_YORK)
    rolled = local + timedelta(hours=7)  # 17:00 New York becomes midnight of the next FX day
    open_ = rolled.weekday() < 5
    return open_, (rolled.date() - date(1970, 1, 1)).days if open_ else -1


def _exchange_reference(market: Market, t: int) -> tuple[bool, int]:
    """exchange_calendars minute by minute; for CME also closed 16:00-17:00 Chicago (the Globex break)."""
    calendar = xcals.get_calendar("XNYS" if market is NYSE else "CMES")
    minute = pd.Timestamp(t, tz="UTC")
    open_ = bool(calendar.is_open_on_minute(minute))
    if market is CME:
        open_ &= minute.tz_convert(CHICAGO).hour != 16
    if not open_:
        return False, -1
    label = calendar.minute_to_session(minute)
    return True, (label.date() - date(1970, 1, 1)).days


@pytest.mark.parametrize("market", list(Market))
def test_vectorised_matches_references(market: Market) -> None:
    t = _random_minutes(seed=len(market.value), n=400)
    reference = _fx_reference if market is FX else (lambda x: _exchange_reference(market, x))
    expected = [reference(int(x)) for x in t]
    mask, labels = regular_session_mask(market, t), session_label(market, t)
    assert mask.tolist() == [e[0] for e in expected]
    assert labels.tolist() == [e[1] for e in expected]
    assert mask.tolist() == [is_open(market, int(x)) for x in t]
    assert 0.1 < mask.mean() < 0.9  # the sample hits both open and closed times


@pytest.mark.parametrize("market", list(Market))
def test_next_open_and_close_bracket_sessions(market: Market) -> None:
    for t in (int(x) + 17 for x in _random_minutes(seed=3, n=200)):  # off the minute grid too
        o, c = next_open(market, t), next_close(market, t)
        assert o > t and c > t
        assert is_open(market, o)
        if market is not FX:  # FX days are back to back: the FX close is the next day's open
            assert not is_open(market, c)
            assert is_open(market, c - 1)
        if not is_open(market, t):
            assert not regular_session_mask(market, np.arange(t, o, NS_PER_MINUTE, dtype=np.int64)).any()
            assert c > o


def test_nyse_next_open_and_close_match_exchange_calendars() -> None:
    calendar = xcals.get_calendar("XNYS")
    for t in (int(x) for x in _random_minutes(seed=4, n=200)):
        minute = pd.Timestamp(t, tz="UTC")
        assert next_open(NYSE, t) == calendar.next_open(minute).value
        assert next_close(NYSE, t) == calendar.next_close(minute).value


# --- the cache ---------------------------------------------------------------------------------------------


def test_cache_extends_to_earlier_and_later_years() -> None:
    sessions._tables.clear()
    assert is_open(NYSE, ns("2026-03-09 13:30"))
    assert not is_open(NYSE, ns("2001-09-12 15:00"))  # closed after the September 11 attacks
    assert is_open(NYSE, ns("2001-09-17 14:00"))
    assert not is_open(NYSE, ns("2040-12-25 15:00"))
    assert next_open(NYSE, ns("2040-12-24 21:00")) == ns("2040-12-26 14:30")
    t = np.array([ns("2001-09-12 15:00"), ns("2026-03-09 13:30"), ns("2040-12-26 14:30")], dtype=np.int64)
    assert regular_session_mask(NYSE, t).tolist() == [False, True, True]
    assert session_label(NYSE, t).tolist() == [-1, day("2026-03-09"), day("2040-12-26")]


def test_times_must_be_int64_nanoseconds_in_covered_years() -> None:
    with pytest.raises(TypeError, match="int64"):
        regular_session_mask(NYSE, np.array([1.7e18]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside 1972-2200"):
        regular_session_mask(CME, np.array([ns("2026-03-09 13:30"), 1_000_000], dtype=np.int64))  # 1970: not a bar time
    with pytest.raises(ValueError, match="outside 1972-2200"):
        next_close(FX, np.iinfo(np.int64).max)
    assert regular_session_mask(FX, np.array([], dtype=np.int64)).shape == (0,)
    assert session_label(CME, np.array([], dtype=np.int64)).shape == (0,)
