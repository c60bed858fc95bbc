"""The ``dtype`` option: float64 scoring on the pure and the fast path, and its checks."""

import math

import pytest
import torch

from nwot_fast import _common, nb201, per_arch, reference


@pytest.mark.parametrize("given,name", [
    (None, "float32"), ("float32", "float32"), ("float64", "float64"), (torch.float64, "float64"),
    (torch.float32, "float32"), ("torch.float64", "float64"), ("double", "float64"),
])
def test_dtype_name_accepts_names_and_torch_dtypes(given, name):
    assert _common.dtype_name(given) == name


@pytest.mark.parametrize("bad", ["float16", torch.float16, "int64", 64, "f64"])
def test_dtype_name_rejects_other_dtypes_naming_the_allowed_ones(bad):
    with pytest.raises(ValueError, match="float32, float64"):
        _common.dtype_name(bad)


@pytest.mark.parametrize("method", ["jacob_cov", "hook_logdet"])
@pytest.mark.parametrize("index", [6111, 0])
def test_float64_fast_path_equals_float64_pure_path(method, index):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(12, 3, 32, 32, generator=g)
    torch.manual_seed(5)
    net = nb201.build_network(nb201.arch_at(index))
    pure = reference.score(net, x, method, dtype=torch.float64)
    assert next(net.parameters()).dtype == torch.float32  # the caller's model is not changed
    got = per_arch.score_arch(index, x, method=method, seed=5, dtype="float64")
    assert math.isfinite(pure)
    assert got == pytest.approx(pure, rel=1e-9, abs=0)


def test_fast_path_rejects_an_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        per_arch.score_arch(0, torch.randn(4, 3, 32, 32), dtype=torch.float16)
