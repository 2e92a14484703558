"""Which differences between the broker's positions and the tracker's become corrections: only one seen unchanged
at two looks in a row, on a symbol with nothing in flight."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from connectors.reconciliation import Mismatches

OURS = {"AAPL": D(10), "SPY": D(5)}


@pytest.mark.parametrize(
    ("brokers", "moving", "confirmed"),
    [
        pytest.param({"AAPL": D(10), "SPY": D(5)}, set(), [], id="agree"),
        pytest.param(
            {"AAPL": D(10), "SPY": D(6), "MSFT": D(2)},
            set(),
            [("MSFT", D(0), D(2)), ("SPY", D(5), D(6))],
            id="broker-has-more-and-a-symbol-we-lack",
        ),
        pytest.param({"AAPL": D(10)}, set(), [("SPY", D(5), D(0))], id="missing-at-the-broker-is-zero"),
        pytest.param({"AAPL": D(10), "SPY": D(6), "MSFT": D(2)}, {"SPY", "MSFT"}, [], id="moving-left-out"),
        pytest.param({"AAPL": D("10.0000000001"), "SPY": D(5)}, set(), [], id="inside-the-tolerance"),
        pytest.param(
            {"AAPL": D("10.000000002"), "SPY": D(5)}, set(), [("AAPL", D(10), D("10.000000002"))], id="beyond-it"
        ),
    ],
)
def test_a_difference_seen_twice_unchanged_is_confirmed(
    brokers: dict[str, D], moving: set[str], confirmed: list[tuple[str, D, D]]
) -> None:
    found = Mismatches()
    assert found.confirm(brokers, OURS, moving) == []  # the first look only notes it
    assert found.confirm(brokers, OURS, moving) == confirmed
    assert found.confirm(brokers, OURS, moving) == []  # confirmed once: its correction follows


@pytest.mark.parametrize(
    ("second", "moving"),
    [
        pytest.param({"AAPL": D(11), "SPY": D(5)}, set(), id="changed-between-looks"),
        pytest.param({"AAPL": D(12), "SPY": D(5)}, {"AAPL"}, id="moving-at-the-second-look"),
        pytest.param({"AAPL": D(10), "SPY": D(5)}, set(), id="gone-at-the-second-look"),
    ],
)
def test_a_difference_that_moves_or_goes_is_not_confirmed(second: dict[str, D], moving: set[str]) -> None:
    found = Mismatches()
    assert found.confirm({"AAPL": D(12), "SPY": D(5)}, OURS, set()) == []
    assert found.confirm(second, OURS, moving) == []
