"""Reproduce the paper's NAS-Bench-201 evaluation: rank correlations of a score with accuracy.

``evaluate(...)`` scores a set of architectures (a seeded random sample of K, the whole space,
or given indices) under one scoring configuration, or reads the scores of an earlier run from
a score file (:mod:`nwot_fast.scorefile`), and reports Kendall's tau-b and Spearman's rho of
the scores against the NB201 val and test accuracies of every dataset the accuracy table holds
(:func:`nwot_fast.stats.correlations`). Degenerate scores (NaN for jacob_cov, -inf for
hook_logdet) have no rank; they are counted and left out. The paper's search table is
:func:`nwot_fast.searchtable.search_table`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ._common import METHODS, NUM_ARCHS, accuracy_label, check_input_file, check_seed, json_float
from .args import N_ARCHS, check_choice, check_flag
from .paths import check_distinct
from .scorefile import ScoreFile, check_output_path, read_scores, write_scores
from .stats import correlations

__all__ = ["EvaluationResult", "evaluate", "sample_indices"]


def sample_indices(n_archs: int, seed: int = 0) -> np.ndarray:
    """The seeded random sample of ``n_archs`` distinct benchmark indices: the first
    ``n_archs`` of ``numpy.random.default_rng(seed).permutation(15625)``, in that order (so the
    sample of K is the start of the sample of any larger K, and a partial run is itself a
    uniform random sample)."""
    n = N_ARCHS.check(n_archs, "n_archs")
    seed = check_seed(seed)
    return np.random.default_rng(seed).permutation(NUM_ARCHS)[:n].astype(np.int64)


@dataclass
class EvaluationResult:
    """Scores of a set of architectures and their rank correlations with NB201 accuracies."""

    method: str
    indices: np.ndarray
    scores: np.ndarray
    seconds: np.ndarray
    correlations: List[dict]
    selection: str  # how the architectures were chosen, in words
    data_description: str
    accuracies_source: str
    config: dict = field(default_factory=dict)
    scores_file: Optional[str] = None
    scores_from: Optional[str] = None
    wall_seconds: float = 0.0

    @property
    def n_archs(self) -> int:
        return int(self.indices.shape[0])

    n_nan = property(lambda self: int(np.count_nonzero(np.isnan(self.scores))))
    n_neg_inf = property(lambda self: int(np.count_nonzero(np.isneginf(self.scores))))
    n_pos_inf = property(lambda self: int(np.count_nonzero(np.isposinf(self.scores))))
    n_finite = property(lambda self: int(np.count_nonzero(np.isfinite(self.scores))))

    def correlation(self, dataset: str, split: str) -> dict:
        for c in self.correlations:
            if c["dataset"] == dataset and c["split"] == split:
                return c
        raise KeyError(f"no correlation for {dataset} {split}; have "
                       f"{', '.join(c['dataset'] + ' ' + c['split'] for c in self.correlations)}")

    def scores_by_index(self) -> Dict[int, float]:
        return {int(i): float(s) for i, s in zip(self.indices, self.scores)}

    def to_dict(self, *, records: bool = False) -> dict:
        corr: Dict[str, Dict[str, dict]] = {}
        for c in self.correlations:
            corr.setdefault(c["dataset"], {})[c["split"]] = {
                "kendall_tau": json_float(c["kendall_tau"]),
                "spearman_rho": json_float(c["spearman_rho"]),
                "n": c["n"],
            }
        finite_secs = self.seconds[np.isfinite(self.seconds)]
        d = {
            "method": self.method,
            "selection": self.selection,
            "data": self.data_description,
            "accuracies": self.accuracies_source,
            "config": self.config,
            "n_archs": self.n_archs,
            "n_finite": self.n_finite,
            "excluded": {"nan": self.n_nan, "neg_inf": self.n_neg_inf, "pos_inf": self.n_pos_inf},
            "correlations": corr,
            "median_seconds_per_arch": json_float(np.median(finite_secs)) if finite_secs.size else None,
            "wall_seconds": round(self.wall_seconds, 3),
            "scores_file": self.scores_file,
            "scores_from": self.scores_from,
        }
        if records:
            d["scores"] = [{"arch_index": int(i), "score": json_float(s)} for i, s in zip(self.indices, self.scores)]
        return d

    def format_table(self) -> str:
        lines = [
            f"{self.method}: {self.n_archs} architectures ({self.selection})",
            f"data: {self.data_description}",
            f"accuracies: {self.accuracies_source}",
            f"excluded from the correlations: {self.n_nan} NaN, {self.n_neg_inf} -inf"
            + (f", {self.n_pos_inf} +inf" if self.n_pos_inf else "")
            + f" scores ({self.n_finite} finite)",
            "",
            f"{'accuracy':<24} {'n':>6} {'Kendall tau':>12} {'Spearman rho':>13}",
        ]
        for c in self.correlations:
            lines.append(f"{accuracy_label(c['dataset'], c['split']):<24} {c['n']:>6} {c['kendall_tau']:>12.3f} "
                         f"{c['spearman_rho']:>13.3f}")
        if self.scores_file:
            lines.append(f"\nscores written to {self.scores_file}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = ["| accuracy | n | Kendall tau | Spearman rho |", "|:--|--:|--:|--:|"]
        for c in self.correlations:
            rows.append(f"| {accuracy_label(c['dataset'], c['split'])} | {c['n']} | {c['kendall_tau']:.3f} | "
                        f"{c['spearman_rho']:.3f} |")
        return "\n".join(rows)


def _selection(n_archs, all_archs, indices, seed) -> Tuple[Optional[np.ndarray], str]:
    given = sum(x is not None and x is not False for x in (n_archs, indices)) + bool(all_archs)
    if given > 1:
        raise ValueError("give only one of n_archs, all_archs and indices")
    if all_archs:
        return np.arange(NUM_ARCHS, dtype=np.int64), f"the whole space ({NUM_ARCHS} architectures)"
    if n_archs is not None:
        n = N_ARCHS.check(n_archs, "n_archs")
        return sample_indices(n, seed), f"seeded random sample of {n} (numpy default_rng({seed}).permutation)"
    if indices is not None:
        from .scan import parse_indices

        idx = np.asarray(parse_indices(indices), dtype=np.int64)
        if idx.size == 0:
            raise ValueError("indices is empty")
        return idx, f"{idx.size} given indices"
    return None, ""


def evaluate(
    *,
    n_archs: Optional[int] = None, all_archs: bool = False, indices=None,
    accuracies=None,
    scores_out=None, scores_in=None,
    db=None, progress=None, config=None, ray=None,
    **options,
) -> EvaluationResult:
    """Score architectures and correlate the scores with NB201 accuracies.

    Which architectures: ``n_archs`` (a seeded random sample, see :func:`sample_indices`),
    ``all_archs=True`` (all 15,625), or ``indices`` (a list, range or ``"START:STOP"``).
    How they are scored: ``config`` or its fields as keyword options (``method``, ``data``,
    ``dataset``, ``batch_size``, ``augment``, ``fixed_batch``, ``seed`` (also the seed of the
    sample), ``relu_match``, ``engine``, ``device``, ``dtype``; see
    :func:`nwot_fast.scoring.score_config`); ``db`` makes the scoring a durable, resumable scan
    (:func:`nwot_fast.scan.scan`). ``scores_in`` reads the scores of an earlier run instead of
    scoring (with a selection given, those indices are taken from the file; ``method``, when
    given, picks that method's rows and must be given for a file of several methods; ``seed`` is
    the seed of the sample; ``db``, ``ray``, ``config`` and the other scoring options are
    refused with it, since nothing is scored). ``scores_out`` writes the per-architecture scores
    (``.csv``, ``.jsonl`` or ``.json``). ``accuracies``: a path to the NB201 accuracy CSV /
    official ``.pth``, or an AccuracyTable. ``ray``: score on a Ray cluster, as
    :func:`nwot_fast.scan.scan` does (``True``: a local instance; or an address).
    """
    from .accuracies import as_table

    started = time.perf_counter()
    all_archs = check_flag(all_archs, "all_archs")
    method = options.get("method")
    if method is not None:
        check_choice(method, "method", METHODS, "score method")
    elif config is not None:
        method = config.method
    if scores_in is not None:
        _check_nothing_to_score(db, ray, config, options)
    seed = options.get("seed")
    seed = check_seed(config.seed if seed is None and config is not None else (seed or 0))
    if scores_in is not None and not isinstance(scores_in, ScoreFile):
        check_input_file(scores_in, "a scores file")
    wanted, selection = _selection(n_archs, all_archs, indices, seed)
    if scores_out is not None:
        # Before any scoring: a bad name, a place too small for the file, or an input in the way
        # must not cost the scores.
        check_output_path(scores_out, rows=0 if wanted is None else int(wanted.size))
        data = config.data if config is not None else options.get("data")
        file_in = None if isinstance(scores_in, ScoreFile) else scores_in
        check_distinct([("scores_out", scores_out)], [("scores_in", file_in), ("accuracies", accuracies),
                                                      ("data", data)], [("db", db)])
    table = as_table(accuracies)
    if scores_in is not None:
        idx, sc, secs, selection, cfg, description, scores_from, method = _read(scores_in, method, wanted, selection)
    elif wanted is None:
        raise ValueError("say which architectures to score: n_archs=K, all_archs=True or indices=...; "
                         "or read earlier scores with scores_in=FILE")
    else:
        idx, sc, secs, cfg, description = _score(wanted, db, progress, config, options, ray)
        scores_from, method = None, cfg["method"]
    written = None
    if scores_out is not None:
        written = write_scores(scores_out, idx, sc, seconds=secs, method=method, config=cfg)
    return EvaluationResult(
        method=method,
        indices=idx,
        scores=sc,
        seconds=secs,
        correlations=correlations(idx, sc, table),
        selection=selection,
        data_description=description,
        accuracies_source=table.source,
        config=cfg,
        scores_file=written,
        scores_from=scores_from,
        wall_seconds=time.perf_counter() - started,
    )


def _check_nothing_to_score(db, ray, config, options) -> None:
    """With ``scores_in`` nothing is scored: what only scoring uses is refused, not ignored."""
    unused = [name for name, value in (("db", db), ("ray", ray), ("config", config)) if value not in (None, False)]
    unused += sorted(k for k, v in options.items() if v is not None and k not in ("method", "seed"))
    if unused:
        raise ValueError(f"scores_in reads earlier scores and scores nothing: {', '.join(unused)} would not be "
                         "used; leave them out, or score (n_archs=, all_archs= or indices=) without scores_in")


def _read(scores_in, method: Optional[str], wanted, selection: str):
    """Scores of ``wanted`` (or of every row) from a score file (or a loaded ScoreFile: a score table), and the method they are of."""
    sf = scores_in if isinstance(scores_in, ScoreFile) else read_scores(scores_in, method=method)
    if method is not None and sf.method is not None and sf.method != method:
        raise ValueError(f"{sf.source} holds {sf.method} scores, not {method}")
    method = method or sf.method or "jacob_cov"  # an unlabelled file: the default method, as --method says
    left_out = "".join(f", {n} {m} row{'s' if n != 1 else ''} left out" for m, n in sorted(sf.skipped.items()))
    if wanted is None:
        idx, sc, secs = sf.indices, sf.scores, sf.seconds
        selection = f"all {idx.size} {method} rows of {sf.source}{left_out}"
    else:
        pos = {int(i): k for k, i in enumerate(sf.indices)}
        missing = [int(i) for i in wanted if int(i) not in pos]
        if missing:
            raise ValueError(f"{sf.source} has no score for {len(missing)} of the {wanted.size} requested "
                             f"architectures (first: {missing[:5]}); score them or choose fewer")
        take = np.asarray([pos[int(i)] for i in wanted], dtype=np.int64)
        idx, sc, secs = wanted, sf.scores[take], sf.seconds[take]
        selection = f"{selection}, {method} scores read from {sf.source}{left_out}"
    config = dict(sf.config)
    config.setdefault("method", method)
    description = config.get("data_description") or f"scores read from {sf.source}"
    return idx, sc, secs, selection, config, description, sf.source, method


def _score(wanted, db, progress, config, options, ray=None):
    """Scores of ``wanted`` from a scan under the configuration of the call."""
    from .scan import scan
    from .scoring import score_config

    cfg = score_config(config, **options)
    result = scan([int(i) for i in wanted], config=cfg, db=db, progress=progress, ray=ray)
    record = dict(cfg.identity(), config_hash=cfg.config_hash(), engine=cfg.engine, device=cfg.device,
                  dtype=cfg.dtype, data_description=result.data_description)
    return (np.asarray(result.indices, dtype=np.int64), np.asarray(result.scores, dtype=np.float64),
            np.asarray(result.seconds, dtype=np.float64), record, result.data_description)
