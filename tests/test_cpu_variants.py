"""The CPU kernel variants of the compiled operators (csrc/cpu/cpu_isa.h): baseline, AVX2 and
AVX-512 builds of the BatchNorm, pooling, code-packing and Hamming-kernel loops, one chosen per
process from ATen's CPU capability (``ATEN_CPU_CAPABILITY=default|avx2|avx512`` forces a lower
one).

Every variant this machine supports runs in its own process, at 1 and at 2 threads, on fixed
inputs with odd shapes (vector tails, one-pixel borders, widths the loops do not unroll). Its
outputs must be

* bitwise equal to the baseline variant's: the variants vectorise across independent channels,
  pixels or words only and fuse no multiply-add (``-ffp-contract=off``), so every value is
  rounded the same way;
* equal to independent references computed here: ATen's pooling bit for bit, ATen's BatchNorm
  in float64 to a float32 tolerance, and the pure-PyTorch fallbacks of :mod:`nwot_fast.ops` for
  codes, K and log-determinants exactly.

And the library has no AVX2 / AVX-512 instruction outside the variant namespaces (objdump), so
nothing wider than the baseline runs before the CPU has been asked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

ORDER = ("default", "avx2", "avx512")


def _compiled_cpu() -> bool:
    from nwot_fast import _ext

    return _ext.available("cpu")


def _first_use_build() -> bool:
    import nwot_fast

    return nwot_fast.backend_info(build=False).get("route") == "jit"


_COMPILED = _compiled_cpu()
pytestmark = [
    pytest.mark.skipif(not _COMPILED, reason="compiled CPU operators not available"),
    pytest.mark.skipif(_COMPILED and _first_use_build(),
                       reason="a first-use build holds only this machine's variant (tests/test_install.py checks it): "
                              "these tests compare the variants of an ahead-of-time build"),
]


# ---------------------------------------------------------------------------------------------
# The inputs (the same in every process) and what the compiled operators make of them


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bn_inputs():
    """(name, x, parts, grad) for batch_norm_train: channels-last and NCHW inputs, NB201 widths
    (unrolled loops) and others (run-time trip counts), NCHW planes of whole lane blocks, partial
    ones and runs longer than a float64 flush, float32 and float64."""
    cases = []
    specs = [((8, 32, 5, 7), 2, torch.float32, True), ((6, 48, 4, 4), 3, torch.float32, True),
             ((4, 24, 3, 5), 1, torch.float32, True), ((3, 40, 2, 3), 2, torch.float32, False),
             ((5, 16, 6, 6), 1, torch.float64, True), ((2, 64, 1, 2), 2, torch.float32, True),
             ((4, 7, 3, 3), 1, torch.float32, True), ((8, 32, 8, 8), 2, torch.float32, False),
             ((3, 16, 20, 20), 1, torch.float32, False), ((3, 24, 5, 7), 3, torch.float64, False),
             ((4, 7, 1, 1), 1, torch.float32, False)]
    for k, (shape, parts, dtype, channels_last) in enumerate(specs):
        g = _gen(100 + k)
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 0.5).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        N, PC, H, W = shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        grad = [torch.randn((N, PC // parts, H, W), generator=g, dtype=torch.float64).to(dtype)
                .contiguous(memory_format=fmt) for _ in range(parts)]
        cases.append((f"bn{k}", x, parts, grad))
    return cases


def pool_inputs():
    """(name, x): NHWC and NCHW, one-pixel planes and rows, float32 and float64."""
    specs = [((3, 16, 7, 9), torch.float32, True), ((2, 5, 1, 4), torch.float32, True),
             ((2, 8, 4, 1), torch.float32, True), ((2, 3, 1, 1), torch.float32, True),
             ((3, 4, 7, 9), torch.float32, False), ((2, 16, 5, 5), torch.float64, True),
             ((2, 2, 3, 17), torch.float64, False), ((1, 33, 6, 2), torch.float32, True)]
    cases = []
    for k, (shape, dtype, channels_last) in enumerate(specs):
        x = torch.randn(shape, generator=_gen(200 + k), dtype=torch.float64).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cases.append((f"pool{k}", x))
    return cases


def pack_inputs():
    """(name, x) for pack_codes: row lengths with and without a partial word, signed zeros,
    NaN and infinities, other dtypes, a channels-last view as the fast path packs it."""
    g = _gen(300)
    special = torch.randn(4, 300, generator=g)
    special[0, :12] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45, -1e-45,
                                    float("-nan"), 1.0, -1.0, 3e38, -3e38])
    nhwc = torch.randn(3, 16, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
    return [
        ("pack0", torch.randn(5, 200, generator=g)),
        ("pack1", torch.randn(3, 256, generator=g)),
        ("pack2", torch.randn(2, 63, generator=g)),
        ("pack3", special),
        ("pack4", torch.randn(3, 130, generator=g, dtype=torch.float64)),
        ("pack5", torch.randn(3, 130, generator=g).to(torch.float16)),
        ("pack6", torch.randn(3, 130, generator=g) > 0),
        ("pack7", nhwc.permute(0, 2, 3, 1)),
    ]


def code_inputs():
    """(name, codes, multiplicity, units) for hamming_kernel / logdet: word counts that are not
    multiples of the vector widths, NB201's multiplicities (1, 2) and some the vector paths
    leave to the scalar loop (>= 2^31, negative)."""
    cases = []
    specs = [(2, 9, 37, "small"), (1, 16, 300, "small"), (3, 5, 3, "small"), (2, 7, 11, "large"),
             (1, 6, 20, "negative")]
    for k, (A, B, W, kind) in enumerate(specs):
        g = _gen(400 + k)
        codes = torch.randint(-2**62, 2**62, (A, B, W), generator=g, dtype=torch.int64)
        codes[:, :, 0] = torch.randint(-2**63, 2**63 - 1, (A, B), generator=g, dtype=torch.int64)  # sign bits
        multiplicity = torch.randint(1, 3, (A, W), generator=g, dtype=torch.int64)
        if kind == "large":
            multiplicity[:, ::3] = 2**31 + 5
        elif kind == "negative":
            multiplicity[:, 1::4] = -1
        units = 64 * multiplicity.abs().sum(dim=1) + 7
        cases.append((f"codes{k}", codes, multiplicity, units))
    return cases


def compiled_outputs() -> dict:
    """Every compiled operator on every input above: name -> tensor."""
    ops = torch.ops.nwot_fast
    out = {}
    for name, x, parts, grad in bn_inputs():
        ys, invstd = ops.batch_norm_train(x, parts)
        out[name + ".y"], out[name + ".invstd"] = torch.cat(ys, 1), invstd
        out[name + ".grad_x"] = ops.batch_norm_train_backward(grad, ys, invstd)
    for name, x in pool_inputs():
        out[name + ".fwd"] = ops.avg_pool3x3(x)
        out[name + ".bwd"] = ops.avg_pool3x3_backward(x)
    for name, x in pack_inputs():
        out[name] = ops.pack_codes(x)
    for name, codes, multiplicity, units in code_inputs():
        out[name + ".K"] = ops.hamming_kernel(codes, multiplicity, units)
        out[name + ".logdet"] = ops.hook_logdet_score(codes, multiplicity, units)
    return out


def _child(path: str) -> None:
    """In a child process: build info and the compiled outputs into ``path``."""
    from nwot_fast import _ext

    if not _ext.available("cpu"):
        raise SystemExit("compiled CPU operators not available")
    info = _ext.parse_build_info(torch.ops.nwot_fast.build_info())
    torch.save({"info": info, "threads": torch.get_num_threads(), "outputs": compiled_outputs()}, path)


# ---------------------------------------------------------------------------------------------
# One process per (variant, thread count)


def _run_child(tmp_path, capability, threads: int) -> dict:
    from conftest import subprocess_env

    env = subprocess_env(threads)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    path = tmp_path / f"{capability or 'auto'}-{threads}.pt"
    proc = subprocess.run([sys.executable, __file__, str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(variant asked for or None, threads): child result} for the unforced choice and every
    variant up to it."""
    tmp = tmp_path_factory.mktemp("cpu_variants")
    results = {(None, 2): _run_child(tmp, None, 2)}
    best = results[(None, 2)]["info"]["cpu_kernels"]
    for variant in ORDER[: ORDER.index(best) + 1]:
        for threads in (1, 2):
            results[(variant, threads)] = _run_child(tmp, variant, threads)
    return results


def test_build_info_names_the_variant_in_use(runs):
    auto = runs[(None, 2)]["info"]
    assert auto["cpu_kernels"] in ORDER
    built = auto["cpu_kernels_built"].split(",")
    assert auto["cpu_kernels"] in built
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64" and "GCC" in sys.version:
        assert built == list(ORDER)
    # Unforced, the variant follows ATen's own choice for this CPU.
    expected = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "default")
    if os.environ.get("ATEN_CPU_CAPABILITY") is None and expected in built:
        assert auto["cpu_kernels"] == expected
    for (variant, threads), run in runs.items():
        if variant is not None:
            assert run["info"]["cpu_kernels"] == variant, (variant, threads)
            assert run["threads"] == threads


def test_every_variant_and_thread_count_gives_the_baseline_bits(runs):
    baseline = runs[("default", 1)]["outputs"]
    for key, run in runs.items():
        outputs = run["outputs"]
        assert outputs.keys() == baseline.keys()
        for name, want in baseline.items():
            got = outputs[name]
            assert got.dtype == want.dtype and got.shape == want.shape, (key, name)
            assert got.stride() == want.stride(), (key, name)
            assert torch.equal(got, want) or (got.is_floating_point() and torch.equal(got.nan_to_num(), want.nan_to_num())
                                              and torch.equal(got.isnan(), want.isnan())), f"{key} {name}"


@pytest.mark.parametrize("variant", ORDER)
def test_variant_matches_independent_references(runs, variant):
    if (variant, 1) not in runs:
        pytest.skip(f"this CPU does not support the {variant} variant")
    from nwot_fast import ops

    for threads in (1, 2):
        out = runs[(variant, threads)]["outputs"]
        for name, x, parts, grad in bn_inputs():
            x64 = x.detach().to(torch.float64).requires_grad_(True)
            y64 = F.batch_norm(x64, None, None, None, None, True, 0.0, 1e-5)
            want_y = y64
            (want_gx,) = torch.autograd.grad(y64, x64, torch.cat([g.to(torch.float64) for g in grad], dim=1))
            tol = 1e-12 if x.dtype == torch.float64 else 2e-5
            torch.testing.assert_close(out[name + ".y"].to(torch.float64), want_y.detach(), rtol=tol, atol=tol)
            torch.testing.assert_close(out[name + ".grad_x"].to(torch.float64), want_gx, rtol=tol, atol=tol)
        for name, x in pool_inputs():
            want = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
            assert torch.equal(out[name + ".fwd"], want), name
            xg = x.detach().requires_grad_(True)
            (want_bwd,) = torch.autograd.grad(F.avg_pool2d(xg, 3, 1, 1, count_include_pad=False), xg, x)
            assert torch.equal(out[name + ".bwd"], want_bwd), name
        for name, x in pack_inputs():
            assert torch.equal(out[name], ops.pack_codes_fallback(x)), name
        for name, codes, multiplicity, units in code_inputs():
            K = ops.hamming_kernel_fallback(codes, multiplicity, units)
            assert torch.equal(out[name + ".K"], K), name
            want = ops.logdet_score_fallback(K)
            torch.testing.assert_close(out[name + ".logdet"], want, rtol=1e-9, atol=0.0, equal_nan=True)


def _wide_instructions_outside_variants(library: str) -> list:
    """Functions of ``library`` that use a ymm / zmm register but are not in a variant namespace."""
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", library], capture_output=True, text=True,
                          check=True).stdout
    offenders, name = set(), None
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            name = m.group(1)
        elif name and re.search(r"%[yz]mm\d", line) and not re.search(r"nwot_fast::cpu_avx(2|512)::", name):
            offenders.add(name)
    return sorted(offenders)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_no_wide_instructions_outside_the_variants():
    from nwot_fast import _ext

    info = _ext.backend_info()
    library = info["library"]
    if "avx2" not in (info.get("cpu_kernels_built") or ""):
        pytest.skip("this build has the baseline variant only")
    offenders = _wide_instructions_outside_variants(library)
    assert offenders == [], offenders[:10]
    # ... and the variants do use them (the pragmas took effect).
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", library], capture_output=True, text=True,
                          check=True).stdout
    assert re.search(r"%zmm\d", text) and re.search(r"%ymm\d", text)


if __name__ == "__main__":
    _child(sys.argv[1])
