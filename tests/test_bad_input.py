"""Bad input everywhere a user can reach, as one table.

Each row gives (a) a library call that must raise the named exception with a message that
names the input and what is allowed, and/or (b) a command line that must exit with the
documented code (2: bad input, 3: resource problem) and say so in one line on stderr, with
no traceback. Every failing ``scan`` command runs against a database that already holds
results, and the test checks those results are still there, unchanged.
"""

from __future__ import annotations

import json
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
from nwot_fast.evaluation import evaluate as run_evaluate
from nwot_fast.evaluation import sample_indices
from nwot_fast.figures import read_published_points
from nwot_fast.scorefile import read_scores
from nwot_fast.nb201 import Arch, arch_at, build_network
from nwot_fast.scanning import ScanDatabaseError, ScoreDB, load_scores, scan
from nwot_fast._common import resolve_device
from nwot_fast.config import ScoreConfig
from nwot_fast.random_search import search as run_search
from nwot_fast.searchtable import search_table
from nwot_fast.searchtable import check_table_prefix

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
    _issue23_path_files(d)
    # A database that already holds two results for the scan configuration used below.
    template = d / "template.sqlite"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the one_thread fixture
    try:
        scan([0, 1], batch_size=BATCH, engine=ENGINE, data=str(npz), db=str(template))
    finally:
        torch.set_num_threads(threads)
    _issue23_files(d, template)
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
        **{k: str(d / v) for k, v in ISSUE23_FILES.items()},
        **{k: str(d / v) for k, v in ISSUE23_PATH_FILES.items()},
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


ISSUE23_FILES = {"list_row": "list_row.jsonl", "null_row": "null_row.jsonl", "str_record": "str_record.json",
                 "float_index": "float_index.jsonl", "bool_index": "bool_index.jsonl", "short_row": "short_row.csv",
                 "mixed": "mixed.csv", "random_pth": "random.pth", "module_pth": "module.pth",
                 "view_db": "view.sqlite", "appid_db": "appid.sqlite", "user_version_db": "user_version.sqlite",
                 "no_unique_db": "no_unique.sqlite", "flipped_db": "flipped.sqlite", "config_db": "config.sqlite",
                 "damaged_db": "damaged.sqlite"}
#: The header of a scan database (store.APPLICATION_ID, store.SCHEMA_VERSION), written out here:
#: the file format is pinned by the tests, not taken from the code under test.
SCAN_DB_APPLICATION_ID = 0x4E574F54  # "NWOT"
SCAN_DB_LAYOUT = 2


def _issue23_files(d, template) -> None:
    """Files of the issue-23 cases: malformed score files, benchmark files that are not, SQLite
    files of other programs, and scan databases damaged in one row, one column or one page."""
    good = [{"arch_index": 0, "score": 1.5}, {"arch_index": 1, "score": 2.5}]
    (d / "list_row.jsonl").write_text(json.dumps(good[0]) + "\n[1, 2]\n")
    (d / "null_row.jsonl").write_text(json.dumps(good[0]) + "\nnull\n")
    (d / "str_record.json").write_text(json.dumps({"config": {}, "scores": [good[0], "x"]}))
    (d / "float_index.jsonl").write_text('{"arch_index": 3.7, "score": 1.0}\n')
    (d / "bool_index.jsonl").write_text('{"arch_index": true, "score": 1.0}\n')
    (d / "short_row.csv").write_text("arch_index,score\n0,1.5\n1\n2,0.5\n")
    (d / "mixed.csv").write_text("arch_index,method,score\n0,jacob_cov,1.5\n1,hook_logdet,2.5\n2,jacob_cov,0.5\n")
    (d / "random.pth").write_bytes(np.random.default_rng(23).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.save(torch.nn.Linear(2, 2), d / "module.pth")

    def sqlite(name, *statements):
        conn = sqlite3.connect(d / name)
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()

    sqlite("view.sqlite", "CREATE VIEW v AS SELECT 1 AS one")
    sqlite("appid.sqlite", "PRAGMA application_id = 42")
    sqlite("user_version.sqlite", "PRAGMA user_version = 7")
    for name in ("no_unique.sqlite", "flipped.sqlite", "config.sqlite", "damaged.sqlite"):
        shutil.copy(template, d / name)
    # Our header and columns, but the table rebuilt without UNIQUE (arch_index, config_hash).
    sqlite("no_unique.sqlite", "CREATE TABLE copy AS SELECT * FROM scores", "DROP TABLE scores",
           "ALTER TABLE copy RENAME TO scores", f"PRAGMA application_id = {SCAN_DB_APPLICATION_ID}",
           f"PRAGMA user_version = {SCAN_DB_LAYOUT}")
    # One bit of a stored score flipped: '.' (0x2e) -> '/' (0x2f) in arch 1's score_text.
    sqlite("flipped.sqlite", "UPDATE scores SET score_text = replace(score_text, '.', '/') WHERE arch_index = 1")
    sqlite("config.sqlite", "UPDATE scores SET config = '[1, 2]' WHERE arch_index = 1")
    # An index page overwritten: the table's rows are intact, the b-tree of the index is not.
    conn = sqlite3.connect(d / "damaged.sqlite")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'scores_by_config'").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(d / "damaged.sqlite", "r+b") as f:
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 64)


def _template_hash(f) -> str:
    return ScoreConfig(batch_size=BATCH, engine=ENGINE, data=f["npz"]).config_hash()


ISSUE23_PATH_FILES = {"loop": "loop1", "same_json": "same.json", "same_csv": "s.csv", "same_csv_api": "s_api.csv",
                 "victim_acc": "victim_acc.csv", "victim_acc_api": "victim_acc_api.csv",
                 "victim_scores": "victim_scores.csv", "victim_link": "victim_link.csv",
                 "victim_scores2": "victim_scores2.csv", "report_link": "report_link.md",
                 "victim_npz": "victim16.npz", "data_link": "data_link.csv", "both": "both",
                 "tables_dir": "tables", "pub_seconds0": "pub_seconds0.csv", "pub_seconds_neg": "pub_seconds_neg.csv",
                 "pub_seconds_nan": "pub_seconds_nan.csv", "pub_seconds_inf": "pub_seconds_inf.csv",
                 "pub_acc_big": "pub_acc_big.csv"}

#: Files that the issue-23 cases name as inputs beside an output: each must be left as it was.
VICTIMS = ("victim_acc", "victim_acc_api", "victim_scores", "victim_scores2", "victim_npz")


def _issue23_path_files(d) -> None:
    """Files of the issue-23 cases: a symbolic link loop, inputs that a case names again as an
    output (directly or through a link), a folder for --table-out DIR/, published points that
    cannot be drawn."""
    os.symlink("loop2", d / "loop1")
    os.symlink("loop1", d / "loop2")
    shutil.copy(d / "acc_ok.csv", d / "victim_acc.csv")
    shutil.copy(d / "acc_ok.csv", d / "victim_acc_api.csv")
    shutil.copy(d / "scores.csv", d / "victim_scores.csv")
    shutil.copy(d / "scores.csv", d / "victim_scores2.csv")
    shutil.copy(d / "tiny16.npz", d / "victim16.npz")
    os.symlink("victim_scores.csv", d / "victim_link.csv")
    os.symlink("victim_scores2.csv", d / "report_link.md")
    os.symlink("victim16.npz", d / "data_link.csv")
    (d / "tables").mkdir()
    for name, row in (("pub_seconds0", "x,0,90"), ("pub_seconds_neg", "x,-5,90"), ("pub_seconds_nan", "x,nan,90"),
                      ("pub_seconds_inf", "x,inf,90"), ("pub_acc_big", "x,10,1e9")):
        (d / f"{name}.csv").write_text(f"label,seconds,accuracy\nok,12,93\n{row}\n")


def _victim_state(files) -> dict:
    return {k: (os.path.islink(files[k]), open(files[k], "rb").read()) for k in VICTIMS}


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
    absent: Sequence[str] = ()  # lower-case fragments no message may contain (advice that does not apply)


def _bad_table(id: str, key: str, words, exc=ValueError, absent=()) -> Case:
    """An accuracy-table file ``files[key]`` that both the reader and ``search --accuracies`` refuse."""
    return Case(id, words, exc=exc, call=lambda f: nwot_fast.accuracies.load_accuracies(f[key]),
                argv=lambda f: ["search", "-n", "2", "--accuracies", f[key], "--engine", ENGINE], absent=absent)


def _bad_scores(id: str, key: str, words) -> Case:
    """A score file ``files[key]`` that both the reader and ``evaluate --scores-in`` refuse."""
    return Case(id, words, call=lambda f: read_scores(f[key]),
                argv=lambda f: ["evaluate", "--scores-in", f[key], "--accuracies", f["acc_ok"]])


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
    Case("batch size 1", ["batch_size", "2..65536", "got 1"],
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
    # --- issue 23: malformed score files name the file and the row
    *[_bad_scores(*c) for c in (
        ("JSONL row that is a list", "list_row", ["list_row.jsonl", "line 2", "object", "[1, 2]"]),
        ("JSONL row that is null", "null_row", ["null_row.jsonl", "line 2", "object"]),
        ("string in a .json scores list", "str_record", ["str_record.json", "record 2", "object", "'x'"]),
        ("arch_index 3.7", "float_index", ["float_index.jsonl", "line 1", "3.7", "not an integer"]),
        ("arch_index true", "bool_index", ["bool_index.jsonl", "line 1", "true", "not an integer"]),
        ("truncated CSV score row", "short_row", ["short_row.csv", "line 3", "truncated"]),
    )],
    Case("score file of two methods without --method", ["mixed.csv", "2 jacob_cov", "1 hook_logdet", "--method"],
         call=lambda f: read_scores(f["mixed"]),
         argv=lambda f: ["evaluate", "--scores-in", f["mixed"], "--accuracies", f["acc_ok"]]),
    # --- issue 23: --scores-in scores nothing: what only scoring uses is refused, not ignored
    Case("evaluate --scores-in with --db and a missing --data", ["scores_in", "db", "data", "not be used"],
         call=lambda f: run_evaluate(scores_in=f["scores_csv"], accuracies=f["acc_ok"], db=f["template"],
                                      data=f["missing"]),
         cli_words=["--scores-in", "--db", "--data", "not be used"],
         argv=lambda f: ["evaluate", "--scores-in", f["scores_csv"], "--accuracies", f["acc_ok"], "--db", "{db}",
                         "--data", f["missing"]]),
    # --- issue 23: the command line speaks in flags, and relays no advice that does not apply
    Case("evaluate without a selection", ["--n-archs", "--all", "--indices", "--scores-in"],
         argv=lambda f: ["evaluate", "--accuracies", f["acc_ok"]], absent=["n_archs=", "scores_in="]),
    _bad_table("random bytes named .pth", "random_pth", ["random.pth", "not a nas-bench-201 benchmark file"],
               absent=["weights_only", "re-run"]),
    _bad_table("a torch module saved as .pth", "module_pth",
               ["module.pth", "torch.nn.modules.linear.linear", "not a nas-bench-201 benchmark file"],
               absent=["weights_only", "re-run", "add_safe_globals"]),
    # --- issue 23: the Python API is as strict as the command line, naming the argument
    Case("augment='no' through the API", ["augment", "true or false", "'no'"], exc=TypeError,
         call=lambda f: scan([0], augment="no", batch_size=BATCH, engine=ENGINE)),
    Case("augment=0 through the API", ["augment", "true or false", "int 0"], exc=TypeError,
         call=lambda f: ScoreConfig(augment=0)),
    Case("fixed_batch='false' through the API", ["fixed_batch", "true or false", "'false'"], exc=TypeError,
         call=lambda f: scan([0], fixed_batch="false", batch_size=BATCH, engine=ENGINE)),
    Case("batch_size above the CLI's bound through the API", ["batch_size", "2..65536", str(10**12)],
         call=lambda f: ScoreConfig(batch_size=10**12)),
    Case("score_arch seed 2**64", ["seed", "0..9223372036854775807", str(2**64)],
         call=lambda f: nwot_fast.score_arch(0, torch.randn(BATCH, 3, 16, 16), seed=2**64)),
    Case("search n_samples 1e20", ["n_samples", "1..1000000"],
         call=lambda f: run_search(n_samples=10**20, engine=ENGINE)),
    Case("search runs 1e20", ["runs", "1..1000000"],
         call=lambda f: run_search(n_samples=1, runs=10**20, engine=ENGINE, accuracies=f["missing_csv"])),
    Case("search table runs 1e20", ["runs", "1..1000000"],
         call=lambda f: search_table(({0: 1.0, 1: 2.0}), f["acc_ok"], Ns=[1], runs=10**20)),
    # --- issue 23: SQLite files that are not ours are refused unchanged, damaged ones before writing
    *[Case(id, [ISSUE23_FILES[key], "another program", what], call=lambda f, key=key: ScoreDB(f[key]),
           argv=lambda f, key=key: _scan_args(f, "--db", f[key]))
      for id, key, what in (("SQLite file with only a view", "view_db", "views: v"),
                            ("SQLite file with another application_id", "appid_db", "application_id 0x2a"),
                            ("SQLite file with a user_version", "user_version_db", "user_version 7"))],
    Case("scores table without the UNIQUE constraint", ["no_unique.sqlite", "unique (arch_index, config_hash)"],
         call=lambda f: ScoreDB(f["no_unique_db"], readonly=True),
         argv=lambda f: _scan_args(f, "--db", f["no_unique_db"])),
    Case("a bit flipped in a stored score", ["flipped.sqlite", "row id 2", "arch_index 1", "score_text"],
         call=lambda f: load_scores(f["flipped_db"], _template_hash(f)),
         argv=lambda f: _scan_args(f, "--db", f["flipped_db"])),
    Case("config column holding JSON of the wrong type", ["config.sqlite", "row id 2", "[1, 2]", "json object"],
         call=lambda f: ScoreDB(f["config_db"], readonly=True).configurations(),
         argv=lambda f: ["db", f["config_db"]]),
    Case("damaged index page", ["damaged.sqlite", "damaged", "quick_check"],
         call=lambda f: ScoreDB(f["damaged_db"], readonly=True),
         argv=lambda f: _scan_args(f, "--db", f["damaged_db"])),
    # --- issue 23: an output that is also an input is refused before any work, links included
    Case("scan --out the same file as --db", ["--out", "same.json", "same file as --db"],
         argv=lambda f: _scan_args(f, "--db", f["same_json"], "--out", f["same_json"])),
    Case("evaluate --scores-out the same file as --db", ["--scores-out", "s.csv", "same file as --db"],
         argv=lambda f: ["evaluate", "--n-archs", "2", "--accuracies", f["acc_ok"], "--data", f["npz"], "--batch-size",
                         str(BATCH), "--db", f["same_csv"], "--scores-out", f["same_csv"], "-q"]),
    Case("evaluate(scores_out=) the same file as db=", ["scores_out", "s_api.csv", "same file as db"],
         call=lambda f: run_evaluate(n_archs=2, accuracies=f["acc_ok"], data=f["npz"], batch_size=BATCH,
                                      engine=ENGINE, db=f["same_csv_api"], scores_out=f["same_csv_api"])),
    Case("--scores-out the same file as --accuracies", ["--scores-out", "same file as --accuracies"],
         argv=lambda f: ["evaluate", "--n-archs", "2", "--accuracies", f["victim_acc"], "--data", f["npz"],
                         "--batch-size", str(BATCH), "--scores-out", f["victim_acc"], "-q"]),
    Case("evaluate(scores_out=) the same file as accuracies=", ["scores_out", "same file as accuracies"],
         call=lambda f: run_evaluate(n_archs=2, accuracies=f["victim_acc_api"], data=f["npz"], batch_size=BATCH,
                                      engine=ENGINE, scores_out=f["victim_acc_api"])),
    Case("--scores-out a link to --scores-in", ["victim_link.csv", "same file as --scores-in", "victim_scores.csv"],
         argv=lambda f: ["evaluate", "--scores-in", f["victim_scores"], "--accuracies", f["acc_ok"],
                         "--scores-out", f["victim_link"]]),
    Case("report --out a link to a --scores file", ["report_link.md", "same file as --scores"],
         argv=lambda f: ["report", "--scores", f"jacob_cov={f['victim_scores2']}", "--accuracies", f["acc_ok"],
                         "--out", f["report_link"]]),
    Case("scan --out a link to --data", ["data_link.csv", "same file as --data"],
         argv=lambda f: _scan_args(f, "--data", f["victim_npz"], "--out", f["data_link"])),
    Case("--table-out over --scores-out", ["--table-out", "both.csv", "same file as --scores-out"],
         argv=lambda f: ["evaluate", "--scores-in", f["scores_csv"], "--accuracies", f["acc_ok"], "--search-table", "2",
                         "--scores-out", f["both"] + ".csv", "--table-out", f["both"]]),
    # --- issue 23: symbolic link loops are named, exit 2
    Case("link loop as --data", ["loop1", "symbolic link loop"],
         call=lambda f: load_images(f["loop"]), argv=lambda f: _scan_args(f, "--data", f["loop"])),
    Case("link loop as --accuracies", ["loop1", "symbolic link loop"],
         call=lambda f: nwot_fast.accuracies.load_accuracies(f["loop"]),
         argv=lambda f: ["search", "-n", "2", "--accuracies", f["loop"], "--engine", ENGINE]),
    Case("link loop as --scores-in", ["loop1", "symbolic link loop"], call=lambda f: read_scores(f["loop"]),
         argv=lambda f: ["evaluate", "--scores-in", f["loop"], "--accuracies", f["acc_ok"]]),
    Case("link loop as --db", ["loop1", "symbolic link loop"], call=lambda f: ScoreDB(f["loop"]),
         argv=lambda f: _scan_args(f, "--db", f["loop"])),
    Case("link loop as db's argument", ["loop1", "symbolic link loop"],
         call=lambda f: ScoreDB(f["loop"], readonly=True), argv=lambda f: ["db", f["loop"]]),
    # --- issue 23: no hidden files from --table-out DIR/
    Case("--table-out DIR/", ["tables/", "names a directory"],
         call=lambda f: check_table_prefix(f["tables_dir"] + os.sep),
         argv=lambda f: ["evaluate", "--scores-in", f["scores_csv"], "--accuracies", f["acc_ok"], "--search-table", "2",
                         "--table-out", f["tables_dir"] + os.sep]),
    # --- issue 23: published points that cannot be drawn are refused when read, before any figure
    *[Case(f"published {what}", [f"pub_{key}.csv", "row 3", field],
           call=lambda f, key=key: read_published_points(f[f"pub_{key}"]),
           argv=lambda f, key=key: ["report", "--scores", f"jacob_cov={f['scores_csv']}", "--accuracies", f["acc_ok"],
                                    "--published", f[f"pub_{key}"], "--search-ns", "2", "--runs", "2",
                                    "--out", os.path.join(f["dir"], f"pub_{key}.md")])
      for what, key, field in (("seconds 0", "seconds0", "seconds"), ("seconds -5", "seconds_neg", "seconds"),
                               ("seconds nan", "seconds_nan", "seconds"), ("seconds inf", "seconds_inf", "seconds"),
                               ("accuracy 1e9", "acc_big", "accuracy"))],
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES if c.call])
def test_library_raises_a_clear_error(case, files):
    with pytest.raises(case.exc) as info:
        case.call(files)
    message = str(info.value).lower()
    for word in case.words:
        assert word.lower() in message, f"{word!r} not in {message!r}"
    for word in case.absent:
        assert word.lower() not in message, f"{word!r} in {message!r}"


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
    for word in case.absent:
        assert word.lower() not in err.lower(), f"{word!r} in {err!r}"
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


# ---------------------------------------------------------------------------------------------
# issue 23: beyond the table


def _snapshot(path) -> Tuple[bytes, List[str]]:
    """The bytes of a file and what lies beside it (a -wal / -shm would show here)."""
    return open(path, "rb").read(), sorted(os.listdir(os.path.dirname(path)))


def test_damaged_database_is_never_written(files, tmp_path, capsys):
    """A database with a damaged page: `db` names the damage, `scan` refuses before writing
    (it used to write into it and exit 0 while PRAGMA integrity_check failed)."""
    db = str(tmp_path / "damaged.sqlite")
    shutil.copy(files["damaged_db"], db)
    before = _snapshot(db)
    argv = [a.replace("{db}", db) for a in _scan_args(files)]
    assert main(argv) == 2
    assert main(["db", db]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("quick_check") == 2 and "damaged" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="damaged"):
        scan("0:3", batch_size=BATCH, engine=ENGINE, data=files["npz"], db=db)
    assert _snapshot(db) == before
    # A healthy database says its check passed.
    assert main(["db", files["template"]]) == 0
    assert "integrity: ok" in capsys.readouterr().out
    assert main(["db", files["template"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["integrity"] == "ok"


@pytest.mark.parametrize("key", ["view_db", "appid_db", "user_version_db", "no_unique_db"])
def test_other_programs_sqlite_files_are_left_unchanged(files, tmp_path, key):
    """Refused by `scan` (and the read-only `db`) exactly as found: no table added, no WAL switch,
    no -wal / -shm beside it."""
    db = str(tmp_path / ISSUE23_FILES[key])
    shutil.copy(files[key], db)
    before = _snapshot(db)
    for readonly in (False, True):
        with pytest.raises(ValueError):
            ScoreDB(db, readonly=readonly)
    assert main([a.replace("{db}", db) for a in _scan_args(files)]) == 2
    assert _snapshot(db) == before


def test_scores_table_without_unique_is_refused_before_scoring(files, tmp_path, monkeypatch):
    from nwot_fast import scorer

    scored = []
    real = scorer.Scorer._scores  # every index any command scores passes here
    monkeypatch.setattr(scorer.Scorer, "_scores", lambda self, ix: real(self, (scored.append(i) or i for i in ix)))
    db = str(tmp_path / "no_unique.sqlite")
    shutil.copy(files["no_unique_db"], db)
    with pytest.raises(ValueError, match=r"UNIQUE \(arch_index, config_hash\)"):
        scan("0:4", batch_size=BATCH, engine=ENGINE, data=files["npz"], db=db)
    assert scored == []


def test_scan_database_header(files):
    """A scan database says so in its header: application_id "NWOT", user_version 2 (its layout,
    whose configuration keys all name the dtype)."""
    conn = sqlite3.connect(f"file:{files['template']}?mode=ro", uri=True)
    try:
        header = [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version")]
    finally:
        conn.close()
    assert header == [SCAN_DB_APPLICATION_ID, SCAN_DB_LAYOUT]


@pytest.mark.parametrize("version, which", [(1, "older"), (0, "older"), (3, "newer")])
def test_database_of_another_user_version_is_refused_unchanged(files, tmp_path, capsys, version, which):
    """No migration before 1.0: a scan database of another user_version (1: its float32
    configuration keys lack the dtype, so a resumed scan would silently score everything again
    under a new key) is refused by scan, db and the API, read-only or not, with the file, both
    versions and what to do; nothing is read from it or written to it."""
    db = str(tmp_path / "other_version.sqlite")
    shutil.copy(files["template"], db)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    before = _snapshot(db)
    words = [repr(db), f"{which} nwot_fast", f"user_version {version}", f"user_version {SCAN_DB_LAYOUT}",
             "new --db path"]
    for readonly in (False, True):
        with pytest.raises(ValueError) as info:
            ScoreDB(db, readonly=readonly)
        assert all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(ValueError, match=f"user_version {version}"):
        scan("0:3", batch_size=BATCH, engine=ENGINE, data=files["npz"], db=db)
    assert main([a.replace("{db}", db) for a in _scan_args(files)]) == 2
    assert main(["db", db]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("user_version") == 4 and "Traceback" not in err, err
    assert _snapshot(db) == before


def test_database_from_before_the_header_is_refused_without_adopting_it(files, tmp_path):
    """A scan database written before the header existed (application_id and user_version 0) is
    refused unchanged, and the message says to scan again: marking it with this version's header
    would read its float32 rows under keys that are no longer theirs."""
    old = str(tmp_path / "before_the_header.sqlite")
    shutil.copy(files["template"], old)
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA application_id = 0")
    conn.execute("PRAGMA user_version = 0")
    conn.commit()
    conn.close()
    before = _snapshot(old)
    with pytest.raises(ValueError, match="before the header existed") as info:
        scan("0:3", batch_size=BATCH, engine=ENGINE, data=files["npz"], db=old)
    assert "new --db path" in str(info.value) and "PRAGMA" not in str(info.value)
    assert _snapshot(old) == before


def test_api_flags_have_one_spelling():
    """One configuration, one hash: the accepted spellings of a flag or device give the same
    configuration; 'no', 0 and 'false' are refused (TypeError naming the argument)."""
    base = ScoreConfig(augment=False, fixed_batch=True)
    assert ScoreConfig(augment=np.False_, fixed_batch=np.True_) == base
    assert ScoreConfig(augment=np.False_, fixed_batch=np.True_).config_hash() == base.config_hash()
    assert ScoreConfig(device=torch.device("cpu")) == ScoreConfig(device="cpu")
    assert ScoreConfig(batch_size=np.int64(8), seed=np.int64(3)) == ScoreConfig(batch_size=8, seed=3)
    assert ScoreConfig(batch_size=np.int64(8), seed=np.int64(3)).config_hash() == ScoreConfig(batch_size=8, seed=3).config_hash()
    for bad in ("no", "False", 0, 1, "true"):
        with pytest.raises(TypeError, match="augment"):
            ScoreConfig(augment=bad)
        with pytest.raises(TypeError, match="fixed_batch"):
            ScoreConfig(fixed_batch=bad)


def test_score_file_of_two_methods_read_with_method(files, capsys):
    """--method picks one method's rows and the rows left out are counted, not hidden."""
    res = run_evaluate(scores_in=files["mixed"], method="jacob_cov", accuracies=files["acc_ok"])
    assert res.method == "jacob_cov" and res.indices.tolist() == [0, 2] and res.scores.tolist() == [1.5, 0.5]
    assert "all 2 jacob_cov rows" in res.selection and "1 hook_logdet row left out" in res.selection
    assert main(["evaluate", "--scores-in", files["mixed"], "--method", "hook_logdet", "--accuracies",
                 files["acc_ok"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hook_logdet: 1 architectures (all 1 hook_logdet rows of") and "2 jacob_cov rows left out" in out


def test_byte_order_marks_are_accepted(files, tmp_path):
    """Excel writes CSV with a UTF-8 byte-order mark: it is no part of the first column's name."""
    from nwot_fast.accuracies import load_accuracies

    plain = load_accuracies(files["acc_ok"])
    bom = tmp_path / "acc_bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + open(files["acc_ok"], "rb").read())
    table = load_accuracies(bom)
    for key in plain.splits:
        np.testing.assert_array_equal(table.column(*key), plain.column(*key))
    scores = tmp_path / "scores_bom.csv"
    scores.write_bytes(b"\xef\xbb\xbf" + open(files["scores_csv"], "rb").read())
    np.testing.assert_array_equal(read_scores(scores).scores, read_scores(files["scores_csv"]).scores)


# issue 23: nothing a user types loses data or prints a traceback. The one-line cases are rows
# of CASES above; these tests check what a row cannot: that no work was done before a refusal,
# that no file was overwritten or left behind, and the process-level cases (streams, signals,
# memory and file-size limits) in a child process.

import ast  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from conftest import REPO_ROOT, subprocess_env  # noqa: E402

# The command line in a child process whose scoring, if reached, ends it with exit 1 and a
# line naming the architecture: the child's exit code tells whether any work was done.
_NO_SCORING = (
    "import sys\n"
    "from nwot_fast import scorer\n"
    "def refuse(self, indices):\n"
    "    for index in indices:\n"
    "        raise SystemExit(f'scored architecture {index}')\n"
    "    yield from ()\n"
    "scorer.Scorer._scores = refuse\n"
    "from nwot_fast.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _child(argv, *, no_scoring: bool = False, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _NO_SCORING, *argv] if no_scoring else [sys.executable, "-m", "nwot_fast", *argv]
    kwargs.setdefault("env", subprocess_env())
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(cmd, text=True, timeout=300, **kwargs)


@pytest.fixture
def no_scoring(monkeypatch):
    """Scoring in this process fails the test: a refusal must come before any work."""
    from nwot_fast import scorer

    def refuse(self, indices):  # every index any command scores passes here
        for index in indices:
            raise AssertionError(f"architecture {index} was scored before the refusal")
        yield from ()

    monkeypatch.setattr(scorer.Scorer, "_scores", refuse)


SAME_FILE = [c for c in CASES if "same file" in " ".join(c.words)]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in SAME_FILE])
def test_an_output_that_is_an_input_is_refused_before_any_work(case, files, no_scoring, capsys):
    before = _victim_state(files)
    if case.argv is not None:
        assert main(case.argv(files)) == 2
        assert "same file" in capsys.readouterr().err
    if case.call is not None:
        with pytest.raises(ValueError, match="same file"):
            case.call(files)
    assert _victim_state(files) == before  # every input as it was, links still links
    for name in ("same_json", "same_csv", "same_csv_api"):  # refused before the database was created
        assert not os.path.lexists(files[name])


def test_scores_out_through_a_link_writes_its_target(files, tmp_path, capsys):
    target = tmp_path / "target.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    os.symlink(target, link)
    assert main(["evaluate", "--scores-in", files["scores_csv"], "--accuracies", files["acc_ok"],
                 "--scores-out", str(link), "--json"]) == 0, capsys.readouterr().err
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert target.read_text().startswith("arch_index,arch,method,score,seconds")
    assert sorted(os.listdir(tmp_path)) == ["link.csv", "target.csv"]  # no temporary file left


def test_cpu_out_of_memory_exits_3(tmp_path):
    """As `ulimit -v 6000000; nwot-fast score 0 --batch-size 65536`, smaller: torch's CPU
    allocator fails (a RuntimeError of no type of its own)."""
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000 * 1024, 3_000_000 * 1024))

    proc = _child(["score", "0", "--batch-size", "16384", "--engine", ENGINE], preexec_fn=limit_memory)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("nwot-fast: error: out of memory") and proc.stderr.count("\n") == 1, proc.stderr
    assert "--batch-size" in proc.stderr and proc.stdout == ""


def test_report_without_matplotlib_says_what_to_install_and_draws_nothing(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on an install without it
    code = main(["report", "--scores", f"jacob_cov={files['scores_csv']}", "--accuracies", files["acc_ok"],
                 "--search-ns", "2", "--runs", "2", "--out", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "matplotlib" in err and "pip install 'nwot_fast[report]'" in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []  # no figures folder, no partial figure or table


def test_refused_published_points_leave_no_figures(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code = main(["report", "--scores", f"jacob_cov={files['scores_csv']}", "--accuracies", files["acc_ok"],
                 "--published", files["pub_seconds0"], "--search-ns", "2", "--runs", "2",
                 "--out", str(tmp_path / "r.md")])
    assert code == 2, capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def _declared_requirements() -> set:
    """Distribution names of setup.py's install_requires and extras_require, read as text."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("install_requires", "extras_require"):
            value = ast.literal_eval(node.value)
            groups = [value] if isinstance(value, list) else list(value.values())
            for requirement in (r for group in groups for r in group):
                names.add(requirement.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower())
    return names


def test_every_package_a_command_imports_is_declared():
    """Every third-party module the package imports (or asks for through errors.require) comes
    from a distribution that setup.py installs or offers as an extra."""
    distribution = {"torch": "torch", "numpy": "numpy", "scipy": "scipy", "tqdm": "tqdm", "matplotlib": "matplotlib",
                    "ray": "ray", "nas_201_api": "nas-bench-201"}
    imported = set()
    for path in (REPO_ROOT / "nwot_fast").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and node.args
                  and isinstance(node.args[0], ast.Constant)):
                imported.add(node.args[0].value.split(".")[0])
    ours = ("nwot_fast", "_nwot_fast_build")
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ours}
    unknown = third_party - set(distribution)
    assert not unknown, f"map these modules to their distribution: {unknown}"
    missing = {distribution[m] for m in third_party} - _declared_requirements()
    assert not missing, f"imported but not declared in setup.py: {sorted(missing)}"


@pytest.mark.parametrize("argv", [["arch", "0"], ["info"], ["score", "0"], ["search", "-n", "1"],
                                  ["scan", "--indices", "0:1"], ["db", "x.sqlite"],
                                  ["evaluate", "--n-archs", "1", "--accuracies", "a.csv"],
                                  ["report", "--scores", "jacob_cov=s.csv", "--accuracies", "a.csv"]],
                         ids=lambda argv: argv[0])
def test_closed_stdout_is_refused_before_any_work(argv, tmp_path):
    proc = _child(argv, stdout=None, cwd=tmp_path, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == "nwot-fast: error: cannot write the results to standard output: it is closed\n"
    assert os.listdir(tmp_path) == []  # no database, no report: nothing was started


def test_closed_or_failing_stderr(files, tmp_path):
    # An error with stderr closed: its exit code, and no traceback on stdout either.
    proc = _child(["arch", "99999"], stderr=None, preexec_fn=lambda: os.close(2))
    assert proc.returncode == 2 and proc.stdout == ""
    if os.path.exists("/dev/full"):
        # A message on a full stderr (evaluate's note about Gaussian inputs) is a full disk: exit 3.
        with open("/dev/full", "w") as full:
            proc = _child(["evaluate", "--n-archs", "2", "--accuracies", files["acc_ok"], "--batch-size", str(BATCH)],
                          stderr=full, no_scoring=True)
        assert proc.returncode == 3 and proc.stdout == ""


def test_stdout_that_cannot_encode_a_path_exits_3(files, tmp_path):
    db = tmp_path / "é.sqlite"
    shutil.copy(files["template"], db)
    proc = _child(["db", str(db)], env=dict(subprocess_env(), PYTHONIOENCODING="ascii"))
    assert proc.returncode == 3, proc.stderr
    assert "standard output" in proc.stderr and "ascii" in proc.stderr and proc.stderr.count("\n") == 1


def _no_file_writes():
    """A file-size limit of 0 bytes: every write to a file fails (EFBIG), creating one does not;
    a disk with no space left behaves the same."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_full_disk_is_found_before_any_scoring_and_leaves_nothing(files, tmp_path):
    out = tmp_path / "z.csv"
    proc = _child(["evaluate", "--n-archs", "2", "--accuracies", files["acc_ok"], "--data", files["npz"],
                   "--batch-size", str(BATCH), "--scores-out", str(out), "-q"], no_scoring=True,
                  preexec_fn=_no_file_writes)
    assert proc.returncode == 3, proc.stderr
    assert "z.csv" in proc.stderr and "test write" in proc.stderr
    db = tmp_path / "new.sqlite"
    proc = _child(["scan", "--indices", "0:2", "--data", files["npz"], "--batch-size", str(BATCH), "--db", str(db),
                   "-q"], no_scoring=True, preexec_fn=_no_file_writes)
    assert proc.returncode == 3, proc.stderr
    assert os.listdir(tmp_path) == []  # no 0-byte database, no probe, no temporary file


def test_refused_scan_leaves_no_database(files, tmp_path, capsys):
    db = tmp_path / "new.sqlite"
    argv = [a.replace("{db}", str(db)) for a in _scan_args(files, "--batch-size", "32")]
    assert main(argv) == 2
    assert "larger than the 16 images" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_db_command_leaves_no_wal_or_shm(files, tmp_path, capsys):
    db = tmp_path / "s.sqlite"
    shutil.copy(files["template"], db)
    assert main(["db", str(db), "--json"]) == 0
    assert '"rows": 2' in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["s.sqlite"]


def test_read_only_database_is_found_before_the_first_score(files):
    """A 0444 database (SQLite would open it read-only without a word) is refused when it is
    opened, not after a score, and leaves no -wal / -shm; `db` still reads it, leaving none.
    Root may write any file, so as root the commands run as nobody."""
    as_nobody = os.geteuid() == 0
    if as_nobody and shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: cannot run as another user")
    work = tempfile.mkdtemp(prefix="nwot-ro-")
    try:
        os.chmod(work, 0o777)
        db, data = os.path.join(work, "ro.sqlite"), os.path.join(work, "tiny16.npz")
        shutil.copy(files["template"], db)
        shutil.copy(files["npz"], data)
        os.chmod(data, 0o644)
        if as_nobody:
            os.chown(db, 65534, 65534)
        os.chmod(db, 0o444)
        before = open(db, "rb").read()  # (reading it through SQLite here would leave a -wal and -shm)
        env = dict(subprocess_env(), HOME=work)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
        run = (lambda argv, script: subprocess.run(prefix + [sys.executable, "-c", script, *argv], env=env, text=True,
                                                   capture_output=True, timeout=300))
        proc = run(["scan", "--indices", "0:4", "--batch-size", str(BATCH), "--engine", ENGINE, "--data", data,
                    "--db", db, "-q"], _NO_SCORING)
        assert proc.returncode == 3, proc.stderr
        assert "read-only" in proc.stderr and "while opening it" in proc.stderr
        assert sorted(os.listdir(work)) == ["ro.sqlite", "tiny16.npz"]
        proc = run(["db", db, "--json"], "import sys; from nwot_fast.cli import main; sys.exit(main(sys.argv[1:]))")
        assert proc.returncode == 0 and '"rows": 2' in proc.stdout, proc.stderr
        assert sorted(os.listdir(work)) == ["ro.sqlite", "tiny16.npz"]
        assert open(db, "rb").read() == before
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_non_utf8_data_path_through_the_api_fails_before_scoring(files, tmp_path, no_scoring):
    name = os.fsdecode(b"\xff-images.npz")
    shutil.copy(files["npz"], os.path.join(str(tmp_path), name))
    db = tmp_path / "s.sqlite"
    with pytest.raises(ValueError, match="not valid UTF-8"):
        scan([0, 1], data=os.path.join(str(tmp_path), name), batch_size=BATCH, engine=ENGINE, db=str(db))
    assert not db.exists()


def test_search_reports_the_accuracy_columns_the_table_has(files, tmp_path, capsys):
    """A table with CIFAR-10 columns only: search shows those, after scoring nothing is lost."""
    lines = (open(files["acc_ok"]).read().splitlines())
    header = lines[0].split(",")
    keep = [k for k, h in enumerate(header) if h in ("index", "arch", "cifar10_valid_acc", "cifar10_test_acc")]
    table = tmp_path / "cifar10_only.csv"
    table.write_text("\n".join(",".join(row.split(",")[k] for k in keep) for row in lines) + "\n")
    code = main(["search", "-n", "2", "-r", "2", "--accuracies", str(table), "--batch-size", str(BATCH),
                 "--engine", ENGINE, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    import json

    runs = json.loads(out)["runs"]
    assert [sorted(r["accuracies"]) for r in runs] == [["cifar10/test", "cifar10/val"]] * 2
    assert all(r["accuracies"]["cifar10/test"] == 85.0 for r in runs)


def test_broken_build_cache_falls_back_naming_the_variable(tmp_path, monkeypatch, capsys):
    """No compiled extension, and a build cache that cannot be used: the pure path, with one
    warning that names the variable; `info` and `score` work."""
    from nwot_fast import _ext, _jit

    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    monkeypatch.setattr(_ext, "_loaded", None)
    monkeypatch.setattr(_ext, "_try_aot", lambda *a: (None, "nwot_fast._C is not built (simulated)"))
    monkeypatch.delenv("NWOT_FAST_NO_JIT", raising=False)
    monkeypatch.setattr(_jit, "unavailable_reason", lambda environ=None: None)  # a compiler and ninja are there
    monkeypatch.setattr(_ext, "_namespace_registered", lambda: False)  # the real _C may be loaded in this process
    monkeypatch.setattr(_jit, "_compile", lambda *a: pytest.fail("must not compile into an unusable cache"))
    # a file as NWOT_FAST_BUILD_DIR; a TORCH_EXTENSIONS_DIR that cannot be created (as a read-only place)
    for variable, value in (("NWOT_FAST_BUILD_DIR", str(not_a_dir)),
                            ("TORCH_EXTENSIONS_DIR", str(not_a_dir / "cannot" / "be" / "created"))):
        monkeypatch.delenv("NWOT_FAST_BUILD_DIR", raising=False)
        monkeypatch.setenv(variable, value)
        _ext._reset_for_tests()
        try:
            with warnings.catch_warnings(record=True) as records:
                warnings.simplefilter("always")
                assert main(["info", "--json"]) == 0
                assert main(["score", "0", "--batch-size", str(BATCH), "--engine", ENGINE, "--json"]) == 0
            out, err = capsys.readouterr()
            found = [str(r.message) for r in records if issubclass(r.category, _ext.ExtensionWarning)]
            assert len(found) == 1 and f"{variable}={value}" in found[0] and "fallback" in found[0], found
            assert '"route": "fallback"' in out and variable in out
        finally:
            _ext._reset_for_tests()
    monkeypatch.undo()
    _ext._reset_for_tests()


def test_signals_wait_for_a_block_that_must_not_be_cut():
    """process.deferred_signals: a SIGINT inside the block is delivered when it ends;
    stop_on_signals: the first SIGINT stops, a second one during the clean-up is ignored."""
    from nwot_fast.process import deferred_signals, stop_on_signals

    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the KeyboardInterrupt cuts this short
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while cleaning up: ignored
                done.append("clean-up ran to its end")
    assert done[-1] == "clean-up ran to its end"
    assert signal.getsignal(signal.SIGINT) is before  # put back after the block
