"""Loader of the compiled operators ``nwot_fast._C``.

The extension is imported once, lazily, on the first use of an operator (never at
``import nwot_fast``). Its build information (``torch.ops.nwot_fast.build_info()``, from
csrc/version.cpp) is compared with the running torch: a binary built against another torch
release or another CUDA major version is not used. When the extension cannot be used, ONE
warning says why and :mod:`nwot_fast.ops` runs its pure-PyTorch fallback, which computes the
same results.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from typing import Dict, Optional, Tuple

import torch

_lock = threading.Lock()
_state: Optional[dict] = None


class ExtensionWarning(UserWarning):
    """The compiled extension could not be used; the pure-PyTorch fallback runs instead."""


def _running_versions() -> Tuple[str, Optional[str]]:
    """(torch version, CUDA version or None) of the running torch; patched by the loader tests."""
    return str(torch.__version__), torch.version.cuda


def parse_build_info(text: str) -> Dict[str, str]:
    """``"torch=2.13.0+cpu;backends=cpu;cuda=none"`` -> dict."""
    info = {}
    for part in text.split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            info[key.strip()] = value.strip()
    return info


def _release(version: str) -> Tuple[int, ...]:
    """``"2.13.0+cu130"`` -> (2, 13): the C++ ABI of torch changes between minor releases."""
    numbers = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        numbers.append(int(digits) if digits else -1)
    return tuple(numbers)


def mismatch_reason(info: Dict[str, str], torch_version: str, cuda_version: Optional[str]) -> Optional[str]:
    """Why a binary with build ``info`` cannot run under this torch, or None if it can."""
    built = info.get("torch", "unknown")
    if _release(built) != _release(torch_version):
        return (f"it was built against torch {built} but torch {torch_version} is running; "
                f"rebuild it with `pip install --no-build-isolation .`")
    built_cuda = info.get("cuda", "none")
    if "cuda" in info.get("backends", "") and cuda_version is not None:
        if built_cuda.split(".")[0] != cuda_version.split(".")[0]:
            return (f"its CUDA kernels were built with CUDA {built_cuda} but torch uses CUDA {cuda_version}; "
                    f"rebuild it with `pip install --no-build-isolation .`")
    return None


def _preload_torch_cuda_linalg() -> None:
    """The CUDA kernels use at::cuda::getCurrentCUDASolverDnHandle from libtorch_cuda_linalg,
    which torch loads only on first use; load it (globally) before _C needs its symbols."""
    if torch.version.cuda is None:
        return
    import ctypes
    import os

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cuda_linalg.so")
    if os.path.exists(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _load() -> dict:
    torch_version, cuda_version = _running_versions()
    state = {
        "compiled": False,
        "backends": [],
        "torch_built_against": None,
        "torch_running": torch_version,
        "cuda_built_with": None,
        "eigensolver_cuda": None,
        "reason": None,
    }
    try:
        _preload_torch_cuda_linalg()
        importlib.import_module("nwot_fast._C")
        info = parse_build_info(torch.ops.nwot_fast.build_info())
    except Exception as exc:  # any import failure means: use the fallback, and say why
        state["reason"] = f"nwot_fast._C could not be loaded ({type(exc).__name__}: {exc})"
    else:
        state["torch_built_against"] = info.get("torch")
        state["cuda_built_with"] = None if info.get("cuda", "none") == "none" else info.get("cuda")
        state["eigensolver_cuda"] = info.get("eigensolver")
        reason = mismatch_reason(info, torch_version, cuda_version)
        if reason is None:
            state["compiled"] = True
            state["backends"] = [b for b in info.get("backends", "").split(",") if b]
            from nwot_fast import ops  # fake kernels need the schemas that _C just registered

            ops._register_fakes()
        else:
            state["reason"] = "nwot_fast._C is not used: " + reason
    if state["reason"] is not None:
        warnings.warn(
            f"{state['reason']}. The pure-PyTorch fallback of nwot_fast.ops is used instead "
            f"(same results, slower).",
            ExtensionWarning,
            stacklevel=3,
        )
    return state


def _get() -> dict:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def available(device_type: str = "cpu") -> bool:
    """Whether the compiled operators are in use for tensors on ``device_type``."""
    state = _get()
    return state["compiled"] and device_type in state["backends"]


def backend_info() -> dict:
    """What is compiled and in use.

    Keys: ``compiled`` (bool: ``nwot_fast._C`` loaded and matches the running torch),
    ``backends`` (compiled backends in use, e.g. ``["cpu", "cuda"]``), ``in_use``
    (``"compiled"`` or ``"fallback"``), ``torch_built_against``, ``torch_running``,
    ``cuda_built_with``, ``eigensolver_cuda``, ``reason`` (why the extension is not used,
    else None).
    """
    state = dict(_get())
    state["backends"] = list(state["backends"])
    state["in_use"] = "compiled" if state["compiled"] else "fallback"
    return state


def _reset_for_tests() -> None:
    """Forget the loader's decision so that a test can load again (the .so stays loaded)."""
    global _state
    with _lock:
        _state = None
