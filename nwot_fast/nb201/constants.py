"""The numbers and names of NAS-Bench-201, in one torch-free place.

The cell: four nodes (node 0 the cell input, node 3 its output) and six edges ``j <- i``
(i < j), each carrying one of five ops. Edges are kept in the order of the official string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2).

The network (xautodl's TinyNetwork with the benchmark's sizes): a stem convolution to
:data:`C_STEM` channels, three stages of :data:`N_CELLS` cells at :data:`STAGE_CHANNELS`
channels joined by two reduction blocks, BatchNorm-ReLU, global pooling and a linear head.
What each op *is* (its parameters, its plan step, its structural properties) is said once in
:mod:`nwot_fast.nb201.registry`.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: The op names, exactly as the benchmark spells them; an op id is an index into this tuple.
OPS: Tuple[str, ...] = (
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
)
NONE, SKIP, CONV1, CONV3, POOL = range(len(OPS))
OP_ID: Dict[str, int] = {name: i for i, name in enumerate(OPS)}

#: (source node, target node) of each of the six edges, in string order.
EDGES: Tuple[Tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
NUM_NODES = 4
INPUT_NODE = 0
OUTPUT_NODE = NUM_NODES - 1

#: Channels of the network input (RGB).
IN_CHANNELS = 3
#: Channels of the stem and of the first stage (xautodl's ``C``).
C_STEM = 16
#: Cells per stage (xautodl's ``N``).
N_CELLS = 5
#: Channels of the three stages; each reduction block doubles them and halves the plane.
STAGE_CHANNELS: Tuple[int, ...] = (C_STEM, 2 * C_STEM, 4 * C_STEM)
NUM_STAGES = len(STAGE_CHANNELS)
#: Cells in the whole network.
NUM_CELLS = NUM_STAGES * N_CELLS
#: Module index (state-dict ``cells.<i>``) of the first cell of each stage; the reduction
#: block of stage ``s > 0`` is module ``STAGE_FIRST_MODULE[s] - 1``.
STAGE_FIRST_MODULE: Tuple[int, ...] = tuple(s * (N_CELLS + 1) for s in range(NUM_STAGES))


def out_edges(node: int) -> Tuple[int, ...]:
    """Edge indices (string order) leaving ``node``, by destination node (ascending)."""
    return tuple(sorted((k for k, (src, _) in enumerate(EDGES) if src == node), key=lambda k: EDGES[k][1]))


def in_edges(node: int) -> Tuple[int, ...]:
    """Edge indices (string order) entering ``node``."""
    return tuple(k for k, (_, dst) in enumerate(EDGES) if dst == node)
