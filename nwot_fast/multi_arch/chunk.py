"""One chunk of the multi-arch mode: its network pass and its scores in one post-processing
call, all queued on the device (reading the scores is the chunk's one sync)."""

from __future__ import annotations

import torch

from .. import ops, reference
from . import sparse
from .common import ChunkCodes, cell_use

__all__ = ["run_chunk"]


def run_chunk(plans, x, seed: int, device: torch.device, dtype) -> torch.Tensor:
    """Scores of a chunk of plans in one network pass (:mod:`~nwot_fast.multi_arch.sparse`) and
    one post-processing call, all queued on the device.

    Args:
        plans: :class:`~nwot_fast.plans.Plan` s of one method, each running a network.
        x: the batches, ``[B, A*3, H, W]`` in ``dtype`` on ``device`` (architecture ``a``'s
            batch in channels ``3a .. 3a+2``), or one ``[B, 3, H, W]`` floating tensor per plan
            (all of one shape; moved and concatenated here).
        seed: the weights' seed (gathered on the device from its streams).
        device: the ``torch.device`` to run on.
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        ``[A]`` float64 scores on ``device``, in the order of ``plans`` (``.tolist()`` reads
        them: the chunk's one sync).
    """
    A = len(plans)
    method = plans[0].method
    uses = [cell_use(p) for p in plans]
    archs = [p.arch for p in plans]
    if not isinstance(x, torch.Tensor):
        x = torch.cat([t.to(device=device, dtype=dtype) for t in x], 1)
    B = x.shape[0]
    codes = None if method == "jacob_cov" else ChunkCodes(A)
    with reference.full_float32():  # no TF32 on CUDA: float32 scores are those of float32
        J = sparse.network_pass(x, uses, archs, seed, codes, device, dtype)
        if codes is None:
            return ops.jacob_cov_score(J.view(B, A, -1).transpose(0, 1).contiguous())  # J [A, B, 3*H*W]
        return ops.hook_logdet_score(*codes.triple(device))
