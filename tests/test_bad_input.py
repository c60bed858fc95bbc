"""Bad input everywhere a user can reach, as one table.

Each row gives (a) a library call that must raise the named exception with a message that
names the input and what is allowed, and/or (b) a command line that must exit with the
documented code (2: bad input, 3: resource problem) and say so in one line on stderr, with
no traceback. Every failing ``scan`` command runs against a database that already holds
results, and the test checks those results are still there, unchanged.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import pytest
import torch

import nwot_fast
from nwot_fast.cli import main
from nwot_fast.data import load_images
from nwot_fast.evaluate import evaluate as run_evaluate
from nwot_fast.evaluate import sample_indices
from nwot_fast.figures import read_published_points
from nwot_fast.scorefile import read_scores
from nwot_fast.nb201 import Arch, arch_at, build_network
from nwot_fast.scan import ScanDatabaseError, ScoreDB, load_scores, scan
from nwot_fast._common import resolve_device
from nwot_fast.config import ScoreConfig

ENGINE = "fast"
BATCH = 4
GOOD = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# files the cases refer to as {name}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(3)
    npz = d / "tiny16.npz"
    np.savez(npz, x=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), y=rng.integers(1, 121, 16))
    data = npz.read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    (d / "corrupt.npz").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "bad.csv").write_text("index,arch\n0,foo\n")
    np.savez(d / "float_images.npz", x=rng.random((8, 16, 16, 3)), y=np.ones(8, dtype=np.int64))
    torch.save({"meta_archs": ["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"] * 10, "arch2infos": {},
                "evaluated_indexes": []}, d / "other_version.pth")
    header = ("index,arch,cifar10_valid_acc,cifar10valid_test_acc,cifar10_test_acc,cifar100_valid_acc,"
              "cifar100_test_acc,imagenet16_valid_acc,imagenet16_test_acc,params_mb")
    rows = [f"{i},{arch_at(i)},80,80,85,60,60,30,30,1.0" for i in range(3)]
    (d / "truncated.csv").write_text("\n".join([header] + rows) + "\n")
    pth = (d / "other_version.pth").read_bytes()
    (d / "truncated.pth").write_bytes(pth[: len(pth) // 2])
    (d / "not_a_db.sqlite").write_text("these are my notes, not a database\n")
    _issue14_files(d, rng, header)
    # A database that already holds two results for the scan configuration used below.
    template = d / "template.sqlite"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the one_thread fixture
    try:
        scan([0, 1], batch_size=BATCH, engine=ENGINE, data=str(npz), db=str(template))
    finally:
        torch.set_num_threads(threads)
    return {
        "dir": str(d),
        "npz": str(npz),
        "missing": str(d / "no_such_dir" / "images.npz"),
        "truncated": str(d / "truncated.npz"),
        "corrupt": str(d / "corrupt.npz"),
        "float_images": str(d / "float_images.npz"),
        "bad_csv": str(d / "bad.csv"),
        "truncated_csv": str(d / "truncated.csv"),
        "truncated_pth": str(d / "truncated.pth"),
        "other_version": str(d / "other_version.pth"),
        "missing_csv": str(d / "no_such_accuracies.csv"),
        "not_a_db": str(d / "not_a_db.sqlite"),
        "template": str(template),
        "nodir_db": str(d / "no_such_dir" / "scores.sqlite"),
        "proc_db": "/proc/nwot_fast_cannot_write_here.sqlite",
        **{k: str(d / v) for k, v in ISSUE14_FILES.items()},
    }


ISSUE14_FILES = {"empty_npz": "empty.npz", "huge_npz": "huge.npz", "broken_link": "broken_link.npz",
                 "fifo": "fifo.npz", "acc_inf": "acc_inf.csv", "acc_neg": "acc_neg.csv", "acc_big": "acc_big.csv",
                 "acc_nan": "acc_nan.csv", "published_bad": "published_bad.csv", "foreign_db": "foreign.sqlite",
                 "scores_csv": "scores.csv", "acc_ok": "acc_ok.csv"}


def _issue14_files(d, rng, header) -> None:
    """Files of the issue-14 cases: empty / lying data files, links and special files,
    accuracy tables with impossible values, a published-points file without its columns, a
    foreign SQLite file."""
    import zipfile

    np.savez(d / "empty.npz", x=np.zeros((0, 16, 16, 3), np.uint8), y=np.zeros(0, np.int64))
    # An .npz whose x header claims 10**12 images but holds 48 bytes.
    with zipfile.ZipFile(d / "huge.npz", "w") as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                     "shape": (10**12, 16, 16, 3)})
            f.write(bytes(48))
        with z.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.ones(4, np.int64))
    os.symlink(d / "nowhere.npz", d / "broken_link.npz")
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "fifo.npz")
    lines = [f"{i},{arch_at(i)},80,80,85,60,60,30,30,1.0" for i in range(15625)]
    (d / "acc_ok.csv").write_text("\n".join([header] + lines) + "\n")
    for name, value in (("acc_inf", "inf"), ("acc_neg", "-5000"), ("acc_big", "1e9"), ("acc_nan", "nan")):
        bad = list(lines)
        bad[7] = f"7,{arch_at(7)},80,80,{value},60,60,30,30,1.0"
        (d / f"{name}.csv").write_text("\n".join([header] + bad) + "\n")
    (d / "published_bad.csv").write_text("name,time\n")  # a header only: the old reader drew no points
    conn = sqlite3.connect(d / "foreign.sqlite")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('mine')")
    conn.commit()
    conn.close()
    (d / "scores.csv").write_text("arch_index,score\n0,1.5\n1,2.5\n2,0.5\n")


def _scan_args(files, *extra):
    return ["scan", "--indices", "0:3", "--batch-size", str(BATCH), "--engine", ENGINE, "--data", files["npz"],
            "--db", "{db}", "--quiet", *extra]


def _rows(path) -> List[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM scores ORDER BY id").fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class Case:
    id: str
    words: Sequence[str]  # lower-case fragments every message must contain
    call: Optional[Callable] = None  # call(files) must raise `exc`
    exc: Union[Type[BaseException], Tuple[Type[BaseException], ...]] = ValueError
    argv: Optional[Callable] = None  # argv(files) -> command line; '{db}' is a copy of the template database
    code: int = 2
    cli_words: Optional[Sequence[str]] = None  # defaults to `words`
    marks: list = field(default_factory=list)


def _bad_table(id: str, key: str, words, exc=ValueError) -> Case:
    """An accuracy-table file ``files[key]`` that both the reader and ``search --accuracies`` refuse."""
    return Case(id, words, exc=exc, call=lambda f: nwot_fast.accuracies.load_accuracies(f[key]),
                argv=lambda f: ["search", "-n", "2", "--accuracies", f[key], "--engine", ENGINE])


def _model_and_batch(shape=(4, 3, 16, 16), dtype=torch.float32, fill=None):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype) if fill is None else torch.full(shape, fill, dtype=dtype)
    return build_network(arch_at(0)), x


CASES = [
    # --- architectures and indices
    Case("unknown op", ["bogus", "valid ops", "nor_conv_3x3"],
         call=lambda f: Arch.from_str(GOOD.replace("skip_connect", "bogus")),
         argv=lambda f: ["score", GOOD.replace("skip_connect", "bogus")]),
    Case("wrong node count", ["3 nodes", "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"],
         call=lambda f: Arch.from_str("|none~0|+|none~0|none~1|"),
         argv=lambda f: ["arch", "|none~0|+|none~0|none~1|"]),
    Case("wrong edge source", ["nor_conv_3x3~1", "op~0"],
         call=lambda f: Arch.from_str(GOOD.replace("|nor_conv_3x3~0|+", "|nor_conv_3x3~1|+", 1)),
         argv=lambda f: ["score", GOOD.replace("|nor_conv_3x3~0|+", "|nor_conv_3x3~1|+", 1)]),
    Case("not an arch at all", ["resnet50", "benchmark index", "arch string"],
         argv=lambda f: ["score", "resnet50"]),
    Case("arch of the wrong type", ["arch", "float"], exc=TypeError,
         call=lambda f: nwot_fast.nb201.structure.live_edges(3.5)),
    Case("index too large", ["15625", "0..15624"],
         call=lambda f: arch_at(15625), argv=lambda f: ["arch", "15625"]),
    Case("negative index", ["-1", "0..15624"], call=lambda f: arch_at(-1)),
    Case("index range out of bounds", ["0:20000", "15625"],
         call=lambda f: scan("0:20000", engine=ENGINE),
         argv=lambda f: _scan_args(f, "--indices", "0:20000")),
    Case("negative index range", ["-5:3"],
         call=lambda f: scan("-5:3", engine=ENGINE), argv=lambda f: _scan_args(f, "--indices=-5:3")),
    Case("index not an integer", ["abc", "start:stop"],
         call=lambda f: scan("0:abc", engine=ENGINE), argv=lambda f: _scan_args(f, "--indices", "0:abc")),
    Case("float index", ["int", "1.5"], exc=TypeError, call=lambda f: scan([1.5], engine=ENGINE)),
    # --- batch size, seed and inputs
    Case("batch size 1", ["batch size", ">= 2", "1"],
         call=lambda f: ScoreConfig(batch_size=1),
         argv=lambda f: _scan_args(f, "--batch-size", "1"), cli_words=["--batch-size", "2..65536", "got 1"]),
    Case("batch larger than the data", ["batch_size 32", "16 images", str("tiny16.npz")],
         call=lambda f: scan([0], batch_size=32, engine=ENGINE, data=f["npz"]),
         argv=lambda f: _scan_args(f, "--batch-size", "32")),
    Case("negative seed", ["seed", "-1"], call=lambda f: ScoreConfig(seed=-1),
         argv=lambda f: _scan_args(f, "--seed", "-1")),
    Case("non-finite input", ["nan or infinite"],
         call=lambda f: nwot_fast.score(*_model_and_batch(fill=float("nan")))),
    Case("infinite input, fast path", ["nan or infinite"],
         call=lambda f: nwot_fast.score_arch(0, _model_and_batch(fill=float("inf"))[1])),
    Case("integer input", ["floating-point", "int64"], exc=TypeError,
         call=lambda f: nwot_fast.score(*_model_and_batch(dtype=torch.int64))),
    Case("3-D input", ["4-d", "(3, 16, 16)"],
         call=lambda f: nwot_fast.score(*_model_and_batch(shape=(3, 16, 16)))),
    Case("batch of one", ["at least 2", "got 1"],
         call=lambda f: nwot_fast.score(*_model_and_batch(shape=(1, 3, 16, 16)))),
    Case("not a tensor", ["torch.tensor", "list"], exc=TypeError,
         call=lambda f: nwot_fast.score(build_network(arch_at(0)), [[1.0, 2.0]])),
    Case("one-channel input to an NB201 network", ["3 channels"],
         call=lambda f: nwot_fast.score_arch(0, torch.randn(4, 1, 16, 16))),
    Case("float images in a data file", ["uint8", "float_images.npz"],
         call=lambda f: scan([0], batch_size=BATCH, engine=ENGINE, data=f["float_images"]),
         argv=lambda f: _scan_args(f, "--data", f["float_images"])),
    # --- names
    Case("unknown score name", ["synflow", "jacob_cov", "hook_logdet"],
         call=lambda f: nwot_fast.score(*_model_and_batch(), method="synflow"),
         argv=lambda f: ["score", "0", "--method", "synflow"], cli_words=["synflow", "jacob_cov"]),
    Case("unknown dataset, Gaussian inputs", ["mnist", "cifar10", "imagenet16-120"],
         call=lambda f: scan([0], dataset="mnist", engine=ENGINE),
         argv=lambda f: ["score", "0", "--dataset", "mnist", "--engine", ENGINE]),
    Case("unknown dataset with data", ["mnist", "cifar10"],
         call=lambda f: scan([0], dataset="mnist", data=f["npz"], engine=ENGINE),
         argv=lambda f: _scan_args(f, "--dataset", "mnist")),
    Case("dataset not matching the images", ["cifar10", "16x16"],
         call=lambda f: scan([0], dataset="cifar10", data=f["npz"], batch_size=BATCH, engine=ENGINE),
         argv=lambda f: _scan_args(f, "--dataset", "cifar10")),
    Case("unknown engine", ["turbo", "fast", "reference"], call=lambda f: ScoreConfig(engine="turbo"),
         argv=lambda f: ["score", "0", "--engine", "turbo"], cli_words=["turbo", "fast"]),
    Case("unknown device", ["tpu", "cpu", "cuda"], call=lambda f: resolve_device("tpu"),
         argv=lambda f: ["score", "0", "--device", "tpu", "--engine", ENGINE]),
    Case("unknown relu rule", ["relu_match", "name", "exact"], call=lambda f: ScoreConfig(relu_match="fuzzy")),
    # --- files
    Case("missing dataset file", ["no_such_dir"], exc=FileNotFoundError,
         call=lambda f: scan([0], data=f["missing"], batch_size=BATCH, engine=ENGINE),
         argv=lambda f: _scan_args(f, "--data", f["missing"])),
    Case("truncated dataset file", ["truncated.npz", "truncated or corrupt"],
         call=lambda f: scan([0], data=f["truncated"], batch_size=BATCH, engine=ENGINE),
         argv=lambda f: _scan_args(f, "--data", f["truncated"])),
    Case("corrupt dataset file", ["corrupt.npz"],
         call=lambda f: scan([0], data=f["corrupt"], batch_size=BATCH, engine=ENGINE),
         argv=lambda f: ["score", "0", "--data", f["corrupt"], "--engine", ENGINE]),
    _bad_table("missing benchmark file", "missing_csv", ["no_such_accuracies.csv", "no such file"],
               exc=FileNotFoundError),
    _bad_table("benchmark file without accuracies", "bad_csv", ["bad.csv", "accuracy column"]),
    _bad_table("truncated benchmark CSV", "truncated_csv", ["truncated.csv", "3 data rows", "15625"]),
    _bad_table("truncated benchmark .pth", "truncated_pth", ["truncated.pth", "corrupt"]),
    _bad_table("benchmark file of another version", "other_version", ["other_version.pth", "15625", "another benchmark"]),
    Case("output file of unknown kind", ["results.parquet", ".csv", ".jsonl"],
         argv=lambda f: _scan_args(f, "--out", os.path.join(f["dir"], "results.parquet"))),
    Case("output file in a missing directory", ["no_such_dir", "does not exist"],
         argv=lambda f: _scan_args(f, "--out", os.path.join(f["dir"], "no_such_dir", "r.csv"))),
    # --- the scan database
    Case("database directory missing", ["no_such_dir", "does not exist"], exc=FileNotFoundError,
         call=lambda f: ScoreDB(f["nodir_db"]),
         argv=lambda f: _scan_args(f, "--db", f["nodir_db"])),
    Case("database path is not a database", ["not_a_db.sqlite", "not a usable"],
         call=lambda f: ScoreDB(f["not_a_db"]),
         argv=lambda f: _scan_args(f, "--db", f["not_a_db"])),
    Case("database on a read-only path", ["nwot_fast_cannot_write_here.sqlite", "writable"], exc=ScanDatabaseError,
         call=lambda f: ScoreDB(f["proc_db"]), argv=lambda f: _scan_args(f, "--db", f["proc_db"]), code=3,
         marks=[pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc as a read-only place")]),
    Case("reading scores of a missing database", ["no_such_dir"], exc=FileNotFoundError,
         call=lambda f: load_scores(f["nodir_db"], "0123456789abcdef")),
    # --- issue 14: one seed range, checked at parse time, the option named
    Case("seed above 2**63-1", ["seed", "9223372036854775807"], call=lambda f: ScoreConfig(seed=2**63),
         argv=lambda f: _scan_args(f, "--seed", str(2**63)), cli_words=["--seed", "9223372036854775807"]),
    Case("seed 2**70 to search", ["--seed", "9223372036854775807"],
         argv=lambda f: ["search", "-n", "2", "--seed", str(2**70)]),
    Case("seed 2**63 to evaluate with a database", ["--seed", "9223372036854775807"],
         argv=lambda f: ["evaluate", "--n-archs", "2", "--accuracies", f["acc_ok"], "--db", "{db}",
                         "--seed", str(2**63)]),
    Case("sample seed above the range", ["--sample-seed", "9223372036854775807"],
         argv=lambda f: ["report", "--scores", f"jacob_cov={f['scores_csv']}", "--accuracies", f["acc_ok"],
                         "--sample-seed", str(2**64)]),
    Case("seed of a sample above the range", ["seed", "9223372036854775807"],
         call=lambda f: sample_indices(5, seed=2**64)),
    # --- issue 14: absurd counts bounded at parse time
    Case("search -n 1e20", ["--n-samples", "1000000"], argv=lambda f: ["search", "-n", str(10**20)]),
    Case("search -r 1e20", ["--runs", "1000000"], argv=lambda f: ["search", "-r", str(10**20)]),
    Case("evaluate --n-archs above the space", ["--n-archs", "15625"],
         argv=lambda f: ["evaluate", "--n-archs", "20000", "--accuracies", f["acc_ok"]]),
    Case("batch size 1e12", ["--batch-size", "65536"], argv=lambda f: _scan_args(f, "--batch-size", str(10**12))),
    Case("search table N above the space", ["--search-table", "15625"],
         argv=lambda f: ["evaluate", "--n-archs", "2", "--accuracies", f["acc_ok"], "--search-table", "10,99999"]),
    Case("database timeout not a number", ["--db-timeout"], argv=lambda f: _scan_args(f, "--db-timeout", "nan")),
    # --- issue 14: data files that are empty, lie about their size, or are not files
    Case("data file with no images", ["empty.npz", "no images"],
         call=lambda f: scan([0], data=f["empty_npz"], batch_size=BATCH, engine=ENGINE),
         argv=lambda f: _scan_args(f, "--data", f["empty_npz"])),
    Case("npz header claiming 10**12 images", ["huge.npz", "claims", "truncated or corrupt"],
         call=lambda f: load_images(f["huge_npz"]),
         argv=lambda f: _scan_args(f, "--data", f["huge_npz"])),
    Case("broken symbolic link as data", ["broken_link.npz", "broken symbolic link"], exc=FileNotFoundError,
         call=lambda f: load_images(f["broken_link"]),
         argv=lambda f: _scan_args(f, "--data", f["broken_link"])),
    Case("FIFO as data", ["fifo.npz", "fifo"],
         call=lambda f: load_images(f["fifo"]), argv=lambda f: _scan_args(f, "--data", f["fifo"]),
         marks=[pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")]),
    Case("/dev/zero as data", ["/dev/zero", "character device"],
         call=lambda f: load_images("/dev/zero"), argv=lambda f: _scan_args(f, "--data", "/dev/zero"),
         marks=[pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")]),
    Case("directory as accuracies", ["is a directory", "not a regular file"], exc=(ValueError, IsADirectoryError),
         argv=lambda f: ["search", "-n", "2", "--accuracies", f["dir"]]),
    Case("directory as scores file", ["is a directory"],
         call=lambda f: read_scores(f["dir"]),
         argv=lambda f: ["evaluate", "--scores-in", f["dir"], "--accuracies", f["acc_ok"]]),
    Case("data path not valid UTF-8", ["--data", "utf-8"],
         argv=lambda f: ["score", "0", "--data", os.fsdecode(b"\xff-images.npz")]),
    # --- issue 14: accuracies are percentages in [0, 100]
    _bad_table("infinite accuracy", "acc_inf", ["acc_inf.csv", "cifar10_test_acc", "index 7", "[0, 100]"]),
    _bad_table("negative accuracy", "acc_neg", ["acc_neg.csv", "cifar10_test_acc", "index 7", "-5000"]),
    _bad_table("accuracy 1e9", "acc_big", ["acc_big.csv", "cifar10_test_acc", "index 7", "[0, 100]"]),
    _bad_table("missing accuracy", "acc_nan", ["acc_nan.csv", "cifar10_test_acc", "index 7"]),
    # --- issue 14: outputs checked before any work
    Case("evaluate --scores-out of an unknown kind", ["x.xlsx", ".csv"],
         argv=lambda f: ["evaluate", "--n-archs", "2", "--accuracies", f["acc_ok"], "--data", f["npz"],
                         "--batch-size", str(BATCH), "--db", "{db}", "--scores-out",
                         os.path.join(f["dir"], "x.xlsx"), "-q"]),
    Case("evaluate --scores-out in a missing directory", ["no_such_dir", "does not exist"],
         call=lambda f: run_evaluate(n_archs=2, accuracies=f["acc_ok"], data=f["npz"], batch_size=BATCH,
                                      db=f["template"], scores_out=os.path.join(f["dir"], "no_such_dir", "s.csv")),
         exc=FileNotFoundError),
    Case("report written as PDF", ["x.pdf", ".md"],
         argv=lambda f: ["report", "--scores", f"jacob_cov={f['scores_csv']}", "--accuracies", f["acc_ok"],
                         "--out", os.path.join(f["dir"], "x.pdf")]),
    Case("published points without their columns", ["published_bad.csv", "label", "seconds", "accuracy"],
         call=lambda f: read_published_points(f["published_bad"]),
         argv=lambda f: ["report", "--scores", f"jacob_cov={f['scores_csv']}", "--accuracies", f["acc_ok"],
                         "--published", f["published_bad"], "--out", os.path.join(f["dir"], "r.md")]),
    # --- issue 14: another program's SQLite file
    Case("another program's SQLite database", ["foreign.sqlite", "another program", "notes"],
         call=lambda f: ScoreDB(f["foreign_db"]), argv=lambda f: _scan_args(f, "--db", f["foreign_db"])),
    Case("reading scores with a bad configuration", ["scoreconfig", "config hash"], exc=TypeError,
         call=lambda f: load_scores(f["template"], 42)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES if c.call])
def test_library_raises_a_clear_error(case, files):
    with pytest.raises(case.exc) as info:
        case.call(files)
    message = str(info.value).lower()
    for word in case.words:
        assert word.lower() in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES if c.argv])
def test_command_line_exits_with_a_one_line_error_and_keeps_results(case, files, tmp_path, capsys):
    db = str(tmp_path / "scores.sqlite")
    shutil.copy(files["template"], db)
    before = _rows(db)
    argv = [a.replace("{db}", db) for a in case.argv(files)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert out == ""
    assert err.startswith("nwot-fast: error: ") or err.startswith("usage: "), err
    if err.startswith("nwot-fast: error: "):
        assert err.count("\n") == 1 and "Traceback" not in err
    for word in case.cli_words if case.cli_words is not None else case.words:
        assert word.lower() in err.lower(), f"{word!r} not in {err!r}"
    assert _rows(db) == before  # nothing lost, nothing half-written


def test_not_a_database_file_is_left_untouched(files):
    before = open(files["not_a_db"], "rb").read()
    with pytest.raises(ValueError):
        ScoreDB(files["not_a_db"])
    assert open(files["not_a_db"], "rb").read() == before


def test_read_only_database_file(files, tmp_path, capsys, monkeypatch):
    """A database the process may not write. File modes do not stop root (CI runs as root), so
    SQLite itself opens the file read-only here, which is what it does for a 0444 file."""
    import sqlite3

    db = tmp_path / "ro.sqlite"
    shutil.copy(files["template"], db)
    before = _rows(db)
    connect = sqlite3.connect

    def read_only(path, *args, uri=False, **kwargs):
        return connect(f"file:{os.path.abspath(path)}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    code = main(_scan_args(files)[:-3] + ["--db", str(db), "--quiet"])
    _, err = capsys.readouterr()
    assert code == 3 and "read-only" in err, err
    monkeypatch.undo()
    assert _rows(db) == before


def test_locked_database_exits_3_and_loses_nothing(files, tmp_path, capsys):
    db = str(tmp_path / "locked.sqlite")
    shutil.copy(files["template"], db)
    before = _rows(db)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ScanDatabaseError, match="locked"):
            scan("0:3", batch_size=BATCH, engine=ENGINE, data=files["npz"], db=db, db_timeout=0.2)
        argv = [a.replace("{db}", db) for a in _scan_args(files, "--db-timeout", "0.2")]
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 3 and out == ""
        assert err.startswith("nwot-fast: error: ") and "locked" in err and db in err and "--db-timeout" in err
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _rows(db) == before
    # Once the lock is gone the same command resumes: two rows kept, one scored.
    res = scan("0:3", batch_size=BATCH, engine=ENGINE, data=files["npz"], db=db)
    assert (res.resumed, res.computed) == (2, 1)
    assert _rows(db)[:2] == before


def test_cuda_requested_but_unavailable(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    for argv in (["score", "0", "--device", "cuda", "--engine", ENGINE],
                 ["search", "-n", "2", "--device", "cuda:1", "--engine", ENGINE],
                 ["scan", "--indices", "0:2", "--device", "cuda", "--db", str(tmp_path / "unused.sqlite"), "--quiet"],
                 ["evaluate", "--n-archs", "2", "--device", "cuda", "--accuracies", str(tmp_path / "acc.csv"),
                  "--db", str(tmp_path / "unused.sqlite")]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 3, err
        assert out == "" and "cuda" in err.lower() and "--device cpu" in err and err.count("\n") == 1
    assert not (tmp_path / "unused.sqlite").exists()  # refused before the database was created
