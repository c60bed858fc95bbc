"""Random search with a training-free score (the paper's Algorithm 2).

Each run draws ``n_samples`` benchmark indices uniformly with replacement, scores them and
keeps the ``nanargmax``. Runs are independent and reproducible: run ``r`` of a search with
seed ``s`` uses the seed ``derive_seed(s, r)`` for its draws, its network weights and its
batches, whatever the other runs do.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ._common import ACCURACY_KEYS, NUM_ARCHS, json_float
from .args import N_SAMPLES, RUNS
from .nb201 import Arch, arch_at
from .scoring import ArchScorer, ScoreConfig, score_config

def derive_seed(seed: int, run: int) -> int:
    """A 31-bit seed for run ``run`` of a search with seed ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, run]).generate_state(1)[0] & 0x7FFFFFFF)


def nanargmax(scores: Sequence[float]) -> Optional[int]:
    """Position of the largest score, NaN ignored (and -inf only chosen if nothing is larger).
    ``None`` when every score is NaN."""
    a = np.asarray(scores, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(a))
    if valid.size == 0:
        return None
    # np.nanargmax would return a NaN's position when every other score is -inf.
    return int(valid[np.argmax(a[valid])])


@dataclass
class RunResult:
    run: int
    seed: int
    indices: List[int]
    scores: List[float]
    chosen_index: Optional[int]
    chosen_arch: Optional[Arch]
    chosen_score: float
    seconds: float
    accuracies: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "seed": self.seed,
            "chosen_index": self.chosen_index,
            "chosen_arch": None if self.chosen_arch is None else str(self.chosen_arch),
            "score": json_float(self.chosen_score),
            "seconds": self.seconds,
            "accuracies": self.accuracies,
            "sampled_indices": self.indices,
            "sampled_scores": [json_float(s) for s in self.scores],
        }


@dataclass
class SearchResult:
    config: ScoreConfig
    n_samples: int
    data_description: str
    accuracies_source: Optional[str]
    runs: List[RunResult]

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Mean and (population) std over runs of each reported accuracy, and the median time."""
        out: Dict[str, Dict[str, float]] = {}
        keys = sorted({k for r in self.runs for k in r.accuracies})
        for k in keys:
            vals = np.array([r.accuracies[k] for r in self.runs if k in r.accuracies])
            out[k] = {"mean": float(vals.mean()), "std": float(vals.std())}
        out["seconds"] = {"median": float(np.median([r.seconds for r in self.runs]))}
        return out

    def to_dict(self) -> dict:
        return {
            "config": self.config.identity(),
            "engine": self.config.engine,
            "device": self.config.device,
            "dtype": self.config.dtype,
            "n_samples": self.n_samples,
            "data": self.data_description,
            "accuracies": self.accuracies_source,
            "runs": [r.to_dict() for r in self.runs],
            "summary": self.summary(),
        }

    def format_table(self) -> str:
        keys = [f"{d}/{s}" for d, s in ACCURACY_KEYS] if self.accuracies_source else []
        head = ["run", "index", "score", "seconds"] + keys + ["arch"]
        rows = []
        for r in self.runs:
            row = [
                str(r.run),
                "-" if r.chosen_index is None else str(r.chosen_index),
                f"{r.chosen_score:.6g}",
                f"{r.seconds:.2f}",
            ]
            row += [f"{r.accuracies[k]:.2f}" if k in r.accuracies else "-" for k in keys]
            row.append("-" if r.chosen_arch is None else str(r.chosen_arch))
            rows.append(row)
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = [
            f"NASWOT random search: {len(self.runs)} run(s) x {self.n_samples} architectures, "
            f"score {self.config.method}, batch {self.config.batch_size}, seed {self.config.seed}",
            f"inputs: {self.data_description}",
        ]
        if self.accuracies_source:
            lines.append(f"accuracies (NB201, 200 epochs, mean over seeds): {self.accuracies_source}")
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        summary = self.summary()
        if keys:
            lines.append(
                "mean +/- std: " + ", ".join(f"{k} {summary[k]['mean']:.2f} +/- {summary[k]['std']:.2f}" for k in keys)
            )
        lines.append(f"median search time per run: {summary['seconds']['median']:.2f} s")
        return "\n".join(lines)


def search(
    *,
    n_samples: int = 10,
    runs: int = 1,
    accuracies=None,
    progress=None,
    config: Optional[ScoreConfig] = None,
    images=None,
    **options,
) -> SearchResult:
    """Run ``runs`` independent random searches of ``n_samples`` architectures each.

    The scoring configuration: ``config`` or its fields as keyword options (``method``,
    ``data``, ``dataset``, ``batch_size``, ``seed``, ``engine``, ``device``, ``dtype``, ...; see
    :func:`nwot_fast.scoring.score_config`); ``data=None`` uses Gaussian inputs. ``images``: the
    already loaded images of ``data`` (saves loading them again). ``accuracies``: a path or a
    loaded :class:`nwot_fast.accuracies.AccuracyTable`; when given, each run reports the chosen
    architecture's NB201 val/test accuracies.
    ``progress``: optional callable ``progress(done, total)`` after each scored architecture.
    """
    n_samples = N_SAMPLES.check(n_samples, "n_samples")
    runs = RUNS.check(runs, "runs")
    base = score_config(config, **options).resolved()
    table = None
    if accuracies is not None:
        from .accuracies import as_table

        table = as_table(accuracies)
    if images is None and base.data is not None:
        from .data import load_images

        images = load_images(base.data, dataset=base.dataset)
    results = [_run(base, r, n_samples, images, table, progress, runs * n_samples) for r in range(runs)]
    return SearchResult(
        config=base,
        n_samples=n_samples,
        data_description=results[-1][1],
        accuracies_source=None if table is None else str(getattr(table, "source", accuracies)),
        runs=[r for r, _ in results],
    )


def _run(base: ScoreConfig, r: int, n_samples: int, images, table, progress, total: int):
    """Run ``r`` of a search: its draws, weights and batches all come from ``derive_seed(seed, r)``."""
    run_seed = derive_seed(base.seed, r)
    start = time.perf_counter()
    rng = np.random.default_rng(run_seed)
    indices = [int(i) for i in rng.integers(0, NUM_ARCHS, size=n_samples)]
    scorer = ArchScorer(dataclasses.replace(base, seed=run_seed), images=images)
    scores: List[float] = []
    for i in indices:
        scores.append(scorer.score_index(i).score)
        if progress is not None:
            progress(r * n_samples + len(scores), total)
    best = nanargmax(scores)
    seconds = time.perf_counter() - start
    chosen = None if best is None else indices[best]
    accs: Dict[str, float] = {}
    if table is not None and chosen is not None:
        # The columns the table has (a CSV may hold only some datasets), as evaluate reports them.
        accs = {f"{d}/{s}": float(table.accuracy(chosen, d, s)) for d, s in table.splits}
    result = RunResult(
        run=r,
        seed=run_seed,
        indices=indices,
        scores=scores,
        chosen_index=chosen,
        chosen_arch=None if chosen is None else arch_at(chosen),
        chosen_score=float("nan") if best is None else scores[best],
        seconds=seconds,
        accuracies=accs,
    )
    return result, scorer.describe_data()
