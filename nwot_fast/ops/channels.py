"""The channel-move op family: the multi-arch engine's gathers and scatters along the channels
(:mod:`nwot_fast.multi_arch.sparse`), each fused with the ReLU next to it so that the moved
values cross memory once, compiled (CPU and CUDA) or as the pure-PyTorch composition they
replace (same values, bitwise), with their fake kernels.

- :func:`relu_gather` ``x [N, C, H, W], index [K] -> [N, K, H, W]``:
  ``F.relu(x.index_select(1, index))`` (a convolution group's input);
- :func:`scatter_channels_` ``dest [N, Cd, H, W] <- src [N, Cs, H, W]``: ``dest[:, dest_index[k]]``
  set to (or, accumulating, increased by) ``src[:, src_index[k]]``, optionally masked by a ReLU
  output as in its backward (``threshold_backward``).

No autograd: the engine runs them under ``torch.no_grad()`` in its hand-written backward.
"""

from __future__ import annotations

from typing import Optional

import torch

from nwot_fast.ops._support import check_device, check_feature_map, check_tensor, compiled_switch

__all__ = ["relu_gather", "scatter_channels_", "relu_gather_fallback", "scatter_channels_fallback"]


def _check_index(index, name: str, ref: torch.Tensor, whole: int) -> int:
    if index is None:
        return whole
    check_tensor(index, name)
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D [channels], got {index.dim()}-D")
    if index.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {index.dtype}")
    if index.device != ref.device:
        raise ValueError(f"{name} must be on the same device as its tensor ({ref.device}), got {index.device}")
    return index.shape[0]


def _check_gather(x, index) -> int:
    check_feature_map(x, "x")
    return _check_index(index, "index", x, x.shape[1])


def _check_scatter(dest, dest_index, src, src_index, relu_out) -> int:
    check_feature_map(dest, "dest")
    check_feature_map(src, "src")
    if src.dtype != dest.dtype:
        raise TypeError(f"src must have the dtype of dest ({dest.dtype}), got {src.dtype}")
    if src.device != dest.device:
        raise ValueError(f"src must be on the same device as dest ({dest.device}), got {src.device}")
    if (src.shape[0], src.shape[2], src.shape[3]) != (dest.shape[0], dest.shape[2], dest.shape[3]):
        raise ValueError(f"src must match dest in batch, height and width: dest {list(dest.shape)}, "
                         f"src {list(src.shape)}")
    k_dest = _check_index(dest_index, "dest_index", dest, dest.shape[1])
    k_src = _check_index(src_index, "src_index", src, src.shape[1])
    if k_dest != k_src:
        raise ValueError(f"dest_index and src_index must move as many channels (None: all of dest / src): {k_dest} "
                         f"into dest {list(dest.shape)}, {k_src} from src {list(src.shape)}")
    if relu_out is not None:
        check_feature_map(relu_out, "relu_out")
        if relu_out.dtype != dest.dtype:
            raise TypeError(f"relu_out must have the dtype of dest ({dest.dtype}), got {relu_out.dtype}")
        if relu_out.device != dest.device:
            raise ValueError(f"relu_out must be on the same device as dest ({dest.device}), got {relu_out.device}")
        want = (dest.shape[0], k_dest, dest.shape[2], dest.shape[3])
        if tuple(relu_out.shape) != want:
            raise ValueError(f"relu_out must have shape {list(want)} (the channels moved), got {list(relu_out.shape)}")
    return k_dest


def relu_gather(x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    """The ReLU of some channels of ``x``, gathered: ``F.relu(x.index_select(1, index))``
    bitwise (NaN and -0.0 kept, as ATen's CPU ReLU), in one pass.

    Args:
        x: ``[N, C, H, W]`` float32 or float64 on the CPU or CUDA, any strides.
        index: ``[K]`` int64 channel numbers in ``[0, C)`` on ``x``'s device, or None (every
            channel in order: ``F.relu(x)``).

    Returns:
        ``[N, K, H, W]`` contiguous, ``x``'s dtype and device.
    """
    _check_gather(x, index)
    check_device(x, "x")
    if compiled(x.device.type):
        return torch.ops.nwot_fast.relu_gather(x, index)
    return relu_gather_fallback(x, index)


def scatter_channels_(dest: torch.Tensor, dest_index: Optional[torch.Tensor], src: torch.Tensor,
                      src_index: Optional[torch.Tensor] = None, relu_out: Optional[torch.Tensor] = None,
                      accumulate: bool = False) -> None:
    """Move channels of ``src`` into ``dest`` in place, in one pass: for each of the K moved
    channels ``v = src[:, src_index[k]]``, zeroed where ``relu_out[:, k] <= 0`` when ``relu_out``
    is given (the gradient through a ReLU with that output: ``threshold_backward``), then
    ``dest[:, dest_index[k]] = v``, or ``+= v`` when ``accumulate``. Bitwise the composition
    ``dest.index_copy_`` / ``index_add_(1, dest_index, threshold_backward(src.index_select(1,
    src_index), relu_out, 0))`` (:func:`scatter_channels_fallback`).

    Args:
        dest: ``[N, Cd, H, W]`` float32 or float64 on the CPU or CUDA, any strides (a channel
            slice of a larger buffer is written in place); must not overlap the channels read.
        dest_index: ``[K]`` int64 distinct channel numbers in ``[0, Cd)``, or None (``K = Cd``,
            in order). Distinctness is checked by the CPU kernel only.
        src: ``[N, Cs, H, W]``, ``dest``'s dtype and device, any strides.
        src_index: ``[K]`` int64 in ``[0, Cs)``, or None (``K = Cs``, in order).
        relu_out: ``[N, K, H, W]`` or None: the ReLU output that masks the moved values.
        accumulate: add into ``dest`` instead of overwriting.
    """
    if not isinstance(accumulate, bool):
        raise TypeError(f"accumulate must be a bool, got {type(accumulate).__name__}")
    _check_scatter(dest, dest_index, src, src_index, relu_out)
    check_device(dest, "dest")
    if compiled(dest.device.type):
        torch.ops.nwot_fast.scatter_channels_(dest, dest_index, src, src_index, relu_out, accumulate)
    else:
        scatter_channels_fallback(dest, dest_index, src, src_index, relu_out, accumulate)


def relu_gather_fallback(x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`relu_gather` in ATen's operators (two passes)."""
    return torch.relu(x if index is None else x.index_select(1, index)).contiguous()


def scatter_channels_fallback(dest: torch.Tensor, dest_index: Optional[torch.Tensor], src: torch.Tensor,
                              src_index: Optional[torch.Tensor] = None, relu_out: Optional[torch.Tensor] = None,
                              accumulate: bool = False) -> None:
    """:func:`scatter_channels_` in ATen's operators (up to three passes)."""
    v = src if src_index is None else src.index_select(1, src_index)
    if relu_out is not None:
        v = torch.ops.aten.threshold_backward(v, relu_out, 0)
    if dest_index is None:
        dest.add_(v) if accumulate else dest.copy_(v)
    elif accumulate:
        dest.index_add_(1, dest_index, v)
    else:
        dest.index_copy_(1, dest_index, v)


def _register_fakes() -> None:
    @torch.library.register_fake("nwot_fast::relu_gather")
    def _relu_gather_fake(x, index):
        K = _check_gather(x, index)
        return x.new_empty((x.shape[0], K, x.shape[2], x.shape[3]))

    @torch.library.register_fake("nwot_fast::scatter_channels_")
    def _scatter_channels_fake(dest, dest_index, src, src_index, relu_out, accumulate):
        _check_scatter(dest, dest_index, src, src_index, relu_out)


_switch = compiled_switch(_register_fakes)


def compiled(device_type: str) -> bool:
    """Whether the compiled channel operators serve ``device_type`` (registering their fake kernels the first time)."""
    return _switch(device_type)
