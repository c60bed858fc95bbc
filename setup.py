"""Build nwot_fast and, when torch is importable while building, its compiled operators
nwot_fast._C (torch.utils.cpp_extension).

Two routes, one build definition (nwot_fast/_build.py: sources, flags, defines, libraries):

- ``pip install --no-build-isolation .`` (torch importable): the operators are compiled now,
  against that torch. C++ always; CUDA when torch is a CUDA build and nvcc is found, or when
  FORCE_CUDA=1 (no visible GPU needed); FORCE_ONLY_CPU=1 builds C++ only.
  TORCH_CUDA_ARCH_LIST defaults to the visible GPUs, else "9.0".
- ``pip install .`` (an isolated build has no torch): the pure-Python package with the C++/CUDA
  sources as package data; nwot_fast._jit compiles them on first use against the running torch.
"""

import importlib.util
import json
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"  # relative: setuptools places objects under build_temp/csrc/...
LIMITED_API = "cp310"  # one abi3 wheel per platform (python_requires >= 3.10), as pytorch/extension-cpp does


def _load_build_definition():
    """nwot_fast/_build.py by path: torch-free, and without running the package's __init__."""
    spec = importlib.util.spec_from_file_location("_nwot_fast_build", os.path.join(ROOT, "nwot_fast", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build_definition()


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class BuildPyWithSources(build_py):
    """Ships csrc/ as nwot_fast/csrc: the sources the loader compiles on first use."""

    def run(self):
        super().run()
        dst_root = os.path.join(self.build_lib, "nwot_fast", "csrc")
        src_root = os.path.join(ROOT, CSRC)
        for root, _, names in os.walk(src_root):
            for name in names:
                if name.endswith(_build.SOURCE_SUFFIXES):
                    src = os.path.join(root, name)
                    dst = os.path.join(dst_root, os.path.relpath(src, src_root))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(src, dst)


def get_extensions():
    if not _torch_importable():
        print("nwot_fast: torch is not importable while building (an isolated `pip install .`): "
              "installing without compiled operators; they are compiled on first use against the "
              "running torch (`pip install --no-build-isolation .` compiles them now).", file=sys.stderr)
        return []
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    facts = _build.torch_facts()
    site_packages = os.path.dirname(os.path.dirname(torch.__file__))
    spec = _build.build_spec(CSRC, facts, rpath_origin=os.path.join(site_packages, "nwot_fast"))
    if spec["with_cuda"]:
        os.environ["TORCH_CUDA_ARCH_LIST"] = spec["record"]["cuda_arch_list"]
    extra_compile_args = {"cxx": spec["cxx_flags"]}
    if spec["with_cuda"]:
        extra_compile_args["nvcc"] = spec["nvcc_flags"]
    Extension = CUDAExtension if spec["with_cuda"] else CppExtension
    extension = Extension(
        "nwot_fast._C",
        spec["sources"],
        include_dirs=spec["include_dirs"],
        library_dirs=spec["library_dirs"],
        define_macros=spec["define_macros"],
        extra_compile_args=extra_compile_args,
        extra_link_args=spec["link_flags"],
        py_limited_api=True,
    )
    extension.nwot_record = dict(spec["record"], route="aot", sources_sha256=_build.source_digest(CSRC))
    return [extension]


def _cmdclass(extensions):
    cmdclass = {"build_py": BuildPyWithSources}
    if not extensions:
        return cmdclass
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionWithRecord(BuildExtension):
        """Writes _C.build.json beside _C: what it was built against, for the loader to check
        before it imports the library."""

        def run(self):
            super().run()
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                record_path = os.path.join(os.path.dirname(path), ext.name.rsplit(".", 1)[-1] + _build.RECORD_SUFFIX)
                with open(record_path, "w") as f:
                    json.dump(ext.nwot_record, f, indent=1, sort_keys=True)

    cmdclass["build_ext"] = BuildExtensionWithRecord
    return cmdclass


EXTENSIONS = get_extensions()

setup(
    name="nwot_fast",
    version="0.1.0",
    description="Neural Architecture Search without Training (NASWOT) on NAS-Bench-201, fast and exact",
    packages=find_packages(include=["nwot_fast", "nwot_fast.*"]),
    python_requires=">=3.10",
    # ninja: compiling on first use (torch.utils.cpp_extension.load) needs it. torch >= 2.9: the
    # range README states (the tests use its fp32_precision API).
    install_requires=["torch>=2.9", "numpy", "scipy", "tqdm", "ninja"],
    # Every package a command imports is declared: the core above, and per extra what one
    # command needs (its error says which extra to install, nwot_fast.errors.require).
    extras_require={
        "ray": ["ray>=2.60,<3"],  # scan / evaluate --ray (nwot_fast.distributed)
        "report": ["matplotlib>=3.6"],  # nwot-fast report: its figures (nwot_fast.figures)
        "nb201": ["nas-bench-201"],  # reading the official NB201 .pth benchmark file (nwot_fast.accuracies)
        # Figure 5 (nwot_fast.zoo): pytorchcv's CIFAR-10 models and the least-squares fits. pytorchcv
        # >= 0.0.73 imports torchvision (a build matching the installed torch is needed); 0.0.67 does not.
        "zoo": ["pytorchcv>=0.0.67", "statsmodels>=0.14"],
        "all": ["ray>=2.60,<3", "matplotlib>=3.6", "nas-bench-201", "pytorchcv>=0.0.67", "statsmodels>=0.14"],
    },
    # the score tables shipped with the package (nwot_fast.tables), with their provenance records
    package_data={"nwot_fast.tables": ["shipped/*.csv", "shipped/*.json", "shipped/README.md"]},
    entry_points={"console_scripts": ["nwot-fast = nwot_fast.cli:main"]},
    ext_modules=EXTENSIONS,
    cmdclass=_cmdclass(EXTENSIONS),
    options={"bdist_wheel": {"py_limited_api": LIMITED_API}} if EXTENSIONS else {},
)
