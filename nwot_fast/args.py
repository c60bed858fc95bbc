"""Checks of the values a user gives, one per kind, shared by the Python API and the command line.

Each kind of value is checked here and nowhere else. The API (``ScoreConfig``, ``scan``,
``search``, ``evaluate``, ``score_arch``, ``search_table``) calls ``check`` with the argument's
name and gets a TypeError / ValueError that names it; the command line's argparse types are
``parse`` of the same objects, so both accept the same values and refuse the same ones (the CLI's
message is prefixed by argparse with the option, e.g. ``argument --batch-size: ...``).

Torch-free and numpy-free, so that ``nwot-fast --help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from ._common import NUM_ARCHS, SEED_MAX, check_int

__all__ = ["IntRange", "BATCH_SIZE", "SEED", "N_SAMPLES", "RUNS", "N_ARCHS", "check_flag", "check_choice",
           "check_device", "check_path"]


@dataclass(frozen=True)
class IntRange:
    """An integer argument with inclusive bounds ``low..high``.

    ``check(value, name)`` is the API's check (bool and non-integers are a TypeError, a value
    out of range a ValueError, both naming ``name`` and the range); ``parse(text)`` is the
    argparse type of the same range."""

    low: int
    high: int
    what: str = "an integer"

    def check(self, value, name: str) -> int:
        """``value`` as an int in the range: a TypeError for a non-int (bool included), a
        ValueError naming ``name`` and the range otherwise (the API's check)."""
        return check_int(value, name, self.low, self.high)

    def parse(self, text: str) -> int:
        """The command line's reading of ``text`` (an argparse ``type=``): the same range, with
        argparse's usage error instead of an exception."""
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.what} in {self.low}..{self.high}, got {text!r}") from None
        if not self.low <= value <= self.high:
            raise argparse.ArgumentTypeError(f"must be in {self.low}..{self.high}, got {value}")
        return value


#: Upper bounds of the counts: far above any real use, low enough that a typo (1e20) is an error at
#: once instead of an allocation failure or a run that never ends.
BATCH_SIZE = IntRange(2, 65536)  # at least 2: the scores compare samples
SEED = IntRange(0, SEED_MAX, "a seed (an integer)")  # an SQLite INTEGER; torch.manual_seed takes it
N_SAMPLES = IntRange(1, 1_000_000)
RUNS = IntRange(1, 1_000_000)
N_ARCHS = IntRange(1, NUM_ARCHS)


def check_flag(value, name: str, *, allow_none: bool = False) -> Optional[bool]:
    """``True`` or ``False`` (a NumPy bool too); ``None`` when ``allow_none`` (the default of the
    option). Anything else, ``'no'``, ``0`` or ``'false'`` included, is a TypeError: those have no
    single reading (``bool('no')`` is True) and would give configurations of their own."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    allowed = "True or False" + (" (or None: the default)" if allow_none else "")
    raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")


def check_choice(value, name: str, allowed: Sequence[str], what: Optional[str] = None) -> str:
    """``value`` when it is one of the strings ``allowed``; a TypeError for a non-string, a
    ValueError listing ``allowed`` otherwise (``what`` names the kind, default ``name``)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {', '.join(allowed)}; got {type(value).__name__} {value!r}")
    if value not in allowed:
        raise ValueError(f"unknown {what or name} {value!r}; allowed: {', '.join(allowed)}")
    return value


_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?|auto")


def check_device(value, name: str = "device") -> str:
    """A device by name: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (a ``torch.device`` is taken by
    its name). Whether CUDA is there is decided later, by :func:`nwot_fast._common.resolve_device`."""
    text = str(value) if type(value).__name__ == "device" and type(value).__module__ == "torch" else value
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string (cpu, cuda, cuda:N or auto) or a torch.device, "
                        f"got {type(value).__name__} {value!r}")
    if not _DEVICE.fullmatch(text):
        raise ValueError(f"unknown {name} {text!r}; allowed: cpu, cuda, cuda:N, auto")
    return text


def check_path(value, name: str) -> str:
    """A file or directory name given as ``str`` or ``os.PathLike``, not empty: returned as str."""
    try:
        path = os.fspath(value)
    except TypeError:
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__} {value!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{name} is an empty path")
    return path
