"""How the compiled operators are built: the one definition shared by ``setup.py`` (ahead of
time) and :mod:`nwot_fast._jit` (on first use).

Sources, flags, defines, link libraries and the CUDA architectures are decided here and
nowhere else. The module imports neither torch nor the package at import time: ``setup.py``
loads it by file path, in a build environment that may have no torch at all. The functions
that need facts about torch (:func:`torch_facts`) import it when called.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import site
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# -fwrapv and NDEBUG: what setuptools adds from Python's own CFLAGS ahead of time; given here
# so that a first-use build (which does not add them) compiles the same code.
# -ffp-contract=off: no multiply-add is fused into an FMA, so the AVX2 / AVX-512 variants of the
# CPU kernels (csrc/cpu/cpu_isa.h) round exactly as the baseline one (GCC fuses by default).
# -g0: no debug information. Python's CFLAGS carry -g into ahead-of-time builds; dropping it
# takes the full build from 150 s to 85 s of CPU and the library from 21 MB to 1.7 MB
# (bench/RESULTS.md, "Building the operators"); symbol names stay for backtraces.
CXX_FLAGS = ["-O3", "-fwrapv", "-ffp-contract=off", "-g0"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr"]
# The architecture built for when TORCH_CUDA_ARCH_LIST is not set and no GPU is visible
# (torch would otherwise build for every architecture it knows).
DEFAULT_CUDA_ARCH = "9.0"
SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")
RECORD_SUFFIX = ".build.json"  # beside the library: what it was built against (read before import)


def env_flag(name: str, environ=os.environ) -> bool:
    """Whether the environment variable ``name`` is set to ``1``, ``true``, ``yes`` or ``on``
    (any case, surrounding spaces ignored); unset or anything else is False."""
    return environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def find_csrc(package_dir: str) -> Optional[str]:
    """The C++/CUDA sources: the copy installed as package data (``nwot_fast/csrc``), else
    the checkout's ``csrc/`` beside the package (editable installs, PYTHONPATH)."""
    for candidate in (os.path.join(package_dir, "csrc"), os.path.join(os.path.dirname(package_dir), "csrc")):
        if os.path.isfile(os.path.join(candidate, "nwot.cpp")):
            return candidate
    return None


def source_files(csrc: str, with_cuda: bool) -> List[str]:
    """The translation units, in a fixed order."""
    sources = [os.path.join(csrc, "nwot.cpp"), os.path.join(csrc, "version.cpp")]
    sources += sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    return sources


def source_digest(csrc: str) -> str:
    """sha256 over every source and header (relative names and contents) and this file (the
    flags): a change to any of them is a new build."""
    h = hashlib.sha256()
    files = []
    for root, _, names in os.walk(csrc):
        files += [os.path.join(root, n) for n in names if n.endswith(SOURCE_SUFFIXES)]
    for path in sorted(files, key=lambda p: os.path.relpath(p, csrc)):
        h.update(os.path.relpath(path, csrc).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read() + b"\0")
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def want_cuda(environ, torch_cuda: Optional[str], cuda_home: Optional[str]) -> bool:
    """CUDA operators are built when torch is a CUDA build and a toolkit is found, or when
    FORCE_CUDA=1 (no visible GPU needed); FORCE_ONLY_CPU=1 builds C++ only."""
    if env_flag("FORCE_ONLY_CPU", environ):
        return False
    return env_flag("FORCE_CUDA", environ) or (torch_cuda is not None and cuda_home is not None)


def cuda_arch_list(environ, visible_capabilities: Sequence[Tuple[int, int]]) -> str:
    """TORCH_CUDA_ARCH_LIST if set, else the visible GPUs' architectures, else 9.0."""
    if environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return environ["TORCH_CUDA_ARCH_LIST"].strip()
    if visible_capabilities:
        return ";".join(f"{a}.{b}" for a, b in sorted(set(visible_capabilities)))
    return DEFAULT_CUDA_ARCH


def nvidia_wheel_dirs(site_dirs: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """Include and library dirs of the nvidia-* wheels (cuSOLVER/cuBLAS headers and libraries
    come with them when torch is installed from PyPI; a system CUDA toolkit may lack them)."""
    if site_dirs is None:
        site_dirs = site.getsitepackages() + [site.getusersitepackages()]
    roots = []
    for base in site_dirs:
        nv = os.path.join(base, "nvidia")
        if os.path.isdir(nv):
            roots += [os.path.join(nv, d) for d in sorted(os.listdir(nv))]
    includes, libdirs = [], []
    for header, lib in (("cusolverDn.h", "libcusolver.so*"), ("cublas_v2.h", "libcublas.so*")):
        includes += [os.path.join(r, "include") for r in roots if os.path.isfile(os.path.join(r, "include", header))]
        libdirs += [os.path.join(r, "lib") for r in roots if glob.glob(os.path.join(r, "lib", lib))]
    return list(dict.fromkeys(includes)), list(dict.fromkeys(libdirs))


def library_file(libname: str, libdirs: Sequence[str]) -> Optional[str]:
    """The file of ``lib<libname>`` in ``libdirs``: the unversioned name, else the shortest
    versioned soname (the wheels ship only those, e.g. libcusolver.so.12)."""
    for d in libdirs:
        if os.path.exists(os.path.join(d, f"lib{libname}.so")):
            return os.path.join(d, f"lib{libname}.so")
    for d in libdirs:
        found = sorted(glob.glob(os.path.join(d, f"lib{libname}.so.*")), key=len)
        if found:
            return found[0]
    return None


def _link_args_for(libname: str, libdirs: Sequence[str]) -> List[str]:
    """-l flags for ``libname`` (``-l:libcusolver.so.12`` for a versioned soname)."""
    path = library_file(libname, libdirs)
    if path is None or path.endswith(".so"):
        return [f"-l{libname}"]
    return [f"-l:{os.path.basename(path)}"]


def header_define(include_dirs: Sequence[str], header: str, names: Sequence[str]) -> Optional[Tuple[int, ...]]:
    """Integer ``#define``s ``names`` from the first ``header`` found in ``include_dirs``."""
    for d in include_dirs:
        path = os.path.join(d, header)
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                text = f.read()
            values = []
            for name in names:
                m = re.search(rf"#\s*define\s+{name}\s+(\d+)", text)
                if m is None:
                    return None
                values.append(int(m.group(1)))
            return tuple(values)
    return None


def cuda_header_versions(include_dirs: Sequence[str]) -> Dict[str, Optional[str]]:
    """CUDA runtime and cuSOLVER versions of the headers a CUDA build compiles against, in the
    spelling of csrc/version.cpp's build info (``cuda=13.0``, ``cusolver=12004``)."""
    cudart = header_define(include_dirs, "cuda_runtime_api.h", ["CUDART_VERSION"])
    cusolver = header_define(include_dirs, "cusolver_common.h",
                             ["CUSOLVER_VER_MAJOR", "CUSOLVER_VER_MINOR", "CUSOLVER_VER_PATCH"])
    return {
        "cuda": None if cudart is None else f"{cudart[0] // 1000}.{(cudart[0] % 1000) // 10}",
        "cusolver": None if cusolver is None else str(cusolver[0] * 1000 + cusolver[1] * 100 + cusolver[2]),
    }


def torch_facts() -> dict:
    """What the build needs to know about the importable torch (imports torch)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    caps = []
    if torch.version.cuda is not None and torch.cuda.is_available():
        caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    return {
        "torch_version": str(torch.__version__),
        "torch_cuda": torch.version.cuda,
        "cuda_home": CUDA_HOME,
        "visible_capabilities": caps,
        "openmp": sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info(),
        "torch_lib": os.path.join(os.path.dirname(torch.__file__), "lib"),
    }


# The CPU kernel variants (csrc/cpu/cpu_isa.h), by ATen's capability names.
CPU_VARIANTS = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


def cpu_variant(capability: str) -> int:
    """The CPU kernel variant (0 default, 1 AVX2, 2 AVX-512) that a process whose ATen
    capability is ``capability`` (``torch.backends.cpu.get_cpu_capability()``) runs; any
    capability without a variant of its own (another architecture's) runs the default one."""
    return CPU_VARIANTS.get(capability.upper(), 0)


def build_spec(csrc: str, facts: dict, environ=os.environ, rpath_origin: Optional[str] = None,
               cpu_only_variant: Optional[int] = None) -> dict:
    """Everything a compiler needs: sources, defines, include and library dirs, compiler and
    linker flags, CUDA architectures, and the record of what the build is against.

    ``rpath_origin``: where the library will be installed (site-packages/nwot_fast) for
    ``$ORIGIN``-relative run paths (ahead of time); None: absolute run paths (on first use,
    the build stays where it was made). ``cpu_only_variant``: compile that one CPU kernel
    variant (:func:`cpu_variant`; a first-use build, for the machine that makes it), not all
    three (None: ahead of time, for any x86-64 CPU); the record names it.
    """
    with_cuda = want_cuda(environ, facts["torch_cuda"], facts["cuda_home"])
    defines = [("NDEBUG", None), ("NWOT_TORCH_VERSION", facts["torch_version"])]
    if cpu_only_variant is not None:
        if cpu_only_variant not in CPU_VARIANTS.values():
            raise ValueError(f"cpu_only_variant must be one of {sorted(CPU_VARIANTS.values())}, got {cpu_only_variant!r}")
        defines.append(("NWOT_CPU_ISA_ONLY", str(cpu_only_variant)))
    cxx = list(CXX_FLAGS)
    link: List[str] = []
    if facts["openmp"]:
        # at::parallel_for is inlined from the headers: without -fopenmp it runs serially.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    include_dirs = [os.path.abspath(csrc)]
    library_dirs: List[str] = []
    rpaths: List[str] = []
    record = {"torch": facts["torch_version"], "backends": "cpu", "cuda": None, "cusolver": None,
              "cuda_arch_list": None}
    if cpu_only_variant is not None:
        record["cpu_variant"] = cpu_only_variant
    if with_cuda:
        defines.append(("WITH_CUDA", None))
        nv_includes, nv_libdirs = nvidia_wheel_dirs(facts.get("site_dirs"))
        include_dirs += nv_includes
        library_dirs += nv_libdirs
        link += _link_args_for("cusolver", nv_libdirs) + _link_args_for("cublas", nv_libdirs)
        # at::cuda::getCurrentCUDASolverDnHandle lives in libtorch_cuda_linalg, which torch
        # itself only loads lazily; link it and find it next to torch at run time.
        if os.path.exists(os.path.join(facts["torch_lib"], "libtorch_cuda_linalg.so")):
            link.append("-ltorch_cuda_linalg")
            rpaths.append(facts["torch_lib"])
        rpaths += nv_libdirs
        toolkit_include = [os.path.join(facts["cuda_home"], "include")] if facts["cuda_home"] else []
        record.update(cuda_header_versions(nv_includes + toolkit_include))
        record["backends"] = "cpu,cuda"
        record["cuda_arch_list"] = cuda_arch_list(environ, facts["visible_capabilities"])
    for d in rpaths:
        if rpath_origin is None:
            link.append(f"-Wl,-rpath,{d}")
        else:
            link.append(f"-Wl,-rpath,$ORIGIN/{os.path.relpath(d, rpath_origin)}")
    return {
        "with_cuda": with_cuda,
        "sources": source_files(csrc, with_cuda),
        "define_macros": defines,
        "include_dirs": include_dirs,
        "library_dirs": library_dirs,
        "cxx_flags": cxx,
        "nvcc_flags": list(NVCC_FLAGS) if with_cuda else [],
        "link_flags": link,
        "record": record,
    }


def define_flags(define_macros: Sequence[Tuple[str, Optional[str]]]) -> List[str]:
    """``-D`` flags of ``define_macros`` (what setuptools passes for them)."""
    return [f"-D{name}" if value is None else f"-D{name}={value}" for name, value in define_macros]


def cmake_variables(csrc: str, with_cuda: bool, environ=os.environ) -> Dict[str, str]:
    """What CMakeLists.txt builds with: the sources, defines, compiler flags, include and library
    dirs and link flags of :func:`build_spec` (the ones setup.py builds with), for the torch
    importable now (imports it), as CMake values (lists joined by ``;``).

    ``with_cuda``: CMake's WITH_CUDA option, which decides as FORCE_CUDA / FORCE_ONLY_CPU do for
    setup.py. Run paths are absolute (the CMake build stays where it was made).
    """
    import torch

    env = {k: v for k, v in environ.items() if k not in ("FORCE_CUDA", "FORCE_ONLY_CPU")}
    env["FORCE_CUDA" if with_cuda else "FORCE_ONLY_CPU"] = "1"
    spec = build_spec(csrc, torch_facts(), environ=env)
    defines = [name if value is None else f"{name}={value}" for name, value in spec["define_macros"]]
    # torch's CMake config links nvrtc, which a CUDA toolkit without it leaves to the nvidia wheels.
    wheel_libs = [d for s in site.getsitepackages() for d in sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))]
    values = {
        "NWOT_TORCH_PREFIX": torch.utils.cmake_prefix_path,
        "NWOT_SOURCES": spec["sources"],
        "NWOT_DEFINES": defines,
        "NWOT_CXX_FLAGS": spec["cxx_flags"],
        "NWOT_NVCC_FLAGS": spec["nvcc_flags"],
        "NWOT_INCLUDE_DIRS": spec["include_dirs"],
        # torch's own library directory, which setup.py's CppExtension / CUDAExtension add by
        # themselves (torch.utils.cpp_extension.library_paths): -ltorch_cuda_linalg is found there.
        "NWOT_LIBRARY_DIRS": spec["library_dirs"] + [os.path.join(os.path.dirname(torch.__file__), "lib")],
        "NWOT_LINK_FLAGS": spec["link_flags"],
        "NWOT_CUDA_ARCH_LIST": spec["record"]["cuda_arch_list"] or "",
        "NWOT_NVRTC": (library_file("nvrtc", wheel_libs) or "") if with_cuda else "",
    }
    return {k: ";".join(v) if isinstance(v, list) else v for k, v in values.items()}
