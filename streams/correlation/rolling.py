"""Rolling returns, volatility and correlation over a fixed universe of symbols, fed by bar batches.

Pure kernel of the correlation stream processor: no Kafka, stream-framework or storage code.

Time grid. The window is measured in *market time*: the grid is the sorted set of bar start times
(floored to ``bar_ns``) on which at least one universe symbol printed, and the buffer keeps the last
``window + 1`` of them (``window`` returns). Wall-clock minutes in which nothing in the universe traded
(nights, weekends) do not exist on the grid, so a 390-bar window of equities is one session, not a night
of flat prices.

Gaps. A symbol without a bar on a grid time carries its previous close forward, so its return there
is exactly 0. Returns are log returns. Before a symbol's first bar its closes and returns are NaN; it
enters statistics and correlations once it has ``min_periods`` returns in the window.

Delivery. Bars arrive in batches of any symbols (non-universe symbols and non-positive or NaN closes
are ignored) in mostly increasing time. A late bar is applied wherever it still matters: on the grid,
or as the carried close before the window start if it is newer than the one held. A repeated
(symbol, time) overwrites the earlier value (the last delivered wins), so replaying bars after a crash
is idempotent. The state is a function of the set of bars delivered (for a (symbol, time) delivered
with different closes, of the last one), not of how they were batched.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numba
import numpy as np
import numpy.typing as npt
from scipy.linalg import eigh_tridiagonal

from core.units import NS_PER_MINUTE

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]
Objects = npt.NDArray[np.object_]

_Scalar = TypeVar("_Scalar", np.int64, np.float64)

_NO_TIME = np.iinfo(np.int64).min
_MAGIC = b"TMRW"
_VERSION = 1
_HEADER = struct.Struct("<4sHIIIIqI")
# Below this size a full symmetric eigendecomposition is as fast as Lanczos and always applicable.
_LANCZOS_MIN_SIZE = 64
# Columns sharing a pattern of present rows get block products when there are at least this many of them.
_BLOCK_MIN_COLUMNS = 8
# Lanczos steps before giving up for a full eigvalsh; a dominant factor needs a handful, a flat spectrum a few dozen.
_LANCZOS_STEPS = 120
_LANCZOS_TOLERANCE = 1e-12


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What a batch did, so the caller can tell when market time crossed a snapshot boundary.

    ``previous_ns`` and ``latest_ns`` are the start of the latest grid bar before and after the batch.
    ``applied`` bars were written (a replayed bar counts, it rewrites the same value); ``ignored`` were not
    in the universe or had no positive close; ``stale`` were older than every close kept, or repeated
    within the batch.
    """

    previous_ns: int | None
    latest_ns: int | None
    new_times: int
    applied: int
    ignored: int
    stale: int

    def crossed(self, every_ns: int) -> bool:
        """True when the latest grid time moved past a multiple of ``every_ns`` (epoch aligned)."""
        if self.previous_ns is None or self.latest_ns is None:
            return False
        return self.latest_ns // every_ns > self.previous_ns // every_ns


@dataclass(frozen=True, slots=True)
class SymbolStats:
    """Per-symbol statistics over the window; NaN where ``count < min_periods``.

    ``window_return`` is the simple return from the first to the last close of the window (as the
    SymbolStatsComputed event has it); ``mean_return`` and ``volatility`` (sample std, ddof=1) are of
    per-bar log returns, ``volatility_annual`` scales it by sqrt(bars per year); ``max_drawdown`` is the
    largest peak-to-trough fall of the close as a positive fraction. ``last_close`` is the carried-forward
    close of the latest grid bar; ``as_of_ns`` is that bar's end.
    """

    as_of_ns: int | None
    window_bars: int
    symbol: Objects
    last_close: Float64
    window_return: Float64
    mean_return: Float64
    volatility: Float64
    volatility_annual: Float64
    max_drawdown: Float64
    count: Int64


@dataclass(frozen=True, slots=True)
class PairTable:
    """Distinct symbol pairs (a before b in the snapshot's order) with their correlation."""

    symbol_a: Objects
    symbol_b: Objects
    correlation: Float64


@dataclass(frozen=True, slots=True)
class CorrelationSnapshot:
    """Pearson correlation of log returns over the window for symbols with enough data.

    Pairs use the returns both symbols have (pairwise complete, as ``pandas.DataFrame.corr``); a
    symbol whose returns are all equal in the window has no defined correlation and is left out.
    ``eigen_share`` is lambda_max / trace, the share of variance in the first principal component;
    ``diversification_ratio`` is that of the equal-weight portfolio (mean volatility over portfolio
    volatility). ``observations`` is the number of return rows in the window (``window_bars`` once warm),
    ``count`` and ``volatility`` (per-bar std of log returns) are per symbol.
    """

    as_of_ns: int | None
    window_bars: int
    observations: int
    symbol: Objects
    count: Int64
    volatility: Float64
    matrix: Float64
    mean_correlation: float
    eigen_share: float
    diversification_ratio: float

    def upper_triangle(self) -> Float64:
        """Strict upper triangle, row-major: the CorrelationSnapshotTaken ``matrix`` encoding."""
        return self.matrix[np.triu_indices(len(self.symbol), 1)]

    def top_pairs(self, k: int) -> tuple[PairTable, PairTable]:
        """The k highest and the k lowest correlated distinct pairs, each sorted from the extreme."""
        n = len(self.symbol)
        ia, ib = np.triu_indices(n, 1)
        values = self.matrix[ia, ib]
        keep = np.flatnonzero(np.isfinite(values))
        ia, ib, values = ia[keep], ib[keep], values[keep]
        k = min(k, values.size)
        if k <= 0:
            empty = self.symbol[:0]
            return PairTable(empty, empty, values[:0]), PairTable(empty, empty, values[:0])
        return self._pairs(ia, ib, values, -values, k), self._pairs(ia, ib, values, values, k)

    def _pairs(self, ia: IntP, ib: IntP, values: Float64, key: Float64, k: int) -> PairTable:
        pick = np.argpartition(key, k - 1)[:k]
        pick = pick[np.lexsort((pick, key[pick]))]
        return PairTable(self.symbol[ia[pick]], self.symbol[ib[pick]], values[pick])


class RollingWindow:
    """Last ``window + 1`` grid closes of a fixed universe; statistics and correlations on demand.

    Raw observations are kept (not running sums) so that late and repeated bars land exactly and the
    outputs are bit-identical whatever the batching; a full recomputation at U=1000 costs a few ms of
    BLAS, paid once per snapshot rather than per bar. The rows live in a buffer with ``capacity`` rows of
    headroom, so a new grid time (the usual case: one more minute) is appended and the oldest row dropped
    without copying the window.
    """

    def __init__(
        self,
        universe: Sequence[str],
        window: int,
        min_periods: int | None = None,
        bar_ns: int = NS_PER_MINUTE,
    ) -> None:
        if len(set(universe)) != len(universe):
            raise ValueError("universe symbols must be unique")
        if window < 2:
            raise ValueError("window must be at least 2 returns")
        min_periods = window if min_periods is None else min_periods
        if not 2 <= min_periods <= window:
            raise ValueError("min_periods must be between 2 and window")
        self.universe: Objects = np.array(list(universe), dtype=object)
        self.window = window
        self.min_periods = min_periods
        self.bar_ns = bar_ns
        self._column = {symbol: i for i, symbol in enumerate(universe)}
        size = len(universe)
        self._times: Int64 = np.empty(0, dtype=np.int64)
        self._buffer: Float64 = np.empty((0, size), dtype=np.float64)
        self._first = 0  # buffer row of the oldest grid time
        # The last window built, for the stats and correlation of one snapshot; any update invalidates it.
        self._built: tuple[int, int | None, Float64, Float64] | None = None
        self._base_close: Float64 = np.full(size, np.nan)
        self._base_time: Int64 = np.full(size, _NO_TIME, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return self.window + 1

    @property
    def _obs(self) -> Float64:
        """Closes delivered per grid time (rows) and symbol; NaN where none."""
        return self._buffer[self._first : self._first + self._times.size]

    @property
    def latest_ns(self) -> int | None:
        return int(self._times[-1]) * self.bar_ns if self._times.size else None

    def update(self, symbols: Objects, start_ns: Int64, close: Float64) -> UpdateResult:
        """Apply a batch of bars (parallel columns) and report how market time moved."""
        return self.update_columns(
            np.fromiter((self._column.get(s, -1) for s in symbols), np.intp, len(symbols)), start_ns, close
        )

    def update_columns(self, column: IntP, start_ns: Int64, close: Float64) -> UpdateResult:
        """``update`` of bars whose symbols are given as universe columns (-1: not in the universe)."""
        previous = self.latest_ns
        self._built = None
        usable = (column >= 0) & np.isfinite(close) & (close > 0)
        ignored = int(usable.size - np.count_nonzero(usable))
        col, time, value = self._last_per_key(
            column[usable], np.asarray(start_ns)[usable] // self.bar_ns, np.asarray(close)[usable]
        )
        full = self._times.size == self.capacity
        on_grid = time >= self._times[0] if full else np.ones(time.size, dtype=np.bool_)
        stale = self._apply_before_window(col[~on_grid], time[~on_grid], value[~on_grid])
        new_times = np.setdiff1d(time[on_grid], self._times)
        if new_times.size:
            self._insert_times(new_times)
        self._obs[np.searchsorted(self._times, time[on_grid]), col[on_grid]] = value[on_grid]
        self._drop_oldest()
        return UpdateResult(
            previous_ns=previous,
            latest_ns=self.latest_ns,
            new_times=int(new_times.size),
            applied=int(time.size) - stale,
            ignored=ignored,
            stale=stale + int(np.count_nonzero(usable)) - int(time.size),
        )

    @staticmethod
    def _last_per_key(col: IntP, time: Int64, value: Float64) -> tuple[IntP, Int64, Float64]:
        """One bar per (column, time), the last delivered, sorted by column then time."""
        order = np.lexsort((np.arange(col.size), time, col))
        col, time, value = col[order], time[order], value[order]
        last = np.ones(col.size, dtype=np.bool_)
        last[:-1] = (col[1:] != col[:-1]) | (time[1:] != time[:-1])
        return col[last], time[last], value[last]

    def _apply_before_window(self, col: IntP, time: Int64, value: Float64) -> int:
        """Bars older than the grid only matter as the close carried into it; returns how many did not."""
        if not col.size:
            return 0
        newest = np.ones(col.size, dtype=np.bool_)
        newest[:-1] = col[1:] != col[:-1]
        col, time, value = col[newest], time[newest], value[newest]
        newer = time >= self._base_time[col]
        self._base_close[col[newer]] = value[newer]
        self._base_time[col[newer]] = time[newer]
        return int(newest.size - np.count_nonzero(newer))

    def _insert_times(self, new_times: Int64) -> None:
        times = np.union1d(self._times, new_times)
        rows = self._times.size
        if rows and new_times[0] < self._times[-1]:
            buffer = np.full((times.size + self.capacity, self.universe.size), np.nan)
            buffer[np.searchsorted(times, self._times)] = self._obs
            self._buffer, self._first = buffer, 0
        else:  # appended after the latest grid time
            if self._first + times.size > self._buffer.shape[0]:
                buffer = np.empty((max(times.size, self.capacity) + self.capacity, self.universe.size))
                buffer[:rows] = self._obs
                self._buffer, self._first = buffer, 0
            self._buffer[self._first + rows : self._first + times.size] = np.nan
        self._times = times

    def _drop_oldest(self) -> None:
        """Fold grid rows beyond capacity into the carried close before the window."""
        drop = self._times.size - self.capacity
        if drop <= 0:
            return
        old = self._obs[:drop]
        last = np.where(np.isnan(old), -1, np.arange(drop)[:, None]).max(axis=0)
        cols = np.flatnonzero(last >= 0)
        self._base_close[cols] = old[last[cols], cols]
        self._base_time[cols] = self._times[last[cols]]
        self._times = self._times[drop:].copy()
        self._first += drop

    def _window(self, window: int | None) -> tuple[int, int | None, Float64, Float64]:
        """(bars, as-of ns, carried-forward closes, their logs) of the last ``window`` grid steps."""
        bars = self.window if window is None else window
        if not 2 <= bars <= self.window:
            raise ValueError("window must be between 2 and the configured window")
        if self._built is None or self._built[0] != bars:
            rows = self._times.size
            closes = _carried(self._obs, self._base_close, max(rows - bars - 1, 0))
            as_of = (int(self._times[-1]) + 1) * self.bar_ns if rows else None
            logs = np.log(closes)
            closes.flags.writeable = logs.flags.writeable = False  # shared by the callers until the next update
            self._built = (bars, as_of, closes, logs)
        return self._built

    def window_times(self, window: int | None = None) -> Int64:
        """Grid times (in ``bar_ns`` units) of the closes ``_window`` returns: one more than the returns."""
        bars = self.window if window is None else window
        return self._times[max(self._times.size - bars - 1, 0) :].copy()

    def stats(
        self,
        bars_per_year: float,
        window: int | None = None,
        *,
        min_periods: int | None = None,
        valid: npt.NDArray[np.bool_] | None = None,
    ) -> SymbolStats:
        """Per-symbol stats over the last ``window`` returns (default: the configured window).

        ``valid`` (returns x symbols, as ``window_times`` lays them out) keeps only the returns a caller counts,
        e.g. those inside each symbol's trading session; ``min_periods`` overrides the configured one.
        """
        bars, as_of, closes, logs = self._window(window)
        count, total, _, _, norm2 = _centred_returns(logs, *_mask(valid))
        var = norm2 / np.maximum(count - 1, 1)
        drawdown = _max_drawdown(closes)
        enough = count >= (min_periods or self._min_periods(window))
        nan = np.full(count.size, np.nan)
        vol = np.where(enough, np.sqrt(var), nan)
        return SymbolStats(
            as_of_ns=as_of,
            window_bars=bars,
            symbol=self.universe,
            last_close=closes[-1],
            window_return=np.where(enough, np.expm1(total), nan),
            mean_return=np.where(enough, total / np.maximum(count, 1), nan),
            volatility=vol,
            volatility_annual=vol * np.sqrt(bars_per_year),
            max_drawdown=np.where(enough, drawdown, nan),
            count=count,
        )

    def correlation(
        self,
        window: int | None = None,
        *,
        min_periods: int | None = None,
        valid: npt.NDArray[np.bool_] | None = None,
    ) -> CorrelationSnapshot:
        """Correlation snapshot over the last ``window`` returns (default: the configured window).

        ``valid`` and ``min_periods`` as in ``stats``; pairs then use the returns both symbols have.
        """
        bars, as_of, _, logs = self._window(window)
        count, _, x, present, norm2 = _centred_returns(logs, *_mask(valid))
        keep = np.flatnonzero((count >= (min_periods or self._min_periods(window))) & (norm2 > 0))
        if keep.size < count.size:
            x, count, norm2, present = x[:, keep], count[keep], norm2[keep], present[:, keep]
        x /= np.sqrt(norm2)
        matrix = _correlate(x, None if (count == x.shape[0]).all() else present)
        vol = np.sqrt(norm2 / (count - 1))
        return CorrelationSnapshot(
            as_of_ns=as_of,
            window_bars=bars,
            observations=logs.shape[0] - 1,
            symbol=self.universe[keep],
            count=count,
            volatility=vol,
            matrix=matrix,
            mean_correlation=_mean_off_diagonal(matrix),
            eigen_share=_eigen_share(matrix),
            diversification_ratio=float(vol.sum() / np.sqrt(vol @ matrix @ vol)) if vol.size else float("nan"),
        )

    def _min_periods(self, window: int | None) -> int:
        return self.min_periods if window is None else min(self.min_periods, window)

    def to_bytes(self) -> bytes:
        """Compact, deterministic encoding for the runner's checkpoint (the recovery path after a crash)."""
        names = json.dumps(self.universe.tolist(), separators=(",", ":")).encode()
        arrays = (self._times, self._base_time, self._base_close, self._obs)
        payload = zlib.compress(b"".join(_shuffle(a) for a in arrays), 1)
        header = _HEADER.pack(
            _MAGIC,
            _VERSION,
            self.universe.size,
            self.window,
            self.min_periods,
            self._times.size,
            self.bar_ns,
            len(names),
        )
        return header + names + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> RollingWindow:
        magic, version, size, window, min_periods, rows, bar_ns, name_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a RollingWindow state of a known version")
        start = _HEADER.size
        universe = json.loads(data[start : start + name_len])
        state = cls(universe, window, min_periods, bar_ns)
        raw = zlib.decompress(data[start + name_len :])
        cut = np.cumsum([0, rows, size, size, rows * size]) * 8
        state._times = _unshuffle(raw[cut[0] : cut[1]], np.int64).reshape(rows)
        state._base_time = _unshuffle(raw[cut[1] : cut[2]], np.int64)
        state._base_close = _unshuffle(raw[cut[2] : cut[3]], np.float64)
        state._buffer = _unshuffle(raw[cut[3] : cut[4]], np.float64).reshape(rows, size)
        return state


@numba.njit(cache=True)
def _carried(obs: Float64, base: Float64, start: int) -> Float64:
    """Closes of rows ``start`` on, a missing one carrying the previous (before row 0: ``base``); one pass."""
    rows, cols = obs.shape
    closes = np.empty((max(rows - start, 1), cols))
    last = base.copy()
    closes[0] = last
    for i in range(rows):
        for j in range(cols):
            if not np.isnan(obs[i, j]):
                last[j] = obs[i, j]
        if i >= start:
            closes[i - start] = last
    return closes


def _mask(valid: npt.NDArray[np.bool_] | None) -> tuple[npt.NDArray[np.bool_], bool]:
    """(mask, apply it): the numba kernel takes an array either way."""
    return (np.ones((1, 1), np.bool_), False) if valid is None else (valid, True)


@numba.njit(cache=True)
def _centred_returns(
    logs: Float64, valid: npt.NDArray[np.bool_], masked: bool
) -> tuple[Int64, Float64, Float64, npt.NDArray[np.bool_], Float64]:
    """Per column: count and sum of the returns present (not NaN, ``valid`` if ``masked``), the returns centred on
    their mean with missing ones 0, which are present, and the centred sum of squares. Two passes, no temporaries."""
    rows, cols = logs.shape[0] - 1, logs.shape[1]
    count = np.zeros(cols, np.int64)
    total = np.zeros(cols)
    centred = np.zeros((rows, cols))
    present = np.zeros((rows, cols), np.bool_)
    for i in range(rows):
        for j in range(cols):
            value = logs[i + 1, j] - logs[i, j]
            if not np.isnan(value) and (not masked or valid[i, j]):
                present[i, j] = True
                count[j] += 1
                total[j] += value
                centred[i, j] = value
    mean = total / np.maximum(count, 1)
    norm2 = np.zeros(cols)
    for i in range(rows):
        for j in range(cols):
            if present[i, j]:
                value = centred[i, j] - mean[j]
                centred[i, j] = value
                norm2[j] += value * value
    return count, total, centred, present, norm2


@numba.njit(cache=True)
def _max_drawdown(closes: Float64) -> Float64:
    """Largest fall from the running peak per column, NaN-skipping like ``np.fmax``; one pass."""
    peak = np.full(closes.shape[1], np.nan)
    worst = np.full(closes.shape[1], np.nan)
    for i in range(closes.shape[0]):
        for j in range(closes.shape[1]):
            close = closes[i, j]
            if np.isnan(peak[j]) or close > peak[j]:
                peak[j] = close
            fall = 1.0 - close / peak[j]
            if np.isnan(worst[j]) or fall > worst[j]:
                worst[j] = fall
    return worst


def _correlate(z: Float64, present: npt.NDArray[np.bool_] | None) -> Float64:
    """Pearson matrix of centred unit columns over the rows each pair has in common (``present``; None: all).

    Columns are grouped by their pattern of present rows (a market's session, a full window): every pair of
    large groups is one BLAS product over the rows both groups have, re-centred there; the columns of small
    groups (late starters, odd gaps) go through the pairwise moment sums against every column.
    """
    if present is None or (present == present[:, :1]).all():
        # Every column has the same rows (zero elsewhere) and is centred and unit there: one transposed self-product,
        # which numpy runs as BLAS syrk, so it is exactly symmetric.
        matrix = z.T @ z
    else:
        matrix = np.full((z.shape[1], z.shape[1]), np.nan)
        patterns, group = np.unique(np.packbits(present, axis=0), axis=1, return_inverse=True)
        members = [np.flatnonzero(group == g) for g in range(patterns.shape[1])]
        large = [m for m in members if m.size >= _BLOCK_MIN_COLUMNS]
        for i, a in enumerate(large):
            for b in large[i:]:
                block = _block(z, present, a, b)
                matrix[np.ix_(a, b)] = block
                matrix[np.ix_(b, a)] = block.T
        p = np.concatenate([m for m in members if m.size < _BLOCK_MIN_COLUMNS] or [np.empty(0, np.intp)])
        if p.size:
            pairs = _pairwise(z, present.astype(np.float64), p)
            pairs[p] = 0.5 * (pairs[p] + pairs[p].T)
            matrix[:, p] = pairs
            matrix[p, :] = pairs.T
    np.clip(matrix, -1.0, 1.0, out=matrix)
    np.fill_diagonal(matrix, 1.0)
    return matrix


def _block(z: Float64, present: npt.NDArray[np.bool_], a: IntP, b: IntP) -> Float64:
    """Correlation of columns ``a`` with ``b`` (each group fully present on its rows) over their common rows."""
    if a is b:  # the group's own rows, where its columns are already centred and unit
        za = z[:, a]
        return za.T @ za
    rows = np.flatnonzero(present[:, a[0]] & present[:, b[0]])
    if rows.size < 2:
        return np.full((a.size, b.size), np.nan)
    return _unit(z[np.ix_(rows, a)]).T @ _unit(z[np.ix_(rows, b)])


def _unit(x: Float64) -> Float64:
    centred = x - x.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit: Float64 = centred / np.sqrt(np.einsum("ij,ij->j", centred, centred))
    return unit


def _pairwise(z: Float64, m: Float64, p: IntP) -> Float64:
    """Correlation of every column with columns ``p`` over the rows both have (missing rows are 0 in z and m).

    z is pre-centred per column, so the overlap sums below are small and the moment formula is stable.
    """
    zp, mp = z[:, p], m[:, p]
    n = m.T @ mp
    sx = z.T @ mp
    sy = m.T @ zp
    sxx = (z * z).T @ mp
    syy = m.T @ (zp * zp)
    sxy = z.T @ zp
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sxy - sx * sy / n
        var = (sxx - sx * sx / n) * (syy - sy * sy / n)
        return np.where(var > 0, cov / np.sqrt(var), np.nan)


def _mean_off_diagonal(matrix: Float64) -> float:
    n = matrix.shape[0]
    total = float(matrix.sum())
    if np.isnan(total):
        pairs = np.count_nonzero(~np.isnan(matrix)) - n
        return float((np.nansum(matrix) - n) / pairs) if pairs else float("nan")
    return (total - n) / (n * (n - 1)) if n > 1 else float("nan")


def _eigen_share(matrix: Float64) -> float:
    """lambda_max / trace: Lanczos for large matrices, a full eigvalsh for small ones."""
    n = matrix.shape[0]
    if n == 0 or np.isnan(matrix).any():
        return float("nan")
    top = float(np.linalg.eigvalsh(matrix)[-1]) if n < _LANCZOS_MIN_SIZE else _largest_eigenvalue(matrix)
    return top / float(np.trace(matrix))


def _largest_eigenvalue(matrix: Float64) -> float:
    """Lanczos with full reorthogonalisation from a fixed start (so deterministic): the largest Ritz value once its
    residual is below ``_LANCZOS_TOLERANCE`` of it, or once the Krylov space is invariant (a low-rank matrix: a
    window shorter than the universe); a full eigvalsh if it has not settled in ``_LANCZOS_STEPS``.

    Unlike power iteration it does not stall when the top eigenvalues are close (no dominant factor).
    """
    n = matrix.shape[0]
    steps = min(n, _LANCZOS_STEPS)
    basis = np.empty((steps, n))
    alpha, beta = np.empty(steps), np.empty(steps)
    start = 1.0 + 0.5 * np.cos(np.arange(n))  # mostly the market direction, but not an eigenvector of a block matrix
    basis[0] = start / np.linalg.norm(start)
    for j in range(steps):
        product = matrix @ basis[j]
        alpha[j] = basis[j] @ product
        known = basis[: j + 1]
        product -= known.T @ (known @ product)
        product -= known.T @ (known @ product)  # twice is enough to keep the basis orthogonal to rounding
        beta[j] = np.linalg.norm(product)
        ritz, vectors = eigh_tridiagonal(alpha[: j + 1], beta[:j])
        if beta[j] * abs(vectors[-1, -1]) <= _LANCZOS_TOLERANCE * abs(ritz[-1]):
            return float(ritz[-1])
        if j + 1 < steps:
            basis[j + 1] = product / beta[j]
    return float(np.linalg.eigvalsh(matrix)[-1])


def _shuffle(array: npt.NDArray[np.generic]) -> bytes:
    """Byte-transpose 8-byte values so zlib sees exponents and high mantissa bytes together."""
    return np.ascontiguousarray(array).view(np.uint8).reshape(-1, 8).T.tobytes()


def _unshuffle(raw: bytes, dtype: type[_Scalar]) -> npt.NDArray[_Scalar]:
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(8, -1)
    return planes.T.copy().view(dtype).reshape(-1)  # a copy, so the state is writable
