"""Currency strength kernel against the direct formula: the mean oriented log return against every other currency."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.testing as npt
import pytest

from streams.rotation.ranks import descending_ranks
from streams.rotation.strength import basket_of, currency_strength, pair_log_returns

MAJORS = ("EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY")
PAIRS = tuple(f"{b}{q}" for b, q in itertools.combinations(MAJORS, 2))  # the 28 pairs, market quoting order


def direct_strength(pairs: tuple[str, ...], returns: np.ndarray) -> dict[str, float]:
    """(1 / (n - 1)) * sum over the other currencies d of r(c/d), straight from the quoted pairs."""
    against: dict[str, list[float]] = {}
    for pair, r in zip(pairs, returns.tolist(), strict=True):
        against.setdefault(pair[:3], []).append(r)
        against.setdefault(pair[3:], []).append(-r)
    return {c: sum(rs) / len(rs) for c, rs in against.items()}


def values_returns(values: dict[str, float], pairs: tuple[str, ...]) -> np.ndarray:
    """Pair log returns consistent with each currency's own log move: r(BASEQUOTE) = v_base - v_quote."""
    return np.array([values[p[:3]] - values[p[3:]] for p in pairs])


def test_the_28_pairs_give_8_currencies_in_quoting_order() -> None:
    basket = basket_of(PAIRS)
    assert basket.currencies == MAJORS
    assert len(basket.pairs) == 28
    assert [basket.currencies[b] + basket.currencies[q] for b, q in zip(basket.base, basket.quote, strict=True)] == [
        *PAIRS
    ]


@pytest.mark.parametrize("seed", range(6))
def test_full_basket_matches_the_direct_formula_and_sums_to_zero(seed: int) -> None:
    returns = np.random.default_rng(seed).normal(0.0, 1e-3, len(PAIRS))  # not triangle-consistent on purpose
    measured = currency_strength(basket_of(PAIRS), returns)
    want = direct_strength(PAIRS, returns)
    npt.assert_allclose(measured.strength, [want[c] for c in MAJORS], rtol=1e-10, atol=1e-16)
    assert abs(measured.strength.sum()) < 1e-15
    assert sorted(measured.rank.tolist()) == list(range(1, 9))


@pytest.mark.parametrize(
    ("mover", "move", "rank"),
    [("JPY", 0.01, 1), ("EUR", 0.002, 1), ("CHF", -0.004, 8), ("NZD", -1e-5, 8)],
)
def test_a_currency_moving_against_all_others_ranks_at_the_extreme(mover: str, move: float, rank: int) -> None:
    values = dict.fromkeys(MAJORS, 0.0) | {mover: move}
    measured = currency_strength(basket_of(PAIRS), values_returns(values, PAIRS))
    i = MAJORS.index(mover)
    assert measured.rank[i] == rank
    assert measured.strength[i] == pytest.approx(move)  # it gained `move` against each of the 7 others
    others = np.delete(measured.strength, i)
    npt.assert_allclose(others, -move / 7, rtol=1e-12)  # each of the others lost move against one of 7
    assert measured.zscore[i] == pytest.approx(np.sign(move) * np.sqrt(7))


@pytest.mark.parametrize(
    "missing",
    [
        ("EURGBP",),
        ("USDJPY", "EURJPY", "GBPJPY"),
        tuple(p for p in PAIRS if "USD" not in p),  # only the USD majors are left: a star around USD
        tuple(p for p in PAIRS if p not in ("EURGBP", "GBPAUD", "AUDNZD", "NZDUSD", "USDCAD", "CADCHF", "CHFJPY")),
    ],
    ids=["one-cross", "three-yen-pairs", "usd-majors-only", "a-chain"],
)
def test_missing_crosses_are_implied_exactly_when_the_pairs_are_consistent(missing: tuple[str, ...]) -> None:
    rng = np.random.default_rng(len(missing))
    values = dict(zip(MAJORS, rng.normal(0.0, 1e-3, len(MAJORS)).tolist(), strict=True))
    returns = values_returns(values, PAIRS)
    returns[[PAIRS.index(p) for p in missing]] = np.nan
    measured = currency_strength(basket_of(PAIRS), returns)
    v = np.array([values[c] for c in MAJORS])
    npt.assert_allclose(measured.strength, 8 / 7 * (v - v.mean()), rtol=1e-9, atol=1e-17)
    full = currency_strength(basket_of(PAIRS), values_returns(values, PAIRS))
    npt.assert_allclose(measured.strength, full.strength, rtol=1e-9, atol=1e-17)


def test_either_quote_direction_measures_the_same_strength() -> None:
    returns = np.random.default_rng(9).normal(0.0, 1e-3, len(PAIRS))
    flipped = tuple(p[3:] + p[:3] if i % 3 == 0 else p for i, p in enumerate(PAIRS))
    signs = np.array([-1.0 if i % 3 == 0 else 1.0 for i in range(len(PAIRS))])
    a = currency_strength(basket_of(PAIRS), returns)
    b_basket = basket_of(flipped)
    b = currency_strength(b_basket, returns * signs)
    order = [b_basket.currencies.index(c) for c in MAJORS]
    npt.assert_allclose(b.strength[order], a.strength, rtol=1e-10, atol=1e-17)


@pytest.mark.parametrize(
    ("pairs", "returns", "measured"),
    [
        (("EURUSD", "GBPJPY"), (0.01, 0.02), ("EUR", "USD")),  # two separate groups of two: the first one's
        (("EURUSD", "GBPJPY", "JPYCHF"), (0.01, 0.02, 0.0), ("GBP", "JPY", "CHF")),  # the larger group
        (("EURUSD", "GBPJPY", "USDCHF"), (0.01, np.nan, 0.0), ("EUR", "USD", "CHF")),  # no data leaves GBP, JPY out
        (("EURUSD", "GBPJPY"), (np.nan, np.nan), ()),
    ],
)
def test_only_the_largest_linked_group_is_measured(
    pairs: tuple[str, ...], returns: tuple[float, ...], measured: tuple[str, ...]
) -> None:
    basket = basket_of(pairs)
    result = currency_strength(basket, np.array(returns))
    got = tuple(c for c, s in zip(basket.currencies, result.strength, strict=True) if np.isfinite(s))
    assert got == measured
    assert (result.rank > 0).tolist() == [c in measured for c in basket.currencies]
    if measured:
        assert abs(np.nansum(result.strength)) < 1e-15


def test_two_currencies_are_ranked_but_have_no_zscore() -> None:
    result = currency_strength(basket_of(["EURUSD"]), np.array([0.003]))
    npt.assert_allclose(result.strength, [0.003, -0.003])
    assert result.rank.tolist() == [1, 2]
    assert np.isnan(result.zscore).all()


def test_zscore_is_standardised_over_the_basket() -> None:
    returns = np.random.default_rng(3).normal(0.0, 1e-3, len(PAIRS))
    result = currency_strength(basket_of(PAIRS), returns)
    s = result.strength
    npt.assert_allclose(result.zscore, (s - s.mean()) / s.std(ddof=0), rtol=1e-12)


def test_a_flat_market_has_strengths_but_no_zscores() -> None:
    result = currency_strength(basket_of(PAIRS), np.zeros(len(PAIRS)))
    npt.assert_allclose(result.strength, 0.0, atol=1e-18)
    assert np.isnan(result.zscore).all()
    assert result.rank.tolist() == list(range(1, 9))  # ties keep basket order


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        (["EURUSD", "EURUSD"], "unique"),
        (["EURUSD", "EURUS"], "not an FX pair"),
        (["eurusd"], "not an FX pair"),
        (["EUREUR"], "not an FX pair"),
        (["SPY"], "not an FX pair"),
    ],
)
def test_malformed_pairs_are_rejected(pairs: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        basket_of(pairs)


def test_pair_log_returns_from_first_to_last_row() -> None:
    closes = np.array([[1.0, np.nan, 2.0], [1.1, 3.0, 2.0], [1.21, 3.3, np.nan]])
    npt.assert_allclose(pair_log_returns(closes), [np.log(1.21), np.nan, np.nan], rtol=1e-15)


@pytest.mark.parametrize(
    ("values", "ranks"),
    [
        ([0.1, 0.3, 0.2], [3, 1, 2]),
        ([0.1, np.nan, 0.2], [2, 0, 1]),
        ([0.5, 0.5, -1.0, 0.5], [1, 2, 4, 3]),
        ([np.nan, np.nan], [0, 0]),
        ([], []),
    ],
)
def test_descending_ranks(values: list[float], ranks: list[int]) -> None:
    assert descending_ranks(np.array(values, dtype=np.float64)).tolist() == ranks
