"""Historical backfill: Polygon aggregates over REST into md.bars.1m / md.bars.1d, resumable symbol by symbol.

Each symbol runs in order on one worker thread (several symbols at once), in slices: publish, flush (Kafka has
acknowledged every bar), then record ``through_ns`` (every bar starting before it is in the topic) in a small
JSON file per symbol, replaced atomically. A rerun skips finished symbols and resumes the others at their
recorded progress. The window between a flush and its record (a ``kill -9`` there) is closed on resume: the
record also holds ``scan_from``, the partition's end offset after the last acknowledged slice, and the
symbol's bars found at or after it in the partition, within the range still to do, advance ``through_ns`` past
them. So the topic holds each (symbol, start) once however often the run is interrupted. (A live connector
publishing the same symbol inside that range during a resume would look like landed backfill bars: resume ranges
that include today only while the live connector is stopped.)
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from confluent_kafka import TopicPartition
from polygon import RESTClient

from connectors.polygon.rest import (
    TIMESPANS,
    PolygonAuthError,
    PolygonError,
    PolygonStopped,
    RequestStats,
    guard,
    iter_bars,
)
from connectors.publisher import BarPublisher
from core.kafka import partition_for_key, range_reader, read_range, watermarks
from schemas.fastbars import decode_bars

SOURCE = "polygon"


@dataclass
class BackfillProgress:
    through_ns: int
    scan_from: int
    bars: int = 0
    done: bool = False


class ProgressStore:
    """One JSON file per symbol, written to a temporary file and renamed over the old one (atomic on POSIX)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, symbol: str) -> Path:
        return self.directory / f"{symbol.replace('/', '_')}.json"

    def load(self, symbol: str) -> BackfillProgress | None:
        try:
            return BackfillProgress(**json.loads(self._path(symbol).read_text()))
        except FileNotFoundError:
            return None

    def save(self, symbol: str, progress: BackfillProgress) -> None:
        path = self._path(symbol)
        tmp = path.with_suffix(f".tmp{threading.get_ident()}")
        with open(tmp, "w") as f:
            json.dump(asdict(progress), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def progress_dir(state_dir: Path, topic: str, timespan: str, start_ns: int, end_ns: int) -> Path:
    """Progress records belong to one (topic, timespan, range): a different range starts afresh."""
    return state_dir / "backfill" / topic / f"{timespan}_{start_ns}_{end_ns}"


@dataclass
class BackfillReport:
    symbols: int = 0
    done: int = 0
    already_done: int = 0
    bars: int = 0
    resumed_past: int = 0  # symbols whose unconfirmed last slice was found in the topic on resume
    seconds: float = 0.0
    interrupted: bool = False
    current: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    request_stats: list[RequestStats] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def rate(self) -> float:
        return self.bars / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_limited(self) -> int:
        return sum(s.rate_limited for s in self.request_stats)

    @property
    def waited_s(self) -> float:
        return sum(s.waited_s for s in self.request_stats)


class _Lane:
    """What one worker thread owns: a REST client, an idempotent producer and a consumer for offset look-ups."""

    def __init__(self, client: RESTClient, bootstrap: str, topic: str, stop: threading.Event) -> None:
        self.client = client
        self.stats = guard(client, stop=stop)
        self.publisher = BarPublisher(bootstrap, topic, source=SOURCE)
        self.consumer = range_reader(bootstrap, "tidemark-backfill-offsets")

    def end_offset(self, topic: str, partition: int) -> int:
        return watermarks(self.consumer, TopicPartition(topic, partition))[1]

    def last_landed_start(
        self, topic: str, partition: int, offset: int, symbol: str, start_ns: int, end_ns: int
    ) -> int | None:
        """The newest start in ``[start_ns, end_ns)`` of ``symbol``'s bars at or after ``offset`` in the partition.

        Bars outside the range that is still to do (a live connector's, for instance) say nothing about this run.
        """
        key = symbol.encode()
        values = [
            message.value() for message in read_range(self.consumer, topic, {partition: offset}) if message.key() == key
        ]
        if not values:
            return None
        batch, _rows, _failures = decode_bars(values)
        starts = batch.start_ns[(batch.start_ns >= start_ns) & (batch.start_ns < end_ns)]
        return int(starts.max()) if len(starts) else None

    def close(self) -> None:
        self.consumer.close()


class Backfill:
    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        partitions: int,
        store: ProgressStore,
        new_client: Callable[[], RESTClient],
        timespan: str,
        start_ns: int,
        end_ns: int,
        slice_bars: int = 20_000,
        stop: threading.Event | None = None,
        on_progress: Callable[[BackfillReport], None] | None = None,
    ) -> None:
        if timespan not in TIMESPANS:
            raise ValueError(f"timespan must be one of {', '.join(TIMESPANS)}, not {timespan!r}")
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.store = store
        self.new_client = new_client
        self.timespan, self.start_ns, self.end_ns = timespan, start_ns, end_ns
        self.slice_bars = slice_bars
        self.stop = stop or threading.Event()
        self.on_progress = on_progress or (lambda report: None)
        self.report = BackfillReport()
        self._local = threading.local()
        self._lanes: list[_Lane] = []
        self._lanes_lock = threading.Lock()

    def run(self, symbols: Sequence[str], concurrency: int = 4) -> BackfillReport:
        report = self.report
        report.symbols = len(symbols)
        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="backfill") as pool:
                for future in [pool.submit(self._symbol, symbol) for symbol in symbols]:
                    future.result()
        finally:
            for lane in self._lanes:
                lane.close()
            report.seconds = time.perf_counter() - started
            report.interrupted = self.stop.is_set() and report.done + report.already_done + len(report.failed) < len(
                symbols
            )
        return report

    def _lane(self) -> _Lane:
        lane: _Lane | None = getattr(self._local, "lane", None)
        if lane is None:
            lane = _Lane(self.new_client(), self.bootstrap, self.topic, self.stop)
            self._local.lane = lane
            with self._lanes_lock:
                self._lanes.append(lane)
                self.report.request_stats.append(lane.stats)
        return lane

    def _symbol(self, symbol: str) -> None:
        report = self.report
        if self.stop.is_set():
            return
        progress = self.store.load(symbol)
        if progress is not None and progress.done:
            with report._lock:
                report.already_done += 1
            self.on_progress(report)
            return
        lane = self._lane()
        partition = partition_for_key(symbol.encode(), self.partitions)
        with report._lock:
            report.current.add(symbol)
        try:
            if progress is None:
                progress = BackfillProgress(self.start_ns, lane.end_offset(self.topic, partition))
                self.store.save(symbol, progress)
            else:
                landed = lane.last_landed_start(
                    self.topic, partition, progress.scan_from, symbol, progress.through_ns, self.end_ns
                )
                if landed is not None:
                    progress.through_ns = landed + 1
                    with report._lock:
                        report.resumed_past += 1
            self._fetch(symbol, lane, partition, progress)
        except PolygonAuthError:
            self.stop.set()
            raise
        except PolygonStopped:
            pass
        except PolygonError as exc:
            with report._lock:
                report.failed[symbol] = str(exc)
        finally:
            with report._lock:
                report.current.discard(symbol)
            self.on_progress(report)

    def _fetch(self, symbol: str, lane: _Lane, partition: int, progress: BackfillProgress) -> None:
        report = self.report
        slices = iter_bars(
            lane.client, symbol, self.timespan, progress.through_ns, self.end_ns, slice_bars=self.slice_bars
        )
        for batch, through_ns in slices:
            if len(batch):
                lane.publisher.publish(batch)
                lane.publisher.flush()
                progress.scan_from = lane.end_offset(self.topic, partition)
                progress.bars += len(batch)
            progress.through_ns = through_ns
            self.store.save(symbol, progress)
            with report._lock:
                report.bars += len(batch)
            self.on_progress(report)
            if self.stop.is_set():
                return
        progress.done = True
        self.store.save(symbol, progress)
        with report._lock:
            report.done += 1
