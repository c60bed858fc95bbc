"""Figure 4's measurement: how much a score moves with the minibatch, with the initialisation,
and with Gaussian random inputs in place of images, for a few seeded random NB201
architectures.

For each architecture, ``repeats`` scores per factor, everything else held fixed:

* ``minibatch``: batches ``0 .. repeats-1`` of a per-key :class:`~nwot_fast.data.BatchSampler`
  over the images (``seed``, no augmentation), weights from ``torch.manual_seed(seed)``;
* ``initialisation``: batch 0 of that sampler, weights from ``torch.manual_seed(seed + k)``;
* ``gaussian``: batches ``0 .. repeats-1`` of N(0, 1) inputs of the images' shape (sampler
  ``seed``), weights from ``torch.manual_seed(seed)``.

So batch 0 with weights ``seed`` is the first score of both the minibatch and the
initialisation factor. The spread of a factor is the median over architectures of the
standard deviation (``ddof=1``) of an architecture's scores; beside it, the standard
deviation of the architectures' mean scores says how large that spread is next to the
differences the score is meant to rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ._common import METHODS, NUM_ARCHS, SEED_MAX, check_int, check_seed, json_float

__all__ = ["FACTORS", "FACTOR_LABELS", "Variation", "pick_archs", "score_variation"]

FACTORS = ("minibatch", "initialisation", "gaussian")
FACTOR_LABELS = {"minibatch": "CIFAR-10 minibatch (fixed initialisation)",
                 "initialisation": "initialisation (fixed minibatch)",
                 "gaussian": "Gaussian N(0,1) input batch (fixed initialisation)"}


def pick_archs(count: int, seed: int = 0, method: str = "hook_logdet") -> List[int]:
    """The first ``count`` indices of ``numpy.random.default_rng(seed).permutation(15625)``
    whose ``method`` score is computed (not decided by structure: constant-output cells give
    NaN under jacob_cov, cells whose ReLUs see only zeros -inf under hook_logdet)."""
    from .plans import compile_plan
    from .nb201 import arch_at

    count = check_int(count, "count", 1, NUM_ARCHS)
    out: List[int] = []
    for i in np.random.default_rng(check_seed(seed)).permutation(NUM_ARCHS):
        if compile_plan(arch_at(int(i)), method).runs_network:
            out.append(int(i))
            if len(out) == count:
                break
    return out


@dataclass
class Variation:
    """Scores of ``indices`` under each factor: ``scores[factor]`` is float64 ``[archs, repeats]``."""

    method: str
    indices: List[int]
    scores: Dict[str, np.ndarray]
    batch_size: int
    repeats: int
    seed: int
    data_description: str

    def spread(self) -> Dict[str, dict]:
        """Per factor: ``per_arch_std`` (``ddof=1`` over the finite scores; NaN with fewer than
        two), ``median_std`` (their median over architectures), ``between_archs_std`` (the
        standard deviation of the architectures' mean finite scores), ``relative`` (the ratio of
        the two) and ``non_finite`` (how many scores were NaN or -inf)."""
        out = {}
        for factor in FACTORS:
            s = self.scores[factor]
            finite = np.isfinite(s)
            stds = np.array([np.std(row[ok], ddof=1) if ok.sum() >= 2 else np.nan for row, ok in zip(s, finite)])
            means = np.array([row[ok].mean() if ok.any() else np.nan for row, ok in zip(s, finite)])
            median_std = float(np.nanmedian(stds)) if np.isfinite(stds).any() else float("nan")
            between = float(np.std(means[np.isfinite(means)], ddof=1)) if np.isfinite(means).sum() >= 2 else float("nan")
            out[factor] = {"per_arch_std": stds.tolist(), "median_std": median_std, "between_archs_std": between,
                           "relative": median_std / between if between > 0 else float("nan"),
                           "non_finite": int((~finite).sum())}
        return out

    def to_dict(self) -> dict:
        """The scores per factor and their spread as JSON-ready data."""
        return {"method": self.method, "indices": self.indices, "batch_size": self.batch_size, "repeats": self.repeats,
                "seed": self.seed, "data": self.data_description,
                "scores": {f: [[json_float(v) for v in row] for row in self.scores[f]] for f in FACTORS},
                "spread": {f: {k: (json_float(v) if isinstance(v, float) else
                                   [json_float(x) for x in v] if isinstance(v, list) else v)
                               for k, v in d.items()} for f, d in self.spread().items()}}


def score_variation(images, *, archs: int = 8, repeats: int = 10, batch_size: int = 128, method: str = "hook_logdet",
                    seed: int = 0, indices: Optional[Sequence[int]] = None, dtype: str = "float32",
                    progress: Optional[Callable[[int, int], None]] = None) -> Variation:
    """Score ``archs`` architectures (:func:`pick_archs` ``(archs, seed, method)``, or the given
    ``indices``) ``repeats`` times per factor (see the module docstring) with the fast path.
    ``images``: an :class:`~nwot_fast.data.ImageSet` with at least ``batch_size`` images.
    ``progress(done, total)`` after each score."""
    from .data import BatchSampler, ImageSet
    from .per_arch import score_arch
    from .nb201 import arch_at

    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    if not isinstance(images, ImageSet):
        raise TypeError(f"images must be an ImageSet (nwot_fast.data.load_images), got {type(images).__name__}")
    repeats = check_int(repeats, "repeats", 2, 10_000)
    batch_size = check_int(batch_size, "batch_size", 2)
    seed = check_int(seed, "seed", 0, SEED_MAX - repeats)
    if indices is None:
        indices = pick_archs(archs, seed, method)
    else:
        from ._common import check_index

        indices = [check_index(i) for i in indices]
        if not indices:
            raise ValueError("indices is empty")
    pictures = BatchSampler(images, batch_size=batch_size, augment=False, fixed=False, seed=seed)
    noise = BatchSampler(None, batch_size=batch_size, augment=False, fixed=False, seed=seed,
                         image_shape=images.image_shape)
    batches = {"minibatch": [pictures.batch(k) for k in range(repeats)],
               "gaussian": [noise.batch(k) for k in range(repeats)]}
    batches["initialisation"] = [batches["minibatch"][0]] * repeats
    weight_seeds = {"minibatch": [seed] * repeats, "gaussian": [seed] * repeats,
                    "initialisation": [seed + k for k in range(repeats)]}
    total, done = len(FACTORS) * len(indices) * repeats, 0
    scores = {f: np.empty((len(indices), repeats), dtype=np.float64) for f in FACTORS}
    for f in FACTORS:
        for a, i in enumerate(indices):
            arch = arch_at(i)
            for k in range(repeats):
                scores[f][a, k] = score_arch(arch, batches[f][k], method=method, seed=weight_seeds[f][k], dtype=dtype)
                done += 1
                if progress is not None:
                    progress(done, total)
    return Variation(method=method, indices=list(indices), scores=scores, batch_size=batch_size, repeats=repeats,
                     seed=seed, data_description=pictures.describe())
