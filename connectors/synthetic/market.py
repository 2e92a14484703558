"""A seeded synthetic market of one-minute bars: US equities, FX pairs and CME micro futures.

Returns follow a linear factor model (market, sector, currency, gold and crypto factors plus
idiosyncratic noise), so the only exploitable structure is what we inject and record as `Regime`s:
cointegrated equity pairs whose spread is an Ornstein-Uhlenbeck process, and drifting (trending) series.
That makes the generator a ground truth for testing the pattern and discovery stages.

Determinism and resume: the random numbers of a minute come from
``Generator(PCG64(SeedSequence([seed, epoch_minute])))``, so any minute's shocks can be derived without
replaying earlier ones. Prices carry over, so resuming at minute ``m`` (``skip_minutes=m``) recomputes the
close path up to ``m`` from the close-return draws only (no OHLC work; about 0.2 s per week of minutes
for 1,000 symbols). Work is done in blocks of ``BLOCK_MINUTES`` aligned to ``start``, always computed whole,
so a resumed run performs exactly the same floating-point operations as an uninterrupted one and yields
bit-identical bars.

Sessions come from the market calendars in ``core.sessions`` (NYSE and CME holidays and early closes,
DST, the CME daily break, the FX week), so every generated bar is a regular-session bar. Futures are
continuous roots (``MES``, no contract month); prices move only while their market is open, so equities
open where they closed (no overnight gap).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from core.sessions import market_of, regular_session_mask
from core.units import NS_PER_MINUTE
from schemas.bars import ASSET_CLASSES, BarBatch, Float64, Int64

EQUITY = ASSET_CLASSES.index("EQUITY")
FX = ASSET_CLASSES.index("FX")
FUTURE = ASSET_CLASSES.index("FUTURE")

BLOCK_MINUTES = 120

SECTORS: tuple[tuple[str, str, float], ...] = (
    # (sector, ETF, share of single stocks)
    ("Technology", "XLK", 0.16),
    ("Financials", "XLF", 0.13),
    ("Health Care", "XLV", 0.13),
    ("Consumer Discretionary", "XLY", 0.11),
    ("Industrials", "XLI", 0.11),
    ("Communication Services", "XLC", 0.06),
    ("Consumer Staples", "XLP", 0.06),
    ("Energy", "XLE", 0.06),
    ("Utilities", "XLU", 0.05),
    ("Real Estate", "XLRE", 0.06),
    ("Materials", "XLB", 0.07),
)
CURRENCIES = ("EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY")  # market quoting priority
_USD_VALUE = {
    "EUR": 1.085,
    "GBP": 1.27,
    "AUD": 0.66,
    "NZD": 0.61,
    "USD": 1.0,
    "CAD": 1 / 1.36,
    "CHF": 1 / 0.88,
}
_USD_VALUE["JPY"] = 1 / 148.0
FX_PAIRS = tuple(f"{b}{q}" for i, b in enumerate(CURRENCIES) for q in CURRENCIES[i + 1 :])
MISC_GROUPS = ("Market", "FX", "Metals", "Crypto")
GROUPS = tuple(s for s, _, _ in SECTORS) + MISC_GROUPS
FACTORS = ("market", *(s for s, _, _ in SECTORS), *CURRENCIES, "gold", "crypto")
_FACTOR_VOL = {"market": 4e-4, "gold": 2e-4, "crypto": 8e-4} | dict.fromkeys(CURRENCIES, 1.2e-4)

# (continuous root, start price, group, factor loadings, idiosyncratic vol per minute)
FUTURES: tuple[tuple[str, float, str, Mapping[str, float], float], ...] = (
    ("MES", 5000.0, "Market", {"market": 1.0}, 5e-5),
    ("MNQ", 17500.0, "Market", {"market": 1.15, "Technology": 0.5}, 1e-4),
    ("M2K", 2000.0, "Market", {"market": 1.2}, 2e-4),
    ("MYM", 38000.0, "Market", {"market": 0.9}, 8e-5),
    ("MGC", 2050.0, "Metals", {"gold": 1.0}, 5e-5),
    ("SIL", 23.0, "Metals", {"gold": 1.3}, 3e-4),
    ("MHG", 3.9, "Metals", {"market": 0.3, "gold": 0.3}, 4e-4),
    ("MCL", 75.0, "Energy", {"Energy": 1.5}, 4e-4),
    ("M6E", 1.085, "FX", {"EUR": 1.0, "USD": -1.0}, 1e-5),
    ("M6B", 1.27, "FX", {"GBP": 1.0, "USD": -1.0}, 1e-5),
    ("M6A", 0.66, "FX", {"AUD": 1.0, "USD": -1.0}, 1e-5),
    ("MBT", 45000.0, "Crypto", {"crypto": 1.0}, 3e-4),
    ("MET", 2400.0, "Crypto", {"crypto": 1.2}, 5e-4),
)
_TRENDABLE_FUTURES = ("MES", "MNQ", "M2K", "MYM", "MGC", "SIL", "MHG", "MCL", "MBT", "MET")
_LETTER_WEIGHTS = np.array(
    [8, 4, 5, 4, 6, 3, 3, 3, 4, 1, 2, 5, 5, 5, 3, 4, 0.3, 5, 6, 6, 2, 2, 2, 0.5, 1, 0.5], dtype=np.float64
)
_TICKER_LENGTHS = (np.array([1, 2, 3, 4]), np.array([0.01, 0.09, 0.45, 0.45]))

RegimeKind = Literal["mean_reverting_pair", "trending"]


@dataclass(frozen=True, slots=True)
class Regime:
    """An injected, exploitable effect; the ground truth the pattern detectors should recover.

    ``mean_reverting_pair``: symbols (A, B); ``log A = c + hedge_ratio * log B + s`` with ``s`` an OU
    spread: ``s' = (1 - kappa) s + sigma * eps`` per open bar; ``half_life`` in bars; ``spread_sd`` the
    stationary standard deviation. ``trending``: symbols (X,); ``drift`` added to the log return of every
    open bar; ``strength`` the expected t-statistic of the mean return over the regime's bars.
    Active for bars with ``start <= bar start < end``.
    """

    kind: RegimeKind
    symbols: tuple[str, ...]
    params: Mapping[str, float]
    start: datetime
    end: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "symbols": list(self.symbols),
            "params": dict(self.params),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Universe:
    """Symbols and the parameters of their return model, as columns in a fixed (generation) order."""

    seed: int
    start: datetime
    days: int
    symbols: npt.NDArray[np.object_]
    asset_class: npt.NDArray[np.int8]
    group: npt.NDArray[np.int16]  # index into GROUPS
    start_price: Float64
    volatility: Float64  # total log-return sd per open minute
    idio_vol: Float64
    loadings: Float64  # (len(FACTORS), n)
    composite: Int64  # rows whose return is a weighted average of other rows (ETFs)
    composite_weights: Float64  # (len(composite), n)
    base_volume: Float64
    trade_size: Float64
    regimes: tuple[Regime, ...]
    _position: Mapping[str, int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.symbols)

    def position(self, symbol: str) -> int:
        """Index of ``symbol`` in generation order; raises KeyError for an unknown symbol."""
        return self._position[symbol]

    def to_manifest(self) -> dict[str, Any]:
        return {
            "generator": "tidemark.synthetic.market",
            "seed": self.seed,
            "start": self.start.isoformat(),
            "days": self.days,
            "factors": list(FACTORS),
            "symbols": [
                {
                    "symbol": str(s),
                    "asset_class": ASSET_CLASSES[int(a)],
                    "group": GROUPS[int(g)],
                    "start_price": float(p),
                    "volatility": float(v),
                }
                for s, a, g, p, v in zip(
                    self.symbols, self.asset_class, self.group, self.start_price, self.volatility, strict=True
                )
            ],
            "regimes": [r.to_dict() for r in self.regimes],
        }


def _tickers(rng: np.random.Generator, count: int, reserved: set[str]) -> list[str]:
    """Unique 1-4 letter tickers with English-like letter frequencies (build time only, not hot path)."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    p = _LETTER_WEIGHTS / _LETTER_WEIGHTS.sum()
    out: list[str] = []
    seen = set(reserved)
    while len(out) < count:
        lengths = rng.choice(_TICKER_LENGTHS[0], size=count, p=_TICKER_LENGTHS[1])
        chars = rng.choice(letters, size=(count, 4), p=p)
        for length, row in zip(lengths, chars, strict=True):
            ticker = "".join(row[:length])
            if ticker not in seen and len(out) < count:
                seen.add(ticker)
                out.append(ticker)
    return out


def _to_ns(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: pass an aware UTC datetime")
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def sessions_open(start_ns: Int64) -> npt.NDArray[np.bool_]:
    """Whether each market is open for a bar starting at each time: shape (len(start_ns), len(ASSET_CLASSES)).

    Each asset class follows its calendar (``core.sessions.market_of``); UNKNOWN is never open.
    """
    t = np.asarray(start_ns, dtype=np.int64)
    out = np.zeros((len(t), len(ASSET_CLASSES)), dtype=np.bool_)
    for k, name in enumerate(ASSET_CLASSES):
        if name != "UNKNOWN":
            out[:, k] = regular_session_mask(market_of(name), t)
    return out


def build_universe(
    n_symbols: int = 1000,
    seed: int = 7,
    *,
    start: datetime = datetime(2025, 3, 3, tzinfo=UTC),
    days: int = 5,
    n_pairs: int = 4,
    n_trends: int = 4,
) -> Universe:
    """Build the symbol universe and place the regimes inside ``[start, start + days)``.

    Order: FX pairs, futures, SPY and sector ETFs, then single stocks (the rest of ``n_symbols``).
    """
    n_fixed = len(FX_PAIRS) + len(FUTURES) + 1 + len(SECTORS)
    n_stocks = n_symbols - n_fixed
    if n_stocks < 2 * len(SECTORS) + 2 * n_pairs + n_trends:
        raise ValueError(f"n_symbols={n_symbols} leaves too few single stocks for the sectors and regimes")
    rng = np.random.default_rng([seed, 0x5EED])
    factor_index = {f: i for i, f in enumerate(FACTORS)}
    group_index = {g: i for i, g in enumerate(GROUPS)}
    factor_vol = np.array([_FACTOR_VOL.get(f, 3e-4) for f in FACTORS])

    share = np.array([w for _, _, w in SECTORS])
    sector_of_stock = rng.permutation(
        np.concatenate(
            [
                np.repeat(np.arange(len(SECTORS)), 2),
                rng.choice(len(SECTORS), size=n_stocks - 2 * len(SECTORS), p=share / share.sum()),
            ]
        )
    )
    reserved = {*FX_PAIRS, *(f[0] for f in FUTURES), "SPY", *(e for _, e, _ in SECTORS)}
    stock_names = _tickers(rng, n_stocks, reserved)

    symbols = [*FX_PAIRS, *(f[0] for f in FUTURES), "SPY", *(e for _, e, _ in SECTORS), *stock_names]
    n = len(symbols)
    i_fut = len(FX_PAIRS)
    i_etf = i_fut + len(FUTURES)
    i_stock = i_etf + 1 + len(SECTORS)
    asset_class = np.full(n, EQUITY, dtype=np.int8)
    asset_class[:i_fut] = FX
    asset_class[i_fut:i_etf] = FUTURE
    group = np.empty(n, dtype=np.int16)
    loadings = np.zeros((len(FACTORS), n))
    idio = np.zeros(n)
    price = np.empty(n)
    base_volume = np.empty(n)
    trade_size = np.ones(n)

    for k, pair in enumerate(FX_PAIRS):
        base, quote = pair[:3], pair[3:]
        loadings[factor_index[base], k] = 1.0
        loadings[factor_index[quote], k] = -1.0
        price[k] = _USD_VALUE[base] / _USD_VALUE[quote]
    group[:i_fut] = group_index["FX"]
    idio[:i_fut] = 5e-6
    base_volume[:i_fut] = rng.uniform(80, 400, len(FX_PAIRS))

    for k, (_, fut_price, fut_group, fut_loadings, fut_idio) in enumerate(FUTURES, start=i_fut):
        for f, beta in fut_loadings.items():
            loadings[factor_index[f], k] = beta
        price[k], group[k], idio[k] = fut_price, group_index[fut_group], fut_idio
    base_volume[i_fut:i_etf] = rng.uniform(50, 1500, len(FUTURES))
    trade_size[i_fut:i_etf] = 2.0

    stocks = np.arange(i_stock, n)
    loadings[factor_index["market"], stocks] = rng.uniform(0.6, 1.5, n_stocks)
    loadings[1 + sector_of_stock, stocks] = rng.uniform(0.5, 1.2, n_stocks)
    idio[stocks] = 8e-4 * np.exp(rng.normal(0.0, 0.35, n_stocks))
    price[stocks] = np.clip(np.exp(rng.normal(math.log(60.0), 0.9, n_stocks)), 2.0, 2000.0)
    group[stocks] = sector_of_stock
    base_volume[stocks] = 4000 * np.exp(rng.normal(0.0, 0.8, n_stocks))
    trade_size[stocks] = rng.uniform(60, 200, n_stocks)

    composite = np.arange(i_etf, i_stock)
    weights = np.zeros((len(composite), n))
    weights[0, stocks] = 1.0 / n_stocks
    for s in range(len(SECTORS)):
        members = stocks[sector_of_stock == s]
        weights[1 + s, members] = 1.0 / len(members)
    group[i_etf] = group_index["Market"]
    group[i_etf + 1 : i_stock] = np.arange(len(SECTORS))
    price[i_etf] = 480.0
    price[i_etf + 1 : i_stock] = rng.uniform(40, 200, len(SECTORS))
    base_volume[i_etf] = 80_000.0
    base_volume[i_etf + 1 : i_stock] = rng.uniform(3000, 20000, len(SECTORS))
    trade_size[i_etf:i_stock] = 100.0

    factor_cov = loadings.T * factor_vol  # (n, factors): exposure times factor sd
    volatility = np.sqrt((factor_cov**2).sum(axis=1) + idio**2)
    etf_exposure = weights @ factor_cov
    volatility[composite] = np.sqrt((etf_exposure**2).sum(axis=1) + (weights**2) @ idio**2)

    regimes = _place_regimes(rng, symbols, stocks, sector_of_stock, i_fut, volatility, start, days, n_pairs, n_trends)
    return Universe(
        seed=seed,
        start=start,
        days=days,
        symbols=np.array(symbols, dtype=object),
        asset_class=asset_class,
        group=group,
        start_price=price,
        volatility=volatility,
        idio_vol=idio,
        loadings=loadings,
        composite=composite.astype(np.int64),
        composite_weights=weights,
        base_volume=base_volume,
        trade_size=trade_size,
        regimes=regimes,
        _position=MappingProxyType({s: i for i, s in enumerate(symbols)}),
    )


def _place_regimes(
    rng: np.random.Generator,
    symbols: list[str],
    stocks: Int64,
    sector_of_stock: Int64,
    i_fut: int,
    volatility: Float64,
    start: datetime,
    days: int,
    n_pairs: int,
    n_trends: int,
) -> tuple[Regime, ...]:
    """Pairs from same-sector stocks, trends from stocks and futures; every symbol in at most one regime."""
    horizon = days * 1440
    used: set[int] = set()
    regimes: list[Regime] = []

    def window() -> tuple[datetime, datetime]:
        """Most of the horizon, trimmed by up to 15% at each end, on minute boundaries."""
        lead, trail = (int(m) for m in rng.integers(0, int(0.15 * horizon) + 1, 2))
        return start + timedelta(minutes=lead), start + timedelta(minutes=horizon - trail)

    sectors = rng.permutation(len(SECTORS))
    for k in range(n_pairs):
        members = [int(i) for i in stocks[sector_of_stock == sectors[k % len(sectors)]] if int(i) not in used]
        a, b = (int(i) for i in rng.choice(members, 2, replace=False))
        used.update((a, b))
        kappa = float(rng.uniform(0.04, 0.12))
        sigma = float(rng.uniform(4e-4, 9e-4))
        lo, hi = window()
        params = {
            "hedge_ratio": round(float(rng.uniform(0.7, 1.4)), 4),
            "kappa": kappa,
            "half_life": math.log(2.0) / -math.log(1.0 - kappa),
            "sigma": sigma,
            "spread_sd": sigma / math.sqrt(1.0 - (1.0 - kappa) ** 2),
        }
        regimes.append(Regime("mean_reverting_pair", (symbols[a], symbols[b]), MappingProxyType(params), lo, hi))

    futures = [symbols.index(f) for f in _TRENDABLE_FUTURES]
    candidates = [int(i) for i in stocks if int(i) not in used]
    for k in range(n_trends):
        pool = futures if k % 4 == 3 else candidates  # one in four trends is a future
        x = int(rng.choice([i for i in pool if i not in used]))
        used.add(x)
        lo, hi = window()
        market = FUTURE if x < i_fut + len(FUTURES) else EQUITY
        grid = np.arange(_to_ns(lo), _to_ns(hi), NS_PER_MINUTE, dtype=np.int64)
        n_bars = int(sessions_open(grid)[:, market].sum())
        strength = float(rng.uniform(4.0, 6.0))
        drift = strength * float(volatility[x]) / math.sqrt(max(n_bars, 1))
        params = {"drift": drift, "strength": strength, "bars": float(n_bars)}
        regimes.append(Regime("trending", (symbols[x],), MappingProxyType(params), lo, hi))
    return tuple(regimes)


def minute_index(start: datetime, ts: datetime | int) -> int:
    """Minute offset of a bar start (aware datetime or UTC ns) from the generation ``start``."""
    ts_ns = ts if isinstance(ts, int) else _to_ns(ts)
    offset, rest = divmod(ts_ns - _to_ns(start), NS_PER_MINUTE)
    if rest:
        raise ValueError(f"{ts!r} is not on a minute boundary relative to {start.isoformat()}")
    return offset


def order_key(universe: Universe, start: datetime, symbol: str, start_ns: int) -> tuple[int, int]:
    """Position of a bar in generation order: (minute index, symbol position). Tuples compare in that order.

    To resume after the last bar already published, pass the key as ``skip_minutes, after_position``.
    """
    return minute_index(start, start_ns), universe.position(symbol)


@dataclass(slots=True)
class _Model:
    """Per-call arrays derived from the universe and its regimes, laid out for the block kernel."""

    factor_vol_loadings: Float64  # (factors, n): loadings scaled by factor sd
    stock_rows: Int64
    pair_a: Int64
    pair_b: Int64
    pair_hedge: Float64
    pair_phi: Float64
    pair_sigma: Float64
    pair_window: Int64  # (2, pairs) start/end ns
    trend_idx: Int64
    trend_drift: Float64
    trend_window: Int64

    @classmethod
    def of(cls, u: Universe) -> _Model:
        factor_vol = np.array([_FACTOR_VOL.get(f, 3e-4) for f in FACTORS])
        pairs = [r for r in u.regimes if r.kind == "mean_reverting_pair"]
        trends = [r for r in u.regimes if r.kind == "trending"]

        def idx(rs: list[Regime], k: int) -> Int64:
            return np.array([u.position(r.symbols[k]) for r in rs], dtype=np.int64)

        def windows(rs: list[Regime]) -> Int64:
            return np.array([[_to_ns(r.start) for r in rs], [_to_ns(r.end) for r in rs]], dtype=np.int64)

        def param(rs: list[Regime], name: str) -> Float64:
            return np.array([r.params[name] for r in rs], dtype=np.float64)

        return cls(
            factor_vol_loadings=u.loadings * factor_vol[:, None],
            stock_rows=np.flatnonzero(u.composite_weights.any(axis=0)).astype(np.int64),
            pair_a=idx(pairs, 0),
            pair_b=idx(pairs, 1),
            pair_hedge=param(pairs, "hedge_ratio"),
            pair_phi=1.0 - param(pairs, "kappa"),
            pair_sigma=param(pairs, "sigma"),
            pair_window=windows(pairs).reshape(2, len(pairs)),
            trend_idx=idx(trends, 0),
            trend_drift=param(trends, "drift"),
            trend_window=windows(trends).reshape(2, len(trends)),
        )


@dataclass(slots=True)
class _State:
    log_close: Float64
    spread: Float64


@dataclass(slots=True)
class _Block:
    """One block's open minutes: start times, open mask, log returns, and intra-bar uniforms."""

    start_ns: Int64
    is_open: npt.NDArray[np.bool_]
    returns: Float64
    log_close: Float64
    uniforms: Float64 | None


def _block(u: Universe, model: _Model, state: _State, seed: int, start_ns: Int64, with_bars: bool) -> _Block:
    """Advance ``state`` over one block of minutes; ``with_bars`` also draws what OHLC/volume need."""
    markets_open = sessions_open(start_ns)
    any_open = markets_open[:, u.asset_class].any(axis=1)
    start_ns = start_ns[any_open]
    is_open = markets_open[any_open][:, u.asset_class]
    n, n_f, n_p = len(u), len(FACTORS), len(model.pair_a)
    shocks = np.empty((len(start_ns), n_f + n + n_p))
    uniforms = np.empty((len(start_ns), 4, n)) if with_bars else None
    for row, minute in enumerate(start_ns // NS_PER_MINUTE):
        rng = np.random.Generator(np.random.PCG64([seed, int(minute)]))
        shocks[row] = rng.standard_normal(n_f + n + n_p)
        if uniforms is not None:
            uniforms[row] = rng.random((4, n))

    returns = shocks[:, :n_f] @ model.factor_vol_loadings + shocks[:, n_f : n_f + n] * u.idio_vol
    t = start_ns[:, None]
    trending = (t >= model.trend_window[0]) & (t < model.trend_window[1])
    returns[:, model.trend_idx] += trending * model.trend_drift
    in_pair = (t >= model.pair_window[0]) & (t < model.pair_window[1]) & is_open[:, model.pair_a]
    for k in range(n_p):  # a handful of regimes; the OU recursion itself runs in lfilter
        rows = np.flatnonzero(in_pair[:, k])
        if rows.size == 0:
            continue
        phi = model.pair_phi[k]
        eps = shocks[rows, n_f + n + k]
        path = lfilter([model.pair_sigma[k]], [1.0, -phi], eps, zi=[phi * state.spread[k]])[0]
        step = np.diff(path, prepend=state.spread[k])
        returns[rows, model.pair_a[k]] = model.pair_hedge[k] * returns[rows, model.pair_b[k]] + step
        state.spread[k] = path[-1]
    returns[:, u.composite] = returns[:, model.stock_rows] @ u.composite_weights[:, model.stock_rows].T
    returns *= is_open
    log_close = np.cumsum(np.vstack([state.log_close[None, :], returns]), axis=0)[1:]
    if len(log_close):
        state.log_close = log_close[-1].copy()
    return _Block(start_ns, is_open, returns, log_close, uniforms)


def _bars(u: Universe, block: _Block, prev_log_close: Float64) -> Iterator[tuple[Int64, BarBatch]]:
    """One BarBatch per open minute, rows in universe order, with the rows' universe positions."""
    assert block.uniforms is not None
    mask = block.is_open
    log_open = np.vstack([prev_log_close[None, :], block.log_close[:-1]])
    close = np.exp(block.log_close)[mask]
    open_ = np.exp(log_open)[mask]
    u_hi, u_lo, u_vwap, u_vol = (block.uniforms[:, j, :] for j in range(4))
    vol = np.broadcast_to(u.volatility, mask.shape)
    wick = 0.6 * vol[mask]
    high = np.maximum(open_, close) * np.exp(wick * -np.log1p(-u_hi[mask]))
    low = np.minimum(open_, close) * np.exp(-wick * -np.log1p(-u_lo[mask]))
    vwap = low + (high - low) * (0.25 + 0.5 * u_vwap[mask])
    activity = 0.5 + 0.5 * np.abs(block.returns[mask]) / vol[mask]
    volume = np.ceil(np.broadcast_to(u.base_volume, mask.shape)[mask] * (0.3 - np.log1p(-u_vol[mask])) * activity)
    trade_count = np.ceil(volume / np.broadcast_to(u.trade_size, mask.shape)[mask]).astype(np.int64)
    symbol = np.broadcast_to(u.symbols, mask.shape)[mask]
    asset_class = np.broadcast_to(u.asset_class, mask.shape)[mask]
    position = np.broadcast_to(np.arange(len(u)), mask.shape)[mask]
    counts = mask.sum(axis=1)
    start_ns = np.repeat(block.start_ns, counts)
    end_ns = start_ns + NS_PER_MINUTE
    regular = np.ones(len(close), dtype=np.bool_)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for row in range(len(counts)):
        s = slice(int(bounds[row]), int(bounds[row + 1]))
        batch = BarBatch(
            symbol=symbol[s],
            asset_class=asset_class[s],
            interval="1m",
            start_ns=start_ns[s],
            end_ns=end_ns[s],
            open=open_[s],
            high=high[s],
            low=low[s],
            close=close[s],
            volume=volume[s],
            vwap=vwap[s],
            trade_count=trade_count[s],
            regular_session=regular[s],
        )
        yield position[s], batch


def generate_bars(
    universe: Universe,
    start: datetime,
    minutes: int,
    seed: int,
    *,
    skip_minutes: int = 0,
    after_position: int = -1,
) -> Iterator[BarBatch]:
    """Yield one BarBatch per minute in ``[start + skip_minutes, start + minutes)`` that has open symbols.

    Prices start at ``universe.start_price`` at ``start``. Fully closed minutes (weekends) yield nothing.
    Resuming: ``skip_minutes, after_position = order_key(...)`` of the last bar published gives exactly
    the bars that follow it in the uninterrupted run (rows of minute ``skip_minutes`` up to and including
    symbol position ``after_position`` are dropped).
    """
    start_ns0 = _to_ns(start)
    if start_ns0 % NS_PER_MINUTE:
        raise ValueError(f"start {start.isoformat()} is not on a minute boundary")
    if not 0 <= skip_minutes <= minutes:
        raise ValueError(f"skip_minutes={skip_minutes} outside [0, {minutes}]")
    model = _Model.of(universe)
    state = _State(np.log(universe.start_price), np.zeros(len(model.pair_a)))
    first_block = skip_minutes // BLOCK_MINUTES * BLOCK_MINUTES
    skip_ns = start_ns0 + skip_minutes * NS_PER_MINUTE
    end_ns = start_ns0 + minutes * NS_PER_MINUTE
    for block_start in range(0, minutes, BLOCK_MINUTES):
        grid = start_ns0 + (block_start + np.arange(BLOCK_MINUTES, dtype=np.int64)) * NS_PER_MINUTE
        prev = state.log_close
        block = _block(universe, model, state, seed, grid, with_bars=block_start >= first_block)
        if block.uniforms is None:
            continue
        for position, batch in _bars(universe, block, prev):
            t = int(batch.start_ns[0])
            if t >= end_ns:
                return
            if t < skip_ns:
                continue
            if t == skip_ns and after_position >= 0:
                batch = batch.take(position > after_position)
            if len(batch):
                yield batch
