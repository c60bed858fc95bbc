"""The ``evaluate`` and ``report`` commands: correlations with the NB201 accuracies and the search
table, and the Markdown report with its figures."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .._common import METHODS, NUM_ARCHS
from ..args import BATCH_SIZE, N_ARCHS, RUNS, IntRange
from ..errors import EXIT_OK
from .common import (EXIT_CODES_HELP, PROG, add_output_options, add_ray_option, add_score_options, check_device,
                     config_from, database_path, input_path, output_path, path_arg, prefix_path, print_json,
                     seed_arg)

EVALUATE_EPILOG = f"""\
examples:
  {PROG} evaluate --n-archs 1000 --method hook_logdet --data ../shared/data/cifar10_sample.npz \\
      --accuracies ../shared/data/nb201_accuracies.csv --db scan.sqlite --scores-out s.csv
  {PROG} evaluate --scores-in s.csv --method hook_logdet --accuracies nb201_accuracies.csv \\
      --search-table 10,100 --runs 500 --json

Kendall tau and Spearman rho against the NB201 val and test accuracies; NaN and -inf scores are
counted and left out. With --scores-in nothing is scored: the scoring options other than
--method and --seed are refused; --method picks that method's rows (needed for a file holding
several methods; without it, the file's own method).

{EXIT_CODES_HELP}"""

REPORT_EPILOG = f"""\
example:
  {PROG} report --scores jacob_cov=jc.csv --scores hook_logdet=hl.csv \\
      --accuracies ../shared/data/nb201_accuracies.csv --data ../shared/data/cifar10_sample.npz \\
      --search-ns 10,100 --out report.md

  {PROG} report --table jacob_cov.float32 --table hook_logdet.float32 \\
      --accuracies nb201_accuracies.csv --data cifar-10-batches-py --zoo --out report.md

Correlations, search tables (table mode) and figures from score files or score tables, next to
the published numbers. Nothing of those is rescored; the figures that are measurements of their
own are: Figure 1 (a few networks' Jacobians) and Figure 4 (8 architectures under 10
minibatches, initialisations and Gaussian batches) with --data, Figure 5 (pytorchcv's CIFAR-10
models at initialisation) with --data and --zoo (pip install 'nwot_fast[zoo]').

{EXIT_CODES_HELP}"""


def _int_list(text: str) -> List[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 10,100, got {text!r}") from None
    if not out or min(out) < 1 or max(out) > NUM_ARCHS:
        raise argparse.ArgumentTypeError(f"expected integers in 1..{NUM_ARCHS} like 10,100, got {text!r}")
    return out


def _scores_arg(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected METHOD=FILE (METHOD one of {', '.join(METHODS)}), got {text!r}")
    method, path = text.split("=", 1)
    if method not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    return method, path_arg(path)


_scores_arg.role = "input"  # METHOD=FILE: FILE is read (see path_type)


def _name_list(text: str) -> List[str]:
    names = [t for t in text.replace(" ", "").split(",") if t]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _method_list(text: str) -> List[str]:
    names = _name_list(text)
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown score method(s) {', '.join(bad)}; allowed: {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def _load_score_table(name: str, method: Optional[str] = None):
    """A score table (name or path) as the ScoreFile evaluate reads; its method must be ``method``
    when one is given."""
    from ..tables import load

    table = load(name)
    if method is not None and method != table.method:
        raise ValueError(f"table {table.name} holds {table.method} scores, but --method {method} was given")
    if not table.complete:
        cov = table.provenance["coverage"]
        print(f"note: table {table.name} is PARTIAL: {cov['covered']} of {cov['expected']} rows", file=sys.stderr)
    return table.as_score_file()


def cmd_evaluate(args) -> int:
    """``nwot-fast evaluate``: score (or read) architectures, correlate with the NB201 accuracies."""
    from ..accuracies import as_table
    from ..evaluation import evaluate
    from ..searchtable import search_table

    from ..scorefile import check_output_path
    from ..searchtable import check_table_prefix

    # Every output checked before any scoring: a bad name must not cost the scores.
    if args.scores_out is not None:
        check_output_path(args.scores_out)
    if args.table_out is not None:
        if not args.search_table:
            raise ValueError("--table-out needs --search-table N,N,...")
        check_table_prefix(args.table_out)
    scores_in = args.scores_in
    if args.table is not None:  # a score table in place of scoring (issue 21)
        if args.scores_in is not None:
            raise ValueError("give --table or --scores-in, not both")
        scores_in = _load_score_table(args.table, args.method)
        args.method = scores_in.method
    if scores_in is not None:
        # Nothing is scored: the options only scoring uses are refused, not silently ignored.
        given = [flag for dest, flag in _SCORING_ONLY if getattr(args, dest) is not None]
        if given:
            source = "--table" if args.table is not None else "--scores-in"
            raise ValueError(f"{source} reads earlier scores and scores nothing: {', '.join(given)} would not be "
                             "used; leave them out, or score with --n-archs, --all or --indices instead")
    elif args.n_archs is None and not args.all_archs and args.indices is None:
        raise ValueError("say which architectures to score: --n-archs K, --all or --indices START:STOP; "
                         "or read earlier scores with --scores-in FILE or --table NAME")
    config = None if scores_in is not None else config_from(args)
    if config is not None:
        check_device(config)  # its device: --device or the default
        if args.data is None and not args.quiet:
            print("note: no --data given: architectures are scored on Gaussian N(0,1) inputs", file=sys.stderr)
    accuracies = as_table(args.accuracies)
    progress = None if args.quiet or config is None else True
    result = evaluate(n_archs=args.n_archs, all_archs=args.all_archs, indices=args.indices, accuracies=accuracies,
                      scores_out=args.scores_out, scores_in=scores_in, db=args.db, progress=progress,
                      config=config, ray=args.ray, **({"method": args.method, "seed": args.seed} if config is None else {}))
    table = None
    if args.search_table:
        table = search_table(result, accuracies, Ns=args.search_table, runs=args.runs, mode="table", seed=args.seed)
        if args.table_out:
            table.write(args.table_out)
    if args.json:
        out = result.to_dict()
        if table is not None:
            out["search_table"] = table.to_dict()
        print_json(out)
    else:
        print(result.format_table())
        if table is not None:
            print()
            print(table.format_text())
    return EXIT_OK


def cmd_report(args) -> int:
    """``nwot-fast report``: the Markdown report with its tables and figures."""
    from .._common import check_input_file, check_output_file
    from ..figures import read_published_points
    from ..report import build_report

    check_output_file(args.out, "report", (".md",))  # only Markdown is written
    if not args.scores and not args.table:
        raise ValueError("give the scores: --scores METHOD=FILE or --table NAME (repeat for each score)")
    for _, path in args.scores or ():
        check_input_file(path, "a scores file")
    scores: dict = {}
    sources = list(args.scores or ()) + [(t.method, t) for t in (_load_score_table(n) for n in args.table or ())]
    for method, source in sources:
        if method in scores:
            raise ValueError(f"scores given twice for {method} (--scores / --table)")
        scores[method] = source
    summary = build_report(
        scores=scores, accuracies=args.accuracies, out=args.out, figures_dir=args.figures_dir, data=args.data,
        n_archs=args.n_archs, sample_seed=args.sample_seed, Ns=args.search_ns, runs=args.runs, seed=args.seed,
        published_points=None if args.published is None else read_published_points(args.published),
        fig1_per_bin=args.fig1_per_bin, fig1_batch=args.fig1_batch, fig4_archs=args.fig4_archs,
        fig4_repeats=args.fig4_repeats, fig4_batch=args.fig4_batch, fig4_method=args.fig4_method, zoo=args.zoo,
        zoo_models=args.zoo_models, zoo_methods=args.zoo_methods, zoo_batch=args.zoo_batch,
        notes=args.notes or "",
    )
    if args.json:
        print_json(summary)
    else:
        print(f"report written to {summary['report']}")
        for name, paths in summary["figures"].items():
            print(f"  {name}: {', '.join(paths)}")
    return EXIT_OK


#: evaluate's options that only scoring uses (refused with --scores-in): (dest, flag).
_SCORING_ONLY = (("db", "--db"), ("ray", "--ray"), ("data", "--data"), ("dataset", "--dataset"),
                 ("batch_size", "--batch-size"), ("augment", "--augment/--no-augment"),
                 ("fixed_batch", "--fixed-batch/--batch-per-arch"), ("device", "--device"), ("engine", "--engine"),
                 ("relu_match", "--relu-match"), ("dtype", "--dtype"))


def _add_evaluate_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--n-archs", type=N_ARCHS.parse, metavar="K", help="a seeded random sample of K architectures")
    which.add_argument("--all", action="store_true", dest="all_archs", help="all 15,625 architectures")
    which.add_argument("--indices", metavar="START:STOP", help="these benchmark indices (START:STOP or a,b,c)")
    p.add_argument("--accuracies", metavar="PATH", required=True, type=input_path,
                   help="NB201 accuracies: nb201_accuracies.csv or the official .pth")
    p.add_argument("--db", metavar="PATH", type=database_path, help="SQLite scan database: results are kept as they come and a "
                   "rerun resumes")
    add_ray_option(p)  # Ray hook (issue 12)
    p.add_argument("--scores-out", metavar="FILE", type=output_path, help="write per-architecture scores (.csv/.jsonl/.json)")
    p.add_argument("--scores-in", metavar="FILE", type=input_path, help="reuse scores from FILE instead of scoring")
    p.add_argument("--table", metavar="NAME|PATH",
                   help="read the scores of a score table instead of scoring: a shipped table's name (nwot-fast "
                        "tables list) or the path of a table's .csv/.json; its score method is used")
    p.add_argument("--search-table", type=_int_list, metavar="N,N,...",
                   help="also the search table (mode 'table', over the evaluated architectures) for these N")
    p.add_argument("--runs", type=RUNS.parse, default=500, help="runs per N for --search-table (default 500)")
    p.add_argument("--table-out", metavar="PREFIX", type=prefix_path, help="write the search table to PREFIX.md and PREFIX.csv")
    add_score_options(p)
    # None = not given: scoring takes ScoreConfig's defaults (the same as the other commands'),
    # --scores-in refuses what would not be used, and without --method it reads the file's method.
    p.set_defaults(method=None, **{dest: None for dest, _ in _SCORING_ONLY})
    add_output_options(p)


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", type=_scores_arg, action="append", metavar="METHOD=FILE",
                   help="a scores file of one method (repeat for several methods)")
    p.add_argument("--table", action="append", metavar="NAME|PATH",
                   help="a score table in place of a scores file: a shipped table's name or a table's .csv/.json "
                        "path (repeat for each score)")
    p.add_argument("--accuracies", required=True, metavar="PATH", type=input_path, help="NB201 accuracies (CSV or .pth)")
    p.add_argument("--out", default="report.md", metavar="FILE.md", type=output_path,
                   help="Markdown report, a .md file (default report.md)")
    # the figures folder: build_report checks the files it writes there against the inputs
    p.add_argument("--figures-dir", metavar="DIR", type=path_arg, help="figures and CSV tables (default: figures/ beside --out)")
    p.add_argument("--data", metavar="PATH", type=input_path, help="images for Figure 1 (left out without)")
    p.add_argument("--n-archs", type=N_ARCHS.parse, metavar="K", help="use only the seeded sample of K from each file")
    p.add_argument("--sample-seed", type=seed_arg, default=0, help="seed of that sample (default 0)")
    p.add_argument("--search-ns", type=_int_list, default=[10, 25, 50, 75, 100], metavar="N,N,...",
                   help="sample sizes of the search table (default 10,25,50,75,100)")
    p.add_argument("--runs", type=RUNS.parse, default=500, help="runs per N (default 500)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the search runs and Figure 1 (default 0)")
    p.add_argument("--published", metavar="CSV", type=input_path,
                   help="published points for Figure 6 instead of the built-in ones (the NASWOT paper's "
                   "NAS-Bench-201 table): CSV label,seconds,accuracy[,std][,kind]")
    p.add_argument("--notes", metavar="TEXT", help="a paragraph (Markdown) written under the report's title")
    p.add_argument("--fig1-per-bin", type=IntRange(1, 1000).parse, default=3, help="architectures per bin in Figure 1 (default 3)")
    p.add_argument("--fig1-batch", type=BATCH_SIZE.parse, default=64, help="batch size for Figure 1 (default 64)")
    g = p.add_argument_group("Figure 4 (with --data): the score under other minibatches, initialisations, Gaussian inputs")
    g.add_argument("--fig4-archs", type=IntRange(0, 1000).parse, default=8, metavar="K",
                   help="seeded random architectures (default 8; 0 leaves Figure 4 out)")
    g.add_argument("--fig4-repeats", type=IntRange(2, 1000).parse, default=10, metavar="R", help="scores per factor (default 10)")
    g.add_argument("--fig4-batch", type=BATCH_SIZE.parse, default=128, metavar="B", help="batch size (default 128)")
    g.add_argument("--fig4-method", default="hook_logdet", choices=METHODS, help="score (default hook_logdet)")
    g = p.add_argument_group("Figure 5: pytorchcv CIFAR-10 models at initialisation (needs --data and "
                             "pip install 'nwot_fast[zoo]')")
    g.add_argument("--zoo", action="store_true", help="draw Figure 5")
    g.add_argument("--zoo-models", type=_name_list, metavar="NAME,NAME,...",
                   help="pytorchcv model names (default: the CIFAR-10 models that score in seconds on a CPU, "
                        "nwot_fast.zoo.DEFAULT_MODELS)")
    g.add_argument("--zoo-methods", type=_method_list, default=list(METHODS), metavar="METHOD,...",
                   help=f"scores to fit (default {','.join(METHODS)})")
    g.add_argument("--zoo-batch", type=BATCH_SIZE.parse, default=64, metavar="B", help="batch size (default 64)")
    add_output_options(p)


def add_evaluate_command(add) -> None:
    """Registers ``evaluate`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("evaluate", "score architectures and correlate the scores with NB201 accuracies", cmd_evaluate, EVALUATE_EPILOG)
    _add_evaluate_options(p)
    p.set_defaults(method=None)  # jacob_cov unless --table names another (cmd_evaluate decides)


def add_report_command(add) -> None:
    """Registers ``report`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("report", "assemble tables and figures of an evaluation into one Markdown report", cmd_report, REPORT_EPILOG)
    _add_report_options(p)
