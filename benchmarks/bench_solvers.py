"""Benchmark of the mixture solvers: TiKMiX-D at the paper's scale (m=26 domains, n=9 targets) and at m=256,
TiKMiX-M with >= 10,000 labelled candidates, and TiKMiX-M's surrogate settings before and after they were tuned
(time per boundary and surrogate quality at m = 7, 16, 32). Prints the tables.

    python benchmarks/bench_solvers.py              # full run (a few minutes on 2 cores)
    python benchmarks/bench_solvers.py --quick      # smaller TiKMiX-M, fewer repeats
    python benchmarks/bench_solvers.py --only tikmix-m-defaults   # just the before/after table

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


# TiKMiX-M's settings before the defaults were tuned: 2,048 candidates, 400 trees of 31 leaves at learning rate
# 0.05 fitted twice (held-out split, then all candidates), no early stopping.
OLD_TIKMIX_M = dict(n_candidates=2048, samples_per_round=4096, rounds=8, model_params={
    "learning_rate": 0.05, "num_leaves": 31, "num_boost_round": 400, "early_stopping_round": 0,
    "linear_tree": False, "min_data_in_leaf": 20})


def tikmix_m_problem(seed: int, m: int, n: int = 2, per_domain: int = 64) -> Tuple[object, np.ndarray]:
    """A controller-like TiKMiX-M input: ``per_domain`` per-sample influence rows of n targets for each of m
    domains (domain means plus noise), scored like the controller does (``aggregate="tikmix"``), and a random
    starting mixture w0 (so the search has somewhere to go)."""
    from tikmix.solvers import mixture_score_fn

    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(m), per_domain)
    per_sample = (rng.normal(0.2, 0.5, size=(m, n))[ids] + rng.normal(0.0, 1.0, size=(ids.size, n))).astype(np.float32)
    fn = mixture_score_fn(per_sample, ids, m, seed=seed, aggregate="tikmix")
    return fn, rng.dirichlet(np.full(m, 4.0))


def tikmix_m_true_score(fn, W: np.ndarray) -> np.ndarray:
    """The noise-free score the labels estimate: the "tikmix" aggregate of ``S @ w`` (the resampled scores'
    expectation) with alpha = beta = gamma = 1."""
    from tikmix.solvers.objective import row_scale

    Yh = (W @ fn.S.T) / row_scale(fn.S, "max", 1e-8)[0][None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.sum(np.where(W > 0, W * np.log(np.where(W > 0, W, 1.0)), 0.0), axis=1)
    return Yh.sum(axis=1) - Yh.std(axis=1) + ent


def tikmix_m_quality(fn, w0: np.ndarray, res, n_test: int = 1500) -> dict:
    """Surrogate quality on fresh candidates from the same box (not the solver's own split): R^2 against the
    noisy labels, Spearman against the true scores, and the true score gained by the chosen mixture over w0."""
    from scipy.stats import spearmanr

    from tikmix.solvers.regression import _box_candidates

    W, _ = _box_candidates(w0, 0.5 * w0, 2.0 * w0, n_test, "reject", np.random.default_rng(999))
    y, y_true = fn(W), tikmix_m_true_score(fn, W)
    pred = res.model.predict(W, num_iteration=res.fit.get("n_trees"))
    return {"r2": 1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2),
            "rho": float(spearmanr(y_true, pred).statistic),
            "gain": float(tikmix_m_true_score(fn, res.weights[None])[0] - tikmix_m_true_score(fn, w0[None])[0]),
            "trees": res.fit.get("n_trees")}


def tikmix_m_defaults_rows(ms=(7, 16, 32), seeds=(0, 1, 2), rounds: int = 3) -> List[Tuple[str, ...]]:
    """Old vs current TiKMiX-M defaults, interleaved (old, new, old, new, ...), min wall and process CPU time of
    ``rounds`` (one thread: the CPU time is what an idle machine would take), averaged with the quality over
    ``seeds`` problems. Rows: (case, wall time, CPU time, ratio to old, quality)."""
    from tikmix.solvers import solve_regression

    settings = {"old": OLD_TIKMIX_M, "new": {}}
    rows = []
    for m in ms:
        best = {k: [float("inf")] * len(seeds) for k in settings}
        cpu = {k: [float("inf")] * len(seeds) for k in settings}
        qual = {k: [] for k in settings}
        for i, seed in enumerate(seeds):
            fn, w0 = tikmix_m_problem(100 + seed, m)
            for r in range(rounds):
                for key, kw in settings.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = solve_regression(fn, w0, seed=seed, **kw)
                    best[key][i] = min(best[key][i], time.perf_counter() - t0)
                    cpu[key][i] = min(cpu[key][i], time.process_time() - c0)
                    if r == 0:
                        qual[key].append(tikmix_m_quality(fn, w0, res))
        t_old = float(np.mean(best["old"]))
        for key in settings:
            q = {f: float(np.mean([d[f] for d in qual[key]])) for f in ("r2", "rho", "gain", "trees")}
            t, c = float(np.mean(best[key])), float(np.mean(cpu[key]))
            rows.append((f"TiKMiX-M m={m} n=2, {key} defaults", f"{t * 1e3:9.1f} ms", f"{c * 1e3:9.1f} ms",
                         f"{t / t_old:.2f}x" if key == "new" else "1 (baseline)",
                         f"R2={q['r2']:.3f} rho={q['rho']:.3f} true-score gain {q['gain']:+.4f} "
                         f"trees={q['trees']:.0f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a 2,000-candidate TiKMiX-M run")
    ap.add_argument("--candidates", type=int, default=None, help="TiKMiX-M labelled candidates (default 10,000)")
    ap.add_argument("--no-slsqp-256", action="store_true", help="skip the (slow) SLSQP run at m=256")
    ap.add_argument("--only", choices=["tikmix-m-defaults"], default=None,
                    help="run only TiKMiX-M's old-vs-new defaults table")
    args = ap.parse_args()
    if args.only:
        _print_defaults_table(args.quick)
        return

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
    _print_defaults_table(args.quick)


def _print_defaults_table(quick: bool) -> None:
    load0 = os.getloadavg()[0]
    rows = tikmix_m_defaults_rows(seeds=(0,) if quick else (0, 1, 2), rounds=1 if quick else 3)
    print(f"\n# TiKMiX-M defaults, old vs new: interleaved, min of rounds per problem, mean over problems; quality "
          f"on 1,500 fresh candidates (R2 vs noisy labels, Spearman vs true scores); load average "
          f"{load0:.1f} -> {os.getloadavg()[0]:.1f}")
    w = max(len(r[0]) for r in rows)
    print(f"| {'case'.ljust(w)} | {'wall time'.rjust(12)} | {'CPU time'.rjust(12)} | vs old       | quality")
    print(f"|{'-' * (w + 2)}|{'-' * 14}|{'-' * 14}|--------------|------")
    for what, tm, ct, ratio, extra in rows:
        print(f"| {what.ljust(w)} | {tm.rjust(12)} | {ct.rjust(12)} | {ratio.ljust(12)} | {extra}")


if __name__ == "__main__":
    main()
