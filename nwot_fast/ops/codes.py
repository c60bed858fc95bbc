"""The hook_logdet op family: packed ReLU codes, their agreement kernel and its log-determinant,
compiled or fallback, with their fake kernels.

Shapes: A architectures, B samples, W 64-bit code words.

- :func:`pack_codes` ``x [B, ...] -> int64 [B, W]``: bit k of word w is
  ``x.flatten(1)[:, 64 w + k] > 0``; padding bits are 0.
- :func:`hamming_kernel` ``codes int64 [A, B, W], multiplicity int64 [A, W], units int64 [A]
  -> K int64 [A, B, B]``: ``K[a, i, j] = units[a] - sum_w multiplicity[a, w] *
  popcount(codes[a, i, w] ^ codes[a, j, w])``, i.e. ``sum over hooks of c c^T + (1-c)(1-c)^T``.
- :func:`logdet_score` ``K [A, B, B] int64|float64 -> [A] float64``: ``log|det K|`` (sign
  ignored), ``-inf`` exactly when K is singular (decided with integer arithmetic on K's rows
  scaled by powers of two, see :mod:`nwot_fast.exact`), NaN where K has a NaN or inf entry.
- :func:`hook_logdet_score`: :func:`hamming_kernel` then :func:`logdet_score`, fused.
- :func:`pack_layers` / :func:`stack_codes`: build the ``codes, multiplicity, units`` triple
  from per-layer activations, and batch several architectures.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from nwot_fast import exact
from nwot_fast.ops._support import FALLBACK_BYTES, check_device, check_same_device, check_tensor, compiled_switch

__all__ = ["pack_codes", "hamming_kernel", "logdet_score", "hook_logdet_score", "pack_layers", "stack_codes",
           "pack_codes_fallback", "hamming_kernel_fallback", "logdet_score_fallback", "hook_logdet_score_fallback"]


def _check_activations(x, name: str = "x") -> None:
    check_tensor(x, name)
    if x.dim() < 2:
        raise ValueError(f"{name} must be at least 2-D [batch, units...], got {x.dim()}-D")
    if not (x.is_floating_point() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be a floating-point or bool tensor, got {x.dtype}")


def _check_codes(codes, multiplicity, units) -> None:
    check_tensor(codes, "codes")
    check_tensor(multiplicity, "multiplicity")
    check_tensor(units, "units")
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
    check_tensor(K, "K")
    if K.dim() != 3:
        raise ValueError(f"K must be 3-D [archs, batch, batch], got {K.dim()}-D")
    if K.shape[1] != K.shape[2]:
        raise ValueError(f"K must be square in its last two dims [archs, batch, batch], got {list(K.shape)}")
    if K.dtype not in (torch.int64, torch.float64):
        raise TypeError(f"K must be int64 or float64, got {K.dtype}")


def pack_codes(x: torch.Tensor) -> torch.Tensor:
    """Pack the ReLU codes ``x > 0`` of each sample into 64-bit words.

    Args:
        x: ``[B, ...]`` floating or bool, on the CPU or CUDA: ``units`` values per sample (any
            memory format; the units are read in ``x.flatten(1)`` order).

    Returns:
        ``[B, W]`` int64, ``W = ceil(units / 64)``: bit ``k`` of word ``w`` is
        ``x.flatten(1)[:, 64 w + k] > 0``; padding bits are 0.
    """
    _check_activations(x)
    check_device(x, "x")
    if compiled(x.device.type):
        return torch.ops.nwot_fast.pack_codes(x)
    return pack_codes_fallback(x)


def hamming_kernel(codes: torch.Tensor, multiplicity: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The agreement counts of packed codes (the module docstring's formula).

    Args:
        codes: ``[A, B, W]`` int64: per architecture and sample, the packed ReLU codes
            (:func:`pack_codes`, several layers concatenated along ``W``).
        multiplicity: ``[A, W]`` int64: how often each word counts (0: padding).
        units: ``[A]`` int64: per architecture, the code units counted with their
            multiplicities (the value of K's entries for identical codes).
        All three on one device (CPU or CUDA).

    Returns:
        ``K [A, B, B]`` int64 on that device: ``K[a, i, j]`` the units on which samples ``i``
        and ``j`` of architecture ``a`` agree, counted with their multiplicities.
    """
    _check_codes(codes, multiplicity, units)
    check_device(codes, "codes")
    check_same_device(multiplicity, "multiplicity", codes, "codes")
    check_same_device(units, "units", codes, "codes")
    if compiled(codes.device.type):
        return torch.ops.nwot_fast.hamming_kernel(codes, multiplicity, units)
    return hamming_kernel_fallback(codes, multiplicity, units)


def logdet_score(K: torch.Tensor) -> torch.Tensor:
    """``log|det K|`` of each architecture's kernel matrix, ``-inf`` exactly where it is singular.

    Args:
        K: ``[A, B, B]`` int64 or float64 on the CPU or CUDA (an int64 K is decided singular or
            not with exact integer arithmetic, :mod:`nwot_fast.exact`).

    Returns:
        ``[A]`` float64 on ``K``'s device (the sign of the determinant is ignored); NaN where
        ``K[a]`` has a NaN or infinite entry.
    """
    _check_kernel_matrix(K)
    check_device(K, "K")
    if compiled(K.device.type):
        return torch.ops.nwot_fast.logdet_score(K)
    return logdet_score_fallback(K)


def hook_logdet_score(codes: torch.Tensor, multiplicity: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """hook_logdet's score from packed codes: :func:`hamming_kernel` then :func:`logdet_score`, fused.

    Args:
        codes: ``[A, B, W]`` int64: per architecture and sample, the packed ReLU codes
            (:func:`pack_codes`, several layers concatenated along ``W``).
        multiplicity: ``[A, W]`` int64: how often each word counts (0: padding).
        units: ``[A]`` int64: per architecture, the code units counted with their
            multiplicities (the value of K's entries for identical codes).
        All three on one device (CPU or CUDA).

    Returns:
        ``[A]`` float64 on that device: ``log|det K|``, ``-inf`` where K is singular.
    """
    _check_codes(codes, multiplicity, units)
    check_device(codes, "codes")
    check_same_device(multiplicity, "multiplicity", codes, "codes")
    check_same_device(units, "units", codes, "codes")
    if compiled(codes.device.type):
        return torch.ops.nwot_fast.hook_logdet_score(codes, multiplicity, units)
    return hook_logdet_score_fallback(codes, multiplicity, units)


def pack_layers(
    layers: Sequence[torch.Tensor], multiplicities: Sequence[int]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes of one architecture from its hooked layers. Each layer is padded to whole words
    with zero bits.

    Args:
        layers: the activations ``[B, ...]`` (floating or bool, all on one device; the code is
            ``> 0``) seen by each hook.
        multiplicities: per layer, how many times it counts in K (positive ints; 2 for an NB201
            ReLU-Conv-BN input under the default ``relu_match="name"`` rule).

    Returns:
        ``(codes [1, B, W], multiplicity [1, W], units [1])``, int64 on the layers' device, for
        :func:`hook_logdet_score`.
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
    """Batch several architectures' codes along the architecture axis, padding shorter ones with
    zero words of multiplicity 0 (which change nothing).

    Args:
        items: ``(codes [A_k, B, W_k], multiplicity [A_k, W_k], units [A_k])`` int64 triples,
            one batch size ``B`` for all.

    Returns:
        ``(codes [sum A_k, B, max W_k], multiplicity [sum A_k, max W_k], units [sum A_k])``.
    """
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


def pack_codes_fallback(x: torch.Tensor) -> torch.Tensor:
    """:func:`pack_codes` in pure PyTorch: ``x [B, ...]`` -> ``int64 [B, W]``."""
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
    """:func:`hamming_kernel` in pure PyTorch (exact float64 sums, in steps of at most
    ``FALLBACK_BYTES``): same arguments, ``K [A, B, B]`` int64."""
    # popcount(c_i ^ c_j) = sum_bits c_i + c_j - 2 c_i c_j, so with per-bit weights m:
    # disagreements = r_i + r_j - 2 (c diag(m) c^T)_ij with r = c m; exact in float64.
    _check_codes(codes, multiplicity, units)
    A, B, W = codes.shape
    disagree = torch.zeros(A, B, B, dtype=torch.float64, device=codes.device)
    step = max(1, FALLBACK_BYTES // max(1, A * B * 64 * 8 * 2))
    for w0 in range(0, W, step):
        c = _unpack(codes[:, :, w0 : w0 + step])  # [A, B, 64 w]
        m = multiplicity[:, w0 : w0 + step].to(torch.float64).repeat_interleave(64, dim=1)  # [A, 64 w]
        cm = c * m.unsqueeze(1)
        r = cm.sum(dim=2)
        disagree += r.unsqueeze(2) + r.unsqueeze(1) - 2.0 * torch.bmm(cm, c.transpose(1, 2))
    return units.view(A, 1, 1) - disagree.round().to(torch.int64)


def logdet_score_fallback(K: torch.Tensor) -> torch.Tensor:
    """:func:`logdet_score` in Python: ``K [A, B, B]`` int64|float64 -> ``[A]`` float64."""
    _check_kernel_matrix(K)
    # Singularity is decided exactly on the host (nwot_fast.exact, the algorithm of the
    # compiled operators); only a K proven nonsingular gets torch's LU (its value taken if its
    # error bound allows, exact.lu_logabsdet), one matrix per call:
    # torch's batched CPU LU runs LAPACK getrf on several pool threads at once for large
    # matrices, and with MKL that returns wrong determinants once torch.set_num_threads has
    # been called (seen with torch 2.13: log|det| off by ~20 for 7 x 256 x 256;
    # pytorch/pytorch#142815, #181570).
    host = K.detach().cpu().numpy()
    device_K = K.to(torch.float64)

    def factors(a: int):
        return torch.linalg.lu_factor_ex(device_K[a]).LU.cpu().numpy()

    scores = [exact.logabsdet(host[a], lambda _, a=a: factors(a)) for a in range(len(host))]
    return torch.tensor(scores, dtype=torch.float64, device=K.device)


def hook_logdet_score_fallback(codes: torch.Tensor, multiplicity: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """:func:`hook_logdet_score` from the fallbacks: same arguments, ``[A]`` float64."""
    return logdet_score_fallback(hamming_kernel_fallback(codes, multiplicity, units))


def _register_fakes() -> None:
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


_switch = compiled_switch(_register_fakes)


def compiled(device_type: str) -> bool:
    """Whether the compiled code operators serve ``device_type`` (registering their fake kernels the first time)."""
    return _switch(device_type)
