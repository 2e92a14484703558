"""RollingWindow against pandas / numpy references built from the same bars on the same market-time grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.units import NS_PER_MINUTE
from streams.correlation.rolling import CorrelationSnapshot, RollingWindow, UpdateResult

TOL = 1e-9
T0 = 1_700_000_040 * 1_000_000_000  # a whole minute, UTC ns


def make_bars(
    n_symbols: int, minutes: int, seed: int, gap_rate: float = 0.1, late_start: int = 0, outsiders: int = 2
) -> pd.DataFrame:
    """Factor-driven log random walks with gaps; the last ``late_start`` symbols start mid-way."""
    rng = np.random.default_rng(seed)
    beta = rng.uniform(-1.0, 1.5, n_symbols + outsiders)
    market = rng.normal(0.0, 1e-3, minutes)
    noise = rng.normal(0.0, 1e-3, (minutes, n_symbols + outsiders))
    prices = 100.0 * np.exp(np.cumsum(market[:, None] * beta + noise, axis=0))
    present = rng.random(prices.shape) >= gap_rate
    present[0, :] = True
    starts = rng.integers(minutes // 4, minutes // 2, late_start)
    for j, s in zip(range(n_symbols - late_start, n_symbols), starts, strict=True):
        present[:s, j] = False
    names = [f"S{j:03d}" for j in range(n_symbols)] + [f"X{j:03d}" for j in range(outsiders)]
    t, j = np.nonzero(present)
    return pd.DataFrame(
        {
            "symbol": np.array(names, dtype=object)[j],
            "start_ns": T0 + t.astype(np.int64) * NS_PER_MINUTE,
            "close": prices[t, j],
        }
    )


def feed(state: RollingWindow, bars: pd.DataFrame, batch: int) -> list[UpdateResult]:
    return [
        state.update(chunk["symbol"].to_numpy(object), chunk["start_ns"].to_numpy(np.int64), chunk["close"].to_numpy())
        for chunk in (bars.iloc[i : i + batch] for i in range(0, len(bars), batch))
    ]


def reference_returns(bars: pd.DataFrame, universe: list[str]) -> pd.DataFrame:
    """Log returns on the grid of times where any universe symbol printed, closes carried forward."""
    mine = bars[bars["symbol"].isin(universe)].drop_duplicates(["symbol", "start_ns"], keep="last")
    closes = mine.pivot(index="start_ns", columns="symbol", values="close").sort_index()
    return np.log(closes.reindex(columns=universe).ffill()).diff()


def mostly_increasing(bars: pd.DataFrame, seed: int, jitter_minutes: float = 3.0) -> pd.DataFrame:
    """Delivery order: by time plus a few minutes of jitter, interleaving symbols and minutes."""
    rng = np.random.default_rng(seed)
    key = bars["start_ns"].to_numpy() / NS_PER_MINUTE + rng.uniform(0, jitter_minutes, len(bars))
    return bars.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def universe_of(n: int) -> list[str]:
    return [f"S{j:03d}" for j in range(n)]


@pytest.mark.parametrize(
    ("n_symbols", "window", "min_periods", "late_start", "batch"),
    [
        (5, 10, None, 0, 7),
        (12, 30, 20, 3, 50),
        (40, 60, 30, 6, 333),
        (80, 45, 25, 10, 1000),  # above the Lanczos threshold for the eigenvalue
    ],
)
def test_correlation_matches_pandas_and_numpy(
    n_symbols: int, window: int, min_periods: int | None, late_start: int, batch: int
) -> None:
    universe = universe_of(n_symbols)
    bars = make_bars(n_symbols, 3 * window, seed=window, late_start=late_start)
    state = RollingWindow(universe, window, min_periods)
    feed(state, mostly_increasing(bars, seed=1), batch)
    snap = state.correlation()

    rets = reference_returns(bars, universe).iloc[-window:]
    mp = window if min_periods is None else min_periods
    eligible = rets.columns[(rets.count() >= mp) & (rets.std() > 0)]
    expected = rets[eligible].corr(min_periods=mp)
    assert list(snap.symbol) == list(eligible)
    np.testing.assert_allclose(snap.matrix, expected.to_numpy(), rtol=0, atol=TOL)
    np.testing.assert_array_equal(snap.matrix, snap.matrix.T)
    assert snap.as_of_ns == bars["start_ns"].max() + NS_PER_MINUTE
    assert (snap.window_bars, snap.observations) == (window, window)
    n = len(eligible)
    i, j = np.triu_indices(n, 1)
    np.testing.assert_array_equal(snap.upper_triangle()[i * n - i * (i + 1) // 2 + (j - i - 1)], snap.matrix[i, j])

    full = np.flatnonzero(snap.count == window)
    np.testing.assert_allclose(
        snap.matrix[np.ix_(full, full)],
        np.corrcoef(rets[eligible[full]].to_numpy(), rowvar=False),
        rtol=0,
        atol=TOL,
    )
    off = expected.to_numpy()[~np.eye(len(eligible), dtype=bool)]
    assert snap.mean_correlation == pytest.approx(off.mean(), abs=TOL)
    eig = np.linalg.eigvalsh(expected.to_numpy())
    assert snap.eigen_share == pytest.approx(eig[-1] / len(eligible), abs=TOL)
    vol = rets[eligible].std().to_numpy()
    np.testing.assert_allclose(snap.volatility, vol, rtol=0, atol=TOL)
    equal_weight = np.sqrt(vol @ expected.to_numpy() @ vol) / len(vol)
    assert snap.diversification_ratio == pytest.approx(vol.mean() / equal_weight, rel=1e-9)


@pytest.mark.parametrize(
    ("n_symbols", "window", "factor"),
    [(100, 30, 0.0), (100, 150, 0.0), (70, 40, 1.0), (120, 90, 0.3)],  # flat spectra, low rank, a dominant factor
)
def test_eigen_share_matches_a_full_eigendecomposition(n_symbols: int, window: int, factor: float) -> None:
    rng = np.random.default_rng(window)
    returns = factor * rng.normal(0, 1e-3, (window + 1, 1)) * rng.uniform(0.3, 1.5, n_symbols)
    closes = 100 * np.exp(np.cumsum(returns + rng.normal(0, 1e-3, returns.shape), axis=0))
    universe = universe_of(n_symbols)
    state = RollingWindow(universe, window)
    state.update(
        np.tile(np.array(universe, dtype=object), window + 1),
        np.repeat(T0 + np.arange(window + 1, dtype=np.int64) * NS_PER_MINUTE, n_symbols),
        closes.ravel(),
    )
    snap = state.correlation()
    assert len(snap.symbol) == n_symbols
    assert snap.eigen_share == pytest.approx(np.linalg.eigvalsh(snap.matrix)[-1] / n_symbols, rel=1e-12)


@pytest.mark.parametrize("sub_window", [None, 25])
def test_masked_groups_and_odd_columns_match_pandas_pairwise(sub_window: int | None) -> None:
    """Columns sharing a mask (markets' sessions) are BLAS blocks re-centred on the rows two groups share; odd
    columns go through pairwise sums; a single shared mask is one product. All equal pandas' pairwise corr."""
    universe, window = universe_of(40), 40
    bars = make_bars(40, 2 * window, seed=7, gap_rate=0.0, outsiders=0)
    state = RollingWindow(universe, window, 10)
    feed(state, bars, 500)
    rows = sub_window or window
    rets = reference_returns(bars, universe).iloc[-rows:]
    valid = np.ones(rets.shape, dtype=bool)
    valid[: rows // 4, :12] = False  # a group of 12 that opens late
    valid[-rows // 5 :, 12:22] = False  # a group of 10 that closes early
    valid[rows // 3 : rows // 2, 22:32] = False  # a group of 10 with a midday break
    valid[:, 32:35] = np.random.default_rng(7).random((rows, 3)) > 0.3  # odd gaps
    for mask in (valid, np.repeat(valid[:, :1], 40, axis=1)):
        snap = state.correlation(sub_window, min_periods=10, valid=mask)
        expected = rets.where(mask).corr(min_periods=10)
        assert list(snap.symbol) == universe
        np.testing.assert_allclose(snap.matrix, expected.to_numpy(), rtol=0, atol=TOL)
        np.testing.assert_array_equal(snap.matrix, snap.matrix.T)
        np.testing.assert_array_equal(snap.count, mask.sum(axis=0))


@pytest.mark.parametrize(
    ("window", "sub_window", "min_periods", "gap_rate"),
    [(30, None, None, 0.0), (60, 20, 10, 0.2), (60, None, 40, 0.5), (90, 45, 45, 0.1)],
)
def test_stats_match_pandas_rolling(
    window: int, sub_window: int | None, min_periods: int | None, gap_rate: float
) -> None:
    universe = universe_of(15)
    bars = make_bars(15, 2 * window + 20, seed=window, gap_rate=gap_rate, late_start=4)
    state = RollingWindow(universe, window, min_periods)
    feed(state, mostly_increasing(bars, seed=2), 97)
    stats = state.stats(bars_per_year=252 * 390, window=sub_window)

    rets = reference_returns(bars, universe)
    w = sub_window or window
    mp = min(min_periods or window, w)
    roll = rets.rolling(w, min_periods=mp)
    std = roll.std().iloc[-1].to_numpy()
    np.testing.assert_allclose(stats.volatility, std, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(stats.mean_return, roll.mean().iloc[-1], rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(stats.window_return, np.expm1(roll.sum().iloc[-1]), rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(stats.volatility_annual, std * np.sqrt(252 * 390), rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(stats.count, rets.iloc[-w:].count().to_numpy())

    closes = np.exp(np.log(bars.pivot(index="start_ns", columns="symbol", values="close")).ffill())
    closes = closes.reindex(columns=universe).iloc[-w - 1 :]
    np.testing.assert_allclose(stats.last_close, closes.iloc[-1].to_numpy(), rtol=1e-12)
    drawdown = (1 - closes / closes.cummax()).max().where(stats.count >= mp)
    np.testing.assert_allclose(stats.max_drawdown, drawdown.to_numpy(), rtol=0, atol=TOL, equal_nan=True)
    first = closes.bfill().iloc[0].to_numpy()
    simple = np.where(stats.count >= mp, closes.iloc[-1].to_numpy() / first - 1, np.nan)
    np.testing.assert_allclose(stats.window_return, simple, rtol=0, atol=TOL, equal_nan=True)
    assert (stats.as_of_ns, stats.window_bars) == (rets.index[-1] + NS_PER_MINUTE, w)


def snapshot_arrays(state: RollingWindow) -> tuple[np.ndarray, ...]:
    s = state.stats(bars_per_year=98_280.0)
    c = state.correlation()
    return (s.last_close, s.volatility, s.window_return, s.count, c.symbol, c.matrix)


def assert_same(a: RollingWindow, b: RollingWindow) -> None:
    assert a.to_bytes() == b.to_bytes()
    for x, y in zip(snapshot_arrays(a), snapshot_arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(("window", "batch", "jitter"), [(10, 1, 2.0), (25, 13, 5.0), (40, 200, 30.0)])
def test_any_batching_and_replay_give_identical_state(window: int, batch: int, jitter: float) -> None:
    universe = universe_of(8)
    bars = make_bars(8, 3 * window, seed=batch, late_start=2)
    one = RollingWindow(universe, window, window // 2)
    feed(one, bars, len(bars))
    many = RollingWindow(universe, window, window // 2)
    feed(many, mostly_increasing(bars, seed=batch, jitter_minutes=jitter), batch)
    assert_same(one, many)

    replayed = RollingWindow(universe, window, window // 2)
    rng = np.random.default_rng(batch)
    # At-least-once: re-deliver random earlier stretches (including bars already folded out of the window).
    parts = [bars]
    for _ in range(3):
        lo = int(rng.integers(0, len(bars) - 1))
        parts.append(bars.iloc[lo : lo + int(rng.integers(1, len(bars) // 3))])
    with_duplicates = mostly_increasing(pd.concat(parts), seed=batch + 1, jitter_minutes=jitter)
    feed(replayed, with_duplicates, batch)
    assert_same(one, replayed)


def test_gaps_carry_previous_close_forward() -> None:
    state = RollingWindow(["A", "B"], window=3, min_periods=2)
    m = [T0 + i * NS_PER_MINUTE for i in range(4)]
    state.update(
        np.array(["A", "B", "A", "A", "B", "A"], dtype=object),
        np.array([m[0], m[0], m[1], m[2], m[2], m[3]], dtype=np.int64),
        np.array([10.0, 20.0, 11.0, 12.0, 22.0, 12.0]),
    )
    stats = state.stats(bars_per_year=1.0)
    b_returns = np.array([0.0, np.log(22 / 20), 0.0])  # B: minute 1 missing, minute 3 missing
    a_returns = np.log([11 / 10, 12 / 11, 1.0])
    np.testing.assert_allclose(stats.last_close, [12.0, 22.0])
    np.testing.assert_allclose(stats.volatility, [a_returns.std(ddof=1), b_returns.std(ddof=1)], atol=TOL)
    np.testing.assert_allclose(stats.window_return, [0.2, 0.1], atol=TOL)
    np.testing.assert_array_equal(stats.count, [3, 3])


def test_unseen_symbols_are_nan_and_excluded_until_min_periods() -> None:
    state = RollingWindow(["A", "B", "C"], window=4, min_periods=3)
    times = np.array([T0 + i * NS_PER_MINUTE for i in range(5)], dtype=np.int64)
    a = np.array([10.0, 11.0, 10.5, 11.5, 12.0])
    b = np.array([5.0, 5.5, 5.2, 5.1, 5.6])
    state.update(np.array(["A"] * 5 + ["B"] * 3, dtype=object), np.r_[times, times[2:]], np.r_[a, b[2:]])
    stats = state.stats(bars_per_year=1.0)
    np.testing.assert_array_equal(stats.count, [4, 2, 0])
    assert np.isnan(stats.last_close[2]) and np.isnan(stats.volatility[1:]).all()
    assert list(state.correlation().symbol) == ["A"]
    state.update(np.array(["B"], dtype=object), times[1:2], b[1:2])  # late bar completes B's window
    snap = state.correlation()
    assert list(snap.symbol) == ["A", "B"]
    expected = np.corrcoef(np.diff(np.log(a))[1:], np.diff(np.log(b[1:])))[0, 1]
    assert snap.matrix[0, 1] == pytest.approx(
        pd.Series(np.diff(np.log(a))).corr(pd.Series(np.r_[np.nan, np.diff(np.log(b[1:]))])), abs=TOL
    )
    assert snap.matrix[0, 1] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(
    ("late_minute", "late_close", "expected_base"),
    [(1, 7.0, 7.0), (0, 6.0, 6.0), (0, 7.0, 7.0), (-5, 7.0, 6.0), (2, 8.0, 8.0)],
)
def test_late_bar_before_window_only_moves_the_carried_close(
    late_minute: int, late_close: float, expected_base: float
) -> None:
    state = RollingWindow(["A", "B"], window=2, min_periods=2)
    state.update(
        np.array(["A", "B", "B", "B", "B"], dtype=object),
        T0 + np.array([0, 0, 2, 3, 4], dtype=np.int64) * NS_PER_MINUTE,
        np.array([6.0, 1.0, 1.1, 1.2, 1.3]),
    )
    result = state.update(
        np.array(["A"], dtype=object), np.array([T0 + late_minute * NS_PER_MINUTE]), np.array([late_close])
    )
    assert result.new_times == 0
    assert result.applied + result.stale == 1
    assert state.stats(bars_per_year=1.0).last_close[0] == expected_base


def test_symbols_outside_universe_and_bad_closes_are_ignored() -> None:
    universe = universe_of(6)
    bars = make_bars(6, 50, seed=3, outsiders=4)
    clean = bars[bars["symbol"].isin(universe)]
    bad = clean.iloc[:5].assign(close=[np.nan, 0.0, -1.0, np.inf, np.nan])
    noisy = RollingWindow(universe, 20)
    results = feed(noisy, pd.concat([bars, bad]), 10_000)
    plain = RollingWindow(universe, 20)
    feed(plain, clean, 10_000)
    assert_same(noisy, plain)
    assert results[0].ignored == len(bars) - len(clean) + len(bad)


def test_serialisation_round_trip_and_resume() -> None:
    universe = universe_of(20)
    bars = mostly_increasing(make_bars(20, 120, seed=4, late_start=5), seed=4)
    state = RollingWindow(universe, 50, 30)
    feed(state, bars.iloc[:1500], 100)
    data = state.to_bytes()
    restored = RollingWindow.from_bytes(data)
    assert restored.to_bytes() == data
    assert (restored.window, restored.min_periods, restored.bar_ns) == (50, 30, NS_PER_MINUTE)
    assert_same(state, restored)
    feed(state, bars.iloc[1500:], 100)
    feed(restored, bars.iloc[1500:], 100)
    assert_same(state, restored)
    assert len(RollingWindow.from_bytes(RollingWindow(universe, 5).to_bytes()).to_bytes()) < 400


def brute_force_pairs(snap: CorrelationSnapshot, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(snap.symbol)
    values = np.array([snap.matrix[i, j] for i in range(n) for j in range(i + 1, n)])
    values = np.sort(values[np.isfinite(values)])
    return values[::-1][:k], values[:k]


@pytest.mark.parametrize(("n_symbols", "k"), [(2, 1), (6, 3), (30, 10), (30, 1000), (1, 5)])
def test_top_pairs_match_brute_force(n_symbols: int, k: int) -> None:
    universe = universe_of(n_symbols)
    state = RollingWindow(universe, 30)
    feed(state, make_bars(n_symbols, 40, seed=k, gap_rate=0.0), 10_000)
    snap = state.correlation()
    top, bottom = snap.top_pairs(k)
    want_top, want_bottom = brute_force_pairs(snap, k)
    np.testing.assert_array_equal(top.correlation, want_top)
    np.testing.assert_array_equal(bottom.correlation, want_bottom)
    pos = {s: i for i, s in enumerate(snap.symbol)}
    for table in (top, bottom):
        ia = np.array([pos[s] for s in table.symbol_a], dtype=int)
        ib = np.array([pos[s] for s in table.symbol_b], dtype=int)
        assert (ia < ib).all()
        np.testing.assert_array_equal(snap.matrix[ia, ib], table.correlation)


@pytest.mark.parametrize(
    ("previous", "latest", "every", "crossed"),
    [(None, 5, 15, False), (13, 14, 15, False), (14, 15, 15, True), (14, 44, 15, True), (15, 29, 15, False)],
)
def test_snapshot_boundary(previous: int | None, latest: int, every: int, crossed: bool) -> None:
    prev_ns = None if previous is None else T0 * 0 + previous * NS_PER_MINUTE
    result = UpdateResult(prev_ns, latest * NS_PER_MINUTE, 1, 1, 0, 0)
    assert result.crossed(every * NS_PER_MINUTE) is crossed


def test_update_reports_market_time() -> None:
    state = RollingWindow(["A", "B"], window=5)
    first = state.update(np.array(["A", "B"], dtype=object), np.array([T0, T0 + 30]), np.array([1.0, 2.0]))
    assert (first.previous_ns, first.latest_ns, first.new_times, first.applied) == (None, T0, 1, 2)
    second = state.update(
        np.array(["A", "A", "B", "A"], dtype=object),
        np.array([T0 + 2 * NS_PER_MINUTE, T0 + NS_PER_MINUTE, T0, T0 + 2 * NS_PER_MINUTE]),
        np.array([1.1, 1.05, 2.0, 1.2]),
    )
    assert (second.previous_ns, second.latest_ns, second.new_times) == (T0, T0 + 2 * NS_PER_MINUTE, 2)
    assert (second.applied, second.stale) == (3, 1)  # repeated (A, minute 2) in one batch: last wins
    assert state.stats(bars_per_year=1.0).last_close[0] == 1.2
