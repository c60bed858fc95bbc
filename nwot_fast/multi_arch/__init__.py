"""The multi-arch mode: a chunk of architectures in one network pass.

Every NB201 cell has the same six edges; only the op on each edge differs. For a chunk of A
architectures the network pass stacks them along the channels (``[B, A*C, H, W]``,
architecture ``a`` owning channels ``a*C .. a*C + C - 1``), in one of two layouts
(:func:`run_chunk`'s ``layout``; :func:`default_layout` is the device's):

* :mod:`~nwot_fast.multi_arch.sparse` (the CPU's): per source node only the (architecture,
  edge) pairs that compute an op, gathered, one call per op group, scattered. The fewest FLOPs.
* :mod:`~nwot_fast.multi_arch.dense` (CUDA's): every edge of every architecture, zero weights
  and 0/1 masks where an architecture computes nothing, a hand-written backward. The fewest
  launches.

The stem, the reduction blocks and the head run as grouped convolutions / per-channel ops.
Which edges each architecture computes and which codes it counts come from its own plan
(:func:`nwot_fast.plans.compile_plan`): the same pruning, multiplicities and structural
answers as the per-arch mode, so a node an architecture never computes stays an exact zero.

``jacob_cov``: each architecture gets its own copy of its input (``[B, A*3, H, W]``), so one
backward of the summed outputs gives every architecture's Jacobian. ``hook_logdet``: the
codes of each hooked layer are packed for all architectures at once (one row per sample and
architecture). The chunk is post-processed by the compiled operators in one call
(:mod:`~nwot_fast.multi_arch.chunk`); :mod:`~nwot_fast.multi_arch.sizing` says how many
architectures a chunk may hold.

Weights come from :mod:`nwot_fast.weights` (the seed's stream drawn once; bit for bit
``initial_parameters``), assembled on the host for the whole chunk and moved in one copy.
"""

from .chunk import run_chunk
from .common import LAYOUTS, default_layout
from .sizing import MAX_CHUNK, available_memory, bytes_per_arch, choose_chunk

__all__ = ["run_chunk", "choose_chunk", "bytes_per_arch", "available_memory", "default_layout", "MAX_CHUNK", "LAYOUTS"]
