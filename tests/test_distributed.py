"""Scans over a Ray cluster (``--ray``, :mod:`nwot_fast.distributed`) on a local 2-CPU cluster.

The oracle is a local scan in this process, single-threaded like the Ray workers, so that the
scores must be equal bit for bit. The fault tests kill a busy worker process and the driver
by their PIDs and check that the database ends with every index exactly once. The cluster is a
``ray start --head --block`` on 127.0.0.1 in its own session, killed as a whole at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import shutil
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_scores_close
from nwot_fast import cli
from nwot_fast.distributed import check_ray_target, indices_per_task
from nwot_fast.nb201 import NUM_ARCHS, arch_at
from nwot_fast.scanning import scan

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = "8"  # tiny batches: these tests are about the plumbing, not the scores' quality


# Token authentication as a real cluster has it, with a token of this test run only (Ray
# reads RAY_AUTH_TOKEN before ~/.ray/auth_token; a driver given an explicit address sends it
# only with RAY_AUTH_MODE=token).
TOKEN = secrets.token_hex(16)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    return env


@pytest.fixture(scope="module")
def accuracies(tmp_path_factory):
    """A made-up accuracy table of the whole space (these tests compare scores, not accuracies)."""
    path = tmp_path_factory.mktemp("acc") / "accuracies.csv"
    rng = np.random.default_rng(5)
    cols = ["cifar10_valid_acc", "cifar10valid_test_acc", "cifar10_test_acc", "cifar100_valid_acc",
            "cifar100_test_acc", "imagenet16_valid_acc", "imagenet16_test_acc"]
    with open(path, "w") as f:
        f.write(",".join(["index", "arch"] + cols + ["params_mb"]) + "\n")
        for i, acc in enumerate(rng.uniform(10, 95, (NUM_ARCHS, len(cols))).round(3)):
            f.write(f"{i},{arch_at(i)}," + ",".join(map(str, acc)) + ",0.5\n")
    return path


def _cli(*args: str) -> list:
    return [sys.executable, "-m", "nwot_fast", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_scores(indices) -> dict:
    """The oracle: a local scan here, single-threaded as each Ray worker is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = scan(list(indices), batch_size=int(BATCH))
    finally:
        torch.set_num_threads(threads)
    return {int(i): float(s) for i, s in zip(res.indices, res.scores)}


def _rows(db) -> list:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT arch_index, score_text FROM scores ORDER BY id").fetchall()


def _session_members(sid: int) -> list:
    """PIDs and command lines of the processes in session ``sid`` (the cluster's)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append((int(entry), cmdline))
    return out


# ---------------------------------------------------------------------------------------------
# without a cluster


def test_ray_target_validation():
    pytest.importorskip("ray")
    assert check_ray_target(True) is True and check_ray_target("local") is True
    assert check_ray_target("auto") == "auto"
    assert check_ray_target("10.0.0.1:6379") == "10.0.0.1:6379"
    assert check_ray_target("ray://head:10001") == "ray://head:10001"
    for bad in ("head", "head:port", "http://head:6379", "ray://head", ":6379"):
        with pytest.raises(ValueError, match="Ray address"):
            check_ray_target(bad)
    with pytest.raises(TypeError, match="ray must be True"):
        check_ray_target(6379)
    assert indices_per_task(24, 2) == 3 and indices_per_task(10**6, 64) == 16 and indices_per_task(1, 8) == 1


def test_worker_side_scores_like_a_local_scan():
    """The task body, run here: the same scores as the oracle, and the data loaded once."""
    from nwot_fast import distributed
    from nwot_fast.config import ScoreConfig

    threads = torch.get_num_threads()
    try:
        config = ScoreConfig(batch_size=int(BATCH))
        first = distributed.score_task(config, [5, 3])
        scorer = distributed._SCORERS[config.config_hash() + "/cpu"]
        second = distributed.score_task(config, [7])
        assert distributed._SCORERS[config.config_hash() + "/cpu"] is scorer  # cached per configuration
    finally:
        torch.set_num_threads(threads)
    expected = _local_scores([5, 3, 7])
    assert [i for i, _, _ in first + second] == [5, 3, 7]
    assert_scores_close([s for _, s, _ in first + second], [expected[i] for i, _, _ in first + second], 0)


def test_without_ray_installed_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code = cli.main(["scan", "--indices", "0:2", "--batch-size", BATCH, "--db", str(tmp_path / "x.db"), "--ray"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Ray" in err and "pip install" in err and ".[ray]" in err
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened or scored
    with pytest.raises(ImportError, match=r"pip install"):
        scan([0], batch_size=8, ray="127.0.0.1:6379")


@pytest.mark.parametrize("command", ["scan", "evaluate"])
def test_nothing_listening_exit_3(command, capsys, tmp_path, accuracies):
    pytest.importorskip("ray")
    port = _free_port()  # closed again: nothing listens there
    args = ["--indices", "0:2", "--batch-size", BATCH, "--db", str(tmp_path / "x.db"), "--ray", f"127.0.0.1:{port}"]
    if command == "evaluate":
        args += ["--accuracies", str(accuracies)]
    code = cli.main([command, *args])
    err = capsys.readouterr().err
    assert code == 3
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in err and "ray start --head" in err


def test_bad_address_exit_2(capsys, tmp_path):
    pytest.importorskip("ray")
    code = cli.main(["scan", "--indices", "0:2", "--db", str(tmp_path / "x.db"), "--ray", "http://head:6379"])
    assert code == 2 and "Ray address 'http://head:6379'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# on a local Ray instance the run starts itself


@pytest.mark.slow  # a subprocess
def test_local_instance_scan_equals_local_scan(tmp_path):
    pytest.importorskip("ray")
    db, out = tmp_path / "x.db", tmp_path / "x.csv"
    proc = subprocess.run(
        _cli("scan", "--indices", "0:16", "--batch-size", BATCH, "--db", str(db), "--ray", "--json", "--out", str(out)),
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # --json: stdout holds the JSON and nothing else
    assert result["computed"] == 16 and result["n"] == 16
    expected = _local_scores(range(16))
    got = {r["arch_index"]: float(r["score"]) for r in result["records"]}
    assert [r["arch_index"] for r in result["records"]] == list(range(16))
    assert_scores_close([got[i] for i in expected], list(expected.values()), 0)
    rows = _rows(db)
    assert sorted(i for i, _ in rows) == list(range(16))
    assert_scores_close([float(t) for _, t in rows], [expected[i] for i, _ in rows], 0)
    assert len(out.read_text().splitlines()) == 17  # header + 16 rows


def _closed_count(db) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        conn.close()


def _left_in_session(sid: int, timeout: float = 60) -> list:
    """The processes still in session ``sid`` once they had ``timeout`` seconds to end."""
    deadline = time.monotonic() + timeout
    while True:
        left = _session_members(sid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.mark.parametrize("how", ["sigterm", "ctrl_c_twice"])
def test_signals_stop_a_ray_driver_and_the_instance_it_started(how, tmp_path):
    """Issue 23: SIGTERM to the driver of `scan --ray` exits 143 with the saved-results line
    (Ray's own handler made it abort with a native stack dump); Ctrl-C, twice, at the whole
    process group as a terminal sends it, exits 130. Either way the local Ray instance the
    driver started is stopped, its agents included, and the database has no -wal / -shm."""
    pytest.importorskip("ray")
    db = tmp_path / "s.db"
    proc = subprocess.Popen(
        _cli("scan", "--indices", "0:400", "--batch-size", BATCH, "--db", str(db), "--ray", "--quiet"),
        env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    left = []
    try:
        deadline = time.monotonic() + 240
        while _closed_count(db) < 1:  # each look closes its connection: the driver's close is the last one
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no row within 240 s"
            time.sleep(0.1)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        left = _left_in_session(proc.pid)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == (143 if how == "sigterm" else 130), err
    what = "terminated (SIGTERM)" if how == "sigterm" else "interrupted"
    assert f"{what}; " in err and "saved in" in err and "Traceback" not in err, err
    assert not left, f"left running: {left}"
    assert sorted(os.listdir(tmp_path)) == ["s.db"]
    assert _closed_count(db) >= 1


# ---------------------------------------------------------------------------------------------
# on a 'ray start --head' cluster that outlives its drivers


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="nwotray")  # short: Ray puts Unix sockets in it
    ray_exe = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_exe, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
        env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"'ray start --head' did not come up (exit code {head.poll()})")
                time.sleep(0.2)
        yield {"address": f"127.0.0.1:{port}", "session": head.pid}
    finally:
        # Everything the cluster started is in the session of 'ray start' (its own process group).
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)
        for pid, _ in _session_members(head.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start_scan(cluster, db, stop, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        _cli("scan", "--indices", f"0:{stop}", "--batch-size", BATCH, "--db", str(db), "--ray", cluster["address"],
             "--json", *extra),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _assert_every_row_once_as_local(db, n: int) -> dict:
    """Indices 0..n-1 each in ``db`` exactly once (nothing lost, nothing twice), with the scores
    of a local single-threaded scan bit for bit; returns those local scores by index."""
    rows = _rows(db)
    assert sorted(i for i, _ in rows) == list(range(n))
    expected = _local_scores(range(n))
    assert_scores_close([float(t) for _, t in rows], [expected[i] for i, _ in rows], 0)
    return expected


@contextlib.contextmanager
def _scan_process(cluster, db, stop, *extra):
    """:func:`_start_scan`, killed on the way out if it still runs (a failing test leaks nothing)."""
    proc = _start_scan(cluster, db, stop, *extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_rows(db, proc, at_least: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            try:
                n = len(_rows(db))
            except sqlite3.OperationalError:  # table not created yet
                n = 0
            if n >= at_least:
                return n
        if proc.poll() is not None:
            pytest.fail(f"scan ended (exit {proc.returncode}) before {at_least} rows: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {at_least} rows within {timeout} s")


@pytest.mark.slow  # a subprocess
def test_killed_worker_loses_and_duplicates_nothing(cluster, tmp_path):
    db, n = tmp_path / "w.db", 32
    with _scan_process(cluster, db, n) as proc:
        _wait_rows(db, proc, 1)
        # A worker process busy with a task (Ray names it after the task function).
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            busy = [pid for pid, cmd in _session_members(cluster["session"]) if cmd.startswith("ray::score_task")]
            victim = busy[0] if busy else None
            time.sleep(0.02)
        assert victim is not None, "no busy Ray worker found to kill"
        before = len(_rows(db))
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    assert before < n, "the scan had finished before the worker was killed"
    assert proc.returncode == 0, err
    assert json.loads(out)["computed"] == n
    _assert_every_row_once_as_local(db, n)


@pytest.mark.slow  # a subprocess
def test_killed_driver_resumes(cluster, tmp_path):
    db, n = tmp_path / "d.db", 32
    with _scan_process(cluster, db, n) as proc:
        _wait_rows(db, proc, 3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    kept = {i for i, _ in _rows(db)}
    assert 3 <= len(kept) < n
    again = _start_scan(cluster, db, n)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    result = json.loads(out)
    assert result["resumed"] == len(kept) and result["computed"] == n - len(kept)  # only the rest was sent
    expected = _assert_every_row_once_as_local(db, n)
    assert_scores_close([float(r["score"]) for r in result["records"]], [expected[r["arch_index"]] for r in result["records"]], 0)


@pytest.mark.slow  # a subprocess
def test_evaluate_on_cluster_equals_local(cluster, tmp_path, accuracies):
    from nwot_fast.evaluation import evaluate
    from nwot_fast.scorefile import read_scores

    db, scores_out = tmp_path / "e.db", tmp_path / "e.csv"
    proc = subprocess.run(
        _cli("evaluate", "--indices", "100:112", "--batch-size", BATCH, "--accuracies", str(accuracies),
             "--db", str(db), "--scores-out", str(scores_out), "--ray", cluster["address"], "--json"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_archs"] == 12
    remote = read_scores(scores_out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = evaluate(indices="100:112", batch_size=int(BATCH), accuracies=str(accuracies))
    finally:
        torch.set_num_threads(threads)
    assert remote.indices.tolist() == local.indices.tolist() == list(range(100, 112))
    assert_scores_close(remote.scores.tolist(), local.scores.tolist(), 0)
    assert sorted(i for i, _ in _rows(db)) == list(range(100, 112))


@pytest.mark.slow  # a subprocess
def test_ray_workers_reach_the_one_scorer(cluster, tmp_path):
    """A Ray scan in the many-architecture mode (tests/test_scorer.py checks every other
    command): each worker's rows are the front door's, bit for bit. A scan of a few indices
    sends one index per Ray task (distributed.indices_per_task), so each worker's scorer scores
    it alone: the oracle is the Scorer given that index alone; and the rows differ from the
    per-arch mode's, so the workers reached the many-architecture engine."""
    from nwot_fast.config import ScoreConfig
    from nwot_fast.random_search import search
    from nwot_fast.scorer import Scorer

    options = dict(method="jacob_cov", batch_size=4, mode="multi-arch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker is
    try:
        run = search(n_samples=6, runs=1, seed=11, **options).runs[0]
        unique = list(dict.fromkeys(run.indices))
        assert indices_per_task(len(unique), 2) == 1
        proc = subprocess.run(
            _cli("scan", "--indices", ",".join(map(str, unique)), "--seed", str(run.seed), "--batch-size", "4",
                 "--mode", "multi-arch", "--ray", cluster["address"], "--json", "-q", "--db", str(tmp_path / "ray.db")),
            env=_env(), capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        got = {r["arch_index"]: float(r["score"]) for r in json.loads(proc.stdout)["records"]}
        config = ScoreConfig(seed=run.seed, **options)
        alone = [next(Scorer(config).score_many([i])).score for i in unique]
        per_arch = list(Scorer(ScoreConfig(seed=run.seed, method="jacob_cov", batch_size=4,
                                           mode="per-arch")).score_many(unique))
    finally:
        torch.set_num_threads(threads)
    assert [repr(got[i]) for i in unique] == [repr(float(a)) for a in alone]
    assert any(a != p.score for a, p in zip(alone, per_arch) if math.isfinite(a))
