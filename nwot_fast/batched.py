"""The batched engine: a chunk of architectures in one network pass.

Every NB201 cell has the same six edges; only the op on each edge differs. For a chunk of A
architectures the engine stacks them along the channels (``[B, A*C, H, W]``, architecture
``a`` owning channels ``a*C .. a*C + C - 1``). Two layouts (``run_chunk(layout=...)``):

* ``"sparse"`` (the CPU's; ``"merged"``: the same with 1x1 kernels zero-padded into the 3x3
  group): per source node each op type runs once for the (architecture, edge) pairs that use
  it there: convolutions as ``relu(node)`` once, the pairs' channels gathered
  (``index_select``), one grouped convolution (one group per pair, each with its
  architecture's own weights) and one BatchNorm call (per channel, train mode; weight 1 and
  bias 0 as at initialisation, so left out), scattered into the target nodes (``index_add_``);
  pooling and skip gathered, pooled (or not) and scattered the same way. Autograd gives the
  jacob_cov backward. The fewest FLOPs.
* ``"dense"`` (CUDA's): every edge of every architecture computed; per source node ONE grouped
  convolution over all (architecture, out-edge) pairs (zero weights where an edge is no
  convolution or its plan prunes it), ONE BatchNorm, ONE add into the destination nodes, ONE
  pooling and two adds through 0/1 masks (pooling, skip), and a hand-written backward
  (BatchNorm, convolution, ReLU and pooling backward ops, no autograd). An all-zero channel
  stays exactly zero through BatchNorm and gives exactly zero gradient back through its zero
  weights, so every arch gets what its plan computes. About 4-5x the convolution FLOPs of
  the sparse layout, and the fewest launches (bench/RESULTS.md: 17 dispatched ops per arch).

The stem, the reduction blocks and the head run as grouped convolutions / per-channel ops.
Which edges each architecture computes and which codes it counts come from its own plan
(:func:`nwot_fast.plans.compile_plan`): the same pruning, multiplicities and structural answers
as the per-architecture path, so a node an architecture never computes stays an exact zero.
Nodes 1..3 of a cell share one accumulator (sparse ``[B, 3*A*C, H, W]``: each op group one
scatter whatever its target nodes; dense ``[B, A*C, 3, H, W]``: a node is a view, and the
convolution output of a source node, ``[B, A*C*n, H, W]``, adds into its n destinations).

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
from ._common import BN_EPS, BN_MOMENTUM
from .nb201.constants import C_STEM, EDGES, N_CELLS, NUM_NODES, STAGE_CHANNELS, STAGE_FIRST_MODULE, out_edges
from .nb201.registry import OpKind, OpSpec
MAX_CHUNK = 256
LAYOUTS = ("sparse", "merged", "dense")

__all__ = ["run_chunk", "choose_chunk", "bytes_per_arch", "available_memory", "default_layout", "MAX_CHUNK", "LAYOUTS"]


# ---------------------------------------------------------------------------------------------
# What each architecture computes in a cell, from its plan


@dataclass(frozen=True)
class _CellUse:
    edges: Tuple[Optional[OpSpec], ...]  # per edge: its op when the plan uses the edge, else None
    codes: Tuple[int, ...]  # per node 0..2: multiplicity of its codes (0: not packed)
    zero_conv: int  # conv edges whose ReLU input is an exact zero (hook_logdet units only)
    code_multiplier: int


def _cell_use(plan) -> _CellUse:
    return _CellUse(plan.edge_ops(), plan.code_multiplicities(), plan.zero_conv_edges, plan.code_multiplier)


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


def bytes_per_arch(method: str, batch_size: int, height: int = 32, width: int = 32, dtype=torch.float32,
                   layout: str = "sparse") -> int:
    """Upper estimate of one architecture's share of a chunk's peak memory: its weights (the
    largest cell's, on the host and on the device; the dense layout holds every edge's and a
    host copy more) and the activations a pass keeps, counted in node-sized tensors over all
    cells: jacob_cov everything saved for the backward (sparse: 10 per cell, measured peak 4-7
    at batch 8 and 32, 32x32; dense: 12, the ReLU input of 3 nodes and the convolution output
    of all 6 edges saved, the destinations' gradients and their masked copies alive in a
    cell's backward), hook_logdet 3 (the accumulators and gathered copies alive at once;
    measured 1.4-1.6, weights included)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    item = torch.empty(0, dtype=dtype).element_size()
    h, w, per_cell = height, width, 0
    for stage, C in enumerate(STAGE_CHANNELS):
        if stage:
            h, w = (h + 1) // 2, (w + 1) // 2
        per_cell += (N_CELLS + 2) * C * h * w
    params = weights.max_length() * (4 + item + (4 if layout == "dense" else 0))
    if method == "jacob_cov":
        return params + (12 if layout == "dense" else 10) * batch_size * per_cell * item
    return params + 3 * batch_size * per_cell * item


def choose_chunk(method: str, batch_size: int, height: int, width: int, dtype, device: torch.device,
                 available: Optional[int] = None, layout: Optional[str] = None) -> int:
    """Architectures per network pass: half the free memory (``available`` bytes, measured
    when None) over :func:`bytes_per_arch` of the ``layout`` (default :func:`default_layout`),
    at least 1 and at most :data:`MAX_CHUNK`."""
    if available is None:
        available = available_memory(device)
    per = bytes_per_arch(method, batch_size, height, width, dtype, layout or default_layout(device))
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
                    group = u.edges[k].group if u.edges[k] is not None else ""
                    if group == kind or kind == "conv" and group.startswith("conv"):
                        pairs.append((a, k))
            if not pairs:
                continue
            gather_list = [c for a, _ in pairs for c in _channels(a, C)]
            gather = None if gather_list == list(range(A * C)) else _index(gather_list, device)
            scatter = _index([c for a, k in pairs for c in _channels(a, C, (EDGES[k][1] - 1) * A * C)], device)
            handle = None
            if kind.startswith("conv"):
                kernel = 1 if kind == "conv1" else 3
                first = STAGE_FIRST_MODULE[stage]
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


def _run_cell(h, groups, cell: int, A: int, C: int, codes: Optional[_Codes], code_mult,
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
                    y = ops.avg_pool3x3(src)
                else:
                    y = src
            acc = _scatter_add(acc, g.scatter, y)
    if codes is not None:
        codes.add_zero(zero_units * H * W * C)
    return acc.narrow(1, (NUM_NODES - 2) * A * C, A * C)


def _code_arrays(uses: List[_CellUse]):
    """Per architecture: its code multiplier, the units of its all-zero conv codes per pixel
    and channel, and per node 0..2 of a cell the multiplicity of its codes (None: no arch
    counts that node)."""
    cm = np.array([u.code_multiplier for u in uses], dtype=np.int64)
    zero_units = np.array([u.zero_conv * u.code_multiplier for u in uses], dtype=np.int64)
    code_mult: List[Optional[np.ndarray]] = []
    for i in range(NUM_NODES - 1):
        m = np.array([u.codes[i] for u in uses], dtype=np.int64)
        code_mult.append(m if m.any() else None)
    return cm, zero_units, code_mult


def _forward(xs: torch.Tensor, uses: List[_CellUse], builder: _Builder, codes: Optional[_Codes], device,
             merge_kernels: bool):
    A = len(uses)
    cm, zero_units, code_mult = _code_arrays(uses)
    all_archs = range(A)
    stem = builder.weight([(a, "stem.0.weight") for a in all_archs], (A * C_STEM, 3, 3, 3))
    stages = []
    for stage, C in enumerate(STAGE_CHANNELS):
        red = None
        if stage:
            Cp = STAGE_CHANNELS[stage - 1]
            m = STAGE_FIRST_MODULE[stage] - 1
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
            h = _run_cell(h, groups, cell, A, C, codes, code_mult, zero_units)
    h = _bn(h)
    if codes is not None:
        codes.add(h, np.ones(A, dtype=np.int64))  # lastact's nn.ReLU: counted once under both rules
    h = F.relu(h)
    pooled = F.adaptive_avg_pool2d(h, 1).view(h.shape[0], A, STAGE_CHANNELS[-1])
    # The classifier's bias does not change the Jacobian (and no score reads the logits).
    return (pooled * builder.get(head)).sum(2)


# ---------------------------------------------------------------------------------------------
# The dense layout: every edge of every architecture computed, unused ones with zero weights


_N_OUT = tuple(len(out_edges(s)) for s in range(NUM_NODES - 1))  # edges out of source node s


class _DenseTensors:
    """The chunk's weights and edge masks for the dense layout, assembled on the host and moved
    in one copy. Per stage and source node ``s``: the convolution of every (arch, out-edge) as
    one grouped weight ``[N_CELLS][A*C*n, C, 3, 3]`` (output channel ``(a*C + c)*n + j`` for
    destination ``s + 1 + j``: a BatchNorm per channel, and a view of the output as
    ``[B, A*C, n, H, W]`` adds into the destinations), 1x1 kernels zero-padded, zero where an
    edge is no convolution or its plan prunes it; and 0/1 masks ``[A*C, n, 1, 1]`` of the
    pooling and skip edges."""

    def __init__(self, uses: List[_CellUse], archs, stream: weights.StreamWeights, device, dtype):
        A = len(uses)
        names: List[Tuple[int, str]] = []  # (arch, parameter) of every drawn weight the chunk uses
        names.extend((a, "stem.0.weight") for a in range(A))
        for stage in (1, 2):
            m = STAGE_FIRST_MODULE[stage] - 1
            for part in ("conv_a.op.1", "conv_b.op.1", "downsample.1"):
                names.extend((a, f"cells.{m}.{part}.weight") for a in range(A))
        for stage in range(len(STAGE_CHANNELS)):
            for cell in range(N_CELLS):
                mod = STAGE_FIRST_MODULE[stage] + cell
                for a, u in enumerate(uses):
                    names.extend((a, f"cells.{mod}.layers.{k}.op.1.weight")
                                 for k, op in enumerate(u.edges) if op is not None and op.has_weights)
        names.extend((a, "classifier.weight") for a in range(A))
        segs = [weights.arch_segments(archs[a])[n] for a, n in names]
        values = stream.values([s[:3] for s in segs])
        at, by_name = 0, {}
        for (a, n), (_, size, _, shape) in zip(names, segs):
            by_name[a, n] = values[at:at + size].reshape(shape)
            at += size

        shapes: List[Tuple[Tuple[int, ...], Tuple[int, ...]]] = [((A * C_STEM, 3, 3, 3),) * 2]  # (host, device)
        for stage, C in enumerate(STAGE_CHANNELS):
            if stage:
                Cp = STAGE_CHANNELS[stage - 1]
                shapes.extend([((A * C, Cp, 3, 3),) * 2, ((A * C, C, 3, 3),) * 2, ((A * C, Cp, 1, 1),) * 2])
            for n in _N_OUT:
                shapes.extend([((N_CELLS, A, C, n, C, 3, 3), (N_CELLS, A * C * n, C, 3, 3)),
                               ((2, A, C, n), (2, A * C, n, 1, 1))])
        shapes.append(((1, A * STAGE_CHANNELS[-1], 1, 1, 1),) * 2)
        sizes = [int(np.prod(s)) for s, _ in shapes]
        flat = np.zeros(sum(sizes), dtype=np.float32)
        host = [flat[o - n:o].reshape(s) for o, n, (s, _) in zip(np.cumsum(sizes), sizes, shapes)]
        slots = iter(host)
        stem = next(slots)
        for a in range(A):
            stem[a * C_STEM:(a + 1) * C_STEM] = by_name[a, "stem.0.weight"]
        for stage, C in enumerate(STAGE_CHANNELS):
            if stage:
                m = STAGE_FIRST_MODULE[stage] - 1
                for part in ("conv_a.op.1", "conv_b.op.1", "downsample.1"):
                    w = next(slots)
                    for a in range(A):
                        w[a * C:(a + 1) * C] = by_name[a, f"cells.{m}.{part}.weight"]
            for s in range(NUM_NODES - 1):
                w, mask = next(slots), next(slots)  # [cell, a, c, j, ...]: channel (a*C + c)*n + j
                for a, u in enumerate(uses):
                    for j, k in enumerate(out_edges(s)):
                        op = u.edges[k]
                        if op is None:
                            continue
                        if op.has_weights:
                            for cell in range(N_CELLS):
                                v = by_name[a, f"cells.{STAGE_FIRST_MODULE[stage] + cell}.layers.{k}.op.1.weight"]
                                if op.kernel == 3:
                                    w[cell, a, :, j] = v
                                else:  # 1x1 kernels at the centre of a zero 3x3
                                    w[cell, a, :, j, :, 1, 1] = v[:, :, 0, 0]
                        mask[0, a, :, j] = op.kind is OpKind.POOL
                        mask[1, a, :, j] = op.kind is OpKind.IDENTITY
        head = next(slots)
        for a in range(A):
            head[0, a * STAGE_CHANNELS[-1]:(a + 1) * STAGE_CHANNELS[-1], 0, 0, 0] = by_name[a, "classifier.weight"][0]
        pieces = torch.from_numpy(flat).to(device=device, dtype=dtype).split(sizes)
        it = iter(p.view(s) for p, (_, s) in zip(pieces, shapes))
        self.stem = next(it)
        self.reductions: List[Optional[Tuple[torch.Tensor, ...]]] = []
        self.cells: List[List[Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, torch.Tensor]]]] = []
        for stage in range(len(STAGE_CHANNELS)):
            self.reductions.append((next(it), next(it), next(it)) if stage else None)
            per_node = []
            for _ in range(NUM_NODES - 1):
                w, masks = next(it), next(it)
                per_node.append((w.unbind(0), masks.unbind(0)))
            self.cells.append(per_node)
        self.head = next(it)


_P3 = ((1, 3, 3), (1, 1, 1), (0, 1, 1))  # NB201's avg_pool_3x3 on [B, A*C, 1, H, W]
_P2 = ([3, 3], [1, 1], [1, 1])


def _pool3(x):
    if min(x.shape[-2:]) >= 3:
        return torch.ops.aten.avg_pool3d(x, *_P3, False, False)
    # ATen's 3-D pooling refuses planes smaller than its kernel (padding aside); 2-D does not.
    return torch.ops.aten.avg_pool2d(x.squeeze(2), *_P2, False, False).unsqueeze(2)


def _pool3_backward(grad):
    # The input only gives the shape, which the gradient shares (stride 1, padding 1).
    if min(grad.shape[-2:]) >= 3:
        return torch.ops.aten.avg_pool3d_backward(grad, grad, *_P3, False, False, None)
    g = grad.squeeze(2)
    return torch.ops.aten.avg_pool2d_backward(g, g, *_P2, False, False, None).unsqueeze(2)


def _bn_train(y):
    """Train-mode BatchNorm without affine (weight 1, bias 0): (output, mean, invstd)."""
    return torch.ops.aten.native_batch_norm(y, None, None, None, None, True, BN_MOMENTUM, BN_EPS)


def _bn_backward(grad, y, mean, invstd):
    return torch.ops.aten.native_batch_norm_backward(grad, y, None, None, None, mean, invstd, True, BN_EPS,
                                                     [True, False, False])[0]


def _conv_backward(grad, x, w, stride: int, padding: int, groups: int):
    return torch.ops.aten.convolution_backward(grad, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0],
                                               groups, [True, False, False])[0]


def _relu_backward(grad, out):
    return torch.ops.aten.threshold_backward(grad, out, 0)


def _dense_cell(h5, per_node, cell: int, A: int, codes: Optional[_Codes], code_mult, zero_units,
                saved: Optional[list]):
    """One cell on ``h5 [B, A*C, 1, H, W]``: nodes 1..3 in one accumulator ``[B, A*C, 3, H, W]``;
    per source node one ReLU, grouped convolution and BatchNorm for all (arch, out-edge) pairs,
    one add into the destinations, one pooling and two masked adds (pooling, skip). Returns
    node 3 ``[B, A*C, 1, H, W]`` (a view of the accumulator)."""
    B, AC, _, H, W = h5.shape
    node = h5
    for s in range(NUM_NODES - 1):
        n = _N_OUT[s]
        ws, (mpool, mskip) = per_node[s]
        if s:
            node = acc.narrow(2, s - 1, 1)
        if codes is not None and code_mult[s] is not None:
            codes.add(node, code_mult[s])
        r = F.relu(node).view(B, AC, H, W)
        y = F.conv2d(r, ws[cell], padding=1, groups=A)
        z, mean, invstd = _bn_train(y)
        if s:
            dest = acc.narrow(2, s, n)
            dest.add_(z.view(B, AC, n, H, W))
        else:  # source node 0's convolution output starts the accumulator of nodes 1..3
            acc = dest = z.view(B, AC, n, H, W)
        dest.addcmul_(_pool3(node), mpool)
        dest.addcmul_(node, mskip)
        if saved is not None:
            saved.append((r, y, mean, invstd, ws[cell], mpool, mskip))
    if codes is not None:
        codes.add_zero(zero_units * H * W * (AC // A))
    return dest


def _dense_cell_backward(g3, saved_cell, A: int):
    """Gradient of a cell's input from that of its output ``g3 [B, A*C, 1, H, W]``: per source
    node, in reverse, the gradients of its destinations ``[B, A*C, n, H, W]`` (one cat) through
    BatchNorm, convolution and ReLU, plus pooling and skip through their masks."""
    B, AC, _, H, W = g3.shape
    dests = g3
    g = g3
    for s in reversed(range(NUM_NODES - 1)):
        r, y, mean, invstd, w, mpool, mskip = saved_cell[s]
        n = _N_OUT[s]
        if s < NUM_NODES - 2:
            dests = torch.cat([g, dests], 2)
        gy = _bn_backward(dests.view(B, AC * n, H, W), y, mean, invstd)
        gconv = _relu_backward(_conv_backward(gy, r, w, 1, 1, A), r).view(B, AC, 1, H, W)
        if n == 1:
            g = (gconv + _pool3_backward(dests * mpool)).addcmul_(dests, mskip)
        else:
            g = gconv + _pool3_backward((dests * mpool).sum(2, keepdim=True)) + (dests * mskip).sum(2, keepdim=True)
    return g


def _dense_pass(x, uses: List[_CellUse], t: _DenseTensors, codes: Optional[_Codes], jacobian: bool):
    """The dense forward (no autograd); with ``jacobian`` the hand-written backward of the summed
    outputs, returning the gradient of the input ``[B, A*3, H, W]``."""
    A = len(uses)
    cm, zero_units, code_mult = _code_arrays(uses)
    saved: Optional[list] = [] if jacobian else None
    stem_y = F.conv2d(x, t.stem, padding=1, groups=A)
    h, stem_mean, stem_invstd = _bn_train(stem_y)
    h5 = h.unsqueeze(2)
    reds, cells = [], []
    for stage in range(len(STAGE_CHANNELS)):
        if t.reductions[stage] is not None:
            wa, wb, wd = t.reductions[stage]
            h4 = h5.select(2, 0)
            if codes is not None:
                codes.add(h4, cm)
            ra = F.relu(h4)
            ya = F.conv2d(ra, wa, stride=2, padding=1, groups=A)
            za, ma, ia = _bn_train(ya)
            if codes is not None:
                codes.add(za, cm)
            rb = F.relu(za)
            yb = F.conv2d(rb, wb, padding=1, groups=A)
            zb, mb, ib = _bn_train(yb)
            pd = F.avg_pool2d(h4, 2, 2)
            h5 = zb.add_(F.conv2d(pd, wd, groups=A)).unsqueeze(2)
            if saved is not None:
                reds.append((ra, ya, ma, ia, rb, yb, mb, ib, pd, (wa, wb, wd)))
        for cell in range(N_CELLS):
            cs: Optional[list] = [] if saved is not None else None
            h5 = _dense_cell(h5, t.cells[stage], cell, A, codes, code_mult, zero_units, cs)
            if cs is not None:
                cells.append(cs)
    z, mean, invstd = _bn_train(h5)
    if codes is not None:
        codes.add(z, np.ones(A, dtype=np.int64))  # lastact's nn.ReLU: counted once under both rules
    if not jacobian:
        return None
    r = F.relu_(z)
    # d(sum of logits)/d(relu output): the classifier weight over the pooled positions.
    B, AC, _, H, W = r.shape
    g = _bn_backward(_relu_backward(t.head / (H * W), r), h5, mean, invstd)
    for stage in reversed(range(len(STAGE_CHANNELS))):
        for cell in reversed(range(N_CELLS)):
            g = _dense_cell_backward(g, cells[stage * N_CELLS + cell], A)
        if t.reductions[stage] is not None:
            ra, ya, ma, ia, rb, yb, mb, ib, pd, (wa, wb, wd) = reds[stage - 1]
            g4 = g.squeeze(2)
            gza = _relu_backward(_conv_backward(_bn_backward(g4, yb, mb, ib), rb, wb, 1, 1, A), rb)
            gh = _relu_backward(_conv_backward(_bn_backward(gza, ya, ma, ia), ra, wa, 2, 1, A), ra)
            gpd = _conv_backward(g4, pd, wd, 1, 0, A)
            gh += torch.ops.aten.avg_pool2d_backward(gpd, ra, [2, 2], [2, 2], [0, 0], False, True, None)
            g = gh.unsqueeze(2)
    g = _bn_backward(g.squeeze(2), stem_y, stem_mean, stem_invstd)
    return _conv_backward(g, x, t.stem, 1, 1, A)


def default_layout(device: torch.device) -> str:
    """The layout :func:`run_chunk` uses unless told: ``"dense"`` on CUDA (fewest launches),
    ``"sparse"`` on the CPU (fewest FLOPs; bench/RESULTS.md, "Engine choice on the CPU")."""
    return "dense" if torch.device(device).type == "cuda" else "sparse"


def run_chunk(plans, xs: Sequence[torch.Tensor], seed: int, device: torch.device, dtype,
              layout: Optional[str] = None) -> List[float]:
    """Scores of the plans (all of one method, all running a network) on their batches
    ``xs`` (one per plan, the same shape), in one network pass and one post-processing call.

    ``layout`` (default :func:`default_layout`): ``"sparse"``: per cell and source node the
    (arch, edge) pairs of each op kind gathered and scattered, 1x1 and 3x3 convolutions apart
    (autograd for jacob_cov); ``"merged"``: the same with the 1x1 kernels zero-padded into the 3x3
    group; ``"dense"``: every edge of every arch in one grouped convolution per source node, zero
    weights and 0/1 masks for what an arch does not compute, and a hand-written backward."""
    if layout is None:
        layout = default_layout(device)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    A = len(plans)
    method = plans[0].method
    uses = [_cell_use(p) for p in plans]
    archs = [p.arch for p in plans]
    stream = weights.for_seed(seed)
    x = torch.cat([t.to(device=device, dtype=dtype) for t in xs], 1) if A > 1 else xs[0].to(device=device, dtype=dtype)
    B = x.shape[0]
    codes = None if method == "jacob_cov" else _Codes(A)
    with reference.full_float32():  # no TF32 on CUDA: float32 scores are those of float32
        if layout == "dense":
            tensors = _DenseTensors(uses, archs, stream, device, dtype)
            with torch.no_grad():
                J = _dense_pass(x, uses, tensors, codes, jacobian=codes is None)
        else:
            builder = _Builder(stream, archs, device, dtype)
            if codes is None:
                with torch.enable_grad():
                    xg = (x if A > 1 else x.clone()).detach().requires_grad_(True)
                    y = _forward(xg, uses, builder, None, device, layout == "merged")
                    (J,) = torch.autograd.grad(y.sum(), xg)
            else:
                with torch.no_grad():
                    _forward(x, uses, builder, codes, device, layout == "merged")
        if codes is None:
            J = J.view(B, A, -1).transpose(0, 1).contiguous()  # [A, B, 3*H*W]
            return [float(v) for v in ops.jacob_cov_score(J).tolist()]
        packed = torch.cat(codes.packed, 2).transpose(0, 1).contiguous()  # [A, B, W]
        mult = np.concatenate([np.repeat(m[:, None], p.shape[2], axis=1) for m, p in zip(codes.mults, codes.packed)], 1)
        return [float(v) for v in ops.hook_logdet_score(
            packed, torch.from_numpy(mult).to(device), torch.from_numpy(codes.units.copy()).to(device)).tolist()]
