"""The error kinds a user can cause that are not a mistake in an input value, and the one
mapping of exceptions to the command line's exit codes.

The mapping goes by type (:func:`classify`); each message is the exception's own, on one line.
Torch-free: the command line imports this before any command runs.
"""

from __future__ import annotations

import errno
import importlib
import sys
from typing import Optional, Tuple

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_RESOURCE = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class ResourceError(RuntimeError):
    """A resource the command needs is not there or not usable now (CUDA, memory, a locked or
    read-only database, a lost cluster): exit 3. The modules' own kinds subclass it, so the
    mapping needs no import of them."""


class OutputError(OSError):
    """An output file cannot be written (read-only place, no permission, disk full): a resource
    problem (exit 3). Nothing half-written is left behind."""

    def __str__(self) -> str:
        return str(self.strerror)


class Terminated(Exception):
    """SIGTERM arrived (schedulers send it before killing a preempted job): exit 143."""


class MissingDependencyError(ImportError):
    """An optional package that a command needs is not installed: exit 2; the message says
    which extra to install."""


def require(module: str, extra: str, purpose: str):
    """Import ``module`` for ``purpose``, or raise :class:`MissingDependencyError` naming the
    extra of ``setup.py`` that declares it (``pip install 'nwot_fast[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the package {module}, which is not installed or cannot be imported ({e}); "
            f"install it with: pip install 'nwot_fast[{extra}]' (from a checkout: pip install '.[{extra}]')"
        ) from e


#: Exception kinds that mean bad input (a value, a name, a file): exit 2.
BAD_INPUT = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

#: errno values that mean the place an output goes cannot take it: exit 3.
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EFBIG, errno.EDQUOT, errno.EIO})


def is_allocation_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failed memory allocation: MemoryError (Python, NumPy), torch's
    OutOfMemoryError (CUDA), or the RuntimeError of torch's CPU allocator, which has no type of
    its own (``DefaultCPUAllocator: can't allocate memory``, torch 2.9 to 2.14)."""
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (a KeyError or an empty message gets its type)."""
    text = " ".join(str(e).split())
    if isinstance(e, KeyError) or not text:
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text


def classify(e: BaseException) -> Optional[Tuple[int, Optional[str]]]:
    """``(exit code, one-line message)`` for an exception a user can cause, ``None`` for a bug
    (exit 1 with its traceback). The message is None where nothing should be said (a closed
    pipe on stdout)."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; results already saved are kept"
    if isinstance(e, Terminated):
        return EXIT_TERMINATED, "terminated (SIGTERM); results already saved are kept"
    if isinstance(e, MissingDependencyError):
        return EXIT_USAGE, one_line(e)
    if isinstance(e, OutputError):  # also process.StreamError: stdout/stderr closed, full, unencodable
        return EXIT_RESOURCE, one_line(e)
    if isinstance(e, BrokenPipeError):  # stdout closed early (piped into `head`): not an error of ours
        return EXIT_OK, None
    if isinstance(e, ResourceError):  # also store.ScanDatabaseError, distributed.ClusterError
        return EXIT_RESOURCE, one_line(e)
    if is_allocation_failure(e):
        text = one_line(e) if str(e) else "out of memory"
        if "out of memory" not in text:
            text = f"out of memory ({text})"
        if "--batch-size" not in text:
            text += "; lower --batch-size, or use a machine with more memory"
        return EXIT_RESOURCE, text
    if isinstance(e, OSError) and e.errno in RESOURCE_ERRNOS:
        return EXIT_RESOURCE, one_line(e)
    if isinstance(e, BAD_INPUT):
        return EXIT_USAGE, one_line(e)
    return None
