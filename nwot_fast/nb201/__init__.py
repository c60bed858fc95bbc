"""NAS-Bench-201: its constants, the op registry, the cell type, the official index order,
structure analysis and the network."""

from .arch import Arch
from .constants import EDGES, OPS
from .index import NUM_ARCHS, arch_at, as_arch, index_of
from .layers import ParamSpec
from .network import build_network, initial_parameters, parameter_specs, seeded_network
from .registry import REGISTRY, OpKind, OpSpec, op_spec
from .structure import (
    canonical_str,
    class_size,
    describe,
    functional_str,
    is_constant_output,
    live_edges,
    reachable_from_input,
    relu_sees_only_zeros,
    representative_index,
)

__all__ = [
    "Arch",
    "EDGES",
    "OPS",
    "NUM_ARCHS",
    "arch_at",
    "as_arch",
    "index_of",
    "build_network",
    "seeded_network",
    "initial_parameters",
    "parameter_specs",
    "ParamSpec",
    "REGISTRY",
    "OpKind",
    "OpSpec",
    "op_spec",
    "canonical_str",
    "class_size",
    "describe",
    "functional_str",
    "is_constant_output",
    "live_edges",
    "reachable_from_input",
    "relu_sees_only_zeros",
    "representative_index",
]
