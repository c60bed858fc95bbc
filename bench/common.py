"""What the bench tools share: the operators' input builders, the alternating-rounds timing and
the description of the machine a figure was measured on.

Operator inputs (bench/bench_ops.py):
  Jacobians ``J [A, B, 3072]`` float32 (a 3x32x32 input), rows correlated like real ones.
  Codes: per architecture the ReLU inputs of an NB201-like network at 32x32: stage widths
  16x32x32, 32x16x16, 64x8x8 counted twice (ReLU-Conv-BN wrapper + inner ReLU) and the final
  64-unit ReLU once, about 0.5 positive (57,408 counted units per sample).
The architecture sample and the image batch of the scoring tools are bench/compare.py's
``fixed_archs`` and ``load_batch`` (bench/ab.py and bench/precision.py import them from there).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Callable, Dict, List, Mapping, Tuple

import torch

import nwot_fast
from nwot_fast import ops

D = 3072
HOOK_LAYERS = [((16, 32, 32), 2), ((32, 16, 16), 2), ((64, 8, 8), 2), ((64,), 1)]


def jacobians(A: int, B: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """``J [A, B, 3072]`` in ``dtype``: a component shared by the rows of an architecture plus
    per-sample noise (real Jacobians are correlated), from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return (0.7 * torch.randn(A, 1, D, generator=g) + torch.randn(A, B, D, generator=g)).to(dtype)


def hook_activations(B: int, seed: int) -> Tuple[List[torch.Tensor], List[int]]:
    """One architecture's hooked ReLU inputs: float32 tensors ``[B, *shape]`` of
    :data:`HOOK_LAYERS` (uniform in [-0.5, 0.5)) and the multiplicity of each."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((B,) + shape, generator=g) - 0.5 for shape, _ in HOOK_LAYERS], [m for _, m in HOOK_LAYERS]


def hook_codes(A: int, B: int, seed: int = 0):
    """Packed codes of A architectures, architecture ``a`` from ``hook_activations(B, seed + a)``:
    ``ops.stack_codes``'s ``(codes, multiplicity, units)``, ready for ``ops.hook_logdet_score``
    (built once; packing is not part of a timed operator call)."""
    items = [ops.pack_layers(*hook_activations(B, seed + a)) for a in range(A)]
    return ops.stack_codes(items)


def alternating_best(fns: Mapping[str, Callable[[], object]],
                     rounds: int) -> Tuple[Dict[str, float], Dict[str, object]]:
    """Best wall seconds of each ``fns[name]()`` over ``rounds`` rounds that call every function
    once in turn (on a shared machine a burst of load then hits all of them alike), and what each
    returned in its last call."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    best = {name: float("inf") for name in fns}
    results: Dict[str, object] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, results


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` gives it (speed claims name their CPU), else the platform's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The facts a figure in bench/RESULTS.md needs beside it: CPU, cores, threads, load,
    versions, the compiled backend in use and the date."""
    backend = nwot_fast.backend_info()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": tuple(round(v, 1) for v in os.getloadavg()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backend": f"{backend['in_use']} {backend['backends']}",
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def describe(info: Mapping) -> str:
    """One line for the top of a tool's output: ``machine()``'s facts."""
    return (f"# {info['cpu']}, {info['cores']} cores, {info['threads']} threads, load {info['load_average']}, "
            f"torch {info['torch']}, backend {info['backend']}, {info['date_utc']}")
