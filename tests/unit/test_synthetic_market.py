from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from connectors.synthetic.market import (
    CURRENCIES,
    FUTURES,
    FX_PAIRS,
    GROUPS,
    NS_PER_MINUTE,
    SECTORS,
    Universe,
    build_universe,
    generate_bars,
    minute_index,
    order_key,
    sessions_open,
)
from schemas.bars import ASSET_CLASSES, BarBatch

EQUITY, FX, FUTURE = (ASSET_CLASSES.index(c) for c in ("EQUITY", "FX", "FUTURE"))
MONDAY = datetime(2024, 3, 4, tzinfo=UTC)


def _ns(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000_000


def _concat(batches: list[BarBatch]) -> dict[str, np.ndarray]:
    fields = ("symbol", "asset_class", "start_ns", "end_ns", "open", "high", "low", "close", "volume")
    fields += ("vwap", "trade_count", "regular_session")
    return {f: np.concatenate([getattr(b, f) for b in batches]) for f in fields}


@pytest.fixture(scope="module")
def universe() -> Universe:
    return build_universe(100, seed=11, start=MONDAY, days=3)


@pytest.fixture(scope="module")
def three_days(universe: Universe) -> dict[str, np.ndarray]:
    return _concat(list(generate_bars(universe, MONDAY, 3 * 1440, seed=5)))


def _log_closes(bars: dict[str, np.ndarray], symbol: str) -> tuple[np.ndarray, np.ndarray]:
    mask = bars["symbol"] == symbol
    return bars["start_ns"][mask], np.log(bars["close"][mask])


# --- universe -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_symbols", [100, 1000])
def test_universe_composition(n_symbols: int) -> None:
    u = build_universe(n_symbols, seed=7)
    symbols = list(u.symbols)
    assert len(symbols) == len(set(symbols)) == n_symbols
    assert {s for s, a in zip(symbols, u.asset_class, strict=True) if a == FX} == set(FX_PAIRS)
    assert len(FX_PAIRS) == 28 == len(list(itertools.combinations(CURRENCIES, 2)))
    futures = {s for s, a in zip(symbols, u.asset_class, strict=True) if a == FUTURE}
    assert futures == {f[0] for f in FUTURES} >= {"MES", "MNQ", "M2K", "MYM", "MGC", "MCL", "M6E", "M6B", "MBT"}
    etfs = {"SPY", *(e for _, e, _ in SECTORS)}
    assert etfs <= set(symbols)
    assert all(u.asset_class[u.position(e)] == EQUITY for e in etfs)
    assert (u.asset_class == EQUITY).sum() > n_symbols // 2
    stocks = [s for s, a in zip(symbols, u.asset_class, strict=True) if a == EQUITY and s not in etfs]
    assert all(s.isalpha() and s.isupper() and 1 <= len(s) <= 4 for s in stocks)
    assert (u.start_price > 0).all() and (u.volatility > 0).all()
    assert set(u.group[[u.position(s) for s in stocks]]) == set(range(len(SECTORS)))
    assert GROUPS[u.group[u.position("EURUSD")]] == "FX"


def test_universe_is_deterministic_per_seed() -> None:
    a, b, c = build_universe(200, seed=3), build_universe(200, seed=3), build_universe(200, seed=4)
    assert list(a.symbols) == list(b.symbols) and a.regimes == b.regimes
    assert list(a.symbols) != list(c.symbols)


def test_universe_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="too few"):
        build_universe(60)


def test_fx_prices_are_triangularly_consistent(universe: Universe) -> None:
    price = dict(zip(universe.symbols, universe.start_price, strict=True))
    assert price["EURUSD"] * price["USDJPY"] == pytest.approx(price["EURJPY"])


def test_manifest_is_json_and_records_regimes(universe: Universe) -> None:
    manifest = json.loads(json.dumps(universe.to_manifest()))
    assert len(manifest["symbols"]) == len(universe)
    kinds = [r["kind"] for r in manifest["regimes"]]
    assert kinds.count("mean_reverting_pair") == 4 and kinds.count("trending") == 4
    pair = next(r for r in manifest["regimes"] if r["kind"] == "mean_reverting_pair")
    assert {"hedge_ratio", "kappa", "half_life", "sigma"} <= set(pair["params"])
    assert datetime.fromisoformat(pair["start"]) < datetime.fromisoformat(pair["end"])
    regime_symbols = [s for r in universe.regimes for s in r.symbols]
    assert len(regime_symbols) == len(set(regime_symbols))


# --- sessions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utc", "asset_class", "is_open"),
    [
        # equities: 09:30-16:00 New York; 13:30 UTC in summer (EDT), 14:30 UTC in winter (EST)
        (datetime(2024, 7, 15, 13, 30), EQUITY, True),
        (datetime(2024, 7, 15, 13, 29), EQUITY, False),
        (datetime(2024, 7, 15, 19, 59), EQUITY, True),
        (datetime(2024, 7, 15, 20, 0), EQUITY, False),
        (datetime(2024, 1, 16, 14, 30), EQUITY, True),
        (datetime(2024, 1, 16, 14, 29), EQUITY, False),
        (datetime(2024, 1, 16, 20, 59), EQUITY, True),
        (datetime(2024, 1, 16, 21, 0), EQUITY, False),
        (datetime(2024, 1, 15, 15, 0), EQUITY, False),  # Martin Luther King Jr. Day: NYSE closed
        (datetime(2024, 11, 29, 17, 59), EQUITY, True),  # day after Thanksgiving: closes 13:00 New York
        (datetime(2024, 11, 29, 18, 0), EQUITY, False),
        (datetime(2024, 3, 8, 13, 30), EQUITY, False),  # Friday before DST starts (EST)
        (datetime(2024, 3, 11, 13, 30), EQUITY, True),  # Monday after DST starts (EDT)
        (datetime(2024, 7, 13, 15, 0), EQUITY, False),  # Saturday
        # FX: Sunday 17:00 to Friday 17:00 New York
        (datetime(2024, 7, 12, 20, 59), FX, True),
        (datetime(2024, 7, 12, 21, 0), FX, False),
        (datetime(2024, 7, 13, 12, 0), FX, False),  # Saturday
        (datetime(2024, 7, 14, 20, 59), FX, False),
        (datetime(2024, 7, 14, 21, 0), FX, True),
        (datetime(2024, 1, 14, 21, 59), FX, False),
        (datetime(2024, 1, 14, 22, 0), FX, True),
        (datetime(2024, 7, 16, 21, 30), FX, True),  # no daily break
        # futures: Sunday 18:00 to Friday 17:00 New York, daily break 17:00-18:00
        (datetime(2024, 7, 16, 20, 59), FUTURE, True),
        (datetime(2024, 7, 16, 21, 0), FUTURE, False),
        (datetime(2024, 7, 16, 21, 59), FUTURE, False),
        (datetime(2024, 7, 16, 22, 0), FUTURE, True),
        (datetime(2024, 1, 16, 22, 30), FUTURE, False),
        (datetime(2024, 1, 16, 23, 0), FUTURE, True),
        (datetime(2024, 7, 14, 21, 30), FUTURE, False),
        (datetime(2024, 7, 14, 22, 0), FUTURE, True),
        (datetime(2024, 7, 13, 12, 0), FUTURE, False),
        (datetime(2024, 1, 15, 17, 59), FUTURE, True),  # Martin Luther King Jr. Day: Globex halts 12:00 Chicago
        (datetime(2024, 1, 15, 18, 0), FUTURE, False),
        (datetime(2024, 7, 15, 15, 0), ASSET_CLASSES.index("UNKNOWN"), False),
    ],
)
def test_sessions_open(utc: datetime, asset_class: int, is_open: bool) -> None:
    mask = sessions_open(np.array([_ns(utc.replace(tzinfo=UTC))], dtype=np.int64))
    assert bool(mask[0, asset_class]) is is_open


@pytest.fixture(scope="module")
def dst_weekend(universe: Universe) -> dict[str, np.ndarray]:
    """Friday 2024-03-08 to Monday 2024-03-11: US clocks go forward on Sunday the 10th."""
    return _concat(list(generate_bars(universe, datetime(2024, 3, 8, tzinfo=UTC), 4 * 1440, seed=1)))


@pytest.mark.parametrize(
    ("day", "symbol", "first", "last"),
    [
        (8, "SPY", datetime(2024, 3, 8, 14, 30), datetime(2024, 3, 8, 20, 59)),
        (11, "SPY", datetime(2024, 3, 11, 13, 30), datetime(2024, 3, 11, 19, 59)),
        (8, "EURUSD", datetime(2024, 3, 8, 0, 0), datetime(2024, 3, 8, 21, 59)),
        (9, "EURUSD", None, None),
        (10, "EURUSD", datetime(2024, 3, 10, 21, 0), datetime(2024, 3, 10, 23, 59)),
        (10, "MES", datetime(2024, 3, 10, 22, 0), datetime(2024, 3, 10, 23, 59)),
        (9, "MES", None, None),
    ],
)
def test_generated_bars_follow_sessions_across_dst(
    dst_weekend: dict[str, np.ndarray], day: int, symbol: str, first: datetime | None, last: datetime | None
) -> None:
    day_start = _ns(datetime(2024, 3, day, tzinfo=UTC))
    mask = (
        (dst_weekend["symbol"] == symbol)
        & (dst_weekend["start_ns"] >= day_start)
        & (dst_weekend["start_ns"] < day_start + 1440 * NS_PER_MINUTE)
    )
    starts = dst_weekend["start_ns"][mask]
    if first is None or last is None:
        assert starts.size == 0
        return
    assert starts.min() == _ns(first.replace(tzinfo=UTC)) and starts.max() == _ns(last.replace(tzinfo=UTC))
    assert dst_weekend["regular_session"][mask].all()


def test_futures_skip_the_daily_break(dst_weekend: dict[str, np.ndarray]) -> None:
    mes = dst_weekend["start_ns"][dst_weekend["symbol"] == "MES"]
    monday_break = _ns(datetime(2024, 3, 11, 21, 0, tzinfo=UTC))  # 17:00 EDT
    assert not ((mes >= monday_break) & (mes < monday_break + 60 * NS_PER_MINUTE)).any()
    assert (mes == monday_break + 60 * NS_PER_MINUTE).any()


def test_generated_bars_follow_holidays(universe: Universe) -> None:
    """Thanksgiving 2024: NYSE closed all day, Globex halts at 12:00 Chicago and reopens at 17:00, FX trades."""
    bars = _concat(list(generate_bars(universe, datetime(2024, 11, 28, tzinfo=UTC), 1440, seed=2)))
    assert not (bars["symbol"] == "SPY").any()
    mes = bars["start_ns"][bars["symbol"] == "MES"]
    halt, reopen = _ns(datetime(2024, 11, 28, 18, 0, tzinfo=UTC)), _ns(datetime(2024, 11, 28, 23, 0, tzinfo=UTC))
    assert mes.max() == reopen + 59 * NS_PER_MINUTE and not ((mes >= halt) & (mes < reopen)).any()
    assert (mes == halt - NS_PER_MINUTE).any() and (mes == reopen).any()
    assert (bars["symbol"] == "EURUSD").sum() == 1440


# --- bars -------------------------------------------------------------------------------------------------


def test_bar_invariants(universe: Universe, three_days: dict[str, np.ndarray]) -> None:
    b = three_days
    assert (b["low"] > 0).all()
    assert (b["low"] <= np.minimum(b["open"], b["close"])).all()
    assert (b["high"] >= np.maximum(b["open"], b["close"])).all()
    assert ((b["vwap"] >= b["low"]) & (b["vwap"] <= b["high"])).all()
    assert (b["volume"] > 0).all() and (b["trade_count"] >= 1).all()
    assert (b["end_ns"] - b["start_ns"] == NS_PER_MINUTE).all()
    assert (b["start_ns"] % NS_PER_MINUTE == 0).all()
    positions = np.array([universe.position(s) for s in b["symbol"]])
    order = np.lexsort((positions, b["start_ns"]))
    assert (order == np.arange(len(order))).all(), "bars must come in (start_ns, universe position) order"
    assert (b["asset_class"] == universe.asset_class[positions]).all()
    for symbol in ("AUDJPY", "MCL", "XLE"):  # each bar opens at the previous bar's close
        mask = b["symbol"] == symbol
        assert np.array_equal(b["open"][mask][1:], b["close"][mask][:-1])


def test_one_batch_per_minute(universe: Universe) -> None:
    batches = list(generate_bars(universe, MONDAY + timedelta(hours=14, minutes=30), 10, seed=2))
    assert len(batches) == 10
    assert all(b.interval == "1m" and len(set(b.start_ns)) == 1 for b in batches)
    assert all(len(b) == len(universe) for b in batches)  # every market open at 09:30 New York


def test_generation_is_deterministic(universe: Universe) -> None:
    def run(seed: int) -> dict[str, np.ndarray]:
        return _concat(list(generate_bars(universe, MONDAY, 1000, seed=seed)))

    a, b, c = run(9), run(9), run(10)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["close"], c["close"])


@pytest.mark.parametrize("m", [1, 119, 120, 121, 900, 1500, 2879])
def test_resume_equals_uninterrupted(universe: Universe, three_days: dict[str, np.ndarray], m: int) -> None:
    head = list(generate_bars(universe, MONDAY, m, seed=5))
    tail = list(generate_bars(universe, MONDAY, 2 * 1440, seed=5, skip_minutes=m))
    joined = _concat(head + tail)
    full = {k: v[three_days["start_ns"] < _ns(MONDAY) + 2 * 1440 * NS_PER_MINUTE] for k, v in three_days.items()}
    assert all(np.array_equal(full[k], joined[k]) for k in full)


@pytest.mark.parametrize("row", [0, 17, 99])
def test_resume_after_a_published_bar(universe: Universe, row: int) -> None:
    start = MONDAY + timedelta(hours=14)
    full = _concat(list(generate_bars(universe, start, 180, seed=5)))
    last = 100 * 40 + row  # the publisher saw bars up to this one (all 100 symbols open from minute 30)
    symbol, start_ns = str(full["symbol"][last]), int(full["start_ns"][last])
    skip, after = order_key(universe, start, symbol, start_ns)
    rest = _concat(list(generate_bars(universe, start, 180, seed=5, skip_minutes=skip, after_position=after)))
    assert all(np.array_equal(full[k][last + 1 :], rest[k]) for k in full)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (MONDAY, 0),
        (MONDAY + timedelta(minutes=1), 1),
        (MONDAY + timedelta(days=1, minutes=5), 1445),
        (_ns(MONDAY) + 90 * NS_PER_MINUTE, 90),
    ],
)
def test_minute_index(ts: datetime | int, expected: int) -> None:
    assert minute_index(MONDAY, ts) == expected


def test_minute_index_rejects_unaligned_times() -> None:
    with pytest.raises(ValueError, match="minute boundary"):
        minute_index(MONDAY, MONDAY + timedelta(seconds=30))


# --- injected structure ----------------------------------------------------------------------------------


def _ar1(spread: np.ndarray) -> tuple[float, float]:
    """Half-life and Dickey-Fuller t-statistic from the regression of the spread change on its lag."""
    x, y = spread[:-1], np.diff(spread)
    design = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    se = np.sqrt(resid.var(ddof=2) * np.linalg.inv(design.T @ design)[1, 1])
    return float(np.log(2.0) / -np.log1p(beta[1])), float(beta[1] / se)


def _t_stat(returns: np.ndarray) -> float:
    return float(returns.mean() / returns.std(ddof=1) * np.sqrt(len(returns)))


def _window(bars: dict[str, np.ndarray], symbol: str, lo: datetime, hi: datetime) -> np.ndarray:
    ts, logs = _log_closes(bars, symbol)
    return logs[(ts >= _ns(lo)) & (ts < _ns(hi))]


@pytest.mark.parametrize("k", range(4))
def test_pair_spread_mean_reverts_with_recorded_half_life(
    universe: Universe, three_days: dict[str, np.ndarray], k: int
) -> None:
    pair = [r for r in universe.regimes if r.kind == "mean_reverting_pair"][k]
    a, b = (_window(three_days, s, pair.start, pair.end) for s in pair.symbols)
    half_life, adf_t = _ar1(a - pair.params["hedge_ratio"] * b)
    assert half_life == pytest.approx(pair.params["half_life"], rel=0.35)
    assert adf_t < -3.5  # well beyond the 1% Dickey-Fuller critical value (about -3.43)


def test_unpaired_stocks_do_not_mean_revert(universe: Universe, three_days: dict[str, np.ndarray]) -> None:
    pair = next(r for r in universe.regimes if r.kind == "mean_reverting_pair")
    a = _window(three_days, pair.symbols[0], pair.start, pair.end)
    control = _window(three_days, _controls(universe)[0], pair.start, pair.end)
    assert _ar1(a - control)[1] > -3.0


def _controls(universe: Universe) -> list[str]:
    busy = {s for r in universe.regimes for s in r.symbols} | {"SPY", *(e for _, e, _ in SECTORS)}
    return [str(s) for s in universe.symbols[universe.asset_class == EQUITY] if s not in busy][:3]


@pytest.mark.parametrize("k", range(4))
def test_trending_series_has_significant_drift(universe: Universe, three_days: dict[str, np.ndarray], k: int) -> None:
    trend = [r for r in universe.regimes if r.kind == "trending"][k]
    returns = np.diff(_window(three_days, trend.symbols[0], trend.start, trend.end))
    assert _t_stat(returns) > 2.5
    assert returns.mean() == pytest.approx(trend.params["drift"], abs=3 * returns.std() / np.sqrt(len(returns)))


@pytest.mark.parametrize("n", range(3))
def test_control_symbols_have_no_drift(universe: Universe, three_days: dict[str, np.ndarray], n: int) -> None:
    logs = _log_closes(three_days, _controls(universe)[n])[1]
    assert abs(_t_stat(np.diff(logs))) < 3.0


def test_fx_pair_returns_follow_currency_factors(three_days: dict[str, np.ndarray]) -> None:
    """EURJPY's return is EURUSD's plus USDJPY's (base minus quote factor), up to tiny pair noise."""
    ret = {s: np.diff(_log_closes(three_days, s)[1]) for s in ("EURUSD", "USDJPY", "EURJPY")}
    residual = ret["EURJPY"] - ret["EURUSD"] - ret["USDJPY"]
    assert residual.std() < 0.1 * ret["EURJPY"].std()


def test_sector_etf_return_is_the_sector_average(universe: Universe, three_days: dict[str, np.ndarray]) -> None:
    sector = next(k for k, (_, etf, _) in enumerate(SECTORS) if etf == "XLK")
    members = [
        str(s)
        for s, g, c in zip(universe.symbols, universe.group, universe.asset_class, strict=True)
        if g == sector and c == EQUITY and s != "XLK"
    ]
    member_returns = np.mean([np.diff(_log_closes(three_days, s)[1]) for s in members], axis=0)
    np.testing.assert_allclose(np.diff(_log_closes(three_days, "XLK")[1]), member_returns, atol=1e-12)
