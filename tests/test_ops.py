"""The compiled operators (nwot_fast.ops over torch.ops.nwot_fast.*) against the pure path
(nwot_fast.reference) on fresh random inputs, their fallback, opcheck and argument errors."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from conftest import assert_scores_close
from nwot_fast import _ext, ops, reference

RTOL = 1e-9


def compiled(device: str) -> bool:
    # Through ops: it registers the fake kernels that opcheck needs on first use.
    return ops.compiled(device)


def need_compiled(device: str):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not compiled(device):
        pytest.skip(f"nwot_fast._C has no {device} backend here: {_ext.backend_info()['reason']}")


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_float64_scores(got: torch.Tensor, want, rtol: float = RTOL) -> None:
    """An operator's scores: a float64 tensor, compared with the shared rule of conftest."""
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64, got
    assert_scores_close(got, want, rtol)


# ---------------------------------------------------------------------------------------------
# Input builders (shared with bench/)


def random_jacobians(A: int, B: int, D: int, dtype, seed: int) -> torch.Tensor:
    g = rng(seed)
    # Correlated rows, as real Jacobians are: a shared component plus per-sample noise.
    shared = torch.randn(A, 1, D, generator=g, dtype=torch.float64)
    J = 0.7 * shared + torch.randn(A, B, D, generator=g, dtype=torch.float64)
    return J.to(dtype)


def random_layers(B: int, seed: int, sizes=((3, 5, 5), (40,), (2, 8, 8)), p: float = 0.5):
    """Activations of a few hooked layers (float, ~p positive) with units not multiples of 64."""
    g = rng(seed)
    return [torch.rand((B,) + tuple(s), generator=g) - (1.0 - p) for s in sizes]


def reference_kernel(layers, multiplicities) -> np.ndarray:
    codes = []
    for layer, m in zip(layers, multiplicities):
        codes += [(layer.reshape(layer.shape[0], -1) > 0).numpy()] * m
    return reference.hamming_kernel(codes)


def random_architectures(A: int, B: int, seed: int):
    """A architectures with different layer sizes and multiplicities, as one batch."""
    items, kernels = [], []
    for a in range(A):
        # Enough units (> 2 B) for a full-rank K: a rank-deficient K has a logdet made of rounding.
        sizes = [(1 + (a + k) % 3, 3 + a % 4, 5) for k in range(1 + a % 3)] + [(17 + 11 * a,), (2 * B + 13 * a,)]
        mults = [1 + (a + k) % 2 for k in range(len(sizes))]
        layers = random_layers(B, seed * 100 + a, sizes)
        items.append(ops.pack_layers(layers, mults))
        kernels.append(reference_kernel(layers, mults))
    return ops.stack_codes(items), np.stack(kernels)


# ---------------------------------------------------------------------------------------------
# jacob_cov_score

JACOB_GRID = [
    (A, B, D, dtype)
    for A in (1, 7)
    for B in (2, 16, 128, 256)
    for D in (1, 3072)
    for dtype in (torch.float32, torch.float64)
    if not (A == 7 and B == 256 and D == 3072 and dtype == torch.float64)  # keep the run short
]


@pytest.mark.parametrize("A,B,D,dtype", JACOB_GRID)
def test_jacob_cov_score_matches_reference(device, A, B, D, dtype):
    need_compiled(device)
    J = random_jacobians(A, B, D, dtype, seed=zlib.crc32(repr((A, B, D, str(dtype))).encode()))
    want = [reference.jacob_cov_from_jacobian(J[a]) for a in range(A)]
    got = ops.jacob_cov_score(J.to(device))
    assert got.device.type == device
    assert_float64_scores(got, want)
    if D == 1:  # a single feature per row: every row has zero variance
        assert np.isnan(got.cpu().numpy()).all()


@pytest.mark.parametrize("B,D", [(2, 3072), (16, 1), (16, 3072), (128, 3072)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jacob_cov_score_fallback_matches_reference(B, D, dtype):
    J = random_jacobians(3, B, D, dtype, seed=B + D)
    J[1, B // 2] = 0.25  # a zero-variance row: NaN for architecture 1 only
    want = [reference.jacob_cov_from_jacobian(J[a]) for a in range(3)]
    assert_float64_scores(ops.jacob_cov_score_fallback(J), want)


# ---------------------------------------------------------------------------------------------
# pack_codes


def unpack(codes: torch.Tensor, units: int) -> torch.Tensor:
    bits = (codes.cpu().unsqueeze(-1) >> torch.arange(64)) & 1
    return bits.reshape(codes.shape[0], -1).bool(), units


PACK_SHAPES = [(2, 1), (3, 63), (3, 64), (2, 65), (4, 3, 7, 9), (16, 16, 32, 32), (5, 200)]


@pytest.mark.parametrize("shape", PACK_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bool])
def test_pack_codes_bits(device, shape, dtype):
    need_compiled(device)
    x = torch.randn(shape, generator=rng(len(shape) + shape[-1]))
    x = (x > 0.3) if dtype == torch.bool else x.to(dtype)
    codes = ops.pack_codes(x.to(device))
    units = x[0].numel()
    assert codes.dtype == torch.int64 and tuple(codes.shape) == (shape[0], math.ceil(units / 64))
    bits, _ = unpack(codes, units)
    assert torch.equal(bits[:, :units], x.reshape(shape[0], -1) > 0)
    assert not bits[:, units:].any(), "padding bits must be 0"
    assert torch.equal(ops.pack_codes_fallback(x), codes.cpu())


def test_pack_codes_tiny_positive_values_count_as_positive():
    need_compiled("cpu")
    x = torch.tensor([[1e-300, -1e-300, 0.0, -0.0, 5e-324]], dtype=torch.float64)
    assert ops.pack_codes(x).item() == 0b10001
    assert ops.pack_codes_fallback(x).item() == 0b10001


def test_pack_codes_sign_bit_word():
    need_compiled("cpu")
    x = torch.ones(2, 64)
    assert ops.pack_codes(x).tolist() == [[-1], [-1]]
    assert ops.pack_codes_fallback(x).tolist() == [[-1], [-1]]


# ---------------------------------------------------------------------------------------------
# hamming_kernel, logdet_score, hook_logdet_score


@pytest.mark.parametrize("A", [1, 7])
@pytest.mark.parametrize("B", [2, 16, 128, 256])
def test_hamming_kernel_exact(device, A, B):
    need_compiled(device)
    (codes, mult, units), want = random_architectures(A, B, seed=A * 1000 + B)
    K = ops.hamming_kernel(codes.to(device), mult.to(device), units.to(device))
    assert K.dtype == torch.int64 and tuple(K.shape) == (A, B, B)
    assert np.array_equal(K.cpu().numpy(), want.astype(np.int64))
    assert torch.equal(ops.hamming_kernel_fallback(codes, mult, units), K.cpu())


@pytest.mark.parametrize("A", [1, 7])
@pytest.mark.parametrize("B", [2, 16, 128, 256])
def test_hook_logdet_score_matches_reference(device, A, B):
    need_compiled(device)
    (codes, mult, units), kernels = random_architectures(A, B, seed=A * 7 + B)
    want = [reference.logdet_score(k) for k in kernels]
    assert_float64_scores(ops.hook_logdet_score(codes.to(device), mult.to(device), units.to(device)), want)
    assert_float64_scores(ops.hook_logdet_score_fallback(codes, mult, units), want)


@pytest.mark.parametrize("A", [1, 7])
@pytest.mark.parametrize("B", [2, 16, 128, 256])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_logdet_score_matches_reference(device, A, B, dtype):
    need_compiled(device)
    g = rng(A * 31 + B)
    if dtype == torch.int64:
        c = (torch.rand(A, B, 500, generator=g) > 0.5).to(torch.int64)
        K = c @ c.transpose(1, 2) + (1 - c) @ (1 - c).transpose(1, 2)
    else:  # a general (non-symmetric) matrix: LU with pivoting, sign ignored
        K = torch.randn(A, B, B, generator=g, dtype=torch.float64) * 3.0
    want = [reference.logdet_score(K[a].numpy()) for a in range(A)]
    assert_float64_scores(ops.logdet_score(K.to(device)), want)
    assert_float64_scores(ops.logdet_score_fallback(K), want)


def test_logdet_fallback_survives_set_num_threads():
    # torch's batched CPU LU gives wrong determinants for large batched matrices once
    # torch.set_num_threads has been called (MKL getrf on several pool threads); the fallback
    # must not depend on that, and neither may the compiled operator.
    g = rng(5)
    K = torch.randn(7, 256, 256, generator=g, dtype=torch.float64)
    want = [reference.logdet_score(K[a].numpy()) for a in range(7)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.set_num_threads(max(2, before))
        assert_float64_scores(ops.logdet_score_fallback(K), want)
        if compiled("cpu"):
            assert_float64_scores(ops.logdet_score(K), want)
    finally:
        torch.set_num_threads(before)


def test_pack_layers_counts_units_with_multiplicity():
    layers = random_layers(4, seed=3, sizes=((3, 5, 5), (40,)))
    codes, mult, units = ops.pack_layers(layers, [2, 1])
    assert tuple(codes.shape) == (1, 4, 2 + 1)  # 75 units -> 2 words, 40 units -> 1 word
    assert mult.tolist() == [[2, 2, 1]]
    assert units.tolist() == [2 * 75 + 40]
    K = ops.hamming_kernel(codes, mult, units)[0].numpy()
    assert np.array_equal(K, reference_kernel(layers, [2, 1]))
    assert np.all(np.diag(K) == 2 * 75 + 40)


def test_stack_codes_pads_with_zero_multiplicity():
    a = ops.pack_layers(random_layers(3, seed=1, sizes=((10,),)), [1])
    b = ops.pack_layers(random_layers(3, seed=2, sizes=((200,),)), [3])
    codes, mult, units = ops.stack_codes([a, b])
    assert tuple(codes.shape) == (2, 3, 4) and mult[0].tolist() == [1, 0, 0, 0]
    K = ops.hamming_kernel(codes, mult, units)
    assert torch.equal(K[0], ops.hamming_kernel(*a)[0]) and torch.equal(K[1], ops.hamming_kernel(*b)[0])


# ---------------------------------------------------------------------------------------------
# opcheck


def _opcheck_cases(device):
    J = random_jacobians(3, 8, 40, torch.float64, seed=5).to(device)
    x = torch.randn(4, 3, 5, 5, generator=rng(6)).to(device)
    (codes, mult, units), _ = random_architectures(3, 8, seed=7)
    codes, mult, units = codes.to(device), mult.to(device), units.to(device)
    K = ops.hamming_kernel(codes, mult, units)
    return [
        ("jacob_cov_score", (J,)),
        ("jacob_cov_score", (J.float(),)),
        ("pack_codes", (x,)),
        ("pack_codes", (x.double(),)),
        ("pack_codes", (x[:0],)),  # B = 0: [0, 0], the fake as the kernels
        ("hamming_kernel", (codes, mult, units)),
        ("logdet_score", (K,)),
        ("logdet_score", (K.double(),)),
        ("hook_logdet_score", (codes, mult, units)),
    ]


def test_opcheck_every_operator(device):
    need_compiled(device)
    checked = set()
    for name, args in _opcheck_cases(device):
        torch.library.opcheck(getattr(torch.ops.nwot_fast, name).default, args)
        checked.add(name)
    assert checked == {"jacob_cov_score", "pack_codes", "hamming_kernel", "logdet_score", "hook_logdet_score"}


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_avg_pool3x3(channels_last):
    need_compiled("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 5, 4, generator=rng(8)).contiguous(memory_format=fmt).requires_grad_(True)
    torch.library.opcheck(torch.ops.nwot_fast.avg_pool3x3.default, (x,))
    torch.library.opcheck(torch.ops.nwot_fast.avg_pool3x3_backward.default, (x,))
    xd = x.detach().double().contiguous(memory_format=fmt).requires_grad_(True)
    torch.library.opcheck(torch.ops.nwot_fast.avg_pool3x3.default, (xd,))
    torch.library.opcheck(torch.ops.nwot_fast.avg_pool3x3_backward.default, (xd,))


# ---------------------------------------------------------------------------------------------
# avg_pool3x3: bitwise equal to ATen's NCHW kernels, forward and backward


def _aten_pool(t):
    return torch.nn.functional.avg_pool2d(t, 3, 1, 1, count_include_pad=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(128, 16, 32, 32), (16, 64, 8, 8), (3, 2, 1, 1), (2, 3, 1, 5), (2, 2, 5, 1),
                                   (2, 2, 2, 2), (4, 5, 7, 3), (0, 3, 4, 4)])
def test_avg_pool3x3_bitwise_equals_aten(shape, dtype):
    need_compiled("cpu")
    g = rng(sum(shape))
    x = torch.randn(shape, generator=g, dtype=dtype) * 3.0
    grad = torch.randn(shape, generator=g, dtype=dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = _aten_pool(xa), ops.avg_pool3x3(xb)
    assert torch.equal(ya, yb)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(torch.ops.nwot_fast.avg_pool3x3_backward(grad), xa.grad)


def test_avg_pool3x3_backward_is_the_adjoint_and_differentiable():
    need_compiled("cpu")
    x = torch.randn(2, 2, 4, 5, generator=rng(9))
    u = torch.randn(2, 2, 4, 5, generator=rng(12))
    # <P x, u> == <x, P^T u>
    lhs = (ops.avg_pool3x3(x).double() * u.double()).sum()
    rhs = (x.double() * torch.ops.nwot_fast.avg_pool3x3_backward(u).double()).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-5)
    v = torch.randn(2, 2, 4, 5, generator=rng(10), requires_grad=True)
    back = torch.ops.nwot_fast.avg_pool3x3_backward(v)
    (w,) = torch.autograd.grad(back, v, torch.ones_like(back))
    assert torch.allclose(w, _aten_pool(torch.ones_like(v)))  # adjoint of the adjoint


def test_avg_pool3x3_channel_slice_bitwise_equals_aten():
    # The merged convolutions of the fast path hand out channel slices (non-contiguous views).
    need_compiled("cpu")
    g = rng(13)
    whole = torch.randn(8, 32, 16, 16, generator=g)
    grad = torch.randn(8, 16, 16, 16, generator=g)
    wa, wb = whole.clone().requires_grad_(True), whole.clone().requires_grad_(True)
    ya, yb = _aten_pool(wa[:, 16:]), ops.avg_pool3x3(wb[:, 16:])
    assert not wb[:, 16:].is_contiguous()
    assert torch.equal(ya, yb)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(wa.grad, wb.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(128, 16, 32, 32), (16, 64, 8, 8), (2, 3, 1, 5), (2, 3, 5, 1), (2, 5, 2, 2),
                                   (4, 5, 7, 3), (0, 3, 4, 4)])
def test_avg_pool3x3_channels_last_bitwise_equals_aten(shape, dtype):
    # Runs with the extension absent too (ATen's pooling then).
    g = rng(sum(shape) + 1)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3.0).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = _aten_pool(xa), ops.avg_pool3x3(xb)
    assert torch.equal(ya, yb)
    if 0 not in shape:
        assert yb.is_contiguous(memory_format=torch.channels_last)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(xa.grad, xb.grad)


def test_avg_pool3x3_argument_errors():
    need_compiled("cpu")
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        torch.ops.nwot_fast.avg_pool3x3(torch.zeros(3, 4, 4))
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        torch.ops.nwot_fast.avg_pool3x3(torch.zeros(1, 1, 4, 4, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="grad must be 4-D"):
        torch.ops.nwot_fast.avg_pool3x3_backward(torch.zeros(4, 4))


# ---------------------------------------------------------------------------------------------
# Argument errors name the argument (wrappers: ValueError / TypeError; C++: RuntimeError)

J_OK = torch.randn(2, 4, 6, dtype=torch.float64)
CODES_OK = torch.zeros(2, 4, 3, dtype=torch.int64)
MULT_OK = torch.ones(2, 3, dtype=torch.int64)
UNITS_OK = torch.full((2,), 192, dtype=torch.int64)

BAD_CALLS = [
    ("jacob_cov_score", (J_OK[0],), ValueError, "J must be 3-D [archs, batch, features], got 2-D"),
    ("jacob_cov_score", (J_OK.long(),), TypeError, "J must be float32 or float64, got torch.int64"),
    ("jacob_cov_score", (J_OK[:, :1],), ValueError, "J must have at least 2 samples"),
    ("jacob_cov_score", (J_OK.numpy(),), TypeError, "J must be a torch.Tensor"),
    ("pack_codes", (torch.randn(5),), ValueError, "x must be at least 2-D [batch, units...], got 1-D"),
    ("pack_codes", (torch.ones(2, 3, dtype=torch.int32),), TypeError, "x must be a floating-point or bool tensor"),
    ("hamming_kernel", (CODES_OK[0], MULT_OK, UNITS_OK), ValueError, "codes must be 3-D [archs, batch, words], got 2-D"),
    ("hamming_kernel", (CODES_OK.int(), MULT_OK, UNITS_OK), TypeError, "codes must be int64"),
    ("hamming_kernel", (CODES_OK, MULT_OK[:, :2], UNITS_OK), ValueError, "multiplicity must have shape [archs, words] = [2, 3]"),
    ("hamming_kernel", (CODES_OK, MULT_OK.float(), UNITS_OK), TypeError, "multiplicity must be int64"),
    ("hamming_kernel", (CODES_OK, MULT_OK, UNITS_OK[:1]), ValueError, "units must have shape [archs] = [2]"),
    ("hamming_kernel", (CODES_OK, MULT_OK, UNITS_OK[None]), ValueError, "units must be 1-D [archs], got 2-D"),
    ("hamming_kernel", (CODES_OK, MULT_OK.to("meta"), UNITS_OK), ValueError, "multiplicity must be on the same device as codes"),
    ("hook_logdet_score", (CODES_OK, MULT_OK, UNITS_OK.float()), TypeError, "units must be int64"),
    ("logdet_score", (torch.zeros(3, 3),), ValueError, "K must be 3-D [archs, batch, batch], got 2-D"),
    ("logdet_score", (torch.zeros(2, 3, 4, dtype=torch.int64),), ValueError, "K must be square"),
    ("logdet_score", (torch.zeros(2, 3, 3, dtype=torch.float32),), TypeError, "K must be int64 or float64, got torch.float32"),
]


@pytest.mark.parametrize("name,args,exc,message", BAD_CALLS, ids=[f"{c[0]}-{c[3][:30]}" for c in BAD_CALLS])
def test_wrappers_reject_bad_arguments(name, args, exc, message):
    with pytest.raises(exc, match=re_escape(message)):
        getattr(ops, name)(*args)
    fallback = getattr(ops, name + "_fallback")
    if "device" not in message and "on a CPU" not in message:
        with pytest.raises(exc, match=re_escape(message)):
            fallback(*args)


def test_meta_tensors_get_shapes_from_the_fake_kernels():
    """bench/gpu_cost.py runs the engine on meta tensors: the wrappers give the compiled
    operators' shapes and dtypes there (the fallbacks would need values)."""
    need_compiled("cpu")
    scores = ops.jacob_cov_score(J_OK.to("meta"))
    assert scores.device.type == "meta" and scores.shape == (J_OK.shape[0],) and scores.dtype == torch.float64
    packed = ops.pack_codes(torch.empty(4, 3, 70, device="meta"))
    assert packed.device.type == "meta" and packed.shape == (4, 4) and packed.dtype == torch.int64


CPP_BAD_CALLS = [(n, a, m) for n, a, _, m in BAD_CALLS if all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in a)]


@pytest.mark.parametrize("name,args,message", CPP_BAD_CALLS, ids=[f"{c[0]}-{c[2][:30]}" for c in CPP_BAD_CALLS])
def test_compiled_ops_reject_bad_arguments(name, args, message):
    need_compiled("cpu")
    message = message.replace("torch.int64", "Long").replace("torch.float32", "Float")
    with pytest.raises(RuntimeError, match=re_escape(message)):
        getattr(torch.ops.nwot_fast, name)(*args)


def test_compiled_ops_reject_mixed_devices():
    need_compiled("cpu")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to mix devices")
    with pytest.raises(RuntimeError, match="multiplicity must be on the same device as codes"):
        torch.ops.nwot_fast.hamming_kernel(CODES_OK.cuda(), MULT_OK, UNITS_OK.cuda())


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_operators():
    need_compiled("cuda")
    J = random_jacobians(9, 128, 3072, torch.float32, seed=11)
    J[4, 5] = 1.0
    assert_float64_scores(ops.jacob_cov_score(J.cuda()), ops.jacob_cov_score(J).numpy())
    (codes, mult, units), _ = random_architectures(5, 128, seed=12)
    Kc = ops.hamming_kernel(codes.cuda(), mult.cuda(), units.cuda())
    assert torch.equal(Kc.cpu(), ops.hamming_kernel(codes, mult, units))
    assert_float64_scores(ops.hook_logdet_score(codes.cuda(), mult.cuda(), units.cuda()),
                        ops.hook_logdet_score(codes, mult, units).numpy())


# ---------------------------------------------------------------------------------------------
# batch_norm_train: train-mode BatchNorm without affine, split into dense channels-last parts


def _aten_bn(x):
    return torch.nn.functional.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)


def _bn_input(shape, dtype, seed, channels_last=True):
    g = rng(seed)
    # Per-channel offsets and scales, as after a convolution: the statistics have work to do.
    x = torch.randn(shape, generator=g, dtype=torch.float64) * (0.5 + torch.rand(shape[1], 1, 1, generator=g,
                                                                                dtype=torch.float64))
    x = x + 3.0 * torch.randn(shape[1], 1, 1, generator=g, dtype=torch.float64)
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape, parts", [((16, 32, 8, 8), 2), ((8, 16, 6, 5), 1), ((4, 48, 3, 3), 3), ((2, 64, 1, 2), 2),
                                          ((5, 3, 4, 4), 1), ((2, 7, 1, 1), 7), ((6, 16, 32, 32), 1),
                                          ((3, 12, 9, 11), 3)])
def test_batch_norm_train_matches_float64_aten(shape, parts, dtype, tol, channels_last):
    # Forward and input gradient against ATen's BatchNorm in float64 (the truth); float32 within
    # a few ulps of it. Both layouts: channels-last (loops along the channels) and NCHW (runs of
    # H*W values: NB201's 32x32 planes, planes that are not whole lane blocks). Runs with the
    # extension absent too (ATen's BatchNorm then).
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _bn_input(shape, dtype, sum(shape) + parts, channels_last=channels_last)
    grads = [torch.randn((shape[0], shape[1] // parts) + shape[2:], generator=rng(parts), dtype=dtype)
             .contiguous(memory_format=fmt) for _ in range(parts)]
    xt = x.double().requires_grad_(True)
    want = _aten_bn(xt)
    (want_grad,) = torch.autograd.grad(want, xt, torch.cat([g.double() for g in grads], 1))
    xg = x.clone().requires_grad_(True)
    got = ops.batch_norm_train(xg, parts)
    assert len(got) == parts and all(p.dtype == dtype and p.shape == grads[0].shape for p in got)
    if compiled("cpu"):
        assert all(p.is_contiguous(memory_format=fmt) for p in got)
    (got_grad,) = torch.autograd.grad(got, xg, grads)
    if compiled("cpu"):
        assert got_grad.is_contiguous(memory_format=fmt)
    scale = want.abs().max().item()
    assert (torch.cat(got, 1).double() - want).abs().max().item() <= tol * scale
    # The gradient is a difference of terms of size |grad| * invstd (nearly cancelling when a
    # channel has 2 values): errors scale with them.
    invstd = 1.0 / (xt.detach().var(dim=(0, 2, 3), unbiased=False) + 1e-5).sqrt()
    gscale = max(g.abs().max().item() for g in grads) * invstd.max().item()
    assert (got_grad.double() - want_grad).abs().max().item() <= tol * gscale


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("shape, parts", [((64, 16, 32, 32), 1), ((32, 48, 16, 16), 3), ((64, 7, 32, 32), 1)])
def test_batch_norm_train_float32_forward_rounds_y_once(shape, parts, channels_last):
    # y = (x - mean) * invstd in float64, rounded to float32 once: the error against float64
    # ATen is then about half an ulp per value (measured <= 0.44 eps * max|y|) with little in
    # common per channel (mean error per channel <= 8.1e-8: the float32 partial sums of the
    # statistics). Rounding mean and invstd to float32 first, as the channels-last forward did,
    # gave 0.71-0.89 eps * max|y| and 1.2e-7 - 3.3e-7 per channel here: a shift of every value
    # of a channel alike, which jacob_cov's ill-conditioned correlations amplify. NB201 lane
    # widths (16, 3 x 16) and a run-time width (7); 8k-64k values per channel.
    need_compiled("cpu")
    x = _bn_input(shape, torch.float32, 11, channels_last=channels_last)
    y = torch.cat(ops.batch_norm_train(x, parts), 1).double()
    err = y - _aten_bn(x.double())
    assert err.abs().max().item() <= 0.6 * torch.finfo(torch.float32).eps * y.abs().max().item()
    assert err.mean(dim=(0, 2, 3)).abs().max().item() <= 1e-7


def test_batch_norm_train_reads_any_layout():
    x = _bn_input((4, 32, 5, 6), torch.float64, 3, channels_last=False)
    for t in (x, x.contiguous(memory_format=torch.channels_last), torch.cat([x, x], 1)[:, 16:48]):
        got = ops.batch_norm_train(t, 2)
        assert torch.allclose(torch.cat(got, 1), _aten_bn(t), rtol=0, atol=1e-12)


def test_batch_norm_train_gradcheck():
    x = _bn_input((3, 8, 4, 3), torch.float64, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.batch_norm_train(t, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.batch_norm_train(t, 1), (x,))


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_batch_norm_train_backward_accepts_other_grad_layouts(channels_last):
    need_compiled("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _bn_input((4, 32, 5, 6), torch.float64, 7, channels_last=channels_last)
    ys, invstd = torch.ops.nwot_fast.batch_norm_train(x, 2)
    assert all(y.is_contiguous(memory_format=fmt) for y in ys)
    g = torch.randn((2,) + tuple(ys[0].shape), generator=rng(3), dtype=torch.float64)
    other = torch.contiguous_format if channels_last else torch.channels_last
    # The other layout, and one that is neither (not y's).
    grads = [g[0].contiguous(memory_format=other), g[1].transpose(2, 3).contiguous().transpose(2, 3)]
    xt = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(_aten_bn(xt), xt, torch.cat(grads, 1))
    got = torch.ops.nwot_fast.batch_norm_train_backward(grads, ys, invstd)
    assert got.is_contiguous(memory_format=fmt)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_batch_norm_train_gives_one_tensor_per_part_and_takes_one_gradient_per_part():
    # The parts are separate tensors (no views of one buffer), so autograd hands back one
    # gradient per part and nothing stacks them; a part that gets no gradient counts as zeros.
    need_compiled("cpu")
    x = _bn_input((4, 48, 5, 6), torch.float64, 8)
    ys, invstd = torch.ops.nwot_fast.batch_norm_train(x, 3)
    assert len(ys) == 3 and len({t.untyped_storage().data_ptr() for t in ys}) == 3
    xg = x.clone().requires_grad_(True)
    parts = ops.batch_norm_train(xg, 3)
    g = torch.randn(parts[1].shape, generator=rng(4), dtype=torch.float64)
    (got,) = torch.autograd.grad(parts[1], xg, g)
    xt = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(_aten_bn(xt)[:, 16:32], xt, g)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_batch_norm_train(dtype):
    need_compiled("cpu")
    x = _bn_input((3, 8, 4, 5), dtype, 9).requires_grad_(True)
    torch.library.opcheck(torch.ops.nwot_fast.batch_norm_train.default, (x, 2))
    ys, invstd = torch.ops.nwot_fast.batch_norm_train(x.detach(), 2)
    torch.library.opcheck(torch.ops.nwot_fast.batch_norm_train_backward.default,
                          ([torch.randn_like(y) for y in ys], ys, invstd))


def test_batch_norm_train_argument_errors():
    with pytest.raises(ValueError, match="parts must be a positive int"):
        ops.batch_norm_train(torch.zeros(2, 4, 3, 3), 0)
    with pytest.raises(ValueError, match=r"x channels \(5\) must be divisible by parts \(2\)"):
        ops.batch_norm_train(torch.zeros(2, 5, 3, 3), 2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.batch_norm_train(torch.zeros(1, 4, 1, 1))
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.batch_norm_train(torch.zeros(2, 4, 3))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.batch_norm_train(torch.zeros(2, 4, 3, 3, dtype=torch.float16))
    need_compiled("cpu")
    with pytest.raises(RuntimeError, match=r"x channels \(5\) must be divisible by parts \(2\)"):
        torch.ops.nwot_fast.batch_norm_train(torch.zeros(2, 5, 3, 3), 2)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        torch.ops.nwot_fast.batch_norm_train(torch.zeros(1, 4, 1, 1), 1)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        torch.ops.nwot_fast.batch_norm_train(torch.zeros(2, 4, 3, 3, dtype=torch.float16), 1)
    ys, invstd = torch.ops.nwot_fast.batch_norm_train(torch.randn(2, 4, 3, 3), 2)
    with pytest.raises(RuntimeError, match=r"grad must have one tensor per part of y \(2\), got 1"):
        torch.ops.nwot_fast.batch_norm_train_backward(ys[:1], ys, invstd)
    with pytest.raises(RuntimeError, match="grad must have the shape of y"):
        torch.ops.nwot_fast.batch_norm_train_backward([ys[0], ys[1][:1]], ys, invstd)
    with pytest.raises(RuntimeError, match="grad must have the dtype of y"):
        torch.ops.nwot_fast.batch_norm_train_backward([ys[0], ys[1].double()], ys, invstd)
    with pytest.raises(RuntimeError, match="y parts must have one shape, dtype and device"):
        torch.ops.nwot_fast.batch_norm_train_backward(ys, [ys[0], ys[1][:1]], invstd)
    with pytest.raises(RuntimeError, match="y must hold at least one part"):
        torch.ops.nwot_fast.batch_norm_train_backward([], [], invstd)
    with pytest.raises(RuntimeError, match="invstd must be float64"):
        torch.ops.nwot_fast.batch_norm_train_backward(ys, ys, invstd.float())
