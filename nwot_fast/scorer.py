"""The one front door: a :class:`Scorer` turns benchmark indices into scores.

Every command reaches the engines through it: ``nwot-fast scan`` / ``search`` / ``score`` /
``evaluate``, :func:`nwot_fast.search`, :func:`nwot_fast.scan`, :func:`nwot_fast.evaluate` and
the Ray workers (:mod:`nwot_fast.distributed`) all build a :class:`Scorer` from their
:class:`~nwot_fast.config.ScoreConfig` and call :meth:`Scorer.score_many`.
:func:`score_archs` is the same pipeline for batches the caller gives (tests, benchmarks,
:mod:`nwot_fast.precision`).

How the scores are computed is decided once, by :func:`resolve_execution` (an
:class:`Execution`): the engine (fast, or the reference oracle), the mode (one plan per
architecture, or a chunk of architectures per network pass: CUDA's), the memory format, the
chunk, the device, the dtype and the seed. Nothing below decides again.

The pipeline keeps the device busy: a chunk is queued (its inputs assembled on the device,
its network pass, its post-processing) before the previous chunk's scores are read, which is
the one sync per chunk; so the host prepares the next chunk while the device runs the last.

Bitwise equality: the weights come from the seed and each architecture's batch from the data
sampler keyed by its index, so in the per-arch mode (the CPU's default) a score depends only on
the configuration and the index, whichever command asks. In the multi-arch mode the
convolution and BatchNorm kernels are picked for the chunk's shapes, so a float32 score can
move in its last bits with the chunk's other architectures (within the float32 contract,
docs/PRECISION.md; float64 scores agree to 1e-9): the same sequence of indices gives bitwise
the same scores through every command.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from . import multi_arch, per_arch, reference
from ._common import check_index, check_seed, resolve_device, torch_dtype
from .config import ScoreConfig
from .errors import is_allocation_failure
from .nb201 import Arch, arch_at, seeded_network
from .plans import check_method, compile_plan
from .transfer import to_device

__all__ = ["Scorer", "ArchScore", "Execution", "resolve_execution", "default_mode", "score_archs",
           "score_with_reference"]


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
    """How scores are computed, decided once by :func:`resolve_execution`.

    ``engine``: ``"fast"`` or ``"reference"``. ``mode`` (fast engine): ``"per-arch"`` (one
    execution plan per network pass, :mod:`nwot_fast.per_arch`) or ``"multi-arch"`` (a chunk
    of architectures per pass, :mod:`nwot_fast.multi_arch`); ``None`` for the reference.
    ``channels_last``: the memory format of the per-arch plans. ``chunk``: architectures per
    network pass (multi-arch), or per post-processing call (per-arch). ``device``, ``dtype``
    (``torch.float32`` / ``torch.float64``), ``seed`` (0..2**63-1), ``method`` and
    ``relu_match`` as in the configuration."""

    engine: str
    mode: Optional[str]
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
        return self.mode == "multi-arch"

    def describe(self) -> str:
        """One line for logs and reports."""
        dtype = str(self.dtype).replace("torch.", "")
        if self.engine == "reference":
            return f"reference engine on {self.device}, {dtype}"
        if self.multi_arch:
            return f"fast engine on {self.device}, multi-arch: {self.chunk} architectures per pass, {dtype}"
        fmt = "channels-last" if self.channels_last else "NCHW"
        return f"fast engine on {self.device}, per-arch ({fmt}), {dtype}"


def default_mode(device: torch.device, batch_size: int) -> str:
    """The fast engine's mode unless told: multi-arch on CUDA (kernel launches and host work
    dominate there; bench/gpu_cost.py); on the CPU one plan per architecture, which measured
    faster at every batch size from 2 up (bench/engine_ab.py, bench/RESULTS.md) and scores an
    index bitwise alike whatever else is scored with it. (``batch_size``: the rule's input,
    kept for a rule that depends on it.)"""
    return "multi-arch" if torch.device(device).type == "cuda" else "per-arch"


def _execution(engine: str, mode: Optional[str], method: str, relu_match: str, seed: int, dev: torch.device,
               dtype: torch.dtype, shape: Tuple[int, int, int, int], chunk: Optional[int],
               available_memory: Optional[int]) -> Execution:
    """The rules of :func:`resolve_execution` for batches of ``shape`` ``[B, 3, H, W]``."""
    if engine == "reference":
        return Execution("reference", None, False, 1, dev, dtype, seed, method, relu_match)
    if mode in (None, "auto"):
        mode = default_mode(dev, shape[0])
    if mode == "per-arch":
        # The memory format by per_arch's one rule (channels-last for hook_logdet on the CPU); on
        # CUDA one post-processing call per 16 passes.
        return Execution("fast", mode, per_arch.channels_last_by_default(method, dev),
                         chunk or (16 if dev.type == "cuda" else 1), dev, dtype, seed, method, relu_match)
    if mode != "multi-arch":
        raise ValueError(f"mode must be 'auto', 'per-arch' or 'multi-arch', got {mode!r}")
    if chunk is None:
        chunk = multi_arch.choose_chunk(method, shape[0], shape[2], shape[3], dtype, dev, available=available_memory)
    return Execution("fast", mode, False, chunk, dev, dtype, seed, method, relu_match)


def resolve_execution(config: ScoreConfig, *, image_shape: Tuple[int, int, int] = (3, 32, 32),
                      device: Optional[torch.device] = None, available_memory: Optional[int] = None) -> Execution:
    """The :class:`Execution` of ``config`` (its per-method defaults filled in) for batches of
    ``image_shape`` ``(C, H, W)``: the one place where the engine, mode, memory format, chunk,
    device, dtype and seed are decided.

    The device is ``config.device`` resolved (``auto``: CUDA when available), unless ``device``
    is given. Mode ``"auto"``: :func:`default_mode`. Per-arch plans run channels-last on the
    CPU for hook_logdet, NCHW otherwise (:func:`nwot_fast.per_arch.channels_last_by_default`).
    The multi-arch chunk comes from the memory free on the device
    (``available_memory`` bytes when given, else measured once, here) and the batch size
    (:func:`nwot_fast.multi_arch.choose_chunk`)."""
    if not isinstance(config, ScoreConfig):
        raise TypeError(f"config must be a ScoreConfig, got {type(config).__name__}")
    c = config.resolved()
    dev = resolve_device(c.device) if device is None else torch.device(device)
    return _execution(c.engine, c.mode, c.method, c.relu_match, check_seed(c.seed), dev, torch_dtype(c.dtype),
                      (c.batch_size,) + tuple(image_shape), None, available_memory)


def score_with_reference(arch, x: torch.Tensor, *, method: str, seed: int, relu_match: str = "name",
                         dtype="float32") -> float:
    """The pure path for one architecture: ``build_network`` right after ``torch.manual_seed(seed)``,
    scored by :func:`nwot_fast.reference.score` on ``x [B, 3, H, W]`` (the caller's RNG state is
    kept)."""
    return reference.score(seeded_network(arch, seed).to(x.device), x, method, relu_match=relu_match, dtype=dtype)


class _Batches:
    """Where the pipeline's batches come from: ``one(item)`` ``[B, 3, H, W]`` and
    ``chunk(items)`` ``[B, A*3, H, W]``, on the execution's device and in its dtype."""

    def one(self, item) -> torch.Tensor:
        raise NotImplementedError

    def chunk(self, items: List) -> torch.Tensor:
        return torch.cat([self.one(i) for i in items], 1)


class _GivenBatches(_Batches):
    """Batches a caller gives (``x_for(item)``, called once per item in the order of the
    items), checked once per tensor, cast and moved."""

    def __init__(self, x_for: Callable):
        self.x_for = x_for
        self.e: Optional[Execution] = None  # set once the first batch has decided it
        self.checked: Tuple[Optional[torch.Tensor], int] = (None, -1)
        self.fetched: deque = deque()  # (item, batch) asked for and not yet used

    def raw(self, item) -> torch.Tensor:
        for seen, x in self.fetched:
            if seen is item:
                return x
        x = self.x_for(item)
        if x is not self.checked[0] or x._version != self.checked[1]:  # a scan passes one batch for all
            per_arch.check_nb201_input(x)
            self.checked = (x, x._version)
        self.fetched.append((item, x))
        return x

    def one(self, item) -> torch.Tensor:
        x = self.raw(item)
        while self.fetched and self.fetched[0][0] is not item:  # the pipeline uses them in order
            self.fetched.popleft()
        if self.fetched:
            self.fetched.popleft()
        return x.to(device=self.e.device, dtype=self.e.dtype)


class _SampledBatches(_Batches):
    """The scorer's batches, keyed by benchmark index: images cross to the device once (uint8)
    and each chunk's draws (image, flip, crop per sample) in one int64 copy, then the device
    gathers, flips, crops and normalises (:meth:`nwot_fast.data.BatchSampler.assemble`, bitwise
    the host's result). Gaussian inputs are drawn on the host (NumPy, from the seed and the
    index: the same on every device) and cross as float32. A fixed batch crosses once. Copies
    are pinned and non-blocking on CUDA (:func:`nwot_fast.transfer.to_device`)."""

    def __init__(self, sampler, execution: Execution):
        self.sampler, self.e = sampler, execution
        self._images: Optional[torch.Tensor] = None
        self._fixed: Optional[torch.Tensor] = None

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == self.e.dtype else x.to(self.e.dtype)

    def _device_images(self) -> torch.Tensor:
        if self._images is None:
            self._images = to_device(self.sampler.images.images, self.e.device)
        return self._images

    def _draw(self, keys: List[int]) -> torch.Tensor:
        """Per sample b and key k (row b*len(keys) + k): ``[B*K, 3, H, W]`` on the device."""
        s = self.sampler
        if s.images is None:
            host = np.stack([s.gaussian(k) for k in keys], 1)  # [B, K, 3, H, W]
            return self._cast(to_device(host, self.e.device)).view(-1, *host.shape[2:])
        draws = np.stack([s.draws(k) for k in keys], 1).reshape(-1, 4)  # row b*K + k
        return self._cast(s.assemble(self._device_images(), to_device(draws, self.e.device)))

    def one(self, index: int) -> torch.Tensor:
        if self.sampler.fixed:
            if self._fixed is None:
                self._fixed = self._draw([0])
            return self._fixed
        return self._draw([index])

    def chunk(self, indices: List[int]) -> torch.Tensor:
        B = self.sampler.batch_size
        if self.sampler.fixed:
            x = self.one(0)
            return x.repeat(1, len(indices), 1, 1)
        x = self._draw(indices)  # [B*A, 3, H, W], sample b of arch a in row b*A + a
        return x.view(B, len(indices) * x.shape[1], *x.shape[2:])


def _pipeline(items: Iterable, execution: Execution, batches: _Batches,
              shape_of: Callable) -> Iterator[Tuple[object, float, float]]:
    """``(item, score, seconds)`` in the order of ``items``. Architectures whose score structure
    decides (NaN / -inf) are answered without running; the others go in chunks of
    ``execution.chunk`` (of one batch shape); on an asynchronous device (CUDA) each chunk is
    queued before the previous one's scores are read."""
    e = execution
    out: List[Optional[Tuple[object, float, float]]] = []
    emitted = 0
    window: List[Tuple[int, object, object]] = []  # (position, item, plan)
    window_shape = None
    running: Optional[Tuple[List[Tuple[int, object, object]], object, float]] = None
    last = time.perf_counter()

    def launch(batch):
        plans = [p for _, _, p in batch]
        items_ = [i for _, i, _ in batch]
        if e.multi_arch:
            return multi_arch.run_chunk(plans, batches.chunk(items_), e.seed, e.device, e.dtype)
        return per_arch.post_process(e.method, [per_arch.network_pass(p, batches.one(i), e.seed, e.device, e.dtype)
                                                for p, i in zip(plans, items_)])

    def finish(run):
        nonlocal last
        batch, result, _ = run
        scores = result.tolist() if isinstance(result, torch.Tensor) else result  # the chunk's sync
        now = time.perf_counter()
        share = (now - last) / len(batch)
        last = now
        for (pos, item, _), s in zip(batch, scores):
            out[pos] = (item, float(s), share)

    def flush():
        nonlocal running, window
        if not window:
            return
        queued = (window, launch(window), time.perf_counter())
        window = []
        if running is not None:
            finish(running)
            running = None
        if isinstance(queued[1], torch.Tensor) and queued[1].device.type != "cpu":
            running = queued  # queued on an asynchronous device: read it after queuing the next
        else:
            finish(queued)  # computed already (the CPU): nothing to overlap, yield it now

    for item in items:
        plan = compile_plan(item, e.method, relu_match=e.relu_match, channels_last=e.channels_last)
        out.append(None)
        if not plan.runs_network:
            out[-1] = (item, plan.result, 0.0)
        else:
            shape = shape_of(item)
            if window and shape != window_shape:
                flush()
            window_shape = shape
            window.append((len(out) - 1, item, plan))
            if len(window) >= e.chunk:
                flush()
        while emitted < len(out) and out[emitted] is not None:
            yield out[emitted]
            emitted += 1
    flush()
    if running is not None:
        finish(running)
    while emitted < len(out):
        yield out[emitted]
        emitted += 1


def score_archs(archs: Iterable, x_for: Callable, *, method: str = "jacob_cov", seed: int = 0, device="cpu",
                relu_match: str = "name", chunk: Optional[int] = None, dtype=torch.float32,
                mode: Optional[str] = None) -> Iterator[float]:
    """Scores of many architectures (indices, arch strings or :class:`~nwot_fast.nb201.Arch`), in
    order; ``x_for(arch)`` gives the batch ``[B, 3, H, W]`` of each (called with the item as
    given; not called for cells whose score structure decides). Each equals
    :func:`nwot_fast.per_arch.score_arch` within the precision contract (float64: to ~1e-12
    relative; NaN / -inf at the same architectures).

    ``mode``: ``"per-arch"``, ``"multi-arch"`` or ``None``/``"auto"``
    (:func:`default_mode` for the first batch's size). ``chunk``: architectures per network
    pass (multi-arch; default from the free memory and the batch size) or per post-processing
    call (per-arch; default 1 on the CPU, 16 on CUDA); a change of batch shape starts a new
    chunk. ``dtype``: ``torch.float32`` or ``torch.float64`` (see :func:`~nwot_fast.per_arch.score_arch`)."""
    check_method(method, relu_match)
    check_seed(seed)
    dev = resolve_device(device)
    dt = torch_dtype(dtype)
    if not callable(x_for):
        raise TypeError(f"x_for must be a callable returning the batch of an architecture, got {type(x_for).__name__}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if mode not in (None, "auto", "per-arch", "multi-arch"):
        raise ValueError(f"mode must be 'auto', 'per-arch' or 'multi-arch' (or None), got {mode!r}")
    items = list(archs)
    first = next((i for i in items if compile_plan(i, method, relu_match=relu_match).runs_network), None)
    if first is None:
        yield from (compile_plan(i, method, relu_match=relu_match).result for i in items)
        return
    given = _GivenBatches(x_for)
    shape = tuple(given.raw(first).shape)
    execution = given.e = _execution("fast", mode, method, relu_match, seed, dev, dt, shape, chunk, None)
    for _, score, _ in _pipeline(items, execution, given, lambda i: tuple(given.raw(i).shape)):
        yield score


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
        self._batches = _SampledBatches(self.sampler, execution)

    def describe_data(self) -> str:
        """The inputs in words (data set or Gaussian, batch size, fixed or per architecture, seed)."""
        return self.sampler.describe()

    def batch_for(self, index: int) -> torch.Tensor:
        """The batch ``[B, 3, H, W]`` (on the scorer's device, in its dtype) that architecture
        ``index`` is scored on. With a fixed batch, the same tensor every time (do not modify it)."""
        return self._batches.one(check_index(index))

    def score_many(self, indices: Iterable[int]) -> Iterator[ArchScore]:
        """An :class:`ArchScore` per index of ``indices``, in their order (an index may repeat:
        it is scored once). Results come a chunk at a time (:attr:`Execution.chunk`), so a
        consumer that stops (a killed scan) loses at most the chunks in flight."""
        done: Dict[int, ArchScore] = {}
        pending: deque = deque()

        def fresh():  # each index once, in order; results wait for their first occurrence
            for raw in indices:
                index = check_index(raw)
                pending.append(index)
                if index not in done and index not in seen:
                    seen.add(index)
                    yield index

        seen: set = set()
        try:
            for index, score, seconds in self._scores(fresh()):
                done[index] = ArchScore(index, arch_at(index), score, seconds)
                while pending and pending[0] in done:
                    yield done[pending.popleft()]
        except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is one; the CPU allocator's has no type
            if not is_allocation_failure(exc):
                raise
            c = self.config
            raise MemoryError(
                f"out of memory scoring with batch size {c.batch_size} on {self.device} "
                f"({self.execution.describe()}); lower --batch-size or use another device (the batch is never "
                "split: that would change train-mode BatchNorm statistics and so the score)"
            ) from exc
        while pending and pending[0] in done:
            yield done[pending.popleft()]

    def score(self, index: int) -> ArchScore:
        """The :class:`ArchScore` of one benchmark index (``score_many`` of one index)."""
        return next(self.score_many([index]))

    def _scores(self, indices: Iterable[int]) -> Iterator[Tuple[int, float, float]]:
        e = self.execution
        if e.engine == "reference":
            for i in indices:
                start = time.perf_counter()
                s = score_with_reference(arch_at(i), self._batches.one(i), method=e.method, seed=e.seed,
                                         relu_match=e.relu_match, dtype=e.dtype)
                yield i, float(s), time.perf_counter() - start
            return
        shape = (self.sampler.batch_size,) + tuple(self.sampler.image_shape)
        yield from _pipeline(indices, e, self._batches, lambda i: shape)

    def __repr__(self) -> str:
        return f"Scorer({self.execution.describe()}; {self.describe_data()})"
