"""Execution plans: what the fast engine computes for one architecture and one score method.

The reference (:mod:`nwot_fast.reference`) runs the whole TinyNetwork module by module,
including every ``none`` edge (a multiplication by zero), every op whose result never reaches
the output, and the parameter gradients of the backward pass. None of that changes a score:

* an op whose input is an all-zero tensor (a node no ``none``-free path reaches from the
  cell input) yields exact zeros at initialisation (ReLU-Conv-BN: the BN of a zero tensor in
  train mode is ``0 * invstd * 1 + 0``; pooling and skip keep zeros), and ``v + 0 == v``;
* an op whose result only feeds ``none`` edges receives an exactly-zero gradient;
* the score only needs ``d(sum y)/dx``, not the parameter gradients.

So a plan (:func:`compile_plan`) keeps only what a score depends on. It is a sequence of
typed cell steps with integer fields (node and edge ids in string order), run in every cell
by :mod:`nwot_fast.per_arch` and read by :mod:`nwot_fast.multi_arch`:

``jacob_cov``
    only the edges on a path input -> output (:func:`nwot_fast.nb201.live_edges`);
    ``relu(node)`` once for all convolutions reading the node; convolutions of the same
    kernel size that read the same node merged into one step (``merge``); sums in string
    order without ``0 + tensor``; constant-output cells answered ``NaN`` without running.

``hook_logdet``
    in the reference every ReLU is hooked, including those of dead edges, so the plan keeps
    every op that feeds the output *or* a hooked ReLU input; the ReLU input of a convolution
    edge reading node ``i`` is node ``i`` itself, so its codes are packed once per node and
    counted with a multiplicity (two per convolution edge under ``relu_match="name"``: the
    ``ReLUConvBN`` wrapper and its inner ``nn.ReLU``; one under ``"exact"``). Nodes that carry
    exact zeros (no path from the input, or any node after a constant cell output) are not
    computed: all their codes are 0, so they only add their unit count to every entry of K.
    Cells where every ReLU sees zeros are ``-inf`` at once.

What each op is (which step computes it) comes from :mod:`nwot_fast.nb201.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ._common import METHODS, RELU_MATCHES
from .nb201 import Arch, as_arch, is_constant_output, live_edges, reachable_from_input, relu_sees_only_zeros
from .nb201.constants import C_STEM, EDGES, IN_CHANNELS, N_CELLS, NUM_CELLS, NUM_NODES, OUTPUT_NODE, STAGE_CHANNELS
from .nb201.registry import OP_SPECS, OpKind, OpSpec

__all__ = ["Codes", "Relu", "ConvBN", "Pool", "Term", "Sum", "CellStep", "Plan", "check_method", "compile_plan",
           "plan_flops"]


# ---------------------------------------------------------------------------------------------
# Cell steps: node ids 0..3 (0 the cell input), edge ids 0..5 in string order


@dataclass(frozen=True)
class Codes:
    """hook_logdet: pack the ReLU codes of ``node`` (its values ``> 0``), counted
    ``multiplicity`` times in K."""

    node: int
    multiplicity: int

    def __str__(self):
        return f"codes(n{self.node}) x{self.multiplicity}"


@dataclass(frozen=True)
class Relu:
    """``relu(node)``, once for every convolution reading ``node``."""

    node: int

    def __str__(self):
        return f"relu(n{self.node})"


@dataclass(frozen=True)
class ConvBN:
    """The convolutions (kernel ``kernel``) of ``edges``, all reading ``relu(node)``, as one
    convolution (weights concatenated along the output channels) and one train-mode
    BatchNorm per channel; yields the result of each edge."""

    node: int
    kernel: int
    edges: Tuple[int, ...]

    def __str__(self):
        return f"conv{self.kernel}_bn(relu(n{self.node})) -> {', '.join(f'e{k}' for k in self.edges)}"


@dataclass(frozen=True)
class Pool:
    """NB201's 3x3 average pooling of ``node``: the result of ``edge``."""

    node: int
    edge: int

    def __str__(self):
        return f"pool(n{self.node}) -> e{self.edge}"


@dataclass(frozen=True)
class Term:
    """One term of a node sum: the result of ``edge`` or, for an identity edge, its
    ``source`` node itself."""

    edge: int
    source: int
    identity: bool

    def __str__(self):
        return f"n{self.source}" if self.identity else f"e{self.edge}"


@dataclass(frozen=True)
class Sum:
    """``node`` = the sum of ``terms`` (its computed incoming edges, in string order)."""

    node: int
    terms: Tuple[Term, ...]

    def __str__(self):
        return f"n{self.node} = {' + '.join(str(t) for t in self.terms)}"


CellStep = Union[Codes, Relu, ConvBN, Pool, Sum]


@dataclass(frozen=True)
class Plan:
    """What to run for one architecture and one score method.

    ``cell_steps`` are run in every cell (only the first one when ``constant`` and
    ``hook_logdet``: everything after a constant cell output is zero). ``constant``: the cell
    output does not depend on the input. ``result``: the score when structure alone decides
    it (NaN / -inf), else None. ``zero_conv_edges``: per cell, convolution edges whose ReLU
    input is an exact-zero node (hook_logdet counts their units without computing anything).
    ``code_multiplier``: how often the ReLU input of a convolution edge counts (2 under
    ``relu_match="name"``, 1 under ``"exact"``). ``channels_last``: the memory format the
    per-arch runner uses (None: the device's default).
    """

    arch: Arch
    method: str
    relu_match: str
    merge: bool
    channels_last: Optional[bool]
    constant: bool
    result: Optional[float]
    cell_steps: Tuple[CellStep, ...]
    zero_conv_edges: int = 0
    code_multiplier: int = 2

    @property
    def runs_network(self) -> bool:
        """Whether a network pass is needed (False: :attr:`result` is the score)."""
        return self.result is None

    @property
    def cells_run(self) -> int:
        """Cells one pass runs: all of them, or the first only for a constant hook_logdet plan."""
        if not self.runs_network:
            return 0
        return 1 if self.constant else NUM_CELLS

    @property
    def convs_per_cell(self) -> int:
        """Convolution calls per cell after merging."""
        return sum(1 for s in self.cell_steps if isinstance(s, ConvBN))

    @property
    def num_convolutions(self) -> int:
        """Convolution calls of one pass after merging (stem, cells, reductions)."""
        if not self.runs_network:
            return 0
        if self.constant:  # hook_logdet of a constant cell: stem + the first cell only
            return 1 + self.convs_per_cell
        return 1 + NUM_CELLS * self.convs_per_cell + 2 * 3

    def edge_ops(self) -> Tuple[Optional[OpSpec], ...]:
        """Per edge (string order): its op's :class:`~nwot_fast.nb201.registry.OpSpec` when the
        plan uses the edge (computes it, or sums its source node for an identity edge), else
        None."""
        used = [False] * len(EDGES)
        for s in self.cell_steps:
            if isinstance(s, ConvBN):
                for k in s.edges:
                    used[k] = True
            elif isinstance(s, Pool):
                used[s.edge] = True
            elif isinstance(s, Sum):
                for t in s.terms:
                    used[t.edge] = True
        return tuple(OP_SPECS[op] if u else None for op, u in zip(self.arch.ops, used))

    def code_multiplicities(self) -> Tuple[int, ...]:
        """Per node 0..2 of a cell: how often its ReLU codes count (0: not packed)."""
        mult = [0] * (NUM_NODES - 1)
        for s in self.cell_steps:
            if isinstance(s, Codes):
                mult[s.node] = s.multiplicity
        return tuple(mult)

    def describe(self) -> str:
        """The plan in words: one line per step."""
        lines = [f"plan for {self.arch} ({self.method}, relu_match={self.relu_match}):"]
        if not self.runs_network:
            lines.append(f"  answered from structure: {self.result}")
            return "\n".join(lines)
        lines.append("  stem: conv3_bn(x) -> n0")
        where = "the first cell only (the output after it is constant)" if self.constant else f"each of the {NUM_CELLS} cells"
        lines.append(f"  in {where}:")
        lines.extend(f"    {s}" for s in self.cell_steps)
        if not self.constant:
            lines.append("  between the stages: 2 reduction blocks (conv3_bn stride 2, conv3_bn, pool + conv1)")
            lines.append("  head: bn, relu, global pool, linear")
        lines.append(f"  convolutions per pass after merging: {self.num_convolutions}")
        return "\n".join(lines)


def check_method(method, relu_match) -> None:
    """ValueError unless ``method`` is a score method and ``relu_match`` a ReLU-matching rule."""
    if method not in METHODS:
        raise ValueError(f"unknown score method {method!r}; allowed: {', '.join(METHODS)}")
    if relu_match not in RELU_MATCHES:
        raise ValueError(f"relu_match must be one of {RELU_MATCHES}, got {relu_match!r}")


# ---------------------------------------------------------------------------------------------
# Compilation


def _cell_steps(arch: Arch, compute: Sequence[bool], codes: Optional[Dict[int, int]], merge: bool) -> List[CellStep]:
    """Steps of one cell: node 0 is the input; node j (1..3) the sum of its computed edges in
    string order. ``compute[k]``: edge k is computed. ``codes``: node -> multiplicity of its
    ReLU codes (hook_logdet), emitted as soon as the node exists."""
    specs = [OP_SPECS[op] for op in arch.ops]
    steps: List[CellStep] = []

    def emit_node_work(i):
        if codes and codes.get(i):
            steps.append(Codes(i, codes[i]))
        conv_edges = [k for k, (src, _) in enumerate(EDGES) if src == i and compute[k] and specs[k].kind is OpKind.CONV]
        if conv_edges:
            steps.append(Relu(i))
            groups: Dict[int, List[int]] = {}
            for k in conv_edges:
                groups.setdefault(specs[k].kernel, []).append(k)
            for kernel in (3, 1):
                members = groups.get(kernel, [])
                runs = [members] if merge else [[k] for k in members]
                for edges in runs:
                    if edges:
                        steps.append(ConvBN(i, kernel, tuple(edges)))
        for k, (src, _) in enumerate(EDGES):
            if src == i and compute[k] and specs[k].kind is OpKind.POOL:
                steps.append(Pool(i, k))

    emit_node_work(0)
    for j in range(1, NUM_NODES):
        terms = tuple(Term(k, src, specs[k].kind is OpKind.IDENTITY)
                      for k, (src, dst) in enumerate(EDGES) if dst == j and compute[k])
        if not terms:
            continue
        steps.append(Sum(j, terms))
        if j < OUTPUT_NODE:
            emit_node_work(j)
    return steps


def _hook_cell(arch: Arch, per_edge: int):
    """For hook_logdet: which edges to compute, node code multiplicities, zero-input conv edges."""
    specs = [OP_SPECS[op] for op in arch.ops]
    fwd = reachable_from_input(arch)
    convs_reading = [0] * NUM_NODES
    for (i, _), spec in zip(EDGES, specs):
        if spec.hooked_relu:
            convs_reading[i] += 1
    needed = [False] * NUM_NODES
    needed[OUTPUT_NODE] = fwd[OUTPUT_NODE]
    needed[0] = True
    for i in range(NUM_NODES - 2, 0, -1):
        if not fwd[i]:
            continue
        needed[i] = convs_reading[i] > 0 or any(
            src == i and spec.passes_signal and needed[dst] for (src, dst), spec in zip(EDGES, specs)
        )
    compute = [spec.passes_signal and fwd[i] and needed[j] for (i, j), spec in zip(EDGES, specs)]
    codes = {i: per_edge * convs_reading[i] for i in range(NUM_NODES - 1) if fwd[i] and convs_reading[i]}
    zero_conv = sum(convs_reading[i] for i in range(NUM_NODES - 1) if not fwd[i])
    return compute, codes, zero_conv


def compile_plan(arch, method: str = "jacob_cov", *, relu_match: str = "name", merge: bool = True,
                 channels_last: Optional[bool] = None) -> Plan:
    """Compile the execution plan of ``arch`` (an Arch, arch string or benchmark index).

    ``merge``: merge convolutions of the same kernel size that read the same node (bitwise the
    same result: each output channel is computed independently). ``channels_last``: the
    per-arch runner's memory format (``None``: channels-last on the CPU, where it measured
    faster with the compiled channels-last BatchNorm and pooling, bench/RESULTS.md; NCHW
    elsewhere).
    """
    arch = as_arch(arch)
    check_method(method, relu_match)
    constant = is_constant_output(arch)
    per_edge = 2 if relu_match == "name" else 1
    result: Optional[float] = None
    zero_conv = 0
    cell: List[CellStep] = []
    if method == "jacob_cov":
        if constant:
            # d(output)/d(input) is exactly zero: every row of J has zero variance.
            result = float("nan")
        else:
            cell = _cell_steps(arch, live_edges(arch), None, merge)
    else:
        compute, codes, zero_conv = _hook_cell(arch, per_edge)
        if relu_sees_only_zeros(arch):
            result = float("-inf")  # K is a multiple of the all-ones matrix
        else:
            cell = _cell_steps(arch, compute, codes, merge)
    return Plan(arch=arch, method=method, relu_match=relu_match, merge=merge, channels_last=channels_last,
                constant=constant, result=result, cell_steps=tuple(cell), zero_conv_edges=zero_conv,
                code_multiplier=per_edge)


def plan_flops(plan: Plan, batch_size: int = 128, height: int = 32, width: int = 32) -> float:
    """Multiply-add FLOPs (2 per MAC) of the plan's convolutions and classifier for one forward
    pass; the input-only backward of a convolution costs the same again."""
    if not plan.runs_network:
        return 0.0
    total = 2 * IN_CHANNELS * C_STEM * 9 * height * width  # stem
    cell_macs_per_pixel_c2 = sum(len(s.edges) * s.kernel * s.kernel for s in plan.cell_steps if isinstance(s, ConvBN))
    h, w = height, width
    stages = 1 if plan.constant else 3
    for stage in range(stages):
        C = STAGE_CHANNELS[stage]
        if stage:
            Cp = STAGE_CHANNELS[stage - 1]
            h2, w2 = (h + 1) // 2, (w + 1) // 2
            total += 2 * (Cp * C * 9 + C * C * 9 + Cp * C) * h2 * w2
            h, w = h2, w2
        cells = 1 if plan.constant else N_CELLS
        total += 2 * cells * cell_macs_per_pixel_c2 * C * C * h * w
    if not plan.constant:
        total += 2 * STAGE_CHANNELS[-1]
    return float(total) * batch_size
