"""The CUDA operators on the cases a review found no other test reaches (issue 11), each
against the compiled CPU operators or the pure-PyTorch fallback: more than 32 code words,
several workspace chunks, fewer features than samples, more architectures than a grid or an
eigensolver batch takes, exact singularity, special float values, non-contiguous and
channels-last inputs, the older eigensolver path, bitwise repeatability and a side stream
that must not synchronise. bench/gpu_check.py runs them on the device (``-k cuda``); every
test here skips without a CUDA build of the operators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nwot_fast import _ext, ops
from test_ops_degenerate import TRAP, jacob_cov_atol

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.available("cuda")),
    reason="needs a CUDA device and the CUDA build of nwot_fast._C",
)

CUDA = "cuda"


@pytest.fixture
def g() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def rand_codes(g, A, B, W):
    codes = torch.randint(-2**62, 2**62, (A, B, W), generator=g)
    mult = torch.randint(1, 3, (A, W), generator=g)
    units = 64 * mult.sum(dim=1)
    return codes, mult, units


def on_cuda(tensors):
    return tuple(t.to(CUDA) for t in tensors)


def assert_same_class_and_close(got, want, rtol):
    """NaN and -inf exactly where `want` has them; finite values within rtol."""
    got, want = np.asarray(got.cpu()), np.asarray(want.cpu())
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=0)


def assert_jacob_cov_close(got, want, J):
    """Within the rounding bound of jacob_cov_atol (rank-deficient J amplifies it)."""
    got, want = np.asarray(got.cpu()), np.asarray(want.cpu())
    assert np.array_equal(np.isnan(got), np.isnan(want))
    atol = jacob_cov_atol(J)
    finite = np.isfinite(want)
    assert np.all(np.abs(got[finite] - want[finite]) <= atol[finite]), (got, want, atol)


@pytest.mark.parametrize("W", [33, 64, 300, 2000])
def test_cuda_many_code_words(g, W):
    """W > 32: several shared-memory tiles of words in the popcount kernel."""
    c = rand_codes(g, 2, 40, W)
    assert torch.equal(ops.hamming_kernel(*on_cuda(c)).cpu(), ops.hamming_kernel_fallback(*c))
    assert_same_class_and_close(ops.hook_logdet_score(*on_cuda(c)), ops.hook_logdet_score(*c), 1e-9)


def test_cuda_jacob_cov_several_chunks(g):
    """200 x 128 x 8192 float64 is 1.6 GiB of workspace: more than one 1 GiB chunk."""
    J = torch.randn(200, 128, 8192, generator=g)
    assert_jacob_cov_close(ops.jacob_cov_score(J.to(CUDA)), ops.jacob_cov_score(J), J)


def test_cuda_jacob_cov_fewer_features_than_samples(g):
    """D = 16 < B = 64: 48 zero eigenvalues, where rounding is amplified ~1e10."""
    J = torch.randn(5, 64, 16, generator=g, dtype=torch.float64)
    assert_jacob_cov_close(ops.jacob_cov_score(J.to(CUDA)), ops.jacob_cov_score(J), J)


def test_cuda_more_architectures_than_a_grid_or_solver_batch(g):
    """A = 70000 > 65535: the popcount kernel's grid z and the eigensolver's batch limit."""
    A = 70000
    c = rand_codes(g, A, 4, 1)
    assert_same_class_and_close(ops.hook_logdet_score(*on_cuda(c)), ops.hook_logdet_score(*c), 1e-9)
    assert torch.equal(ops.hamming_kernel(*on_cuda(c)).cpu(), ops.hamming_kernel(*c))
    J = torch.randn(A, 4, 3, generator=g, dtype=torch.float64)
    assert_jacob_cov_close(ops.jacob_cov_score(J.to(CUDA)), ops.jacob_cov_score(J), J)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_cuda_exact_singularity(g, dtype):
    """Identical code rows, matrices where float LU misleads, det divisible by the first
    prime, the cancelled pivot of the GPU's LU (issue 20): -inf exactly for det = 0."""
    c = rand_codes(g, 3, 20, 5)
    c[0][1, 7] = c[0][1, 3]
    s = ops.hook_logdet_score(*on_cuda(c)).cpu()
    assert s[1] == -math.inf and bool(torch.isfinite(s[[0, 2]]).all()), s
    p = 2147483647
    mats = [[[2, 1, 3], [2, 1, 3], [0, 5, 1]], [[49] * 3] * 3, [[1, 2, 3], [4, 5, 6], [5, 7, 9]],
            [[p, 1, 0], [0, 1, 0], [3, 0, 1]], [TRAP[0] + [0], TRAP[1] + [0], [0, 0, 1]]]
    s = ops.logdet_score(torch.tensor(mats, dtype=dtype, device=CUDA)).cpu().tolist()
    assert s[:3] == [-math.inf] * 3, s
    assert abs(s[3] - math.log(p)) < 1e-9 and abs(s[4]) < 1e-12, s


def test_cuda_pack_codes_special_values():
    """The code is x > 0: signed zeros, subnormals, infinities and NaN as on the CPU."""
    tiny = torch.finfo(torch.float32).tiny
    values = [0.0, -0.0, tiny / 4, -tiny / 4, tiny, math.inf, -math.inf, math.nan, 1e-38, -1e-38, 1.0, -1.0]
    x = torch.tensor(values * 6, dtype=torch.float32).reshape(2, -1)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        xt = x.to(dtype)
        assert torch.equal(ops.pack_codes(xt.to(CUDA)).cpu(), ops.pack_codes_fallback(xt)), dtype


def test_cuda_non_contiguous_channels_last_and_float64(g):
    x = torch.randn(16, 8, 6, 6, generator=g) - 0.1
    xd = x.to(CUDA)
    want = ops.pack_codes(x)
    assert torch.equal(ops.pack_codes(xd.contiguous(memory_format=torch.channels_last)).cpu(), want)
    assert torch.equal(ops.pack_codes(xd[:, ::2]).cpu(), ops.pack_codes(x[:, ::2]))
    assert torch.equal(ops.pack_codes(xd.double()).cpu(), want)
    J = torch.randn(3, 40, 10, generator=g)
    Jt = J.to(CUDA).transpose(1, 2).contiguous().transpose(1, 2)
    assert not Jt.is_contiguous()
    assert_jacob_cov_close(ops.jacob_cov_score(Jt), ops.jacob_cov_score(J), J)
    assert_jacob_cov_close(ops.jacob_cov_score(J.double().to(CUDA)), ops.jacob_cov_score(J.double()), J)
    c = rand_codes(g, 2, 10, 6)
    wide = torch.stack([c[0], torch.zeros_like(c[0])], dim=3).flatten(2)[:, :, ::2]  # c[0], every other word
    assert not wide.is_contiguous()
    got = ops.hamming_kernel(wide.to(CUDA), c[1].to(CUDA), c[2].to(CUDA)).cpu()
    assert torch.equal(got, ops.hamming_kernel(*c))
    pool = ops.avg_pool3x3(xd.contiguous(memory_format=torch.channels_last).double())
    assert torch.equal(pool.cpu(), torch.nn.functional.avg_pool2d(x.double(), 3, 1, 1, count_include_pad=False))


def test_cuda_older_eigensolver_path(g, monkeypatch):
    """NWOT_FORCE_SYEVJ (read per call): syevjBatched for n <= 32, syevd per matrix above."""
    J16 = torch.randn(4, 16, 50, generator=g, dtype=torch.float64)
    J40 = torch.randn(4, 40, 50, generator=g, dtype=torch.float64)
    normal = [ops.jacob_cov_score(J.to(CUDA)) for J in (J16, J40)]
    monkeypatch.setenv("NWOT_FORCE_SYEVJ", "1")
    forced = [ops.jacob_cov_score(J.to(CUDA)) for J in (J16, J40)]
    for J, a, b in zip((J16, J40), forced, normal):
        assert_jacob_cov_close(a, b, J)


def _calls(g):
    J = torch.randn(6, 32, 300, generator=g).to(CUDA)
    c = on_cuda(rand_codes(g, 6, 32, 40))
    K = ops.hamming_kernel(*c)
    x = torch.randn(32, 16, 8, 8, generator=g).to(CUDA)
    return {"jacob_cov_score": lambda: ops.jacob_cov_score(J), "pack_codes": lambda: ops.pack_codes(x),
            "hamming_kernel": lambda: ops.hamming_kernel(*c), "logdet_score": lambda: ops.logdet_score(K),
            "logdet_score_float64": lambda: ops.logdet_score(K.double()),
            "hook_logdet_score": lambda: ops.hook_logdet_score(*c), "avg_pool3x3": lambda: ops.avg_pool3x3(x)}


def test_cuda_each_op_twice_bitwise_equal(g):
    calls = _calls(g)
    first = {k: f() for k, f in calls.items()}
    for k, f in calls.items():
        assert torch.equal(f(), first[k]), k


def test_cuda_side_stream_without_synchronisation(g):
    """Every op on a side stream under set_sync_debug_mode("error"): no host synchronisation,
    and the same results as on the default stream."""
    calls = _calls(g)
    first = {k: f() for k, f in calls.items()}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda.set_sync_debug_mode("error")
        try:
            on_side = {k: f() for k, f in calls.items()}
        finally:
            torch.cuda.set_sync_debug_mode(0)
    side.synchronize()
    for k in calls:
        assert torch.equal(on_side[k], first[k]), k
