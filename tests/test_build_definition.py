"""CMakeLists.txt and setup.py build the same sources with the same flags.

Both take their sources, defines, compiler flags, include dirs and link flags from one place,
nwot_fast/_build.py (``build_spec``). Read from the files: setup.py hands the spec to its
Extension unchanged, and CMakeLists.txt neither globs nor hard-codes a flag and calls only public
functions of _build.py. Run: CMake's configure step (a few seconds, no compiling) writes the
compile and link commands it would run, which must hold exactly the spec's sources, flags,
defines and include dirs (plus what torch's own CMake config adds, as torch's cpp_extension adds
it for setup.py, and NWOT_NO_PYTHON: the library without the Python module stub).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(REPO, "csrc")
CMAKELISTS = os.path.join(REPO, "CMakeLists.txt")


def _build_module():
    """nwot_fast/_build.py by path, as setup.py and CMakeLists.txt load it."""
    spec = importlib.util.spec_from_file_location("_nwot_fast_build_test", os.path.join(REPO, "nwot_fast", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_py_hands_the_build_spec_to_its_extension_unchanged():
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "Extension"]
    assert len(calls) == 1
    call = calls[0]
    assert [ast.unparse(a) for a in call.args] == ["'nwot_fast._C'", "spec['sources']"]
    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
    assert keywords == {"include_dirs": "spec['include_dirs']", "library_dirs": "spec['library_dirs']",
                        "define_macros": "spec['define_macros']", "extra_compile_args": "extra_compile_args",
                        "extra_link_args": "spec['link_flags']", "py_limited_api": "True"}
    code = ast.unparse(tree)
    assert "extra_compile_args = {'cxx': spec['cxx_flags']}" in code
    assert "extra_compile_args['nvcc'] = spec['nvcc_flags']" in code
    assert re.search(r"spec = _build\.build_spec\(CSRC, facts", code)


def test_cmakelists_takes_everything_from_public_build_functions():
    text = open(CMAKELISTS).read()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # comments left out
    assert "GLOB" not in code.upper(), "CMakeLists.txt must take its sources from _build.py, not glob them"
    # No flag of its own: -O3, -fwrapv, -ffp-contract=off, NDEBUG, ... come from _build.py.
    assert not re.findall(r"(?<![\w-])-(?:O\d|f[a-z][\w=-]*|m[a-z][\w=-]*|DNDEBUG)\b", code)
    used = set(re.findall(r"\bbuild\.(\w+)", code))
    public = {n.name for n in ast.parse(open(os.path.join(REPO, "nwot_fast", "_build.py")).read()).body
              if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    assert used and used <= public, f"CMakeLists.txt uses {sorted(used - public)} of _build.py: not its public functions"


# Added by torch's CMake config (its interface definitions), or CMake's own export macro; torch's
# cpp_extension adds its counterparts for setup.py.
_TORCH_OR_CMAKE_DEFINE = re.compile(r"-D(USE_\w+|_GLIBCXX_USE_CXX11_ABI=\d|nwot_fast_ops_EXPORTS|NWOT_NO_PYTHON)$")


@pytest.mark.parametrize("with_cuda", [False, True], ids=["cpu", "cuda"])
def test_cmake_compiles_the_sources_of_setup_py_with_its_flags(tmp_path, with_cuda):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    if with_cuda and (torch.version.cuda is None or shutil.which("nvcc") is None):
        pytest.skip("a CUDA configure needs a CUDA build of torch and nvcc")
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "FORCE_ONLY_CPU")}
    proc = subprocess.run([cmake, "-S", REPO, "-B", str(tmp_path), "-G", "Unix Makefiles", f"-DPYTHON={sys.executable}",
                           "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", f"-DWITH_CUDA={'ON' if with_cuda else 'OFF'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    build = _build_module()
    # What setup.py builds with the switch that matches WITH_CUDA.
    switch = {"FORCE_CUDA": "1"} if with_cuda else {"FORCE_ONLY_CPU": "1"}
    spec = build.build_spec(CSRC, build.torch_facts(), environ=dict(env, **switch))
    defines = sorted(build.define_flags(spec["define_macros"]))

    commands = json.load(open(tmp_path / "compile_commands.json"))
    library = [c for c in commands if os.path.realpath(c["file"]).startswith(os.path.realpath(CSRC) + os.sep)]
    assert [os.path.realpath(c["file"]) for c in library] == [os.path.realpath(s) for s in spec["sources"]]
    for c in library:
        args = shlex.split(c["command"])
        cuda = c["file"].endswith(".cu")
        ours = spec["nvcc_flags"] if cuda else spec["cxx_flags"]
        where = os.path.basename(c["file"])
        if not cuda:  # every optimisation, code-generation and debug-information flag is the spec's, in its order
            assert [a for a in args if re.match(r"-[Ofmg]", a) and a != "-fPIC"] == ours, where
        else:
            assert all(flag in args for flag in ours), where
        assert sorted(a for a in args if a.startswith("-D") and not _TORCH_OR_CMAKE_DEFINE.match(a)) == defines, where
        assert "-DNWOT_NO_PYTHON" in args, where
        assert [a[2:] for a in args if a.startswith("-I")] == spec["include_dirs"], where

    link = shlex.split(open(tmp_path / "CMakeFiles" / "nwot_fast_ops.dir" / "link.txt").read())
    for flag in spec["link_flags"]:
        assert flag in link, f"link flag {flag} of setup.py missing from CMake's link command"
