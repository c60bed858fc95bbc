"""The scoring configuration: everything a score depends on, checked once.

A :class:`ScoreConfig` fixes what a score depends on (method, data, batch size, augmentation,
seed, engine, layout, device type, dtype); :func:`score_config` is the one way the API functions
build it from their arguments and :func:`config_from_namespace` the CLI's. How the scores are
then computed (engine, layout, memory format, chunk, device) is decided once from it by
:func:`nwot_fast.scorer.resolve_execution`, and :class:`nwot_fast.scorer.Scorer` is the one
object every command scores through.

Torch-free at import (the CLI builds its configuration before importing torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Optional

from ._common import ENGINES, METHODS, MODES, RELU_MATCHES, device_type, dtype_name
from .args import BATCH_SIZE, SEED, check_choice, check_device, check_flag, check_path

__all__ = ["ScoreConfig", "CONFIG_FIELDS", "score_config", "config_from_namespace"]


@dataclass(frozen=True)
class ScoreConfig:
    """Everything a score depends on. ``None`` fields take the per-method defaults
    (see :func:`nwot_fast.data.default_data_settings`).

    ``engine``: ``"fast"`` (execution plans and compiled operators) or ``"reference"`` (the
    pure-PyTorch oracle, one network module by module). ``mode`` (fast engine only): how it runs,
    ``"auto"`` (the device's choice, :func:`nwot_fast.scorer.default_mode`: multi-arch on CUDA,
    per-arch on the CPU), ``"per-arch"`` (one
    plan per network pass) or ``"multi-arch"`` (a chunk of architectures per network pass).
    ``seed``: 0..2**63-1, the seed of the weights and of the batches."""

    method: str = "jacob_cov"
    data: Optional[str] = None  # path to images; None: Gaussian N(0, 1) inputs
    dataset: Optional[str] = None  # cifar10 / cifar100 / ImageNet16-120; None: inferred from the data
    batch_size: Optional[int] = None
    augment: Optional[bool] = None
    fixed_batch: Optional[bool] = None
    seed: int = 0
    relu_match: str = "name"
    engine: str = "fast"
    mode: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"  # or "float64"; a torch.dtype is accepted and stored by name

    def __post_init__(self):
        # The API's arguments get the CLI's checks (nwot_fast.args), and each value one spelling,
        # so that one configuration has one hash.
        check_choice(self.method, "method", METHODS, "score method")
        check_choice(self.relu_match, "relu_match", RELU_MATCHES)
        check_choice(self.engine, "engine", ENGINES)
        check_choice(self.mode, "mode", MODES)
        if self.engine == "reference" and self.mode != "auto":
            raise ValueError(f"mode {self.mode!r} is a mode of the fast engine; the reference engine runs "
                             "each network module by module (leave mode at 'auto')")
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", BATCH_SIZE.check(self.batch_size, "batch_size"))
        object.__setattr__(self, "augment", check_flag(self.augment, "augment", allow_none=True))
        object.__setattr__(self, "fixed_batch", check_flag(self.fixed_batch, "fixed_batch", allow_none=True))
        object.__setattr__(self, "seed", SEED.check(self.seed, "seed"))
        object.__setattr__(self, "device", check_device(self.device))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if self.data is not None:
            object.__setattr__(self, "data", check_path(self.data, "data"))
        if self.dataset is not None:
            from .data import check_dataset

            # Canonical spelling, so that "CIFAR10" and "cifar10" are one configuration.
            object.__setattr__(self, "dataset", check_dataset(self.dataset))

    def resolved(self) -> "ScoreConfig":
        """This configuration with the per-method defaults filled in."""
        from .data import default_data_settings

        d = default_data_settings(self.method)
        return dataclasses.replace(
            self,
            batch_size=d["batch_size"] if self.batch_size is None else self.batch_size,
            augment=(d["augment"] and self.data is not None) if self.augment is None else self.augment,
            fixed_batch=d["fixed"] if self.fixed_batch is None else self.fixed_batch,
        )

    def identity(self) -> dict:
        """The fields that decide the scores, bit for bit. The engine and the device type are
        part of it: the fast and the reference engine, or the CPU and a GPU, agree to about
        1e-9 relative, not bitwise, so their results are kept apart. ``mode`` is part of it
        when it is not ``"auto"`` (a mode asked for by name computes in another order than the
        device's choice may). ``dtype`` always (``"float32"`` or ``"float64"``).

        The data is identified by its content (:func:`nwot_fast.data.data_fingerprint`), not by
        the path: the same file by a relative or an absolute path is one configuration, a file
        replaced at the same path is another."""
        c = self.resolved()
        ident = {
            "method": c.method,
            "data": self.data_identity(),
            "dataset": c.dataset,
            "batch_size": c.batch_size,
            "augment": c.augment,
            "fixed_batch": c.fixed_batch,
            "seed": c.seed,
            "relu_match": c.relu_match,
            "engine": c.engine,
            "device_type": device_type(c.device),
            "dtype": c.dtype,
        }
        if c.mode != "auto":
            ident["mode"] = c.mode
        return ident

    def data_identity(self) -> Optional[str]:
        """The fingerprint of the images (``None``: Gaussian inputs); see :meth:`identity`."""
        if self.data is None:
            return None
        from .data import data_fingerprint

        return data_fingerprint(self.data, self.dataset)

    def config_hash(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`identity` (sorted JSON): the key of a
        configuration's rows in a scan database."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


#: The arguments of :class:`ScoreConfig`, which ``scan``, ``search``, ``evaluate`` and the CLI take.
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ScoreConfig))


def score_config(config: Optional[ScoreConfig] = None, **options) -> ScoreConfig:
    """The :class:`ScoreConfig` of an API call: ``config`` itself, or one built from
    ``options`` (any of :data:`CONFIG_FIELDS`; ``None`` values take the defaults). Giving both,
    or an unknown option, is a TypeError."""
    unknown = sorted(set(options) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"unknown scoring option(s) {', '.join(unknown)}; allowed: {', '.join(CONFIG_FIELDS)}")
    given = {k: v for k, v in options.items() if v is not None}
    if config is not None:
        if not isinstance(config, ScoreConfig):
            raise TypeError(f"config must be a ScoreConfig, got {type(config).__name__}")
        if given:
            raise TypeError(f"give either config= or the scoring options ({', '.join(sorted(given))}), not both")
        return config
    return ScoreConfig(**given)


def config_from_namespace(args) -> ScoreConfig:
    """:func:`score_config` from the parsed command line (the attributes named like the fields)."""
    return score_config(**{f: getattr(args, f) for f in CONFIG_FIELDS if hasattr(args, f)})
