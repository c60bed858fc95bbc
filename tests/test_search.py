"""Random search (Algorithm 2): draws, nanargmax, reproducibility, accuracies of the chosen arch."""

import math

import numpy as np
import pytest

from conftest import assert_scores_close
from nwot_fast import nb201
from nwot_fast.search import derive_seed, nanargmax, search


def test_nanargmax_rules():
    assert nanargmax([1.0, float("nan"), 3.0, -math.inf]) == 2
    assert nanargmax([float("nan"), -math.inf]) == 1
    assert nanargmax([float("nan")] * 3) is None


@pytest.mark.slow
def test_search_reproducible_and_each_run_is_independent():
    kw = dict(n_samples=3, batch_size=4, seed=11, engine="reference")
    a = search(runs=2, **kw)
    b = search(runs=1, **kw)
    assert [r.indices for r in a.runs[:1]] == [r.indices for r in b.runs]
    assert a.runs[0].scores == b.runs[0].scores  # bitwise: same seed, same weights, same batch
    assert a.runs[0].indices != a.runs[1].indices
    for r in a.runs:
        assert r.seed == derive_seed(11, r.run)
        best = nanargmax(r.scores)
        assert r.chosen_index == r.indices[best] and r.chosen_arch == nb201.arch_at(r.chosen_index)
    assert "Gaussian" in a.data_description


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_fast_search_equals_the_oracles_search(method):
    """The fast engine's search and the reference engine's (the oracle: the authors' procedure op
    for op), same seeds, in float64: the same draws, run seeds and batches, every score within
    1e-9, and the same choice; the Gaussian batches differ per architecture, so a batch or seed
    wired to the wrong architecture changes the scores."""
    kw = dict(n_samples=3, runs=2, batch_size=4, seed=3, method=method, dtype="float64")
    fast = search(engine="fast", **kw)
    oracle = search(engine="reference", **kw)
    assert len(fast.runs) == len(oracle.runs) == 2
    for f, o in zip(fast.runs, oracle.runs):
        assert (f.run, f.seed, f.indices) == (o.run, o.seed, o.indices)
        assert_scores_close(f.scores, o.scores, 1e-9, what=f"run {f.run}")
        assert f.chosen_index == o.chosen_index
    assert len({s for r in fast.runs for s in r.scores}) == sum(len(r.scores) for r in fast.runs)


@pytest.mark.slow
def test_search_reports_accuracies_on_real_data(accuracies_csv, cifar10_npz):
    result = search(n_samples=2, runs=2, batch_size=8, seed=0, data=str(cifar10_npz), accuracies=str(accuracies_csv),
                    engine="reference")
    rows = {int(l.split(",")[0]): l.split(",") for l in open(accuracies_csv).read().splitlines()[1:]}
    for r in result.runs:
        assert r.accuracies["cifar10/test"] == pytest.approx(float(rows[r.chosen_index][4]))
        assert set(r.accuracies) == {f"{d}/{s}" for d in ("cifar10", "cifar100", "ImageNet16-120") for s in ("val", "test")}
    table = result.format_table()
    assert "cifar10/test" in table and str(result.runs[0].chosen_arch) in table
    summary = result.to_dict()["summary"]
    vals = [r.accuracies["cifar10/test"] for r in result.runs]
    assert summary["cifar10/test"]["mean"] == pytest.approx(np.mean(vals))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_samples": 0}, "n_samples"),
        ({"runs": -1}, "runs"),
        ({"batch_size": 1}, "batch_size must be in 2..65536"),
        ({"method": "grad_norm"}, "jacob_cov"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_search_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        search(**kwargs)
