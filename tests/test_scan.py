"""Durable, resumable scans: SIGKILL and resume, bitwise reproducibility, dedup, NaN / -inf storage.

Networks are kept tiny: batch 8 on Gaussian inputs for the kill-and-resume test (the scan users
run), otherwise 16x16 images (an ImageNet16-120-shaped .npz written by the test) and batch 4.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nwot_fast.nb201 import NUM_ARCHS, arch_at, is_constant_output, relu_sees_only_zeros, representative_index
from nwot_fast.progress import Progress
from nwot_fast.scanning import ScanResult, load_scores, parse_indices, representatives, scan
from nwot_fast.config import ScoreConfig
from nwot_fast.scorer import Scorer

from conftest import REPO_ROOT, subprocess_env as _env

pytestmark = pytest.mark.usefixtures("one_thread")
ENGINE = "fast"
BATCH = 4




def _rows(db) -> dict:
    """{arch_index: (id, score_text, representative, created_at)} read straight from SQLite."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            r[0]: r[1:]
            for r in conn.execute("SELECT arch_index, id, score_text, representative, created_at FROM scores")
        }
    finally:
        conn.close()


def _count(db) -> int:
    if not os.path.exists(db):
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # table not created yet
        return 0


# ---------------------------------------------------------------------------------------------
# index parsing


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0:5", [0, 1, 2, 3, 4]),
        ("7", [7]),
        ("0:10:4", [0, 4, 8]),
        ("3,1,3,0:2", [3, 1, 0]),
        (" 15620: ", [15620, 15621, 15622, 15623, 15624]),
        (range(2, 5), [2, 3, 4]),
        ([9, np.int64(4), 9], [9, 4]),
        (11, [11]),
    ],
)
def test_parse_indices(spec, expected):
    assert parse_indices(spec) == expected


# ---------------------------------------------------------------------------------------------
# durability: SIGKILL mid-scan, then resume


def _run_until(cmd, db, rows: int, sig) -> subprocess.CompletedProcess:
    """Start ``cmd``, wait until the database holds ``rows`` rows, send ``sig``, wait for the end."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _count(db) < rows:
            assert proc.poll() is None, f"scan exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, f"scan did not reach {rows} rows in 120 s"
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ctrl_c_twice_stops_cleanly_and_leaves_no_wal(tmp_path):
    """Issue 23: a second Ctrl-C while the scan cleans up after the first is ignored: exit 130,
    the saved-results line, no traceback (an exit handler of torch's cut by the second
    KeyboardInterrupt printed one), and no -wal / -shm beside the database."""
    db = str(tmp_path / "twice.sqlite")
    cmd = [sys.executable, "-m", "nwot_fast", "scan", "--indices", "0:40", "--db", db, "--batch-size", "8",
           "--engine", ENGINE, "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _count(db) < 2:
            assert proc.poll() is None, f"scan exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "scan did not reach 2 rows in 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted;" in err and "saved in" in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["twice.sqlite"]
    assert 2 <= len(_rows(db)) < 40


@pytest.mark.slow  # a subprocess
def test_resume_after_sigterm_and_sigkill_loses_nothing_and_duplicates_nothing(tmp_path):
    # The scan users run: Gaussian inputs (the default), small batch, 40 architectures.
    db = str(tmp_path / "killed.sqlite")
    n = 40
    cmd = [
        sys.executable, "-m", "nwot_fast", "scan", "--indices", f"0:{n}", "--db", db,
        "--batch-size", "8", "--engine", ENGINE, "--quiet",
    ]
    # SIGTERM (a scheduler preempting the job): a clean stop with exit code 143 and a message.
    stopped = _run_until(cmd, db, 2, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr
    assert "terminated (SIGTERM)" in stopped.stderr and "saved in" in stopped.stderr
    first = _rows(db)
    assert 2 <= len(first) < n
    assert f"{len(first)} results" in stopped.stderr

    # SIGKILL (no chance to clean up) during the resumed run.
    killed = _run_until(cmd, db, len(first) + 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = _rows(db)
    assert len(first) + 3 <= len(before) < n, f"the kill should land mid-scan, found {len(before)} rows"
    for index, row in first.items():
        assert before[index] == row

    done = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = _rows(db)
    # Every finished row survived the kill untouched (same row id, score and timestamp) ...
    for index, row in before.items():
        assert after[index] == row
    # ... the resumed run added exactly the missing ones, once each ...
    assert sorted(after) == list(range(n))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == n
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()

    # ... and the scores are bitwise those of an uninterrupted scan (here in this process).
    clean_db = str(tmp_path / "clean.sqlite")
    clean = scan(range(n), batch_size=8, engine=ENGINE, db=clean_db)
    assert clean.computed == n
    assert [after[i][1] for i in range(n)] == [repr(float(s)) for s in clean.scores]
    assert [_rows(clean_db)[i][1] for i in range(n)] == [after[i][1] for i in range(n)]

    # A third run of the same command scores nothing and writes nothing.
    again = scan(range(n), batch_size=8, engine=ENGINE, db=db)
    assert (again.computed, again.resumed, again.scored, again.reused) == (0, n, n, 0)
    assert _rows(db) == after
    np.testing.assert_array_equal(again.scores, clean.scores)


# ---------------------------------------------------------------------------------------------
# reproducibility


_OTHER_PROCESS = """
import json, sys
from nwot_fast.config import ScoreConfig
from nwot_fast.scorer import Scorer
from nwot_fast.scanning import scan
data, engine, batch, indices = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
out = {}
for method in ("jacob_cov", "hook_logdet"):
    config = ScoreConfig(method=method, batch_size=batch, engine=engine, data=data, seed=5)
    out[method] = {"hash": config.config_hash(),
                   "scores": [repr(next(Scorer(config).score_many([i])).score) for i in indices],
                   "scan": [repr(float(s)) for s in scan(indices[::-1], config=config).scores]}
print(json.dumps(out))
"""


@pytest.mark.slow  # a subprocess
def test_scores_bitwise_reproducible_across_processes(tiny_npz):
    indices = [3, 17, 101]
    # The other process scores the indices one by one and then as a scan in reverse order.
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, tiny_npz, ENGINE, str(BATCH), json.dumps(indices)],
        cwd=REPO_ROOT, env=_env(),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    other = json.loads(proc.stdout)
    for method in ("jacob_cov", "hook_logdet"):
        config = ScoreConfig(method=method, batch_size=BATCH, engine=ENGINE, data=tiny_npz, seed=5)
        assert other[method]["hash"] == config.config_hash()
        ours = [next(Scorer(config).score_many([i])).score for i in indices]
        assert all(math.isfinite(s) for s in ours)
        # repr round-trips a float exactly: equal strings are bitwise-equal scores.
        assert other[method]["scores"] == [repr(s) for s in ours], method
        assert other[method]["scan"] == [repr(s) for s in reversed(ours)], method
        # In this process too, a scan gives each index the score it gets alone, in any order.
        assert list(scan(indices[::-1], config=config).scores) == ours[::-1]


def test_config_is_stored_with_every_row(tmp_path, tiny_npz):
    db = str(tmp_path / "cfg.sqlite")
    config = ScoreConfig(method="hook_logdet", batch_size=BATCH, engine=ENGINE, data=tiny_npz, seed=3)
    scan([5, 6], config=config, db=db)
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT arch_index, arch, method, dataset, data, batch_size, seed, config_hash, config, seconds, "
            "version, created_at FROM scores ORDER BY arch_index"
        ).fetchall()
    finally:
        conn.close()
    import nwot_fast

    assert [r[0] for r in rows] == [5, 6]
    for r in rows:
        assert r[1] == str(arch_at(r[0]))
        assert (r[2], r[3], r[4], r[5], r[6]) == ("hook_logdet", "ImageNet16-120", tiny_npz, BATCH, 3)
        assert r[7] == config.config_hash()
        assert json.loads(r[8]) == config.identity()
        assert r[9] > 0 and r[10] == nwot_fast.__version__ and r[11].endswith("+00:00")


@pytest.mark.slow  # a subprocess
def test_two_scan_processes_share_one_database(tmp_path, tiny_npz):
    """The README's recipe: two processes, every second index each, one database file."""
    db = str(tmp_path / "shared.sqlite")
    n = 8
    common = ["--db", db, "--batch-size", str(BATCH), "--engine", ENGINE, "--data", tiny_npz, "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "nwot_fast", "scan", "--indices", f"{k}:{n}:2", *common],
                              cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    rows = _rows(db)
    assert sorted(rows) == list(range(n))
    alone = scan(range(n), batch_size=BATCH, engine=ENGINE, data=tiny_npz)
    assert [rows[i][1] for i in range(n)] == [repr(float(s)) for s in alone.scores]
    again = scan(range(n), batch_size=BATCH, engine=ENGINE, data=tiny_npz, db=db)
    assert (again.computed, again.resumed) == (0, n)


def test_float64_rows_are_keyed_apart_from_float32_rows(tmp_path, tiny_npz):
    db = str(tmp_path / "dtype.sqlite")
    f32 = ScoreConfig(batch_size=BATCH, engine=ENGINE, data=tiny_npz)
    f64 = ScoreConfig(batch_size=BATCH, engine=ENGINE, data=tiny_npz, dtype="float64")
    assert f32.config_hash() != f64.config_hash()
    assert f32.identity()["dtype"] == "float32" and f64.identity()["dtype"] == "float64"
    assert dict(f32.identity(), dtype="float64") == f64.identity()  # the dtype is all that tells them apart
    assert ScoreConfig(batch_size=BATCH, engine=ENGINE, data=tiny_npz, dtype=torch.float32) == f32
    a = scan([7], config=f32, db=db)
    b = scan([7], config=f64, db=db)
    assert (a.computed, b.computed) == (1, 1)
    assert b.config.dtype == "float64" and b.to_dict()["dtype"] == "float64"
    assert a.scores[0] != b.scores[0]  # float32 and float64 passes round differently
    assert b.scores[0] == pytest.approx(a.scores[0], rel=1e-3)
    conn = sqlite3.connect(db)
    try:
        hashes = {h for (h,) in conn.execute("SELECT config_hash FROM scores WHERE arch_index = 7")}
    finally:
        conn.close()
    assert hashes == {f32.config_hash(), f64.config_hash()}
    assert load_scores(db, f64) == {7: b.scores[0]} and load_scores(db, f32) == {7: a.scores[0]}
    assert scan([7], config=f64, db=db).computed == 0


# ---------------------------------------------------------------------------------------------
# dedup


@functools.lru_cache(maxsize=1)
def _classes() -> dict:
    """{representative: [members in index order]} over the whole space."""
    out: dict = {}
    for i in range(NUM_ARCHS):
        out.setdefault(representative_index(arch_at(i)), []).append(i)
    return out


def test_dedup_plan_for_the_whole_space_has_6466_representatives():
    reps = representatives(range(NUM_ARCHS))
    assert len(reps) == NUM_ARCHS
    assert len(set(reps.values())) == 6466
    assert all(reps[r] == r for r in reps.values())


def test_dedup_counts_fills_and_later_real_scores(tmp_path, tiny_npz):
    # Class A: its representative and two members; class B: two members without the
    # representative (which the scan must score anyway); one architecture alone in its class.
    classes = _classes()
    big = [members for members in classes.values() if len(members) >= 3]
    class_a = big[0][:3]
    rep_a = class_a[0]
    rep_b, *rest = big[1]
    class_b = rest[:2]
    single = next(members[0] for members in classes.values() if len(members) == 1)
    indices = class_a + class_b + [single]
    db = str(tmp_path / "dedup.sqlite")
    res = scan(indices, dedup=True, batch_size=BATCH, engine=ENGINE, data=tiny_npz, db=db)
    assert res.computed == 3  # rep_a, rep_b (outside the request) and the single one
    assert (res.scored, res.reused, res.resumed) == (2, 4, 0)
    expected_rep = [rep_a] * 3 + [rep_b] * 2 + [single]
    assert list(res.representatives) == expected_rep
    by_index = dict(zip(res.indices.tolist(), res.scores.tolist()))
    assert by_index[class_a[1]] == by_index[rep_a] and by_index[class_a[2]] == by_index[rep_a]
    assert by_index[class_b[0]] == by_index[class_b[1]]
    recs = {r["arch_index"]: r for r in res.to_records()}
    assert recs[class_b[0]]["reused"] and not recs[rep_a]["reused"]
    rows = _rows(db)
    assert set(rows) == set(indices) | {rep_b}
    assert all(rows[i][2] == expected_rep[k] for k, i in enumerate(indices))
    assert load_scores(db, res.config_hash, include_reused=False).keys() == {rep_a, rep_b, single}
    rep_b_score = load_scores(db, res.config_hash)[rep_b]
    assert by_index[class_b[0]] == rep_b_score

    # Resuming with dedup computes nothing; without dedup the filled rows get their own scores.
    again = scan(indices, dedup=True, batch_size=BATCH, engine=ENGINE, data=tiny_npz, db=db)
    assert (again.computed, again.resumed, again.reused) == (0, 6, 4)
    full = scan(indices, batch_size=BATCH, engine=ENGINE, data=tiny_npz, db=db)
    assert full.computed == 4 and full.reused == 0 and full.resumed == 2
    own = load_scores(db, full.config_hash, include_reused=False)
    assert set(own) == set(indices) | {rep_b}
    assert _count(db) == len(indices) + 1  # replaced in place, never duplicated
    alone = scan(class_b, batch_size=BATCH, engine=ENGINE, data=tiny_npz)
    assert [own[i] for i in class_b] == list(alone.scores)


# ---------------------------------------------------------------------------------------------
# NaN and -inf


def test_nan_and_minus_inf_are_stored_and_read_back_faithfully(tmp_path, tiny_npz):
    constant = [i for i in range(200) if is_constant_output(arch_at(i))][:3]
    zeros = [i for i in constant if relu_sees_only_zeros(arch_at(i))]
    assert zeros and len(zeros) < len(constant), "need both kinds of constant-output cells"
    db = str(tmp_path / "nonfinite.sqlite")
    jc = scan(constant, batch_size=BATCH, engine=ENGINE, data=tiny_npz, db=db)
    hl = scan(constant, method="hook_logdet", batch_size=BATCH, engine=ENGINE, data=tiny_npz, db=db)
    assert np.isnan(jc.scores).all()
    for i, s in zip(constant, hl.scores):
        assert (s == -np.inf) == (i in zeros), (i, s)

    conn = sqlite3.connect(db)
    try:
        raw = conn.execute("SELECT method, score, score_text FROM scores ORDER BY method, arch_index").fetchall()
    finally:
        conn.close()
    for method, score, text in raw:
        if method == "jacob_cov":
            assert score is None and text == "nan"
        elif text == "-inf":
            assert score == -math.inf
        else:
            assert math.isfinite(score) and repr(score) == text

    for result in (jc, hl):
        back = load_scores(db, result.config)
        assert list(back) == constant
        np.testing.assert_array_equal(np.array(list(back.values())), result.scores)  # NaN == NaN here

        csv_path, jsonl_path = tmp_path / "r.csv", tmp_path / "r.jsonl"
        result.write(csv_path)
        result.write(jsonl_path)
        with open(csv_path, newline="") as f:
            from_csv = [float(r["score"]) for r in csv.DictReader(f)]
        np.testing.assert_array_equal(from_csv, result.scores)
        lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
        assert [r["arch_index"] for r in lines] == constant
        np.testing.assert_array_equal([float(r["score"]) for r in lines], result.scores)
        json.dumps(result.to_dict(), allow_nan=False)  # strict JSON, no bare NaN


def test_scan_without_db_and_result_helpers(tiny_npz):
    res = scan("40:43", batch_size=BATCH, engine=ENGINE, data=tiny_npz)
    assert isinstance(res, ScanResult)
    assert res.db is None and res.computed == 3 and len(res) == 3
    assert res.archs == [str(arch_at(i)) for i in (40, 41, 42)]
    assert res.top(1)[0]["score"] == np.nanmax(res.scores)
    assert "3 own scores" in res.summary() and "ImageNet16-120 images" in res.summary()


def test_progress_callback_counts_scored_architectures(tiny_npz):
    calls = []
    scan([1, 2], batch_size=BATCH, engine=ENGINE, data=tiny_npz, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]


# ---------------------------------------------------------------------------------------------
# progress bar


def test_progress_bar_draws_only_on_a_terminal():
    quiet = io.StringIO()  # not a TTY
    with Progress(10, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = Progress(10, initial=4, stream=tty, desc="scoring", min_interval=0)
    bar(7)
    bar.close()
    text = tty.getvalue()
    assert "scoring" in text and "7/10" in text and "arch/s" in text
    assert "10/10" not in text
    assert Progress(10, stream=Tty(), enabled=False).enabled is False


