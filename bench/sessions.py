"""Session calendars: ``regular_session_mask`` on 1M timestamps beside a bare ``np.searchsorted`` of the same times
over the same session edges (the least a table lookup has to do), so the ratio is the wrapper's overhead (range
check, parity). Runs without the stack."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np

from core import sessions
from core.sessions import Market, regular_session_mask

N = 1_000_000
YEAR_START_NS = 1_767_225_600_000_000_000  # 2026-01-01 UTC
YEAR_NS = 365 * 86_400_000_000_000


def best_seconds(run: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rng = np.random.default_rng(7)
    random_times = rng.integers(YEAR_START_NS, YEAR_START_NS + YEAR_NS, N, dtype=np.int64)
    print(f"sessions: regular_session_mask on {N:,} timestamps over 2026 (best of 5)")
    for market in Market:
        regular_session_mask(market, random_times)  # builds and caches the table
        edges = sessions._tables[market].edges
        for order, times in (("sorted", np.sort(random_times)), ("random", random_times)):
            mask = best_seconds(partial(regular_session_mask, market, times))
            floor = best_seconds(partial(np.searchsorted, edges, times, side="right"))
            print(
                f"  {market.name:<4} {order:<6} mask {N / mask / 1e6:8.1f} M/s ({mask * 1e3:5.1f} ms)"
                f"   bare searchsorted {N / floor / 1e6:8.1f} M/s   ratio {floor / mask:.0%}"
            )


if __name__ == "__main__":
    main()
