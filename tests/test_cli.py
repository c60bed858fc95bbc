"""The ``nwot-fast`` command line: help texts, JSON output, every subcommand, exit codes."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nwot_fast.cli import main
from nwot_fast.nb201 import NUM_ARCHS, arch_at, index_of

from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")
ENGINE = "fast"
BATCH = "4"
CONSTANT_OUTPUT = 10  # '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|'


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def small(tiny_npz):
    return ["--batch-size", BATCH, "--engine", ENGINE, "--data", tiny_npz]


# ---------------------------------------------------------------------------------------------
# help


def test_top_level_help_lists_commands_examples_and_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("search", "score", "scan", "evaluate", "report", "db", "info", "arch"):
        assert command in out
    assert "examples:" in out and "exit codes:" in out
    for code_line in ("0 ", "2 ", "3 ", "130"):
        assert code_line in out.split("exit codes:")[1]


@pytest.mark.parametrize("command", ["search", "score", "scan", "db", "info", "arch"])
def test_subcommand_help_has_examples_and_exit_codes(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"usage: nwot-fast {command}" in out
    assert "examples:" in out and f"nwot-fast {command}" in out.split("examples:")[1]
    assert "exit codes:" in out


def test_help_does_not_import_torch():
    code = "import sys; from nwot_fast.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("False")


def test_version_via_python_dash_m():
    import nwot_fast

    out = subprocess.run(
        [sys.executable, "-m", "nwot_fast", "--version"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"nwot-fast {nwot_fast.__version__}"


def test_console_script_is_installed():
    exe = shutil.which("nwot-fast") or str(Path(sys.executable).with_name("nwot-fast"))
    if not os.path.exists(exe):
        pytest.skip("package not installed with its console script (pip install -e .)")
    out = subprocess.run([exe, "arch", "0", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["arch_index"] == 0


# ---------------------------------------------------------------------------------------------
# commands


def test_search_json(capsys):
    code, out, _ = run(capsys, "search", "--n-samples", "3", "--runs", "2", "--batch-size", "8",
                       "--engine", ENGINE, "--json")
    assert code == 0
    result = json.loads(out)  # stdout holds the JSON and nothing else
    assert len(result["runs"]) == 2
    assert all(len(r["sampled_indices"]) == 3 for r in result["runs"])
    assert "Gaussian" in result["data"]
    for r in result["runs"]:
        assert 0 <= r["chosen_index"] < NUM_ARCHS and r["chosen_arch"] == str(arch_at(r["chosen_index"]))


def test_search_table_says_gaussian_inputs(capsys, tiny_npz):
    code, out, _ = run(capsys, "search", "-n", "2", "-r", "1", "--batch-size", "8", "--engine", ENGINE)
    assert code == 0
    assert "Gaussian" in out and "run" in out


def test_score_by_index_and_by_string_agree(capsys, tiny_npz):
    arch = str(arch_at(42))
    code, out, _ = run(capsys, "score", "42", arch, *small(tiny_npz), "--json")
    assert code == 0
    res = json.loads(out)["results"]
    assert [r["arch_index"] for r in res] == [42, 42]
    assert res[0]["arch"] == arch and res[0]["score"] == res[1]["score"]
    assert isinstance(res[0]["score"], float) and math.isfinite(res[0]["score"])

    code, out, _ = run(capsys, "score", arch, *small(tiny_npz))
    assert code == 0
    assert "42" in out and arch in out and "ImageNet16-120 images" in out
    assert repr(res[0]["score"])[:8] in out  # the table shows the same number


def test_score_gaussian_default_is_said_plainly(capsys):
    code, out, _ = run(capsys, "score", str(CONSTANT_OUTPUT), "--batch-size", BATCH, "--engine", ENGINE)
    assert code == 0
    assert "Gaussian" in out and "nan" in out  # constant output: jacob_cov is NaN


def test_dtype_float64_through_main(capsys, tmp_path, tiny_npz):
    code, out, _ = run(capsys, "score", "42", *small(tiny_npz), "--json")
    f32 = json.loads(out)
    code64, out64, _ = run(capsys, "score", "42", *small(tiny_npz), "--dtype", "float64", "--json")
    f64 = json.loads(out64)
    assert (code, code64) == (0, 0)
    assert f32["config"]["dtype"] == "float32" and f64["config"]["dtype"] == "float64"
    assert f64["config_hash"] != f32["config_hash"]
    s32, s64 = f32["results"][0]["score"], f64["results"][0]["score"]
    assert s32 != s64 and s64 == pytest.approx(s32, rel=1e-3)
    db = str(tmp_path / "d.sqlite")
    assert run(capsys, "scan", "--indices", "42", "--db", db, *small(tiny_npz), "--dtype", "float64", "--quiet")[0] == 0
    code, out, _ = run(capsys, "db", db, "--json")
    (cfg,) = json.loads(out)["configurations"]
    assert cfg["config"]["dtype"] == "float64" and cfg["config_hash"] == f64["config_hash"]
    code, _, err = run(capsys, "score", "42", "--dtype", "float16")
    assert code == 2 and "float16" in err


def test_score_nonfinite_json_is_strict(capsys, tiny_npz):
    code, out, _ = run(capsys, "score", str(CONSTANT_OUTPUT), *small(tiny_npz), "--json")
    assert code == 0
    assert "NaN" not in out
    assert json.loads(out)["results"][0]["score"] == "nan"


def test_scan_outputs_csv_jsonl_and_json(capsys, tmp_path, tiny_npz):
    db = str(tmp_path / "s.sqlite")
    code, out, err = run(capsys, "scan", "--indices", "8:12", "--db", db, "--out", str(tmp_path / "s.csv"),
                         *small(tiny_npz))
    assert code == 0, err
    assert "4 own scores" in out and db in out and "best architectures" in out
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["arch_index"]) for r in rows] == [8, 9, 10, 11]
    assert rows[2]["score"] == "nan"  # index 10 has a constant output

    code, out, err = run(capsys, "scan", "--indices", "8:12", "--db", db, "--out", str(tmp_path / "s.jsonl"),
                         *small(tiny_npz), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["computed"], summary["resumed"], summary["n"]) == (0, 4, 4)
    lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["score"] for r in lines] == [r["score"] for r in summary["records"]]
    assert [str(r["score"]) for r in lines] == [
        ("nan" if r["score"] == "nan" else str(float(r["score"]))) for r in rows
    ]


def test_db_summarises_a_scan_database(capsys, tmp_path, tiny_npz):
    db = str(tmp_path / "summary.sqlite")
    assert run(capsys, "scan", "--indices", "9:12", "--db", db, *small(tiny_npz), "--quiet")[0] == 0
    assert run(capsys, "scan", "--indices", "9:11", "--db", db, *small(tiny_npz), "--method", "hook_logdet")[0] == 0
    code, out, _ = run(capsys, "db", db, "--json")
    assert code == 0
    configs = json.loads(out)["configurations"]
    assert [(c["config"]["method"], c["rows"], c["nan"]) for c in configs] == [("jacob_cov", 3, 1), ("hook_logdet", 2, 0)]
    assert configs[0]["config"]["batch_size"] == int(BATCH) and configs[0]["engines"] == [ENGINE]
    code, out, _ = run(capsys, "db", db)
    assert code == 0 and "2 configuration(s)" in out and "3/15625 architectures" in out
    code, _, err = run(capsys, "db", str(tmp_path / "missing.sqlite"))
    assert code == 2 and "does not exist" in err


def test_scan_dedup_flag(capsys, tmp_path, tiny_npz):
    from nwot_fast.nb201 import representative_index

    # Pick two members of one class whose representative is the first of them.
    members = [i for i in range(NUM_ARCHS) if representative_index(arch_at(i)) == representative_index(arch_at(0))][:2]
    code, out, err = run(capsys, "scan", "--indices", ",".join(map(str, members)), "--dedup",
                         "--db", str(tmp_path / "d.sqlite"), *small(tiny_npz), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["dedup"] and d["scored"] == 1 and d["reused"] == 1 and d["computed"] == 1
    assert d["records"][1]["reused"] and d["records"][1]["representative"] == members[0]


def test_info(capsys):
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    import torch

    import nwot_fast

    assert info["nwot_fast"] == nwot_fast.__version__ and info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()
    assert "backend" in info
    code, out, _ = run(capsys, "info")
    assert code == 0 and "cuda_available" in out


def test_arch_conversions(capsys):
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    code, out, _ = run(capsys, "arch", arch, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["arch_index"] == index_of(arch) and d["arch"] == arch
    assert len(d["live_edges"]) == 6 and not d["constant_output"]

    code, out, _ = run(capsys, "arch", str(CONSTANT_OUTPUT), "0")
    assert code == 0
    assert str(arch_at(CONSTANT_OUTPUT)) in out and "jacob_cov gives NaN" in out
    assert "live edges      none" in out


# ---------------------------------------------------------------------------------------------
# exit codes


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "--no-such-option")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "score")[0] == 2
    assert run(capsys, "score", "1", "--method", "synflow")[0] == 2
    assert run(capsys, "scan", "--batch-size", "many")[0] == 2


def test_bad_input_is_one_line_without_traceback(capsys):
    code, out, err = run(capsys, "score", "|nor_conv_3x3~0|+|bogus~0|none~1|+|none~0|none~1|none~2|")
    assert code == 2
    assert out == ""
    assert err.startswith("nwot-fast: error: ") and err.count("\n") == 1
    assert "bogus" in err and "nor_conv_3x3" in err and "Traceback" not in err


def test_errors_with_json_also_give_json(capsys):
    code, out, err = run(capsys, "score", "99999", "--json")
    assert code == 2
    assert json.loads(out) == {"error": err.strip().removeprefix("nwot-fast: error: "), "exit_code": 2}
    assert "99999" in err and "0..15624" in err


def test_keyboard_interrupt_exits_130_and_keeps_results(capsys, tmp_path, tiny_npz, monkeypatch):
    from nwot_fast import per_arch, scorer

    # What the scorer calls once per architecture on the CPU (the per-arch mode, chunk 1).
    name, module = ("score_with_reference", scorer) if ENGINE == "reference" else ("network_pass", per_arch)
    real = getattr(module, name)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    db = str(tmp_path / "ctrl-c.sqlite")
    code, out, err = run(capsys, "scan", "--indices", "0:5", "--db", db, *small(tiny_npz))
    assert code == 130
    assert "interrupted" in err and "2 results" in err and "resume" in err
    monkeypatch.setattr(module, name, real)
    code, out, err = run(capsys, "scan", "--indices", "0:5", "--db", db, *small(tiny_npz), "--json")
    assert code == 0
    d = json.loads(out)
    assert (d["resumed"], d["computed"]) == (2, 3)


def test_out_of_memory_exits_3_with_what_to_lower_and_keeps_results(capsys, tmp_path, tiny_npz, monkeypatch):
    import torch

    from nwot_fast import per_arch, scorer

    calls = []

    def oom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    # What the scorer calls once per architecture on the CPU (the per-arch mode, chunk 1).
    name, module = ("score_with_reference", scorer) if ENGINE == "reference" else ("network_pass", per_arch)
    real = getattr(module, name)
    monkeypatch.setattr(module, name, oom)
    db = str(tmp_path / "oom.sqlite")
    code, out, err = run(capsys, "scan", "--indices", "0:4", "--db", db, *small(tiny_npz))
    assert code == 3
    assert "out of memory" in err and "--batch-size" in err and "never split" in err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT arch_index FROM scores").fetchall() == [(0,)]


def test_cuda_unavailable_exits_3(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run(capsys, "score", "0", "--device", "cuda", "--engine", ENGINE)
    assert code == 3
    assert "CUDA is not available" in err and "--device cpu" in err


def test_progress_is_silent_when_stderr_is_not_a_terminal(capsys, tmp_path, tiny_npz):
    code, _, err = run(capsys, "scan", "--indices", "0:2", "--db", str(tmp_path / "p.sqlite"), *small(tiny_npz))
    assert code == 0 and "\r" not in err and err == ""
