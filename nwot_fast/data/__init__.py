"""Input data for scoring: dataset readers, NB201 normalisation, deterministic batches.

Files are read without running code from them: pickled batches through a restricted
unpickler (plain containers and NumPy arrays only), ``.npz`` with ``allow_pickle=False``.
"""

from .constants import DATASETS, MEAN, STD, check_dataset
from .readers import ImageSet, data_fingerprint, load_images
from .safe_pickle import RestrictedUnpickler, UnsafePickleError, load_pickle
from .sampler import BatchSampler, augment_batch, crop_padding, default_data_settings, normalize

__all__ = [
    "DATASETS",
    "MEAN",
    "STD",
    "check_dataset",
    "ImageSet",
    "load_images",
    "data_fingerprint",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_pickle",
    "BatchSampler",
    "augment_batch",
    "crop_padding",
    "default_data_settings",
    "normalize",
]
