"""The ``nwot-fast`` command line (also ``python -m nwot_fast``).

Subcommands: ``search``, ``score``, ``scan``, ``db``, ``evaluate``, ``report``, ``info``, ``arch``.
Results go to stdout (a table, or JSON with ``--json`` and nothing else); messages, warnings
and progress bars go to stderr. Exit codes are documented in :data:`EXIT_CODES_HELP`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import signal
import sys
from typing import List, Optional, Sequence

# torch-free, so that `--help` does not import torch
from ._common import DTYPES, ENGINES, METHODS, MODES, NUM_ARCHS, RELU_MATCHES, SEED_MAX, OutputError, __version__, jsonable
from .distributed import INSTALL_HINT as RAY_INSTALL_HINT

PROG = "nwot-fast"
DEFAULT_DB = "nwot-fast-scan.sqlite"

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_RESOURCE = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    internal error (a bug: please report it with the traceback)
  2    usage error or bad input (unknown option, arch string, index, score or dataset name,
       batch size < 2, missing or corrupt data/benchmark file, --ray without Ray installed, ...)
  3    resource problem: CUDA requested but not available, out of memory, scan database
       locked by another process or read-only, no Ray cluster at the --ray address, an
       output (file or stdout) on a full or read-only file system (nothing half-written is left)
  130  interrupted (Ctrl-C); results already written to a scan database are kept
  143  scan stopped by SIGTERM (e.g. a preempted job); results written so far are kept
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
counted and left out. With --scores-in nothing is scored (the scoring options other than
--method and --seed are not used).

{EXIT_CODES_HELP}""",
    "report": f"""\
example:
  {PROG} report --scores jacob_cov=jc.csv --scores hook_logdet=hl.csv \\
      --accuracies ../shared/data/nb201_accuracies.csv --data ../shared/data/cifar10_sample.npz \\
      --search-ns 10,100 --out report.md

Correlations, search tables (table mode) and figures from score files, next to the published
numbers; nothing is rescored except the few networks of Figure 1 (with --data).

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

# Long-running commands print progress; these are the exception kinds that mean bad input.
_BAD_INPUT = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class ResourceError(RuntimeError):
    """A resource the command needs is not there (CUDA, memory)."""


class Terminated(Exception):
    """SIGTERM arrived during a scan (schedulers send it before killing a preempted job)."""


@contextlib.contextmanager
def _sigterm_stops_scan():
    """Turn SIGTERM into :class:`Terminated` so that the scan stops between two database
    transactions and says what is saved (a transaction in flight is rolled back)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, AttributeError):  # not the main thread, or no SIGTERM on this platform
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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

#: Upper bounds of the counts: far above any real use, low enough that a typo (1e20) is an
#: error at once instead of an allocation failure or a run that never ends.
MAX_BATCH = 65536
MAX_SAMPLES = 1_000_000
MAX_RUNS = 1_000_000


def _count(low: int, high: int, what: str = "an integer"):
    """An argparse type: an int in ``low..high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} in {low}..{high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


_seed_arg = _count(0, SEED_MAX, "a seed (an integer)")


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
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"path {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; rename it or use a link "
            "with a UTF-8 name") from None
    return text


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
    g.add_argument("--data", metavar="PATH", type=_path_arg,
                   help="images: CIFAR-10/100 or ImageNet16-120 batch directory, or an .npz file with x, y "
                        "(default: Gaussian N(0, 1) random inputs)")
    g.add_argument("--dataset", metavar="NAME",
                   help="cifar10, cifar100 or ImageNet16-120 (default: inferred from --data)")
    g.add_argument("--batch-size", type=_count(2, MAX_BATCH), metavar="B",
                   help=f"images per batch, 2..{MAX_BATCH} (default: 256 for jacob_cov, 128 for hook_logdet)")
    g.add_argument("--seed", type=_seed_arg, default=0,
                   help="seed of weights and batches, 0..2**63-1 (default: 0)")
    g.add_argument("--device", default="cpu", metavar="{cpu,cuda,auto}",
                   help="cpu (default), cuda, cuda:N, or auto (CUDA when available)")
    g.add_argument("--engine", default="fast", choices=ENGINES,
                   help="fast (default: execution plans, compiled operators) or reference (the pure-PyTorch oracle)")
    g.add_argument("--mode", default="auto", choices=MODES,
                   help="how the fast engine runs: auto (default: multi-arch on CUDA, per-arch on the CPU), per-arch (one plan per architecture) or multi-arch (a chunk of architectures "
                        "per network pass)")
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
    from .config import config_from_namespace

    return config_from_namespace(args)


def _check_device(args) -> None:
    """Fail early, with exit code 3, when CUDA is asked for and absent."""
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
    from .scorer import Scorer

    targets = [parse_arch_argument(a) for a in args.archs]
    config = _config_from(args)
    _check_device(args)
    scorer = Scorer(config)
    results = []
    with _progress(args, len(targets), "scoring") as bar:
        for n, result in enumerate(scorer.score_many(index for index, _ in targets), start=1):
            results.append(result)
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
        check_output_path(args.out)
    config = _config_from(args)
    _check_device(args)
    bar = _progress(args, 0, "scoring")
    try:
        with _sigterm_stops_scan():
            result = scan(indices, config=config, dedup=args.dedup, db=args.db, progress=bar,
                          db_timeout=args.db_timeout, ray=args.ray)
    except (KeyboardInterrupt, Terminated) as e:
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
    if args.json:
        _print_json({"db": args.db, "configurations": configs})
        return EXIT_OK
    if not configs:
        print(f"{args.db}: no scores yet")
        return EXIT_OK
    print(f"{args.db}: {len(configs)} configuration(s)")
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
    config = None if args.scores_in is not None else _config_from(args)
    if config is not None:
        _check_device(args)
        if args.data is None and not args.quiet:
            print("note: no --data given: architectures are scored on Gaussian N(0,1) inputs", file=sys.stderr)
    accuracies = as_table(args.accuracies)
    progress = None if args.quiet or config is None else True
    result = evaluate(n_archs=args.n_archs, all_archs=args.all_archs, indices=args.indices, accuracies=accuracies,
                      scores_out=args.scores_out, scores_in=args.scores_in, db=args.db, progress=progress,
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


def cmd_report(args) -> int:
    from ._common import check_input_file, check_output_file
    from .figures import read_published_points
    from .report import build_report

    check_output_file(args.out, "report", (".md",))  # only Markdown is written
    for _, path in args.scores:
        check_input_file(path, "a scores file")
    scores: dict = {}
    for method, path in args.scores:
        if method in scores:
            raise ValueError(f"--scores given twice for {method}")
        scores[method] = path
    summary = build_report(
        scores=scores, accuracies=args.accuracies, out=args.out, figures_dir=args.figures_dir, data=args.data,
        n_archs=args.n_archs, sample_seed=args.sample_seed, Ns=args.search_ns, runs=args.runs, seed=args.seed,
        published_points=None if args.published is None else read_published_points(args.published),
        fig1_per_bin=args.fig1_per_bin, fig1_batch=args.fig1_batch,
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


def _add_evaluate_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--n-archs", type=_count(1, NUM_ARCHS), metavar="K", help="a seeded random sample of K architectures")
    which.add_argument("--all", action="store_true", dest="all_archs", help="all 15,625 architectures")
    which.add_argument("--indices", metavar="START:STOP", help="these benchmark indices (START:STOP or a,b,c)")
    p.add_argument("--accuracies", metavar="PATH", required=True, type=_path_arg,
                   help="NB201 accuracies: nb201_accuracies.csv or the official .pth")
    p.add_argument("--db", metavar="PATH", type=_path_arg, help="SQLite scan database: results are kept as they come and a "
                   "rerun resumes")
    _add_ray_option(p)  # Ray hook (issue 12)
    p.add_argument("--scores-out", metavar="FILE", type=_path_arg, help="write per-architecture scores (.csv/.jsonl/.json)")
    p.add_argument("--scores-in", metavar="FILE", type=_path_arg, help="reuse scores from FILE instead of scoring")
    p.add_argument("--search-table", type=_int_list, metavar="N,N,...",
                   help="also the search table (mode 'table', over the evaluated architectures) for these N")
    p.add_argument("--runs", type=_count(1, MAX_RUNS), default=500, help="runs per N for --search-table (default 500)")
    p.add_argument("--table-out", metavar="PREFIX", type=_path_arg, help="write the search table to PREFIX.md and PREFIX.csv")
    _add_score_options(p)
    _add_output_options(p)


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", type=_scores_arg, action="append", required=True, metavar="METHOD=FILE",
                   help="a scores file of one method (repeat for several methods)")
    p.add_argument("--accuracies", required=True, metavar="PATH", type=_path_arg, help="NB201 accuracies (CSV or .pth)")
    p.add_argument("--out", default="report.md", metavar="FILE.md", type=_path_arg,
                   help="Markdown report, a .md file (default report.md)")
    p.add_argument("--figures-dir", metavar="DIR", type=_path_arg, help="figures and CSV tables (default: figures/ beside --out)")
    p.add_argument("--data", metavar="PATH", type=_path_arg, help="images for Figure 1 (left out without)")
    p.add_argument("--n-archs", type=_count(1, NUM_ARCHS), metavar="K", help="use only the seeded sample of K from each file")
    p.add_argument("--sample-seed", type=_seed_arg, default=0, help="seed of that sample (default 0)")
    p.add_argument("--search-ns", type=_int_list, default=[10, 25, 50, 75, 100], metavar="N,N,...",
                   help="sample sizes of the search table (default 10,25,50,75,100)")
    p.add_argument("--runs", type=_count(1, MAX_RUNS), default=500, help="runs per N (default 500)")
    p.add_argument("--seed", type=_seed_arg, default=0, help="seed of the search runs and Figure 1 (default 0)")
    p.add_argument("--published", metavar="CSV", type=_path_arg,
                   help="published points for Figure 6 instead of the built-in ones (the NASWOT paper's "
                   "NAS-Bench-201 table): CSV label,seconds,accuracy[,std][,kind]")
    p.add_argument("--fig1-per-bin", type=_count(1, 1000), default=3, help="architectures per bin in Figure 1 (default 3)")
    p.add_argument("--fig1-batch", type=_count(2, MAX_BATCH), default=64, help="batch size for Figure 1 (default 64)")
    _add_output_options(p)


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
        p.set_defaults(handler=handler)
        return p

    p = add("search", "random search: draw N architectures per run, keep the best score", cmd_search)
    p.add_argument("-n", "--n-samples", type=_count(1, MAX_SAMPLES), default=10, metavar="N",
                   help=f"architectures per run, 1..{MAX_SAMPLES} (default: 10)")
    p.add_argument("-r", "--runs", type=_count(1, MAX_RUNS), default=1, metavar="R",
                   help=f"independent runs, 1..{MAX_RUNS} (default: 1)")
    p.add_argument("--accuracies", metavar="PATH", type=_path_arg,
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
    p.add_argument("--db", default=DEFAULT_DB, metavar="PATH", type=_path_arg,
                   help=f"SQLite database the results go to and resume from (default: ./{DEFAULT_DB})")
    p.add_argument("--dedup", action="store_true",
                   help="score one architecture per isomorphism class; other members get its score (flagged)")
    p.add_argument("--out", metavar="FILE", type=_path_arg, help="also write the results to FILE.csv, FILE.jsonl or FILE.json (the score-file format)")
    p.add_argument("--db-timeout", type=_seconds_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for a database locked by another process (default: 30)")
    _add_ray_option(p)  # Ray hook (issue 12)
    _add_score_options(p)
    _add_output_options(p)

    p = add("evaluate", "score architectures and correlate the scores with NB201 accuracies", cmd_evaluate)
    _add_evaluate_options(p)

    p = add("report", "assemble tables and figures of an evaluation into one Markdown report", cmd_report)
    _add_report_options(p)

    p = add("db", "summarise a scan database: configurations, progress, NaN / -inf counts", cmd_db)
    p.add_argument("db", metavar="PATH", type=_path_arg, help="SQLite database written by 'nwot-fast scan'")
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


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, KeyError) or not text:
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text


def _fail(args, code: int, message: str) -> int:
    line = f"{PROG}: error: {message}\n"
    try:
        sys.stderr.write(line)
    except UnicodeEncodeError:  # a name that is not valid UTF-8 in the message
        sys.stderr.write(line.encode("utf-8", "backslashreplace").decode("utf-8"))
    if args is not None and getattr(args, "json", False):
        with contextlib.suppress(OSError):
            _print_json({"error": message, "exit_code": code})
    return code


# errno values that mean the place an output goes cannot take it: a resource problem (exit 3).
_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, errno.EDQUOT, errno.EIO}


def _quiet_stdout() -> None:
    """After stdout failed (disk full), point it at /dev/null so that the interpreter's final
    flush does not print a second error."""
    with contextlib.suppress(OSError):
        sys.stdout = open(os.devnull, "w")


def _is_out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (see ``nwot-fast --help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help / --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)

    from .distributed import ClusterError, RayNotInstalledError
    from .store import ScanDatabaseError

    try:
        code = int(args.handler(args) or EXIT_OK)
        sys.stdout.flush()  # a full disk or a closed pipe on stdout shows here, not at exit
        return code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; results already saved are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RayNotInstalledError as e:  # an optional dependency the command line asked for
        return _fail(args, EXIT_USAGE, _one_line(e))
    except (ScanDatabaseError, ClusterError, ResourceError, OutputError) as e:
        return _fail(args, EXIT_RESOURCE, _one_line(e))
    except MemoryError as e:
        msg = _one_line(e) if str(e) else "out of memory"
        return _fail(args, EXIT_RESOURCE, f"{msg} (lower --batch-size, or use a machine with more memory)")
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error of ours.
        _quiet_stdout()
        return EXIT_OK
    except OSError as e:
        if e.errno in _RESOURCE_ERRNOS:
            _quiet_stdout()
            where = _one_line(e) if e.filename else f"cannot write the results to standard output: {e.strerror}"
            return _fail(args, EXIT_RESOURCE, where)
        if isinstance(e, _BAD_INPUT):
            return _fail(args, EXIT_USAGE, _one_line(e))
        raise
    except _BAD_INPUT as e:
        return _fail(args, EXIT_USAGE, _one_line(e))
    except RuntimeError as e:
        if _is_out_of_memory(e):
            return _fail(args, EXIT_RESOURCE, f"out of memory ({_one_line(e)}); lower --batch-size")
        raise


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
