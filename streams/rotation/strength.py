"""Currency strength: how far each currency of a basket moved against all the others, from the FX pairs quoted.

A pair ``BASEQUOTE`` moves by the log return ``r = s_base - s_quote`` of two unobserved currency values. The
strength of currency c is its mean log return against the other currencies of the basket,
``(1 / (n - 1)) * sum_{d != c} r(c/d)``, with ``r(d/c) = -r(c/d)``. With every cross quoted (the 28 pairs of the 8
majors) that is the plain average of its pairs, oriented; a missing cross is implied by least squares from the
pairs that are there (the minimum-norm solution of the pair equations), which reproduces the plain average whenever
the quoted pairs are consistent. Strengths of a basket therefore always sum to zero.

Currencies are measured only inside the largest connected group of the pairs with data: comparing currencies
that no chain of quoted pairs links would be meaningless, so the others get NaN (and no rank).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from streams.rotation.ranks import descending_ranks

Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]
IntP = npt.NDArray[np.intp]

_PAIR = re.compile(r"[A-Z]{3}[A-Z]{3}")
_MIN_ZSCORE_CURRENCIES = 3


@dataclass(frozen=True, slots=True)
class Basket:
    """The currencies of a set of pairs (in order of first appearance) and each pair's base and quote index."""

    currencies: tuple[str, ...]
    pairs: tuple[str, ...]
    base: IntP
    quote: IntP


def basket_of(pairs: Sequence[str]) -> Basket:
    """Parse pair symbols like ``EURUSD`` (base then quote, ISO 4217 codes)."""
    if len(set(pairs)) != len(pairs):
        raise ValueError("currency pairs must be unique")
    currencies: dict[str, int] = {}
    base, quote = [], []
    for pair in pairs:
        if not _PAIR.fullmatch(pair) or pair[:3] == pair[3:]:
            raise ValueError(f"{pair!r} is not an FX pair of two different ISO currency codes, e.g. EURUSD")
        base.append(currencies.setdefault(pair[:3], len(currencies)))
        quote.append(currencies.setdefault(pair[3:], len(currencies)))
    return Basket(tuple(currencies), tuple(pairs), np.array(base, dtype=np.intp), np.array(quote, dtype=np.intp))


@dataclass(frozen=True, slots=True)
class Strength:
    """Per currency of the basket: strength (mean log return against the others), cross-sectional z-score, rank.

    ``zscore`` is ``(strength - mean) / std`` over the measured currencies (population std: the basket is the
    whole population), NaN with fewer than 3 of them or no dispersion. ``rank`` is 1 for the strongest, 0 where
    the currency could not be measured (strength NaN).
    """

    strength: Float64
    zscore: Float64
    rank: Int64


def pair_log_returns(closes: Float64) -> Float64:
    """Log return of each pair (column) from the first to the last row; NaN where either close is missing."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.log(closes[-1]) - np.log(closes[0]), dtype=np.float64)


def currency_strength(basket: Basket, pair_returns: Float64) -> Strength:
    """Strength of every currency of ``basket`` from one log return per pair (NaN = no data for that pair)."""
    n = len(basket.currencies)
    valid = np.isfinite(pair_returns)
    base, quote, returns = basket.base[valid], basket.quote[valid], pair_returns[valid]
    member = _largest_group(n, base, quote)
    strength = np.full(n, np.nan)
    size = int(np.count_nonzero(member))
    if size >= 2:
        local = np.cumsum(member) - 1
        keep = member[base]
        rows = np.arange(int(np.count_nonzero(keep)))
        design = np.zeros((rows.size, size))
        design[rows, local[base[keep]]] = 1.0
        design[rows, local[quote[keep]]] = -1.0
        values = np.linalg.lstsq(design, returns[keep], rcond=None)[0]
        strength[member] = size / (size - 1) * (values - values.mean())
    return Strength(strength, _zscores(strength), descending_ranks(strength))


def _largest_group(n: int, base: IntP, quote: IntP) -> npt.NDArray[np.bool_]:
    """Currencies in the largest set linked by pairs (ties: the set holding the earliest currency)."""
    if not base.size:
        return np.zeros(n, dtype=np.bool_)
    links = coo_matrix((np.ones(base.size), (base, quote)), shape=(n, n))
    _, labels = connected_components(links, directed=False)
    return np.asarray(labels == np.argmax(np.bincount(labels)), dtype=np.bool_)


def _zscores(values: Float64) -> Float64:
    finite = np.isfinite(values)
    out = np.full(values.size, np.nan)
    if np.count_nonzero(finite) < _MIN_ZSCORE_CURRENCIES:
        return out
    std = float(values[finite].std())
    if std > 0:
        out[finite] = (values[finite] - values[finite].mean()) / std
    return out
