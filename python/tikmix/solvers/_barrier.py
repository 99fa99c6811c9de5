"""Log-barrier interior-point method for TiKMiX-D at many domains (used by ``solve_direct(method="barrier")``).

Solves, for x = [w (nw entries), extra variables]:

    minimise   alpha * ||B w + b0||_2 + c @ x + gamma * sum_j w_j log w_j
    subject to E x = e,   G x >= h

with Newton's method on t * f(x) - sum log(G x - h) - log(tau^2 - ||B w + b0||^2) (the norm is moved into an
epigraph variable tau with the second-order-cone barrier), t increased geometrically until the duality-gap
bound (#inequalities + 2) / t is below ``gap_tol`` (Boyd & Vandenberghe, Convex Optimization, 11.3).
Exact Hessians make the iteration count nearly independent of the number of domains, whereas SLSQP's
quasi-Newton updates need about one iteration per domain and an O(m^3) subproblem each.
The caller must include w >= lb >= 0 among the rows of G (that keeps log w defined) and give a strictly
feasible start. :func:`barrier_direct` builds that problem from a :class:`ConstraintSet` for ``solve_direct``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from .constraints import ConstraintSet, clean
from .objective import objective_value


def barrier_solve(
    c: np.ndarray,
    B: np.ndarray,
    b0: np.ndarray,
    alpha: float,
    gamma: float,
    nw: int,
    G: np.ndarray,
    h: np.ndarray,
    E: np.ndarray,
    e: np.ndarray,
    x0: np.ndarray,
    *,
    gap_tol: float = 1e-10,
    mu: float = 20.0,
    max_newton: int = 1000,
) -> Tuple[np.ndarray, int, bool, str]:
    """Returns ``(x, newton_steps, converged, message)``. See the module docstring for the problem."""
    p = x0.shape[0]
    soc = alpha > 0 and B.shape[0] > 0 and np.any(B != 0)
    q = p + 1 if soc else p
    y = np.zeros(q)
    y[:p] = x0
    if soc:
        y[p] = np.linalg.norm(B @ x0[:nw] + b0) + 1.0
    cc = np.zeros(q)
    cc[:p] = c
    if soc:
        cc[p] = alpha
    K = G.shape[0] + (2 if soc else 0)
    # Constraint rows are mostly one or two entries (bounds, |w - w_prior| splits): use sparse products when big.
    Gsp = sparse.csr_matrix(G) if G.size > 20000 and np.count_nonzero(G) < 0.2 * G.size else None

    def fval(y: np.ndarray) -> float:
        w = y[:nw]
        return float(cc @ y + (gamma * np.sum(w * np.log(w)) if gamma else 0.0))

    def bval(y: np.ndarray) -> float:
        s = G @ y[:p] - h
        if np.any(s <= 0) or np.any(y[:nw] <= 0):
            return math.inf
        out = -float(np.sum(np.log(s)))
        if soc:
            z = B @ y[:nw] + b0
            D = y[p] ** 2 - z @ z
            if D <= 0 or y[p] <= 0:
                return math.inf
            out -= math.log(D)
        return out

    def grad_hess(y: np.ndarray, t: float) -> Tuple[np.ndarray, np.ndarray]:
        w = y[:nw]
        g = t * cc.copy()
        H = np.zeros((q, q))
        if gamma:
            g[:nw] += t * gamma * (np.log(w) + 1.0)
            H[np.arange(nw), np.arange(nw)] += t * gamma / w
        s = G @ y[:p] - h
        if Gsp is not None:
            Gs = Gsp.multiply(1.0 / s[:, None]).tocsr()
            g[:p] -= np.asarray(Gs.sum(axis=0)).ravel()
            H[:p, :p] += (Gs.T @ Gs).toarray()
        else:
            Gs = G / s[:, None]
            g[:p] -= Gs.sum(axis=0)
            H[:p, :p] += Gs.T @ Gs
        if soc:
            z = B @ w + b0
            tau = y[p]
            D = tau * tau - z @ z
            Bz = B.T @ z
            g[:nw] += 2.0 * Bz / D
            g[p] += -2.0 * tau / D
            H[:nw, :nw] += 2.0 * (B.T @ B) / D + 4.0 * np.outer(Bz, Bz) / (D * D)
            H[:nw, p] += -4.0 * tau * Bz / (D * D)
            H[p, :nw] += -4.0 * tau * Bz / (D * D)
            H[p, p] += -2.0 / D + 4.0 * tau * tau / (D * D)
        return g, H

    # Equality constraints: start on {E x = e} (projected) and keep every Newton step in null(E) exactly
    # (dy minus its projection on E's row space), so the equality residual cannot drift at large t.
    if E.shape[0]:
        x0 = x0 - np.linalg.lstsq(E, E @ x0 - e, rcond=None)[0]
        y[:p] = x0
        _, sv, vt = np.linalg.svd(E, full_matrices=False)
        Eo = vt[sv > 1e-12 * max(sv[0], 1e-300)]
    else:
        Eo = np.zeros((0, p))
    Eq = np.zeros((Eo.shape[0], q))
    Eq[:, :p] = Eo
    nE = Eq.shape[0]
    if not math.isfinite(bval(y)):
        return y[:p], 0, False, "barrier: start point is not strictly feasible"
    t = 1.0
    steps = 0
    while True:
        # ---- centering: Newton's method restricted to null(E) ----
        for _ in range(100):
            if steps >= max_newton:
                return y[:p], steps, False, f"barrier: Newton step limit ({max_newton}) reached"
            g, H = grad_hess(y, t)
            kkt = np.zeros((q + nE, q + nE))
            kkt[:q, :q] = H
            kkt[:q, q:] = Eq.T
            kkt[q:, :q] = Eq
            rhs = np.concatenate([-g, np.zeros(nE)])
            try:
                dy = np.linalg.solve(kkt, rhs)[:q]
            except np.linalg.LinAlgError:
                dy = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:q]
            dy = dy - Eq.T @ (Eq @ dy)
            steps += 1
            dec = float(-(g @ dy)) / t  # Newton decrement^2, in units of f
            # step to the boundary, then Armijo backtracking on f + barrier / t
            s = G @ y[:p] - h
            Gd = G @ dy[:p]
            neg = Gd < 0
            smax = 1.0
            if np.any(neg):
                smax = min(1.0, 0.99 * float(np.min(-s[neg] / Gd[neg])))
            wneg = dy[:nw] < 0
            if np.any(wneg):
                smax = min(smax, 0.99 * float(np.min(-y[:nw][wneg] / dy[:nw][wneg])))
            phi0 = fval(y) + bval(y) / t
            step = smax
            accepted = False
            for _ in range(60):
                cand = y + step * dy
                val = bval(cand)
                if math.isfinite(val) and fval(cand) + val / t <= phi0 - 0.25 * step * dec:
                    accepted = True
                    break
                step *= 0.5
            if accepted:
                y = cand
            if not accepted or dec / 2.0 <= 1e-12 * max(1.0, abs(phi0)):
                break
        if K / t <= gap_tol * max(1.0, abs(fval(y))):
            return y[:p], steps, True, "barrier: converged"
        t *= mu


def barrier_direct(cs: ConstraintSet, A: np.ndarray, alpha: float, beta: float, gamma: float, maxiter: int) -> Dict[str, Any]:
    """TiKMiX-D by the log-barrier Newton method (fast at many domains); pinned domains are eliminated."""
    m, wp = cs.m, cs.w_prior
    n = A.shape[0]
    pinned = cs.upper - cs.lower <= 1e-15
    free = np.flatnonzero(~pinned)
    pinned_idx = np.flatnonzero(pinned)
    fail = {"method": "barrier", "w": None, "fun": math.inf, "nit": 0, "nfev": 0, "njev": 0, "multipliers": None}
    if free.size == 0:
        return {**fail, "status": 2, "note": " barrier: every domain is pinned", "records": []}
    mf = free.size
    w_pin = cs.lower[pinned_idx]
    Bfull = (A - A.mean(axis=0, keepdims=True)) / math.sqrt(n)
    B, b0 = Bfull[:, free], Bfull[:, pinned_idx] @ w_pin
    nu = mf if cs.has_shift else 0
    p = mf + nu
    c = np.zeros(p)
    c[:mf] = -beta * A.sum(axis=0)[free]
    # equalities
    E_rows = [np.concatenate([np.ones(mf), np.zeros(nu)])]
    e_vals = [1.0 - w_pin.sum()]
    for qrow in cs.pareto_equalities:
        E_rows.append(np.concatenate([qrow[free], np.zeros(nu)]))
        e_vals.append(float(qrow @ wp - qrow[pinned_idx] @ w_pin))
    E, e = np.array(E_rows), np.array(e_vals)
    # inequalities G x >= h
    G_rows: List[np.ndarray] = []
    h_vals: List[np.ndarray] = []
    if cs.pareto_inequalities.shape[0]:
        G_rows.append(np.hstack([cs.pareto_inequalities[:, free], np.zeros((cs.pareto_inequalities.shape[0], nu))]))
        h_vals.append(cs.pareto_inequalities @ wp - cs.pareto_inequalities[:, pinned_idx] @ w_pin)
    eye = np.eye(mf)
    G_rows.append(np.hstack([eye, np.zeros((mf, nu))]))
    h_vals.append(cs.lower[free])
    capped = cs.upper[free] < 1.0
    if np.any(capped):
        G_rows.append(np.hstack([-eye[capped], np.zeros((int(capped.sum()), nu))]))
        h_vals.append(-cs.upper[free][capped])
    if cs.has_shift:
        G_rows += [np.hstack([-eye, eye]), np.hstack([eye, eye]), np.concatenate([np.zeros(mf), -np.ones(mf)])[None]]
        budget = cs.max_shift - float(np.abs(w_pin - wp[pinned_idx]).sum())
        h_vals += [-wp[free], wp[free], np.array([-budget])]
    G, h = np.vstack(G_rows), np.concatenate(h_vals)
    # strictly feasible start: maximise the smallest (row-normalised) slack by LP
    norms = np.linalg.norm(G, axis=1)
    res = linprog(
        np.concatenate([np.zeros(p), [-1.0]]),
        A_ub=np.hstack([-G, norms[:, None]]),
        b_ub=-h,
        A_eq=np.hstack([E, np.zeros((E.shape[0], 1))]),
        b_eq=e,
        bounds=[(None, None)] * p + [(None, 1.0)],
        method="highs",
    )
    if res.status != 0 or res.x[-1] <= 1e-10:
        return {**fail, "status": 2, "records": [],
                "note": " barrier: the constraints have no strictly feasible point (some hold only with equality)"}
    x0 = res.x[:p]
    x, steps, converged, message = barrier_solve(c, B, b0, alpha, gamma, mf, G, h, E, e, x0,
                                                 max_newton=max(int(maxiter), 50))
    w = np.zeros(m)
    w[pinned_idx] = w_pin
    w[free] = x[:mf]
    w = clean(w, cs.lower, cs.upper)
    cv = cs.maxcv(w)
    f = objective_value(w, A, alpha, beta, gamma)
    record = {"method": "barrier", "start": "lp_interior", "status": 0 if converged else 1, "message": message,
              "nit": steps, "fun": f, "maxcv": cv, "repair": 0.0}
    if cv > cs.tol:
        return {**fail, "status": 2, "records": [record], "note": f" barrier: constraint violation {cv:.2e} > tol"}
    return {"method": "barrier", "status": 0 if converged else 1, "w": w, "fun": f, "nit": steps, "nfev": steps,
            "njev": steps, "records": [record], "note": "" if converged else " " + message, "multipliers": None}
