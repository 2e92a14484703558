"""Ranking shared by the strength and rotation kernels."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def descending_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """1 for the largest value, 2 for the next...; ties keep input order (deterministic); 0 where NaN (unranked)."""
    finite = np.isfinite(values)
    order = np.flatnonzero(finite)[np.argsort(-values[finite], kind="stable")]
    ranks = np.zeros(values.size, dtype=np.int64)
    ranks[order] = np.arange(1, order.size + 1)
    return ranks
