"""The front door (nwot_fast.scorer): every command reaches the one Scorer, which decides once.

The commands are called through their public entry points (search / scan / evaluate, the
functions nwot_fast exports, imported from their modules, and ``nwot-fast score``; a Ray scan in
tests/test_distributed.py, on its cluster) with the many-architecture engine forced on the CPU
(``mode="multi-arch"``). Each command's rows must equal, bit for bit, the rows of a Scorer given
the same sequence of indices, and differ from the per-arch engine's in the last bits: so the
command reached the many-architecture engine through the scorer, not another path.
Single-threaded, like the Ray workers: the thread count moves float32 jacob_cov scores.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.utils._python_dispatch

import nwot_fast
from nwot_fast import cli, multi_arch, per_arch
from nwot_fast.config import ScoreConfig
from nwot_fast.evaluation import evaluate
from nwot_fast.scanning import scan
from nwot_fast.random_search import search
from nwot_fast.nb201 import NUM_ARCHS, arch_at
from nwot_fast.scorer import Execution, Scorer, resolve_execution

from test_evaluate import synthetic_csv, synthetic_table  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 4
OPTIONS = dict(method="jacob_cov", batch_size=BATCH, mode="multi-arch")


def _bits(values) -> list:
    """Scores as their exact text (repr round-trips a float; NaN == NaN here)."""
    return [repr(float(v)) for v in values]


@pytest.fixture(scope="module")
def searched():
    """One search run through the public API: its seed, drawn indices (with repeats) and scores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the function-scoped one_thread
    try:
        result = search(n_samples=6, runs=1, seed=11, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    run = result.runs[0]
    return run.seed, run.indices, run.scores


def test_every_command_reaches_the_one_scorer(searched, synthetic_csv, capsys):  # noqa: F811
    seed, drawn, search_scores = searched
    unique = list(dict.fromkeys(drawn))
    config = ScoreConfig(seed=seed, **OPTIONS)
    scorer = Scorer(config)
    assert scorer.execution.mode == "multi-arch" and scorer.execution.chunk >= len(unique)
    want = {s.index: s.score for s in scorer.score_many(unique)}
    per_arch = {s.index: s.score for s in Scorer(ScoreConfig(seed=seed, method="jacob_cov", batch_size=BATCH,
                                                             mode="per-arch")).score_many(unique)}
    finite = [i for i in unique if math.isfinite(want[i])]
    assert finite, "the drawn architectures must include some with a finite score"
    # The many-architecture engine computes in another order than one plan per architecture.
    assert any(want[i] != per_arch[i] for i in finite)
    assert all(abs(want[i] - per_arch[i]) <= 1e-3 * abs(per_arch[i]) for i in finite)

    # search (nwot_fast.search): its scores, repeats included
    assert _bits(search_scores) == _bits(want[i] for i in drawn)
    # scan (nwot_fast.scan)
    scanned = scan(unique, seed=seed, **OPTIONS)
    assert scanned.config.mode == "multi-arch"
    assert _bits(scanned.scores) == _bits(want[i] for i in unique)
    # evaluate (nwot_fast.evaluate), which scores through a scan
    ev = evaluate(indices=unique, accuracies=str(synthetic_csv), seed=seed, **OPTIONS)
    assert list(ev.indices) == unique and _bits(ev.scores) == _bits(want[i] for i in unique)
    # nwot-fast score (the command line)
    code = cli.main(["score", *map(str, unique), "--seed", str(seed), "--batch-size", str(BATCH),
                     "--mode", "multi-arch", "--json", "-q"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["arch_index"] for r in rows] == unique
    assert _bits(r["score"] for r in rows) == _bits(want[i] for i in unique)


# ---------------------------------------------------------------------------------------------
# the decisions, made once


def _cuda_memory(gib: float) -> dict:
    return dict(device=torch.device("cuda"), available_memory=int(gib * 2**30))


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_resolve_execution_rules(method):
    cpu = resolve_execution(ScoreConfig(method=method, batch_size=128))
    # The memory format by per_arch.channels_last_by_default: channels-last for hook_logdet only.
    assert (cpu.engine, cpu.mode, cpu.channels_last, cpu.chunk) == ("fast", "per-arch", method == "hook_logdet", 1)
    assert cpu.device == torch.device("cpu") and cpu.dtype == torch.float32 and not cpu.multi_arch
    small = resolve_execution(ScoreConfig(method=method, batch_size=2))
    assert small.mode == "per-arch" and small.channels_last == (method == "hook_logdet")
    forced_cpu = resolve_execution(ScoreConfig(method=method, batch_size=128, mode="multi-arch"))
    assert forced_cpu.multi_arch and not forced_cpu.channels_last and forced_cpu.device == torch.device("cpu")
    # CUDA (decided without a GPU: the device and its free memory given): the many-arch engine,
    # NCHW, its chunk from the memory and the batch.
    gpu = resolve_execution(ScoreConfig(method=method, batch_size=128, dtype="float64"), **_cuda_memory(40))
    assert gpu.multi_arch and not gpu.channels_last
    assert gpu.dtype == torch.float64
    assert gpu.chunk == multi_arch.choose_chunk(method, 128, 32, 32, torch.float64, gpu.device, available=40 * 2**30)
    more = resolve_execution(ScoreConfig(method=method, batch_size=128, dtype="float64"), **_cuda_memory(80))
    assert more.chunk > gpu.chunk
    forced = resolve_execution(ScoreConfig(method=method, batch_size=128, mode="per-arch"), **_cuda_memory(40))
    assert (forced.mode, forced.channels_last, forced.chunk) == ("per-arch", False, 16)
    ref = resolve_execution(ScoreConfig(method=method, engine="reference", seed=2**63 - 1))
    assert (ref.engine, ref.mode, ref.chunk, ref.seed) == ("reference", None, 1, 2**63 - 1)


def test_mode_is_checked_and_named_in_the_identity():
    with pytest.raises(ValueError, match="unknown mode 'sparse'; allowed: auto, per-arch, multi-arch"):
        ScoreConfig(mode="sparse")
    with pytest.raises(ValueError, match="mode 'multi-arch' is a mode of the fast engine"):
        ScoreConfig(engine="reference", mode="multi-arch")
    assert "mode" not in ScoreConfig().identity()
    assert ScoreConfig(mode="multi-arch").identity()["mode"] == "multi-arch"
    assert ScoreConfig(mode="multi-arch").config_hash() != ScoreConfig().config_hash()
    with pytest.raises(ValueError, match=r"seed must be in 0\.\.9223372036854775807"):
        ScoreConfig(seed=2**63)
    with pytest.raises(TypeError, match="execution must be an Execution"):
        Scorer(ScoreConfig(), execution="sparse")


def test_score_many_keeps_order_and_repeats_and_stops_cleanly():
    config = ScoreConfig(method="hook_logdet", batch_size=BATCH, seed=3)
    indices = [857, 6111, 857, 1651, 6111]
    got = list(Scorer(config).score_many(indices))
    assert [s.index for s in got] == indices
    assert [str(s.arch) for s in got] == [str(arch_at(i)) for i in indices]
    alone = {i: next(Scorer(config).score_many([i])).score for i in set(indices)}
    assert _bits(s.score for s in got) == _bits(alone[s.index] for s in got)
    assert got[3].score == -math.inf  # 1651: every edge "none", decided by structure
    # A consumer that stops early (a killed scan) gets the first results, in order.
    first = next(iter(Scorer(config).score_many(iter([6111, 857]))))
    assert first.index == 6111 and repr(first.score) == repr(alone[6111])
    with pytest.raises(ValueError, match="out of range"):
        list(Scorer(config).score_many([NUM_ARCHS]))


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_a_new_batch_per_architecture_with_the_many_arch_engine(method):
    """Per-architecture batches (the paper's search) in the many-architecture engine: in float64
    each architecture's score equals the per-arch plan's on its own batch (to 1e-9)."""
    indices = [6111, 1459, 857, 15624]
    config = ScoreConfig(method=method, batch_size=BATCH, seed=4, fixed_batch=False, dtype="float64",
                         mode="multi-arch")
    scorer = Scorer(config)
    batches = [scorer.batch_for(i) for i in indices]
    assert not torch.equal(batches[0], batches[1])
    got = [s.score for s in scorer.score_many(indices)]
    for index, x, score in zip(indices, batches, got):
        want = per_arch.score_arch(index, x, method=method, seed=4, dtype=torch.float64)
        assert score == want or abs(score - want) <= 1e-9 * abs(want), (index, score, want)


def test_top_level_exports_the_front_door():
    assert nwot_fast.Scorer is Scorer
    assert nwot_fast.ScoreConfig is ScoreConfig
    assert isinstance(Scorer(ScoreConfig()).execution, Execution)


class _DeviceReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts what makes a device wait for the host or the host for the device, on meta
    tensors (a GPU stand-in): device values read on the host and blocking host->device copies."""

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "meta" and \
                torch.device(kwargs.get("device", "meta")).type == "cpu":
            self.syncs.append("read")
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is torch.ops.aten._local_scalar_dense.default and tensors[0].device.type == "meta":
            self.syncs.append("item")
            return 0.0 if tensors[0].is_floating_point() else 0
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "cpu" and \
                str(kwargs.get("device")) == "meta" and not kwargs.get("non_blocking", False):
            self.syncs.append("blocking copy")
        return func(*args, **kwargs)


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
@pytest.mark.parametrize("fixed", [False, True])
def test_a_multi_arch_chunk_waits_once(method, fixed, tiny_npz):
    """The multi-arch mode as CUDA runs it (its decisions, on the meta device): no sync per
    architecture, one per chunk (its scores read); nothing waits on the inputs either."""
    config = ScoreConfig(method=method, batch_size=BATCH, data=tiny_npz, fixed_batch=fixed, augment=not fixed)
    cuda = resolve_execution(config, image_shape=(3, 16, 16), **_cuda_memory(40))
    archs = [6111, 1459, 857, 15624, 3, 100, 1651, 11]
    for chunk in (4, 8):
        meta = dataclasses.replace(cuda, device=torch.device("meta"), chunk=chunk)
        s = Scorer(config, execution=meta)
        with _DeviceReads():
            next(s.score_many([5]))  # the seed's weights and the images move to the device once
        with _DeviceReads() as mode:
            got = list(s.score_many(archs))
        assert [r.index for r in got] == archs
        running = sum(1 for a in archs if per_arch.compile_plan(a, method).runs_network)
        assert mode.syncs == ["read"] * -(-running // chunk), mode.syncs  # one per chunk


def test_device_batches_equal_the_samplers(tiny_npz):
    """The scorer assembles a chunk's batches on the device (gather, flip, crop, normalise):
    bitwise the sampler's host batches, each architecture's in its channels."""
    config = ScoreConfig(method="jacob_cov", batch_size=BATCH, data=tiny_npz, augment=True, fixed_batch=False)
    s = Scorer(config)
    indices = [6111, 1459, 857]
    chunk = s._batches.chunk(indices)
    assert chunk.shape == (BATCH, 3 * len(indices), 16, 16)
    for a, i in enumerate(indices):
        want = s.sampler.batch(i)
        assert torch.equal(chunk[:, 3 * a:3 * a + 3], want) and torch.equal(s.batch_for(i), want)
