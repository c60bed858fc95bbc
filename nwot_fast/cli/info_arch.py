"""The ``info`` and ``arch`` commands: versions and the compiled backend; one architecture's
index, string and structure (nwot_fast.nb201.describe)."""

from __future__ import annotations

from .._common import DTYPES, ENGINES, __version__
from ..errors import EXIT_OK, EXIT_RESOURCE
from .common import ARCH_EXAMPLE, EXIT_CODES_HELP, PROG, add_output_options, parse_arch_argument, print_json

INFO_EPILOG = f"""\
examples:
  {PROG} info
  {PROG} info --json
  {PROG} info --build        # compile the operators now if this install has none (exit 3 if it cannot)

{EXIT_CODES_HELP}"""

ARCH_EPILOG = f"""\
examples:
  {PROG} arch 0
  {PROG} arch {ARCH_EXAMPLE} --json

Shows the index and string of each architecture, its isomorphism-canonical form and class
representative, the live edges (on a path from input to output), and whether its output is
constant (jacob_cov then gives NaN) or every ReLU sees only zeros (hook_logdet gives -inf).

{EXIT_CODES_HELP}"""


def cmd_info(args) -> int:
    """``nwot-fast info``: versions, the compiled backend, CUDA; exit 3 when --build cannot build."""
    import platform
    import sqlite3

    import numpy
    import torch

    from .._ext import backend_info

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
        print_json(info)
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
    """``nwot-fast arch``: index, string and structure of each ARCH (nwot_fast.nb201.describe)."""
    from ..nb201 import describe

    records = [describe(parse_arch_argument(text)[1]) for text in args.archs]
    if args.json:
        print_json(records if len(records) > 1 else records[0])
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


def add_info_command(add) -> None:
    """Registers ``info`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("info", "show versions, the compiled backend and CUDA availability", cmd_info, INFO_EPILOG)
    p.add_argument("--build", action="store_true",
                   help="compile the operators now when no build is installed or cached (otherwise on first use)")
    add_output_options(p)


def add_arch_command(add) -> None:
    """Registers ``arch`` through ``add(name, help, handler, epilog)`` (see build_parser)."""
    p = add("arch", "convert between index and arch string; canonical form, live edges, constant output", cmd_arch, ARCH_EPILOG)
    p.add_argument("archs", nargs="+", metavar="ARCH", help="benchmark index (0..15624) or official arch string")
    add_output_options(p)
