"""``nwot_fast.score``: score any ``nn.Module`` on a batch."""

from __future__ import annotations

from . import reference
from .reference import METHODS

__all__ = ["score", "METHODS"]


def score(model, x, method: str = "jacob_cov", *, relu_match: str = "name", dtype=None) -> float:
    """NASWOT score of ``model`` on the float batch ``x [B, C, H, W]``.

    ``method``: ``"jacob_cov"`` (2020) or ``"hook_logdet"`` (2021). ``relu_match`` (hook_logdet
    only): ``"name"`` hooks every module whose class name contains ``ReLU`` (the authors' rule),
    ``"exact"`` only ``nn.ReLU`` modules (as NASLib). If the model returns a tuple, its last
    element is the output. ``dtype``: ``torch.float32`` (default: the model and batch as given,
    the authors' procedure) or ``torch.float64`` (a float64 copy of the model; the
    machine-independent truth, see docs/PRECISION.md). Returns NaN (jacob_cov, a zero-variance Jacobian row) or ``-inf``
    (hook_logdet, singular kernel) for degenerate networks.
    """
    return reference.score(model, x, method, relu_match=relu_match, dtype=dtype)
