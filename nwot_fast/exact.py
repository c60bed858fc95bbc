"""Exact singularity: the ``-inf`` rule of ``hook_logdet`` decided exactly.

K of ``hook_logdet`` is an integer matrix, so "K is singular" is a yes/no fact, not a matter
of rounding. A floating LU cannot tell it: MKL's ``slogdet`` returns -34.03 for
``[[2, 1, 3], [2, 1, 3], [0, 5, 1]]`` and -997.5 for an 8 x 8 matrix of 49s on AVX-512 Xeons,
and whether a cancelled pivot comes out as exactly zero depends on the arithmetic (fused
multiply-add or not; issue 20). Every path (this module for the pure path and the
pure-PyTorch fallbacks of :mod:`nwot_fast.ops`; ``csrc/exact_det.h`` for the compiled CPU and
CUDA operators) decides it with the same algorithm, on the integer view of K: each row scaled
by the least power of two that makes its entries integers (no scaling for an integer K; the
determinant scales by a power of two, so it is zero exactly when det K is):

1. A zero row or two identical rows: singular.
2. Primes: the largest primes below 2**31 in decreasing order (2147483647, 2147483629, ...),
   found by trial division (:func:`primes`).
3. det mod p by Gaussian elimination modulo p in int64 (entries reduced to [0, p), products
   below 2**62). A nonzero residue proves det K != 0: nonsingular, stop.
4. Otherwise the next prime, until the primes used hold more than ``H + MARGIN_BITS`` bits,
   ``H = sum_i log2 ||row_i||`` the Hadamard bound of the integer view. Zero modulo all of them,
   whose product exceeds ``|det|``, means det K = 0 (Chinese remainder theorem): singular.

The decision is exact for every finite matrix (int64, or float64 of any entries). A K with a
NaN or infinite entry is :data:`NOT_FINITE`: its score is NaN.

Only a K proven nonsingular gets its ``log|det|`` from the floating LU, and only if that LU's
error bound keeps the contract (:func:`lu_logabsdet`: a pivot from cancellation fails it, in
either arithmetic). Otherwise :func:`logabsdet` computes det K exactly with fraction-free
(Bareiss) elimination in Python integers and returns its log. (The compiled operators apply
the same bound and compute det exactly from its residues modulo primes; the decision, -inf or
not, and the score within the contract are the same.)
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import numpy as np

NONSINGULAR, SINGULAR, NOT_FINITE = 0, 1, 2
# 1 bit so that the prime product exceeds |det K| with room, the rest for rounding of H
# (the same margin as csrc/exact_det.h's kMarginBits).
MARGIN_BITS = 10.0
# The float64 LU's error bound (csrc/exact_det.h's kUnitRoundoff, kLuTolerance): the largest
# accepted first-order bound on log|det|, relative to max(1, |log|det||).
UNIT_ROUNDOFF = 2.0**-53
LU_TOLERANCE = 1e-11
_TOP = (1 << 31) - 1
_primes = np.empty(0, dtype=np.int64)  # the list found so far; grows, never changes


def _small_primes(limit: int) -> np.ndarray:
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for d in range(2, int(limit ** 0.5) + 1):
        if sieve[d]:
            sieve[d * d :: d] = False
    return np.flatnonzero(sieve).astype(np.int64)


def primes(count: int) -> np.ndarray:
    """The ``count`` largest primes below 2**31, in decreasing order (trial division by every
    prime up to sqrt(2**31), a block of candidates at a time)."""
    global _primes
    if count > len(_primes):
        divisors = _small_primes(46341)  # 46341**2 > 2**31
        found = list(_primes)
        top = int(_primes[-1]) - 2 if len(_primes) else _TOP
        while len(found) < count:
            candidates = np.arange(top, top - 2 * 4096, -2, dtype=np.int64)  # odd numbers
            composite = np.zeros(len(candidates), dtype=bool)
            for chunk in np.array_split(divisors, 8):
                composite |= (candidates[:, None] % chunk[None, :] == 0).any(axis=1)
            found.extend(int(c) for c in candidates[~composite])
            top = int(candidates[-1]) - 2
        _primes = np.array(found[: max(count, len(_primes))], dtype=np.int64)
    return _primes[:count].copy()


def _integer_view(K: np.ndarray):
    """``(M, shifts)``: row i of M is row i of K times ``2**shifts[i]``, the least power of two
    that makes it integer (0 for integer rows); int64 when the entries fit, else an object
    array of Python ints. None if K has a NaN or infinite entry."""
    if K.dtype.kind in "iub":
        return K.astype(np.int64, copy=False), [0] * len(K)
    if K.dtype.kind != "f":
        raise TypeError(f"K must be an integer or floating-point matrix, got dtype {K.dtype}")
    K = K.astype(np.float64, copy=False)
    if not np.all(np.isfinite(K)):
        return None
    if np.all(K == np.trunc(K)) and np.all(np.abs(K) < 2.0 ** 63):
        return K.astype(np.int64), [0] * len(K)
    rows, shifts = [], []
    for row in K:
        ratios = [float(x).as_integer_ratio() for x in row]  # exact; denominators are powers of 2
        shift = max(d.bit_length() - 1 for _, d in ratios)
        rows.append([num << (shift - (d.bit_length() - 1)) for num, d in ratios])
        shifts.append(shift)
    return np.array(rows, dtype=object), shifts


def _det_is_zero_mod(K: np.ndarray, p: int) -> bool:
    """det K == 0 (mod p) by Gaussian elimination over the integers modulo the prime p < 2**31."""
    M = (K % p).astype(np.int64)  # in [0, p) (% takes the sign of the divisor; also Python ints)
    n = len(M)
    for k in range(n):
        nonzero = np.flatnonzero(M[k:, k])
        if nonzero.size == 0:
            return True
        piv = k + int(nonzero[0])
        if piv != k:
            M[[k, piv], k:] = M[[piv, k], k:]
        inverse = pow(int(M[k, k]), -1, p)
        factor = (p - (M[k + 1 :, k] * inverse) % p) % p  # -M[i, k] / M[k, k]; products < 2**62
        # entries < p and factor * entry < p**2 < 2**62: the sum stays below 2**63
        M[k + 1 :, k + 1 :] = (M[k + 1 :, k + 1 :] + np.multiply.outer(factor, M[k, k + 1 :])) % p
    return False


def singularity(K) -> int:
    """:data:`NONSINGULAR`, :data:`SINGULAR` or :data:`NOT_FINITE` for the square matrix K
    (a NumPy array or anything ``np.asarray`` takes). See the module docstring."""
    K = np.asarray(K)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square 2-D matrix, got shape {K.shape}")
    n = K.shape[0]
    if n == 0:
        return NONSINGULAR
    view = _integer_view(K)
    if view is None:
        return NOT_FINITE
    M, _ = view
    # 1. A zero row, or two identical rows.
    if np.any(np.all(M == 0, axis=1)) or len(np.unique(K, axis=0)) < n:
        return SINGULAR
    # 2.-4. det modulo the primes, until their product exceeds 2**(H + margin).
    if M.dtype == object:
        hadamard = sum(0.5 * math.log2(sum(x * x for x in row)) for row in M)
    else:
        Mf = M.astype(np.float64)
        hadamard = float(np.sum(0.5 * np.log2(np.sum(Mf * Mf, axis=1))))
    needed = hadamard + MARGIN_BITS
    count = int(math.ceil(needed / 30.99)) + 1  # every prime here exceeds 2**30.99
    bits = 0.0
    for p in primes(count):
        if bits > needed:
            break
        if not _det_is_zero_mod(M, int(p)):
            return NONSINGULAR
        bits += math.log2(int(p))
    return SINGULAR


def exact_logabsdet(K) -> float:
    """``log|det K|`` of a finite matrix, exact up to the final logarithm: fraction-free
    (Bareiss) elimination of its integer view in Python integers (O(n**3) big-integer
    operations: slow, for the rare nonsingular K whose floating LU fails). ``-inf`` if det K = 0."""
    view = _integer_view(np.asarray(K))
    if view is None:
        raise ValueError("exact_logabsdet needs a finite matrix (no NaN or infinite entry)")
    Ki, shifts = view
    n = len(Ki)
    M = Ki.astype(object)
    previous = 1
    for k in range(n - 1):
        if M[k, k] == 0:
            below = [i for i in range(k + 1, n) if M[i, k] != 0]
            if not below:
                return -math.inf
            M[[k, below[0]]] = M[[below[0], k]]
        M[k + 1 :, k + 1 :] = (M[k + 1 :, k + 1 :] * M[k, k] - np.multiply.outer(M[k + 1 :, k], M[k, k + 1 :])) // previous
        M[k + 1 :, k] = 0
        previous = M[k, k]
    det = abs(int(M[n - 1, n - 1])) if n else 1
    return math.log(det) - sum(shifts) * math.log(2.0) if det else -math.inf


def lu_logabsdet(factors) -> Tuple[float, bool]:
    """``(log|det|, trusted)`` from float64 LU factors with partial pivoting (L's multipliers
    below the diagonal, U on and above it, in one n x n array, as LAPACK's getrf leaves them),
    by the rule of ``csrc/exact_det.h``: trusted when ``(n + 1) u sum_k (|L||U|)_kk / |u_kk|``,
    the first-order effect of the LU's backward error on each pivot (it holds with and without
    fused multiply-add), is within :data:`LU_TOLERANCE` of ``max(1, |log|det||)``. A zero, NaN or
    infinite pivot is never trusted."""
    F = np.asarray(factors, dtype=np.float64)
    d = np.abs(np.diag(F))
    if not np.all((d > 0) & np.isfinite(d)):
        return math.nan, False
    m = d + np.einsum("kj,jk->k", np.abs(np.tril(F, -1)), np.abs(np.triu(F, 1)))
    logdet = float(np.sum(np.log(d)))
    bound = (len(d) + 1) * UNIT_ROUNDOFF * float(np.sum(m / d))
    return logdet, bool(bound <= LU_TOLERANCE * max(1.0, abs(logdet)))  # False for a NaN bound


def logabsdet(K, lu: Callable[[np.ndarray], np.ndarray]) -> float:
    """``log|det K|`` (sign ignored) with ``-inf`` exactly when K is singular, NaN when K has a
    NaN or infinite entry.

    ``lu(K64)`` gives the path's own float64 LU factors of the float64 matrix (as
    :func:`lu_logabsdet` reads them: scipy's LAPACK getrf on the pure path,
    ``torch.linalg.lu_factor_ex`` in the fallbacks); it is called only when K is proven
    nonsingular. Their log|det| is taken when their error bound keeps the contract; otherwise (a
    pivot from cancellation, exactly zero or not depending on the arithmetic: issue 20)
    :func:`exact_logabsdet` gives the value, as the compiled operators do."""
    K = np.asarray(K)
    status = singularity(K)
    if status == NOT_FINITE:
        return math.nan
    if status == SINGULAR:
        return -math.inf
    value, trusted = lu_logabsdet(lu(K.astype(np.float64, copy=False)))
    return value if trusted else exact_logabsdet(K)
