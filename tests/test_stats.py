"""nwot_fast.stats: the wrappers' own rules around scipy.stats (known values, non-finite input refused,
undefined cases NaN without warnings)."""

import numpy as np
import pytest

from nwot_fast.stats import finite_pairs, kendall_tau, spearman_rho


def test_known_values():
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, x) == pytest.approx(1.0)
    assert kendall_tau(x, x[::-1]) == pytest.approx(-1.0)
    assert spearman_rho(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    # one swapped pair out of 10: (9 - 1) / 10
    assert kendall_tau(x, [1, 2, 3, 5, 4]) == pytest.approx(0.8)


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
