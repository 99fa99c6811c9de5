"""Every CPU op gives the same bits on 1, 2 and 3 threads, and the build really runs them on several threads.

The CPU kernels split their work by plans that depend on the shapes only, and every output element is summed by one
task in a fixed order (csrc/README.md, "Threads and determinism"); ``torch.set_num_threads`` changes only how many
threads run the tasks. The cases below are chosen so that each op's plan has several tasks (several k-tiles, d-chunks,
row tiles, candidates or column strips), so 2 and 3 threads do split the work differently. 3 threads on a 2-core
machine still run as 3 OpenMP threads.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import pytest
import torch

import tikmix_ext
from test_ops_common import assert_bits_equal, with_threads

THREADS = (1, 2, 3)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def assert_same_bits_on_all_thread_counts(fn: Callable[[], object], name: str, threads: Sequence[int] = THREADS):
    """Runs ``fn`` at each thread count (restoring the count afterwards) and compares every output tensor bit for
    bit with the 1-thread run."""

    def as_list(out: object):
        return list(out) if isinstance(out, (tuple, list)) else [out]

    base = as_list(with_threads(threads[0], fn))
    for t in threads[1:]:
        other = as_list(with_threads(t, fn))
        assert len(other) == len(base)
        for j, (a, b) in enumerate(zip(base, other)):
            assert_bits_equal(b, a, name=f"{name}, output {j}, {t} threads vs {threads[0]}")


def test_build_runs_cpu_ops_in_parallel():
    """With torch's OpenMP backend, at::parallel_for is header code that runs serially unless _C itself is built with
    OpenMP: the build must say it is (else every op silently uses one core)."""
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's intra-op backend is not OpenMP: parallelism does not depend on how _C was built")
    assert tikmix_ext.build_info()["openmp"] is True


SKETCH_CASES: Dict[str, tuple] = {
    # name: (n, d, k, dtype, with scale) — one per kernel path and plan shape
    "fused N<=4": (3, 5000, 700, torch.float32, False),
    "table fp32, 3 k-tiles": (40, 3000, 1100, torch.float32, False),
    "table fp16 with scale": (20, 2000, 600, torch.float16, True),
    "bf16 vdpbf16ps shapes": (10, 4000, 520, torch.bfloat16, False),
    "d-chunked, one k-tile": (8, 40000, 64, torch.float32, False),
    "d-chunked bf16": (33, 20000, 100, torch.bfloat16, False),
    "n-blocked": (300, 700, 64, torch.float32, False),
}


@pytest.mark.parametrize("case", list(SKETCH_CASES))
def test_sketch(case):
    n, d, k, dtype, with_scale = SKETCH_CASES[case]
    x = randn(n, d, seed=n + d, dtype=dtype)
    scale = randn(d, seed=1).abs() if with_scale else None
    assert_same_bits_on_all_thread_counts(lambda: tikmix_ext.sketch(x, k, 5, 2**41 + 3, scale), f"sketch {case}")


def test_sketch_accumulate_():
    x = randn(12, 30000, seed=2)
    start = randn(12, 200, seed=3)

    def run():
        out = start.clone()
        tikmix_ext.sketch_accumulate_(out, x, 9, 1000)
        return out

    assert_same_bits_on_all_thread_counts(run, "sketch_accumulate_")


def test_projection():
    assert_same_bits_on_all_thread_counts(lambda: tikmix_ext.projection(3000, 130, 4, 77), "projection")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sketch_kron(dtype):
    a = randn(24, 40, 300, seed=4, dtype=dtype)
    g = randn(24, 40, 90, seed=5, dtype=dtype)
    assert_same_bits_on_all_thread_counts(lambda: tikmix_ext.sketch_kron(a, g, 48, 20, 3, 2), f"sketch_kron {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["segment_sum", "segment_mean"])
def test_segments(op, dtype):
    x = randn(20000, 300, seed=6, dtype=dtype)
    ids = torch.randint(0, 7, (20000,), generator=torch.Generator().manual_seed(7))
    fn = getattr(tikmix_ext, op)
    assert_same_bits_on_all_thread_counts(lambda: fn(x, ids, 7), f"{op} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n_train,k,n_target,with_precond",
    [(64, 8192, 2, False), (3000, 1024, 5, False), (3000, 1024, 5, True), (200, 300, 70, True)],
)
def test_group_influence(dtype, n_train, k, n_target, with_precond):
    # (64, 8192, 2) and (3000, 1024, 5) are shapes where a BLAS sgemm changes its bits with the thread count.
    train = randn(n_train, k, seed=8, dtype=dtype)
    target = randn(n_target, k, seed=9, dtype=dtype)
    ids = torch.arange(n_train) % 6
    precond = None
    if with_precond:
        m = randn(k, min(k, 64), seed=10, dtype=dtype) / math.sqrt(k)
        precond = m @ m.T + torch.eye(k, dtype=dtype)
    assert_same_bits_on_all_thread_counts(
        lambda: tikmix_ext.group_influence(train, ids, 6, target, precond), f"group_influence {dtype}"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_scores(dtype):
    per_sample = randn(5000, 6, seed=11, dtype=dtype)
    ids = torch.arange(5000) % 9
    candidates = torch.rand(40, 9, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    assert_same_bits_on_all_thread_counts(
        lambda: tikmix_ext.mixture_scores(per_sample, ids, candidates, 700, 13), f"mixture_scores {dtype}"
    )
