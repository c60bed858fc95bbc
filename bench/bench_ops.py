"""pytest-benchmark suite of the compiled operators, each beside the same computation in plain
PyTorch and in the authors' NumPy pipeline, on the inputs of bench/common.py.

    pytest bench/bench_ops.py [--benchmark-json PATH] [-k "jacob_cov and numpy"]

One benchmark group per operator and size (pytest-benchmark prints each group as a table, with
every figure's ratio to the fastest row of its group):
  jacob_cov A B    fused  ops.jacob_cov_score(J), one call for all A (J [A, B, 3072] float32)
                   torch  torch.corrcoef per matrix, torch.linalg.eigvalsh on the batch
                   numpy  the authors': np.corrcoef + np.linalg.eig per matrix (host copy included)
  hook_logdet A B  fused  ops.hook_logdet_score(codes, multiplicity, units), from packed bits
                   torch  float64 matmuls c c^T + (1-c)(1-c)^T per hook and arch, torch.linalg.slogdet
                   numpy  the authors': the same products in NumPy, one per hook firing, np.linalg.slogdet
  logdet_score A B ops.logdet_score on the int64 K of those codes (the exact singularity decision,
                   then the float64 LU) and on K + 0.5 in float64 (not an integer matrix: no
                   decision, the same LU): the difference is what the exact decision costs
  pack_codes       ops.pack_codes of [128, 16, 32, 32] float32
Sizes (A x B, space-separated) from NWOT_BENCH_JACOB_SIZES (default "1x128 64x128"),
NWOT_BENCH_HOOK_SIZES (default "1x128 16x128") and NWOT_BENCH_LOGDET_SIZES (default "64x128").
The torch and NumPy pipelines loop over architectures in Python: they run up to A = 64 and
are skipped above. Every pipeline's scores are checked against the fused operator's (1e-9
relative) outside the timing, so that a table never compares pipelines that compute different
numbers; the largest difference, the threads, the load and the backend go to ``extra_info``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import common
import nwot_fast
from nwot_fast import ops, precision

pytest.importorskip("pytest_benchmark")

EPS = 1e-5  # the authors' eigenvalue offset
LOOP_MAX_A = 64  # the Python-loop pipelines above this take minutes per call on a small CPU
AGREE = 1e-9


def sizes(variable: str, default: str):
    text = os.environ.get(variable, default)
    try:
        out = [tuple(int(v) for v in item.lower().split("x")) for item in text.split()]
    except ValueError:
        out = []
    if not out or any(len(s) != 2 or min(s) < 1 for s in out):
        raise ValueError(f"{variable} must be space-separated AxB sizes with A, B >= 1 (e.g. '1x128 64x128'), "
                         f"got {text!r}")
    return out


# jacob_cov pipelines -------------------------------------------------------------------------


def jacob_torch(J: torch.Tensor) -> torch.Tensor:
    C = torch.stack([torch.corrcoef(J[a].double()) for a in range(J.shape[0])])
    v = torch.linalg.eigvalsh(C) + EPS
    return -(torch.log(v) + 1.0 / v).sum(dim=1)


def jacob_numpy(J: torch.Tensor) -> np.ndarray:
    host = J.detach().cpu().numpy()
    out = np.empty(host.shape[0])
    for a in range(host.shape[0]):
        v, _ = np.linalg.eig(np.corrcoef(host[a]))
        out[a] = np.real(-np.sum(np.log(v + EPS) + 1.0 / (v + EPS)))
    return out


# hook_logdet pipelines -----------------------------------------------------------------------


def hook_torch(float_codes) -> torch.Tensor:
    out = []
    for layers, mults in float_codes:
        K = sum(m * (c @ c.T + (1.0 - c) @ (1.0 - c).T) for c, m in zip(layers, mults))
        out.append(torch.linalg.slogdet(K).logabsdet)
    return torch.stack(out)


def hook_numpy(float_codes_np) -> np.ndarray:
    out = []
    for layers, mults in float_codes_np:
        K = 0.0
        for c, m in zip(layers, mults):
            for _ in range(m):  # the authors' hooks fire once per matching module
                K = K + c @ c.T + (1.0 - c) @ (1.0 - c).T
        out.append(np.linalg.slogdet(K)[1])
    return np.array(out)


# ---------------------------------------------------------------------------------------------


def record(benchmark, group: str, got, want) -> None:
    """Name the group, check ``got`` against the fused scores ``want`` and note the context."""
    diff = max(precision.relative_error(float(g), float(w)) for g, w in zip(np.asarray(got), np.asarray(want)))
    assert diff <= AGREE, f"{group}: the pipeline's scores differ from the fused operator's by {diff:.1e} relative"
    benchmark.extra_info.update(max_rel_diff=diff, threads=torch.get_num_threads(),
                                load_average=os.getloadavg(), backend=nwot_fast.backend_info()["in_use"])


def size_id(size) -> str:
    return f"A{size[0]}-B{size[1]}"


def loop_pipeline_fits(pipeline: str, A: int) -> None:
    if pipeline != "fused" and A > LOOP_MAX_A:
        pytest.skip(f"the {pipeline} pipeline loops over architectures: run for A <= {LOOP_MAX_A} only")


@pytest.fixture(scope="module", params=sizes("NWOT_BENCH_JACOB_SIZES", "1x128 64x128"), ids=size_id)
def jacob_case(request):
    A, B = request.param
    J = common.jacobians(A, B, seed=A + B)
    return A, B, J, ops.jacob_cov_score(J)


@pytest.mark.parametrize("pipeline", ["fused", "torch", "numpy"])
def test_jacob_cov(benchmark, jacob_case, pipeline):
    A, B, J, fused = jacob_case
    loop_pipeline_fits(pipeline, A)
    benchmark.group = f"jacob_cov A={A} B={B}"
    fn = {"fused": ops.jacob_cov_score, "torch": jacob_torch, "numpy": jacob_numpy}[pipeline]
    got = benchmark.pedantic(fn, args=(J,), rounds=3, warmup_rounds=1)
    record(benchmark, benchmark.group, got, fused)


@pytest.fixture(scope="module", params=sizes("NWOT_BENCH_HOOK_SIZES", "1x128 16x128"), ids=size_id)
def hook_case(request):
    A, B = request.param
    seed = A + B
    codes = common.hook_codes(A, B, seed=seed)
    float_codes = []
    for a in range(min(A, LOOP_MAX_A)):  # the same activations as architecture a of the codes
        layers, mults = common.hook_activations(B, seed + a)
        float_codes.append(([(layer.reshape(B, -1) > 0).double() for layer in layers], mults))
    return A, B, codes, float_codes, ops.hook_logdet_score(*codes)


@pytest.mark.parametrize("pipeline", ["fused", "torch", "numpy"])
def test_hook_logdet(benchmark, hook_case, pipeline):
    A, B, codes, float_codes, fused = hook_case
    loop_pipeline_fits(pipeline, A)
    benchmark.group = f"hook_logdet A={A} B={B}"
    if pipeline == "fused":
        fn, args = ops.hook_logdet_score, codes
    elif pipeline == "torch":
        fn, args = hook_torch, (float_codes,)
    else:
        fn, args = hook_numpy, ([([c.numpy() for c in layers], mults) for layers, mults in float_codes],)
    got = benchmark.pedantic(fn, args=args, rounds=3, warmup_rounds=1)
    record(benchmark, benchmark.group, got, fused)


@pytest.fixture(scope="module", params=sizes("NWOT_BENCH_LOGDET_SIZES", "64x128"), ids=size_id)
def kernel_matrices(request):
    A, B = request.param
    return A, B, ops.hamming_kernel(*common.hook_codes(A, B, seed=A + B))


@pytest.mark.parametrize("decision", ["exact", "none"])
def test_logdet_score(benchmark, kernel_matrices, decision):
    A, B, K = kernel_matrices
    benchmark.group = f"logdet_score A={A} B={B}"
    # K + 0.5 is not an integer matrix: the operator skips the exact decision and runs the same
    # LU (its log-det is another number, so it is not compared).
    arg = K if decision == "exact" else K.double() + 0.5
    got = benchmark.pedantic(ops.logdet_score, args=(arg,), rounds=3, warmup_rounds=1)
    if decision == "exact":
        record(benchmark, benchmark.group, got, ops.hook_logdet_score(*common.hook_codes(A, B, seed=A + B)))


def test_pack_codes(benchmark):
    x = torch.randn(128, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    benchmark.group = "pack_codes"
    codes = benchmark.pedantic(ops.pack_codes, args=(x,), rounds=5, warmup_rounds=1)
    assert torch.equal(codes, ops.pack_codes_fallback(x))
