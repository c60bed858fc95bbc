"""The one registry of NB201 ops: what each op is, keyed by the exact NB201 op string.

Like xautodl's ``OPS`` table, every consumer reads it instead of testing op ids:

* the network builder (:func:`nwot_fast.nb201.build_network`): :attr:`OpSpec.build`;
* the parameter order (:func:`nwot_fast.nb201.parameter_specs`): :attr:`OpSpec.parameter_specs`;
* plan compilation (:mod:`nwot_fast.plans`): :attr:`OpSpec.kind` says which step computes an
  edge (``CONV``: a ReLU-Conv-BN step of :attr:`OpSpec.kernel`; ``POOL``: a pooling step;
  ``IDENTITY``: no step, the source node is a term of the sum; ``ZERO``: nothing at all);
* the multi-arch mode (:mod:`nwot_fast.multi_arch`): :attr:`OpSpec.group`, the op
  group an edge joins when the (architecture, edge) pairs of one source node run together;
* structure analysis (:mod:`nwot_fast.nb201.structure`): :attr:`OpSpec.passes_signal`,
  :attr:`OpSpec.hooked_relu`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple, Union

from torch import nn

from .constants import CONV1, CONV3, NONE, OPS, POOL, SKIP
from .layers import AvgPool3x3, Identity, ParamSpec, ReLUConvBN, Zero


class OpKind(enum.Enum):
    """What an op computes from its source node ``x`` at initialisation."""

    ZERO = "zero"  #: ``x * 0``: contributes nothing and carries no signal
    IDENTITY = "identity"  #: ``x`` itself
    CONV = "conv"  #: ReLU -> convolution -> BatchNorm (weights; a hooked ReLU)
    POOL = "pool"  #: 3x3 average pooling (no weights)


def _no_parameters(name: str, C: int) -> List[ParamSpec]:
    return []


@dataclass(frozen=True)
class OpSpec:
    """One NB201 op.

    ``id``: its op id (index into :data:`~nwot_fast.nb201.constants.OPS`); ``name``: the
    benchmark's string; ``kind``: see :class:`OpKind`; ``kernel``: the convolution's kernel
    size (0 for the ops without one). ``build(C)`` creates its module for ``C`` channels;
    ``parameter_specs(name, C)`` lists the parameters that module creates (named under
    ``name``), in creation order.
    """

    id: int
    name: str
    kind: OpKind
    kernel: int
    build: Callable[[int], nn.Module] = field(repr=False, compare=False)
    parameter_specs: Callable[[str, int], List[ParamSpec]] = field(repr=False, compare=False)

    @property
    def passes_signal(self) -> bool:
        """The op's output depends on its input (every op but ``none``); every op maps an
        all-zero input to an all-zero output at initialisation."""
        return self.kind is not OpKind.ZERO

    @property
    def has_weights(self) -> bool:
        """The op creates parameters (the convolutions)."""
        return self.kind is OpKind.CONV

    @property
    def hooked_relu(self) -> bool:
        """The op starts with a ReLU whose input ``hook_logdet`` records: the source node (the
        ``ReLUConvBN`` wrapper counts too under ``relu_match="name"``)."""
        return self.kind is OpKind.CONV

    @property
    def computed(self) -> bool:
        """A plan step computes the op's result (convolution or pooling); ``skip_connect``
        reuses its source node and ``none`` contributes nothing."""
        return self.kind in (OpKind.CONV, OpKind.POOL)

    @property
    def group(self) -> str:
        """The many-architecture op group (``"conv3"``, ``"conv1"``, ``"pool"``, ``"skip"``;
        ``""`` for ``none``): the edges of one group leaving one node run as one call."""
        return {OpKind.CONV: f"conv{self.kernel}", OpKind.POOL: "pool", OpKind.IDENTITY: "skip"}.get(self.kind, "")


def _conv(op_id: int, name: str, k: int) -> OpSpec:
    return OpSpec(op_id, name, OpKind.CONV, k, lambda C: ReLUConvBN(C, C, k, 1, k // 2),
                  lambda prefix, C: ReLUConvBN.parameter_specs(prefix, C, C, k))


#: The NB201 ops by their benchmark strings, in op-id order.
REGISTRY: Dict[str, OpSpec] = {
    "none": OpSpec(NONE, "none", OpKind.ZERO, 0, lambda C: Zero(), _no_parameters),
    "skip_connect": OpSpec(SKIP, "skip_connect", OpKind.IDENTITY, 0, lambda C: Identity(), _no_parameters),
    "nor_conv_1x1": _conv(CONV1, "nor_conv_1x1", 1),
    "nor_conv_3x3": _conv(CONV3, "nor_conv_3x3", 3),
    "avg_pool_3x3": OpSpec(POOL, "avg_pool_3x3", OpKind.POOL, 0, lambda C: AvgPool3x3(), _no_parameters),
}
#: The same specs indexed by op id.
OP_SPECS: Tuple[OpSpec, ...] = tuple(REGISTRY[name] for name in OPS)


def op_spec(op: Union[int, str]) -> OpSpec:
    """The :class:`OpSpec` of an op id (0..4) or an op name (``"nor_conv_3x3"``)."""
    if isinstance(op, str):
        if op not in REGISTRY:
            raise ValueError(f"unknown op {op!r}; valid ops are: {', '.join(OPS)}")
        return REGISTRY[op]
    if isinstance(op, bool) or not isinstance(op, int) or not 0 <= op < len(OP_SPECS):
        raise ValueError(f"op id {op!r} is not valid; allowed are 0..{len(OP_SPECS) - 1} for {', '.join(OPS)}")
    return OP_SPECS[op]
