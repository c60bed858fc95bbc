"""The network pass of the multi-arch mode (its one layout, "sparse"): per source node, only
the (architecture, edge) pairs that compute an op, gathered, computed as one call per op group
and scattered.

A chunk of A architectures is stacked along the channels (``[B, A*C, H, W]``, architecture
``a`` owning channels ``a*C .. a*C + C - 1``). Per cell and source node each op group
(:attr:`nwot_fast.nb201.registry.OpSpec.group`: 3x3 convolutions, 1x1 convolutions, pooling,
skip) runs once for the (architecture, edge) pairs that use it there: convolutions as the
pairs' channels gathered and ReLU'd in one pass (:func:`nwot_fast.ops.relu_gather`), one
grouped convolution (one group per pair, each with its architecture's own weights) and one
BatchNorm call (per channel, train mode; weight 1 and bias 0 as at initialisation, so left
out), added into the target nodes (``index_add_``, or ``add_`` when a target takes every
architecture in order); pooling gathered, pooled and added the same way; skip moved from the
source node's channels into the targets' in one pass (:func:`nwot_fast.ops.scatter_channels_`).
The FLOPs are those of the per-arch plans (the same convolutions, merged per op group instead
of per node).

jacob_cov runs a hand-written backward (no autograd, whose views of node buffers would cost a
full-size zero tensor and a copy per use): per cell in reverse, per source node the gradients
of its op groups' targets gathered from one buffer of the cell's nodes, through BatchNorm and
convolution (input only), or pooling, and added into the node's gradient by
:func:`nwot_fast.ops.scatter_channels_` (through the convolutions' ReLU in the same pass: its
output masks the values; skip: straight from the targets' gradients); a cell's input gradient
is added straight into the previous cell's buffer. The fused channel moves give the values of
the ATen operators they replace, bit for bit (tests/test_ops_channels.py).

What crosses to the device per chunk is one int64 array (every gather and scatter index and
where each weight starts in the seed's streams, :class:`_Uploads`); the weights themselves are
gathered on the device from the seed's streams, moved there once
(:class:`nwot_fast.weights.DeviceStreams`).
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
from ..transfer import to_device
from .common import CellUse, ChunkCodes, code_arrays

__all__ = ["network_pass"]

# The order in which the op groups of a source node run and add into the accumulator (the
# float sums follow it): 3x3 convolutions, 1x1 convolutions, pooling, skip.
_GROUP_ORDER = ("conv3", "conv1", "pool", "skip")


class _Uploads:
    """The int64 arrays of a chunk, moved to the device in one copy (pinned and non-blocking on
    CUDA: :func:`nwot_fast.transfer.to_device`); :meth:`get` gives a handle's slice."""

    def __init__(self):
        self.parts: List[np.ndarray] = []
        self.size = 0

    def add(self, values) -> Tuple[int, int]:
        a = np.asarray(values, dtype=np.int64).reshape(-1)
        self.parts.append(a)
        self.size += a.size
        return self.size - a.size, a.size

    def upload(self, device: torch.device) -> None:
        self.flat = to_device(np.concatenate(self.parts) if self.parts else np.zeros(0, np.int64), device)

    def get(self, handle: Tuple[int, int]) -> torch.Tensor:
        return self.flat.narrow(0, handle[0], handle[1])


class _Weights:
    """The weights of a chunk: each registered as equal-sized parameters (of one bound) of the
    chunk's architectures, gathered on the device after the upload (:meth:`tensor`)."""

    def __init__(self, streams: weights.DeviceStreams, archs, uploads: _Uploads, dtype: torch.dtype):
        self.streams, self.archs, self.uploads, self.dtype = streams, archs, uploads, dtype
        self.entries: List[Tuple[Tuple[int, int], int, Tuple[int, ...]]] = []  # (starts handle, numel, shape)

    def add(self, parameters: Sequence[Tuple[int, str]], shape: Tuple[int, ...]) -> int:
        """Register a weight of ``shape``: the parameters (arch position, name), one after the
        other; returns a handle for :meth:`tensor`."""
        starts, numel, bound = [], None, None
        for a, name in parameters:
            o, n, b, _ = weights.arch_segments(self.archs[a])[name]
            if numel is None:
                numel, bound = n, b
            elif (n, b) != (numel, bound):  # pragma: no cover - a layout bug
                raise RuntimeError(f"weight {name} of arch {a} differs in size or bound from its group's")
            starts.append(self.streams.start(o, b))
        if len(starts) * numel != int(np.prod(shape)):  # pragma: no cover - a layout bug
            raise RuntimeError(f"weight of shape {shape} got {len(starts) * numel} values")
        self.entries.append((self.uploads.add(starts), numel, tuple(shape)))
        return len(self.entries) - 1

    def tensor(self, handle: int) -> torch.Tensor:
        starts, numel, shape = self.entries[handle]
        return self.streams.gather(self.uploads.get(starts), numel).view(shape).to(self.dtype)


@dataclass
class _Group:
    """One op group from one source node in one cell stage: its pairs (arch, edge), ordered by
    target node, then the architectures whose first contribution to that node this is, then
    the others; in each of these parts the architectures whose first gradient contribution to
    the source node this is (in the backward's order), then the others, each by architecture."""

    op: OpSpec  # the op of every pair
    pairs: int
    gather: Optional[Tuple[int, int]]  # upload handle: channels of the source node (None: all, in order)
    scatter: Tuple[int, int]  # upload handle: the pairs' channels in the [B, 3*A*C, ...] gradient buffer
    # (node, first pair, pairs, channels or None: all in order, first contribution: copied, not added)
    targets: List[Tuple[int, int, int, Optional[Tuple[int, int]], bool]]
    # The same for the gradient of the source node: (first pair, pairs, channels or None, copy)
    sources: List[Tuple[int, int, Optional[Tuple[int, int]], bool]]
    weight: Optional[int]  # weights handle: the stage's [N_CELLS, pairs*C, C, k, k]
    gather_index: Optional[torch.Tensor] = None
    scatter_index: Optional[torch.Tensor] = None
    target_indices: Tuple[Optional[torch.Tensor], ...] = ()
    source_indices: Tuple[Optional[torch.Tensor], ...] = ()
    cell_weights: Tuple[torch.Tensor, ...] = ()


def _blocks(archs: np.ndarray, C: int, base: np.ndarray) -> np.ndarray:
    """Channel indices of the blocks ``base + a*C .. base + a*C + C - 1``, one block per entry."""
    return (base[:, None] + archs[:, None] * C + np.arange(C)[None, :]).reshape(-1)


def _all_in_order(archs: np.ndarray, A: int) -> bool:
    return len(archs) == A and bool((archs == np.arange(A)).all())


def _part(archs, A: int, C: int, uploads: _Uploads):
    """The channel-index handle of the architectures' blocks, None when they are all, in order."""
    archs = np.asarray(archs, dtype=np.int64)
    return None if _all_in_order(archs, A) else uploads.add(_blocks(archs, C, np.zeros_like(archs)))


def _stage_groups(uses: List[CellUse], A: int, C: int, stage: int, uploads: _Uploads, w: _Weights):
    """Per source node, the op groups of a cell of this stage, and their weight handles for
    the stage's N_CELLS cells; per node 1..3 the channels no group writes and per node 0..2
    the gradient channels no group writes but the backward reads (each None when there are
    none; they are zeroed: a node an architecture does not compute stays an exact zero)."""
    per_node: List[List[_Group]] = []
    written = {j: set() for j in range(1, NUM_NODES)}
    read_grad = {j: set() for j in range(NUM_NODES)}  # gradients the backward gathers
    read_grad[0] = set(range(A))  # a cell's input gradient is read whole
    written_grad = {}
    for i in range(NUM_NODES - 1):
        groups = []
        seen = set()  # architectures with a gradient contribution to node i so far
        for kind in _GROUP_ORDER:
            pairs, op, parts, sources = [], None, [], []
            for k, (src, j) in enumerate(EDGES):  # edges by target node: pairs ordered by target
                if src != i:
                    continue
                users = [a for a, u in enumerate(uses) if u.edges[k] is not None and u.edges[k].group == kind]
                if not users:
                    continue
                op = uses[users[0]].edges[k]
                read_grad[j].update(users)
                first = [a for a in users if a not in written[j]]
                later = [a for a in users if a in written[j]]
                written[j].update(users)
                for part, copy in ((first, True), (later, False)):
                    if not part:
                        continue
                    ordered = [a for a in part if a not in seen] + [a for a in part if a in seen]
                    parts.append((j, len(pairs), len(part), np.array(ordered, dtype=np.int64), copy))
                    for sub, first_grad in (([a for a in part if a not in seen], True),
                                            ([a for a in part if a in seen], False)):
                        if sub:
                            sources.append((len(pairs), len(sub), _part(sub, A, C, uploads), first_grad))
                            pairs.extend((a, k) for a in sub)
                    seen.update(part)
            if not pairs:
                continue
            archs = np.array([a for a, _ in pairs], dtype=np.int64)
            nodes = np.array([EDGES[k][1] for _, k in pairs], dtype=np.int64)
            gather = None if _all_in_order(archs, A) else uploads.add(_blocks(archs, C, np.zeros_like(archs)))
            scatter = uploads.add(_blocks(archs, C, (nodes - 1) * A * C))
            targets = [(j, start, count, _part(part, A, C, uploads), copy) for j, start, count, part, copy in parts]
            handle = None
            if op.has_weights:
                first = STAGE_FIRST_MODULE[stage]
                handle = w.add([(a, f"cells.{first + cell}.layers.{k}.op.1.weight")
                                for cell in range(N_CELLS) for a, k in pairs],
                               (N_CELLS, len(pairs) * C, C, op.kernel, op.kernel))
            groups.append(_Group(op, len(pairs), gather, scatter, targets, sources, handle))
        per_node.append(groups)
        written_grad[i] = seen

    def missing(archs):
        return None if not archs else uploads.add(_blocks(np.array(sorted(archs), dtype=np.int64), C,
                                                          np.zeros(len(archs), dtype=np.int64)))

    unwritten = [None] + [missing(set(range(A)) - written[j]) for j in range(1, NUM_NODES)]
    unwritten_grad = [missing(read_grad[i] - written_grad[i]) for i in range(NUM_NODES - 1)]
    return per_node, unwritten, unwritten_grad


# ---------------------------------------------------------------------------------------------
# The ops and their backward (ATen's, called directly: no autograd)


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


def _pool_backward(grad):
    # NB201's avg_pool_3x3 (stride 1, padding 1, count_include_pad=False): the input only gives
    # the shape, which the gradient shares.
    return torch.ops.aten.avg_pool2d_backward(grad, grad, [3, 3], [1, 1], [1, 1], False, False, None)


def _add_into(dest: torch.Tensor, index: Optional[torch.Tensor], src: torch.Tensor) -> None:
    if index is None:
        dest.add_(src)
    else:
        dest.index_add_(1, index, src)


def _channels(t: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Channels ``first .. first + count - 1`` of ``t`` (``t`` itself when that is all of them)."""
    return t if first == 0 and count == t.shape[1] else t.narrow(1, first, count)


def _cell(h, groups, unwritten, cell: int, A: int, C: int, codes: Optional[ChunkCodes], code_mult, zero_units,
          saved: Optional[list]):
    """One cell on ``h [B, A*C, H, W]``; returns node 3. ``saved`` (jacob_cov): gets per source
    node the ``(conv input (after ReLU), conv output, mean, invstd)`` of its convolution groups.
    Nodes are separate tensors (a node's codes pack without a copy), never zero-filled where a
    group writes: each group copies into its target nodes where it is an architecture's first
    contribution there (a node taken whole when that covers every architecture in order), and
    adds where not."""
    B, _, H, W = h.shape
    nodes: List[Optional[torch.Tensor]] = [h] + [None] * (NUM_NODES - 1)

    def target(j: int) -> torch.Tensor:
        if nodes[j] is None:
            nodes[j] = h.new_empty(B, A * C, H, W)
            if unwritten[j] is not None:
                nodes[j].index_fill_(1, unwritten[j], 0)
        return nodes[j]

    for i in range(NUM_NODES - 1):
        node = nodes[i]
        if codes is not None and code_mult[i] is not None:
            codes.add(node, code_mult[i])
        convs = []
        for g in groups[i]:
            if g.op.kind is OpKind.IDENTITY:
                # Straight from the source node's channels into the targets': one pass each.
                for (j, first, count, _, copy), index in zip(g.targets, g.target_indices):
                    if g.gather_index is not None:
                        src, src_index = node, g.gather_index.narrow(0, first * C, count * C)
                    else:
                        src, src_index = node.narrow(1, first * C, count * C), None
                    ops.scatter_channels_(target(j), index, src, src_index, accumulate=not copy)
                continue
            if g.op.kind is OpKind.CONV:
                # The pairs' channels gathered and ReLU'd in one pass.
                src = ops.relu_gather(node, g.gather_index)
                z = F.conv2d(src, g.cell_weights[cell], padding=g.op.kernel // 2, groups=g.pairs)
                y, mean, invstd = _bn_train(z)
                if saved is not None:
                    convs.append((src, z, mean, invstd))
            else:
                src = node if g.gather_index is None else node.index_select(1, g.gather_index)
                y = ops.avg_pool3x3(src)
            for (j, first, count, _, copy), index in zip(g.targets, g.target_indices):
                part = y if count == g.pairs else y.narrow(1, first * C, count * C)
                if copy and index is None and nodes[j] is None:
                    nodes[j] = part if part.is_contiguous() and part is not node else part.clone()
                elif copy:
                    dest = target(j)
                    dest.copy_(part) if index is None else dest.index_copy_(1, index, part)
                else:
                    _add_into(target(j), index, part)
        if saved is not None:
            saved.append(convs)
    if codes is not None:
        codes.add_zero(zero_units * H * W * C)
    return target(NUM_NODES - 1)


def _cell_backward(grads: torch.Tensor, groups, unwritten_grad, cell: int, saved_cell, g0: torch.Tensor) -> None:
    """Back through a cell: ``grads [B, 3*A*C, H, W]`` holds the gradient of node 3 in its last
    third (nodes 1 and 2: any values); the gradient of the cell's input is written into ``g0``.
    No gradient buffer is zero-filled where a group writes: an architecture's first
    contribution to a node's gradient is copied, the others added."""
    AC = g0.shape[1]
    for i in reversed(range(NUM_NODES - 1)):
        # Node i's gradient: complete once its out-edges (to nodes > i, already done) are in.
        gnode = grads.narrow(1, (i - 1) * AC, AC) if i else g0
        if unwritten_grad[i] is not None:
            gnode.index_fill_(1, unwritten_grad[i], 0)
        convs = iter(saved_cell[i])
        for g in groups[i]:
            per_pair = g.scatter_index.shape[0] // g.pairs
            relu_out = None
            if g.op.kind is OpKind.IDENTITY:
                # The targets' gradients straight into the source node's: one pass per part.
                gsrc, from_index = grads, g.scatter_index
            else:
                gy = grads.index_select(1, g.scatter_index)
                from_index = None
                if g.op.kind is OpKind.CONV:
                    # Through BatchNorm and the convolution; the ReLU's mask (its output, src)
                    # is applied while the parts are written into the node's gradient.
                    relu_out, z, mean, invstd = next(convs)
                    gsrc = _conv_backward(_bn_backward(gy, z, mean, invstd), relu_out, g.cell_weights[cell], 1,
                                          g.op.kernel // 2, g.pairs)
                else:
                    gsrc = _pool_backward(gy)
            for (first, count, _, copy), index in zip(g.sources, g.source_indices):
                if from_index is not None:
                    src, src_index = gsrc, from_index.narrow(0, first * per_pair, count * per_pair)
                else:
                    src, src_index = _channels(gsrc, first * per_pair, count * per_pair), None
                ops.scatter_channels_(gnode, index, src, src_index,
                                      None if relu_out is None else _channels(relu_out, first * per_pair,
                                                                              count * per_pair),
                                      accumulate=not copy)


def _pass(x: torch.Tensor, uses: List[CellUse], streams: weights.DeviceStreams, archs, codes: Optional[ChunkCodes],
          device, dtype) -> Optional[torch.Tensor]:
    A = len(uses)
    cm, zero_units, code_mult = code_arrays(uses)
    uploads = _Uploads()
    w = _Weights(streams, archs, uploads, dtype)
    all_archs = range(A)
    stem = w.add([(a, "stem.0.weight") for a in all_archs], (A * C_STEM, 3, 3, 3))
    stages = []
    for stage, C in enumerate(STAGE_CHANNELS):
        red = None
        if stage:
            Cp = STAGE_CHANNELS[stage - 1]
            m = STAGE_FIRST_MODULE[stage] - 1
            red = (w.add([(a, f"cells.{m}.conv_a.op.1.weight") for a in all_archs], (A * C, Cp, 3, 3)),
                   w.add([(a, f"cells.{m}.conv_b.op.1.weight") for a in all_archs], (A * C, C, 3, 3)),
                   w.add([(a, f"cells.{m}.downsample.1.weight") for a in all_archs], (A * C, Cp, 1, 1)))
        stages.append((red, _stage_groups(uses, A, C, stage, uploads, w)))
    head = w.add([(a, "classifier.weight") for a in all_archs], (1, A * STAGE_CHANNELS[-1], 1, 1))
    uploads.upload(device)
    for _, (groups, unwritten, unwritten_grad) in stages:
        for node_groups in groups:
            for g in node_groups:
                g.gather_index = None if g.gather is None else uploads.get(g.gather)
                g.scatter_index = uploads.get(g.scatter)
                g.target_indices = tuple(None if t[3] is None else uploads.get(t[3]) for t in g.targets)
                g.source_indices = tuple(None if t[2] is None else uploads.get(t[2]) for t in g.sources)
                if g.weight is not None:
                    g.cell_weights = w.tensor(g.weight).unbind(0)
        unwritten[:] = [None if u is None else uploads.get(u) for u in unwritten]
        unwritten_grad[:] = [None if u is None else uploads.get(u) for u in unwritten_grad]
    jacobian = codes is None
    stem_w = w.tensor(stem)
    stem_y = F.conv2d(x, stem_w, padding=1, groups=A)
    h, stem_mean, stem_invstd = _bn_train(stem_y)
    reds, cells = [], []
    for stage, (red, (groups, unwritten, unwritten_grad)) in enumerate(stages):
        if red is not None:
            wa, wb, wd = (w.tensor(r) for r in red)
            if codes is not None:
                codes.add(h, cm)
            ra = F.relu(h)
            ya = F.conv2d(ra, wa, stride=2, padding=1, groups=A)
            za, ma, ia = _bn_train(ya)
            if codes is not None:
                codes.add(za, cm)
            rb = F.relu(za)
            yb = F.conv2d(rb, wb, padding=1, groups=A)
            zb, mb, ib = _bn_train(yb)
            pd = F.avg_pool2d(h, 2, 2)
            if jacobian:
                reds.append((h, ra, ya, ma, ia, rb, yb, mb, ib, pd, wa, wb, wd))
            h = zb.add_(F.conv2d(pd, wd, groups=A))
        for cell in range(N_CELLS):
            saved: Optional[list] = [] if jacobian else None
            h = _cell(h, groups, unwritten, cell, A, STAGE_CHANNELS[stage], codes, code_mult, zero_units, saved)
            if jacobian:
                cells.append((stage, groups, unwritten_grad, cell, saved))
    z, mean, invstd = _bn_train(h)
    if codes is not None:
        codes.add(z, np.ones(A, dtype=np.int64))  # lastact's nn.ReLU: counted once under both rules
        return None
    r = F.relu_(z)
    # d(sum of logits)/d(relu output): the classifier weight over the pooled positions (its bias
    # does not change the Jacobian).
    g = _bn_backward(_relu_backward(w.tensor(head) / (r.shape[2] * r.shape[3]), r), h, mean, invstd)
    grads = None  # the gradient buffer of the cell to go back through (node 3's gradient set)
    for stage, groups, unwritten_grad, cell, saved in reversed(cells):
        B, AC, H, W = g.shape if grads is None else (grads.shape[0], grads.shape[1] // 3, *grads.shape[2:])
        if grads is None:  # the last cell of a stage: its output gradient comes from outside
            grads = g.new_empty(B, (NUM_NODES - 1) * AC, H, W)
            grads.narrow(1, (NUM_NODES - 2) * AC, AC).copy_(g)
        if cell:  # the input gradient goes straight into the previous cell's buffer
            before = grads.new_empty(B, (NUM_NODES - 1) * AC, H, W)
            _cell_backward(grads, groups, unwritten_grad, cell, saved, before.narrow(1, (NUM_NODES - 2) * AC, AC))
            grads = before
            continue
        g = grads.new_empty(B, AC, H, W)
        _cell_backward(grads, groups, unwritten_grad, cell, saved, g)
        grads = None
        if stage:  # through the reduction block before the stage
            hin, ra, ya, ma, ia, rb, yb, mb, ib, pd, wa, wb, wd = reds[stage - 1]
            gza = _relu_backward(_conv_backward(_bn_backward(g, yb, mb, ib), rb, wb, 1, 1, A), rb)
            gh = _relu_backward(_conv_backward(_bn_backward(gza, ya, ma, ia), ra, wa, 2, 1, A), ra)
            gpd = _conv_backward(g, pd, wd, 1, 0, A)
            g = gh.add_(torch.ops.aten.avg_pool2d_backward(gpd, hin, [2, 2], [2, 2], [0, 0], False, True, None))
    g = _bn_backward(g, stem_y, stem_mean, stem_invstd)
    return _conv_backward(g, x, stem_w, 1, 1, A)


def network_pass(x: torch.Tensor, uses: List[CellUse], archs, seed: int, codes: Optional[ChunkCodes], device,
                 dtype) -> Optional[torch.Tensor]:
    """The pass over a chunk. ``x [B, A*3, H, W]`` (``dtype`` on ``device``):
    architecture ``a``'s batch in channels ``3a .. 3a+2``. jacob_cov (``codes`` None): returns
    the gradient of the summed outputs w.r.t. ``x``, ``[B, A*3, H, W]``; hook_logdet: fills
    ``codes`` and returns None. Weights of the seed ``seed``, gathered on the device."""
    with torch.no_grad():
        return _pass(x, uses, weights.on_device(seed, device), archs, codes, device, dtype)
