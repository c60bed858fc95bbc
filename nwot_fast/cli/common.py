"""What every command of the command line shares: the program name and its exit-code help, the
output helpers, the argument types (every value checked at parse time, with a message naming the
option), the option groups, and the reading of an ARCH argument. Torch-free: ``--help`` imports it."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Sequence

from .._common import DTYPES, ENGINES, METHODS, MODES, RELU_MATCHES, jsonable
from ..args import BATCH_SIZE, SEED
from ..distributed import INSTALL_HINT as RAY_INSTALL_HINT
from ..errors import ResourceError

PROG = "nwot-fast"


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


# ---------------------------------------------------------------------------------------------
# output helpers


def print_json(obj) -> None:
    """Writes ``obj`` to stdout as JSON (NaN/inf in the package's JSON spelling, _common.jsonable)."""
    sys.stdout.write(json.dumps(jsonable(obj), indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def format_score(s: float) -> str:
    """A score for the text tables: six decimals, or ``nan`` / ``-inf`` as Python writes them."""
    return repr(s) if not math.isfinite(s) else f"{s:.6f}"


def progress_bar(args, total: int, desc: str):
    """The command's progress bar on stderr (off with --quiet; otherwise only on a terminal)."""
    from ..progress import Progress

    enabled = None if not getattr(args, "quiet", False) else False
    return Progress(total, desc=desc, enabled=enabled)


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns under ``head``, two spaces apart, for the text output."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# argument types: every value checked at parse time, with a message naming the option

# The counts and seeds: nwot_fast.args, the checks the Python API makes too.
seed_arg = SEED.parse


def seconds_arg(text: str) -> float:
    """An argparse type: a number of seconds in 0..86400."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds in 0..86400, got {text!r}")
    return value


def path_arg(text: str) -> str:
    """A file or directory name: not empty, and valid UTF-8 (the database and the output files
    store paths as text; a name that is not UTF-8 could not be written or shown)."""
    from ..paths import check_utf8

    if not text:
        raise argparse.ArgumentTypeError("empty path")
    try:
        return check_utf8(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def path_type(role: str):
    """An argparse type for a path the command uses as ``role``: ``input`` (read),
    ``database`` (read, and written by scan), ``output`` (written) or ``prefix`` (PREFIX.md and
    PREFIX.csv written). Before any work main refuses an output that is the same file as an
    input, the database or another output (_check_paths), for every option declared so."""
    def parse(text: str) -> str:
        return path_arg(text)

    parse.role = role
    parse.__name__ = "path"  # argparse names the type in its messages
    return parse


input_path, database_path, output_path, prefix_path = map(path_type, ("input", "database", "output", "prefix"))


# ---------------------------------------------------------------------------------------------
# shared option groups


def add_output_options(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--quiet``, which every command takes."""
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (and nothing else there)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no informational messages")


def add_score_options(p: argparse.ArgumentParser) -> None:
    """The scoring options (method, data, batch, seed, device, engine, mode, dtype, ...): what
    config_from turns into a ScoreConfig."""
    g = p.add_argument_group("scoring")
    g.add_argument("--method", default="jacob_cov", choices=METHODS,
                   help="score: jacob_cov (2020, default) or hook_logdet (2021)")
    g.add_argument("--data", metavar="PATH", type=input_path,
                   help="images: CIFAR-10/100 or ImageNet16-120 batch directory, or an .npz file with x, y "
                        "(default: Gaussian N(0, 1) random inputs)")
    g.add_argument("--dataset", metavar="NAME",
                   help="cifar10, cifar100 or ImageNet16-120 (default: inferred from --data)")
    g.add_argument("--batch-size", type=BATCH_SIZE.parse, metavar="B",
                   help=f"images per batch, {BATCH_SIZE.low}..{BATCH_SIZE.high} (default: 256 for jacob_cov, 128 for hook_logdet)")
    g.add_argument("--seed", type=seed_arg, default=0,
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


def add_ray_option(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``: score on a Ray cluster (scan, evaluate)."""
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="score on a Ray cluster; this process alone writes --db. Without ADDRESS: a local Ray "
                        "instance, one single-threaded worker per core; auto, HOST:PORT or ray://HOST:10001: join "
                        f"that cluster (needs Ray: {RAY_INSTALL_HINT})")


def config_from(args):
    """The ScoreConfig of the scoring options (validated: a typo in --dataset is an error)."""
    from ..config import config_from_namespace

    return config_from_namespace(args)


def check_device(args) -> None:
    """Fail early, with exit code 3, when CUDA is asked for and absent (``args``: the parsed
    options or a ScoreConfig, anything with ``.device``)."""
    from .._common import resolve_device

    try:
        resolve_device(args.device)
    except RuntimeError as e:
        raise ResourceError(str(e)) from e


def parse_arch_argument(text: str):
    """An index (``"42"``) or an official arch string -> ``(index, Arch)``."""
    from ..nb201 import NUM_ARCHS, Arch, arch_at, index_of

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
