"""The multi-arch mode (nwot_fast.multi_arch) against the per-architecture plans, the seeded
weight streams (nwot_fast.weights) against initial_parameters, and the engine choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nwot_fast import multi_arch, per_arch, plans, precision, schedule, weights
from nwot_fast.nb201 import as_arch, initial_parameters, parameter_specs

from test_fast import (ALL_CONV3, ALL_CONV_MIXED, ALL_NONE, ALL_POOL, ALL_SKIP, CONSTANT_CONVS, CONSTANT_ZEROS,
                       DEAD_SOURCE, DEAD_TARGETS, SAME_NODE_TWO_KERNELS, SKIP_ONLY_TO_OUTPUT)

# Degenerate (NaN / -inf from structure), constant-output with live convolutions, dead edges and
# mixed kernels, plus benchmark indices: together every op on every edge.
ARCHS = [ALL_CONV_MIXED, ALL_NONE, DEAD_SOURCE, CONSTANT_CONVS, ALL_SKIP, CONSTANT_ZEROS, SAME_NODE_TWO_KERNELS,
         ALL_POOL, DEAD_TARGETS, SKIP_ONLY_TO_OUTPUT, 6111, 15624]
_PER_ARCH = {}


def _batch(seed: int, b: int = 8, side: int = 16) -> torch.Tensor:
    return torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=multi_arch.LAYOUTS)
def layout(request):
    """The batched engine's layouts: each test taking this runs on every one."""
    return request.param


def _same(a: float, b: float, rel: float) -> bool:
    if math.isnan(b) or math.isinf(b):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return math.isfinite(a) and abs(a - b) <= rel * abs(b)


# ---------------------------------------------------------------------------------------------
# Weights


@pytest.mark.parametrize("seed", [0, 7])
def test_stream_weights_equal_initial_parameters_bit_for_bit(seed):
    stream = weights.StreamWeights(seed)
    before = torch.get_rng_state()
    for arch in (ALL_CONV3, ALL_CONV_MIXED, ALL_NONE, DEAD_SOURCE, 6111, 15624):
        arch = as_arch(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            want = initial_parameters(arch)
        got = stream.parameters(arch)
        assert list(got) == list(want) == [s.name for s in parameter_specs(arch)]
        for name in want:
            assert got[name].dtype == torch.float32 and torch.equal(got[name], want[name]), name
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is not touched


def test_stream_values_concatenate_segments_in_order():
    stream = weights.for_seed(3)
    segs = weights.arch_segments(as_arch(857))
    names = ["classifier.weight", "stem.0.weight", "cells.5.conv_a.op.1.weight"]
    got = stream.values([segs[n][:3] for n in names])
    params = stream.parameters(857)
    assert np.array_equal(got, np.concatenate([params[n].numpy().ravel() for n in names]))
    assert not any(s.draws for s in parameter_specs(857) if s.name not in segs)
    assert weights.for_seed(3) is stream


# ---------------------------------------------------------------------------------------------
# Same scores as the per-architecture plans


@pytest.mark.parametrize("method, relu_match", [("jacob_cov", "name"), ("hook_logdet", "name"), ("hook_logdet", "exact")])
@pytest.mark.parametrize("layout, chunk", [("sparse", 1), ("sparse", 3), ("sparse", None), ("dense", 1), ("dense", None)])
def test_batched_equals_per_arch_in_float64(method, relu_match, chunk, layout):
    """Chunks mixing degenerate and normal archs and two batch sizes (x_for): float64 scores
    within 1e-9 relative, NaN / -inf at the same archs."""
    xs = {a: _batch(40 + i, b=8 if i % 3 else 10) for i, a in enumerate(ARCHS)}
    kw = dict(method=method, relu_match=relu_match, seed=3, dtype=torch.float64)
    if (method, relu_match) not in _PER_ARCH:
        _PER_ARCH[method, relu_match] = list(schedule.score_archs(ARCHS, xs.__getitem__, batched=False, **kw))
    per = _PER_ARCH[method, relu_match]
    got = list(schedule.score_archs(ARCHS, xs.__getitem__, batched=True, chunk=chunk, layout=layout, **kw))
    assert len(got) == len(per) == len(ARCHS)
    for a, g, p in zip(ARCHS, got, per):
        assert _same(g, p, 1e-9), (a, g, p)
    assert any(math.isnan(p) or math.isinf(p) for p in per) and any(math.isfinite(p) for p in per)


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_dense_on_planes_smaller_than_the_pooling_kernel(method):
    """8x8 images: 2x2 planes in the last stage, where the dense layout pools in 2-D (ATen's
    3-D pooling refuses planes smaller than its kernel)."""
    x = _batch(75, b=4, side=8)
    kw = dict(method=method, seed=4, dtype=torch.float64)
    archs = [ALL_POOL, DEAD_SOURCE, 6111]
    got = list(schedule.score_archs(archs, lambda _: x, batched=True, layout="dense", **kw))
    for a, g in zip(archs, got):
        assert _same(g, per_arch.score_arch(a, x, **kw), 1e-9), (a, g)


def test_default_layout_is_the_devices(monkeypatch):
    """``layout=None``: run_chunk and choose_chunk take default_layout's (a spy on the dense pass)."""
    dense, sized = [], []
    real_pass, real_bytes = multi_arch.dense.network_pass, multi_arch.sizing.bytes_per_arch
    monkeypatch.setattr(multi_arch.dense, "network_pass", lambda *a, **k: dense.append(1) or real_pass(*a, **k))
    monkeypatch.setattr(multi_arch.sizing, "bytes_per_arch", lambda *a: sized.append(a[-1]) or real_bytes(*a))
    x = _batch(50)
    for layout in multi_arch.LAYOUTS:
        monkeypatch.setattr(multi_arch.chunk, "default_layout", lambda device: layout)
        monkeypatch.setattr(multi_arch.sizing, "default_layout", lambda device: layout)
        dense.clear()
        list(schedule.score_archs([6111, 857], lambda _: x, batched=True))
        assert bool(dense) == (layout == "dense") and sized[-1] == layout


def test_bad_layout():
    plan = plans.compile_plan(6111)
    with pytest.raises(ValueError, match="layout"):
        multi_arch.run_chunk([plan], [_batch(0, b=4)], 0, torch.device("cpu"), torch.float32, layout="wide")
    with pytest.raises(ValueError, match="layout"):
        multi_arch.bytes_per_arch("jacob_cov", 8, layout="wide")
    with pytest.raises(ValueError, match="layout"):  # before any arch runs
        list(schedule.score_archs([6111], lambda _: _batch(0, b=4), layout="Dense"))


def test_default_layout():
    assert multi_arch.default_layout(torch.device("cpu")) == "sparse"
    assert multi_arch.default_layout("cuda") == "dense"


_CONTRACT = {}


def _contract_envelope(archs, x, method, seed):
    """The contract's envelope without candidates (nwot_fast.precision.Envelope): the float64
    truth (the per-plan path in float64, equal to the pure path's within 1e-9) and the float32
    pure path at 1 and 2 threads; measured once per method and shared by the layouts."""
    key = (tuple(archs), method, seed)
    if key not in _CONTRACT:
        truth = [per_arch.score_arch(a, x, method=method, seed=seed, dtype=torch.float64) for a in archs]
        ref = {}
        for n in precision.THREADS:
            with precision.threads(n):
                ref[n] = precision.pure_scores(archs, x, method=method, seed=seed)
        _CONTRACT[key] = ([str(a) for a in archs], truth, ref)
    names, truth, ref = _CONTRACT[key]
    return precision.Envelope(list(names), method, list(truth), dict(ref))


# 16 benchmark indices drawn with random.Random(5) among the cells that run a network: a median
# over hand-picked cells of a few is noise (float32 errors of jacob_cov span 1e-9..1e-3 per cell).
CONTRACT_ARCHS = [10205, 4185, 12153, 5874, 13028, 11312, 15441, 13787, 12122, 10682, 15111, 8684, 475, 13768,
                  7628, 12713]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_batched_float32_within_the_contract(method, layout):
    """The batched engine's float32 scores keep the precision contract (Envelope.violations:
    max and median relative error over the archs at most twice the authors' float32
    procedure's at 1 and 2 threads, each error floored at the method's floor)."""
    archs = CONTRACT_ARCHS
    x = _batch(60, b=12)
    env = _contract_envelope(archs, x, method, seed=1)
    env.candidates[layout] = list(schedule.score_archs(archs, lambda _: x, method=method, seed=1, batched=True,
                                                   layout=layout))
    assert env.violations(layout) == [], env.table()


def test_batched_float32_degenerate_archs_match(layout):
    archs = [ALL_NONE, CONSTANT_ZEROS, CONSTANT_CONVS, ALL_SKIP]
    x = _batch(61)
    for method in ("jacob_cov", "hook_logdet"):
        per = list(schedule.score_archs(archs, lambda _: x, method=method, batched=False))
        got = list(schedule.score_archs(archs, lambda _: x, method=method, batched=True, chunk=4, layout=layout))
        for g, p in zip(got, per):
            assert (math.isnan(g) and math.isnan(p)) or (math.isinf(p) and g == p) or (
                math.isfinite(g) and math.isfinite(p))


def test_x_for_is_called_for_running_archs_only_and_batches_are_their_own():
    """Each arch in a chunk gets its own batch (different data, same shape)."""
    archs = [6111, ALL_NONE, 857]
    xs = {6111: _batch(70), 857: _batch(71)}
    calls = []

    def x_for(a):
        calls.append(a)
        return xs[a]

    got = list(schedule.score_archs(archs, x_for, batched=True, dtype=torch.float64))
    assert calls == [6111, 857]
    assert math.isnan(got[1])
    for a, g in zip((6111, 857), (got[0], got[2])):
        assert _same(g, per_arch.score_arch(a, xs[a], dtype=torch.float64), 1e-9)


# ---------------------------------------------------------------------------------------------
# Chunk size and engine choice


def test_choose_chunk_follows_the_memory():
    per = multi_arch.bytes_per_arch("jacob_cov", 128, 32, 32, torch.float32)
    assert per > multi_arch.bytes_per_arch("hook_logdet", 128, 32, 32, torch.float32)
    assert per < multi_arch.bytes_per_arch("jacob_cov", 128, 32, 32, torch.float64) < 2 * per  # weights: float32 kept too
    assert multi_arch.bytes_per_arch("jacob_cov", 64, 32, 32, torch.float32) < per
    assert multi_arch.bytes_per_arch("jacob_cov", 128, 32, 32, torch.float32, "dense") > per
    cpu = torch.device("cpu")
    assert multi_arch.choose_chunk("jacob_cov", 128, 32, 32, torch.float32, cpu, available=0) == 1
    assert multi_arch.choose_chunk("jacob_cov", 128, 32, 32, torch.float32, cpu, available=per) == 1
    assert multi_arch.choose_chunk("jacob_cov", 128, 32, 32, torch.float32, cpu, available=10 * per) == 5
    assert multi_arch.choose_chunk("jacob_cov", 2, 16, 16, torch.float32, cpu, available=1 << 50) == multi_arch.MAX_CHUNK
    assert multi_arch.choose_chunk("jacob_cov", 8, 32, 32, torch.float32, cpu) >= 1  # measured memory


def test_default_chunk_comes_from_the_memory(monkeypatch):
    seen = []

    def fake(method, b, h, w, dtype, device, available=None, layout=None):
        seen.append((method, b, h, w, dtype, layout))
        return 2

    monkeypatch.setattr(multi_arch, "choose_chunk", fake)
    ran = []
    real = multi_arch.run_chunk
    monkeypatch.setattr(multi_arch, "run_chunk", lambda plans, *a: ran.append(len(plans)) or real(plans, *a))
    x = _batch(72, b=4, side=8)
    list(schedule.score_archs([6111, 857, 4242, 0, 5], lambda _: x, batched=True))
    assert seen and seen[0] == ("jacob_cov", 4, 8, 8, torch.float32, None)
    list(schedule.score_archs([6111], lambda _: x, batched=True, layout="dense"))
    assert seen[-1][-1] == "dense"
    assert max(ran) == 2 and sum(ran) >= 3


def test_use_batched_rule():
    assert schedule.use_batched("cpu", 2) and schedule.use_batched("cpu", schedule.CPU_BATCHED_MAX_BATCH)
    assert not schedule.use_batched("cpu", schedule.CPU_BATCHED_MAX_BATCH + 1)
    assert not schedule.use_batched(torch.device("cpu"), 128) and schedule.use_batched("cuda", 128)


def test_batched_none_picks_by_the_rule(monkeypatch):
    used = []
    monkeypatch.setattr(multi_arch, "run_chunk", lambda plans, *a: used.append(len(plans)) or [0.0] * len(plans))
    small = _batch(73, b=schedule.CPU_BATCHED_MAX_BATCH, side=8)
    large = _batch(74, b=schedule.CPU_BATCHED_MAX_BATCH + 1, side=8)
    list(schedule.score_archs([6111], lambda _: small, method="hook_logdet"))
    assert used == [1]
    list(schedule.score_archs([6111], lambda _: large, method="hook_logdet"))
    assert used == [1]  # the per-plan path ran


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"batched": "yes"}, TypeError, "batched"),
    ({"batched": 1}, TypeError, "batched"),
    ({"chunk": 0}, ValueError, "chunk"),
    ({"chunk": 2.5}, ValueError, "chunk"),
    ({"dtype": torch.float16}, ValueError, "dtype"),
])
def test_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        list(schedule.score_archs([6111], lambda _: _batch(0, b=4), **kwargs))


def test_bad_batch_in_a_chunk_is_reported():
    xs = {6111: _batch(0, b=4), 857: torch.zeros(4, 1, 16, 16)}
    with pytest.raises(ValueError, match="3 channels"):
        list(schedule.score_archs([6111, 857], lambda a: xs[a], batched=True))
