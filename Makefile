# Two commands do all the set-up on a fresh machine:
#   make demo   - creates .venv, installs nwot_fast (with its compiled extension), runs a short search
#   make test   - the same install, then the test suite
# The install reruns when the Makefile (its package lists) or a source changes.
# Variables: PYTHON (the interpreter that creates the venv), VENV, TORCH (the torch requirement),
# DATA (image data for the demo; default: Gaussian inputs), ACCURACIES (NB201 accuracy table).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.nwot_fast-installed
RUNTIME_DEPS := numpy scipy tqdm matplotlib nas-bench-201
BUILD_DEPS := setuptools wheel pybind11 ninja
TEST_DEPS := pytest pytest-benchmark pytest-xdist 'ray>=2.60,<3' statsmodels 'pytorchcv==0.0.67'
SOURCES := Makefile setup.py pyproject.toml $(shell find csrc nwot_fast -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) 2>/dev/null)

DEMO_ARGS := --n-samples 10 --runs 3
ifdef DATA
DEMO_ARGS += --data $(DATA)
endif
ifdef ACCURACIES
DEMO_ARGS += --accuracies $(ACCURACIES)
endif

.PHONY: install demo test test-cpp bench clean check-cuda-build gpu-check gpu-check-smoke

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)" $(RUNTIME_DEPS) $(BUILD_DEPS) $(TEST_DEPS)
	# xautodl is the peer network the tests compare against; its pinned deps are not needed.
	$(BIN)/python -m pip install --no-deps xautodl
	# Builds nwot_fast._C now, against the torch installed above (`pip install .` would compile on first use).
	$(BIN)/python -m pip install --no-build-isolation -e .
	touch $@

demo: install
	$(BIN)/nwot-fast search $(DEMO_ARGS)

# pytest-xdist workers, one intra-op thread each (tests/conftest.py): one more than the cores,
# so that the tests that wait on subprocesses (Ray, signals, builds) leave no core idle (2 cores:
# 3 workers, bench/RESULTS.md); PYTEST_WORKERS=0 runs the suite in this process.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$((n + 1)))
test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The second build of csrc/ (CMake against the venv's torch) and its C++ tests (ctest).
CMAKE ?= $(shell command -v cmake 2>/dev/null || echo $(BIN)/cmake)
test-cpp: install
	test -x "$(CMAKE)" || $(BIN)/python -m pip install cmake
	"$(CMAKE)" -S . -B build/cmake -DPYTHON=$(abspath $(BIN)/python)
	"$(CMAKE)" --build build/cmake -j2
	cd build/cmake && "$(dir $(CMAKE))ctest" --output-on-failure

bench: install
	$(BIN)/python bench/compare.py

check-cuda-build:
	bash .ci/check_cuda_build.sh

# On a CUDA machine: the same as `python3 bench/gpu_check.py --out DIR` (make is not needed
# there): builds nwot_fast._C in place for the visible GPU, runs the CUDA operator tests, the
# precision check and the whole-space timing; report in $(GPU_CHECK_OUT) ($OUT when set).
# GPU_CHECK_PYTHON: an interpreter with torch (CUDA build), numpy and pytest.
GPU_CHECK_PYTHON ?= python3
GPU_CHECK_OUT ?= $(if $(OUT),$(OUT),build/gpu_check_out)
gpu-check:
	$(GPU_CHECK_PYTHON) bench/gpu_check.py --out $(GPU_CHECK_OUT)

# The same steps on the CPU with tiny sizes and no build, by hand (CI runs it through
# tests/test_gpu_check.py, once).
gpu-check-smoke: install
	$(BIN)/python bench/gpu_check.py --smoke --out build/gpu_check_smoke

clean:
	rm -rf build *.egg-info nwot_fast/_C*.so nwot_fast/_C.build.json
