"""GPU benchmark of tikmix's CUDA ops (run by benchmarks/gpu_check.sh on an H200; needs a CUDA build).

Prints one table: time and achieved TFLOP/s (2·N·D·k) of ``sketch`` at the shapes of benchmarks/GPU_NOTES.md —
A: (N=64, D=1e8, k=8192) bf16, the target (≤ 190 ms on an H200), B: N=16, C: N=256, D: (N=1, D=1e9, k=16384),
E: shape A with float32 input (exact 3-way bf16 split) — against dense bf16 ``torch.matmul`` with a stored
matrix where it fits in memory (a reduced D otherwise, marked) and TRAK's ``fast_jl`` CudaProjector when it is
installed; then per-op timings of the other ops. Times are CUDA-event medians after a warm-up; every stage runs in
its own try block and the summary names what failed. Full results go to OUT/bench_sketch_gpu.json.

    python benchmarks/bench_sketch_gpu.py --out DIR [--quick] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import torch

SKETCH_SHAPES = [  # name, N, D, k, dtype, note
    ("A", 64, 100_000_000, 8192, "bfloat16", "target ≤ 190 ms (≥ 550 TFLOP/s)"),
    ("B", 16, 100_000_000, 8192, "bfloat16", "generation-bound"),
    ("C", 256, 100_000_000, 8192, "bfloat16", "4 sample groups"),
    ("D", 1, 1_000_000_000, 16384, "bfloat16", "generation-bound, N padded to 8"),
    ("E", 64, 100_000_000, 8192, "float32", "exact hi/mid/lo split: 3x MMA"),
]
QUICK_SCALE = 100  # --quick divides D by this (smoke test of the script itself)
DENSE_MAX_BYTES = 24 * 2**30  # a stored bf16 matrix up to 24 GiB "fits" (with x and the output beside it)


@dataclass
class Row:
    name: str
    what: str
    n: int
    d: int
    k: int
    dtype: str
    ms: Optional[float] = None
    tflops: Optional[float] = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def cuda_time_ms(fn: Callable[[], object], reps: int, warmup: int = 1) -> List[float]:
    """Per-call times (ms) by CUDA events, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return times


def reps_for(estimate_ms: float, budget_ms: float = 3000.0, lo: int = 3, hi: int = 20) -> int:
    return int(max(lo, min(hi, budget_ms // max(estimate_ms, 1e-3))))


def tflops(n: int, d: int, k: int, ms: float) -> float:
    return 2.0 * n * d * k / (ms * 1e-3) / 1e12


def release() -> None:
    """Return cached blocks after a stage (its tensors are gone with its function's frame)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _record_failure(row: Row, failures: List[str], label: str, exc: Exception) -> None:
    """Mark ``row`` FAILED, list the failure and print its traceback (call inside the ``except`` block); the
    remaining measurements still run."""
    row.note = f"FAILED: {exc}"
    failures.append(f"{label}: {exc}")
    traceback.print_exc()


def random_x(n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """Fresh random input (never zeros: they can run faster than real data), generated in place on the GPU."""
    x = torch.empty(n, d, dtype=dtype, device="cuda")
    x.normal_()
    return x


def _sketch_one(row: Row) -> None:
    ops = torch.ops.tikmix
    n, d, k = row.n, row.d, row.k
    x = random_x(n, d, getattr(torch, row.dtype))
    out = ops.sketch(x, k, 1, 0)  # first call: module load etc.
    torch.cuda.synchronize()
    out.fill_(float("nan"))  # poison: every entry must be written
    out = ops.sketch(x, k, 1, 0)
    torch.cuda.synchronize()
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("non-finite output (unwritten entries?)")
    # chunk additivity on the real shape: two segments with offsets sum to the whole (to fp32 rounding)
    half = d // 2 + 3
    acc = torch.zeros_like(out)
    ops.sketch_accumulate_(acc, x[:, :half], 1, 0)
    ops.sketch_accumulate_(acc, x[:, half:], 1, half)
    rel = ((acc - out).norm() / out.norm()).item()
    row.extra["segments_rel_diff"] = rel
    if not rel < 1e-5:
        raise RuntimeError(f"segment additivity relative difference {rel:.2e}")
    del acc
    t0 = time.perf_counter()
    ops.sketch(x, k, 1, 0)
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    times = cuda_time_ms(lambda: ops.sketch(x, k, 1, 0), reps_for(est), warmup=0)
    row.ms = statistics.median(times)
    row.tflops = tflops(n, d, k, row.ms)
    row.extra["times_ms"] = times
    row.extra["deterministic"] = bool(torch.equal(ops.sketch(x, k, 1, 0), out))
    if not row.extra["deterministic"]:
        raise RuntimeError("two runs gave different bits")


def bench_sketch(rows: List[Row], failures: List[str], quick: bool) -> None:
    for name, n, d, k, dt, note in SKETCH_SHAPES:
        row = Row(name, "tikmix sketch", n, d // QUICK_SCALE if quick else d, k, dt, note=note)
        rows.append(row)
        try:
            _sketch_one(row)
        except Exception as exc:  # noqa: BLE001 - a benchmark stage must not stop the others
            _record_failure(row, failures, f"sketch {name}", exc)
        release()


def _dense_one(row: Row, stored: bool) -> None:
    x = random_x(row.n, row.d, torch.bfloat16)
    if stored:
        r = torch.empty(row.d, row.k, dtype=torch.bfloat16, device="cuda")
        r.bernoulli_(0.5).mul_(2).sub_(1)  # ±1, stored
        fn = lambda: torch.matmul(x, r)  # noqa: E731
    else:
        fn = lambda: torch.ops.tikmix.sketch(x, row.k, 1, 0)  # noqa: E731
    times = cuda_time_ms(fn, reps=10, warmup=2)
    row.ms = statistics.median(times)
    row.tflops = tflops(row.n, row.d, row.k, row.ms)
    row.extra["times_ms"] = times


def bench_dense(rows: List[Row], failures: List[str], quick: bool) -> None:
    """Dense bf16 torch.matmul with a stored R at shape A if it fits (it does not: a reduced D), and ours there."""
    n, d_full, k = 64, 100_000_000, 8192
    if d_full * k * 2 <= DENSE_MAX_BYTES:
        d, note = d_full, ""
    else:
        d = 1 << 20  # a 16 GiB bf16 matrix
        note = f"stored R at D={d_full:.0e} needs {d_full * k * 2 / 2**40:.1f} TiB: D=2^20 here"
    if quick:
        d //= QUICK_SCALE
    for what, stored in (("torch.matmul bf16, stored R", True), ("tikmix sketch (same shape)", False)):
        row = Row("dense", what, n, d, k, "bfloat16", note=note)
        rows.append(row)
        try:
            _dense_one(row, stored)
        except Exception as exc:  # noqa: BLE001
            _record_failure(row, failures, f"dense {what}", exc)
        release()


def bench_trak(rows: List[Row], failures: List[str], quick: bool) -> None:
    """TRAK's fast_jl CudaProjector (fp16, k a multiple of 512, ≤ 32 rows per launch) at shape A, if installed."""
    try:
        from trak.projectors import CudaProjector, ProjectionType  # type: ignore[import-not-found]
        import fast_jl  # type: ignore[import-not-found]  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        rows.append(Row("trak", "TRAK fast_jl CudaProjector", 64, 0, 8192, "float16",
                        note=f"not installed ({type(exc).__name__}); offline machine: carry a wheel to compare"))
        return
    n, d, k = 64, 100_000_000 // (QUICK_SCALE if quick else 1), 8192
    row = Row("trak", "TRAK fast_jl CudaProjector", n, d, k, "float16")
    rows.append(row)
    try:
        proj = CudaProjector(grad_dim=d, proj_dim=k, seed=0, proj_type=ProjectionType.rademacher, device="cuda",
                             max_batch_size=32)
        x = random_x(n, d, torch.float16)
        times = cuda_time_ms(lambda: proj.project(x, model_id=0), reps=3, warmup=1)
        row.ms = statistics.median(times)
        row.tflops = tflops(n, d, k, row.ms)
        del x, proj
    except Exception as exc:  # noqa: BLE001
        _record_failure(row, failures, "trak", exc)
    release()


def bench_other_ops(rows: List[Row], failures: List[str], quick: bool) -> None:
    ops = torch.ops.tikmix
    s = 10 if quick else 1
    n_rows, k, groups, n_targets = 100_000 // s, 8192, 16, 8

    def case(name: str, make: Callable[[], Callable[[], object]], bytes_moved: float, note: str = "") -> None:
        row = Row(name, "per-op", n_rows, 0, k, "float32", note=note)
        rows.append(row)
        try:
            fn = make()
            times = cuda_time_ms(fn, reps=10, warmup=2)
            row.ms = statistics.median(times)
            row.extra["GB/s"] = bytes_moved / (row.ms * 1e-3) / 1e9 if bytes_moved else None
            row.note = (note + f"; {row.extra['GB/s']:.0f} GB/s" if bytes_moved else note).strip("; ")
        except Exception as exc:  # noqa: BLE001
            _record_failure(row, failures, name, exc)
        release()

    x = torch.randn(n_rows, k, device="cuda")
    ids = torch.randint(0, groups, (n_rows,), device="cuda")
    target = torch.randn(n_targets, k, device="cuda")
    case("segment_sum", lambda: (lambda: ops.segment_sum(x, ids, groups)), x.numel() * 4.0, f"G={groups}")
    case("segment_mean", lambda: (lambda: ops.segment_mean(x, ids, groups)), x.numel() * 4.0, f"G={groups}")
    case("group_influence", lambda: (lambda: ops.group_influence(x, ids, groups, target)), x.numel() * 4.0,
         f"n={n_targets} targets")
    per = torch.randn(n_rows, n_targets, device="cuda")
    cands = torch.rand(1000, groups, device="cuda")
    case("mixture_scores", lambda: (lambda: ops.mixture_scores(per, ids, cands, 4096, 0)), 0.0,
         "C=1000 candidates, 4096 draws, n=8")
    del x, ids, target, per, cands
    release()
    a = torch.randn(8, 2048 // s, 4096, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(8, 2048 // s, 4096, device="cuda", dtype=torch.bfloat16)
    row_name = "sketch_kron"
    case(row_name, lambda: (lambda: ops.sketch_kron(a, g, 64, 64, 0, 3)), 0.0,
         "N=8, T=2048, i=o=4096, k_in=k_out=64, bf16")
    del a, g
    release()


def format_table(rows: List[Row], device: str) -> str:
    lines = [f"tikmix GPU benchmark on {device}",
             f"{'shape':<6} {'what':<30} {'N':>5} {'D':>11} {'k':>6} {'dtype':<9} {'ms':>9} {'TFLOP/s':>8}  note"]
    for r in rows:
        ms = f"{r.ms:9.2f}" if r.ms is not None else f"{'-':>9}"
        tf = f"{r.tflops:8.1f}" if r.tflops is not None else f"{'-':>8}"
        d = f"{r.d:11.3g}" if r.d else f"{'-':>11}"
        lines.append(f"{r.name:<6} {r.what:<30} {r.n:>5} {d} {r.k:>6} {r.dtype:<9} {ms} {tf}  {r.note}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the JSON and table")
    parser.add_argument("--quick", action="store_true", help=f"D divided by {QUICK_SCALE}: a smoke test")
    parser.add_argument("--dry-run", action="store_true", help="print the planned shapes and exit (no GPU)")
    args = parser.parse_args(argv)
    if args.dry_run:
        for name, n, d, k, dt, note in SKETCH_SHAPES:
            print(f"{name}: N={n} D={d:.0e} k={k} {dt} ({note}); {2 * n * d * k / 1e12:.1f} TFLOP per call")
        return 0
    if not torch.cuda.is_available():
        print("bench_sketch_gpu: no CUDA device", file=sys.stderr)
        return 2
    import tikmix_ext

    info = tikmix_ext.build_info()
    if not info.get("with_cuda"):
        print("bench_sketch_gpu: tikmix_ext was built without CUDA", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    device = f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    rows: List[Row] = []
    failures: List[str] = []
    for stage in (bench_sketch, bench_dense, bench_trak, bench_other_ops):
        t0 = time.perf_counter()
        try:
            stage(rows, failures, args.quick)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{stage.__name__}: {exc}")
            traceback.print_exc()
        print(f"[{stage.__name__}: {time.perf_counter() - t0:.1f} s]", flush=True)
    table = format_table(rows, device)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_sketch_gpu.json"), "w") as f:
        json.dump({"device": device, "build_info": {k: v for k, v in info.items() if k != "kernels"},
                   "rows": [asdict(r) for r in rows], "failures": failures}, f, indent=1, default=str)
    with open(os.path.join(args.out, "bench_table.txt"), "w") as f:
        f.write(table + "\n")
    print(table)
    if failures:
        print("FAILED stages:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
