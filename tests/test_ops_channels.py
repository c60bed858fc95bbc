"""The channel-move operators (nwot_fast.ops.channels: relu_gather, scatter_channels_) against
the ATen composition they replace, bitwise, in float32 and float64, with special values, strided
operands and every optional argument; the fallback; opcheck; the fake kernels on meta tensors;
argument errors (the wrappers' and the compiled kernels'); the CUDA kernels against the CPU
ones (skipped without a CUDA device and the CUDA build); and what bench/gpu_cost.py counts for
them."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import load_bench_script
from nwot_fast import _ext, ops

DTYPES = [torch.float32, torch.float64]


def need_compiled(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not ops.compiled(device):
        pytest.skip(f"nwot_fast._C has no {device} backend here: {_ext.backend_info()['reason']}")


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_specials(shape, dtype, seed: int) -> torch.Tensor:
    """Normal values with zeros of both signs, NaN and infinities sprinkled in (fixed seed)."""
    g = rng(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    pick = torch.randint(0, 12, shape, generator=g)
    x[pick == 0] = -0.0
    x[pick == 1] = 0.0
    x[pick == 2] = float("nan")
    x[pick == 3] = float("inf")
    x[pick == 4] = -float("inf")
    return x


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor (so -0.0 != 0.0 and NaN == NaN)."""
    t = t.contiguous().cpu()
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def assert_bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(bits(got), bits(want))


def assert_bitwise_but_nan_payloads(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit (zeros' signs included) wherever ``want`` is a number, and NaN exactly where
    ``want`` is NaN, whatever the NaN's sign and payload: a float32 addition on CUDA returns the
    canonical NaN (0x7fffffff) where x86 returns the NaN operand or its default NaN (0xffc00000)
    for inf + -inf (seen on an H200: bench/RESULTS.md)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    got, want = got.cpu(), want.cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    numbers = ~torch.isnan(want)
    assert torch.equal(bits(got)[numbers], bits(want)[numbers])


def random_index(n: int, high: int, seed: int, distinct: bool = True) -> torch.Tensor:
    g = rng(seed)
    if distinct:
        return torch.randperm(high, generator=g)[:n]
    return torch.randint(0, high, (n,), generator=g)


# ---------------------------------------------------------------------------------------------
# relu_gather


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channel-slice", "channels-last", "transposed"])
@pytest.mark.parametrize("index_kind", ["none", "distinct", "repeated"])
def test_relu_gather_is_relu_of_index_select_bitwise(dtype, layout, index_kind):
    need_compiled("cpu")
    base = with_specials((3, 12, 5, 7), dtype, seed=1)
    x = {"contiguous": base,
         "channel-slice": base[:, 2:10],
         "channels-last": base.contiguous(memory_format=torch.channels_last),
         "transposed": base.transpose(2, 3)}[layout]
    C = x.shape[1]
    index = None if index_kind == "none" else random_index(5 if index_kind == "distinct" else 9, C, seed=2,
                                                           distinct=index_kind == "distinct")
    want = torch.relu(x if index is None else x.index_select(1, index))
    got = ops.relu_gather(x, index)
    assert got.is_contiguous()
    assert_bitwise(got, want)
    assert_bitwise(ops.relu_gather_fallback(x, index), want)


def test_relu_gather_empty_inputs():
    need_compiled("cpu")
    x = torch.randn(2, 4, 3, 3)
    assert ops.relu_gather(x, torch.zeros(0, dtype=torch.int64)).shape == (2, 0, 3, 3)
    assert ops.relu_gather(x[:0], torch.tensor([1, 3])).shape == (0, 2, 3, 3)


# ---------------------------------------------------------------------------------------------
# scatter_channels_


def _scatter_case(dtype, dest_kind, src_kind, masked, seed):
    """dest (a channel slice of a larger buffer or a whole tensor), its index, src and its
    index, the mask: fresh random values, K = 6 channels moved."""
    g = rng(seed)
    N, H, W, K = 3, 4, 5, 6
    buffer = with_specials((N, 20, H, W), dtype, seed=seed + 1)
    if dest_kind == "none":
        dest, dest_index = buffer[:, 7:7 + K], None  # strided: a slice of the buffer's channels
    else:
        dest, dest_index = buffer[:, 4:16], torch.randperm(12, generator=g)[:K]
    src_all = with_specials((N, 9, H, W), dtype, seed=seed + 2)
    if src_kind == "none":
        src, src_index = src_all[:, 1:1 + K], None
    elif src_kind == "repeated":
        src, src_index = src_all, torch.randint(0, 9, (K,), generator=g)
    else:
        src, src_index = src_all.transpose(2, 3).contiguous().transpose(2, 3), torch.randperm(9, generator=g)[:K]
    relu_out = torch.relu(with_specials((N, K, H, W), dtype, seed=seed + 3)) if masked else None
    return buffer, dest, dest_index, src, src_index, relu_out


def _composition(dest, dest_index, src, src_index, relu_out, accumulate):
    """The op's definition channel by channel (independent of the fallback's index_select /
    threshold_backward / index_copy_ or index_add_ form): channel k of the source, zeroed where
    the ReLU output is <= 0 (NaN passes, as in threshold_backward), written into or added to
    its destination channel."""
    for k in range(src.shape[1] if src_index is None else src_index.numel()):
        v = src[:, k if src_index is None else int(src_index[k])]
        if relu_out is not None:
            v = torch.where(relu_out[:, k] <= 0, torch.zeros((), dtype=v.dtype), v)
        d = k if dest_index is None else int(dest_index[k])
        if accumulate:
            dest[:, d] += v
        else:
            dest[:, d] = v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dest_kind", ["none", "index"])
@pytest.mark.parametrize("src_kind", ["none", "index", "repeated"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_scatter_channels_is_the_composition_bitwise(dtype, dest_kind, src_kind, masked, accumulate):
    """Every moved value bitwise the composition's, every other channel of the buffer untouched."""
    need_compiled("cpu")
    buffer, dest, dest_index, src, src_index, relu_out = _scatter_case(dtype, dest_kind, src_kind, masked, seed=10)
    want_buffer = buffer.clone()
    want_dest = want_buffer[:, 7:13] if dest_kind == "none" else want_buffer[:, 4:16]
    _composition(want_dest, dest_index, src, src_index, relu_out, accumulate)
    fallback_buffer = buffer.clone()
    fallback_dest = fallback_buffer[:, 7:13] if dest_kind == "none" else fallback_buffer[:, 4:16]
    ops.scatter_channels_fallback(fallback_dest, dest_index, src, src_index, relu_out, accumulate)
    ops.scatter_channels_(dest, dest_index, src, src_index, relu_out, accumulate)
    assert_bitwise(buffer, want_buffer)
    assert_bitwise(fallback_buffer, want_buffer)


def test_scatter_channels_within_one_buffer():
    """Source and destination channels of one buffer (the backward's gradient buffer: a
    node's gradient gathered from the others')."""
    need_compiled("cpu")
    buffer = torch.randn(2, 12, 3, 3, generator=rng(20), dtype=torch.float64)
    want = buffer.clone()
    _composition(want[:, 0:4], torch.tensor([3, 1, 0]), want, torch.tensor([5, 11, 8]), None, True)
    ops.scatter_channels_(buffer[:, 0:4], torch.tensor([3, 1, 0]), buffer, torch.tensor([5, 11, 8]), accumulate=True)
    assert_bitwise(buffer, want)


def test_scatter_channels_moves_nothing_for_empty_inputs():
    need_compiled("cpu")
    dest = torch.randn(2, 4, 3, 3)
    before = dest.clone()
    empty = torch.zeros(0, dtype=torch.int64)
    ops.scatter_channels_(dest, empty, torch.randn(2, 5, 3, 3), empty, accumulate=True)
    assert_bitwise(dest, before)


# ---------------------------------------------------------------------------------------------
# opcheck, fake kernels, errors


def test_opcheck_channel_operators():
    need_compiled("cpu")
    x = torch.randn(2, 6, 4, 5, generator=rng(30))
    i = torch.tensor([4, 0, 2, 2])
    torch.library.opcheck(torch.ops.nwot_fast.relu_gather.default, (x, i))
    torch.library.opcheck(torch.ops.nwot_fast.relu_gather.default, (x.double(), None))
    dest = torch.randn(2, 8, 4, 5, generator=rng(31), dtype=torch.float64)
    src = torch.randn(2, 6, 4, 5, generator=rng(32), dtype=torch.float64)
    mask = torch.relu(torch.randn(2, 3, 4, 5, generator=rng(33), dtype=torch.float64))
    torch.library.opcheck(torch.ops.nwot_fast.scatter_channels_.default,
                          (dest, torch.tensor([7, 0, 3]), src, torch.tensor([5, 5, 1]), mask, True))
    torch.library.opcheck(torch.ops.nwot_fast.scatter_channels_.default, (dest[:, :6], None, src, None, None, False))


def test_meta_tensors_get_shapes_from_the_fake_kernels():
    """bench/gpu_cost.py runs the multi-arch engine on meta tensors."""
    need_compiled("cpu")
    x = torch.empty(4, 10, 8, 8, device="meta")
    out = ops.relu_gather(x, torch.tensor([1, 2, 3], device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 3, 8, 8) and out.dtype == torch.float32
    ops.scatter_channels_(x, torch.tensor([0, 5], device="meta"), out, torch.tensor([2, 0], device="meta"),
                          torch.empty(4, 2, 8, 8, device="meta"), accumulate=True)


X = torch.zeros(2, 4, 3, 3)
I2 = torch.tensor([0, 1])
WRAPPER_BAD_CALLS = [
    (ops.relu_gather, ([1.0], None), TypeError, "x must be a torch.Tensor"),
    (ops.relu_gather, (torch.zeros(2, 4, 3), None), ValueError, "x must be 4-D [batch, channels, height, width], got 3-D"),
    (ops.relu_gather, (X.half(), None), TypeError, "x must be float32 or float64, got torch.float16"),
    (ops.relu_gather, (X, torch.zeros(2, 1, dtype=torch.int64)), ValueError, "index must be 1-D [channels], got 2-D"),
    (ops.relu_gather, (X, torch.zeros(2, dtype=torch.int32)), TypeError, "index must be int64, got torch.int32"),
    (ops.scatter_channels_, (X, I2, X.double(), I2), TypeError, "src must have the dtype of dest"),
    (ops.scatter_channels_, (X, I2, torch.zeros(2, 4, 3, 4), I2), ValueError,
     "src must match dest in batch, height and width"),
    (ops.scatter_channels_, (X, I2, X, torch.tensor([0, 1, 2])), ValueError,
     "dest_index and src_index must move as many channels"),
    (ops.scatter_channels_, (X, None, torch.zeros(2, 3, 3, 3), None), ValueError,
     "dest_index and src_index must move as many channels"),
    (ops.scatter_channels_, (X, I2, X, I2, torch.zeros(2, 3, 3, 3)), ValueError,
     "relu_out must have shape [2, 2, 3, 3] (the channels moved), got [2, 3, 3, 3]"),
    (ops.scatter_channels_, (X, I2, X, I2, None, 1), TypeError, "accumulate must be a bool, got int"),
]


@pytest.mark.parametrize("fn,args,exc,message", WRAPPER_BAD_CALLS, ids=[c[3][:40] for c in WRAPPER_BAD_CALLS])
def test_wrappers_reject_bad_arguments(fn, args, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        fn(*args)


def test_compiled_kernels_reject_bad_indices():
    """What only the kernels can check: index values (in range; distinct destinations)."""
    need_compiled("cpu")
    with pytest.raises(RuntimeError, match=r"index values must be in \[0, 4\), got 4 at position 1"):
        torch.ops.nwot_fast.relu_gather(X, torch.tensor([0, 4]))
    with pytest.raises(RuntimeError, match=r"src_index values must be in \[0, 4\), got -1"):
        torch.ops.nwot_fast.scatter_channels_(X, I2, X, torch.tensor([0, -1]), None, False)
    with pytest.raises(RuntimeError, match="dest_index values must be distinct, got 1 twice"):
        torch.ops.nwot_fast.scatter_channels_(X, torch.tensor([1, 1]), X, I2, None, True)
    with pytest.raises(RuntimeError, match="x must be 4-D"):
        torch.ops.nwot_fast.relu_gather(torch.zeros(3, 3), None)


# ---------------------------------------------------------------------------------------------
# What bench/gpu_cost.py counts


def test_gpu_cost_counts_the_channels_moved():
    """The compiled channel moves cost the channels they touch, not their whole buffers."""
    need_compiled("cpu")
    gpu_cost = load_bench_script("gpu_cost")
    node = torch.empty(8, 100, 16, 16, device="meta")
    index = torch.arange(10, device="meta")
    plane = 8 * 16 * 16 * 4  # one channel of the batch, float32
    mode = gpu_cost.CostMode()
    with mode:
        out = ops.relu_gather(node, index)
    assert mode.bytes == 2 * 10 * plane + 10 * 8 and mode.launches == 1
    mode = gpu_cost.CostMode()
    with mode:
        ops.scatter_channels_(node, index, out, None, out, accumulate=True)  # read src, mask, dest; write dest
    assert mode.bytes == 4 * 10 * plane + 10 * 8
    mode = gpu_cost.CostMode()
    with mode:
        ops.scatter_channels_(node, None, node, None)  # a whole copy: read and write
    assert mode.bytes == 2 * 100 * plane


def test_gpu_cost_prices_convolutions_at_the_given_rate():
    """--conv-tflops: a convolution (forward and backward) costs its FLOPs at that rate; other
    operators keep the roofline."""
    gpu_cost = load_bench_script("gpu_cost")
    x = torch.empty(8, 64, 32, 32, device="meta")
    w = torch.empty(64, 4, 3, 3, device="meta")  # 16 groups

    def roofline(conv_flops):
        mode = gpu_cost.CostMode(conv_flops)
        with mode:
            y = torch.nn.functional.conv2d(x, w, padding=1, groups=16)
            torch.ops.aten.convolution_backward(y, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 16,
                                                [True, False, False])
            conv_s, conv_flops_counted = mode.roofline_s, mode.flops
            torch.relu(y)
        return conv_s, conv_flops_counted, mode.roofline_s - conv_s

    fast, flops, other = roofline(gpu_cost.PEAK_FLOPS)
    slow, flops_again, other_again = roofline(1e12)
    assert flops == flops_again == 2 * 2 * 8 * 64 * 32 * 32 * 4 * 9  # forward + input gradient
    assert slow == pytest.approx(flops / 1e12) and fast < slow / 10
    assert other == pytest.approx(other_again) and other > 0


# ---------------------------------------------------------------------------------------------
# CUDA: the kernels against the CPU ones (skipped without a CUDA device and build)


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _ext.available("cuda")),
                                reason="needs a CUDA device and the CUDA build of nwot_fast._C")


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channel-slice", "channels-last"])
def test_cuda_relu_gather_matches_cpu(dtype, layout):
    base = with_specials((5, 40, 9, 11), dtype, seed=40)
    x = {"contiguous": base, "channel-slice": base[:, 3:30],
         "channels-last": base.contiguous(memory_format=torch.channels_last)}[layout]
    index = random_index(50, x.shape[1], seed=41, distinct=False)
    want = ops.relu_gather(x, index)
    got = ops.relu_gather(x.cuda(), index.cuda())
    assert_bitwise(got, want)  # the CPU rule on the device, bit for bit
    # ATen's CUDA ReLU: the same values (the sign of a zero may differ).
    torch.testing.assert_close(got, torch.relu(x.cuda().index_select(1, index.cuda())), rtol=0, atol=0,
                               equal_nan=True)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dest_kind", ["none", "index"])
def test_cuda_scatter_channels_matches_cpu(dtype, masked, accumulate, dest_kind):
    buffer, dest, dest_index, src, src_index, relu_out = _scatter_case(dtype, dest_kind, "index", masked, seed=50)
    cuda_buffer = buffer.cuda()
    cuda_dest = cuda_buffer[:, 7:13] if dest_kind == "none" else cuda_buffer[:, 4:16]
    move = (lambda t: None if t is None else t.cuda())
    ops.scatter_channels_(cuda_dest, move(dest_index), src.cuda(), move(src_index), move(relu_out), accumulate)
    ops.scatter_channels_(dest, dest_index, src, src_index, relu_out, accumulate)
    if accumulate:  # an addition: the NaNs it makes (NaN + x, inf + -inf) are encoded per device
        assert_bitwise_but_nan_payloads(cuda_buffer, buffer)
        assert torch.isnan(buffer).any() and torch.isinf(buffer).any()  # the case holds specials
    else:  # copies: the same bits
        assert_bitwise(cuda_buffer, buffer)


@needs_cuda
def test_cuda_meets_the_composition_on_a_large_chunk():
    """More values than one grid covers in one step (grid-stride loop), float32."""
    x = torch.randn(128, 64 * 16, 32, 32, device="cuda")
    index = torch.randperm(64 * 16, device="cuda")[:700]
    out = ops.relu_gather(x, index)
    assert torch.equal(out, torch.relu(x.index_select(1, index)))
    dest = torch.randn(128, 64 * 16, 32, 32, device="cuda")
    want = dest.clone()
    want.index_add_(1, index, torch.ops.aten.threshold_backward(out, out, 0))
    ops.scatter_channels_(dest, index, out, None, out, accumulate=True)
    assert torch.equal(dest, want)

