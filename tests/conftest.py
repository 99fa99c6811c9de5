"""Shared test fixtures and the one definition of the `cuda` marker's skip rule.

Tests marked ``@pytest.mark.cuda`` skip when no CUDA device or no CUDA kernels are available; with
``TIKMIX_REQUIRE_CUDA=1`` (the GPU check script sets it) a skip becomes a failure.
"""
from __future__ import annotations

import os

# Small dense solves in the solvers are >100x slower with multi-threaded OpenBLAS on an oversubscribed
# 2-core box; tests pin BLAS to one thread (set before numpy is first imported). Users are unaffected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
import torch


def _cuda_ready() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import tikmix_ext
    except ImportError as exc:  # pragma: no cover - the build is broken
        return False, f"tikmix_ext not importable: {exc}"
    if not tikmix_ext.build_info()["with_cuda"]:
        return False, "tikmix_ext was built without CUDA"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ready, why = _cuda_ready()
    if ready:
        return
    require = os.environ.get("TIKMIX_REQUIRE_CUDA") == "1"
    for item in items:
        if "cuda" in item.keywords:
            if require:
                item.add_marker(pytest.mark.usefixtures("_cuda_required_but_missing"))
            else:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture
def _cuda_required_but_missing():
    pytest.fail(f"TIKMIX_REQUIRE_CUDA=1 but {_cuda_ready()[1]}")
