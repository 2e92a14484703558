"""The rotation processors: events recomputed from the bars directly, and independent of batching and restarts."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.sessions import Market, regular_session_mask
from core.settings import Settings
from schemas.codec import get_registry
from streams.processors import BarFrame, Emitted
from streams.rotation.factory import CURRENCY_STRENGTH, SECTOR_ROTATION
from streams.rotation.processor import CurrencyStrengthProcessor, SectorRotationProcessor
from streams.rotation.sectors import SPDR_SECTORS

M = 60_000_000_000
START = pd.Timestamp("2025-03-03T13:00Z").value  # a Monday: FX open all along, NYSE from 14:30 UTC
MINUTES = 180
PARTITIONS = 3
MAJORS = ("EUR", "GBP", "AUD", "NZD", "USD", "CAD", "CHF", "JPY")
PAIRS = tuple(f"{b}{q}" for b, q in itertools.combinations(MAJORS, 2))
SECTORS = tuple(SPDR_SECTORS)
OUTSIDERS = ("MES", "BTCX", "ZZZ")  # keep every partition moving, like the rest of the market does
SYMBOLS = (*PAIRS, "SPY", *SECTORS, *OUTSIDERS)
STRENGTH_WINDOW = 20
ROTATION_WINDOW, MOMENTUM = 20, 5
EVERY = 5


def make_frames(seed: int, start: int = START, minutes: int = MINUTES) -> list[BarFrame]:
    """One time-ordered stream per partition; every symbol prints every minute (ETFs pre-market too), some gaps."""
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.normal(0.0, 2e-4, (minutes, len(MAJORS))), axis=0)
    fx = values[:, [MAJORS.index(p[:3]) for p in PAIRS]] - values[:, [MAJORS.index(p[3:]) for p in PAIRS]]
    market = np.cumsum(rng.normal(0.0, 4e-4, minutes))
    sector = (
        np.cumsum(rng.normal(0.0, 3e-4, (minutes, len(SECTORS))), axis=0)
        + np.cumsum(rng.normal(0.0, 2e-3, (minutes // 30 + 1, len(SECTORS))), axis=0).repeat(30, axis=0)[:minutes]
    )  # slow sector trends, so quadrants rotate within the test
    others = np.cumsum(rng.normal(0.0, 5e-4, (minutes, len(OUTSIDERS))), axis=0)
    log_close = np.column_stack(
        [fx + rng.normal(0.0, 2e-5, fx.shape), market, market[:, None] + sector, others]
    ) + np.log(rng.uniform(1.0, 200.0, len(SYMBOLS)))
    present = rng.random(log_close.shape) >= 0.05
    present[:, -len(OUTSIDERS) :] = True
    t, j = np.nonzero(present)
    names = np.array(SYMBOLS, dtype=object)
    part = (j % PARTITIONS).astype(np.int32)
    frame = BarFrame(part, names[j], start + t.astype(np.int64) * M, np.exp(log_close[t, j]))
    return [take(frame, np.flatnonzero(part == p)) for p in range(PARTITIONS)]


def take(frame: BarFrame, index: Any) -> BarFrame:
    return BarFrame(frame.partition[index], frame.symbol[index], frame.start_ns[index], frame.close[index])


def concat(frames: list[BarFrame]) -> BarFrame:
    return BarFrame(
        *(np.concatenate([getattr(f, name) for f in frames]) for name in ("partition", "symbol", "start_ns", "close"))
    )


def interleave(rng: np.random.Generator, streams: list[BarFrame], max_run: int, batches: int) -> list[BarFrame]:
    """A random merge of the partitions (each keeps its order), cut at random batch boundaries."""
    cursors = [0] * len(streams)
    runs = []
    while live := [i for i, s in enumerate(streams) if cursors[i] < len(s)]:
        i = int(rng.choice(live))
        n = int(rng.integers(1, max_run + 1))
        runs.append(take(streams[i], slice(cursors[i], cursors[i] + n)))
        cursors[i] += n
    merged = concat(runs)
    cuts = np.sort(rng.choice(np.arange(1, len(merged)), size=min(batches, len(merged) - 1), replace=False))
    bounds = [0, *cuts.tolist(), len(merged)]
    return [take(merged, slice(a, b)) for a, b in itertools.pairwise(bounds)]


Processor = CurrencyStrengthProcessor | SectorRotationProcessor
WATCHED = frozenset(range(PARTITIONS))


def strength_processor() -> CurrencyStrengthProcessor:
    return CurrencyStrengthProcessor.create("G8", PAIRS, STRENGTH_WINDOW, EVERY, WATCHED)


def rotation_processor(band: float = 0.05) -> SectorRotationProcessor:
    return SectorRotationProcessor.create(
        "spdr_sectors", "SPY", SECTORS, ROTATION_WINDOW, MOMENTUM, EVERY, 3, band, WATCHED
    )


MAKERS = {"strength": strength_processor, "rotation": rotation_processor}


def run(processor: Processor, batches: list[BarFrame]) -> list[Emitted]:
    emitted: list[Emitted] = []
    for batch in batches:
        emitted += processor.process(batch)
    return emitted


def comparable(events: list[Emitted]) -> list[tuple[str, bytes, dict[str, Any]]]:
    """Everything but the publication time, which is wall clock by definition."""
    return [(e.topic, e.key, {k: v for k, v in e.event.items() if k != "ts_ingest"}) for e in events]


@functools.cache
def baseline(kind: str, seed: int) -> tuple[list[BarFrame], list[Emitted]]:
    streams = make_frames(seed)
    return streams, run(MAKERS[kind](), [concat(streams)])


def closes_before(streams: list[BarFrame], symbols: tuple[str, ...], market: Market, before_ns: int) -> pd.DataFrame:
    """Reference grid: regular-session closes of ``symbols`` before a time, pivoted and carried forward (pandas)."""
    bars = concat(streams)
    frame = pd.DataFrame({"symbol": bars.symbol.astype(str), "start": bars.start_ns, "close": bars.close})
    frame = frame[frame.symbol.isin(symbols) & (frame.start < before_ns)]
    frame = frame[regular_session_mask(market, frame.start.to_numpy())]
    return frame.pivot(index="start", columns="symbol", values="close").sort_index().ffill()[list(symbols)]


@pytest.mark.parametrize("seed", [0, 1])
def test_currency_strength_events_match_a_direct_recomputation(seed: int) -> None:
    streams, emitted = baseline("strength", seed)
    assert len(emitted) >= 20
    registry = get_registry()
    for e in emitted:
        assert (e.topic, e.key, e.schema) == (
            "analytics.currency_strength",
            b"G8",
            "tidemark.analytics.CurrencyStrengthComputed",
        )
        registry.encode(e.schema, e.event)  # the contract accepts it
        as_of = e.event["as_of_ns"]
        grid = closes_before(streams, PAIRS, Market.FX, as_of).iloc[-(STRENGTH_WINDOW + 1) :]
        assert len(grid) == STRENGTH_WINDOW + 1 and grid.index[-1] == as_of - M
        returns = np.log(grid.iloc[-1] / grid.iloc[0])
        against = {c: [] for c in MAJORS}  # type: dict[str, list[float]]
        for pair, r in returns.items():
            against[pair[:3]].append(r)
            against[pair[3:]].append(-r)
        want = {c: np.mean(rs) for c, rs in against.items()}
        got = {c["currency"]: c["strength"] for c in e.event["currencies"]}
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert [c["rank"] for c in e.event["currencies"]] == list(range(1, 9))
        assert [c["currency"] for c in e.event["currencies"]] == sorted(want, key=lambda c: -want[c])
        assert e.event["pairs"] == list(PAIRS) and e.event["window_bars"] == STRENGTH_WINDOW
    assert len({e.event["event_id"] for e in emitted}) == len(emitted)


@pytest.mark.parametrize("seed", [0, 1])
def test_sector_rotation_events_match_a_direct_recomputation_on_regular_hours_only(seed: int) -> None:
    streams, emitted = baseline("rotation", seed)
    rotations = [e for e in emitted if e.topic == "analytics.sector_rotation"]
    assert len(rotations) >= 8
    registry = get_registry()
    for e in emitted:
        registry.encode(e.schema, e.event)
    for e in rotations:
        as_of = e.event["as_of_ns"]
        assert regular_session_mask(Market.NYSE, np.array([as_of - M]))[0]  # nothing while NYSE is shut
        grid = closes_before(streams, ("SPY", *SECTORS), Market.NYSE, as_of)
        assert len(grid) >= ROTATION_WINDOW + MOMENTUM + 1
        rs = grid[list(SECTORS)].div(grid["SPY"], axis=0)
        ratio = 100 * rs.iloc[-1] / rs.iloc[-1 - ROTATION_WINDOW]
        before = 100 * rs.iloc[-1 - MOMENTUM] / rs.iloc[-1 - MOMENTUM - ROTATION_WINDOW]
        got = {s["symbol"]: s for s in e.event["sectors"]}
        assert {k: v["relative_strength"] for k, v in got.items()} == pytest.approx(ratio.to_dict(), rel=1e-12)
        assert {k: v["momentum"] for k, v in got.items()} == pytest.approx((100 * ratio / before).to_dict(), rel=1e-12)
        assert [s["symbol"] for s in e.event["sectors"]] == ratio.sort_values(ascending=False).index.tolist()
        assert e.event["leader"] == e.event["sectors"][0]["symbol"]
        assert got["XLK"]["sector"] == "Technology"


def test_rotation_signals_are_the_quadrant_and_top_k_changes_between_snapshots() -> None:
    streams = make_frames(3)
    emitted = run(rotation_processor(band=0.0), [concat(streams)])
    rotations = [e.event for e in emitted if e.topic == "analytics.sector_rotation"]
    alerts = [e.event for e in emitted if e.topic == "alerts"]
    expected = set()
    for before, after in itertools.pairwise(rotations):
        old = {s["symbol"]: s for s in before["sectors"]}
        for s in after["sectors"]:
            if s["quadrant"] != old[s["symbol"]]["quadrant"]:
                expected.add((after["as_of_ns"], "rotation.quadrant_change", s["symbol"]))
            if (s["rank"] <= 3) != (old[s["symbol"]]["rank"] <= 3):
                expected.add((after["as_of_ns"], "rotation.rank_cross", s["symbol"]))
    assert {(a["ts_event"], a["kind"], a["subject"]) for a in alerts} == expected
    assert {a["kind"] for a in alerts} == {"rotation.quadrant_change", "rotation.rank_cross"}
    ids = {e["as_of_ns"]: e["event_id"] for e in rotations}
    assert all(a["causation_id"] == ids[a["ts_event"]] for a in alerts)


def test_a_band_around_the_axes_keeps_signals_down() -> None:
    frames = [concat(make_frames(3))]
    quadrant_changes = [
        sum(e.event.get("kind") == "rotation.quadrant_change" for e in run(rotation_processor(band), frames))
        for band in (0.0, 0.05, 0.2)
    ]
    assert quadrant_changes[0] > quadrant_changes[1] > quadrant_changes[2]


@pytest.mark.parametrize("kind", ["strength", "rotation"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("max_run", "batches"), [(1, 2000), (20, 50), (400, 3)])
def test_events_do_not_depend_on_batching_or_interleaving(kind: str, seed: int, max_run: int, batches: int) -> None:
    streams, expected = baseline(kind, seed)
    rng = np.random.default_rng([seed, max_run, batches])
    assert comparable(run(MAKERS[kind](), interleave(rng, streams, max_run, batches))) == comparable(expected)


@pytest.mark.parametrize("kind", ["strength", "rotation"])
def test_a_redelivered_batch_changes_nothing(kind: str) -> None:
    streams, expected = baseline(kind, 0)
    rng = np.random.default_rng(5)
    batches = interleave(rng, streams, 20, 60)
    for i in (3, 25, 50):
        replayed = [*batches[: i + 2], batches[i], *batches[i + 2 :]]
        assert comparable(run(MAKERS[kind](), replayed)) == comparable(expected)


@pytest.mark.parametrize("kind", ["strength", "rotation"])
@pytest.mark.parametrize("cut", [1, 17, 40, 59])
def test_state_round_trip_resumes_exactly(kind: str, cut: int) -> None:
    streams, expected = baseline(kind, 1)
    batches = interleave(np.random.default_rng(cut), streams, 20, 60)
    first = MAKERS[kind]()
    emitted = run(first, batches[:cut])
    state = first.to_bytes()
    restored = type(first).from_bytes(state)
    assert restored.to_bytes() == state
    assert restored.config() == first.config()
    emitted += run(restored, batches[cut:])
    assert comparable(emitted) == comparable(expected)


@pytest.mark.parametrize("kind", ["strength", "rotation"])
def test_nothing_is_emitted_while_the_market_is_closed(kind: str) -> None:
    saturday = pd.Timestamp("2025-03-08T13:00Z").value
    assert run(MAKERS[kind](), [concat(make_frames(0, start=saturday))]) == []


def test_sector_bars_outside_regular_hours_never_enter_the_window() -> None:
    """Pre-market prints (13:00-14:30 UTC here) with wild closes change nothing."""
    streams, expected = baseline("rotation", 0)
    wild = []
    for s in streams:
        close = s.close.copy()
        pre = np.isin(s.symbol, ("SPY", *SECTORS)) & ~regular_session_mask(Market.NYSE, s.start_ns)
        close[pre] *= 3.0
        wild.append(BarFrame(s.partition, s.symbol, s.start_ns, close))
    assert comparable(run(rotation_processor(), [concat(wild)])) == comparable(expected)


def settings(**changes: Any) -> Settings:
    return Settings().changed(**{"processing__snapshot_every": EVERY, **changes})


@pytest.mark.parametrize(
    ("factory", "change"),
    [
        (CURRENCY_STRENGTH, {"rotation__currency_pairs": ["EURUSD", "USDJPY"]}),
        (CURRENCY_STRENGTH, {"rotation__strength_window": 30}),
        (CURRENCY_STRENGTH, {"rotation__currency_basket": "majors"}),
        (CURRENCY_STRENGTH, {"processing__snapshot_every": 1}),
        (SECTOR_ROTATION, {"rotation__sector_etfs": ["XLK", "XLE"]}),
        (SECTOR_ROTATION, {"rotation__sector_benchmark": "VOO"}),
        (SECTOR_ROTATION, {"rotation__momentum": 10}),
        (SECTOR_ROTATION, {"rotation__band": 0.0}),
    ],
)
def test_factories_restore_their_state_and_refuse_one_from_another_configuration(
    factory: Any, change: dict[str, Any]
) -> None:
    processor = factory.create(settings())
    run(processor, [concat(make_frames(0))])
    state = processor.to_bytes()
    assert factory.restore(state, settings()).to_bytes() == state
    with pytest.raises(ValueError, match="reconfigured"):
        factory.restore(state, settings(**change))
    with pytest.raises(ValueError, match="not a rotation processor state"):
        factory.restore(b"garbage", settings())
    assert factory.name == processor.name
