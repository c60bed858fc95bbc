"""Files are loaded without running code from them; broken files give errors naming the file.

Every malicious payload here would create a marker file if any of it ran; each test checks
that the load is refused and that the marker does not exist.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle

import numpy as np
import pytest
import torch

from nwot_fast.accuracies import load_accuracies
from nwot_fast.data import RestrictedUnpickler, UnsafePickleError, load_images, load_pickle


class _Payload:
    """Unpickling this calls ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


class _CodecPayload:
    """_codecs.encode is allowed only for latin-1 bytes; any other codec is refused."""

    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))


def _cifar_dir_with(tmp_path, payload):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        data = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        if i == 3:
            data[b"evil"] = payload
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(data, protocol=2))
    return root


@pytest.mark.parametrize("payload_cls", [_Payload, _EvalPayload])
def test_malicious_dataset_pickle_is_refused(tmp_path, payload_cls):
    marker = tmp_path / "pwned"
    root = _cifar_dir_with(tmp_path, payload_cls(marker))
    with pytest.raises(UnsafePickleError, match=r"data_batch_3: refused to load global (posix|os|nt|builtins|__builtin__)\.(system|eval)"):
        load_images(root / "data_batch_3")
    with pytest.raises(ValueError, match="data_batch_3: .*nothing from the file was executed"):
        load_images(root)
    assert not marker.exists()


def test_only_latin1_codec_is_allowed(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(pickle.dumps({"x": _CodecPayload()}, protocol=2))
    with pytest.raises(UnsafePickleError, match="latin-1"):
        load_pickle(path, what="a test pickle")


def test_malicious_benchmark_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "NAS-Bench-201-evil.pth"
    torch.save({"meta_archs": [], "arch2infos": {0: _Payload(marker)}, "evaluated_indexes": []}, path)
    with pytest.raises(ValueError, match=r"NAS-Bench-201-evil\.pth: refused to load.*nothing from it was executed"):
        load_accuracies(path)
    assert not marker.exists()
    # The same payload in a legacy (non-zip) torch file, and as a plain pickle named .csv.
    legacy = tmp_path / "legacy.pth"
    torch.save({"evil": _Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"legacy\.pth: refused to load"):
        load_accuracies(legacy)
    disguised = tmp_path / "disguised.csv"
    disguised.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(ValueError, match=r"disguised\.csv"):
        load_accuracies(disguised)
    assert not marker.exists()


def test_malicious_npz_object_array_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    x = np.empty(1, dtype=object)
    x[0] = _Payload(marker)
    np.savez(path, x=x, y=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match=r"evil\.npz: cannot read .*object arrays are not allowed"):
        load_images(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_arrays_still_load(protocol):
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "f": np.float32(1.5), "l": [1, 2, (3, 4)],
           "s": {1, 2}, "i64": np.array([-1, 2**40], dtype=np.int64), "f64": np.linspace(0, 1, 5)}
    got = RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol)), encoding="latin1").load()
    assert np.array_equal(got[b"data"], obj[b"data"]) and got[b"data"].dtype == np.uint8
    assert got["f"] == np.float32(1.5) and got["l"] == [1, 2, (3, 4)] and got["s"] == {1, 2}
    assert np.array_equal(got["i64"], obj["i64"]) and np.array_equal(got["f64"], obj["f64"])


def test_truncated_corrupt_and_empty_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    good = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
    (root / "data_batch_1").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"data_batch_1: not a readable pickle .*truncated or corrupt"):
        load_images(root / "data_batch_1")
    (root / "data_batch_1").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match=r"data_batch_1"):
        load_images(root / "data_batch_1")
    (root / "data_batch_1").write_bytes(b"")
    with pytest.raises(ValueError, match=r"data_batch_1: file is empty"):
        load_images(root / "data_batch_1")
    (root / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: unpickled a list; expected"):
        load_images(root / "data_batch_1")
    # A directory with some batches missing names the missing ones.
    (root / "data_batch_1").write_bytes(good)
    (root / "data_batch_2").write_bytes(good)
    with pytest.raises(FileNotFoundError, match=r"missing cifar10 train batch file\(s\) data_batch_3, data_batch_4, data_batch_5"):
        load_images(root)


def test_truncated_npz_and_missing_paths(tmp_path, cifar10_npz):
    cut = tmp_path / "cut.npz"
    data = cifar10_npz.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.npz: not a readable \.npz .*truncated or corrupt"):
        load_images(cut)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz: no such file or directory; expected"):
        load_images(tmp_path / "nowhere.npz")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pkl: no such file"):
        load_pickle(tmp_path / "nothing.pkl", what="a test pickle")
