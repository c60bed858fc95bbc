"""Names and checks shared by every module, in one torch-free place.

Importing this module imports nothing heavy (no torch, no numpy), so the CLI, the store and
the readers can use it freely. Functions that need torch import it when called.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

# The path rules (inputs, outputs, links, loops, same-file checks) live in one module; these
# names stay importable from here for the modules that use them.
from .paths import OutputError, atomic_write, check_input_file, check_output_file  # noqa: F401

__version__ = "0.1.0"

METHODS = ("jacob_cov", "hook_logdet")
RELU_MATCHES = ("name", "exact")
ENGINES = ("fast", "reference")
DEVICES = ("cpu", "cuda", "auto")
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

