"""What scoring would cost one GPU, counted on the CPU: the engine's real code on ``meta`` tensors.

    python bench/gpu_cost.py --method jacob_cov --layout auto --archs 64 --batch-size 128 --json j.json

Builds a :class:`nwot_fast.scorer.Scorer` with the decisions :func:`nwot_fast.scorer.resolve_execution`
makes for CUDA (an H200's memory; ``--layout`` other than ``auto`` forces the mode: ``per-arch``,
or ``sparse``, the multi-arch mode's one layout), moves
its device to ``meta`` (shapes and dtypes, no values: the compiled operators run their fake
kernels) and scores one chunk of ``--archs`` random architectures under a ``TorchDispatchMode``
that sees every ATen operator the engine dispatches. For each operator on the device it counts:

* FLOPs: ``torch.utils.flop_counter``'s formulas (convolutions, their backward, matmuls); the
  compiled score operators by the formulas in :func:`custom_flops`;
* bytes moved: the sizes of its tensor inputs and outputs (gathers: the gathered part read and
  written; scatter-adds: the part read, read and written; index copies and fills: the part
  written; the compiled channel moves by :func:`custom_bytes`); views and allocations move
  nothing and launch nothing;
* host -> device copies (a CPU tensor copied to the device), split into the inputs (copies made
  by the data path: the scorer's batch source or ``nwot_fast.data``) and everything else, and
  whether they are non-blocking;
* syncs: operators that need a device value on the host (``.item()``, ``float(t)``,
  ``bool(t)`` as in ``isfinite().all()`` in an ``if``, ``.tolist()`` and other device -> host
  copies, ``nonzero``, ``equal``; the answer handed back is a zero (or True), so the scores
  this run computes are meaningless), and host -> device copies without ``non_blocking``
  (PyTorch waits for the stream after them);
* host time: the CPU time of the scoring thread over the chunk minus its time inside the device
  operators' dispatch and minus the measured cost of reaching the counting mode per operator
  (:func:`dispatch_overhead`; on a GPU the host cost of issuing an operator is the per-launch
  cost below): the Python the engine runs between operators (plans, weights, index arrays,
  batches). CPU time, so that other processes on a shared machine do not inflate it.

The same architectures run through the per-arch plans (``mode="per-arch"``) give the
``sparse_plan_flops_per_arch`` the targets compare with. A first chunk of other architectures
runs before the count (the seed's weight streams drawn, the operators loaded); what it copies to
the device once (per seed or per data set) is counted, divided over the whole space.

Whole-space time on one H200, the stated roofline (``--help`` shows the figures):
per operator ``max(FLOPs / 67 TFLOP/s, bytes / 4.8 TB/s)`` (FP32 without TF32, HBM3e;
convolutions at ``--conv-tflops`` instead when given: the first H200 run measured far less than
the roofline for these grouped convolutions, bench/RESULTS.md), plus
5 us per launch, 20 us per sync, host -> device copies at 25 GB/s. The host work (its Python
time and the launches it issues) overlaps the device work when no sync interrupts the chunk
before its end (0 syncs per architecture: the host runs ahead of the GPU's queue), and so do
non-blocking copies; otherwise everything adds up. Then ``chunk time x 15,625 / archs``, plus
the one-time copies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from collections import Counter
from typing import List, Optional

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from nwot_fast._common import METHODS, NUM_ARCHS
from nwot_fast.config import ScoreConfig
from nwot_fast.data import ImageSet, default_data_settings
from nwot_fast.scorer import Scorer, resolve_execution

# The roofline (one NVIDIA H200).
PEAK_FLOPS = 67e12  # FP32 FLOP/s without TF32 (the scores are float32 as defined: reference.full_float32)
PEAK_BYTES = 4.8e12  # HBM3e bytes/s
LAUNCH_S = 5e-6  # host cost of one dispatched kernel in eager PyTorch (Python + launch)
SYNC_S = 20e-6  # one round trip device -> host, the queue drained
H2D_BYTES = 25e9  # host -> device copies, bytes/s (PCIe 5.0 x16, pageable or pinned, conservative)
GPU_MEMORY = 139 * 2**30  # the free memory chunk sizing sees on an H200 (141 GB, less the context)
SPACE = NUM_ARCHS
CIFAR_TRAIN = 50_000  # images in the synthetic data set (CIFAR-10's training set, its upload counted)

KEYS = ("method", "layout", "flops_per_arch", "sparse_plan_flops_per_arch", "bytes_per_arch", "ops_per_arch",
        "h2d_bytes_per_arch", "input_h2d_bytes_per_arch", "syncs_per_arch", "syncs_per_chunk", "host_ms_per_arch",
        "predicted_space_s")

_aten = torch.ops.aten
_ALLOC = {_aten.empty, _aten.empty_strided, _aten.new_empty, _aten.new_empty_strided, _aten.empty_like}
# A device value read on the host: the answer is made up (0 / True), the sync counted.
_SCALAR = {_aten._local_scalar_dense, _aten.is_nonzero, _aten.equal}
_DATA_DEPENDENT = {_aten.nonzero, _aten.masked_select, _aten.unique_consecutive, _aten._unique2}
# Gathers read the gathered part of their source; scatters read and write the part they touch.
_GATHER = {_aten.index_select, _aten.index, _aten.gather, _aten.embedding}
_SCATTER = {_aten.index_add, _aten.index_add_, _aten.index_put_, _aten.scatter_add_, _aten.scatter_add}
_COPY_INTO = {_aten.index_copy_, _aten.index_copy}  # write the part they touch, read only the source
_FILL = {_aten.index_fill_, _aten.index_fill}  # write the part they touch
_CONV = {_aten.convolution, _aten.convolution_backward, _aten.cudnn_convolution}  # priced by --conv-tflops
# Copies made on behalf of these are the inputs': the scorer's batch source (any method of a
# class named like these, e.g. nwot_fast.scorer._SampledBatches) and the data package.
INPUT_CLASSES = ("_Batches",)
INPUT_MODULES = ("/nwot_fast/data/",)


def custom_flops(func, args, out) -> float:
    """FLOPs of the compiled score operators (``torch.ops.nwot_fast``), which flop_counter does
    not know: jacob_cov's correlation ``2 A B^2 D`` plus a symmetric eigensolve ``~9 A B^3``;
    hook_logdet's agreement counts ``2 A B^2 W`` (popcounts) plus the LU ``2/3 A B^3`` and the
    exact singularity check ``1/3 A B^3``; packing codes is a pass over memory (0 FLOPs)."""
    name = func.name()
    if name.startswith("nwot_fast::jacob_cov_score"):
        A, B, D = args[0].shape
        return 2.0 * A * B * B * D + 9.0 * A * B ** 3
    if name.startswith("nwot_fast::hook_logdet_score") or name.startswith("nwot_fast::hamming_kernel"):
        A, B, W = args[0].shape
        return 2.0 * A * B * B * W + A * B ** 3
    return 0.0


def custom_bytes(func, args) -> Optional[int]:
    """Bytes moved by the compiled channel operators (``torch.ops.nwot_fast``), which touch only
    the channels they move (counting their whole tensor arguments, as for other operators,
    would count the full node buffers): ``relu_gather`` reads and writes its output's size;
    ``scatter_channels_`` reads the moved values (and the ReLU output that masks them), reads
    the destination when accumulating, and writes it; plus the index arrays. None: another
    operator (counted by its tensors' sizes)."""
    name = func.name()
    if name.startswith("nwot_fast::relu_gather"):
        x, index = args[0], args[1]
        K = x.shape[1] if index is None else index.numel()
        moved = 2 * x.shape[0] * K * x.shape[2] * x.shape[3] * x.element_size()
        return moved + (0 if index is None else _nbytes(index))
    if name.startswith("nwot_fast::scatter_channels_"):
        dest, dest_index, src, src_index, relu_out, accumulate = args[:6]
        K = dest.shape[1] if dest_index is None else dest_index.numel()
        part = dest.shape[0] * K * dest.shape[2] * dest.shape[3] * dest.element_size()
        passes = 2 + (relu_out is not None) + bool(accumulate)
        return passes * part + sum(_nbytes(i) for i in (dest_index, src_index) if i is not None)
    return None


def _tensors(tree) -> List[torch.Tensor]:
    out: List[torch.Tensor] = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    walk(tree)
    return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _from_data_path() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not None and any(c.__name__ in INPUT_CLASSES for c in type(owner).__mro__):
            return True
        if any(m in frame.f_code.co_filename.replace("\\", "/") for m in INPUT_MODULES):
            return True
        frame = frame.f_back
    return False


class CostMode(TorchDispatchMode):
    """Counts what every dispatched operator would cost the device (module docstring)."""

    def __init__(self, conv_flops: float = PEAK_FLOPS):
        super().__init__()
        self.conv_flops = conv_flops  # FLOP/s the convolutions are priced at (the roofline's, or --conv-tflops)
        self.ops = 0  # operators on the device, views included
        self.launches = 0
        self.flops = 0.0
        self.bytes = 0.0
        self.roofline_s = 0.0  # sum over launches of max(FLOPs / peak, bytes / bandwidth)
        self.h2d = Counter()  # bytes: "inputs" / "other"; copies: "inputs_copies" / "other_copies"
        self.h2d_blocking = 0  # bytes copied without non_blocking=True
        self.syncs = 0
        self.sync_kinds = Counter()
        self.by_op = Counter()
        self.bytes_by_op = Counter()
        self.device_s = 0.0  # CPU time inside the device operators' dispatch (not host time)
        self.dispatches = 0  # operators that reached this mode (device and host)

    def _sync(self, kind: str):
        self.syncs += 1
        self.sync_kinds[kind] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.dispatches += 1
        start = time.thread_time()
        on_device = any(t.device.type == "meta" for t in _tensors((args, kwargs))) or \
            str(kwargs.get("device")) == "meta"
        try:
            return self._handle(func, args, kwargs)
        finally:
            if on_device:  # a host operator's own time is host work
                self.device_s += time.thread_time() - start

    def _handle(self, func, args, kwargs):
        inputs = _tensors((args, kwargs))
        on_device = any(t.device.type == "meta" for t in inputs) or str(kwargs.get("device")) == "meta"
        packet = func.overloadpacket
        # host -> device copies
        if packet in (_aten._to_copy, _aten.copy_, _aten.to):
            src = args[1] if packet is _aten.copy_ else args[0]
            dst_meta = (args[0].device.type == "meta") if packet is _aten.copy_ else \
                (str(kwargs.get("device", src.device)) == "meta")
            if src.device.type == "cpu" and dst_meta:
                kind = "inputs" if _from_data_path() else "other"
                self.h2d[kind] += _nbytes(src)
                self.h2d[kind + "_copies"] += 1
                if not kwargs.get("non_blocking", False):
                    # A blocking copy waits for the stream (copy, then cudaStreamSynchronize).
                    self.h2d_blocking += _nbytes(src)
                    self._sync("blocking host->device copy")
                return func(*args, **kwargs)
            if src.device.type == "meta" and not dst_meta:  # device -> host: .tolist(), .cpu(), .numpy()
                self._sync("device->host copy")
                if packet is _aten.copy_:
                    return args[0].zero_()
                return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
        if not on_device:
            return func(*args, **kwargs)  # host work: its time counts as host time
        if packet in _SCALAR:
            self._sync(packet.__name__)
            return True if packet is not _aten._local_scalar_dense else (
                0.0 if args[0].is_floating_point() else (True if args[0].dtype == torch.bool else 0))
        if packet in _DATA_DEPENDENT:
            raise NotImplementedError(f"gpu_cost: {packet.__name__} has a data-dependent shape; the model cannot run it")
        out = func(*args, **kwargs)
        self.ops += 1
        self.by_op[packet.__name__] += 1
        if func.is_view or func in (_aten.view.default, _aten._unsafe_view.default) or packet in _ALLOC \
                or packet in (_aten.detach, _aten.alias, _aten.lift_fresh, _aten.split, _aten.unbind,
                              _aten.split_with_sizes, _aten.chunk):
            return out
        outputs = _tensors(out)
        if packet in _GATHER:
            moved = 2 * sum(_nbytes(t) for t in outputs) + sum(_nbytes(t) for t in inputs if t.dtype == torch.int64)
        elif packet in _SCATTER or packet in _COPY_INTO:
            src = inputs[-1]
            moved = (3 if packet in _SCATTER else 2) * _nbytes(src) + sum(_nbytes(t) for t in inputs
                                                                          if t.dtype == torch.int64)
        elif packet in _FILL:
            self_, dim, index = args[0], args[1], args[2]
            moved = index.numel() * _nbytes(self_) // max(1, self_.shape[dim]) + _nbytes(index)
        elif func.namespace == "nwot_fast" and custom_bytes(func, args) is not None:
            moved = custom_bytes(func, args)
        else:
            moved = sum(_nbytes(t) for t in inputs) + sum(_nbytes(t) for t in outputs)
        flops = 0.0
        if packet in flop_registry:
            flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
        elif func.namespace == "nwot_fast":
            flops = custom_flops(func, args, out)
        self.launches += 1
        self.flops += flops
        self.bytes += moved
        self.bytes_by_op[packet.__name__] += moved
        rate = self.conv_flops if packet in _CONV else PEAK_FLOPS
        self.roofline_s += max(flops / rate, moved / PEAK_BYTES)
        return out


@dataclasses.dataclass
class Measurement:
    mode: CostMode
    cpu_s: float
    archs: int

    per_dispatch_s: float = 0.0

    @property
    def host_s(self) -> float:
        """The engine's own host work: CPU time less the device operators' dispatch and less the
        cost of reaching this mode per operator (:func:`dispatch_overhead`; on a GPU the host
        cost of issuing an operator is the roofline's per-launch cost instead)."""
        return max(0.0, self.cpu_s - self.mode.device_s - self.mode.dispatches * self.per_dispatch_s)


def dispatch_overhead(n: int = 3000) -> float:
    """CPU seconds per operator spent outside :meth:`CostMode._handle` (the Python call of a
    torch function and the dispatch into the mode), measured on ``n`` additions of meta tensors."""
    a = torch.empty(128, 16, 32, 32, device="meta")
    mode = CostMode()
    with mode:
        torch.add(a, a)
        mode.device_s, mode.dispatches = 0.0, 0
        start = time.thread_time()
        for _ in range(n):
            torch.add(a, a)
        total = time.thread_time() - start
    return max(0.0, total - mode.device_s) / max(1, mode.dispatches)


def measure(scorer: Scorer, archs: List[int], per_dispatch_s: float = 0.0,
            conv_flops: float = PEAK_FLOPS) -> Measurement:
    """Score ``archs`` (one chunk) under a :class:`CostMode` (convolutions priced at ``conv_flops``)."""
    mode = CostMode(conv_flops)
    start = time.thread_time()  # CPU time of this thread: other processes on the machine do not count
    with mode:
        for _ in scorer.score_many(archs):
            pass
    return Measurement(mode, time.thread_time() - start, len(archs), per_dispatch_s)


def synthetic_images(n: int, seed: int) -> ImageSet:
    """``n`` random uint8 32x32 RGB images labelled CIFAR-10 (what the data path handles, and its size)."""
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n),
                    "cifar10", f"{n} synthetic uint8 images")


def model(method: str, layout: str, archs: int, batch_size: int, dtype: str = "float32", inputs: str = "images",
          seed: int = 0, sample_seed: int = 2020, log=print, conv_tflops: Optional[float] = None) -> dict:
    """The cost model's figures for one method and layout (the keys of :data:`KEYS` and more);
    ``conv_tflops``: the rate convolutions are priced at (default: the roofline's)."""
    conv_flops = PEAK_FLOPS if conv_tflops is None else conv_tflops * 1e12
    settings = default_data_settings(method)
    images = synthetic_images(CIFAR_TRAIN, seed) if inputs == "images" else None
    config = ScoreConfig(method=method, batch_size=batch_size, seed=seed, dtype=dtype,
                         augment=settings["augment"] and images is not None, fixed_batch=settings["fixed"])
    mode = {"auto": "auto", "per-arch": "per-arch", "sparse": "multi-arch"}[layout]
    execution = resolve_execution(dataclasses.replace(config, mode=mode), device=torch.device("cuda"),
                                  available_memory=GPU_MEMORY)
    if execution.multi_arch:
        execution = dataclasses.replace(execution, chunk=archs)  # the model's chunk: --archs
    meta = dataclasses.replace(execution, device=torch.device("meta"))
    sample = random.Random(sample_seed).sample(range(NUM_ARCHS), archs + 4)
    warm, chosen = sample[:4], sample[4:]
    # One scorer for all three, as one scan: what it moves to the device once (the seed's weight
    # streams, the images) the first chunk moves and the others do not.
    scorer = Scorer(config, images=images, execution=meta)
    warm_run = measure(scorer, warm)
    overhead = dispatch_overhead()
    run = measure(scorer, chosen, overhead, conv_flops)
    half = measure(scorer, chosen[: max(1, archs // 2)])
    plan = measure(Scorer(config, images=images, execution=dataclasses.replace(
        meta, mode="per-arch", chunk=1, channels_last=False)), chosen)
    m = run.mode
    A = archs
    # Copies the first chunk makes and later ones do not (per seed, per data set), over the space.
    one_time = {k: max(0.0, warm_run.mode.h2d[k] - m.h2d[k] * len(warm) / A) for k in ("inputs", "other")}
    # Syncs: those that grow with the chunk are per architecture (the slope of two chunk sizes).
    per_arch_syncs = (m.syncs - half.mode.syncs) / (A - half.archs) if A > half.archs else 0.0
    per_chunk_syncs = max(0.0, m.syncs - per_arch_syncs * A)
    # One chunk of the model = A architectures (per-arch layout: A / chunk post-processing calls).
    device_s = m.roofline_s
    issue_s = run.host_s + m.launches * LAUNCH_S
    h2d_s = (m.h2d["inputs"] + m.h2d["other"]) / H2D_BYTES
    blocking_s = m.h2d_blocking / H2D_BYTES
    sync_s = m.syncs * SYNC_S
    overlapped = per_arch_syncs == 0
    if overlapped:
        chunk_s = max(device_s, issue_s, h2d_s - blocking_s) + blocking_s + sync_s
    else:
        chunk_s = device_s + issue_s + h2d_s + sync_s
    predicted = chunk_s * SPACE / A + (one_time["inputs"] + one_time["other"]) / H2D_BYTES
    out = {
        "method": method,
        "layout": layout,
        "flops_per_arch": m.flops / A,
        "sparse_plan_flops_per_arch": plan.mode.flops / A,
        "bytes_per_arch": m.bytes / A,
        "ops_per_arch": m.ops / A,
        "h2d_bytes_per_arch": m.h2d["other"] / A + one_time["other"] / SPACE,
        "input_h2d_bytes_per_arch": m.h2d["inputs"] / A + one_time["inputs"] / SPACE,
        "syncs_per_arch": per_arch_syncs,
        "syncs_per_chunk": per_chunk_syncs,
        "host_ms_per_arch": 1e3 * run.host_s / A,
        "predicted_space_s": predicted,
    }
    details = {
        "execution": execution.describe(),
        "resolved_mode": execution.mode,
        "chunk": execution.chunk,
        "launches_per_arch": m.launches / A,
        "measurement_overhead_us_per_dispatch": 1e6 * overhead,
        "roofline_device_ms_per_arch": 1e3 * device_s / A,
        "conv_tflops": conv_flops / 1e12,
        "issue_ms_per_arch": 1e3 * issue_s / A,
        "h2d_ms_per_arch": 1e3 * h2d_s / A,
        "blocking_h2d_bytes_per_arch": m.h2d_blocking / A,
        "h2d_copies_per_arch": (m.h2d["inputs_copies"] + m.h2d["other_copies"]) / A,
        "one_time_h2d_bytes": one_time,
        "host_overlaps_device": overlapped,
        "sync_kinds_per_chunk": dict(m.sync_kinds),
        "flops_ratio_to_sparse_plan": m.flops / plan.mode.flops if plan.mode.flops else math.nan,
        "top_ops": dict(m.by_op.most_common(12)),
        "top_bytes_per_arch": {k: v / A for k, v in m.bytes_by_op.most_common(10)},
        "inputs": "synthetic uint8 images (50,000, CIFAR-10 sized)" if images is not None else
                  "Gaussian N(0, 1), drawn on the host (NumPy PCG64 from the seed and the index)",
        "data": scorer.describe_data(),
    }
    log(f"{method} layout={layout} ({execution.describe()}), {A} archs, batch {batch_size}, {dtype}:")
    for k in KEYS[2:]:
        log(f"  {k:28s} {out[k]:.6g}")
    for k, v in details.items():
        log(f"  {k:28s} {v}")
    log("  (the scores of this run are not computed: meta tensors carry no values)")
    return {"figures": out, "details": details}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=f"roofline: {PEAK_FLOPS / 1e12:g} TFLOP/s, {PEAK_BYTES / 1e12:g} TB/s, "
                                       f"{LAUNCH_S * 1e6:g} us per launch, {SYNC_S * 1e6:g} us per sync, "
                                       f"host->device {H2D_BYTES / 1e9:g} GB/s")
    p.add_argument("--method", default="jacob_cov", choices=METHODS)
    p.add_argument("--layout", default="auto", choices=("auto", "per-arch", "sparse"),
                   help="auto: what CUDA gets by default (nwot_fast.scorer.resolve_execution); per-arch: one plan "
                        "per architecture; sparse: the multi-arch mode (its one layout)")
    p.add_argument("--archs", type=int, default=64, help="architectures in the chunk (random, --sample-seed)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--inputs", default="images", choices=("images", "gaussian"),
                   help="images: a CIFAR-10-sized uint8 data set (the method's data protocol); gaussian: N(0, 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and batches")
    p.add_argument("--sample-seed", type=int, default=2020, help="seed of the architecture sample")
    p.add_argument("--conv-tflops", type=float, default=None, metavar="R",
                   help=f"price convolutions at R TFLOP/s instead of the roofline's {PEAK_FLOPS / 1e12:g} (the first "
                        "H200 run measured 2.6 for jacob_cov's and 2.9 for hook_logdet's grouped convolutions, "
                        "cuDNN's layout transposes included: bench/RESULTS.md)")
    p.add_argument("--json", metavar="PATH", help="write the figures (the issue's keys) as JSON")
    a = p.parse_args(argv)
    if a.archs < 2:
        p.error("--archs must be at least 2")
    if a.conv_tflops is not None and not (math.isfinite(a.conv_tflops) and a.conv_tflops > 0):
        p.error(f"--conv-tflops must be a positive number, got {a.conv_tflops}")
    result = model(a.method, a.layout, a.archs, a.batch_size, a.dtype, a.inputs, a.seed, a.sample_seed,
                   conv_tflops=a.conv_tflops)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: result["figures"][k] for k in KEYS}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
