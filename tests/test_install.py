"""`pip install .` as a new user types it (issue 15): a fresh venv with only torch and numpy,
an isolated build (no torch in it, so no compiled operators at install), then the operators
compiled on first use (once, this machine's CPU kernel variant only), the build reused by the
next process, and a damaged build not loaded.

The venv is a plain one (not --system-site-packages: it would see the development install). It
gets the running torch and numpy, with the packages they require, through a .pth file that names
a folder of links to them: the same installed files as `pip install torch==<this version>
numpy` would unpack (23 s of the suite's time, measured), and pip sees them installed. Skipped
for a CUDA torch (its first use would compile the CUDA kernels as well).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from nwot_fast import _build, _jit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_3x3~0|skip_connect~1|avg_pool_3x3~2|"
SCORE = textwrap.dedent(f"""
    import json, sys, torch
    torch.set_num_threads(1)
    import nwot_fast
    assert nwot_fast.__file__.startswith(sys.prefix), nwot_fast.__file__  # the installed copy
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = [nwot_fast.score_arch({ARCH!r}, x, method=m) for m in ("jacob_cov", "hook_logdet")]
    print(json.dumps({{"scores": scores, "backend": nwot_fast.backend_info()}}))
""")


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _link_installed(names, folder, site_dir):
    """Links in ``folder`` to the installed distributions ``names`` and everything they require
    (their files and metadata), and a .pth file in ``site_dir`` that puts ``folder`` on the path."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        base = dist.locate_file("")
        for top in {f.parts[0] for f in dist.files or () if f.parts[0] != ".."}:
            link = os.path.join(folder, top)
            if not os.path.lexists(link):
                os.symlink(os.path.join(base, top), link)
    with open(os.path.join(site_dir, "linked_from_the_test_runner.pth"), "w") as f:
        f.write(str(folder) + "\n")


def _checkout_copy(dst):
    """The files of the checkout that git would commit (no build outputs, no _C)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = os.path.join(REPO, name)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dst, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, name))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if torch.version.cuda is not None:
        pytest.skip("needs a CPU torch: with a CUDA one the first use would compile the CUDA kernels too (minutes)")
    if shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")):
        pytest.skip("needs a git checkout to copy")
    reason = _jit.unavailable_reason({"PATH": os.environ.get("PATH", "")})
    if reason is not None and "ninja" not in reason:  # ninja comes with the install
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("install")
    source, venv = root / "source", root / "venv"
    _checkout_copy(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NWOT_FAST", "TORCH_EXTENSIONS"))}
    _run([sys.executable, "-m", "venv", str(venv)], env=env)
    site = _run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                env=env).stdout.strip()
    (root / "linked").mkdir()
    _link_installed(["torch", "numpy"], root / "linked", site)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    install = _run(pip + [str(source)], env=env)  # as the README says: no build-isolation flags
    package = os.path.join(site, "nwot_fast")
    env["NWOT_FAST_BUILD_DIR"] = str(root / "cache")
    env["MAX_JOBS"] = "2"
    run_dir = root / "run"  # not the source copy: its nwot_fast must not shadow the installed one
    run_dir.mkdir()
    return {"python": str(venv / "bin" / "python"), "env": env, "cwd": str(run_dir), "package": package,
            "install": install, "cache": str(root / "cache")}


def _score(installed, wait=True):
    cmd = [installed["python"], "-c", SCORE]
    if not wait:
        return subprocess.Popen(cmd, env=installed["env"], cwd=installed["cwd"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    result = _run(cmd, env=installed["env"], cwd=installed["cwd"])
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _finish(proc):
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1]), err


def test_isolated_install_compiles_on_first_use_and_reuses_the_build(installed):
    package = installed["package"]
    assert not [n for n in os.listdir(package) if n.startswith("_C")], "an isolated build has no torch to compile with"
    assert os.path.isfile(os.path.join(package, "csrc", "nwot.cpp"))
    assert os.path.isfile(os.path.join(package, "csrc", "cpu", "hook_logdet_cpu.cpp"))

    # Two processes at once (the workers of a parallel scan): one compiles, the other waits.
    procs = [_score(installed, wait=False) for _ in range(2)]
    results = [_finish(p) for p in procs]
    backends = [r[0]["backend"] for r in results]
    for backend in backends:
        assert backend["in_use"] == "compiled" and backend["route"] == "jit", backend
        assert backend["build_dir"].startswith(installed["cache"]) and "cpu" in backend["backends"]
    assert sorted(b["build_seconds"] is None for b in backends) == [False, True], backends
    stderr = "".join(r[1] for r in results)
    assert stderr.count("compiling its C++ operators") == 1, stderr
    assert "nwot_fast._C is not built" in stderr
    assert results[0][0]["scores"] == results[1][0]["scores"]

    # The same scores as this checkout's own operators (or its pure-PyTorch fallback) give.
    import nwot_fast

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        expected = [nwot_fast.score_arch(ARCH, x, method=m) for m in ("jacob_cov", "hook_logdet")]
    finally:
        torch.set_num_threads(threads)
    assert results[0][0]["scores"] == pytest.approx(expected, rel=1e-7)

    # The first-use build holds one CPU kernel variant, the one this machine's processes run
    # (the AOT build holds all three); a process allowed less refuses it with a clear error.
    names = sorted((n.lower() for n in _build.CPU_VARIANTS), key=lambda n: _build.CPU_VARIANTS[n.upper()])
    built = backends[0]["cpu_kernels_built"]
    assert all(b["cpu_kernels_built"] == b["cpu_kernels"] == built for b in backends), backends
    # ATen's choice here, or the baseline where the compiler builds no x86 variants (not GCC).
    assert built in (names[_build.cpu_variant(torch.backends.cpu.get_cpu_capability())], "default"), backends
    variant = names.index(built)
    if variant > 0:
        refuse = textwrap.dedent(f"""
            import torch
            torch.ops.load_library({backends[0]['library']!r})
            assert "cpu_kernels=none" in torch.ops.nwot_fast.build_info()
            try:
                torch.ops.nwot_fast.pack_codes(torch.randn(8, 16, 4, 4))
            except RuntimeError as e:
                print(e)
        """)
        env = dict(installed["env"], ATEN_CPU_CAPABILITY=names[variant - 1])
        out = _run([installed["python"], "-c", refuse], env=env, cwd=installed["cwd"]).stdout
        assert f"holds only the {names[variant]} CPU kernels" in out and f"at most {names[variant - 1]}" in out, out

    # A later process loads the cached build: nothing compiled, nothing rewritten.
    build_dir = backends[0]["build_dir"]
    library = backends[0]["library"]
    stamp = os.path.join(build_dir, _jit.STAMP)
    before = (os.stat(library).st_mtime_ns, os.stat(stamp).st_mtime_ns)
    third, err = _score(installed)
    assert third["backend"]["route"] == "jit" and third["backend"]["build_seconds"] is None
    assert third["backend"]["library"] == library and "compiling" not in err
    assert (os.stat(library).st_mtime_ns, os.stat(stamp).st_mtime_ns) == before

    # A damaged library is found by its stamp (the library's SHA-256) and not loaded: asked
    # without building, the installed package reports a build as needed. (Compiled once per
    # suite: that the entry is then rebuilt, for each kind of damage, is test_jit's, with a fake
    # compiler; this is the real library and stamp of an installed package.)
    with open(library, "r+b") as f:
        f.seek(os.path.getsize(library) // 2)
        f.write(b"\0" * 4096)
    ask = "import json, nwot_fast; print(json.dumps(nwot_fast.backend_info(build=False)))"
    result = _run([installed["python"], "-c", ask], env=installed["env"], cwd=installed["cwd"])
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["in_use"] == "not built yet" and info["build_dir"] == build_dir, info
    assert "compiling" not in result.stderr and os.stat(stamp).st_mtime_ns == before[1]
