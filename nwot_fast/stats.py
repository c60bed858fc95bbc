"""Rank correlations in NumPy only: Kendall's tau-b and Spearman's rho.

The library keeps its dependency list to torch and numpy, so these are written here rather
than taken from scipy; the tests check them against ``scipy.stats`` on random data with and
without ties.

Both functions take two equally long 1-D sequences of finite numbers. Non-finite values are
refused (filter them first: :func:`finite_pairs` does that and says how many it dropped),
because silently dropping or ranking NaN would change the statistic without a trace.
A constant input (all values tied) has no defined rank correlation: the result is NaN, as in
scipy. Fewer than two pairs also give NaN.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["kendall_tau", "spearman_rho", "rankdata", "finite_pairs"]


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


def rankdata(a) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (scipy's ``method='average'``)."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # start of each run of equal values in sorted order
    new_run = np.empty(n, dtype=bool)
    if n:
        new_run[0] = True
        new_run[1:] = sorted_a[1:] != sorted_a[:-1]
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)  # exclusive
    mean_rank = (run_start + run_end + 1) / 2.0  # mean of (start+1 .. end)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def _tie_pairs(sorted_values: np.ndarray) -> int:
    """Number of tied pairs, sum over groups of t(t-1)/2, in an already sorted array."""
    if sorted_values.shape[0] == 0:
        return 0
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    sizes = np.diff(np.concatenate(([0], boundaries, [sorted_values.shape[0]])))
    return int(np.sum(sizes * (sizes - 1) // 2))


def _count_inversions(values: np.ndarray) -> int:
    """Pairs i < j with ``values[i] > values[j]`` (strictly), by a bottom-up merge sort.

    Each level merges neighbouring sorted blocks of width w; the inversions between a left and
    a right block are, for every element r of the right block, the number of left elements
    greater than r. All blocks of a level are handled at once by shifting each pair of blocks
    into its own value range, so that one ``searchsorted`` serves them all. O(n log^2 n).
    """
    # dense integer codes 0..m-1 keep the shifted values exact
    _, codes = np.unique(values, return_inverse=True)
    codes = codes.astype(np.int64).reshape(-1)
    n = codes.shape[0]
    if n < 2:
        return 0
    size = 1 << int(np.ceil(np.log2(n)))
    pad = int(codes.max()) + 1  # larger than every real value, sits at the end: adds no inversion
    a = np.full(size, pad, dtype=np.int64)
    a[:n] = codes
    span = pad + 1  # each pair of blocks gets its own range [p*span, p*span + pad]
    inversions = 0
    width = 1
    while width < size:
        pairs = size // (2 * width)
        blocks = a.reshape(pairs, 2, width)
        offset = (np.arange(pairs, dtype=np.int64) * span)[:, None]
        left = (blocks[:, 0, :] + offset).reshape(-1)  # globally sorted
        right = blocks[:, 1, :] + offset
        left_end = (np.arange(pairs, dtype=np.int64) + 1) * width
        not_greater = np.searchsorted(left, right.reshape(-1), side="right").reshape(pairs, width)
        inversions += int(np.sum(left_end[:, None] - not_greater))
        a = np.sort(blocks.reshape(pairs, 2 * width), axis=1).reshape(-1)
        width *= 2
    return inversions


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties in x and in y accounted for), in O(n log^2 n)."""
    x, y = _as_pair(x, y)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    order = np.lexsort((y, x))  # by x, then y
    xs, ys = x[order], y[order]
    total = n * (n - 1) // 2
    ties_x = _tie_pairs(xs)
    # pairs tied in both: runs of equal (x, y) in this order
    same = np.concatenate(([False], (xs[1:] == xs[:-1]) & (ys[1:] == ys[:-1])))
    run_start = np.flatnonzero(~same)
    sizes = np.diff(np.append(run_start, n))
    ties_xy = int(np.sum(sizes * (sizes - 1) // 2))
    ties_y = _tie_pairs(np.sort(ys))
    # Sorted by x then y, a pair with equal x never inverts (y ascends within a run of equal
    # x), so the strict inversions of y are exactly the discordant pairs.
    discordant = _count_inversions(ys)
    concordant_minus_discordant = total - ties_x - ties_y + ties_xy - 2 * discordant
    denom = np.sqrt(float(total - ties_x) * float(total - ties_y))
    if denom == 0:
        return float("nan")
    return float(np.clip(concordant_minus_discordant / denom, -1.0, 1.0))


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson correlation of the average ranks."""
    x, y = _as_pair(x, y)
    if x.shape[0] < 2:
        return float("nan")
    rx = rankdata(x)
    ry = rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt(np.dot(rx, rx) * np.dot(ry, ry))
    if denom == 0:
        return float("nan")
    return float(np.clip(np.dot(rx, ry) / denom, -1.0, 1.0))
