"""The batched engine: a chunk of architectures in one network pass.

Every NB201 cell has the same six edges; only the op on each edge differs. For a chunk of A
architectures the engine stacks them along the channels (``[B, A*C, H, W]``, architecture
``a`` owning channels ``a*C .. a*C + C - 1``) and runs each op type once per source node for
all the (architecture, edge) pairs that use it there:

* convolutions: ``relu(node)`` once, the channels of the pairs gathered (``index_select``), one
  grouped convolution (one group per pair, each with its architecture's own weights), one
  BatchNorm call (per channel, so per architecture, train mode; weight 1 and bias 0 as at
  initialisation, so left out), scattered into the target nodes (``index_add_``);
* pooling and skip: gathered, pooled (or not) and scattered the same way;
* the stem, the reduction blocks and the head as grouped convolutions / per-channel ops.

Which edges each architecture computes and which codes it counts come from its own plan
(:func:`nwot_fast.fast.compile_plan`): the same pruning, multiplicities and structural answers
as the per-architecture path, so a node an architecture never computes stays an exact zero.
Nodes 1..3 of a cell share one accumulator (``[B, 3*A*C, H, W]``), so each op group is one
scatter whatever its target nodes.

``jacob_cov``: each architecture gets its own copy of its input (``[B, A*3, H, W]``), so one
backward of the summed outputs gives every architecture's Jacobian. ``hook_logdet``: the
codes of each hooked layer are packed for all architectures at once (one row per sample and
architecture). The chunk is post-processed by the compiled operators in one call.

Weights come from :mod:`nwot_fast.weights` (the seed's stream drawn once; bit for bit
``initial_parameters``), assembled on the host for the whole chunk and moved in one copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import ops, reference, weights
from .nb201.arch import CONV3, EDGES, NUM_NODES, Arch

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
C_STEM = 16
N_CELLS = 5
STAGE_CHANNELS = (16, 32, 64)
# Module index (state-dict "cells.<i>") of the first cell of each stage; reductions sit between.
_STAGE_FIRST_MODULE = (0, N_CELLS + 1, 2 * N_CELLS + 2)
MAX_CHUNK = 256

__all__ = ["run_chunk", "choose_chunk", "bytes_per_arch", "available_memory", "MAX_CHUNK"]


# ---------------------------------------------------------------------------------------------
# What each architecture computes in a cell, from its plan


@dataclass(frozen=True)
class _CellUse:
    conv: Tuple[Tuple[int, int], ...]  # (edge, kernel) of computed convolution edges
    pool: Tuple[int, ...]
    skip: Tuple[int, ...]
    codes: Dict[int, int]  # node -> multiplicity
    zero_conv: int  # conv edges whose ReLU input is an exact zero (hook_logdet units only)
    code_multiplier: int


def _cell_use(plan) -> _CellUse:
    conv, pool, skip, codes = [], [], [], {}
    for s in plan.cell_steps:
        if s.op == "conv_bn":
            conv.extend((k, s.kernel) for k in s.edges)
        elif s.op == "pool":
            pool.extend(s.edges)
        elif s.op == "sum":
            dst = int(s.writes[0][1:])
            for term in s.reads:
                if term.startswith("n"):
                    skip.append(EDGES.index((int(term[1:]), dst)))
        elif s.op == "codes":
            codes[int(s.reads[0][1:])] = s.multiplicity
    return _CellUse(tuple(conv), tuple(pool), tuple(skip), codes, plan.zero_conv_edges, plan.code_multiplier)


# ---------------------------------------------------------------------------------------------
# Memory: how many architectures fit


def available_memory(device: torch.device) -> int:
    """Bytes free for a chunk: CUDA free memory, or the CPU's MemAvailable (Linux), else
    the physical memory less nothing known (a conservative 4 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def bytes_per_arch(method: str, batch_size: int, height: int = 32, width: int = 32, dtype=torch.float32) -> int:
    """Upper estimate of one architecture's share of a chunk's peak memory: its weights (the
    largest cell's, on the host and on the device) and the activations a pass keeps, counted
    in node-sized tensors over all cells: jacob_cov everything saved for the backward (10 per
    cell; measured peak 4-7 at batch 8 and 32, 32x32), hook_logdet 3 (the accumulators and
    gathered copies alive at once; measured 1.4-1.6, weights included)."""
    item = torch.empty(0, dtype=dtype).element_size()
    h, w, per_cell = height, width, 0
    for stage, C in enumerate(STAGE_CHANNELS):
        if stage:
            h, w = (h + 1) // 2, (w + 1) // 2
        per_cell += (N_CELLS + 2) * C * h * w
    params = weights.stream_length(Arch((CONV3,) * len(EDGES))) * (4 + item)
    if method == "jacob_cov":
        return params + 10 * batch_size * per_cell * item
    return params + 3 * batch_size * per_cell * item


def choose_chunk(method: str, batch_size: int, height: int, width: int, dtype, device: torch.device,
                 available: Optional[int] = None) -> int:
    """Architectures per network pass: half the free memory (``available`` bytes, measured
    when None) over :func:`bytes_per_arch`, at least 1 and at most :data:`MAX_CHUNK`."""
    if available is None:
        available = available_memory(device)
    per = bytes_per_arch(method, batch_size, height, width, dtype)
    return int(max(1, min(MAX_CHUNK, (available // 2) // max(per, 1))))


# ---------------------------------------------------------------------------------------------
# The pass


class _Builder:
    """Collects the weight segments and index arrays of a chunk pass; materialises them in
    one host -> device copy each."""

    def __init__(self, stream: weights.StreamWeights, archs, device, dtype):
        self.stream, self.archs, self.device, self.dtype = stream, archs, device, dtype
        self.segments: List[Tuple[int, int, float, bool]] = []  # (offset, numel, bound, 1x1 padded to 3x3)
        self.tensors: List[Tuple[int, Tuple[int, ...]]] = []  # (element offset, shape)
        self.size = 0

    def weight(self, parameters: Sequence[Tuple[int, str]], shape: Tuple[int, ...]) -> int:
        """Register a weight of ``shape``: the parameters (arch position, name), each flattened,
        one after the other; a 1x1 kernel in a weight of 3x3 kernels is zero-padded to 3x3 (its
        value at the centre). Returns a handle for :meth:`get`."""
        start = self.size
        for a, name in parameters:
            o, n, b, pshape = weights.arch_segments(self.archs[a])[name]
            pad = len(shape) >= 4 and shape[-1] == 3 and pshape[-1] == 1
            self.segments.append((o, n, b, pad))
            self.size += 9 * n if pad else n
        if self.size - start != int(np.prod(shape)):  # pragma: no cover - a layout bug
            raise RuntimeError(f"weight of shape {shape} got {self.size - start} values")
        self.tensors.append((start, tuple(shape)))
        return len(self.tensors) - 1

    def materialise(self):
        values = self.stream.values([seg[:3] for seg in self.segments])
        if any(seg[3] for seg in self.segments):
            parts, at = [], 0
            for _, n, _, pad in self.segments:
                part = values[at:at + n]
                if pad:
                    padded = np.zeros((n, 9), dtype=values.dtype)
                    padded[:, 4] = part
                    part = padded.ravel()
                parts.append(part)
                at += n
            values = np.concatenate(parts)
        self.flat = torch.from_numpy(values).to(device=self.device, dtype=self.dtype)

    def get(self, handle: int) -> torch.Tensor:
        start, shape = self.tensors[handle]
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= s
        return self.flat.as_strided(shape, tuple(reversed(stride)), start)


def _index(values: List[int], device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, dtype=np.int64)).to(device)


def _channels(a: int, C: int, base: int = 0) -> range:
    return range(base + a * C, base + (a + 1) * C)


@dataclass
class _Group:
    """One op type from one source node in one cell stage: its pairs (arch, edge)."""

    kind: str  # "conv3", "conv1", "pool", "skip"
    pairs: List[Tuple[int, int]]
    gather: Optional[torch.Tensor]  # channel index into the source node (None: all, in order)
    scatter: torch.Tensor  # channel index into the [B, 3*A*C, ...] accumulator
    weight: Optional[int]  # builder handle of the stage's weights [N_CELLS, pairs*C, C, k, k]
    cell_weights: Tuple[torch.Tensor, ...] = ()


def _stage_groups(uses: List[_CellUse], A: int, C: int, stage: int, builder: _Builder, device, merge_kernels: bool):
    """Per source node, the op groups of a cell of this stage, and their weight handles for
    the stage's N_CELLS cells. ``merge_kernels``: 1x1 and 3x3 convolutions in one group (1x1
    kernels zero-padded: one launch less per node, 9x the FLOPs of the 1x1 edges)."""
    per_node: List[List[_Group]] = []
    for i in range(NUM_NODES - 1):
        groups = []
        for kind in (("conv",) if merge_kernels else ("conv3", "conv1")) + ("pool", "skip"):
            pairs = []
            for k, (src, _) in enumerate(EDGES):
                if src != i:
                    continue
                for a, u in enumerate(uses):
                    if kind == "conv3" and (k, 3) in u.conv or kind == "conv1" and (k, 1) in u.conv \
                            or kind == "conv" and ((k, 3) in u.conv or (k, 1) in u.conv) \
                            or kind == "pool" and k in u.pool or kind == "skip" and k in u.skip:
                        pairs.append((a, k))
            if not pairs:
                continue
            gather_list = [c for a, _ in pairs for c in _channels(a, C)]
            gather = None if gather_list == list(range(A * C)) else _index(gather_list, device)
            scatter = _index([c for a, k in pairs for c in _channels(a, C, (EDGES[k][1] - 1) * A * C)], device)
            handle = None
            if kind.startswith("conv"):
                kernel = 1 if kind == "conv1" else 3
                first = _STAGE_FIRST_MODULE[stage]
                handle = builder.weight([(a, f"cells.{first + cell}.layers.{k}.op.1.weight")
                                         for cell in range(N_CELLS) for a, k in pairs],
                                        (N_CELLS, len(pairs) * C, C, kernel, kernel))
            groups.append(_Group(kind, pairs, gather, scatter, handle))
        per_node.append(groups)
    return per_node


class _ScatterAdd(torch.autograd.Function):
    """``acc.index_add_(1, index, src)`` whose backward saves only the index (autograd's own
    index_add saves ``src`` for its shape, which would keep every op output alive until the
    backward and fails when ``src`` is a view of ``acc``)."""

    @staticmethod
    def forward(ctx, acc, index, src):
        ctx.save_for_backward(index)
        ctx.mark_dirty(acc)
        return acc.index_add_(1, index, src)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad, None, grad.index_select(1, index)


def _scatter_add(acc, index, src):
    if torch.is_grad_enabled() and (acc.requires_grad or src.requires_grad):
        return _ScatterAdd.apply(acc, index, src)
    return acc.index_add_(1, index, src)


def _bn(x):
    return F.batch_norm(x, None, None, None, None, True, BN_MOMENTUM, BN_EPS)


class _Codes:
    """Packed codes of a chunk: per layer ``[B, A, W]`` with one multiplicity per architecture."""

    def __init__(self, A: int):
        self.packed: List[torch.Tensor] = []
        self.mults: List[np.ndarray] = []
        self.units = np.zeros(A, dtype=np.int64)
        self.A = A

    def add(self, t: torch.Tensor, mults: np.ndarray):
        B = t.shape[0]
        per_arch = t.reshape(B * self.A, -1)  # row b*A + a: sample b of architecture a
        packed = ops.pack_codes(per_arch)
        self.packed.append(packed.view(B, self.A, -1))
        self.mults.append(mults)
        self.units += mults * per_arch.shape[1]

    def add_zero(self, units_each: np.ndarray):
        self.units += units_each


def _run_cell(h, groups, cell: int, builder: _Builder, A: int, C: int, codes: Optional[_Codes], code_mult,
              zero_units):
    B, _, H, W = h.shape
    acc = h.new_zeros(B, (NUM_NODES - 1) * A * C, H, W)
    node = h
    for i in range(NUM_NODES - 1):
        if i:
            node = acc.narrow(1, (i - 1) * A * C, A * C)
        if codes is not None and code_mult[i] is not None:
            codes.add(node, code_mult[i])
        relu = None
        for g in groups[i]:
            if g.kind.startswith("conv"):
                if relu is None:
                    relu = F.relu(node)
                src = relu if g.gather is None else relu.index_select(1, g.gather)
                kernel = 1 if g.kind == "conv1" else 3
                y = _bn(F.conv2d(src, g.cell_weights[cell], padding=kernel // 2, groups=len(g.pairs)))
            else:
                src = node if g.gather is None else node.index_select(1, g.gather)
                if g.kind == "pool":
                    if src is node and i:
                        # ATen's pooling (float64, or no compiled kernel) saves its input for
                        # the backward: not a view of the accumulator written to after.
                        src = node.clone()
                    y = _pool(src)
                else:
                    y = src
            acc = _scatter_add(acc, g.scatter, y)
    if codes is not None:
        codes.add_zero(zero_units * H * W * C)
    return acc.narrow(1, (NUM_NODES - 2) * A * C, A * C)


def _pool(x):
    return ops.avg_pool3x3(x)


def _code_mults(uses: List[_CellUse]) -> List[Optional[np.ndarray]]:
    out: List[Optional[np.ndarray]] = []
    for i in range(NUM_NODES - 1):
        m = np.array([u.codes.get(i, 0) for u in uses], dtype=np.int64)
        out.append(m if m.any() else None)
    return out


def _forward(xs: torch.Tensor, uses: List[_CellUse], builder: _Builder, codes: Optional[_Codes], device,
             merge_kernels: bool):
    A = len(uses)
    cm = np.array([u.code_multiplier for u in uses], dtype=np.int64)
    zero_units = np.array([u.zero_conv * u.code_multiplier for u in uses], dtype=np.int64)
    code_mult = _code_mults(uses)
    all_archs = range(A)
    stem = builder.weight([(a, "stem.0.weight") for a in all_archs], (A * C_STEM, 3, 3, 3))
    stages = []
    for stage, C in enumerate(STAGE_CHANNELS):
        red = None
        if stage:
            Cp = STAGE_CHANNELS[stage - 1]
            m = _STAGE_FIRST_MODULE[stage] - 1
            red = (builder.weight([(a, f"cells.{m}.conv_a.op.1.weight") for a in all_archs], (A * C, Cp, 3, 3)),
                   builder.weight([(a, f"cells.{m}.conv_b.op.1.weight") for a in all_archs], (A * C, C, 3, 3)),
                   builder.weight([(a, f"cells.{m}.downsample.1.weight") for a in all_archs], (A * C, Cp, 1, 1)))
        stages.append((red, _stage_groups(uses, A, C, stage, builder, device, merge_kernels)))
    head = builder.weight([(a, "classifier.weight") for a in all_archs], (A, STAGE_CHANNELS[-1]))
    builder.materialise()
    for _, groups in stages:
        for node_groups in groups:
            for g in node_groups:
                if g.weight is not None:
                    g.cell_weights = builder.get(g.weight).unbind(0)

    h = _bn(F.conv2d(xs, builder.get(stem), padding=1, groups=A))
    for stage, (red, groups) in enumerate(stages):
        C = STAGE_CHANNELS[stage]
        if red is not None:
            if codes is not None:
                codes.add(h, cm)
            a_ = _bn(F.conv2d(F.relu(h), builder.get(red[0]), stride=2, padding=1, groups=A))
            if codes is not None:
                codes.add(a_, cm)
            b_ = _bn(F.conv2d(F.relu(a_), builder.get(red[1]), padding=1, groups=A))
            h = F.conv2d(F.avg_pool2d(h, 2, 2), builder.get(red[2]), groups=A) + b_
        for cell in range(N_CELLS):
            h = _run_cell(h, groups, cell, builder, A, C, codes, code_mult, zero_units)
    h = _bn(h)
    if codes is not None:
        codes.add(h, np.ones(A, dtype=np.int64))  # lastact's nn.ReLU: counted once under both rules
    h = F.relu(h)
    pooled = F.adaptive_avg_pool2d(h, 1).view(h.shape[0], A, STAGE_CHANNELS[-1])
    # The classifier's bias does not change the Jacobian (and no score reads the logits).
    return (pooled * builder.get(head)).sum(2)


def run_chunk(plans, xs: Sequence[torch.Tensor], seed: int, device: torch.device, dtype,
              merge_kernels: Optional[bool] = None) -> List[float]:
    """Scores of the plans (all of one method, all running a network) on their batches
    ``xs`` (one per plan, the same shape), in one network pass and one post-processing call.
    ``merge_kernels`` (default: on CUDA, where launches cost more than the FLOPs of these
    small convolutions): 1x1 convolutions run zero-padded in the 3x3 group of their node."""
    if merge_kernels is None:
        merge_kernels = device.type == "cuda"
    A = len(plans)
    method = plans[0].method
    uses = [_cell_use(p) for p in plans]
    builder = _Builder(weights.for_seed(seed), [p.arch for p in plans], device, dtype)
    x = torch.cat([t.to(device=device, dtype=dtype) for t in xs], 1) if A > 1 else xs[0].to(device=device, dtype=dtype)
    B = x.shape[0]
    with reference.full_float32():  # no TF32 on CUDA: float32 scores are those of float32
        if method == "jacob_cov":
            with torch.enable_grad():
                xg = (x if A > 1 else x.clone()).detach().requires_grad_(True)
                y = _forward(xg, uses, builder, None, device, merge_kernels)
                (J,) = torch.autograd.grad(y.sum(), xg)
            J = J.view(B, A, -1).transpose(0, 1).contiguous()  # [A, B, 3*H*W]
            return [float(v) for v in ops.jacob_cov_score(J).tolist()]
        codes = _Codes(A)
        with torch.no_grad():
            _forward(x, uses, builder, codes, device, merge_kernels)
        packed = torch.cat(codes.packed, 2).transpose(0, 1).contiguous()  # [A, B, W]
        mult = np.concatenate([np.repeat(m[:, None], p.shape[2], axis=1) for m, p in zip(codes.mults, codes.packed)], 1)
        return [float(v) for v in ops.hook_logdet_score(
            packed, torch.from_numpy(mult).to(device), torch.from_numpy(codes.units.copy()).to(device)).tolist()]
