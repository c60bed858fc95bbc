"""Empty and degenerate inputs of the compiled operators: the documented NaN / -inf per
architecture, without disturbing the other architectures of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nwot_fast import _ext, ops, reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    if not _ext.available(request.param):
        pytest.skip(f"nwot_fast._C has no {request.param} backend here: {_ext.backend_info()['reason']}")
    return request.param


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
