"""Side-by-side per-call time of the fused operators against the same pipeline in plain PyTorch
and against the authors' NumPy pipeline.

    python bench/ops_compare.py [--quick] [--json PATH]

jacob_cov, per call on J [A, B, 3072] float32 (device-to-host copy included for NumPy):
  fused   ops.jacob_cov_score(J)                         (one call for all A)
  torch   torch.corrcoef per matrix, torch.linalg.eigvalsh on the batch, score in torch
  numpy   the authors': np.corrcoef + np.linalg.eig per matrix, score in NumPy
hook_logdet, per call on the codes of A architectures (see bench/ops_inputs.py):
  fused   ops.hook_logdet_score(codes, multiplicity, units)   (from packed bits)
  torch   float64 matmuls c c^T + (1-c)(1-c)^T per hook and architecture, torch.linalg.slogdet
  numpy   the authors': the same float matmuls in NumPy, np.linalg.slogdet
The median over repeats is reported; ratios are baseline / fused. The NumPy pipelines loop
over architectures, so for large A they are timed on the first 64 (jacob_cov) or 4
(hook_logdet) architectures and scaled linearly to A (marked "~" in the table, "numpy_scaled_from"
in the JSON); the score difference is taken on that subset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_inputs  # noqa: E402

from nwot_fast import _ext, ops  # noqa: E402

EPS = 1e-5


# jacob_cov pipelines -------------------------------------------------------------------------


def jacob_torch(J: torch.Tensor) -> torch.Tensor:
    C = torch.stack([torch.corrcoef(J[a].double()) for a in range(J.shape[0])])
    v = torch.linalg.eigvalsh(C) + EPS
    return -(torch.log(v) + 1.0 / v).sum(dim=1)


def jacob_numpy(J: torch.Tensor) -> np.ndarray:
    host = J.detach().cpu().numpy()
    out = np.empty(host.shape[0])
    for a in range(host.shape[0]):
        corrs = np.corrcoef(host[a])
        v, _ = np.linalg.eig(corrs)
        out[a] = -np.sum(np.log(v + EPS) + 1.0 / (v + EPS))
    return out


# hook_logdet pipelines -----------------------------------------------------------------------


def hook_torch(float_codes):
    out = []
    for layers, mults in float_codes:
        K = None
        for c, m in zip(layers, mults):
            k = m * (c @ c.T + (1.0 - c) @ (1.0 - c).T)
            K = k if K is None else K + k
        out.append(torch.linalg.slogdet(K).logabsdet)
    return torch.stack(out)


def hook_numpy(float_codes_np):
    out = []
    for layers, mults in float_codes_np:
        K = None
        for c, m in zip(layers, mults):
            for _ in range(m):  # the authors' hooks fire once per matching module
                k = c @ c.T + (1.0 - c) @ (1.0 - c).T
                K = k if K is None else K + k
        out.append(np.linalg.slogdet(K)[1])
    return np.array(out)


def machine() -> dict:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": model,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": _ext.backend_info(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="A in {1, 64} and fewer repeats")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--skip-hook", action="store_true")
    p.add_argument("--skip-jacob", action="store_true")
    args = p.parse_args(argv)

    info = machine()
    print(f"# {info['cpu']}, {info['threads']} threads, load average {info['load_average']}, "
          f"torch {info['torch']}, numpy {info['numpy']}, {info['date_utc']}")
    print(f"# backend: {info['backend']['in_use']} {info['backend']['backends']}")
    rows = []

    def report(op, A, B, t_fused, t_torch, t_numpy, diff, numpy_from):
        row = {"op": op, "A": A, "B": B, "fused_s": t_fused, "torch_s": t_torch, "numpy_s": t_numpy,
               "numpy_scaled_from": numpy_from,
               "torch_over_fused": t_torch / t_fused if t_torch else None,
               "numpy_over_fused": t_numpy / t_fused if t_numpy else None, "max_rel_diff": diff}
        rows.append(row)
        fmt = lambda t: f"{t * 1e3:10.1f}" if t is not None else f"{'-':>10}"
        ratio = lambda r: f"{r:7.1f}x" if r is not None else f"{'-':>8}"
        print(f"{op:12} {A:5d} {B:4d} {fmt(t_fused)} {fmt(t_torch)} {fmt(t_numpy)}{'~' if numpy_from < A else ' '}"
              f"{ratio(row['torch_over_fused'])} {ratio(row['numpy_over_fused'])}   {diff:.1e}")

    print(f"{'op':12} {'A':>5} {'B':>4} {'fused ms':>10} {'torch ms':>10} {'numpy ms':>10} "
          f"{'torch/f':>8} {'numpy/f':>8}   max rel diff")

    sizes = [(1, 128), (1, 256), (64, 128), (64, 256)] + ([] if args.quick else [(1024, 128)])
    if not args.skip_jacob:
        for A, B in sizes:
            J = ops_inputs.jacobians(A, B, seed=A + B)
            big = A >= 1024
            reps = 1 if big else (3 if A >= 64 else 7)
            fused = ops.jacob_cov_score(J).numpy()
            t_f = ops_inputs.median_time(lambda: ops.jacob_cov_score(J), 3 if big else reps)
            t_t = ops_inputs.median_time(lambda: jacob_torch(J), reps)
            sub = min(A, 64)
            Js = J[:sub]
            t_n = ops_inputs.median_time(lambda: jacob_numpy(Js), 1 if sub < A else reps) * A / sub
            ref = jacob_numpy(Js)  # np.linalg.eig of a symmetric matrix: real eigenvalues
            diff = float(np.max(np.abs(fused[:sub] - ref.real) / np.abs(ref.real)))
            report("jacob_cov", A, B, t_f, t_t, t_n, diff, sub)
            del J

    if not args.skip_hook:
        hook_sizes = [(1, 128), (1, 256), (64, 128)] + ([] if args.quick else [(64, 256), (1024, 128)])
        for A, B in hook_sizes:
            codes, mult, units = ops_inputs.hook_codes(A, B, seed=A * 3 + B)
            float_codes = []
            for a in range(A if A <= 64 else 64):  # the torch pipeline is timed on <= 64 and scaled too
                layers, mults = ops_inputs.hook_activations(B, A * 3 + B + a)
                float_codes.append(([(l.reshape(B, -1) > 0).double() for l in layers], mults))
            float_np = [([c.numpy() for c in layers], mults) for layers, mults in float_codes]
            reps = 1 if A >= 1024 else (3 if A >= 64 else 5)
            fused = ops.hook_logdet_score(codes, mult, units).numpy()
            t_f = ops_inputs.median_time(lambda: ops.hook_logdet_score(codes, mult, units), reps)
            t_t = ops_inputs.median_time(lambda: hook_torch(float_codes), 1 if len(float_codes) < A else reps) * A / len(float_codes)
            sub = min(A, 4)
            t_n = ops_inputs.median_time(lambda: hook_numpy(float_np[:sub]), 1 if sub < A else 3) * A / sub
            ref = hook_numpy(float_np[:sub])
            diff = float(np.max(np.abs(fused[:sub] - ref) / np.abs(ref)))
            report("hook_logdet", A, B, t_f, t_t, t_n, diff, sub)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows, "command": " ".join(sys.argv)}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
