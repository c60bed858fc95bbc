"""NAS-Bench-201: the cell type, the official index order, structure analysis, the network."""

from .arch import EDGES, OPS, Arch
from .index import NUM_ARCHS, arch_at, index_of
from .network import ParamSpec, build_network, initial_parameters, parameter_layout
from .structure import (
    canonical_str,
    class_size,
    functional_str,
    is_constant_output,
    live_edges,
    relu_sees_only_zeros,
    representative_index,
)

__all__ = [
    "Arch",
    "EDGES",
    "OPS",
    "NUM_ARCHS",
    "arch_at",
    "index_of",
    "build_network",
    "initial_parameters",
    "parameter_layout",
    "ParamSpec",
    "canonical_str",
    "class_size",
    "functional_str",
    "is_constant_output",
    "live_edges",
    "relu_sees_only_zeros",
    "representative_index",
]
