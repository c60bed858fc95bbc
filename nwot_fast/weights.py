"""The seeded initial weights of NB201 networks, drawn once per seed for all architectures.

``torch.manual_seed(seed); build_network(arch)`` draws every parameter from one CPU generator
stream in creation order (:func:`nwot_fast.nb201.parameter_specs`): element ``i`` of that
stream becomes ``uniform_(-b, b)`` of the 32-bit generator output ``i``, with ``b`` the bound of
the parameter that element falls in. Every architecture starts from the same seed, so all of
them read the same stream; only where each parameter starts in it and its bound differ. So for
a seed and each distinct bound ``b`` (ten in NB201: one per fan-in), this module lets torch's
own ``uniform_`` draw the whole stream once with that bound (``T_b``); a parameter at stream
offset ``o`` with bound ``b`` is then ``T_b[o : o + n]``, bit for bit what
:func:`nwot_fast.nb201.initial_parameters` draws (the same kernel on the same generator
outputs; tested), without any per-architecture draw. About 20 ms per seed, then only slicing.
"""

from __future__ import annotations

import functools
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .nb201 import Arch, as_arch, parameter_specs
from .nb201.constants import CONV3, EDGES

__all__ = ["StreamWeights", "arch_segments"]


@functools.lru_cache(maxsize=16384)
def _segments_and_order(arch: Arch):
    """``(segments, order)`` of ``arch``: ``name -> (stream offset, numel, bound, shape)`` of every
    drawn parameter, and every parameter in :func:`nwot_fast.nb201.parameter_specs` order as
    ``(name, shape, init)`` (``init`` None for a drawn one; BatchNorm's "ones" / "zeros")."""
    segments: Dict[str, Tuple[int, int, float, Tuple[int, ...]]] = {}
    order: List[Tuple[str, Tuple[int, ...], Optional[str]]] = []
    offset = 0
    for spec in parameter_specs(arch):
        n = spec.draws
        if n:
            segments[spec.name] = (offset, n, spec.bound, spec.shape)
            offset += n
        order.append((spec.name, spec.shape, None if n else spec.init))
    return segments, tuple(order)


def arch_segments(arch: Arch) -> Dict[str, Tuple[int, int, float, Tuple[int, ...]]]:
    """``name -> (stream offset, numel, bound, shape)`` of every drawn parameter of ``arch``
    (BatchNorm parameters are not drawn: weight 1, bias 0)."""
    return _segments_and_order(arch)[0]


def stream_length(arch: Arch) -> int:
    """How many generator outputs ``arch``'s network draws (its drawn parameters' elements)."""
    return sum(n for _, n, _, _ in arch_segments(as_arch(arch)).values())


@functools.lru_cache(maxsize=1)
def max_length() -> int:
    """The longest stream any NB201 cell reads (all six edges 3x3 convolutions)."""
    return stream_length(Arch((CONV3,) * len(EDGES)))


class StreamWeights:
    """The transformed streams ``T_b`` of one seed, each drawn once at :func:`max_length`;
    thread-safe."""

    def __init__(self, seed: int):
        self.seed = seed
        self._streams: Dict[float, np.ndarray] = {}
        self._lock = threading.Lock()

    def _stream(self, bound: float) -> np.ndarray:
        with self._lock:
            t = self._streams.get(bound)
            if t is None:
                g = torch.Generator().manual_seed(self.seed)
                t = torch.empty(max_length(), dtype=torch.float32).uniform_(-bound, bound, generator=g).numpy()
                self._streams[bound] = t
            return t

    def values(self, segments: Sequence[Tuple[int, int, float]]) -> np.ndarray:
        """The values of the given segments ``(stream offset, numel, bound)``, concatenated: a
        float32 NumPy array of ``sum(numel)`` values."""
        parts: List[np.ndarray] = [self._stream(b)[o:o + n] for o, n, b in segments]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)

    def parameters(self, arch) -> Dict[str, torch.Tensor]:
        """Every parameter of ``arch`` by name, as :func:`nwot_fast.nb201.initial_parameters`
        gives them after ``torch.manual_seed(seed)`` (fresh tensors, not views of the streams;
        BatchNorm weights 1 and biases 0), in :func:`nwot_fast.nb201.parameter_specs` order:
        float32 CPU tensors of the state-dict shapes."""
        arch = as_arch(arch)
        segs, order = _segments_and_order(arch)
        out: Dict[str, torch.Tensor] = {}
        for name, shape, init in order:
            if init is None:
                o, n, b, _ = segs[name]
                out[name] = torch.from_numpy(self._stream(b)[o:o + n].copy()).view(shape)
            else:
                out[name] = (torch.ones if init == "ones" else torch.zeros)(shape)
        return out


_cache_lock = threading.Lock()
_cache: Dict[int, StreamWeights] = {}


def for_seed(seed: int) -> StreamWeights:
    """The :class:`StreamWeights` of ``seed``, kept for the last few seeds used."""
    with _cache_lock:
        w = _cache.get(seed)
        if w is None:
            if len(_cache) >= 2:
                _cache.pop(next(iter(_cache)))
            w = _cache[seed] = StreamWeights(seed)
        return w
