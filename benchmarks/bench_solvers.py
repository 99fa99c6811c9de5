"""Benchmark of the mixture solvers: TiKMiX-D at the paper's scale (m=26 domains, n=9 targets) and at m=256,
and TiKMiX-M with >= 10,000 labelled candidates. Prints one table.

    python benchmarks/bench_solvers.py              # full run (about a minute on 2 cores)
    python benchmarks/bench_solvers.py --quick      # smaller TiKMiX-M, fewer repeats

BLAS is pinned to one thread unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS are set: the
solver matrices are small (<= 513 x 513), and on an oversubscribed machine multi-threaded BLAS spin-waits can
make them 10-100x slower.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable, List, Tuple  # noqa: E402

import numpy as np  # noqa: E402


def _timed(fn: Callable[[], object], repeats: int) -> Tuple[float, object]:
    times: List[float] = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _problem(seed: int, n: int, m: int) -> Tuple[np.ndarray, np.ndarray]:
    """A noisy influence matrix: a few domains help most targets, the rest are mixed, some hurt."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0.3, 0.6, size=m)
    S = quality[None, :] + rng.normal(0.0, 0.8, size=(n, m))
    w_prior = rng.dirichlet(np.full(m, 3.0))
    return S, w_prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a 2,000-candidate TiKMiX-M run")
    ap.add_argument("--candidates", type=int, default=None, help="TiKMiX-M labelled candidates (default 10,000)")
    ap.add_argument("--no-slsqp-256", action="store_true", help="skip the (slow) SLSQP run at m=256")
    args = ap.parse_args()

    from tikmix.solvers import mixture_score_fn, solve_direct, solve_regression
    from tikmix.solvers.regression import _native_op

    reps = 1 if args.quick else 5
    rows: List[Tuple[str, str, str, str]] = []

    def add(what: str, t: float, res, extra: str = "") -> None:
        status = f"{res.status} ({res.get('method', '')})" if "method" in res else str(res.status)
        rows.append((what, f"{t * 1e3:9.1f} ms", status, extra))

    # ---- TiKMiX-D ----
    for n, m in ((9, 26), (9, 256)):
        S, wp = _problem(0, n, m)
        cons = dict(max_weight=min(1.0, 4.0 / m), max_shift=0.5, max_epochs=2.0,
                    tokens_available=np.random.default_rng(1).uniform(0.2, 5.0, m) * 1e9, stage_tokens=2e10)
        methods = ["auto", "slsqp", "barrier"]
        if m == 256 and args.no_slsqp_256:
            methods.remove("slsqp")
        for method in methods:
            r = 1 if (m == 256 and method == "slsqp") else reps
            t, res = _timed(lambda: solve_direct(S, wp, method=method), r)
            add(f"TiKMiX-D n={n} m={m} {method}", t, res, f"nit={res.nit} fun={res.fun:.6f}")
        t, res = _timed(lambda: solve_direct(S, wp, **cons), 1 if m == 256 else reps)
        add(f"TiKMiX-D n={n} m={m} auto + all constraints", t, res, f"nit={res.nit} fun={res.fun:.6f}")

    # ---- TiKMiX-M ----
    C = args.candidates or (2_000 if args.quick else 10_000)
    m, n, N = 26, 9, 100_000
    rng = np.random.default_rng(2)
    ids = rng.integers(0, m, size=N)
    per_sample = (rng.normal(0.2, 0.5, size=(m, n))[ids] + rng.normal(0.0, 0.5, size=(N, n))).astype(np.float32)
    fn = mixture_score_fn(per_sample, ids, m, draws=1024, seed=0, aggregate="tikmix")
    d = solve_direct(fn.S, np.full(m, 1.0 / m))
    W = np.random.default_rng(3).dirichlet(np.full(m, 50.0), size=C)
    backends = ["numpy"] + (["native"] if _native_op() is not None else [])
    for backend in backends:
        f = mixture_score_fn(per_sample, ids, m, draws=1024, seed=0, aggregate="tikmix", backend=backend)
        t, _ = _timed(lambda: f(W), 1)
        rows.append((f"labels: {C:,} candidates x 1024 draws ({backend})", f"{t * 1e3:9.1f} ms", "-",
                     f"{C * 1024 / t / 1e6:.1f} M draws/s"))
    t0 = time.perf_counter()
    res = solve_regression(fn, d.weights, n_candidates=C, seed=0)
    t = time.perf_counter() - t0
    add(f"TiKMiX-M m={m} n={n}: {C:,} labelled candidates, end to end ({fn.backend} labels)", t, res,
        f"R2={res.fit['r2']:.3f} rho={res.fit['spearman']:.3f} score {res.score_w0:.4f} -> {res.score:.4f}")

    import lightgbm
    import scipy

    print(f"\n# tikmix solvers benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, scipy {scipy.__version__}, lightgbm {lightgbm.__version__}, "
          f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS')}; median of {reps} run(s) unless marked")
    w = max(len(r[0]) for r in rows)
    print(f"| {'case'.ljust(w)} | {'time'.rjust(12)} | status       | notes")
    print(f"|{'-' * (w + 2)}|{'-' * 14}|--------------|------")
    for what, tm, st, extra in rows:
        print(f"| {what.ljust(w)} | {tm.rjust(12)} | {st.ljust(12)} | {extra}")


if __name__ == "__main__":
    main()
