"""The jacob_cov op family: ``J [A, B, D] -> [A]`` scores, compiled or fallback, and its fake kernel.

:func:`jacob_cov_score` ``J [A, B, D] float32|float64 -> [A] float64``: row-centred,
row-normalised float64 correlation (``np.corrcoef`` semantics), symmetric eigenvalues ``l``,
``S = -sum(log(l + 1e-5) + 1 / (l + 1e-5))``; NaN for an architecture with a zero-variance
row of J (all its entries equal), the others unaffected.
"""

from __future__ import annotations

import math

import torch

from nwot_fast._common import EIG_EPS
from nwot_fast.ops._support import FALLBACK_BYTES, check_device, check_tensor, compiled_switch

__all__ = ["jacob_cov_score", "jacob_cov_score_fallback"]


def _check_jacobian(J) -> None:
    check_tensor(J, "J")
    if J.dim() != 3:
        raise ValueError(f"J must be 3-D [archs, batch, features], got {J.dim()}-D")
    if J.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"J must be float32 or float64, got {J.dtype}")
    if J.shape[1] < 2:
        raise ValueError(f"J must have at least 2 samples per architecture (batch >= 2), got batch {J.shape[1]}")
    if J.shape[2] < 1:
        raise ValueError(f"J must have at least 1 feature, got {J.shape[2]}")


def jacob_cov_score(J: torch.Tensor) -> torch.Tensor:
    """The jacob_cov score of each architecture from its Jacobian (the module docstring's formula).

    Args:
        J: ``[A, B, D]`` float32 or float64, on the CPU or CUDA: per architecture the Jacobian
            of the summed outputs w.r.t. the ``B`` inputs, flattened to ``D`` features;
            ``B >= 2``, ``D >= 1``.

    Returns:
        ``[A]`` float64 on ``J``'s device: the scores, NaN for an architecture with a
        zero-variance row of J.
    """
    _check_jacobian(J)
    check_device(J, "J")
    if compiled(J.device.type):
        return torch.ops.nwot_fast.jacob_cov_score(J)
    return jacob_cov_score_fallback(J)


def jacob_cov_score_fallback(J: torch.Tensor) -> torch.Tensor:
    """:func:`jacob_cov_score` in pure PyTorch (float64 throughout), in steps of at most
    ``FALLBACK_BYTES`` of temporaries. Same ``J [A, B, D]`` -> ``[A]`` float64 contract."""
    _check_jacobian(J)
    A, B, D = J.shape
    scores = torch.empty(A, dtype=torch.float64, device=J.device)
    step = max(1, min(A, FALLBACK_BYTES // max(1, B * D * 8)))
    for a0 in range(0, A, step):
        Jc = J[a0 : a0 + step]
        flat = (Jc.amax(dim=2) == Jc.amin(dim=2)).any(dim=1)  # zero-variance row: NaN by rule
        X = Jc.to(torch.float64)
        X = X - X.mean(dim=2, keepdim=True)
        norm = X.square().sum(dim=2, keepdim=True).sqrt()
        X = torch.where(norm > 0, X / torch.where(norm > 0, norm, 1.0), 0.0)
        G = torch.bmm(X, X.transpose(1, 2)).clamp_(-1.0, 1.0)
        eig = torch.linalg.eigvalsh(G) + EIG_EPS
        s = -(torch.log(eig) + 1.0 / eig).sum(dim=1)
        scores[a0 : a0 + step] = torch.where(flat, torch.full_like(s, math.nan), s)
    return scores


def _register_fakes() -> None:
    @torch.library.register_fake("nwot_fast::jacob_cov_score")
    def _jacob_cov_score_fake(J):
        _check_jacobian(J)
        return J.new_empty((J.shape[0],), dtype=torch.float64)


_switch = compiled_switch(_register_fakes)


def compiled(device_type: str) -> bool:
    """Whether the compiled jacob_cov operator serves ``device_type`` (registering its fake kernel the first time)."""
    return _switch(device_type)
