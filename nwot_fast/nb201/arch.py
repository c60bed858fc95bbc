"""The NAS-Bench-201 cell as a value type.

An architecture is the op id (:data:`~nwot_fast.nb201.constants.OPS`) on each of the six
edges of the cell, in the order of the official string (:mod:`nwot_fast.nb201.constants`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Tuple

from .constants import EDGES, NUM_NODES, OP_ID, OPS


@dataclass(frozen=True, order=True)
class Arch:
    """One NB201 cell: six operation ids (indices into :data:`OPS`), edges in string order."""

    ops: Tuple[int, ...]

    def __post_init__(self):
        ops = self.ops
        if not isinstance(ops, tuple):
            try:
                ops = tuple(ops)
            except TypeError:
                raise TypeError(f"Arch ops must be a sequence of 6 op ids, got {type(self.ops).__name__}") from None
            object.__setattr__(self, "ops", ops)
        if len(ops) != len(EDGES):
            raise ValueError(f"Arch needs exactly {len(EDGES)} op ids (one per edge), got {len(ops)}")
        for op in ops:
            if isinstance(op, bool) or not isinstance(op, int) or not 0 <= op < len(OPS):
                raise ValueError(f"op id {op!r} is not valid; allowed are 0..{len(OPS) - 1} for {', '.join(OPS)}")

    @classmethod
    def from_str(cls, s: str) -> "Arch":
        """Parse the official string, e.g. ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
        if not isinstance(s, str):
            raise TypeError(f"arch string must be a str, got {type(s).__name__}")
        text = s.strip()
        nodes = text.split("+")
        if len(nodes) != NUM_NODES - 1:
            raise ValueError(
                f"arch string {s!r} must have {NUM_NODES - 1} nodes separated by '+', got {len(nodes)}; "
                "expected format |op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
            )
        ops = []
        for node_index, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
                raise ValueError(f"node {node_index} of arch string {s!r} must look like |op~i|...|, got {node!r}")
            tokens = node[1:-1].split("|")
            if len(tokens) != node_index:
                raise ValueError(
                    f"node {node_index} of arch string {s!r} must have {node_index} edge(s), got {len(tokens)} ({node!r})"
                )
            for source, token in enumerate(tokens):
                name, sep, src = token.partition("~")
                if not sep or src != str(source):
                    raise ValueError(
                        f"token {token!r} in arch string {s!r} must be 'op~{source}' (edge from node {source})"
                    )
                if name not in OP_ID:
                    raise ValueError(
                        f"unknown op {name!r} in arch string {s!r}; valid ops are: {', '.join(OPS)}"
                    )
                ops.append(OP_ID[name])
        return cls(tuple(ops))

    def __str__(self) -> str:
        names = [OPS[o] for o in self.ops]
        return "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*names)

    def __repr__(self) -> str:
        return f"Arch.from_str({str(self)!r})"

    @property
    def op_names(self) -> Tuple[str, ...]:
        """The benchmark's op string of each edge, in string order."""
        return tuple(OPS[o] for o in self.ops)

    def edges(self) -> Iterator[Tuple[int, int, int]]:
        """Yield ``(source, target, op_id)`` for each edge, in string order."""
        for (i, j), op in zip(EDGES, self.ops):
            yield i, j, op

    @staticmethod
    def all() -> Iterator["Arch"]:
        """All 5**6 cells in nested lexicographic order (the order before the benchmark's shuffle)."""
        for ops in itertools.product(range(len(OPS)), repeat=len(EDGES)):
            yield Arch(ops)

