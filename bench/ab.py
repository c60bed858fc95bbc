"""A/B of the ways to score a set of architectures, in one process on the CPU: the fast engine's
modes, the per-arch memory formats and the reference engine.

    python bench/ab.py [--variants per-arch multi-arch]
                       [--n-archs 16 [--sample-seed 2020] | --archs 6111 '|nor_conv_3x3~0|+...']
                       [--batch-sizes 8 32 128] [--rounds 2] [--methods jacob_cov hook_logdet]
                       [--seed 0] [--chunk N] [--threads N] [--gaussian] [--json PATH]

Variants (each scores the whole set; every round runs each variant once in turn, so that the
load of a shared machine hits all alike; the best round of each is reported):
  default                    scorer.score_archs with the front door's own choices (the mode
                             by scorer.default_mode)
  per-arch                   scorer.score_archs(mode="per-arch"): one plan per network pass
  multi-arch                 scorer.score_archs(mode="multi-arch"): a chunk of architectures
                             per network pass (--chunk; default from the memory)
  per-arch:nchw|channels-last  per_arch.run_plan of compile_plan(arch, channels_last=False|True):
                             the per-arch mode in one memory format (the CPU default: per_arch.channels_last_by_default)
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

Between processes (set-ups read once per process: the CPU kernel variant, another build,
malloc tunables, oneDNN off):

    python bench/ab.py processes --b ATEN_CPU_CAPABILITY=default [--a VAR=VALUE ...]
                       [--a-option mkldnn-off] [--b-option mkldnn-off] [--archs 6]
                       [--batch-size 128] [--rounds 3] [--methods jacob_cov hook_logdet]

Side A and side B are environments (``VAR=VALUE`` pairs added to this one; ``PYTHONPATH`` of
another build) and in-process options (``mkldnn-off``: convolutions by ATen's im2col + BLAS
instead of oneDNN). Each round starts one child per side, A then B (alternating between rounds
so that a load change hits both alike); a child runs ``per_arch.run_plan`` over the first
``--archs`` of ``compare.fixed_archs(20)`` on the real CIFAR-10 batch after one untimed
warm-up arch and reports wall and process CPU time (the steadier of the two on a loaded
machine) and its scores. Printed per method: each side's median round, A / B (above 1: B
faster), the largest relative score difference, and each side's CPU (``compare.cpu_facts``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import torch

import common
import compare  # bench/compare.py: the fixed architecture sample, the image batch, the reference score
from nwot_fast import per_arch, plans, precision, reference, scorer
from nwot_fast.nb201 import NUM_ARCHS, as_arch

VARIANTS = ("default", "per-arch", "multi-arch", "per-arch:nchw", "per-arch:channels-last", "reference")


def scan(archs, x, method, seed, **choice):
    return list(scorer.score_archs(archs, lambda _: x, method=method, seed=seed, **choice))


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
        return partial(scan, mode="per-arch")
    if name == "multi-arch":
        return partial(scan, mode="multi-arch", chunk=chunk)
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


# ---------------------------------------------------------------------------------------------
# Between processes (``python bench/ab.py processes ...``)

PROCESS_OPTIONS = ("mkldnn-off",)


def _process_child(a) -> None:
    """One side's timed run, in this process (nwot_fast as its environment finds it)."""
    archs = compare.fixed_archs(20)[: a.archs]
    x, _ = compare.load_batch(a.batch_size)
    out = {"cpu": compare.cpu_facts(), "nwot_fast": os.path.dirname(per_arch.__file__),
           "threads": torch.get_num_threads(), "methods": {}}
    scope = torch.backends.mkldnn.flags(enabled=False) if "mkldnn-off" in a.option else contextlib.nullcontext()
    with scope:
        for method in a.methods:
            arch_plans = [plans.compile_plan(arch, method) for arch in archs]
            per_arch.run_plan(arch_plans[0], x)  # warm-up: first-call loading and allocations
            t, cpu = time.perf_counter(), time.process_time()
            scores = [per_arch.run_plan(plan, x) for plan in arch_plans]
            out["methods"][method] = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                                      "scores": scores}
    print(json.dumps(out))


def _side_env(p, pairs):
    env = dict(os.environ)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            p.error(f"--a / --b take VAR=VALUE pairs, got {pair!r}")
        env[key] = value
    return env


def processes_main(argv) -> int:
    """``python bench/ab.py processes``: see the module docstring."""
    p = argparse.ArgumentParser(prog="python bench/ab.py processes",
                                description="A/B of two process set-ups of the per-arch path, alternating child processes")
    p.add_argument("--a", nargs="*", default=[], metavar="VAR=VALUE", help="environment of side A (added)")
    p.add_argument("--b", nargs="*", default=[], metavar="VAR=VALUE", help="environment of side B (added)")
    p.add_argument("--a-option", nargs="*", default=[], choices=PROCESS_OPTIONS)
    p.add_argument("--b-option", nargs="*", default=[], choices=PROCESS_OPTIONS)
    p.add_argument("--archs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(reference.METHODS), choices=reference.METHODS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--option", nargs="*", default=[], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _process_child(a)
        return 0
    sides = {"A": (_side_env(p, a.a), a.a_option), "B": (_side_env(p, a.b), a.b_option)}
    common_args = ["--archs", str(a.archs), "--batch-size", str(a.batch_size), "--methods", *a.methods]
    results = {"A": [], "B": []}
    for r in range(a.rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            env, options = sides[side]
            cmd = ([sys.executable, os.path.abspath(__file__), "processes", "--child", *common_args]
                   + (["--option", *options] if options else []))
            run_ = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run_.returncode:
                raise SystemExit(f"side {side} failed:\n{run_.stderr[-3000:]}")
            results[side].append(json.loads(run_.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} side {side}: " + ", ".join(
                f"{m} {v['seconds']:.3f} s (CPU {v['cpu_seconds']:.3f} s)" for m, v in results[side][-1]["methods"].items())
                + f"  (load {tuple(round(v, 1) for v in os.getloadavg())})", flush=True)
    for side in ("A", "B"):
        first = results[side][0]
        print(f"side {side}: {' '.join(sides[side][1]) or 'no option'}; env "
              f"{' '.join(getattr(a, side.lower())) or '(unchanged)'}; nwot_fast from {first['nwot_fast']}; "
              f"{first['threads']} threads; cpu {first['cpu']}")
    for method in a.methods:
        med = {(s, k): statistics.median(r["methods"][method][k] for r in results[s])
               for s in ("A", "B") for k in ("seconds", "cpu_seconds")}
        diff = max(precision.relative_error(u, v) for u, v in zip(results["A"][0]["methods"][method]["scores"],
                                                                  results["B"][0]["methods"][method]["scores"]))
        print(f"{method:12s} wall A {med['A', 'seconds']:7.3f} s  B {med['B', 'seconds']:7.3f} s  A/B "
              f"{med['A', 'seconds'] / med['B', 'seconds']:5.2f}x;  CPU A {med['A', 'cpu_seconds']:7.3f} s  "
              f"B {med['B', 'cpu_seconds']:7.3f} s  A/B {med['A', 'cpu_seconds'] / med['B', 'cpu_seconds']:5.2f}x;  "
              f"max rel score diff {diff:.1e}  ({a.archs} archs, batch {a.batch_size}, median of {a.rounds} rounds)")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["processes"]:
        return processes_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["per-arch", "multi-arch"],
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
