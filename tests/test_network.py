"""The network builder against xautodl's TinyNetwork: same parameters, same order, same outputs."""

import random
import zlib

import pytest
import torch

from nwot_fast import nb201
from nwot_fast.nb201 import Arch, build_network, initial_parameters

xautodl_models = pytest.importorskip("xautodl.models", reason="pip install --no-deps xautodl")
from xautodl.config_utils import dict2config  # noqa: E402

ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",  # best (6111)
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",  # all none: constant output
    "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|",  # constant output, live conv
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
    "|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|none~2|",  # output node unreachable
    "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|",  # a single skip
]
ARCHS += [str(nb201.arch_at(i)) for i in (0, 1459, 100, 7000, 15624)]


def xautodl_network(arch: str, num_classes: int):
    config = dict2config({"name": "infer.tiny", "C": 16, "N": 5, "arch_str": arch, "num_classes": num_classes}, None)
    return xautodl_models.get_cell_based_tiny_net(config)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_parameters_and_outputs_as_xautodl(arch):
    seed = zlib.crc32(arch.encode())  # a fixed seed per architecture
    torch.manual_seed(seed)
    ours = build_network(arch, num_classes=10)
    torch.manual_seed(seed)
    theirs = xautodl_network(arch, 10)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]

    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    ours.train()
    theirs.train()
    out = ours(x)
    features, logits = theirs(x)
    assert torch.equal(out, logits)
    # Train-mode forward updated both sets of BatchNorm running statistics identically.
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key


def test_build_network_accepts_index_string_and_arch():
    s = ARCHS[0]
    for spec in (s, Arch.from_str(s), 6111):
        assert build_network(spec).arch == Arch.from_str(s)


def test_sizes_and_parameter_count():
    # 10 classes: params = 73306 + 243040 * n3 + 28000 * n1 (the data README's formula).
    net = build_network(ARCHS[0], num_classes=10)
    n3, n1 = ARCHS[0].count("nor_conv_3x3"), ARCHS[0].count("nor_conv_1x1")
    assert sum(p.numel() for p in net.parameters()) == 73306 + 243040 * n3 + 28000 * n1
    assert build_network(ARCHS[0])(torch.randn(2, 3, 16, 16)).shape == (2, 1)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"C": -1}, {"N": 1.5}, {"num_classes": True}])
def test_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        build_network(ARCHS[0], **kwargs)


@pytest.mark.parametrize("seed", [0, 7])
def test_initial_parameters_equal_the_built_network_bit_for_bit(seed):
    """initial_parameters draws what build_network draws, in the same order: same names, same
    values, and the global RNG left in the same state."""
    archs = random.Random(seed).sample(range(nb201.NUM_ARCHS), 12) + ARCHS
    for arch in archs:
        torch.manual_seed(seed)
        net = build_network(arch)
        after_build = torch.rand(3)
        torch.manual_seed(seed)
        params = initial_parameters(arch)
        after_draw = torch.rand(3)
        named = dict(net.named_parameters())
        assert list(named) == list(params)
        for name, value in params.items():
            assert torch.equal(named[name], value), (arch, name)
        assert torch.equal(after_build, after_draw)
    with pytest.raises(ValueError, match="C must be a positive int"):
        initial_parameters(0, C=0)
