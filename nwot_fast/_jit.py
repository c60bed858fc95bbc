"""Compiles the operators on first use (``torch.utils.cpp_extension.load``, ninja) when no
usable ahead-of-time build is installed, with the build definition of :mod:`nwot_fast._build`.

One build per torch version, CUDA version, Python version, CPU kernel variant (only the one this
machine's processes run is compiled: csrc/cpu/cpu_isa.h), flags and source hash, cached in
``$NWOT_FAST_BUILD_DIR``, else torch's extensions directory (``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions/py311_cu130``), under ``nwot_fast/<key>``. A file lock keeps two
processes (the workers of a parallel scan) from building at once: the second waits and loads
the first one's build. A stamp holds the library's sha256: a damaged or half-written entry is
rebuilt, never loaded. A failed build leaves its log (``build_error.log``) and is not retried
until that entry is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Optional

import torch

from nwot_fast import _build

LIBRARY_NAME = "nwot_fast_ops"
STAMP = "stamp.json"
ERROR_LOG = "build_error.log"
# What the announcement promises; measured on 2 cores (bench/RESULTS.md: first-use build).
_EXPECTED = {False: "1-3 minutes", True: "several minutes (CUDA kernels)"}


class JitBuildError(RuntimeError):
    """Compiling the operators failed; the message says why and where the log is."""


def package_dir() -> str:
    """The absolute directory of the installed ``nwot_fast`` package (where its csrc/ copy is looked for)."""
    return os.path.dirname(os.path.abspath(__file__))


def unavailable_reason(environ=os.environ) -> Optional[str]:
    """Why the operators cannot be compiled here, or None if they can."""
    if _build.env_flag("NWOT_FAST_NO_JIT", environ):
        return "compiling on first use is turned off (NWOT_FAST_NO_JIT=1)"
    if _build.find_csrc(package_dir()) is None:
        return f"the C++ sources are not installed with the package (no csrc/ in {package_dir()})"
    cxx = environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler to compile them on first use ({cxx!r} not found on PATH; set CXX)"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja, needed to compile them on first use, is not installed (`pip install ninja`)"
    return None


def build_root(environ=os.environ) -> str:
    """The directory that holds the first-use builds (one subdirectory per :func:`plan` key):
    ``$NWOT_FAST_BUILD_DIR/nwot_fast`` when that is set, else ``$TORCH_EXTENSIONS_DIR/nwot_fast``,
    else torch's default extensions root with a ``py<major><minor>_<cpu|cuXYZ>`` level, then
    ``nwot_fast``. Creates nothing."""
    if environ.get("NWOT_FAST_BUILD_DIR"):
        return os.path.join(os.path.abspath(environ["NWOT_FAST_BUILD_DIR"]), "nwot_fast")
    root = environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        accelerator = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
        root = os.path.join(get_default_build_root(), f"py{sys.version_info[0]}{sys.version_info[1]}_{accelerator}")
    return os.path.join(root, "nwot_fast")


def plan(environ=os.environ) -> dict:
    """The build for the running torch: its spec (:func:`nwot_fast._build.build_spec`), its
    cache key and directory."""
    csrc = _build.find_csrc(package_dir())
    # One CPU kernel variant, this machine's (on 2 cores 13 s less wall and 29 s less CPU than
    # all three, bench/RESULTS.md); the record, and so the key, names it.
    variant = _build.cpu_variant(torch.backends.cpu.get_cpu_capability())
    spec = _build.build_spec(csrc, _build.torch_facts(), environ, cpu_only_variant=variant)
    record = dict(spec["record"], route="jit", sources_sha256=_build.source_digest(csrc))
    h = hashlib.sha256(json.dumps([record, spec["cxx_flags"], spec["nvcc_flags"], spec["link_flags"],
                                   spec["include_dirs"], sys.version], sort_keys=True).encode())
    tag = "cpu" if record["cuda"] is None else "cu" + record["cuda"].replace(".", "")
    key = f"torch{record['torch'].split('+')[0]}-{tag}-py{sys.version_info[0]}{sys.version_info[1]}-{h.hexdigest()[:16]}"
    return {"spec": spec, "record": record, "key": key, "directory": os.path.join(build_root(environ), key)}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_library(directory: str) -> Optional[str]:
    """The library of a complete, undamaged cache entry, else None."""
    try:
        with open(os.path.join(directory, STAMP)) as f:
            stamp = json.load(f)
        library = os.path.join(directory, stamp["library"])
        return library if _sha256(library) == stamp["sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _locked(path: str, waiting_message: str):
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting_message, file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile(the_plan: dict, why: str) -> str:
    """Builds (and loads) the library into the plan's directory, announced; returns its path."""
    spec, directory = the_plan["spec"], the_plan["directory"]
    what = "C++ and CUDA" if spec["with_cuda"] else "C++"
    archs = f" for CUDA arch {spec['record']['cuda_arch_list']}" if spec["with_cuda"] else ""
    print(f"nwot_fast: {why}; compiling its {what} operators{archs} against torch "
          f"{spec['record']['torch']} into {directory}. This takes {_EXPECTED[spec['with_cuda']]}, "
          f"once: later runs load the build from there.", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        library = _run_build(spec, directory)
    except Exception as exc:
        with open(os.path.join(directory, ERROR_LOG), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}\n")
        raise JitBuildError(f"compiling the operators failed ({type(exc).__name__}: {_tail(str(exc))}); "
                            f"full log: {os.path.join(directory, ERROR_LOG)}") from exc
    seconds = time.monotonic() - start
    stamp = {"library": os.path.basename(library), "sha256": _sha256(library), "seconds": round(seconds, 1),
             "record": the_plan["record"]}
    tmp = os.path.join(directory, STAMP + ".tmp")
    with open(tmp, "w") as f:
        json.dump(stamp, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, STAMP))  # the stamp appears whole or not at all
    print(f"nwot_fast: compiled in {seconds:.0f} s ({library}).", file=sys.stderr, flush=True)
    return library


def _run_build(spec: dict, directory: str) -> str:
    """torch.utils.cpp_extension.load with the spec's sources and flags; builds and loads the
    library, returns its path."""
    from torch.utils import cpp_extension

    defines = _build.define_flags(spec["define_macros"])
    if getattr(cpp_extension, "min_supported_cpython", None):  # what setup.py's py_limited_api=True adds
        defines.append(f"-DPy_LIMITED_API={cpp_extension.min_supported_cpython}")
    saved_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if spec["with_cuda"]:
        os.environ["TORCH_CUDA_ARCH_LIST"] = spec["record"]["cuda_arch_list"]
    try:
        return cpp_extension.load(
            name=LIBRARY_NAME,
            sources=spec["sources"],
            extra_cflags=spec["cxx_flags"] + defines,
            extra_cuda_cflags=spec["nvcc_flags"] + defines,
            extra_ldflags=[f"-L{d}" for d in spec["library_dirs"]] + spec["link_flags"],
            extra_include_paths=spec["include_dirs"],
            build_directory=directory,
            with_cuda=spec["with_cuda"],
            is_python_module=False,
        )
    finally:
        if spec["with_cuda"]:
            if saved_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved_arch


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def load_or_build(the_plan: dict, why: str, allow_build: bool = True) -> dict:
    """Loads the cached build of ``the_plan``, compiling it first when the cache has none (or a
    damaged one). Returns ``{"library", "built_now", "build_seconds"}``, or None when a build
    is needed and ``allow_build`` is False. Raises :class:`JitBuildError`, also when the cache
    directory cannot be created or locked (NWOT_FAST_BUILD_DIR naming a file, a read-only
    TORCH_EXTENSIONS_DIR): then a complete entry there is still loaded, and otherwise the error
    names the variable that chose the place, so that the loader falls back with that reason."""
    directory = the_plan["directory"]
    try:
        with _locked(directory + ".lock", f"nwot_fast: waiting for another process that is compiling the "
                                          f"operators into {directory}"):
            return _load_or_build_locked(the_plan, why, allow_build)
    except OSError as exc:
        library = cached_library(directory)
        if library is not None:  # a complete, stamped entry needs no lock to be read
            with contextlib.suppress(OSError):
                torch.ops.load_library(library)
                return {"library": library, "built_now": False, "build_seconds": None}
        where = exc.filename or directory
        raise JitBuildError(f"the build cache {directory} cannot be used ({where}: {exc.strerror or exc}); it was "
                            f"chosen by {build_root_source()}: set NWOT_FAST_BUILD_DIR to a writable "
                            "directory") from exc


def build_root_source(environ=os.environ) -> str:
    """What chose :func:`build_root`, in words that name the variable."""
    if environ.get("NWOT_FAST_BUILD_DIR"):
        return f"NWOT_FAST_BUILD_DIR={environ['NWOT_FAST_BUILD_DIR']}"
    if environ.get("TORCH_EXTENSIONS_DIR"):
        return f"TORCH_EXTENSIONS_DIR={environ['TORCH_EXTENSIONS_DIR']}"
    return "torch's default extensions directory (TORCH_EXTENSIONS_DIR unset)"


def _load_or_build_locked(the_plan: dict, why: str, allow_build: bool) -> Optional[dict]:
    directory = the_plan["directory"]
    library = cached_library(directory)
    if library is not None:
        try:
            torch.ops.load_library(library)
            return {"library": library, "built_now": False, "build_seconds": None}
        except OSError as exc:  # complete but unloadable (e.g. a system library changed): rebuild once
            why = f"the cached build could not be loaded ({exc})"
    elif os.path.exists(os.path.join(directory, ERROR_LOG)) and not os.path.exists(os.path.join(directory, STAMP)):
        raise JitBuildError(f"compiling the operators failed before; see {os.path.join(directory, ERROR_LOG)} "
                            f"(delete {directory} to try again)")
    elif os.path.exists(directory):
        why += "; the cached build there is incomplete or damaged, so it is rebuilt"
    if not allow_build:
        return None
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    start = time.monotonic()
    library = _compile(the_plan, why)
    return {"library": library, "built_now": True, "build_seconds": round(time.monotonic() - start, 1)}
