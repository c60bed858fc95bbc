"""Rank correlations of scores with accuracies: Kendall's tau-b and Spearman's rho.

The statistics are ``scipy.stats.kendalltau`` (tau-b) and ``scipy.stats.spearmanr``. The
wrappers add what this package needs on top: non-finite values are refused (filter them first:
:func:`finite_pairs` does that and says how many it dropped), because silently dropping or
ranking NaN would change the statistic without a trace; a constant input or fewer than two
pairs give NaN without scipy's warnings. :func:`correlations` correlates one score against
every accuracy column of an NB201 accuracy table, leaving out (and counting) degenerate scores.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ._common import ACCURACY_KEYS, AccuracyKey

__all__ = ["kendall_tau", "spearman_rho", "finite_pairs", "correlations"]


def _as_pair(x, y) -> Tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"x and y must be 1-D sequences, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(
            "x and y must be finite (no NaN or infinity); drop those pairs first, e.g. with finite_pairs()"
        )
    return x, y


def finite_pairs(x, y) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x[keep], y[keep], keep)`` where ``keep`` marks the pairs in which both values are finite."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep], keep


def _rank_statistic(name: str, x, y) -> float:
    import scipy.stats

    x, y = _as_pair(x, y)
    if x.shape[0] < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")  # undefined; scipy would say so with a warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stat = scipy.stats.kendalltau(x, y).statistic if name == "kendall" else scipy.stats.spearmanr(x, y).statistic
    return float(np.clip(stat, -1.0, 1.0))


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties in x and in y accounted for)."""
    return _rank_statistic("kendall", x, y)


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson correlation of the average ranks."""
    return _rank_statistic("spearman", x, y)


def correlations(indices, scores, table, keys: Optional[Sequence[AccuracyKey]] = None) -> List[dict]:
    """Kendall tau-b and Spearman rho of ``scores`` against each accuracy column of ``table``
    (an :class:`nwot_fast.accuracies.AccuracyTable`) that it holds. Pairs with a non-finite
    score or a missing accuracy are left out; ``n`` says how many pairs were used."""
    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if indices.shape != scores.shape:
        raise ValueError(f"indices and scores must have the same length, got {indices.shape} and {scores.shape}")
    wanted = keys if keys is not None else [k for k in ACCURACY_KEYS if k in table.splits]
    out = []
    for dataset, split in wanted:
        s, a, _ = finite_pairs(scores, table.column(dataset, split)[indices])
        out.append({
            "dataset": dataset,
            "split": split,
            "n": int(s.size),
            "kendall_tau": kendall_tau(s, a),  # NaN below 2 pairs
            "spearman_rho": spearman_rho(s, a),
        })
    return out
