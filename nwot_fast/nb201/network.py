"""The NAS-Bench-201 TinyNetwork, module for module as in ``xautodl``.

Modules are created in the same order as xautodl's ``get_cell_based_tiny_net`` (stem,
cells with their edges in string order, residual blocks, final BN, classifier), so the
same torch seed gives the same parameters, and the state-dict keys are the same, so
weights load from one into the other.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .arch import Arch
from .constants import C_STEM, EDGES, IN_CHANNELS, N_CELLS, NUM_NODES
from .index import as_arch
from .layers import ParamSpec, ResNetBasicblock, batch_norm_specs, conv_specs, linear_specs
from .registry import OP_SPECS


class Cell(nn.Module):
    """One NB201 cell; node j is the sum of its incoming edges in string order."""

    def __init__(self, arch: Arch, C: int):
        super().__init__()
        self.arch = arch
        # One module per edge, in string order, as xautodl's InferCell.layers.
        self.layers = nn.ModuleList(OP_SPECS[op].build(C) for op in arch.ops)

    def forward(self, x):
        """``x [B, C, H, W]`` float -> the output node ``[B, C, H, W]``."""
        nodes: List[torch.Tensor] = [x]
        for target in range(1, NUM_NODES):
            total = None
            for k, (i, j) in enumerate(EDGES):
                if j == target:
                    y = self.layers[k](nodes[i])
                    total = y if total is None else total + y
            nodes.append(total)
        return nodes[-1]

    def extra_repr(self):
        """The cell's arch string (printed with the module)."""
        return str(self.arch)


class TinyNetwork(nn.Module):
    """Stem, three stages of N cells joined by reduction blocks, BN-ReLU, global pool, linear.

    ``forward`` returns the logits only.
    """

    def __init__(self, arch: Arch, C: int = C_STEM, N: int = N_CELLS, num_classes: int = 1):
        super().__init__()
        self.arch = arch
        self.stem = nn.Sequential(nn.Conv2d(IN_CHANNELS, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells = []
        C_prev = C
        for stage, C_curr in enumerate(_stage_channels(C)):
            if stage > 0:
                cells.append(ResNetBasicblock(C_prev, C_curr))
            cells.extend(Cell(arch, C_curr) for _ in range(N))
            C_prev = C_curr
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def features(self, x):
        """``x [B, 3, H, W]`` float -> the pooled features ``[B, 4 C]``."""
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.lastact(x)
        return self.global_pooling(x).flatten(1)

    def forward(self, x):
        """``x [B, 3, H, W]`` float -> logits ``[B, num_classes]``."""
        return self.classifier(self.features(x))


def _stage_channels(C: int):
    # (C, 2C, 4C): STAGE_CHANNELS for the benchmark's C = C_STEM.
    return (C, 2 * C, 4 * C)


def _check_sizes(num_classes, C, N) -> None:
    for name, value in (("num_classes", num_classes), ("C", C), ("N", N)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def build_network(arch, *, num_classes: int = 1, C: int = C_STEM, N: int = N_CELLS) -> TinyNetwork:
    """Build the NB201 network for ``arch`` (an :class:`Arch`, official string or benchmark index).

    Parameters are drawn from torch's global RNG in xautodl's order: call
    ``torch.manual_seed(s)`` first to get the same weights as xautodl with seed ``s``.
    """
    arch = as_arch(arch)
    _check_sizes(num_classes, C, N)
    return TinyNetwork(arch, C=C, N=N, num_classes=num_classes)


def seeded_network(arch, seed: int) -> TinyNetwork:
    """:func:`build_network` right after ``torch.manual_seed(seed)`` (the weights every score
    of ``arch`` uses), leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(arch)


def parameter_specs(arch, *, num_classes: int = 1, C: int = C_STEM, N: int = N_CELLS) -> List[ParamSpec]:
    """The parameters ``build_network(arch, ...)`` creates, in creation (= RNG draw) order: stem,
    cells (their convolution edges in string order), reduction blocks, final BN, classifier."""
    arch = as_arch(arch)
    _check_sizes(num_classes, C, N)
    specs: List[ParamSpec] = conv_specs("stem.0", IN_CHANNELS, C, 3) + batch_norm_specs("stem.1", C)
    index = 0
    C_prev = C
    for stage, C_curr in enumerate(_stage_channels(C)):
        if stage > 0:
            specs += ResNetBasicblock.parameter_specs(f"cells.{index}", C_prev, C_curr)
            index += 1
        for _ in range(N):
            for k, op in enumerate(arch.ops):
                specs += OP_SPECS[op].parameter_specs(f"cells.{index}.layers.{k}", C_curr)
            index += 1
        C_prev = C_curr
    return specs + batch_norm_specs("lastact.0", C_prev) + linear_specs("classifier", C_prev, num_classes)


def initial_parameters(arch, *, num_classes: int = 1, C: int = C_STEM, N: int = N_CELLS) -> Dict[str, torch.Tensor]:
    """The parameters ``build_network(arch, ...)`` would create, by their names in its state
    dict, drawn from torch's global RNG in the same order with the same initialisers (kaiming
    uniform with a = sqrt(5) for convolutions and the classifier weight, uniform(+-1/sqrt(fan_in))
    for its bias; BatchNorm weights 1 and biases 0, no draw), without building any module:
    about 10x less time. Equal to the built network's parameters bit for bit (tested).
    BatchNorm running statistics are not included.

    Returns:
        name -> float32 CPU tensor of the parameter's shape, in :func:`parameter_specs` order.
    """
    params: Dict[str, torch.Tensor] = {}
    for spec in parameter_specs(arch, num_classes=num_classes, C=C, N=N):
        if spec.init == "ones":
            params[spec.name] = torch.ones(spec.shape)
        elif spec.init == "zeros":
            params[spec.name] = torch.zeros(spec.shape)
        else:  # kaiming (nn.Conv2d / nn.Linear reset_parameters) or the linear bias: uniform_
            params[spec.name] = torch.empty(spec.shape).uniform_(-spec.bound, spec.bound)
    return params
