"""Dataset readers, NB201 normalisation, the cifar10-valid split and deterministic batches."""

from __future__ import annotations

import hashlib
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from nwot_fast.data import (
    DATASETS,
    MEAN,
    STD,
    BatchSampler,
    ImageSet,
    default_data_settings,
    load_images,
    normalize,
)

from conftest import REPO_ROOT


def _rng(seed=0):
    return np.random.default_rng(seed)


def _write_pickle(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _cifar10_dir(tmp_path, per_batch=3, seed=0):
    """A cifar-10-batches-py directory in the official layout (bytes keys, as Python 3 reads them)."""
    rng = _rng(seed)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        _write_pickle(root / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                    b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]})
        batches[name] = (data, labels)
    return root, batches


# ---------------------------------------------------------------------------------------------
# Readers


def test_cifar10_directory_layout_and_pixels(tmp_path):
    root, batches = _cifar10_dir(tmp_path)
    train = load_images(root)
    assert train.dataset == "cifar10" and train.source == str(root)
    assert train.images.shape == (15, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    expected_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.labels.tolist() == expected_labels
    # Rows are channel-major: value (c, y, x) is at c*1024 + y*32 + x.
    data = batches["data_batch_2"][0]
    n, y, x, c = 1, 7, 30, 2
    assert train.images[3 + n, y, x, c] == data[n, c * 1024 + y * 32 + x]
    test = load_images(root, split="test")
    assert test.images.shape == (3, 32, 32, 3)
    assert np.array_equal(test.images[0].transpose(2, 0, 1).reshape(-1), batches["test_batch"][0][0])
    # One batch file on its own works too.
    single = load_images(root / "data_batch_3", dataset="cifar10")
    assert single.labels.tolist() == batches["data_batch_3"][1]


def _py2_str(text):
    raw = text.encode("latin1")
    return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING: a Python 2 str


def _py2_int(value):
    return b"J" + struct.pack("<i", value)


def _python2_batch(data, labels, label_key="labels"):
    """A batch pickled the way Python 2 + NumPy 1.x wrote CIFAR and ImageNet16: str keys, the
    pixel buffer as a Python 2 str, and the numpy.core module names."""
    n, width = data.shape
    raw = data.tobytes()
    out = b"\x80\x02}(" + _py2_str("data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str("b") + b"\x87R"
    out += b"(K\x01" + _py2_int(n) + _py2_int(width) + b"\x86cnumpy\ndtype\n" + _py2_str("u1") + b"\x89\x88\x87R"
    out += b"(K\x03" + _py2_str("|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + b"K\x00tb"
    out += b"\x89T" + struct.pack("<i", len(raw)) + raw + b"tb"
    out += _py2_str(label_key) + b"](" + b"".join(_py2_int(v) for v in labels) + b"eu."
    return out


def test_python2_pickles_as_distributed(tmp_path):
    rng = _rng(9)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    datas = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        datas.append(data)
        (root / name).write_bytes(_python2_batch(data, [3, 9]))
    train = load_images(root)
    assert train.images.shape == (10, 32, 32, 3) and train.labels.tolist() == [3, 9] * 5
    assert np.array_equal(train.images[4].transpose(2, 0, 1).reshape(-1), datas[2][0])
    one = tmp_path / "val_data"
    data16 = rng.integers(0, 256, size=(3, 768), dtype=np.uint8)
    one.write_bytes(_python2_batch(data16, [7, 300, 120]))
    imagenet = load_images(one)
    assert imagenet.dataset == "ImageNet16-120" and imagenet.labels.tolist() == [7, 120]
    assert np.array_equal(imagenet.images[1].transpose(2, 0, 1).reshape(-1), data16[2])


def test_cifar100_directory_uses_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = _rng(1)
    for name, n in (("train", 5), ("test", 4)):
        _write_pickle(root / name, {b"filenames": [b"x"] * n, b"batch_label": b"b", b"fine_labels": [99, 0, 50, 7, 3][:n],
                                    b"coarse_labels": [19, 0, 5, 1, 2][:n],
                                    b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)})
    train = load_images(root)
    assert train.dataset == "cifar100"
    assert train.labels.tolist() == [99, 0, 50, 7, 3]
    assert load_images(root, dataset="CIFAR100", split="test").labels.tolist() == [99, 0, 50, 7]
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_images(root, dataset="cifar10")


def test_imagenet16_keeps_labels_1_to_120_as_stored(tmp_path):
    root = tmp_path / "ImageNet16"
    root.mkdir()
    rng = _rng(2)
    kept_images, kept_labels = [], []
    for i in range(1, 11):
        labels = [1, 120, 121, 1000, 60] if i % 2 else [500, 2]
        data = rng.integers(0, 256, size=(len(labels), 768), dtype=np.uint8)
        # ImageNet16 batches are Python-2 style pickles with str keys and a 'mean' entry.
        _write_pickle(root / f"train_data_batch_{i}", {"data": data, "labels": labels, "mean": np.zeros(768)})
        for row, label in zip(data, labels):
            if 1 <= label <= 120:
                kept_images.append(row.reshape(3, 16, 16).transpose(1, 2, 0))
                kept_labels.append(label)
    _write_pickle(root / "val_data", {"data": rng.integers(0, 256, size=(3, 768), dtype=np.uint8),
                                      "labels": [3, 999, 120]})
    train = load_images(root)
    assert train.dataset == "ImageNet16-120"
    assert train.labels.tolist() == kept_labels
    assert np.array_equal(train.images, np.stack(kept_images))
    assert train.image_shape == (3, 16, 16)
    assert load_images(root, split="test").labels.tolist() == [3, 120]


def test_real_cifar10_sample(cifar10_npz):
    images = load_images(cifar10_npz)
    assert images.dataset == "cifar10"
    assert images.images.shape == (2000, 32, 32, 3)
    assert images.labels[:20].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 4, 7, 7, 2, 9, 9, 9, 3, 2, 6]
    assert np.bincount(images.labels).tolist() == [202, 191, 203, 195, 214, 183, 207, 199, 203, 203]


def test_real_cifar100_sample_needs_its_dataset_name():
    from conftest import shared_file

    path = shared_file("cifar100_test_sample.npz")
    with pytest.raises(ValueError, match="pass dataset='cifar100'"):
        load_images(path)
    images = load_images(path, dataset="cifar100")
    assert images.labels.tolist()[:10] == [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]
    assert normalize(images.images, "cifar100").shape == (20, 3, 32, 32)


def test_npz_dataset_inference_and_shapes(tmp_path):
    rng = _rng(3)
    small = tmp_path / "small16.npz"
    np.savez(small, x=rng.integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8), y=np.array([1, 2, 3, 120]))
    assert load_images(small).dataset == "ImageNet16-120"
    with pytest.raises(ValueError, match=r"small16\.npz: images are 16x16, but cifar10 images are 32x32"):
        load_images(small, dataset="cifar10")
    c100 = tmp_path / "c100.npz"
    np.savez(c100, x=rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8), y=np.array([0, 99, 5, 5]))
    assert load_images(c100, dataset="cifar100").dataset == "cifar100"
    with pytest.raises(ValueError, match=r"c100\.npz: cifar10 labels must be in 0..9, found 0..99"):
        load_images(c100)
    bad_npz = [  # (name, x, y or None, message)
        ("floats", rng.random((4, 32, 32, 3)), np.zeros(4, dtype=np.int64), r"floats\.npz: images must be uint8"),
        ("chw", rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8), np.zeros(4, dtype=np.int64),
         r"chw\.npz: images must have shape \[N, H, W, 3\]"),
        ("nolabels", rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8), None,
         r"nolabels\.npz: missing array\(s\) y"),
        ("fewlabels", rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8), np.zeros(3, dtype=np.int64),
         r"fewlabels\.npz: 3 labels for 4 images"),
        ("odd", rng.integers(0, 256, size=(2, 28, 28, 3), dtype=np.uint8), np.zeros(2, dtype=np.int64),
         "cannot infer the dataset"),
    ]
    for name, x, y, message in bad_npz:
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=x, **({} if y is None else {"y": y}))
        with pytest.raises(ValueError, match=message):
            load_images(path)


def test_unknown_dataset_and_split(tmp_path, cifar10_npz):
    with pytest.raises(ValueError, match="cifar10, cifar100, ImageNet16-120"):
        load_images(cifar10_npz, dataset="imagenet")
    with pytest.raises(ValueError, match="train, test"):
        load_images(cifar10_npz, split="validation")
    with pytest.raises(ValueError, match="cifar10, cifar100, ImageNet16-120"):
        normalize(np.zeros((1, 32, 32, 3), np.uint8), "svhn")
    with pytest.raises(FileNotFoundError, match="no dataset batch files"):
        load_images(tmp_path)


def test_wrong_shape_batch(tmp_path):
    root = tmp_path / "c10"
    root.mkdir()
    _write_pickle(root / "data_batch_1", {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_1: 'data' rows have 3000 values"):
        load_images(root / "data_batch_1")
    _write_pickle(root / "data_batch_1", {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_1: 'data' must be a uint8 array"):
        load_images(root / "data_batch_1")
    _write_pickle(root / "data_batch_1", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"data_batch_1: 3 labels for 2 images"):
        load_images(root / "data_batch_1")


# ---------------------------------------------------------------------------------------------
# Constants, normalisation, split


def test_constants():
    assert DATASETS == ("cifar10", "cifar100", "ImageNet16-120")
    assert MEAN["cifar10"][0] * 255 == pytest.approx(125.3)
    assert STD["cifar100"][2] * 255 == pytest.approx(70.4)
    assert MEAN["ImageNet16-120"][1] * 255 == pytest.approx(116.66)
    assert STD["ImageNet16-120"][0] * 255 == pytest.approx(63.22)


def test_normalize_matches_formula():
    images = _rng(4).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    out = normalize(images, "ImageNet16-120")
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    for c in range(3):
        expected = (images[..., c].astype(np.float32) / np.float32(255) - np.float32(MEAN["ImageNet16-120"][c])) \
            / np.float32(STD["ImageNet16-120"][c])
        assert np.array_equal(out[:, c].numpy(), expected)
    with pytest.raises(ValueError, match="uint8"):
        normalize(images.astype(np.float32), "cifar10")


# ---------------------------------------------------------------------------------------------
# Batches


def _distinct_set(n=12, side=32, seed=5, dataset="cifar10"):
    images = _rng(seed).integers(1, 256, size=(n, side, side, 3), dtype=np.uint8)  # no zero pixels
    return ImageSet(images, np.arange(n, dtype=np.int64) % 10, dataset, "synthetic")


def test_default_data_settings():
    assert default_data_settings("jacob_cov") == {"batch_size": 256, "augment": True, "fixed": False}
    assert default_data_settings("hook_logdet") == {"batch_size": 128, "augment": False, "fixed": True}
    with pytest.raises(ValueError, match="jacob_cov, hook_logdet"):
        default_data_settings("synflow")


def test_batch_determinism_and_fixed(cifar10_npz):
    images = load_images(cifar10_npz)
    s = BatchSampler(images, batch_size=16, augment=True, fixed=False, seed=7)
    b3, b5 = s.batch(3), s.batch(5)
    s2 = BatchSampler(images, batch_size=16, augment=True, fixed=False, seed=7)
    assert torch.equal(s2.batch(5), b5) and torch.equal(s2.batch(3), b3)  # call order does not matter
    assert not torch.equal(b3, b5)
    assert not torch.equal(BatchSampler(images, batch_size=16, augment=True, fixed=False, seed=8).batch(3), b3)
    f = BatchSampler(images, batch_size=16, augment=False, fixed=True, seed=7)
    assert torch.equal(f.batch(0), f.batch(12345))
    f.batch(0).zero_()  # callers may modify their copy
    assert torch.equal(f.batch(1), BatchSampler(images, batch_size=16, augment=False, fixed=True, seed=7).batch(9))
    g = BatchSampler(None, batch_size=64, augment=False, fixed=False, seed=1, image_shape=(3, 16, 16))
    x = g.batch(0)
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    assert torch.equal(x, g.batch(0)) and not torch.equal(x, g.batch(1))
    assert "Gaussian N(0,1) inputs [3,16,16]" in g.describe()
    assert "cifar10 images from" in s.describe() and "(2000 images)" in s.describe()
    assert "new batch per architecture" in s.describe()
    assert "one fixed batch for every architecture" in f.describe()


_CHILD = textwrap.dedent("""
    import hashlib, sys
    from nwot_fast.data import BatchSampler, load_images
    images = load_images(sys.argv[1])
    for aug, fixed in ((True, False), (False, True)):
        s = BatchSampler(images, batch_size=32, augment=aug, fixed=fixed, seed=11)
        for key in (9, 2):
            print(hashlib.sha256(s.batch(key).numpy().tobytes()).hexdigest())
    g = BatchSampler(None, batch_size=8, augment=False, fixed=False, seed=11)
    print(hashlib.sha256(g.batch(4).numpy().tobytes()).hexdigest())
""")


@pytest.mark.slow  # a subprocess
def test_batches_bitwise_equal_across_processes(cifar10_npz):
    images = load_images(cifar10_npz)
    here = []
    for aug, fixed in ((True, False), (False, True)):
        s = BatchSampler(images, batch_size=32, augment=aug, fixed=fixed, seed=11)
        # Drawn in the other order than the child's (2 before 9), listed in the child's order.
        digests = {key: hashlib.sha256(s.batch(key).numpy().tobytes()).hexdigest() for key in (2, 9)}
        here += [digests[9], digests[2]]
    g = BatchSampler(None, batch_size=8, augment=False, fixed=False, seed=11)
    here.append(hashlib.sha256(g.batch(4).numpy().tobytes()).hexdigest())
    out = subprocess.run([sys.executable, "-c", _CHILD, str(cifar10_npz)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == here


def _match_rows(batch, imageset):
    """Index of the source image of every unaugmented batch row."""
    expected = normalize(imageset.images, imageset.dataset)
    rows = []
    for b in range(batch.shape[0]):
        hits = [i for i in range(len(imageset)) if torch.equal(batch[b], expected[i])]
        assert len(hits) == 1
        rows.append(hits[0])
    return rows


def test_unaugmented_batch_is_normalised_distinct_images():
    imageset = _distinct_set()
    s = BatchSampler(imageset, batch_size=12, augment=False, fixed=False, seed=3)
    rows = _match_rows(s.batch(0), imageset)
    assert sorted(rows) == list(range(12))  # without replacement: a batch of N is a permutation


def _find_augmentation(sample, imageset, pad):
    """(source, flipped, di, dj) such that sample == normalize(crop(pad(flip(src))))."""
    side = imageset.images.shape[1]
    found = []
    for src in range(len(imageset)):
        for flip in (False, True):
            img = imageset.images[src][:, ::-1] if flip else imageset.images[src]
            padded = np.zeros((side + 2 * pad, side + 2 * pad, 3), np.uint8)
            padded[pad:pad + side, pad:pad + side] = img
            for i in range(2 * pad + 1):
                for j in range(2 * pad + 1):
                    crop = padded[i:i + side, j:j + side]
                    if np.array_equal(sample, crop):
                        found.append((src, flip, i - pad, j - pad))
    return found


@pytest.mark.parametrize("side,dataset,pad", [(32, "cifar10", 4), (16, "ImageNet16-120", 2)])
def test_augmentation_is_flip_and_zero_padded_crop(side, dataset, pad):
    imageset = _distinct_set(n=6, side=side, dataset=dataset)
    s = BatchSampler(imageset, batch_size=6, augment=True, fixed=False, seed=2)
    mean = torch.tensor(MEAN[dataset], dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD[dataset], dtype=torch.float32)[:, None, None]
    flips, shifts = set(), set()
    for key in range(12):
        batch = s.batch(key)
        # Undo the normalisation exactly: pixel values are integers 0..255.
        pixels = torch.round((batch * std + mean) * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert torch.equal(normalize(pixels, dataset), batch)
        sources = []
        for b in range(batch.shape[0]):
            found = _find_augmentation(pixels[b], imageset, pad)
            assert len(found) == 1, found
            src, flip, di, dj = found[0]
            sources.append(src)
            flips.add(flip)
            shifts.add((di, dj))
            if (di, dj) != (0, 0):  # the shifted-in border is zero pixels: -MEAN/STD after normalisation
                edge = batch[b, :, 0 if di < 0 else -1, :] if di else batch[b, :, :, 0 if dj < 0 else -1]
                assert torch.allclose(edge, (-mean / std).reshape(3, 1).expand_as(edge))
        assert sorted(sources) == list(range(6))
    assert flips == {False, True}
    assert len(shifts) > (2 * pad + 1) ** 2 // 4 and max(abs(d) for s_ in shifts for d in s_) == pad


def test_batch_sampler_bad_input():
    imageset = _distinct_set(n=5)
    with pytest.raises(ValueError, match="batch_size must be >= 2, got 1"):
        BatchSampler(imageset, batch_size=1, augment=False, fixed=True, seed=0)
    with pytest.raises(ValueError, match="batch_size 6 is larger than the 5 images in synthetic"):
        BatchSampler(imageset, batch_size=6, augment=False, fixed=True, seed=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        BatchSampler(imageset, batch_size=2.5, augment=False, fixed=True, seed=0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        BatchSampler(None, batch_size=2, augment=False, fixed=True, seed=-1)
    with pytest.raises(TypeError, match="ImageSet"):
        BatchSampler(np.zeros((4, 32, 32, 3), np.uint8), batch_size=2, augment=False, fixed=True, seed=0)
    s = BatchSampler(None, batch_size=2, augment=False, fixed=False, seed=0)
    with pytest.raises(ValueError, match="batch key must be >= 0"):
        s.batch(-1)
    with pytest.raises(ValueError, match=r"images must have shape \[N, H, W, 3\]"):
        ImageSet(np.zeros((2, 32, 32), np.uint8), np.zeros(2, np.int64), "cifar10", "x")
