"""The exact singularity decision (nwot_fast.exact) and the -inf rule of every Python path:
the pure path (reference.logdet_score) and the pure-PyTorch fallbacks of nwot_fast.ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nwot_fast import exact, ops, reference

P0 = 2147483647  # 2**31 - 1, the first prime of the list


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def _unimodular_mix(M: np.ndarray, seed: int) -> np.ndarray:
    """M after seeded integer row and column additions (determinant unchanged), with small
    multipliers so that the entries stay far below 2**53."""
    rng = np.random.default_rng(seed)
    M = M.astype(np.int64).copy()
    n = len(M)
    for _ in range(2 * n):
        i, j = rng.choice(n, size=2, replace=False)
        M[i] += int(rng.choice([-1, 1])) * M[j]
        i, j = rng.choice(n, size=2, replace=False)
        M[:, i] += int(rng.choice([-1, 1])) * M[:, j]
    return M


def _singular_without_equal_rows(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(3)
    M = rng.integers(-50, 51, size=(n, n))
    M[3] = M[1] + M[2]
    return M


def _det_multiple_of_first_prime(n: int = 6) -> np.ndarray:
    return _unimodular_mix(np.diag([P0] + [1] * (n - 1)), seed=5)


MATRICES = {
    # MKL's slogdet: -34.03 and -997.5 on AVX-512 Xeons (issue 9)
    "identical_rows": (np.array([[2, 1, 3], [2, 1, 3], [0, 5, 1]]), -math.inf),
    "all_49": (np.full((8, 8), 49), -math.inf),
    "zero_row": (np.array([[1, 2, 3], [0, 0, 0], [4, 5, 7]]), -math.inf),
    "row3_is_row1_plus_row2": (_singular_without_equal_rows(), -math.inf),
    "det_2147483647": (_det_multiple_of_first_prime(), math.log(P0)),
    "det_minus_1_zero_float_pivot": (np.array([[3, 2**53 - 1], [1, 3002399751580330]]), 0.0),
}


def test_primes_are_the_largest_below_2_31_in_decreasing_order():
    p = exact.primes(12)
    assert list(p[:3]) == [2147483647, 2147483629, 2147483587]
    assert all(_is_prime(int(q)) for q in p)
    assert all(not _is_prime(m) for m in range(int(p[-1]) + 1, 2**31) if m not in set(int(q) for q in p))
    assert list(exact.primes(5)) == list(p[:5])  # the cached list is the same list


@pytest.mark.parametrize("name", list(MATRICES))
def test_singularity_decision(name):
    K, want = MATRICES[name]
    status = exact.singularity(K)
    assert status == (exact.SINGULAR if want == -math.inf else exact.NONSINGULAR)
    assert exact.singularity(K.astype(np.float64)) == status  # float64 with integer entries


def test_det_multiple_of_the_first_prime_needs_the_second():
    K, _ = MATRICES["det_2147483647"]
    assert exact.exact_logabsdet(K) == pytest.approx(math.log(P0), rel=1e-15)
    assert np.count_nonzero(K % P0) > len(K)  # not just diag(P0, 1, ...) in disguise
    assert exact._det_is_zero_mod(K, P0)
    assert not exact._det_is_zero_mod(K, 2147483629)


def _paths():
    """Every Python implementation of log|det K| with the -inf rule, as K -> float."""
    return {
        "reference": lambda K: reference.logdet_score(K),
        "reference_float64": lambda K: reference.logdet_score(K.astype(np.float64)),
        "fallback_int64": lambda K: float(ops.logdet_score_fallback(torch.from_numpy(K.astype(np.int64))[None])[0]),
        "fallback_float64": lambda K: float(ops.logdet_score_fallback(torch.from_numpy(K.astype(np.float64))[None])[0]),
    }


@pytest.mark.parametrize("path", list(_paths()))
@pytest.mark.parametrize("name", list(MATRICES))
def test_logdet_is_minus_inf_exactly_for_singular_matrices_on_every_python_path(path, name):
    K, want = MATRICES[name]
    got = _paths()[path](K)
    if want == -math.inf:
        assert got == -math.inf
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_fallback_batch_mixes_singular_and_nonsingular():
    good = np.array([[5, 1, 0], [1, 4, 2], [0, 2, 6]])
    rank_two = np.array([[1, 2, 3], [4, 5, 6], [5, 7, 9]])
    K = torch.from_numpy(np.stack([good, MATRICES["identical_rows"][0], -good, rank_two]))
    got = ops.logdet_score_fallback(K).tolist()
    assert got[1] == got[3] == -math.inf
    assert got[0] == pytest.approx(math.log(abs(np.linalg.det(good))), rel=1e-12)
    assert got[2] == got[0]


def test_hook_logdet_fallback_singular_codes_without_equal_rows():
    """All 64 patterns of 6 bits, with multiplicities: the 64 rows of K differ, but
    K = (units 1 1^T + S diag(m) S^T) / 2 (S the +-1 codes) has rank at most 7."""
    B = 64
    bits = ((torch.arange(B)[:, None] >> torch.arange(6)) & 1).to(torch.float32)
    codes, mult, units = ops.pack_layers([bits[:, :3], bits[:, 3:]], [3, 7])
    K = ops.hamming_kernel_fallback(codes, mult, units)[0].numpy()
    assert len(np.unique(K, axis=0)) == B and not np.any(np.all(K == 0, axis=1))
    assert exact.singularity(K) == exact.SINGULAR
    assert float(ops.hook_logdet_score_fallback(codes, mult, units)[0]) == -math.inf
    assert reference.logdet_score(K) == -math.inf


def test_non_integer_and_non_finite_matrices():
    """A float64 K of fractions is decided exactly on its integer view (rows scaled by powers of
    two); a NaN or infinite entry scores NaN."""
    K = np.array([[0.5, 1.0], [1.0, 2.0]])  # det 0
    assert exact.singularity(K) == exact.SINGULAR
    assert reference.logdet_score(K) == -math.inf
    K2 = np.array([[0.5, 1.0], [1.0, 3.0]])
    assert exact.singularity(K2) == exact.NONSINGULAR
    assert reference.logdet_score(K2) == pytest.approx(math.log(0.5), rel=1e-12)
    assert exact.exact_logabsdet(K2) == pytest.approx(math.log(0.5), rel=1e-15)
    assert exact.singularity(np.array([[0.1, 0.2], [0.3, 0.6]])) == exact.SINGULAR  # fl(0.2) = 2 fl(0.1) ...
    assert exact.singularity(np.array([[1e-300, 1.0], [1.0, 1e300]])) == exact.NONSINGULAR
    assert exact.singularity(np.array([[2.0**63, 1.0], [1.0, 2.0]])) == exact.NONSINGULAR  # beyond int64
    assert exact.singularity(np.array([[2.0**63, 2.0**64], [1.0, 2.0]])) == exact.SINGULAR
    for bad in (np.nan, np.inf):
        K3 = np.array([[bad, 1.0], [1.0, 2.0]])
        assert exact.singularity(K3) == exact.NOT_FINITE
        assert math.isnan(reference.logdet_score(K3))


def test_proven_nonsingular_never_gets_minus_inf():
    K = _unimodular_mix(np.diag([3, 1, 1, 1, 1]), seed=9)
    assert exact.logabsdet(K, lambda K64: np.zeros_like(K64)) == pytest.approx(math.log(3), rel=1e-12)
    assert exact.logabsdet(K, lambda K64: np.full_like(K64, np.nan)) == pytest.approx(math.log(3), rel=1e-12)
    # a singular K never reaches the floating LU
    assert exact.logabsdet(MATRICES["all_49"][0], lambda _: pytest.fail("LU called")) == -math.inf


def test_lu_error_bound_rejects_a_cancelled_pivot_in_either_arithmetic():
    """The LU factors of [[3, 2**53 - 1], [1, 3002399751580330]] (det -1): the second pivot is 0
    when products are rounded, -1/6 with fused multiply-add (log|det| -0.693); both untrusted.
    A well-conditioned LU is trusted, and its value is the sum of log|u_kk|."""
    l = 1.0 / 3.0
    for pivot in (0.0, -0.16666666666666669):
        value, trusted = exact.lu_logabsdet(np.array([[3.0, 2.0**53 - 1], [l, pivot]]))
        assert not trusted
    value, trusted = exact.lu_logabsdet(np.array([[4.0, 1.0], [0.25, 2.75]]))
    assert trusted and value == pytest.approx(math.log(11.0), rel=1e-15)
    assert exact.lu_logabsdet(np.array([[np.inf, 1.0], [0.0, 1.0]]))[1] is False


def test_exact_logabsdet_against_numpy():
    rng = np.random.default_rng(11)
    M = rng.integers(0, 100, size=(40, 40))
    K = M @ M.T
    assert exact.exact_logabsdet(K) == pytest.approx(float(np.linalg.slogdet(K)[1]), rel=1e-10)
    assert exact.exact_logabsdet(_singular_without_equal_rows()) == -math.inf
    assert exact.exact_logabsdet(np.array([[0.5]])) == pytest.approx(math.log(0.5), rel=1e-15)
    with pytest.raises(ValueError, match="finite matrix"):
        exact.exact_logabsdet(np.array([[np.nan]]))


def test_empty_and_bad_shapes():
    assert exact.singularity(np.zeros((0, 0))) == exact.NONSINGULAR
    assert reference.logdet_score(np.zeros((0, 0))) == 0.0
    with pytest.raises(ValueError, match="square"):
        exact.singularity(np.zeros((2, 3)))
