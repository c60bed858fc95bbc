"""What the layouts of the multi-arch mode share: the layouts and the device's default, what
each architecture computes in a cell (from its plan), and the packed codes of a chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from .. import ops
from ..nb201.constants import NUM_NODES
from ..nb201.registry import OpSpec

# The merged layout (sparse with 1x1 kernels zero-padded into the 3x3 group) was dropped: it was
# neither a default nor the fastest anywhere (bench/RESULTS.md).
LAYOUTS = ("sparse", "dense")

__all__ = ["LAYOUTS", "default_layout", "CellUse", "cell_use", "ChunkCodes", "code_arrays"]


def default_layout(device: torch.device) -> str:
    """The layout :func:`nwot_fast.multi_arch.run_chunk` uses unless told: ``"dense"`` on CUDA
    (fewest launches), ``"sparse"`` on the CPU (fewest FLOPs; bench/RESULTS.md, "Engine choice
    on the CPU")."""
    return "dense" if torch.device(device).type == "cuda" else "sparse"


@dataclass(frozen=True)
class CellUse:
    """What one architecture computes in a cell, from its plan (:class:`~nwot_fast.plans.Plan`):
    per edge its op's :class:`~nwot_fast.nb201.registry.OpSpec` when the plan uses the edge (else
    None), per node 0..2 the multiplicity of its codes (0: not packed), the convolution edges
    whose ReLU input is an exact zero (hook_logdet counts their units only) and the plan's code
    multiplier."""

    edges: Tuple[Optional[OpSpec], ...]  # per edge: its op when the plan uses the edge, else None
    codes: Tuple[int, ...]  # per node 0..2: multiplicity of its codes (0: not packed)
    zero_conv: int  # conv edges whose ReLU input is an exact zero (hook_logdet units only)
    code_multiplier: int


def cell_use(plan) -> "CellUse":
    """The :class:`CellUse` of a plan."""
    return CellUse(plan.edge_ops(), plan.code_multiplicities(), plan.zero_conv_edges, plan.code_multiplier)


class ChunkCodes:
    """Packed codes of a chunk of ``A`` architectures: per hooked layer ``packed`` holds
    ``[B, A, W]`` int64 and ``mults`` one multiplicity per architecture (``[A]`` int64);
    ``units [A]`` counts every architecture's code units with their multiplicities."""

    def __init__(self, A: int):
        self.packed: List[torch.Tensor] = []
        self.mults: List[np.ndarray] = []
        self.units = np.zeros(A, dtype=np.int64)
        self.A = A

    def add(self, t: torch.Tensor, mults: np.ndarray):
        """Pack a hooked layer of the chunk: ``t [B, A*C, ...]`` floating (architecture ``a`` in
        channels ``a*C .. a*C + C - 1``), counted ``mults[a]`` times for architecture ``a``
        (``mults [A]`` int64; 0: not counted)."""
        B = t.shape[0]
        per_arch = t.reshape(B * self.A, -1)  # row b*A + a: sample b of architecture a
        packed = ops.pack_codes(per_arch)
        self.packed.append(packed.view(B, self.A, -1))
        self.mults.append(mults)
        self.units += mults * per_arch.shape[1]

    def add_zero(self, units_each: np.ndarray):
        """Count all-zero codes without packing them: ``units_each [A]`` int64 units (with their
        multiplicities) per architecture."""
        self.units += units_each


def code_arrays(uses: List[CellUse]):
    """The code counts of a chunk's cells as arrays for :class:`ChunkCodes`.

    Returns:
        ``(code_multiplier [A], zero_units [A], code_mult)``: int64 arrays of each
        architecture's code multiplier and the units of its all-zero convolution codes per
        pixel and channel, and per node 0..2 of a cell the multiplicities ``[A]`` int64 of its
        codes (None where no architecture counts that node).
    """
    cm = np.array([u.code_multiplier for u in uses], dtype=np.int64)
    zero_units = np.array([u.zero_conv * u.code_multiplier for u in uses], dtype=np.int64)
    code_mult: List[Optional[np.ndarray]] = []
    for i in range(NUM_NODES - 1):
        m = np.array([u.codes[i] for u in uses], dtype=np.int64)
        code_mult.append(m if m.any() else None)
    return cm, zero_units, code_mult
