"""Names and checks shared by every module, in one torch-free place.

Importing this module imports nothing heavy (no torch, no numpy), so the CLI, the store and
the readers can use it freely. Functions that need torch import it when called.
"""

from __future__ import annotations

import collections
import math
import operator
from typing import Optional, Tuple

# The path rules (inputs, outputs, links, loops, same-file checks) live in one module; these
# names stay importable from here for the modules that use them.
from .paths import OutputError, atomic_write, check_input_file, check_output_file  # noqa: F401

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

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "ImageNet16-120": "ImageNet16-120"}
ACCURACY_SPLITS = ("val", "test")
# Per dataset: its stem in the accuracy CSV's columns, and the NB201 (dataset, metric) that its
# val and test accuracies are read from, as the NASWOT evaluation uses them.
_CSV_STEMS = {"cifar10": "cifar10", "cifar100": "cifar100", "ImageNet16-120": "imagenet16"}
_NB201 = {
    ("cifar10", "val"): ("cifar10-valid", "x-valid"), ("cifar10", "test"): ("cifar10", "ori-test"),
    ("cifar100", "val"): ("cifar100", "x-valid"), ("cifar100", "test"): ("cifar100", "x-test"),
    ("ImageNet16-120", "val"): ("ImageNet16-120", "x-valid"), ("ImageNet16-120", "test"): ("ImageNet16-120", "x-test"),
}


class AccuracyKey(collections.namedtuple("AccuracyKey", "dataset split")):
    """Which NB201 accuracy: ``dataset`` (``cifar10``, ``cifar100``, ``ImageNet16-120``) and
    ``split`` (``val`` or ``test``). A tuple, so it equals and hashes like ``("cifar10", "test")``.

    Its spellings outside the code, each made and read here: ``str(key)`` / :meth:`parse`
    ``"cifar10/test"`` (JSON keys); :attr:`label` / :meth:`from_label` ``"CIFAR-10 (test)"`` (printed
    tables); :attr:`csv_column` / :meth:`from_csv_column` ``"cifar10_test_acc"`` (the accuracy
    CSV; ``"cifar10_valid_acc"`` for val, ``imagenet16_...`` for ImageNet16-120); :attr:`stem`
    ``"cifar10_test"`` (the search table's CSV columns ``cifar10_test_mean``); :attr:`nb201`
    ``("cifar10", "ori-test")`` (the benchmark file's dataset and metric).
    """

    __slots__ = ()

    def __new__(cls, dataset: str, split: str):
        if dataset not in DATASET_LABELS:
            raise ValueError(f"unknown dataset {dataset!r} of an accuracy; allowed: {', '.join(DATASET_LABELS)}")
        if split not in ACCURACY_SPLITS:
            raise ValueError(f"unknown accuracy split {split!r}; allowed: {', '.join(ACCURACY_SPLITS)}")
        return super().__new__(cls, dataset, split)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.split}"

    @classmethod
    def parse(cls, text: str) -> "AccuracyKey":
        """The key of ``"cifar10/test"`` (what ``str`` writes)."""
        dataset, sep, split = str(text).rpartition("/")
        if not sep:
            raise ValueError(f"expected an accuracy key DATASET/SPLIT like cifar10/test, got {text!r}")
        return cls(dataset, split)

    @property
    def label(self) -> str:
        """``"CIFAR-10 (test)"``: the printed name of the accuracy."""
        return f"{DATASET_LABELS[self.dataset]} ({self.split})"

    @classmethod
    def from_label(cls, text: str) -> "AccuracyKey":
        """The key of a :attr:`label`."""
        return cls._spelled("label", text)

    @staticmethod
    def _spelled(spelling: str, text: str) -> "AccuracyKey":
        """The key whose ``spelling`` attribute is ``text``."""
        for key in ACCURACY_KEYS:
            if getattr(key, spelling) == text:
                return key
        allowed = ", ".join(getattr(k, spelling) for k in ACCURACY_KEYS)
        raise ValueError(f"unknown accuracy {spelling.replace('_', ' ')} {text!r}; allowed: {allowed}")

    @property
    def stem(self) -> str:
        """``"cifar10_test"``: the accuracy in column names (``cifar10_test_mean``)."""
        return f"{self.dataset}_{self.split}"

    @property
    def csv_column(self) -> str:
        """``"cifar10_test_acc"``: the accuracy CSV's column (``valid``, not ``val``, in it)."""
        return f"{_CSV_STEMS[self.dataset]}_{'valid' if self.split == 'val' else 'test'}_acc"

    @classmethod
    def from_csv_column(cls, name: str) -> "AccuracyKey":
        """The key of an accuracy CSV column (:attr:`csv_column`)."""
        return cls._spelled("csv_column", name)

    @property
    def nb201(self) -> Tuple[str, str]:
        """``(NB201 dataset, metric)`` the benchmark file holds this accuracy under."""
        return _NB201[(self.dataset, self.split)]


#: The NB201 accuracies, in the paper's column order.
ACCURACY_KEYS = tuple(AccuracyKey(d, s) for d in DATASET_LABELS for s in ACCURACY_SPLITS)
#: The accuracy of the paper's search figure (Figure 6).
CIFAR10_TEST = AccuracyKey("cifar10", "test")


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

