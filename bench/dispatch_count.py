"""ATen operators dispatched per architecture by ``scorer.score_archs`` (the launch count a GPU sees).

    python bench/dispatch_count.py [--archs 64] [--batch-size 8] [--methods jacob_cov hook_logdet]
                                   [--seed 2020] [--chunk N] [--dtype float32]

Counts every operator that reaches the Python dispatch key (a ``TorchDispatchMode``: forward,
backward, weights, post-processing; views included, host-side NumPy not) while scoring a
fixed random sample of architectures on the CPU, in the per-arch mode (one plan per
architecture) and the multi-arch mode (default chunk unless ``--chunk``), and prints the count
per architecture (all sampled architectures in the denominator, also those that structure
answers) and the most frequent operators. (bench/gpu_cost.py counts the same and what it costs.)
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nwot_fast import reference, scorer  # noqa: E402
from nwot_fast.nb201 import NUM_ARCHS  # noqa: E402


class CountingMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count(archs, x, method: str, batched: bool, chunk=None, dtype=torch.float32):
    # Warm up outside the count: the seed's weight streams are drawn once per process.
    kw = dict(method=method, mode="multi-arch" if batched else "per-arch", dtype=dtype)
    list(scorer.score_archs(archs[:1], lambda _: x, **kw))
    mode = CountingMode()
    with mode:
        scores = list(scorer.score_archs(archs, lambda _: x, chunk=chunk, **kw))
    return mode.counts, scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=list(reference.METHODS), choices=reference.METHODS)
    p.add_argument("--seed", type=int, default=2020, help="seed of the architecture sample")
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--engines", nargs="+", default=["per-arch", "batched"], choices=("per-arch", "batched"))
    a = p.parse_args(argv)
    archs = random.Random(a.seed).sample(range(NUM_ARCHS), a.archs)
    x = torch.randn(a.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dtype = getattr(torch, a.dtype)
    for method in a.methods:
        for batched in [e == "batched" for e in a.engines]:
            counts, scores = count(archs, x, method, batched, a.chunk if batched else None, dtype)
            total = sum(counts.values())
            top = ", ".join(f"{k} {v}" for k, v in counts.most_common(12))
            print(f"{method:12s} batched={batched!s:5s} {total:7d} ops, {total / len(archs):7.1f} per arch "
                  f"({a.archs} archs, batch {a.batch_size}); top: {top}", flush=True)


if __name__ == "__main__":
    main()
