"""The one front door: a :class:`Scorer` turns benchmark indices into scores.

Every command reaches the engines through it: ``nwot-fast scan`` / ``search`` / ``score`` /
``evaluate``, :func:`nwot_fast.search`, :func:`nwot_fast.scan`, :func:`nwot_fast.evaluate` and
the Ray workers (:mod:`nwot_fast.distributed`) all build a :class:`Scorer` from their
:class:`~nwot_fast.config.ScoreConfig` and call :meth:`Scorer.score_many`. So for one
configuration the same index gives bitwise the same score whichever command asks for it.

How the scores are computed is decided once, when the scorer is built, by
:func:`resolve_execution` (an :class:`Execution`): the engine (the fast engine or the reference
oracle), the layout (one plan per architecture, or a chunk of architectures per network pass:
CUDA's default), the memory format, the chunk, the device, the dtype and the seed. Nothing
below decides again.

The weights come from the configuration's seed (:mod:`nwot_fast.weights`, bit for bit those of
``torch.manual_seed(seed); build_network(arch)``) and each architecture's batch from the data
sampler keyed by its index (:class:`nwot_fast.data.BatchSampler`), so a score does not depend
on which other indices are scored with it, nor on their order, when one architecture's
computation does not depend on the others' (per-arch layout; the many-architecture layouts on
the CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from . import reference
from ._common import check_index, check_seed, resolve_device, torch_dtype
from .config import ScoreConfig
from .nb201 import Arch, arch_at, build_network

__all__ = ["Scorer", "ArchScore", "Execution", "resolve_execution", "score_with_reference"]


@dataclass(frozen=True)
class ArchScore:
    """The score of one benchmark index. ``seconds``: the wall time spent on it (an
    architecture scored in a chunk gets an equal share of the chunk's time)."""

    index: int
    arch: Arch
    score: float
    seconds: float

    def to_dict(self) -> dict:
        """``arch_index``, ``arch`` (the arch string), ``score``, ``seconds``."""
        return {"arch_index": self.index, "arch": str(self.arch), "score": self.score, "seconds": self.seconds}


@dataclass(frozen=True)
class Execution:
    """How a :class:`Scorer` computes, decided once by :func:`resolve_execution`.

    ``engine``: ``"fast"`` or ``"reference"``. ``layout`` (fast engine): ``"per-arch"`` (one
    execution plan per architecture) or a many-architecture layout of :mod:`nwot_fast.multi_arch`
    (a chunk of architectures per network pass); ``None`` for the reference engine.
    ``channels_last``: the memory format of the per-arch plans. ``chunk``: architectures per
    network pass (many-architecture layouts), or per post-processing call (per-arch).
    ``device``, ``dtype`` (``torch.float32`` / ``torch.float64``), ``seed`` (0..2**63-1),
    ``method`` and ``relu_match`` as in the configuration."""

    engine: str
    layout: Optional[str]
    channels_last: bool
    chunk: int
    device: torch.device
    dtype: torch.dtype
    seed: int
    method: str
    relu_match: str

    @property
    def multi_arch(self) -> bool:
        """Whether a chunk of architectures runs in one network pass."""
        return self.layout not in (None, "per-arch")

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.engine == "reference":
            return f"reference engine on {self.device}, {str(self.dtype)[6:]}"
        fmt = "channels-last" if self.channels_last else "NCHW"
        what = f"{self.layout} layout, {self.chunk} architectures per pass" if self.multi_arch else \
            f"one plan per architecture ({fmt})"
        return f"fast engine on {self.device}, {what}, {str(self.dtype)[6:]}"


def resolve_execution(config: ScoreConfig, *, image_shape: Tuple[int, int, int] = (3, 32, 32),
                      device: Optional[torch.device] = None, available_memory: Optional[int] = None) -> Execution:
    """The :class:`Execution` of ``config`` (its per-method defaults filled in) for batches of
    ``image_shape`` ``(C, H, W)``: the one place where the engine, layout, memory format,
    chunk, device, dtype and seed are decided.

    Rules: the device is ``config.device`` resolved (``auto``: CUDA when available), unless
    ``device`` is given. Layout ``"auto"``: on CUDA the many-architecture engine
    (:func:`nwot_fast.multi_arch.default_layout`; kernel launches dominate there); on the CPU one
    plan per architecture, except for batches of at most
    :data:`nwot_fast.schedule.CPU_BATCHED_MAX_BATCH` samples, where the many-architecture engine
    measured faster (bench/RESULTS.md, "Engine choice on the CPU"). Per-arch plans run
    channels-last on the CPU (bench/RESULTS.md, "CPU levers"), NCHW elsewhere. The chunk of a
    many-architecture layout comes from the memory free on the device (``available_memory``
    bytes when given, else measured) and the batch size
    (:func:`nwot_fast.multi_arch.choose_chunk`)."""
    from . import multi_arch, schedule

    if not isinstance(config, ScoreConfig):
        raise TypeError(f"config must be a ScoreConfig, got {type(config).__name__}")
    c = config.resolved()
    dev = resolve_device(c.device) if device is None else torch.device(device)
    dtype = torch_dtype(c.dtype)
    seed = check_seed(c.seed)
    if c.engine == "reference":
        return Execution("reference", None, False, 1, dev, dtype, seed, c.method, c.relu_match)
    layout = c.layout
    if layout == "auto":
        layout = multi_arch.default_layout(dev) if schedule.use_batched(dev, c.batch_size) else "per-arch"
    if layout == "per-arch":
        return Execution("fast", "per-arch", dev.type == "cpu", 16 if dev.type == "cuda" else 1, dev, dtype, seed,
                         c.method, c.relu_match)
    if layout not in multi_arch.LAYOUTS:
        raise ValueError(f"layout must be 'per-arch' or one of {multi_arch.LAYOUTS}, got {layout!r}")
    _, height, width = image_shape
    chunk = multi_arch.choose_chunk(c.method, c.batch_size, height, width, dtype, dev, available=available_memory,
                                 layout=layout)
    return Execution("fast", layout, False, chunk, dev, dtype, seed, c.method, c.relu_match)


def score_with_reference(arch, x: torch.Tensor, *, method: str, seed: int, relu_match: str = "name",
                         dtype="float32") -> float:
    """The pure path for one architecture: ``build_network`` right after ``torch.manual_seed(seed)``,
    scored by :func:`nwot_fast.reference.score` on ``x [B, 3, H, W]`` (the caller's RNG state is
    kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(arch).to(x.device)
    return reference.score(model, x, method, relu_match=relu_match, dtype=dtype)


class Scorer:
    """Scores benchmark indices under one :class:`~nwot_fast.config.ScoreConfig`.

    ``images``: the already loaded images of ``config.data`` (loaded when None).
    ``execution``: run under this :class:`Execution` instead of resolving one from the
    configuration (bench/gpu_cost.py runs a GPU's decisions on the ``meta`` device this way).
    """

    def __init__(self, config: ScoreConfig, *, images=None, execution: Optional[Execution] = None):
        from .data import BatchSampler, load_images

        if not isinstance(config, ScoreConfig):
            raise TypeError(f"config must be a ScoreConfig, got {type(config).__name__}")
        self.config = config.resolved()
        if images is None and self.config.data is not None:
            images = load_images(self.config.data, dataset=self.config.dataset)
        self.images = images
        shape = (3,) + tuple(images.images.shape[1:3]) if images is not None else (3, 32, 32)
        self.sampler = BatchSampler(
            images,
            batch_size=self.config.batch_size,
            augment=bool(self.config.augment),
            fixed=bool(self.config.fixed_batch),
            seed=self.config.seed,
            image_shape=shape,
        )
        if execution is None:
            execution = resolve_execution(self.config, image_shape=shape)
        elif not isinstance(execution, Execution):
            raise TypeError(f"execution must be an Execution (see resolve_execution), got {type(execution).__name__}")
        self.execution = execution
        self.device = execution.device
        self._fixed: Optional[torch.Tensor] = None

    def describe_data(self) -> str:
        """The inputs in words (data set or Gaussian, batch size, fixed or per architecture, seed)."""
        return self.sampler.describe()

    def batch_for(self, index: int) -> torch.Tensor:
        """The batch ``[B, 3, H, W]`` (float32, on the scorer's device) that architecture
        ``index`` is scored on. With a fixed batch, the same tensor every time (do not modify it)."""
        if self.sampler.fixed:
            if self._fixed is None:
                self._fixed = self.sampler.batch(0).to(self.device)
            return self._fixed
        return self.sampler.batch(index).to(self.device)

    def score_many(self, indices: Iterable[int]) -> Iterator[ArchScore]:
        """An :class:`ArchScore` per index of ``indices``, in their order (an index may repeat:
        it is scored once). Results come a chunk at a time (:attr:`Execution.chunk`), so a
        consumer that stops (a killed scan) loses at most the chunk in flight."""
        done: Dict[int, ArchScore] = {}
        waiting: List[int] = []
        todo: List[int] = []
        for raw in indices:
            index = check_index(raw)
            waiting.append(index)
            if index not in done and index not in todo:
                todo.append(index)
            if len(todo) >= self.execution.chunk:
                done.update(self._score(todo))
                todo = []
                yield from (done[i] for i in waiting)
                waiting = []
        if todo:
            done.update(self._score(todo))
        yield from (done[i] for i in waiting)

    def _score(self, indices: List[int]) -> Dict[int, ArchScore]:
        e = self.execution
        try:
            if e.engine == "reference":
                out = {}
                for i in indices:
                    start = time.perf_counter()
                    s = score_with_reference(arch_at(i), self.batch_for(i), method=e.method, seed=e.seed,
                                             relu_match=e.relu_match, dtype=e.dtype)
                    out[i] = ArchScore(i, arch_at(i), float(s), time.perf_counter() - start)
                return out
            from . import schedule

            start = time.perf_counter()
            scores = list(schedule.score_archs(indices, self.batch_for, method=e.method, seed=e.seed, device=e.device,
                                           relu_match=e.relu_match, chunk=e.chunk, dtype=e.dtype,
                                           batched=e.multi_arch, layout=e.layout if e.multi_arch else None))
            share = (time.perf_counter() - start) / len(indices)
            return {i: ArchScore(i, arch_at(i), float(s), share) for i, s in zip(indices, scores)}
        except torch.OutOfMemoryError as exc:
            what = f"architecture {indices[0]}" if len(indices) == 1 else \
                f"a chunk of {len(indices)} architectures ({indices[0]}..)"
            raise MemoryError(
                f"out of memory scoring {what} with batch size {self.config.batch_size} on {self.device}; "
                "lower --batch-size or use another device (the batch is never split: that would change "
                "train-mode BatchNorm statistics and so the score)"
            ) from exc

    def __repr__(self) -> str:
        return f"Scorer({self.execution.describe()}; {self.describe_data()})"
