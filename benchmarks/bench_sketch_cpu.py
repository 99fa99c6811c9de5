"""CPU benchmark of tikmix.sketch against its peers and across its kernel paths, side by side in one run.

Per shape (N, d, k), interleaved round-robin (background load hits every method alike), min over rounds:
  * tikmix.sketch, fp32 and bf16 input, on every kernel path this CPU supports (avx512-bf16, avx512, avx2, generic;
    each path runs in its own worker process with TIKMIX_CPU_ISA set, since the path is chosen once per process),
    at --threads threads, and the best path also at 1 thread (thread scaling);
  * torch.matmul with the materialised R, fp32 (MKL sgemm) and bf16 (oneDNN), at --threads and at 1 thread;
  * TRAK's CPU projector (``trak.projectors.BasicProjector``, Rademacher, fp32; ``pip install traker --no-deps``),
    one round (it is ~20–50× slower).
Throughput is GFLOP-equivalent/s = 2·N·d·k / time, against the box's own peaks measured in the same rounds
(an FMA-bound sgemm and a bf16 matmul, 4096³, at --threads threads and at 1 thread, interleaved with the rest).

    python benchmarks/bench_sketch_cpu.py              # (64, 2^20, 1024) and (64, 2^18, 4096), 3 rounds
    python benchmarks/bench_sketch_cpu.py --quick      # (64, 2^16, 1024), 2 rounds, all paths: about a minute

The functions (``bench_shape``, ``print_table``, ``measure_peaks``, ``PathWorker``) are importable for other harnesses.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

import tikmix_ext

GiB = float(1 << 30)
PEAK_SIZE = 4096  # the peak matmuls are PEAK_SIZE³
PATHS = ("avx512bf16", "avx512", "avx2", "generic")
REPORTED = {"avx512bf16": "avx512-bf16", "avx512": "avx512", "avx2": "avx2", "generic": "generic"}


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


def _cpuinfo() -> tuple[str, set]:
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def has_bf16_matmul() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX). Without them oneDNN's bf16 matmul
    runs an emulation at about 1 GFLOP/s (measured on an AVX2-only AMD EPYC): minutes per call at these shapes, and
    no baseline anyone would use there."""
    _, flags = _cpuinfo()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_description() -> str:
    model, flags = _cpuinfo()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(isa) or 'none of interest'}"


def timed(fn: Callable[[], object], threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sample_x(n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """The benchmark input (same values in every process)."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0)).to(dtype)


def materialise(d: int, k: int, seed: int, dtype: torch.dtype, rows: int = 1 << 16) -> torch.Tensor:
    """R[0:d, :k] as ``dtype`` (the sketch's own matrix, so every method computes the same product)."""
    R = torch.empty(d, k, dtype=dtype)
    for r0 in range(0, d, rows):
        n = min(rows, d - r0)
        R[r0 : r0 + n] = tikmix_ext.projection(n, k, seed, r0).to(dtype)
    return R


def measure_peaks(threads: Sequence[int], rounds: int = 3, size: int = 4096) -> Dict[str, float]:
    """GFLOP/s of an FMA-bound fp32 sgemm (MKL) and a bf16 matmul (oneDNN), size³, min time over rounds, interleaved,
    at each thread count: keys ``sgemm t{n}`` and ``bf16 mm t{n}``."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    ab, bb = a.to(torch.bfloat16), b.to(torch.bfloat16)
    flops = 2.0 * size**3
    methods = {}
    for t in threads:
        methods[f"sgemm t{t}"] = (lambda: torch.mm(a, b), t)
        methods[f"bf16 mm t{t}"] = (lambda: torch.mm(ab, bb), t)
    best = {name: float("inf") for name in methods}
    for name, (fn, t) in methods.items():  # warm-up
        timed(fn, t)
    for _ in range(rounds):
        for name, (fn, t) in methods.items():
            best[name] = min(best[name], timed(fn, t))
    return {name: flops / s / 1e9 for name, s in best.items()}


@dataclass
class PathWorker:
    """A process with TIKMIX_CPU_ISA=``path`` that times ``tikmix.sketch`` on request (one line of JSON each way)."""

    path: str
    proc: subprocess.Popen = field(init=False)
    isa: str = field(init=False)

    def __post_init__(self) -> None:
        env = dict(os.environ, TIKMIX_CPU_ISA=self.path)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.isa = self.ask({"op": "isa"})["isa"]

    def ask(self, msg: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sketch worker for {self.path} died (exit code {self.proc.poll()})")
        return json.loads(line)

    def time_sketch(self, n: int, d: int, k: int, dtype: str, threads: int) -> float:
        return self.ask({"op": "sketch", "n": n, "d": d, "k": k, "dtype": dtype, "threads": threads})["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask({"op": "quit"})
            self.proc.wait(timeout=60)


def worker_loop() -> None:
    """The --worker side of PathWorker: keeps the current shape's inputs and times one call per request."""
    cache: Dict[tuple, torch.Tensor] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            print(json.dumps({}), flush=True)
            return
        if msg["op"] == "isa":
            print(json.dumps({"isa": tikmix_ext.build_info()["cpu_isa"]}), flush=True)
            continue
        key = (msg["n"], msg["d"], msg["dtype"])
        if key not in cache:
            cache.clear()
            gc.collect()
            x32 = sample_x(msg["n"], msg["d"], torch.float32)
            cache[(msg["n"], msg["d"], "fp32")] = x32
            cache[(msg["n"], msg["d"], "bf16")] = x32.to(torch.bfloat16)
            tikmix_ext.sketch(x32, msg["k"], 0)  # warm-up: page faults, thread pool
        x = cache[key]
        seconds = timed(lambda: tikmix_ext.sketch(x, msg["k"], 0), msg["threads"])
        print(json.dumps({"seconds": seconds}), flush=True)


@dataclass
class Row:
    method: str
    threads: int
    seconds: Optional[float]
    rounds: int
    note: str = ""


def bench_shape(n: int, d: int, k: int, rounds: int, threads: int, workers: Sequence[PathWorker], trak: bool,
                mem_fraction: float = 0.6, bf16_matmul: Optional[bool] = None) -> List[Row]:
    """One shape: every method interleaved, min over rounds (slow ones — the generic path, TRAK — 1 round).

    ``bf16_matmul``: time the bf16 matmuls (the stored-R baseline and the bf16 peak); None: only where the CPU has
    bf16 instructions (:func:`has_bf16_matmul`), otherwise they are reported as not measured."""
    if bf16_matmul is None:
        bf16_matmul = has_bf16_matmul()
    no_bf16 = "n/a: no bf16 instructions on this CPU (oneDNN emulates them at ~1 GFLOP/s); --bf16-matmul times it"
    x = sample_x(n, d, torch.float32)
    xb = x.to(torch.bfloat16)
    methods: Dict[tuple, tuple] = {}  # (name, threads) -> (timer returning seconds, rounds)
    notes: Dict[str, str] = {}
    for w in workers:
        slow = w.isa == "generic"
        for dt in ("fp32", "bf16"):
            methods[(f"sketch {dt} [{w.isa}]", threads)] = (
                lambda w=w, dt=dt: w.time_sketch(n, d, k, dt, threads), 1 if slow else rounds)
    if workers and threads != 1:
        best = workers[0]
        for dt in ("fp32", "bf16"):
            methods[(f"sketch {dt} [{best.isa}]", 1)] = (lambda dt=dt: best.time_sketch(n, d, k, dt, 1), rounds)
    budget = mem_fraction * mem_available()
    mats: Dict[str, torch.Tensor] = {}
    if d * k * 6 <= budget:
        mats["fp32"] = materialise(d, k, 0, torch.float32)
        if bf16_matmul:
            mats["bf16"] = mats["fp32"].to(torch.bfloat16)
        else:
            notes["matmul bf16, stored R (oneDNN)"] = no_bf16
        y = tikmix_ext.sketch(x, k, 0)
        ref = torch.matmul(x, mats["fp32"])
        err = (y - ref).abs().max().item() / ref.abs().max().item()
        assert err < 1e-4, f"sketch and stored-matrix matmul disagree: relative error {err:.2e}"
        for t in sorted({threads, 1}, reverse=True):
            methods[("matmul fp32, stored R", t)] = (lambda t=t: timed(lambda: torch.matmul(x, mats["fp32"]), t), rounds)
            methods[("matmul fp32, stored R", t)][0]()  # warm-up
            if bf16_matmul:
                methods[("matmul bf16, stored R (oneDNN)", t)] = (
                    lambda t=t: timed(lambda: torch.matmul(xb, mats["bf16"]), t), rounds)
                methods[("matmul bf16, stored R (oneDNN)", t)][0]()
    else:
        notes["matmul fp32 / bf16, stored R"] = f"n/a (needs {d * k * 6 / GiB:.0f} GiB for R in fp32 + bf16)"

    # The box's peaks, interleaved with everything else (load changes during a run): FMA-bound sgemm, bf16 matmul.
    pg = torch.Generator().manual_seed(1)
    pa, pb = torch.randn(PEAK_SIZE, PEAK_SIZE, generator=pg), torch.randn(PEAK_SIZE, PEAK_SIZE, generator=pg)
    pab, pbb = pa.to(torch.bfloat16), pb.to(torch.bfloat16)
    for t in sorted({threads, 1}, reverse=True):
        methods[("peak: sgemm", t)] = (lambda t=t: timed(lambda: torch.mm(pa, pb), t), rounds)
        methods[("peak: sgemm", t)][0]()
        if bf16_matmul:
            methods[("peak: bf16 matmul", t)] = (lambda t=t: timed(lambda: torch.mm(pab, pbb), t), rounds)
            methods[("peak: bf16 matmul", t)][0]()

    times: Dict[tuple, List[float]] = {key: [] for key in methods}
    for r in range(rounds):
        for key, (timer, want) in methods.items():
            if r < want:
                times[key].append(timer())
    mats.clear()
    gc.collect()

    rows = [Row(name, t, min(times[(name, t)]), len(times[(name, t)])) for (name, t) in methods]
    rows += [Row(name, threads, None, 0, note) for name, note in notes.items()]
    if trak:
        try:
            from trak.projectors import BasicProjector, ProjectionType
        except Exception as exc:  # noqa: BLE001 — reported in the table
            rows.append(Row("TRAK BasicProjector fp32", threads, None, 0,
                            f"not installed ({type(exc).__name__}: pip install traker --no-deps)"))
        else:
            proj = BasicProjector(d, k, 0, ProjectionType.rademacher, torch.device("cpu"), dtype=torch.float32)
            rows.append(Row("TRAK BasicProjector fp32", threads, timed(lambda: proj.project(x, model_id=0), threads), 1))
            del proj
    return rows


def print_table(n: int, d: int, k: int, rows: List[Row], threads: int) -> None:
    by = {(r.method, r.threads): r.seconds for r in rows}
    peaks = {("bf16 mm" if "bf16" in r.method else "sgemm") + f" t{r.threads}": 2.0 * PEAK_SIZE**3 / r.seconds / 1e9
             for r in rows if r.method.startswith("peak:") and r.seconds}
    print("\npeaks (GFLOP/s, interleaved with the rows below): " + ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items()))
    rows = [r for r in rows if not r.method.startswith("peak:")]
    flops = 2.0 * n * d * k
    mm32, mm16 = by.get(("matmul fp32, stored R", threads)), by.get(("matmul bf16, stored R (oneDNN)", threads))
    shape = f"({n}, 2^{d.bit_length() - 1}, {k})" if d & (d - 1) == 0 else f"({n}, {d}, {k})"
    print(f"\n### {shape}\n")
    print("| method | threads | time (min) | rounds | GFLOP-eq/s | % of peak | vs matmul fp32 | vs matmul bf16 | t1/t2 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.seconds is None:
            print(f"| {r.method} | {r.threads} | — | 0 | | | | | {r.note} |")
            continue
        gf = flops / r.seconds / 1e9
        bf16_input = r.method.startswith(("sketch bf16", "matmul bf16"))
        peak_key = ("bf16 mm" if bf16_input else "sgemm") + f" t{r.threads}"
        pct = f"{100 * gf / peaks[peak_key]:.0f}% of {peak_key}" if peak_key in peaks else ""
        v32 = f"{r.seconds / mm32:.2f}×" if mm32 else "—"
        v16 = f"{r.seconds / mm16:.2f}×" if mm16 else "—"
        scale = ""
        if r.threads == threads and threads != 1:
            one = by.get((r.method, 1))
            scale = f"{one / r.seconds:.2f}" if one else ""
        print(f"| {r.method} | {r.threads} | {r.seconds * 1e3:,.0f} ms | {r.rounds} | {gf:,.1f} | {pct} | {v32} | {v16} | "
              f"{scale} |")
    trak = by.get(("TRAK BasicProjector fp32", threads))
    ours = min((s for (m, t), s in by.items() if m.startswith("sketch fp32") and t == threads and s), default=None)
    if trak and ours:
        print(f"\nTRAK BasicProjector / best sketch fp32: {trak / ours:.1f}×")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per method (min reported)")
    p.add_argument("--shapes", nargs="+", default=["64,20,1024", "64,18,4096"], help="N,log2(d),k per shape")
    p.add_argument("--paths", nargs="+", default=list(PATHS), help="kernel paths to time (unsupported ones are skipped)")
    p.add_argument("--no-trak", action="store_true")
    p.add_argument("--bf16-matmul", action="store_true",
                   help="time the bf16 matmuls also on a CPU without bf16 instructions (emulated: very slow)")
    p.add_argument("--quick", action="store_true", help="(64, 2^16, 1024), 2 rounds, no TRAK")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_loop()
        return
    if a.quick:
        a.shapes, a.rounds, a.no_trak = ["64,16,1024"], 2, True

    load0 = os.getloadavg()
    print(f"# tikmix CPU sketch benchmark — {cpu_description()}; torch {torch.__version__}; "
          f"load average {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} (1/5/15 min) at start")
    print(f"# command: python benchmarks/bench_sketch_cpu.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    workers: List[PathWorker] = []
    seen = set()
    for path in a.paths:
        w = PathWorker(path)
        if w.isa != REPORTED[path] or w.isa in seen:  # the request is a cap: this CPU lacks the path
            print(f"# path {path}: not supported here (capped to {w.isa}), skipped")
            w.close()
            continue
        seen.add(w.isa)
        workers.append(w)
    try:
        for spec in a.shapes:
            n, log2d, k = (int(v) for v in spec.split(","))
            d = 1 << log2d
            rows = bench_shape(n, d, k, a.rounds, a.threads, workers, trak=not a.no_trak,
                               bf16_matmul=True if a.bf16_matmul else None)
            print_table(n, d, k, rows, a.threads)
    finally:
        for w in workers:
            w.close()
    load1 = os.getloadavg()
    print(f"\n# load average at end {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}")


if __name__ == "__main__":
    main()
