"""Polygon REST through the official ``RESTClient``: aggregates as ``BarBatch``es, with an explicit rate-limit policy.

The client sends every request through one urllib3 ``PoolManager`` (``client.client``) whose ``Retry`` would
silently retry 429, 413, 499 and 5xx up to three times, sleeping an unbounded ``Retry-After`` in a call nothing can
interrupt, and then raise urllib3's ``MaxRetryError``; a 401 becomes a ``BadResponse`` carrying only the body. We
put a thin wrapper around that pool instead (``guard``): urllib3 keeps retrying connection errors only, and every
status comes back to us, so 429 and 5xx wait ``max(Retry-After, capped exponential backoff)`` on a stop-aware
event and are counted, 401/403 raise ``PolygonAuthError`` naming the variable to set, and the key never appears
in an error. ``tests/unit/test_polygon_rest.py`` pins the policy; the integration tests drive it through the fake
server so a client upgrade that bypasses the pool fails loudly.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from polygon import RESTClient
from urllib3 import BaseHTTPResponse, PoolManager
from urllib3.util.retry import Retry

from connectors.polygon.symbols import Instrument, parse_symbol
from core.sessions import market_of, regular_session_mask
from core.units import NS_PER_DAY, NS_PER_MINUTE
from schemas.bars import BarBatch

SOURCE = "polygon"
KEY_VARIABLE = "TIDEMARK_POLYGON_API_KEY"
# timespan -> (our interval, bar length, request window). A window of 30 days of minute bars is at most 43,200
# bars (FX, 24h), under the 50,000 a single aggregates page holds, so pagination is the exception, not the rule.
TIMESPANS: dict[str, tuple[str, int, int]] = {
    "second": ("1s", 10**9, NS_PER_DAY // 2),
    "minute": ("1m", NS_PER_MINUTE, 30 * NS_PER_DAY),
    "day": ("1d", NS_PER_DAY, 3650 * NS_PER_DAY),
}
AGGS_LIMIT = 50_000
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class PolygonError(RuntimeError):
    """A Polygon request failed for good; the message never contains the API key."""


class PolygonAuthError(PolygonError):
    pass


class PolygonStopped(PolygonError):
    """A stop was requested while waiting out a rate limit."""


@dataclass(frozen=True)
class RetryPolicy:
    """How 429 and 5xx answers are retried: ``max(Retry-After, min(cap, base * 2**attempt))``, at most
    ``max_attempts`` requests in all."""

    max_attempts: int = 8
    base_s: float = 1.0
    cap_s: float = 60.0

    def wait_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait after the ``attempt``-th (0-based) failed request."""
        backoff = min(self.cap_s, self.base_s * 2.0**attempt)
        return max(backoff, retry_after_s or 0.0)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """``Retry-After`` as seconds from ``now_s``: delta-seconds or an HTTP date (RFC 9110); None when absent/bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_s)


@dataclass
class RequestStats:
    """What the rate-limit policy did, for progress displays (shared by threads)."""

    requests: int = 0
    retried: int = 0
    rate_limited: int = 0
    waited_s: float = 0.0
    waits: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: int | None, wait: float | None) -> None:
        with self._lock:
            self.requests += 1
            if wait is not None:
                self.retried += 1
                self.rate_limited += status == 429
                self.waited_s += wait
                self.waits.append(wait)


class _GuardedPool:
    """Stands in for the client's ``PoolManager``: every status comes back here, where the policy applies."""

    def __init__(self, pool: PoolManager, api_key: str, policy: RetryPolicy, stop: threading.Event | None) -> None:
        self.pool = pool
        self.policy = policy
        self.stats = RequestStats()
        self.stop = stop or threading.Event()
        self._key = api_key
        # Connection and read errors only; statuses are ours (no status list, Retry-After not consulted).
        self._transport = Retry(
            total=3, connect=3, read=3, status=0, backoff_factor=0.5, status_forcelist=None,
            respect_retry_after_header=False, raise_on_status=False, redirect=False,
        )  # fmt: skip

    def request(self, method: str, url: str, **kwargs: Any) -> BaseHTTPResponse:
        for attempt in range(self.policy.max_attempts):
            response = self.pool.request(method, url, retries=self._transport, **kwargs)
            status = response.status
            if status < 400:
                self.stats.record(status, None)
                return response
            detail = self._detail(response)
            if status in (401, 403):
                self.stats.record(status, None)
                raise PolygonAuthError(
                    f"Polygon refused the API key (HTTP {status}: {detail}); set {KEY_VARIABLE} to a key "
                    "entitled to this data"
                )
            if status not in RETRY_STATUSES or attempt == self.policy.max_attempts - 1:
                self.stats.record(status, None)
                raise PolygonError(f"Polygon answered HTTP {status} to {self._path(url)}: {detail}")
            after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            wait = self.policy.wait_s(attempt, after)
            self.stats.record(status, wait)
            if self.stop.wait(wait):
                raise PolygonStopped("stopped while waiting out a Polygon rate limit")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _detail(self, response: BaseHTTPResponse) -> str:
        return self._scrub(response.data.decode("utf-8", "replace")[:300])

    def _path(self, url: str) -> str:
        return self._scrub(url.split("?", 1)[0])

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


def guard(client: RESTClient, policy: RetryPolicy | None = None, stop: threading.Event | None = None) -> RequestStats:
    """Put the rate-limit policy in front of ``client``'s connection pool (idempotent; a policy or stop event
    given later replaces the earlier one); returns its counters."""
    pool = client.client
    if isinstance(pool, _GuardedPool):
        pool.policy = policy or pool.policy
        pool.stop = stop or pool.stop
        return pool.stats
    guarded = _GuardedPool(pool, client.API_KEY, policy or RetryPolicy(), stop)
    client.client = guarded
    return guarded.stats


def make_client(
    api_key: str,
    base: str,
    *,
    policy: RetryPolicy | None = None,
    stop: threading.Event | None = None,
    timeout_s: float = 30.0,
) -> RESTClient:
    """A ``RESTClient`` for ``base`` with the explicit rate-limit policy in place."""
    if not api_key:
        raise PolygonAuthError(f"no Polygon API key: set {KEY_VARIABLE}")
    client = RESTClient(api_key=api_key, base=base.rstrip("/"), read_timeout=timeout_s, connect_timeout=timeout_s)
    guard(client, policy, stop)
    return client


def aggs_to_batch(instrument: Instrument, interval: str, bar_ns: int, rows: list[Any]) -> BarBatch:
    """Polygon ``Agg`` objects (start in epoch ms) as a batch; rows without a time or price are dropped."""
    cols = {
        name: np.array([getattr(a, name) for a in rows], dtype=np.float64)
        for name in ("timestamp", "open", "high", "low", "close", "volume", "vwap", "transactions")
    }
    usable = np.logical_and.reduce([np.isfinite(cols[name]) for name in ("timestamp", "open", "high", "low", "close")])
    if not usable.all():
        cols = {name: values[usable] for name, values in cols.items()}
    n = len(cols["timestamp"])
    start = cols["timestamp"].astype(np.int64) * 1_000_000
    # A daily bar is the session's bar; minute bars are classified against the market's calendar.
    regular = (
        np.ones(n, dtype=np.bool_)
        if interval == "1d"
        else regular_session_mask(market_of(instrument.asset_class), start)
    )
    return BarBatch(
        symbol=np.full(n, instrument.symbol, dtype=object),
        asset_class=np.full(n, instrument.asset_class_index, dtype=np.int8),
        interval=interval,
        start_ns=start,
        end_ns=start + bar_ns,
        open=cols["open"],
        high=cols["high"],
        low=cols["low"],
        close=cols["close"],
        volume=np.nan_to_num(cols["volume"], nan=0.0),
        vwap=cols["vwap"],
        trade_count=np.where(np.isfinite(cols["transactions"]), cols["transactions"], -1).astype(np.int64),
        regular_session=regular,
    )


def iter_bars(
    client: RESTClient,
    symbol: str,
    timespan: str,
    start_ns: int,
    end_ns: int,
    *,
    slice_bars: int = 20_000,
) -> Iterator[tuple[BarBatch, int]]:
    """Raw (unadjusted) bars of ``symbol`` with start in ``[start_ns, end_ns)``, oldest first, in slices.

    Each slice comes with ``through_ns``: every bar starting before it has been yielded, so a caller that
    checkpoints it can resume from there. Requests go window by window; the client follows ``next_url``.
    """
    if timespan not in TIMESPANS:
        raise ValueError(f"timespan must be one of {', '.join(TIMESPANS)}, not {timespan!r}")
    interval, bar_ns, window_ns = TIMESPANS[timespan]
    instrument = parse_symbol(symbol)
    window_start = start_ns
    while window_start < end_ns:
        window_end = min(end_ns, window_start + window_ns)
        aggs = client.list_aggs(
            instrument.rest_ticker,
            1,
            timespan,
            math.ceil(window_start / 1_000_000),
            (window_end - 1) // 1_000_000,
            adjusted=False,
            sort="asc",
            limit=AGGS_LIMIT,
        )
        pending: list[Any] = []
        for agg in aggs:
            pending.append(agg)
            if len(pending) >= slice_bars:
                batch = _within(aggs_to_batch(instrument, interval, bar_ns, pending), window_start, window_end)
                pending = []
                if len(batch):
                    yield batch, int(batch.start_ns[-1]) + 1
        batch = _within(aggs_to_batch(instrument, interval, bar_ns, pending), window_start, window_end)
        yield batch, window_end
        window_start = window_end


def _within(batch: BarBatch, start_ns: int, end_ns: int) -> BarBatch:
    keep = (batch.start_ns >= start_ns) & (batch.start_ns < end_ns)
    return batch if keep.all() else batch.take(keep)


def concat(batches: list[BarBatch], symbol: str, interval: str) -> BarBatch:
    """One batch of several of the same interval (an empty batch of ``symbol`` when there are none)."""
    if not batches:
        return aggs_to_batch(parse_symbol(symbol), interval, 0, [])
    return BarBatch.concat(batches)


def fetch_bars(client: RESTClient, symbol: str, timespan: str, start_ns: int, end_ns: int) -> BarBatch:
    """Every raw bar of ``symbol`` starting in ``[start_ns, end_ns)`` as one batch (gap fills, small ranges).

    ``symbol`` is ours (mapped to Polygon's ticker here); rate limits follow the guarded policy; 401/403 raise
    ``PolygonAuthError``.
    """
    guard(client)
    batches = [batch for batch, _ in iter_bars(client, symbol, timespan, start_ns, end_ns) if len(batch)]
    return concat(batches, symbol, TIMESPANS[timespan][0])
