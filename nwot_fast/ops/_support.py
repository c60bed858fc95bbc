"""What the op families of :mod:`nwot_fast.ops` share: argument checks with the words of
csrc/nwot.h's TORCH_CHECKs, the fallbacks' memory budget, and the switch to the compiled
operators that registers a family's fake kernels on first use (never at import)."""

from __future__ import annotations

import threading
from typing import Callable

import torch

from nwot_fast import _ext

# Bytes of float64 temporaries the fallbacks allow themselves per step (they chunk above it).
FALLBACK_BYTES = 256 << 20


def check_tensor(t, name: str) -> None:
    """TypeError unless ``t`` is a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_feature_map(t, name: str) -> None:
    """TypeError / ValueError unless ``t`` is a float32 or float64 ``[batch, channels, height,
    width]`` tensor (what the pooling, BatchNorm and channel-move operators take)."""
    check_tensor(t, name)
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D [batch, channels, height, width], got {t.dim()}-D")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def check_device(t: torch.Tensor, name: str) -> None:
    """ValueError unless ``t`` is on a CPU or CUDA device (the fake kernels skip this check).
    Meta tensors pass: shapes only (bench/gpu_cost.py counts a GPU's work on them)."""
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {t.device}")


def check_same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """ValueError unless ``t`` is on the device of ``ref``."""
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def compiled_switch(register_fakes: Callable[[], None]) -> Callable[[str], bool]:
    """The ``compiled(device_type)`` of one op family: whether the compiled operators serve
    ``device_type`` (:func:`nwot_fast._ext.available`), calling ``register_fakes`` once, the
    first time they do (the library that defines the schemas must be loaded first)."""
    lock = threading.Lock()
    registered = []

    def compiled(device_type: str) -> bool:
        # Meta tensors run the fake kernels whenever the library is loaded: the fallbacks need values.
        if not _ext.available("cpu" if device_type == "meta" else device_type):
            return False
        if not registered:
            with lock:
                if not registered:
                    register_fakes()
                    registered.append(True)
        return True

    return compiled
