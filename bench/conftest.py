"""Collect ``bench/bench_*.py`` when running ``pytest bench/`` (they are not named test_*.py,
so the default ``pytest`` run of ``tests/`` never picks them up)."""

from __future__ import annotations

import pytest


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
