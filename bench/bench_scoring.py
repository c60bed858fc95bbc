"""pytest-benchmark suite: per-architecture scoring (pure path vs fast path) and scan throughput.

    pytest bench/bench_scoring.py --benchmark-only [--benchmark-json out.json]

Environment knobs (the defaults keep a run short on a 2-core CPU):
    NWOT_BENCH_BATCH       batch size of the per-architecture cases (default 128)
    NWOT_BENCH_SCAN_N      architectures in the scan sample (default 200; a fixed seeded sample)
    NWOT_BENCH_SCAN_BATCH  batch size of the scan cases (default 32)
Inputs are Gaussian N(0, 1); weights come from ``torch.manual_seed(0)`` as in the reference.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from nwot_fast import per_arch, plans, reference, scorer
from nwot_fast.nb201 import NUM_ARCHS, build_network

pytest.importorskip("pytest_benchmark")

BATCH = int(os.environ.get("NWOT_BENCH_BATCH", "128"))
SCAN_N = int(os.environ.get("NWOT_BENCH_SCAN_N", "200"))
SCAN_BATCH = int(os.environ.get("NWOT_BENCH_SCAN_BATCH", "32"))
# A light, a typical and a heavy cell: 0 conv edges ... all six.
PER_ARCH = {
    "skip_pool": "|skip_connect~0|+|avg_pool_3x3~0|skip_connect~1|+|skip_connect~0|avg_pool_3x3~1|skip_connect~2|",
    "best_6111": 6111,
    "all_conv3": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
}
METHODS = reference.METHODS


def _batch(b):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _pure(arch, x, method):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(arch)
    return reference.score(net, x, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(PER_ARCH))
def test_per_arch_pure(benchmark, name, method):
    x = _batch(BATCH)
    benchmark.pedantic(_pure, args=(PER_ARCH[name], x, method), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(PER_ARCH))
def test_per_arch_fast(benchmark, name, method):
    x = _batch(BATCH)
    benchmark.pedantic(lambda: per_arch.score_arch(PER_ARCH[name], x, method=method), rounds=3, iterations=1,
                       warmup_rounds=1)


@pytest.mark.parametrize("method", METHODS)
def test_post_processing_alone(benchmark, method):
    """The score from J / from the codes, without the network pass."""
    x = _batch(BATCH)
    if method == "jacob_cov":
        J = torch.randn(BATCH, 3 * 32 * 32, generator=torch.Generator().manual_seed(1))
        benchmark(per_arch.post_process, method, [J])
    else:
        codes = per_arch.network_pass(plans.compile_plan(6111, method), x, 0, torch.device("cpu"))
        benchmark(per_arch.post_process, method, [codes])


@pytest.mark.parametrize("method", METHODS)
def test_scan_throughput_fast(benchmark, method):
    """Fast-path scan of a fixed seeded sample (NWOT_BENCH_SCAN_N archs, one batch for all)."""
    indices = random.Random(2021).sample(range(NUM_ARCHS), SCAN_N)
    x = _batch(SCAN_BATCH)
    scores = benchmark.pedantic(lambda: list(scorer.score_archs(indices, lambda _: x, method=method)), rounds=1,
                                iterations=1)
    assert len(scores) == SCAN_N
    benchmark.extra_info["archs"] = SCAN_N
    benchmark.extra_info["batch"] = SCAN_BATCH
