"""The paper's NAS-Bench-201 figures, drawn with matplotlib's Agg canvas (PNG and SVG).

* Figure 1: histograms of the off-diagonal entries of the Jacobian correlation matrix
  Sigma_J of untrained networks, for architectures binned by trained CIFAR-10 val accuracy.
* Figure 3: score against trained accuracy, one panel per dataset.
* Figure 4: how the score of a few architectures moves with the minibatch, the initialisation
  and Gaussian inputs (:mod:`nwot_fast.variation` measures it), against trained accuracy.
* Figure 5: the score at initialisation of pytorchcv's CIFAR-10 models against their test
  accuracy, with the least-squares line (:mod:`nwot_fast.zoo` measures and fits it).
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

from ._common import DATASET_LABELS
from .published import PUBLISHED_BASELINES, PUBLISHED_KINDS, PUBLISHED_SEARCH_POINTS, check_published_point, read_published_points  # noqa: F401  (re-exported)

__all__ = [
    "ACCURACY_BINS",
    "PUBLISHED_BASELINES",
    "PUBLISHED_KINDS",
    "PUBLISHED_SEARCH_POINTS",
    "archs_by_accuracy_bin",
    "jacobian_correlation_entries",
    "figure1_jacobian_histograms",
    "figure3_score_vs_accuracy",
    "figure4_score_variation",
    "figure5_zoo",
    "figure6_time_vs_accuracy",
    "read_published_points",
    "check_published_point",
    "save_figure",
]

#: Figure 1 bins of CIFAR-10 val accuracy (percent): [low, high), None = open.
ACCURACY_BINS: Tuple[Tuple[Optional[float], Optional[float]], ...] = (
    (None, 60.0), (60.0, 70.0), (70.0, 80.0), (80.0, 90.0), (90.0, None),
)


# marker style and legend entry per kind; None: a published point without a kind
_KIND_STYLE = {
    "training-free": ({"marker": "s", "color": "0.45", "mfc": "0.45"}, "published: NASWOT (authors, 1 GPU)"),
    "non-weight-sharing": ({"marker": "^", "color": "0.1", "mfc": "0.1"},
                           "published: non-weight-sharing (NAS-Bench-201, 1 GPU)"),
    "weight-sharing": ({"marker": "D", "color": "0.1", "mfc": "white"},
                       "published: weight-sharing (NAS-Bench-201, 1 GPU)"),
    None: ({"marker": "s", "color": "0.45", "mfc": "white"}, "published"),
}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


#: What a figure is written as: PREFIX.png and PREFIX.svg.
FIGURE_ENDINGS = (".png", ".svg")


def save_figure(fig, prefix) -> List[str]:
    """Write ``PREFIX.png`` and ``PREFIX.svg``; returns both paths."""
    prefix = os.fspath(prefix)
    parent = os.path.dirname(os.path.abspath(prefix))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{prefix}: directory {parent} does not exist")
    from ._common import atomic_write

    paths = []
    for ext, kw in zip(FIGURE_ENDINGS, ({"dpi": 100}, {})):
        path = prefix + ext
        # no timestamps in the SVG, so that reruns give the same file
        meta = {"Date": None} if ext == ".svg" else {}
        with atomic_write(path, "figure", mode="wb") as f:
            fig.savefig(f, format=ext[1:], metadata=meta, **kw)
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
    from . import reference
    from .nb201 import seeded_network

    J = reference.input_jacobian(seeded_network(index, seed), x).numpy()
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
# Figure 4


def figure4_score_variation(variation, table, out_prefix, *, dataset: str = "cifar10", split: str = "test") -> dict:
    """Figure 4: one panel per factor of ``variation`` (a :class:`nwot_fast.variation.Variation`:
    minibatch, initialisation, Gaussian inputs); each architecture's scores as a box (and its
    points) at its trained accuracy (``table``: an AccuracyTable). Panels share the score axis,
    so the boxes compare across factors; each panel's title gives the factor's spread (median
    over architectures of the per-architecture standard deviation). Non-finite scores are not
    drawn. Returns the paths, the spreads and the accuracies."""
    from .variation import FACTOR_LABELS, FACTORS

    acc = table.column(dataset, split)[np.asarray(variation.indices, dtype=np.int64)]
    spread = variation.spread()
    fig = _new_figure(12.0, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(FACTORS), sharey=True))
    span = float(np.nanmax(acc) - np.nanmin(acc)) if acc.size > 1 else 1.0
    width = max(span / 40, 0.2)
    for ax, factor in zip(axes, FACTORS):
        s = variation.scores[factor]
        for a, (x, row) in enumerate(zip(acc, s)):
            finite = row[np.isfinite(row)]
            if finite.size == 0 or not np.isfinite(x):
                continue
            ax.boxplot([finite], positions=[x], widths=width, manage_ticks=False, showfliers=False,
                       medianprops={"color": f"C{a % 10}"}, boxprops={"color": f"C{a % 10}"},
                       whiskerprops={"color": f"C{a % 10}"}, capprops={"color": f"C{a % 10}"})
            ax.scatter(np.full(finite.size, x), finite, s=6, color=f"C{a % 10}", alpha=0.6, zorder=3)
        ax.set_xlabel(f"{DATASET_LABELS.get(dataset, dataset)} {split} accuracy (%)", fontsize=9)
        ax.set_title(f"{FACTOR_LABELS[factor]}\nmedian std over archs = {spread[factor]['median_std']:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{variation.method} score", fontsize=9)
    fig.suptitle(f"{variation.method}: {len(variation.indices)} random NB201 architectures, {variation.repeats} "
                 f"scores per factor (batch {variation.batch_size})", fontsize=10)
    return {"paths": save_figure(fig, out_prefix), "spread": spread, "accuracy": acc.tolist()}


# ---------------------------------------------------------------------------------------------
# Figure 5


def figure5_zoo(results: Sequence, out_prefix) -> dict:
    """Figure 5: for each :class:`nwot_fast.zoo.ZooResult` in ``results`` (one per score), a
    panel of the models' score at initialisation (x) against their CIFAR-10 test accuracy (y),
    with the line of ``accuracy ~ score`` and, in the title, the score's coefficient and
    p-value with and without log(parameters). Non-finite scores are not drawn."""
    from .zoo import FIT_SCORE, FIT_WITH_PARAMS

    results = list(results)
    if not results:
        raise ValueError("figure5_zoo needs at least one ZooResult")
    fig = _new_figure(5.2 * len(results), 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(results)))
    for ax, res in zip(axes, results):
        models = [m for m in res.models if np.isfinite(m.score)]
        x = np.array([m.score for m in models])
        y = np.array([m.accuracy for m in models])
        points = ax.scatter(x, y, s=14, c=np.log10([m.params for m in models]) if models else None, cmap="viridis",
                            zorder=3)
        if models:
            fig.colorbar(points, ax=ax, label="log10 parameters")
        title = f"{res.method}, {len(models)} models"
        if res.fits:
            f1, f2 = res.fits[FIT_SCORE], res.fits[FIT_WITH_PARAMS]
            ax.plot(np.sort(x), f1["intercept"] + f1["score_coef"] * np.sort(x), color="0.3", linewidth=1)
            title += (f"\nacc ~ score: coef {f1['score_coef']:.3g}, p = {f1['score_p']:.2g}"
                      f"\nacc ~ score + log(params): coef {f2['score_coef']:.3g}, p = {f2['score_p']:.2g}")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"{res.method} score at initialisation (batch {res.batch_size})", fontsize=9)
        ax.set_ylabel("CIFAR-10 test accuracy (%, pytorchcv)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle("pytorchcv CIFAR-10 models: score at initialisation vs trained accuracy", fontsize=9)
    return {"paths": save_figure(fig, out_prefix)}


# ---------------------------------------------------------------------------------------------
# Figure 6


def _label_groups(points: Sequence[dict]) -> List[List[dict]]:
    """Group points whose markers nearly coincide (within a factor 1.5 in search time and 2.5
    accuracy points of the group's first point), so that their labels are written once, stacked,
    rather than on top of one another (e.g. REA, RS, REINFORCE and BOHB all at 12000 s)."""
    groups: List[List[dict]] = []
    for p in sorted(points, key=lambda q: (q["seconds"], -q["accuracy"])):
        for g in groups:
            if abs(np.log10(p["seconds"] / g[0]["seconds"])) < np.log10(1.5) \
                    and abs(p["accuracy"] - g[0]["accuracy"]) < 2.5:
                g.append(p)
                break
        else:
            groups.append([p])
    return groups


def _place_labels(fig, ax, groups: Sequence[Sequence[dict]], marker_points: Sequence[dict], fontsize: float = 7):
    """Write each group's label next to it, at the first place (right or left of the markers,
    above or below the error bars, then diagonally) where it overlaps no marker, error bar,
    legend or label already placed, and stays inside the axes. The figure is drawn once first so
    that the layout is final; the layout engine is then switched off, so the measured positions
    are those that are saved."""
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    pad = 4 * fig.dpi / 72  # half a marker, in pixels
    taken = []
    for p in marker_points:
        std = p.get("std", 0.0)
        x, y_lo = ax.transData.transform((p["seconds"], p["accuracy"] - std))
        _, y_hi = ax.transData.transform((p["seconds"], p["accuracy"] + std))
        taken.append((x - pad, y_lo - pad, x + pad, y_hi + pad))
    legend = ax.get_legend()
    if legend is not None:
        b = legend.get_window_extent(renderer)
        taken.append((b.x0, b.y0, b.x1, b.y1))
        # loc="best" avoids texts too: pin the legend where it is, or the labels would move it
        legend.set_loc(tuple(ax.transAxes.inverted().transform((b.x0, b.y0))))
    frame = ax.get_window_extent(renderer)

    def clashes(b):
        """How many things the box ``b`` would cover; more than all of them if it leaves the axes."""
        if not (frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1):
            return len(taken) + 1
        return sum(b.x0 < t[2] and t[0] < b.x1 and b.y0 < t[3] and t[1] < b.y1 for t in taken)

    texts = []
    for g in groups:
        members = sorted(g, key=lambda q: (-q["accuracy"], q["seconds"]))
        text = "\n".join(q.get("tag", q["label"]) for q in members)
        right = max(q["seconds"] for q in g)
        left = min(q["seconds"] for q in g)
        middle = float(np.exp(np.mean([np.log(q["seconds"]) for q in g])))
        y = float(np.mean([q["accuracy"] for q in g]))
        top = max(q["accuracy"] + q.get("std", 0.0) for q in g)
        bottom = min(q["accuracy"] - q.get("std", 0.0) for q in g)
        # (anchor in data coordinates, offset in points, alignment), in order of preference
        places = (((right, y), (6, 0), "left", "center"), ((left, y), (-6, 0), "right", "center"),
                  ((middle, top), (0, 4), "center", "bottom"), ((middle, bottom), (0, -4), "center", "top"),
                  ((right, top), (4, 2), "left", "bottom"), ((right, bottom), (4, -2), "left", "top"),
                  ((left, top), (-4, 2), "right", "bottom"), ((left, bottom), (-4, -2), "right", "top"))
        best = None
        for anchor, offset, ha, va in places:
            t = ax.annotate(text, anchor, textcoords="offset points", xytext=offset, ha=ha, va=va,
                            fontsize=fontsize, color="0.2", linespacing=1.0)
            b = t.get_window_extent(renderer)
            n = clashes(b)
            if best is not None and n >= best[0]:
                t.remove()
                continue
            if best is not None:
                best[1].remove()
            best = (n, t, b)
            if n == 0:
                break
        # nowhere free: the place that covers least
        _, t, b = best
        taken.append((b.x0, b.y0, b.x1, b.y1))
        texts.append(t)
    return texts


def figure6_time_vs_accuracy(points: Sequence[dict], out_prefix, *, published: Optional[Sequence[dict]] = None,
                             title: str = "Search time vs CIFAR-10 test accuracy (NAS-Bench-201)") -> dict:
    """Figure 6: search time (log scale) against CIFAR-10 test accuracy (mean +/- std).

    ``points``: this project's results, dicts with ``label``, ``seconds``, ``accuracy``, ``std``.
    ``published``: the published points to draw beside them, dicts with the same keys, an
    optional ``kind`` (one of :data:`PUBLISHED_KINDS`, which sets the marker) and an optional
    ``tag`` (the text written next to the marker; default the label). Default: the
    NASWOT paper's own points (:data:`PUBLISHED_SEARCH_POINTS`) and the other NAS methods of its
    NAS-Bench-201 table (:data:`PUBLISHED_BASELINES`)."""
    published = list(PUBLISHED_SEARCH_POINTS + PUBLISHED_BASELINES if published is None else published)
    for n, p in enumerate(points):
        check_published_point(p, f"point {n}")
    for n, p in enumerate(published):
        check_published_point(p, f"published point {n}")
    fig = _new_figure(7.2, 4.8)
    ax = fig.subplots()
    for kind, (style, legend_label) in _KIND_STYLE.items():
        of_kind = [p for p in published if p.get("kind") == kind]
        for k, p in enumerate(of_kind):
            ax.errorbar(p["seconds"], p["accuracy"], yerr=p.get("std", 0.0), fmt=style["marker"], color=style["color"],
                        mfc=style["mfc"], mec=style["color"], capsize=3, markersize=5, zorder=2,
                        label=legend_label if k == 0 else None)
    for k, p in enumerate(points):
        ax.errorbar(p["seconds"], p["accuracy"], yerr=p.get("std", 0.0), fmt="o", color=f"C{k % 10}", capsize=3,
                    markersize=5, label=p["label"], zorder=3)
    ax.set_xscale("log")
    seconds = [p["seconds"] for p in list(points) + published]
    if seconds:
        # room for the labels of the fastest and the slowest methods
        ax.set_xlim(min(seconds) / 5, max(seconds) * 12)
    ax.set_xlabel("search time (s, log scale)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title(title, fontsize=10)
    if points or published:
        ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    _place_labels(fig, ax, _label_groups(published), list(points) + published)
    return {"paths": save_figure(fig, out_prefix), "points": list(points), "published": published}
