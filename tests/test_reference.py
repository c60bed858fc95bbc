"""The pure-path scores against the authors' procedure, written out independently here."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import nwot_fast
from nwot_fast import nb201, reference
from nwot_fast.nb201 import build_network

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
DEAD_CONV = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|"  # constant output, live ReLU


def seeded_network(arch, seed=0):
    torch.manual_seed(seed)
    return build_network(arch)


def authors_jacob_cov(model, x):
    """The published v1 procedure: x.grad after y.backward(ones), np.corrcoef, np.linalg.eig."""
    model.train()
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    y = model(x)
    y.backward(torch.ones_like(y))
    jacob = x.grad.detach().reshape(x.shape[0], -1).numpy()
    v, _ = np.linalg.eig(np.corrcoef(jacob))
    return float(-np.sum(np.log(v + 1e-5) + 1.0 / (v + 1e-5)).real)


def authors_hook_logdet(model, x):
    """The published v2 procedure: float32 code matmuls per 'ReLU' module, float64 K, slogdet."""
    K = np.zeros((x.shape[0], x.shape[0]))

    def hook(module, inp, out):
        c = (inp[0].view(inp[0].size(0), -1) > 0).float()
        K[:] = K + (c @ c.t()).numpy() + ((1.0 - c) @ (1.0 - c).t()).numpy()

    handles = [m.register_forward_hook(hook) for m in model.modules() if "ReLU" in str(type(m))]
    model.train()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return float(np.linalg.slogdet(K)[1])


@pytest.mark.slow
@pytest.mark.parametrize("arch", [BEST, nb201.arch_at(0), nb201.arch_at(1459)])
def test_jacob_cov_equals_authors_procedure(arch):
    x = torch.randn(8, 3, 16, 16)
    ours = nwot_fast.score(seeded_network(arch, 1), x, "jacob_cov")
    theirs = authors_jacob_cov(seeded_network(arch, 1), x)
    assert math.isfinite(ours)
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_jacobian_is_one_batched_backward():
    """Train-mode BatchNorm couples the samples: per-sample Jacobians are not the batch Jacobian."""
    x = torch.randn(6, 3, 16, 16)
    J = reference.input_jacobian(seeded_network(BEST), x)
    single = reference.input_jacobian(seeded_network(BEST), x[:2])
    assert J.shape == (6, 3 * 16 * 16)
    assert not torch.allclose(J[:2], single, rtol=1e-3, atol=0)


def test_jacob_cov_nan_for_constant_output():
    x = torch.randn(4, 3, 16, 16)
    J = reference.input_jacobian(seeded_network(DEAD_CONV), x)
    assert reference.has_zero_variance_row(J.numpy())
    assert math.isnan(nwot_fast.score(seeded_network(DEAD_CONV), x, "jacob_cov"))


class _IgnoresInput(nn.Module):
    """An output from its own parameters only: autograd finds no path from the input to it."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(10))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 10)


class _NoGraph(nn.Module):
    """No parameters and no graph: an output that does not require grad at all."""

    def forward(self, x):
        return torch.zeros(x.shape[0], 10)


@pytest.mark.parametrize("model", [_IgnoresInput, _NoGraph])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_ignoring_its_input_scores_nan(model, dtype):
    """The derivative of an output that does not depend on the input is exactly zero: every row
    of J has zero variance, so jacob_cov is NaN (as for the constant-output NB201 cells)."""
    x = torch.randn(4, 3, 8, 8)
    J = reference.input_jacobian(model(), x)
    assert J.shape == (4, 3 * 8 * 8) and not J.any()
    assert math.isnan(nwot_fast.score(model(), x, "jacob_cov", dtype=dtype))


def test_jacob_cov_from_jacobian_rules():
    rng = np.random.default_rng(4)
    J = rng.standard_normal((5, 40))
    v = np.linalg.eigvalsh(np.corrcoef(J))
    expected = -np.sum(np.log(v + 1e-5) + 1 / (v + 1e-5))
    assert reference.jacob_cov_from_jacobian(J) == pytest.approx(expected, rel=1e-12)
    J[3] = 2.5  # one zero-variance row makes the correlation undefined
    assert math.isnan(reference.jacob_cov_from_jacobian(J))
    with pytest.raises(ValueError, match="2-D"):
        reference.jacob_cov_from_jacobian(J[None])


@pytest.mark.parametrize("arch", [BEST, DEAD_CONV, nb201.arch_at(7000)])
def test_hook_logdet_equals_authors_procedure(arch):
    x = torch.randn(8, 3, 16, 16)
    ours = nwot_fast.score(seeded_network(arch, 2), x, "hook_logdet")
    theirs = authors_hook_logdet(seeded_network(arch, 2), x)
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize(
    "arch", [ALL_NONE, "|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|avg_pool_3x3~2|", BEST]
)
def test_kernel_diagonal_counts_units(arch):
    k = arch.count("nor_conv")
    x = torch.randn(2, 3, 32, 32)
    K_name = reference.hamming_kernel(reference.relu_codes(seeded_network(arch), x))
    K_exact = reference.hamming_kernel(reference.relu_codes(seeded_network(arch), x, relu_match="exact"))
    assert np.all(np.diag(K_name) == 2 * (143360 * k + 36864) + 4096)
    assert np.all(np.diag(K_exact) == 143360 * k + 36864 + 4096)
    assert K_name.dtype == np.float64 and np.array_equal(K_name, K_name.T)


def test_hook_logdet_minus_inf_only_when_relus_see_zeros():
    x = torch.randn(4, 3, 16, 16)
    assert nb201.relu_sees_only_zeros(ALL_NONE)
    assert nwot_fast.score(seeded_network(ALL_NONE), x, "hook_logdet") == -math.inf
    assert not nb201.relu_sees_only_zeros(DEAD_CONV)
    assert math.isfinite(nwot_fast.score(seeded_network(DEAD_CONV), x, "hook_logdet"))


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))

    def forward(self, x):
        out = self.body(x)
        return out * 0 + 7, out  # the last element is the output


def test_tuple_output_uses_last_element_and_mode_is_restored():
    model = TupleModel()
    x = torch.randn(4, 3, 8, 8)
    model(x)
    model.eval()
    s = nwot_fast.score(model, x, "jacob_cov")
    assert math.isfinite(s)
    assert not model.training
    assert math.isfinite(nwot_fast.score(model, x, "hook_logdet", relu_match="exact"))


@pytest.mark.parametrize(
    "x, error, fragment",
    [
        (torch.zeros(4, 3, 8, 8, dtype=torch.int64), TypeError, "floating-point"),
        (torch.randn(3, 8, 8), ValueError, "4-D"),
        (torch.randn(1, 3, 8, 8), ValueError, "at least 2"),
        (torch.full((2, 3, 8, 8), float("nan")), ValueError, "NaN"),
        ([[1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(x, error, fragment):
    with pytest.raises(error, match=fragment):
        nwot_fast.score(seeded_network(BEST), x)


def test_unknown_method_and_relu_match():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="jacob_cov, hook_logdet"):
        nwot_fast.score(seeded_network(BEST), x, "synflow")
    with pytest.raises(ValueError, match="relu_match"):
        nwot_fast.score(seeded_network(BEST), x, "hook_logdet", relu_match="all")
    with pytest.raises(TypeError, match="nn.Module"):
        nwot_fast.score(lambda t: t, x)


def test_score_runs_without_tf32_and_restores_the_settings(monkeypatch):
    seen = []
    real = reference.jacob_cov

    def spy(model, x):
        seen.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))
        return real(model, x)

    monkeypatch.setattr(reference, "jacob_cov", spy)
    before = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    torch.manual_seed(0)
    reference.score(build_network(nb201.arch_at(6111)), torch.randn(4, 3, 16, 16))
    assert seen == [("ieee", "ieee")]
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
