"""Restricted unpickling: read dataset pickles without running code from the file.

A pickle is a small program; ``pickle.load`` will call any importable function the file
names (``os.system`` included). Dataset batches only need plain containers and NumPy
arrays, so :class:`RestrictedUnpickler` resolves exactly the globals that rebuild those and
refuses every other one *before* anything is called.
"""

from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


def _numpy_attr(name: str) -> Any:
    # NumPy 2 moved numpy.core to numpy._core; the reconstruction functions are the same.
    try:
        from numpy._core import multiarray, numeric  # type: ignore[attr-defined]
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    module = numeric if name == "_frombuffer" else multiarray
    return getattr(module, name)


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1"); any other
    # codec could be a transform we do not want to run, so only latin-1 is accepted.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode is only allowed with latin-1 on a str, got encoding={encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> Dict[Tuple[str, str], Callable[[], Any]]:
    """(module, name) as written in the pickle -> a thunk giving the object to use."""
    allowed: Dict[Tuple[str, str], Callable[[], Any]] = {}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(core, "_reconstruct")] = lambda: _numpy_attr("_reconstruct")
        allowed[(core, "scalar")] = lambda: _numpy_attr("scalar")
    for numeric in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(numeric, "_frombuffer")] = lambda: _numpy_attr("_frombuffer")
    allowed[("numpy", "ndarray")] = lambda: np.ndarray
    allowed[("numpy", "dtype")] = lambda: np.dtype
    for mod in ("builtins", "__builtin__"):
        for name in ("set", "frozenset", "bytearray", "complex", "slice"):
            allowed[(mod, name)] = (lambda n=name: getattr(builtins, n))
    allowed[("_codecs", "encode")] = lambda: _latin1_encode
    allowed[("collections", "OrderedDict")] = lambda: __import__("collections").OrderedDict
    return allowed


_ALLOWED = _allowed_globals()


def _is_numpy_dtype_class(module: str, name: str) -> bool:
    # NumPy >= 1.25 pickles dtypes of some arrays via their DType classes (numpy.dtypes.*DType).
    return module in ("numpy.dtypes",) and name.endswith("DType") and name.isidentifier()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, builtin scalars and NumPy arrays."""

    def __init__(self, file, *, source: str = "<stream>", **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str):
        """The global ``module.name`` if it is on the allow-list (or a ``numpy.dtypes`` DType
        class); anything else is an :class:`UnsafePickleError` naming the source. Nothing is
        imported or run for a refused name."""
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]()
        if _is_numpy_dtype_class(module, name):
            import numpy.dtypes as np_dtypes  # noqa: F401  (NumPy >= 1.25)

            obj = getattr(np_dtypes, name, None)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                return obj
        raise UnsafePickleError(
            f"{self._source}: refused to load global {module}.{name} from the pickle; only plain "
            "containers and NumPy arrays are allowed in dataset files (nothing from the file was executed)"
        )

    def persistent_load(self, pid):
        """Always an :class:`UnsafePickleError`: dataset pickles hold no persistent ids."""
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed in dataset pickles")


def load_pickle(path, *, what: str) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    ``what`` says what the file should be, for error messages ("a CIFAR-10 batch", ...).
    Missing files raise FileNotFoundError, truncated or corrupt ones ValueError, and a pickle
    that needs any other global raises :class:`UnsafePickleError` (a ValueError); all name the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected {what}")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"{path}: file is empty; expected {what} (a pickle)")
    try:
        # latin1 is how Python 2 pickles of NumPy arrays (CIFAR, ImageNet16) must be decoded.
        return RestrictedUnpickler(io.BytesIO(data), source=path, encoding="latin1").load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, MemoryError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); expected {what}; "
            "the file may be truncated or corrupt"
        ) from None
