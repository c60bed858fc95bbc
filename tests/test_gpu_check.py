"""bench/gpu_check.py --smoke: every step of the GPU check runs on the CPU with tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # about a minute on 2 loaded cores
def test_gpu_check_smoke(tmp_path):
    """With --time-budget 0 the timing step takes its extrapolation branch (make gpu-check-smoke
    in .ci/run takes the whole-space one)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--smoke", "--time-budget", "0",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = [(s["name"], s.get("error"), s.get("output_tail")) for s in report["steps"] if not s["ok"]]
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-3000:])
    names = [s["name"] for s in report["steps"]]
    assert names == ["backend", "op_tests", "cases", "precision", "timing", "scores"]
    timing = next(s for s in report["steps"] if s["name"] == "timing")
    assert set(timing["methods"]) == {"jacob_cov", "hook_logdet"}
    assert all(m["measured"].startswith("SAMPLE ONLY") for m in timing["methods"].values())
    rows = (tmp_path / "nb201_scores.csv").read_text().splitlines()
    assert rows[0] == "index,arch,jacob_cov,hook_logdet" and len(rows) > 1
    assert (tmp_path / "gpu_check.md").read_text().startswith("# nwot_fast gpu_check (smoke, CPU)")
