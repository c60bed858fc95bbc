"""The first-use build's cache (nwot_fast._jit) with the compiler faked: a stamp that must
match the library, a damaged entry rebuilt, a failed build not retried, the lock released.
The real compile is in test_install.py."""

from __future__ import annotations

import json
import os

import pytest

from nwot_fast import _build, _jit


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """_jit with the compile and the dlopen replaced by recorders; returns (plan, calls)."""
    calls = {"build": 0, "load": [], "fail": False}

    def run_build(spec, directory):
        calls["build"] += 1
        if calls["fail"]:
            raise RuntimeError("Error building extension 'nwot_fast_ops': c++: fatal error (simulated)")
        library = os.path.join(directory, _jit.LIBRARY_NAME + ".so")
        with open(library, "wb") as f:
            f.write(b"library bytes %d" % calls["build"])
        calls["load"].append(library)
        return library

    monkeypatch.setattr(_jit, "_run_build", run_build)
    monkeypatch.setattr(_jit.torch.ops, "load_library", lambda path: calls["load"].append(path))
    plan = {"spec": {"with_cuda": False, "record": {"torch": "2.13.0"}}, "record": {"torch": "2.13.0"},
            "key": "k", "directory": str(tmp_path / "nwot_fast" / "k")}
    return plan, calls


def test_build_once_then_load_from_the_cache(fake_compiler, capfd):
    plan, calls = fake_compiler
    first = _jit.load_or_build(plan, "nwot_fast._C is not built")
    err = capfd.readouterr().err
    assert first["built_now"] is True and calls["build"] == 1
    assert err.count("compiling its C++ operators") == 1 and "nwot_fast._C is not built" in err
    assert "compiled in" in err
    stamp = json.load(open(os.path.join(plan["directory"], _jit.STAMP)))
    assert stamp["library"] == _jit.LIBRARY_NAME + ".so" and stamp["record"] == {"torch": "2.13.0"}
    second = _jit.load_or_build(plan, "unused")
    assert second == {"library": first["library"], "built_now": False, "build_seconds": None}
    assert calls["build"] == 1 and calls["load"][-1] == first["library"]
    assert capfd.readouterr().err == ""  # nothing announced when the cache serves
    assert _jit.load_or_build(plan, "unused", allow_build=False)["built_now"] is False


@pytest.mark.parametrize("damage", ["library bytes", "library missing", "stamp missing", "stamp garbage"])
def test_damaged_cache_entry_is_rebuilt_not_loaded(fake_compiler, capfd, damage):
    plan, calls = fake_compiler
    library = _jit.load_or_build(plan, "first")["library"]
    stamp = os.path.join(plan["directory"], _jit.STAMP)
    if damage == "library bytes":
        with open(library, "r+b") as f:
            f.write(b"X")
    elif damage == "library missing":
        os.remove(library)
    elif damage == "stamp missing":
        os.remove(stamp)
    else:
        with open(stamp, "w") as f:
            f.write("{not json")
    capfd.readouterr()
    loads_before = len(calls["load"])
    assert _jit.load_or_build(plan, "second", allow_build=False) is None  # not loaded, not built
    assert len(calls["load"]) == loads_before and calls["build"] == 1
    again = _jit.load_or_build(plan, "second")
    assert again["built_now"] is True and calls["build"] == 2
    assert "incomplete or damaged, so it is rebuilt" in capfd.readouterr().err
    assert _jit.cached_library(plan["directory"]) == library


def test_failed_build_leaves_its_log_and_is_not_retried(fake_compiler):
    plan, calls = fake_compiler
    calls["fail"] = True
    with pytest.raises(_jit.JitBuildError, match=r"compiling the operators failed \(RuntimeError: .*simulated\)"):
        _jit.load_or_build(plan, "first")
    log = os.path.join(plan["directory"], _jit.ERROR_LOG)
    assert "fatal error (simulated)" in open(log).read()
    with pytest.raises(_jit.JitBuildError, match="failed before"):
        _jit.load_or_build(plan, "second")
    assert calls["build"] == 1
    # The lock was released both times: another caller gets it at once.
    import fcntl

    with open(plan["directory"] + ".lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_cache_key_and_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("NWOT_FAST_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("FORCE_ONLY_CPU", "1")
    plan = _jit.plan()
    assert plan["directory"] == os.path.join(str(tmp_path), "nwot_fast", plan["key"])
    torch_release = _jit.torch.__version__.split("+")[0]
    assert plan["key"].startswith(f"torch{torch_release}-cpu-py")
    assert plan["record"]["sources_sha256"] == _build.source_digest(_build.find_csrc(_jit.package_dir()))
    assert plan["spec"]["sources"][0].endswith(os.path.join("csrc", "nwot.cpp"))
    monkeypatch.setenv("NWOT_FAST_BUILD_DIR", str(tmp_path / "other"))
    assert _jit.plan()["key"] == plan["key"]  # the key depends on what is built, not where


@pytest.mark.parametrize("capability, variant", [("AVX512", 2), ("AVX2", 1), ("DEFAULT", 0), ("SVE256", 0)])
def test_a_first_use_build_compiles_the_cpu_variant_of_this_machine(monkeypatch, tmp_path, capability, variant):
    """One CPU kernel variant on first use, ATen's choice here; its number is in the defines and
    the record, so a process that chooses another variant gets another cache entry."""
    monkeypatch.setenv("NWOT_FAST_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("FORCE_ONLY_CPU", "1")
    keys = {}
    for cap in ("AVX512", capability):
        monkeypatch.setattr(_jit.torch.backends.cpu, "get_cpu_capability", lambda cap=cap: cap)
        keys[cap] = _jit.plan()
    plan = keys[capability]
    assert ("NWOT_CPU_ISA_ONLY", str(variant)) in plan["spec"]["define_macros"]
    assert plan["record"]["cpu_variant"] == variant
    assert (plan["key"] == keys["AVX512"]["key"]) == (variant == 2)
    # Ahead of time (setup.py, CMake): every variant, no such define.
    facts = _build.torch_facts()
    aot = _build.build_spec(_build.find_csrc(_jit.package_dir()), facts, {"FORCE_ONLY_CPU": "1"})
    assert not any(name == "NWOT_CPU_ISA_ONLY" for name, _ in aot["define_macros"]) and "cpu_variant" not in aot["record"]


def test_cpu_variant_names_and_a_bad_variant():
    assert [_build.cpu_variant(c) for c in ("DEFAULT", "AVX2", "AVX512", "avx512", "VSX", "ZVECTOR")] == [0, 1, 2, 2, 0, 0]
    facts = _build.torch_facts()
    with pytest.raises(ValueError, match="cpu_only_variant must be one of"):
        _build.build_spec(_build.find_csrc(_jit.package_dir()), facts, {}, cpu_only_variant=3)


def test_build_definition_is_torch_free():
    """setup.py loads _build.py by path in a build environment that may lack torch."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        f"spec = importlib.util.spec_from_file_location('b', {_build.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'nwot_fast' not in sys.modules\n"
        "print(m.cuda_arch_list({}, []), m.cuda_arch_list({}, [(9, 0), (8, 0)]), "
        "m.cuda_arch_list({'TORCH_CUDA_ARCH_LIST': '8.6'}, [(9, 0)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["9.0", "8.0;9.0", "8.6"]


def _fake_cuda_install(tmp_path):
    """A site-packages with the nvidia wheel layout, a torch lib dir and a CUDA toolkit: files only."""
    nv = tmp_path / "site" / "nvidia" / "cu13"
    (nv / "include").mkdir(parents=True)
    (nv / "lib").mkdir()
    (nv / "include" / "cusolverDn.h").write_text("")
    (nv / "include" / "cublas_v2.h").write_text("")
    (nv / "include" / "cusolver_common.h").write_text(
        "#define CUSOLVER_VER_MAJOR 12\n#define CUSOLVER_VER_MINOR 0\n#define CUSOLVER_VER_PATCH 4\n")
    for lib in ("libcusolver.so.12", "libcublas.so.13", "libcublasLt.so.13"):
        (nv / "lib" / lib).write_text("")
    torch_lib = tmp_path / "site" / "torch" / "lib"
    torch_lib.mkdir(parents=True)
    (torch_lib / "libtorch_cuda_linalg.so").write_text("")
    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime_api.h").write_text("#define CUDART_VERSION 13000\n")
    return {"torch_version": "2.14.1+cu130", "torch_cuda": "13.0", "cuda_home": str(toolkit),
            "visible_capabilities": [], "openmp": True, "torch_lib": str(torch_lib),
            "site_dirs": [str(tmp_path / "site")]}, nv


def test_cuda_build_spec_is_the_same_for_both_routes(tmp_path):
    """One definition: the ahead-of-time and first-use specs differ only in how run paths are
    written ($ORIGIN-relative for an installed _C, absolute for a cached build)."""
    facts, nv = _fake_cuda_install(tmp_path)
    csrc = _build.find_csrc(_jit.package_dir())
    aot = _build.build_spec(csrc, facts, {}, rpath_origin=str(tmp_path / "site" / "nwot_fast"))
    jit = _build.build_spec(csrc, facts, {"TORCH_CUDA_ARCH_LIST": "8.0;9.0"})
    assert aot["with_cuda"] and jit["with_cuda"]
    assert any(s.endswith(".cu") for s in aot["sources"]) and aot["sources"] == jit["sources"]
    assert aot["define_macros"] == jit["define_macros"] == [
        ("NDEBUG", None), ("NWOT_TORCH_VERSION", "2.14.1+cu130"), ("WITH_CUDA", None)]
    assert aot["cxx_flags"] == jit["cxx_flags"] and "-fopenmp" in aot["cxx_flags"]
    assert aot["nvcc_flags"] == jit["nvcc_flags"] == _build.NVCC_FLAGS
    assert aot["include_dirs"] == jit["include_dirs"] == [csrc, str(nv / "include")]
    assert [f for f in aot["link_flags"] if "rpath" not in f] == [f for f in jit["link_flags"] if "rpath" not in f] == [
        "-fopenmp", "-l:libcusolver.so.12", "-l:libcublas.so.13", "-ltorch_cuda_linalg"]
    assert "-Wl,-rpath,$ORIGIN/../torch/lib" in aot["link_flags"]
    assert "-Wl,-rpath,$ORIGIN/../nvidia/cu13/lib" in aot["link_flags"]
    assert f"-Wl,-rpath,{nv / 'lib'}" in jit["link_flags"]
    assert aot["record"] == dict(jit["record"], cuda_arch_list="9.0") == {
        "torch": "2.14.1+cu130", "backends": "cpu,cuda", "cuda": "13.0", "cusolver": "12004", "cuda_arch_list": "9.0"}
    assert jit["record"]["cuda_arch_list"] == "8.0;9.0"
    cpu_only = _build.build_spec(csrc, facts, {"FORCE_ONLY_CPU": "1"})
    assert not cpu_only["with_cuda"] and not any(s.endswith(".cu") for s in cpu_only["sources"])
    assert cpu_only["record"]["backends"] == "cpu" and cpu_only["nvcc_flags"] == []
    no_toolkit = dict(facts, cuda_home=None)
    assert not _build.build_spec(csrc, no_toolkit, {})["with_cuda"]
    assert _build.build_spec(csrc, no_toolkit, {"FORCE_CUDA": "1"})["with_cuda"]
