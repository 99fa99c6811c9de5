"""GPU sketch vs dense bf16 torch.matmul with a stored projection R (same x, same k), on a CUDA device.

Inputs come from ``bench_sketch_gpu.py``'s ``random_x``; ``bench_sketch_gpu.py`` itself prints the full table
(shapes up to D = 1e9, TRAK's fast_jl, the other ops) and is run by ``gpu_check.sh`` beside this suite.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.cuda

# (N, D, k): the dense baseline needs a stored bf16 R of D*k*2 bytes (16 GiB at D=2^20, k=8192)
SHAPES = {"smoke": (8, 1 << 14, 256), "quick": (64, 1 << 20, 8192), "full": (64, 1 << 20, 8192)}
LARGE = {"smoke": None, "quick": None, "full": (64, 100_000_000, 8192)}  # shape A: no dense baseline fits


def _synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


@pytest.mark.parametrize("method", ["sketch bf16", "sketch fp32", "matmul bf16 stored R"])
def test_sketch_gpu(measure, size: str, method: str) -> None:
    import tikmix_ext  # noqa: F401  (registers torch.ops.tikmix)
    from bench_sketch_gpu import random_x

    n, d, k = SHAPES[size]
    x = random_x(n, d, torch.float32 if method == "sketch fp32" else torch.bfloat16)
    if method == "matmul bf16 stored R":
        R = torch.empty(d, k, dtype=torch.bfloat16, device="cuda").bernoulli_(0.5).mul_(2).sub_(1)
        fn = _synced(lambda: torch.matmul(x, R))
    else:
        fn = _synced(lambda: torch.ops.tikmix.sketch(x, k, 1, 0))
    y = measure(fn, group=f"sketch GPU N={n} D={d} k={k}", rounds=10,
                role="baseline" if method == "matmul bf16 stored R" else "case", method=method,
                device=torch.cuda.get_device_name(0), tflops_per_s_at_1s=2.0 * n * d * k / 1e12)
    assert y.shape == (n, k)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_sketch_gpu_large(measure, size: str, dtype: str) -> None:
    if LARGE[size] is None:
        pytest.skip("the D = 1e8 shape runs at --bench-size full")
    import tikmix_ext  # noqa: F401
    from bench_sketch_gpu import random_x

    n, d, k = LARGE[size]
    x = random_x(n, d, torch.bfloat16 if dtype == "bf16" else torch.float32)
    y = measure(_synced(lambda: torch.ops.tikmix.sketch(x, k, 1, 0)), group=f"sketch GPU N={n} D={d} k={k}",
                rounds=5, method=f"sketch {dtype}", device=torch.cuda.get_device_name(0),
                tflops_per_s_at_1s=2.0 * n * d * k / 1e12)
    assert y.shape == (n, k)
