"""CPU sketch vs torch.matmul with a stored projection R (fp32, bf16) and TRAK's BasicProjector, same inputs.

The stored matrix comes from ``bench_sketch_cpu.py``'s ``materialise`` (R itself, so every method computes the
same product); ``bench_sketch_cpu.py`` also compares the CPU kernel paths (``TIKMIX_CPU_ISA``), which need one
process each.
"""
from __future__ import annotations

import pytest
import torch

import tikmix_ext
from bench_sketch_cpu import has_bf16_matmul, materialise, mem_available

SHAPES = {"smoke": (8, 1 << 12, 64), "quick": (64, 1 << 18, 1024), "full": (64, 1 << 20, 1024)}
METHODS = ("sketch fp32", "sketch bf16", "matmul fp32 stored R", "matmul bf16 stored R", "TRAK BasicProjector")


@pytest.fixture(scope="module")
def shape(size: str) -> tuple[int, int, int]:
    return SHAPES[size]


@pytest.fixture(scope="module")
def inputs(shape: tuple[int, int, int]) -> dict:
    n, d, k = shape
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    return {"x": x, "xb": x.to(torch.bfloat16), "R": {}}


def _stored(inputs: dict, d: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    if dtype not in inputs["R"]:
        need = d * k * torch.tensor([], dtype=dtype).element_size()
        if need > 0.6 * mem_available():
            pytest.skip(f"a stored R of {need / 2**30:.1f} GiB does not fit in memory")
        inputs["R"][dtype] = materialise(d, k, 0, dtype)
    return inputs["R"][dtype]


@pytest.mark.parametrize("method", METHODS)
def test_sketch_cpu(measure, shape, inputs, method: str, size: str) -> None:
    n, d, k = shape
    torch.set_num_threads(2 if size != "smoke" else 1)
    x, xb = inputs["x"], inputs["xb"]
    if method == "sketch fp32":
        fn = lambda: tikmix_ext.sketch(x, k, 0)  # noqa: E731
    elif method == "sketch bf16":
        fn = lambda: tikmix_ext.sketch(xb, k, 0)  # noqa: E731
    elif method == "matmul fp32 stored R":
        R = _stored(inputs, d, k, torch.float32)
        fn = lambda: torch.matmul(x, R)  # noqa: E731
    elif method == "matmul bf16 stored R":
        if size != "smoke" and not has_bf16_matmul():
            pytest.skip("no bf16 instructions on this CPU: oneDNN's emulated bf16 matmul takes minutes at this size")
        R = _stored(inputs, d, k, torch.bfloat16)
        fn = lambda: torch.matmul(xb, R)  # noqa: E731
    else:
        projectors = pytest.importorskip("trak.projectors", reason="TRAK is not installed (pip install traker --no-deps)")
        proj = projectors.BasicProjector(d, k, 0, projectors.ProjectionType.rademacher, torch.device("cpu"),
                                         dtype=torch.float32)
        fn = lambda: proj.project(x, model_id=0)  # noqa: E731
    y = measure(fn, group=f"sketch CPU N={n} d={d} k={k}", rounds=3,
                role="baseline" if method == "matmul fp32 stored R" else "case", method=method,
                threads=torch.get_num_threads())
    assert y.shape == (n, k)
