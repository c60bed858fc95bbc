"""Typed wrappers over the compiled operators ``torch.ops.nwot_fast.*``, their fake kernels,
and a pure-PyTorch fallback with the same semantics (batched over architectures), by op family:

- :mod:`nwot_fast.ops.jacobian`: :func:`jacob_cov_score` ``J [A, B, D] -> [A] float64``;
- :mod:`nwot_fast.ops.codes`: :func:`pack_codes`, :func:`hamming_kernel`,
  :func:`logdet_score`, :func:`hook_logdet_score`, :func:`pack_layers`, :func:`stack_codes`
  (hook_logdet from ReLU codes);
- :mod:`nwot_fast.ops.layers`: :func:`avg_pool3x3`, :func:`batch_norm_train` (NB201's
  pooling and train-mode BatchNorm, compiled on the CPU);
- :mod:`nwot_fast.ops.channels`: :func:`relu_gather`, :func:`scatter_channels_` (the
  multi-arch engine's channel moves, each fused with its ReLU).

Shapes: A architectures, B samples, D input features, W 64-bit code words. Each family checks
its arguments with the words of csrc/nwot.h's TORCH_CHECKs, uses the compiled extension when
:mod:`nwot_fast._ext` could load it for the tensors' device and otherwise runs its
``*_fallback`` functions (tests call them directly), and registers its fake kernels the first
time the extension serves it (never at import).
"""

from __future__ import annotations

from nwot_fast.ops import channels, codes, jacobian, layers
from nwot_fast.ops.channels import relu_gather, relu_gather_fallback, scatter_channels_, scatter_channels_fallback
from nwot_fast.ops.codes import (
    hamming_kernel,
    hamming_kernel_fallback,
    hook_logdet_score,
    hook_logdet_score_fallback,
    logdet_score,
    logdet_score_fallback,
    pack_codes,
    pack_codes_fallback,
    pack_layers,
    stack_codes,
)
from nwot_fast.ops.jacobian import jacob_cov_score, jacob_cov_score_fallback
from nwot_fast.ops.layers import avg_pool3x3, batch_norm_train

__all__ = [
    "compiled",
    "jacob_cov_score",
    "pack_codes",
    "hamming_kernel",
    "logdet_score",
    "hook_logdet_score",
    "avg_pool3x3",
    "batch_norm_train",
    "relu_gather",
    "scatter_channels_",
    "pack_layers",
    "stack_codes",
    "jacob_cov_score_fallback",
    "pack_codes_fallback",
    "hamming_kernel_fallback",
    "logdet_score_fallback",
    "hook_logdet_score_fallback",
    "relu_gather_fallback",
    "scatter_channels_fallback",
]


def compiled(device_type: str) -> bool:
    """Whether the compiled operators serve ``device_type`` (``"cpu"`` or ``"cuda"``); when
    they do, every family's fake kernels are registered (``torch.library.opcheck`` and
    ``torch.compile`` need them)."""
    served = [family.compiled(device_type) for family in (jacobian, codes, layers, channels)]
    return all(served)
