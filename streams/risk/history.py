"""Daily closes per symbol, and the aligned return matrix the VaR estimators take.

A symbol's history is a list of ``[ts_ns, close]`` in time order, kept to the lookback; a redelivered or older close
changes nothing, so a replay keeps the same history. Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

History = list[list[float]]


def appended(history: History | None, ts_ns: int, close: float, keep: int) -> History | None:
    """The history with this close (the last ``keep``), or None when it is not newer than the latest one."""
    history = history or []
    if history and ts_ns <= history[-1][0]:
        return None
    if not np.isfinite(close) or close <= 0:
        raise ValueError(f"close {close!r} at {ts_ns} is not a positive price")
    return [*history, [ts_ns, close]][-keep:]


@dataclass(frozen=True)
class Returns:
    symbols: tuple[str, ...]
    """The symbols with enough history, in the order asked for."""
    returns: np.ndarray
    """(days, symbols) simple daily returns on the union of the symbols' sessions."""
    missing: tuple[str, ...]
    """Asked-for symbols with fewer than ``min_observations`` returns: they stay out of the estimates."""
    last: tuple[int, ...]
    """Each symbol's latest close time: with ``symbols``, what the matrix depends on (a cache key)."""


def aligned_returns(
    histories: Mapping[str, History], symbols: Sequence[str], lookback: int, min_observations: int
) -> Returns:
    """Returns of ``symbols`` over the union of their last ``lookback`` sessions. A symbol without a close on a
    session carries its previous close (a zero return that day), and one whose history starts later has zero
    returns before it: a market that is closed moves no money."""
    kept = [s for s in symbols if len(histories.get(s, ())) > min_observations]
    missing = tuple(s for s in symbols if s not in kept)
    if not kept:
        return Returns((), np.zeros((0, 0)), missing, ())
    tails = [np.asarray(histories[s][-(lookback + 1) :], dtype=float) for s in kept]
    sessions = np.unique(np.concatenate([tail[:, 0] for tail in tails]))[-(lookback + 1) :]
    closes = np.empty((len(sessions), len(kept)))
    for j, tail in enumerate(tails):
        at = np.searchsorted(tail[:, 0], sessions, side="right") - 1
        closes[:, j] = np.where(at >= 0, tail[np.clip(at, 0, None), 1], tail[0, 1])
    returns = closes[1:] / closes[:-1] - 1.0
    return Returns(tuple(kept), returns, missing, tuple(int(histories[s][-1][0]) for s in kept))
