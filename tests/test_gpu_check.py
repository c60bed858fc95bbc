"""bench/gpu_check.py always leaves a readable report: the smoke run (--smoke: every step on the
CPU with tiny sizes) once to the end and once killed in the middle of a step, and the report's
pieces without a subprocess. CI runs the smoke only here (.ci/run does not run it again)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import load_bench_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")


def load_gpu_check():
    return load_bench_script("gpu_check")


def strict_json(path) -> dict:
    """The report, refusing NaN / Infinity (which json.loads would otherwise accept)."""

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant} in {path}")

    with open(path) as f:
        return json.loads(f.read(), parse_constant=refuse)


def report_files(out) -> list:
    found = []
    for root, _, names in os.walk(out):
        found += [os.path.relpath(os.path.join(root, n), out) for n in names]
    return sorted(found)


def assert_report_layout(out) -> None:
    files = report_files(out)
    assert len(files) <= 8, files
    assert all(len(f.split(os.sep)) <= 3 for f in files), files  # at most 2 folders deep


def env(**extra):
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def processes_with(marker: str) -> list:
    """The pids of live processes whose environment holds ``marker`` (Linux /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return found


@pytest.mark.slow  # a few minutes on 2 loaded cores
def test_gpu_check_smoke_runs_every_step_and_reports(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path)], env=env(),
                          capture_output=True, text=True, timeout=1200)
    report = strict_json(tmp_path / "gpu_check.json")
    assert proc.returncode == 0 and report["ok"], (report["failures"], proc.stdout[-3000:], proc.stderr[-3000:])
    assert [s["name"] for s in report["steps"]] == ["backend", "tests", "precision", "profile", "timing"]
    assert report["running"] is None and report["pending"] == [] and report["failures"] == []
    tests = report["steps"][1]
    assert tests["passed"] > 0 and tests["failed"] == 0 and tests["skipped"] > 0  # CUDA cases collected, skipped
    precision = report["steps"][2]  # smoke: float32 reported, not judged (batch 8 cannot decide it)
    assert {(r["method"], r["engine"], r["dtype"]) for r in precision["summary"]} == {
        (m, e, d) for m in ("jacob_cov", "hook_logdet") for e in ("fast", "batched", "reference")
        for d in ("float32", "float64")}
    assert all(r["judged"] is False for r in precision["summary"] if r["dtype"] == "float32")
    assert all(r["max"] <= 1e-9 for r in precision["summary"] if r["dtype"] == "float64")
    profile = report["steps"][3]  # the front door, both methods and modes; the multi-arch mode traced
    assert [(r["method"], r["mode"], r["variant"]) for r in profile["rows"]] == [
        (m, mode, v) for m in ("jacob_cov", "hook_logdet")
        for mode, v in (("multi-arch", "default"), ("multi-arch", "cudnn.benchmark"), ("per-arch", "default"))]
    for row in profile["rows"]:
        assert row["archs_per_second"] > 0 and row["execution"].startswith(f"fast engine on cpu, {row['mode']}")
        assert ("top" in row) == ((row["mode"], row["variant"]) == ("multi-arch", "default"))
        if "top" in row:
            assert row["profiled_archs"] == 1 and row["kernel_ms_per_arch"] > 0
            assert any("conv" in k["name"] for k in row["top"])  # the network pass was traced (any conv kernel)
            shares = [k["share"] for k in row["top"]]
            assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    timing = report["steps"][4]
    assert [(s["method"], s["dedup"]) for s in timing["scans"]] == [
        ("jacob_cov", False), ("hook_logdet", False), ("jacob_cov", True), ("hook_logdet", True)]
    for scan in timing["scans"]:
        assert scan["measured"] == "whole space" and scan["rc"] == 0 and scan["covered"] == 6, scan
        assert scan["command"].startswith("python -m nwot_fast scan --indices 0:6 ")
    rows = (tmp_path / "nb201_scores.csv").read_text().splitlines()
    assert rows[0] == "index,arch,jacob_cov,hook_logdet" and len(rows) == 7
    assert all(len(r.split(",")) == 4 and r.split(",")[2] and r.split(",")[3] for r in rows[1:])
    assert (tmp_path / "gpu_check.md").read_text().startswith("# nwot_fast gpu_check (smoke, CPU)")
    assert proc.stdout.strip().splitlines()[-1] == report["summary"]
    assert report["summary"].startswith("gpu_check OK: 5 step(s)")
    assert {"logs/checks.log", "logs/tests.log", "logs/profile.log", "logs/timing.log"} <= set(report_files(tmp_path))
    assert_report_layout(tmp_path)


@pytest.mark.slow
def test_gpu_check_killed_mid_step_leaves_a_valid_report(tmp_path):
    """SIGKILL to the whole run once the timing step has written a timed sample: the report on
    disk is strict JSON that says which step was running and holds the samples taken. The scan
    covers 3000 archs so that it is still running at its first sample on any machine (6 archs, the
    smoke's default, end within one 1 s poll on a fast one)."""
    marker = f"NWOT_TEST_RUN={tmp_path}"  # inherited by the run's subprocesses, to find them afterwards
    proc = subprocess.Popen([sys.executable, SCRIPT, "--smoke", "--steps", "timing", "--space", "3000",
                             "--out", str(tmp_path)], env=env(NWOT_TEST_RUN=str(tmp_path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    path = tmp_path / "gpu_check.json"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not path.exists():
                continue
            report = strict_json(path)  # valid at every moment, not only at the end
            scans = [s for s in report["steps"] if s["name"] == "timing"]
            if scans and any(x["covered"] > 0 for s in scans[0].get("scans", []) for x in s["samples"]):
                break
        assert proc.poll() is None, "the smoke ended before a timed sample was seen"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the run (its steps run in sessions of their own)
        except ProcessLookupError:
            pass  # it already ended: the assertion above says so
        proc.wait()
        # The scan runs in a session of its own (out of reach of killpg); it must die with the run.
        deadline, left = time.monotonic() + 30, processes_with(marker)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = processes_with(marker)
        for pid in left:  # do not leak it into the rest of the suite
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed run still running: {left}"
    report = strict_json(path)
    assert report["running"] == "timing" and not report["ok"]
    timing = report["steps"][-1]
    assert timing["name"] == "timing" and "seconds" not in timing  # it never ended
    assert any(x["covered"] > 0 for s in timing["scans"] for x in s["samples"])
    assert_report_layout(tmp_path)


def test_help_documents_the_device_command_and_the_report_files():
    out = subprocess.run([sys.executable, SCRIPT, "--help"], env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for text in ("python3 bench/gpu_check.py --out DIR", "$OUT", "gpu_check.json", "gpu_check.md",
                 "nb201_scores.csv", "logs/build.log", "logs/tests.log", "--smoke", "--deadline"):
        assert text in out.stdout, text


def test_out_defaults_to_OUT_and_is_required_otherwise(monkeypatch, tmp_path):
    gc = load_gpu_check()
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gc.parse_args([]).out == str(tmp_path)
    monkeypatch.delenv("OUT")
    with pytest.raises(SystemExit):
        gc.parse_args([])
    args = gc.parse_args(["--out", str(tmp_path), "--steps", "tests,timing"])
    assert args.steps == ["tests", "timing"] and args.deadline == 480.0 and args.device == "cuda"
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", str(tmp_path), "--steps", "cases"])


def test_device_busy_time_is_the_union_of_the_kernels_intervals():
    """Overlapping kernels (two streams) count once; gaps do not count (microseconds in, seconds out)."""
    gc = load_gpu_check()
    assert gc._union_seconds([]) == 0
    assert gc._union_seconds([(0, 10), (5, 20), (30, 40), (32, 35), (40, 41)]) == pytest.approx(31e-6)
    assert gc._union_seconds([(30, 40), (0, 10)]) == pytest.approx(20e-6)


def test_a_timed_out_child_keeps_the_rows_it_printed(tmp_path):
    """Rows printed before the timeout are read back from the step's log (after its offset)."""
    gc = load_gpu_check()
    log = tmp_path / "profile.log"
    log.write_text(gc.ROW_MARK + '{"method": "old"}\n')
    offset = log.stat().st_size
    with open(log, "a") as f:
        f.write("noise\n" + gc.ROW_MARK + '{"method": "jacob_cov", "archs_per_second": 98.4}\nmore noise\n')
    assert gc.read_rows(str(log), offset) == [{"method": "jacob_cov", "archs_per_second": 98.4}]


def test_pytest_outcomes_from_a_killed_verbose_log_and_from_junit(tmp_path):
    gc = load_gpu_check()
    text = "\n".join([
        "tests/test_ops_cuda.py::test_cuda_many_code_words[33] PASSED            [ 10%]",
        "tests/test_ops.py::test_x[cuda-7] FAILED                                 [ 20%]",
        "tests/test_ops_degenerate.py::test_y[cuda-unfused] SKIPPED (the GPU's arithmetic is fused) [ 30%]",
        "tests/test_ops_cuda.py::test_cuda_side_stream_without_synchronisation ",
    ])
    got = gc.parse_pytest(text, None)
    assert got["passed"] == ["tests/test_ops_cuda.py::test_cuda_many_code_words[33]"]
    assert got["failed"] == ["tests/test_ops.py::test_x[cuda-7]"]
    assert got["skipped"] == [("tests/test_ops_degenerate.py::test_y[cuda-unfused]", "the GPU's arithmetic is fused")]
    assert got["running"] == "tests/test_ops_cuda.py::test_cuda_side_stream_without_synchronisation"
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="tests.test_ops" name="test_a[cuda]"/>'
                     '<testcase classname="tests.test_ops" name="test_b[cuda]"><failure message="x"/></testcase>'
                     '<testcase classname="tests.test_ops_cuda" name="test_c"><skipped message="no GPU"/></testcase>'
                     '</testsuite></testsuites>')
    got = gc.parse_pytest("", str(junit))
    assert got["passed"] == ["tests/test_ops.py::test_a[cuda]"] and got["failed"] == ["tests/test_ops.py::test_b[cuda]"]
    assert got["skipped"] == [("tests/test_ops_cuda.py::test_c", "no GPU")]


def test_report_is_strict_json_whatever_the_figures(tmp_path):
    gc = load_gpu_check()
    args = gc.parse_args(["--out", str(tmp_path), "--smoke"])
    os.makedirs(tmp_path / "logs")
    report = gc.Report(args)

    def step(entry, timeout):
        return {"ok": False, "ratio": float("nan"), "bound": float("inf"), "failures": ["a check"]}

    report.step("backend", step, 10)
    got = strict_json(tmp_path / "gpu_check.json")
    assert got["steps"][0]["ratio"] == "nan" and got["steps"][0]["bound"] == "inf"
    assert got["failures"] == ["backend: a check"] and got["running"] is None and not got["ok"]
    assert got["pending"] == ["tests", "precision", "profile", "timing"]


def test_run_logged_kills_the_process_group_at_its_timeout(tmp_path):
    gc = load_gpu_check()
    log = tmp_path / "x.log"
    started = time.monotonic()
    rc, seconds = gc.run_logged([sys.executable, "-c", "import subprocess, sys; print('child', flush=True); "
                                 "subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"],
                                str(log), 2.0)
    assert rc is None and 2.0 <= seconds < 30 and time.monotonic() - started < 30
    text = log.read_text()
    assert "child" in text and "killed after 2 s (its timeout)" in text


def test_budget_leaves_time_to_every_later_step(tmp_path):
    """A step's timeout is its cap, cut so that each later step keeps its reserve before the
    deadline: a slow build cannot starve the tests, the precision check, the profile and the timing."""
    gc = load_gpu_check()
    args = gc.parse_args(["--out", str(tmp_path), "--deadline", "300"])
    report = gc.Report(args)
    report.data["pending"].remove("build")
    later = sum(gc.RESERVE[s] for s in ("backend", "tests", "precision", "profile", "timing"))
    assert 300 - later - 5 < report.timeout_for("build", 1000) <= 300 - later
    assert report.timeout_for("build", 20) == 20


def test_space_sets_the_timed_archs_and_refuses_counts_outside_the_space(tmp_path, capsys):
    gc = load_gpu_check()
    assert gc.parse_args(["--out", str(tmp_path)]).space == gc.SPACE
    assert gc.parse_args(["--out", str(tmp_path), "--smoke"]).space == 6
    assert gc.parse_args(["--out", str(tmp_path), "--smoke", "--space", "3000"]).space == 3000
    for bad in ("0", "15626"):
        with pytest.raises(SystemExit):
            gc.parse_args(["--out", str(tmp_path), "--space", bad])
        assert f"--space: {bad} is not an arch count in 1..15625" in capsys.readouterr().err
