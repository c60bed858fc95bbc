"""Figures 4 and 5 on tiny inputs: the score-variation measurement (checked against the pure
path), the zoo fits (checked against numpy / scipy), the figures, and the zoo's install hint."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import scipy.stats
import torch

from nwot_fast import figures, reference
from nwot_fast._common import ACCURACY_KEYS
from nwot_fast.accuracies import AccuracyTable
from nwot_fast.cli import main
from nwot_fast.data import BatchSampler, load_images
from nwot_fast.nb201 import NUM_ARCHS, arch_at, build_network
from nwot_fast.variation import FACTORS, pick_archs, score_variation

from conftest import shared_file

pytestmark = pytest.mark.usefixtures("one_thread")
HAVE_STATSMODELS = importlib.util.find_spec("statsmodels") is not None
HAVE_PYTORCHCV = importlib.util.find_spec("pytorchcv") is not None


@pytest.fixture(scope="module")
def accuracy_table():
    rng = np.random.default_rng(3)
    cols = {k: np.round(rng.uniform(10, 95, NUM_ARCHS), 2) for k in ACCURACY_KEYS}
    return AccuracyTable(cols, [str(arch_at(i)) for i in range(NUM_ARCHS)], source="synthetic")


# ---------------------------------------------------------------------------------------------
# Figure 4


def test_pick_archs_skips_cells_decided_by_structure():
    from nwot_fast.nb201 import is_constant_output, relu_sees_only_zeros

    jc = pick_archs(40, seed=0, method="jacob_cov")
    hl = pick_archs(40, seed=0, method="hook_logdet")
    assert len(jc) == len(hl) == 40 and len(set(jc)) == 40
    assert not any(is_constant_output(arch_at(i)) for i in jc)
    assert not any(relu_sees_only_zeros(arch_at(i)) for i in hl)
    order = [int(i) for i in np.random.default_rng(0).permutation(NUM_ARCHS)]
    assert [order.index(i) for i in jc] == sorted(order.index(i) for i in jc)  # in permutation order


def test_score_variation_against_the_pure_path(tiny_npz, accuracy_table, tmp_path):
    images = load_images(tiny_npz)
    v = score_variation(images, archs=2, repeats=3, batch_size=4, method="hook_logdet", seed=5)
    assert v.indices == pick_archs(2, 5, "hook_logdet")
    for f in FACTORS:
        assert v.scores[f].shape == (2, 3)
    # minibatch k=0 and initialisation k=0 are the same (batch 0, weights seeded 5)
    np.testing.assert_array_equal(v.scores["minibatch"][:, 0], v.scores["initialisation"][:, 0])
    # each factor changes what it says: an independent recomputation with the pure path
    pictures = BatchSampler(images, batch_size=4, augment=False, fixed=False, seed=5)
    noise = BatchSampler(None, batch_size=4, augment=False, fixed=False, seed=5, image_shape=images.image_shape)
    checks = (("minibatch", 2, pictures.batch(2), 5), ("initialisation", 1, pictures.batch(0), 6),
              ("gaussian", 2, noise.batch(2), 5))
    for factor, k, x, weight_seed in checks:
        torch.manual_seed(weight_seed)
        expected = reference.score(build_network(arch_at(v.indices[1])), x, "hook_logdet")
        assert v.scores[factor][1, k] == pytest.approx(expected, rel=1e-6), factor
    spread = v.spread()
    for f in FACTORS:
        s = v.scores[f]
        assert spread[f]["median_std"] == pytest.approx(np.median(np.std(s, axis=1, ddof=1)))
        assert spread[f]["between_archs_std"] == pytest.approx(np.std(s.mean(axis=1), ddof=1))
    fig = figures.figure4_score_variation(v, accuracy_table, tmp_path / "fig4")
    assert [p[-4:] for p in fig["paths"]] == [".png", ".svg"]
    assert all((tmp_path / f"fig4{e}").stat().st_size > 0 for e in (".png", ".svg"))
    assert fig["spread"]["gaussian"]["median_std"] == spread["gaussian"]["median_std"]


def test_score_variation_bad_input(tiny_npz):
    images = load_images(tiny_npz)
    with pytest.raises(ValueError, match="method"):
        score_variation(images, method="snip")
    with pytest.raises(TypeError, match="ImageSet"):
        score_variation(np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="repeats"):
        score_variation(images, repeats=1)


def test_report_draws_figure4(tiny_npz, tmp_path, capsys):
    """The report with --data draws Figure 4 (tiny sizes) and states its settings and spreads."""
    from nwot_fast.scorefile import write_scores

    acc_csv = shared_file("nb201_accuracies.csv")
    scores = tmp_path / "s.csv"
    idx = np.arange(40)
    write_scores(scores, idx, np.random.default_rng(0).normal(size=40), method="hook_logdet")
    out = tmp_path / "r.md"
    code = main(["report", "--scores", f"hook_logdet={scores}", "--accuracies", str(acc_csv), "--data", tiny_npz,
                 "--search-ns", "5", "--runs", "5", "--fig1-per-bin", "1", "--fig1-batch", "4", "--fig4-archs", "2",
                 "--fig4-repeats", "2", "--fig4-batch", "4", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    text = out.read_text()
    assert "(Figure 4)" in text and "median std over archs" in text and "Least spread" in text
    assert (tmp_path / "figures" / "fig4_score_variation.png").exists()


# ---------------------------------------------------------------------------------------------
# Figure 5


@pytest.mark.skipif(not HAVE_STATSMODELS, reason="statsmodels (the zoo extra) not installed")
def test_fit_zoo_against_numpy_and_scipy():
    from nwot_fast.zoo import FIT_SCORE, FIT_WITH_PARAMS, fit_zoo

    rng = np.random.default_rng(1)
    params = rng.uniform(1e5, 1e7, 30)
    score = rng.normal(size=30)
    acc = 90 + 2 * score + np.log(params) + rng.normal(0, 0.5, 30)
    fits = fit_zoo(score, acc, params)
    simple = scipy.stats.linregress(score, acc)
    assert fits[FIT_SCORE]["score_coef"] == pytest.approx(simple.slope, rel=1e-10)
    assert fits[FIT_SCORE]["score_p"] == pytest.approx(simple.pvalue, rel=1e-8)
    X = np.column_stack([np.ones(30), score, np.log(params)])
    coef = np.linalg.lstsq(X, acc, rcond=None)[0]
    assert fits[FIT_WITH_PARAMS]["score_coef"] == pytest.approx(coef[1], rel=1e-10)
    assert fits[FIT_WITH_PARAMS]["log_params_coef"] == pytest.approx(coef[2], rel=1e-10)
    assert fits[FIT_WITH_PARAMS]["score_p"] < 1e-6 and fits[FIT_WITH_PARAMS]["n"] == 30
    with pytest.raises(ValueError, match="at least 4"):
        fit_zoo(score[:3], acc[:3], params[:3])
    with pytest.raises(ValueError, match="finite"):
        fit_zoo(np.r_[score[:5], np.nan], acc[:6], params[:6])


def test_figure5_draws_a_panel_per_score(tmp_path):
    from nwot_fast.zoo import FIT_SCORE, FIT_WITH_PARAMS, ZooModel, ZooResult

    models = [ZooModel(f"m{i}", 90.0 + i, 10 ** (5 + i / 3), float(i) * 2, 0.1) for i in range(5)]
    models.append(ZooModel("flat", 80.0, 1000, float("nan"), 0.1))
    fit = {"intercept": 90.0, "score_coef": 0.5, "score_p": 1e-3, "r2": 0.9, "n": 5}
    res = [ZooResult(m, models, [("bad", "why")], {FIT_SCORE: fit, FIT_WITH_PARAMS: fit}, 4, 0, "tiny")
           for m in ("jacob_cov", "hook_logdet")]
    out = figures.figure5_zoo(res, tmp_path / "fig5")
    assert all((tmp_path / f"fig5{e}").stat().st_size > 0 for e in (".png", ".svg")) and len(out["paths"]) == 2
    assert res[0].skip_lines() == ["skipped bad: why"]
    with pytest.raises(ValueError):
        figures.figure5_zoo([], tmp_path / "none")


@pytest.mark.skipif(not (HAVE_PYTORCHCV and HAVE_STATSMODELS), reason="the zoo extra (pytorchcv, statsmodels) not installed")
def test_score_zoo_on_tiny_batch():
    from nwot_fast.zoo import score_zoo

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    names = ["resnet20_cifar10", "preresnet20_cifar10", "seresnet20_cifar10", "sepreresnet20_cifar10",
             "densenet40_k12_bc_cifar10", "resnet20_cifar100", "no_such_model"]
    res = score_zoo(x, models=names, method="hook_logdet", seed=0)
    assert [m.name for m in res.models] == names[:5]
    assert {n for n, _ in res.skipped} == {"resnet20_cifar100", "no_such_model"}
    assert all("pytorchcv's model table" in why for _, why in res.skipped)
    r20 = res.models[0]
    assert r20.accuracy == pytest.approx(100 - 5.97) and r20.params == 272474
    # the generic path, independently: the same model and seed through reference.score
    from pytorchcv.model_provider import get_model

    torch.manual_seed(0)
    assert r20.score == reference.score(get_model("resnet20_cifar10", pretrained=False), x, "hook_logdet")
    assert res.fits["score"]["n"] == 5 and "score + log(params)" in res.fits
    assert "skipped no_such_model" in res.format_text()


@pytest.mark.skipif(not (HAVE_PYTORCHCV and HAVE_STATSMODELS), reason="the zoo extra (pytorchcv, statsmodels) not installed")
def test_score_zoo_is_seeded_through_the_forward_pass():
    """Shake-Shake draws its branch weights in train mode: the score must not depend on the
    caller's RNG state (before, it did)."""
    from nwot_fast.zoo import score_zoo

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    names = ["shakeshakeresnet20_2x16d_cifar10"]
    torch.manual_seed(123)
    a = score_zoo(x, models=names, method="jacob_cov").models[0].score
    torch.manual_seed(456)
    b = score_zoo(x, models=names, method="jacob_cov").models[0].score
    assert a == b


def test_report_zoo_without_the_extra_says_how_to_install(tiny_npz, tmp_path, capsys, monkeypatch):
    from nwot_fast.scorefile import write_scores

    for name in ("pytorchcv", "pytorchcv.model_provider", "pytorchcv.models", "pytorchcv.models.model_store",
                 "pytorchcv.models.common", "pytorchcv.models.common.model_store"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    scores = tmp_path / "s.csv"
    write_scores(scores, np.arange(10), np.arange(10.0), method="jacob_cov")
    out = tmp_path / "r.md"
    code = main(["report", "--scores", f"jacob_cov={scores}", "--accuracies", str(shared_file("nb201_accuracies.csv")),
                 "--data", tiny_npz, "--zoo", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and "nwot_fast[zoo]" in err and "pytorchcv" in err
    assert not out.exists()
