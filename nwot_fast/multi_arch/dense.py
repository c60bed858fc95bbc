"""The dense layout of the multi-arch mode: every edge of every architecture computed, with
zero weights and 0/1 masks for what an architecture does not compute.

A chunk of A architectures is stacked along the channels (``[B, A*C, H, W]``). Per source
node ONE grouped convolution over all (architecture, out-edge) pairs (zero weights where an
edge is no convolution or its plan prunes it), ONE BatchNorm, ONE add into the destination
nodes, ONE pooling and two adds through 0/1 masks (pooling, skip), and a hand-written backward
(BatchNorm, convolution, ReLU and pooling backward ops, no autograd). An all-zero channel
stays exactly zero through BatchNorm and gives exactly zero gradient back through its zero
weights, so every arch gets what its plan computes. Nodes 1..3 share one accumulator
``[B, A*C, 3, H, W]``: a node is a view, and the convolution output of a source node,
``[B, A*C*n, H, W]``, adds into its n destinations. About 4-5x the convolution FLOPs of the
sparse layout, and the fewest launches (bench/RESULTS.md: 17 dispatched ops per arch).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import weights
from .._common import BN_EPS, BN_MOMENTUM
from ..nb201.constants import C_STEM, N_CELLS, NUM_NODES, STAGE_CHANNELS, STAGE_FIRST_MODULE, out_edges
from ..nb201.registry import OpKind
from .common import CellUse, ChunkCodes, code_arrays

__all__ = ["network_pass"]


_N_OUT = tuple(len(out_edges(s)) for s in range(NUM_NODES - 1))  # edges out of source node s


class _DenseTensors:
    """The chunk's weights and edge masks for the dense layout, assembled on the host and moved
    in one copy. Per stage and source node ``s``: the convolution of every (arch, out-edge) as
    one grouped weight ``[N_CELLS][A*C*n, C, 3, 3]`` (output channel ``(a*C + c)*n + j`` for
    destination ``s + 1 + j``: a BatchNorm per channel, and a view of the output as
    ``[B, A*C, n, H, W]`` adds into the destinations), 1x1 kernels zero-padded, zero where an
    edge is no convolution or its plan prunes it; and 0/1 masks ``[A*C, n, 1, 1]`` of the
    pooling and skip edges."""

    def __init__(self, uses: List[CellUse], archs, stream: weights.StreamWeights, device, dtype):
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


def _dense_cell(h5, per_node, cell: int, A: int, codes: Optional[ChunkCodes], code_mult, zero_units,
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


def _dense_pass(x, uses: List[CellUse], t: _DenseTensors, codes: Optional[ChunkCodes], jacobian: bool):
    """The dense forward (no autograd); with ``jacobian`` the hand-written backward of the summed
    outputs, returning the gradient of the input ``[B, A*3, H, W]``."""
    A = len(uses)
    cm, zero_units, code_mult = code_arrays(uses)
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


def network_pass(x: torch.Tensor, uses: List[CellUse], archs, stream: weights.StreamWeights,
                 codes: Optional[ChunkCodes], device, dtype) -> Optional[torch.Tensor]:
    """The dense layout's network pass over a chunk of ``A`` architectures.

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
        ``x`` (the hand-written backward); hook_logdet: None.
    """
    tensors = _DenseTensors(uses, archs, stream, device, dtype)
    with torch.no_grad():
        return _dense_pass(x, uses, tensors, codes, jacobian=codes is None)
