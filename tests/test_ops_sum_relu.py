"""The node-sum operator (nwot_fast.ops.sums.sum_relu) against the ATen composition it replaces
(sequential adds, then ReLU; backward threshold_backward plus the accumulation at the node),
bitwise, in float32 and float64, with special values, strided and channels-last parts and 1 to 5
parts; its gradients against ATen's autograd; the fallback; opcheck; the fake kernels on meta
tensors; argument errors (the wrapper's and the compiled kernels'); the per-arch plans that use
it against the reference network; the CUDA kernels against the CPU ones (skipped without a CUDA
device and the CUDA build)."""

from __future__ import annotations

import pytest
import torch

from nwot_fast import _ext, ops, reference
from nwot_fast.nb201 import Arch, seeded_network
from nwot_fast.per_arch import score_arch
from nwot_fast.plans import Relu, Sum, compile_plan

DTYPES = [torch.float32, torch.float64]


def need_compiled(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not ops.compiled(device):
        pytest.skip(f"nwot_fast._C has no {device} backend here: {_ext.backend_info()['reason']}")


def with_specials(shape, dtype, seed: int) -> torch.Tensor:
    """Normal values at several scales (so that adds round) with zeros of both signs, NaN and
    infinities sprinkled in (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * torch.exp(3 * torch.randn(shape, generator=g, dtype=dtype))
    pick = torch.randint(0, 16, shape, generator=g)
    x[pick == 0] = -0.0
    x[pick == 1] = 0.0
    x[pick == 2] = float("nan")
    x[pick == 3] = float("inf")
    x[pick == 4] = -float("inf")
    return x


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (so -0.0 != 0.0), every NaN as one pattern: the sign
    and payload of a NaN from inf - inf depend on which operand the compiler puts first in a
    commutative add, and no score can see them."""
    t = t.contiguous().cpu()
    t = torch.where(torch.isnan(t), torch.full_like(t, float("nan")), t)
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def assert_bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(bits(got), bits(want))


def make_parts(k: int, layout: str, dtype, seed: int, shape=(3, 6, 5, 7)):
    """k parts of one shape: contiguous, per-edge channel slices of one merged tensor (a merged
    convolution's BatchNorm output), channels-last, transposed (neither), or mixed."""
    N, C, H, W = shape
    if layout == "channel-slice":
        merged = with_specials((N, k * C, H, W), dtype, seed)
        return list(merged.split(C, dim=1))
    parts = [with_specials(shape, dtype, seed + j) for j in range(k)]
    if layout == "channels-last":
        return [p.contiguous(memory_format=torch.channels_last) for p in parts]
    if layout == "transposed":
        return [p.transpose(2, 3).contiguous().transpose(2, 3) for p in parts]
    if layout == "mixed":
        return [p.contiguous(memory_format=torch.channels_last) if j % 2 else p for j, p in enumerate(parts)]
    return parts


def aten_sum_relu(parts):
    node = parts[0]
    for p in parts[1:]:
        node = node + p
    return node, torch.relu(node)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channel-slice", "channels-last", "transposed", "mixed"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_sum_relu_is_the_aten_composition_bitwise(dtype, layout, k):
    need_compiled("cpu")
    parts = make_parts(k, layout, dtype, seed=10 * k)
    node, relu = ops.sum_relu(parts)
    want_node, want_relu = aten_sum_relu(parts)
    assert_bitwise(node, want_node)
    assert_bitwise(relu, want_relu)
    nhwc = layout == "channels-last"
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    assert node.is_contiguous(memory_format=fmt) and relu.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channel-slice", "channels-last", "transposed"])
def test_sum_relu_backward_is_the_aten_composition_bitwise(dtype, layout):
    need_compiled("cpu")
    grad_node, grad_relu, relu_in = make_parts(3, layout, dtype, seed=7)
    relu = torch.relu(relu_in)
    got = torch.ops.nwot_fast.sum_relu_backward(grad_node, grad_relu, relu)
    want = grad_node + torch.ops.aten.threshold_backward(grad_relu, relu, 0)
    assert_bitwise(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("uses", ["both", "node", "relu"])
def test_sum_relu_gradients_equal_atens(dtype, uses):
    """Every part's gradient through node and relu (read by the loss, or not) equals ATen's
    autograd on the composition; the compiled backward runs when both outputs are read."""
    need_compiled("cpu")
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(4, 5, 6, 6, generator=g, dtype=dtype) for _ in range(3)]
    weights = [torch.randn(4, 5, 6, 6, generator=g, dtype=dtype) for _ in range(2)]

    def loss(fn):
        parts = [b.clone().requires_grad_(True) for b in base]
        node, relu = fn(parts)
        terms = {"both": [node * weights[0], relu * weights[1]], "node": [node * weights[0]],
                 "relu": [relu * weights[1]]}[uses]
        sum(t.sum() for t in terms).backward()
        return [p.grad for p in parts]

    for got, want in zip(loss(ops.sum_relu), loss(aten_sum_relu)):
        assert_bitwise(got, want)


def test_sum_relu_gradcheck_float64():
    need_compiled("cpu")
    g = torch.Generator().manual_seed(5)
    # Away from 0, where the ReLU has no derivative.
    parts = [(torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) + 0.1) * torch.randint(0, 2, (2, 3, 4, 4),
             generator=g).mul(2).sub(1) for _ in range(2)]
    parts = [parts[0], parts[0] * 0.25]  # the sum keeps the sign of parts[0]: never near 0
    parts = [p.requires_grad_(True) for p in parts]
    assert torch.autograd.gradcheck(lambda a, b: ops.sum_relu([a, b]), parts)


def test_fallback_is_the_composition():
    parts = make_parts(3, "contiguous", torch.float32, seed=20)
    for got, want in zip(ops.sum_relu_fallback(parts), aten_sum_relu(parts)):
        assert_bitwise(got, want)


def test_empty_parts_give_empty_outputs():
    need_compiled("cpu")
    parts = [torch.empty(0, 4, 3, 3), torch.empty(0, 4, 3, 3)]
    node, relu = ops.sum_relu(parts)
    assert node.shape == relu.shape == (0, 4, 3, 3)


# ---------------------------------------------------------------------------------------------
# opcheck, fake kernels, errors


def test_opcheck_sum_relu():
    need_compiled("cpu")
    # Finite values: opcheck compares its runs with NaN != NaN.
    g = torch.Generator().manual_seed(31)
    parts = [torch.randn(3, 6, 5, 7, generator=g).requires_grad_(True) for _ in range(3)]
    torch.library.opcheck(torch.ops.nwot_fast.sum_relu.default, ([p.detach() for p in parts],))
    torch.library.opcheck(torch.ops.nwot_fast.sum_relu.default, (parts,))
    nhwc = [p.detach().contiguous(memory_format=torch.channels_last) for p in parts[:2]]
    torch.library.opcheck(torch.ops.nwot_fast.sum_relu.default, (nhwc,))
    grad_node, grad_relu, relu = (torch.randn(3, 6, 5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    torch.library.opcheck(torch.ops.nwot_fast.sum_relu_backward.default, (grad_node, grad_relu, relu.relu()))


def test_meta_tensors_get_shapes_from_the_fake_kernels():
    need_compiled("cpu")
    parts = [torch.empty(2, 3, 4, 5, device="meta") for _ in range(3)]
    node, relu = ops.sum_relu(parts)
    assert node.device.type == "meta" and node.shape == relu.shape == (2, 3, 4, 5)
    nhwc = [p.contiguous(memory_format=torch.channels_last) for p in parts]
    node, relu = ops.sum_relu(nhwc)
    assert node.is_contiguous(memory_format=torch.channels_last) and not node.is_contiguous()
    out = torch.ops.nwot_fast.sum_relu_backward(*parts)
    assert out.shape == (2, 3, 4, 5)


X = torch.zeros(2, 3, 4, 4)


@pytest.mark.parametrize("args, exc, message", [
    (X, TypeError, "parts must be a list or tuple of tensors"),
    ([], ValueError, "parts must hold at least 1 tensor"),
    ([X, "a"], TypeError, r"parts\[1\] must be a torch.Tensor"),
    ([X, torch.zeros(2, 3, 4)], ValueError, r"parts\[1\] must be 4-D"),
    ([X, torch.zeros(2, 3, 4, 5)], ValueError, r"parts\[1\] must have the shape of parts\[0\]"),
    ([X, X.double()], TypeError, r"parts\[1\] must have the dtype of parts\[0\]"),
    ([X.long()], TypeError, r"parts\[0\] must be float32 or float64"),
])
def test_wrapper_rejects_bad_arguments(args, exc, message):
    with pytest.raises(exc, match=message):
        ops.sum_relu(args)


def test_compiled_kernels_reject_bad_arguments():
    need_compiled("cpu")
    # (An empty list stops at the dispatcher, which has no tensor to dispatch on; the wrapper says why.)
    with pytest.raises(RuntimeError, match=r"parts\[1\] must have the shape of parts\[0\]"):
        torch.ops.nwot_fast.sum_relu([X, torch.zeros(2, 3, 4, 5)])
    with pytest.raises(RuntimeError, match=r"parts\[1\] must have the dtype of parts\[0\]"):
        torch.ops.nwot_fast.sum_relu([X, X.double()])
    with pytest.raises(RuntimeError, match="grad_relu must have the shape of relu"):
        torch.ops.nwot_fast.sum_relu_backward(X, torch.zeros(2, 3, 4, 5), X)
    with pytest.raises(RuntimeError, match="grad_node must have the dtype of relu"):
        torch.ops.nwot_fast.sum_relu_backward(X.double(), X, X)


# ---------------------------------------------------------------------------------------------
# The per-arch plans that use it


FUSING_ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|skip_connect~1|nor_conv_3x3~2|"


def test_the_plan_fuses_and_scores_as_the_reference():
    """An arch whose node 2 is a sum of two edges read by a convolution: its plan fuses (a Sum
    of several terms with a Relu of the same node), and score_arch equals the reference network
    (float64: to 1e-9; float32: to the float32 noise)."""
    need_compiled("cpu")
    plan = compile_plan(Arch.from_str(FUSING_ARCH), "jacob_cov")
    relu_nodes = {s.node for s in plan.cell_steps if isinstance(s, Relu)}
    assert any(isinstance(s, Sum) and len(s.terms) > 1 and s.node in relu_nodes for s in plan.cell_steps)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net = seeded_network(Arch.from_str(FUSING_ARCH), 4)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        want = reference.score(net, x, "jacob_cov", dtype=dtype)
        got = score_arch(FUSING_ARCH, x, method="jacob_cov", seed=4, dtype=dtype)
        assert got == pytest.approx(want, rel=rtol)
    for dtype in DTYPES:
        want = reference.score(net, x, "hook_logdet", dtype=dtype)
        assert score_arch(FUSING_ARCH, x, method="hook_logdet", seed=4, dtype=dtype) == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# CUDA: the kernels against the CPU ones (skipped without a CUDA device and build)


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _ext.available("cuda")),
                                reason="needs a CUDA device and the CUDA build of nwot_fast._C")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channel-slice", "channels-last"])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_cuda_sum_relu_matches_cpu(dtype, layout, k):
    parts = make_parts(k, layout, dtype, seed=50 + k)
    want = ops.sum_relu(parts)
    got = ops.sum_relu([p.cuda() for p in parts])
    for g, w in zip(got, want):
        assert_bitwise(g, w)
    grad_node, grad_relu = make_parts(2, layout, dtype, seed=60)
    want = torch.ops.nwot_fast.sum_relu_backward(grad_node, grad_relu, want[1])
    got = torch.ops.nwot_fast.sum_relu_backward(grad_node.cuda(), grad_relu.cuda(), got[1])
    assert_bitwise(got, want)
