"""The precision envelope on this machine: per architecture, the relative error against the
float64 truth of the float32 pure path (the authors' procedure) at 1 and 2 threads and of each
float32 engine (docs/PRECISION.md).

    python bench/precision.py [--n-archs 20 | --archs 6111 0 1459 ...] [--batch-size 128] [--side 32] [--seed 1]
                              [--methods jacob_cov hook_logdet] [--scorers per_arch] [--authors]
                              [--json PATH]

Batch: the first ``--batch-size`` CIFAR-10 training images of ``../shared/data/cifar10_sample.npz``
(normalised as NB201 does), else seeded Gaussian noise. ``--n-archs N``: the fixed sample of N
benchmark indices that bench/compare.py uses. ``--authors`` adds the published procedure
(xautodl's network, ``np.corrcoef`` + ``np.linalg.eig``, float32 products for K; see
bench/compare.py) at 1 and 2 threads as two more columns. Prints a Markdown table per method,
the max / median of each column over the archs with a finite truth, and the contract's verdict
for each engine; exits 1 if an engine breaks it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

import compare  # bench/compare.py: the fixed arch sample, the batch, the authors' procedure

from nwot_fast import precision
from nwot_fast.nb201 import as_arch


def authors_scores(archs, x, *, method, seed=0, dtype=torch.float32, relu_match="name", threads=None):
    if dtype != torch.float32 or relu_match != "name":
        raise ValueError("the authors' procedure is float32 with relu_match='name'")
    fn = compare.authors_jacob_cov if method == "jacob_cov" else compare.authors_hook_logdet
    with precision.threads(threads or torch.get_num_threads()):
        return [fn(as_arch(a), x, seed) for a in archs]


def _stats(errors, truth, method):
    finite = [max(e, precision.floor(method)) for e, t in zip(errors, truth) if math.isfinite(t)]
    if not finite:
        return "-", "-"
    return f"{max(finite):.1e}", f"{statistics.median(finite):.1e}"


def run(archs, batch_size, seed, methods, engine_names, authors, side=32, log=print):
    x, source = compare.load_batch(batch_size, seed=0)
    if side != x.shape[-1]:
        if x.shape[-1] % side:
            raise SystemExit(f"--side {side} must divide the image side {x.shape[-1]}")
        x = torch.nn.functional.avg_pool2d(x, x.shape[-1] // side)  # the whole image, averaged
        source += f", averaged down to {side}x{side}"
    all_engines = precision.scorers()
    unknown = [e for e in engine_names if e not in all_engines]
    if unknown:
        raise SystemExit(f"unknown scorer(s) {unknown}; available: {', '.join(all_engines)}")
    candidates = {e: all_engines[e] for e in engine_names}
    if authors:
        for n in precision.THREADS:
            candidates[f"authors@{n}"] = partial(authors_scores, threads=n)
    log(f"# precision envelope: {len(archs)} archs, batch {batch_size} ({source}), seed {seed}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads for the engines\n")
    results, failed = {}, False
    for method in methods:
        t0 = time.perf_counter()
        env = precision.measure(archs, x, method, candidates=candidates, seed=seed)
        log(f"## {method} ({time.perf_counter() - t0:.0f} s)\n")
        log(env.table())
        cols = ["max", "median"]
        log("")
        rows = {f"ref@{n}": [precision.relative_error(s, t) for s, t in zip(scores, env.truth)]
                for n, scores in env.reference.items()}
        rows["reference envelope"] = env.reference_errors()
        rows.update({name: env.errors(name) for name in env.candidates})
        log("column | " + " | ".join(cols))
        log("--- | --- | ---")
        for name, errors in rows.items():
            log(f"{name} | " + " | ".join(_stats(errors, env.truth, env.method)))
        log("")
        for name in engine_names:
            problems = env.violations(name)
            failed |= bool(problems)
            log(f"contract, {name}: " + ("holds" if not problems else "BROKEN: " + "; ".join(problems)))
        log("")
        results[method] = {"archs": env.archs, "truth": env.truth,
                           "reference": {str(n): s for n, s in env.reference.items()},
                           "candidates": env.candidates, "violations": {n: env.violations(n) for n in engine_names}}
    return results, failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-archs", type=int, default=20, help="the fixed sample of N indices of bench/compare.py")
    ap.add_argument("--archs", nargs="+", help="benchmark indices or arch strings instead of the sample")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--side", type=int, default=32, help="average the 32x32 images down to this side (16: 1/4 cost)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["jacob_cov", "hook_logdet"], choices=["jacob_cov", "hook_logdet"])
    ap.add_argument("--scorers", nargs="+", default=["per_arch"])
    ap.add_argument("--authors", action="store_true", help="add the published procedure at 1 and 2 threads")
    ap.add_argument("--data", help="the CIFAR-10 .npz sample (default: ../shared/data/cifar10_sample.npz)")
    ap.add_argument("--json", help="write the scores to this file")
    args = ap.parse_args(argv)
    if args.data:
        compare.DATA = Path(args.data)
    archs = [int(a) if a.isdigit() else a for a in args.archs] if args.archs else compare.fixed_archs(args.n_archs)
    results, failed = run(archs, args.batch_size, args.seed, args.methods, args.scorers, args.authors, args.side)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
