"""The node-sum op family: an NB201 node's sum of its incoming edges fused with the ReLU that
the node's convolutions read, compiled (CPU and CUDA) or as the ATen composition it replaces
(same values, bitwise), with its fake kernels and autograd formula.

- :func:`sum_relu` ``parts: k tensors [N, C, H, W] -> (node, relu(node))``: forward one pass
  instead of k (k - 1 adds and the ReLU), backward one pass instead of two
  (``threshold_backward`` and the gradient accumulation at the node).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from nwot_fast.ops._support import check_device, check_feature_map, compiled_switch

__all__ = ["sum_relu", "sum_relu_fallback"]


def _check_parts(parts) -> None:
    if not isinstance(parts, (list, tuple)):
        raise TypeError(f"parts must be a list or tuple of tensors, got {type(parts).__name__}")
    if not parts:
        raise ValueError("parts must hold at least 1 tensor, got 0")
    check_feature_map(parts[0], "parts[0]")
    ref = parts[0]
    for i, t in enumerate(parts[1:], 1):
        check_feature_map(t, f"parts[{i}]")
        if t.shape != ref.shape:
            raise ValueError(f"parts[{i}] must have the shape of parts[0] {list(ref.shape)}, got {list(t.shape)}")
        if t.dtype != ref.dtype:
            raise TypeError(f"parts[{i}] must have the dtype of parts[0] ({ref.dtype}), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"parts[{i}] must be on the device of parts[0] ({ref.device}), got {t.device}")


def _check_backward(grad_node, grad_relu, relu) -> None:
    check_feature_map(relu, "relu")
    for t, name in ((grad_node, "grad_node"), (grad_relu, "grad_relu")):
        check_feature_map(t, name)
        if t.shape != relu.shape:
            raise ValueError(f"{name} must have the shape of relu {list(relu.shape)}, got {list(t.shape)}")
        if t.dtype != relu.dtype:
            raise TypeError(f"{name} must have the dtype of relu ({relu.dtype}), got {t.dtype}")
        if t.device != relu.device:
            raise ValueError(f"{name} must be on the device of relu ({relu.device}), got {t.device}")


def _output_format(tensors) -> torch.memory_format:
    """Channels-last when every tensor is dense channels-last (and not also NCHW-contiguous), as the kernels decide."""
    nhwc = all(not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last) for t in tensors)
    return torch.channels_last if nhwc else torch.contiguous_format


def sum_relu(parts: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """An NB201 node and the ReLU its convolutions read: ``node = ((parts[0] + parts[1]) +
    parts[2]) + ...`` and ``F.relu(node)``, bitwise ATen's sequential adds and ReLU (each add
    rounded in the parts' dtype; NaN and -0.0 kept by the ReLU), with autograd (first
    derivatives: every part's gradient is ``grad_node + threshold_backward(grad_relu, relu, 0)``,
    one pass). Compiled on the CPU and CUDA, else :func:`sum_relu_fallback`.

    Args:
        parts: ``k >= 1`` tensors ``[N, C, H, W]`` float32 or float64 of one shape, dtype and
            device (CPU or CUDA), any strides: the node's incoming edges in sum order.

    Returns:
        ``(node, relu)``, both ``[N, C, H, W]`` of the parts' dtype: channels-last when every
        part is dense channels-last, else contiguous NCHW (compiled; the fallback's are ATen's).
    """
    _check_parts(parts)
    check_device(parts[0], "parts[0]")
    if compiled(parts[0].device.type):
        node, relu = torch.ops.nwot_fast.sum_relu(list(parts))
        return node, relu
    return sum_relu_fallback(parts)


def sum_relu_fallback(parts: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`sum_relu` in ATen's operators (k passes forward; autograd's own backward)."""
    node = parts[0]
    for p in parts[1:]:
        node = node + p
    return node, torch.relu(node)


def _register_fakes() -> None:
    @torch.library.register_fake("nwot_fast::sum_relu")
    def _sum_relu_fake(parts):
        _check_parts(parts)
        fmt = _output_format(parts)
        return (torch.empty_like(parts[0], memory_format=fmt), torch.empty_like(parts[0], memory_format=fmt))

    @torch.library.register_fake("nwot_fast::sum_relu_backward")
    def _sum_relu_backward_fake(grad_node, grad_relu, relu):
        _check_backward(grad_node, grad_relu, relu)
        return torch.empty_like(relu, memory_format=_output_format((grad_node, grad_relu, relu)))

    def _setup(ctx, inputs, output):
        # An output nothing reads gets no gradient (None, not a tensor of zeros to add).
        ctx.set_materialize_grads(False)
        ctx.n_parts = len(inputs[0])
        ctx.save_for_backward(output[1])

    def _backward(ctx, grad_node, grad_relu):
        (relu,) = ctx.saved_tensors
        if grad_relu is None:
            grad = grad_node
        elif grad_node is None:
            grad = torch.ops.aten.threshold_backward(grad_relu, relu, 0)
        else:
            grad = torch.ops.nwot_fast.sum_relu_backward(grad_node, grad_relu, relu)
        # d node / d part is the identity for every part (as ATen's AddBackward passes it on).
        return [grad] * ctx.n_parts

    # First derivatives only: the fast engine differentiates the network once (jacob_cov).
    torch.library.register_autograd("nwot_fast::sum_relu", _backward, setup_context=_setup)


_switch = compiled_switch(_register_fakes)


def compiled(device_type: str) -> bool:
    """Whether the compiled node-sum operators serve ``device_type`` (registering their fake kernels and autograd formula the first time)."""
    return _switch(device_type)
