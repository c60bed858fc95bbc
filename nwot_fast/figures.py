"""The paper's NAS-Bench-201 figures, drawn with matplotlib's Agg canvas (PNG and SVG).

* Figure 1: histograms of the off-diagonal entries of the Jacobian correlation matrix
  Sigma_J of untrained networks, for architectures binned by trained CIFAR-10 val accuracy.
* Figure 3: score against trained accuracy, one panel per dataset.
* Figure 6: search time against CIFAR-10 test accuracy, this project's points beside the
  published ones.

No pyplot and no backend switching: figures are built on ``matplotlib.figure.Figure`` with an
Agg canvas, so importing or calling this module changes no global state. matplotlib is needed
only here (it is not a dependency of the scoring library).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .evaluate import DATASET_LABELS

__all__ = [
    "ACCURACY_BINS",
    "PUBLISHED_SEARCH_POINTS",
    "UNVERIFIED_BASELINES",
    "archs_by_accuracy_bin",
    "jacobian_correlation_entries",
    "figure1_jacobian_histograms",
    "figure3_score_vs_accuracy",
    "figure6_time_vs_accuracy",
    "read_published_points",
    "save_figure",
]

#: Figure 1 bins of CIFAR-10 val accuracy (percent): [low, high), None = open.
ACCURACY_BINS: Tuple[Tuple[Optional[float], Optional[float]], ...] = (
    (None, 60.0), (60.0, 70.0), (70.0, 80.0), (80.0, 90.0), (90.0, None),
)

#: Published NASWOT search results on NB201 (the original jacob_cov score, 500 runs), as the
#: authors list them in the README of BayesWatch/nas-without-training (v1, commit 07a991b),
#: "which is the same as what we report in the paper": median search time (s, one GPU) and
#: CIFAR-10 test accuracy mean +/- std of the chosen architecture.
PUBLISHED_SEARCH_POINTS: Tuple[dict, ...] = (
    {"label": "NASWOT, published (N=10)", "seconds": 1.73435, "accuracy": 91.53, "std": 1.62},
    {"label": "NASWOT, published (N=100)", "seconds": 17.4139, "accuracy": 91.61, "std": 1.71},
)

#: The other methods of the paper's Table 1. Their published search times and accuracies could
#: not be verified from a primary source with the tools available to this project, so they are
#: not hard-coded; pass them with ``published=`` (e.g. ``read_published_points(csv)``).
UNVERIFIED_BASELINES = ("REA", "RS", "REINFORCE", "BOHB", "RSPS", "DARTS", "GDAS", "SETN", "ENAS")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, prefix) -> List[str]:
    """Write ``PREFIX.png`` and ``PREFIX.svg``; returns both paths."""
    prefix = os.fspath(prefix)
    parent = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{prefix}: directory {parent} does not exist")
    paths = []
    for ext, kw in ((".png", {"dpi": 100}), (".svg", {})):
        path = prefix + ext
        # no timestamps in the SVG, so that reruns give the same file
        meta = {"Date": None} if ext == ".svg" else {}
        fig.savefig(path, metadata=meta, **kw)
        paths.append(path)
    return paths


def _bin_label(low, high) -> str:
    if low is None:
        return f"< {high:g}%"
    if high is None:
        return f">= {low:g}%"
    return f"{low:g}-{high:g}%"


# ---------------------------------------------------------------------------------------------
# Figure 1


def archs_by_accuracy_bin(table, per_bin: int = 4, seed: int = 0, dataset: str = "cifar10", split: str = "val",
                          bins=ACCURACY_BINS) -> List[List[int]]:
    """``per_bin`` seeded random benchmark indices from each accuracy bin, leaving out the
    constant-output cells (their Jacobian is zero and Sigma_J undefined)."""
    from .nb201 import arch_at, is_constant_output

    if isinstance(per_bin, bool) or not isinstance(per_bin, int) or per_bin < 1:
        raise ValueError(f"per_bin must be an int >= 1, got {per_bin!r}")
    acc = table.column(dataset, split)
    rng = np.random.default_rng(seed)
    out = []
    for low, high in bins:
        mask = np.isfinite(acc)
        if low is not None:
            mask &= acc >= low
        if high is not None:
            mask &= acc < high
        candidates = [int(i) for i in rng.permutation(np.flatnonzero(mask))]
        chosen = [i for i in candidates[: per_bin * 4] if not is_constant_output(arch_at(i))][:per_bin]
        out.append(chosen)
    return out


def jacobian_correlation_entries(index: int, x, seed: int = 0) -> np.ndarray:
    """Off-diagonal entries (upper triangle) of Sigma_J, the correlation matrix of the input
    Jacobian rows, for the untrained NB201 network at ``index`` built after
    ``torch.manual_seed(seed)`` and run in train mode on batch ``x`` (the pure path)."""
    import torch

    from . import reference
    from .nb201 import arch_at, build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(arch_at(index))
    J = reference.input_jacobian(model, x).numpy()
    if reference.has_zero_variance_row(J):
        return np.array([], dtype=np.float64)
    C = reference.jacobian_correlation(J)
    return C[np.triu_indices(C.shape[0], k=1)]


def figure1_jacobian_histograms(x, table, out_prefix, *, per_bin: int = 4, seed: int = 0,
                                dataset: str = "cifar10", split: str = "val", indices_by_bin=None) -> dict:
    """Figure 1: one panel per accuracy bin, one histogram of Sigma_J's off-diagonal entries
    per architecture. ``x``: the input batch ``[B, 3, H, W]``. Returns ``{"paths", "bins"}``
    with the architectures and accuracies drawn."""
    if indices_by_bin is None:
        indices_by_bin = archs_by_accuracy_bin(table, per_bin=per_bin, seed=seed, dataset=dataset, split=split)
    acc = table.column(dataset, split)
    fig = _new_figure(3.0 * len(ACCURACY_BINS), 3.0)
    axes = fig.subplots(1, len(ACCURACY_BINS), sharex=True)
    drawn = []
    edges = np.linspace(-1, 1, 81)
    for ax, (low, high), idxs in zip(axes, ACCURACY_BINS, indices_by_bin):
        info = []
        for k, i in enumerate(idxs):
            entries = jacobian_correlation_entries(i, x, seed=seed)
            if entries.size == 0:
                continue
            ax.hist(entries, bins=edges, histtype="step", density=True, linewidth=1.0, color=f"C{k % 10}")
            info.append({"arch_index": int(i), "accuracy": float(acc[i])})
        ax.set_title(f"{_bin_label(low, high)} ({len(info)} archs)", fontsize=9)
        ax.set_xlabel(r"entries of $\Sigma_J$", fontsize=8)
        ax.tick_params(labelsize=7)
        drawn.append({"bin": _bin_label(low, high), "archs": info})
    axes[0].set_ylabel("density", fontsize=8)
    fig.suptitle(f"Jacobian correlations of untrained networks, by trained {DATASET_LABELS.get(dataset, dataset)} "
                 f"{split} accuracy (batch {x.shape[0]})", fontsize=10)
    return {"paths": save_figure(fig, out_prefix), "bins": drawn}


# ---------------------------------------------------------------------------------------------
# Figure 3


def figure3_score_vs_accuracy(indices, scores, table, out_prefix, *, method: str = "score", split: str = "test",
                              datasets: Sequence[str] = ("cifar10", "cifar100", "ImageNet16-120")) -> dict:
    """Figure 3: score (y) against trained accuracy (x), one panel per dataset; non-finite
    scores are left out (and counted in the title). Kendall tau in each panel title."""
    from .stats import kendall_tau

    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if indices.shape != scores.shape:
        raise ValueError(f"indices and scores must have the same length, got {indices.shape} and {scores.shape}")
    keep_s = np.isfinite(scores)
    fig = _new_figure(4.0 * len(datasets), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(datasets)))
    taus = {}
    for ax, ds in zip(axes, datasets):
        acc = table.column(ds, split)[indices]
        keep = keep_s & np.isfinite(acc)
        tau = kendall_tau(scores[keep], acc[keep]) if keep.sum() >= 2 else float("nan")
        taus[ds] = tau
        ax.scatter(acc[keep], scores[keep], s=4, alpha=0.5, linewidths=0, rasterized=True)
        ax.set_xlabel(f"{DATASET_LABELS.get(ds, ds)} {split} accuracy (%)", fontsize=9)
        ax.set_title(f"{DATASET_LABELS.get(ds, ds)}: tau = {tau:.3f} (n = {int(keep.sum())})", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel(f"{method} score", fontsize=9)
    dropped = int((~keep_s).sum())
    fig.suptitle(f"{method} of untrained networks vs trained accuracy ({indices.size} archs, "
                 f"{dropped} non-finite scores left out)", fontsize=10)
    return {"paths": save_figure(fig, out_prefix), "kendall_tau": taus}


# ---------------------------------------------------------------------------------------------
# Figure 6


def read_published_points(path) -> List[dict]:
    """Read published points from a CSV with columns ``label, seconds, accuracy`` and optional
    ``std`` (search time in seconds, CIFAR-10 test accuracy in percent)."""
    import csv

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected a CSV with columns label, seconds, accuracy[, std]")
    out = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                out.append({"label": row["label"], "seconds": float(row["seconds"]),
                            "accuracy": float(row["accuracy"]),
                            "std": float(row["std"]) if row.get("std") not in (None, "") else 0.0})
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path} row {n}: expected label, seconds, accuracy[, std], got {row!r}") from None
    return out


def figure6_time_vs_accuracy(points: Sequence[dict], out_prefix, *, published: Optional[Sequence[dict]] = None,
                             title: str = "Search time vs CIFAR-10 test accuracy") -> dict:
    """Figure 6: search time (log scale) against CIFAR-10 test accuracy (mean +/- std).

    ``points``: this project's results, dicts with ``label``, ``seconds``, ``accuracy``, ``std``.
    ``published``: the published points to draw beside them (default:
    :data:`PUBLISHED_SEARCH_POINTS`, the NASWOT paper's own; the other methods of its Table 1
    are not included, see :data:`UNVERIFIED_BASELINES`)."""
    published = list(PUBLISHED_SEARCH_POINTS if published is None else published)
    for p in list(points) + published:
        for k in ("label", "seconds", "accuracy"):
            if k not in p:
                raise ValueError(f"each point needs label, seconds and accuracy; {p!r} has no {k!r}")
        if not p["seconds"] > 0:
            raise ValueError(f"search time must be > 0 for the log scale, got {p['seconds']!r} for {p['label']!r}")
    fig = _new_figure(6.4, 4.2)
    ax = fig.subplots()
    for k, p in enumerate(published):
        ax.errorbar(p["seconds"], p["accuracy"], yerr=p.get("std", 0.0), fmt="s", color="0.45", capsize=3,
                    markersize=5)
        ax.annotate(p["label"], (p["seconds"], p["accuracy"]), textcoords="offset points", xytext=(5, -10),
                    fontsize=7, color="0.3")
    for k, p in enumerate(points):
        ax.errorbar(p["seconds"], p["accuracy"], yerr=p.get("std", 0.0), fmt="o", color=f"C{k % 10}", capsize=3,
                    markersize=5, label=p["label"])
    ax.set_xscale("log")
    ax.set_xlabel("search time (s, log scale)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title(title, fontsize=10)
    if points:
        ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    return {"paths": save_figure(fig, out_prefix), "points": list(points), "published": published}
