"""The NAS-Bench-201 TinyNetwork, module for module as in ``xautodl``.

Modules are created in the same order as xautodl's ``get_cell_based_tiny_net`` (stem,
cells with their edges in string order, residual blocks, final BN, classifier), so the
same torch seed gives the same parameters, and the state-dict keys are the same, so
weights load from one into the other.
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Tuple

import torch
from torch import nn

from .arch import CONV1, CONV3, NONE, POOL, SKIP, Arch
from .index import as_arch


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
        return self.op(x)


class Zero(nn.Module):
    """The ``none`` op: multiplies by zero (so NaN and inf propagate as in NB201)."""

    def forward(self, x):
        return x.mul(0.0)


class Identity(nn.Module):
    def forward(self, x):
        return x


class _Pool(nn.Module):
    """NB201's ``avg_pool_3x3`` (xautodl ``POOLING`` with C_in == C_out: no preprocessing)."""

    def __init__(self):
        super().__init__()
        self.op = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.op(x)


def make_op(op: int, C: int) -> nn.Module:
    if op == NONE:
        return Zero()
    if op == SKIP:
        return Identity()
    if op == CONV1:
        return ReLUConvBN(C, C, 1, 1, 0)
    if op == CONV3:
        return ReLUConvBN(C, C, 3, 1, 1)
    if op == POOL:
        return _Pool()
    raise ValueError(f"unknown op id {op!r}")


class Cell(nn.Module):
    """One NB201 cell; node j is the sum of its incoming edges in string order."""

    def __init__(self, arch: Arch, C: int):
        super().__init__()
        self.arch = arch
        # One module per edge, in string order, as xautodl's InferCell.layers.
        self.layers = nn.ModuleList(make_op(op, C) for op in arch.ops)
        self._edges = list(arch.edges())

    def forward(self, x):
        nodes: List[torch.Tensor] = [x]
        for target in (1, 2, 3):
            total = None
            for k, (i, j, _) in enumerate(self._edges):
                if j == target:
                    y = self.layers[k](nodes[i])
                    total = y if total is None else total + y
            nodes.append(total)
        return nodes[-1]

    def extra_repr(self):
        return str(self.arch)


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
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class TinyNetwork(nn.Module):
    """Stem, three stages of N cells joined by reduction blocks, BN-ReLU, global pool, linear.

    ``forward`` returns the logits only.
    """

    def __init__(self, arch: Arch, C: int = 16, N: int = 5, num_classes: int = 1):
        super().__init__()
        self.arch = arch
        self.stem = nn.Sequential(nn.Conv2d(3, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells = []
        C_prev = C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                cells.append(ResNetBasicblock(C_prev, C_curr))
            cells.extend(Cell(arch, C_curr) for _ in range(N))
            C_prev = C_curr
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def features(self, x):
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.lastact(x)
        return self.global_pooling(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


def _check_sizes(num_classes, C, N) -> None:
    for name, value in (("num_classes", num_classes), ("C", C), ("N", N)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def build_network(arch, *, num_classes: int = 1, C: int = 16, N: int = 5) -> TinyNetwork:
    """Build the NB201 network for ``arch`` (an :class:`Arch`, official string or benchmark index).

    Parameters are drawn from torch's global RNG in xautodl's order: call
    ``torch.manual_seed(s)`` first to get the same weights as xautodl with seed ``s``.
    """
    arch = as_arch(arch)
    _check_sizes(num_classes, C, N)
    return TinyNetwork(arch, C=C, N=N, num_classes=num_classes)


class ParamSpec(NamedTuple):
    """One parameter of the network as :func:`build_network` creates it: its state-dict name,
    shape, and initialiser (``kaiming`` (conv and linear weights), ``bias`` (the linear bias),
    ``ones`` / ``zeros`` (BatchNorm)) with its uniform bound (0 for BatchNorm: no draw)."""

    name: str
    shape: Tuple[int, ...]
    init: str
    bound: float

    @property
    def draws(self) -> int:
        """How many values this parameter takes from the generator (one per element, or none)."""
        return math.prod(self.shape) if self.init in ("kaiming", "bias") else 0


def _kaiming_bound(fan_in: int) -> float:
    # nn.init.kaiming_uniform_(w, a=sqrt(5)) as torch computes it, in the same double operations.
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in))


def parameter_layout(arch, *, num_classes: int = 1, C: int = 16, N: int = 5) -> List[ParamSpec]:
    """The parameters ``build_network(arch, ...)`` creates, in creation (= RNG draw) order: stem,
    cells (their convolution edges in string order), reduction blocks, final BN, classifier."""
    arch = as_arch(arch)
    _check_sizes(num_classes, C, N)
    layout: List[ParamSpec] = []

    def conv(name: str, c_in: int, c_out: int, k: int) -> None:
        layout.append(ParamSpec(name + ".weight", (c_out, c_in, k, k), "kaiming", _kaiming_bound(c_in * k * k)))

    def bn(name: str, c: int) -> None:
        layout.append(ParamSpec(name + ".weight", (c,), "ones", 0.0))
        layout.append(ParamSpec(name + ".bias", (c,), "zeros", 0.0))

    def relu_conv_bn(name: str, c_in: int, c_out: int, k: int) -> None:
        conv(name + ".op.1", c_in, c_out, k)
        bn(name + ".op.2", c_out)

    conv("stem.0", 3, C, 3)
    bn("stem.1", C)
    index = 0
    C_prev = C
    for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
        if stage > 0:
            relu_conv_bn(f"cells.{index}.conv_a", C_prev, C_curr, 3)
            relu_conv_bn(f"cells.{index}.conv_b", C_curr, C_curr, 3)
            conv(f"cells.{index}.downsample.1", C_prev, C_curr, 1)
            index += 1
        for _ in range(N):
            for k, op in enumerate(arch.ops):
                if op in (CONV1, CONV3):
                    relu_conv_bn(f"cells.{index}.layers.{k}", C_curr, C_curr, 1 if op == CONV1 else 3)
            index += 1
        C_prev = C_curr
    bn("lastact.0", C_prev)
    layout.append(ParamSpec("classifier.weight", (num_classes, C_prev), "kaiming", _kaiming_bound(C_prev)))
    layout.append(ParamSpec("classifier.bias", (num_classes,), "bias", 1 / math.sqrt(C_prev)))
    return layout


def initial_parameters(arch, *, num_classes: int = 1, C: int = 16, N: int = 5) -> Dict[str, torch.Tensor]:
    """The parameters ``build_network(arch, ...)`` would create, by their names in its state
    dict, drawn from torch's global RNG in the same order with the same initialisers (kaiming
    uniform with a = sqrt(5) for convolutions and the classifier weight, uniform(+-1/sqrt(fan_in))
    for its bias; BatchNorm weights 1 and biases 0, no draw), without building any module:
    about 10x less time. Equal to the built network's parameters bit for bit (tested).
    BatchNorm running statistics are not included."""
    params: Dict[str, torch.Tensor] = {}
    for spec in parameter_layout(arch, num_classes=num_classes, C=C, N=N):
        if spec.init == "ones":
            params[spec.name] = torch.ones(spec.shape)
        elif spec.init == "zeros":
            params[spec.name] = torch.zeros(spec.shape)
        else:  # kaiming (nn.Conv2d / nn.Linear reset_parameters) or the linear bias: uniform_
            params[spec.name] = torch.empty(spec.shape).uniform_(-spec.bound, spec.bound)
    return params
