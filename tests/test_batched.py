"""The multi-arch mode (nwot_fast.multi_arch) against the per-arch mode, the seeded weight
streams (nwot_fast.weights) against initial_parameters, the chunk size and the choice of mode
and layout, all through public functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import assert_scores_close
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
    """The multi-arch layouts: each test taking this runs on every one."""
    return request.param


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
def test_batched_equals_per_arch_in_float64(method, relu_match, chunk, layout, device):
    """Chunks mixing degenerate and normal archs and two batch sizes (x_for), on each device:
    float64 scores within 1e-9 relative of the per-arch mode's on the CPU, NaN / -inf at the
    same archs."""
    xs = {a: _batch(40 + i, b=8 if i % 3 else 10) for i, a in enumerate(ARCHS)}
    kw = dict(method=method, relu_match=relu_match, seed=3, dtype=torch.float64)
    if (method, relu_match) not in _PER_ARCH:
        _PER_ARCH[method, relu_match] = list(schedule.score_archs(ARCHS, xs.__getitem__, batched=False, **kw))
    per = _PER_ARCH[method, relu_match]
    got = list(schedule.score_archs(ARCHS, xs.__getitem__, batched=True, chunk=chunk, layout=layout, device=device,
                                    **kw))
    assert_scores_close(got, per, 1e-9, what=f"{method}/{relu_match}/{layout}")
    assert any(math.isnan(p) or math.isinf(p) for p in per) and any(math.isfinite(p) for p in per)


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_dense_on_planes_smaller_than_the_pooling_kernel(method, device):
    """8x8 images: 2x2 planes in the last stage, where the dense layout pools in 2-D (ATen's
    3-D pooling refuses planes smaller than its kernel)."""
    x = _batch(75, b=4, side=8)
    kw = dict(method=method, seed=4, dtype=torch.float64)
    archs = [ALL_POOL, DEAD_SOURCE, 6111]
    got = list(schedule.score_archs(archs, lambda _: x, batched=True, layout="dense", device=device, **kw))
    assert_scores_close(got, [per_arch.score_arch(a, x, **kw) for a in archs], 1e-9, what=method)


def test_default_layout_is_the_devices(device):
    """``layout=None`` gives, bit for bit, the float32 scores of the device's default layout,
    and sizes its chunks by that layout's bytes."""
    dev = torch.device(device)
    chunk = [plans.compile_plan(a) for a in (6111, 857)]
    xs = [_batch(50), _batch(51)]
    by_layout = {name: multi_arch.run_chunk(chunk, xs, 0, dev, torch.float32, layout=name)
                 for name in multi_arch.LAYOUTS}
    assert by_layout["sparse"] != by_layout["dense"]  # they round differently: the check can tell them apart
    assert multi_arch.run_chunk(chunk, xs, 0, dev, torch.float32) == by_layout[multi_arch.default_layout(dev)]
    per = {name: multi_arch.bytes_per_arch("jacob_cov", 8, 16, 16, torch.float32, name) for name in multi_arch.LAYOUTS}
    available = 2 * 10 * max(per.values())  # ten of the larger layout's archs, more of the other's
    sizes = {name: multi_arch.choose_chunk("jacob_cov", 8, 16, 16, torch.float32, dev, available, name)
             for name in multi_arch.LAYOUTS}
    assert sizes["sparse"] != sizes["dense"]
    assert multi_arch.choose_chunk("jacob_cov", 8, 16, 16, torch.float32, dev, available) == \
        sizes[multi_arch.default_layout(dev)]


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
                ref[n] = precision.reference_scores(archs, x, method=method, seed=seed)
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
    """Constant-output and all-skip cells in float32, in one chunk: NaN / -inf exactly where the
    float64 truth (the per-arch mode) has them, the finite scores within 1e-2 of it: ten times
    the largest float32 error measured for any arch on any path (tests/test_precision.py), so
    a wrong finite score fails on every machine."""
    archs = [ALL_NONE, CONSTANT_ZEROS, CONSTANT_CONVS, ALL_SKIP]
    x = _batch(61)
    for method in ("jacob_cov", "hook_logdet"):
        truth = list(schedule.score_archs(archs, lambda _: x, method=method, batched=False, dtype=torch.float64))
        got = list(schedule.score_archs(archs, lambda _: x, method=method, batched=True, chunk=4, layout=layout))
        assert_scores_close(got, truth, 1e-2, what=method)
        assert any(math.isfinite(t) for t in truth) and not all(math.isfinite(t) for t in truth)


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
    want = [per_arch.score_arch(a, xs[a], dtype=torch.float64) for a in (6111, 857)]
    assert_scores_close([got[0], got[2]], want, 1e-9)
    assert abs(want[0] - want[1]) > 1e-3 * abs(want[0])  # different batches give different scores


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


def test_chunk_boundaries_change_no_score():
    """The default chunk (from the memory) and chunks of 1 and 2: the same float64 scores, for
    archs that run and archs answered from structure, in order."""
    x = _batch(72, b=4, side=8)
    archs = [6111, ALL_NONE, 857, 4242, 0, 5]
    kw = dict(method="jacob_cov", seed=2, dtype=torch.float64, batched=True)
    default = list(schedule.score_archs(archs, lambda _: x, **kw))
    for chunk in (1, 2):
        assert_scores_close(list(schedule.score_archs(archs, lambda _: x, chunk=chunk, **kw)), default, 1e-9,
                            what=f"chunk={chunk}")
    assert len(set(default[2:])) == len(default) - 2  # distinct archs, distinct scores: order is checked


def test_use_batched_rule():
    assert schedule.use_batched("cpu", 2) and schedule.use_batched("cpu", schedule.CPU_BATCHED_MAX_BATCH)
    assert not schedule.use_batched("cpu", schedule.CPU_BATCHED_MAX_BATCH + 1)
    assert not schedule.use_batched(torch.device("cpu"), 128) and schedule.use_batched("cuda", 128)


def test_batched_none_picks_by_the_rule():
    """``batched=None`` gives, bit for bit, the float32 scores of the mode :func:`use_batched`
    picks for the batch size (multi-arch up to CPU_BATCHED_MAX_BATCH samples on the CPU)."""
    for b in (schedule.CPU_BATCHED_MAX_BATCH, schedule.CPU_BATCHED_MAX_BATCH + 1):
        x = _batch(73 + b, b=b, side=8)
        runs = {mode: list(schedule.score_archs([6111, 857], lambda _: x, batched=mode)) for mode in (None, True, False)}
        assert runs[True] != runs[False]  # the modes round differently: the check can tell them apart
        assert runs[None] == runs[schedule.use_batched("cpu", b)], b


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
