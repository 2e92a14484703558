"""Correlation alerts: a crossing alerts once, re-arms past the hysteresis; a structure shift alerts once."""

from __future__ import annotations

import numpy as np
import pytest

from streams.correlation.alerts import PAIR_KIND, REGIME_KIND, AlertConfig, AlertDetector, WatchedPair

SYMBOLS = ("A", "B", "C")


def upper(ab: float, ac: float = 0.0, bc: float = 0.0) -> np.ndarray:
    return np.array([ab, ac, bc])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SPY:XLK>0.9", WatchedPair("SPY", "XLK", True, 0.9)),
        (" EURUSD : GBPUSD < 0.3 ", WatchedPair("EURUSD", "GBPUSD", False, 0.3)),
        ("A:B<-0.5", WatchedPair("A", "B", False, -0.5)),
    ],
)
def test_watched_pairs_parse(text: str, expected: WatchedPair) -> None:
    assert WatchedPair.parse(text) == expected


@pytest.mark.parametrize("text", ["SPY>0.9", "SPY:XLK=0.9", "SPY:XLK>1.5", "A:A>0.1", ""])
def test_bad_watched_pairs_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        WatchedPair.parse(text)


@pytest.mark.parametrize(
    ("values", "fired_at", "since_index"),
    [
        pytest.param([0.5, 0.87, 0.95, 0.97, 0.93], [2], 1, id="drift-then-cross-once"),
        pytest.param([0.5, 0.95, 0.88, 0.95], [1], 1, id="no-rearm-inside-hysteresis"),
        pytest.param([0.5, 0.95, 0.8, 0.95], [1, 3], None, id="rearms-past-hysteresis"),
        pytest.param([0.95, 0.96], [0], 0, id="first-snapshot-beyond"),
        pytest.param([0.5, float("nan"), 0.6], [], None, id="nan-ignored"),
    ],
)
def test_pair_threshold(values: list[float], fired_at: list[int], since_index: int | None) -> None:
    detector = AlertDetector(AlertConfig(pairs=(WatchedPair("A", "B", True, 0.9),), hysteresis=0.05, baseline=100))
    fired = []
    for i, value in enumerate(values):
        for alert in detector.observe("u", "1m:60", 1000 + i, SYMBOLS, upper(value)):
            assert alert.kind == PAIR_KIND and alert.subject == "A:B" and alert.to_value == value
            assert alert.from_value == (values[i - 1] if i else None)
            fired.append((i, alert))
    assert [i for i, _ in fired] == fired_at
    if since_index is not None:
        assert fired[0][1].since_ns == 1000 + since_index


def test_below_pairs_and_missing_symbols() -> None:
    detector = AlertDetector(AlertConfig(pairs=(WatchedPair("A", "C", False, 0.3), WatchedPair("A", "Z", True, 0.1))))
    assert detector.observe("u", "1d:5", 1, SYMBOLS, upper(0.0, 0.5)) == []
    [alert] = detector.observe("u", "1d:5", 2, SYMBOLS, upper(0.0, 0.2))
    assert (alert.subject, alert.from_value, alert.to_value, alert.window) == ("A:C", 0.5, 0.2, "1d:5")


def test_structure_shift_alerts_once_after_the_baseline_is_warm_and_survives_a_restart() -> None:
    config = AlertConfig(regime_threshold=0.2, baseline=3)
    detector = AlertDetector(config)
    calm = upper(0.1, 0.1, 0.1)
    for t in range(4):
        assert detector.observe("core", "1m:60", t, SYMBOLS, calm) == []
    detector = AlertDetector.from_bytes(detector.to_bytes(), config)
    shifted = upper(0.9, 0.8, 0.7)
    [alert] = detector.observe("core", "1m:60", 10, SYMBOLS, shifted)
    assert alert.kind == REGIME_KIND and alert.subject == "core"
    assert alert.from_value == pytest.approx(0.1, abs=1e-6) and alert.to_value == pytest.approx(0.8)
    assert alert.since_ns == 10 and "A/B 0.10->0.90" in alert.details["moved_pairs"]
    assert detector.observe("core", "1m:60", 11, SYMBOLS, shifted) == [], "no storm while it stays shifted"


def test_a_changed_symbol_list_resets_the_baseline() -> None:
    detector = AlertDetector(AlertConfig(regime_threshold=0.2, baseline=1))
    detector.observe("core", "1m:60", 0, SYMBOLS, upper(0.1))
    assert detector.observe("core", "1m:60", 1, ("A", "B", "D"), upper(0.9, 0.9, 0.9)) == []
