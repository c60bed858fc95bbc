"""Names and checks shared by every module, in one torch-free place.

Importing this module imports nothing heavy (no torch, no numpy), so the CLI, the store and
the readers can use it freely. Functions that need torch import it when called.
"""

from __future__ import annotations

METHODS = ("jacob_cov", "hook_logdet")
RELU_MATCHES = ("name", "exact")
# The precision a score is computed in: the network pass, the Jacobian or codes and the
# post-processing. float64 is the machine-independent truth (docs/PRECISION.md).
DTYPES = ("float32", "float64")
DEFAULT_DTYPE = "float32"
# The eigenvalue offset of jacob_cov: S = -sum(log(l + EIG_EPS) + 1 / (l + EIG_EPS)).
EIG_EPS = 1e-5


def dtype_name(dtype) -> str:
    """``"float32"`` or ``"float64"`` from a name (``"float64"``, ``"torch.float64"``) or a
    ``torch.dtype``; anything else is a ValueError that names the allowed values."""
    if dtype is None:
        return DEFAULT_DTYPE
    text = str(dtype)
    name = text[len("torch."):] if text.startswith("torch.") else text
    aliases = {"float": "float32", "double": "float64"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or torch.float32 / torch.float64), got {dtype!r}")
    return name


def torch_dtype(dtype):
    """The ``torch.dtype`` of :func:`dtype_name` ``(dtype)``."""
    import torch

    return getattr(torch, dtype_name(dtype))
