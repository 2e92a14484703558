"""A discovery task end to end on in-memory Optuna storage: the complexity rule, the gates on noise and on a real
edge, deterministic ids and an event that the schema accepts."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from core.sessions import Market
from core.units import NS_PER_DAY
from schemas.codec import get_registry
from streams.discovery.candidate import adv_share, candidate_record, round_trips, score, strategy_id
from streams.discovery.evidence import VariantScore, one_standard_error
from streams.discovery.histories import NotEnoughHistory, Table
from streams.discovery.search import Variant
from streams.discovery.task import Budget, run
from streams.strategies import FAMILIES

DAYS = (
    np.datetime64("2019-01-07", "ns").astype(np.int64)
    + np.array([d for d in range(1900) if d % 7 < 5][:1260], dtype=np.int64) * NS_PER_DAY
)


def daily(seed: int, drift_t: float = 0.0, legs: int = 1) -> Table:
    """Five years of weekday closes; ``drift_t``: the t-statistic of the first leg's drift over the history."""
    rng = np.random.default_rng(seed)
    returns = rng.normal(0, 1e-2, (DAYS.size, legs))
    returns[:, 0] += drift_t * 1e-2 / np.sqrt(DAYS.size)
    closes = 100 * np.exp(np.cumsum(returns, axis=0))
    return Table("1d", DAYS, closes, np.full_like(closes, 1e6))


def point(level: int, mean: float, se: float) -> VariantScore:
    """A curve point whose five folds have this mean and standard error."""
    spread = np.array([-1.0, 1.0, 0.0, 0.0, 0.0]) / np.sqrt(0.5)  # sample standard deviation 1
    folds = mean + se * np.sqrt(5) * spread
    return VariantScore(Variant(FAMILIES["momentum"], level, "1d"), 10, folds, (0,) * 5, np.zeros(3), 252.0)


@pytest.mark.parametrize(
    ("curve", "chosen"),
    [
        ([(1, 1.0, 0.2), (2, 1.5, 0.2), (3, 1.6, 0.2)], 1),  # level 2 is within one s.e. of the best (1.6 - 0.2)
        ([(1, 1.45, 0.2), (2, 1.5, 0.2), (3, 1.6, 0.2)], 0),
        ([(1, 0.5, 0.1), (2, 0.6, 0.1), (3, 2.0, 0.1)], 2),  # complexity that pays for itself is kept
        ([(1, 1.0, 0.3), (1, 1.2, 0.3), (2, 1.3, 0.3)], 1),  # equally simple: the better one
    ],
)
def test_the_one_standard_error_rule_picks_the_simplest_variant_near_the_best(
    curve: list[tuple[int, float, float]], chosen: int
) -> None:
    points = [point(*c) for c in curve]
    assert [round(p.se, 9) for p in points] == [c[2] for c in curve]
    assert one_standard_error(points) == chosen


def test_noise_is_searched_hard_and_rejected_with_reasons() -> None:
    evidence = run("noise-1", FAMILIES["momentum"], daily(1), Market.NYSE, 2.15e-4, optuna.storages.InMemoryStorage())
    assert evidence.trials == 2 * sum(Budget().trials(level) for level in range(1, 6))
    assert len(evidence.curve) == 10
    assert not evidence.passed
    assert any("deflated Sharpe ratio" in reason for reason in evidence.failed)


def test_a_strong_trend_passes_every_gate() -> None:
    evidence = run(
        "trend-1", FAMILIES["momentum"], daily(2, 12.0), Market.NYSE, 2.15e-4, optuna.storages.InMemoryStorage()
    )
    assert evidence.passed, evidence.failed
    assert evidence.oos_sharpe > 1.0 and evidence.dsr >= 0.95 and evidence.pbo < 0.2


def test_a_study_resumed_from_its_storage_runs_only_the_missing_trials() -> None:
    storage = optuna.storages.InMemoryStorage()
    seen: list[int] = []
    first = run("resume-1", FAMILIES["reversion"], daily(3), Market.NYSE, 2e-4, storage)
    again = run(
        "resume-1", FAMILIES["reversion"], daily(3), Market.NYSE, 2e-4, storage, progress=lambda k, d, p: seen.append(d)
    )
    assert seen == []  # every study was complete: nothing ran again
    assert again.params == first.params and again.dsr == first.dsr and again.pbo == first.pbo


def test_a_history_too_short_for_any_variant_is_refused() -> None:
    table = daily(4)
    short = Table("1d", table.starts[:40], table.closes[:40], table.volumes[:40])
    with pytest.raises(NotEnoughHistory):
        run("short", FAMILIES["momentum"], short, Market.NYSE, 2e-4, optuna.storages.InMemoryStorage())


def test_the_candidate_event_is_deterministic_and_fits_the_schema() -> None:
    table = daily(5, 12.0)
    storage = optuna.storages.InMemoryStorage()
    evidence = run("cand-1", FAMILIES["momentum"], table, Market.NYSE, 2.15e-4, storage)
    positions = FAMILIES["momentum"].positions(evidence.history.bars, evidence.params)
    task = {
        "event_id": "00000000-0000-4000-8000-000000000001",
        "family": "momentum",
        "symbols": ["ABC"],
        "asset_class": "EQUITY",
    }
    args = (task, evidence, positions, 1e6, None, "test", int(table.starts[0]), int(table.starts[-1]), 5, 16)
    record, again = candidate_record(*args), candidate_record(*args)
    assert record["event_id"] == again["event_id"]
    assert record["strategy_id"] == strategy_id("momentum", ["ABC"], evidence.variant.timeframe, evidence.params)
    decoded = get_registry().decode_as(
        "tidemark.strategies.StrategyCandidateDiscovered",
        get_registry().encode("tidemark.strategies.StrategyCandidateDiscovered", record),
    )
    assert decoded["passed"] and decoded["rejections"] == [] and len(decoded["curve"]) == 10
    assert decoded["cost_bp"] == pytest.approx(2.15)


def test_capacity_is_the_share_of_dollar_volume_traded_at_the_stated_capital() -> None:
    positions = np.array([[1.0, -0.5], [1.0, -0.5], [0.0, 0.0]])
    closes = np.full((3, 2), 100.0)
    volumes = np.array([[1e4, 2e4]] * 3)
    # leg 0 trades 2 units of 1e6 against 3e6 of volume; leg 1 trades 1 unit against 6e6
    assert adv_share(positions, closes, volumes, 1e6) == pytest.approx(2e6 / 3e6)
    assert adv_share(positions, closes, None, 1e6) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((2.0, 0.9, 0.1, None, None), 2.0 * 0.9 * 0.9),
        ((2.0, 0.9, 0.1, 0.5, None), 2.0 * 0.9 * 0.9 * 0.5),
        ((2.0, 0.9, 0.1, -0.3, 0.02), 2.0 * 0.9 * 0.9 * 0.5),
        ((-1.0, 0.5, 0.5, None, 0.001), -0.25),
    ],
)
def test_the_ranking_score(args: tuple[float, float, float, float | None, float | None], expected: float) -> None:
    assert score(*args) == pytest.approx(expected)


def test_round_trips_count_entries_and_reversals() -> None:
    assert round_trips(np.array([[0.0], [1.0], [1.0], [-1.0], [0.0], [1.0]])) == 3
