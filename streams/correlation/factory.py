"""The rolling statistics, correlation and alert processor behind the analytics host's ``ProcessorFactory`` contract.

Event ids derive from (universe, timeframe, window, as-of) and, for alerts, (kind, subject, window, as-of), so a
replayed or recovered run publishes the same events under the same ids.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from core.events import common_fields, deterministic_event_id
from core.kafka import partition_for_key
from schemas.catalogue import topic_spec
from streams.correlation.alerts import Alert, AlertConfig, AlertDetector, WatchedPair
from streams.correlation.processor import BARS_PER_YEAR_1M, RollingProcessor, Snapshot, Window
from streams.processors import BarFrame, Emitted

if TYPE_CHECKING:
    from core.settings import Settings

NAME = "correlation"
SOURCE = "analytics.rolling"
ALERT_SOURCE = "analytics.correlation-alerts"
CORRELATION_SCHEMA = "tidemark.analytics.CorrelationSnapshotTaken"
STATS_SCHEMA = "tidemark.analytics.SymbolStatsComputed"
ALERT_SCHEMA = "tidemark.risk.AlertRaised"
_LENGTH = struct.Struct("<Q")


def snapshot_events(universe: str, snapshot: Snapshot) -> tuple[list[tuple[bytes, dict[str, Any]]], dict[str, Any]]:
    """The events of one snapshot; ids derive from (universe, timeframe, window, as_of) so a replay repeats them."""
    corr = snapshot.correlation
    as_of = int(corr.as_of_ns or snapshot.boundary_ns) if snapshot.timeframe == "1m" else snapshot.boundary_ns
    corr_id = deterministic_event_id(SOURCE, universe, snapshot.timeframe, corr.window_bars, as_of)
    correlation = {
        **common_fields(SOURCE, as_of, event_id=corr_id),
        "universe": universe,
        "as_of_ns": as_of,
        "timeframe": snapshot.timeframe,
        "window_bars": corr.window_bars,
        "observations": corr.observations,
        "method": "PEARSON",
        "symbols": [str(s) for s in corr.symbol.tolist()],
        "matrix": corr.upper_triangle().tolist(),
        "average_correlation": float(corr.mean_correlation),
        "largest_eigenvalue_share": float(corr.eigen_share),
        "diversification_ratio": _optional(corr.diversification_ratio),
    }
    stats = snapshot.stats
    if stats is None:
        return [], correlation
    present = np.flatnonzero(stats.count > 0)
    per_symbol = []
    for i in present.tolist():
        symbol = str(stats.symbol[i])
        event_id = deterministic_event_id(SOURCE, "stats", symbol, snapshot.timeframe, stats.window_bars, as_of)
        per_symbol.append(
            (
                symbol.encode(),
                {
                    **common_fields(SOURCE, as_of, causation_id=corr_id, event_id=event_id),
                    "symbol": symbol,
                    "timeframe": snapshot.timeframe,
                    "window_bars": stats.window_bars,
                    "bar_count": int(stats.count[i]),
                    "as_of_ns": as_of,
                    "last_close": float(stats.last_close[i]),
                    "window_return": float(stats.window_return[i]),
                    "mean_return": float(stats.mean_return[i]),
                    "stdev_return": float(stats.volatility[i]),
                    "volatility_annualised": float(stats.volatility_annual[i]),
                    "bars_per_year": BARS_PER_YEAR_1M,
                    "max_drawdown": _optional(stats.max_drawdown[i]),
                },
            )
        )
    return per_symbol, correlation


def alert_event(alert: Alert, causation_id: str) -> dict[str, Any]:
    event_id = deterministic_event_id(ALERT_SOURCE, alert.kind, alert.subject, alert.window, alert.as_of_ns)
    return {
        **common_fields(ALERT_SOURCE, alert.as_of_ns, causation_id=causation_id, event_id=event_id),
        "kind": alert.kind,
        "severity": alert.severity,
        "subject": alert.subject,
        "message": alert.message,
        "from_value": alert.from_value,
        "to_value": alert.to_value,
        "since_ns": alert.since_ns,
        "details": alert.details,
    }


def _optional(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


class CorrelationProcessor:
    """``RollingProcessor`` over the configured universe, its snapshots as events, and the alerts they raise."""

    name = NAME

    def __init__(self, rolling: RollingProcessor, alerts: AlertDetector, universe_name: str) -> None:
        self.rolling = rolling
        self.alerts = alerts
        self.universe_name = universe_name

    def process(self, bars: BarFrame) -> list[Emitted]:
        emitted: list[Emitted] = []
        universe_key = self.universe_name.encode()
        for snap in self.rolling.process(bars.partition, bars.symbol, bars.start_ns, bars.close, bars.asset_class):
            per_symbol, correlation = snapshot_events(self.universe_name, snap)
            emitted += [Emitted("analytics.stats", key, STATS_SCHEMA, event) for key, event in per_symbol]
            emitted.append(Emitted("analytics.correlations", universe_key, CORRELATION_SCHEMA, correlation))
            window = f"{snap.timeframe}:{snap.correlation.window_bars}"
            symbols = tuple(correlation["symbols"])
            upper = snap.correlation.upper_triangle()
            for alert in self.alerts.observe(self.universe_name, window, correlation["as_of_ns"], symbols, upper):
                event = alert_event(alert, correlation["event_id"])
                emitted.append(Emitted("alerts", alert.subject.encode(), ALERT_SCHEMA, event))
        return emitted

    def to_bytes(self) -> bytes:
        rolling = self.rolling.to_bytes()
        return _LENGTH.pack(len(rolling)) + rolling + self.alerts.to_bytes()


def alert_config(settings: Settings) -> AlertConfig:
    return AlertConfig(
        pairs=tuple(WatchedPair.parse(p) for p in settings.correlation.watched_pairs),
        hysteresis=settings.correlation.alert_hysteresis,
        regime_threshold=settings.correlation.regime_threshold,
        baseline=settings.correlation.regime_baseline,
        metric=settings.correlation.regime_metric,
    )


class CorrelationFactory:
    name = NAME

    def create(self, settings: Settings) -> CorrelationProcessor:
        partitions = topic_spec("md.bars.1m").partitions
        watched = frozenset(partition_for_key(symbol.encode(), partitions) for symbol in settings.correlation.universe)
        windows = [Window.parse(w) for w in settings.correlation.windows]
        rolling = RollingProcessor(
            settings.correlation.universe,
            windows,
            settings.processing.snapshot_every,
            watched,
            settings.correlation.min_coverage,
        )
        return CorrelationProcessor(rolling, AlertDetector(alert_config(settings)), settings.correlation.universe_name)

    def restore(self, data: bytes, settings: Settings) -> CorrelationProcessor:
        (length,) = _LENGTH.unpack_from(data)
        rolling = RollingProcessor.from_bytes(data[_LENGTH.size : _LENGTH.size + length])
        if rolling.universe != tuple(settings.correlation.universe):
            raise ValueError("the universe was reconfigured")
        if [str(w) for w in rolling.windows] != [str(Window.parse(w)) for w in settings.correlation.windows]:
            raise ValueError("the correlation windows were reconfigured")
        alerts = AlertDetector.from_bytes(data[_LENGTH.size + length :], alert_config(settings))
        return CorrelationProcessor(rolling, alerts, settings.correlation.universe_name)


FACTORY = CorrelationFactory()
