"""Side by side: the authors' procedure, the pure path and the fast path, in one process.

    python bench/compare.py [--json PATH] [--methods jacob_cov hook_logdet] [--batch-size 128]
                            [--archs 20] [--repeats 3] [--seed 0] [--emulate-isa avx2]

On the same fixed architectures, batch (real CIFAR-10 training images from
``../shared/data/cifar10_sample.npz`` when present, else Gaussian N(0, 1)) and weights
(``torch.manual_seed(seed)`` before building each network), it times per architecture:

1. ``authors``: the procedure as published (NASWOT code): xautodl's network from
   ``get_cell_based_tiny_net`` (``infer.tiny``, ``num_classes=1``), parameter gradients on,
   ``y.backward(ones)``, ``x.grad``; ``np.corrcoef`` + ``np.linalg.eig`` and the score from the
   real parts. hook_logdet: the same forward + backward, then a second forward with a hook on
   every module whose ``str(type)`` contains ``ReLU``, two B x B float32 products per hook,
   accumulated into a float64 NumPy K, ``np.linalg.slogdet``. (The published code backpropagates
   the first element of xautodl's ``(features, logits)``; here the logits are used, as by this
   project's score, so the three columns compute the same number at the same cost.)
2. ``pure``: :func:`nwot_fast.reference.score` on :func:`nwot_fast.nb201.build_network`.
3. ``fast``: :func:`nwot_fast.per_arch.score_arch`.
4. After the per-architecture table, the whole set in rounds alternating the authors'
   procedure and the product's front door, :meth:`nwot_fast.scorer.Scorer.score_many` (what
   every command runs) with its default execution and with the multi-arch mode forced, all on
   the scorer's fixed batch (``fixed_batch=True``, no augmentation, from the same data).

Each time includes building the network. The three are interleaved per repeat so that the
load of a shared machine hits them alike; the per-architecture median is reported. The FLOP
floor is the plan's convolution FLOPs (forward, plus the input-only backward for jacob_cov)
at the rate of a large float32 matmul measured in the same process.

Every figure is printed and stored with the CPU it was measured on (:func:`cpu_facts`: model,
instruction set, ATen's CPU capability, the variant of nwot_fast's CPU kernels in use, the
variables that lowered them). ``--emulate-isa avx2`` runs the whole comparison (authors'
column included) with every library held to AVX2 (:data:`EMULATE_ISA`): the code paths of an
AVX2-only CPU on this one, not the speed of such a CPU (caches, clocks and AVX-512 frequency
behaviour stay this machine's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nwot_fast import per_arch, plans, reference
from nwot_fast.config import ScoreConfig
from nwot_fast.nb201 import NUM_ARCHS, arch_at
from nwot_fast.scorer import Scorer, score_with_reference

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10_sample.npz"
EPS = 1e-5
# The variables that hold each library of the process to an instruction set: ATen's kernels
# and nwot_fast's CPU kernels (ATEN_CPU_CAPABILITY), oneDNN's convolutions, MKL (torch's BLAS
# and LAPACK), OpenBLAS (numpy's, the authors' corrcoef / eig / slogdet). Read when the
# libraries load, so --emulate-isa re-executes the script with them set.
EMULATE_ISA = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"},
}
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")


def cpu_facts() -> dict:
    """The CPU and what runs on it: ``model`` (/proc/cpuinfo's model name), ``isa`` (the widest
    of AVX-512 (F, BW, DQ, VL), AVX2 (+FMA) the CPU reports), ``vpopcntdq``, ``aten_capability``
    (the kernels ATen chose), ``cpu_kernels`` (the variant of nwot_fast's compiled CPU kernels
    in use), ``forced`` (the variables of :data:`ISA_VARIABLES` that are set)."""
    from nwot_fast import backend_info

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        isa = "AVX-512"
    elif {"avx2", "fma"} <= flags:
        isa = "AVX2"
    else:
        isa = "below AVX2" if flags else "unknown"
    return {
        "model": model,
        "isa": isa,
        "vpopcntdq": "avx512_vpopcntdq" in flags,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kernels": backend_info().get("cpu_kernels"),
        "forced": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
    }


def cpu_tag(facts: dict) -> str:
    """One line for a log: the CPU, its instruction set and the kernels in use."""
    forced = ", forced " + " ".join(f"{k}={v}" for k, v in facts["forced"].items()) if facts["forced"] else ""
    return (f"{facts['model']} ({facts['isa']}); ATen {facts['aten_capability']}, nwot_fast CPU kernels "
            f"{facts['cpu_kernels']}{forced}")


def fixed_archs(n: int, seed: int = 2020):
    """A fixed, seeded sample of benchmark indices (the same in every run)."""
    return random.Random(seed).sample(range(NUM_ARCHS), n)


def load_batch(batch_size: int, seed: int = 0):
    """The first ``batch_size`` real CIFAR-10 images, normalised as NB201 does; else Gaussian."""
    if DATA.exists():
        from nwot_fast.data import load_images
        from nwot_fast.data.sampler import normalize

        images = load_images(str(DATA), dataset="cifar10")
        if batch_size > len(images):
            raise ValueError(f"--batch-size {batch_size} exceeds the {len(images)} images in {DATA}")
        return normalize(images.images[:batch_size], "cifar10"), f"CIFAR-10 training images 0..{batch_size - 1} ({DATA.name})"
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, 32, 32, generator=g), "Gaussian N(0, 1) (no CIFAR-10 sample found)"


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


# ---------------------------------------------------------------------------------------------
# (1) the authors' procedure


def _xautodl_net(arch, seed):
    from xautodl.models import get_cell_based_tiny_net
    from xautodl.models.cell_searchs.genotypes import Structure

    torch.manual_seed(seed)
    config = {"name": "infer.tiny", "C": 16, "N": 5, "genotype": Structure.str2structure(str(arch)), "num_classes": 1}
    return get_cell_based_tiny_net(config)


def _authors_jacobian(net, x):
    net.train()
    net.zero_grad()
    x = x.clone().requires_grad_(True)
    _, logits = net(x)
    logits.backward(torch.ones_like(logits))
    return x.grad.detach()


def authors_jacob_cov(arch, x, seed):
    with torch.random.fork_rng(devices=[]):
        net = _xautodl_net(arch, seed)
    jacob = _authors_jacobian(net, x).reshape(x.shape[0], -1).cpu().numpy()
    corrs = np.corrcoef(jacob)
    v, _ = np.linalg.eig(corrs)
    return float(np.real(-np.sum(np.log(v + EPS) + 1.0 / (v + EPS))))


def authors_hook_logdet(arch, x, seed):
    with torch.random.fork_rng(devices=[]):
        net = _xautodl_net(arch, seed)
    _authors_jacobian(net, x)
    B = x.shape[0]
    K = np.zeros((B, B))

    def hook(module, inp, out):
        nonlocal K
        inp = inp[0] if isinstance(inp, tuple) else inp
        c = (inp.detach().reshape(B, -1) > 0).float()
        K = K + (c @ c.t()).numpy() + ((1.0 - c) @ (1.0 - c.t())).numpy()

    handles = [m.register_forward_hook(hook) for m in net.modules() if "ReLU" in str(type(m))]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    _, ld = np.linalg.slogdet(K)
    return float(ld)


# ---------------------------------------------------------------------------------------------


def pure_score(arch, x, method, seed):
    return score_with_reference(arch, x, method=method, seed=seed)


def fast_score(arch, x, method, seed):
    return per_arch.score_arch(arch, x, method=method, seed=seed)


def _timed(fn):
    t = time.perf_counter()
    s = fn()
    return s, time.perf_counter() - t


def _rel(a, b):
    if (math.isnan(a) and math.isnan(b)) or a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def _set_timings(indices, x, method, seed, repeats, authors_fn, log):
    """The whole set at once, rounds alternating: the authors' procedure arch by arch and the
    front door (``Scorer.score_many``) with its default execution and with the multi-arch mode;
    all on the scorer's fixed batch of ``x``'s size from the same data; the median round of
    each and the ratios."""
    config = ScoreConfig(method=method, data=str(DATA) if DATA.exists() else None, batch_size=x.shape[0],
                         augment=False, fixed_batch=True, seed=seed)
    scorers = {"default": Scorer(config), "batched": Scorer(dataclasses.replace(config, mode="multi-arch"))}
    batch = scorers["default"].batch_for(indices[0])

    def run(name):
        return [r.score for r in scorers[name].score_many(indices)]

    times = {"authors": [], "default": [], "batched": []}
    scores = {}
    for _ in range(repeats):
        scores["authors"], t = _timed(lambda: [authors_fn(arch_at(i), batch, seed) for i in indices])
        times["authors"].append(t)
        scores["default"], t = _timed(lambda: run("default"))
        times["default"].append(t)
        scores["batched"], t = _timed(lambda: run("batched"))
        times["batched"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "median_s": med,
        "default_engine": scorers["default"].execution.describe(),
        "data": scorers["default"].describe_data(),
        "ratio_authors_over_default": med["authors"] / med["default"],
        "ratio_authors_over_batched": med["authors"] / med["batched"],
        "max_rel_diff_default_vs_authors": max(_rel(a, b) for a, b in zip(scores["default"], scores["authors"])),
        "max_rel_diff_batched_vs_authors": max(_rel(a, b) for a, b in zip(scores["batched"], scores["authors"])),
    }
    log(f"whole set through the front door, {repeats} alternating rounds (median; {out['data']}): authors "
        f"{med['authors']:.2f} s, Scorer default ({out['default_engine']}) {med['default']:.2f} s = "
        f"{out['ratio_authors_over_default']:.2f}x, multi-arch {med['batched']:.2f} s = "
        f"{out['ratio_authors_over_batched']:.2f}x; max rel. score diff vs authors: default "
        f"{out['max_rel_diff_default_vs_authors']:.1e}, multi-arch {out['max_rel_diff_batched_vs_authors']:.1e}")
    return out


def compare(methods, batch_size, n_archs, repeats, seed, log=print, json_path=None, skip_pure=False,
            set_only=False):
    """Run the comparison; with ``json_path`` the figures so far are rewritten after every architecture."""
    x, data_note = load_batch(batch_size, seed)
    indices = fixed_archs(n_archs)
    gflops = matmul_gflops()
    authors = {"jacob_cov": authors_jacob_cov, "hook_logdet": authors_hook_logdet}
    facts = cpu_facts()
    log(f"CPU: {cpu_tag(facts)}")
    report = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": facts,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "batch_size": batch_size,
        "data": data_note,
        "seed": seed,
        "repeats": repeats,
        "skip_pure": skip_pure,
        "archs": indices,
        "matmul_gflops": gflops,
        "methods": {},
    }
    for method in methods:
        rows = []
        if set_only:  # only the whole-set A/B through the front door
            log(f"\n{method}  (batch {batch_size}, {len(indices)} archs, {repeats} round(s))")
            summary = {"set": _set_timings(indices, x, method, seed, repeats, authors[method], log)}
            report["methods"][method] = {"rows": rows, "summary": summary}
            if json_path:
                Path(json_path).write_text(json.dumps(report, indent=2, default=float))
            continue
        log(f"\n{method}  (batch {batch_size}, {len(indices)} archs, median of {repeats}; {data_note})")
        log(f"{'index':>6} {'convs':>5} {'authors s':>10} {'pure s':>9} {'fast s':>9} {'ratio':>6} "
            f"{'floor%':>6} {'score':>14} {'rel diff':>9}")
        for index in indices:
            arch = arch_at(index)
            times = {"authors": [], "pure": [], "fast": []}
            scores = {}
            for _ in range(repeats):
                scores["authors"], t = _timed(lambda: authors[method](arch, x, seed))
                times["authors"].append(t)
                if skip_pure:
                    scores["pure"], t = math.nan, math.nan
                else:
                    scores["pure"], t = _timed(lambda: pure_score(arch, x, method, seed))
                times["pure"].append(t)
                scores["fast"], t = _timed(lambda: fast_score(arch, x, method, seed))
                times["fast"].append(t)
            med = {k: statistics.median(v) for k, v in times.items()}
            plan = plans.compile_plan(arch, method)
            flops = plans.plan_flops(plan, batch_size) * (2 if method == "jacob_cov" else 1)
            floor_s = flops / (gflops * 1e9)
            row = {
                "index": index,
                "arch": str(arch),
                "convolutions": plan.num_convolutions,
                "plan_gflop": flops / 1e9,
                "scores": scores,
                "median_s": med,
                "ratio_authors_over_fast": med["authors"] / med["fast"],
                "ratio_authors_over_pure": med["authors"] / med["pure"],
                "floor_fraction_fast": (floor_s / med["fast"]) if flops else None,
                "rel_diff_fast_vs_pure": math.nan if skip_pure else _rel(scores["fast"], scores["pure"]),
                "rel_diff_fast_vs_authors": _rel(scores["fast"], scores["authors"]),
            }
            rows.append(row)
            if json_path:
                report["methods"][method] = {"rows": rows, "summary": None}
                Path(json_path).write_text(json.dumps(report, indent=2, default=float))
            floor = f"{100 * row['floor_fraction_fast']:5.1f}%" if flops else "    -"
            log(f"{index:>6} {plan.num_convolutions:>5} {med['authors']:>10.3f} {med['pure']:>9.3f} {med['fast']:>9.3f} "
                f"{row['ratio_authors_over_fast']:>6.2f} {floor:>6} {scores['fast']:>14.8g} {row['rel_diff_fast_vs_pure']:>9.1e}")
        total = {k: sum(r["median_s"][k] for r in rows) for k in ("authors", "pure", "fast")}
        total_flops = sum(r["plan_gflop"] for r in rows) * 1e9
        summary = {
            "sum_median_s": total,
            "mean_fast_s_per_arch": total["fast"] / len(rows),
            "ratio_authors_over_fast": total["authors"] / total["fast"],
            "ratio_authors_over_pure": total["authors"] / total["pure"],
            "floor_fraction_fast": total_flops / (gflops * 1e9) / total["fast"],
            "max_rel_diff_fast_vs_pure": max(r["rel_diff_fast_vs_pure"] for r in rows),
            "max_rel_diff_fast_vs_authors": max(r["rel_diff_fast_vs_authors"] for r in rows),
            "max_rel_diff_pure_vs_authors": math.nan if skip_pure else max(
                _rel(r["scores"]["pure"], r["scores"]["authors"]) for r in rows),
            "full_space_estimate_s": {k: v / len(rows) * NUM_ARCHS for k, v in total.items()},
        }
        log(f"{'sum':>6} {'':>5} {total['authors']:>10.3f} {total['pure']:>9.3f} {total['fast']:>9.3f} "
            f"{summary['ratio_authors_over_fast']:>6.2f} {100 * summary['floor_fraction_fast']:5.1f}%")
        log(f"ratio authors/fast {summary['ratio_authors_over_fast']:.2f}x, authors/pure "
            f"{summary['ratio_authors_over_pure']:.2f}x; max rel. score diff fast vs pure "
            f"{summary['max_rel_diff_fast_vs_pure']:.1e}, fast vs authors {summary['max_rel_diff_fast_vs_authors']:.1e}; "
            f"full space ({NUM_ARCHS} archs) estimate: fast {summary['full_space_estimate_s']['fast'] / 3600:.2f} h, "
            f"authors {summary['full_space_estimate_s']['authors'] / 3600:.2f} h")
        summary["set"] = _set_timings(indices, x, method, seed, repeats, authors[method], log)
        summary["cpu"] = facts
        report["methods"][method] = {"rows": rows, "summary": summary}
    report["load_average_end"] = os.getloadavg()
    log(f"\nlarge-matmul rate {gflops:.1f} GFLOP/s; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average start {report['load_average_start']}, end {report['load_average_end']}; CPU: {cpu_tag(facts)}")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--methods", nargs="+", default=list(reference.METHODS), choices=reference.METHODS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--archs", type=int, default=20, help="number of fixed architectures (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per architecture; the median is reported")
    p.add_argument("--seed", type=int, default=0, help="torch seed for the weights")
    p.add_argument("--skip-pure", action="store_true", help="do not time the pure path (2) (saves time on a busy machine)")
    p.add_argument("--set-only", action="store_true",
                   help="only the whole-set A/B (4): the authors' procedure against the front door")
    p.add_argument("--emulate-isa", choices=sorted(EMULATE_ISA),
                   help="hold every library (ATen, nwot_fast's kernels, oneDNN, MKL, OpenBLAS) to this instruction set")
    a = p.parse_args(argv)
    if a.emulate_isa and any(os.environ.get(k) != v for k, v in EMULATE_ISA[a.emulate_isa].items()):
        # The libraries read these when they load (torch and numpy are imported above): start again.
        env = dict(os.environ, **EMULATE_ISA[a.emulate_isa])
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + (sys.argv[1:] if argv is None else argv),
                  env)
    if a.batch_size < 2:
        p.error(f"--batch-size must be at least 2, got {a.batch_size}")
    if not 1 <= a.archs <= NUM_ARCHS:
        p.error(f"--archs must be in 1..{NUM_ARCHS}, got {a.archs}")
    if a.repeats < 1:
        p.error(f"--repeats must be at least 1, got {a.repeats}")
    report = compare(a.methods, a.batch_size, a.archs, a.repeats, a.seed, log=lambda *m: print(*m, flush=True),
                     json_path=a.json, skip_pure=a.skip_pure, set_only=a.set_only)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
