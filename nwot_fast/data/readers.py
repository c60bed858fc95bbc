"""Image readers: CIFAR-10/100 python batches, ImageNet16-120 batches, and ``.npz`` arrays.

Every reader returns an :class:`ImageSet` with uint8 NHWC images and int64 labels. Pickled
batches go through the restricted unpickler (:mod:`nwot_fast.data.safe_pickle`), ``.npz``
files through ``np.load(allow_pickle=False)``: no file can run code.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .._common import check_input_file
from .constants import DATASETS, check_dataset
from .safe_pickle import load_pickle

SPLITS = ("train", "test")

CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}
# ImageNet16-120 has no test split of its own: NB201's "valid" loader reads val_data.
IMAGENET16_FILES = {"train": [f"train_data_batch_{i}" for i in range(1, 11)], "test": ["val_data"]}
#: NB201 keeps only samples whose stored label is in 1..120 (``use_num_of_class_only=120``).
IMAGENET16_CLASSES = 120

_DATA_EXPECTED = ("a CIFAR-10/100 or ImageNet16-120 batch directory, a batch file, or an .npz with arrays "
                  "x (uint8 [N,H,W,3]) and y")
_SIDE = {"cifar10": 32, "cifar100": 32, "ImageNet16-120": 16}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass
class ImageSet:
    """Images ``uint8 [N, H, W, 3]`` (RGB), labels ``int64 [N]``, the dataset name and the path read.

    Labels are kept as stored: 0..9 (CIFAR-10), 0..99 fine labels (CIFAR-100), 1..120
    (ImageNet16-120, as in the batch files; NB201 subtracts 1 only when it trains).
    """

    images: np.ndarray
    labels: np.ndarray
    dataset: str
    source: str

    def __post_init__(self):
        check_images(self.images, f"ImageSet from {self.source}")
        if not isinstance(self.labels, np.ndarray) or self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError(
                f"ImageSet from {self.source}: labels must be a 1-D array with one label per image "
                f"({len(self.images)}), got {getattr(self.labels, 'shape', type(self.labels).__name__)}"
            )
        self.dataset = check_dataset(self.dataset)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(3, H, W)``: the shape of one normalised network input."""
        return (3, self.images.shape[1], self.images.shape[2])


def check_images(images, what: str) -> None:
    """Raise unless ``images`` is a uint8 array ``[N, H, W, 3]`` with N >= 1."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{what}: images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"{what}: images must be uint8 pixels 0..255, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[0] < 1 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"{what}: images must have shape [N, H, W, 3] (RGB, channels last), got {list(images.shape)}")


def load_images(path, dataset: Optional[str] = None, split: str = "train") -> ImageSet:
    """Read images and labels from ``path``.

    ``path`` may be a CIFAR-10 python directory (``cifar-10-batches-py``), a CIFAR-100 python
    directory (``cifar-100-python``: ``train``, ``test``), an ImageNet16-120 directory
    (``train_data_batch_1..10``, ``val_data``), one batch file of any of those, or an ``.npz``
    with arrays ``x`` (uint8 ``[N, H, W, 3]``) and ``y``. ``dataset`` is inferred when omitted
    (a 32x32 ``.npz`` is taken as CIFAR-10, a 16x16 one as ImageNet16-120); when given it must
    agree with the files. ``split`` is ``"train"`` or ``"test"`` (``val_data`` for
    ImageNet16-120) and selects the batch files of a directory; it is ignored for single files.
    """
    if dataset is not None:
        dataset = check_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not valid; allowed: {', '.join(SPLITS)}")
    path = check_input_file(path, _DATA_EXPECTED, allow_dir=True)
    if os.path.isdir(path):
        return _load_directory(path, dataset, split)
    if path.endswith(".npz"):
        return _load_npz(path, dataset)
    return _load_batch_files(path, [path], dataset)


def _load_npz(path: str, dataset: Optional[str]) -> ImageSet:
    what = "an .npz with arrays x (uint8 [N,H,W,3]) and y (int labels [N])"
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; expected {what}, found {npz.files}")
            _check_npz_sizes(path, npz)
            images, labels = npz["x"], npz["y"]
    except ValueError as exc:
        if str(exc).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read ({exc}); expected {what} (object arrays are not allowed)") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc}); expected {what}; "
                         "the file may be truncated or corrupt") from None
    if isinstance(images, np.ndarray) and images.ndim >= 1 and images.shape[0] == 0:
        raise ValueError(f"{path}: holds no images (array x has shape {list(images.shape)}); expected {what} "
                         "with at least as many images as the batch size")
    check_images(images, path)
    labels = _as_labels(labels, len(images), path)
    side = images.shape[1:3]
    inferred = dataset is None
    if dataset is None:
        if side == (32, 32):
            dataset = "cifar10"
        elif side == (16, 16):
            dataset = "ImageNet16-120"
        else:
            raise ValueError(f"{path}: images are {side[0]}x{side[1]}; cannot infer the dataset (32x32 CIFAR or "
                             f"16x16 ImageNet16-120); pass dataset= one of {', '.join(DATASETS)}")
    _check_side(images, dataset, path)
    try:
        _check_labels(labels, dataset, path)
    except ValueError as exc:
        if inferred and dataset == "cifar10":
            raise ValueError(f"{exc} (a 32x32 .npz is read as CIFAR-10 unless dataset= says otherwise; "
                             "for CIFAR-100 pass dataset='cifar100')") from None
        raise
    return ImageSet(np.ascontiguousarray(images), labels, dataset, path)


def _check_npz_sizes(path: str, npz) -> None:
    """Refuse, before anything is allocated, an array whose header claims more data than the
    file holds (a corrupt or hostile header could otherwise ask for terabytes)."""
    for key in ("x", "y"):
        name = key + ".npy"
        try:
            info = npz.zip.getinfo(name)
            with npz.zip.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                header_bytes = f.tell()
        except (KeyError, AttributeError):
            continue  # not a zip member of that name: np.load reports it
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        held = info.file_size - header_bytes
        if claimed > held:
            raise ValueError(f"{path}: array {key} claims shape {list(shape)} ({claimed:,} bytes of {dtype}) but the "
                             f"file holds {max(held, 0):,} bytes for it; the file is truncated or corrupt")


def _directory_files(path: str, dataset: Optional[str], split: str) -> Tuple[str, List[str]]:
    """The dataset found in directory ``path`` and the batch files of ``split`` it reads."""
    layouts = {"cifar10": CIFAR10_FILES, "cifar100": CIFAR100_FILES, "ImageNet16-120": IMAGENET16_FILES}
    found = [name for name, files in layouts.items() if os.path.isfile(os.path.join(path, files[split][0]))]
    if dataset is None:
        if not found:
            expected = "; ".join(f"{name}: {', '.join(files[split])}" for name, files in layouts.items())
            raise FileNotFoundError(f"{path}: no dataset batch files found for split {split!r}; expected one of "
                                    f"these layouts: {expected}")
        dataset = found[0]
    files = [os.path.join(path, f) for f in layouts[dataset][split]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{path}: missing {dataset} {split} batch file(s) "
                                f"{', '.join(os.path.basename(m) for m in missing)}; expected {', '.join(layouts[dataset][split])}")
    return dataset, files


def _load_directory(path: str, dataset: Optional[str], split: str) -> ImageSet:
    dataset, files = _directory_files(path, dataset, split)
    return _load_batch_files(path, files, dataset)


_FILE_DIGESTS: dict = {}


def _file_digest(path: str) -> str:
    """SHA-256 of a file's bytes, cached by (real path, inode, size, mtime_ns): a file replaced
    or rewritten at the same path changes at least one of them, and a whole-space scan that
    asks again does not read the file again."""
    import hashlib

    check_input_file(path, _DATA_EXPECTED)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _FILE_DIGESTS[key] = h.hexdigest()
    return digest


def data_fingerprint(path, dataset: Optional[str] = None, split: str = "train") -> str:
    """The identity of the images :func:`load_images` ``(path, dataset, split)`` reads:
    ``"sha256:<hex>"`` of the file's bytes (``sha256sum`` gives the same hex), or for a batch
    directory the SHA-256 of the names and digests of the batch files read. Two paths to the
    same files (relative, absolute, through a link) give the same fingerprint; a file replaced
    at the same path gives another."""
    import hashlib

    if dataset is not None:
        dataset = check_dataset(dataset)
    path = check_input_file(path, _DATA_EXPECTED, allow_dir=True)
    if not os.path.isdir(path):
        return "sha256:" + _file_digest(path)
    _, files = _directory_files(path, dataset, split)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{os.path.basename(f)} {_file_digest(f)}\n".encode())
    return "sha256-dir:" + h.hexdigest()


def _load_batch_files(source: str, files: List[str], dataset: Optional[str]) -> ImageSet:
    images, labels = [], []
    for f in files:
        what = f"a {dataset or 'CIFAR-10/100 or ImageNet16-120'} batch (a pickled dict with 'data' and labels)"
        entry = load_pickle(f, what=what)
        batch_dataset, x, y = _parse_batch(entry, f, what)
        if dataset is None:
            dataset = batch_dataset
        elif batch_dataset != dataset:
            raise ValueError(f"{f}: holds a {batch_dataset} batch, but dataset={dataset!r} was asked for")
        images.append(x)
        labels.append(y)
    x = np.concatenate(images) if len(images) > 1 else images[0]
    y = np.concatenate(labels) if len(labels) > 1 else labels[0]
    _check_labels(y, dataset, source, stored_imagenet=True)
    if dataset == "ImageNet16-120":
        keep = (y >= 1) & (y <= IMAGENET16_CLASSES)
        x, y = x[keep], y[keep]
        if len(y) == 0:
            raise ValueError(f"{source}: no ImageNet16 samples with a label in 1..{IMAGENET16_CLASSES}")
    return ImageSet(np.ascontiguousarray(x), y, dataset, source)


def _parse_batch(entry, path: str, what: str) -> Tuple[str, np.ndarray, np.ndarray]:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: unpickled a {type(entry).__name__}; expected {what}")
    # Python 2 pickles read with latin1 give str keys; batches written by Python 3 may use bytes.
    entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
    if "data" not in entry:
        raise ValueError(f"{path}: no 'data' entry (keys: {sorted(map(str, entry))}); expected {what}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' must be a uint8 array [N, 3*H*W], got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {list(getattr(data, 'shape', []))}")
    width = data.shape[1]
    if "fine_labels" in entry:
        dataset, key = "cifar100", "fine_labels"
    elif "labels" in entry:
        dataset, key = ("ImageNet16-120", "labels") if width == 3 * 16 * 16 else ("cifar10", "labels")
    else:
        raise ValueError(f"{path}: no 'labels' or 'fine_labels' entry (keys: {sorted(map(str, entry))}); expected {what}")
    side = _SIDE[dataset]
    if width != 3 * side * side:
        raise ValueError(f"{path}: 'data' rows have {width} values; a {dataset} batch has 3*{side}*{side} = "
                         f"{3 * side * side} per image")
    labels = _as_labels(entry[key], data.shape[0], path)
    # Rows are stored channel-major (all red, all green, all blue); convert to NHWC.
    images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    return dataset, images, labels


def _as_labels(labels, n: int, path: str) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except Exception:  # noqa: BLE001 - any failure means the labels are not a flat list of ints
        arr = None
    if arr is None or arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{path}: labels must be a 1-D list of integers, got "
                         f"{getattr(arr, 'dtype', type(labels).__name__)} {list(getattr(arr, 'shape', []))}")
    if len(arr) != n:
        raise ValueError(f"{path}: {len(arr)} labels for {n} images; expected one label per image")
    return arr.astype(np.int64)


def _check_side(images: np.ndarray, dataset: str, path: str) -> None:
    side = _SIDE[dataset]
    if images.shape[1:3] != (side, side):
        raise ValueError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, but {dataset} images are "
                         f"{side}x{side}")


def _check_labels(labels: np.ndarray, dataset: str, path: str, stored_imagenet: bool = False) -> None:
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if dataset in _NUM_CLASSES:
        k = _NUM_CLASSES[dataset]
        if lo < 0 or hi >= k:
            raise ValueError(f"{path}: {dataset} labels must be in 0..{k - 1}, found {lo}..{hi}")
    elif stored_imagenet:
        if lo < 1 or hi > 1000:
            raise ValueError(f"{path}: ImageNet16 batch labels must be in 1..1000 as stored, found {lo}..{hi}")
    elif lo < 0 or hi > 1000:
        raise ValueError(f"{path}: ImageNet16-120 labels out of range, found {lo}..{hi}")
