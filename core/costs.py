"""Trading costs per asset class: the one cost model every Sharpe ratio, return and backtest in Tidemark is net of.

A cost is charged on every unit of notional traded (turnover), in basis points of that notional: commission and
fees, half the quoted spread (a market order crosses half of it), and slippage beyond the touch. Pure: no I/O; the
defaults are overridden from settings (``core.settings.CostSettings``).

Defaults, one side, for liquid instruments at retail/small-institution size (documented in the README):

- US equities (Alpaca): no commission; SEC and FINRA fees on sells average about 0.15 bp per unit traded;
  half-spread 1 bp (large caps and sector ETFs trade 1-3 bp wide); slippage 1 bp.
- FX majors and crosses (ECN): commission 0.2 bp; half-spread 0.5 bp; slippage 0.3 bp.
- CME micro futures: commission and exchange fees about 0.5 bp (about $0.85 a side on a $20-30k contract);
  half-spread 0.25 bp (half a tick); slippage 0.5 bp.
"""

from __future__ import annotations

from dataclasses import dataclass

BP = 1e-4


@dataclass(frozen=True, slots=True)
class CostModel:
    commission_bp: float
    half_spread_bp: float
    slippage_bp: float

    def __post_init__(self) -> None:
        if min(self.commission_bp, self.half_spread_bp, self.slippage_bp) < 0:
            raise ValueError(f"costs cannot be negative: {self}")

    @property
    def per_unit_bp(self) -> float:
        """Cost of trading one unit of notional, in basis points."""
        return self.commission_bp + self.half_spread_bp + self.slippage_bp

    @property
    def per_unit(self) -> float:
        """Cost of trading one unit of notional, as a fraction of it (what a per-bar return is charged)."""
        return self.per_unit_bp * BP


DEFAULT_COSTS: dict[str, CostModel] = {
    "EQUITY": CostModel(commission_bp=0.15, half_spread_bp=1.0, slippage_bp=1.0),
    "FX": CostModel(commission_bp=0.2, half_spread_bp=0.5, slippage_bp=0.3),
    "FUTURE": CostModel(commission_bp=0.5, half_spread_bp=0.25, slippage_bp=0.5),
}
