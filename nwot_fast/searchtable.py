"""The paper's Table 1 (random search on NAS-Bench-201) for one score, in both modes.

``mode="table"`` samples from previously computed scores (fast; the pool is whatever was
scored: the whole space or a sample, and the output says which). ``mode="rescore"`` runs
:func:`nwot_fast.search.search` for every N, drawing and scoring afresh in every run, as the
authors did. Both add the baselines ``Random`` (the whole space) and ``Optimal (N)`` (the best
architecture in each run's sample).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._common import ACCURACY_KEYS, NUM_ARCHS, accuracy_label, json_float
from .args import N_ARCHS, RUNS, SEED

__all__ = ["SEARCH_MODES", "SearchTable", "search_table"]

SEARCH_MODES = ("table", "rescore")
#: What a search table is written as: PREFIX.md and PREFIX.csv.
TABLE_ENDINGS = (".md", ".csv")


def check_table_prefix(prefix) -> Tuple[str, str]:
    """``PREFIX.md`` and ``PREFIX.csv``, both checked writable (before any work is done)."""
    from .paths import check_output_prefix

    return check_output_prefix(prefix, "search table", TABLE_ENDINGS)


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
        """The column titles: ``Method``, ``Search (s)``, then one label per accuracy key
        (:func:`nwot_fast._common.accuracy_label`)."""
        return ["Method", "Search (s)"] + [accuracy_label(d, s) for d, s in self.keys]

    def format_text(self) -> str:
        """The table for a terminal: :meth:`describe`, a blank line, then aligned columns
        (accuracies as ``mean +- std`` to 2 decimals, ``-`` when NaN; search time
        ``N/A`` when unknown). No trailing newline."""
        head = self.header()
        body = [[r["name"], self._seconds(r)] + self._cells(r) for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w)  # noqa: E731
                                      for j, (c, w) in enumerate(zip(cells, widths)))
        out = [self.describe(), "", line(head), "  ".join("-" * w for w in widths)]
        out += [line(b) for b in body]
        return "\n".join(out)

    def describe(self) -> str:
        """One line saying how the table was made: mode, runs per N, seed, pool, and the time note if any."""
        return (f"search table, mode '{self.mode}': {self.runs} runs per N (seed {self.seed}); pool: {self.pool}"
                + (f"; {self.time_note}" if self.time_note else ""))

    def to_markdown(self) -> str:
        """The table as Markdown (cells as in :meth:`format_text`; numbers right-aligned), without
        the :meth:`describe` line. No trailing newline."""
        head = self.header()
        out = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * (len(head) - 1)]
        for r in self.rows:
            out.append("| " + " | ".join([r["name"], self._seconds(r)] + self._cells(r)) + " |")
        return "\n".join(out)

    def csv_text(self) -> str:
        """The table as CSV text: ``method, N, runs, search_seconds_median``, then
        ``<dataset>_<split>_mean`` / ``_std`` per accuracy key, then ``mode, pool``. Numbers in
        ``%.6g``; NaN and unknown values are empty cells."""
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
        from ._common import atomic_write

        md, cs = check_table_prefix(prefix)
        with atomic_write(md, "search table") as f:
            f.write(self.describe() + "\n\n" + self.to_markdown() + "\n")
        with atomic_write(cs, "search table") as f:
            f.write(self.csv_text())
        return md, cs

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``mode, runs, seed, pool, time_note`` and ``rows``, each with
        ``method, N, runs, search_seconds_median, all_nan_runs`` and
        ``accuracy[dataset][split] = {"mean", "std"}``; NaN and infinities as
        :func:`nwot_fast._common.json_float` spells them."""
        rows = []
        for r in self.rows:
            acc = {}
            for d, s in self.keys:
                acc.setdefault(d, {})[s] = {"mean": json_float(r["mean"].get((d, s), float("nan"))),
                                           "std": json_float(r["std"].get((d, s), float("nan")))}
            rows.append({"method": r["name"], "N": r["n"], "runs": r["runs"],
                         "search_seconds_median": json_float(r["search_seconds"]),
                         "all_nan_runs": r.get("all_nan_runs", 0), "accuracy": acc})
        return {"mode": self.mode, "runs": self.runs, "seed": self.seed, "pool": self.pool,
                "time_note": self.time_note, "rows": rows}

    def row(self, name: str) -> dict:
        """The first row called ``name`` (e.g. ``"Random"``, ``"Optimal (N=10)"``); a KeyError
        listing the row names when there is none."""
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


def _mean_std(values: np.ndarray) -> Tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def _row(name: str, n, runs: int, seconds: float, cols, keys, chosen: np.ndarray, samples: np.ndarray,
         all_nan_runs: int = 0) -> Tuple[dict, dict]:
    """The NASWOT row of one N (the chosen architectures) and its Optimal row (the best in each sample)."""
    row = {"name": f"{name} (N={n})", "n": n, "runs": runs, "search_seconds": seconds, "mean": {}, "std": {},
           "all_nan_runs": all_nan_runs}
    opt = {"name": f"Optimal (N={n})", "n": n, "runs": runs, "search_seconds": float("nan"), "mean": {}, "std": {}}
    for k in keys:
        row["mean"][k], row["std"][k] = _mean_std(cols[k][chosen])
        opt["mean"][k], opt["std"][k] = _mean_std(np.nanmax(cols[k][samples], axis=1))
    return row, opt


def _table_mode(pool, scores, secs, n: int, runs: int, rng) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """``runs`` draws of N from the scored pool: chosen indices, samples, median time, all-NaN runs."""
    draws = rng.integers(0, pool.size, size=(runs, n))
    pick, all_nan = _pick(scores[draws])
    t = secs[draws].sum(axis=1)
    seconds = float(np.median(t)) if np.isfinite(t).all() else float("nan")
    return pool[draws[np.arange(runs), pick]], pool[draws], seconds, int(all_nan.sum())


def _rescore_mode(config, images, n: int, runs: int, progress) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """``runs`` runs of :func:`nwot_fast.search.search` with N architectures each."""
    from .search import search

    result = search(n_samples=n, runs=runs, config=config, images=images, progress=progress)
    chosen = np.asarray([r.indices[0] if r.chosen_index is None else r.chosen_index for r in result.runs])
    samples = np.asarray([r.indices for r in result.runs], dtype=np.int64)
    seconds = float(np.median([r.seconds for r in result.runs]))
    return chosen, samples, seconds, sum(r.chosen_index is None for r in result.runs)


def _rescore_source(source):
    from .scoring import ArchScorer, ScoreConfig

    if isinstance(source, ArchScorer):
        return source.config, source.images
    if isinstance(source, ScoreConfig):
        base = source.resolved()
        if base.data is None:
            return base, None
        from .data import load_images

        return base, load_images(base.data, dataset=base.dataset)
    raise TypeError(f"mode 'rescore' needs a ScoreConfig or ArchScorer, got {type(source).__name__}")


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

    ``mode="table"``: ``source`` holds previously computed scores: an evaluation result, a scan
    result (``.indices`` / ``.scores``), a ``{index: score}`` mapping or a pair
    ``(indices, scores)``. Each run draws N of those architectures uniformly with replacement
    (``numpy.random.default_rng(seed)``) and picks the ``nanargmax``; the search time is the sum
    of the drawn architectures' recorded scoring times (``seconds``, taken from ``source`` when
    it has them; NaN when unknown).
    ``mode="rescore"``: ``source`` is a :class:`nwot_fast.scoring.ScoreConfig` or
    :class:`~nwot_fast.scoring.ArchScorer`; each N is a :func:`nwot_fast.search.search` of
    ``runs`` runs under that configuration (its seed decides the draws, weights and batches;
    ``seed`` is not used), timing each whole run.

    Baselines: ``Random`` is the mean +/- std over the whole space (every architecture with an
    accuracy); ``Optimal (N)`` the best accuracy, column by column, within each run's sample.
    ``std`` is the population standard deviation over runs (as NumPy's default).
    """
    from .accuracies import as_table

    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search-table mode {mode!r}; allowed: {', '.join(SEARCH_MODES)}")
    runs = RUNS.check(runs, "runs")
    seed = SEED.check(seed, "seed")
    Ns = tuple(N_ARCHS.check(n, "N") for n in ((Ns,) if isinstance(Ns, int) else Ns))
    if not Ns:
        raise ValueError("Ns must hold at least one sample size N")
    table = as_table(table)
    keys = tuple(k for k in ACCURACY_KEYS if k in table.splits)
    cols = {k: table.column(*k) for k in keys}
    if mode == "table":
        pool, scores, secs = _pool_from(source, seconds)
        pool_description = pool_description or _describe_pool(pool)
        time_note = ("search time = sum of the recorded per-architecture scoring times of the drawn architectures"
                     if np.isfinite(secs).any() else "no per-architecture times recorded")
        rng = np.random.default_rng(seed)
        draw = lambda n: _table_mode(pool, scores, secs, n, runs, rng)  # noqa: E731
    else:
        config, images = _rescore_source(source)
        seed = config.seed
        pool_description = pool_description or "the whole space, drawn and scored afresh in every run"
        time_note = "search time = wall time of the run (data, network building and scoring)"
        total = len(Ns) * runs
        done = [0]

        def draw(n):
            def step(k, _total):
                if progress is not None and k % n == 0:
                    done[0] += 1
                    progress(done[0], total)

            return _rescore_mode(config, images, n, runs, step)
    rows, optimal = [], []
    for n in Ns:
        chosen, samples, secs_median, all_nan = draw(n)
        row, opt = _row(label, n, runs, secs_median, cols, keys, chosen, samples, all_nan)
        rows.append(row)
        optimal.append(opt)
    random_row = {"name": "Random", "n": None, "runs": runs, "search_seconds": float("nan"), "mean": {}, "std": {}}
    for k in keys:
        random_row["mean"][k], random_row["std"][k] = _mean_std(cols[k])
    return SearchTable(rows=rows + [random_row] + optimal, mode=mode, runs=runs, seed=seed,
                       pool=pool_description, keys=keys, time_note=time_note)


def _describe_pool(pool: np.ndarray) -> str:
    if pool.size == NUM_ARCHS and np.unique(pool).size == NUM_ARCHS:
        return "the whole space"
    return f"a scored sample of {pool.size} architectures (not the whole space)"


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
    if idx.size == 0:
        raise ValueError("no scored architectures to search over")
    if idx.min() < 0 or idx.max() >= NUM_ARCHS:
        raise ValueError(f"benchmark indices must be in 0..{NUM_ARCHS - 1}")
    if seconds is not None:
        secs = seconds
    secs = np.full(idx.shape, np.nan) if secs is None else np.asarray(secs, dtype=np.float64)
    if secs.shape != idx.shape:
        raise ValueError(f"seconds must have one entry per architecture, got {secs.shape} for {idx.shape}")
    return idx, sc, secs


