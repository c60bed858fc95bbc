"""Scoring NB201 architectures by index: one configuration, one place.

A :class:`ScoreConfig` fixes everything a score depends on (method, data, batch size,
augmentation, seed, engine, device type, dtype); :func:`score_config` is the one way the API
functions and the CLI build it from their arguments; :class:`ArchScorer` turns benchmark indices into scores under
that configuration. The same configuration and index give bitwise the same score on the CPU
in any process and in any order: the weights come from ``torch.manual_seed(config.seed)``
and the batch from the data sampler keyed by the architecture's index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch

from . import reference
from ._common import ENGINES, METHODS, RELU_MATCHES, device_type, dtype_name, resolve_device
from .args import BATCH_SIZE, SEED, check_choice, check_device, check_flag, check_path
from .errors import is_allocation_failure
from .nb201 import Arch, arch_at, build_network

@dataclass(frozen=True)
class ScoreConfig:
    """Everything a score depends on. ``None`` fields take the per-method defaults
    (see :func:`nwot_fast.data.default_data_settings`)."""

    method: str = "jacob_cov"
    data: Optional[str] = None  # path to images; None: Gaussian N(0, 1) inputs
    dataset: Optional[str] = None  # cifar10 / cifar100 / ImageNet16-120; None: inferred from the data
    batch_size: Optional[int] = None
    augment: Optional[bool] = None
    fixed_batch: Optional[bool] = None
    seed: int = 0
    relu_match: str = "name"
    engine: str = "fast"
    device: str = "cpu"
    dtype: str = "float32"  # or "float64"; a torch.dtype is accepted and stored by name

    def __post_init__(self):
        # The API's arguments get the CLI's checks (nwot_fast.args), and each value one spelling,
        # so that one configuration has one hash.
        check_choice(self.method, "method", METHODS, "score method")
        check_choice(self.relu_match, "relu_match", RELU_MATCHES)
        check_choice(self.engine, "engine", ENGINES)
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
        1e-9 relative, not bitwise, so their results are kept apart. ``dtype`` is part of it
        only when it is float64, so that float32 configurations keep the hash they had before
        the option existed (rows of older databases are float32 rows).

        The data is identified by its content (:func:`nwot_fast.data.data_fingerprint`), not by
        the path: the same file by a relative or an absolute path is one configuration, a file
        replaced at the same path is another. (Before, the path text was the key: rows of
        older databases scored on images are kept and listed, but no longer resumed.)"""
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
        }
        if c.dtype != "float32":
            ident["dtype"] = c.dtype
        return ident

    def data_identity(self) -> Optional[str]:
        """The fingerprint of the images (``None``: Gaussian inputs); see :meth:`identity`."""
        if self.data is None:
            return None
        from .data import data_fingerprint

        return data_fingerprint(self.data, self.dataset)

    def config_hash(self) -> str:
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


@dataclass(frozen=True)
class ArchScore:
    index: int
    arch: Arch
    score: float
    seconds: float

    def to_dict(self) -> dict:
        return {"arch_index": self.index, "arch": str(self.arch), "score": self.score, "seconds": self.seconds}


def score_with_reference(arch, x: torch.Tensor, *, method: str, seed: int, relu_match: str = "name",
                         dtype="float32") -> float:
    """The pure path for one architecture: ``build_network`` right after ``torch.manual_seed(seed)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(arch).to(x.device)
    return reference.score(model, x, method, relu_match=relu_match, dtype=dtype)


class ArchScorer:
    """Scores benchmark indices under one :class:`ScoreConfig`."""

    def __init__(self, config: ScoreConfig, images=None):
        from .data import BatchSampler, load_images

        self.config = config.resolved()
        self.device = resolve_device(self.config.device)
        if images is None and self.config.data is not None:
            images = load_images(self.config.data, dataset=self.config.dataset)
        self.images = images
        shape = (3,) + tuple(images.images.shape[1:3]) if images is not None else (3, 32, 32)
        self.sampler = BatchSampler(
            images,
            batch_size=self.config.batch_size,
            augment=bool(self.config.augment),
            fixed=bool(self.config.fixed_batch),
            seed=self.config.seed,
            image_shape=shape,
        )

    def describe_data(self) -> str:
        return self.sampler.describe()

    def batch_for(self, index: int) -> torch.Tensor:
        return self.sampler.batch(index).to(self.device)

    def score_index(self, index: int) -> ArchScore:
        arch = arch_at(index)
        start = time.perf_counter()
        c = self.config
        try:
            x = self.batch_for(index)
            if c.engine == "fast":
                from .per_arch import score_arch

                s = score_arch(arch, x, method=c.method, seed=c.seed, device=self.device, relu_match=c.relu_match,
                               dtype=c.dtype)
            else:
                s = score_with_reference(arch, x, method=c.method, seed=c.seed, relu_match=c.relu_match,
                                         dtype=c.dtype)
        except RuntimeError as e:  # torch.OutOfMemoryError (CUDA) is one; the CPU allocator's has no type
            if not is_allocation_failure(e):
                raise
            raise MemoryError(
                f"out of memory scoring architecture {index} with batch size {c.batch_size} on {self.device}; "
                "lower --batch-size or use another device (the batch is never split: that would change "
                "train-mode BatchNorm statistics and so the score)"
            ) from e
        return ArchScore(index, arch, float(s), time.perf_counter() - start)

    def score_indices(self, indices: Iterable[int]) -> Iterator[ArchScore]:
        for index in indices:
            yield self.score_index(int(index))

