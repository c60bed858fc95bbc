"""nwot_fast: Neural Architecture Search without Training (NASWOT), fast and exact.

Nothing is computed or loaded at import; the compiled extension is loaded on first use.

Glossary (each word has this one meaning in the code, the docs and the options):

engine
    How a score is computed: ``"reference"`` (:mod:`nwot_fast.reference`, the authors'
    procedure module by module: the oracle of every test) or ``"fast"`` (compiled execution
    plans, :mod:`nwot_fast.plans`, run in one of the two modes below). ``ScoreConfig.engine``
    and the CLI's ``--engine`` take these two values.
mode
    How the fast engine runs its plans: *per-arch* (:mod:`nwot_fast.per_arch`: one
    architecture per network pass) or *multi-arch* (:mod:`nwot_fast.multi_arch`: a chunk of
    architectures stacked along the channels in one network pass).
layout
    How the multi-arch mode arranges a chunk in its network pass: ``"sparse"`` (only the
    (architecture, edge) pairs that compute something, gathered and scattered) or ``"dense"``
    (every edge of every architecture, with zero weights and 0/1 masks). NCHW versus
    channels-last is the *memory format*; the order in which the network creates its
    parameters is the *parameter order* (:func:`nwot_fast.nb201.parameter_specs`).
chunk
    Consecutive architectures whose scores are computed together: one multi-arch network pass
    (at most :data:`nwot_fast.multi_arch.MAX_CHUNK` architectures, sized from the memory by
    :mod:`nwot_fast.multi_arch.sizing`), or in the per-arch mode the passes post-processed in
    one operator call. The unit of work a Ray worker takes is a *task*, not a chunk.
plan
    What the fast engine computes for one architecture and method: typed steps over node and
    edge ids (:mod:`nwot_fast.plans`); what each NB201 op is comes from
    :mod:`nwot_fast.nb201.registry`.
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
    "backend_info": "nwot_fast._ext",
}
_SUBMODULES = ("nb201", "reference", "ops", "data", "accuracies")

__all__ = sorted(list(_LAZY) + list(_SUBMODULES) + ["__version__"])


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"nwot_fast.{name}")
    raise AttributeError(f"module 'nwot_fast' has no attribute {name!r}")


def __dir__():
    return __all__
