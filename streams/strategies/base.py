"""What a strategy family is: its parameters (at most five, in the order complexity frees them) and one signal
function from bars to target positions, the same function for the vectorised backtest and the live runner.

Pure: numpy only. A position decided at a bar's close is held until the next close; intraday strategies are flat
at every session's last bar, so no overnight gap is ever earned or lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Float64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

MAX_PARAMETERS = 5


class StrategyDefinitionError(ValueError):
    """A family definition that Tidemark refuses to load (too many parameters, bad ranges)."""


class InvalidParameters(ValueError):
    """Parameters a family does not have, or values outside their ranges."""


@dataclass(frozen=True, slots=True)
class Parameter:
    """One tunable number: searched in [low, high] when free, ``default`` otherwise (which may switch the feature
    off, e.g. an infinite stop)."""

    name: str
    low: float
    high: float
    default: float
    integer: bool = False
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise StrategyDefinitionError(f"parameter {self.name}: low {self.low} is not below high {self.high}")
        if self.log and self.low <= 0:
            raise StrategyDefinitionError(f"parameter {self.name}: a log-scaled range must be positive")

    def check(self, value: float) -> float:
        if value == self.default:
            return value
        if not self.low <= value <= self.high or (self.integer and value != int(value)):
            kind = "an integer " if self.integer else ""
            raise InvalidParameters(f"{self.name}={value} is not {kind}in [{self.low:g}, {self.high:g}]")
        return value


@dataclass(frozen=True, slots=True)
class Bars:
    """The history a strategy sees: closes per leg (T, L), the bars after which the session closes (only for
    intraday timeframes; empty otherwise) and how many bars make a year of the market's sessions."""

    closes: Float64
    session_ends: Bool
    bars_per_year: float
    volumes: Float64 | None = None

    def __post_init__(self) -> None:
        if self.closes.ndim != 2 or self.session_ends.shape != (self.closes.shape[0],):
            raise ValueError("closes must be (bars, legs) and session_ends (bars,)")

    @property
    def count(self) -> int:
        return int(self.closes.shape[0])


Rule = Callable[[Bars, Mapping[str, float]], Float64]


@dataclass(frozen=True)
class Family:
    """A strategy family. ``parameters`` are ordered by complexity: a variant of level k frees the first k and
    holds the rest at their defaults. ``legs`` is 1 (one symbol), 2 (a pair) or 0 (a cross-section of any size)."""

    name: str
    legs: int
    parameters: tuple[Parameter, ...]
    rule: Rule = field(repr=False)
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.parameters) > MAX_PARAMETERS:
            raise StrategyDefinitionError(
                f"strategy family {self.name} defines {len(self.parameters)} parameters; a strategy may have at most "
                f"{MAX_PARAMETERS} (more cannot be validated out of sample on the histories Tidemark holds)"
            )
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise StrategyDefinitionError(f"strategy family {self.name} repeats a parameter name: {names}")
        if not self.parameters or self.parameters[0].name != "lookback":
            raise StrategyDefinitionError(f"strategy family {self.name}: the first parameter must be the lookback")

    @property
    def levels(self) -> int:
        return len(self.parameters)

    def free(self, level: int) -> tuple[Parameter, ...]:
        if not 1 <= level <= self.levels:
            raise InvalidParameters(f"{self.name} has complexity levels 1 to {self.levels}, not {level}")
        return self.parameters[:level]

    def resolve(self, params: Mapping[str, float]) -> dict[str, float]:
        """Every parameter's value: the given ones (checked against their ranges), defaults for the rest."""
        known = {p.name: p for p in self.parameters}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise InvalidParameters(f"{self.name} has no parameter {', '.join(unknown)} (it has {', '.join(known)})")
        return {name: p.check(float(params[name])) if name in params else p.default for name, p in known.items()}

    def horizon(self) -> int:
        """The longest memory any variant can have, in bars: what purging around a test fold must cover."""
        return int(self.parameters[0].high)

    def positions(self, bars: Bars, params: Mapping[str, float]) -> Float64:
        """Target position per bar and leg (units of gross notional), decided at each bar's close from that bar
        and earlier ones only; flat at the close of every session an intraday grid holds."""
        if self.legs and bars.closes.shape[1] != self.legs:
            raise InvalidParameters(f"{self.name} trades {self.legs} leg(s), not {bars.closes.shape[1]}")
        resolved = self.resolve(params)
        if resolved["lookback"] + 1 > bars.count:
            raise InvalidParameters(
                f"{self.name}: {bars.count} bars are too few for a lookback of {resolved['lookback']:g}"
            )
        out = self.rule(bars, resolved)
        out[bars.session_ends] = 0.0
        return out
