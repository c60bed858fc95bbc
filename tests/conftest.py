"""Shared fixtures and helpers: paths to the real data beside the repository, seeded generators,
the devices to test on, and the one comparison of scores."""

from __future__ import annotations

import math
import os
import pathlib
import random
import signal
from typing import Iterable, Union

# Under pytest-xdist (`make test` runs cores + 1 workers), each worker computes on one intra-op
# thread, and so do the processes it starts (tests that need two threads set them); and an
# OpenMP thread that waits yields its core instead of spinning. Otherwise two workers on two
# cores make a two-thread test wait for a descheduled thread at every barrier (4-5x slower,
# measured). Set before torch is imported: OpenMP reads its environment once, when loaded.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The real reference data: ../shared/data beside the checkout, or the folder NWOT_SHARED_DATA names.
SHARED_DATA = pathlib.Path(os.environ.get("NWOT_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")


def pytest_configure(config):
    """Tests that send SIGINT need it handled. A shell without job control starts a background
    command (`make test &`, nohup) with SIGINT ignored, and nwot_fast deliberately keeps an ignored
    SIGINT ignored, in itself and in the processes it starts. Run the suite as from a terminal:
    Python's own handler here, so every child it starts gets the default disposition back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests first, in collection order otherwise. A parallel run (``make test``:
    pytest-xdist, ``--dist loadfile --no-loadscope-reorder``) hands out whole files in this
    order, so the files with the longest tests start first instead of ending the run alone.
    (Starting the three longest files together, the build of test_install, the two-thread
    precision module and the Ray cluster, was slower: 299 / 304 s against 256 / 263 s on 2
    cores, bench/RESULTS.md.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def load_bench_script(name: str):
    """``bench/<name>.py`` as a module (bench/ is not a package). It is in ``sys.modules`` while it
    runs, so that its dataclasses can look their module up, and removed after."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def shared_file(name: str) -> pathlib.Path:
    """A file of the real reference data in ``../shared/data``; skips the test if it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data file {path} not present")
    return path


@pytest.fixture
def accuracies_csv() -> pathlib.Path:
    return shared_file("nb201_accuracies.csv")


@pytest.fixture
def cifar10_npz() -> pathlib.Path:
    return shared_file("cifar10_sample.npz")


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global RNG states (torch, NumPy's legacy generator,
    ``random``), whatever ran before it: an input drawn without an explicit generator is still
    the same in every run, order and process."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared machine two threads on tiny networks spend most of
    their time waiting for each other. Modules opt in with ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> str:
    """16 random 16x16 RGB images with ImageNet16-120 labels (1..120): the cheapest real-image input."""
    import numpy as np

    rng = np.random.default_rng(20240601)
    path = tmp_path_factory.mktemp("data") / "tiny16.npz"
    np.savez(path, x=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), y=rng.integers(1, 121, 16))
    return str(path)


def subprocess_env(threads: int = 1) -> dict:
    """The environment for a child process that must import this checkout, on ``threads`` threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # torch takes its thread count from MKL_NUM_THREADS when that is set, else OMP_NUM_THREADS
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


# The devices every device-parametrised test runs on: the CPU always, CUDA where present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """``"cpu"``, and ``"cuda"`` when a CUDA device is present: a test taking this runs on each."""
    return request.param


def _floats(scores) -> list:
    if isinstance(scores, torch.Tensor):
        return [float(v) for v in scores.detach().cpu().reshape(-1).tolist()]
    if isinstance(scores, np.ndarray):
        return [float(v) for v in scores.reshape(-1)]
    if isinstance(scores, (int, float)):
        return [float(scores)]
    return [float(v) for v in scores]


def assert_scores_close(got: Union[float, Iterable[float], torch.Tensor], want: Union[float, Iterable[float], torch.Tensor],
                        rel: float = 1e-9, what: str = "") -> None:
    """The one comparison of scores (a float, a sequence or a tensor each): the same count; NaN
    exactly where ``want`` is NaN, the same infinity where it is infinite, and elsewhere a
    finite score within ``rel`` of ``want`` relative to it (``rel=0``: equal; absolute for a
    zero ``want``). ``what`` names the scores in the failure message."""
    got_list, want_list = _floats(got), _floats(want)
    assert len(got_list) == len(want_list), f"{what}: {len(got_list)} scores, want {len(want_list)}"
    for k, (g, w) in enumerate(zip(got_list, want_list)):
        where = f"{what}[{k}]" if what else f"score {k}"
        if math.isnan(w):
            assert math.isnan(g), f"{where}: got {g}, want NaN"
        elif math.isinf(w):
            assert g == w, f"{where}: got {g}, want {w}"
        else:
            assert math.isfinite(g) and abs(g - w) <= rel * (abs(w) or 1.0), f"{where}: got {g!r}, want {w!r} (rel {rel})"
