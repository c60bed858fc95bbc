"""The official NAS-Bench-201 index order (``meta_archs``), rebuilt without the benchmark file.

NB201 generated all 5**6 cells in nested lexicographic order (node 1, node 2, node 3; ops
in :data:`~nwot_fast.nb201.arch.OPS` order) and shuffled the list with ``random.seed(88)``.
The result is checked against the benchmark's own order in the tests.
"""

from __future__ import annotations

import functools
import operator
import random
from typing import Dict, Tuple

from .arch import Arch, as_arch

NUM_ARCHS = 15625
_SHUFFLE_SEED = 88


@functools.lru_cache(maxsize=1)
def _order() -> Tuple[Tuple[Arch, ...], Dict[Arch, int]]:
    archs = list(Arch.all())
    # The benchmark shuffled a list of strings; shuffling Arch objects consumes the RNG identically.
    rng = random.Random(_SHUFFLE_SEED)
    rng.shuffle(archs)
    return tuple(archs), {a: i for i, a in enumerate(archs)}


def arch_at(index: int) -> Arch:
    """The architecture at benchmark index ``index`` (0..15624)."""
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(f"benchmark index must be an int, got {type(index).__name__}") from None
    if isinstance(index, bool) or not 0 <= i < NUM_ARCHS:
        raise ValueError(f"benchmark index {index!r} out of range; allowed 0..{NUM_ARCHS - 1}")
    return _order()[0][i]


def index_of(arch) -> int:
    """The benchmark index of ``arch`` (an :class:`Arch` or an official string)."""
    return _order()[1][as_arch(arch)]
