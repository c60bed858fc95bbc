"""Loader of the compiled operators (``torch.ops.nwot_fast.*``).

The operators are loaded once, lazily, on the first use of an operator (never at
``import nwot_fast``), by the first of three routes that works:

1. ``"aot"``: ``nwot_fast._C``, built ahead of time (``pip install --no-build-isolation .``).
   What it was built against (``_C.build.json`` beside it: torch, CUDA and cuSOLVER versions)
   is checked BEFORE it is imported, so that a library that cannot load under the running
   torch is never dlopen'ed; after the import, its build info (csrc/version.cpp) is checked
   again. An import failure is explained (which library lacks which symbol).
2. ``"jit"``: compiled on first use against the running torch by :mod:`nwot_fast._jit` (an
   isolated ``pip install .``, or when route 1 cannot be used), and cached.
3. ``"fallback"``: ONE warning says why neither worked, and :mod:`nwot_fast.ops` runs its
   pure-PyTorch fallback, which computes the same results.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import threading
import warnings
from typing import Dict, Optional, Tuple

import torch

from nwot_fast import _build, _jit

_lock = threading.Lock()
_state: Optional[dict] = None
# The library that registered torch.ops.nwot_fast in this process ({"route", "library",
# "build_dir"}): a namespace is registered once per process, so a second library cannot load.
_loaded: Optional[dict] = None

REBUILD_HINT = ("reinstall with `pip install --no-build-isolation .` against the running torch, or let "
                "nwot_fast compile on first use (unset NWOT_FAST_NO_JIT; needs a C++ compiler and ninja)")


class ExtensionWarning(UserWarning):
    """The compiled extension could not be used; the pure-PyTorch fallback runs instead."""


def _running_versions() -> Tuple[str, Optional[str]]:
    """(torch version, CUDA version or None) of the running torch; patched by the loader tests."""
    return str(torch.__version__), torch.version.cuda


@functools.lru_cache(maxsize=1)
def runtime_cusolver_version() -> Optional[str]:
    """``cusolverGetVersion()`` of the cuSOLVER library a CUDA build would load (the nvidia
    wheel's, else the system's), e.g. ``"12004"``; None when it cannot be told."""
    if torch.version.cuda is None:
        return None
    import ctypes
    import ctypes.util
    import glob

    candidates = [p for d in _build.nvidia_wheel_dirs()[1] for p in sorted(glob.glob(os.path.join(d, "libcusolver.so.*")))]
    found = ctypes.util.find_library("cusolver")
    candidates += [found] if found else []
    for path in candidates:
        try:
            version = ctypes.c_int()
            if ctypes.CDLL(path).cusolverGetVersion(ctypes.byref(version)) == 0:
                return str(version.value)
        except (OSError, AttributeError):
            continue
    return None


def parse_build_info(text: str) -> Dict[str, str]:
    """``"torch=2.13.0+cpu;backends=cpu;cuda=none"`` -> dict."""
    info = {}
    for part in text.split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            info[key.strip()] = value.strip()
    return info


def _numbers(version: str, count: int) -> Tuple[int, ...]:
    """``"2.13.0+cu130"`` -> (2, 13) for count 2."""
    numbers = []
    for piece in version.split("+")[0].split(".")[:count]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        numbers.append(int(digits) if digits else -1)
    return tuple(numbers)


def _cusolver_text(version: str) -> str:
    v = int(version)
    return f"{v // 1000}.{(v % 1000) // 100}.{v % 100}"


def mismatch_reason(info: Dict[str, Optional[str]], torch_version: str, cuda_version: Optional[str],
                    cusolver_runtime: Optional[str] = None) -> Optional[str]:
    """Why a library built as ``info`` says (build info or ``_C.build.json``) cannot run under
    this torch, or None if it can. The C++ ABI of torch changes between minor releases; a CUDA
    build needs the same CUDA major version and no older CUDA minor version or cuSOLVER at run
    time than it was compiled with (newer ones keep the functions it uses)."""
    built = info.get("torch") or "unknown"
    if _numbers(built, 2) != _numbers(torch_version, 2):
        return f"it was built against torch {built} but torch {torch_version} is running"
    if "cuda" not in (info.get("backends") or ""):
        return None
    if cuda_version is None:
        return f"it has CUDA kernels (built against torch {built}) but the running torch {torch_version} has no CUDA"
    built_cuda = info.get("cuda")
    if built_cuda and built_cuda != "none":
        b, r = _numbers(built_cuda, 2), _numbers(cuda_version, 2)
        if b[0] != r[0]:
            return f"its CUDA kernels were built with CUDA {built_cuda} but torch uses CUDA {cuda_version}"
        if b > r:
            return (f"its CUDA kernels were built with CUDA {built_cuda}, newer than the CUDA {cuda_version} "
                    f"libraries torch runs with (they may lack functions the build uses)")
    built_cusolver = info.get("cusolver")
    if built_cusolver and cusolver_runtime and int(cusolver_runtime) < int(built_cusolver):
        return (f"its CUDA kernels were built against cuSOLVER {_cusolver_text(built_cusolver)} but the cuSOLVER "
                f"found at run time is {_cusolver_text(cusolver_runtime)}, older: it lacks functions the build uses")
    return None


def explain_import_error(exc: BaseException) -> str:
    """What an import failure of nwot_fast._C means, in words."""
    text = f"importing nwot_fast._C failed ({type(exc).__name__}: {exc})"
    m = re.search(r"undefined symbol: (\S+)", str(exc))
    if m is None:
        return text
    symbol = m.group(1)
    library = ("cuSOLVER" if symbol.startswith("cusolver") else "cuBLAS" if symbol.startswith("cublas")
               else "CUDA runtime" if symbol.startswith("cuda") else "torch" if symbol.startswith("_Z") else None)
    if library is None:
        return text
    return (f"{text}: the {library} library loaded now lacks {symbol}, which the build used; it was built "
            f"against another {library} than the one running")


def _preload_torch_cuda_linalg() -> None:
    """The CUDA kernels use at::cuda::getCurrentCUDASolverDnHandle from libtorch_cuda_linalg,
    which torch loads only on first use; load it (globally) before _C needs its symbols."""
    if torch.version.cuda is None:
        return
    import ctypes

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cuda_linalg.so")
    if os.path.exists(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _cusolver_runtime_if_needed(info: Dict[str, Optional[str]]) -> Optional[str]:
    return runtime_cusolver_version() if info.get("cusolver") else None


def _try_aot(torch_version: str, cuda_version: Optional[str]) -> Tuple[Optional[dict], Optional[str]]:
    """(build info, None) when nwot_fast._C is loaded and usable, else (None, why not)."""
    global _loaded
    spec = importlib.util.find_spec("nwot_fast._C")
    if spec is None or spec.origin is None:
        return None, "nwot_fast._C is not built (the package was installed without torch at build time)"
    record_path = os.path.join(os.path.dirname(spec.origin), "_C" + _build.RECORD_SUFFIX)
    if os.path.exists(record_path):
        try:
            with open(record_path) as f:
                record = json.load(f)
        except (OSError, ValueError) as exc:
            return None, f"nwot_fast._C is not used: its build record {record_path} is unreadable ({exc})"
        reason = mismatch_reason(record, torch_version, cuda_version, _cusolver_runtime_if_needed(record))
        if reason is not None:
            return None, f"nwot_fast._C is not used: {reason}"
    try:
        _preload_torch_cuda_linalg()
        importlib.import_module("nwot_fast._C")
        info = parse_build_info(torch.ops.nwot_fast.build_info())
    except Exception as exc:  # any import failure means: try the next route, and say why
        return None, explain_import_error(exc)
    _loaded = {"route": "aot", "library": spec.origin, "build_dir": os.path.dirname(spec.origin)}
    reason = mismatch_reason(info, torch_version, cuda_version, _cusolver_runtime_if_needed(info))
    if reason is not None:
        return None, f"nwot_fast._C is not used: {reason}"
    return info, None


def _namespace_registered() -> bool:
    return hasattr(torch.ops.nwot_fast, "build_info")


def _try_jit(why: str, allow_build: bool) -> Tuple[Optional[dict], Optional[str], Optional[dict]]:
    """(build info, None, load result) after loading or compiling the cached build; (None,
    why not, None) when it cannot; (None, None, None) when a build is needed but not allowed."""
    global _loaded
    if _loaded is not None:
        return None, f"the operators of {_loaded['library']} are already loaded in this process and cannot be replaced", None
    reason = _jit.unavailable_reason()
    if reason is not None:
        return None, reason, None
    if _namespace_registered():
        # A second library registering the namespace would abort the process (its static
        # initialisers throw), so a half-loaded nwot_fast._C rules out compiling on first use.
        return None, "torch.ops.nwot_fast is already registered in this process by a library that failed its checks", None
    try:
        the_plan = _jit.plan()
        result = _jit.load_or_build(the_plan, why, allow_build=allow_build)
    except _jit.JitBuildError as exc:
        return None, str(exc), None
    if result is None:
        return None, None, None
    _loaded = {"route": "jit", "library": result["library"], "build_dir": the_plan["directory"]}
    return parse_build_info(torch.ops.nwot_fast.build_info()), None, result


def _blank_state(torch_version: str) -> dict:
    return {
        "compiled": False,
        "route": "fallback",
        "backends": [],
        "torch_built_against": None,
        "torch_running": torch_version,
        "cuda_built_with": None,
        "eigensolver_cuda": None,
        "cpu_kernels": None,
        "cpu_kernels_built": None,
        "library": None,
        "build_dir": None,
        "build_seconds": None,
        "reason": None,
    }


def _load(allow_build: bool = True) -> Optional[dict]:
    """The loader's decision; None when a build would be needed and ``allow_build`` is False."""
    torch_version, cuda_version = _running_versions()
    state = _blank_state(torch_version)
    if _loaded is not None:  # loaded earlier in this process (the tests forget the decision)
        info = parse_build_info(torch.ops.nwot_fast.build_info())
        reason = mismatch_reason(info, torch_version, cuda_version, _cusolver_runtime_if_needed(info))
        route = _loaded["route"]
        reason = None if reason is None else f"the loaded operators ({_loaded['library']}) are not used: {reason}"
    else:
        info, reason = _try_aot(torch_version, cuda_version)
        route = "aot"
        if info is None:
            aot_reason = reason
            info, jit_reason, result = _try_jit(aot_reason, allow_build)
            if info is None and jit_reason is None:
                return None
            route = "jit"
            if info is None:
                reason = f"{aot_reason}; it could not be compiled either: {jit_reason}"
            else:
                reason = mismatch_reason(info, torch_version, cuda_version)
                state["build_seconds"] = result["build_seconds"]
    if info is not None:
        state["torch_built_against"] = info.get("torch")
        state["cuda_built_with"] = None if info.get("cuda", "none") == "none" else info.get("cuda")
        state["eigensolver_cuda"] = info.get("eigensolver")
        state["cpu_kernels"] = info.get("cpu_kernels")
        state["cpu_kernels_built"] = info.get("cpu_kernels_built")
    if info is not None and reason is None:
        state.update(compiled=True, route=route, library=_loaded["library"], build_dir=_loaded["build_dir"])
        state["backends"] = [b for b in info.get("backends", "").split(",") if b]
    else:
        state["reason"] = reason
        warnings.warn(
            f"{reason}. The pure-PyTorch fallback of nwot_fast.ops is used instead (same results, slower); "
            f"to use the compiled operators, {REBUILD_HINT}.",
            ExtensionWarning,
            stacklevel=4,
        )
    return state


def _get(allow_build: bool = True) -> Optional[dict]:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                state = _load(allow_build)
                if state is None:
                    return None
                _state = state
    return _state


def available(device_type: str = "cpu") -> bool:
    """Whether the compiled operators are in use for tensors on ``device_type``."""
    state = _get()
    return state["compiled"] and device_type in state["backends"]


def backend_info(build: bool = True) -> dict:
    """What is compiled, in use, and where it came from; loads the operators (compiling them on
    first use when needed, unless ``build`` is False).

    Keys: ``compiled`` (bool: the operators are loaded and match the running torch),
    ``route`` (``"aot"``: nwot_fast._C built at install; ``"jit"``: compiled on first use;
    ``"fallback"``: pure PyTorch), ``in_use`` (``"compiled"`` or ``"fallback"``; with
    ``build=False`` also ``"not built yet"``), ``backends`` (e.g. ``["cpu", "cuda"]``),
    ``library`` (the loaded shared library), ``build_dir`` (where the build lives),
    ``build_seconds`` (compile time when this process compiled it, else None),
    ``torch_built_against``, ``torch_running``, ``cuda_built_with``, ``eigensolver_cuda``,
    ``cpu_kernels`` (the variant of the CPU kernels in use: ``"default"``, ``"avx2"`` or
    ``"avx512"``, from ATen's CPU capability, lowered by ``ATEN_CPU_CAPABILITY``),
    ``cpu_kernels_built`` (the variants compiled, e.g. ``"default,avx2,avx512"``),
    ``reason`` (why the compiled operators are not used, else None).
    """
    state = _get(allow_build=build)
    if state is None:
        state = dict(_blank_state(_running_versions()[0]), route="jit", in_use="not built yet",
                     build_dir=_jit.plan()["directory"],
                     reason="compiled on first use (or now with `nwot-fast info --build`)")
        return state
    state = dict(state)
    state["backends"] = list(state["backends"])
    state["in_use"] = "compiled" if state["compiled"] else "fallback"
    return state


def _reset_for_tests() -> None:
    """Forget the loader's decision so that a test can load again (the library stays loaded)."""
    global _state
    with _lock:
        _state = None
