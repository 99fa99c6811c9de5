"""pytest-benchmark suite: every case runs beside its baseline in one session.

    pytest benchmarks/ --benchmark-only                         # quick sizes (a few minutes on 2 CPU cores)
    pytest benchmarks/ --benchmark-only --bench-size full       # the sizes of the published tables
    pytest benchmarks/ --benchmark-only --benchmark-autosave    # save JSON under .benchmarks/
    pytest benchmarks/ --benchmark-only --benchmark-compare     # compare with the last saved run
    python benchmarks/tables.py FILE.json                       # Markdown tables, each case vs its baseline

Each benchmark sets ``benchmark.group`` to its comparison (the same inputs for every member) and
``extra_info["role"]`` to ``"baseline"`` or ``"case"``; ``tables.py`` reports every case as a ratio to the
baseline of its group. Benchmarks marked ``cuda`` skip without a CUDA device.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import pytest

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the solver matrices are small: multi-threaded BLAS only spin-waits

SIZES = ("smoke", "quick", "full")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-size", choices=SIZES, default="quick",
                     help="problem sizes: smoke (seconds, checks the code runs), quick (default), full (the docs' tables)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def size(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--bench-size")


@pytest.fixture
def measure(benchmark: Any, size: str) -> Callable[..., Any]:
    """``measure(fn, group=..., role="case"|"baseline", rounds=N, warmup=1, **info)``: time ``fn`` (``warmup``
    untimed calls, then ``rounds`` rounds of one call; one round and no warm-up at smoke size) and return its last
    result. ``measure.benchmark`` is the pytest-benchmark fixture (for ``extra_info`` known only afterwards)."""

    def run(fn: Callable[[], Any], *, group: str, role: str = "case", rounds: int = 3, warmup: int = 1,
            **info: Any) -> Any:
        if role not in ("case", "baseline"):
            raise ValueError(f"role must be 'case' or 'baseline', got {role!r}")
        benchmark.group = group
        benchmark.extra_info.update(role=role, size=size, **info)
        if size == "smoke":
            rounds, warmup = 1, 0
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)

    run.benchmark = benchmark  # type: ignore[attr-defined]
    return run
