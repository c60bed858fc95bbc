"""nwot_fast.stats against scipy.stats (dev dependency only)."""

import numpy as np
import pytest

from nwot_fast.stats import finite_pairs, kendall_tau, rankdata, spearman_rho

scipy_stats = pytest.importorskip("scipy.stats")


def _pairs(rng, n, ties):
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    if ties == "x":
        x = np.round(x * 2)
    elif ties == "both":
        x, y = np.round(x * 2), np.round(y)
    elif ties == "heavy":
        x, y = rng.integers(0, 3, n).astype(float), rng.integers(0, 2, n).astype(float)
    return x, y


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore:An input array is constant")
@pytest.mark.parametrize("n", [2, 3, 4, 7, 16, 33, 100, 1000, 4099])
@pytest.mark.parametrize("ties", ["none", "x", "both", "heavy"])
def test_against_scipy(n, ties):
    rng = np.random.default_rng(1000 * n + len(ties))
    x, y = _pairs(rng, n, ties)
    want_tau = scipy_stats.kendalltau(x, y).statistic
    want_rho = scipy_stats.spearmanr(x, y).statistic
    if np.isnan(want_tau):
        assert np.isnan(kendall_tau(x, y))
    else:
        assert kendall_tau(x, y) == pytest.approx(want_tau, abs=1e-12)
    if np.isnan(want_rho):
        assert np.isnan(spearman_rho(x, y))
    else:
        assert spearman_rho(x, y) == pytest.approx(want_rho, abs=1e-12)


def test_known_values():
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, x) == 1.0
    assert kendall_tau(x, x[::-1]) == -1.0
    assert spearman_rho(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    # one swapped pair out of 10: (9 - 1) / 10
    assert kendall_tau(x, [1, 2, 3, 5, 4]) == pytest.approx(0.8)


def test_rankdata_matches_scipy_average():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 20, 500).astype(float)
    np.testing.assert_array_equal(rankdata(a), scipy_stats.rankdata(a))


def test_constant_input_is_nan_and_short_input_is_nan():
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert np.isnan(spearman_rho([1, 2, 3], [4, 4, 4]))
    assert np.isnan(kendall_tau([1.0], [2.0]))
    assert np.isnan(spearman_rho([], []))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(bad):
    with pytest.raises(ValueError, match="finite"):
        kendall_tau([1.0, bad, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        spearman_rho([1.0, 2.0, 3.0], [1.0, bad, 3.0])


def test_shape_errors():
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="1-D"):
        spearman_rho([[1, 2]], [[1, 2]])


def test_finite_pairs():
    x, y, keep = finite_pairs([1.0, np.nan, 3.0, -np.inf], [1.0, 2.0, np.inf, 4.0])
    np.testing.assert_array_equal(keep, [True, False, False, False])
    assert x.tolist() == [1.0] and y.tolist() == [1.0]
