"""Score tables (issue 21): export from a scan database, the loader, verify (also on tampered
tables), evaluate and report from a table.

Every table here is built by the tests themselves, from real scans of a few architectures on
tiny random images: none of them is, or stands for, a shipped table, except in
test_shipped_table_verifies_here, which recomputes rows of each shipped table on the real images.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3

import numpy as np
import pytest
import scipy.stats

from nwot_fast import tables
from nwot_fast.cli import main
from nwot_fast.nb201 import NUM_ARCHS
from nwot_fast.scanning import scan
from nwot_fast.scorefile import read_scores
from nwot_fast.tables.export import random_rows
from nwot_fast.tables.protocol import first_images, pixel_fingerprint, save_first_images
from nwot_fast.tables.table import write_table

from conftest import shared_file

pytestmark = pytest.mark.usefixtures("one_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# 10: constant output (jacob_cov NaN); 12: also every ReLU sees only zeros (hook_logdet -inf)
INDICES = [0, 10, 12, 1459, 6111]
F64_ROWS = dict(random=4, random_seed=3)  # random_rows(4, 3): four seeded random indices
COUNT = 6  # images of the protocol (and the batch)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 'training set' of 12 random 16x16 images (ImageNet16-120 labels)."""
    rng = np.random.default_rng(2101)
    path = tmp_path_factory.mktemp("source") / "train.npz"
    np.savez(path, x=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), y=rng.integers(1, 121, 12))
    return str(path)


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    """Scans (float32 jacob_cov on INDICES, float64 hook_logdet on 4 random rows) of the first 6
    images of ``source``, exported as two tables; also what the scans returned."""
    import torch

    root = tmp_path_factory.mktemp("tables")
    data = str(root / "first6.npz")
    save_first_images(source, data, COUNT)
    common = dict(data=data, batch_size=COUNT, fixed_batch=True, augment=False, seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        f32 = scan(INDICES, db=str(root / "jc.db"), method="jacob_cov", **common)
        f64 = scan(random_rows(4, 3).tolist(), db=str(root / "hl.db"), method="hook_logdet", dtype="float64", **common)
    finally:
        torch.set_num_threads(before)
    out = root / "out"
    out.mkdir()
    t32 = tables.build(str(root / "jc.db"), data=data, out_dir=out, commit=COMMIT, indices=",".join(map(str, INDICES)),
                       threads=1)
    t64 = tables.build(str(root / "hl.db"), data=data, out_dir=out, commit=COMMIT, threads=1, **F64_ROWS)
    return {"root": root, "data": data, "out": str(out), "f32": f32, "f64": f64, "t32": t32, "t64": t64}


def _copy_tables(built, dst):
    dst = str(dst)
    shutil.copytree(built["out"], dst)
    return dst


# ---------------------------------------------------------------------------------------------
# export and loader


def test_export_holds_the_scans_scores_exactly(built):
    for table, result in ((built["t32"], built["f32"]), (built["t64"], built["f64"])):
        order = np.argsort(result.indices)
        np.testing.assert_array_equal(table.indices, result.indices[order])
        np.testing.assert_array_equal(table.scores, result.scores[order])  # NaN == NaN, bit for bit
        again = tables.load(table.name, built["out"])
        np.testing.assert_array_equal(again.scores, table.scores)
        # the CSV is also a score file: the reader of evaluate --scores-in gets the same floats
        sf = read_scores(table.csv_path, method=table.method)
        np.testing.assert_array_equal(sf.scores, table.scores)
    t32 = built["t32"]
    assert t32.name == "jacob_cov.float32" and t32.dtype == "float32" and t32.complete
    assert math.isnan(t32.score(10)) and math.isnan(t32.score(12)) and math.isfinite(t32.score(6111))
    assert np.isfinite(built["t64"].scores).all()
    with pytest.raises(KeyError):
        t32.score(1)


def test_provenance_record(built, source):
    p = built["t32"].provenance
    for key in ("nwot_fast_version", "git_commit", "torch", "cpu", "started", "finished", "wall_seconds", "command",
                "threads"):
        assert p["scan"][key] is not None, key
    assert p["scan"]["git_commit"] == COMMIT and p["nan"] == 2 and p["neg_inf"] == 0 and p["rows"] == len(INDICES)
    proto = p["protocol"]
    assert (proto["batch_size"], proto["seed"], proto["dtype"], proto["fixed_batch"], proto["augment"]) == \
        (COUNT, 0, "float32", True, False)
    # the pixels identify the data, whatever file they came from: the source's first 6 images
    assert proto["data"]["fingerprint"] == pixel_fingerprint(first_images(source, COUNT).images)
    assert proto["data"]["images"] == COUNT and proto["data"]["dataset"] == "ImageNet16-120"
    assert "nwot-fast scan" in p["scan"]["command"] and "--batch-size 6" in p["scan"]["command"]
    cov = built["t64"].provenance["coverage"]
    assert cov["complete"] and cov["selection"]["kind"] == "random" and cov["covered"] == 4
    assert built["t64"].provenance["neg_inf"] == 0
    assert p["degenerate"] == {"value": "nan", "structure": "constant output", "scored": 2, "cells": 2, "both": 2}


def test_degenerate_rows_over_the_whole_space():
    """The structural counts the tables' records carry: 341 constant-output cells (jacob_cov NaN)."""
    from nwot_fast.tables.export import degenerate_rows

    d = degenerate_rows("jacob_cov", np.arange(NUM_ARCHS), np.zeros(NUM_ARCHS))
    assert d["cells"] == 341 and d["scored"] == 0 and d["both"] == 0
    h = degenerate_rows("hook_logdet", [12, 0], [-np.inf, 1.0])
    assert (h["scored"], h["cells"], h["both"]) == (1, 1, 1)


def test_export_refuses_missing_rows_unless_partial(built, tmp_path):
    root = built["root"]
    kw = dict(data=built["data"], out_dir=tmp_path, commit=COMMIT)
    with pytest.raises(ValueError, match="missing"):
        tables.build(str(root / "jc.db"), indices="0:20", **kw)
    t = tables.build(str(root / "jc.db"), indices="0:20", allow_partial=True, name="part", **kw)
    assert not t.complete and t.provenance["coverage"]["covered"] == 3 and t.provenance["coverage"]["expected"] == 20
    assert "PARTIAL" in t.describe()
    with pytest.raises(ValueError, match="missing"):  # the default: the whole space
        tables.build(str(root / "jc.db"), **kw)


def test_export_refuses_other_data_and_bad_commit(built, source, tmp_path):
    db = str(built["root"] / "jc.db")
    with pytest.raises(ValueError, match="fingerprint"):
        tables.build(db, data=source, out_dir=tmp_path, commit=COMMIT, indices="0")
    with pytest.raises(ValueError, match="commit"):
        tables.build(db, data=built["data"], out_dir=tmp_path, commit="HEAD", indices="0")


def test_export_refuses_a_database_of_user_version_1(built, tmp_path, capsys):
    """A scan database of user_version 1 (float32 configuration keys without the dtype) is not
    exported: `tables build` names the file, its version, the version it reads and what to do,
    and leaves the file as it was (it is exported with the code that wrote it)."""
    db = str(tmp_path / "old.db")
    shutil.copy(built["root"] / "jc.db", db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    before = open(db, "rb").read()
    out = tmp_path / "out"
    out.mkdir()
    words = [repr(db), "older nwot_fast", "user_version 1", "user_version 2", "new --db path"]
    with pytest.raises(ValueError) as info:
        tables.build(db, data=built["data"], out_dir=out, commit=COMMIT, indices=",".join(map(str, INDICES)))
    assert all(w in str(info.value) for w in words), str(info.value)
    code, _, err = run(capsys, "tables", "build", "--db", db, "--data", built["data"], "--out", str(out),
                       "--commit", COMMIT, "--indices", ",".join(map(str, INDICES)))
    assert code == 2 and all(w in err for w in words) and "Traceback" not in err, err
    assert open(db, "rb").read() == before and os.listdir(out) == []
    assert sorted(os.listdir(tmp_path)) == ["old.db", "out"]  # no -wal / -shm left beside it


def test_loader_detects_a_changed_csv(built, tmp_path):
    d = _copy_tables(built, tmp_path / "t")
    path = os.path.join(d, "jacob_cov.float32.csv")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[1] = lines[1].split(",")[0] + ",-1.0"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(tables.TableIntegrityError, match="SHA-256"):
        tables.load("jacob_cov.float32", d)
    assert tables.list_tables(d)[0]["name"] == "hook_logdet.float64"  # the records still list


def test_list_show_and_unknown_name(built, capsys):
    code, out, _ = run(capsys, "tables", "list", "--dir", built["out"], "--json")
    assert code == 0
    names = {t["name"]: t for t in json.loads(out)["tables"]}
    assert set(names) == {"jacob_cov.float32", "hook_logdet.float64"} and names["jacob_cov.float32"]["complete"]
    code, out, _ = run(capsys, "tables", "show", "jacob_cov.float32", "--dir", built["out"])
    assert code == 0 and COMMIT in out and "2 NaN" in out
    code, _, err = run(capsys, "tables", "show", "no_such_table", "--dir", built["out"])
    assert code == 2 and "no score table named" in err


def test_float32_error_against_a_float64_table():
    prov = {"method": "jacob_cov", "coverage": {"complete": True, "covered": 3, "expected": 3},
            "protocol": {}, "scan": {}}
    a = tables.ScoreTable("a", np.array([1, 2, 3]), np.array([1.0 + 1e-6, np.nan, -2.0]), dict(prov, dtype="float32"),
                          "", "")
    b = tables.ScoreTable("b", np.array([2, 3, 4]), np.array([np.nan, -2.0 * (1 + 1e-5), 7.0]),
                          dict(prov, dtype="float64"), "", "")
    e = tables.float32_error(a, b)
    assert e["rows"] == 2 and e["special_agree"] == 1 and e["finite"] == 1
    assert e["max_rel_error"] == pytest.approx(1e-5 / (1 + 1e-5), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# verify


def test_verify_passes_on_the_built_tables(built, source, capsys):
    code, out, err = run(capsys, "tables", "verify", "--dir", built["out"], "--data", source, "--sample", "3",
                         "--sample-seed", "0", "--json")
    assert code == 0, out + err
    res = json.loads(out)
    assert res["passed"] and len(res["tables"]) == 2
    for t in res["tables"]:
        assert t["passed"] and len(t["rows"]) == 3 and all(r["ok"] for r in t["rows"])
        if t["dtype"] == "float64":
            assert all(float(r["relative_error"]) <= 1e-9 for r in t["rows"])


def test_verify_all_rows_reports_each(built, source):
    # one thread for the reference here: two threads on a loaded 2-core machine cost minutes;
    # the command-line tests run the contract's default (1 and 2 threads)
    v = tables.verify(tables.load("jacob_cov.float32", built["out"]), source, sample=99, sample_seed=1,
                      thread_counts=(1,))
    assert v.passed and [r.index for r in v.rows] == sorted(INDICES)
    nan_rows = [r for r in v.rows if r.index in (10, 12)]
    assert all(math.isnan(r.table) and math.isnan(r.truth) and r.ok for r in nan_rows)
    assert "PASS" in v.format_text()


def _tampered(built, dst, name, index, change):
    """A copy of the tables in which one score of ``name`` is changed and the record rewritten
    to match (a consistent forgery: only recomputing can catch it)."""
    d = _copy_tables(built, dst)
    t = tables.load(name, d)
    scores = t.scores.copy()
    k = int(np.searchsorted(t.indices, index))
    scores[k] = change(scores[k])
    keep = {k: v for k, v in t.provenance.items() if k not in ("format", "name", "rows", "nan", "neg_inf", "csv_sha256")}
    write_table(d, t.name, t.indices, scores, keep)
    return d


def test_verify_fails_on_a_tampered_float64_row(built, source, tmp_path, capsys):
    row = int(random_rows(4, 3)[1])
    d = _tampered(built, tmp_path / "t", "hook_logdet.float64", row, lambda s: s * (1 + 1e-7))
    code, out, _ = run(capsys, "tables", "verify", "hook_logdet.float64", "--dir", d, "--data", source, "--sample", "4",
                       "--sample-seed", "0")
    assert code == 1 and "FAIL" in out and f"row {row}" in out


def test_verify_fails_on_a_tampered_float32_row(built, source, tmp_path, capsys):
    d = _tampered(built, tmp_path / "t", "jacob_cov.float32", 6111, lambda s: s * 1.001)
    code, out, _ = run(capsys, "tables", "verify", "jacob_cov.float32", "--dir", d, "--data", source, "--sample", "5",
                       "--sample-seed", "0")
    assert code == 1 and "DIFFERS" in out and "FAIL" in out


def test_verify_fails_on_a_special_value_turned_finite(built, source, tmp_path):
    d = _tampered(built, tmp_path / "t", "jacob_cov.float32", 10, lambda s: -100.0)
    v = tables.verify(tables.load("jacob_cov.float32", d), source, sample=5, sample_seed=0, thread_counts=(1,))
    assert not v.passed and any("where the float64 truth is nan" in p for p in v.problems)
    assert [r.note for r in v.rows if r.index == 10] == ["special value differs"]


def test_verify_fails_on_a_changed_csv_without_recomputing(built, source, tmp_path, capsys):
    d = _copy_tables(built, tmp_path / "t")
    path = os.path.join(d, "hook_logdet.float64.csv")
    with open(path, "a") as f:
        f.write("15624,1.0\n")
    code, out, _ = run(capsys, "tables", "verify", "--dir", d, "--data", source, "--sample", "1", "--sample-seed", "0")
    assert code == 1 and "SHA-256" in out and "1 of 2 tables agree" in out


def test_verify_refuses_other_images(built, tmp_path, capsys):
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(5)
    np.savez(other, x=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), y=rng.integers(1, 121, 8))
    code, _, err = run(capsys, "tables", "verify", "--dir", built["out"], "--data", str(other), "--sample", "1")
    assert code == 2 and "fingerprint" in err


# ---------------------------------------------------------------------------------------------
# evaluate and report from a table


@pytest.fixture(scope="module")
def whole_space_table(tmp_path_factory):
    """A made-up whole-space table (scores: CIFAR-10 val accuracy plus noise, some NaN): only
    to check that evaluate and report read tables as they read score files."""
    from nwot_fast.accuracies import load_accuracies

    acc = load_accuracies(shared_file("nb201_accuracies.csv")).column("cifar10", "val")
    rng = np.random.default_rng(11)
    scores = acc + rng.normal(0, 5, NUM_ARCHS)
    scores[rng.choice(NUM_ARCHS, 30, replace=False)] = np.nan
    d = tmp_path_factory.mktemp("synthetic")
    return write_table(d, "synthetic", np.arange(NUM_ARCHS), scores, _made_up_provenance()), acc


def _made_up_provenance() -> dict:
    return {"method": "hook_logdet", "dtype": "float32",
            "coverage": {"complete": True, "covered": NUM_ARCHS, "expected": NUM_ARCHS, "missing": 0,
                         "selection": {"kind": "indices", "spec": "0:15625"}},
            "protocol": {"batch_size": 2, "seed": 0, "fixed_batch": True, "augment": False, "relu_match": "name",
                         "engine": "fast", "device_type": "cpu",
                         "data": {"description": "made-up scores", "dataset": "cifar10", "images": 2,
                                  "fingerprint": "sha256-pixels:none"}},
            "scan": {"nwot_fast_version": "test", "git_commit": COMMIT, "torch": "none", "cpu": "none", "threads": 1,
                     "started": "", "finished": "", "wall_seconds": 0.0, "scoring_seconds": 0.0, "command": "none"}}


def test_a_record_lacking_keys_is_refused(tmp_path):
    prov = _made_up_provenance()
    del prov["scan"]["git_commit"], prov["protocol"]["data"]["fingerprint"]
    with pytest.raises(ValueError, match="protocol.data.fingerprint, scan.git_commit"):
        write_table(tmp_path, "t", [1], [1.0], prov)
    assert not os.listdir(tmp_path)
    good = write_table(tmp_path, "t", [1], [1.0], _made_up_provenance())
    with open(good.json_path) as f:
        record = json.load(f)
    del record["coverage"]["covered"]
    with open(good.json_path, "w") as f:
        json.dump(record, f)
    with pytest.raises(ValueError, match="lacks coverage.covered"):
        tables.load(good.csv_path)


def test_evaluate_from_a_table(whole_space_table, capsys):
    table, acc = whole_space_table
    accuracies = str(shared_file("nb201_accuracies.csv"))
    code, out, err = run(capsys, "evaluate", "--table", table.json_path, "--accuracies", accuracies,
                         "--search-table", "10,100", "--runs", "50", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["method"] == "hook_logdet" and res["n_archs"] == NUM_ARCHS and res["excluded"]["nan"] == 30
    keep = np.isfinite(table.scores)
    tau = scipy.stats.kendalltau(table.scores[keep], acc[keep]).statistic
    assert res["correlations"]["cifar10"]["val"]["kendall_tau"] == pytest.approx(tau, abs=1e-12)
    assert res["search_table"]["pool"] == "the whole space"
    assert "synthetic" in res["data"]
    # the same numbers as from the CSV read as a score file
    code, out2, _ = run(capsys, "evaluate", "--scores-in", table.csv_path, "--method", "hook_logdet", "--accuracies",
                        accuracies, "--json")
    assert json.loads(out2)["correlations"] == res["correlations"]
    code, _, err = run(capsys, "evaluate", "--table", table.json_path, "--method", "jacob_cov", "--accuracies",
                       accuracies)
    assert code == 2 and "holds hook_logdet scores" in err


def test_report_from_a_table(whole_space_table, tmp_path, capsys):
    table, _ = whole_space_table
    out = tmp_path / "report.md"
    code, stdout, err = run(capsys, "report", "--table", table.csv_path, "--accuracies",
                            str(shared_file("nb201_accuracies.csv")), "--search-ns", "10", "--runs", "20", "--out",
                            str(out))
    assert code == 0, err
    text = out.read_text()
    assert "## hook_logdet" in text and "score table synthetic" in text and "the whole space" in text
    assert (tmp_path / "figures" / "fig3_hook_logdet_score_vs_accuracy.png").exists()
    code, _, err = run(capsys, "report", "--accuracies", str(shared_file("nb201_accuracies.csv")), "--out", str(out))
    assert code == 2 and "--table" in err


@pytest.mark.parametrize("argv", [["tables", "--help"], ["tables", "verify", "--help"], ["tables", "build", "--help"]])
def test_tables_help_has_examples_and_exit_codes(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "examples:" in out and "nwot-fast tables verify" in out and "exit codes:" in out


@pytest.mark.parametrize("name", [t["name"] for t in tables.list_tables()])
def test_shipped_table_verifies_here(name):
    """Each table shipped with the package loads (checksum, counts) and three of its rows,
    recomputed here on the real CIFAR-10 images, agree (float64 to 1e-9, float32 by the
    contract): what `nwot-fast tables verify` does for a user."""
    table = tables.load(name)
    assert table.provenance["coverage"]["complete"]
    result = tables.verify(table, str(shared_file("cifar10_sample.npz")), sample=3, sample_seed=0)
    assert not result.problems and len(result.rows) == 3, result.format_text()


def test_reports_name_a_shipped_table_without_a_machine_path(whole_space_table):
    """What evaluate and report print for a table: a shipped one by name ("shipped with
    nwot_fast", so a committed report names no install path); any other by its path."""
    table, _ = whole_space_table
    assert table.csv_path in table.as_score_file().source
    shipped = tables.load(tables.list_tables()[0]["name"])
    source = shipped.as_score_file().source
    assert "shipped with nwot_fast" in source and os.sep + "shipped" + os.sep not in source
