"""The fast engine's per-arch mode (execution plans, nwot_fast.plans + nwot_fast.per_arch) against
the reference engine (nwot_fast.reference).

The plans (which edges run, merged convolutions, codes counted with multiplicities, answers
from structure) are checked in float64, where both paths agree to 1e-9 on any machine: in
float32 the fast path may take other routes (other convolution algorithms, thread counts) and
is held to the precision contract instead (tests/test_precision.py).
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from conftest import assert_scores_close
from nwot_fast import _ext, ops, per_arch, plans, reference, schedule, weights
from nwot_fast.nb201 import Arch, as_arch, build_network, is_constant_output, live_edges, relu_sees_only_zeros
from nwot_fast.nb201.constants import NONE

S = Arch.from_str
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_CONV_MIXED = "|nor_conv_1x1~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ALL_POOL = "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
# Constant output, but convolutions read the cell input: hook_logdet is finite.
CONSTANT_CONVS = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|none~0|none~1|none~2|"
# Constant output and every ReLU sees zeros: -inf.
CONSTANT_ZEROS = "|none~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|nor_conv_1x1~1|none~2|"
# Nodes 1 and 2 do not reach the output; their convolutions still run (and are hooked) in the reference.
DEAD_TARGETS = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|none~1|none~2|"
# Node 1 carries zeros (no path from the input): the convolution reading it sees only zeros.
DEAD_SOURCE = "|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
SKIP_ONLY_TO_OUTPUT = "|nor_conv_1x1~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"
SAME_NODE_TWO_KERNELS = "|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_1x1~1|skip_connect~2|"

ARCHS = [
    ALL_CONV3, ALL_CONV_MIXED, ALL_SKIP, ALL_POOL, ALL_NONE, CONSTANT_CONVS, CONSTANT_ZEROS, DEAD_TARGETS,
    DEAD_SOURCE, SKIP_ONLY_TO_OUTPUT, SAME_NODE_TWO_KERNELS,
    # benchmark indices: the CIFAR-10/100/ImageNet16 optima and a few others
    6111, 1459, 9930, 857, 10676, 0, 5, 17, 100, 333, 4242, 15624,
]


def _batch(seed: int, b: int = 8, side: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, side, side, generator=g)


def _reference(arch, x, method, seed=0, relu_match="name", dtype=torch.float64):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(arch)
    return reference.score(net, x, method, relu_match=relu_match, dtype=dtype)


F64 = torch.float64


def test_fixed_archs_cover_the_degenerate_cases():
    archs = [Arch.from_str(a) if isinstance(a, str) else a for a in ARCHS]
    assert len(ARCHS) >= 20
    assert any(is_constant_output(a) and relu_sees_only_zeros(a) for a in archs)
    assert any(is_constant_output(a) and not relu_sees_only_zeros(a) for a in archs)
    assert any(not all(live_edges(a)[k] or op == NONE for k, op in enumerate(S(a).ops)) for a in ARCHS[:11])


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_jacob_cov_equals_pure_path(arch, device):
    x = _batch(zlib.crc32(str(arch).encode()) % 1000, b=8, side=16)
    ref = _reference(arch, x, "jacob_cov", seed=3)
    assert_scores_close(per_arch.score_arch(arch, x, method="jacob_cov", seed=3, dtype=F64, device=device), ref)


@pytest.mark.parametrize("arch", [6111, ALL_CONV_MIXED, DEAD_SOURCE], ids=str)
def test_jacob_cov_equals_pure_path_32x32(arch):
    x = _batch(50 + zlib.crc32(str(arch).encode()) % 1000, b=8, side=32)
    assert_scores_close(per_arch.score_arch(arch, x, method="jacob_cov", seed=0, dtype=F64),
                        _reference(arch, x, "jacob_cov", seed=0))


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_hook_logdet_equals_pure_path(arch, device):
    x = _batch(1 + zlib.crc32(str(arch).encode()) % 1000, b=8, side=16)
    ref = _reference(arch, x, "hook_logdet", seed=1)
    assert_scores_close(per_arch.score_arch(arch, x, method="hook_logdet", seed=1, dtype=F64, device=device), ref)


@pytest.mark.parametrize("arch", [ALL_CONV_MIXED, CONSTANT_CONVS, CONSTANT_ZEROS, DEAD_TARGETS, DEAD_SOURCE, 1459], ids=str)
@pytest.mark.parametrize("relu_match", ["exact"])
def test_hook_logdet_exact_rule_equals_pure_path(arch, relu_match):
    x = _batch(2 + zlib.crc32(str(arch).encode()) % 1000, b=8, side=16)
    ref = _reference(arch, x, "hook_logdet", seed=1, relu_match=relu_match)
    assert_scores_close(per_arch.score_arch(arch, x, method="hook_logdet", seed=1, relu_match=relu_match, dtype=F64), ref)


@pytest.mark.parametrize("arch, relu_match", [(DEAD_TARGETS, "name"), (DEAD_SOURCE, "exact"), (CONSTANT_CONVS, "name")])
def test_hook_kernel_is_exact(arch, relu_match):
    """K from the packed codes and multiplicities equals the reference K entry for entry."""
    x = _batch(7, b=9, side=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(arch)
    K_ref = torch.from_numpy(reference.hamming_kernel(reference.relu_codes(net, x, relu_match)))
    plan = plans.compile_plan(arch, "hook_logdet", relu_match=relu_match)
    codes = per_arch.network_pass(plan, x, 0, torch.device("cpu"))
    K = ops.hamming_kernel(*codes.triple())[0]
    assert torch.equal(K.to(torch.float64), K_ref)


def test_degenerate_archs_are_answered_without_running(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the network must not run")

    monkeypatch.setattr(torch.nn.functional, "conv2d", boom)
    monkeypatch.setattr(weights, "for_seed", boom)  # not even the weights are drawn
    x = _batch(11)
    for arch in (ALL_NONE, CONSTANT_ZEROS, CONSTANT_CONVS):
        assert math.isnan(per_arch.score_arch(arch, x, method="jacob_cov"))
    for arch in (ALL_NONE, CONSTANT_ZEROS):
        for rm in ("name", "exact"):
            assert per_arch.score_arch(arch, x, method="hook_logdet", relu_match=rm) == float("-inf")
    with pytest.raises(AssertionError, match="must not run"):
        per_arch.score_arch(CONSTANT_CONVS, x, method="hook_logdet")


def test_constant_hook_plan_runs_stem_and_first_cell_only(monkeypatch):
    calls = []
    real = torch.nn.functional.conv2d

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting)
    plan = plans.compile_plan(CONSTANT_CONVS, "hook_logdet")
    per_arch.run_plan(plan, _batch(2, b=6, side=16))
    assert len(calls) == plan.num_convolutions == 1 + plan.convs_per_cell


@pytest.mark.parametrize(
    "arch, convs_per_cell, unmerged",
    [(6111, 3, 5), (ALL_CONV3, 3, 6), (ALL_CONV_MIXED, 5, 6), (SAME_NODE_TWO_KERNELS, 4, 5), (ALL_SKIP, 0, 0),
     (DEAD_TARGETS, 1, 1), (DEAD_SOURCE, 1, 1)],
)
def test_jacob_cov_plan_merges_and_drops(arch, convs_per_cell, unmerged, monkeypatch):
    plan = plans.compile_plan(arch, "jacob_cov")
    assert plan.runs_network and not plan.constant
    assert plan.convs_per_cell == convs_per_cell
    assert plan.num_convolutions == 1 + 15 * convs_per_cell + 6
    assert plans.compile_plan(arch, "jacob_cov", merge=False).convs_per_cell == unmerged
    # one ReLU per node read by convolutions, never a sum with a dropped (none) edge
    relus = [s.node for s in plan.cell_steps if isinstance(s, plans.Relu)]
    assert len(relus) == len(set(relus))
    ops = as_arch(arch).ops
    for s in plan.cell_steps:
        if isinstance(s, plans.Sum):
            assert all(ops[t.edge] != NONE for t in s.terms)
    # the plan runs exactly its convolutions
    calls = []
    real = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    per_arch.run_plan(plan, _batch(4, b=4, side=16))
    assert len(calls) == plan.num_convolutions


def test_hook_plan_keeps_hooked_dead_edges():
    # jacob_cov drops nodes 1 and 2; hook_logdet must still compute node 1 (read by a hooked conv)
    jc = plans.compile_plan(DEAD_TARGETS, "jacob_cov")
    hl = plans.compile_plan(DEAD_TARGETS, "hook_logdet")
    assert [s.edges for s in jc.cell_steps if isinstance(s, plans.ConvBN)] == [(3,)]
    assert [s.edges for s in hl.cell_steps if isinstance(s, plans.ConvBN)] == [(0,), (3,)]
    assert {s.node: s.multiplicity for s in hl.cell_steps if isinstance(s, plans.Codes)} == {0: 6, 1: 2}
    ex = plans.compile_plan(DEAD_TARGETS, "hook_logdet", relu_match="exact")
    assert {s.node: s.multiplicity for s in ex.cell_steps if isinstance(s, plans.Codes)} == {0: 3, 1: 1}
    assert plans.compile_plan(DEAD_SOURCE, "hook_logdet").zero_conv_edges == 2
    assert plans.compile_plan(ALL_NONE, "hook_logdet").result == float("-inf")
    assert math.isnan(plans.compile_plan(CONSTANT_CONVS, "jacob_cov").result)
    assert "convolutions per pass" in plans.compile_plan(6111).describe()


def test_merge_and_channels_last_give_the_same_scores():
    # Merging and channels-last change only the convolution algorithm (channels-last sums in
    # another order): in float64 the scores agree to 1e-9 (in float32 they differ by up to
    # 2e-4 relative on small batches, the precision contract's business).
    x = _batch(5, b=8, side=16)
    base = per_arch.run_plan(plans.compile_plan(ALL_CONV_MIXED, "jacob_cov", merge=False), x, dtype=F64)
    merged = per_arch.run_plan(plans.compile_plan(ALL_CONV_MIXED, "jacob_cov"), x, dtype=F64)
    cl = per_arch.run_plan(plans.compile_plan(ALL_CONV_MIXED, "jacob_cov", channels_last=True), x, dtype=F64)
    assert_scores_close(merged, base)
    assert_scores_close(cl, base)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_both_memory_formats_with_and_without_the_extension_equal_the_reference(method, channels_last, compiled, monkeypatch):
    # Channels-last (the CPU default) runs BatchNorm and pooling as the compiled channels-last
    # kernels, merged edges as dense parts and codes packed in (h, w, c) order; without the
    # extension the same plan runs ATen's BatchNorm on channel slices.
    if not compiled:
        monkeypatch.setattr(_ext, "available", lambda device_type="cpu": False)
    x = _batch(11, b=10, side=16)
    for arch in (SAME_NODE_TWO_KERNELS, ALL_CONV_MIXED, DEAD_SOURCE, 1459):
        plan = plans.compile_plan(arch, method, channels_last=channels_last)
        assert_scores_close(per_arch.run_plan(plan, x, dtype=F64), _reference(arch, x, method))


def test_rng_state_untouched_and_independent_of_it():
    x = _batch(6, b=6, side=16)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = per_arch.score_arch(1459, x, method="jacob_cov", seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(17)  # move the global RNG: the score must not depend on it
    b = per_arch.score_arch(1459, x, method="jacob_cov", seed=2)
    assert a == b
    c = per_arch.score_arch(1459, x, method="jacob_cov", seed=3)
    assert c != a  # other weights


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_network_pass_runs_without_tf32_and_restores_the_settings(method, monkeypatch):
    """Every convolution of the pass runs with TF32 off; the settings are restored after."""
    seen = []
    real = torch.nn.functional.conv2d

    def spy(*args, **kwargs):
        seen.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    before = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    per_arch.score_arch(6111, _batch(3, b=4, side=16), method=method)
    assert len(seen) == plans.compile_plan(6111, method).num_convolutions and set(seen) == {("ieee", "ieee")}
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before


def test_accepts_arch_string_index_and_arch():
    x = _batch(8, b=6, side=16)
    arch = as_arch(857)
    s = [per_arch.score_arch(a, x, method="hook_logdet") for a in (857, str(arch), arch)]
    assert s[0] == s[1] == s[2]


def test_score_archs_uses_the_batch_of_each_arch():
    batches = {a: _batch(20 + i, b=6, side=16) for i, a in enumerate([6111, ALL_NONE, 100])}
    calls = []

    def x_for(a):
        calls.append(a)
        return batches[a]

    got = list(schedule.score_archs(list(batches), x_for, method="jacob_cov", seed=0, batched=False))
    want = [per_arch.score_arch(a, batches[a], method="jacob_cov", seed=0) for a in batches]
    assert got[0] == want[0] and got[2] == want[2] and math.isnan(got[1]) and math.isnan(want[1])
    assert ALL_NONE not in calls  # answered from structure, no batch needed


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_score_archs_batched_post_processing_equals_one_by_one(method):
    """Post-processing batched across architectures (as on CUDA) gives the one-by-one scores;
    cells of different code widths are padded with zero words."""
    archs = [DEAD_SOURCE, ALL_NONE, 6111, CONSTANT_CONVS, ALL_SKIP]
    x = _batch(30, b=6, side=16)
    one = list(schedule.score_archs(archs, lambda _: x, method=method, chunk=1, batched=False))
    many = list(schedule.score_archs(archs, lambda _: x, method=method, chunk=3, batched=False))
    assert len(one) == len(many) == len(archs)
    for a, b in zip(many, one):
        assert_scores_close(a, b, rel=1e-9)
    with pytest.raises(ValueError, match="chunk"):
        list(schedule.score_archs(archs, lambda _: x, method=method, chunk=0))


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_float64_and_float16_batches_are_scored_as_float32(method):
    """The NB201 network is float32; a batch of another floating dtype is cast, as the pure
    path would need (``build_network(arch)(x.float())``)."""
    x = _batch(31, b=6, side=16)
    want = per_arch.score_arch(6111, x, method=method)
    assert per_arch.score_arch(6111, x.double(), method=method) == want
    half = x.half()
    assert per_arch.score_arch(6111, half, method=method) == per_arch.score_arch(6111, half.float(), method=method)
    got = list(schedule.score_archs([6111], lambda _: x.double(), method=method, batched=False))
    assert got == [want]


@pytest.mark.parametrize(
    "kwargs, x, exc, words",
    [
        ({"method": "naswot"}, None, ValueError, "unknown score method"),
        ({"relu_match": "fuzzy"}, None, ValueError, "relu_match"),
        ({"seed": -1}, None, ValueError, "seed"),
        ({"seed": 1.5}, None, TypeError, "seed"),
        ({"device": "tpu"}, None, ValueError, "device"),
        ({"device": 3}, None, TypeError, "device"),
        ({}, torch.zeros(1, 3, 16, 16), ValueError, "batch size"),
        ({}, torch.zeros(4, 3, 16, 16, dtype=torch.int64), TypeError, "floating"),
        ({}, torch.zeros(4, 16, 16), ValueError, "4-D"),
        ({}, torch.zeros(4, 1, 16, 16), ValueError, "3 channels"),
        ({}, torch.full((4, 3, 16, 16), float("nan")), ValueError, "NaN"),
        ({}, [[1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(kwargs, x, exc, words):
    x = _batch(9, b=4, side=16) if x is None else x
    with pytest.raises(exc, match=words):
        per_arch.score_arch(6111, x, **kwargs)


def test_bad_input_on_degenerate_arch_still_raises():
    with pytest.raises(ValueError, match="batch size"):
        per_arch.score_arch(ALL_NONE, torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("arch, exc", [("|conv~0|+|x|", ValueError), (15625, ValueError), (-1, ValueError), (2.0, TypeError)])
def test_bad_arch(arch, exc):
    with pytest.raises(exc):
        per_arch.score_arch(arch, _batch(0, b=2, side=16))
    with pytest.raises(exc):
        plans.compile_plan(arch)


def test_bad_plan_and_x_for():
    with pytest.raises(TypeError, match="plan"):
        per_arch.run_plan("not a plan", _batch(0, b=2, side=16))
    with pytest.raises(TypeError, match="x_for"):
        list(schedule.score_archs([0], None))
