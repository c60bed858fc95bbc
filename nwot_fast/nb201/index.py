"""The official NAS-Bench-201 index order (``meta_archs``), rebuilt without the benchmark file.

NB201 generated all 5**6 cells in nested lexicographic order (node 1, node 2, node 3; ops
in :data:`~nwot_fast.nb201.constants.OPS` order) and shuffled the list with ``random.seed(88)``.
The result is checked against the benchmark's own order in the tests.
"""

from __future__ import annotations

import functools
import random
from typing import Dict, Tuple

from .._common import NUM_ARCHS, check_index  # noqa: F401  (NUM_ARCHS: re-exported)
from .arch import Arch
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
    return _order()[0][check_index(index)]


def index_of(arch) -> int:
    """The benchmark index of ``arch`` (an :class:`Arch` or an official string)."""
    return _order()[1][as_arch(arch)]


def as_arch(arch) -> Arch:
    """Accept an :class:`Arch`, an official string or a benchmark index."""
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str):
        return Arch.from_str(arch)
    if isinstance(arch, int) and not isinstance(arch, bool):
        return arch_at(arch)
    raise TypeError(f"arch must be an Arch, an arch string or a benchmark index, got {type(arch).__name__}")
