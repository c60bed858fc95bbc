"""The scoring protocol of a table: which images, how they are identified, which configuration.

A table is scored on the first N images of a training set (N = 128 for the shipped NB201
tables: the first 128 CIFAR-10 training images, from ``data_batch_1``), with a fixed batch
(the sampler's seeded permutation of those N images), no augmentation, weights seeded before
each architecture. The images are identified by their pixels, not by a file: the
fingerprint is the SHA-256 of the uint8 ``[N, H, W, 3]`` array (preceded by its shape), so a
CIFAR-10 batch directory, the ``.npz`` sample and an ``.npz`` of the first N images all give
the same fingerprint when they hold the same pixels.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from .._common import atomic_write, check_int, check_output_file

__all__ = ["PIXELS_PREFIX", "describe_images", "first_images", "pixel_fingerprint", "save_first_images", "table_config"]

PIXELS_PREFIX = "sha256-pixels:"


def pixel_fingerprint(images) -> str:
    """``"sha256-pixels:<hex>"`` of uint8 images ``[N, H, W, 3]``: SHA-256 of the line
    ``"uint8 NxHxWx3\\n"`` followed by the C-order pixel bytes."""
    from ..data.readers import check_images

    check_images(images, "pixel_fingerprint")
    h = hashlib.sha256(("uint8 " + "x".join(str(s) for s in images.shape) + "\n").encode("ascii"))
    h.update(np.ascontiguousarray(images).tobytes())
    return PIXELS_PREFIX + h.hexdigest()


def first_images(source, count: int, dataset: Optional[str] = None):
    """The first ``count`` training images of ``source`` (a CIFAR-10/100 or ImageNet16-120
    batch directory, a batch file, or an ``.npz`` with ``x``, ``y``; see
    :func:`nwot_fast.data.load_images`) as an :class:`~nwot_fast.data.ImageSet`; fewer images
    in ``source`` is a ValueError."""
    from ..data import ImageSet, load_images

    count = check_int(count, "count", 1)
    images = load_images(source, dataset=dataset, split="train")
    if len(images) < count:
        raise ValueError(f"{images.source}: holds {len(images)} images; the table's protocol needs the first {count} "
                         "training images")
    return ImageSet(images.images[:count].copy(), images.labels[:count].copy(), images.dataset,
                    f"the first {count} images of {images.source}")


def save_first_images(source, out, count: int = 128, dataset: Optional[str] = None) -> str:
    """Write the first ``count`` training images of ``source`` (and their labels) to the
    ``.npz`` file ``out`` (arrays ``x``, ``y``): the ``--data`` file of the scan a table's
    ``command`` runs. Returns the pixel fingerprint, which equals the table's when the images
    are the same."""
    check_output_file(out, "image file", (".npz",))
    images = first_images(source, count, dataset)
    with atomic_write(out, "image file", mode="wb") as f:
        np.savez(f, x=images.images, y=images.labels)
    return pixel_fingerprint(images.images)


def table_config(provenance: dict, dtype: Optional[str] = None):
    """The :class:`~nwot_fast.scoring.ScoreConfig` of a table's protocol (on the CPU), in the
    table's dtype or ``dtype``. Its ``data`` is None: the caller passes the images (see
    :func:`first_images`) to :class:`~nwot_fast.scoring.ArchScorer`."""
    from ..scoring import ScoreConfig

    p = provenance["protocol"]
    return ScoreConfig(method=provenance["method"], batch_size=p["batch_size"], augment=p["augment"],
                       fixed_batch=p["fixed_batch"], seed=p["seed"], relu_match=p["relu_match"], engine=p["engine"],
                       device="cpu", dtype=dtype or provenance["dtype"])


def describe_images(dataset: str, count: int) -> str:
    """How the protocol's images are named in a record."""
    first_file = {"cifar10": "data_batch_1", "cifar100": "train", "ImageNet16-120": "train_data_batch_1"}.get(dataset, "")
    names = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "ImageNet16-120": "ImageNet16-120"}
    return (f"the first {count} {names.get(dataset, dataset)} training images"
            + (f" (from {first_file})" if first_file else "") + f", NB201 {names.get(dataset, dataset)} normalisation")
