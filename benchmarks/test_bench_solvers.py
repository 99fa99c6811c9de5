"""TiKMiX-D's solvers side by side (SLSQP, the barrier method, auto) and TiKMiX-M's labels (numpy vs the op).

Problems come from ``bench_solvers.py``'s ``_problem``.
"""
from __future__ import annotations

import numpy as np
import pytest

from bench_solvers import _problem
from tikmix.solvers import mixture_score_fn, solve_direct

DOMAINS = {"smoke": (26,), "quick": (26, 128), "full": (26, 256)}
CANDIDATES = {"smoke": 50, "quick": 2_000, "full": 10_000}


@pytest.mark.parametrize("m_index", [0, 1])
@pytest.mark.parametrize("method", ["slsqp", "barrier", "auto"])
def test_solve_direct(measure, size: str, m_index: int, method: str) -> None:
    if m_index >= len(DOMAINS[size]):
        pytest.skip(f"one problem size at --bench-size {size}")
    m = DOMAINS[size][m_index]
    S, w_prior = _problem(0, 9, m)
    res = measure(lambda: solve_direct(S, w_prior, method=method), group=f"TiKMiX-D n=9 m={m}",
                  role="baseline" if method == "slsqp" else "case", rounds=1 if m > 64 else 5, method=method)
    assert res.success, res.message


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_mixture_labels(measure, size: str, backend: str) -> None:
    m, n, N, C = 26, 9, 100_000 if size != "smoke" else 2_000, CANDIDATES[size]
    rng = np.random.default_rng(2)
    ids = rng.integers(0, m, size=N)
    per_sample = (rng.normal(0.2, 0.5, size=(m, n))[ids] + rng.normal(0.0, 0.5, size=(N, n))).astype(np.float32)
    fn = mixture_score_fn(per_sample, ids, m, draws=1024, seed=0, aggregate="tikmix", backend=backend)
    W = np.random.default_rng(3).dirichlet(np.full(m, 50.0), size=C)
    y = measure(lambda: fn(W), group=f"TiKMiX-M labels C={C} draws=1024 m={m}",
                role="baseline" if backend == "numpy" else "case", rounds=3, backend=backend)
    assert np.isfinite(y).all() and len(y) == C


@pytest.mark.parametrize("m", [7, 32])
@pytest.mark.parametrize("defaults", ["old", "new"])
def test_tikmix_m_defaults(measure, size: str, m: int, defaults: str) -> None:
    """TiKMiX-M end to end on a controller-like problem: the settings before tuning (baseline) vs the defaults."""
    from bench_solvers import OLD_TIKMIX_M, tikmix_m_problem, tikmix_m_quality
    from tikmix.solvers import solve_regression

    fn, w0 = tikmix_m_problem(100, m)
    kw = OLD_TIKMIX_M if defaults == "old" else {}
    res = measure(lambda: solve_regression(fn, w0, seed=0, **kw), group=f"TiKMiX-M solve m={m} n=2",
                  role="baseline" if defaults == "old" else "case", rounds=3, defaults=defaults)
    quality = tikmix_m_quality(fn, w0, res)
    measure.benchmark.extra_info.update(quality)
    assert res.success, res.message
    assert quality["gain"] > 0  # the chosen mixture beats w0 on the noise-free score
