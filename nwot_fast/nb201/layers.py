"""The modules of the NB201 TinyNetwork, as in ``xautodl``, each with the parameters it creates.

Every module that creates parameters says which, in creation (= RNG draw) order, as
:class:`ParamSpec` records (``parameter_specs``): :func:`nwot_fast.nb201.parameter_specs`
assembles the network's from them, so the builder and the parameter order cannot drift apart.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Tuple

from torch import nn


class ParamSpec(NamedTuple):
    """One parameter of the network as :func:`nwot_fast.nb201.build_network` creates it: its
    state-dict name, shape, and initialiser (``kaiming`` (conv and linear weights), ``bias``
    (the linear bias), ``ones`` / ``zeros`` (BatchNorm)) with its uniform bound (0 for
    BatchNorm: no draw)."""

    name: str
    shape: Tuple[int, ...]
    init: str
    bound: float

    @property
    def draws(self) -> int:
        """How many values this parameter takes from the generator (one per element, or none)."""
        return math.prod(self.shape) if self.init in ("kaiming", "bias") else 0


def kaiming_bound(fan_in: int) -> float:
    """The uniform bound of ``nn.init.kaiming_uniform_(w, a=sqrt(5))`` for ``fan_in``, in the
    same double operations as torch (so the drawn values are bitwise torch's)."""
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in))


def conv_specs(name: str, c_in: int, c_out: int, k: int) -> List[ParamSpec]:
    """``nn.Conv2d(c_in, c_out, k, bias=False)`` named ``name``: its weight."""
    return [ParamSpec(name + ".weight", (c_out, c_in, k, k), "kaiming", kaiming_bound(c_in * k * k))]


def batch_norm_specs(name: str, c: int) -> List[ParamSpec]:
    """``nn.BatchNorm2d(c)`` named ``name``: weight (ones) and bias (zeros), not drawn."""
    return [ParamSpec(name + ".weight", (c,), "ones", 0.0), ParamSpec(name + ".bias", (c,), "zeros", 0.0)]


def linear_specs(name: str, c_in: int, c_out: int) -> List[ParamSpec]:
    """``nn.Linear(c_in, c_out)`` named ``name``: kaiming weight, uniform(+-1/sqrt(c_in)) bias."""
    return [ParamSpec(name + ".weight", (c_out, c_in), "kaiming", kaiming_bound(c_in)),
            ParamSpec(name + ".bias", (c_out,), "bias", 1 / math.sqrt(c_in))]


class ReLUConvBN(nn.Module):
    """ReLU -> Conv (no bias) -> BatchNorm (affine, running stats).

    The class name contains ``ReLU`` on purpose: the authors' ``hook_logdet`` hooks every
    module whose class name contains ``ReLU``, so this wrapper's input is counted as well as
    that of its inner ``nn.ReLU``.
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=True, track_running_stats=True),
        )

    def forward(self, x):
        """``x [B, C_in, H, W]`` float -> ``[B, C_out, H', W']``."""
        return self.op(x)

    @staticmethod
    def parameter_specs(name: str, c_in: int, c_out: int, k: int) -> List[ParamSpec]:
        """The parameters of ``ReLUConvBN(c_in, c_out, k, ...)`` named ``name``, in creation order."""
        return conv_specs(name + ".op.1", c_in, c_out, k) + batch_norm_specs(name + ".op.2", c_out)


class Zero(nn.Module):
    """The ``none`` op: multiplies by zero (so NaN and inf propagate as in NB201)."""

    def forward(self, x):
        """``x [B, C, H, W]`` -> ``x * 0`` (same shape and dtype)."""
        return x.mul(0.0)


class Identity(nn.Module):
    """The ``skip_connect`` op between nodes of the same size: the input itself."""

    def forward(self, x):
        """``x`` unchanged."""
        return x


class AvgPool3x3(nn.Module):
    """NB201's ``avg_pool_3x3`` (xautodl ``POOLING`` with C_in == C_out: no preprocessing)."""

    def __init__(self):
        super().__init__()
        self.op = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        """``x [B, C, H, W]`` float -> the 3x3 mean over the in-plane neighbours, same shape."""
        return self.op(x)


class ResNetBasicblock(nn.Module):
    """The reduction block between stages: ReLU-Conv3x3(stride 2)-BN, ReLU-Conv3x3-BN, plus a
    shortcut of AvgPool2d(2) and a 1x1 convolution without bias."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(C_in, C_out, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x):
        """``x [B, C_in, H, W]`` float -> ``[B, C_out, ceil(H/2), ceil(W/2)]``."""
        return self.downsample(x) + self.conv_b(self.conv_a(x))

    @staticmethod
    def parameter_specs(name: str, c_in: int, c_out: int) -> List[ParamSpec]:
        """The parameters of ``ResNetBasicblock(c_in, c_out)`` named ``name``, in creation order."""
        return (ReLUConvBN.parameter_specs(name + ".conv_a", c_in, c_out, 3)
                + ReLUConvBN.parameter_specs(name + ".conv_b", c_out, c_out, 3)
                + conv_specs(name + ".downsample.1", c_in, c_out, 1))
