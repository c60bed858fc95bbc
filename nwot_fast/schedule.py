"""The many-architecture scheduler: the fast engine's scores of a sequence of architectures,
in order, by chunks.

For each chunk it runs either the per-arch mode (:mod:`nwot_fast.per_arch`: one plan per
network pass, the passes post-processed in one operator call) or the multi-arch mode
(:mod:`nwot_fast.multi_arch`: the whole chunk in one network pass), by :func:`use_batched`
unless told (``batched=True``: multi-arch).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import torch

from . import multi_arch
from ._common import resolve_device as _resolve_device
from ._common import torch_dtype
from .per_arch import check_nb201_input, check_seed, network_pass, post_process
from .plans import check_method, compile_plan

__all__ = ["score_archs", "use_batched", "CPU_BATCHED_MAX_BATCH"]


def score_archs(archs: Iterable, x_for: Callable, *, method: str = "jacob_cov", seed: int = 0, device="cpu",
                relu_match: str = "name", chunk: Optional[int] = None, dtype=torch.float32,
                batched: Optional[bool] = None, layout: Optional[str] = None) -> Iterator[float]:
    """Scores of many architectures, in order; ``x_for(arch)`` gives the batch of each (called
    with the item of ``archs`` as given: an index, string or Arch; not called for cells whose
    score structure decides). Equal to :func:`nwot_fast.per_arch.score_arch` of each within the
    precision contract (float64: to ~1e-12 relative; NaN / -inf at the same architectures).

    Args:
        archs: architectures (benchmark indices, arch strings or :class:`~nwot_fast.nb201.Arch`).
        x_for: ``x_for(arch) -> x [B, 3, H, W]`` floating tensor, the batch of ``arch``.
        batched: the mode: ``True`` multi-arch (a chunk of architectures in one network pass,
            :mod:`nwot_fast.multi_arch`), ``False`` per-arch (one plan per pass); ``None``
            (default) picks :func:`use_batched` (CUDA: multi-arch; CPU: the faster of the two
            for the batch size).
        chunk: architectures per chunk. Multi-arch: per network pass (default from the free
            memory and the batch size, :func:`nwot_fast.multi_arch.choose_chunk`); per-arch:
            passes collected before one post-processing call (default 1 on the CPU, 16 on
            CUDA). A change of batch shape starts a new chunk.
        dtype: ``torch.float32`` (default) or ``torch.float64``, as for ``score_arch``.
        layout: the multi-arch layout (:data:`nwot_fast.multi_arch.LAYOUTS`; default
            :func:`nwot_fast.multi_arch.default_layout`: dense on CUDA, sparse on the CPU).
        method, seed, device, relu_match: as for ``score_arch``.

    Returns:
        An iterator of float scores, one per architecture, in order.
    """
    check_method(method, relu_match)
    check_seed(seed)
    dev = _resolve_device(device)
    dt = torch_dtype(dtype)
    if not callable(x_for):
        raise TypeError(f"x_for must be a callable returning the batch of an architecture, got {type(x_for).__name__}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if batched is not None and not isinstance(batched, bool):
        raise TypeError(f"batched must be True, False or None (choose), got {batched!r}")
    if layout is not None:
        if layout not in multi_arch.LAYOUTS:
            raise ValueError(f"layout must be one of {multi_arch.LAYOUTS} or None (the device's), got {layout!r}")
    pending: List[Tuple[int, object]] = []  # (position, J / codes (per-arch) or (plan, x) (multi-arch))
    out: List[Optional[float]] = []
    emitted = 0
    limit = chunk
    use = batched
    checked = (None, None)

    def flush():
        if not pending:
            return
        if use:
            scores = multi_arch.run_chunk([w[0] for _, w, _ in pending], [w[1] for _, w, _ in pending], seed, dev, dt,
                                          layout)
        else:
            scores = post_process(method, [r for _, r, _ in pending])
        for (pos, *_), value in zip(pending, scores):
            out[pos] = value
        pending.clear()

    for item in archs:
        plan = compile_plan(item, method, relu_match=relu_match)
        out.append(None)
        if not plan.runs_network:
            out[-1] = plan.result
        else:
            x = x_for(item)
            if x is not checked[0] or x._version != checked[1]:  # a scan passes one batch for all
                check_nb201_input(x)
                checked = (x, x._version)
            if pending and tuple(x.shape) != pending[0][2]:
                flush()
            if not pending:
                if batched is None:
                    use = use_batched(dev, x.shape[0])
                if chunk is None:
                    if use:
                        limit = multi_arch.choose_chunk(method, x.shape[0], x.shape[2], x.shape[3], dt, dev,
                                                        layout=layout)
                    else:
                        limit = 16 if dev.type == "cuda" else 1
            work = (plan, x) if use else network_pass(plan, x, seed, dev, dt)
            pending.append((len(out) - 1, work, tuple(x.shape)))
            if len(pending) >= limit:
                flush()
        while emitted < len(out) and out[emitted] is not None:
            yield out[emitted]
            emitted += 1
    flush()
    while emitted < len(out):
        yield out[emitted]
        emitted += 1


# The CPU batch size up to which the multi-arch mode (its CPU layout, sparse) is faster than the
# per-arch mode (bench/RESULTS.md, "Engine choice on the CPU": bench/ab.py, one
# process, alternating rounds): 0.95-1.3x at batch 2, 0.8x at 4, 0.3-0.6x at 8 and 32.
CPU_BATCHED_MAX_BATCH = 2


def use_batched(device, batch_size: int) -> bool:
    """The default mode of :func:`score_archs` (True: multi-arch): multi-arch on CUDA (kernel
    launches dominate); on the CPU only for batches of at most :data:`CPU_BATCHED_MAX_BATCH`
    samples, where it measured faster (bench/ab.py); above, per-arch (the grouped
    convolutions over many archs cost more than the per-plan path's launches save)."""
    dev = device if isinstance(device, torch.device) else torch.device(device)
    return dev.type == "cuda" or batch_size <= CPU_BATCHED_MAX_BATCH
