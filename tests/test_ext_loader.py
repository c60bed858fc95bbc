"""The loader of nwot_fast._C: lazy, checked against the running torch, one clear warning and
the fallback when the extension cannot be used."""

from __future__ import annotations

import glob
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
    """Forget the loader's decision before and after the test (the .so itself stays loaded)."""
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
    assert "cpu" in info["backends"]
    assert ("cuda" in info["backends"]) == (info["cuda_built_with"] is not None)
    assert info["torch_built_against"] == torch.__version__
    assert info["torch_running"] == torch.__version__


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
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        info = _ext.backend_info()
        K = ops.hamming_kernel(*ops.pack_layers([torch.randn(4, 100)], [1]))
        ops.logdet_score(K)
    message = _one_warning(records)
    assert "nwot_fast._C could not be loaded (ImportError: libc10.so" in message
    assert info["compiled"] is False and info["in_use"] == "fallback"
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
