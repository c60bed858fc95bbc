"""How many architectures one multi-arch network pass takes (the chunk size), from the memory."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import weights
from ..nb201.constants import N_CELLS, STAGE_CHANNELS
from .common import LAYOUTS, default_layout

MAX_CHUNK = 256

__all__ = ["MAX_CHUNK", "available_memory", "bytes_per_arch", "choose_chunk"]


def available_memory(device: torch.device) -> int:
    """Bytes free for a chunk: CUDA free memory, or the CPU's MemAvailable (Linux), else
    the physical memory less nothing known (a conservative 4 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def bytes_per_arch(method: str, batch_size: int, height: int = 32, width: int = 32, dtype=torch.float32,
                   layout: str = "sparse") -> int:
    """Upper estimate of one architecture's share of a chunk's peak memory: its weights (the
    largest cell's, on the host and on the device; the dense layout holds every edge's and a
    host copy more) and the activations a pass keeps, counted in node-sized tensors over all
    cells: jacob_cov everything saved for the backward (sparse: 10 per cell, measured peak 4-7
    at batch 8 and 32, 32x32; dense: 12, the ReLU input of 3 nodes and the convolution output
    of all 6 edges saved, the destinations' gradients and their masked copies alive in a
    cell's backward), hook_logdet 3 (the accumulators and gathered copies alive at once;
    measured 1.4-1.6, weights included)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    item = torch.empty(0, dtype=dtype).element_size()
    h, w, per_cell = height, width, 0
    for stage, C in enumerate(STAGE_CHANNELS):
        if stage:
            h, w = (h + 1) // 2, (w + 1) // 2
        per_cell += (N_CELLS + 2) * C * h * w
    params = weights.max_length() * (4 + item + (4 if layout == "dense" else 0))
    if method == "jacob_cov":
        return params + (12 if layout == "dense" else 10) * batch_size * per_cell * item
    return params + 3 * batch_size * per_cell * item


def choose_chunk(method: str, batch_size: int, height: int, width: int, dtype, device: torch.device,
                 available: Optional[int] = None, layout: Optional[str] = None) -> int:
    """Architectures per network pass: half the free memory (``available`` bytes, measured
    when None) over :func:`bytes_per_arch` of the ``layout`` (default :func:`default_layout`),
    at least 1 and at most :data:`MAX_CHUNK`."""
    if available is None:
        available = available_memory(device)
    per = bytes_per_arch(method, batch_size, height, width, dtype, layout or default_layout(device))
    return int(max(1, min(MAX_CHUNK, (available // 2) // max(per, 1))))
