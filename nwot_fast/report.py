"""``nwot-fast report``: the correlations, search tables and figures of an evaluation in one
Markdown file, next to the published numbers.

Inputs are score files written by ``nwot-fast evaluate --scores-out`` or ``nwot-fast scan``, or
score tables (:mod:`nwot_fast.tables`; one per score method) and the NB201 accuracy table;
nothing is rescored, except for the figures that are measurements of their own: Figure 1 (the
Jacobians of a few untrained networks) and Figure 4 (the score of a few architectures under
other minibatches, initialisations and Gaussian inputs) need the images (``--data``), Figure 5
(pytorchcv's CIFAR-10 models at initialisation) needs them and ``zoo=True``.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Dict, List, Optional, Sequence

from ._common import ACCURACY_KEYS, METHODS, OutputError, accuracy_label, atomic_write, check_output_file
from .accuracies import as_table
from .errors import require
from .evaluate import evaluate
from .paths import check_distinct
from .published import PUBLISHED_CORRELATIONS, PUBLISHED_SEARCH
from .searchtable import search_table

__all__ = ["build_report", "figure6_points"]


def _rel(path: str, start: str) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _published_search_markdown(keys) -> str:
    head = ["Method", "Search (s)"] + [accuracy_label(d, s) for d, s in keys]
    out = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * (len(head) - 1)]
    for n, row in PUBLISHED_SEARCH.items():
        cells = [f"{row[k][0]:.2f} +- {row[k][1]:.2f}" for k in keys]
        out.append("| " + " | ".join([f"NASWOT jacob_cov, published (N={n})", f"{row['seconds']:.2f}"] + cells) + " |")
    return "\n".join(out)


def figure6_points(method: str, st) -> List[dict]:
    """This project's points of Figure 6 from a search table: one per N with a recorded search
    time, CIFAR-10 test accuracy mean +/- std."""
    return [{"label": f"{method}, this project (N={r['n']})", "seconds": r["search_seconds"],
             "accuracy": r["mean"][("cifar10", "test")], "std": r["std"][("cifar10", "test")]}
            for r in st.rows
            if r["name"].startswith("NASWOT") and math.isfinite(r["search_seconds"]) and r["search_seconds"] > 0]


def build_report(
    *,
    scores: Dict[str, str],
    accuracies,
    out,
    figures_dir=None,
    data=None,
    n_archs: Optional[int] = None,
    sample_seed: int = 0,
    Ns: Sequence[int] = (10, 25, 50, 75, 100),
    runs: int = 500,
    seed: int = 0,
    published_points=None,
    fig1_per_bin: int = 3,
    fig1_batch: int = 64,
    fig4_archs: int = 8,
    fig4_repeats: int = 10,
    fig4_batch: int = 128,
    fig4_method: str = "hook_logdet",
    zoo: bool = False,
    zoo_models=None,
    zoo_methods: Sequence[str] = ("jacob_cov", "hook_logdet"),
    zoo_batch: int = 64,
    title: str = "NASWOT on NAS-Bench-201: reproduction report",
    notes: str = "",
) -> dict:
    """Write the report to ``out`` (Markdown) with its figures in ``figures_dir`` (default: a
    ``figures`` folder beside ``out``) and the search tables as CSV beside the figures.

    ``scores``: ``{method: scores file}`` (a path, or a loaded
    :class:`~nwot_fast.scorefile.ScoreFile` such as a score table's ``as_score_file()``).
    ``n_archs``: use only the seeded sample of that many from each file (the first K of
    :func:`nwot_fast.evaluate.sample_indices` with ``sample_seed``). ``data``: images for
    Figures 1 and 4 (left out when ``None``). Figure 4: ``fig4_archs`` architectures (0 leaves
    it out), ``fig4_repeats`` scores per factor, batch ``fig4_batch``, score ``fig4_method``
    (:func:`nwot_fast.variation.score_variation`). ``zoo``: also Figure 5
    (:func:`nwot_fast.zoo.score_zoo` for each of ``zoo_methods`` on ``zoo_models``, batch
    ``zoo_batch``; needs ``data`` and ``pip install 'nwot_fast[zoo]'``).
    Returns a dict with the paths written and every number in the report."""
    if not scores:
        raise ValueError("give at least one scores file (method -> path)")
    if zoo:
        if data is None:
            raise ValueError("Figure 5 (zoo) scores the models on images: give data")
        from .zoo import check_installed

        check_installed()  # before any work: a missing extra costs nothing
        for m in zoo_methods:
            if m not in METHODS:
                raise ValueError(f"unknown score method {m!r} for Figure 5; allowed: {', '.join(METHODS)}")
    for m in scores:
        if m not in METHODS:
            raise ValueError(f"unknown score method {m!r}; allowed: {', '.join(METHODS)}")
    # Everything checked before the first figure is drawn, so that a refused report leaves no
    # partial figures: the figures' package, every output place (only Markdown is written), no
    # output over an input, the published points and the images of Figure 1.
    require("matplotlib", "report", "nwot-fast report (its figures)")
    out = os.fspath(out)
    check_output_file(out, "report", (".md",))
    out_dir = os.path.dirname(os.path.abspath(out))
    figures_dir = os.path.join(out_dir, "figures") if figures_dir is None else os.fspath(figures_dir)
    check_distinct([("out", out)] + [("a file of figures_dir", p) for p in _figure_files(figures_dir, scores, data)],
                   [(f"scores[{m}]", p) for m, p in scores.items()] + [("accuracies", accuracies), ("data", data)])
    if published_points is not None:
        from .figures import check_published_point

        published_points = [check_published_point(p, f"published point {n}") for n, p in enumerate(published_points)]
    images = None
    if data is not None:
        from .data import load_images

        images = load_images(data)
    _check_figures_dir(figures_dir)
    table = as_table(accuracies)
    keys = tuple(k for k in ACCURACY_KEYS if k in table.splits)

    md: List[str] = [f"# {title}", ""]
    md.append(f"Generated by `nwot-fast report` on {datetime.date.today().isoformat()}. "
              f"Accuracies: {table.source}.")
    if notes:
        md += ["", notes]
    summary: dict = {"methods": {}, "figures": {}}
    fig6_points = []
    for method, path in scores.items():
        res = evaluate(scores_in=path, method=method, accuracies=table, n_archs=n_archs, seed=sample_seed)
        st = search_table(res, table, Ns=Ns, runs=runs, mode="table", seed=seed, label=f"NASWOT {method}")
        md += _method_section(method, res, st, table, figures_dir, out_dir, summary)
        fig6_points += figure6_points(method, st)
    md += ["## Published search results (original score, 500 runs)", "", _published_search_markdown(keys), ""]
    md += _figure6_section(fig6_points, published_points, figures_dir, out_dir, summary)
    if data is not None:
        md += _figure1_section(data, images, table, fig1_batch, fig1_per_bin, seed, figures_dir, out_dir, summary)
        if fig4_archs:
            md += _figure4_section(data, table, fig4_archs, fig4_repeats, fig4_batch, fig4_method, seed, figures_dir,
                                   out_dir, summary)
    if zoo:
        md += _figure5_section(data, zoo_models, zoo_methods, zoo_batch, seed, figures_dir, out_dir, summary)
    with atomic_write(out, "report") as f:
        f.write("\n".join(md).rstrip() + "\n")
    summary["report"] = out
    return summary


def _table_prefix(figures_dir: str, method: str) -> str:
    return os.path.join(figures_dir, f"search_table_{method}")


def _fig3_prefix(figures_dir: str, method: str) -> str:
    return os.path.join(figures_dir, f"fig3_{method}_score_vs_accuracy")


FIG6_NAME = "fig6_time_vs_accuracy"
FIG1_NAME = "fig1_jacobian_histograms"


def _figure_files(figures_dir: str, scores, data) -> List[str]:
    """Every file the report writes into ``figures_dir``."""
    from .figures import FIGURE_ENDINGS
    from .searchtable import TABLE_ENDINGS

    files = []
    for method in scores:
        files += [_table_prefix(figures_dir, method) + e for e in TABLE_ENDINGS]
        files += [_fig3_prefix(figures_dir, method) + e for e in FIGURE_ENDINGS]
    for name in (FIG6_NAME,) + ((FIG1_NAME,) if data is not None else ()):
        files += [os.path.join(figures_dir, name) + e for e in FIGURE_ENDINGS]
    return files


def _check_figures_dir(figures_dir: str) -> None:
    """The figures folder: created if need be (its parent must exist), and writable."""
    if os.path.lexists(figures_dir) and not os.path.isdir(figures_dir):
        raise ValueError(f"figures folder {figures_dir!r} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(figures_dir))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot create figures folder {figures_dir!r}: directory {parent!r} does not exist")
    try:
        os.makedirs(figures_dir, exist_ok=True)
    except OSError as e:
        raise OutputError(e.errno, f"cannot create figures folder {figures_dir!r}: {e.strerror}") from None
    check_output_file(os.path.join(figures_dir, "probe.png"), "figure")


def _method_section(method: str, res, st, table, figures_dir: str, out_dir: str, summary: dict) -> List[str]:
    """The correlations, the search table and Figure 3 of one score."""
    from . import figures

    md_prefix = _table_prefix(figures_dir, method)
    st.write(md_prefix)
    fig3 = figures.figure3_score_vs_accuracy(res.indices, res.scores, table, _fig3_prefix(figures_dir, method),
                                             method=method)
    summary["methods"][method] = {"evaluation": res.to_dict(), "search_table": st.to_dict()}
    summary["figures"][f"fig3_{method}"] = fig3["paths"]
    md = ["", f"## {method}", "",
          f"{res.n_archs} architectures: {res.selection}. Scoring: {res.data_description}. "
          f"Left out of the correlations: {res.n_nan} NaN and {res.n_neg_inf} -inf scores "
          f"({res.n_finite} finite).", ""]
    pub = PUBLISHED_CORRELATIONS.get(method, {})
    md += ["| accuracy | n | Kendall tau | Spearman rho | published |", "|:--|--:|--:|--:|:--|"]
    for c in res.correlations:
        md.append(f"| {accuracy_label(c['dataset'], c['split'])} | {c['n']} | {_fmt(c['kendall_tau'])} | "
                  f"{_fmt(c['spearman_rho'])} | {pub.get(c['dataset'], '') if c['split'] == 'test' else ''} |")
    csv_link = _rel(md_prefix + ".csv", out_dir)
    md += _table_provenance(res.config, summary["methods"][method])
    return md + ["", f"Search table ({st.describe()}):", "", st.to_markdown(), "", f"CSV: [{csv_link}]({csv_link})",
                 "", f"![score vs accuracy]({_rel(fig3['paths'][0], out_dir)})", ""]


def _table_provenance(config: dict, summary: dict) -> List[str]:
    """Where a score table's numbers come from (nothing when the scores came from a score file),
    and for a float32 table its error on the rows of the float64 table of the same score beside it."""
    prov = config.get("provenance")
    if not prov:
        return []
    from .tables import float32_error, list_tables, load

    scan, proto = prov["scan"], prov["protocol"]
    cov = prov["coverage"]
    lines = ["", f"Scores: score table `{prov['name']}` ({prov['method']}, {prov['dtype']}; "
             + ("all its rows" if cov["complete"] else f"PARTIAL, {cov['covered']} of {cov['expected']} rows")
             + f"): {proto['data']['description']} ({proto['data']['fingerprint'][:30]}...), batch {proto['batch_size']}, "
             f"one fixed batch, seed {proto['seed']}, engine {proto['engine']}; scanned by nwot_fast "
             f"{scan.get('nwot_fast_version')} at commit `{scan.get('git_commit')}`, torch {scan.get('torch')}, "
             f"{scan.get('threads') or '?'} thread(s), {scan.get('cpu')}, {scan.get('started')} to {scan.get('finished')} "
             f"(wall {scan.get('wall_seconds')} s). Command: `{scan.get('command')}`. A table keeps no per-row "
             f"times: the search times below are N x the scan's mean scoring time per architecture "
             f"({scan['scoring_seconds'] / max(prov['rows'], 1):.3f} s on that CPU)."]
    path = config.get("table_path")
    if prov["dtype"] == "float32" and path:
        directory = os.path.dirname(path)
        for t in list_tables(directory):
            if t["method"] == prov["method"] and t["dtype"] == "float64":
                err = float32_error(load(path), load(t["path"]))
                if err is not None:
                    summary["float32_error"] = err
                    lines.append(f"Against the float64 table `{t['name']}` ({err['rows']} rows): float32 relative error "
                                 f"max {err['max_rel_error']:.2e}, median {err['median_rel_error']:.2e} over the "
                                 f"{err['finite']} finite rows; NaN / -inf: {err['special_agree']} rows agree, "
                                 f"{err['special_disagree']} differ.")
                break
    return lines


def _figure6_section(points, published_points, figures_dir: str, out_dir: str, summary: dict) -> List[str]:
    from . import figures

    fig6 = figures.figure6_time_vs_accuracy(points, os.path.join(figures_dir, FIG6_NAME), published=published_points)
    summary["figures"]["fig6"] = fig6["paths"]
    return ["## Search time vs accuracy (Figure 6)", "", f"![search time vs accuracy]({_rel(fig6['paths'][0], out_dir)})",
            "", "This project's search times are the sums of the recorded per-architecture scoring times of the "
            "drawn architectures (table mode), on this project's machine; the published ones were measured on "
            "one GPU. Published points drawn: "
            + ", ".join(p["label"] for p in fig6["published"]) + "."
            + (" They were given to the report (--published)." if published_points is not None else
               " The NASWOT points are the authors' (repository README, v1); the other methods are those of the "
               "paper's NAS-Bench-201 table (Mellor et al., ICML 2021, Table 2(a)), whose baselines come from "
               "NAS-Bench-201 (Dong & Yang, ICLR 2020): search time on one GTX 1080 Ti, CIFAR-10 test accuracy "
               "over 500 runs (non-weight-sharing) or 3 runs (weight-sharing)."), ""]


def _figure1_section(data, images, table, batch: int, per_bin: int, seed: int, figures_dir: str, out_dir: str,
                     summary: dict) -> List[str]:
    from . import figures
    from .data import BatchSampler

    x = BatchSampler(images, batch_size=batch, augment=False, fixed=True, seed=seed).batch(0)
    fig1 = figures.figure1_jacobian_histograms(x, table, os.path.join(figures_dir, FIG1_NAME),
                                               per_bin=per_bin, seed=seed)
    summary["figures"]["fig1"] = fig1["paths"]
    summary["fig1_bins"] = fig1["bins"]
    return ["## Jacobian correlation histograms (Figure 1)", "",
            f"![Sigma_J histograms]({_rel(fig1['paths'][0], out_dir)})", "",
            f"{per_bin} seeded random architectures per CIFAR-10 val accuracy bin (constant-output cells "
            f"left out), batch of {batch} images from {data}, no augmentation, weights seeded {seed}. "
            "Architectures: " + "; ".join(
                f"{b['bin']}: " + ", ".join(f"{a['arch_index']} ({a['accuracy']:.1f}%)" for a in b["archs"])
                for b in fig1["bins"]) + ".", ""]


def _figure4_section(data, table, archs: int, repeats: int, batch: int, method: str, seed: int, figures_dir: str,
                     out_dir: str, summary: dict) -> List[str]:
    from . import figures
    from .data import load_images
    from .variation import FACTOR_LABELS, FACTORS, score_variation

    variation = score_variation(load_images(data), archs=archs, repeats=repeats, batch_size=batch, method=method,
                                seed=seed)
    fig4 = figures.figure4_score_variation(variation, table, os.path.join(figures_dir, "fig4_score_variation"))
    summary["figures"]["fig4"] = fig4["paths"]
    summary["fig4"] = variation.to_dict()
    spread = fig4["spread"]
    rows = ["| factor | median std over archs | std of the archs' mean scores | ratio | non-finite |",
            "|:--|--:|--:|--:|--:|"]
    for f in FACTORS:
        d = spread[f]
        rows.append(f"| {FACTOR_LABELS[f]} | {_fmt(d['median_std'], 4)} | {_fmt(d['between_archs_std'], 4)} | "
                    f"{_fmt(d['relative'], 4)} | {d['non_finite']} |")
    least = min(FACTORS, key=lambda f: spread[f]["median_std"] if math.isfinite(spread[f]["median_std"]) else math.inf)
    return ["## Score under other minibatches, initialisations and Gaussian inputs (Figure 4)", "",
            f"![score variation]({_rel(fig4['paths'][0], out_dir)})", "",
            f"{method}, {len(variation.indices)} seeded random architectures (the first of "
            f"`numpy.random.default_rng({seed}).permutation(15625)` whose score is not decided by structure: "
            + ", ".join(f"{i} ({a:.1f}%)" for i, a in zip(variation.indices, fig4["accuracy"]))
            + f"; CIFAR-10 test accuracy), {repeats} scores per factor, batch {batch}, fast engine, float32. "
            f"Minibatch: batches 0..{repeats - 1} of a per-key sampler over {data} (seed {seed}, no augmentation), "
            f"weights seeded {seed}. Initialisation: batch 0, weights seeded {seed}..{seed + repeats - 1}. "
            f"Gaussian: {repeats} N(0,1) batches of the same shape (seed {seed}), weights seeded {seed}. "
            "Spread: the median over architectures of the standard deviation (ddof=1) of an architecture's "
            "scores; next to it the standard deviation of the architectures' mean scores.", "", "\n".join(rows), "",
            f"Least spread: {FACTOR_LABELS[least]}.", ""]


def _figure5_section(data, models, methods: Sequence[str], batch: int, seed: int, figures_dir: str, out_dir: str,
                     summary: dict) -> List[str]:
    from . import figures
    from .data import BatchSampler, load_images
    from .zoo import DEFAULT_MODELS, FIT_SCORE, FIT_WITH_PARAMS, score_zoo

    sampler = BatchSampler(load_images(data), batch_size=batch, augment=False, fixed=True, seed=seed)
    x = sampler.batch(0)
    results = [score_zoo(x, models=models, method=m, seed=seed, data_description=sampler.describe()) for m in methods]
    fig5 = figures.figure5_zoo(results, os.path.join(figures_dir, "fig5_zoo"))
    summary["figures"]["fig5"] = fig5["paths"]
    summary["fig5"] = [r.to_dict() for r in results]
    md = ["## pytorchcv CIFAR-10 models at initialisation (Figure 5)", "",
          f"![zoo]({_rel(fig5['paths'][0], out_dir)})", "",
          f"{'The default model list' if models is None else 'Models'} ({len(DEFAULT_MODELS if models is None else models)}), "
          f"each built untrained by pytorchcv's `get_model(name, pretrained=False)` right after "
          f"`torch.manual_seed({seed})` and scored (train mode, the forward's random draws following on from that "
          f"seed) with `nwot_fast.score(model, x)` on one batch: "
          f"{sampler.describe()}. Accuracy: 100 - the CIFAR-10 test error of pytorchcv's model table. "
          "Ordinary least squares (statsmodels) of accuracy on the score, and on the score and log(parameters).", "",
          "| score | fit | n | coefficient of the score | 95 % interval | p-value | R^2 |", "|:--|:--|--:|--:|:--|--:|--:|"]
    for r in results:
        for name in (FIT_SCORE, FIT_WITH_PARAMS):
            f = r.fits.get(name)
            if f is not None:
                md.append(f"| {r.method} | accuracy ~ {name} | {f['n']} | {f['score_coef']:.4g} | "
                          f"[{f['score_ci95'][0]:.3g}, {f['score_ci95'][1]:.3g}] | {f['score_p']:.3g} | {f['r2']:.3f} |")
    md.append("")
    skips = [line for r in results for line in r.skip_lines()]
    if skips:
        md += [f"- {line}" for line in dict.fromkeys(skips)] + [""]
    md += ["| model | accuracy (%) | parameters | " + " | ".join(f"{r.method} | s" for r in results) + " |",
           "|:--|--:|--:|" + "--:|--:|" * len(results)]
    by_method = [{m.name: m for m in r.models} for r in results]
    for name in dict.fromkeys(m.name for r in results for m in r.models):
        first = next(b[name] for b in by_method if name in b)
        md.append(f"| {name} | {first.accuracy:.2f} | {first.params} | "
                  + " | ".join(f"{b[name].score:.6g} | {b[name].seconds:.1f}" if name in b else "- | -"
                               for b in by_method) + " |")
    md += ["", "Seconds: building and scoring each model, on the machine that ran the report."]
    return md + [""]
