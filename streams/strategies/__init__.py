"""Strategy families: parameters and one signal function each, shared by discovery's backtests and the live
runner."""

from __future__ import annotations

from streams.strategies.base import Bars, Family, InvalidParameters, Parameter, StrategyDefinitionError
from streams.strategies.momentum import MOMENTUM
from streams.strategies.pairs import PAIRS
from streams.strategies.reversion import REVERSION
from streams.strategies.rotation import ROTATION

FAMILIES: dict[str, Family] = {f.name: f for f in (MOMENTUM, REVERSION, PAIRS, ROTATION)}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InvalidParameters(f"no strategy family {name!r}; there are {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "Bars", "Family", "InvalidParameters", "Parameter", "StrategyDefinitionError", "family"]
