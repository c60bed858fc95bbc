"""evaluate(): correlations, score files, the search table; one small real-data evaluation."""

from __future__ import annotations

import csv
import io
import json
import pathlib

import numpy as np
import pytest

import scipy.stats

from nwot_fast import cli
from nwot_fast._common import ACCURACY_KEYS
from nwot_fast.accuracies import CSV_COLUMNS, AccuracyTable
from nwot_fast.evaluate import evaluate, sample_indices
from nwot_fast.nb201 import NUM_ARCHS, arch_at
from nwot_fast.scorefile import read_scores, write_scores
from nwot_fast.search import nanargmax
from nwot_fast.searchtable import _pick, search_table

from conftest import shared_file as _shared


@pytest.fixture(scope="module")
def synthetic_table():
    """A made-up accuracy table over the whole space: each column a different noisy function."""
    rng = np.random.default_rng(7)
    base = rng.uniform(10, 95, NUM_ARCHS)
    # clipped: accuracies are percentages, and a table with values outside [0, 100] is refused
    cols = {k: np.clip(np.round(base + rng.normal(0, 3 + j, NUM_ARCHS), 2), 0, 100) for j, k in enumerate(ACCURACY_KEYS)}
    return AccuracyTable(cols, [str(arch_at(i)) for i in range(NUM_ARCHS)], source="synthetic")


@pytest.fixture(scope="module")
def synthetic_csv(synthetic_table, tmp_path_factory):
    """The synthetic table as an accuracy CSV (what the command line reads)."""
    path = tmp_path_factory.mktemp("acc") / "accuracies.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "arch"] + [CSV_COLUMNS[k] for k in ACCURACY_KEYS])
        cols = [synthetic_table.column(*k) for k in ACCURACY_KEYS]
        for i in range(NUM_ARCHS):
            w.writerow([i, str(arch_at(i))] + [repr(float(c[i])) for c in cols])
    return path


# ---------------------------------------------------------------------------------------------
# sampling and score files


def test_sample_indices_seeded_distinct_and_nested():
    a = sample_indices(1000, seed=0)
    assert a.shape == (1000,) and np.unique(a).size == 1000
    np.testing.assert_array_equal(a[:100], sample_indices(100, seed=0))
    assert not np.array_equal(a[:100], sample_indices(100, seed=1))
    assert 0 <= a.min() and a.max() < NUM_ARCHS
    for bad in (0, NUM_ARCHS + 1):
        with pytest.raises(ValueError, match="n_archs"):
            sample_indices(bad)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".json"])
def test_scores_file_round_trip(tmp_path, ext):
    idx = np.array([5, 17, 341, 15624])
    sc = np.array([1.25, float("nan"), float("-inf"), -233.1045194638792])
    secs = np.array([0.5, 0.25, np.nan, 1.0])
    path = write_scores(tmp_path / f"s{ext}", idx, sc, seconds=secs, method="jacob_cov")
    back = read_scores(path, method="jacob_cov")
    np.testing.assert_array_equal(back.indices, idx)
    np.testing.assert_array_equal(back.scores, sc)  # bitwise, NaN and -inf included
    np.testing.assert_array_equal(back.seconds, secs)
    assert back.method == "jacob_cov"
    with pytest.raises(ValueError, match="not hook_logdet|no rows"):
        read_scores(path, method="hook_logdet")


def test_read_scores_per_method_columns_and_bad_files(tmp_path):
    p = tmp_path / "both.jsonl"
    p.write_text("\n".join(json.dumps({"arch_index": i, "jacob_cov": -float(i), "hook_logdet": float(i)})
                           for i in (1, 2, 3)) + "\n")
    assert read_scores(p, method="hook_logdet").scores.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="say which"):
        read_scores(p)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(f"arch_index,arch,score\n0,{arch_at(1)},1.0\n")
    with pytest.raises(ValueError, match="another index order"):
        read_scores(wrong)
    dup = tmp_path / "dup.csv"
    dup.write_text("arch_index,score\n3,1.0\n3,2.0\n")
    with pytest.raises(ValueError, match="twice"):
        read_scores(dup)
    junk = tmp_path / "junk.csv"
    junk.write_text("arch_index,score\n3,abc\n")
    with pytest.raises(ValueError, match="not a number"):
        read_scores(junk)
    with pytest.raises(FileNotFoundError):
        read_scores(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="must end in"):
        write_scores(tmp_path / "s.txt", [1], [1.0])


# ---------------------------------------------------------------------------------------------
# correlations


def test_correlations_exclude_non_finite_and_match_stats(synthetic_table, tmp_path):
    idx = sample_indices(300, seed=3)
    acc = synthetic_table.column("cifar10", "test")[idx]
    rng = np.random.default_rng(0)
    sc = acc + rng.normal(0, 10, idx.size)
    sc[:7] = np.nan
    sc[7:10] = -np.inf
    path = write_scores(tmp_path / "s.csv", idx, sc, method="hook_logdet")
    res = evaluate(scores_in=path, method="hook_logdet", accuracies=synthetic_table)
    assert (res.n_archs, res.n_nan, res.n_neg_inf, res.n_finite) == (300, 7, 3, 290)
    c = res.correlation("cifar10", "test")
    assert c["n"] == 290
    assert c["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(sc[10:], acc[10:]).statistic, abs=1e-12)
    assert c["spearman_rho"] == pytest.approx(scipy.stats.spearmanr(sc[10:], acc[10:]).statistic, abs=1e-12)
    assert c["kendall_tau"] > 0.3
    d = res.to_dict()
    assert set(d["correlations"]) == {"cifar10", "cifar100", "ImageNet16-120"}
    for ds in d["correlations"].values():
        assert set(ds) == {"val", "test"}
        for v in ds.values():
            assert set(v) == {"kendall_tau", "spearman_rho", "n"}
    assert d["excluded"] == {"nan": 7, "neg_inf": 3, "pos_inf": 0}
    json.dumps(d)  # serialisable
    # a selection taken from the file
    sub = evaluate(scores_in=path, method="hook_logdet", accuracies=synthetic_table, n_archs=100, seed=3)
    np.testing.assert_array_equal(sub.indices, idx[:100])
    with pytest.raises(ValueError, match="no score for"):
        evaluate(scores_in=path, method="hook_logdet", accuracies=synthetic_table, n_archs=301, seed=3)


def test_evaluate_bad_input(synthetic_table):
    with pytest.raises(ValueError, match="say which architectures"):
        evaluate(accuracies=synthetic_table)
    with pytest.raises(ValueError, match="only one"):
        evaluate(n_archs=3, all_archs=True, accuracies=synthetic_table)
    with pytest.raises(ValueError, match="method"):
        evaluate(n_archs=3, method="synflow", accuracies=synthetic_table)
    with pytest.raises(ValueError, match="accuracies is required"):
        evaluate(n_archs=3)
    with pytest.raises(FileNotFoundError):
        evaluate(n_archs=3, accuracies="/nonexistent/acc.csv")


# ---------------------------------------------------------------------------------------------
# the search table on a synthetic table whose answer is known


def test_pick_matches_search_nanargmax():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(400, 6))
    s[rng.random(s.shape) < 0.3] = np.nan
    s[rng.random(s.shape) < 0.3] = -np.inf
    s[0] = np.nan
    pick, all_nan = _pick(s)
    for row, p, a in zip(s, pick, all_nan):
        want = nanargmax(row)
        assert (want is None) == a
        assert p == (0 if want is None else want)


def test_search_table_with_oracle_scores_equals_optimal(synthetic_table):
    test_acc = synthetic_table.column("cifar10", "test")
    scores = {i: float(a) for i, a in enumerate(test_acc)}
    t = search_table(scores, synthetic_table, Ns=(10, 100), runs=200, seed=1)
    assert t.mode == "table" and t.pool == "the whole space"
    for n in (10, 100):
        got, best = t.row(f"NASWOT (N={n})"), t.row(f"Optimal (N={n})")
        key = ("cifar10", "test")
        assert got["mean"][key] == pytest.approx(best["mean"][key], abs=1e-9)
        assert got["std"][key] == pytest.approx(best["std"][key], abs=1e-9)
        # other columns: the chosen arch is not necessarily the best there
        assert got["mean"][("cifar100", "val")] <= best["mean"][("cifar100", "val")] + 1e-9
    rnd = t.row("Random")
    for key in ACCURACY_KEYS:
        col = synthetic_table.column(*key)
        assert rnd["mean"][key] == pytest.approx(col.mean())
        assert rnd["std"][key] == pytest.approx(col.std())
    # more samples, better pick
    assert t.row("NASWOT (N=100)")["mean"][("cifar10", "test")] > t.row("NASWOT (N=10)")["mean"][("cifar10", "test")]


def test_search_table_adversarial_scores_and_pool(synthetic_table):
    idx = sample_indices(500, seed=2)
    acc = synthetic_table.column("cifar10", "val")[idx]
    worst = search_table((idx, -acc), synthetic_table, Ns=(25,), runs=100, seed=0)
    assert "sample of 500" in worst.pool and "not the whole space" in worst.pool
    row = worst.row("NASWOT (N=25)")
    assert row["mean"][("cifar10", "val")] < worst.row("Random")["mean"][("cifar10", "val")] - 10
    # every chosen arch is the worst of its draw: mean equals the mean of the draw minima
    draws = np.random.default_rng(0).integers(0, idx.size, size=(100, 25))
    assert row["mean"][("cifar10", "val")] == pytest.approx(acc[draws].min(axis=1).mean())
    # NaN scores are never chosen when something else is there
    sc = acc.copy()
    sc[acc > np.median(acc)] = np.nan  # hide the better half: only the worse half can be picked
    t = search_table((idx, sc), synthetic_table, Ns=(10,), runs=100, seed=0)
    assert t.row("NASWOT (N=10)")["mean"][("cifar10", "val")] <= np.median(acc)


def test_search_table_outputs(synthetic_table, tmp_path):
    idx = sample_indices(200, seed=4)
    sc = synthetic_table.column("cifar10", "test")[idx]
    secs = np.full(idx.size, 0.5)
    t = search_table((idx, sc), synthetic_table, Ns=(10, 25), runs=50, seed=0, seconds=secs)
    assert t.row("NASWOT (N=10)")["search_seconds"] == pytest.approx(5.0)
    assert t.row("NASWOT (N=25)")["search_seconds"] == pytest.approx(12.5)
    text = t.format_text()
    for word in ("Method", "Search (s)", "CIFAR-10 (val)", "ImageNet16-120 (test)", "Random", "Optimal (N=25)",
                 "mode 'table'", "+-"):
        assert word in text
    md, cs = t.write(tmp_path / "table")
    assert pathlib.Path(md).read_text().count("\n| ") == len(t.rows) + 1
    rows = list(csv.DictReader(io.StringIO(pathlib.Path(cs).read_text())))
    assert [r["method"] for r in rows] == ["NASWOT (N=10)", "NASWOT (N=25)", "Random", "Optimal (N=10)",
                                          "Optimal (N=25)"]
    assert float(rows[0]["cifar10_test_mean"]) == pytest.approx(t.rows[0]["mean"][("cifar10", "test")], rel=1e-5)
    json.dumps(t.to_dict())
    with pytest.raises(ValueError, match="mode"):
        search_table((idx, sc), synthetic_table, mode="fast")
    with pytest.raises(TypeError, match="rescore"):
        search_table((idx, sc), synthetic_table, mode="rescore")
    with pytest.raises(ValueError, match="N must"):
        search_table((idx, sc), synthetic_table, Ns=(0,))


@pytest.mark.slow
def test_search_table_rescore_mode(synthetic_table):
    from nwot_fast.scoring import ScoreConfig

    cfg = ScoreConfig(method="hook_logdet", batch_size=4, engine="reference")
    t = search_table(cfg, synthetic_table, Ns=(3,), runs=2, mode="rescore", seed=0)
    assert t.mode == "rescore" and "afresh" in t.pool
    row = t.row("NASWOT (N=3)")
    assert row["search_seconds"] > 0
    assert t.row("Optimal (N=3)")["mean"][("cifar10", "test")] >= row["mean"][("cifar10", "test")] - 1e-9


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_evaluate_json(synthetic_table, synthetic_csv, tmp_path, capsys):
    idx = sample_indices(50, seed=0)
    sc = synthetic_table.column("cifar10", "val")[idx] + np.random.default_rng(0).normal(0, 5, idx.size)
    sc[:2] = np.nan
    path = write_scores(tmp_path / "s.csv", idx, sc, method="jacob_cov")
    code = cli.main(["evaluate", "--scores-in", str(path), "--accuracies", str(synthetic_csv), "--json",
                     "--search-table", "10", "--runs", "20", "--table-out", str(tmp_path / "t")])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_archs"] == 50 and out["excluded"]["nan"] == 2
    want = scipy.stats.kendalltau(sc[2:], synthetic_table.column("cifar10", "val")[idx[2:]]).statistic
    assert out["correlations"]["cifar10"]["val"]["kendall_tau"] == pytest.approx(want, abs=1e-12)
    assert out["correlations"]["cifar10"]["val"]["n"] == 48
    assert out["search_table"]["mode"] == "table" and out["search_table"]["runs"] == 20
    assert (tmp_path / "t.md").exists() and (tmp_path / "t.csv").exists()
    assert cli.main(["evaluate", "--accuracies", str(synthetic_csv), "--n-archs", "5", "--all"]) == 2
    capsys.readouterr()


def test_cli_report_json(synthetic_table, synthetic_csv, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    idx = sample_indices(80, seed=0)
    sc = synthetic_table.column("cifar10", "test")[idx]
    path = write_scores(tmp_path / "jc.csv", idx, sc, seconds=np.full(idx.size, 0.1), method="jacob_cov")
    code = cli.main(["report", "--scores", f"jacob_cov={path}", "--accuracies", str(synthetic_csv),
                     "--out", str(tmp_path / "r.md"), "--search-ns", "10", "--runs", "10", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report"] == str(tmp_path / "r.md") and (tmp_path / "r.md").exists()
    ev = out["methods"]["jacob_cov"]["evaluation"]
    assert ev["correlations"]["cifar10"]["test"]["kendall_tau"] == pytest.approx(1.0)  # scores are the accuracies
    assert cli.main(["report", "--scores", f"synflow={path}", "--accuracies", str(synthetic_csv)]) == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# end to end on the real data: the method works, it does not just run


@pytest.mark.slow
def test_real_data_small_evaluation_is_positively_correlated(tmp_path):
    data = _shared("cifar10_sample.npz")
    acc = _shared("nb201_accuracies.csv")
    res = evaluate(n_archs=N_REAL, method="hook_logdet", data=data, accuracies=acc, batch_size=BATCH_REAL,
                   augment=False, fixed_batch=True, seed=0, engine="fast", scores_out=tmp_path / "s.csv")
    assert res.n_archs == N_REAL
    # the sample holds a few degenerate cells (-inf), reported and excluded
    assert res.n_neg_inf + res.n_nan + res.n_finite == N_REAL
    c10 = res.correlation("cifar10", "val")
    assert c10["n"] == res.n_finite
    assert c10["kendall_tau"] > TAU_MIN, res.format_table()
    assert res.correlation("cifar10", "test")["spearman_rho"] > TAU_MIN
    again = read_scores(tmp_path / "s.csv", method="hook_logdet")
    np.testing.assert_array_equal(again.scores, res.scores)


# Sized for the CI budget (< 3 minutes on 2 cores): measured 95 s with the fast engine on 2 cores
# shared with 4 other jobs (load ~8), one thread. The margin is set from measurement: these 60
# architectures (the first 60 of the seeded sample of docs/RESULTS.md) give Kendall tau 0.42
# against CIFAR-10 val at batch 32 (0.53 for the first 100); the assertion asks for > 0.3.
N_REAL = 60
BATCH_REAL = 32
TAU_MIN = 0.3


# ---------------------------------------------------------------------------------------------
# figures and the report


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def _check_figure_files(paths):
    png, svg = paths
    assert png.endswith(".png") and svg.endswith(".svg")
    assert _is_png(png) and pathlib.Path(png).stat().st_size > 5000
    text = pathlib.Path(svg).read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and text.count("<path") > 10


def test_figure3_and_figure6(synthetic_table, tmp_path):
    pytest.importorskip("matplotlib")
    from nwot_fast import figures

    idx = sample_indices(300, seed=5)
    sc = synthetic_table.column("cifar10", "test")[idx] + np.random.default_rng(1).normal(0, 5, idx.size)
    sc[:4] = np.nan
    out = figures.figure3_score_vs_accuracy(idx, sc, synthetic_table, tmp_path / "fig3", method="jacob_cov")
    _check_figure_files(out["paths"])
    assert out["kendall_tau"]["cifar10"] > 0.3
    pts = [{"label": "ours (N=10)", "seconds": 3.0, "accuracy": 91.0, "std": 1.5}]
    out6 = figures.figure6_time_vs_accuracy(pts, tmp_path / "fig6")
    _check_figure_files(out6["paths"])
    # by default: the NASWOT paper's own points and the ten other methods of its NB201 table
    assert out6["published"] == list(figures.PUBLISHED_SEARCH_POINTS + figures.PUBLISHED_BASELINES)
    baselines = {p["label"]: p for p in out6["published"] if p["kind"] != "training-free"}
    assert set(baselines) == {"REA", "RS", "REINFORCE", "BOHB", "RSPS", "DARTS-V1", "DARTS-V2", "GDAS", "SETN",
                              "ENAS"}
    for p in baselines.values():
        assert p["seconds"] > 0 and 0 < p["accuracy"] < 100 and p["std"] >= 0
        assert p["kind"] in figures.PUBLISHED_KINDS
    assert {p["label"] for p in baselines.values() if p["kind"] == "non-weight-sharing"} == {"REA", "RS", "REINFORCE",
                                                                                          "BOHB"}
    # every label is written once, the four at 12000 s stacked in one
    svg = pathlib.Path(out6["paths"][1]).read_text()
    for label in list(baselines) + ["N=100", "ours (N=10)"]:
        assert label in svg, label
    assert [len(g) for g in figures._label_groups(figures.PUBLISHED_BASELINES) if len(g) > 1] == [2, 4]
    # published= replaces the defaults; a CSV may give the kind
    csv_path = tmp_path / "published.csv"
    csv_path.write_text("label,seconds,accuracy,std,kind\nA,100,90.5,0.5,weight-sharing\nB,2000,93,,\n")
    given = figures.read_published_points(csv_path)
    assert given == [{"label": "A", "seconds": 100.0, "accuracy": 90.5, "std": 0.5, "kind": "weight-sharing"},
                     {"label": "B", "seconds": 2000.0, "accuracy": 93.0, "std": 0.0}]
    out6b = figures.figure6_time_vs_accuracy(pts, tmp_path / "fig6b", published=given)
    assert [p["label"] for p in out6b["published"]] == ["A", "B"]
    csv_path.write_text("label,seconds,accuracy,std,kind\nA,100,90.5,0.5,one-shot\n")
    with pytest.raises(ValueError, match="kind must be one of"):
        figures.read_published_points(csv_path)
    with pytest.raises(ValueError, match="'A'.*kind must be one of"):
        figures.figure6_time_vs_accuracy(pts, tmp_path / "bad", published=[dict(given[0], kind="one-shot")])
    with pytest.raises(ValueError, match="> 0"):
        figures.figure6_time_vs_accuracy([{"label": "x", "seconds": 0.0, "accuracy": 90.0}], tmp_path / "bad")
    with pytest.raises(FileNotFoundError):
        figures.figure6_time_vs_accuracy(pts, tmp_path / "no_such_dir" / "fig6")


@pytest.mark.slow
def test_figure1_jacobian_histograms(synthetic_table, tmp_path):
    pytest.importorskip("matplotlib")
    import torch

    from nwot_fast import figures

    by_bin = figures.archs_by_accuracy_bin(synthetic_table, per_bin=1, seed=0)
    assert len(by_bin) == 5 and all(len(b) == 1 for b in by_bin)
    acc = synthetic_table.column("cifar10", "val")
    assert acc[by_bin[0][0]] < 60 and acc[by_bin[4][0]] >= 90
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    entries = figures.jacobian_correlation_entries(by_bin[2][0], x)
    assert entries.shape == (8 * 7 // 2,) and np.all(np.abs(entries) <= 1 + 1e-12)
    out = figures.figure1_jacobian_histograms(x, synthetic_table, tmp_path / "fig1", indices_by_bin=by_bin)
    _check_figure_files(out["paths"])
    assert [len(b["archs"]) for b in out["bins"]] == [1, 1, 1, 1, 1]


def test_report_assembles_tables_and_figures(synthetic_table, tmp_path):
    pytest.importorskip("matplotlib")
    from nwot_fast.report import build_report

    idx = sample_indices(120, seed=0)
    sc = synthetic_table.column("cifar10", "test")[idx] + np.random.default_rng(2).normal(0, 5, idx.size)
    path = write_scores(tmp_path / "hl.csv", idx, sc, seconds=np.full(idx.size, 0.2), method="hook_logdet")
    summary = build_report(scores={"hook_logdet": str(path)}, accuracies=synthetic_table, out=tmp_path / "r.md",
                           Ns=(10,), runs=30)
    text = (tmp_path / "r.md").read_text()
    for word in ("## hook_logdet", "Kendall tau", "NASWOT hook_logdet (N=10)", "Optimal (N=10)", "tau 0.574",
                 "91.53 +- 1.62", "figures/fig3_hook_logdet_score_vs_accuracy.png", "fig6_time_vs_accuracy.png",
                 "Table 2(a)", "REINFORCE", "DARTS-V2"):
        assert word in text, word
    for paths in summary["figures"].values():
        for p in paths:
            assert pathlib.Path(p).stat().st_size > 0
    assert (tmp_path / "figures" / "search_table_hook_logdet.csv").exists()
    json.dumps(summary, default=str)
    with pytest.raises(ValueError, match="method"):
        build_report(scores={"synflow": str(path)}, accuracies=synthetic_table, out=tmp_path / "r2.md")
