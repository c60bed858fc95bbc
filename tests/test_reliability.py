"""Issue 14: never a stale score, never a traceback.

The data is keyed by its content, so a file replaced at the same path is never resumed and the
same file by another path is; read-only databases can be read; outputs on a full or read-only
file system fail with exit 3 and leave nothing half-written; another program's SQLite file is
left exactly as it was. (The one-line cases are rows of tests/test_bad_input.py.)
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from nwot_fast._common import OutputError, atomic_write
from nwot_fast.cli import main
from nwot_fast.data import data_fingerprint
from nwot_fast.scanning import ScoreDB, scan
from nwot_fast.config import ScoreConfig

from conftest import subprocess_env

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 4


def _npz(path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), y=rng.integers(1, 121, 8))
    return str(path)


# ---------------------------------------------------------------------------------------------
# data identity by content


def test_replaced_data_file_is_not_resumed(tmp_path):
    data = _npz(tmp_path / "x.npz", 1)
    db = str(tmp_path / "s.sqlite")
    first = scan([0, 1], data=data, batch_size=BATCH, db=db)
    assert (first.resumed, first.computed) == (0, 2)
    _npz(tmp_path / "x.npz", 2)  # other images, same path
    second = scan([0, 1], data=data, batch_size=BATCH, db=db)
    assert (second.resumed, second.computed) == (0, 2)
    assert second.config_hash != first.config_hash
    assert not np.array_equal(second.scores, first.scores)
    # The first results are still there, untouched, under their own key.
    with ScoreDB(db, readonly=True) as store:
        assert {h["config_hash"] for h in store.configurations()} == {first.config_hash, second.config_hash}


def test_same_relative_path_in_another_directory_is_another_dataset(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _npz(tmp_path / "a" / "x.npz", 1)
    _npz(tmp_path / "b" / "x.npz", 2)
    db = str(tmp_path / "s.sqlite")
    monkeypatch.chdir(tmp_path / "a")
    first = scan([0], data="x.npz", batch_size=BATCH, db=db)
    monkeypatch.chdir(tmp_path / "b")
    second = scan([0], data="x.npz", batch_size=BATCH, db=db)
    assert second.resumed == 0 and second.computed == 1
    assert second.config_hash != first.config_hash


def test_same_file_by_relative_and_absolute_path_resumes(tmp_path, monkeypatch):
    data = _npz(tmp_path / "x.npz", 1)
    db = str(tmp_path / "s.sqlite")
    monkeypatch.chdir(tmp_path)
    first = scan([0], data="x.npz", batch_size=BATCH, db=db)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    for path in (data, os.path.join("..", "x.npz")):
        again = scan([0], data=path, batch_size=BATCH, db=db)
        assert (again.resumed, again.computed) == (1, 0), path
        assert again.config_hash == first.config_hash
        assert again.scores.tobytes() == first.scores.tobytes()


def test_fingerprint_is_the_file_sha256_and_every_key_names_its_dtype(tmp_path):
    import hashlib
    import json

    data = _npz(tmp_path / "x.npz", 1)
    assert data_fingerprint(data) == "sha256:" + hashlib.sha256(open(data, "rb").read()).hexdigest()
    ident = ScoreConfig(data=data, batch_size=BATCH).identity()
    assert ident["data"] == data_fingerprint(data)
    # The key of a configuration's rows, written out here (the database's format is pinned by the
    # tests, not taken from the code under test): float32 is named like float64, so the two
    # dtypes can never share a key, and no float32 key is one of a database before user_version 2.
    gaussian = {"method": "jacob_cov", "data": None, "dataset": None, "batch_size": 256, "augment": False,
                "fixed_batch": False, "seed": 0, "relu_match": "name", "engine": "fast", "device_type": "cpu"}
    for dtype in ("float32", "float64"):
        config = ScoreConfig(dtype=dtype)
        assert config.identity() == dict(gaussian, dtype=dtype)
        expected = hashlib.sha256(json.dumps(dict(gaussian, dtype=dtype), sort_keys=True).encode()).hexdigest()[:16]
        assert config.config_hash() == expected
    assert ScoreConfig().config_hash() == "9bff1f3a4ce2a51d"
    assert ScoreConfig(dtype="float64").config_hash() == "f9e9a07392bb0133"  # the same as before user_version 2
    assert ScoreConfig().config_hash() != "a8b0d6178c734df5"  # the float32 key of user_version 1, without dtype


# ---------------------------------------------------------------------------------------------
# file systems that cannot be written: a tmpfs, remounted read-only or filled up


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs (needs root and permission to mount; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no permission to mount)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount_read_only(mnt) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)


def test_db_command_reads_a_database_on_read_only_media(small_fs, tmp_path, capsys):
    data = _npz(tmp_path / "x.npz", 1)
    db = str(tmp_path / "s.sqlite")
    res = scan([0, 1], data=data, batch_size=BATCH, db=db)
    shutil.copy(db, small_fs / "s.sqlite")  # the WAL database alone, as a finished scan leaves it
    _remount_read_only(small_fs)
    assert main(["db", str(small_fs / "s.sqlite"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert res.config_hash in out and '"rows": 2' in out, err
    assert sorted(os.listdir(small_fs)) == ["s.sqlite"]


def test_outputs_on_a_read_only_file_system_exit_3_before_any_work(small_fs, tmp_path, capsys):
    data = _npz(tmp_path / "x.npz", 1)
    _remount_read_only(small_fs)
    db = tmp_path / "unused.sqlite"
    code = main(["scan", "--indices", "0:2", "--data", data, "--batch-size", str(BATCH), "--db", str(db),
                 "--out", str(small_fs / "r.csv"), "-q"])
    err = capsys.readouterr().err
    assert code == 3 and "not writable" in err and err.count("\n") == 1, err
    assert not db.exists()  # refused before the database was created, before any scoring
    scores = tmp_path / "scores.csv"
    scores.write_text("arch_index,score\n0,1.0\n")
    code = main(["report", "--scores", f"jacob_cov={scores}", "--accuracies", str(scores),
                 "--out", str(small_fs / "report.md")])
    err = capsys.readouterr().err
    assert code == 3 and "report" in err and "not writable" in err, err


def test_full_disk_leaves_no_half_written_file(small_fs, tmp_path, capsys):
    with pytest.raises(OutputError, match="big.csv"):
        with atomic_write(small_fs / "big.csv") as f:
            for _ in range(200):
                f.write("x" * 1024)
    assert os.listdir(small_fs) == []
    # A scan whose --out cannot be written: exit 3, the scores kept in the database, no file.
    data = _npz(tmp_path / "x.npz", 1)
    db = str(tmp_path / "s.sqlite")
    with open(small_fs / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    code = main(["scan", "--indices", "0:2", "--data", data, "--batch-size", str(BATCH), "--db", db,
                 "--out", str(small_fs / "r.jsonl"), "-q"])
    err = capsys.readouterr().err
    assert code == 3 and "r.jsonl" in err and "Traceback" not in err, err
    assert sorted(os.listdir(small_fs)) == ["filler"]
    assert len(scan([0, 1], data=data, batch_size=BATCH, db=db).indices) == 2


@pytest.mark.slow  # a subprocess
def test_stdout_on_a_full_device_exits_3(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "nwot_fast", "arch", "0", "1", "2"], stdout=full,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "standard output" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# another program's SQLite file


def test_foreign_sqlite_file_is_refused_before_anything_changes(tmp_path):
    path = tmp_path / "theirs.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('mine')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(ValueError, match="another program"):
            ScoreDB(path, readonly=readonly)
    assert path.read_bytes() == before  # still in rollback-journal mode: no WAL switch
    assert sorted(os.listdir(tmp_path)) == ["theirs.sqlite"]  # no -wal / -shm left behind
