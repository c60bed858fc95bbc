"""The multi-arch mode: a chunk of architectures in one network pass.

Every NB201 cell has the same six edges; only the op on each edge differs. For a chunk of A
architectures the network pass stacks them along the channels (``[B, A*C, H, W]``,
architecture ``a`` owning channels ``a*C .. a*C + C - 1``) and runs, per cell and source node,
each op group once for the (architecture, edge) pairs that use it (:mod:`.sparse`): the FLOPs
of the per-arch plans, about 30 dispatched operators per architecture instead of hundreds.
The stem, the reduction blocks and the head run as grouped convolutions / per-channel ops.
Which edges each architecture computes and which codes it counts come from its own plan
(:func:`nwot_fast.plans.compile_plan`): the same pruning, multiplicities and structural
answers as the per-arch mode, so a node an architecture never computes stays an exact zero.

``jacob_cov``: each architecture gets its own copy of its input (``[B, A*3, H, W]``), and a
hand-written backward of the summed outputs gives every architecture's Jacobian.
``hook_logdet``: the codes of each hooked layer are packed for all architectures at once (one
row per sample and architecture). The chunk is post-processed by the compiled operators in
one call (:mod:`.chunk`), without a sync; :mod:`.sizing` says how many architectures a chunk
may hold.

Weights are gathered on the device from the seed's streams, moved there once per seed
(:class:`nwot_fast.weights.DeviceStreams`); what crosses per chunk is one int64 array of
indices. (A dense layout, every edge of every architecture a 3x3 convolution with zero weights
where unused, was dropped: 4.7x the FLOPs, slower on the CPU and in the GPU cost model;
bench/RESULTS.md.)
"""

from .chunk import run_chunk
from .sizing import MAX_CHUNK, available_memory, bytes_per_arch, choose_chunk

__all__ = ["run_chunk", "choose_chunk", "bytes_per_arch", "available_memory", "MAX_CHUNK"]
