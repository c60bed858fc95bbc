"""Host -> device copies that do not make the host wait for the device."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_device"]


def to_device(values, device: torch.device) -> torch.Tensor:
    """A host array (NumPy or a CPU tensor) on ``device`` without a sync: on CUDA copied from
    pinned memory without blocking (PyTorch's caching host allocator keeps the pinned buffer
    alive until the copy is done, so the caller may drop it), elsewhere a plain copy (none on
    the CPU)."""
    t = torch.from_numpy(np.ascontiguousarray(values)) if isinstance(values, np.ndarray) else values
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=True)
