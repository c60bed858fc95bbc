"""A/B of the ways to score a set of architectures, in one process on the CPU: the fast engine's
modes, the multi-arch layouts, the per-arch memory formats and the reference engine.

    python bench/ab.py [--variants per-arch multi-arch:sparse multi-arch:dense]
                       [--n-archs 16 [--sample-seed 2020] | --archs 6111 '|nor_conv_3x3~0|+...']
                       [--batch-sizes 8 32 128] [--rounds 2] [--methods jacob_cov hook_logdet]
                       [--seed 0] [--chunk N] [--threads N] [--gaussian] [--json PATH]

Variants (each scores the whole set; every round runs each variant once in turn, so that the
load of a shared machine hits all alike; the best round of each is reported):
  default                    schedule.score_archs with its own choices (mode by
                             schedule.use_batched, layout by multi_arch.default_layout)
  per-arch                   schedule.score_archs(batched=False): one plan per network pass
  multi-arch:sparse|dense    schedule.score_archs(batched=True, layout=...): a chunk of
                             architectures per network pass (--chunk; default from the memory)
  per-arch:nchw|channels-last  per_arch.run_plan of compile_plan(arch, channels_last=False|True):
                             the per-arch mode in one memory format (the CPU default is channels-last)
  reference                  nwot_fast.reference.score on nb201.build_network, the network built
                             after torch.manual_seed(seed) (the oracle, the authors' procedure)
Architectures: the fixed sample of bench/compare.py (``fixed_archs``, seed 2020; ``--n-archs 6``
is the first 6 of its 20), or ``--archs`` indices / arch strings. Batch: compare.py's
``load_batch`` (the first B CIFAR-10 training images when ../shared/data has them, else
Gaussian), or ``--gaussian``: N(0, 1) from seed 0.
Per batch size and method: seconds for the set, architectures per second (all of them, also
those structure answers without a network pass), the speed-up over the first variant (its
time / this one's) and the largest relative score difference from the first variant
(nwot_fast.precision.relative_error: NaN and -inf match themselves).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

import torch

import common
import compare  # bench/compare.py: the fixed architecture sample, the image batch, the reference score
from nwot_fast import multi_arch, per_arch, plans, precision, reference, schedule
from nwot_fast.nb201 import NUM_ARCHS, as_arch

VARIANTS = (["default", "per-arch"] + [f"multi-arch:{layout}" for layout in multi_arch.LAYOUTS]
            + ["per-arch:nchw", "per-arch:channels-last", "reference"])


def scan(archs, x, method, seed, **choice):
    return list(schedule.score_archs(archs, lambda _: x, method=method, seed=seed, **choice))


def per_arch_format(archs, x, method, seed, channels_last):
    return [per_arch.run_plan(plans.compile_plan(arch, method, channels_last=channels_last), x, seed=seed)
            for arch in archs]


def reference_scores(archs, x, method, seed):
    return [compare.pure_score(arch, x, method, seed) for arch in archs]


def variant(name: str, chunk):
    """The function ``(archs, x, method, seed) -> scores`` that variant ``name`` times."""
    if name == "default":
        return scan
    if name == "per-arch":
        return partial(scan, batched=False)
    if name.startswith("multi-arch:"):
        return partial(scan, batched=True, layout=name.split(":", 1)[1], chunk=chunk)
    if name.startswith("per-arch:"):
        return partial(per_arch_format, channels_last=name == "per-arch:channels-last")
    if name == "reference":
        return reference_scores
    raise ValueError(f"unknown variant {name!r}; allowed: {', '.join(VARIANTS)}")


def run(archs, batch_sizes, methods, variants, rounds, seed, chunk=None, gaussian=False, log=print):
    """Time ``variants`` on ``archs`` for each batch size and method; returns one row per
    (batch size, method, variant). Each variant first scores the first architecture once, untimed
    (the seed's weight streams are drawn once per process, the operators load on first use)."""
    fns = {name: variant(name, chunk) for name in variants}
    rows = []
    for B in batch_sizes:
        if gaussian:
            x, source = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "Gaussian N(0, 1)"
        else:
            x, source = compare.load_batch(B)
        log(f"\nbatch {B} ({source}), {len(archs)} archs, best of {rounds} alternating rounds")
        log(f"{'method':12s} {'variant':24s} {'seconds':>8s} {'archs/s':>8s} {'speed-up':>8s} {'max rel diff':>12s}")
        for method in methods:
            for fn in fns.values():  # warm-up: the seed's weight streams, the operators' first load
                fn(archs[:1], x, method, seed)
            best, scores = common.alternating_best(
                {name: partial(fn, archs, x, method, seed) for name, fn in fns.items()}, rounds)
            first = variants[0]
            for name in variants:
                diff = max(precision.relative_error(s, t) for s, t in zip(scores[name], scores[first]))
                row = {"batch": B, "method": method, "variant": name, "seconds": best[name],
                       "archs_per_second": len(archs) / best[name], "speedup": best[first] / best[name],
                       "max_rel_diff": diff}
                rows.append(row)
                log(f"{method:12s} {name:24s} {best[name]:8.2f} {row['archs_per_second']:8.1f} "
                    f"{row['speedup']:7.2f}x {diff:12.1e}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["per-arch", "multi-arch:sparse", "multi-arch:dense"],
                   choices=VARIANTS, metavar="VARIANT",
                   help="one or more of: " + ", ".join(VARIANTS)
                   + "; the first is the baseline of the speed-ups and score differences")
    p.add_argument("--n-archs", type=int, default=16, help="size of the fixed sample (default 16)")
    p.add_argument("--sample-seed", type=int, default=2020, help="seed of the fixed sample (default 2020)")
    p.add_argument("--archs", nargs="+", help="benchmark indices or arch strings instead of the sample")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=list(reference.METHODS), choices=reference.METHODS)
    p.add_argument("--seed", type=int, default=0, help="the weights' seed")
    p.add_argument("--chunk", type=int, default=None, help="architectures per multi-arch pass (default: from memory)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--gaussian", action="store_true", help="Gaussian batch even where the CIFAR-10 sample exists")
    p.add_argument("--json", metavar="PATH", help="also write the rows, the machine and the command as JSON")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be at least 1, got {a.rounds}")
    if min(a.batch_sizes) < 2:
        p.error(f"--batch-sizes must be at least 2 (a correlation needs two samples), got {a.batch_sizes}")
    if a.chunk is not None and a.chunk < 1:
        p.error(f"--chunk must be at least 1, got {a.chunk}")
    if a.archs:
        archs = [int(v) if v.isdigit() else v for v in a.archs]
        for v in archs:
            try:
                as_arch(v)
            except (TypeError, ValueError) as e:
                p.error(f"--archs: {v!r} is neither a benchmark index nor an arch string: {e}")
    elif 1 <= a.n_archs <= NUM_ARCHS:
        archs = compare.fixed_archs(a.n_archs, seed=a.sample_seed)
    else:
        p.error(f"--n-archs must be in 1..{NUM_ARCHS}, got {a.n_archs}")
    if a.threads:
        torch.set_num_threads(a.threads)
    info = common.machine()
    print(common.describe(info), flush=True)
    rows = run(archs, a.batch_sizes, a.methods, a.variants, a.rounds, a.seed, a.chunk, a.gaussian,
               log=partial(print, flush=True))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "command": " ".join(sys.argv), "archs": [str(v) for v in archs],
                       "rows": rows}, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
