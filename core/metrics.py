"""What an operator scrapes from each long-running process: Prometheus metrics on ``/metrics`` and a liveness check
on ``/healthz`` that fails when the process is stuck (lag but no progress), served from a thread so that a stuck main
thread still answers.

Consumer lag comes from librdkafka's statistics (``stats_cb``), which the main thread's consume calls serve: a
stuck process keeps showing its last lag, and its progress clock stops, which is exactly what liveness looks at.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("tidemark.metrics")

STATISTICS_INTERVAL_MS = 5000

Lags = dict[tuple[str, int], int]


def lags_from_statistics(stats: Mapping[str, Any]) -> Lags:
    """(topic, partition) -> records not yet consumed, from one librdkafka statistics document.

    The end is the last stable offset (what a read_committed consumer can reach) and the position is what the
    application was given (``app_offset``); librdkafka's own ``consumer_lag`` counts from the committed offset,
    which the analytics runner advances only at checkpoints, through its transactions.
    """
    lags: Lags = {}
    for topic, entry in stats.get("topics", {}).items():
        for key, partition in entry.get("partitions", {}).items():
            number = int(key)
            if number < 0:  # librdkafka's internal UA (unassigned) partition
                continue
            end = partition.get("ls_offset", -1)
            end = end if end >= 0 else partition.get("hi_offset", -1)
            position = partition.get("app_offset", -1)
            if position < 0:
                position = partition.get("committed_offset", -1)
            if position < 0:
                position = partition.get("lo_offset", -1)
            if end >= 0 and position >= 0:
                lags[(topic, number)] = max(end - position, 0)
    return lags


def reconnects_from_statistics(stats: Mapping[str, Any]) -> int:
    """Connections made beyond the first to each broker (librdkafka counts every successful connect)."""
    return sum(max(int(broker.get("connects", 0)) - 1, 0) for broker in stats.get("brokers", {}).values())


def liveness(total_lag: int, since_progress_s: float, bound_s: float) -> tuple[bool, str]:
    """Alive unless there is work (lag) and nothing has moved for longer than ``bound_s``."""
    if total_lag > 0 and since_progress_s > bound_s:
        return False, f"stuck: lag {total_lag} and no progress for {since_progress_s:.0f}s (bound {bound_s:.0f}s)"
    return True, f"ok: lag {total_lag}, last progress {since_progress_s:.0f}s ago"


class ProcessMetrics:
    """One process's metrics, in a registry of its own (so tests and several processes never collide)."""

    def __init__(self, process: str, liveness_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.process = process
        self.liveness_after_s = liveness_after_s
        self._clock = clock
        self.registry = CollectorRegistry()
        self.events_in = Counter("tidemark_events_in", "records consumed", ["process", "topic"], registry=self.registry)
        self.events_out = Counter(
            "tidemark_events_out", "records produced or projected", ["process", "topic"], registry=self.registry
        )
        self.dead_letters = Counter(
            "tidemark_dead_letters", "records sent to the dead-letter topic", ["process"], registry=self.registry
        )
        self.commits = Counter(
            "tidemark_commits", "transactions or projection commits completed", ["process"], registry=self.registry
        )
        self.last_commit = Gauge(
            "tidemark_last_commit_timestamp_seconds",
            "when the last checkpoint or commit completed (unix time; age = time() - this)",
            ["process"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "tidemark_consumer_lag",
            "records not yet consumed",
            ["process", "topic", "partition"],
            registry=self.registry,
        )
        self.reconnects = Gauge(
            "tidemark_kafka_reconnects", "connections to brokers beyond the first", ["process"], registry=self.registry
        )
        self.restarts = Counter(
            "tidemark_restarts", "times the process restarted a failing part", ["process"], registry=self.registry
        )
        self.seconds_since_progress = Gauge(
            "tidemark_seconds_since_progress",
            "seconds since records or a commit last moved",
            ["process"],
            registry=self.registry,
        )
        self.seconds_since_progress.labels(process).set_function(self.since_progress)
        self._lags: Lags = {}
        self._last_progress = clock()

    def consumed(self, topic: str, count: int) -> None:
        if count:
            self.events_in.labels(self.process, topic).inc(count)
            self.progressed()

    def produced(self, counts: Iterable[tuple[str, int]]) -> None:
        for topic, count in counts:
            self.events_out.labels(self.process, topic).inc(count)

    def dead_lettered(self, count: int) -> None:
        if count:
            self.dead_letters.labels(self.process).inc(count)

    def committed(self) -> None:
        self.commits.labels(self.process).inc()
        self.last_commit.labels(self.process).set(time.time())
        self.progressed()

    def progressed(self) -> None:
        self._last_progress = self._clock()

    def since_progress(self) -> float:
        return self._clock() - self._last_progress

    def on_statistics(self, document: str) -> None:
        """librdkafka's ``stats_cb``."""
        stats = json.loads(document)
        lags = lags_from_statistics(stats)
        for (topic, partition), lag in lags.items():
            self.lag.labels(self.process, topic, str(partition)).set(lag)
        self._lags = lags
        self.reconnects.labels(self.process).set(reconnects_from_statistics(stats))

    def count_from(self, name: str, documentation: str, read: Callable[[], Mapping[str, int]]) -> None:
        """Counters another component already keeps (a connector's stats), read at scrape time, labelled ``kind``."""
        process = self.process

        class _Collector(Collector):
            def collect(self) -> Iterable[Metric]:
                family = CounterMetricFamily(name, documentation, labels=["process", "kind"])
                for kind, value in read().items():
                    family.add_metric([process, kind], value)
                yield family

        self.registry.register(_Collector())

    def alive(self) -> tuple[bool, str]:
        return liveness(sum(self._lags.values()), self.since_progress(), self.liveness_after_s)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the process's own log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def process_port(base: int, offset: int) -> int:
    """Runner ``base``, sink ``base + 1``, live connector ``base + 2``, strategy runner ``base + 3``; a base of 0 (any
    free port) stays 0."""
    return base + offset if base else 0


def serve(metrics: ProcessMetrics, host: str, port: int) -> int | None:
    """``/metrics`` and ``/healthz`` from a daemon thread; the port actually bound, or None if it was taken (the
    process runs on without them, and says so, rather than failing over an observability port)."""
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, reason = metrics.alive()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"{metrics.process}: {reason}\n".encode()]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    try:
        server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        log.warning("%s: metrics not served: cannot listen on %s:%d (%s)", metrics.process, host, port, exc)
        return None
    threading.Thread(target=server.serve_forever, name=f"{metrics.process}-metrics", daemon=True).start()
    bound = int(server.server_port)
    log.info("%s: metrics on http://%s:%d/metrics, liveness on /healthz", metrics.process, host, bound)
    return bound
