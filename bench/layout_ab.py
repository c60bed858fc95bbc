"""NCHW vs channels-last per-plan path on the CPU, A/B in one process (alternating rounds).

    python bench/layout_ab.py [--archs 6] [--batch-size 128] [--rounds 3]
                              [--methods jacob_cov hook_logdet] [--threads N]

Runs ``per_arch.run_plan`` over the first ``--archs`` of ``compare.fixed_archs(20)`` on the real
CIFAR-10 batch (Gaussian without it) with ``compile_plan(..., channels_last=False)`` (the
NCHW path: ATen BatchNorm, the compiled NCHW pooling) and ``channels_last=True`` (the
compiled channels-last BatchNorm and pooling), rounds alternating so that the load of a shared
machine hits both alike; prints the best round of each (seconds for all architectures), the
ratio and the float32 scores' largest relative difference between the two.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import compare  # noqa: E402
from nwot_fast import per_arch, plans, reference  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(reference.METHODS), choices=reference.METHODS)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    archs = compare.fixed_archs(20)[: a.archs]
    x, what = compare.load_batch(a.batch_size)
    print(f"{a.archs} archs, batch {a.batch_size} ({what}), {torch.get_num_threads()} threads")
    for method in a.methods:
        plans = {cl: [plans.compile_plan(arch, method, channels_last=cl) for arch in archs] for cl in (False, True)}
        best = {False: float("inf"), True: float("inf")}
        scores = {}
        for _ in range(a.rounds):
            for cl in (False, True):
                t = time.perf_counter()
                scores[cl] = [per_arch.run_plan(plan, x) for plan in plans[cl]]
                best[cl] = min(best[cl], time.perf_counter() - t)
        diff = max((abs(u - v) / abs(u) if u not in (0.0,) and u == u and abs(u) != float("inf") else 0.0)
                   for u, v in zip(scores[False], scores[True]))
        print(f"{method:12s} NCHW {best[False]:6.3f} s  channels-last {best[True]:6.3f} s  "
              f"NCHW/channels-last {best[False] / best[True]:5.2f}x  max rel score diff {diff:.1e}  "
              f"(load {tuple(round(v, 1) for v in os.getloadavg())})", flush=True)


if __name__ == "__main__":
    main()
