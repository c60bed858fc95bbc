"""Empty and degenerate inputs of the compiled operators: the documented NaN / -inf per
architecture, without disturbing the other architectures of the batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nwot_fast import _ext, ops, reference

@pytest.fixture
def device(device):
    """conftest's device (CPU, CUDA where present), skipped where the compiled extension does not serve it."""
    if not _ext.available(device):
        pytest.skip(f"nwot_fast._C has no {device} backend here: {_ext.backend_info()['reason']}")
    return device


@pytest.fixture(params=["compiled", "fallback"])
def impl(request, device):
    """The public operator (compiled here) or the pure-PyTorch fallback."""
    if request.param == "compiled":
        return ops
    if device != "cpu":
        pytest.skip("the fallback is checked on the CPU")

    class Fallback:
        jacob_cov_score = staticmethod(ops.jacob_cov_score_fallback)
        logdet_score = staticmethod(ops.logdet_score_fallback)
        hook_logdet_score = staticmethod(ops.hook_logdet_score_fallback)
        hamming_kernel = staticmethod(ops.hamming_kernel_fallback)

    return Fallback


def jacobians(A=4, B=16, D=300, seed=0):
    return torch.randn(A, B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def jacobian_variant(kind: str, J: torch.Tensor) -> torch.Tensor:
    J = J.clone()
    if kind == "zero_row":
        J[3] = 0.0  # silently also covers an arch whose output ignores the input
        J[1, 5] = 0.0
    elif kind == "constant_row":
        J[1, 0] = -2.5
    elif kind == "identical_rows":
        J[1, 7] = J[1, 2]
    elif kind == "rank_one":
        J[1] = torch.linspace(-2, 3, J.shape[1], dtype=J.dtype).unsqueeze(1) * J[1, 0]
        J[1, J.shape[1] // 2 - 1 : J.shape[1] // 2 + 1] = J[1, 0]  # no all-zero row
    return J


@pytest.mark.parametrize("kind,expect", [("zero_row", "nan"), ("constant_row", "nan"),
                                         ("identical_rows", "finite"), ("rank_one", "finite")])
def test_jacob_cov_degenerate_architecture_only(device, impl, kind, expect):
    J = jacobian_variant(kind, jacobians())
    got = impl.jacob_cov_score(J.to(device)).cpu().numpy()
    want = np.array([reference.jacob_cov_from_jacobian(J[a]) for a in range(J.shape[0])])
    assert np.isnan(got[1]) == (expect == "nan")
    assert np.array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-9, atol=0)
    # The other architectures get the scores they get alone (BLAS may thread differently for
    # one architecture than for a batch, hence rounding-level tolerance).
    for a in (0, 2):
        alone = impl.jacob_cov_score(J[a : a + 1].to(device)).cpu().numpy()[0]
        np.testing.assert_allclose(got[a], alone, rtol=1e-12)


def test_jacob_cov_no_architectures(device):
    out = ops.jacob_cov_score(torch.zeros(0, 4, 10, device=device))
    assert out.shape == (0,) and out.dtype == torch.float64


def codes_batch(B=32, seed=0):
    """Three architectures; the middle one is replaced by each degenerate case."""
    g = torch.Generator().manual_seed(seed)
    layers = lambda: [torch.rand(B, 3, 10, 10, generator=g) - 0.5, torch.rand(B, 70, generator=g) - 0.5]
    return [ops.pack_layers(layers(), [2, 1]) for _ in range(3)]


def degenerate_codes(kind: str, B=32):
    items = codes_batch(B)
    codes, mult, units = items[1]
    codes = codes.clone()
    if kind == "all_zero":  # every ReLU sees only zeros: K = units * ones, rank 1
        codes.zero_()
    elif kind == "all_equal":
        codes[:] = codes[:, :1]
    elif kind == "identical_rows":
        codes[:, 9] = codes[:, 4]
    items[1] = (codes, mult, units)
    return ops.stack_codes(items)


@pytest.mark.parametrize("kind", ["all_zero", "all_equal", "identical_rows"])
def test_hook_logdet_singular_is_minus_inf_for_that_architecture_only(device, impl, kind):
    codes, mult, units = (t.to(device) for t in degenerate_codes(kind))
    got = impl.hook_logdet_score(codes, mult, units).cpu().numpy()
    K = impl.hamming_kernel(codes, mult, units).cpu()
    want = np.array([reference.logdet_score(K[a].numpy()) for a in range(3)])
    assert got[1] == -np.inf
    assert want[1] == -np.inf
    np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-9, atol=0)
    for a in (0, 2):
        alone = impl.hook_logdet_score(codes[a : a + 1], mult[a : a + 1], units[a : a + 1]).cpu().numpy()[0]
        assert got[a] == alone
    via_k = impl.logdet_score(K.to(device)).cpu().numpy()
    assert via_k[1] == -np.inf


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_logdet_singular_matrices(device, impl, dtype):
    good = torch.tensor([[5, 1, 0], [1, 4, 2], [0, 2, 6]], dtype=dtype)
    K = torch.stack([
        good,
        torch.full((3, 3), 7, dtype=dtype),  # rank 1, all equal
        torch.zeros(3, 3, dtype=dtype),
        torch.tensor([[2, 1, 3], [2, 1, 3], [0, 5, 1]], dtype=dtype),  # identical rows
        -good,  # negative determinant: the sign is ignored
    ]).to(device)
    got = impl.logdet_score(K).cpu().numpy()
    assert list(got[1:4]) == [-np.inf] * 3
    np.testing.assert_allclose(got[[0, 4]], [np.log(abs(np.linalg.det(good.double().numpy())))] * 2, rtol=1e-12)


def test_logdet_no_architectures_and_empty_matrices(device):
    assert ops.logdet_score(torch.zeros(0, 3, 3, dtype=torch.int64, device=device)).shape == (0,)
    # det of a 0 x 0 matrix is 1, as numpy says
    assert ops.logdet_score(torch.zeros(2, 0, 0, dtype=torch.float64, device=device)).tolist() == [0.0, 0.0]


def test_hamming_kernel_zero_multiplicity_words_are_ignored(device):
    codes, mult, units = codes_batch(8)[0]
    noisy = torch.cat([codes, torch.randint(-2**62, 2**62, (1, 8, 3))], dim=2)
    mult0 = torch.cat([mult, torch.zeros(1, 3, dtype=torch.int64)], dim=1)
    K1 = ops.hamming_kernel(codes.to(device), mult.to(device), units.to(device))
    K2 = ops.hamming_kernel(noisy.to(device), mult0.to(device), units.to(device))
    assert torch.equal(K1, K2)
    assert torch.equal(torch.diagonal(K1[0]).cpu(), units.expand(8))


# ---------------------------------------------------------------------------------------------
# -inf decided exactly (issue 9): the compiled operators against an exact integer determinant
# (Bareiss elimination with Python integers), on matrices where float LU is known to mislead.

P31 = 2147483647  # the first prime of the exact decision (csrc/exact_det.h)


def exact_det(rows) -> int:
    """det of an integer matrix by fraction-free Bareiss elimination (exact Python ints)."""
    m = [list(map(int, r)) for r in rows]
    n, sign, prev = len(m), 1, 1
    for k in range(n - 1):
        if m[k][k] == 0:
            swap = next((i for i in range(k + 1, n) if m[i][k] != 0), None)
            if swap is None:
                return 0
            m[k], m[swap] = m[swap], m[k]
            sign = -sign
        for i in range(k + 1, n):
            for j in range(k + 1, n):
                m[i][j] = (m[i][j] * m[k][k] - m[i][k] * m[k][j]) // prev
        prev = m[k][k]
    return sign * m[n - 1][n - 1] if n else 1


def unimodular_mix(M: np.ndarray, seed: int, steps: int = 40) -> np.ndarray:
    """Integer row operations (row_i += c * row_j): the determinant does not change."""
    rng = np.random.default_rng(seed)
    M = M.astype(object).copy()
    n = M.shape[0]
    for _ in range(steps):
        i, j = rng.choice(n, 2, replace=False)
        M[i] = M[i] + int(rng.integers(-3, 4)) * M[j]
    return M.astype(np.int64)


def singular_cases():
    rng = np.random.default_rng(3)
    cases = {
        "mkl_identical_rows": np.array([[2, 1, 3], [2, 1, 3], [0, 5, 1]]),  # MKL slogdet: -34.03
        "all_49": np.full((8, 8), 49),  # MKL slogdet: -997.5
    }
    a = rng.integers(-9, 10, (6, 6))
    a[3] = a[0] + a[1]  # rank-deficient, no identical or zero row
    cases["row3_is_row0_plus_row1"] = a
    b = rng.integers(0, 200_000, (40, 40))
    b[17] = 3 * b[2] - 2 * b[30] + b[5]  # large entries, as hook_logdet's K
    cases["large_combination"] = b
    low = rng.integers(-5, 6, (24, 5)) @ rng.integers(-5, 6, (5, 24))  # rank 5
    cases["rank_5_of_24"] = low
    return cases


def nonsingular_cases():
    cases = {}
    d = np.eye(5, dtype=np.int64)
    d[0, 0] = P31  # det = 2^31 - 1: zero modulo the first prime, nonsingular
    cases["det_is_first_prime"] = unimodular_mix(d, seed=1)
    e = np.eye(6, dtype=np.int64)
    e[0, 0], e[1, 1] = P31, 2147483629  # det divisible by the first two primes
    cases["det_is_two_primes"] = unimodular_mix(e, seed=2)
    f = np.eye(4, dtype=np.int64)
    f[2, 2] = 5 * P31
    cases["det_is_5p"] = unimodular_mix(f, seed=4)
    rng = np.random.default_rng(5)
    cases["random_12"] = rng.integers(-50, 51, (12, 12))
    return cases


def _compiled_only(device):
    if not _ext.available(device):
        pytest.skip(f"nwot_fast._C has no {device} backend here")


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("name", sorted(singular_cases()))
def test_logdet_exactly_singular_is_minus_inf(device, dtype, name):
    _compiled_only(device)
    M = singular_cases()[name]
    assert exact_det(M.tolist()) == 0
    good = np.diag(np.arange(1, M.shape[0] + 1))  # the neighbours in the batch stay finite
    K = torch.tensor(np.stack([good, M, good]), dtype=dtype, device=device)
    got = ops.logdet_score(K).cpu().numpy()
    assert got[1] == -np.inf
    np.testing.assert_allclose(got[[0, 2]], [math.log(math.factorial(M.shape[0]))] * 2, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
@pytest.mark.parametrize("name", sorted(nonsingular_cases()))
def test_logdet_nonsingular_divisible_by_the_primes_is_finite(device, dtype, name):
    _compiled_only(device)
    M = nonsingular_cases()[name]
    det = exact_det(M.tolist())
    assert det != 0
    K = torch.tensor(M, dtype=dtype, device=device).unsqueeze(0)
    got = float(ops.logdet_score(K)[0])
    assert math.isfinite(got)
    # float64 LU of a unimodular mix loses a few digits: compare loosely with the exact value.
    assert abs(got - math.log(abs(det))) < 1e-6 * max(1.0, math.log(abs(det)))


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_logdet_nonsingular_with_a_zero_float_pivot(device, dtype):
    """det = -1, but float64 LU cancels to an exact zero pivot: fl(fl(1/3) (2^53 - 1)) =
    3002399751580330. The operator must not say -inf (double-double LU fallback)."""
    _compiled_only(device)
    M = [[3, 2**53 - 1], [1, 3002399751580330]]
    assert exact_det(M) == -1
    lu_pivot = float(M[1][1]) - (1.0 / 3.0) * float(M[0][1])
    assert lu_pivot == 0.0  # the trap is real on any IEEE machine
    got = float(ops.logdet_score(torch.tensor([M], dtype=dtype, device=device))[0])
    assert abs(got) < 1e-12  # log|-1|


def test_logdet_non_integer_float_matrix_keeps_the_floating_rule(device):
    _compiled_only(device)
    K = torch.tensor([[[0.5, 0.25], [1.0, 0.5]], [[0.5, 0.25], [1.0, 0.75]]], dtype=torch.float64, device=device)
    got = ops.logdet_score(K).cpu().numpy()
    assert got[0] == -np.inf  # an exactly zero pivot (0.5 - 0.5 * 0.5)
    np.testing.assert_allclose(got[1], math.log(0.125), rtol=1e-12)


def test_logdet_exact_decision_random_sweep(device):
    """Random integer matrices, half made singular by integer row combinations, against the
    exact determinant: -inf exactly for det == 0."""
    _compiled_only(device)
    rng = np.random.default_rng(11)
    n = 10
    mats = []
    for k in range(24):
        M = rng.integers(-(10 ** (k % 6)), 10 ** (k % 6) + 1, (n, n))
        if k % 2:
            r = rng.choice(n, 3, replace=False)
            M[r[0]] = int(rng.integers(-4, 5)) * M[r[1]] + int(rng.integers(1, 5)) * M[r[2]]
        mats.append(M)
    got = ops.logdet_score(torch.tensor(np.stack(mats), device=device)).cpu().numpy()
    for M, g in zip(mats, got):
        det = exact_det(M.tolist())
        if det == 0:
            assert g == -np.inf
        else:
            assert math.isfinite(g) and abs(g - math.log(abs(det))) < 1e-8 * max(1.0, math.log(abs(det)))


def test_hook_logdet_identical_codes_rows_minus_inf_large_batch(device):
    """Two samples with identical codes among 130 (a K bigger than one CUDA tile)."""
    _compiled_only(device)
    codes, mult, units = degenerate_codes("identical_rows", B=130)
    got = ops.hook_logdet_score(codes.to(device), mult.to(device), units.to(device)).cpu().numpy()
    assert got[1] == -np.inf and np.isfinite(got[[0, 2]]).all()


def test_jacob_cov_non_finite_entry_is_nan_for_that_architecture(device):
    """The one rule on CPU and CUDA: a NaN or infinite entry in J[a] makes S[a] NaN."""
    _compiled_only(device)
    J = jacobians(A=4, B=8, D=30)
    J[1, 2, 3] = float("nan")
    J[2, 0, 0] = float("inf")
    got = ops.jacob_cov_score(J.to(device)).cpu().numpy()
    assert np.isnan(got[1]) and np.isnan(got[2]) and np.isfinite(got[[0, 3]]).all()
    alone = ops.jacob_cov_score(J[[0, 3]].to(device)).cpu().numpy()
    np.testing.assert_allclose(got[[0, 3]], alone, rtol=1e-12)
