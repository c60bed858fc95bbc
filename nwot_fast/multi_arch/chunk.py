"""One chunk of the multi-arch mode: its network pass in the chosen layout and its scores in
one post-processing call."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from .. import ops, reference, weights
from . import dense, sparse
from .common import LAYOUTS, ChunkCodes, cell_use, default_layout

__all__ = ["run_chunk"]


def run_chunk(plans, xs: Sequence[torch.Tensor], seed: int, device: torch.device, dtype,
              layout: Optional[str] = None) -> List[float]:
    """Scores of a chunk of plans in one network pass and one post-processing call.

    Args:
        plans: :class:`~nwot_fast.plans.Plan` s of one method, each running a network.
        xs: one batch per plan, ``[B, 3, H, W]`` floating, all of one shape.
        seed: the weights' seed.
        device: the ``torch.device`` to run on.
        dtype: ``torch.float32`` or ``torch.float64``.
        layout: ``"sparse"`` (per cell and source node the (arch, edge) pairs of each op group
            gathered and scattered, 1x1 and 3x3 convolutions apart; autograd for jacob_cov) or
            ``"dense"`` (every edge of every arch in one grouped convolution per source node,
            zero weights and 0/1 masks for what an arch does not compute, a hand-written
            backward); None: :func:`default_layout`.

    Returns:
        The scores as floats, in the order of ``plans``.
    """
    if layout is None:
        layout = default_layout(device)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    A = len(plans)
    method = plans[0].method
    uses = [cell_use(p) for p in plans]
    archs = [p.arch for p in plans]
    stream = weights.for_seed(seed)
    x = torch.cat([t.to(device=device, dtype=dtype) for t in xs], 1) if A > 1 else xs[0].to(device=device, dtype=dtype)
    B = x.shape[0]
    codes = None if method == "jacob_cov" else ChunkCodes(A)
    with reference.full_float32():  # no TF32 on CUDA: float32 scores are those of float32
        if layout == "dense":
            J = dense.network_pass(x, uses, archs, stream, codes, device, dtype)
        else:
            J = sparse.network_pass(x, uses, archs, stream, codes, device, dtype)
        if codes is None:
            J = J.view(B, A, -1).transpose(0, 1).contiguous()  # [A, B, 3*H*W]
            return [float(v) for v in ops.jacob_cov_score(J).tolist()]
        packed = torch.cat(codes.packed, 2).transpose(0, 1).contiguous()  # [A, B, W]
        mult = np.concatenate([np.repeat(m[:, None], p.shape[2], axis=1) for m, p in zip(codes.mults, codes.packed)], 1)
        return [float(v) for v in ops.hook_logdet_score(
            packed, torch.from_numpy(mult).to(device), torch.from_numpy(codes.units.copy()).to(device)).tolist()]
