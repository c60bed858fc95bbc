"""Typed wrappers over the compiled operators ``torch.ops.nwot_fast.*``, their fake kernels,
and a batched pure-PyTorch fallback with the same semantics.

Shapes: A architectures, B samples, D input features, W 64-bit code words.

- :func:`jacob_cov_score` ``J [A, B, D] float32|float64 -> [A] float64``: row-centred,
  row-normalised float64 correlation (``np.corrcoef`` semantics), symmetric eigenvalues ``l``,
  ``S = -sum(log(l + 1e-5) + 1 / (l + 1e-5))``; NaN for an architecture with a zero-variance
  row of J (all its entries equal), the others unaffected.
- :func:`pack_codes` ``x [B, ...] -> int64 [B, W]``: bit k of word w is
  ``x.flatten(1)[:, 64 w + k] > 0``; padding bits are 0.
- :func:`hamming_kernel` ``codes int64 [A, B, W], multiplicity int64 [A, W], units int64 [A]
  -> K int64 [A, B, B]``: ``K[a, i, j] = units[a] - sum_w multiplicity[a, w] *
  popcount(codes[a, i, w] ^ codes[a, j, w])``, i.e. ``sum over hooks of c c^T + (1-c)(1-c)^T``.
- :func:`logdet_score` ``K [A, B, B] int64|float64 -> [A] float64``: ``log|det K|`` (sign
  ignored), ``-inf`` exactly when K is singular (decided with integer arithmetic, see
  :mod:`nwot_fast.exact`; a float64 K with non-integer entries keeps the floating rule).
- :func:`hook_logdet_score`: :func:`hamming_kernel` then :func:`logdet_score`, fused.
- :func:`avg_pool3x3` ``x [N, C, H, W] float32|float64``: NB201's ``avg_pool_3x3`` with autograd, the
  compiled CPU kernel bitwise equal to ATen's (the fast path's slowest op in ATen on the CPU),
  NCHW and channels-last.
- :func:`batch_norm_train` ``x [N, P C, H, W] float32|float64, parts P -> P tensors [N, C, H, W]``:
  NB201's BatchNorm2d in train mode at initialisation (weight 1, bias 0), with autograd; on
  the CPU a compiled channels-last kernel whose outputs are dense channels-last tensors.
- :func:`pack_layers` / :func:`stack_codes`: build the ``codes, multiplicity, units`` triple
  from per-layer activations, and batch several architectures.

The compiled extension is used when :mod:`nwot_fast._ext` could load it for the tensors'
device; otherwise the ``*_fallback`` functions below run (tests call them directly).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

from nwot_fast import _ext, exact
from nwot_fast._common import BN_EPS, EIG_EPS
# Bytes of float64 temporaries the fallbacks allow themselves per step (they chunk above it).
_FALLBACK_BYTES = 256 << 20

__all__ = [
    "jacob_cov_score",
    "pack_codes",
    "hamming_kernel",
    "logdet_score",
    "hook_logdet_score",
    "avg_pool3x3",
    "batch_norm_train",
    "pack_layers",
    "stack_codes",
    "jacob_cov_score_fallback",
    "pack_codes_fallback",
    "hamming_kernel_fallback",
    "logdet_score_fallback",
    "hook_logdet_score_fallback",
]


# ---------------------------------------------------------------------------------------------
# Argument checks: the same words as the TORCH_CHECKs in csrc/nwot.h. The fake kernels call
# them without the device check.


def _tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _device(t: torch.Tensor, name: str) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {t.device}")


def _same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {t.device}")


def _check_jacobian(J) -> None:
    _tensor(J, "J")
    if J.dim() != 3:
        raise ValueError(f"J must be 3-D [archs, batch, features], got {J.dim()}-D")
    if J.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"J must be float32 or float64, got {J.dtype}")
    if J.shape[1] < 2:
        raise ValueError(f"J must have at least 2 samples per architecture (batch >= 2), got batch {J.shape[1]}")
    if J.shape[2] < 1:
        raise ValueError(f"J must have at least 1 feature, got {J.shape[2]}")


def _check_activations(x, name: str = "x") -> None:
    _tensor(x, name)
    if x.dim() < 2:
        raise ValueError(f"{name} must be at least 2-D [batch, units...], got {x.dim()}-D")
    if not (x.is_floating_point() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be a floating-point or bool tensor, got {x.dtype}")


def _check_codes(codes, multiplicity, units) -> None:
    _tensor(codes, "codes")
    _tensor(multiplicity, "multiplicity")
    _tensor(units, "units")
    if codes.dim() != 3:
        raise ValueError(f"codes must be 3-D [archs, batch, words], got {codes.dim()}-D")
    if codes.dtype != torch.int64:
        raise TypeError(f"codes must be int64 (packed bits), got {codes.dtype}")
    if multiplicity.dim() != 2:
        raise ValueError(f"multiplicity must be 2-D [archs, words], got {multiplicity.dim()}-D")
    if multiplicity.dtype != torch.int64:
        raise TypeError(f"multiplicity must be int64, got {multiplicity.dtype}")
    if units.dim() != 1:
        raise ValueError(f"units must be 1-D [archs], got {units.dim()}-D")
    if units.dtype != torch.int64:
        raise TypeError(f"units must be int64, got {units.dtype}")
    A, _, W = codes.shape
    if tuple(multiplicity.shape) != (A, W):
        raise ValueError(
            f"multiplicity must have shape [archs, words] = [{A}, {W}] to match codes {list(codes.shape)}, "
            f"got {list(multiplicity.shape)}"
        )
    if tuple(units.shape) != (A,):
        raise ValueError(f"units must have shape [archs] = [{A}] to match codes {list(codes.shape)}, got {list(units.shape)}")


def _check_kernel_matrix(K) -> None:
    _tensor(K, "K")
    if K.dim() != 3:
        raise ValueError(f"K must be 3-D [archs, batch, batch], got {K.dim()}-D")
    if K.shape[1] != K.shape[2]:
        raise ValueError(f"K must be square in its last two dims [archs, batch, batch], got {list(K.shape)}")
    if K.dtype not in (torch.int64, torch.float64):
        raise TypeError(f"K must be int64 or float64, got {K.dtype}")


def _check_pool_input(x, name: str) -> None:
    _tensor(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D [batch, channels, height, width], got {x.dim()}-D")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")


def _check_bn_input(x, parts) -> None:
    _check_pool_input(x, "x")
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a positive int, got {parts!r}")
    if x.shape[1] % parts:
        raise ValueError(f"x channels ({x.shape[1]}) must be divisible by parts ({parts})")
    if x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        raise ValueError(f"x must have more than 1 value per channel for train-mode BatchNorm, got shape {list(x.shape)}")


# ---------------------------------------------------------------------------------------------
# Public wrappers


def jacob_cov_score(J: torch.Tensor) -> torch.Tensor:
    """``J [A, B, D]`` (float32/float64) -> scores ``[A]`` float64; NaN where a row of J[a] has zero variance."""
    _check_jacobian(J)
    _device(J, "J")
    if _compiled(J.device.type):
        return torch.ops.nwot_fast.jacob_cov_score(J)
    return jacob_cov_score_fallback(J)


def pack_codes(x: torch.Tensor) -> torch.Tensor:
    """``x [B, ...]`` (floating or bool) -> ``int64 [B, ceil(units / 64)]``, bits ``x > 0``."""
    _check_activations(x)
    _device(x, "x")
    if _compiled(x.device.type):
        return torch.ops.nwot_fast.pack_codes(x)
    return pack_codes_fallback(x)


def hamming_kernel(codes: torch.Tensor, multiplicity: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Agreement counts ``K int64 [A, B, B]`` from packed codes (see the module docstring)."""
    _check_codes(codes, multiplicity, units)
    _device(codes, "codes")
    _same_device(multiplicity, "multiplicity", codes, "codes")
    _same_device(units, "units", codes, "codes")
    if _compiled(codes.device.type):
        return torch.ops.nwot_fast.hamming_kernel(codes, multiplicity, units)
    return hamming_kernel_fallback(codes, multiplicity, units)


def logdet_score(K: torch.Tensor) -> torch.Tensor:
    """``K [A, B, B]`` (int64/float64) -> ``log|det K|`` ``[A]`` float64, ``-inf`` where singular."""
    _check_kernel_matrix(K)
    _device(K, "K")
    if _compiled(K.device.type):
        return torch.ops.nwot_fast.logdet_score(K)
    return logdet_score_fallback(K)


def avg_pool3x3(x: torch.Tensor) -> torch.Tensor:
    """NB201's ``avg_pool_3x3``: ``F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)``, with
    autograd. On the CPU (float32 or float64, 4-D) the compiled kernel, bitwise equal to ATen's
    kernels in both directions and several times faster than its NCHW ones: a dense
    channels-last input is pooled in that layout (channels-last output), any other made
    contiguous first (NCHW output); elsewhere ATen's pooling."""
    if (isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.dim() == 4 and _compiled("cpu")):
        return torch.ops.nwot_fast.avg_pool3x3(x)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def batch_norm_train(x: torch.Tensor, parts: int = 1) -> Tuple[torch.Tensor, ...]:
    """``F.batch_norm(x, None, None, training=True, eps=1e-5)`` (batch statistics, biased
    variance, no affine: NB201's BatchNorm2d at initialisation), with autograd, split along the
    channels into ``parts`` equal groups (a merged convolution's edges). On the CPU (float32 or
    float64, 4-D) the compiled kernel: statistics summed in float64, every group returned as a
    dense channels-last tensor (any input layout is read as channels-last); elsewhere ATen's
    BatchNorm, split into channel slices."""
    _check_bn_input(x, parts)
    if x.device.type == "cpu" and _compiled("cpu"):
        ys, _ = torch.ops.nwot_fast.batch_norm_train(x, parts)
        return tuple(ys)
    y = torch.nn.functional.batch_norm(x, None, None, None, None, True, 0.0, BN_EPS)
    return y.split(x.shape[1] // parts, dim=1)


def hook_logdet_score(codes: torch.Tensor, multiplicity: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """``log|det K|`` ``[A]`` float64 of the agreement kernel of packed codes, in one call."""
    _check_codes(codes, multiplicity, units)
    _device(codes, "codes")
    _same_device(multiplicity, "multiplicity", codes, "codes")
    _same_device(units, "units", codes, "codes")
    if _compiled(codes.device.type):
        return torch.ops.nwot_fast.hook_logdet_score(codes, multiplicity, units)
    return hook_logdet_score_fallback(codes, multiplicity, units)


# ---------------------------------------------------------------------------------------------
# Building codes


def pack_layers(
    layers: Sequence[torch.Tensor], multiplicities: Sequence[int]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes of one architecture from its hooked layers.

    ``layers[h]`` is the activation ``[B, ...]`` (float or bool; the code is ``> 0``) seen by
    hook h and ``multiplicities[h]`` how many times that layer counts in K (2 for an NB201
    ReLU-Conv-BN input under the default ``relu_match="name"`` rule). Each layer is padded to
    whole words with zero bits. Returns ``codes [1, B, W]``, ``multiplicity [1, W]`` and
    ``units [1]`` (int64, on the layers' device) for :func:`hook_logdet_score`.
    """
    if isinstance(layers, torch.Tensor) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers must be a list of tensors [batch, ...], got {type(layers).__name__}")
    if not isinstance(multiplicities, (list, tuple)):
        raise TypeError(f"multiplicities must be a list of ints, got {type(multiplicities).__name__}")
    if len(layers) == 0:
        raise ValueError("layers must not be empty: hook_logdet needs at least one hooked layer")
    if len(multiplicities) != len(layers):
        raise ValueError(f"multiplicities must have one entry per layer ({len(layers)}), got {len(multiplicities)}")
    device = layers[0].device if isinstance(layers[0], torch.Tensor) else None
    batch = None
    words, weights, units = [], [], 0
    for h, (layer, m) in enumerate(zip(layers, multiplicities)):
        _check_activations(layer, f"layers[{h}]")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"multiplicities[{h}] must be a positive int, got {m!r}")
        if layer.device != device:
            raise ValueError(f"layers[{h}] must be on the same device as layers[0] ({device}), got {layer.device}")
        if batch is None:
            batch = layer.shape[0]
        elif layer.shape[0] != batch:
            raise ValueError(f"layers[{h}] must have batch {batch} like layers[0], got {layer.shape[0]}")
        c = pack_codes(layer.reshape(layer.shape[0], -1) if layer.dim() > 2 else layer)
        words.append(c)
        weights.append(torch.full((c.shape[1],), m, dtype=torch.int64, device=device))
        units += m * (layer.numel() // max(batch, 1))
    codes = torch.cat(words, dim=1).unsqueeze(0)
    multiplicity = torch.cat(weights).unsqueeze(0)
    return codes, multiplicity, torch.tensor([units], dtype=torch.int64, device=device)


def stack_codes(
    items: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch several ``(codes, multiplicity, units)`` triples along the architecture axis,
    padding shorter ones with zero words of multiplicity 0 (which change nothing)."""
    if len(items) == 0:
        raise ValueError("items must not be empty")
    for k, (c, m, u) in enumerate(items):
        try:
            _check_codes(c, m, u)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"items[{k}]: {exc}") from None
    batch = items[0][0].shape[1]
    for k, (c, _, _) in enumerate(items):
        if c.shape[1] != batch:
            raise ValueError(f"items[{k}] codes must have batch {batch} like items[0], got {c.shape[1]}")
    W = max(c.shape[2] for c, _, _ in items)
    pad = torch.nn.functional.pad
    codes = torch.cat([pad(c, (0, W - c.shape[2])) for c, _, _ in items])
    multiplicity = torch.cat([pad(m, (0, W - m.shape[1])) for _, m, _ in items])
    units = torch.cat([u for _, _, u in items])
    return codes, multiplicity, units


# ---------------------------------------------------------------------------------------------
# Pure-PyTorch fallback: batched, same semantics as the compiled operators.


def jacob_cov_score_fallback(J: torch.Tensor) -> torch.Tensor:
    _check_jacobian(J)
    A, B, D = J.shape
    scores = torch.empty(A, dtype=torch.float64, device=J.device)
    step = max(1, min(A, _FALLBACK_BYTES // max(1, B * D * 8)))
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


def pack_codes_fallback(x: torch.Tensor) -> torch.Tensor:
    _check_activations(x)
    B = x.shape[0]
    bits = (x.reshape(B, -1) > 0).to(torch.int64)
    units = bits.shape[1]
    W = (units + 63) // 64
    bits = torch.nn.functional.pad(bits, (0, 64 * W - units)).reshape(B, W, 2, 32)
    halves = (bits << torch.arange(32, device=x.device)).sum(dim=3)  # each < 2**32
    return halves[:, :, 0] | (halves[:, :, 1] << 32)  # the shift wraps into the sign bit


def _unpack(codes: torch.Tensor) -> torch.Tensor:
    """int64 [..., W] -> float64 bits [..., 64 W]."""
    shifts = torch.arange(64, device=codes.device)
    return ((codes.unsqueeze(-1) >> shifts) & 1).to(torch.float64).flatten(-2)


def hamming_kernel_fallback(codes: torch.Tensor, multiplicity: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    # popcount(c_i ^ c_j) = sum_bits c_i + c_j - 2 c_i c_j, so with per-bit weights m:
    # disagreements = r_i + r_j - 2 (c diag(m) c^T)_ij with r = c m; exact in float64.
    _check_codes(codes, multiplicity, units)
    A, B, W = codes.shape
    disagree = torch.zeros(A, B, B, dtype=torch.float64, device=codes.device)
    step = max(1, _FALLBACK_BYTES // max(1, A * B * 64 * 8 * 2))
    for w0 in range(0, W, step):
        c = _unpack(codes[:, :, w0 : w0 + step])  # [A, B, 64 w]
        m = multiplicity[:, w0 : w0 + step].to(torch.float64).repeat_interleave(64, dim=1)  # [A, 64 w]
        cm = c * m.unsqueeze(1)
        r = cm.sum(dim=2)
        disagree += r.unsqueeze(2) + r.unsqueeze(1) - 2.0 * torch.bmm(cm, c.transpose(1, 2))
    return units.view(A, 1, 1) - disagree.round().to(torch.int64)


def logdet_score_fallback(K: torch.Tensor) -> torch.Tensor:
    _check_kernel_matrix(K)
    # Singularity is decided exactly on the host (nwot_fast.exact, the algorithm of the
    # compiled operators); only a K not proven singular gets torch's LU, one matrix per call:
    # torch's batched CPU LU runs LAPACK getrf on several pool threads at once for large
    # matrices, and with MKL that returns wrong determinants once torch.set_num_threads has
    # been called (seen with torch 2.13: log|det| off by ~20 for 7 x 256 x 256;
    # pytorch/pytorch#142815, #181570).
    host = K.detach().cpu().numpy()
    device_K = K.to(torch.float64)

    def floating(a: int) -> float:
        return float(torch.linalg.slogdet(device_K[a]).logabsdet)

    scores = [exact.logabsdet(host[a], lambda _, a=a: floating(a)) for a in range(len(host))]
    return torch.tensor(scores, dtype=torch.float64, device=K.device)


def hook_logdet_score_fallback(codes: torch.Tensor, multiplicity: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    return logdet_score_fallback(hamming_kernel_fallback(codes, multiplicity, units))


# ---------------------------------------------------------------------------------------------
# Fake kernels (shapes and dtypes only) for torch.compile / opcheck; registered once the
# loader has loaded the library that defines the schemas.

_fakes_registered = False


def _compiled(device_type: str) -> bool:
    """Whether the compiled operators serve ``device_type`` (registering their fake kernels
    the first time they do)."""
    if not _ext.available(device_type):
        return False
    _register_fakes()
    return True


def _register_fakes() -> None:
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True

    @torch.library.register_fake("nwot_fast::jacob_cov_score")
    def _jacob_cov_score_fake(J):
        _check_jacobian(J)
        return J.new_empty((J.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("nwot_fast::pack_codes")
    def _pack_codes_fake(x):
        _check_activations(x)
        # As the kernels: units = numel / B, so W = 0 when B = 0 (the real op returns [0, 0]).
        units = 1
        for s in x.shape[1:]:
            units = units * s
        words = 0 if x.shape[0] == 0 else (units + 63) // 64
        return x.new_empty((x.shape[0], words), dtype=torch.int64)

    @torch.library.register_fake("nwot_fast::hamming_kernel")
    def _hamming_kernel_fake(codes, multiplicity, units):
        _check_codes(codes, multiplicity, units)
        return codes.new_empty((codes.shape[0], codes.shape[1], codes.shape[1]), dtype=torch.int64)

    @torch.library.register_fake("nwot_fast::logdet_score")
    def _logdet_score_fake(K):
        _check_kernel_matrix(K)
        return K.new_empty((K.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("nwot_fast::hook_logdet_score")
    def _hook_logdet_score_fake(codes, multiplicity, units):
        _check_codes(codes, multiplicity, units)
        return codes.new_empty((codes.shape[0],), dtype=torch.float64)

    def _pool_fake(name):
        def fake(x):
            _check_pool_input(x, name)
            nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            return torch.empty_like(x, memory_format=torch.channels_last if nhwc else torch.contiguous_format)

        return fake

    torch.library.register_fake("nwot_fast::avg_pool3x3")(_pool_fake("x"))
    torch.library.register_fake("nwot_fast::avg_pool3x3_backward")(_pool_fake("grad"))

    # The pooling is linear: its backward is the adjoint (nothing saved from the forward), and
    # the adjoint of the backward is the forward again (double backward).
    torch.library.register_autograd(
        "nwot_fast::avg_pool3x3", lambda ctx, grad: torch.ops.nwot_fast.avg_pool3x3_backward(grad))
    torch.library.register_autograd(
        "nwot_fast::avg_pool3x3_backward", lambda ctx, grad: torch.ops.nwot_fast.avg_pool3x3(grad))

    @torch.library.register_fake("nwot_fast::batch_norm_train")
    def _batch_norm_train_fake(x, parts):
        _check_bn_input(x, parts)
        N, PC, H, W = x.shape
        ys = [x.new_empty((N, PC // parts, H, W)).contiguous(memory_format=torch.channels_last) for _ in range(parts)]
        return ys, x.new_empty((PC,), dtype=torch.float64)

    @torch.library.register_fake("nwot_fast::batch_norm_train_backward")
    def _batch_norm_train_backward_fake(grad, y, invstd):
        N, C, H, W = y[0].shape
        return y[0].new_empty((N, len(y) * C, H, W)).contiguous(memory_format=torch.channels_last)

    def _bn_setup(ctx, inputs, output):
        ys, invstd = output
        ctx.save_for_backward(invstd, *ys)

    def _bn_backward(ctx, grad_ys, grad_invstd):
        # One gradient per part, read where autograd put it (no stack into one tensor).
        invstd, *ys = ctx.saved_tensors
        return torch.ops.nwot_fast.batch_norm_train_backward(list(grad_ys), ys, invstd), None

    # First derivatives only: the fast path differentiates the network once (jacob_cov).
    torch.library.register_autograd("nwot_fast::batch_norm_train", _bn_backward, setup_context=_bn_setup)
