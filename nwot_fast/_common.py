"""Names and checks shared by every module, in one torch-free place.

Importing this module imports nothing heavy (no torch, no numpy), so the CLI, the store and
the readers can use it freely. Functions that need torch import it when called.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
from typing import Optional

__version__ = "0.1.0"

METHODS = ("jacob_cov", "hook_logdet")
RELU_MATCHES = ("name", "exact")
ENGINES = ("fast", "reference")
DEVICES = ("cpu", "cuda", "auto")
# How the fast engine runs: "per-arch" one execution plan per network pass (nwot_fast.per_arch),
# "multi-arch" a chunk of architectures per pass (nwot_fast.multi_arch), "auto" the device's
# choice (nwot_fast.scorer.default_mode).
MODES = ("auto", "per-arch", "multi-arch")
# The precision a score is computed in: the network pass, the Jacobian or codes and the
# post-processing. float64 is the machine-independent truth (docs/PRECISION.md).
DTYPES = ("float32", "float64")
DEFAULT_DTYPE = "float32"
# The eigenvalue offset of jacob_cov: S = -sum(log(l + EIG_EPS) + 1 / (l + EIG_EPS)).
EIG_EPS = 1e-5
# NB201's BatchNorm2d (train mode, from batch statistics): its eps and momentum; the momentum
# only moves running statistics that no score reads.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
# 5 ops on 6 edges (checked against the benchmark's own order in the tests).
NUM_ARCHS = 15625

#: (dataset, split) pairs of the NB201 accuracy table, in the paper's column order.
ACCURACY_KEYS = (
    ("cifar10", "val"),
    ("cifar10", "test"),
    ("cifar100", "val"),
    ("cifar100", "test"),
    ("ImageNet16-120", "val"),
    ("ImageNet16-120", "test"),
)
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "ImageNet16-120": "ImageNet16-120"}


def accuracy_label(dataset: str, split: str) -> str:
    """``"CIFAR-10 (val)"``: the printed name of an accuracy column."""
    return f"{DATASET_LABELS.get(dataset, dataset)} ({split})"


def dtype_name(dtype) -> str:
    """``"float32"`` or ``"float64"`` from a name (``"float64"``, ``"torch.float64"``) or a
    ``torch.dtype``; anything else is a ValueError that names the allowed values."""
    if dtype is None:
        return DEFAULT_DTYPE
    text = str(dtype)
    name = text[len("torch."):] if text.startswith("torch.") else text
    aliases = {"float": "float32", "double": "float64"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or torch.float32 / torch.float64), got {dtype!r}")
    return name


def torch_dtype(dtype):
    """The ``torch.dtype`` of :func:`dtype_name` ``(dtype)``."""
    import torch

    return getattr(torch, dtype_name(dtype))


def check_int(value, name: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` as an int (bool and non-integers are a TypeError), within ``low..high``
    (inclusive; ``None``: unbounded), else a ValueError naming ``name`` and the allowed range."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if (low is not None and v < low) or (high is not None and v > high):
        allowed = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in {low}..{high}")
        raise ValueError(f"{name} must be {allowed}, got {v}")
    return v


def check_index(value, name: str = "benchmark index") -> int:
    """A benchmark index, 0..15624."""
    i = check_int(value, name)
    if not 0 <= i < NUM_ARCHS:
        raise ValueError(f"{name} {i} out of range; allowed 0..{NUM_ARCHS - 1}")
    return i


def resolve_device(device):
    """``cpu``, ``cuda`` (or ``cuda:N``), ``auto`` (CUDA when available) or a ``torch.device``
    -> ``torch.device``. CUDA asked for and absent is a RuntimeError (a resource problem)."""
    import torch

    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string (cpu, cuda or auto) or torch.device, got {type(device).__name__}")
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)} (or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} requested but CUDA is not available in this torch build or on this machine "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda}); use --device cpu"
        )
    return dev


def device_type(device) -> str:
    """``"cpu"`` or ``"cuda"``: the part of a device that decides the scores bit for bit."""
    name = str(device)
    if name == "auto":
        return resolve_device("auto").type
    return "cuda" if name.startswith("cuda") else name


def json_float(value):
    """A float for JSON, which has no NaN or infinity: those become the strings ``"nan"``,
    ``"inf"``, ``"-inf"`` (the package's one convention; ``float()`` reads them back)."""
    v = float(value)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def jsonable(obj):
    """``obj`` with every float through :func:`json_float`, tuples as lists, NumPy scalars and
    arrays as Python values: ready for ``json.dumps(..., allow_nan=False)``."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return json_float(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars
        return jsonable(obj.tolist())
    return obj


# ---------------------------------------------------------------------------------------------
# seeds, input files and output files: one check each, used by every command and API entry


#: Seeds are 0 <= seed <= SEED_MAX: a seed is stored in an SQLite INTEGER (a signed 64-bit int)
#: and fed to ``torch.manual_seed`` (which takes up to 2**64 - 1) and NumPy's SeedSequence.
SEED_MAX = 2**63 - 1


def check_seed(value, name: str = "seed") -> int:
    """A seed, 0..:data:`SEED_MAX`; anything else is a TypeError/ValueError naming ``name``."""
    return check_int(value, name, 0, SEED_MAX)


class OutputError(OSError):
    """An output file cannot be written (read-only place, no permission, disk full): a resource
    problem (exit 3). Nothing half-written is left behind."""

    def __str__(self) -> str:
        return str(self.strerror)


def _file_kind(mode: int) -> str:
    import stat

    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_input_file(path, what: str, *, allow_dir: bool = False) -> str:
    """``path`` as a str when it names an existing regular file (or a directory when
    ``allow_dir``); a broken symbolic link, a missing file or a special file (FIFO, device,
    socket; reading those could block or never end) is an error naming the file and ``what``
    was expected."""
    import stat

    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{what} path must be a str or os.PathLike, got {type(path).__name__}") from None
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{what} path is empty")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(f"{path}: broken symbolic link (to {os.readlink(path)!r}); expected {what}") from None
        raise FileNotFoundError(f"{path}: no such file or directory; expected {what}") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{path}: a part of the path is not a directory; expected {what}") from None
    if stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode)):
        return path
    raise ValueError(f"{path}: is {_file_kind(st.st_mode)}, not a regular file; expected {what}")


def check_output_file(path, what: str, extensions=None) -> str:
    """Check before any work that ``path`` can be written: a known ending (``extensions``, lower
    case, with the dot), an existing directory, not a directory or special file itself, and a
    writable place. A wrong name is a ValueError / FileNotFoundError (bad input), a place that
    cannot be written an :class:`OutputError` (resource). Returns the lower-case ending."""
    import stat
    import tempfile

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what} path is empty")
    ext = os.path.splitext(path)[1].lower()
    if extensions is not None and ext not in extensions:
        raise ValueError(f"{what} {path!r} must end in {', '.join(extensions)}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {what} {path!r}: directory {parent!r} does not exist")
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path!r} is {_file_kind(st.st_mode)}; give a file name")
    try:  # a real write: os.access says yes to root on a read-only file system
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".nwot-fast-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(e.errno, f"cannot write {what} {path!r}: directory {parent!r} is not writable "
                          f"({e.strerror})") from None
    return ext


@contextlib.contextmanager
def atomic_write(path, what: str = "output file", *, mode: str = "w", **open_kwargs):
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path`` in one
    rename, on any error it is removed, so ``path`` is never left half-written. OS errors
    (disk full, read-only place) become :class:`OutputError` naming ``path``."""
    import tempfile

    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(e.errno, f"cannot write {what} {path!r}: {e.strerror or e}; nothing was written") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
