"""The NB201 space: arch strings, the official index order, structure analysis."""

import csv

import pytest

from nwot_fast import nb201
from nwot_fast.nb201 import Arch, arch_at, index_of
from nwot_fast.nb201.structure import num_isomorphism_classes

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_round_trip_every_arch():
    seen = set()
    for arch in Arch.all():
        s = str(arch)
        assert Arch.from_str(s) == arch
        seen.add(s)
    assert len(seen) == 5**6 == nb201.NUM_ARCHS


def test_index_order_matches_benchmark_file(accuracies_csv):
    rows = read_rows(accuracies_csv)
    assert len(rows) == nb201.NUM_ARCHS
    for row in rows:
        i = int(row["index"])
        assert str(arch_at(i)) == row["arch"]
        assert index_of(row["arch"]) == i
    assert index_of(BEST) == 6111


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_5x5'"),
        ("|none~0|+|none~0|none~1|", "3 nodes"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "'op~0'"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "2 edge(s)"),
        ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "must look like"),
        ("", "3 nodes"),
    ],
)
def test_malformed_strings_name_the_problem(bad, fragment):
    with pytest.raises(ValueError) as e:
        Arch.from_str(bad)
    assert fragment in str(e.value)
    if "unknown op" in fragment:
        assert "nor_conv_3x3" in str(e.value)  # lists the valid ops


@pytest.mark.parametrize("index", [-1, 15625, 10**9])
def test_index_out_of_range(index):
    with pytest.raises(ValueError, match="0..15624"):
        arch_at(index)


@pytest.mark.parametrize("index", [1.0, "3", None])
def test_index_wrong_type(index):
    with pytest.raises(TypeError):
        arch_at(index)


def test_arch_validation():
    with pytest.raises(ValueError, match="exactly 6"):
        Arch((0, 1))
    with pytest.raises(ValueError, match="op id 7"):
        Arch((0, 1, 2, 3, 4, 7))
    with pytest.raises(AttributeError):
        Arch((0,) * 6).ops = (1,) * 6


def test_constant_output_archs_are_the_chance_level_rows(accuracies_csv):
    rows = read_rows(accuracies_csv)
    constant = {i for i in range(nb201.NUM_ARCHS) if nb201.is_constant_output(arch_at(i))}
    chance = {int(r["index"]) for r in rows if float(r["cifar10_test_acc"]) == 10.0}
    assert len(constant) == 341
    assert constant == chance


def test_structure_counts():
    archs = [arch_at(i) for i in range(nb201.NUM_ARCHS)]
    assert sum(nb201.relu_sees_only_zeros(a) for a in archs) == 201
    assert num_isomorphism_classes() == 6466
    assert len({nb201.functional_str(a) for a in archs}) == 4930


def test_live_edges():
    # 1<-0 conv feeds nothing that reaches the output (2 and 3 ignore node 1), so it is dead.
    a = Arch.from_str("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_1x1~2|")
    assert nb201.live_edges(a) == (False, True, False, False, False, True)
    assert not nb201.is_constant_output(a)
    dead = Arch.from_str("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|")
    assert nb201.live_edges(dead) == (False,) * 6
    assert nb201.is_constant_output(dead)
    assert not nb201.relu_sees_only_zeros(dead)  # its conv edge 1<-0 still sees the input


def test_canonical_form_identifies_isomorphic_cells():
    # Node 2 sums its inputs, so their order does not matter: the two cells compute the same function.
    a = Arch.from_str("|skip_connect~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|skip_connect~1|nor_conv_1x1~2|")
    b = Arch.from_str("|skip_connect~0|+|nor_conv_1x1~0|skip_connect~1|+|skip_connect~0|skip_connect~1|nor_conv_1x1~2|")
    c = Arch.from_str("|skip_connect~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|skip_connect~1|nor_conv_1x1~2|")
    assert nb201.canonical_str(a) == nb201.canonical_str(b) == "((0)@nor_conv_1x1+0)@nor_conv_1x1+0+0"
    assert nb201.canonical_str(c) != nb201.canonical_str(a)
    assert nb201.functional_str(a) == nb201.functional_str(b)
    rep = nb201.representative_index(a)
    assert rep == nb201.representative_index(b) == min(index_of(a), index_of(b))


# ---------------------------------------------------------------------------------------------
# The op registry against the modules the network builds (the authors' rules, independently)


@pytest.mark.parametrize("name", nb201.OPS)
def test_registry_says_what_each_module_does(name):
    """Each spec's claims checked on the module it builds: its parameters (names and shapes as
    the module creates them), whether it passes signal, is the identity, pools, and whether
    its input is hooked by the authors' rule (a class name containing ``ReLU``)."""
    import torch

    spec = nb201.REGISTRY[name]
    assert spec.name == name and nb201.OPS[spec.id] == name and nb201.op_spec(spec.id) is spec
    module = torch.nn.Sequential()
    module.add_module("edge", spec.build(8))
    created = [(n, tuple(p.shape)) for n, p in module.named_parameters()]
    assert created == [(p.name, p.shape) for p in spec.parameter_specs("edge", 8) if p.init in ("kaiming", "ones", "zeros")]
    assert spec.has_weights == bool(created)
    x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    y = module(x)
    assert spec.passes_signal == bool(y.abs().sum() > 0)
    assert (spec.kind is nb201.OpKind.IDENTITY) == (y is x)
    pooled = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert (spec.kind is nb201.OpKind.POOL) == torch.equal(y, pooled)
    assert spec.hooked_relu == any("ReLU" in type(m).__name__ for m in module.modules())
    if spec.has_weights:
        assert spec.kernel == int(name[-1]) == module.edge.op[1].kernel_size[0]
    assert spec.computed == (spec.has_weights or spec.kind is nb201.OpKind.POOL)


def test_registry_rejects_unknown_ops():
    with pytest.raises(ValueError, match="nor_conv_3x3"):
        nb201.op_spec("conv_5x5")
    for bad in (5, -1, True, 1.0):
        with pytest.raises(ValueError, match="0..4"):
            nb201.op_spec(bad)


def test_reachable_from_input():
    a = Arch.from_str("|none~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|skip_connect~1|none~2|")
    assert nb201.reachable_from_input(a) == (True, False, True, False)
    assert nb201.is_constant_output(a)
