"""The network-layer op family: NB201's 3x3 average pooling and train-mode BatchNorm, compiled
on the CPU (channels-last aware) or ATen's, with their fake kernels and autograd formulas.

- :func:`avg_pool3x3` ``x [N, C, H, W] float32|float64``: NB201's ``avg_pool_3x3`` with autograd, the
  compiled CPU kernel bitwise equal to ATen's (the per-arch mode's slowest op in ATen on the CPU),
  NCHW and channels-last.
- :func:`batch_norm_train` ``x [N, P C, H, W] float32|float64, parts P -> P tensors [N, C, H, W]``:
  NB201's BatchNorm2d in train mode at initialisation (weight 1, bias 0), with autograd; on
  the CPU a compiled kernel (channels-last or NCHW, the input's) whose outputs are dense tensors in that layout.
"""

from __future__ import annotations

from typing import Tuple

import torch

from nwot_fast._common import BN_EPS
from nwot_fast.ops._support import check_feature_map, compiled_switch

__all__ = ["avg_pool3x3", "batch_norm_train"]


def _check_bn_input(x, parts) -> None:
    check_feature_map(x, "x")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a positive int, got {parts!r}")
    if x.shape[1] % parts:
        raise ValueError(f"x channels ({x.shape[1]}) must be divisible by parts ({parts})")
    if x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        raise ValueError(f"x must have more than 1 value per channel for train-mode BatchNorm, got shape {list(x.shape)}")


def avg_pool3x3(x: torch.Tensor) -> torch.Tensor:
    """NB201's ``avg_pool_3x3``: ``F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)``, with
    autograd. On the CPU (float32 or float64, 4-D) the compiled kernel, bitwise equal to ATen's
    kernels in both directions and several times faster than its NCHW ones: a dense
    channels-last input is pooled in that memory format (channels-last output), any other made
    contiguous first (NCHW output); elsewhere ATen's pooling.

    Args:
        x: ``[N, C, H, W]`` float32 or float64 (NCHW or channels-last).

    Returns:
        ``[N, C, H, W]``, the dtype of ``x``: the mean over each value's in-plane 3x3
        neighbourhood (padding excluded).
    """
    if (isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.dim() == 4 and compiled("cpu")):
        return torch.ops.nwot_fast.avg_pool3x3(x)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def batch_norm_train(x: torch.Tensor, parts: int = 1) -> Tuple[torch.Tensor, ...]:
    """``F.batch_norm(x, None, None, training=True, eps=1e-5)`` (batch statistics, biased
    variance, no affine: NB201's BatchNorm2d at initialisation), with autograd, split along the
    channels into ``parts`` equal groups (a merged convolution's edges). On the CPU (float32 or
    float64, 4-D) the compiled kernel: statistics summed in float64, every group returned as a
    dense tensor in the input's layout (channels-last for a channels-last input, else NCHW: any
    other memory format is read as NCHW); elsewhere ATen's BatchNorm, split into channel slices.

    Args:
        x: ``[N, P*C, H, W]`` float32 or float64 with more than one value per channel.
        parts: ``P``, the number of equal channel groups (a positive int dividing the channels).

    Returns:
        ``P`` tensors ``[N, C, H, W]`` of ``x``'s dtype: the normalised groups, in channel order.
    """
    _check_bn_input(x, parts)
    if x.device.type == "cpu" and compiled("cpu"):
        ys, _ = torch.ops.nwot_fast.batch_norm_train(x, parts)
        return tuple(ys)
    y = torch.nn.functional.batch_norm(x, None, None, None, None, True, 0.0, BN_EPS)
    return y.split(x.shape[1] // parts, dim=1)


def _bn_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout the compiled BatchNorm runs in for ``t`` (its forward's x, its backward's y) and
    hands back: channels-last for a dense channels-last tensor that is not NCHW-contiguous, NCHW
    otherwise (the C++ kernel's reads_channels_last)."""
    nhwc = not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def _register_fakes() -> None:
    def _pool_fake(name):
        def fake(x):
            check_feature_map(x, name)
            nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            return torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)

        return fake

    torch.library.register_fake("nwot_fast::avg_pool3x3")(_pool_fake("x"))
    torch.library.register_fake("nwot_fast::avg_pool3x3_backward")(_pool_fake("grad"))

    # The pooling is linear: its backward is the adjoint (nothing saved from the forward), and
    # the adjoint of the backward is the forward again (double backward).
    torch.library.register_autograd(
        "nwot_fast::avg_pool3x3", lambda ctx, grad: torch.ops.nwot_fast.avg_pool3x3_backward(grad))
    torch.library.register_autograd(
        "nwot_fast::avg_pool3x3_backward", lambda ctx, grad: torch.ops.nwot_fast.avg_pool3x3(grad))

    @torch.library.register_fake("nwot_fast::batch_norm_train")
    def _batch_norm_train_fake(x, parts):
        _check_bn_input(x, parts)
        N, PC, H, W = x.shape
        fmt = _bn_memory_format(x)
        ys = [x.new_empty((N, PC // parts, H, W)).contiguous(memory_format=fmt) for _ in range(parts)]
        return ys, x.new_empty((PC,), dtype=torch.float64)

    @torch.library.register_fake("nwot_fast::batch_norm_train_backward")
    def _batch_norm_train_backward_fake(grad, y, invstd):
        N, C, H, W = y[0].shape
        return y[0].new_empty((N, len(y) * C, H, W)).contiguous(memory_format=_bn_memory_format(y[0]))

    def _bn_setup(ctx, inputs, output):
        ys, invstd = output
        ctx.save_for_backward(invstd, *ys)

    def _bn_backward(ctx, grad_ys, grad_invstd):
        # One gradient per part, read where autograd put it (no stack into one tensor).
        invstd, *ys = ctx.saved_tensors
        return torch.ops.nwot_fast.batch_norm_train_backward(list(grad_ys), ys, invstd), None

    # First derivatives only: the fast engine differentiates the network once (jacob_cov).
    torch.library.register_autograd("nwot_fast::batch_norm_train", _bn_backward, setup_context=_bn_setup)


_switch = compiled_switch(_register_fakes)


def compiled(device_type: str) -> bool:
    """Whether the compiled layer operators serve ``device_type`` (registering their fake kernels and autograd formulas the first time)."""
    return _switch(device_type)
