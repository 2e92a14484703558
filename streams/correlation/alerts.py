"""Correlation alerts as pure logic: watched pairs crossing thresholds, and the structure shifting off its baseline.

Fed one snapshot at a time per window (``observe``), it says what moved, from what to what, and since when. No
alert storm: a pair alerts once when it crosses into breach and re-arms only after coming back past the threshold
by ``hysteresis``; a structure shift alerts once and re-arms when the distance falls below half the threshold.
"Since" is the first snapshot at which the value left its calm side (the re-arm side), so a slow drift reports
when it began, not only when it finally crossed.

The baseline is an exponentially weighted mean of the window's recent matrices with a span of ``baseline``
snapshots (one float32 matrix per window instead of K of them, so the state stays small at 1,000 symbols); it is
reset when the window's symbol list changes, and alerts only once it has absorbed ``baseline`` snapshots.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Float64 = npt.NDArray[np.float64]

PAIR_KIND = "correlation.threshold_breach"
REGIME_KIND = "correlation.regime_change"
METRICS = ("mad", "frobenius")
_PAIR = re.compile(r"^\s*([^:<>\s]+)\s*:\s*([^:<>\s]+)\s*([<>])\s*(-?[0-9.]+)\s*$")
_MOVED_PAIRS = 3


@dataclass(frozen=True, slots=True)
class WatchedPair:
    a: str
    b: str
    above: bool
    threshold: float

    @classmethod
    def parse(cls, text: str) -> WatchedPair:
        """``"SPY:XLK>0.9"`` alerts when the correlation rises above 0.9; ``<`` when it falls below."""
        match = _PAIR.match(text)
        if match is None:
            raise ValueError(f"watched pair {text!r} is not A:B>THRESHOLD or A:B<THRESHOLD")
        a, b, op, threshold = match.groups()
        value = float(threshold)
        if not -1 <= value <= 1 or a == b:
            raise ValueError(f"watched pair {text!r}: two symbols and a threshold in [-1, 1]")
        return cls(a, b, op == ">", value)

    @property
    def subject(self) -> str:
        return f"{self.a}:{self.b}"

    def __str__(self) -> str:
        return f"{self.a}:{self.b}{'>' if self.above else '<'}{self.threshold:g}"


@dataclass(frozen=True, slots=True)
class AlertConfig:
    pairs: tuple[WatchedPair, ...] = ()
    hysteresis: float = 0.05
    regime_threshold: float = 0.1
    baseline: int = 8
    metric: str = "mad"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"distance metric {self.metric!r} is not one of {METRICS}")
        if self.baseline < 1 or self.regime_threshold <= 0 or self.hysteresis < 0:
            raise ValueError("baseline >= 1, regime_threshold > 0 and hysteresis >= 0")


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    severity: str
    subject: str
    window: str
    as_of_ns: int
    message: str
    from_value: float | None
    to_value: float
    since_ns: int | None
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class _Track:
    """Where one watched quantity stands: in breach or armed, and when it left its calm side."""

    breached: bool = False
    left_ns: int | None = None
    last: float | None = None

    def step(self, value: float, as_of_ns: int, beyond: bool, calm: bool) -> tuple[bool, float | None, int | None]:
        """Advance; returns (alert now, previous value, since)."""
        previous = self.last
        self.last = value
        if calm:
            self.left_ns = None
            self.breached = False
            return False, previous, None
        if self.left_ns is None:
            self.left_ns = as_of_ns
        if beyond and not self.breached:
            self.breached = True
            return True, previous, self.left_ns
        return False, previous, self.left_ns


@dataclass
class _Baseline:
    symbols: tuple[str, ...]
    mean: npt.NDArray[np.float32]
    count: int
    track: _Track


class AlertDetector:
    def __init__(self, config: AlertConfig) -> None:
        self.config = config
        self._pairs: dict[str, _Track] = {}
        self._baselines: dict[str, _Baseline] = {}

    def observe(
        self, universe: str, window: str, as_of_ns: int, symbols: tuple[str, ...], upper: Float64
    ) -> list[Alert]:
        """Alerts raised by one snapshot of ``window`` (its strict upper triangle, row-major, over ``symbols``)."""
        alerts = self._watch_pairs(window, as_of_ns, symbols, upper)
        regime = self._watch_structure(universe, window, as_of_ns, symbols, upper)
        return alerts + ([regime] if regime else [])

    def _watch_pairs(self, window: str, as_of_ns: int, symbols: tuple[str, ...], upper: Float64) -> list[Alert]:
        index = {s: i for i, s in enumerate(symbols)}
        alerts = []
        for pair in self.config.pairs:
            if pair.a not in index or pair.b not in index:
                continue
            value = float(upper[_upper_index(index[pair.a], index[pair.b], len(symbols))])
            if not np.isfinite(value):
                continue
            sign = 1.0 if pair.above else -1.0
            beyond = sign * (value - pair.threshold) > 0
            calm = sign * (value - pair.threshold) <= -self.config.hysteresis
            track = self._pairs.setdefault(f"{window}|{pair}", _Track())
            fire, previous, since = track.step(value, as_of_ns, beyond, calm)
            if fire:
                word = "above" if pair.above else "below"
                was = f" from {previous:.3f}" if previous is not None else ""
                alerts.append(
                    Alert(
                        PAIR_KIND,
                        "WARNING",
                        pair.subject,
                        window,
                        as_of_ns,
                        f"{pair.a}/{pair.b} {window} correlation {word} {pair.threshold:g}: {value:.3f}{was}",
                        previous,
                        value,
                        since,
                        {"window": window, "threshold": f"{pair.threshold:g}", "direction": word},
                    )
                )
        return alerts

    def _watch_structure(
        self, universe: str, window: str, as_of_ns: int, symbols: tuple[str, ...], upper: Float64
    ) -> Alert | None:
        current = upper.astype(np.float32)
        base = self._baselines.get(window)
        if base is None or base.symbols != symbols:
            self._baselines[window] = _Baseline(symbols, current, 1, _Track())
            return None
        distance = self._distance(current, base.mean)
        threshold = self.config.regime_threshold
        warm = base.count >= self.config.baseline
        fire, _, since = base.track.step(distance, as_of_ns, warm and distance > threshold, distance < threshold / 2)
        alert = None
        if fire:
            before, after = _nanmean(base.mean), _nanmean(current)
            moved = _moved_pairs(symbols, base.mean, current)
            alert = Alert(
                REGIME_KIND,
                "WARNING",
                universe,
                window,
                as_of_ns,
                f"{universe} {window} correlation structure moved {distance:.3f} ({self.config.metric}) from its "
                f"baseline; average correlation {before:.3f} -> {after:.3f}",
                before,
                after,
                since,
                {
                    "window": window,
                    "distance": f"{distance:.6g}",
                    "threshold": f"{threshold:g}",
                    "metric": self.config.metric,
                    "moved_pairs": moved,
                },
            )
        alpha = np.float32(2.0 / (self.config.baseline + 1))
        filled = np.where(np.isfinite(base.mean), base.mean, current)
        base.mean = np.where(np.isfinite(current), filled + alpha * (current - filled), filled).astype(np.float32)
        base.count += 1
        return alert

    def _distance(self, current: npt.NDArray[np.float32], baseline: npt.NDArray[np.float32]) -> float:
        diff = (current - baseline).astype(np.float64)
        diff = diff[np.isfinite(diff)]
        if not diff.size:
            return 0.0
        if self.config.metric == "mad":
            return float(np.abs(diff).mean())
        return float(np.sqrt(2.0 * np.dot(diff, diff)))  # both triangles of the symmetric difference

    def to_bytes(self) -> bytes:
        meta: dict[str, Any] = {
            "pairs": {k: [t.breached, t.left_ns, t.last] for k, t in self._pairs.items()},
            "baselines": {
                k: [list(b.symbols), b.count, b.track.breached, b.track.left_ns, b.track.last]
                for k, b in self._baselines.items()
            },
        }
        buffer = io.BytesIO()
        arrays: dict[str, npt.NDArray[Any]] = {f"b{i}": b.mean for i, b in enumerate(self._baselines.values())}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, config: AlertConfig) -> AlertDetector:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        meta = json.loads(arrays["meta"].tobytes())
        detector = cls(config)
        detector._pairs = {k: _Track(*v) for k, v in meta["pairs"].items()}
        for i, (key, (symbols, count, breached, left_ns, last)) in enumerate(meta["baselines"].items()):
            track = _Track(breached, left_ns, last)
            detector._baselines[key] = _Baseline(tuple(symbols), arrays[f"b{i}"], count, track)
        return detector


def _upper_index(i: int, j: int, n: int) -> int:
    """Position of (i, j) in the strict upper triangle, row-major (the CorrelationSnapshotTaken layout)."""
    i, j = min(i, j), max(i, j)
    return i * n - i * (i + 1) // 2 + (j - i - 1)


def _nanmean(values: npt.NDArray[np.float32]) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.astype(np.float64).mean()) if finite.size else float("nan")


def _moved_pairs(symbols: tuple[str, ...], before: npt.NDArray[np.float32], after: npt.NDArray[np.float32]) -> str:
    """The pairs that moved most, as ``A/B from->to`` text."""
    change = np.abs(after - before)
    change[~np.isfinite(change)] = -1
    k = min(_MOVED_PAIRS, change.size)
    if k == 0:
        return ""
    top = np.argsort(-change, kind="stable")[:k]
    rows, cols = np.triu_indices(len(symbols), 1)
    return ", ".join(f"{symbols[rows[t]]}/{symbols[cols[t]]} {before[t]:.2f}->{after[t]:.2f}" for t in top.tolist())
