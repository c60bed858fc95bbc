"""Figure 5's measurement: the score at initialisation of pytorchcv's CIFAR-10 models against
their trained CIFAR-10 test accuracy, and whether the association survives correcting for
the number of parameters.

Each model is built untrained (``pytorchcv.model_provider.get_model(name, pretrained=False)``,
right after ``torch.manual_seed(seed)``; nothing is downloaded) and scored with the generic
path :func:`nwot_fast.score` on one batch of CIFAR-10 images. Its accuracy is
``100 - error`` from pytorchcv's own model table (the error of the released trained weights
on the CIFAR-10 test set). Two ordinary least-squares fits (statsmodels):
``accuracy ~ score`` and ``accuracy ~ score + log(parameters)``; the coefficient of the score
and its p-value are reported for both.

pytorchcv and statsmodels are optional (``pip install 'nwot_fast[zoo]'``); without them
:class:`ZooNotInstalledError` (the command line exits 2 with the install hint).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._common import METHODS, json_float
from .errors import MissingDependencyError

__all__ = ["DEFAULT_MODELS", "INSTALL_HINT", "ZooNotInstalledError", "ZooResult", "check_installed", "cifar10_models",
           "fit_zoo", "score_zoo"]

INSTALL_HINT = "pip install 'nwot_fast[zoo]' (from a checkout: pip install .[zoo])"

#: The CIFAR-10 models of pytorchcv's table scored by default: the 40 whose forward pass costs
#: at most 0.9 GFLOP per 32x32 image (torch's FlopCounterMode). On the project's 2-core machine
#: under a load of 10-16 (one thread, batch 64) each took 1-33 s for jacob_cov and 1-130 s for
#: hook_logdet, building included; the next ones up (DenseNet-40 k=36, PyramidNet-110 a84,
#: ResNeXt-29 32x4d, the ResNet-542bn family: 1.3-1.6 GFLOP) took 49-541 s each for jacob_cov,
#: and the largest (up to 21 GFLOP) more. Name any of them with ``models=``.
DEFAULT_MODELS: Tuple[str, ...] = (
    "resnet20_cifar10", "resnet56_cifar10", "resnet110_cifar10", "resnet164bn_cifar10", "resnet272bn_cifar10",
    "preresnet20_cifar10", "preresnet56_cifar10", "preresnet110_cifar10", "preresnet164bn_cifar10",
    "preresnet272bn_cifar10",
    "seresnet20_cifar10", "seresnet56_cifar10", "seresnet110_cifar10", "seresnet164bn_cifar10",
    "seresnet272bn_cifar10",
    "sepreresnet20_cifar10", "sepreresnet56_cifar10", "sepreresnet110_cifar10", "sepreresnet164bn_cifar10",
    "sepreresnet272bn_cifar10",
    "diaresnet20_cifar10", "diaresnet56_cifar10", "diaresnet110_cifar10", "diaresnet164bn_cifar10",
    "diapreresnet20_cifar10", "diapreresnet56_cifar10", "diapreresnet110_cifar10", "diapreresnet164bn_cifar10",
    "densenet40_k12_cifar10", "densenet40_k12_bc_cifar10", "densenet40_k24_bc_cifar10",
    "densenet100_k12_bc_cifar10", "xdensenet40_2_k24_bc_cifar10",
    "ror3_56_cifar10", "ror3_110_cifar10", "ror3_164_cifar10",
    "pyramidnet110_a48_cifar10",
    "shakeshakeresnet20_2x16d_cifar10", "shakeshakeresnet26_2x32d_cifar10",
    "nin_cifar10",
)


class ZooNotInstalledError(MissingDependencyError):
    """pytorchcv or statsmodels is not importable (``pip install 'nwot_fast[zoo]'``)."""


def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ZooNotInstalledError(f"Figure 5 needs {module.split('.')[0]}, which cannot be imported ({e}); "
                                   f"install it with: {INSTALL_HINT}") from None


def check_installed() -> None:
    """Raise :class:`ZooNotInstalledError` (with the reason and the install hint) unless
    pytorchcv's model provider, its model table and statsmodels can be imported."""
    _import("pytorchcv.model_provider")
    cifar10_models()
    _import("statsmodels.api")


def cifar10_models() -> Dict[str, float]:
    """``{model name: CIFAR-10 test accuracy (%)}`` of every CIFAR-10 model with trained
    weights in pytorchcv's model table (``100 - error``; the table stores the error in
    hundredths of a percent). Both layouts of the table are read: the CSV of pytorchcv >= 0.0.73
    (``get_model_metainfo_dict``) and the tuples of earlier releases (``_model_sha1``)."""
    try:
        store = _import("pytorchcv.models.common.model_store")
        errors = {name: info[1] for name, info in store.get_model_metainfo_dict().items()}
    except ZooNotInstalledError:
        store = _import("pytorchcv.models.model_store")
        errors = {name: info[0] for name, info in store._model_sha1.items()}
    out = {}
    for name, error in errors.items():
        if name.endswith("_cifar10") and isinstance(error, str) and error.isdigit():
            out[name] = 100.0 - int(error) / 100.0
    if not out:
        raise ZooNotInstalledError(f"pytorchcv's model table lists no CIFAR-10 model with an error value; {INSTALL_HINT}")
    return out


@dataclass
class ZooModel:
    """One scored model: its name, CIFAR-10 test accuracy (%), parameter count, score at
    initialisation and the seconds the scoring took (building the model included)."""

    name: str
    accuracy: float
    params: int
    score: float
    seconds: float

    def to_dict(self) -> dict:
        """This model's row as JSON-ready data."""
        return {"model": self.name, "accuracy": self.accuracy, "params": self.params, "score": json_float(self.score),
                "seconds": round(self.seconds, 3)}


@dataclass
class ZooResult:
    """Scores of the models, the models skipped (with why), and the two fits
    (:func:`fit_zoo`)."""

    method: str
    models: List[ZooModel]
    skipped: List[Tuple[str, str]]
    fits: Dict[str, dict]
    batch_size: int
    seed: int
    data_description: str
    excluded: List[Tuple[str, str]] = field(default_factory=list)
    fit_note: str = ""

    def skip_lines(self) -> List[str]:
        """One line per model that was not scored or was left out of the fits, with the reason."""
        return [f"skipped {name}: {why}" for name, why in self.skipped] + \
               [f"left out of the fits {name}: {why}" for name, why in self.excluded] + \
               ([f"no fits: {self.fit_note}"] if self.fit_note else [])

    def to_dict(self) -> dict:
        """Every model, the skips and both fits as JSON-ready data."""
        return {"method": self.method, "batch_size": self.batch_size, "seed": self.seed, "data": self.data_description,
                "models": [m.to_dict() for m in self.models],
                "skipped": [{"model": n, "reason": r} for n, r in self.skipped],
                "excluded_from_fits": [{"model": n, "reason": r} for n, r in self.excluded], "fit_note": self.fit_note,
                "fits": {k: {a: json_float(b) if isinstance(b, float) else b for a, b in v.items()}
                         for k, v in self.fits.items()}}

    def format_text(self) -> str:
        """The models, the skips and the two fits (coefficient of the score and its p-value) as text."""
        lines = [f"{self.method} at initialisation of {len(self.models)} pytorchcv CIFAR-10 models; "
                 f"{self.data_description}",
                 f"{'model':<34} {'accuracy':>8} {'params':>10} {'score':>14} {'seconds':>8}"]
        for m in self.models:
            lines.append(f"{m.name:<34} {m.accuracy:>8.2f} {m.params:>10d} {m.score:>14.6g} {m.seconds:>8.1f}")
        lines += self.skip_lines()
        for name, f in self.fits.items():
            lines.append(f"fit accuracy ~ {name}: coefficient of the score {f['score_coef']:.4g} "
                         f"(p = {f['score_p']:.3g}), R^2 {f['r2']:.3f}, n = {f['n']}")
        return "\n".join(lines)


FIT_SCORE = "score"
FIT_WITH_PARAMS = "score + log(params)"


def fit_zoo(scores, accuracies, params) -> Dict[str, dict]:
    """Ordinary least squares (statsmodels) of ``accuracy ~ 1 + score`` and
    ``accuracy ~ 1 + score + log(params)``: per fit the score's coefficient ``score_coef``,
    its standard error, t, two-sided p-value ``score_p`` and 95 % interval, the ``intercept``,
    ``r2`` and ``n`` (and the coefficient and p-value of log(params) in the second fit).
    All three inputs are 1-D of one length with finite values; at least 4 models."""
    sm = _import("statsmodels.api")
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(accuracies, dtype=np.float64)
    p = np.asarray(params, dtype=np.float64)
    if not (s.ndim == a.ndim == p.ndim == 1 and s.size == a.size == p.size):
        raise ValueError(f"scores, accuracies and params must be 1-D of one length, got {s.shape}, {a.shape}, {p.shape}")
    if not (np.isfinite(s).all() and np.isfinite(a).all() and (p > 0).all()):
        raise ValueError("scores and accuracies must be finite and parameter counts positive; leave the others out")
    if s.size < 4:
        raise ValueError(f"the fits need at least 4 models, got {s.size}")
    out = {}
    for name, columns in ((FIT_SCORE, [s]), (FIT_WITH_PARAMS, [s, np.log(p)])):
        model = sm.OLS(a, sm.add_constant(np.column_stack(columns), has_constant="add")).fit()
        low, high = model.conf_int()[1]
        out[name] = {"intercept": float(model.params[0]), "score_coef": float(model.params[1]),
                     "score_se": float(model.bse[1]),
                     "score_t": float(model.tvalues[1]), "score_p": float(model.pvalues[1]),
                     "score_ci95": [float(low), float(high)], "r2": float(model.rsquared), "n": int(s.size)}
        if name == FIT_WITH_PARAMS:
            out[name].update(log_params_coef=float(model.params[2]), log_params_p=float(model.pvalues[2]))
    return out


# Exceptions a model's construction or forward pass may raise for reasons of its own (an op
# this torch lacks, a shape it cannot take, memory): the model is skipped, with the reason.
_MODEL_FAILURES = (RuntimeError, ValueError, TypeError, NotImplementedError, MemoryError)


def score_zoo(x, *, models: Optional[Sequence[str]] = None, method: str = "jacob_cov", seed: int = 0,
              data_description: str = "", progress: Optional[Callable[[int, int, str], None]] = None) -> ZooResult:
    """Score ``models`` (default :data:`DEFAULT_MODELS`) at initialisation on the batch ``x``
    (float32 ``[B, 3, 32, 32]``, normalised CIFAR-10 images) with :func:`nwot_fast.score`, and
    fit accuracy against the scores. A model that is not a CIFAR-10 model with an accuracy in
    pytorchcv's table, or whose construction or scoring fails, is skipped with the reason; one
    with a NaN or -inf score is kept and left out of the fits. ``progress(done, total, name)``
    after each model."""
    import torch

    from .reference import score

    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    provider = _import("pytorchcv.model_provider")
    accuracy = cifar10_models()
    names = list(DEFAULT_MODELS if models is None else models)
    if not names:
        raise ValueError("no models to score")
    scored: List[ZooModel] = []
    skipped: List[Tuple[str, str]] = []
    for n, name in enumerate(names, start=1):
        if name not in accuracy:
            skipped.append((name, "not a CIFAR-10 model with a test error in pytorchcv's model table"))
        else:
            start = time.perf_counter()
            try:
                # The forward pass inside the seeded block too: some models draw random numbers
                # in train mode (Dropout in NIN, the branch weights of Shake-Shake), and their
                # score must not depend on the caller's RNG state.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = provider.get_model(name, pretrained=False)
                    value = score(model, x, method)
                params = int(sum(p.numel() for p in model.parameters()))
            except _MODEL_FAILURES as e:
                skipped.append((name, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"))
            else:
                scored.append(ZooModel(name, accuracy[name], params, float(value), time.perf_counter() - start))
        if progress is not None:
            progress(n, len(names), name)
    usable = [m for m in scored if math.isfinite(m.score)]
    excluded = [(m.name, f"score is {m.score!r}") for m in scored if not math.isfinite(m.score)]
    fits, note = {}, f"only {len(usable)} models with a finite score; the fits need 4"
    if len(usable) >= 4:
        fits, note = fit_zoo([m.score for m in usable], [m.accuracy for m in usable], [m.params for m in usable]), ""
    return ZooResult(method=method, models=scored, skipped=skipped, fits=fits, batch_size=int(x.shape[0]), seed=seed,
                     data_description=data_description, excluded=excluded, fit_note=note)
