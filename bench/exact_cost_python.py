"""Cost of deciding singularity exactly on the Python paths (nwot_fast.exact: the pure path and
the pure-PyTorch fallbacks; bench/exact_cost.py measures the compiled operators) against the
floating LU alone, per B x B agreement kernel K.

    python bench/exact_cost_python.py [--sizes 128 256] [--repeats 5]

K: the agreement kernel of the NB201-like codes of bench/ops_inputs.py (nonsingular: one
prime decides). Worst case: the same K with one row replaced by a combination of three others
(singular with distinct rows: every prime up to the Hadamard bound is needed). Cheap case: two
identical rows. Columns: ``np.linalg.slogdet`` alone, :func:`nwot_fast.exact.singularity`,
and :func:`nwot_fast.reference.logdet_score` (the decision plus the LU), median ms.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_inputs  # noqa: E402

from nwot_fast import exact, ops, reference  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"# load average {os.getloadavg()}, numpy {np.__version__}")
    print(f"{'case':28} {'B':>4} {'primes':>6} {'slogdet ms':>11} {'exact ms':>9} {'logdet_score ms':>16}")
    for B in args.sizes:
        K = ops.hamming_kernel(*ops_inputs.hook_codes(1, B, seed=B))[0].numpy()
        singular = K.copy()
        singular[5] = K[1] + K[2] - K[7]
        twin = K.copy()
        twin[9] = K[4]
        for name, M in (("nonsingular (real codes)", K), ("row = r1 + r2 - r7", singular), ("two identical rows", twin)):
            Mf = M.astype(np.float64)
            hadamard = float(np.sum(0.5 * np.log2(np.sum(Mf * Mf, axis=1))))
            status = exact.singularity(M)
            primes = 1 if status == exact.NONSINGULAR else (
                0 if name.startswith("two") else math.ceil((hadamard + exact.MARGIN_BITS) / 30.99))
            reps = 1 if primes > 1 else args.repeats
            t_lu = ops_inputs.median_ms(lambda: np.linalg.slogdet(Mf), args.repeats)
            t_ex = ops_inputs.median_ms(lambda: exact.singularity(M), reps)
            t_all = ops_inputs.median_ms(lambda: reference.logdet_score(M), reps)
            print(f"{name:28} {B:4d} {'~' + str(primes) if primes > 1 else primes:>6} {t_lu:11.2f} {t_ex:9.1f} "
                  f"{t_all:16.1f}   -> {reference.logdet_score(M):.6g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
