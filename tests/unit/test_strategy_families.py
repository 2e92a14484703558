"""Strategy families: definitions Tidemark refuses, parameter checks, causality of every family at every complexity
level, flat at session ends, and the shared kernels against direct per-bar references."""

from __future__ import annotations

import numpy as np
import pytest

from streams.rotation.ranks import descending_ranks
from streams.strategies import FAMILIES, Bars, Family, InvalidParameters, Parameter, StrategyDefinitionError, family
from streams.strategies.rules import descending_ranks_by_row, threshold_positions

LEGS = {"momentum": 1, "reversion": 1, "pairs": 2, "rotation": 5}


def market(legs: int, bars: int, seed: int, session: int = 0) -> Bars:
    rng = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(rng.standard_t(4, (bars, legs)) * 1e-3, axis=0))
    ends = np.zeros(bars, dtype=np.bool_)
    if session:
        ends[session - 1 :: session] = True
    return Bars(closes, ends, 252.0 * 390)


def random_params(fam: Family, level: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out = {}
    for p in fam.free(level):
        value = rng.uniform(p.low, min(p.high, 120 if p.name == "lookback" else p.high))
        out[p.name] = float(round(value)) if p.integer else float(value)
    return out


def test_a_family_with_six_parameters_is_refused_at_definition() -> None:
    params = tuple(Parameter(name, 1, 10, 5) for name in ("lookback", "a", "b", "c", "d", "e"))
    with pytest.raises(StrategyDefinitionError, match="defines 6 parameters; a strategy may have at most 5"):
        Family("six", 1, params, lambda bars, p: np.zeros((bars.count, 1)))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ((Parameter("lookback", 1, 10, 5), Parameter("lookback", 1, 10, 5)), "repeats a parameter name"),
        ((Parameter("entry", 1, 10, 5),), "first parameter must be the lookback"),
    ],
)
def test_bad_definitions_are_refused(parameters: tuple[Parameter, ...], message: str) -> None:
    with pytest.raises(StrategyDefinitionError, match=message):
        Family("bad", 1, parameters, lambda bars, p: np.zeros((bars.count, 1)))


def test_a_range_that_is_empty_is_refused() -> None:
    with pytest.raises(StrategyDefinitionError, match="is not below high"):
        Parameter("lookback", 10, 10, 10)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lookback": 4}, r"lookback=4.0 is not an integer in \[5, 240\]"),
        ({"lookback": 10.5}, "is not an integer"),
        ({"entry": 9.0}, r"entry=9.0 is not in \[0, 2.5\]"),
        ({"horizon": 3}, "momentum has no parameter horizon"),
        ({"lookback": 240}, "too few for a lookback of 240"),
    ],
)
def test_invalid_parameters_say_which_and_why(params: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidParameters, match=message):
        FAMILIES["momentum"].positions(market(1, 200, 1), params)


def test_an_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(InvalidParameters, match="there are momentum, reversion, pairs, rotation"):
        family("carry")


def test_every_family_offers_five_nested_levels_so_two_timeframes_make_ten_variants() -> None:
    for fam in FAMILIES.values():
        assert fam.levels == 5
        assert [p.name for p in fam.free(3)] == [p.name for p in fam.parameters[:3]]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("level", [1, 3, 5])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_position_uses_a_later_bar(name: str, level: int, seed: int) -> None:
    """Change every bar after t: no position at or before t moves, and the change does reach later positions."""
    fam = FAMILIES[name]
    bars = market(LEGS[name], 1500, seed, session=390)
    params = random_params(fam, level, seed)
    before = fam.positions(bars, params)
    reached = False
    for cut in (400, 700, 1100, 1400):
        changed = bars.closes.copy()
        changed[cut + 1 :] *= np.exp(np.random.default_rng(cut).normal(0, 0.02, changed[cut + 1 :].shape))
        after = fam.positions(Bars(changed, bars.session_ends, bars.bars_per_year), params)
        np.testing.assert_array_equal(after[: cut + 1], before[: cut + 1])
        reached |= not np.array_equal(after, before)
    assert reached


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_intraday_positions_are_flat_at_every_session_close(name: str) -> None:
    bars = market(LEGS[name], 2000, 5, session=390)
    positions = FAMILIES[name].positions(bars, random_params(FAMILIES[name], 5, 5))
    assert np.abs(positions).sum() > 0
    assert not positions[bars.session_ends].any()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_positions_are_at_most_one_unit_of_gross_notional(name: str) -> None:
    positions = FAMILIES[name].positions(market(LEGS[name], 2000, 6), {"lookback": 20})
    assert np.abs(positions).sum(axis=1).max() <= 1.0 + 1e-12


def threshold_loop(score, entry, exit_, value, distance, allowed, ends):  # type: ignore[no-untyped-def]
    """The state machine written bar by bar without numba: the reference."""
    out, side, armed, entry_value, stop = [], 0, True, 0.0, np.inf
    for t, s in enumerate(score):
        if ends[t] or not np.isfinite(s) or not allowed[t]:
            side, armed = 0, True
            out.append(0.0)
            continue
        if (side == 1 and s < exit_) or (side == -1 and s > -exit_):
            side = 0
        elif side and (value[t] - entry_value) * side < -stop:
            side, armed = 0, False
        armed = armed or abs(s) <= entry
        if side == 0 and armed and abs(s) > entry:
            side = 1 if s > 0 else -1
            entry_value, stop = value[t], distance[t]
        out.append(float(side))
    return np.array(out)


@pytest.mark.parametrize(("entry", "exit_", "stop"), [(0.0, 0.0, np.inf), (1.5, 0.0, np.inf), (1.0, -0.5, 0.8)])
@pytest.mark.parametrize("seed", [1, 2])
def test_threshold_positions_match_a_bar_by_bar_loop(entry: float, exit_: float, stop: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    score = np.cumsum(rng.normal(0, 0.3, 3000)) % 6 - 3
    score[rng.integers(0, 3000, 30)] = np.nan
    value = np.cumsum(rng.normal(0, 1, 3000))
    allowed = rng.random(3000) > 0.05
    ends = np.zeros(3000, dtype=np.bool_)
    ends[389::390] = True
    distance = np.full(3000, stop)
    expected = threshold_loop(score, entry, exit_, value, distance, allowed, ends)
    np.testing.assert_array_equal(threshold_positions(score, entry, exit_, value, distance, allowed, ends), expected)
    assert np.abs(expected).sum() > 100


def test_cross_sectional_ranks_are_the_rotation_engines_ranks_on_every_row() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(200, 7))
    values[rng.random(values.shape) < 0.1] = np.nan
    values[5, :3] = 1.0  # ties keep column order
    expected = np.array([descending_ranks(row) for row in values])
    np.testing.assert_array_equal(descending_ranks_by_row(values), expected)


def test_rotation_is_long_the_strongest_and_short_the_weakest() -> None:
    drifts = np.array([3e-3, 1e-3, 0.0, -1e-3, -3e-3])
    noise = np.random.default_rng(8).normal(0, 1e-3, (400, 5))
    closes = 100 * np.exp(np.cumsum(noise + drifts, axis=0))
    positions = FAMILIES["rotation"].positions(Bars(closes, np.zeros(400, dtype=np.bool_), 252.0), {})
    np.testing.assert_allclose(positions[-1], [0.5, 0.0, 0.0, 0.0, -0.5])


def test_pairs_sizes_legs_by_the_hedge_ratio_in_one_unit_of_gross_notional() -> None:
    rng = np.random.default_rng(4)
    x = np.cumsum(rng.normal(0, 1e-2, 3000))
    y = 1.5 * x + 0.02 * np.sin(np.arange(3000) / 15)
    bars = Bars(np.exp(np.column_stack([y, x])), np.zeros(3000, dtype=np.bool_), 252.0)
    positions = FAMILIES["pairs"].positions(bars, {"entry": 1.0})
    held = positions[np.abs(positions[:, 0]) > 0]
    assert held.shape[0] > 100
    np.testing.assert_allclose(-held[-50:, 1] / held[-50:, 0], 1.5, rtol=0.02)
    np.testing.assert_allclose(np.abs(held).sum(axis=1), 1.0)
