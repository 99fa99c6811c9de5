"""Benchmark: MixtureSampler throughput on one core and memory vs dataset size.

    python benchmarks/bench_sampler.py            # full table (~30 s)
    python benchmarks/bench_sampler.py --quick    # smaller counts

Throughput rows time (a) ``local_indices`` (vectorised numpy, one call for many steps) and (b) plain
iteration ``for i in sampler`` (what a DataLoader does), pinned to one CPU core. ``idx/s`` counts the
indices this rank yields; a rank computes its whole step's layout (O(batch_size) per step) to place its
slice, so ``step-idx/s`` = idx/s x world_size is the per-core rate in global-batch samples.
The schedule-change rows time ``set_weights`` (it computes one period of the new stage's allocation).
Memory rows run tracemalloc over construction + iterating N indices with 1e3 vs 1e9 samples per domain:
the peak must not grow with the dataset (the per-domain permutation is computed, never stored).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from itertools import islice

import numpy as np

from tikmix.data import MixtureSampler
from tikmix.data._stream import period_steps


def pin_one_core() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return "not pinned"


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def throughput(domains: int, size: int, batch: int, world: int, n: int, repeats: int) -> tuple[float, float]:
    s = MixtureSampler([size] * domains, np.linspace(1, 2, domains), batch_size=batch, seed=1,
                       rank=world - 1, world_size=world)
    steps = max(1, n // s.local_batch_size)
    vec = best_of(lambda: s.local_indices(0, steps), repeats)

    def run_iter() -> None:
        s.seek(0)
        for _ in islice(iter(s), steps * s.local_batch_size):
            pass

    it = best_of(run_iter, repeats)
    total = steps * s.local_batch_size
    return total / vec, total / it


def peak_memory(size: int, n: int) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    s = MixtureSampler([size] * 8, np.ones(8), batch_size=1024, seed=2)
    for _ in islice(iter(s), n):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer indices per row")
    args = ap.parse_args()
    n = 200_000 if args.quick else 1_000_000
    repeats = 2 if args.quick else 3
    pin = pin_one_core()
    print(f"# MixtureSampler benchmark: numpy {np.__version__}, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, {pin}, load avg {os.getloadavg()[0]:.1f}")
    print(f"# {n:,} indices per row, best of {repeats}; target >= 1,000,000 idx/s")
    print()
    print("| domains | samples/domain | batch | world | vectorised idx/s | iterator idx/s | iterator step-idx/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    configs = [
        (8, 10**9, 1024, 1),
        (8, 10**3, 1024, 1),
        (64, 10**9, 4096, 1),
        (4, 10**9, 64, 1),
        (8, 10**9, 1024, 8),
    ]
    for d, size, batch, world in configs:
        vec, it = throughput(d, size, batch, world, n, repeats)
        print(f"| {d} | {size:.0e} | {batch} | {world} | {vec:,.0f} | {it:,.0f} | {it * world:,.0f} |")
    print()
    print("| domains | batch | steps per period | schedule change (set_weights) s |")
    print("|---:|---:|---:|---:|")
    for d, batch in ((7, 1), (7, 32), (64, 4096)):
        s = MixtureSampler([10**9] * d, np.ones(d), batch_size=batch, seed=3)
        rng = np.random.default_rng(0)
        t = best_of(lambda: s.set_weights(rng.random(d) + 0.01, at_step=10), repeats)
        print(f"| {d} | {batch} | {period_steps(batch)} | {t:.4f} |")
    print()
    m = 100_000 if args.quick else 300_000
    print(f"| samples/domain | tracemalloc peak over construction + {m:,} indices |")
    print("|---:|---:|")
    peaks = {size: peak_memory(size, m) for size in (10**3, 10**9)}
    for size, peak in peaks.items():
        print(f"| {size:.0e} | {peak / 1024:,.0f} KiB |")
    ratio = peaks[10**9] / peaks[10**3]
    print(f"\nmemory ratio 1e9 / 1e3 = {ratio:.2f} (flat if ~1)")


if __name__ == "__main__":
    main()
