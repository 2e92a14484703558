"""One correlation snapshot update at 1,000 symbols against recomputing the matrix from scratch.

For each configured window: the kernel's update (one new bar for every symbol) plus its correlation snapshot,
beside ``numpy.corrcoef`` and ``pandas.DataFrame.corr`` on the same window's returns (computed beforehand, so the
baselines are charged nothing for building them). Targets: within 2x of ``numpy.corrcoef`` and under 100 ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from streams.correlation.processor import Window
from streams.correlation.rolling import MINUTE_NS, RollingWindow

WINDOWS = ("1m:60", "1m:390", "1d:5", "1d:21")
DAY_NS = 24 * 60 * MINUTE_NS


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm: BLAS threads, caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _market(symbols: int, rows: int, seed: int) -> np.ndarray:
    """Closes of a one-factor market: correlated, like equities, so the matrix is not noise."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(0, 1e-3, (rows, 1))
    returns = factor * rng.uniform(0.3, 1.5, symbols) + rng.normal(0, 1e-3, (rows, symbols))
    return 100 * np.exp(np.cumsum(returns, axis=0))


def measure(window: Window, symbols: int, repeats: int) -> tuple[float, float, float]:
    """(kernel update + snapshot, numpy.corrcoef, pandas corr) in milliseconds."""
    bar_ns = MINUTE_NS if window.timeframe == "1m" else DAY_NS
    closes = _market(symbols, window.bars + 1 + repeats + 1, seed=window.bars)
    names = np.array([f"S{i:04d}" for i in range(symbols)], dtype=object)
    kernel = RollingWindow(names.tolist(), window.bars, bar_ns=bar_ns)
    warm = window.bars + 1
    times = np.repeat(np.arange(warm, dtype=np.int64) * bar_ns, symbols)
    kernel.update(np.tile(names, warm), times, closes[:warm].ravel())
    step = iter(range(warm, closes.shape[0]))

    def update() -> object:
        row = next(step)
        kernel.update(names, np.full(symbols, row * bar_ns, np.int64), closes[row])
        return kernel.correlation()

    snapshot = _median_ms(update, repeats)
    returns = np.diff(np.log(closes[-(window.bars + 1) :]), axis=0)
    frame = pd.DataFrame(returns, columns=names)
    corrcoef = _median_ms(lambda: np.corrcoef(returns, rowvar=False), repeats)
    pandas = _median_ms(frame.corr, max(3, repeats // 4))
    return snapshot, corrcoef, pandas


def main(symbols: int = 1000, repeats: int = 12) -> None:
    print(f"correlation snapshot update, {symbols} symbols (median of {repeats}):")
    print(f"  {'window':<8} {'update+snapshot':>16} {'numpy.corrcoef':>15} {'pandas corr':>12} {'vs numpy':>9}")
    for text in WINDOWS:
        window = Window.parse(text)
        snapshot, corrcoef, pandas = measure(window, symbols, repeats)
        ratio = snapshot / corrcoef
        verdict = "meets" if ratio <= 2.0 and snapshot < 100 else "MISSES"
        print(
            f"  {text:<8} {snapshot:>13.1f} ms {corrcoef:>12.1f} ms {pandas:>9.1f} ms {ratio:>8.2f}x"
            f"  ({verdict} <= 2x numpy and < 100 ms; {pandas / snapshot:.0f}x faster than pandas)"
        )


if __name__ == "__main__":
    main()
