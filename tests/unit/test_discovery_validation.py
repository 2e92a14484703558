"""Discovery's statistics against their references: purged folds never train on a sample whose label window
touches a test fold; PSR/DSR on Bailey and Lopez de Prado's published example; PBO near 1 on noise searched hard
and near 0 on a real edge; the backtest kernel against vectorbt."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import comb

from streams.discovery.backtest import net_returns, vectorbt_report
from streams.discovery.folds import purged_kfold, walk_forward
from streams.discovery.overfitting import deflated_sharpe, probability_of_overfitting, variance_factor
from streams.patterns.stats import expected_max_sharpe, probabilistic_sharpe
from streams.strategies import FAMILIES, Bars


@pytest.mark.parametrize("make", [walk_forward, purged_kfold])
@pytest.mark.parametrize(
    ("samples", "folds", "horizon", "embargo"), [(1000, 5, 20, 10), (777, 4, 0, 0), (5000, 8, 120, 50)]
)
def test_no_training_sample_has_a_label_window_that_touches_its_test_fold(
    make, samples: int, folds: int, horizon: int, embargo: int
) -> None:  # type: ignore[no-untyped-def]
    for fold in make(samples, folds, horizon, embargo):
        labels_end = fold.train + horizon  # sample i's label window is [i, i + horizon]
        overlaps = (labels_end >= fold.test_start) & (fold.train < fold.test_stop)
        assert not overlaps.any()
        embargoed = (fold.train >= fold.test_stop) & (fold.train < fold.test_stop + embargo)
        assert not embargoed.any()
        assert fold.train.size > 0 and fold.test_stop > fold.test_start


def test_walk_forward_trains_on_the_past_only_and_tests_every_later_block_once() -> None:
    folds = walk_forward(600, 5, 10)
    assert [(f.test_start, f.test_stop) for f in folds] == [(100, 200), (200, 300), (300, 400), (400, 500), (500, 600)]
    assert all(f.train.max() == f.test_start - 11 for f in folds)


def test_purged_kfold_trains_on_both_sides_outside_purge_and_embargo() -> None:
    fold = purged_kfold(1000, 5, 20, 10)[2]
    assert (fold.test_start, fold.test_stop) == (400, 600)
    np.testing.assert_array_equal(fold.train, np.r_[0:380, 610:1000])


def test_too_short_a_history_is_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        walk_forward(50, 5, 10)


def test_psr_and_dsr_reproduce_the_published_example() -> None:
    """Bailey and Lopez de Prado (2014), section 6: SR 2.5 (annualised) over 1,250 daily returns, skewness -3,
    kurtosis 10, 100 trials whose annualised Sharpe ratios have variance 1/2: SR0 = 1.7894 and DSR = 0.9004."""
    sr = 2.5 / math.sqrt(250)
    benchmark = float(expected_max_sharpe(100, 0.5 / 250))
    assert benchmark * math.sqrt(250) == pytest.approx(1.7894, abs=1e-4)
    dsr = probabilistic_sharpe(np.array([sr]), np.array([variance_factor(sr, -3.0, 10.0)]), 1250, benchmark)
    assert dsr[0] == pytest.approx(0.9004, abs=2e-4)


def test_deflated_sharpe_is_the_psr_of_the_selected_returns_against_the_trials_benchmark() -> None:
    rng = np.random.default_rng(1)
    selected = rng.normal(2e-3, 1e-2, 1000)
    trials = rng.normal(0.0, 0.05, 50)
    result = deflated_sharpe(selected, trials)
    m = selected.mean()
    sd = selected.std(ddof=1)
    sr = m / sd
    e = selected - m
    skew = (e**3).mean() / (e**2).mean() ** 1.5
    kurt = (e**4).mean() / (e**2).mean() ** 2
    sr0 = math.sqrt(np.var(trials, ddof=1)) * (
        (1 - 0.5772156649) * 2.0537489 + 0.5772156649 * float(__import__("scipy").stats.norm.ppf(1 - 1 / (50 * math.e)))
    )
    expected = float(
        __import__("scipy").stats.norm.cdf((sr - sr0) * math.sqrt(999) / math.sqrt(variance_factor(sr, skew, kurt)))
    )
    assert result.benchmark == pytest.approx(sr0, rel=1e-6)
    assert result.dsr == pytest.approx(expected, rel=1e-6)
    assert result.trials == 50


def test_pbo_of_noise_searched_hard_is_near_one() -> None:
    """Many trials with no edge overall, each of which happens to do well on a different half of the slices and
    badly on the rest (what a search over noise fits): the in-sample winner is an out-of-sample loser."""
    rng = np.random.default_rng(2)
    returns = rng.normal(0, 1e-2, (1600, 200))
    luck = np.array([rng.permutation([1.0] * 8 + [-1.0] * 8) for _ in range(200)]).T  # (slices, trials)
    returns += 2e-3 * np.repeat(luck, 100, axis=0)
    assert probability_of_overfitting(returns).pbo > 0.95


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pbo_of_pure_noise_is_at_least_a_coin_flip(seed: int) -> None:
    returns = np.random.default_rng(seed).normal(0, 1e-2, (1600, 200))
    assert probability_of_overfitting(returns).pbo >= 0.4


def test_pbo_of_a_real_edge_is_near_zero() -> None:
    rng = np.random.default_rng(3)
    returns = rng.normal(0, 1e-2, (1600, 100))
    returns[:, :3] += 3e-3
    result = probability_of_overfitting(returns)
    assert result.pbo < 0.02
    assert result.logits.size == comb(16, 8, exact=True)


def test_pbo_needs_an_even_number_of_slices_and_enough_bars() -> None:
    with pytest.raises(ValueError, match="even"):
        probability_of_overfitting(np.zeros((100, 5)), slices=15)
    with pytest.raises(ValueError, match="at least 2 trials and 32 bars"):
        probability_of_overfitting(np.zeros((20, 5)))


def test_net_returns_charge_costs_on_the_units_traded_at_each_close() -> None:
    closes = np.array([[100.0], [101.0], [99.99], [100.99]])
    positions = np.array([[1.0], [-1.0], [-1.0], [0.0]])
    net, turnover = net_returns(positions, closes, 1e-3)
    np.testing.assert_allclose(turnover, [1.0, 2.0, 0.0, 1.0])
    moves = closes[1:, 0] / closes[:-1, 0] - 1
    expected = [-1e-3, moves[0] - 2e-3, -moves[1], -moves[2] - 1e-3]
    np.testing.assert_allclose(net, expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_search_kernel_agrees_with_vectorbt_on_the_same_positions(name: str) -> None:
    legs = {"pairs": 2, "rotation": 5}.get(name, 1)
    rng = np.random.default_rng(7)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, (4000, legs)), axis=0))
    ends = np.zeros(4000, dtype=np.bool_)
    ends[389::390] = True
    positions = FAMILIES[name].positions(Bars(closes, ends, 252.0 * 390), {"lookback": 30})
    net, _ = net_returns(positions, closes, 2.15e-4)
    report = vectorbt_report(positions, closes, 2.15e-4, "1min")
    assert np.corrcoef(report.returns, net)[0, 1] > 0.9999
    assert np.log1p(report.returns).sum() == pytest.approx(np.log1p(net).sum(), abs=0.01)
    assert report.orders > 10


def test_pbo_counts_each_strategy_once() -> None:
    """Repeats and near-copies (correlation 0.99) are one strategy; streams correlated 0.5 are two."""
    from streams.discovery.evidence import strategy_clusters

    rng = np.random.default_rng(4)
    returns = rng.normal(0, 1e-2, (4000, 5))
    near = returns[:, [1]] + 0.1 * rng.normal(0, 1e-2, (4000, 3))
    half = 0.5 * returns[:, [2]] + np.sqrt(0.75) * rng.normal(0, 1e-2, (4000, 1))
    flat = np.zeros((4000, 2))
    clusters = strategy_clusters(np.column_stack([returns, returns[:, [1, 3]], near, half, flat]))
    assert clusters.shape[1] == 5 + 1 + 1  # the five, the half-correlated one, and the flat pair
    copies = np.column_stack([returns[:, [1]], near]).mean(axis=1)
    assert any(np.allclose(clusters[:, k], copies) for k in range(clusters.shape[1]))
    assert strategy_clusters(np.column_stack([returns[:, 0]] * 3)).shape[1] == 3  # nothing to compare: as given


def test_pbo_of_one_edge_searched_among_its_near_copies_is_near_zero() -> None:
    """Eighty lookbacks of one trend follower (near-copies with an edge) beside ten noise traders: ranked trial by
    trial, the in-sample best copy is an arbitrary one of the eighty out of sample (PBO far from 0); ranked as
    strategies, the selection is between the trend and the noise, and the trend wins out of sample too."""
    from streams.discovery.evidence import strategy_clusters

    rng = np.random.default_rng(5)
    edge = rng.normal(1e-3, 1e-2, (1600, 1))
    returns = np.column_stack([edge + 0.2 * rng.normal(0, 1e-2, (1600, 80)), rng.normal(0, 1e-2, (1600, 10))])
    assert probability_of_overfitting(returns).pbo > 0.2
    assert probability_of_overfitting(strategy_clusters(returns)).pbo < 0.02
