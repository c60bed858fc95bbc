"""The ``nwot-fast`` command line (also ``python -m nwot_fast``).

Subcommands: ``search``, ``score``, ``scan``, ``db``, ``evaluate``, ``report``, ``tables``, ``info``, ``arch``.
Results go to stdout (a table, or JSON with ``--json`` and nothing else); messages, warnings
and progress bars go to stderr. Exit codes are documented in :data:`EXIT_CODES_HELP`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import List, Optional, Sequence

# torch-free, so that `--help` does not import torch
from ._common import DTYPES, ENGINES, METHODS, NUM_ARCHS, RELU_MATCHES, __version__, jsonable
from .args import BATCH_SIZE, N_ARCHS, N_SAMPLES, RUNS, SEED, IntRange
from .distributed import INSTALL_HINT as RAY_INSTALL_HINT
from .errors import (EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_RESOURCE, EXIT_TERMINATED,  # noqa: F401
                     EXIT_USAGE, ResourceError, Terminated, one_line)

PROG = "nwot-fast"
DEFAULT_DB = "nwot-fast-scan.sqlite"

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    internal error (a bug: please report it with the traceback)
  2    usage error or bad input (unknown option, arch string, index, score or dataset name,
       batch size < 2, missing or corrupt data/benchmark file, a symbolic link loop, an output
       that is the same file as an input or the database, an optional package not installed:
       --ray without Ray, report without matplotlib, ...)
  3    resource problem: CUDA requested but not available, out of memory, scan database
       locked by another process or read-only, no Ray cluster at the --ray address, an
       output file on a full or read-only file system (nothing half-written is left), stdout
       or stderr closed, full or unable to encode the text
  130  interrupted (Ctrl-C); results already written to a scan database are kept
  143  stopped by SIGTERM (e.g. a preempted job); results written so far are kept
"""

ARCH_EXAMPLE = "'|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'"

TOP_EPILOG = f"""\
examples:
  {PROG} search --n-samples 10 --runs 5 --data ../shared/data/cifar10_sample.npz \\
      --accuracies ../shared/data/nb201_accuracies.csv
  {PROG} score 0 42 {ARCH_EXAMPLE}
  {PROG} scan --indices 0:15625 --db scores.sqlite --dedup --out scores.csv
  {PROG} db scores.sqlite
  {PROG} arch 1462
  {PROG} info --json

Without --data, scores use Gaussian N(0, 1) random inputs (said in the output).
Run '{PROG} COMMAND --help' for the options of a command.

{EXIT_CODES_HELP}"""

SUB_EPILOGS = {
    "search": f"""\
examples:
  {PROG} search --n-samples 10 --runs 5
  {PROG} search --n-samples 100 --runs 10 --data ../shared/data/cifar10_sample.npz \\
      --accuracies ../shared/data/nb201_accuracies.csv --json > search.json
  {PROG} search --method hook_logdet --batch-size 128 --device auto

Each run draws N architectures uniformly (with replacement), scores them and keeps the best
(NaN scores are never chosen). With --accuracies the chosen architectures' NB201 val/test
accuracies are shown (CIFAR-10, CIFAR-100, ImageNet16-120).

{EXIT_CODES_HELP}""",
    "score": f"""\
examples:
  {PROG} score 0 1 2
  {PROG} score {ARCH_EXAMPLE}
  {PROG} score 1462 --method hook_logdet --data ../shared/data/cifar10_sample.npz --json

ARCH is a benchmark index (0..15624) or an official arch string (quote it: it contains '|').
A given configuration gives the same score for an index as 'scan' does (the batch and the
weights depend only on the configuration and the index).

{EXIT_CODES_HELP}""",
    "scan": f"""\
examples:
  {PROG} scan --indices 0:15625 --db scores.sqlite
  {PROG} scan --indices 0:1000 --db scores.sqlite --method hook_logdet --out hook.jsonl
  {PROG} scan --db scores.sqlite --dedup --data ../shared/data/cifar10_sample.npz --out all.csv
  {PROG} scan --indices 0:15625 --db scores.sqlite --ray          # a local Ray instance, all cores
  {PROG} scan --indices 0:15625 --db scores.sqlite --ray auto     # join the cluster 'ray start' runs

Every result is committed to the SQLite database (table 'scores', WAL journal) as soon as it
is computed. If the scan is killed, run the same command again: it skips what the database
already holds for this configuration and never writes a row twice. --dedup scores one
architecture per isomorphism class (6,466 for the whole space) and gives the other members
its score, flagged in the 'representative' column / field. In CSV, non-finite scores are
written 'nan' / '-inf'; in JSON as the strings "nan" / "-inf". Rows are keyed by the
configuration (method, data, dataset, batch size, augmentation, fixed batch, seed, ReLU rule,
engine, device type, and dtype when float64): scores of another engine, device type or dtype
are kept apart. Several scan processes may share one database (each takes the write lock
for one transaction per architecture); give them disjoint --indices. SIGTERM stops the
scan cleanly (exit 143); 'nwot-fast db PATH' shows what a database holds. With --ray the
chunks are scored on Ray workers and this process alone writes the database, with the same
rows; killed and run again, it sends only what the database lacks.

{EXIT_CODES_HELP}""",
    "evaluate": f"""\
examples:
  {PROG} evaluate --n-archs 1000 --method hook_logdet --data ../shared/data/cifar10_sample.npz \\
      --accuracies ../shared/data/nb201_accuracies.csv --db scan.sqlite --scores-out s.csv
  {PROG} evaluate --scores-in s.csv --method hook_logdet --accuracies nb201_accuracies.csv \\
      --search-table 10,100 --runs 500 --json

Kendall tau and Spearman rho against the NB201 val and test accuracies; NaN and -inf scores are
counted and left out. With --scores-in nothing is scored: the scoring options other than
--method and --seed are refused; --method picks that method's rows (needed for a file holding
several methods; without it, the file's own method).

{EXIT_CODES_HELP}""",
    "report": f"""\
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

{EXIT_CODES_HELP}""",
    "tables": f"""\
examples:
  {PROG} tables list
  {PROG} tables show hook_logdet.float32
  {PROG} tables verify --data cifar-10-batches-py --sample 20
  {PROG} evaluate --table hook_logdet.float32 --accuracies nb201_accuracies.csv --search-table 10,100
  {PROG} tables build --db jacob_cov.f32.db --data first128.npz --out DIR --commit GIT_COMMIT --threads 1

Whole-space NAS-Bench-201 score tables shipped with the package, each with its provenance
(scan code commit, torch, CPU, data fingerprint, batch, seed, dtype, dates, wall time, the
command that reproduces it). 'verify' recomputes random rows on this machine from the first
128 CIFAR-10 training images of --data (a CIFAR-10 batch directory or an .npz; checked against
the table's fingerprint): float64 rows must agree to 1e-9 relative, float32 rows keep the
precision contract of docs/PRECISION.md. It exits 1 when a table disagrees or its scores no
longer match their record.

{EXIT_CODES_HELP}""",
    "db": f"""\
examples:
  {PROG} db scores.sqlite
  {PROG} db scores.sqlite --json

Lists every configuration stored (method, data, batch size, seed, config hash) with how many
architectures are done, how many were filled from an isomorphic representative, and the
NaN / -inf counts. Opens the database read-only: safe while a scan is writing to it.

{EXIT_CODES_HELP}""",
    "info": f"""\
examples:
  {PROG} info
  {PROG} info --json
  {PROG} info --build        # compile the operators now if this install has none (exit 3 if it cannot)

{EXIT_CODES_HELP}""",
    "arch": f"""\
examples:
  {PROG} arch 0
  {PROG} arch {ARCH_EXAMPLE} --json

Shows the index and string of each architecture, its isomorphism-canonical form and class
representative, the live edges (on a path from input to output), and whether its output is
constant (jacob_cov then gives NaN) or every ReLU sees only zeros (hook_logdet gives -inf).

{EXIT_CODES_HELP}""",
}

class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# output helpers


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(jsonable(obj), indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def _fmt_score(s: float) -> str:
    return repr(s) if not math.isfinite(s) else f"{s:.6f}"


def _progress(args, total: int, desc: str):
    from .progress import Progress

    enabled = None if not getattr(args, "quiet", False) else False
    return Progress(total, desc=desc, enabled=enabled)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# argument types: every value checked at parse time, with a message naming the option

# The counts and seeds: nwot_fast.args, the checks the Python API makes too.
_seed_arg = SEED.parse


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds in 0..86400, got {text!r}")
    return value


def _path_arg(text: str) -> str:
    """A file or directory name: not empty, and valid UTF-8 (the database and the output files
    store paths as text; a name that is not UTF-8 could not be written or shown)."""
    from .paths import check_utf8

    if not text:
        raise argparse.ArgumentTypeError("empty path")
    try:
        return check_utf8(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _path_type(role: str):
    """An argparse type for a path the command uses as ``role``: ``input`` (read),
    ``database`` (read, and written by scan), ``output`` (written) or ``prefix`` (PREFIX.md and
    PREFIX.csv written). Before any work main refuses an output that is the same file as an
    input, the database or another output (_check_paths), for every option declared so."""
    def parse(text: str) -> str:
        return _path_arg(text)

    parse.role = role
    parse.__name__ = "path"  # argparse names the type in its messages
    return parse


_input_path, _database_path, _output_path, _prefix_path = map(_path_type, ("input", "database", "output", "prefix"))


# ---------------------------------------------------------------------------------------------
# shared option groups


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (and nothing else there)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no informational messages")


def _add_score_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring")
    g.add_argument("--method", default="jacob_cov", choices=METHODS,
                   help="score: jacob_cov (2020, default) or hook_logdet (2021)")
    g.add_argument("--data", metavar="PATH", type=_input_path,
                   help="images: CIFAR-10/100 or ImageNet16-120 batch directory, or an .npz file with x, y "
                        "(default: Gaussian N(0, 1) random inputs)")
    g.add_argument("--dataset", metavar="NAME",
                   help="cifar10, cifar100 or ImageNet16-120 (default: inferred from --data)")
    g.add_argument("--batch-size", type=BATCH_SIZE.parse, metavar="B",
                   help=f"images per batch, {BATCH_SIZE.low}..{BATCH_SIZE.high} (default: 256 for jacob_cov, 128 for hook_logdet)")
    g.add_argument("--seed", type=_seed_arg, default=0,
                   help="seed of weights and batches, 0..2**63-1 (default: 0)")
    g.add_argument("--device", default="cpu", metavar="{cpu,cuda,auto}",
                   help="cpu (default), cuda, cuda:N, or auto (CUDA when available)")
    g.add_argument("--engine", default="fast", choices=ENGINES,
                   help="fast (default: execution plans, compiled operators) or reference (the pure-PyTorch oracle)")
    g.add_argument("--relu-match", default="name", choices=RELU_MATCHES,
                   help="hook_logdet: hook modules whose class name contains ReLU (name, the authors' rule) "
                        "or only nn.ReLU (exact)")
    g.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="precision of the network pass and the score: float32 (default, the authors') or "
                        "float64 (the machine-independent truth, docs/PRECISION.md)")
    aug = g.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="random flip + padded crop (default for jacob_cov with --data)")
    aug.add_argument("--no-augment", dest="augment", action="store_false", help="no augmentation")
    fixed = g.add_mutually_exclusive_group()
    fixed.add_argument("--fixed-batch", dest="fixed_batch", action="store_true", default=None,
                       help="one batch for every architecture (default for hook_logdet)")
    fixed.add_argument("--batch-per-arch", dest="fixed_batch", action="store_false",
                       help="a new batch for every architecture (default for jacob_cov)")


def _config_from(args):
    """The ScoreConfig of the scoring options (validated: a typo in --dataset is an error)."""
    from .scoring import config_from_namespace

    return config_from_namespace(args)


def _check_device(args) -> None:
    """Fail early, with exit code 3, when CUDA is asked for and absent (``args``: the parsed
    options or a ScoreConfig, anything with ``.device``)."""
    from ._common import resolve_device

    try:
        resolve_device(args.device)
    except RuntimeError as e:
        raise ResourceError(str(e)) from e


# ---------------------------------------------------------------------------------------------
# arch parsing


def parse_arch_argument(text: str):
    """An index (``"42"``) or an official arch string -> ``(index, Arch)``."""
    from .nb201 import NUM_ARCHS, Arch, arch_at, index_of

    t = text.strip()
    if t.lstrip("+-").isdigit():
        i = int(t)
        if not 0 <= i < NUM_ARCHS:
            raise ValueError(f"benchmark index {t!r} out of range; allowed 0..{NUM_ARCHS - 1}")
        return i, arch_at(i)
    if "|" not in t:
        raise ValueError(
            f"{text!r} is neither a benchmark index (0..{NUM_ARCHS - 1}) nor an arch string like "
            "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| (ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3)"
        )
    arch = Arch.from_str(t)
    return index_of(arch), arch


# ---------------------------------------------------------------------------------------------
# commands


def cmd_score(args) -> int:
    from .scoring import ArchScorer

    targets = [parse_arch_argument(a) for a in args.archs]
    config = _config_from(args)
    _check_device(args)
    scorer = ArchScorer(config)
    results = []
    with _progress(args, len(targets), "scoring") as bar:
        for n, (index, _) in enumerate(targets, start=1):
            results.append(scorer.score_index(index))
            bar(n)
    data = scorer.describe_data()
    if args.json:
        _print_json(
            {
                "data": data,
                "config": scorer.config.identity(),
                "config_hash": config.config_hash(),
                "engine": config.engine,
                "device": config.device,
                "results": [r.to_dict() for r in results],
            }
        )
        return EXIT_OK
    print(f"inputs: {data}")
    print(f"score: {scorer.config.method}, engine {config.engine}, device {config.device}")
    rows = [[str(r.index), _fmt_score(r.score), f"{r.seconds:.3f}", str(r.arch)] for r in results]
    print(_table(["index", "score", "seconds", "arch"], rows))
    return EXIT_OK


def cmd_scan(args) -> int:
    from .scan import ScoreDB, check_output_path, parse_indices, scan

    indices = parse_indices(args.indices)  # bad ranges fail before anything is opened
    if args.out is not None:
        check_output_path(args.out, rows=len(indices))
    config = _config_from(args)
    _check_device(args)
    bar = _progress(args, 0, "scoring")
    try:
        result = scan(indices, config=config, dedup=args.dedup, db=args.db, progress=bar,
                      db_timeout=args.db_timeout, ray=args.ray)
    except (KeyboardInterrupt, Terminated) as e:  # raised by main's signal handlers
        bar.close()
        saved = "?"
        try:
            with ScoreDB(args.db, readonly=True, timeout=1.0) as store:
                saved = str(store.count(config.config_hash()))
        except Exception:  # the count is a courtesy; the interruption is what we report
            pass
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(
            f"{PROG}: {what}; {saved} results for this configuration are saved in {args.db}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    finally:
        bar.close()
    if args.out is not None:
        result.write(args.out)
    if args.json:
        _print_json(result.to_dict(records=True))
        return EXIT_OK
    print(result.summary())
    if args.out is not None:
        print(f"written: {args.out}")
    top = result.top(5)
    print("best architectures:")
    print(_table(["index", "score", "arch"], [[str(r["arch_index"]), _fmt_score(r["score"]), r["arch"]] for r in top]))
    return EXIT_OK


def cmd_db(args) -> int:
    from ._common import NUM_ARCHS
    from .store import ScoreDB

    with ScoreDB(args.db, readonly=True, timeout=args.db_timeout) as store:
        configs = store.configurations()
    # Opening ran PRAGMA quick_check: a damaged file is an error (exit 2) that names the damage.
    if args.json:
        _print_json({"db": args.db, "integrity": "ok", "configurations": configs})
        return EXIT_OK
    if not configs:
        print(f"{args.db}: no scores yet (integrity: ok, PRAGMA quick_check)")
        return EXIT_OK
    print(f"{args.db}: {len(configs)} configuration(s) (integrity: ok, PRAGMA quick_check)")
    for c in configs:
        cfg = c["config"]
        data = cfg.get("data") or "Gaussian inputs"
        if cfg.get("data"):
            # The key is the images' fingerprint; the paths they were read from are descriptions.
            # Rows of versions before 0.1 keyed the data by its path: their "data" is that path.
            paths = [p for p in c.get("data_paths", []) if p and p != data]
            data = f"{data}" + (f" read from {', '.join(paths)}" if paths else "")
        print(
            f"\n{c['config_hash']}  {cfg.get('method')}  batch {cfg.get('batch_size')}  seed {cfg.get('seed')}  "
            f"{cfg.get('dtype', 'float32')}  data {data}" + (f" ({cfg['dataset']})" if cfg.get("dataset") else "")
        )
        print(
            f"  {c['rows']}/{NUM_ARCHS} architectures ({c['reused']} reused from a representative), "
            f"{c['nan']} NaN, {c['neg_inf']} -inf; {c['scoring_seconds']:.0f} s of scoring"
        )
        print(f"  written {c['first']} .. {c['last']} by nwot_fast {', '.join(c['versions'])} "
              f"(engine {', '.join(c['engines'])})")
    return EXIT_OK


def cmd_search(args) -> int:
    from .search import search

    config = _config_from(args)  # validates names and sizes before anything is loaded
    _check_device(args)
    bar = _progress(args, args.n_samples * args.runs if args.n_samples > 0 and args.runs > 0 else 0, "searching")
    try:
        result = search(n_samples=args.n_samples, runs=args.runs, accuracies=args.accuracies, config=config,
                        progress=bar)
    finally:
        bar.close()
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.format_table())
    return EXIT_OK


def cmd_info(args) -> int:
    import platform
    import sqlite3

    import numpy
    import torch

    from ._ext import backend_info

    cuda = torch.cuda.is_available()
    info = {
        "nwot_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "numpy": numpy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "cpu_threads": torch.get_num_threads(),
        "backend": backend_info(build=args.build),
        "engines": list(ENGINES),
        "dtypes": list(DTYPES),
    }
    code = EXIT_RESOURCE if args.build and not info["backend"]["compiled"] else EXIT_OK
    if args.json:
        _print_json(info)
        return code
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, dict):
            print(f"{k.ljust(width)}  " + ", ".join(f"{a}={b}" for a, b in v.items()))
        elif isinstance(v, list):
            print(f"{k.ljust(width)}  {', '.join(map(str, v)) or '-'}")
        else:
            print(f"{k.ljust(width)}  {v}")
    return code


def cmd_arch(args) -> int:
    from . import nb201

    records = []
    for text in args.archs:
        index, arch = parse_arch_argument(text)
        live = nb201.live_edges(arch)
        records.append(
            {
                "arch_index": index,
                "arch": str(arch),
                "canonical": nb201.canonical_str(arch),
                "representative_index": nb201.representative_index(arch),
                "isomorphism_class_size": nb201.class_size(arch),
                "functional": nb201.functional_str(arch),
                "live_edges": [
                    f"{j}<-{i} {name}" for (i, j), name, ok in zip(nb201.EDGES, arch.op_names, live) if ok
                ],
                "constant_output": nb201.is_constant_output(arch),
                "relu_sees_only_zeros": nb201.relu_sees_only_zeros(arch),
            }
        )
    if args.json:
        _print_json(records if len(records) > 1 else records[0])
        return EXIT_OK
    for n, r in enumerate(records):
        if n:
            print()
        notes = []
        if r["constant_output"]:
            notes.append("output does not depend on the input: jacob_cov gives NaN")
        if r["relu_sees_only_zeros"]:
            notes.append("every ReLU sees only zeros: hook_logdet gives -inf")
        rows = [
            ("index", str(r["arch_index"])),
            ("arch", r["arch"]),
            ("canonical", r["canonical"]),
            ("representative", f"{r['representative_index']} (class of {r['isomorphism_class_size']})"),
            ("functional", r["functional"]),
            ("live edges", ", ".join(r["live_edges"]) or "none"),
            ("constant output", "yes" if r["constant_output"] else "no"),
        ]
        if notes:
            rows.append(("note", "; ".join(notes)))
        for k, v in rows:
            print(f"{k:<16}{v}")
    return EXIT_OK


def _int_list(text: str) -> List[int]:
    try:
        out = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 10,100, got {text!r}") from None
    if not out or min(out) < 1 or max(out) > NUM_ARCHS:
        raise argparse.ArgumentTypeError(f"expected integers in 1..{NUM_ARCHS} like 10,100, got {text!r}")
    return out


def cmd_evaluate(args) -> int:
    from .accuracies import as_table
    from .evaluate import evaluate
    from .searchtable import search_table

    from .scorefile import check_output_path
    from .searchtable import check_table_prefix

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
    config = None if scores_in is not None else _config_from(args)
    if config is not None:
        _check_device(config)  # its device: --device or the default
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
        _print_json(out)
    else:
        print(result.format_table())
        if table is not None:
            print()
            print(table.format_text())
    return EXIT_OK


def _scores_arg(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected METHOD=FILE (METHOD one of {', '.join(METHODS)}), got {text!r}")
    method, path = text.split("=", 1)
    if method not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    return method, _path_arg(path)


_scores_arg.role = "input"  # METHOD=FILE: FILE is read (see _path_type)


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
    from .tables import load

    table = load(name)
    if method is not None and method != table.method:
        raise ValueError(f"table {table.name} holds {table.method} scores, but --method {method} was given")
    if not table.complete:
        cov = table.provenance["coverage"]
        print(f"note: table {table.name} is PARTIAL: {cov['covered']} of {cov['expected']} rows", file=sys.stderr)
    return table.as_score_file()


def cmd_report(args) -> int:
    from ._common import check_input_file, check_output_file
    from .figures import read_published_points
    from .report import build_report

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
        _print_json(summary)
    else:
        print(f"report written to {summary['report']}")
        for name, paths in summary["figures"].items():
            print(f"  {name}: {', '.join(paths)}")
    return EXIT_OK


def _add_ray_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="score on a Ray cluster; this process alone writes --db. Without ADDRESS: a local Ray "
                        "instance, one single-threaded worker per core; auto, HOST:PORT or ray://HOST:10001: join "
                        f"that cluster (needs Ray: {RAY_INSTALL_HINT})")


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
    p.add_argument("--accuracies", metavar="PATH", required=True, type=_input_path,
                   help="NB201 accuracies: nb201_accuracies.csv or the official .pth")
    p.add_argument("--db", metavar="PATH", type=_database_path, help="SQLite scan database: results are kept as they come and a "
                   "rerun resumes")
    _add_ray_option(p)  # Ray hook (issue 12)
    p.add_argument("--scores-out", metavar="FILE", type=_output_path, help="write per-architecture scores (.csv/.jsonl/.json)")
    p.add_argument("--scores-in", metavar="FILE", type=_input_path, help="reuse scores from FILE instead of scoring")
    p.add_argument("--table", metavar="NAME|PATH",
                   help="read the scores of a score table instead of scoring: a shipped table's name (nwot-fast "
                        "tables list) or the path of a table's .csv/.json; its score method is used")
    p.add_argument("--search-table", type=_int_list, metavar="N,N,...",
                   help="also the search table (mode 'table', over the evaluated architectures) for these N")
    p.add_argument("--runs", type=RUNS.parse, default=500, help="runs per N for --search-table (default 500)")
    p.add_argument("--table-out", metavar="PREFIX", type=_prefix_path, help="write the search table to PREFIX.md and PREFIX.csv")
    _add_score_options(p)
    # None = not given: scoring takes ScoreConfig's defaults (the same as the other commands'),
    # --scores-in refuses what would not be used, and without --method it reads the file's method.
    p.set_defaults(method=None, **{dest: None for dest, _ in _SCORING_ONLY})
    _add_output_options(p)


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", type=_scores_arg, action="append", metavar="METHOD=FILE",
                   help="a scores file of one method (repeat for several methods)")
    p.add_argument("--table", action="append", metavar="NAME|PATH",
                   help="a score table in place of a scores file: a shipped table's name or a table's .csv/.json "
                        "path (repeat for each score)")
    p.add_argument("--accuracies", required=True, metavar="PATH", type=_input_path, help="NB201 accuracies (CSV or .pth)")
    p.add_argument("--out", default="report.md", metavar="FILE.md", type=_output_path,
                   help="Markdown report, a .md file (default report.md)")
    # the figures folder: build_report checks the files it writes there against the inputs
    p.add_argument("--figures-dir", metavar="DIR", type=_path_arg, help="figures and CSV tables (default: figures/ beside --out)")
    p.add_argument("--data", metavar="PATH", type=_input_path, help="images for Figure 1 (left out without)")
    p.add_argument("--n-archs", type=N_ARCHS.parse, metavar="K", help="use only the seeded sample of K from each file")
    p.add_argument("--sample-seed", type=_seed_arg, default=0, help="seed of that sample (default 0)")
    p.add_argument("--search-ns", type=_int_list, default=[10, 25, 50, 75, 100], metavar="N,N,...",
                   help="sample sizes of the search table (default 10,25,50,75,100)")
    p.add_argument("--runs", type=RUNS.parse, default=500, help="runs per N (default 500)")
    p.add_argument("--seed", type=_seed_arg, default=0, help="seed of the search runs and Figure 1 (default 0)")
    p.add_argument("--published", metavar="CSV", type=_input_path,
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
    _add_output_options(p)


# ---------------------------------------------------------------------------------------------
# score tables (issue 21)


def _tables_dir(args):
    return getattr(args, "dir", None)


def cmd_tables_list(args) -> int:
    from .tables import SHIPPED_DIR, list_tables

    directory = _tables_dir(args) or SHIPPED_DIR
    items = list_tables(directory)
    if args.json:
        _print_json({"directory": directory, "tables": items})
        return EXIT_OK
    if not items:
        print(f"no score tables in {directory}")
        return EXIT_OK
    rows = [[t["name"], t["method"], t["dtype"], str(t["rows"]),
             "complete" if t["complete"] else f"PARTIAL {t['covered']}/{t['expected']}"] for t in items]
    print(f"score tables in {directory}:")
    print(_table(["name", "method", "dtype", "rows", "coverage"], rows))
    return EXIT_OK


def cmd_tables_show(args) -> int:
    from .tables import float32_error, list_tables, load, summary_counts

    table = load(args.table, _tables_dir(args))
    counts = summary_counts(table)
    truth = None
    if table.dtype == "float32":
        directory = os.path.dirname(table.json_path)
        for t in list_tables(directory):
            if t["method"] == table.method and t["dtype"] == "float64":
                truth = float32_error(table, load(t["path"]))
                break
    if args.json:
        _print_json({"name": table.name, "csv": table.csv_path, "counts": counts, "provenance": table.provenance,
                     "float32_error_vs_float64_table": truth})
        return EXIT_OK
    p, scan = table.provenance, table.provenance["scan"]
    proto, data = p["protocol"], p["protocol"]["data"]
    lines = [
        ("table", f"{table.name}: {table.csv_path}"),
        ("scores", f"{p['method']} in {p['dtype']}; {len(table)} rows: {counts['finite']} finite, {counts['nan']} NaN, "
                   f"{counts['neg_inf']} -inf"),
        ("coverage", ("complete" if table.complete else "PARTIAL") + f": {p['coverage']['covered']} of "
                     f"{p['coverage']['expected']} rows ({p['coverage']['selection'].get('rule') or p['coverage']['selection'].get('spec')})"),
        ("data", f"{data['description']}; {data['fingerprint']}"),
        ("protocol", f"batch {proto['batch_size']}, {'fixed batch' if proto['fixed_batch'] else 'batch per arch'}, "
                     f"augment {proto['augment']}, seed {proto['seed']}, relu {proto['relu_match']}, "
                     f"engine {proto['engine']}, {proto['device_type']}"),
        ("scanned by", f"nwot_fast {scan['nwot_fast_version']} at commit {scan['git_commit']}, torch {scan['torch']}, "
                       f"{scan['threads'] if scan['threads'] is not None else '?'} thread(s), {scan['cpu']}"),
        ("when", f"{scan['started']} .. {scan['finished']} (wall {scan['wall_seconds']} s, scoring "
                 f"{scan['scoring_seconds']:.0f} s)"),
        ("command", scan["command"]),
    ]
    deg = p.get("degenerate")
    if deg:
        lines.append(("degenerate", f"{deg['scored']} rows are {deg['value']}; {deg['cells']} cells have "
                                    f"'{deg['structure']}'; {deg['both']} are both"))
    if truth is not None:
        lines.append(("float32 error", f"on the {truth['rows']} rows of the float64 table: max {truth['max_rel_error']:.2e}, "
                                       f"median {truth['median_rel_error']:.2e} relative ({truth['finite']} finite); "
                                       f"special values: {truth['special_agree']} agree, {truth['special_disagree']} differ"))
    for k, v in lines:
        print(f"{k:<14}{v}")
    return EXIT_OK


def cmd_tables_verify(args) -> int:
    from .tables import SHIPPED_DIR, TableIntegrityError, list_tables, load, verify

    directory = _tables_dir(args) or SHIPPED_DIR
    names = args.tables or [t["path"] for t in list_tables(directory)]
    if not names:
        raise FileNotFoundError(f"no score tables in {directory} to verify")
    results, failed = [], 0
    for name in names:
        try:
            table = load(name, directory)
        except TableIntegrityError as e:
            failed += 1
            results.append({"table": name, "passed": False, "problems": [str(e)]})
            if not args.json:
                print(f"table {name}: FAIL: {one_line(e)}")
            continue
        with _progress(args, 0, f"verifying {table.name}") as bar:
            v = verify(table, args.data, sample=args.sample, sample_seed=args.sample_seed,
                       progress=lambda done, total: bar(done, total))
        failed += not v.passed
        results.append(v.to_dict())
        if not args.json:
            print(v.format_text())
            print()
    if args.json:
        _print_json({"passed": failed == 0, "tables": results})
    elif len(names) > 1:
        print(f"{len(names) - failed} of {len(names)} tables agree" + ("" if not failed else f"; {failed} FAIL"))
    return EXIT_OK if failed == 0 else EXIT_INTERNAL


def cmd_tables_build(args) -> int:
    from .tables import build

    table = build(args.db, data=args.data, out_dir=args.out, commit=args.commit, method=args.method,
                  dtype=args.dtype, config_hash=args.config_hash, indices=args.indices, random=args.random,
                  random_seed=args.random_seed, allow_partial=args.allow_partial, name=args.name,
                  threads=args.threads, command=args.command, timeout=args.db_timeout)
    if args.json:
        _print_json({"csv": table.csv_path, "json": table.json_path, "provenance": table.provenance})
    else:
        print(table.describe())
        print(f"written: {table.csv_path}, {table.json_path}")
    return EXIT_OK


def _add_tables_parser(sub, add) -> None:
    p = add("tables", "list, show, verify and build the whole-space NAS-Bench-201 score tables", None)
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions")
    actions.required = True

    def action(name, help_text, handler):
        q = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                               epilog=SUB_EPILOGS["tables"], formatter_class=argparse.RawDescriptionHelpFormatter)
        q.set_defaults(handler=handler)
        return q

    def dir_option(q):
        q.add_argument("--dir", metavar="DIR", type=_path_arg,
                       help="a directory of tables (default: the tables shipped with the package)")

    q = action("list", "list the score tables", cmd_tables_list)
    dir_option(q)
    _add_output_options(q)
    q = action("show", "show a table's provenance, counts and float32 error", cmd_tables_show)
    q.add_argument("table", metavar="NAME|PATH", type=_path_arg, help="table name or path of its .csv/.json")
    dir_option(q)
    _add_output_options(q)
    q = action("verify", "recompute random rows of tables on this machine and compare", cmd_tables_verify)
    q.add_argument("tables", nargs="*", metavar="NAME|PATH", type=_path_arg, help="tables (default: all in --dir)")
    q.add_argument("--data", required=True, metavar="PATH", type=_path_arg,
                   help="CIFAR-10 images: the python batch directory or an .npz whose first 128 training images are "
                        "the table's")
    q.add_argument("--sample", type=N_ARCHS.parse, default=5, metavar="K", help="rows per table (default 5)")
    q.add_argument("--sample-seed", type=_seed_arg, metavar="S",
                   help="which rows (default: a fresh seed, printed, so that the same rows can be checked again)")
    dir_option(q)
    _add_output_options(q)
    q = action("build", "export a table from a scan database, with its provenance", cmd_tables_build)
    q.add_argument("--db", required=True, metavar="PATH", type=_path_arg, help="scan database (opened read-only)")
    q.add_argument("--data", required=True, metavar="PATH", type=_path_arg, help="the image file the scan read")
    q.add_argument("--out", required=True, metavar="DIR", type=_path_arg, help="directory for NAME.csv and NAME.json")
    q.add_argument("--commit", required=True, metavar="HASH", help="git commit of the code that ran the scan")
    q.add_argument("--method", choices=METHODS, help="which configuration (when the database holds several)")
    q.add_argument("--dtype", choices=DTYPES, help="which configuration (when the database holds several)")
    q.add_argument("--config-hash", metavar="HASH", help="which configuration (see nwot-fast db)")
    rows = q.add_mutually_exclusive_group()
    rows.add_argument("--indices", metavar="SPEC", help="the rows the table is for (default 0:15625)")
    rows.add_argument("--random", type=N_ARCHS.parse, metavar="K",
                      help="the rows: sorted(numpy.random.default_rng(RANDOM_SEED).choice(15625, K, replace=False))")
    q.add_argument("--random-seed", type=_seed_arg, default=0, metavar="S", help="seed of --random (default 0)")
    q.add_argument("--allow-partial", action="store_true",
                   help="export even if rows are missing; the record says PARTIAL and how many rows it covers")
    q.add_argument("--name", metavar="NAME", help="table name (default METHOD.DTYPE)")
    q.add_argument("--threads", type=IntRange(1, 4096).parse, metavar="N", help="torch threads of the scan (recorded)")
    q.add_argument("--command", metavar="TEXT", help="the reproducing command to record (default: built from the "
                   "configuration)")
    q.add_argument("--db-timeout", type=_seconds_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for a locked database (default: 30)")
    _add_output_options(q)


# ---------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (imports nothing heavy: the commands import what they use)."""
    parser = _Parser(
        prog=PROG,
        description="NASWOT (Neural Architecture Search without Training) on NAS-Bench-201: "
        "training-free scores, random search, resumable whole-space scans.",
        epilog=TOP_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    def add(name, help_text, handler):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           epilog=SUB_EPILOGS.get(name, EXIT_CODES_HELP), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler, command_parser=p)
        return p

    p = add("search", "random search: draw N architectures per run, keep the best score", cmd_search)
    p.add_argument("-n", "--n-samples", type=N_SAMPLES.parse, default=10, metavar="N",
                   help=f"architectures per run, 1..{N_SAMPLES.high} (default: 10)")
    p.add_argument("-r", "--runs", type=RUNS.parse, default=1, metavar="R",
                   help=f"independent runs, 1..{RUNS.high} (default: 1)")
    p.add_argument("--accuracies", metavar="PATH", type=_input_path,
                   help="NB201 accuracies: the official .pth or a CSV like nb201_accuracies.csv")
    _add_score_options(p)
    _add_output_options(p)

    p = add("score", "score architectures given by benchmark index or arch string", cmd_score)
    p.add_argument("archs", nargs="+", metavar="ARCH", help="benchmark index (0..15624) or official arch string")
    _add_score_options(p)
    _add_output_options(p)

    p = add("scan", "score a range of the space into a resumable SQLite database", cmd_scan)
    p.add_argument("--indices", default="0:15625", metavar="START:STOP",
                   help="benchmark indices: START:STOP (STOP exclusive), START:STOP:STEP, single indices, "
                        "comma-separated (default: 0:15625, the whole space)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="PATH", type=_database_path,
                   help=f"SQLite database the results go to and resume from (default: ./{DEFAULT_DB})")
    p.add_argument("--dedup", action="store_true",
                   help="score one architecture per isomorphism class; other members get its score (flagged)")
    p.add_argument("--out", metavar="FILE", type=_output_path, help="also write the results to FILE.csv, FILE.jsonl or FILE.json (the score-file format)")
    p.add_argument("--db-timeout", type=_seconds_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for a database locked by another process (default: 30)")
    _add_ray_option(p)  # Ray hook (issue 12)
    _add_score_options(p)
    _add_output_options(p)

    p = add("evaluate", "score architectures and correlate the scores with NB201 accuracies", cmd_evaluate)
    _add_evaluate_options(p)
    p.set_defaults(method=None)  # jacob_cov unless --table names another (cmd_evaluate decides)

    p = add("report", "assemble tables and figures of an evaluation into one Markdown report", cmd_report)
    _add_report_options(p)

    _add_tables_parser(sub, add)

    p = add("db", "summarise a scan database: configurations, progress, NaN / -inf counts", cmd_db)
    p.add_argument("db", metavar="PATH", type=_database_path, help="SQLite database written by 'nwot-fast scan'")
    p.add_argument("--db-timeout", type=_seconds_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for a database locked by another process (default: 30)")
    _add_output_options(p)

    p = add("info", "show versions, the compiled backend and CUDA availability", cmd_info)
    p.add_argument("--build", action="store_true",
                   help="compile the operators now when no build is installed or cached (otherwise on first use)")
    _add_output_options(p)

    p = add("arch", "convert between index and arch string; canonical form, live edges, constant output", cmd_arch)
    p.add_argument("archs", nargs="+", metavar="ARCH", help="benchmark index (0..15624) or official arch string")
    _add_output_options(p)
    return parser


def _fail(args, code: int, message: str) -> int:
    line = f"{PROG}: error: {message}\n"
    # A name the stream cannot encode (not valid UTF-8, or beyond its encoding) is shown escaped.
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    line = line.encode(encoding, "backslashreplace").decode(encoding, "replace")
    with contextlib.suppress(OSError):  # stderr itself may be what failed
        sys.stderr.write(line)
    if args is not None and getattr(args, "json", False):
        with contextlib.suppress(OSError):
            _print_json({"error": message, "exit_code": code})
    return code


def _quiet_stdout() -> None:
    """After stdout failed (disk full, closed), point it at /dev/null so that the interpreter's
    final flush does not print a second error."""
    with contextlib.suppress(OSError):
        sys.stdout = open(os.devnull, "w")


def _check_paths(args) -> None:
    """Before any work: no output of the command is the same file as one of its inputs, its
    database or another output (the roles are those its options' types declare, _path_type)."""
    from .paths import check_distinct
    from .searchtable import TABLE_ENDINGS

    parser = getattr(args, "command_parser", None)
    outputs, inputs, databases = [], [], []
    for action in parser._actions if parser is not None else ():
        role = getattr(action.type, "role", None)
        value = getattr(args, action.dest, None)
        if role is None or value is None:
            continue
        label = action.option_strings[-1] if action.option_strings else action.dest
        for v in value if isinstance(value, list) else [value]:
            v = v[1] if isinstance(v, tuple) else v  # --scores METHOD=FILE
            if role == "output":
                outputs.append((label, v))
            elif role == "prefix":
                outputs += [(label, v + ending) for ending in TABLE_ENDINGS]
            elif role == "database":
                databases.append((label, v))
            else:
                inputs.append((label, v))
    check_distinct(outputs, inputs, databases)


def _run(args) -> int:
    """The command, with every exception a user can cause mapped to its exit code
    (:func:`nwot_fast.errors.classify`); anything else is a bug and propagates."""
    import errno

    from .errors import classify
    from .process import StreamError, guarded_streams, stream_is_closed

    stdout = sys.stdout
    quiet = False
    with guarded_streams():
        try:
            if stream_is_closed(stdout):  # every command writes its results there: refuse before any work
                raise StreamError(errno.EBADF, "cannot write the results to standard output: it is closed")
            _check_paths(args)
            code = int(args.handler(args) or EXIT_OK)
            sys.stdout.flush()  # a full disk or a closed pipe on stdout shows here, not at exit
        except (Exception, KeyboardInterrupt) as e:
            mapped = classify(e)
            if mapped is None:
                raise
            code, message = mapped
            quiet = isinstance(e, (StreamError, BrokenPipeError)) or (
                isinstance(e, OSError) and code == EXIT_RESOURCE and not e.filename)
            if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
                with contextlib.suppress(OSError):
                    print(f"{PROG}: {message}", file=sys.stderr)
            elif message is not None:
                _fail(args, code, message)
    if quiet:
        _quiet_stdout()
    return code


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (see ``nwot-fast --help``). The first SIGINT
    or SIGTERM stops the command (exit 130 / 143) and later ones are ignored while it cleans up;
    called as the program (``argv`` None) they stay ignored through the interpreter's exit."""
    from .process import stop_on_signals

    entry = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help / --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    with stop_on_signals(keep_ignoring=entry):
        return _run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
