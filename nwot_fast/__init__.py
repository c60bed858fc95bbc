"""nwot_fast: Neural Architecture Search without Training (NASWOT), fast and exact.

Nothing is computed or loaded at import; the compiled extension is loaded on first use.
"""

from __future__ import annotations

import importlib

from ._common import __version__  # noqa: F401  (the package version)

# Public name -> module that defines it; resolved lazily so that importing the package is cheap.
_LAZY = {
    "score": "nwot_fast.reference",
    "score_arch": "nwot_fast.per_arch",
    "scan": "nwot_fast.scan",
    "search": "nwot_fast.search",
    "SearchResult": "nwot_fast.search",
    "evaluate": "nwot_fast.evaluate",
    "Scorer": "nwot_fast.scorer",
    "ScoreConfig": "nwot_fast.config",
    "backend_info": "nwot_fast._ext",
}
_SUBMODULES = ("nb201", "reference", "ops", "data", "accuracies")
# Old module names, still reachable as attributes of the package.
_RENAMED = {"benchmark": "accuracies"}

__all__ = sorted(list(_LAZY) + list(_SUBMODULES) + ["__version__"])


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES or name in _RENAMED:
        return importlib.import_module(f"nwot_fast.{_RENAMED.get(name, name)}")
    raise AttributeError(f"module 'nwot_fast' has no attribute {name!r}")


def __dir__():
    return __all__
