"""One correlation snapshot at 1,000 symbols through the processor against recomputing the matrix from scratch.

For each window, the timed step is ``RollingProcessor.process`` of one new bar for every symbol (1,000 NYSE
equities on real session minutes or days) that completes exactly one snapshot: pending buffer, session labels,
kernel update, session masks, the pairwise-complete matrix, mean correlation, eigenvalue share, diversification
ratio, and for minute windows the per-symbol statistics, which ``numpy.corrcoef`` does not compute (their share
is timed alone on a separate line). Beside it, ``numpy.corrcoef`` and ``pandas.DataFrame.corr`` on the same
window's returns (computed beforehand, so the baselines are charged nothing for building them), timed interleaved
with the step so a busy machine slows both alike. Targets: within 2x of ``numpy.corrcoef`` and under 100 ms.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from core.sessions import Market, session_label
from core.units import NS_PER_DAY, NS_PER_MINUTE
from schemas.bars import ASSET_CLASSES
from streams.correlation.processor import BARS_PER_YEAR_1M, RollingProcessor, Snapshot, Window

WINDOWS = ("1m:60", "1m:390", "1d:5", "1d:21")
FIRST_DAY = pd.Timestamp("2025-01-06T00:00Z").value
DAILY_BAR_NS = (19 * 60 + 30) * NS_PER_MINUTE  # 19:30 UTC: inside the NYSE session all year
EQUITY = ASSET_CLASSES.index("EQUITY")
MIN_COVERAGE = 0.5  # the settings' default


def _seconds(run: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    run(*args)
    return time.perf_counter() - started


def _market(symbols: int, rows: int, seed: int) -> np.ndarray:
    """Closes of a one-factor market: correlated, like equities, so the matrix is not noise."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(0, 1e-3, (rows, 1))
    returns = factor * rng.uniform(0.3, 1.5, symbols) + rng.normal(0, 1e-3, (rows, symbols))
    return 100 * np.exp(np.cumsum(returns, axis=0))


def _bar_times(window: Window, count: int) -> np.ndarray:
    """The first ``count`` NYSE session minutes (or trading days at 19:30 UTC) from FIRST_DAY."""
    days = count // 300 + 3 if window.timeframe == "1m" else count * 2 + 10
    if window.timeframe == "1m":
        grid = FIRST_DAY + np.arange(days * 1440, dtype=np.int64) * NS_PER_MINUTE
    else:
        grid = FIRST_DAY + np.arange(days, dtype=np.int64) * NS_PER_DAY + DAILY_BAR_NS
    times: np.ndarray = grid[session_label(Market.NYSE, grid) >= 0][:count]
    return times


def measure(window: Window, symbols: int, repeats: int) -> tuple[float, float, float, float]:
    """(processor step, of which per-symbol stats, numpy.corrcoef, pandas corr) in milliseconds."""
    warm = window.bars + 1
    times = _bar_times(window, warm + repeats + 2)
    closes = _market(symbols, times.size, seed=window.bars)
    names = np.array([f"S{i:04d}" for i in range(symbols)], dtype=object)
    classes = np.full(symbols, EQUITY, np.int8)
    every = 1 if window.timeframe == "1m" else 1440
    processor = RollingProcessor(names.tolist(), [window], every, frozenset({0}), min_coverage=MIN_COVERAGE)

    def process(row: int, partition: int) -> list[Snapshot]:
        rows = np.arange(row, row + 1) if row >= warm else np.arange(warm)
        return processor.process(
            np.full(rows.size * symbols, partition, np.int32),
            np.tile(names, rows.size),
            np.repeat(times[rows], symbols),
            closes[rows].ravel(),
            np.tile(classes, rows.size),
        )

    # The history arrives on a partition the clock does not watch, so it is applied in one go when the first
    # watched bars move the watermark past a boundary, rather than as hundreds of snapshots.
    process(0, partition=1)
    process(warm, partition=0)
    step, stats, corrcoef, pandas = [], [], [], []
    for row in range(warm + 1, times.size):
        started = time.perf_counter()
        (snapshot,) = process(row, partition=0)
        step.append(time.perf_counter() - started)
        returns, valid = _reference_returns(processor, window)
        kept = returns[valid.all(axis=1)]
        corrcoef.append(_seconds(np.corrcoef, kept.T))
        if snapshot.stats is not None:
            stats.append(_seconds(_stats, processor, window, valid))
        if row == times.size - 1:
            frame = pd.DataFrame(np.where(valid, returns, np.nan), columns=names)
            for _ in range(max(2, repeats // 4)):
                pandas.append(_seconds(frame.corr))
            expected = frame.corr().to_numpy()
            np.testing.assert_allclose(snapshot.correlation.matrix, expected, rtol=0, atol=1e-9)
    ms = [1000 * statistics.median(t) if t else 0.0 for t in (step, stats, corrcoef, pandas)]
    return ms[0], ms[1], ms[2], ms[3]


def _reference_returns(processor: RollingProcessor, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """The window's log returns and the session mask the processor applied, for the baselines."""
    if window.timeframe == "1m":
        assert processor.minute is not None
        kernel, valid = processor.minute, processor._minute_valid(window.bars)
    else:
        assert processor.daily is not None
        kernel, valid = processor.daily, processor._daily_valid(window.bars)
    _, _, closes, _ = kernel._window(window.bars)
    returns = np.diff(np.log(closes), axis=0)
    return returns, np.ones(returns.shape, np.bool_) if valid is None else valid


def _stats(processor: RollingProcessor, window: Window, valid: np.ndarray) -> object:
    assert processor.minute is not None
    minimum = processor._min_periods(window)
    return processor.minute.stats(BARS_PER_YEAR_1M, window.bars, min_periods=minimum, valid=valid)


def main(symbols: int = 1000, repeats: int = 12) -> None:
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(
        f"correlation snapshot via the processor, {symbols} NYSE symbols (median of {repeats}, BLAS threads {threads}):"
    )
    print(f"  {'window':<8} {'process+snapshot':>17} {'numpy.corrcoef':>15} {'pandas corr':>12} {'vs numpy':>9}")
    for text in WINDOWS:
        window = Window.parse(text)
        step, stats, corrcoef, pandas = measure(window, symbols, repeats)
        ratio = step / corrcoef
        verdict = "meets" if ratio <= 2.0 and step < 100 else "MISSES"
        print(
            f"  {text:<8} {step:>14.1f} ms {corrcoef:>12.1f} ms {pandas:>9.1f} ms {ratio:>8.2f}x"
            f"  ({verdict} <= 2x numpy and < 100 ms; {pandas / step:.0f}x faster than pandas)"
        )
        if stats:
            print(
                f"  {'':<8} {stats:>14.1f} ms of it: per-symbol stats (not in corrcoef); matrix alone "
                f"{(step - stats) / corrcoef:.2f}x numpy"
            )


if __name__ == "__main__":
    main()
