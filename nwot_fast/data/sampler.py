"""Normalisation, deterministic batches, and the per-score data defaults.

A batch is a pure function of ``(seed, key)``: the generator is seeded from
``numpy.random.SeedSequence`` with both, so any process, in any call order, gets bitwise the
same batch. ``key`` is normally the architecture's position in a run; with ``fixed=True``
the key is ignored and every architecture sees the same batch (the 2021 score's protocol).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .._common import check_int
from .constants import MEAN, STD, check_dataset
from .readers import ImageSet, check_images

#: Data protocol of each score, as the authors ran it. jacob_cov (the original 2020 score):
#: augmented training images, a new random batch per architecture, batch 256. hook_logdet
#: (the 2021 score): no augmentation, one batch for every architecture in a run, batch 128.
DATA_SETTINGS = {
    "jacob_cov": {"batch_size": 256, "augment": True, "fixed": False},
    "hook_logdet": {"batch_size": 128, "augment": False, "fixed": True},
}

# Domain tags keep the fixed batch's stream apart from every per-key stream.
_PER_KEY, _FIXED = 0, 1


def default_data_settings(method: str) -> dict:
    """``dict(batch_size=..., augment=..., fixed=...)`` for score ``method``."""
    if method not in DATA_SETTINGS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(DATA_SETTINGS)}")
    return dict(DATA_SETTINGS[method])


def normalize(images, dataset: str) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, H, W]``: ``(x / 255 - MEAN) / STD``.

    Done with the same float32 operations as torchvision's ``ToTensor`` + ``Normalize``, so
    the values are bitwise those of NB201's transform.
    """
    dataset = check_dataset(dataset)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    check_images(images, "normalize")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32).div(255)
    mean = torch.as_tensor(MEAN[dataset], dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(STD[dataset], dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std).contiguous()


def crop_padding(height: int) -> int:
    """Zero padding of the random crop: 4 for 32x32 images, 2 for 16x16 (NB201's transforms)."""
    return max(1, height // 8)


class BatchSampler:
    """Deterministic input batches for scoring, from an :class:`ImageSet` or Gaussian noise.

    ``batch(key)`` draws ``batch_size`` distinct images (without replacement) with a generator
    seeded from ``(seed, key)``; with ``augment`` each image is randomly flipped and then
    randomly cropped from a zero-padded copy (pad 4 for 32x32, 2 for 16x16), as NB201's
    ``RandomHorizontalFlip`` + ``RandomCrop(padding=...)``; then normalised with the dataset's
    MEAN/STD. ``images=None`` gives N(0, 1) inputs of ``image_shape`` (``augment`` does not
    apply to noise and is ignored). With ``images`` given, ``image_shape`` is the images' own.
    """

    def __init__(self, images: Optional[ImageSet], *, batch_size: int, augment: bool, fixed: bool, seed: int,
                 image_shape: Tuple[int, int, int] = (3, 32, 32)):
        self.batch_size = check_int(batch_size, "batch_size", 2)
        self.seed = check_int(seed, "seed", 0)
        for name, flag in (("augment", augment), ("fixed", fixed)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.augment = bool(augment)
        self.fixed = bool(fixed)
        if images is not None and not isinstance(images, ImageSet):
            raise TypeError(f"images must be an ImageSet (see nwot_fast.data.load_images) or None for Gaussian "
                            f"inputs, got {type(images).__name__}")
        self.images = images
        if images is None:
            try:
                shape = tuple(check_int(s, "image_shape entry", 1) for s in image_shape)
            except TypeError:
                raise TypeError(f"image_shape must be a tuple of 3 ints (C, H, W), got {image_shape!r}") from None
            if len(shape) != 3:
                raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
            self.image_shape = shape
            self.dataset = None
        else:
            if self.batch_size > len(images):
                raise ValueError(f"batch_size {self.batch_size} is larger than the {len(images)} images in "
                                 f"{images.source}; batches are drawn without replacement")
            self.image_shape = images.image_shape
            self.dataset = images.dataset
        self._fixed_batch: Optional[torch.Tensor] = None

    def _rng(self, key: int) -> np.random.Generator:
        entropy = [self.seed, _FIXED] if self.fixed else [self.seed, _PER_KEY, key]
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))

    def batch(self, key: int) -> torch.Tensor:
        """The float32 ``[B, C, H, W]`` batch for ``key`` (an int >= 0; ignored when fixed)."""
        key = check_int(key, "batch key", 0)
        if self.fixed:
            if self._fixed_batch is None:
                self._fixed_batch = self._draw(self._rng(key))
            return self._fixed_batch.clone()
        return self._draw(self._rng(key))

    def _draw(self, rng: np.random.Generator) -> torch.Tensor:
        if self.images is None:
            return torch.from_numpy(rng.standard_normal((self.batch_size, *self.image_shape), dtype=np.float32))
        chosen = rng.choice(len(self.images), size=self.batch_size, replace=False)
        pixels = self.images.images[chosen]
        if self.augment:
            pixels = augment_batch(pixels, rng)
        return normalize(pixels, self.dataset)

    def describe(self) -> str:
        """One line saying where the batches come from: the dataset, source and image count (or
        Gaussian noise and its shape), augmentation, batch size, fixed or per-architecture
        batches, and the seed."""
        per_arch = "one fixed batch for every architecture" if self.fixed else "new batch per architecture"
        shape = ",".join(map(str, self.image_shape))
        if self.images is None:
            return f"Gaussian N(0,1) inputs [{shape}], batch {self.batch_size}, {per_arch} (seed {self.seed})"
        aug = "augmented (flip + padded crop)" if self.augment else "not augmented"
        return (f"{self.dataset} images from {self.images.source} ({len(self.images)} images), {aug}, "
                f"batch {self.batch_size}, {per_arch} (seed {self.seed})")

    def __repr__(self) -> str:
        return f"BatchSampler({self.describe()})"


def augment_batch(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image: horizontal flip with p=0.5, then a random crop of the zero-padded image.

    Order and padding as NB201's train transform (flip, then ``RandomCrop(size, padding)``,
    padding with pixel value 0 before normalisation).

    Args:
        pixels: uint8 ``[N, H, W, 3]`` images (not modified).
        rng: the generator the flips and crop offsets are drawn from (N flips, then N offset pairs).

    Returns:
        A new uint8 ``[N, H, W, 3]`` array.
    """
    n, h, w, _ = pixels.shape
    pad = crop_padding(h)
    flips = rng.random(n) < 0.5
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flipped = np.where(flips[:, None, None, None], pixels[:, :, ::-1], pixels)
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad, 3), dtype=np.uint8)
    padded[:, pad:pad + h, pad:pad + w] = flipped
    out = np.empty_like(pixels)
    for b in range(n):
        i, j = offsets[b]
        out[b] = padded[b, i:i + h, j:j + w]
    return out
