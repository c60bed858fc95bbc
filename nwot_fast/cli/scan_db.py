"""The ``scan`` and ``db`` commands: a resumable whole-space scan into a SQLite database, and what
such a database holds."""

from __future__ import annotations

import sys

from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, Terminated
from .common import (EXIT_CODES_HELP, PROG, add_output_options, add_ray_option, add_score_options, check_device,
                     config_from, database_path, format_score, output_path, print_json, progress_bar, seconds_arg,
                     text_table)

DEFAULT_DB = "nwot-fast-scan.sqlite"

SCAN_EPILOG = f"""\
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
engine, device type, dtype): scores of another engine, device type or dtype
are kept apart. Several scan processes may share one database (each takes the write lock
for one transaction per architecture); give them disjoint --indices. SIGTERM stops the
scan cleanly (exit 143); 'nwot-fast db PATH' shows what a database holds. With --ray the
chunks are scored on Ray workers and this process alone writes the database, with the same
rows; killed and run again, it sends only what the database lacks.

{EXIT_CODES_HELP}"""

DB_EPILOG = f"""\
examples:
  {PROG} db scores.sqlite
  {PROG} db scores.sqlite --json

Lists every configuration stored (method, data, batch size, seed, config hash) with how many
architectures are done, how many were filled from an isomorphic representative, and the
NaN / -inf counts. Opens the database read-only: safe while a scan is writing to it.

{EXIT_CODES_HELP}"""


def cmd_scan(args) -> int:
    """``nwot-fast scan``: score indices into the resumable database; exit 130/143 when stopped."""
    from ..scanning import ScoreDB, check_output_path, parse_indices, scan

    indices = parse_indices(args.indices)  # bad ranges fail before anything is opened
    if args.out is not None:
        check_output_path(args.out, rows=len(indices))
    config = config_from(args)
    check_device(args)
    bar = progress_bar(args, 0, "scoring")
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
        print_json(result.to_dict(records=True))
        return EXIT_OK
    print(result.summary())
    if args.out is not None:
        print(f"written: {args.out}")
    top = result.top(5)
    print("best architectures:")
    print(text_table(["index", "score", "arch"], [[str(r["arch_index"]), format_score(r["score"]), r["arch"]] for r in top]))
    return EXIT_OK


def cmd_db(args) -> int:
    """``nwot-fast db``: the configurations a scan database holds, with their counts."""
    from .._common import NUM_ARCHS
    from ..store import ScoreDB

    with ScoreDB(args.db, readonly=True, timeout=args.db_timeout) as store:
        configs = store.configurations()
    # Opening ran PRAGMA quick_check: a damaged file is an error (exit 2) that names the damage.
    if args.json:
        print_json({"db": args.db, "integrity": "ok", "configurations": configs})
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
            paths = [p for p in c.get("data_paths", []) if p]
            data = f"{data}" + (f" read from {', '.join(paths)}" if paths else "")
        print(
            f"\n{c['config_hash']}  {cfg.get('method')}  batch {cfg.get('batch_size')}  seed {cfg.get('seed')}  "
            f"{cfg.get('dtype')}  data {data}" + (f" ({cfg['dataset']})" if cfg.get("dataset") else "")
        )
        print(
            f"  {c['rows']}/{NUM_ARCHS} architectures ({c['reused']} reused from a representative), "
            f"{c['nan']} NaN, {c['neg_inf']} -inf; {c['scoring_seconds']:.0f} s of scoring"
        )
        print(f"  written {c['first']} .. {c['last']} by nwot_fast {', '.join(c['versions'])} "
              f"(engine {', '.join(c['engines'])})")
    return EXIT_OK


def add_scan_command(add) -> None:
    """Registers ``scan`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("scan", "score a range of the space into a resumable SQLite database", cmd_scan, SCAN_EPILOG)
    p.add_argument("--indices", default="0:15625", metavar="START:STOP",
                   help="benchmark indices: START:STOP (STOP exclusive), START:STOP:STEP, single indices, "
                        "comma-separated (default: 0:15625, the whole space)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="PATH", type=database_path,
                   help=f"SQLite database the results go to and resume from (default: ./{DEFAULT_DB})")
    p.add_argument("--dedup", action="store_true",
                   help="score one architecture per isomorphism class; other members get its score (flagged)")
    p.add_argument("--out", metavar="FILE", type=output_path, help="also write the results to FILE.csv, FILE.jsonl or FILE.json (the score-file format)")
    p.add_argument("--db-timeout", type=seconds_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for a database locked by another process (default: 30)")
    add_ray_option(p)  # Ray hook (issue 12)
    add_score_options(p)
    add_output_options(p)


def add_db_command(add) -> None:
    """Registers ``db`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("db", "summarise a scan database: configurations, progress, NaN / -inf counts", cmd_db, DB_EPILOG)
    p.add_argument("db", metavar="PATH", type=database_path, help="SQLite database written by 'nwot-fast scan'")
    p.add_argument("--db-timeout", type=seconds_arg, default=30.0, metavar="SECONDS",
                   help="how long to wait for a database locked by another process (default: 30)")
    add_output_options(p)
