"""The precision contract, checkable on any machine (docs/PRECISION.md).

* **Truth**: the float64 score of the reference engine (:func:`nwot_fast.reference.score` with
  ``dtype=torch.float64``; weights drawn in float32 from the seed, then cast).
* **Reference envelope**: the relative error of the authors' float32 procedure (the reference engine
  in float32) against the truth, per architecture the larger of its errors at 1 and at 2 torch
  threads (:func:`threads`): the spread the authors' own code has on this machine.
* **A float32 scorer keeps the contract** on a set of architectures and one batch when it gives
  NaN and ``-inf`` exactly where the truth does, and over the architectures with a finite
  truth its largest and its median relative error are at most :data:`FACTOR` (2) times the
  reference's largest and median error. Errors below the method's floor count as the floor:
  :data:`FLOOR` (1e-9, the level to which the float64 truth itself is machine independent)
  for jacob_cov; :data:`CODE_FLOOR` (1e-7) for hook_logdet, whose score is a step function of
  binary ReLU codes: an activation within float32 rounding of zero flips its code between any
  two float32 computations of the same network (the authors' own float32 procedure differs
  from the float64 truth by 0 to 1.4e-7 on the 16 archs of tests/test_precision.py, i.e. by
  a few such flips), so a median of exact zeros is no envelope a different summation order
  can be held to.

A scorer is any ``scorer(archs, x, *, method, seed, dtype, relu_match) -> list of float``
(NB201 architectures as indices, strings or :class:`~nwot_fast.nb201.Arch`; one batch ``x``
for all; weights from ``torch.manual_seed(seed)``). :func:`scorers` lists this package's own.

    >>> env = measure([6111, 0, 1459], x, "jacob_cov", candidates=scorers())
    >>> env.violations("per_arch")  # [] when the contract holds
    >>> print(env.table())
"""

from __future__ import annotations

import contextlib
import math
import statistics
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import torch

from . import reference
from .scorer import score_archs, score_with_reference
from ._common import torch_dtype
from .nb201 import index_of
from .nb201.index import as_arch

FACTOR = 2.0
FLOOR = 1e-9
CODE_FLOOR = 1e-7
THREADS = (1, 2)

Scorer = Callable[..., List[float]]

__all__ = ["CODE_FLOOR", "FACTOR", "FLOOR", "floor", "THREADS", "Envelope", "scorers", "fast_scores", "measure", "reference_scores",
           "relative_error", "threads"]


def floor(method: str) -> float:
    """The relative error below which errors of ``method`` count as equal (see the module doc)."""
    return CODE_FLOOR if method == "hook_logdet" else FLOOR


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored after."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_scores(archs: Sequence, x: torch.Tensor, *, method: str, seed: int = 0, dtype=torch.float32,
                     relu_match: str = "name", device="cpu") -> List[float]:
    """The reference engine (the authors' procedure op for op): ``reference.score`` on
    ``build_network(arch)`` built right after ``torch.manual_seed(seed)`` (the caller's RNG
    state is kept).

    Args:
        archs: architectures (indices, arch strings or :class:`~nwot_fast.nb201.Arch`).
        x: ``[B, 3, H, W]`` floating: the one batch for all of them.
        method, seed, dtype, relu_match, device: as for :func:`nwot_fast.per_arch.score_arch`.

    Returns:
        The scores as floats, in the order of ``archs``.
    """
    x = x.to(device)
    return [score_with_reference(as_arch(arch), x, method=method, seed=seed, relu_match=relu_match, dtype=dtype)
            for arch in archs]


def fast_scores(archs: Sequence, x: torch.Tensor, *, method: str, seed: int = 0, dtype=torch.float32,
                relu_match: str = "name", device="cpu", **options) -> List[float]:
    """The fast engine: :func:`nwot_fast.scorer.score_archs` (``options`` go to it, e.g. ``chunk``
    or ``mode``). Arguments and result as for :func:`reference_scores` (``x``: ``[B, 3, H, W]``
    floating, the one batch for all; the scores as floats, in the order of ``archs``)."""
    return list(score_archs(list(archs), lambda _: x, method=method, seed=seed, device=device,
                            relu_match=relu_match, dtype=dtype, **options))


def scorers(device="cpu") -> Dict[str, Scorer]:
    """This package's scorers by name: ``reference`` (the reference engine), ``per_arch`` and
    ``multi_arch`` (the fast engine in each mode, through ``scorer.score_archs``). Add your
    own to the dict to check them."""
    return {
        "reference": partial(reference_scores, device=device),
        "per_arch": partial(fast_scores, device=device, mode="per-arch"),
        "multi_arch": partial(fast_scores, device=device, mode="multi-arch"),
    }


def relative_error(score: float, truth: float) -> float:
    """``|score - truth| / |truth|`` (``|score - truth|`` for a zero truth); 0 when both are
    the same special value (NaN, -inf, inf), ``inf`` when only one of them is special."""
    if math.isnan(truth) or math.isnan(score):
        return 0.0 if math.isnan(truth) and math.isnan(score) else math.inf
    if math.isinf(truth) or math.isinf(score):
        return 0.0 if score == truth else math.inf
    return abs(score - truth) / abs(truth) if truth != 0 else abs(score - truth)


@dataclass
class Envelope:
    """Scores of one method on ``archs``: the float64 ``truth``, the float32 reference engine at each
    thread count (``reference[n]``) and each candidate (``candidates[name]``), in arch order."""

    archs: List[str]
    method: str
    truth: List[float]
    reference: Dict[int, List[float]]
    candidates: Dict[str, List[float]] = field(default_factory=dict)

    def errors(self, name: str) -> List[float]:
        """Per-arch relative error of candidate ``name`` against the truth."""
        if name not in self.candidates:
            raise ValueError(f"no candidate {name!r}; measured: {', '.join(self.candidates) or 'none'}")
        return [relative_error(s, t) for s, t in zip(self.candidates[name], self.truth)]

    def reference_errors(self) -> List[float]:
        """Per-arch envelope: the larger of the float32 reference engine's errors over the thread counts."""
        return [max(relative_error(scores[i], t) for scores in self.reference.values())
                for i, t in enumerate(self.truth)]

    def _finite(self, errors: List[float]) -> List[float]:
        least = floor(self.method)
        return [max(e, least) for e, t in zip(errors, self.truth) if math.isfinite(t)]

    def violations(self, name: str, factor: float = FACTOR) -> List[str]:
        """Why candidate ``name`` breaks the contract (an empty list when it keeps it)."""
        problems = []
        for arch, s, t in zip(self.archs, self.candidates.get(name, []), self.truth):
            if (math.isnan(t) or math.isnan(s) or math.isinf(t) or math.isinf(s)) and relative_error(s, t) != 0:
                problems.append(f"{name} on {arch}: {s} where the float64 truth is {t}")
        got, ref = self._finite(self.errors(name)), self._finite(self.reference_errors())
        if got:
            for what, stat in (("max", max), ("median", statistics.median)):
                if stat(got) > factor * stat(ref):
                    problems.append(f"{name}: {what} relative error {stat(got):.3g} > {factor:g} x the "
                                    f"float32 reference's {stat(ref):.3g} ({self.method}, {len(got)} archs)")
        return problems

    def summary(self, name: str) -> Dict[str, float]:
        """``max`` / ``median`` relative error of candidate ``name`` and of the reference."""
        got, ref = self._finite(self.errors(name)), self._finite(self.reference_errors())
        if not got:
            return {}
        return {"max": max(got), "median": statistics.median(got),
                "reference_max": max(ref), "reference_median": statistics.median(ref)}

    def table(self) -> str:
        """A Markdown table, one line per arch (its benchmark index): the truth, the relative
        errors of the float32 reference engine per thread count (``ref@n``) and of each candidate."""
        ref_cols = [f"ref@{n}" for n in self.reference]
        head = ["index", "truth (float64)"] + ref_cols + list(self.candidates)
        lines = [" | ".join(head), " | ".join("---" for _ in head)]
        for i, (arch, t) in enumerate(zip(self.archs, self.truth)):
            cells = [str(index_of(arch)), f"{t:.10g}"]
            cells += [f"{relative_error(s[i], t):.1e}" for s in self.reference.values()]
            cells += [f"{relative_error(s[i], t):.1e}" for s in self.candidates.values()]
            lines.append(" | ".join(cells))
        return "\n".join(lines)


def measure(archs: Sequence, x: torch.Tensor, method: str, *, candidates: Optional[Mapping[str, Scorer]] = None,
            seed: int = 0, relu_match: str = "name", thread_counts: Sequence[int] = THREADS,
            dtype=torch.float32, truth: Optional[Sequence[float]] = None) -> Envelope:
    """Score ``archs`` on batch ``x [B, 3, H, W]`` (floating): the truth (reference engine,
    float64), the float32 reference engine at each of ``thread_counts`` (restored after), and
    each candidate scorer (name -> scorer) in ``dtype`` (float32 by default; float64 to check a
    float64 path against the truth) at the current thread count. ``truth``: the float64 scores
    of ``archs``, when the caller has them (the fast engine's float64, which agrees with the
    reference engine's to 1e-9, tests/test_precision.py, costs a third as much on the CPU); else
    computed by the reference engine. Returns the :class:`Envelope`; decide with
    :meth:`Envelope.violations`."""
    if method not in reference.METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(reference.METHODS)}")
    candidates = {} if candidates is None else candidates
    if not isinstance(candidates, Mapping):
        raise TypeError(f"candidates must be a dict name -> scorer, got {type(candidates).__name__}")
    archs = list(archs)
    if not archs:
        raise ValueError("archs must not be empty")
    names = [str(as_arch(a)) for a in archs]
    kwargs = dict(method=method, seed=seed, relu_match=relu_match)
    if truth is None:
        truth = reference_scores(archs, x, dtype=torch.float64, **kwargs)
    else:
        truth = [float(t) for t in truth]
        if len(truth) != len(archs):
            raise ValueError(f"truth has {len(truth)} scores for {len(archs)} archs")
    ref = {}
    for n in thread_counts:
        with threads(n):
            ref[n] = reference_scores(archs, x, dtype=torch.float32, **kwargs)
    env = Envelope(names, method, truth, ref)
    for name, scorer in candidates.items():
        scores = [float(s) for s in scorer(archs, x, dtype=torch_dtype(dtype), **kwargs)]
        if len(scores) != len(archs):
            raise ValueError(f"candidate {name!r} returned {len(scores)} scores for {len(archs)} archs")
        env.candidates[name] = scores
    return env
