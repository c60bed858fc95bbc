"""Input builders (and one timing helper) shared by the operator benchmarks in bench/.

Jacobians: ``J [A, B, 3072]`` float32 (a 3x32x32 input), rows correlated like real ones.
Codes: per architecture the ReLU inputs of an NB201-like network at 32x32: stage widths
16x32x32, 32x16x16, 64x8x8 counted twice (ReLU-Conv-BN wrapper + inner ReLU) and the final
64-unit ReLU once, about 0.5 positive.
"""

from __future__ import annotations

import statistics
import time

import torch

D = 3072
HOOK_LAYERS = [((16, 32, 32), 2), ((32, 16, 16), 2), ((64, 8, 8), 2), ((64,), 1)]


def jacobians(A: int, B: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.7 * torch.randn(A, 1, D, generator=g) + torch.randn(A, B, D, generator=g)).to(dtype)


def hook_activations(B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((B,) + shape, generator=g) - 0.5 for shape, _ in HOOK_LAYERS], [m for _, m in HOOK_LAYERS]


def hook_codes(A: int, B: int, seed: int = 0):
    """Packed codes of A architectures (built once; packing is not part of the timed op)."""
    from nwot_fast import ops

    items = [ops.pack_layers(*hook_activations(B, seed + a)) for a in range(A)]
    return ops.stack_codes(items)


def hook_units() -> int:
    total = 0
    for shape, m in HOOK_LAYERS:
        n = 1
        for s in shape:
            n *= s
        total += m * n
    return total


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls, after one warm-up call
    (allocations, first-call loading)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_ms(fn, repeats: int) -> float:
    """:func:`median_time` in milliseconds."""
    return 1e3 * median_time(fn, repeats)
