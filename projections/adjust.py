"""Split- and dividend-adjusted history, computed on read from raw bars and corporate actions (raw bars are never
rewritten, so a corrected or late action changes every adjusted query at once and nothing has to be migrated).

Each action applies to every bar that starts before its cutoff (the ex-date's midnight in the market's time zone):
- a split of ``split_from`` -> ``split_to`` shares multiplies earlier prices by ``split_from / split_to`` and earlier
  volumes by ``split_to / split_from`` (a reverse split is the same formula with ``split_from > split_to``);
- a cash dividend multiplies earlier prices by ``1 - cash / close`` where ``close`` is the last close before the
  ex-date (the CRSP convention: total-return continuity across the ex-date); volumes are unchanged.
A bar's factor is the product over the actions after it, found for all bars at once with one ``searchsorted``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from schemas.bars import BarBatch

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

SPLIT_TYPES = frozenset({"SPLIT", "REVERSE_SPLIT", "STOCK_DIVIDEND"})
CASH_TYPES = frozenset({"DIVIDEND", "SPECIAL_DIVIDEND"})


@dataclass(frozen=True, slots=True)
class Factors:
    """Per action, sorted by cutoff: the multipliers applied to prices and volumes of every bar before the cutoff.

    ``ignored`` marks actions that could not be turned into a factor (unknown type, missing ratio, a dividend
    without a usable previous close); their factors are 1 so that the rest of the history still adjusts.
    """

    cutoff_ns: Int64
    price: Float64
    volume: Float64
    ignored: Bool

    def __len__(self) -> int:
        return len(self.cutoff_ns)


def cutoff_ns(ex_date: date, time_zone: str) -> int:
    """UTC nanoseconds of the ex-date's midnight in the market's zone: the first instant of post-action prices."""
    local = datetime.combine(ex_date, time(0), tzinfo=ZoneInfo(time_zone))
    return int(local.timestamp()) * 1_000_000_000


def action_factors(
    action_type: Sequence[str],
    cutoffs: Int64,
    split_from: Float64,
    split_to: Float64,
    cash: Float64,
    prev_close: Float64,
) -> Factors:
    """Factors of N actions from their columns (NaN where a field does not apply), sorted by cutoff."""
    kinds = np.asarray(action_type, dtype=object)
    is_split = np.isin(kinds, list(SPLIT_TYPES))
    is_cash = np.isin(kinds, list(CASH_TYPES))
    with np.errstate(divide="ignore", invalid="ignore"):
        split_ok = is_split & (split_from > 0) & (split_to > 0)
        cash_ok = is_cash & (cash >= 0) & (prev_close > cash)
        price = np.where(split_ok, split_from / split_to, np.where(cash_ok, 1.0 - cash / prev_close, 1.0))
        volume = np.where(split_ok, split_to / split_from, 1.0)
    order = np.argsort(cutoffs, kind="stable")
    return Factors(
        cutoff_ns=np.asarray(cutoffs, dtype=np.int64)[order],
        price=np.asarray(price, dtype=np.float64)[order],
        volume=np.asarray(volume, dtype=np.float64)[order],
        ignored=~(split_ok | cash_ok)[order],
    )


def cumulative(factors: Factors, start_ns: Int64) -> tuple[Float64, Float64]:
    """Per bar, the product of the price and volume factors of every action whose cutoff is after the bar's start."""
    # suffix[i] = product of factors[i:], suffix[n] = 1; bars before cutoff i take every action from i on.
    price_suffix = np.append(np.cumprod(factors.price[::-1])[::-1], 1.0)
    volume_suffix = np.append(np.cumprod(factors.volume[::-1])[::-1], 1.0)
    first_after = np.searchsorted(factors.cutoff_ns, start_ns, side="right")
    return price_suffix[first_after], volume_suffix[first_after]


def adjust(bars: BarBatch, factors: Factors) -> BarBatch:
    """The bars as they would have printed in today's share terms; a new batch, ``bars`` is untouched."""
    price, volume = cumulative(factors, bars.start_ns)
    return BarBatch(
        symbol=bars.symbol,
        asset_class=bars.asset_class,
        interval=bars.interval,
        start_ns=bars.start_ns,
        end_ns=bars.end_ns,
        open=bars.open * price,
        high=bars.high * price,
        low=bars.low * price,
        close=bars.close * price,
        volume=bars.volume * volume,
        vwap=bars.vwap * price,
        trade_count=bars.trade_count,
        regular_session=bars.regular_session,
        kind=bars.kind,
    )
