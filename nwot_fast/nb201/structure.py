"""Structure analysis of NB201 cells: live edges, constant output, isomorphism classes."""

from __future__ import annotations

import functools
from typing import Dict, Tuple

from .constants import NUM_NODES, OUTPUT_NODE
from .index import as_arch
from .registry import OP_SPECS, OpKind


def reachable_from_input(arch) -> Tuple[bool, ...]:
    """Per node: is there a path of signal-passing edges (every op but ``none``) from the cell
    input to it? A node without one carries exact zeros at initialisation."""
    arch = as_arch(arch)
    reach = [True] + [False] * (NUM_NODES - 1)
    for i, j, op in arch.edges():  # edges are topologically ordered
        if OP_SPECS[op].passes_signal and reach[i]:
            reach[j] = True
    return tuple(reach)


def reaches_output(arch) -> Tuple[bool, ...]:
    """Per node: is there a path of signal-passing edges from it to the cell output?"""
    arch = as_arch(arch)
    reach = [False] * (NUM_NODES - 1) + [True]
    for i, j, op in reversed(list(arch.edges())):
        if OP_SPECS[op].passes_signal and reach[j]:
            reach[i] = True
    return tuple(reach)


def live_edges(arch) -> Tuple[bool, ...]:
    """For each edge in string order: does it lie on a path input -> output through non-``none`` edges?"""
    arch = as_arch(arch)
    fwd, bwd = reachable_from_input(arch), reaches_output(arch)
    return tuple(OP_SPECS[op].passes_signal and fwd[i] and bwd[j] for i, j, op in arch.edges())


def is_constant_output(arch) -> bool:
    """True when no path of non-``none`` edges joins input and output: the cell outputs zeros,
    so the whole network's output does not depend on its input (341 of the 15,625 cells)."""
    return not reachable_from_input(arch)[OUTPUT_NODE]


def relu_sees_only_zeros(arch) -> bool:
    """True when every ReLU of the network sees an all-zero input (201 cells).

    Then every hooked ReLU code is zero for all samples, the ``hook_logdet`` kernel is a
    multiple of the all-ones matrix and the score is ``-inf``. That happens when the cell
    output is constant and no convolution edge reads a node that carries the input.
    """
    arch = as_arch(arch)
    if not is_constant_output(arch):
        return False
    fwd = reachable_from_input(arch)
    return not any(OP_SPECS[op].hooked_relu and fwd[i] for i, _, op in arch.edges())


def canonical_str(arch) -> str:
    """NAS-Bench-201's isomorphism-unique string (6,466 classes over the whole space).

    This is the benchmark's own convention (the ``UniqueString`` of NATS-Bench): each node is
    the sorted ``+``-join of its incoming terms; ``skip_connect`` passes its source's string
    through; any other op gives ``(source)@op``; a ``none`` edge, or an edge leaving a node
    whose string is exactly ``#``, gives ``#``. Only cells that this rule maps to the same
    string are treated as one class. (It keeps some zero terms and does not flatten nested
    sums, so it is finer than true functional equivalence; see :func:`functional_str`.)
    """
    arch = as_arch(arch)
    nodes = ["0"]
    incoming = [[] for _ in range(NUM_NODES)]
    for i, j, op in arch.edges():
        src, spec = nodes[i], OP_SPECS[op]
        if not spec.passes_signal or src == "#":
            term = "#"
        elif spec.kind is OpKind.IDENTITY:
            term = src
        else:
            term = f"({src})@{spec.name}"
        incoming[j].append(term)
        if len(incoming[j]) == j:  # all of node j's inputs are in: it is complete
            nodes.append("+".join(sorted(incoming[j])))
    return nodes[OUTPUT_NODE]


def functional_str(arch) -> str:
    """A strictly functional form (4,930 classes): the output as a flattened, sorted sum of op
    chains applied to the input ``x``; zero terms vanish, and an op applied to zero is zero
    (ReLU-Conv-BN and average pooling map zeros to zeros at initialisation). Constant-output
    cells give ``"0"``."""
    arch = as_arch(arch)
    terms = [["x"]] + [[] for _ in range(NUM_NODES - 1)]
    for i, j, op in arch.edges():
        spec = OP_SPECS[op]
        if not spec.passes_signal or not terms[i]:
            continue
        if spec.kind is OpKind.IDENTITY:
            terms[j].extend(terms[i])
        else:
            terms[j].append(f"{spec.name}({'+'.join(sorted(terms[i]))})")
    return "+".join(sorted(terms[OUTPUT_NODE])) or "0"


@functools.lru_cache(maxsize=1)
def _class_table() -> Tuple[Dict[str, int], Dict[str, int]]:
    """One walk over the space: per canonical form its smallest index and its size."""
    from .index import NUM_ARCHS, arch_at

    first: Dict[str, int] = {}
    size: Dict[str, int] = {}
    for index in range(NUM_ARCHS):
        c = canonical_str(arch_at(index))
        first.setdefault(c, index)
        size[c] = size.get(c, 0) + 1
    return first, size


def _classes() -> Dict[str, int]:
    return _class_table()[0]


def representative_index(arch) -> int:
    """The smallest benchmark index in ``arch``'s isomorphism class."""
    return _classes()[canonical_str(arch)]


def class_size(arch) -> int:
    """How many benchmark indices share ``arch``'s isomorphism class (``arch`` included)."""
    return _class_table()[1][canonical_str(arch)]


def num_isomorphism_classes() -> int:
    """How many isomorphism classes (:func:`canonical_str`) the benchmark space has (6,466)."""
    return len(_classes())
