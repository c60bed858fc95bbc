"""pytest-benchmark suite for the compiled operators (not tests: `pytest bench/bench_ops.py`).

Fused operator vs the same pipeline in plain PyTorch, on the inputs of bench/ops_inputs.py.
The side-by-side table with the authors' NumPy pipeline is bench/ops_compare.py.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_compare  # noqa: E402
import ops_inputs  # noqa: E402

from nwot_fast import ops  # noqa: E402


@pytest.fixture(scope="module", params=[(1, 128), (64, 128)], ids=lambda p: f"A{p[0]}-B{p[1]}")
def jacobians(request):
    A, B = request.param
    return ops_inputs.jacobians(A, B, seed=A + B)


def test_jacob_cov_fused(benchmark, jacobians):
    benchmark.pedantic(ops.jacob_cov_score, args=(jacobians,), rounds=3, warmup_rounds=1)


def test_jacob_cov_torch_pipeline(benchmark, jacobians):
    benchmark.pedantic(ops_compare.jacob_torch, args=(jacobians,), rounds=3, warmup_rounds=1)


@pytest.fixture(scope="module", params=[(1, 128), (16, 128)], ids=lambda p: f"A{p[0]}-B{p[1]}")
def hook_inputs(request):
    A, B = request.param
    codes = ops_inputs.hook_codes(A, B, seed=A + B)
    float_codes = []
    for a in range(A):
        layers, mults = ops_inputs.hook_activations(B, A + B + a)
        float_codes.append(([(l.reshape(B, -1) > 0).double() for l in layers], mults))
    return codes, float_codes


def test_hook_logdet_fused(benchmark, hook_inputs):
    codes, _ = hook_inputs
    benchmark.pedantic(ops.hook_logdet_score, args=codes, rounds=3, warmup_rounds=1)


def test_hook_logdet_torch_pipeline(benchmark, hook_inputs):
    _, float_codes = hook_inputs
    benchmark.pedantic(ops_compare.hook_torch, args=(float_codes,), rounds=3, warmup_rounds=1)


def test_pack_codes(benchmark):
    x = torch.randn(128, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    benchmark.pedantic(ops.pack_codes, args=(x,), rounds=5, warmup_rounds=1)
