"""The ``nwot-fast`` command line (also ``python -m nwot_fast``).

Subcommands: ``search``, ``score``, ``scan``, ``db``, ``evaluate``, ``report``, ``tables``, ``info``, ``arch``,
one module per group (:mod:`.score_search`, :mod:`.scan_db`, :mod:`.evaluate_report`, :mod:`.tables`,
:mod:`.info_arch`; what they share is in :mod:`.common`). This module assembles the parser and runs a
command with the one mapping of exceptions to exit codes (:func:`nwot_fast.errors.classify`).
Results go to stdout (a table, or JSON with ``--json`` and nothing else); messages, warnings
and progress bars go to stderr. Exit codes are documented in :data:`.common.EXIT_CODES_HELP`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import List, Optional

from .._common import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RESOURCE, EXIT_TERMINATED, EXIT_USAGE
from . import evaluate_report, info_arch, scan_db, score_search, tables
from .common import ARCH_EXAMPLE, EXIT_CODES_HELP, PROG, print_json

__all__ = ["main", "build_parser"]

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


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


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

    def add(name, help_text, handler, epilog=EXIT_CODES_HELP):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler, command_parser=p)
        return p

    # In the order --help lists them.
    score_search.add_search_command(add)
    score_search.add_score_command(add)
    scan_db.add_scan_command(add)
    evaluate_report.add_evaluate_command(add)
    evaluate_report.add_report_command(add)
    tables.add_tables_command(add)
    scan_db.add_db_command(add)
    info_arch.add_info_command(add)
    info_arch.add_arch_command(add)
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
            print_json({"error": message, "exit_code": code})
    return code


def _quiet_stdout() -> None:
    """After stdout failed (disk full, closed), point it at /dev/null so that the interpreter's
    final flush does not print a second error."""
    with contextlib.suppress(OSError):
        sys.stdout = open(os.devnull, "w")


def _check_paths(args) -> None:
    """Before any work: no output of the command is the same file as one of its inputs, its
    database or another output (the roles are those its options' types declare, path_type)."""
    from ..paths import check_distinct
    from ..searchtable import TABLE_ENDINGS

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

    from ..errors import classify
    from ..process import StreamError, guarded_streams, stream_is_closed

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
    from ..process import stop_on_signals

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
