"""Adjusted history: split and CRSP dividend factors applied to raw bars, against hand-computed numbers."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest

from projections.adjust import Factors, action_factors, adjust, cumulative, cutoff_ns
from tests.factories import minute_bars

NAN = float("nan")
NY = "America/New_York"


def _ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


def _factors(*actions: tuple[str, str, float, float, float, float]) -> Factors:
    """Actions as (type, ex-date, split_from, split_to, cash, previous close)."""
    return action_factors(
        [a[0] for a in actions],
        np.array([cutoff_ns(date.fromisoformat(a[1]), NY) for a in actions], dtype=np.int64),
        np.array([a[2] for a in actions], dtype=np.float64),
        np.array([a[3] for a in actions], dtype=np.float64),
        np.array([a[4] for a in actions], dtype=np.float64),
        np.array([a[5] for a in actions], dtype=np.float64),
    )


@pytest.mark.parametrize(
    ("ex_date", "expected_utc"),
    [
        ("2020-08-31", "2020-08-31T04:00:00"),  # EDT
        ("2024-01-02", "2024-01-02T05:00:00"),  # EST
        ("2024-03-11", "2024-03-11T04:00:00"),  # the Monday after the DST change
    ],
)
def test_cutoff_is_midnight_new_york(ex_date: str, expected_utc: str) -> None:
    assert cutoff_ns(date.fromisoformat(ex_date), NY) == _ns(expected_utc)


def test_aapl_four_for_one_against_hand_computed_numbers() -> None:
    # AAPL's raw daily bars around the 4-for-1 split (ex-date 2020-08-31); Polygon stamps daily bars at 04:00 UTC.
    bars = minute_bars(["AAPL", "AAPL"], [_ns("2020-08-28T04:00:00"), _ns("2020-08-31T04:00:00")], interval="1d")
    bars = bars.take(np.arange(2))  # the factory shares one array between open and close
    raw = {"open": [504.05, 127.58], "high": [505.77, 131.0], "low": [498.31, 126.0], "close": [499.23, 129.04]}
    for column, values in raw.items():
        getattr(bars, column)[:] = values
    bars.volume[:] = [46_907_479.0, 225_702_700.0]

    adjusted = adjust(bars, _factors(("SPLIT", "2020-08-31", 1, 4, NAN, NAN)))

    np.testing.assert_allclose(adjusted.close, [124.8075, 129.04])
    np.testing.assert_allclose(adjusted.open, [126.0125, 127.58])
    np.testing.assert_allclose(adjusted.high, [126.4425, 131.0])
    np.testing.assert_allclose(adjusted.low, [124.5775, 126.0])
    np.testing.assert_allclose(adjusted.volume, [187_629_916.0, 225_702_700.0])
    assert bars.close[0] == 499.23, "the raw batch is never rewritten"


BAR_TIMES = ["2020-01-02T15:00:00", "2020-06-01T15:00:00", "2020-09-01T15:00:00", "2021-01-04T15:00:00"]


@pytest.mark.parametrize(
    ("actions", "price", "volume"),
    [
        pytest.param([], [1, 1, 1, 1], [1, 1, 1, 1], id="no actions"),
        pytest.param(
            [("SPLIT", "2020-08-31", 1, 4, NAN, NAN)], [0.25, 0.25, 1, 1], [4, 4, 1, 1], id="one split mid-range"
        ),
        pytest.param(
            [("SPLIT", "2020-08-31", 1, 4, NAN, NAN), ("SPLIT", "2020-03-02", 1, 2, NAN, NAN)],
            [0.125, 0.25, 1, 1],
            [8, 4, 1, 1],
            id="two splits compound (given out of order)",
        ),
        pytest.param(
            [("REVERSE_SPLIT", "2020-08-31", 10, 1, NAN, NAN)], [10, 10, 1, 1], [0.1, 0.1, 1, 1], id="reverse split"
        ),
        pytest.param(
            [("SPLIT", "2020-08-31", 2, 3, NAN, NAN)], [2 / 3, 2 / 3, 1, 1], [1.5, 1.5, 1, 1], id="3-for-2 split"
        ),
        pytest.param(
            [("DIVIDEND", "2020-05-08", NAN, NAN, 0.82, 303.74), ("SPLIT", "2020-08-31", 1, 4, NAN, NAN)],
            [0.25 * (1 - 0.82 / 303.74), 0.25, 1, 1],
            [4, 4, 1, 1],
            id="dividend then split",
        ),
        pytest.param(
            [("SPECIAL_DIVIDEND", "2020-12-01", NAN, NAN, 5.0, 100.0)],
            [0.95, 0.95, 0.95, 1],
            [1, 1, 1, 1],
            id="special dividend adjusts prices only",
        ),
        pytest.param(
            [("SPLIT", "2019-06-03", 1, 7, NAN, NAN), ("SPLIT", "2021-06-01", 1, 2, NAN, NAN)],
            [0.5, 0.5, 0.5, 0.5],
            [2, 2, 2, 2],
            id="actions before and after the range",
        ),
        pytest.param(
            [("SPLIT", "2020-01-02", 1, 4, NAN, NAN)], [1, 1, 1, 1], [1, 1, 1, 1], id="a bar on the ex-date is after"
        ),
        pytest.param(
            [("DIVIDEND", "2020-08-03", NAN, NAN, 0.5, NAN), ("SPIN_OFF", "2020-08-03", NAN, NAN, NAN, NAN)],
            [1, 1, 1, 1],
            [1, 1, 1, 1],
            id="unusable actions are ignored",
        ),
    ],
)
def test_cumulative_factors(
    actions: list[tuple[str, str, float, float, float, float]], price: list[float], volume: list[float]
) -> None:
    starts = np.array([_ns(t) for t in BAR_TIMES], dtype=np.int64)
    got_price, got_volume = cumulative(_factors(*actions), starts)
    np.testing.assert_allclose(got_price, price, rtol=1e-12)
    np.testing.assert_allclose(got_volume, volume, rtol=1e-12)


@pytest.mark.parametrize(
    ("action", "ignored"),
    [
        (("SPLIT", "2020-08-31", 1, 4, NAN, NAN), False),
        (("SPLIT", "2020-08-31", 0, 4, NAN, NAN), True),
        (("SPLIT", "2020-08-31", NAN, NAN, NAN, NAN), True),
        (("DIVIDEND", "2020-08-31", NAN, NAN, 0.5, 100.0), False),
        (("DIVIDEND", "2020-08-31", NAN, NAN, 0.5, NAN), True),
        (("DIVIDEND", "2020-08-31", NAN, NAN, 150.0, 100.0), True),
        (("MERGER", "2020-08-31", NAN, NAN, NAN, NAN), True),
    ],
)
def test_ignored_actions_are_flagged(action: tuple[str, str, float, float, float, float], ignored: bool) -> None:
    factors = _factors(action)
    assert factors.ignored.tolist() == [ignored]
    if ignored:
        assert (factors.price[0], factors.volume[0]) == (1.0, 1.0)


def test_vwap_follows_prices_and_trade_count_is_unchanged() -> None:
    bars = minute_bars(["X", "X"], [_ns("2020-08-28T15:00:00"), _ns("2020-09-01T15:00:00")])
    bars.vwap[:] = [200.0, 50.0]
    bars.trade_count[:] = [7, 9]
    adjusted = adjust(bars, _factors(("SPLIT", "2020-08-31", 1, 4, NAN, NAN)))
    assert adjusted.vwap.tolist() == [50.0, 50.0]
    assert adjusted.trade_count.tolist() == [7, 9]
    assert adjusted.start_ns.tolist() == bars.start_ns.tolist()
