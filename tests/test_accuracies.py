"""Benchmark accuracy tables: the real CSV, and a small file in the official NB201 .pth format."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from nwot_fast.accuracies import CSV_COLUMNS, SPLITS, AccuracyTable, load_accuracies
from nwot_fast.nb201 import NUM_ARCHS, arch_at

# ---------------------------------------------------------------------------------------------
# The real CSV


@pytest.fixture(scope="module")
def real_table():
    from conftest import shared_file

    return load_accuracies(shared_file("nb201_accuracies.csv"))


def test_real_csv_known_optima(real_table):
    assert len(real_table) == NUM_ARCHS
    test10 = real_table.column("cifar10", "test")
    assert test10.shape == (NUM_ARCHS,) and test10.dtype == np.float64
    assert int(np.argmax(test10)) == 6111
    assert test10[6111] == pytest.approx(94.37333, abs=1e-5)
    assert real_table.accuracy(6111, "cifar10", "val") == pytest.approx(91.60667, abs=1e-5)
    assert int(np.argmax(real_table.column("cifar100", "test"))) == 9930
    assert int(np.argmax(real_table.column("ImageNet16-120", "test"))) == 857
    assert int(np.argmax(real_table.column("ImageNet16-120", "val"))) == 10676
    # The 341 architectures without an input-output path are at chance level.
    assert int((test10 == 10.0).sum()) == 341
    assert real_table.arch_strings[0] == str(arch_at(0))
    assert real_table.extra["params_mb"][1] == pytest.approx(0.802426)


def test_real_csv_bad_queries(real_table):
    with pytest.raises(ValueError, match="cifar10, cifar100, ImageNet16-120"):
        real_table.accuracy(0, "mnist", "test")
    with pytest.raises(ValueError, match="val, test"):
        real_table.accuracy(0, "cifar10", "train")
    with pytest.raises(ValueError, match="out of range"):
        real_table.accuracy(NUM_ARCHS, "cifar10", "test")
    with pytest.raises(TypeError):
        real_table.accuracy("7", "cifar10", "test")
    # column() hands out a copy: the table cannot be changed through it.
    real_table.column("cifar10", "test")[:] = 0
    assert real_table.accuracy(6111, "cifar10", "test") > 94


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _small_csv_rows(n=NUM_ARCHS):
    return [[i, str(arch_at(i))] + [50.0 + (i % 7)] * len(CSV_COLUMNS) for i in range(n)]


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_accuracies(tmp_path / "nope.csv")


def _swap_arches(header, rows):  # another order: the arch strings no longer match the official index
    rows = [list(r) for r in rows]
    rows[5][1], rows[9][1] = rows[9][1], rows[5][1]
    return header, rows


def _bad_number(header, rows):
    rows = [list(r) for r in rows]
    rows[3][4] = "n/a"
    return header, rows


#: (file name, (header, rows) -> (header, rows) or None for an empty file, the error it must name)
BAD_CSVS = [
    ("truncated", lambda h, rows: (h, rows[:1000]), r"truncated\.csv: 1000 data rows; expected 15625"),
    ("other_order", _swap_arches, r"other_order\.csv: row 5 has arch"),
    ("bad_number", _bad_number, r"bad_number\.csv: line 5: .* 'n/a' is not a number"),
    ("no_columns", lambda h, rows: (["index", "arch", "foo"], [r[:3] for r in rows]), r"no_columns\.csv: header"),
    ("empty", lambda h, rows: None, r"empty\.csv: file is empty"),
]


@pytest.mark.parametrize("name, make, match", BAD_CSVS, ids=[c[0] for c in BAD_CSVS])
def test_csv_refused_naming_file_and_row(tmp_path, name, make, match):
    p = tmp_path / f"{name}.csv"
    made = make(["index", "arch"] + list(CSV_COLUMNS.values()), _small_csv_rows())
    if made is None:
        p.write_bytes(b"")
    else:
        _write_csv(p, *made)
    with pytest.raises(ValueError, match=match):
        load_accuracies(p)


def test_csv_with_test_columns_only(tmp_path):
    # The NATS-Bench dump has only test columns: loading works, val queries say what exists.
    header = ["index", "arch", "cifar10_test_acc"]
    p = tmp_path / "tests_only.csv"
    _write_csv(p, header, [[i, str(arch_at(i)), 80.0] for i in range(NUM_ARCHS)])
    table = load_accuracies(p)
    assert table.accuracy(3, "cifar10", "test") == 80.0
    with pytest.raises(ValueError, match="has no cifar10 val accuracies; it has cifar10 test"):
        table.accuracy(3, "cifar10", "val")


# ---------------------------------------------------------------------------------------------
# A tiny benchmark file in the official format, written with nas_201_api's own classes.

NB201_DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
EVAL_SETS = {
    "cifar10-valid": ("x-valid", "ori-test"),
    "cifar10": ("ori-test",),
    "cifar100": ("x-valid", "x-test", "ori-test"),
    "ImageNet16-120": ("x-valid", "x-test", "ori-test"),
}


def _accuracy(idx, hp, dataset, setname, seed):
    """A distinct, recognisable accuracy for every field, so any mix-up changes the numbers."""
    base = {"12": 10.0, "200": 50.0}[hp]
    d = NB201_DATASETS.index(dataset)
    s = ("x-valid", "ori-test", "x-test").index(setname)
    return base + idx % 10 + d * 4.0 + s * 1.0 + {777: 0.1, 888: 0.2, 999: 0.6}[seed]


def _arch_results(idx, hp, seeds):
    from nas_201_api.api_utils import ArchResults, ResultsCount

    epochs = 3 if hp == "12" else 4  # short histories; only the last epoch is the result
    arch_str = str(arch_at(idx))
    res = ArchResults(idx, arch_str)
    for dataset in NB201_DATASETS:
        for seed in seeds[dataset]:
            rc = ResultsCount(dataset, None, {e: 1.0 for e in range(epochs)}, {e: 0.5 for e in range(epochs)},
                              0.1, 7.0, {"arch_str": arch_str, "channel": 16, "num_cells": 5, "class_num": 10},
                              seed, epochs, None)
            accs, losses, times = {}, {}, {}
            for setname in EVAL_SETS[dataset]:
                for e in range(epochs):
                    # Earlier epochs carry a different value: the reader must take the last one.
                    final = _accuracy(idx, hp, dataset, setname, seed)
                    accs[f"{setname}@{e}"] = final if e == epochs - 1 else final - 30.0
                    losses[f"{setname}@{e}"] = 1.0
                    times[f"{setname}@{e}"] = 0.5
            rc.update_eval(accs, losses, times)
            res.update(dataset, seed, rc)
    return res.state_dict()


PRESENT = {5: (777, 888, 999), 6111: (777,), 42: (888, 999)}


def _fake_benchmark(meta_archs=None):
    arch2infos = {}
    for idx, seeds in PRESENT.items():
        per_dataset = {d: seeds for d in NB201_DATASETS}
        arch2infos[idx] = {"less": _arch_results(idx, "12", {d: (777,) for d in NB201_DATASETS}),
                           "full": _arch_results(idx, "200", per_dataset)}
    return {"meta_archs": meta_archs or [str(arch_at(i)) for i in range(NUM_ARCHS)],
            "arch2infos": arch2infos, "evaluated_indexes": sorted(PRESENT)}


@pytest.fixture(scope="module")
def fake_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("nb201") / "NAS-Bench-201-fake.pth"
    torch.save(_fake_benchmark(), path)
    return path


def test_pth_hp200_mean_over_seeds_and_metric_mapping(fake_pth):
    table = load_accuracies(fake_pth)
    assert isinstance(table, AccuracyTable)
    assert list(table.indices) == sorted(PRESENT)
    for idx, seeds in PRESENT.items():
        for (dataset, split), (nb_dataset, metric) in SPLITS.items():
            expected = np.mean([_accuracy(idx, "200", nb_dataset, metric, s) for s in seeds])
            got = table.accuracy(idx, dataset, split)
            assert got == pytest.approx(expected, abs=1e-12), (idx, dataset, split)
    # Spot-check the mapping by hand: index 5, all three seeds (mean seed offset 0.3).
    assert table.accuracy(5, "cifar10", "val") == pytest.approx(50 + 5 + 0 * 4 + 0 + 0.3)   # cifar10-valid x-valid
    assert table.accuracy(5, "cifar10", "test") == pytest.approx(50 + 5 + 1 * 4 + 1 + 0.3)  # cifar10 ori-test
    assert table.accuracy(5, "cifar100", "test") == pytest.approx(50 + 5 + 2 * 4 + 2 + 0.3)  # cifar100 x-test
    assert table.accuracy(5, "ImageNet16-120", "val") == pytest.approx(50 + 5 + 3 * 4 + 0 + 0.3)
    assert table.extra["cifar10valid_test_acc"][5] == pytest.approx(50 + 5 + 0 + 1 + 0.3)
    # Index 6111 has a single seed: no averaging, and never a 12-epoch value (those are < 50).
    assert table.accuracy(6111, "cifar10", "test") == pytest.approx(50 + 1 + 4 + 1 + 0.1)
    assert np.nanmin(table.column("cifar10", "val")) > 50


def test_pth_partial_file_names_present_indices(fake_pth):
    table = load_accuracies(fake_pth)
    assert math.isnan(table.column("cifar10", "test")[0])
    with pytest.raises(ValueError, match=r"no cifar10 test accuracy for index 0; it holds 3 architectures: 5, 42, 6111"):
        table.accuracy(0, "cifar10", "test")


def test_pth_of_another_order_is_refused(tmp_path):
    meta = [str(arch_at(i)) for i in range(NUM_ARCHS)]
    meta[17], meta[18] = meta[18], meta[17]
    bad = _fake_benchmark(meta_archs=meta)
    path = tmp_path / "other.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"other\.pth: meta_archs\[17\]"):
        load_accuracies(path)
    short = _fake_benchmark()
    short["meta_archs"] = short["meta_archs"][:100]
    path = tmp_path / "short.pth"
    torch.save(short, path)
    with pytest.raises(ValueError, match=r"short\.pth: meta_archs has 100 entries"):
        load_accuracies(path)
    path = tmp_path / "nodict.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"nodict\.pth: holds a list"):
        load_accuracies(path)


def test_pth_truncated_or_corrupt(fake_pth, tmp_path):
    data = fake_pth.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth: not a readable torch file"):
        load_accuracies(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"junk\.pth"):
        load_accuracies(junk)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_accuracies(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------
# AccuracyKey: one type, every outside spelling made and read in one place


def test_accuracy_key_spellings_match_the_files_and_the_paper(accuracies_csv):
    from nwot_fast._common import ACCURACY_KEYS, AccuracyKey

    # The real CSV's header (written by another program) holds exactly the six key columns,
    # plus extras that are not accuracy keys.
    with open(accuracies_csv, newline="") as f:
        header = next(csv.reader(f))
    keyed = [c for c in header if c.endswith("_acc") and c != "cifar10valid_test_acc"]
    assert sorted(keyed) == sorted(k.csv_column for k in ACCURACY_KEYS)
    assert [AccuracyKey.from_csv_column(c).csv_column for c in keyed] == keyed
    with pytest.raises(ValueError, match="cifar10valid_test_acc"):
        AccuracyKey.from_csv_column("cifar10valid_test_acc")
    # The paper's labels and the JSON keys, both ways; a key is the plain tuple.
    key = AccuracyKey.parse("ImageNet16-120/val")
    assert key == ("ImageNet16-120", "val") and hash(key) == hash(("ImageNet16-120", "val"))
    assert (key.label, key.csv_column, key.stem, key.nb201) == (
        "ImageNet16-120 (val)", "imagenet16_valid_acc", "ImageNet16-120_val", ("ImageNet16-120", "x-valid"))
    assert AccuracyKey("cifar10", "test").nb201 == ("cifar10", "ori-test")  # NB201's own test split for CIFAR-10
    assert AccuracyKey("cifar10", "val").nb201 == ("cifar10-valid", "x-valid")
    for k in ACCURACY_KEYS:
        assert AccuracyKey.parse(str(k)) == k and AccuracyKey.from_label(k.label) == k
    for bad in (("cifar-10", "test"), ("cifar10", "valid"), ("cifar10", "train")):
        with pytest.raises(ValueError, match="allowed"):
            AccuracyKey(*bad)
    with pytest.raises(ValueError, match="DATASET/SPLIT"):
        AccuracyKey.parse("cifar10-test")
    with pytest.raises(ValueError, match="CIFAR-10 \\(val\\)"):
        AccuracyKey.from_label("CIFAR10 (val)")
