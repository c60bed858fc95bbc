"""Shared fixtures: paths to the real data beside the repository, seeded generators."""

from __future__ import annotations

import pathlib
import random

import numpy as np
import pytest
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


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
