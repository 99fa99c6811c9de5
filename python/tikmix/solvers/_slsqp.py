"""TiKMiX-D by scipy's SLSQP (the paper's solver): started from the uniform mixture, restarting from w_prior,
a strictly feasible LP point and seeded random mixtures when a start fails, then polished by restarts from its
own answer. Used by :func:`solve_direct` (``method="slsqp"`` / ``"auto"``).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from scipy.optimize import minimize

from .constraints import ConstraintSet, clean, repair
from .objective import direct_objective, objective_value

__all__ = ["slsqp_solve"]


def slsqp_solve(
    cs: ConstraintSet, A: np.ndarray, alpha: float, beta: float, gamma: float, anchor: np.ndarray, restarts: int, maxiter: int,
    ftol: float, rng: np.random.Generator, polish: int = 5,
) -> Dict[str, Any]:
    """The paper's solver: SLSQP from uniform, restarting from w_prior, the LP anchor and random mixtures."""
    m = cs.m
    wp = cs.w_prior
    nu = m if cs.has_shift else 0
    p = m + nu

    def fun(x: np.ndarray) -> float:
        return direct_objective(x[:m], A, alpha, beta, gamma)[0]

    def jac(x: np.ndarray) -> np.ndarray:
        g = np.zeros(p)
        g[:m] = direct_objective(x[:m], A, alpha, beta, gamma)[2]
        return g

    cons: List[Dict[str, Any]] = []
    eq_mat = np.zeros((1 + cs.pareto_equalities.shape[0], p))
    eq_mat[0, :m] = 1.0
    eq_mat[1:, :m] = cs.pareto_equalities
    eq_rhs = np.concatenate([[1.0], cs.pareto_equalities @ wp])
    cons.append({"type": "eq", "fun": lambda x: eq_mat @ x - eq_rhs, "jac": lambda x: eq_mat})
    if cs.pareto_inequalities.shape[0]:
        pj = np.zeros((cs.pareto_inequalities.shape[0], p))
        pj[:, :m] = cs.pareto_inequalities
        prhs = cs.pareto_inequalities @ wp
        cons.append({"type": "ineq", "fun": lambda x: pj @ x - prhs, "jac": lambda x: pj})
    if cs.has_shift:
        sj = np.zeros((2 * m + 1, p))
        sj[:m, :m] = -np.eye(m)
        sj[:m, m:] = np.eye(m)
        sj[m : 2 * m, :m] = np.eye(m)
        sj[m : 2 * m, m:] = np.eye(m)
        sj[2 * m, m:] = -1.0
        srhs = np.concatenate([-wp, wp, [-cs.max_shift]])
        cons.append({"type": "ineq", "fun": lambda x: sj @ x - srhs, "jac": lambda x: sj})
    # An upper bound of 1 is implied by the simplex; leaving it out (inf) keeps SLSQP's subproblem smaller.
    bounds = [(float(lo), float(hi) if hi < 1.0 else None) for lo, hi in zip(cs.lower, cs.upper)]
    bounds += [(0.0, None)] * nu

    starts: List[Tuple[str, np.ndarray]] = [("uniform", np.full(m, 1.0 / m)), ("w_prior", wp.copy()),
                                           ("lp_point", anchor.copy())]
    while len(starts) < restarts + 1:
        starts.append((f"random{len(starts) - 3}", rng.dirichlet(np.ones(m))))
    starts = starts[: restarts + 1]

    records: List[Dict[str, Any]] = []
    nfev = njev = 0
    best: Optional[Tuple[float, np.ndarray, int]] = None

    def run_slsqp(w_start: np.ndarray) -> Any:
        """One SLSQP run from weights ``w_start`` (auxiliary |w − w_prior| variables appended if used)."""
        nonlocal nfev, njev
        x0 = np.concatenate([w_start, np.abs(w_start - wp)]) if nu else w_start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = minimize(
                fun, x0, jac=jac, method="SLSQP", bounds=bounds, constraints=cons,
                options={"maxiter": int(maxiter), "ftol": float(ftol)},
            )
        nfev += int(out.get("nfev", 0))
        njev += int(out.get("njev", 0))
        return out

    for name, w0 in starts:
        res = run_slsqp(w0)
        w = clean(res.x[:m], cs.lower, cs.upper)
        w, theta = repair(cs, w, anchor)
        cv = cs.maxcv(w)
        f = objective_value(w, A, alpha, beta, gamma)
        records.append({"method": "slsqp", "start": name, "status": int(res.status), "message": str(res.message),
                        "nit": int(res.nit), "fun": f, "maxcv": cv, "repair": theta})
        if cv <= cs.tol and (best is None or f < best[0]):
            best = (f, w, int(res.nit))
        if res.success and cv <= cs.tol:
            # SLSQP's stopping test (objective change < ftol) fires early when the curvature is badly scaled
            # (small gamma, weights near 0). Restarting from the answer resets its quasi-Newton matrix; repeat
            # while that still improves the objective.
            for _ in range(polish):
                r2 = run_slsqp(w)
                w2, th2 = repair(cs, clean(r2.x[:m], cs.lower, cs.upper), anchor)
                f2 = objective_value(w2, A, alpha, beta, gamma)
                if not (r2.success and cs.maxcv(w2) <= cs.tol and f2 < f):
                    break
                improved = f - f2
                w, f, theta, res = w2, f2, th2, r2
                records[-1].update(fun=f, polished=records[-1].get("polished", 0) + 1, nit=records[-1]["nit"] + int(r2.nit))
                if improved <= 1e-10 * max(1.0, abs(f)):
                    break
            note = ""
            if theta > 0:
                note += f" (moved {theta:.2e} of the way to a strictly feasible point to meet tol)"
            if len(records) > 1:
                note += f" (start '{name}' after {len(records) - 1} failed start(s))"
            return {"method": "slsqp", "status": 0, "w": w, "fun": f, "nit": records[-1]["nit"], "nfev": nfev,
                    "njev": njev, "records": records, "note": note, "multipliers": res.get("multipliers")}
    status = 1 if all(r["status"] == 9 for r in records) else 2
    note = " " + "; ".join(f"{r['start']}: {r['message']}" for r in records)
    return {"method": "slsqp", "status": status, "w": None if best is None else best[1],
            "fun": math.inf if best is None else best[0], "nit": 0 if best is None else best[2], "nfev": nfev,
            "njev": njev, "records": records, "note": note, "multipliers": None}
