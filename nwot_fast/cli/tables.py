"""The ``tables`` command: list, show, verify and build the whole-space score tables (issue 21)."""

from __future__ import annotations

import argparse
import os

from .._common import DTYPES, METHODS
from ..args import N_ARCHS, IntRange
from ..errors import EXIT_INTERNAL, EXIT_OK, one_line
from .common import EXIT_CODES_HELP, PROG, add_output_options, path_arg, print_json, progress_bar, seconds_arg, seed_arg, text_table

TABLES_EPILOG = f"""\
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

{EXIT_CODES_HELP}"""


def _tables_dir(args):
    return getattr(args, "dir", None)


def cmd_tables_list(args) -> int:
    """``nwot-fast tables list``: the tables of a directory (default: the shipped ones)."""
    from ..tables import SHIPPED_DIR, list_tables

    directory = _tables_dir(args) or SHIPPED_DIR
    items = list_tables(directory)
    if args.json:
        print_json({"directory": directory, "tables": items})
        return EXIT_OK
    if not items:
        print(f"no score tables in {directory}")
        return EXIT_OK
    rows = [[t["name"], t["method"], t["dtype"], str(t["rows"]),
             "complete" if t["complete"] else f"PARTIAL {t['covered']}/{t['expected']}"] for t in items]
    print(f"score tables in {directory}:")
    print(text_table(["name", "method", "dtype", "rows", "coverage"], rows))
    return EXIT_OK


def cmd_tables_show(args) -> int:
    """``nwot-fast tables show``: a table's provenance, counts and float32 error."""
    from ..tables import float32_error, list_tables, load, summary_counts

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
        print_json({"name": table.name, "csv": table.csv_path, "counts": counts, "provenance": table.provenance,
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
    """``nwot-fast tables verify``: recompute sampled rows; exit 1 when a table disagrees."""
    from ..tables import SHIPPED_DIR, TableIntegrityError, list_tables, load, verify

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
        with progress_bar(args, 0, f"verifying {table.name}") as bar:
            v = verify(table, args.data, sample=args.sample, sample_seed=args.sample_seed,
                       progress=lambda done, total: bar(done, total))
        failed += not v.passed
        results.append(v.to_dict())
        if not args.json:
            print(v.format_text())
            print()
    if args.json:
        print_json({"passed": failed == 0, "tables": results})
    elif len(names) > 1:
        print(f"{len(names) - failed} of {len(names)} tables agree" + ("" if not failed else f"; {failed} FAIL"))
    return EXIT_OK if failed == 0 else EXIT_INTERNAL


def cmd_tables_build(args) -> int:
    """``nwot-fast tables build``: export a table from a scan database, with its provenance."""
    from ..tables import build

    table = build(args.db, data=args.data, out_dir=args.out, commit=args.commit, method=args.method,
                  dtype=args.dtype, config_hash=args.config_hash, indices=args.indices, random=args.random,
                  random_seed=args.random_seed, allow_partial=args.allow_partial, name=args.name,
                  threads=args.threads, command=args.command, timeout=args.db_timeout)
    if args.json:
        print_json({"csv": table.csv_path, "json": table.json_path, "provenance": table.provenance})
    else:
        print(table.describe())
        print(f"written: {table.csv_path}, {table.json_path}")
    return EXIT_OK


def add_tables_command(add) -> None:
    """Registers ``tables`` and its actions through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("tables", "list, show, verify and build the whole-space NAS-Bench-201 score tables", None, TABLES_EPILOG)
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions")
    actions.required = True

    def action(name, help_text, handler):
        q = actions.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                               epilog=TABLES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        q.set_defaults(handler=handler)
        return q

    def dir_option(q):
        q.add_argument("--dir", metavar="DIR", type=path_arg,
                       help="a directory of tables (default: the tables shipped with the package)")

    q = action("list", "list the score tables", cmd_tables_list)
    dir_option(q)
    add_output_options(q)
    q = action("show", "show a table's provenance, counts and float32 error", cmd_tables_show)
    q.add_argument("table", metavar="NAME|PATH", type=path_arg, help="table name or path of its .csv/.json")
    dir_option(q)
    add_output_options(q)
    q = action("verify", "recompute random rows of tables on this machine and compare", cmd_tables_verify)
    q.add_argument("tables", nargs="*", metavar="NAME|PATH", type=path_arg, help="tables (default: all in --dir)")
    q.add_argument("--data", required=True, metavar="PATH", type=path_arg,
                   help="CIFAR-10 images: the python batch directory or an .npz whose first 128 training images are "
                        "the table's")
    q.add_argument("--sample", type=N_ARCHS.parse, default=5, metavar="K", help="rows per table (default 5)")
    q.add_argument("--sample-seed", type=seed_arg, metavar="S",
                   help="which rows (default: a fresh seed, printed, so that the same rows can be checked again)")
    dir_option(q)
    add_output_options(q)
    q = action("build", "export a table from a scan database, with its provenance", cmd_tables_build)
    q.add_argument("--db", required=True, metavar="PATH", type=path_arg, help="scan database (opened read-only)")
    q.add_argument("--data", required=True, metavar="PATH", type=path_arg, help="the image file the scan read")
    q.add_argument("--out", required=True, metavar="DIR", type=path_arg, help="directory for NAME.csv and NAME.json")
    q.add_argument("--commit", required=True, metavar="HASH", help="git commit of the code that ran the scan")
    q.add_argument("--method", choices=METHODS, help="which configuration (when the database holds several)")
    q.add_argument("--dtype", choices=DTYPES, help="which configuration (when the database holds several)")
    q.add_argument("--config-hash", metavar="HASH", help="which configuration (see nwot-fast db)")
    rows = q.add_mutually_exclusive_group()
    rows.add_argument("--indices", metavar="SPEC", help="the rows the table is for (default 0:15625)")
    rows.add_argument("--random", type=N_ARCHS.parse, metavar="K",
                      help="the rows: sorted(numpy.random.default_rng(RANDOM_SEED).choice(15625, K, replace=False))")
    q.add_argument("--random-seed", type=seed_arg, default=0, metavar="S", help="seed of --random (default 0)")
    q.add_argument("--allow-partial", action="store_true",
                   help="export even if rows are missing; the record says PARTIAL and how many rows it covers")
    q.add_argument("--name", metavar="NAME", help="table name (default METHOD.DTYPE)")
    q.add_argument("--threads", type=IntRange(1, 4096).parse, metavar="N", help="torch threads of the scan (recorded)")
    q.add_argument("--command", metavar="TEXT", help="the reproducing command to record (default: built from the "
                   "configuration)")
    q.add_argument("--db-timeout", type=seconds_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for a locked database (default: 30)")
    add_output_options(q)
