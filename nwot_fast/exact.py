"""Exact singularity of integer matrices: the ``-inf`` rule of ``hook_logdet`` decided exactly.

K of ``hook_logdet`` is an integer matrix, so "K is singular" is a yes/no fact, not a matter
of rounding. A floating LU cannot tell it: MKL's ``slogdet`` returns -34.03 for
``[[2, 1, 3], [2, 1, 3], [0, 5, 1]]`` and -997.5 for an 8 x 8 matrix of 49s on AVX-512 Xeons.
Every path (this module for the pure path and the pure-PyTorch fallbacks of
:mod:`nwot_fast.ops`; ``csrc/exact_det.h`` for the compiled CPU and CUDA operators) decides it
with the same algorithm:

1. A zero row or two identical rows: singular.
2. Primes: the largest primes below 2**31 in decreasing order (2147483647, 2147483629, ...),
   found by trial division (:func:`primes`).
3. det K mod p by Gaussian elimination modulo p in int64 (entries reduced to [0, p), products
   below 2**62). A nonzero residue proves det K != 0: nonsingular, stop.
4. Otherwise the next prime, until the primes used hold more than ``H + MARGIN_BITS`` bits,
   ``H = sum_i 0.5 log2(sum_j K_ij**2)`` the Hadamard bound (``|det K| <= 2**H``) in float64.
   det K = 0 modulo all of them, whose product exceeds ``|det K|``, means det K = 0 (Chinese
   remainder theorem): singular.

The decision is exact for integer matrices (``|K_ij| < 2**63``): any int64 K, and a float64 K
whose entries are all integers. A float64 K with another entry (a fraction, NaN, inf) is
:data:`NOT_INTEGER`; the caller keeps the floating rule (``-inf`` at an exactly zero LU pivot).

Only a K proven nonsingular gets its ``log|det|`` from the floating LU. If that LU still meets
an exactly zero pivot (cancellation, possible for very ill-conditioned integer matrices),
:func:`logabsdet` does not return ``-inf`` for a nonsingular K: it computes det K exactly with
fraction-free (Bareiss) elimination in Python integers and returns its log. (The compiled
operators use a double-double LU there instead; the decision, -inf or not, is the same.)
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

NONSINGULAR, SINGULAR, NOT_INTEGER = 0, 1, 2
# 1 bit so that the prime product exceeds |det K| with room, the rest for rounding of H
# (the same margin as csrc/exact_det.h's kMarginBits).
MARGIN_BITS = 10.0
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


def _integer_matrix(K: np.ndarray):
    """K as int64 if every entry is an integer of magnitude below 2**63, else None."""
    if K.dtype.kind in "iu":
        return K.astype(np.int64, copy=False)
    if K.dtype.kind != "f":
        return None
    if not np.all(np.isfinite(K)) or np.any(np.abs(K) >= 2.0 ** 63) or np.any(K != np.trunc(K)):
        return None
    return K.astype(np.int64)


def _det_is_zero_mod(K: np.ndarray, p: int) -> bool:
    """det K == 0 (mod p) by Gaussian elimination over the integers modulo the prime p < 2**31."""
    M = K % p  # in [0, p) (numpy's % takes the sign of the divisor)
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
    """:data:`NONSINGULAR`, :data:`SINGULAR` or :data:`NOT_INTEGER` for the square matrix K
    (a NumPy array or anything ``np.asarray`` takes). See the module docstring."""
    K = np.asarray(K)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square 2-D matrix, got shape {K.shape}")
    n = K.shape[0]
    if n == 0:
        return NONSINGULAR
    Ki = _integer_matrix(K)
    if Ki is None:
        return NOT_INTEGER
    # 1. A zero row, or two identical rows.
    if np.any(np.all(Ki == 0, axis=1)) or len(np.unique(Ki, axis=0)) < n:
        return SINGULAR
    # 2.-4. det K modulo the primes, until their product exceeds 2**(H + margin).
    Kf = Ki.astype(np.float64)
    needed = float(np.sum(0.5 * np.log2(np.sum(Kf * Kf, axis=1)))) + MARGIN_BITS
    count = int(math.ceil(needed / 30.99)) + 1  # every prime here exceeds 2**30.99
    bits = 0.0
    for p in primes(count):
        if bits > needed:
            break
        if not _det_is_zero_mod(Ki, int(p)):
            return NONSINGULAR
        bits += math.log2(int(p))
    return SINGULAR


def exact_logabsdet(K) -> float:
    """``log|det K|`` of an integer matrix, exact up to the final logarithm: fraction-free
    (Bareiss) elimination in Python integers (O(n**3) big-integer operations: slow, for the
    rare nonsingular K whose floating LU fails). ``-inf`` if det K = 0."""
    Ki = _integer_matrix(np.asarray(K))
    if Ki is None:
        raise ValueError("exact_logabsdet needs an integer matrix (int64, or float64 with integer entries)")
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
    return math.log(det) if det else -math.inf


def logabsdet(K, floating: Callable[[np.ndarray], float]) -> float:
    """``log|det K|`` (sign ignored) with ``-inf`` exactly when K is singular.

    ``floating(K64)`` gives the floating ``log|det|`` of the float64 matrix (the path's own
    LU: ``np.linalg.slogdet`` on the pure path, ``torch.linalg.slogdet`` in the fallbacks); it
    is called only when K is not proven singular. A K proven nonsingular whose floating LU
    says ``-inf`` (or NaN) gets :func:`exact_logabsdet`. A non-integer K keeps the floating
    value."""
    K = np.asarray(K)
    status = singularity(K)
    if status == SINGULAR:
        return -math.inf
    value = float(floating(K.astype(np.float64, copy=False)))
    if status == NONSINGULAR and not math.isfinite(value):
        return exact_logabsdet(K)
    return value
