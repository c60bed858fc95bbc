"""The sparse layout of the multi-arch mode: per source node, only the (architecture, edge)
pairs that compute an op, gathered, computed as one call per op group and scattered.

A chunk of A architectures is stacked along the channels (``[B, A*C, H, W]``, architecture
``a`` owning channels ``a*C .. a*C + C - 1``). Per source node each op group
(:attr:`nwot_fast.nb201.registry.OpSpec.group`) runs once for the (architecture, edge) pairs
that use it there: convolutions as ``relu(node)`` once, the pairs' channels gathered
(``index_select``), one grouped convolution (one group per pair, each with its architecture's
own weights) and one BatchNorm call (per channel, train mode; weight 1 and bias 0 as at
initialisation, so left out), scattered into the target nodes (``index_add_``); pooling and
skip gathered, pooled (or not) and scattered the same way. Nodes 1..3 of a cell share one
accumulator ``[B, 3*A*C, H, W]`` (each op group one scatter whatever its target nodes).
Autograd gives the jacob_cov backward. The fewest FLOPs of the layouts.

Weights come from :mod:`nwot_fast.weights` (the seed's stream drawn once; bit for bit
``initial_parameters``), assembled on the host for the whole chunk and moved in one copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops, weights
from .._common import BN_EPS, BN_MOMENTUM
from ..nb201.constants import C_STEM, EDGES, N_CELLS, NUM_NODES, STAGE_CHANNELS, STAGE_FIRST_MODULE
from ..nb201.registry import OpKind, OpSpec
from .common import CellUse, ChunkCodes, code_arrays

__all__ = ["network_pass"]


class _Builder:
    """Collects the weight segments and index arrays of a chunk pass; materialises them in
    one host -> device copy each."""

    def __init__(self, stream: weights.StreamWeights, archs, device, dtype):
        self.stream, self.archs, self.device, self.dtype = stream, archs, device, dtype
        self.segments: List[Tuple[int, int, float]] = []  # (offset, numel, bound) in the seed's streams
        self.tensors: List[Tuple[int, Tuple[int, ...]]] = []  # (element offset, shape)
        self.size = 0

    def weight(self, parameters: Sequence[Tuple[int, str]], shape: Tuple[int, ...]) -> int:
        """Register a weight of ``shape``: the parameters (arch position, name), each flattened,
        one after the other. Returns a handle for :meth:`get`."""
        start = self.size
        for a, name in parameters:
            o, n, b, _ = weights.arch_segments(self.archs[a])[name]
            self.segments.append((o, n, b))
            self.size += n
        if self.size - start != int(np.prod(shape)):  # pragma: no cover - a layout bug
            raise RuntimeError(f"weight of shape {shape} got {self.size - start} values")
        self.tensors.append((start, tuple(shape)))
        return len(self.tensors) - 1

    def materialise(self):
        values = self.stream.values(self.segments)
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


# The order in which the op groups of a source node run and add into the accumulator (the
# float sums follow it): 3x3 convolutions, 1x1 convolutions, pooling, skip.
_GROUP_ORDER = ("conv3", "conv1", "pool", "skip")


@dataclass
class _Group:
    """One op group (:attr:`~nwot_fast.nb201.registry.OpSpec.group`) from one source node in one
    cell stage: its pairs (arch, edge)."""

    op: OpSpec  # the op of every pair
    pairs: List[Tuple[int, int]]
    gather: Optional[torch.Tensor]  # channel index into the source node (None: all, in order)
    scatter: torch.Tensor  # channel index into the [B, 3*A*C, ...] accumulator
    weight: Optional[int]  # builder handle of the stage's weights [N_CELLS, pairs*C, C, k, k]
    cell_weights: Tuple[torch.Tensor, ...] = ()


def _stage_groups(uses: List[CellUse], A: int, C: int, stage: int, builder: _Builder, device):
    """Per source node, the op groups of a cell of this stage, and their weight handles for
    the stage's N_CELLS cells."""
    per_node: List[List[_Group]] = []
    for i in range(NUM_NODES - 1):
        groups = []
        for kind in _GROUP_ORDER:
            pairs, op = [], None
            for k, (src, _) in enumerate(EDGES):
                if src != i:
                    continue
                for a, u in enumerate(uses):
                    if u.edges[k] is not None and u.edges[k].group == kind:
                        pairs.append((a, k))
                        op = u.edges[k]
            if not pairs:
                continue
            gather_list = [c for a, _ in pairs for c in _channels(a, C)]
            gather = None if gather_list == list(range(A * C)) else _index(gather_list, device)
            scatter = _index([c for a, k in pairs for c in _channels(a, C, (EDGES[k][1] - 1) * A * C)], device)
            handle = None
            if op.has_weights:
                first = STAGE_FIRST_MODULE[stage]
                handle = builder.weight([(a, f"cells.{first + cell}.layers.{k}.op.1.weight")
                                         for cell in range(N_CELLS) for a, k in pairs],
                                        (N_CELLS, len(pairs) * C, C, op.kernel, op.kernel))
            groups.append(_Group(op, pairs, gather, scatter, handle))
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


def _run_cell(h, groups, cell: int, A: int, C: int, codes: Optional[ChunkCodes], code_mult,
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
            if g.op.kind is OpKind.CONV:
                if relu is None:
                    relu = F.relu(node)
                src = relu if g.gather is None else relu.index_select(1, g.gather)
                y = _bn(F.conv2d(src, g.cell_weights[cell], padding=g.op.kernel // 2, groups=len(g.pairs)))
            else:
                src = node if g.gather is None else node.index_select(1, g.gather)
                if g.op.kind is OpKind.POOL:
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


def _forward(xs: torch.Tensor, uses: List[CellUse], builder: _Builder, codes: Optional[ChunkCodes], device,
         ):
    A = len(uses)
    cm, zero_units, code_mult = code_arrays(uses)
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
        stages.append((red, _stage_groups(uses, A, C, stage, builder, device)))
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


def network_pass(x: torch.Tensor, uses: List[CellUse], archs, stream: weights.StreamWeights,
                 codes: Optional[ChunkCodes], device, dtype) -> Optional[torch.Tensor]:
    """The sparse layout's network pass over a chunk of ``A`` architectures.

    Args:
        x: ``[B, A*3, H, W]`` of ``dtype`` on ``device``: architecture ``a``'s batch in channels
            ``3a .. 3a+2``.
        uses: per architecture its :class:`~nwot_fast.multi_arch.common.CellUse`.
        archs: the architectures (:class:`~nwot_fast.nb201.Arch`), in the order of ``uses``.
        stream: the seed's weight streams (:func:`nwot_fast.weights.for_seed`).
        codes: hook_logdet: the chunk's :class:`~nwot_fast.multi_arch.common.ChunkCodes`, filled
            by the pass; jacob_cov: None.
        device, dtype: where and in which floating dtype the pass runs.

    Returns:
        jacob_cov: ``[B, A*3, H, W]`` of ``dtype``, the gradient of the summed outputs w.r.t.
        ``x`` (autograd); hook_logdet: None.
    """
    A = len(uses)
    builder = _Builder(stream, archs, device, dtype)
    if codes is None:
        with torch.enable_grad():
            xg = (x if A > 1 else x.clone()).detach().requires_grad_(True)
            y = _forward(xg, uses, builder, None, device)
            (J,) = torch.autograd.grad(y.sum(), xg)
        return J
    with torch.no_grad():
        _forward(x, uses, builder, codes, device)
    return None
