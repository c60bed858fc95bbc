"""What deciding singularity exactly (csrc/exact_det.h) costs the compiled logdet operators.

    python bench/exact_cost.py [--archs 64] [--batch 128] [--repeats 5]

In one process, on the K of A realistic hook_logdet architectures (bench/ops_inputs.py):
  exact+LU   ops.logdet_score(K)  (int64 K: the exact decision, then the float64 LU)
  LU only    ops.logdet_score(K + 0.5) (float64, not an integer matrix: the operator checks
             the entries, skips the decision and keeps the floating rule; the LU costs the same)
  fused      ops.hook_logdet_score (popcount K + exact decision + LU)
  singular   the worst case: every K made singular without identical rows (row 1 = row 2 + row 3
             - row 4), so that every prime up to the Hadamard bound is tried
The median over repeats is printed (ms per call, and per architecture for the worst case).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_inputs  # noqa: E402

from nwot_fast import ops  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    codes, mult, units = ops_inputs.hook_codes(args.archs, args.batch)
    K = ops.hamming_kernel(codes, mult, units)
    shifted = K.double() + 0.5
    exact = ops_inputs.median_ms(lambda: ops.logdet_score(K), args.repeats)
    lu_only = ops_inputs.median_ms(lambda: ops.logdet_score(shifted), args.repeats)
    fused = ops_inputs.median_ms(lambda: ops.hook_logdet_score(codes, mult, units), args.repeats)
    singular = K[:4].clone()
    singular[:, 1] = singular[:, 2] + singular[:, 3] - singular[:, 4]
    assert bool((ops.logdet_score(singular) == -torch.inf).all())
    worst = ops_inputs.median_ms(lambda: ops.logdet_score(singular), max(1, args.repeats // 2)) / len(singular)
    print(f"A={args.archs} B={args.batch} threads={torch.get_num_threads()}")
    print(f"logdet_score exact+LU {exact:.1f} ms, LU only {lu_only:.1f} ms: exact decision "
          f"+{exact - lu_only:.1f} ms ({100 * (exact - lu_only) / lu_only:.0f} %)")
    print(f"hook_logdet_score (fused) {fused:.1f} ms")
    print(f"worst case (singular without identical rows): {worst:.1f} ms per architecture")


if __name__ == "__main__":
    main()
