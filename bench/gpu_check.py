"""One command that builds, verifies and times the GPU path of nwot_fast (issue 11).

    python bench/gpu_check.py --out DIR            # on a CUDA machine (make gpu-check)
    python bench/gpu_check.py --out DIR --smoke    # the same steps on the CPU, tiny sizes, no build

Steps (each with ok / seconds / figures, written to DIR/gpu_check.json and DIR/gpu_check.md
after every step, so that a run cut short still leaves its report):

0. build      ``python setup.py build_ext --inplace`` (MAX_JOBS = cores, TORCH_CUDA_ARCH_LIST
              from the visible GPU); skipped with --smoke or --no-build.
1. backend    ``backend_info()``: compiled, CUDA, which eigensolver.
2. op_tests   pytest on the operator test files; fails on any CUDA test that was skipped.
3. cases      the cases a review found never exercised: W > 32 code words, multi-chunk
              jacob_cov, D < B, a side stream under ``set_sync_debug_mode("error")``,
              non-contiguous / channels-last inputs, the size limits (A > 65535), exact
              singularity, the older eigensolver path (NWOT_FORCE_SYEVJ), float64 inputs, each
              op twice bitwise equal.
4. precision  the per-arch and the multi-arch mode (scorer.score_archs; multi-arch is CUDA's
              default) on the device against the float64 truth
              (the pure path in float64): per arch, the float32 error at most 2x the error of
              the authors' float32 procedure on the same arch; float64 within 1e-9.
5. timing     the product through its front door: ``nwot_fast.scan`` (what ``nwot-fast scan``
              runs) over the whole NB201 space (15,625) per score at batch 128, end to end
              (data, weights, network, post-processing), peak GPU memory; and with
              ``dedup=True`` (``--dedup``: one representative per isomorphism class). A sample
              is timed first; if the time left (--time-budget, --deadline) would not allow the
              rest, the sample is extrapolated and the report says so.
6. scores     the scores of step 5 as DIR/nb201_scores.csv.

Data: cifar10_sample.npz in $NWOT_SHARED_DATA or ../shared/data relative to the repository if
present, else Gaussian inputs (the report says which). Needs only python3 with torch, numpy, pytest (no network).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = 15625
OP_TEST_FILES = ["tests/test_ops.py", "tests/test_ops_degenerate.py"]
# Skips that are not a missing CUDA backend: the pure fallback is tested on the CPU only.
BY_DESIGN_SKIPS = ("the fallback is checked on the CPU",)


def log(msg: str) -> None:
    print(f"[gpu_check {time.monotonic() - START:6.1f}s] {msg}", flush=True)


START = time.monotonic()


class Report:
    def __init__(self, out: str, args):
        self.out = out
        self.data = {"steps": [], "smoke": args.smoke, "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.makedirs(out, exist_ok=True)

    def step(self, name: str, fn, *a, **kw) -> dict:
        log(f"step {name} ...")
        t0 = time.perf_counter()
        entry = {"name": name}
        try:
            figures = fn(*a, **kw) or {}
            entry.update(figures)
            entry.setdefault("ok", True)
        except Exception as exc:  # a failed step is recorded, and the next steps still run
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-4000:]
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["steps"].append(entry)
        log(f"step {name}: {'ok' if entry['ok'] else 'FAIL'} in {entry['seconds']} s"
            + ("" if entry["ok"] else f" - {entry.get('error', '')}"))
        self.write()
        return entry

    def write(self) -> None:
        self.data["total_seconds"] = round(time.monotonic() - START, 1)
        self.data["ok"] = all(s["ok"] for s in self.data["steps"])
        with open(os.path.join(self.out, "gpu_check.json"), "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        with open(os.path.join(self.out, "gpu_check.md"), "w") as f:
            f.write(markdown(self.data))


def markdown(data: dict) -> str:
    lines = [f"# nwot_fast gpu_check{' (smoke, CPU)' if data['smoke'] else ''}", "",
             f"- device: {data.get('device', '?')}", f"- torch: {data.get('torch', '?')}",
             f"- started: {data['started']}, total {data['total_seconds']} s, "
             f"{'all steps ok' if data['ok'] else 'SOME STEPS FAILED'}", "",
             "| step | ok | seconds | figures |", "|---|---|---|---|"]
    for s in data["steps"]:
        figs = {k: v for k, v in s.items() if k not in ("name", "ok", "seconds", "traceback", "details", "per_arch")}
        text = "; ".join(f"{k}={v}" for k, v in figs.items()).replace("|", "/").replace("\n", " ")
        lines.append(f"| {s['name']} | {'ok' if s['ok'] else 'FAIL'} | {s['seconds']} | {text[:1500]} |")
    for s in data["steps"]:
        if s.get("per_arch"):
            lines += ["", f"## {s['name']}: per architecture", "", "| arch | method | truth (float64) | "
                      "authors' float32 rel. error | fast float32 rel. error | batched float32 rel. error | ok |",
                      "|---|---|---|---|---|---|---|"]
            for r in s["per_arch"]:
                arch = r["arch"].replace("|", "\\|")
                lines.append(f"| {arch} | {r['method']} | {r['truth']} | {r['ref32_err']} | {r['fast32_err']} | "
                             f"{r['batched32_err']} | {r['ok']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Step 0: build


def build(args) -> dict:
    import torch

    env = dict(os.environ)
    env["MAX_JOBS"] = str(os.cpu_count() or 4)
    env["FORCE_CUDA"] = "1"
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"build failed (rc {proc.returncode}): {tail}")
    return {"command": " ".join(cmd), "MAX_JOBS": env["MAX_JOBS"],
            "TORCH_CUDA_ARCH_LIST": env.get("TORCH_CUDA_ARCH_LIST", "")}


# ---------------------------------------------------------------------------------------------
# Step 1: backend


def backend(args) -> dict:
    from nwot_fast import _ext

    info = _ext.backend_info()
    ok = bool(info["compiled"]) and (args.smoke or "cuda" in info["backends"])
    return {"ok": ok, **{k: info[k] for k in ("compiled", "backends", "eigensolver_cuda", "cuda_built_with",
                                               "torch_built_against", "torch_running", "reason")}}


# ---------------------------------------------------------------------------------------------
# Step 2: the operator tests


def op_tests(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}"]
        cmd += OP_TEST_FILES if not args.smoke else ["tests/test_ops_degenerate.py", "-k", "exact or minus_inf"]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        cuda_skips = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            skipped = case.find("skipped")
            if skipped is not None:
                counts["skipped"] += 1
                reason = skipped.get("message", "")
                by_design = any(r in reason for r in BY_DESIGN_SKIPS)
                if ("cuda" in name.lower() or "cuda" in reason.lower()) and not by_design:
                    cuda_skips.append(f"{name}: {reason}")
            elif case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
            else:
                counts["passed"] += 1
    ok = proc.returncode == 0 and (args.smoke or not cuda_skips)
    out = {"ok": ok, "command": " ".join(cmd[2:]), "rc": proc.returncode, **counts, "cuda_skips": cuda_skips}
    if not ok:
        out["output_tail"] = proc.stdout[-3000:]
    return out


# ---------------------------------------------------------------------------------------------
# Step 3: the cases never exercised


def cases(args) -> dict:
    import numpy as np
    import torch

    from nwot_fast import ops

    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(1234)
    small = args.smoke
    done = []

    def check(cond, what):
        if not cond:
            raise AssertionError(what)

    def close(a, b, rtol, what):
        a, b = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a), np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b)
        check(np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(np.isinf(a), np.isinf(b)), f"{what}: NaN/inf differ")
        f = np.isfinite(a)
        check(np.allclose(a[f], b[f], rtol=rtol, atol=0), f"{what}: max rel. diff "
              f"{np.max(np.abs(a[f] - b[f]) / np.maximum(np.abs(b[f]), 1e-300)) if f.any() else 0}")

    def rand_codes(A, B, W):
        codes = torch.randint(-2**62, 2**62, (A, B, W), generator=g)
        mult = torch.randint(1, 3, (A, W), generator=g)
        units = 64 * mult.sum(dim=1)
        return codes, mult, units

    def on(t):
        return tuple(x.to(dev) for x in t)

    # W > 32 code words (several shared-memory tiles of words)
    for W in (33, 64, 300, 2000):
        c = rand_codes(2, 12 if small else 40, W)
        K = ops.hamming_kernel(*on(c))
        check(torch.equal(K.cpu(), ops.hamming_kernel_fallback(*c)), f"hamming_kernel W={W} vs the fallback")
        close(ops.hook_logdet_score(*on(c)), ops.hook_logdet_score(*c), 1e-9, f"hook_logdet W={W} vs CPU")
    done.append("W in (33, 64, 300, 2000)")

    # multi-chunk jacob_cov (CUDA chunks at 1 GiB: 200 x 128 x 8192 float64 is 1.6 GiB)
    A, B, D = (6, 8, 40) if small else (200, 128, 8192)
    J = torch.randn(A, B, D, generator=g)
    close(ops.jacob_cov_score(J.to(dev)), ops.jacob_cov_score(J), 1e-9, "jacob_cov multi-chunk vs CPU")
    done.append(f"jacob_cov A={A} B={B} D={D}")

    # D < B
    J = torch.randn(5, 64, 16, generator=g, dtype=torch.float64)
    close(ops.jacob_cov_score(J.to(dev)), ops.jacob_cov_score(J), 1e-8, "jacob_cov D < B vs CPU")
    done.append("D=16 < B=64")

    # size limits: A > 65535 (grid z of the popcount kernel, eigensolver batch of 65535)
    A = 70 if small else 70000
    c = rand_codes(A, 4, 1)
    close(ops.hook_logdet_score(*on(c)), ops.hook_logdet_score(*c), 1e-9, f"hook_logdet A={A}")
    check(torch.equal(ops.hamming_kernel(*on(c)).cpu(), ops.hamming_kernel(*c)), f"hamming_kernel A={A}")
    J = torch.randn(A, 4, 3, generator=g, dtype=torch.float64)
    close(ops.jacob_cov_score(J.to(dev)), ops.jacob_cov_score(J), 1e-9, f"jacob_cov A={A}")
    done.append(f"A={A}")

    # exact singularity: identical rows from codes, the MKL-failing matrices, det divisible by p
    c = rand_codes(3, 20, 5)
    c[0][1, 7] = c[0][1, 3]
    s = ops.hook_logdet_score(*on(c)).cpu()
    check(s[1] == -math.inf and bool(torch.isfinite(s[[0, 2]]).all()), f"identical code rows: {s.tolist()}")
    p = 2147483647
    mats = [[[2, 1, 3], [2, 1, 3], [0, 5, 1]], [[49] * 3] * 3, [[1, 2, 3], [4, 5, 6], [5, 7, 9]],
            [[p, 1, 0], [0, 1, 0], [3, 0, 1]], [[3, 2**53 - 1, 0], [1, 3002399751580330, 0], [0, 0, 1]]]
    for dtype in (torch.int64, torch.float64):
        s = ops.logdet_score(torch.tensor(mats, dtype=dtype, device=dev)).cpu().tolist()
        check(s[:3] == [-math.inf] * 3, f"singular K on {dev}: {s}")
        check(abs(s[3] - math.log(p)) < 1e-9 and abs(s[4]) < 1e-12, f"nonsingular K on {dev}: {s}")
    done.append("exact singularity")

    # non-contiguous and channels-last inputs
    x = torch.randn(16, 8, 6, 6, generator=g) - 0.1
    xd = x.to(dev)
    want = ops.pack_codes(x)
    check(torch.equal(ops.pack_codes(xd.contiguous(memory_format=torch.channels_last)).cpu(), want), "pack_codes channels-last")
    check(torch.equal(ops.pack_codes(xd[:, ::2]).cpu(), ops.pack_codes(x[:, ::2])), "pack_codes channel slice")
    check(torch.equal(ops.pack_codes(xd.double()).cpu(), want), "pack_codes float64")
    J = torch.randn(3, 40, 10, generator=g)
    Jt = J.to(dev).transpose(1, 2).contiguous().transpose(1, 2)
    check(not Jt.is_contiguous(), "a non-contiguous J")
    close(ops.jacob_cov_score(Jt), ops.jacob_cov_score(J), 1e-9, "jacob_cov non-contiguous")
    close(ops.jacob_cov_score(J.double().to(dev)), ops.jacob_cov_score(J.double()), 1e-9, "jacob_cov float64")
    c = rand_codes(2, 10, 6)
    wide = torch.stack([c[0], torch.zeros_like(c[0])], dim=3).flatten(2)[:, :, ::2]  # c[0], every other word
    check(torch.equal(ops.hamming_kernel(wide.to(dev), c[1].to(dev), c[2].to(dev)).cpu(), ops.hamming_kernel(*c)),
          "hamming_kernel non-contiguous codes")
    pool = ops.avg_pool3x3(xd.contiguous(memory_format=torch.channels_last).double())
    check(torch.equal(pool.cpu(), torch.nn.functional.avg_pool2d(x.double(), 3, 1, 1, count_include_pad=False)),
          "avg_pool3x3 float64 channels-last")
    done.append("non-contiguous, channels-last, float64")

    # the older eigensolver path (CUDA only: NWOT_FORCE_SYEVJ is read per call)
    if dev.type == "cuda":
        J16 = torch.randn(4, 16, 50, generator=g, dtype=torch.float64).to(dev)
        J40 = torch.randn(4, 40, 50, generator=g, dtype=torch.float64).to(dev)
        normal = (ops.jacob_cov_score(J16), ops.jacob_cov_score(J40))
        os.environ["NWOT_FORCE_SYEVJ"] = "1"
        try:
            forced = (ops.jacob_cov_score(J16), ops.jacob_cov_score(J40))
        finally:
            del os.environ["NWOT_FORCE_SYEVJ"]
        close(forced[0], normal[0], 1e-9, "syevjBatched (n = 16) vs syevBatched")
        close(forced[1], normal[1], 1e-9, "syevd per matrix (n = 40) vs syevBatched")
        done.append("NWOT_FORCE_SYEVJ (syevj n=16, syevd n=40)")

    # every op twice, bitwise equal; and on a side stream under sync debug mode "error"
    J = torch.randn(6, 32, 300, generator=g).to(dev)
    c = on(rand_codes(6, 32, 40))
    K = ops.hamming_kernel(*c)
    x = torch.randn(32, 16, 8, 8, generator=g).to(dev)
    calls = {"jacob_cov_score": lambda: ops.jacob_cov_score(J), "pack_codes": lambda: ops.pack_codes(x),
             "hamming_kernel": lambda: ops.hamming_kernel(*c), "logdet_score": lambda: ops.logdet_score(K),
             "hook_logdet_score": lambda: ops.hook_logdet_score(*c), "avg_pool3x3": lambda: ops.avg_pool3x3(x)}
    first = {k: f() for k, f in calls.items()}
    for k, f in calls.items():
        check(torch.equal(f(), first[k]), f"{k} twice: not bitwise equal")
    done.append("each op twice bitwise equal")
    if dev.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda.set_sync_debug_mode("error")
            try:
                on_side = {k: f() for k, f in calls.items()}
            finally:
                torch.cuda.set_sync_debug_mode(0)
        side.synchronize()
        for k in calls:
            check(torch.equal(on_side[k], first[k]), f"{k} on a side stream differs")
        done.append("side stream, set_sync_debug_mode('error')")
    return {"checked": done}


# ---------------------------------------------------------------------------------------------
# Step 4: precision against the float64 truth


PRECISION_ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",  # all conv
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|nor_conv_1x1~1|avg_pool_3x3~2|",  # pool-heavy
    "|skip_connect~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|skip_connect~1|nor_conv_3x3~2|",  # skip-heavy
    "|nor_conv_1x1~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|avg_pool_3x3~2|",
    "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|skip_connect~2|",
    "|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_3x3~2|",
]


def precision(args) -> dict:
    import torch

    from nwot_fast import precision as contract

    dev = args.device
    archs = PRECISION_ARCHS[:1] if args.smoke else PRECISION_ARCHS
    batch, side = (8, 16) if args.smoke else (64, 32)
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(100))
    engines = contract.scorers(dev)
    # fast: one plan per architecture; batched: the multi-arch mode (CUDA's default).
    candidates = {"fast": engines["per_arch"], "batched": engines["multi_arch"]}
    rows, problems = [], []
    for method in ("jacob_cov", "hook_logdet"):
        # float32 on the device against the float64 truth and the authors' float32 procedure
        # (the pure path on the CPU at 1 and 2 threads): the contract of docs/PRECISION.md.
        env = contract.measure(archs, x, method, candidates=candidates)
        for name in candidates:
            problems += env.violations(name)
            rows.append({"method": method, "engine": name, "dtype": "float32", **env.summary(name)})
        # float64 on the device: the truth (env's, measured once) to 1e-9, per plan and in every layout.
        for name, scorer in candidates.items():
            scores = scorer(archs, x, method=method, seed=0, relu_match="name", dtype=torch.float64)
            worst64 = max(contract.relative_error(float(s), t) for s, t in zip(scores, env.truth))
            rows.append({"method": method, "engine": name, "dtype": "float64", "max": worst64})
            if worst64 > 1e-9:
                problems.append(f"float64 {name} on {dev}: relative error {worst64:.3g} > 1e-9 ({method})")
    return {"ok": not problems, "archs": len(archs), "batch": batch, "image_side": side,
            "problems": problems, "summary": rows}


# ---------------------------------------------------------------------------------------------
# Steps 5 and 6: whole-space timing and its scores


def _data(args):
    """The data path of the timing step (the CIFAR-10 sample) and its description, or Gaussian."""
    shared = os.environ.get("NWOT_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")
    path = os.path.join(shared, "cifar10_sample.npz")
    if os.path.exists(path) and not args.gaussian:
        return path, f"CIFAR-10 images from {os.path.normpath(path)}"
    return None, "Gaussian N(0, 1) inputs (no ../shared/data/cifar10_sample.npz)"


def timing(args, report: Report) -> dict:
    import torch

    from nwot_fast.config import ScoreConfig
    from nwot_fast.nb201 import representative_index
    from nwot_fast.nb201.index import arch_at
    from nwot_fast.scan import scan

    dev = torch.device(args.device)
    data, source = _data(args)
    total = args.space
    sample_n = min(args.sample, total)
    step = total / sample_n
    sample = sorted({int(i * step) for i in range(sample_n)})
    classes = len({representative_index(arch_at(i)) for i in range(total)})
    figures = {"data": source, "batch": args.batch, "archs_in_space": total, "classes_in_space": classes,
               "entry": "nwot_fast.scan (nwot-fast scan), dedup False and True", "methods": {}}
    scores = {}

    def run(method, indices, dedup=False):
        config = ScoreConfig(method=method, data=data, batch_size=args.batch, seed=0, device=str(dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = scan(indices, config=config, dedup=dedup)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return dict(zip(result.indices.tolist(), result.scores.tolist())), time.perf_counter() - t0, result

    for k, method in enumerate(("jacob_cov", "hook_logdet")):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        run(method, sample[:4])  # warm-up: cuDNN plans, allocator, the seed's weights on the device
        res, t_sample, _ = run(method, sample)
        per_arch = t_sample / len(sample)
        rest = [i for i in range(total) if i not in res]
        predicted_rest = per_arch * len(rest)
        left = min(args.time_budget - (time.monotonic() - report.timing_start),
                   args.deadline - (time.monotonic() - START) - 20)
        share = left / (2 - k)  # what this method may use of the time left
        m = {"sample_archs": len(sample), "sample_seconds": round(t_sample, 2),
             "ms_per_arch": round(1e3 * per_arch, 3), "extrapolated_whole_space_seconds": round(per_arch * total, 1),
             "extrapolated_dedup_seconds": round(per_arch * classes, 1)}
        if predicted_rest <= share:
            got_rest, t_rest, _ = run(method, rest)
            res.update(got_rest)
            m["whole_space_seconds"] = round(t_sample + t_rest, 1)
            m["measured"] = "whole space"
            left = min(args.time_budget - (time.monotonic() - report.timing_start),
                       args.deadline - (time.monotonic() - START) - 20)
            if per_arch * classes <= left / (2 - k):
                _, t_dedup, result = run(method, range(total), dedup=True)
                m["dedup_seconds"] = round(t_dedup, 1)
                m["dedup_scored"] = int(result.computed)
        else:
            m["measured"] = (f"SAMPLE ONLY: {len(sample)} archs measured, whole space extrapolated "
                             f"(predicted {predicted_rest:.0f} s for the rest, {share:.0f} s left)")
        if dev.type == "cuda":
            m["peak_gpu_memory_MiB"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        figures["methods"][method] = m
        scores[method] = res
        log(f"  {method}: {m}")
    report.scores = scores
    return figures


def write_scores(args, report: Report) -> dict:
    from nwot_fast.nb201.index import arch_at

    scores = getattr(report, "scores", None)
    if not scores:
        raise RuntimeError("no scores: the timing step did not finish")
    indices = sorted(set().union(*[set(s) for s in scores.values()]))
    path = os.path.join(args.out, "nb201_scores.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "arch", "jacob_cov", "hook_logdet"])
        for i in indices:
            w.writerow([i, str(arch_at(i))] + [repr(scores[m].get(i, "")) for m in ("jacob_cov", "hook_logdet")])
    return {"csv": path, "rows": len(indices), "whole_space": len(indices) == args.space}


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for gpu_check.json, gpu_check.md, nb201_scores.csv")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, no build (CI)")
    p.add_argument("--no-build", action="store_true", help="use the extension as installed")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for the whole-space timing (default 240; smoke 60); beyond it the timed "
                        "sample is extrapolated")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for the whole run, build included (default 470; smoke 600)")
    p.add_argument("--gaussian", action="store_true", help="Gaussian inputs even if the CIFAR-10 sample exists")
    args = p.parse_args(argv)
    args.device = "cpu" if args.smoke else "cuda"
    args.time_budget = args.time_budget if args.time_budget is not None else (60.0 if args.smoke else 240.0)
    args.deadline = args.deadline if args.deadline is not None else (600.0 if args.smoke else 470.0)
    args.batch = 8 if args.smoke else 128
    args.space = 12 if args.smoke else SPACE  # smoke: the first 12 archs stand for the space
    args.sample = 4 if args.smoke else 256
    if args.smoke:
        args.gaussian = True
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)

    report = Report(args.out, args)
    import torch

    report.data["torch"] = torch.__version__
    report.data["python"] = platform.python_version()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            log("no CUDA device: use --smoke on a machine without a GPU")
            report.data["device"] = "none"
            report.step("backend", lambda: {"ok": False, "error": "torch.cuda.is_available() is False"})
            return 1
        report.data["device"] = f"{torch.cuda.get_device_name(0)} (capability {torch.cuda.get_device_capability(0)})"
    else:
        report.data["device"] = f"CPU ({os.cpu_count()} cores)"
    report.data["cores"] = os.cpu_count()
    if not (args.smoke or args.no_build):
        report.step("build", build, args)
    report.step("backend", backend, args)
    report.step("op_tests", op_tests, args)
    report.step("cases", cases, args)
    report.step("precision", precision, args)
    report.timing_start = time.monotonic()
    report.step("timing", timing, args, report)
    report.step("scores", write_scores, args, report)
    report.write()
    log(f"done: {'ok' if report.data['ok'] else 'FAILED'}; report in {args.out}/gpu_check.md")
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
