"""The loader of nwot_fast._C: lazy, checked against the running torch, one clear warning and
the fallback when the extension cannot be used."""

from __future__ import annotations

import glob
import importlib.machinery
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import nwot_fast
from nwot_fast import _ext, ops

PACKAGE_DIR = os.path.dirname(nwot_fast.__file__)
BUILT = bool(glob.glob(os.path.join(PACKAGE_DIR, "_C*.so")) or glob.glob(os.path.join(PACKAGE_DIR, "_C*.pyd")))


@pytest.fixture
def fresh_loader(monkeypatch):
    """Forget the loader's decision before and after the test (the .so itself stays loaded);
    no compiling on first use inside these tests."""
    monkeypatch.setenv("NWOT_FAST_NO_JIT", "1")
    _ext._reset_for_tests()
    yield monkeypatch
    monkeypatch.undo()
    _ext._reset_for_tests()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _ext.backend_info()


@pytest.mark.skipif(not BUILT, reason="nwot_fast._C is not built in this checkout (pip install --no-build-isolation -e .)")
def test_backend_info_reports_compiled_cpu_backend():
    with warnings.catch_warnings():
        warnings.simplefilter("error", _ext.ExtensionWarning)  # a built extension must load cleanly
        info = nwot_fast.backend_info()
    assert info["compiled"] is True and info["in_use"] == "compiled" and info["reason"] is None
    assert info["route"] == "aot" and info["library"].startswith(PACKAGE_DIR) and info["build_seconds"] is None
    assert "cpu" in info["backends"]
    assert ("cuda" in info["backends"]) == (info["cuda_built_with"] is not None)
    assert info["torch_built_against"] == torch.__version__
    assert info["torch_running"] == torch.__version__


@pytest.mark.slow  # a subprocess
def test_import_does_not_load_the_extension():
    code = (
        "import sys, nwot_fast, nwot_fast.ops\n"
        "assert 'nwot_fast._C' not in sys.modules, 'loaded at import'\n"
        "import torch\n"
        "nwot_fast.ops.pack_codes(torch.ones(2, 3))\n"
        "info = nwot_fast.backend_info()\n"
        "assert ('nwot_fast._C' in sys.modules) == info['compiled'], info\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(PACKAGE_DIR), timeout=120)


def _one_warning(records):
    found = [r for r in records if issubclass(r.category, _ext.ExtensionWarning)]
    assert len(found) == 1, [str(r.message) for r in found]
    return str(found[0].message)


@pytest.mark.skipif(not BUILT, reason="nwot_fast._C is not built in this checkout")
def test_simulated_torch_mismatch_warns_once_and_falls_back(fresh_loader):
    fresh_loader.setattr(_ext, "_running_versions", lambda: ("1.0.0", None))
    J = torch.randn(3, 8, 50, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        info = _ext.backend_info()
        got = ops.jacob_cov_score(J)
        ops.pack_codes(torch.ones(2, 3))
        _ext.backend_info()
    message = _one_warning(records)
    assert f"built against torch {torch.__version__} but torch 1.0.0 is running" in message
    assert "fallback" in message and "pip install --no-build-isolation ." in message
    assert info["compiled"] is False and info["in_use"] == "fallback" and info["backends"] == []
    assert info["reason"] and "1.0.0" in info["reason"]
    assert torch.equal(got, ops.jacob_cov_score_fallback(J))


def test_missing_extension_warns_once_and_falls_back(fresh_loader):
    real_import = _ext.importlib.import_module

    def failing_import(name, *args, **kwargs):
        if name == "nwot_fast._C":
            raise ImportError("libc10.so: cannot open shared object file (simulated)")
        return real_import(name, *args, **kwargs)

    fresh_loader.setattr(_ext.importlib, "import_module", failing_import)
    fresh_loader.setattr(_ext, "_loaded", None)  # as in a process that has not loaded it yet
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        info = _ext.backend_info()
        K = ops.hamming_kernel(*ops.pack_layers([torch.randn(4, 100)], [1]))
        ops.logdet_score(K)
    message = _one_warning(records)
    assert "importing nwot_fast._C failed (ImportError: libc10.so" in message
    assert "could not be compiled either: compiling on first use is turned off (NWOT_FAST_NO_JIT=1)" in message
    assert info["compiled"] is False and info["in_use"] == "fallback" and info["route"] == "fallback"
    assert K.shape == (1, 4, 4) and torch.all(torch.diagonal(K[0]) == 100)


def test_mismatch_reason_rules():
    cpu_build = _ext.parse_build_info("torch=2.13.0+cpu;backends=cpu;cuda=none;openmp=yes")
    assert cpu_build == {"torch": "2.13.0+cpu", "backends": "cpu", "cuda": "none", "openmp": "yes"}
    assert _ext.mismatch_reason(cpu_build, "2.13.0+cpu", None) is None
    assert _ext.mismatch_reason(cpu_build, "2.13.1", "13.0") is None  # same minor release: same ABI
    assert "built against torch 2.13.0+cpu but torch 2.14.1" in _ext.mismatch_reason(cpu_build, "2.14.1", None)
    cuda_build = _ext.parse_build_info("torch=2.14.1+cu130;backends=cpu,cuda;cuda=13.0;cusolver=12004")
    assert _ext.mismatch_reason(cuda_build, "2.14.1+cu130", "13.0") is None
    assert "built with CUDA 13.0 but torch uses CUDA 12.8" in _ext.mismatch_reason(cuda_build, "2.14.1+cu128", "12.8")
    # Issue 11 item 10: the full CUDA version and the run-time cuSOLVER, not only the major.
    assert _ext.mismatch_reason(cuda_build, "2.14.1+cu132", "13.2", "12100") is None  # newer at run time: fine
    newer_build = dict(cuda_build, cuda="13.2")
    assert "built with CUDA 13.2, newer than the CUDA 13.0 libraries" in _ext.mismatch_reason(newer_build, "2.14.1", "13.0")
    assert ("built against cuSOLVER 12.0.4 but the cuSOLVER found at run time is 11.7.0, older"
            in _ext.mismatch_reason(cuda_build, "2.14.1+cu130", "13.0", "11700"))
    assert _ext.mismatch_reason(cuda_build, "2.14.1+cu130", "13.0", "12004") is None
    assert "has CUDA kernels" in _ext.mismatch_reason(cuda_build, "2.14.1+cpu", None)
    # A record written by setup.py (None for what a CPU build lacks) reads the same way.
    assert _ext.mismatch_reason({"torch": "2.13.0+cpu", "backends": "cpu", "cuda": None, "cusolver": None},
                                "2.13.0+cpu", None) is None


def test_import_errors_are_explained():
    exc = ImportError("/x/_C.abi3.so: undefined symbol: cusolverDnXsyevBatched")
    text = _ext.explain_import_error(exc)
    assert "importing nwot_fast._C failed (ImportError: /x/_C.abi3.so: undefined symbol" in text
    assert "the cuSOLVER library loaded now lacks cusolverDnXsyevBatched" in text
    assert "the torch library loaded now lacks _ZN3c10" in _ext.explain_import_error(
        ImportError("undefined symbol: _ZN3c106detail14torchCheckFail"))
    assert _ext.explain_import_error(OSError("libc10.so: cannot open")) == (
        "importing nwot_fast._C failed (OSError: libc10.so: cannot open)")


def _fake_aot_package(tmp_path, monkeypatch, record):
    """nwot_fast._C as found on disk: a library path and its build record (never imported)."""
    library = tmp_path / "_C.abi3.so"
    library.write_bytes(b"not a library")
    (tmp_path / "_C.build.json").write_text(json.dumps(record))
    spec = importlib.machinery.ModuleSpec("nwot_fast._C", None, origin=str(library))
    real_find_spec = _ext.importlib.util.find_spec
    monkeypatch.setattr(_ext.importlib.util, "find_spec",
                        lambda name, *a: spec if name == "nwot_fast._C" else real_find_spec(name, *a))
    imported = []
    monkeypatch.setattr(_ext.importlib, "import_module", lambda name, *a: imported.append(name))
    monkeypatch.setattr(_ext, "_loaded", None)
    return imported


def test_build_record_is_checked_before_import(fresh_loader, tmp_path):
    """An older run-time cuSOLVER than the build's (issue 11 item 10): the library is not
    dlopen'ed at all (it would fail on a missing symbol and take the CPU kernels with it)."""
    record = {"torch": "2.14.1+cu130", "backends": "cpu,cuda", "cuda": "13.0", "cusolver": "12004"}
    imported = _fake_aot_package(tmp_path, fresh_loader, record)
    fresh_loader.setattr(_ext, "_running_versions", lambda: ("2.14.1+cu130", "13.0"))
    fresh_loader.setattr(_ext, "runtime_cusolver_version", lambda: "11700")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        info = _ext.backend_info()
    message = _one_warning(records)
    assert imported == []
    assert "nwot_fast._C is not used: its CUDA kernels were built against cuSOLVER 12.0.4" in message
    assert "NWOT_FAST_NO_JIT=1" in message and "fallback" in message
    assert info["route"] == "fallback" and info["compiled"] is False


@pytest.mark.skipif(not BUILT, reason="nwot_fast._C is not built in this checkout")
def test_unusable_aot_build_is_replaced_by_the_first_use_build(fresh_loader, tmp_path):
    """With compiling on first use available, an unusable ahead-of-time build leads to the
    cached first-use build (faked here: the real operators are already loaded), told why."""
    imported = _fake_aot_package(tmp_path, fresh_loader, {"torch": "1.0.0", "backends": "cpu"})
    fresh_loader.delenv("NWOT_FAST_NO_JIT")
    fresh_loader.setattr(_ext._jit, "unavailable_reason", lambda: None)
    fresh_loader.setattr(_ext, "_namespace_registered", lambda: False)  # the real _C is loaded here
    plan = {"directory": str(tmp_path / "cache" / "key")}
    fresh_loader.setattr(_ext._jit, "plan", lambda: plan)
    calls = []

    def fake_load_or_build(the_plan, why, allow_build=True):
        calls.append((the_plan, why, allow_build))
        return {"library": os.path.join(the_plan["directory"], "nwot_fast_ops.so"), "built_now": True, "build_seconds": 1.5}

    fresh_loader.setattr(_ext._jit, "load_or_build", fake_load_or_build)
    with warnings.catch_warnings():
        warnings.simplefilter("error", _ext.ExtensionWarning)
        info = _ext.backend_info()
    assert imported == []
    assert calls == [(plan, f"nwot_fast._C is not used: it was built against torch 1.0.0 but torch {torch.__version__} is running", True)]
    assert info["compiled"] is True and info["route"] == "jit" and info["in_use"] == "compiled"
    assert info["build_dir"] == plan["directory"] and info["build_seconds"] == 1.5
    assert info["library"] == os.path.join(plan["directory"], "nwot_fast_ops.so")


def test_first_use_build_needs_a_compiler_and_ninja(monkeypatch):
    monkeypatch.delenv("NWOT_FAST_NO_JIT", raising=False)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert "no C++ compiler" in _ext._jit.unavailable_reason() and "no-such-compiler-xyz" in _ext._jit.unavailable_reason()
    monkeypatch.setenv("CXX", sys.executable)  # any executable will do for the check
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    assert "ninja" in _ext._jit.unavailable_reason()
    monkeypatch.setenv("NWOT_FAST_NO_JIT", "1")
    assert _ext._jit.unavailable_reason() == "compiling on first use is turned off (NWOT_FAST_NO_JIT=1)"


def test_info_build_exit_codes(fresh_loader, capsys):
    """`nwot-fast info --build`: 0 with compiled operators, 3 (a resource problem) without."""
    from nwot_fast import cli

    fresh_loader.setattr(_ext, "_loaded", None)
    fresh_loader.setattr(_ext, "_try_aot", lambda *a: (None, "nwot_fast._C is not built (simulated)"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _ext.ExtensionWarning)
        assert cli.main(["info", "--build", "--json"]) == 3
    backend = json.loads(capsys.readouterr().out)["backend"]
    assert backend["route"] == "fallback" and "NWOT_FAST_NO_JIT=1" in backend["reason"]
    assert cli.main(["info", "--json"]) == 0  # without --build, informative only
    capsys.readouterr()


def test_backend_info_without_build_does_not_compile(fresh_loader):
    """`nwot-fast info` (build=False) reports a needed first-use build instead of running it."""
    fresh_loader.setattr(_ext, "_loaded", None)
    fresh_loader.setattr(_ext, "_try_aot", lambda *a: (None, "nwot_fast._C is not built (simulated)"))
    fresh_loader.delenv("NWOT_FAST_NO_JIT")
    fresh_loader.setattr(_ext._jit, "unavailable_reason", lambda: None)
    fresh_loader.setattr(_ext, "_namespace_registered", lambda: False)
    fresh_loader.setattr(_ext._jit, "plan", lambda: {"directory": "/cache/nwot_fast/key"})
    calls = []
    fresh_loader.setattr(_ext._jit, "load_or_build", lambda plan, why, allow_build=True: calls.append(allow_build))
    info = _ext.backend_info(build=False)
    assert calls == [False]
    assert info["in_use"] == "not built yet" and info["route"] == "jit" and info["compiled"] is False
    assert info["build_dir"] == "/cache/nwot_fast/key" and set(info) >= {"backends", "library", "torch_running"}
    assert _ext._state is None  # nothing decided: the next use may still build


@pytest.mark.skipif(not BUILT, reason="nwot_fast._C is not built in this checkout")
def test_no_second_library_when_the_namespace_is_taken(fresh_loader):
    """A library that registered torch.ops.nwot_fast but is not accounted for (a half-loaded
    _C) rules out loading a first-use build, which would abort the process."""
    _ext.backend_info()  # the real _C registers the namespace
    fresh_loader.setattr(_ext, "_loaded", None)
    fresh_loader.delenv("NWOT_FAST_NO_JIT")
    fresh_loader.setattr(_ext._jit, "unavailable_reason", lambda: None)
    fresh_loader.setattr(_ext._jit, "load_or_build", lambda *a, **k: pytest.fail("must not load a second library"))
    info, reason, result = _ext._try_jit("simulated", allow_build=True)
    assert info is None and result is None and "already registered in this process" in reason
