"""Per-plan vs batched engine on the CPU, A/B in one process (alternating rounds).

    python bench/engine_ab.py [--batch-sizes 8 32 128] [--archs 16] [--rounds 2]
                              [--methods jacob_cov hook_logdet] [--threads N] [--chunk N]

Times ``fast.score_archs(..., batched=False)`` and ``batched=True`` (default chunk unless
``--chunk``) on the same fixed random architectures (seed 2020) and Gaussian batch, rounds
alternating so that the load of a shared machine hits both alike; prints the best round of
each (seconds for all architectures) and the ratio. The basis of ``fast.use_batched``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nwot_fast import fast, reference  # noqa: E402
from nwot_fast.nb201 import NUM_ARCHS  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--archs", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=list(reference.METHODS), choices=reference.METHODS)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chunk", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    archs = random.Random(2020).sample(range(NUM_ARCHS), a.archs)
    for B in a.batch_sizes:
        x = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        for method in a.methods:
            best = {False: float("inf"), True: float("inf")}
            for _ in range(a.rounds):
                for batched in (False, True):
                    t = time.perf_counter()
                    list(fast.score_archs(archs, lambda _: x, method=method, batched=batched,
                                          chunk=a.chunk if batched else None))
                    best[batched] = min(best[batched], time.perf_counter() - t)
            print(f"batch {B:4d} {method:12s} per-plan {best[False]:7.2f} s  batched {best[True]:7.2f} s  "
                  f"per-plan/batched {best[False] / best[True]:5.2f}x  ({a.archs} archs, {torch.get_num_threads()} "
                  f"threads, load {tuple(round(v, 1) for v in __import__('os').getloadavg())})", flush=True)


if __name__ == "__main__":
    main()
