"""A/B of two process set-ups of the per-plan path on the CPU, in alternating child processes.

    python bench/cpu_ab.py --b ATEN_CPU_CAPABILITY=default [--a VAR=VALUE ...] [--b-option mkldnn-off]
                           [--archs 6] [--batch-size 128] [--rounds 3] [--methods jacob_cov hook_logdet]

Side A and side B are environments (``VAR=VALUE`` pairs added to this one: e.g. the CPU kernel
variant through ``ATEN_CPU_CAPABILITY``, ``PYTHONPATH`` of another build, glibc's malloc
tunables) and in-process options (``--a-option`` / ``--b-option``; ``mkldnn-off``: convolutions
by ATen's im2col + BLAS instead of oneDNN). Some of these are read once per process, so each
round starts one child per side, A then B (the order alternates between rounds so that a
load change hits both alike). A child runs ``per_arch.run_plan`` over the first ``--archs`` of
``compare.fixed_archs(20)`` on the real CIFAR-10 batch, after one untimed warm-up arch, and
reports the seconds of each method (wall and process CPU time: on a loaded machine the CPU
time is the steadier of the two) and its scores. Printed: per method the median round of each
side, the ratios A / B (above 1: B faster), the largest relative score difference, and each
side's CPU facts (``compare.cpu_facts``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("mkldnn-off",)


def _child(args) -> None:
    import contextlib

    import torch

    # nwot_fast as this environment finds it (PYTHONPATH may name another build), then this
    # checkout's bench/compare.py, which would put this checkout first on the path.
    try:
        import nwot_fast  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import compare
    from nwot_fast import per_arch, plans

    archs = compare.fixed_archs(20)[: args.archs]
    x, _ = compare.load_batch(args.batch_size)
    out = {"cpu": compare.cpu_facts(), "nwot_fast": os.path.dirname(per_arch.__file__), "threads": torch.get_num_threads(),
           "methods": {}}
    scope = torch.backends.mkldnn.flags(enabled=False) if "mkldnn-off" in args.option else contextlib.nullcontext()
    with scope:
        for method in args.methods:
            arch_plans = [plans.compile_plan(arch, method) for arch in archs]
            per_arch.run_plan(arch_plans[0], x)  # warm-up: first-call loading and allocations
            t, cpu = time.perf_counter(), time.process_time()
            scores = [per_arch.run_plan(plan, x) for plan in arch_plans]
            out["methods"][method] = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu,
                                      "scores": scores}
    print(json.dumps(out))


def _env(pairs):
    env = dict(os.environ)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--a / --b take VAR=VALUE pairs, got {pair!r}")
        env[key] = value
    return env


def _rel(a, b):
    if a == b or (a != a and b != b):
        return 0.0
    if abs(a) == float("inf") or abs(b) == float("inf"):
        return float("inf")
    return abs(a - b) / max(abs(a), abs(b))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs="*", default=[], metavar="VAR=VALUE", help="environment of side A (added)")
    p.add_argument("--b", nargs="*", default=[], metavar="VAR=VALUE", help="environment of side B (added)")
    p.add_argument("--a-option", nargs="*", default=[], choices=OPTIONS)
    p.add_argument("--b-option", nargs="*", default=[], choices=OPTIONS)
    p.add_argument("--archs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["jacob_cov", "hook_logdet"], choices=["jacob_cov", "hook_logdet"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--option", nargs="*", default=[], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return _child(a)
    sides = {"A": (_env(a.a), a.a_option), "B": (_env(a.b), a.b_option)}
    common = ["--archs", str(a.archs), "--batch-size", str(a.batch_size), "--methods", *a.methods]
    results = {"A": [], "B": []}
    for r in range(a.rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            env, options = sides[side]
            cmd = [sys.executable, os.path.abspath(__file__), "--child", *common] + (["--option", *options] if options else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"side {side} failed:\n{proc.stderr[-3000:]}")
            results[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
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
        diff = max(_rel(u, v) for u, v in zip(results["A"][0]["methods"][method]["scores"],
                                              results["B"][0]["methods"][method]["scores"]))
        print(f"{method:12s} wall A {med['A', 'seconds']:7.3f} s  B {med['B', 'seconds']:7.3f} s  A/B "
              f"{med['A', 'seconds'] / med['B', 'seconds']:5.2f}x;  CPU A {med['A', 'cpu_seconds']:7.3f} s  "
              f"B {med['B', 'cpu_seconds']:7.3f} s  A/B {med['A', 'cpu_seconds'] / med['B', 'cpu_seconds']:5.2f}x;  "
              f"max rel score diff {diff:.1e}  ({a.archs} archs, batch {a.batch_size}, median of {a.rounds} rounds)")


if __name__ == "__main__":
    main()
