"""The pure-PyTorch / NumPy path: the NASWOT scores written as plainly as possible.

Every faster path in this package (compiled operators, execution plans) is tested against
the functions here. They follow the authors' method step by step:

``jacob_cov`` (Mellor et al., 2020, the original score)
    BatchNorm in train mode; ``J = x.grad`` after ``output.backward(ones)`` on ONE batch
    (train-mode BatchNorm couples the samples, so per-sample Jacobians would differ);
    rows of J flattened; float64 row correlation with ``np.corrcoef`` semantics; eigenvalues
    of that symmetric matrix; ``S = -sum(log(l + 1e-5) + 1 / (l + 1e-5))``.
    Degenerate rule: if any row of J has zero variance (all its entries equal, e.g. a network
    whose output does not depend on its input), the correlation is undefined and S is NaN.

``hook_logdet`` (Mellor et al., 2021)
    On one train-mode forward pass, the binary code ``c = (input > 0)`` of every hooked module
    (by default every module whose class name contains ``ReLU``), flattened per sample;
    ``K = sum over hooks of c c^T + (1 - c)(1 - c)^T`` accumulated exactly in float64 (entries
    are integer counts far below 2**53); ``S = log|det K|`` (sign ignored). When K is singular
    S is ``-inf`` (in NB201: every ReLU sees only zeros), decided exactly
    (:mod:`nwot_fast.exact`), not by the rounding of the LU.
"""

from __future__ import annotations

import contextlib
import copy
from typing import List, Optional

import numpy as np
import torch
from torch import nn

from . import exact
from ._common import EIG_EPS, METHODS, RELU_MATCHES, torch_dtype  # noqa: F401  (EIG_EPS, RELU_MATCHES: re-exported)


def _output(out):
    """Models may return ``(features, logits)`` like xautodl's TinyNetwork: the last element is the output."""
    if isinstance(out, (tuple, list)):
        if not out:
            raise ValueError("model returned an empty tuple; expected a tensor or a tuple ending with the output")
        out = out[-1]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model output must be a tensor (or a tuple ending with one), got {type(out).__name__}")
    return out


# ---------------------------------------------------------------------------------------------
# jacob_cov


def input_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``J [B, D]``: gradient of the summed output w.r.t. the input, from one batched backward.

    The model is put in train mode (and left there) and its parameter gradients are cleared
    (set to None) before and after. When the output does not depend on the input at all
    (autograd finds no path from ``x`` to the output), J is exactly zero: every row has zero
    variance and jacob_cov is NaN.

    Args:
        model: the network; its output is a tensor or a tuple ending with one.
        x: ``[B, ...]`` floating-point input batch (not modified: a detached copy is used).

    Returns:
        ``[B, D]`` tensor, ``D = prod(x.shape[1:])``, of ``x``'s dtype and device.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = _output(model(x))
    if y.requires_grad:
        y.backward(torch.ones_like(y))
    model.zero_grad(set_to_none=True)
    # x.grad stays None when no path leads from x to y (a model that ignores its input, or an
    # output with no graph at all): the derivative is then exactly zero.
    grad = torch.zeros_like(x) if x.grad is None else x.grad
    return grad.detach().reshape(x.shape[0], -1)


def has_zero_variance_row(J) -> bool:
    """Whether some row of ``J`` has all its entries equal (zero variance: its correlation is undefined).

    Args:
        J: ``[B, D]`` array-like (NumPy array or CPU tensor), any real dtype.

    Returns:
        True when ``max == min`` along some row.
    """
    J = np.asarray(J)
    return bool(np.any(J.max(axis=1) == J.min(axis=1)))


def jacobian_correlation(J) -> np.ndarray:
    """Float64 row correlation of ``J`` (``np.corrcoef`` semantics).

    Args:
        J: ``[B, D]`` array-like, any real dtype (converted to float64 first).

    Returns:
        ``[B, B]`` float64 array; NaN entries for rows of zero variance.
    """
    return np.corrcoef(np.asarray(J, dtype=np.float64))


def eigenvalue_score(eigenvalues) -> float:
    """``S = -sum(log(l + eps) + 1 / (l + eps))`` over the eigenvalues ``l``, ``eps = EIG_EPS`` (1e-5).

    Args:
        eigenvalues: ``[B]`` array-like (the correlation matrix's eigenvalues), computed in float64.

    Returns:
        The jacob_cov score as a Python float.
    """
    v = np.asarray(eigenvalues, dtype=np.float64)
    return float(-np.sum(np.log(v + EIG_EPS) + 1.0 / (v + EIG_EPS)))


def jacob_cov_from_jacobian(J) -> float:
    """The jacob_cov score of one Jacobian; NaN when a row has zero variance.

    Args:
        J: ``[B, D]`` NumPy array or tensor (any device; copied to the CPU), any real dtype.

    Returns:
        The score from the float64 correlation's eigenvalues (``np.linalg.eigvalsh``).

    Raises:
        ValueError: ``J`` is not 2-D.
    """
    J = np.asarray(J.detach().cpu() if isinstance(J, torch.Tensor) else J)
    if J.ndim != 2:
        raise ValueError(f"J must be 2-D [batch, features], got {J.ndim}-D")
    if has_zero_variance_row(J):
        return float("nan")
    return eigenvalue_score(np.linalg.eigvalsh(jacobian_correlation(J)))


def jacob_cov(model: nn.Module, x: torch.Tensor) -> float:
    """The jacob_cov score of ``model`` on the batch ``x``: :func:`input_jacobian` then
    :func:`jacob_cov_from_jacobian`. No input checks, no dtype cast, no TF32 guard and the model
    is left in train mode: :func:`score` is the checked entry point.

    Args:
        model: the network.
        x: ``[B, C, H, W]`` floating-point input batch, on the model's device and dtype.

    Returns:
        The score; NaN when a row of the Jacobian has zero variance.
    """
    return jacob_cov_from_jacobian(input_jacobian(model, x))


# ---------------------------------------------------------------------------------------------
# hook_logdet


def _hooked(module: nn.Module, relu_match: str) -> bool:
    if relu_match == "name":
        return "ReLU" in type(module).__name__
    return type(module) is nn.ReLU


def relu_codes(model: nn.Module, x: torch.Tensor, relu_match: str = "name") -> List[torch.Tensor]:
    """The binary codes ``(input > 0)`` of every hooked module, in the order the hooks fire,
    from one train-mode forward pass without gradients (the model is left in train mode).

    Args:
        model: the network.
        x: ``[B, C, H, W]`` input batch on the model's device and dtype.
        relu_match: ``"name"`` hooks every module whose class name contains ``ReLU``;
            ``"exact"`` only ``torch.nn.ReLU`` instances.

    Returns:
        One ``[B, units]`` bool CPU tensor per hook call (``units``: the module's input
        flattened per sample); empty when no module is hooked.

    Raises:
        ValueError: ``relu_match`` is not one of :data:`RELU_MATCHES`.
    """
    if relu_match not in RELU_MATCHES:
        raise ValueError(f"relu_match must be one of {RELU_MATCHES}, got {relu_match!r}")
    codes: List[torch.Tensor] = []

    def hook(module, inputs):
        inp = inputs[0]
        codes.append((inp.detach().reshape(inp.shape[0], -1) > 0).cpu())

    # A pre-hook sees the input before an in-place ReLU overwrites it (the codes are the same
    # either way, since relu(x) > 0 exactly when x > 0).
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if _hooked(m, relu_match)]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return codes


def hamming_kernel(codes) -> np.ndarray:
    """``K = sum c c^T + (1 - c)(1 - c)^T`` over the codes, exact (float64 holds these integers).

    Args:
        codes: a sequence of ``[B, units_i]`` 0/1 arrays or CPU tensors (bool or numeric);
            ``units_i`` may differ between codes.

    Returns:
        ``[B, B]`` float64 array of integer counts: ``K[i, j]`` is the number of units on which
        samples i and j agree.

    Raises:
        ValueError: ``codes`` is empty (no hooked module).
    """
    K: Optional[np.ndarray] = None
    for c in codes:
        c = np.asarray(c, dtype=np.float64)
        k = c @ c.T + (1.0 - c) @ (1.0 - c).T
        K = k if K is None else K + k
    if K is None:
        raise ValueError("no hooked modules: hook_logdet needs at least one ReLU in the model")
    return K


def _lu(K: np.ndarray) -> np.ndarray:
    import warnings

    import scipy.linalg

    with warnings.catch_warnings():  # an exactly zero pivot is handled: exact.lu_logabsdet refuses it
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.lu_factor(K, check_finite=False)[0]


def logdet_score(K) -> float:
    """``log|det K|``, sign ignored; ``-inf`` exactly when K is singular.

    LAPACK's LU (getrf, what the authors' ``np.linalg.slogdet`` runs) gives the value, unless its
    error bound says a pivot came out of cancellation; whether K is singular is decided exactly
    first (:mod:`nwot_fast.exact`: K is an integer matrix, and a floating LU can return a finite
    value for a singular K, e.g. -34.03 with MKL for two identical rows).

    Args:
        K: ``[B, B]`` float64 array holding integers (:func:`hamming_kernel`).

    Returns:
        The score as a Python float; ``-inf`` when K is singular.
    """
    return exact.logabsdet(K, _lu)


def hook_logdet(model: nn.Module, x: torch.Tensor, relu_match: str = "name") -> float:
    """The hook_logdet score of ``model`` on the batch ``x``: :func:`relu_codes`, then
    :func:`hamming_kernel`, then :func:`logdet_score`. No input checks, no dtype cast, no TF32
    guard and the model is left in train mode: :func:`score` is the checked entry point.

    Args:
        model: the network; it needs at least one hooked module.
        x: ``[B, C, H, W]`` input batch on the model's device and dtype.
        relu_match: which modules are hooked (see :func:`relu_codes`).

    Returns:
        ``log|det K|``; ``-inf`` when K is singular.

    Raises:
        ValueError: no module is hooked, or ``relu_match`` is not allowed.
    """
    return logdet_score(hamming_kernel(relu_codes(model, x, relu_match)))


# ---------------------------------------------------------------------------------------------


def check_input(x) -> None:
    """Validate an input batch: a floating-point ``[B, C, H, W]`` tensor, ``B >= 2``, all finite.

    Raises:
        TypeError: ``x`` is not a tensor, or not floating-point.
        ValueError: ``x`` is not 4-D, has fewer than 2 samples, or holds NaN or infinity.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"input x must be 4-D [batch, channels, height, width], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"batch size must be at least 2 (the scores compare samples), got {x.shape[0]}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("input x contains NaN or infinite values")


@contextlib.contextmanager
def full_float32():
    """float32 math as defined, without TF32, for cuDNN convolutions and cuBLAS matmuls inside
    the block (torch lets cuDNN use TF32 by default on Ampere and later GPUs, which changes the
    scores); the previous settings are restored after. No effect on CPU computations."""
    cudnn_conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if cudnn_conv is not None and matmul is not None:  # torch >= 2.9: the precision API
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            torch.backends.cudnn.conv.fp32_precision = cudnn_conv
            torch.backends.cuda.matmul.fp32_precision = matmul
        return
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def score(model: nn.Module, x: torch.Tensor, method: str = "jacob_cov", *, relu_match: str = "name",
          dtype=torch.float32) -> float:
    """Score ``model`` on batch ``x`` with the pure path. Puts the model in train mode for the
    pass (as the authors did; BatchNorm running statistics are updated) and restores its mode.

    ``dtype=torch.float32`` (default) runs the model and batch as given: the authors'
    procedure. ``torch.float64`` scores a float64 copy of the model on ``x`` cast to float64
    (the model itself is left unchanged): the machine-independent truth of the score.
    TF32 is off for the pass (:func:`full_float32`).

    Args:
        model: the network (an ``nn.Module``; its output a tensor or a tuple ending with one).
        x: ``[B, C, H, W]`` floating-point batch, ``B >= 2``, finite, on the model's device.
        method: ``"jacob_cov"`` or ``"hook_logdet"``.
        relu_match: which modules hook_logdet hooks (see :func:`relu_codes`).
        dtype: ``torch.float32`` or ``torch.float64`` (see above).

    Returns:
        The score; NaN (jacob_cov, a zero-variance Jacobian row) and ``-inf`` (hook_logdet,
        singular K) are results, not errors.

    Raises:
        ValueError, TypeError: a bad method, model, batch, relu_match or dtype.
    """
    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_input(x)
    if torch_dtype(dtype) == torch.float64:
        model = copy.deepcopy(model).to(torch.float64)
        x = x.to(torch.float64)
    was_training = model.training
    try:
        with full_float32():
            if method == "jacob_cov":
                return jacob_cov(model, x)
            return hook_logdet(model, x, relu_match)
    finally:
        model.train(was_training)
