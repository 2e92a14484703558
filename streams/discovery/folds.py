"""Cross-validation folds for time series whose samples have a label window: a bar's return is earned by a
position that may have been entered up to ``horizon`` bars earlier, so a training sample within ``horizon`` bars
before a test fold shares a trade with it (purged), and one just after it is correlated with it (embargoed).
Pure: numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntP = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Fold:
    """Sample indices to fit on, and the contiguous test span [test_start, test_stop)."""

    train: IntP
    test_start: int
    test_stop: int

    @property
    def test(self) -> IntP:
        return np.arange(self.test_start, self.test_stop)


def _bounds(samples: int, blocks: int) -> IntP:
    return np.linspace(0, samples, blocks + 1).round().astype(np.int64)


def _check(samples: int, folds: int, horizon: int, embargo: int) -> None:
    if folds < 2 or horizon < 0 or embargo < 0:
        raise ValueError("need at least 2 folds and a non-negative horizon and embargo")
    if samples < (folds + 1) * (horizon + 2):
        raise ValueError(f"{samples} samples are too few for {folds} folds purged by {horizon}")


def walk_forward(samples: int, folds: int, horizon: int, embargo: int = 0) -> list[Fold]:
    """Expanding walk-forward: ``folds + 1`` equal blocks; fold k tests block k and trains on every earlier sample
    except the ``horizon`` before the test block. Nothing after a test block is trained on, so ``embargo`` only
    matters to ``purged_kfold``; it is accepted for one signature."""
    _check(samples, folds, horizon, embargo)
    edges = _bounds(samples, folds + 1)
    return [
        Fold(np.arange(0, max(int(edges[k]) - horizon, 0)), int(edges[k]), int(edges[k + 1]))
        for k in range(1, folds + 1)
    ]


def purged_kfold(samples: int, folds: int, horizon: int, embargo: int) -> list[Fold]:
    """k contiguous test blocks; each trains on every sample outside [start - horizon, stop + embargo)."""
    _check(samples, folds, horizon, embargo)
    edges = _bounds(samples, folds)
    out = []
    for k in range(folds):
        start, stop = int(edges[k]), int(edges[k + 1])
        every = np.arange(samples)
        out.append(Fold(every[(every < start - horizon) | (every >= stop + embargo)], start, stop))
    return out
