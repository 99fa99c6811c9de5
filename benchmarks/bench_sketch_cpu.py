"""CPU benchmark of tikmix.sketch against its peers, side by side in one run, printed as one table.

Peers at each shape (N, d, k):
  * torch.matmul with a pre-materialised R (float32, and bfloat16 for bf16 input) — needs d·k·4 (·2) bytes, so at
    large d it may not fit: reported as ``n/a (needs X GiB)``;
  * TRAK's CPU projector (PyPI ``traker``: ``trak.projectors.BasicProjector``, Rademacher, float32), if importable
    (``pip install traker --no-deps`` is enough).

Timings are wall-clock, best and median of ``--repeats`` runs (round-robin over the methods, so background load
hits all alike), ``--threads`` torch threads. Ratios are against the float32 materialised matmul (``mm fp32``).
Performance goals: sketch fp32 ≤ 1.0× mm fp32; sketch bf16 input ≤ 0.5× mm fp32; sketch fp32 ≥ 10× faster than TRAK.

    python benchmarks/bench_sketch_cpu.py                 # (64, 2^20, 1024) and (64, 2^22, 1024), 2 threads
    python benchmarks/bench_sketch_cpu.py --quick         # (64, 2^18, 1024) only, TRAK once: about a minute
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

import tikmix_ext

GiB = float(1 << 30)


def mem_available() -> float:
    """Bytes of memory available to a new allocation (Linux /proc/meminfo; otherwise physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def materialise(d: int, k: int, seed: int, dtype: torch.dtype, rows: int = 1 << 16) -> torch.Tensor:
    """R[0:d, :k] as ``dtype`` (the sketch's own matrix, so every method computes the same product)."""
    R = torch.empty(d, k, dtype=dtype)
    for r0 in range(0, d, rows):
        n = min(rows, d - r0)
        R[r0 : r0 + n] = tikmix_ext.projection(n, k, seed, r0).to(dtype)
    return R


def trak_projector(d: int, k: int):
    try:
        from trak.projectors import BasicProjector, ProjectionType
    except Exception as exc:  # noqa: BLE001 — reported in the table
        return None, f"not installed ({type(exc).__name__}: pip install traker --no-deps)"
    proj = BasicProjector(d, k, 0, ProjectionType.rademacher, torch.device("cpu"), dtype=torch.float32)
    return proj, ""


def bench_shape(n: int, d: int, k: int, repeats: int, trak_repeats: int, mem_fraction: float) -> List[Tuple]:
    """Rows (method, input dtype, best s, median s, note) for one shape."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    xb = x.to(torch.bfloat16)
    methods: Dict[str, Callable[[], object]] = {
        "tikmix.sketch fp32": lambda: tikmix_ext.sketch(x, k, 0),
        "tikmix.sketch bf16": lambda: tikmix_ext.sketch(xb, k, 0),
    }
    notes: Dict[str, str] = {}
    budget = mem_fraction * mem_available()
    need32, need16 = d * k * 4, d * k * 2
    mats: Dict[str, torch.Tensor] = {}
    if need32 <= budget:
        mats["fp32"] = materialise(d, k, 0, torch.float32)
        methods["torch.matmul fp32 (stored R)"] = lambda: torch.matmul(x, mats["fp32"])
    else:
        notes["torch.matmul fp32 (stored R)"] = f"n/a (needs {need32 / GiB:.0f} GiB)"
    if need16 + (need32 if "fp32" in mats else 0) <= budget:
        mats["bf16"] = mats["fp32"].to(torch.bfloat16) if "fp32" in mats else materialise(d, k, 0, torch.bfloat16)
        methods["torch.matmul bf16 (stored R)"] = lambda: torch.matmul(xb, mats["bf16"])
    else:
        notes["torch.matmul bf16 (stored R)"] = f"n/a (needs {need16 / GiB:.0f} GiB)"

    # Warm up (first-touch page faults, thread pools), check agreement, then round-robin timings.
    y = tikmix_ext.sketch(x, k, 0)
    if "fp32" in mats:
        ref = torch.matmul(x, mats["fp32"])
        err = (y - ref).abs().max().item() / ref.abs().max().item()
        assert err < 1e-4, f"sketch and stored-matrix matmul disagree: relative error {err:.2e}"
    for fn in methods.values():
        fn()
    times: Dict[str, List[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn))

    trak_name = "TRAK BasicProjector fp32"
    if trak_repeats > 0:
        proj, why = trak_projector(d, k)
        if proj is None:
            notes[trak_name] = why
        else:
            times[trak_name] = [timed(lambda: proj.project(x, model_id=0)) for _ in range(trak_repeats)]
            del proj
    else:
        notes[trak_name] = "skipped (--trak-repeats 0)"
    del mats
    gc.collect()

    rows = []
    order = [
        "tikmix.sketch fp32",
        "tikmix.sketch bf16",
        "torch.matmul fp32 (stored R)",
        "torch.matmul bf16 (stored R)",
        trak_name,
    ]
    for name in order:
        if name in times:
            t = times[name]
            rows.append((name, min(t), statistics.median(t), len(t), ""))
        else:
            rows.append((name, None, None, 0, notes.get(name, "")))
    return rows


def fmt_s(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:8.3f}"


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (best and median reported)")
    p.add_argument("--trak-repeats", type=int, default=None, help="TRAK runs per shape (default: --repeats; 0 skips)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--log2d", type=int, nargs="+", default=[20, 22], help="log2 of d for each shape")
    p.add_argument("--quick", action="store_true", help="d=2^18 only, TRAK once")
    p.add_argument("--mem-fraction", type=float, default=0.6, help="share of available memory a stored R may use")
    a = p.parse_args(argv)
    if a.quick:
        a.log2d, a.trak_repeats = [18], 1 if a.trak_repeats is None else a.trak_repeats
    trak_repeats = a.repeats if a.trak_repeats is None else a.trak_repeats
    torch.set_num_threads(a.threads)

    info = tikmix_ext.build_info()
    cpu, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = info.get("cpu_isa") or ("avx512-bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags else "generic")
    print(f"# tikmix CPU sketch benchmark — {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{a.threads} threads, sketch kernels: {isa}, AMX: {'yes' if 'amx_bf16' in flags else 'no'}")
    print(f"# wall-clock seconds, best and median of {a.repeats} (TRAK: {trak_repeats}); ratio = best / best of mm fp32")
    header = f"| {'shape (N, d, k)':<20} | {'method':<30} | {'best s':>8} | {'median s':>8} | {'vs mm fp32':>10} | note"
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:]))
    for log2d in a.log2d:
        n, d, k = a.n, 1 << log2d, a.k
        rows = bench_shape(n, d, k, a.repeats, trak_repeats, a.mem_fraction)
        base = next((r[1] for r in rows if r[0] == "torch.matmul fp32 (stored R)"), None)
        base16 = next((r[1] for r in rows if r[0] == "torch.matmul bf16 (stored R)"), None)
        ours32 = next(r[1] for r in rows if r[0] == "tikmix.sketch fp32")
        trak = next((r[1] for r in rows if r[0].startswith("TRAK")), None)
        for name, best, med, count, note in rows:
            ratio = f"{best / base:9.2f}×" if (best is not None and base) else "—"
            extra = note
            if name == "tikmix.sketch fp32" and base:
                extra = f"target ≤ 1.0×: {'met' if best <= base else 'NOT met'}"
            if name == "tikmix.sketch bf16" and base:
                extra = f"target ≤ 0.5×: {'met' if best <= 0.5 * base else 'NOT met'}"
            if name.startswith("tikmix.sketch") and not base and base16:
                extra = f"mm fp32 n/a; {best / base16:.2f}× mm bf16"
            if name.startswith("TRAK") and best is not None:
                speed = best / ours32
                extra = f"sketch fp32 is {speed:.1f}× faster (target ≥ 10×: {'met' if speed >= 10 else 'NOT met'})"
            print(f"| {f'({n}, 2^{log2d}, {k})':<20} | {name:<30} | {fmt_s(best):>8} | {fmt_s(med):>8} | "
                  f"{ratio:>10} | {extra}")


if __name__ == "__main__":
    main()
