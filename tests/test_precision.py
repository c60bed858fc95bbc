"""The precision contract (nwot_fast.precision, docs/PRECISION.md) on fixed architectures.

float64 is the truth: the reference and the fast engine agree on it to 1e-9 relative, at 1 and at 2
threads. A float32 scorer may differ from it by no more than twice what the authors' float32
procedure (the reference engine in float32, at 1 and 2 threads) does on this machine. Checked on a
fixed batch of 64 real CIFAR-10 images (seeded Gaussian noise when the sample is absent),
shrunk to 16 x 16 by 2 x 2 averaging (NB201 networks take any size; a quarter of the cost, so
that the 16 archs x 2 scores x 5 passes stay within a few minutes on 2 cores).
bench/precision.py measures the same at 32 x 32, batch 128 (docs/PRECISION.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from nwot_fast import precision
from nwot_fast.nb201 import is_constant_output, relu_sees_only_zeros
from nwot_fast.nb201.constants import CONV1, CONV3, POOL, SKIP
from nwot_fast.nb201.index import as_arch

ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",  # all conv
    "|nor_conv_1x1~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_3x3~1|nor_conv_3x3~2|",  # all conv
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",  # all pool
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|nor_conv_1x1~2|",  # pool-heavy
    "|nor_conv_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|skip_connect~1|avg_pool_3x3~2|",  # pool-heavy
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",  # all skip
    "|skip_connect~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|skip_connect~1|nor_conv_1x1~2|",  # skip-heavy
    "|none~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|nor_conv_1x1~1|none~2|",  # NaN and -inf
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|none~0|none~1|none~2|",  # NaN, finite hook_logdet
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|none~1|none~2|",  # dead targets
    "|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|",  # dead source
    # benchmark indices: the CIFAR-10/100/ImageNet16 optima and a few others
    6111, 1459, 9930, 0, 15624,
]
BATCH = 64
SEED = 1
SCORERS = [name for name in precision.scorers() if name != "reference"]  # float32 reference: the envelope


def _batch() -> torch.Tensor:
    path = SHARED_DATA / "cifar10_sample.npz"
    if path.exists():
        from nwot_fast.data import load_images
        from nwot_fast.data.sampler import normalize

        x = normalize(load_images(str(path), dataset="cifar10").images[:BATCH], "cifar10")
        return torch.nn.functional.avg_pool2d(x, 2)
    return torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def batch():
    return _batch()


_measured = {}


def _measure(method: str, x: torch.Tensor):
    """Everything the tests of ``method`` need, computed once: the envelope of the float32
    scorers with the truth at 2 threads, and the float64 fast engine at 1 thread."""
    if method not in _measured:
        with precision.threads(2):
            env = precision.measure(ARCHS, x, method, seed=SEED,
                                    candidates={n: precision.scorers()[n] for n in SCORERS})
        with precision.threads(1):
            f64 = precision.fast_scores(ARCHS, x, method=method, seed=SEED, dtype=torch.float64)
        _measured[method] = env, f64
    return _measured[method]


def test_archs_cover_the_contract_cases():
    archs = [as_arch(a) for a in ARCHS]
    assert len(archs) >= 16 and len(set(archs)) == len(archs)
    assert any(all(op in (CONV1, CONV3) for op in a.ops) for a in archs)
    assert any(sum(op == POOL for op in a.ops) >= 5 for a in archs)
    assert any(sum(op == SKIP for op in a.ops) >= 4 and any(op in (CONV1, CONV3) for op in a.ops) for a in archs)
    assert any(relu_sees_only_zeros(a) for a in archs)  # -inf
    assert any(is_constant_output(a) and not relu_sees_only_zeros(a) for a in archs)  # NaN, finite K


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_float64_fast_path_at_1_thread_equals_the_float64_truth_at_2_threads(method, batch):
    """Other path and other thread count: float64 agrees to 1e-9 (NaN / -inf exactly)."""
    env, f64 = _measure(method, batch)
    special = math.nan if method == "jacob_cov" else -math.inf
    assert any(precision.relative_error(special, t) == 0.0 for t in env.truth)  # the degenerate arch is there
    assert sum(math.isfinite(t) for t in env.truth) >= 13
    errors = [precision.relative_error(s, t) for s, t in zip(f64, env.truth)]
    assert max(errors) <= 1e-9, list(zip(env.archs, errors))


@pytest.mark.slow
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
def test_float32_scorer_keeps_the_contract(method, scorer, batch):
    env, _ = _measure(method, batch)
    assert env.violations(scorer) == [], "\n" + env.table()


# --- the contract's arithmetic, on made-up scores ------------------------------------------


def _envelope(truth, ref1, ref2, cand):
    return precision.Envelope([f"a{i}" for i in range(len(truth))], "jacob_cov", truth, {1: ref1, 2: ref2},
                              {"cand": cand})


def test_relative_error_special_values():
    nan, inf = math.nan, math.inf
    assert precision.relative_error(nan, nan) == 0.0
    assert precision.relative_error(-inf, -inf) == 0.0
    assert precision.relative_error(-100.0, -inf) == inf
    assert precision.relative_error(nan, 3.0) == inf
    assert precision.relative_error(inf, -inf) == inf
    assert precision.relative_error(-99.0, -100.0) == pytest.approx(0.01)
    assert precision.relative_error(1e-3, 0.0) == 1e-3


def test_envelope_takes_the_larger_thread_error_per_arch():
    env = _envelope([100.0, 200.0, 50.0], [100.1, 200.0, 50.0], [99.99, 200.02, 50.0], [100.0, 200.0, 50.0])
    assert env.reference_errors() == pytest.approx([1e-3, 1e-4, 0.0])


def test_contract_holds_within_twice_the_reference_and_fails_beyond():
    truth = [100.0, 200.0, 50.0, math.nan, -math.inf]
    ref1 = [100.01, 200.0, 50.0, math.nan, -math.inf]  # errors 1e-4, 0, 0
    ref2 = [100.0, 200.04, 50.0, math.nan, -math.inf]  # errors 0, 2e-4, 0
    ok = _envelope(truth, ref1, ref2, [100.019, 199.93, 50.0, math.nan, -math.inf])
    assert ok.violations("cand") == []
    assert ok.summary("cand")["max"] == pytest.approx(3.5e-4)
    too_far = _envelope(truth, ref1, ref2, [100.05, 200.0, 50.0, math.nan, -math.inf])
    assert any("max relative error" in v for v in too_far.violations("cand"))
    median = _envelope(truth, ref1, ref2, [100.025, 200.06, 50.0, math.nan, -math.inf])  # 2.5e-4 > 2 x 1e-4
    assert [v for v in median.violations("cand") if "relative error" in v] == [v for v in median.violations("cand")
                                                                             if "median" in v] != []
    wrong_special = _envelope(truth, ref1, ref2, [100.0, 200.0, 50.0, -5.0, -math.inf])
    assert any("a3" in v and "nan" in v for v in wrong_special.violations("cand"))
    finite_for_singular = _envelope(truth, ref1, ref2, [100.0, 200.0, 50.0, math.nan, -3000.0])
    assert any("a4" in v for v in finite_for_singular.violations("cand"))


def test_errors_below_the_floor_are_equal():
    truth = [100.0, 200.0]
    env = _envelope(truth, truth, truth, [100.0 * (1 + 1e-10), 200.0])
    assert env.violations("cand") == []
    env = _envelope(truth, truth, truth, [100.0 * (1 + 1e-8), 200.0])
    assert env.violations("cand") != []


def test_threads_restores_the_count_and_checks_its_argument():
    before = torch.get_num_threads()
    with precision.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with precision.threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            with precision.threads(bad):
                pass


def test_measure_checks_its_arguments(batch):
    with pytest.raises(ValueError, match="method"):
        precision.measure([0], batch, "naswot")
    with pytest.raises(ValueError, match="empty"):
        precision.measure([], batch, "jacob_cov")
    with pytest.raises(TypeError, match="candidates"):
        precision.measure([0], batch, "jacob_cov", candidates=[precision.fast_scores])
    with pytest.raises(ValueError, match="truth has 2 scores for 1 archs"):
        precision.measure([0], batch, "jacob_cov", truth=[1.0, 2.0])


def test_measure_with_a_small_batch_and_a_custom_candidate():
    """A made-up candidate (the fast path with a relative bias) breaks the contract; the
    table names every arch and column. The bias (1e-2) is ten times the largest float32 error
    seen for these archs on any path (arch 15624: up to 1.1e-3), so the test decides the same
    on every machine; whether the unbiased fast path keeps the contract is left to the
    16-arch tests above (over 2 archs a max or median is a coin toss of the rounding)."""
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    def biased(archs, x, **kw):
        return [s * (1 + 1e-2) for s in precision.fast_scores(archs, x, **kw)]

    env = precision.measure([1459, 15624], x, "jacob_cov", candidates={"fast": precision.fast_scores,
                                                                       "biased": biased})
    assert env.violations("biased") != []
    assert np.allclose(env.errors("biased"), 1e-2, rtol=0.2)  # the bias plus float32 rounding
    assert max(env.errors("fast")) < min(env.errors("biased")) / 5
    table = env.table()
    assert "ref@1" in table and "ref@2" in table and "biased" in table and "\n1459 | " in table
    with pytest.raises(ValueError, match="no candidate"):
        env.errors("other")
    # A truth the caller gives is the one measured against.
    given = precision.measure([1459, 15624], x, "jacob_cov", truth=[2 * t for t in env.truth], thread_counts=(1,))
    assert given.truth == [2 * t for t in env.truth]
    assert min(given.reference_errors()) > 0.4  # the reference is half of that made-up truth


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "cifar10_sample.npz").exists(), reason="needs ../shared/data/cifar10_sample.npz")
def test_per_arch_jacob_cov_keeps_the_contract_on_full_size_real_images():
    """The shipped tables' protocol (32 x 32, batch 128, the first 128 CIFAR-10 training images):
    channels-last jacob_cov broke the contract there on architecture 304 (1.69e-5 relative
    against the authors' 2.4e-6) while its BatchNorm rounded mean and invstd to float32, which
    the 16 x 16 test above did not see; with that fixed, on 10152 and 10983 (1.6e-5 against
    3.2e-6 / 6.2e-6: the convolutions' accumulation order), so jacob_cov runs NCHW there. The
    truth is the fast engine's float64 (what `tables verify` uses; equal to the reference
    engine's to 1e-9 above), a third of the reference engine's time at this size."""
    from nwot_fast.data import load_images
    from nwot_fast.data.sampler import normalize

    x = normalize(load_images(str(SHARED_DATA / "cifar10_sample.npz"), dataset="cifar10").images[:128], "cifar10")
    archs = [304, 6111, 10152, 10983]
    truth = precision.fast_scores(archs, x, method="jacob_cov", seed=0, dtype=torch.float64)
    env = precision.measure(archs, x, "jacob_cov", seed=0, truth=truth,
                            candidates={"per_arch": precision.scorers()["per_arch"]})
    assert env.violations("per_arch") == [], "\n" + env.table()
