"""Empty and degenerate inputs of the compiled operators: the documented NaN / -inf per
architecture, without disturbing the other architectures of the batch. The log-determinant
decisions run under both arithmetics the operators meet: the CPU build's (every product
rounded) and the GPU's (fused multiply-add), the latter on the CPU through
NWOT_CPU_ARITHMETIC=fused (issue 20)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from nwot_fast import _ext, ops, reference
from nwot_fast._common import EIG_EPS

UNIT_ROUNDOFF = 2.0**-53


@pytest.fixture
def device(device):
    """conftest's device (CPU, CUDA where present), skipped where the compiled extension does not serve it."""
    if not _ext.available(device):
        pytest.skip(f"nwot_fast._C has no {device} backend here: {_ext.backend_info()['reason']}")
    return device


class Fallback:
    """The pure-PyTorch fallbacks under the operators' names."""

    jacob_cov_score = staticmethod(ops.jacob_cov_score_fallback)
    logdet_score = staticmethod(ops.logdet_score_fallback)
    hook_logdet_score = staticmethod(ops.hook_logdet_score_fallback)
    hamming_kernel = staticmethod(ops.hamming_kernel_fallback)


@pytest.fixture(params=["compiled", "fallback"])
def impl(request, device):
    """The public operator (compiled here) or the pure-PyTorch fallback."""
    if request.param == "compiled":
        return ops
    if device != "cpu":
        pytest.skip("the fallback is checked on the CPU")
    return Fallback


def _set_arithmetic(device: str, name: str, monkeypatch) -> None:
    if device != "cpu" and name == "unfused":
        pytest.skip("the GPU's arithmetic is fused")
    monkeypatch.setenv("NWOT_CPU_ARITHMETIC", name)


@pytest.fixture(params=["unfused", "fused"])
def arithmetic(request, device, monkeypatch):
    """The arithmetic of the compiled CPU operators' LU and decisions (NWOT_CPU_ARITHMETIC):
    each product rounded (the CPU build's) or fused multiply-add (the GPU's). CUDA runs fused."""
    _set_arithmetic(device, request.param, monkeypatch)
    return request.param


@pytest.fixture(params=["compiled-unfused", "compiled-fused", "fallback"])
def logdet_impl(request, device, monkeypatch):
    """The compiled operators in each arithmetic, or the pure-PyTorch fallback (CPU only)."""
    if request.param == "fallback":
        if device != "cpu":
            pytest.skip("the fallback is checked on the CPU")
        return Fallback
    _set_arithmetic(device, request.param.split("-")[1], monkeypatch)
    return ops


def jacob_cov_atol(J: torch.Tensor) -> np.ndarray:
    """Absolute tolerances [A] for jacob_cov scores of J [A, B, D] computed in float64 by two
    implementations: twice the first-order effect of float64 rounding on each,
    ``sum_i |S'(l_i)| dl + B u sum_i |term_i|``. S'(l) = 1/(l+eps) - 1/(l+eps)**2 at the
    eigenvalues l_i of the correlation matrix G; dl = (D + 2 B) B u bounds how far rounding
    moves an eigenvalue (Weyl: ||dG||_2 <= B max|dG_ij|; an entry of G, a D-term dot product of
    unit rows, is off by at most ~D u; a backward-stable eigensolver adds ~2 B u ||G||_2, and
    ||G||_2 <= B). An eigenvalue near 0 (rank-deficient J: D < B, equal or proportional rows)
    makes |S'| ~ 1/eps**2 = 1e10: the tolerance grows by that amplification and no more, and
    stays ~1e-11 relative for a full-rank J. NaN where the score is undefined (a constant or
    non-finite row)."""
    X = J.detach().cpu().to(torch.float64).numpy()
    X = X - X.mean(axis=2, keepdims=True)
    norm = np.linalg.norm(X, axis=2, keepdims=True)
    undefined = ~np.all(np.isfinite(norm) & (norm > 0), axis=(1, 2))  # the NaN-score archs
    X = X / np.where(norm > 0, norm, 1.0)
    G = np.nan_to_num(np.clip(X @ X.transpose(0, 2, 1), -1.0, 1.0))
    v = np.linalg.eigvalsh(G) + EIG_EPS
    _, B, D = J.shape
    sensitivity = np.abs(1.0 / v - 1.0 / v**2).sum(axis=1)
    terms = np.abs(np.log(v) + 1.0 / v).sum(axis=1)
    atol = 2.0 * (sensitivity * (D + 2 * B) * B + B * terms) * UNIT_ROUNDOFF
    return np.where(undefined, np.nan, atol)


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
    # rank_one and identical_rows put eigenvalues at 0, where rounding is amplified ~1e10.
    atol = jacob_cov_atol(J)
    assert np.all(np.abs(got[finite] - want[finite]) <= atol[finite]), (got, want, atol)
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
def test_hook_logdet_singular_is_minus_inf_for_that_architecture_only(device, logdet_impl, kind):
    impl = logdet_impl
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
def test_logdet_singular_matrices(device, logdet_impl, dtype):
    impl = logdet_impl
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
def test_logdet_exactly_singular_is_minus_inf(device, arithmetic, dtype, name):
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
def test_logdet_nonsingular_divisible_by_the_primes_is_finite(device, arithmetic, dtype, name):
    _compiled_only(device)
    M = nonsingular_cases()[name]
    det = exact_det(M.tolist())
    assert det != 0
    K = torch.tensor(M, dtype=dtype, device=device).unsqueeze(0)
    got = float(ops.logdet_score(K)[0])
    assert math.isfinite(got)
    # float64 LU of a unimodular mix loses a few digits: compare loosely with the exact value.
    assert abs(got - math.log(abs(det))) < 1e-6 * max(1.0, math.log(abs(det)))


TRAP = [[3, 2**53 - 1], [1, 3002399751580330]]  # det -1


def lu_second_pivot(M, fused: bool) -> float:
    """The second pivot of float64 LU with partial pivoting of the 2 x 2 M: a22 - l a12 with
    l = fl(a21 / a11) after the swap, the product rounded first (unfused) or not (fused: the
    exact value rounded once, by rational arithmetic)."""
    (a, b), (c, d) = [[float(x) for x in row] for row in M]
    if abs(c) > abs(a):
        (a, b), (c, d) = (c, d), (a, b)
    l = c / a
    return float(Fraction(d) - Fraction(l) * Fraction(b)) if fused else d - l * b


@pytest.mark.parametrize("view", ["K", "K^T"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_logdet_nonsingular_with_a_cancelled_float_pivot(device, arithmetic, dtype, view):
    """det = -1, but float64 LU cancels its second pivot: to exactly 0 when each product is
    rounded (the CPU build), to 7.4e-17 or -1/6 with fused multiply-add (the GPU: cuBLAS factors
    the column-major view K^T), where log|det| would come out as -0.405 or -0.693. Neither
    arithmetic may answer -inf or a wrong value: the LU's error bound sends both to the exact
    determinant."""
    _compiled_only(device)
    M = TRAP if view == "K" else [list(r) for r in zip(*TRAP)]
    assert exact_det(M) == -1
    assert lu_second_pivot(M, fused=False) == (0.0 if view == "K" else 1.1102230246251565e-16)
    first_pivot = max(abs(M[0][0]), abs(M[1][0]))
    fused_logdet = math.log(first_pivot * abs(lu_second_pivot(M, fused=True)))
    assert fused_logdet == pytest.approx(-0.693 if view == "K" else -0.405, abs=1e-3)  # the GPU's trap
    got = float(ops.logdet_score(torch.tensor([M], dtype=dtype, device=device))[0])
    assert abs(got) < 1e-12  # log|-1|


def ill_conditioned_cases(count=12, seed=21):
    """Integer matrices with a small determinant and entries up to ~1e14 (below 2**53): D
    mixed by integer row and column operations with large multipliers. Their float64 LU
    cancels: LAPACK's log|det| is off by far more than the contract for most of them."""
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(count):
        n = 3 + k % 6
        diag = [int(v) for v in rng.integers(1, 7, n)]
        diag[0] *= -1 if k % 2 else 1
        M = [[diag[i] if i == j else 0 for j in range(n)] for i in range(n)]
        for _ in range(4 * n):
            i, j = (int(v) for v in rng.choice(n, 2, replace=False))
            f = int(rng.integers(-900, 901))
            if k % 2:
                trial = [row[:] for row in M]
                for r in trial:
                    r[i] += f * r[j]
            else:
                trial = [row[:] for row in M]
                trial[i] = [x + f * y for x, y in zip(trial[i], trial[j])]
            if max(abs(x) for row in trial for x in row) < 2**47:
                M = trial
        cases.append(M)
    return cases


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_logdet_ill_conditioned_nonsingular_matches_the_exact_determinant(device, arithmetic, dtype):
    """Where the float64 LU cannot keep the contract, the operators compute log|det| exactly
    from det modulo primes (CRT): right to 1e-12 under both arithmetics."""
    _compiled_only(device)
    mats = ill_conditioned_cases()
    dets = [exact_det(M) for M in mats]
    assert all(d != 0 for d in dets)
    lapack_errors = [abs(float(np.linalg.slogdet(np.array(M, dtype=np.float64))[1]) - math.log(abs(d)))
                     for M, d in zip(mats, dets)]
    assert sum(e > 1e-6 or not math.isfinite(e) for e in lapack_errors) >= len(mats) // 2  # the LU alone fails
    for M, det in zip(mats, dets):
        got = float(ops.logdet_score(torch.tensor([M], dtype=dtype, device=device))[0])
        assert abs(got - math.log(abs(det))) < 1e-12 * max(1.0, math.log(abs(det))), (M, det, got)


def test_logdet_non_integer_float_matrix_decided_exactly(device, arithmetic):
    """A float64 K of fractions is decided on its integer view (rows scaled by powers of two),
    exactly as an integer K: no test of a rounded pivot against zero."""
    _compiled_only(device)
    tiny, huge = 1e-300, 1e300
    scaled = [[x * 2.0**-60 for x in row] for row in TRAP]  # det -2**-120, a cancelled pivot
    K = torch.tensor([
        [[0.5, 0.25], [1.0, 0.5]],  # singular
        [[0.5, 0.25], [1.0, 0.75]],  # det 1/8
        [[0.1, 0.2], [0.3, 0.6]],  # singular in binary too: fl(0.2) = 2 fl(0.1), fl(0.6) = 2 fl(0.3)
        scaled,
        [[tiny, 1.0], [1.0, huge]],  # rows spanning 2**-1049 .. 2**996
    ], dtype=torch.float64, device=device)
    got = ops.logdet_score(K).cpu().numpy()
    assert got[0] == -np.inf and got[2] == -np.inf
    np.testing.assert_allclose(got[1], math.log(0.125), rtol=1e-14)
    np.testing.assert_allclose(got[3], -120 * math.log(2.0), rtol=1e-14)
    det = Fraction(tiny) * Fraction(huge) - 1  # exact: not zero, and tiny
    assert det != 0
    want = math.log(abs(det.numerator)) - math.log(det.denominator)
    np.testing.assert_allclose(got[4], want, rtol=1e-12)


def test_logdet_non_finite_entry_is_nan(device, arithmetic):
    _compiled_only(device)
    K = torch.tensor([[[math.nan, 1.0], [1.0, 2.0]], [[math.inf, 1.0], [1.0, 2.0]], [[2.0, 1.0], [1.0, 2.0]]],
                     dtype=torch.float64, device=device)
    got = ops.logdet_score(K).cpu().numpy()
    assert np.isnan(got[0]) and np.isnan(got[1])
    np.testing.assert_allclose(got[2], math.log(3.0), rtol=1e-15)


def test_logdet_exact_decision_random_sweep(device, arithmetic):
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


def test_hook_logdet_identical_codes_rows_minus_inf_large_batch(device, arithmetic):
    """Two samples with identical codes among 130 (a K bigger than one CUDA tile)."""
    _compiled_only(device)
    codes, mult, units = degenerate_codes("identical_rows", B=130)
    got = ops.hook_logdet_score(codes.to(device), mult.to(device), units.to(device)).cpu().numpy()
    assert got[1] == -np.inf and np.isfinite(got[[0, 2]]).all()


def test_cpu_arithmetic_switch_is_real(monkeypatch):
    """NWOT_CPU_ARITHMETIC=fused changes the rounding of the CPU LU (so the tests above run two
    arithmetics, not one twice), within the LU's accuracy; another value is refused by name."""
    _compiled_only("cpu")
    K = torch.randn(8, 48, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    runs = {}
    for name in ("unfused", "fused"):
        monkeypatch.setenv("NWOT_CPU_ARITHMETIC", name)
        runs[name] = ops.logdet_score(K).numpy()
    assert not np.array_equal(runs["unfused"], runs["fused"])
    np.testing.assert_allclose(runs["fused"], runs["unfused"], rtol=1e-12)
    monkeypatch.setenv("NWOT_CPU_ARITHMETIC", "fast")
    with pytest.raises(RuntimeError, match="NWOT_CPU_ARITHMETIC must be 'fused' or 'unfused', got 'fast'"):
        ops.logdet_score(K)


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
