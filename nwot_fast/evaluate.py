"""Reproduce the paper's NAS-Bench-201 evaluation: rank correlations and the search table.

``evaluate(...)`` scores a set of architectures (a seeded random sample of K, the whole space,
or given indices) under one scoring configuration, or reads the scores of an earlier run from
a file, and reports Kendall's tau-b and Spearman's rho of the scores against the NB201 val and
test accuracies of every dataset the accuracy table holds. Degenerate scores (NaN for
jacob_cov, -inf for hook_logdet) have no rank; they are counted and left out.

``search_table(...)`` is the paper's Table 1: random search for several N, many runs, the
chosen architecture's accuracies (mean +/- std), the median search time, and the baselines
``Random`` (the whole space) and ``Optimal (N)`` (the best architecture in each sample).
Two modes, named in the output: ``table`` samples from previously computed scores (fast; the
pool is whatever was scored: the whole space or a sample, and the output says which), and
``rescore`` draws and scores afresh in every run, as the authors did.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import operator
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .distributed import add_ray_option
from .nb201 import NUM_ARCHS, arch_at
from .reference import METHODS
from .stats import kendall_tau, spearman_rho

__all__ = [
    "ACCURACY_KEYS",
    "DATASET_LABELS",
    "EvaluationResult",
    "SearchTable",
    "correlations",
    "evaluate",
    "read_scores",
    "sample_indices",
    "search_table",
    "write_scores",
    "configure_parser",
    "run_cli",
]

#: (dataset, split) pairs in the paper's column order.
ACCURACY_KEYS: Tuple[Tuple[str, str], ...] = (
    ("cifar10", "val"),
    ("cifar10", "test"),
    ("cifar100", "val"),
    ("cifar100", "test"),
    ("ImageNet16-120", "val"),
    ("ImageNet16-120", "test"),
)
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "ImageNet16-120": "ImageNet16-120"}
SEARCH_MODES = ("table", "rescore")


def _label(dataset: str, split: str) -> str:
    return f"{DATASET_LABELS.get(dataset, dataset)} ({split})"


def _check_int(value, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < low or (high is not None and v > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {allowed}, got {v}")
    return v


def sample_indices(n_archs: int, seed: int = 0) -> np.ndarray:
    """The seeded random sample of ``n_archs`` distinct benchmark indices: the first
    ``n_archs`` of ``numpy.random.default_rng(seed).permutation(15625)``, in that order (so the
    sample of K is the start of the sample of any larger K, and a partial run is itself a
    uniform random sample)."""
    n = _check_int(n_archs, "n_archs", 1, NUM_ARCHS)
    seed = _check_int(seed, "seed", 0)
    return np.random.default_rng(seed).permutation(NUM_ARCHS)[:n].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# score files


def _score_text(s: float) -> str:
    return repr(float(s))  # 'nan', '-inf' or the shortest round-tripping decimal


def _parse_score(value, where: str) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{where}: score {value!r} is not a number (nan and -inf are written as 'nan' / '-inf')")


def write_scores(path, indices, scores, *, seconds=None, method: Optional[str] = None,
                 config: Optional[dict] = None) -> str:
    """Write per-architecture scores to ``path``: ``.csv`` (columns ``arch_index, arch, method,
    score, seconds``), ``.jsonl`` (one such record per line) or ``.json`` (``{"config": ...,
    "scores": [records]}``). Non-finite scores are written as ``nan`` / ``-inf`` (strings in
    JSON). Returns the path."""
    path = os.fspath(path)
    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if indices.shape != scores.shape:
        raise ValueError(f"indices and scores must have the same length, got {indices.shape} and {scores.shape}")
    secs = np.full(indices.shape, np.nan) if seconds is None else np.asarray(seconds, dtype=np.float64)
    records = [
        {"arch_index": int(i), "arch": str(arch_at(int(i))), "method": method or "",
         "score": _score_text(s), "seconds": None if math.isnan(t) else round(float(t), 6)}
        for i, s, t in zip(indices, scores, secs)
    ]
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{path}: directory {parent} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["arch_index", "arch", "method", "score", "seconds"])
            w.writeheader()
            for r in records:
                w.writerow({**r, "seconds": "" if r["seconds"] is None else r["seconds"]})
    elif ext == ".jsonl":
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    elif ext == ".json":
        with open(path, "w") as f:
            json.dump({"config": config or {"method": method}, "scores": records}, f, indent=1)
            f.write("\n")
    else:
        raise ValueError(f"scores file {path!r}: unknown extension {ext!r}; allowed: .csv, .jsonl, .json")
    return path


@dataclass
class ScoreFile:
    indices: np.ndarray
    scores: np.ndarray
    seconds: np.ndarray  # NaN where unknown
    method: Optional[str]
    config: dict
    source: str


def read_scores(path, method: Optional[str] = None) -> ScoreFile:
    """Read a scores file written by :func:`write_scores`, by ``nwot-fast scan`` (CSV / JSON
    Lines with ``arch_index`` and ``score``), or a table with one column per score method
    (``arch_index, jacob_cov, hook_logdet, ...``; ``method`` picks the column).

    Rows of other methods are skipped when the file has a ``method`` column and ``method`` is
    given. An ``arch`` column, when present, must match the index (the file is refused
    otherwise: it was written for another index order)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such scores file; expected a .csv, .jsonl or .json written by "
                                "nwot-fast evaluate --scores-out or nwot-fast scan")
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    ext = os.path.splitext(path)[1].lower()
    config: dict = {}
    try:
        if ext == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        elif ext == ".jsonl":
            with open(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        elif ext == ".json":
            with open(path) as f:
                blob = json.load(f)
            if isinstance(blob, dict) and isinstance(blob.get("scores"), list):
                rows, config = blob["scores"], dict(blob.get("config") or {})
            elif isinstance(blob, dict) and isinstance(blob.get("records"), list):
                rows, config = blob["records"], dict(blob.get("config") or {})
            elif isinstance(blob, list):
                rows = blob
            else:
                raise ValueError("expected a list of records or an object with a 'scores' list")
        else:
            raise ValueError(f"unknown extension {ext!r}; allowed: .csv, .jsonl, .json")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable scores file ({e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if not rows:
        raise ValueError(f"{path}: no score rows")
    first = rows[0]
    if not isinstance(first, dict) or "arch_index" not in first:
        raise ValueError(f"{path}: rows must have an 'arch_index' column, got {sorted(first) if isinstance(first, dict) else first!r}")
    if "score" in first:
        column = "score"
    elif method is not None and method in first:
        column = method
    else:
        have = [m for m in METHODS if m in first]
        if len(have) == 1:
            column = have[0]
        elif have:
            raise ValueError(f"{path}: holds scores of {', '.join(have)}; say which with method=")
        else:
            raise ValueError(f"{path}: rows need a 'score' column (or one named after a method: {', '.join(METHODS)})")
    found_method = column if column in METHODS else method
    idx, sc, secs = [], [], []
    seen = set()
    other_methods = set()
    for n, row in enumerate(rows, start=2 if ext == ".csv" else 1):
        where = f"{path} row {n}"
        row_method = row.get("method") or None
        if row_method and row_method not in METHODS:
            raise ValueError(f"{where}: unknown method {row_method!r}")
        if column == "score" and method is not None and row_method and row_method != method:
            other_methods.add(row_method)
            continue
        if column == "score" and row_method:
            if found_method not in (None, row_method) and method is None:
                raise ValueError(f"{path}: holds scores of several methods; say which with method=")
            found_method = row_method
        try:
            i = int(row["arch_index"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: arch_index {row.get('arch_index')!r} is not an integer") from None
        if not 0 <= i < NUM_ARCHS:
            raise ValueError(f"{where}: arch_index {i} out of range 0..{NUM_ARCHS - 1}")
        arch = row.get("arch")
        if arch and arch != str(arch_at(i)):
            raise ValueError(f"{where}: arch {arch!r} is not the architecture at index {i} ({arch_at(i)}); "
                             "the file uses another index order")
        if i in seen:
            raise ValueError(f"{where}: arch_index {i} appears twice")
        seen.add(i)
        idx.append(i)
        sc.append(_parse_score(row.get(column), where))
        t = row.get("seconds", row.get(f"{column}_seconds"))
        try:
            secs.append(float(t) if t not in (None, "") else float("nan"))
        except (TypeError, ValueError):
            secs.append(float("nan"))
    if not idx:
        held = f"; it holds {', '.join(sorted(other_methods))} scores" if other_methods else ""
        raise ValueError(f"{path}: no rows for method {method!r}{held}")
    if method is not None and found_method is not None and found_method != method:
        raise ValueError(f"{path}: holds {found_method} scores, not {method}")
    return ScoreFile(np.asarray(idx, dtype=np.int64), np.asarray(sc, dtype=np.float64),
                     np.asarray(secs, dtype=np.float64), found_method, config, path)


# ---------------------------------------------------------------------------------------------
# correlations


def correlations(indices, scores, table, keys: Optional[Sequence[Tuple[str, str]]] = None) -> List[dict]:
    """Kendall tau-b and Spearman rho of ``scores`` against each accuracy column of ``table``
    (an :class:`nwot_fast.benchmark.AccuracyTable`) that it holds. Pairs with a non-finite
    score or a missing accuracy are left out; ``n`` says how many pairs were used."""
    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if indices.shape != scores.shape:
        raise ValueError(f"indices and scores must have the same length, got {indices.shape} and {scores.shape}")
    wanted = keys if keys is not None else [k for k in ACCURACY_KEYS if k in table.splits]
    out = []
    for dataset, split in wanted:
        acc = table.column(dataset, split)[indices]
        keep = np.isfinite(scores) & np.isfinite(acc)
        n = int(keep.sum())
        out.append({
            "dataset": dataset,
            "split": split,
            "n": n,
            "kendall_tau": kendall_tau(scores[keep], acc[keep]) if n >= 2 else float("nan"),
            "spearman_rho": spearman_rho(scores[keep], acc[keep]) if n >= 2 else float("nan"),
        })
    return out


def _json_float(v):
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


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

    @property
    def n_nan(self) -> int:
        return int(np.count_nonzero(np.isnan(self.scores)))

    @property
    def n_neg_inf(self) -> int:
        return int(np.count_nonzero(np.isneginf(self.scores)))

    @property
    def n_pos_inf(self) -> int:
        return int(np.count_nonzero(np.isposinf(self.scores)))

    @property
    def n_finite(self) -> int:
        return int(np.count_nonzero(np.isfinite(self.scores)))

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
                "kendall_tau": _json_float(c["kendall_tau"]),
                "spearman_rho": _json_float(c["spearman_rho"]),
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
            "median_seconds_per_arch": _json_float(np.median(finite_secs)) if finite_secs.size else None,
            "wall_seconds": round(self.wall_seconds, 3),
            "scores_file": self.scores_file,
            "scores_from": self.scores_from,
        }
        if records:
            d["scores"] = [{"arch_index": int(i), "score": _json_float(s)} for i, s in zip(self.indices, self.scores)]
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
            lines.append(f"{_label(c['dataset'], c['split']):<24} {c['n']:>6} {c['kendall_tau']:>12.3f} "
                         f"{c['spearman_rho']:>13.3f}")
        if self.scores_file:
            lines.append(f"\nscores written to {self.scores_file}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = ["| accuracy | n | Kendall tau | Spearman rho |", "|:--|--:|--:|--:|"]
        for c in self.correlations:
            rows.append(f"| {_label(c['dataset'], c['split'])} | {c['n']} | {c['kendall_tau']:.3f} | "
                        f"{c['spearman_rho']:.3f} |")
        return "\n".join(rows)


def _load_table(accuracies):
    from .benchmark import AccuracyTable, load_accuracies

    if isinstance(accuracies, AccuracyTable):
        return accuracies
    if accuracies is None:
        raise ValueError("accuracies is required: a path to nb201_accuracies.csv (or the official NB201 .pth), "
                         "or a loaded AccuracyTable")
    return load_accuracies(accuracies)


def _selection(n_archs, all_archs, indices, seed) -> Tuple[Optional[np.ndarray], str]:
    given = sum(x is not None and x is not False for x in (n_archs, indices)) + bool(all_archs)
    if given > 1:
        raise ValueError("give only one of n_archs, all_archs and indices")
    if all_archs:
        return np.arange(NUM_ARCHS, dtype=np.int64), f"the whole space ({NUM_ARCHS} architectures)"
    if n_archs is not None:
        n = _check_int(n_archs, "n_archs", 1, NUM_ARCHS)
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
    n_archs: Optional[int] = None,
    all_archs: bool = False,
    indices=None,
    method: str = "jacob_cov",
    data=None,
    accuracies=None,
    dataset: Optional[str] = None,
    batch_size: Optional[int] = None,
    augment: Optional[bool] = None,
    fixed_batch: Optional[bool] = None,
    seed: int = 0,
    device: str = "cpu",
    engine: str = "fast",
    relu_match: str = "name",
    scores_out=None,
    scores_in=None,
    db=None,
    progress=None,
    ray=None,
) -> EvaluationResult:
    """Score architectures and correlate the scores with NB201 accuracies.

    Which architectures: ``n_archs`` (a seeded random sample, see :func:`sample_indices`),
    ``all_archs=True`` (all 15,625), or ``indices`` (a list, range or ``"START:STOP"``).
    How they are scored: ``method``, ``data`` (a dataset path; ``None``: Gaussian inputs),
    ``batch_size``, ``augment``, ``fixed_batch`` (``None``: the method's defaults), ``seed``
    (weights, batches and the sample), ``engine`` and ``device``; ``db`` makes the scoring a
    durable, resumable scan (:func:`nwot_fast.scan.scan`). ``scores_in`` reads the scores of an
    earlier run instead of scoring (with a selection given, those indices are taken from the
    file). ``scores_out`` writes the per-architecture scores (``.csv``, ``.jsonl`` or ``.json``).
    ``accuracies``: a path to the NB201 accuracy CSV / official ``.pth``, or an AccuracyTable.
    ``ray``: score on a Ray cluster, as :func:`nwot_fast.scan.scan` does (``True``: a local
    instance; or an address).
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    if not isinstance(all_archs, bool):
        raise TypeError(f"all_archs must be True or False, got {all_archs!r}")
    seed = _check_int(seed, "seed", 0)
    table = _load_table(accuracies)
    wanted, selection = _selection(n_archs, all_archs, indices, seed)

    if scores_in is not None:
        sf = read_scores(scores_in, method=method)
        if wanted is None:
            idx, sc, secs = sf.indices, sf.scores, sf.seconds
            selection = f"all {idx.size} architectures in {sf.source}"
        else:
            pos = {int(i): k for k, i in enumerate(sf.indices)}
            missing = [int(i) for i in wanted if int(i) not in pos]
            if missing:
                raise ValueError(f"{sf.source} has no score for {len(missing)} of the {wanted.size} requested "
                                 f"architectures (first: {missing[:5]}); score them or choose fewer")
            take = np.asarray([pos[int(i)] for i in wanted], dtype=np.int64)
            idx, sc, secs = wanted, sf.scores[take], sf.seconds[take]
            selection = f"{selection}, scores read from {sf.source}"
        config = dict(sf.config)
        config.setdefault("method", method)
        data_description = config.get("data_description") or f"scores read from {sf.source}"
        scores_from = sf.source
    else:
        if wanted is None:
            raise ValueError("say which architectures to score: n_archs=K, all_archs=True or indices=...; "
                             "or read earlier scores with scores_in=FILE")
        from .scan import scan
        from .scoring import ScoreConfig

        cfg = ScoreConfig(
            method=method,
            data=None if data is None else os.fspath(data),
            dataset=dataset,
            batch_size=batch_size,
            augment=augment,
            fixed_batch=fixed_batch,
            seed=seed,
            relu_match=relu_match,
            engine=engine,
            device=device,
        )
        result = scan([int(i) for i in wanted], config=cfg, db=db, progress=progress, ray=ray)
        idx = np.asarray(result.indices, dtype=np.int64)
        sc = np.asarray(result.scores, dtype=np.float64)
        secs = np.asarray(result.seconds, dtype=np.float64)
        config = dict(cfg.identity())
        config["config_hash"] = cfg.config_hash()
        config["engine"] = engine
        config["device"] = device
        data_description = result.data_description
        config["data_description"] = data_description
        scores_from = None

    written = None
    if scores_out is not None:
        written = write_scores(scores_out, idx, sc, seconds=secs, method=method, config=config)
    return EvaluationResult(
        method=method,
        indices=idx,
        scores=sc,
        seconds=secs,
        correlations=correlations(idx, sc, table),
        selection=selection,
        data_description=data_description,
        accuracies_source=table.source,
        config=config,
        scores_file=written,
        scores_from=scores_from,
        wall_seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------
# the search table (the paper's Table 1)


@dataclass
class SearchTable:
    """Rows of the search table. Each row: ``name``, ``n`` (N, or None), ``runs``,
    ``search_seconds`` (median over runs; NaN when unknown), and ``mean`` / ``std`` dicts keyed
    by ``(dataset, split)``."""

    rows: List[dict]
    mode: str
    runs: int
    seed: int
    pool: str
    keys: Tuple[Tuple[str, str], ...]
    time_note: str = ""

    def _cells(self, row) -> List[str]:
        out = []
        for k in self.keys:
            m, s = row["mean"].get(k, float("nan")), row["std"].get(k, float("nan"))
            out.append("-" if math.isnan(m) else f"{m:.2f} +- {s:.2f}")
        return out

    @staticmethod
    def _seconds(row) -> str:
        t = row["search_seconds"]
        return "N/A" if t is None or math.isnan(t) else f"{t:.2f}"

    def header(self) -> List[str]:
        return ["Method", "Search (s)"] + [_label(d, s) for d, s in self.keys]

    def format_text(self) -> str:
        head = self.header()
        body = [[r["name"], self._seconds(r)] + self._cells(r) for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w)  # noqa: E731
                                      for j, (c, w) in enumerate(zip(cells, widths)))
        out = [self.describe(), "", line(head), "  ".join("-" * w for w in widths)]
        out += [line(b) for b in body]
        return "\n".join(out)

    def describe(self) -> str:
        return (f"search table, mode '{self.mode}': {self.runs} runs per N (seed {self.seed}); pool: {self.pool}"
                + (f"; {self.time_note}" if self.time_note else ""))

    def to_markdown(self) -> str:
        head = self.header()
        out = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * (len(head) - 1)]
        for r in self.rows:
            out.append("| " + " | ".join([r["name"], self._seconds(r)] + self._cells(r)) + " |")
        return "\n".join(out)

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        cols = ["method", "N", "runs", "search_seconds_median"]
        for d, s in self.keys:
            cols += [f"{d}_{s}_mean", f"{d}_{s}_std"]
        w.writerow(cols + ["mode", "pool"])
        for r in self.rows:
            vals = [r["name"], "" if r["n"] is None else r["n"], r["runs"], _csv_num(r["search_seconds"])]
            for k in self.keys:
                vals += [_csv_num(r["mean"].get(k, float("nan"))), _csv_num(r["std"].get(k, float("nan")))]
            w.writerow(vals + [self.mode, self.pool])
        return buf.getvalue()

    def write(self, prefix) -> Tuple[str, str]:
        """Write ``PREFIX.md`` and ``PREFIX.csv``; returns both paths."""
        prefix = os.fspath(prefix)
        md, cs = prefix + ".md", prefix + ".csv"
        with open(md, "w") as f:
            f.write(self.describe() + "\n\n" + self.to_markdown() + "\n")
        with open(cs, "w") as f:
            f.write(self.csv_text())
        return md, cs

    def to_dict(self) -> dict:
        rows = []
        for r in self.rows:
            acc = {}
            for d, s in self.keys:
                acc.setdefault(d, {})[s] = {"mean": _json_float(r["mean"].get((d, s), float("nan"))),
                                           "std": _json_float(r["std"].get((d, s), float("nan")))}
            rows.append({"method": r["name"], "N": r["n"], "runs": r["runs"],
                         "search_seconds_median": _json_float(r["search_seconds"]),
                         "all_nan_runs": r.get("all_nan_runs", 0), "accuracy": acc})
        return {"mode": self.mode, "runs": self.runs, "seed": self.seed, "pool": self.pool,
                "time_note": self.time_note, "rows": rows}

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {', '.join(r['name'] for r in self.rows)}")


def _csv_num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.6g}"


def _pick(scores_2d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row-wise nanargmax with the semantics of :func:`nwot_fast.search.nanargmax`: NaN is
    ignored and -inf is only chosen when nothing is larger. Rows that are all NaN take their
    first entry; the second array flags them."""
    is_nan = np.isnan(scores_2d)
    all_nan = is_nan.all(axis=1)
    key = np.where(is_nan, -np.inf, scores_2d)
    pick = np.argmax(key, axis=1)
    # a maximum of -inf: take the first real (-inf) score rather than a NaN
    stuck = np.isneginf(key[np.arange(key.shape[0]), pick]) & ~all_nan
    if stuck.any():
        pick[stuck] = np.argmax(~is_nan[stuck], axis=1)
    return pick, all_nan


def _acc_columns(table, keys):
    return {k: table.column(*k) for k in keys}


def _mean_std(values: np.ndarray) -> Tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def search_table(
    source,
    table,
    Ns: Sequence[int] = (10, 25, 50, 75, 100),
    runs: int = 500,
    mode: str = "table",
    seed: int = 0,
    *,
    pool_description: Optional[str] = None,
    seconds=None,
    label: str = "NASWOT",
    progress=None,
) -> SearchTable:
    """The paper's Table 1 for one score.

    ``mode="table"``: ``source`` holds previously computed scores: an :class:`EvaluationResult`,
    a scan result (``.indices`` / ``.scores``), a ``{index: score}`` mapping or a pair
    ``(indices, scores)``. Each run draws N of those architectures uniformly with replacement
    and picks the ``nanargmax``; the search time is the sum of the drawn architectures' recorded
    scoring times (``seconds``, taken from ``source`` when it has them; NaN when unknown).
    ``mode="rescore"``: ``source`` is a :class:`nwot_fast.scoring.ScoreConfig` or
    :class:`~nwot_fast.scoring.ArchScorer`; each run draws N indices from the whole space and
    scores them afresh (run r with weights and batches seeded by
    ``nwot_fast.search.derive_seed(config.seed, r)``, as ``nwot_fast.search`` does), timing the
    whole run.

    Baselines: ``Random`` is the mean +/- std over the whole space (every architecture with an
    accuracy); ``Optimal (N)`` the best accuracy, column by column, within each run's sample.
    ``std`` is the population standard deviation over runs (as NumPy's default).
    """
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search-table mode {mode!r}; allowed: {', '.join(SEARCH_MODES)}")
    runs = _check_int(runs, "runs", 1)
    seed = _check_int(seed, "seed", 0)
    if isinstance(Ns, int):
        Ns = (Ns,)
    Ns = tuple(_check_int(n, "N", 1) for n in Ns)
    if not Ns:
        raise ValueError("Ns must hold at least one sample size N")
    table = _load_table(table)
    keys = tuple(k for k in ACCURACY_KEYS if k in table.splits)
    cols = _acc_columns(table, keys)
    rng = np.random.default_rng(seed)
    rows: List[dict] = []
    time_note = ""

    if mode == "table":
        pool, scores, secs = _pool_from(source, seconds)
        if pool.size == 0:
            raise ValueError("no scored architectures to search over")
        if pool_description is None:
            pool_description = ("the whole space" if pool.size == NUM_ARCHS and np.unique(pool).size == NUM_ARCHS
                                else f"a scored sample of {pool.size} architectures (not the whole space)")
        time_note = ("search time = sum of the recorded per-architecture scoring times of the drawn architectures"
                     if np.isfinite(secs).any() else "no per-architecture times recorded")
        optimal_rows = []
        for n in Ns:
            draws = rng.integers(0, pool.size, size=(runs, n))
            pick, all_nan = _pick(scores[draws])
            chosen = pool[draws[np.arange(runs), pick]]
            t = secs[draws].sum(axis=1)
            row = {"name": f"{label} (N={n})", "n": n, "runs": runs,
                   "search_seconds": float(np.median(t)) if np.isfinite(t).all() else float("nan"),
                   "mean": {}, "std": {}, "all_nan_runs": int(all_nan.sum())}
            opt = {"name": f"Optimal (N={n})", "n": n, "runs": runs, "search_seconds": float("nan"),
                   "mean": {}, "std": {}}
            sample_idx = pool[draws]
            for k in keys:
                row["mean"][k], row["std"][k] = _mean_std(cols[k][chosen])
                opt["mean"][k], opt["std"][k] = _mean_std(np.nanmax(cols[k][sample_idx], axis=1))
            rows.append(row)
            optimal_rows.append(opt)
    else:
        from .scoring import ArchScorer, ScoreConfig
        from .search import derive_seed, nanargmax

        if isinstance(source, ArchScorer):
            base, images = source.config, source.images
        elif isinstance(source, ScoreConfig):
            base, images = source.resolved(), None
            if base.data is not None:
                from .data import load_images

                images = load_images(base.data, dataset=base.dataset)
        else:
            raise TypeError(f"mode 'rescore' needs a ScoreConfig or ArchScorer, got {type(source).__name__}")
        pool_description = pool_description or "the whole space, drawn and scored afresh in every run"
        time_note = "search time = wall time of the run (data, network building and scoring)"
        optimal_rows = []
        total, done = len(Ns) * runs, 0
        for n in Ns:
            chosen_l, t_l, samples = [], [], []
            for r in range(runs):
                run_seed = derive_seed(base.seed, r)
                draw = rng.integers(0, NUM_ARCHS, size=n)
                start = time.perf_counter()
                scorer = ArchScorer(dataclasses.replace(base, seed=run_seed), images=images)
                s = [scorer.score_index(int(i)).score for i in draw]
                p = nanargmax(s)
                t_l.append(time.perf_counter() - start)
                chosen_l.append(int(draw[0 if p is None else p]))
                samples.append(draw)
                done += 1
                if progress is not None:
                    progress(done, total)
            chosen = np.asarray(chosen_l)
            sample_idx = np.stack(samples)
            row = {"name": f"{label} (N={n})", "n": n, "runs": runs, "search_seconds": float(np.median(t_l)),
                   "mean": {}, "std": {}}
            opt = {"name": f"Optimal (N={n})", "n": n, "runs": runs, "search_seconds": float("nan"),
                   "mean": {}, "std": {}}
            for k in keys:
                row["mean"][k], row["std"][k] = _mean_std(cols[k][chosen])
                opt["mean"][k], opt["std"][k] = _mean_std(np.nanmax(cols[k][sample_idx], axis=1))
            rows.append(row)
            optimal_rows.append(opt)

    random_row = {"name": "Random", "n": None, "runs": runs, "search_seconds": float("nan"), "mean": {}, "std": {}}
    for k in keys:
        random_row["mean"][k], random_row["std"][k] = _mean_std(cols[k])
    return SearchTable(rows=rows + [random_row] + optimal_rows, mode=mode, runs=runs, seed=seed,
                       pool=pool_description, keys=keys, time_note=time_note)


def _pool_from(source, seconds) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    secs = None
    if hasattr(source, "indices") and hasattr(source, "scores"):
        idx, sc = source.indices, source.scores
        secs = getattr(source, "seconds", None)
    elif isinstance(source, Mapping):
        items = sorted(source.items())
        idx = [int(i) for i, _ in items]
        sc = [float(s) for _, s in items]
    elif isinstance(source, tuple) and len(source) == 2:
        idx, sc = source
    else:
        raise TypeError("mode 'table' needs scores: an EvaluationResult, a scan result, a {index: score} "
                        f"mapping or an (indices, scores) pair; got {type(source).__name__}")
    idx = np.asarray(idx, dtype=np.int64)
    sc = np.asarray(sc, dtype=np.float64)
    if idx.ndim != 1 or idx.shape != sc.shape:
        raise ValueError(f"indices and scores must be 1-D of the same length, got {idx.shape} and {sc.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= NUM_ARCHS):
        raise ValueError(f"benchmark indices must be in 0..{NUM_ARCHS - 1}")
    if seconds is not None:
        secs = seconds
    secs = np.full(idx.shape, np.nan) if secs is None else np.asarray(secs, dtype=np.float64)
    if secs.shape != idx.shape:
        raise ValueError(f"seconds must have one entry per architecture, got {secs.shape} for {idx.shape}")
    return idx, sc, secs


# ---------------------------------------------------------------------------------------------
# command line


def _int_list(text: str) -> List[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 10,100, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 10,100, got {text!r}")
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nwot-fast evaluate``."""
    parser.description = (
        "Score NB201 architectures and report Kendall tau / Spearman rho against the benchmark's val and test "
        "accuracies (NaN and -inf scores are counted and left out); optionally the paper's search table."
    )
    parser.epilog = (
        "examples:\n"
        "  nwot-fast evaluate --n-archs 1000 --method hook_logdet --data ../shared/data/cifar10_sample.npz \\\n"
        "      --accuracies ../shared/data/nb201_accuracies.csv --db /work/results/scan.db --scores-out s.csv\n"
        "  nwot-fast evaluate --scores-in s.csv --method hook_logdet --accuracies nb201_accuracies.csv \\\n"
        "      --search-table 10,100 --runs 500 --json"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--n-archs", type=int, metavar="K", help="a seeded random sample of K architectures")
    which.add_argument("--all", action="store_true", dest="all_archs", help="all 15,625 architectures")
    which.add_argument("--indices", metavar="START:STOP", help="these benchmark indices (START:STOP or a,b,c)")
    parser.add_argument("--method", default="jacob_cov", choices=METHODS, help="score (default: jacob_cov)")
    parser.add_argument("--data", metavar="PATH", help="images to score with (CIFAR dir, batch file or .npz); "
                        "default: Gaussian inputs")
    parser.add_argument("--dataset", help="cifar10, cifar100 or ImageNet16-120 (default: inferred from the data)")
    parser.add_argument("--accuracies", metavar="PATH", required=True,
                        help="NB201 accuracies: nb201_accuracies.csv or the official .pth")
    parser.add_argument("--batch-size", type=int, metavar="B", help="batch size (default: the method's)")
    aug = parser.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="random flip + padded crop (default for jacob_cov)")
    aug.add_argument("--no-augment", dest="augment", action="store_false", help="no augmentation")
    fixed = parser.add_mutually_exclusive_group()
    fixed.add_argument("--fixed-batch", dest="fixed_batch", action="store_true", default=None,
                       help="one batch for every architecture (default for hook_logdet)")
    fixed.add_argument("--batch-per-arch", dest="fixed_batch", action="store_false",
                       help="a new batch for every architecture (default for jacob_cov)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, weights and batches (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--engine", default="fast", choices=("fast", "reference"), help="default: fast")
    parser.add_argument("--db", metavar="PATH", help="SQLite scan database: results are kept as they come and a "
                        "rerun resumes")
    add_ray_option(parser)  # Ray hook (issue 12)
    parser.add_argument("--scores-out", metavar="FILE", help="write per-architecture scores (.csv/.jsonl/.json)")
    parser.add_argument("--scores-in", metavar="FILE", help="reuse scores from FILE instead of scoring")
    parser.add_argument("--search-table", type=_int_list, metavar="N,N,...",
                        help="also the search table (mode 'table', over the evaluated architectures) for these N")
    parser.add_argument("--runs", type=int, default=500, help="runs per N for --search-table (default 500)")
    parser.add_argument("--table-out", metavar="PREFIX", help="write the search table to PREFIX.md and PREFIX.csv")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run_cli(args) -> int:
    if args.scores_in is None and args.data is None:
        # Gaussian inputs are allowed, but say so plainly.
        print("note: no --data given: architectures are scored on Gaussian N(0,1) inputs", file=sys.stderr)
    progress = None if args.quiet or args.scores_in is not None else True
    accuracies = _load_table(args.accuracies)
    result = evaluate(
        n_archs=args.n_archs,
        all_archs=args.all_archs,
        indices=args.indices,
        method=args.method,
        data=args.data,
        dataset=args.dataset,
        accuracies=accuracies,
        batch_size=args.batch_size,
        augment=args.augment,
        fixed_batch=args.fixed_batch,
        seed=args.seed,
        device=args.device,
        engine=args.engine,
        scores_out=args.scores_out,
        scores_in=args.scores_in,
        db=args.db,
        progress=progress,
        ray=args.ray,
    )
    table = None
    if args.search_table:
        table = search_table(result, accuracies, Ns=args.search_table, runs=args.runs, mode="table",
                             seed=args.seed)
        if args.table_out:
            table.write(args.table_out)
    if args.json:
        out = result.to_dict()
        if table is not None:
            out["search_table"] = table.to_dict()
        print(json.dumps(out, indent=2))
    else:
        print(result.format_table())
        if table is not None:
            print()
            print(table.format_text())
    return 0
