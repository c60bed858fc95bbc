"""Build nwot_fast and its compiled operators nwot_fast._C (torch.utils.cpp_extension).

C++ operators are always built. CUDA operators are added when torch is a CUDA build and nvcc
is found, or when FORCE_CUDA=1 (no visible GPU needed); FORCE_ONLY_CPU=1 builds C++ only.
TORCH_CUDA_ARCH_LIST defaults to the visible GPUs, else "9.0". Install with
``pip install --no-build-isolation .`` (the build needs the torch it will run with).
"""

import glob
import os
import platform
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
LIMITED_API = "cp39"  # one abi3 wheel per platform, as pytorch/extension-cpp does


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _nvidia_wheel_dirs():
    """Include and library dirs of the nvidia-* wheels (cuSOLVER/cuBLAS headers and libraries
    come with them when torch is installed from PyPI; a system CUDA toolkit may lack them)."""
    import site

    roots = []
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        nv = os.path.join(base, "nvidia")
        if os.path.isdir(nv):
            roots += [os.path.join(nv, d) for d in sorted(os.listdir(nv))]
    includes = [os.path.join(r, "include") for r in roots if os.path.isfile(os.path.join(r, "include", "cusolverDn.h"))]
    includes += [os.path.join(r, "include") for r in roots if os.path.isfile(os.path.join(r, "include", "cublas_v2.h"))]
    libdirs = [os.path.join(r, "lib") for r in roots if glob.glob(os.path.join(r, "lib", "libcusolver.so*"))]
    libdirs += [os.path.join(r, "lib") for r in roots if glob.glob(os.path.join(r, "lib", "libcublas.so*"))]
    return list(dict.fromkeys(includes)), list(dict.fromkeys(libdirs))


def _link_args_for(libname, libdirs):
    """-l flags for ``libname``: the wheels ship only versioned sonames (libcusolver.so.12)."""
    for d in libdirs:
        if os.path.exists(os.path.join(d, f"lib{libname}.so")):
            return [f"-l{libname}"]
    for d in libdirs:
        found = sorted(glob.glob(os.path.join(d, f"lib{libname}.so.*")), key=len)
        if found:
            return [f"-l:{os.path.basename(found[0])}"]
    return [f"-l{libname}"]


def get_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    with_cuda = not _flag("FORCE_ONLY_CPU") and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)
    )
    if with_cuda and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        # torch would otherwise build for every arch it knows when no GPU is visible.
        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"

    csrc = os.path.join("csrc")
    sources = [os.path.join(csrc, "nwot.cpp"), os.path.join(csrc, "version.cpp")]
    sources += sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    torch_version = str(torch.__version__)
    define_macros = [
        ("NWOT_TORCH_VERSION", torch_version),
    ]
    cxx = ["-O3"]
    link = []
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is inlined from the headers: without -fopenmp it runs serially.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    extra_compile_args = {"cxx": cxx}
    include_dirs = [os.path.join(ROOT, csrc)]
    library_dirs = []

    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        nv_includes, nv_libdirs = _nvidia_wheel_dirs()
        include_dirs += nv_includes
        library_dirs += nv_libdirs
        link += _link_args_for("cusolver", nv_libdirs) + _link_args_for("cublas", nv_libdirs)
        # at::cuda::getCurrentCUDASolverDnHandle lives in libtorch_cuda_linalg, which torch
        # itself only loads lazily; link it and find it next to torch at run time.
        torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        if glob.glob(os.path.join(torch_lib, "libtorch_cuda_linalg.so")):
            link += ["-ltorch_cuda_linalg", "-Wl,-rpath,$ORIGIN/../torch/lib"]
        # Find the wheels' libraries at run time next to the installed package as well.
        for d in nv_libdirs:
            rel = os.path.relpath(d, os.path.dirname(os.path.dirname(torch.__file__)))
            link.append(f"-Wl,-rpath,$ORIGIN/../{rel}")
        Extension = CUDAExtension
    else:
        Extension = CppExtension

    return [
        Extension(
            "nwot_fast._C",
            sources,
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=link,
            py_limited_api=True,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension}


setup(
    name="nwot_fast",
    version="0.1.0",
    description="Neural Architecture Search without Training (NASWOT) on NAS-Bench-201, fast and exact",
    packages=find_packages(include=["nwot_fast", "nwot_fast.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "scipy", "tqdm"],
    extras_require={"ray": ["ray>=2.60,<3"]},  # scans over a Ray cluster (nwot_fast.distributed)
    entry_points={"console_scripts": ["nwot-fast = nwot_fast.cli:main"]},
    ext_modules=get_extensions(),
    cmdclass=_cmdclass(),
    options={"bdist_wheel": {"py_limited_api": LIMITED_API}},
)
