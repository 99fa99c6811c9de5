"""TiKMiX-D: the next stage's mixture by direct optimisation over the Group Influence matrix.

Paper: TiKMiX (arXiv 2508.17677), Eq. 9-11. See :func:`solve_direct`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.optimize import linprog, minimize

from .._validation import check_int, to_float64_array
from ._barrier import barrier_solve
from .result import InfeasibleConstraintsError, MixtureResult

__all__ = ["solve_direct", "row_scale", "direct_objective"]

ArrayLike = Any
PerDomain = Union[float, Sequence[float], np.ndarray]

# w log w is replaced below this weight by its tangent line (C^1, finite gradient): guards log(0).
_ENTROPY_FLOOR = 1e-12
# Tolerance used when reading HiGHS LP solutions (its default primal feasibility tolerance is 1e-7).
_LP_TOL = 1e-7

# method="auto" uses the paper's SLSQP up to this many domains and the barrier method above it.
_AUTO_SLSQP_MAX_M = 64

_STATUS_MESSAGES = {
    0: "Optimization terminated successfully.",
    1: "Iteration limit reached; returned the best feasible point found.",
    2: "The solvers failed; returned the best feasible point found (w_prior or an LP point at worst).",
}


# ----------------------------------------------------------------------------------------------------------
# Public helpers (also used by TiKMiX-M's "tikmix" aggregate)
# ----------------------------------------------------------------------------------------------------------
def row_scale(
    S: np.ndarray, normalize: Literal["max", "absmax", "none"] = "max", eps: float = 1e-8
) -> Tuple[np.ndarray, np.ndarray]:
    """Denominators of P_hat = (S @ w) / scale, one per target row of ``S`` [n, m].

    ``"max"`` (paper, default): ``max_j S_ij + eps``; a row whose max is <= 0 would get a zero or negative
    denominator (flipping "larger is better"), so such rows use ``max_j |S_ij| + eps`` instead.
    ``"absmax"``: ``max_j |S_ij| + eps`` for every row. ``"none"``: 1.

    Returns ``(scale [n], nonpositive_rows)`` where the second lists the rows that took the fallback.
    """
    S = np.asarray(S, dtype=np.float64)
    n = S.shape[0]
    if normalize == "none":
        return np.ones(n), np.zeros(0, dtype=np.int64)
    absmax = np.abs(S).max(axis=1) + eps
    if normalize == "absmax":
        return absmax, np.zeros(0, dtype=np.int64)
    if normalize != "max":
        raise ValueError(f"normalize must be 'max', 'absmax' or 'none'; got {normalize!r}")
    rmax = S.max(axis=1)
    nonpos = rmax <= 0
    return np.where(nonpos, absmax, rmax + eps), np.flatnonzero(nonpos)


def _xlogx(w: np.ndarray) -> np.ndarray:
    e = _ENTROPY_FLOOR
    safe = np.maximum(w, e)
    return np.where(w >= e, w * np.log(safe), e * math.log(e) + (math.log(e) + 1.0) * (w - e))


def _dxlogx(w: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(w, _ENTROPY_FLOOR)) + 1.0


def direct_objective(
    w: np.ndarray, A: np.ndarray, alpha: float, beta: float, gamma: float
) -> Tuple[float, Dict[str, float], np.ndarray]:
    """TiKMiX-D objective at mixture ``w`` [m] with row-normalised ``A = S / scale[:, None]`` [n, m].

    Returns ``(fun, terms, grad)`` with ``fun = alpha*std(P_hat) - beta*sum(P_hat) - gamma*H(w)``,
    ``P_hat = A @ w``, std with ddof=0, ``H(w) = -sum w log w`` (0 log 0 = 0; below 1e-12 the summand is
    continued by its tangent, so the gradient stays finite), and ``grad`` its gradient in ``w``. Where
    std(P_hat) = 0 (always when n = 1) the std term contributes the subgradient 0.
    """
    ph = A @ w
    d = ph - ph.mean()
    sd = float(np.sqrt(np.mean(d * d)))
    ent = float(-np.sum(_xlogx(w)))
    fun = alpha * sd - beta * float(ph.sum()) - gamma * ent
    grad = -beta * A.sum(axis=0) + gamma * _dxlogx(w)
    if sd > 0.0 and alpha != 0.0:
        grad = grad + alpha * (A.T @ d) / (A.shape[0] * sd)
    return fun, {"std": sd, "sum": float(ph.sum()), "entropy": ent}, grad


# ----------------------------------------------------------------------------------------------------------
# Input parsing
# ----------------------------------------------------------------------------------------------------------
def _check_matrix(S: ArrayLike) -> np.ndarray:
    S = to_float64_array(S, "S")
    if S.ndim == 1:
        S = S[None, :]
    if S.ndim != 2:
        raise ValueError(f"S must be 2-D [n targets, m domains] (or 1-D [m] for one target); got shape {S.shape}")
    if S.shape[0] == 0 or S.shape[1] == 0:
        raise ValueError(f"S must have at least one target row and one domain column; got shape {S.shape}")
    bad = ~np.isfinite(S)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"S contains {int(bad.sum())} NaN/inf entries (first at row, column {first}); "
            "influence scores must be finite (check the influence computation or drop those domains)"
        )
    return S


def _check_mixture(w: ArrayLike, m: int, name: str) -> np.ndarray:
    w = to_float64_array(w, name)
    if w.ndim != 1 or w.shape[0] != m:
        raise ValueError(f"{name} must be a vector of {m} domain weights (one per column of S); got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} contains NaN/inf")
    if np.any(w < 0):
        raise ValueError(f"{name} must be non-negative; entry {int(np.argmin(w))} is {w.min():g}")
    total = w.sum()
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum (it is normalised to sum to 1); got {total:g}")
    return w / total


def _per_domain(value: PerDomain, m: int, name: str, lo: float, hi: float) -> np.ndarray:
    arr = to_float64_array(value, name)
    if arr.ndim == 0:
        arr = np.full(m, float(arr))
    if arr.shape != (m,):
        raise ValueError(f"{name} must be a scalar or a vector of {m} values (one per domain); got shape {arr.shape}")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} contains NaN")
    if np.any(arr < lo) or np.any(arr > hi):
        j = int(np.flatnonzero((arr < lo) | (arr > hi))[0])
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}]; entry {j} is {arr[j]:g}")
    return arr


def _nonneg_scalar(value: Any, name: str, *, positive: bool = False, upper: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}") from exc
    if not math.isfinite(v) and not (v == math.inf and upper == math.inf):
        raise ValueError(f"{name} must be finite; got {v}")
    if v < 0 or (positive and v == 0) or v > upper:
        need = "> 0" if positive else ">= 0"
        extra = f" and <= {upper:g}" if upper != math.inf else ""
        raise ValueError(f"{name} must be {need}{extra}; got {v:g}")
    return v


# ----------------------------------------------------------------------------------------------------------
# Problem assembly
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Problem:
    S: np.ndarray  # [n, m]
    A: np.ndarray  # [n, m] row-normalised (objective)
    scale: np.ndarray  # [n]
    w_prior: np.ndarray  # [m]
    lb: np.ndarray  # [m]
    ub: np.ndarray  # [m]
    lb_src: List[str]  # which option set each lower bound ("" = none)
    ub_src: List[str]  # which option set each upper bound ("" = none, else "max_weight"/"repetition")
    P_all: np.ndarray  # [r, m] Pareto rows in row-scaled units (vacuous rows dropped): checked at the end
    max_shift: Optional[float]
    tol: float
    # What SLSQP sees: Pareto rows kept as inequalities, and an orthonormal basis Q of the rows that can only
    # hold with equality (Q (w - w_prior) = 0); see _find_interior.
    P: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    eq_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        self.P = self.P_all.copy()
        self.eq_rows = np.zeros((0, self.P_all.shape[1]))

    @property
    def m(self) -> int:
        return self.S.shape[1]

    @property
    def shift(self) -> bool:
        return self.max_shift is not None

    def violation(self, w: np.ndarray) -> Dict[str, float]:
        """Violation of each constraint at w (0 = satisfied); Pareto rows in row-scaled units."""
        out = {
            "simplex": abs(float(w.sum()) - 1.0),
            "bounds": float(max(0.0, np.max(self.lb - w), np.max(w - self.ub))),
        }
        if self.P_all.shape[0]:
            out["pareto"] = float(max(0.0, -np.min(self.P_all @ (w - self.w_prior))))
        if self.shift:
            out["max_shift"] = float(max(0.0, np.abs(w - self.w_prior).sum() - self.max_shift))
        return out

    def maxcv(self, w: np.ndarray) -> float:
        return max(self.violation(w).values())


def _clean(w: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """Clip w into [lb, ub] and restore sum(w) = 1 by moving the residual into coordinates with room."""
    w = np.clip(w, lb, ub)
    for _ in range(4):
        r = 1.0 - w.sum()
        if r == 0.0:
            break
        room = (ub - w) if r > 0 else (w - lb)
        total = room.sum()
        if total <= 0:
            break
        w = np.clip(w + r * room / total, lb, ub)
    return w


# ----------------------------------------------------------------------------------------------------------
# Feasibility (LP) and diagnosis
# ----------------------------------------------------------------------------------------------------------
def _lp(
    prob: _Problem,
    objective: str,
    direction: Optional[np.ndarray] = None,
    use_pareto: bool = True,
    shift_budget: Optional[float] = None,
):
    """Solve an LP over the feasible set in variables [w (m), u (m, if max_shift), t] with HiGHS.

    objective "t":   maximise t subject to P (w - w_prior) >= t (the smallest Pareto slack; t <= 1).
    objective "dir": maximise direction @ w with the Pareto rows >= 0 (t fixed to 0).
    objective "l1":  minimise sum(u) = the L1 distance to w_prior (needs max_shift set).
    ``use_pareto=False`` drops the Pareto rows; ``shift_budget`` overrides max_shift.
    """
    m = prob.m
    nu = m if prob.shift else 0
    nv = m + nu + 1
    A_ub: List[np.ndarray] = []
    b_ub: List[np.ndarray] = []
    if use_pareto and prob.P_all.shape[0]:
        r = prob.P_all.shape[0]
        blk = np.zeros((r, nv))
        blk[:, :m] = -prob.P_all
        blk[:, -1] = 1.0
        A_ub.append(blk)
        b_ub.append(-prob.P_all @ prob.w_prior)
    if prob.shift:
        eye = np.eye(m)
        blk1 = np.zeros((m, nv))
        blk1[:, :m] = eye
        blk1[:, m : 2 * m] = -eye
        blk2 = np.zeros((m, nv))
        blk2[:, :m] = -eye
        blk2[:, m : 2 * m] = -eye
        blk3 = np.zeros((1, nv))
        blk3[0, m : 2 * m] = 1.0
        budget = prob.max_shift if shift_budget is None else shift_budget
        A_ub += [blk1, blk2, blk3]
        b_ub += [prob.w_prior, -prob.w_prior, np.array([budget])]
    A_eq = np.zeros((1, nv))
    A_eq[0, :m] = 1.0
    b_eq = np.array([1.0])
    bounds = [(float(lo), float(hi)) for lo, hi in zip(prob.lb, prob.ub)] + [(0.0, 1.0)] * nu
    c = np.zeros(nv)
    if objective == "t":
        bounds.append((None, 1.0))
        c[-1] = -1.0
    elif objective == "dir":
        bounds.append((0.0, 0.0))
        c[:m] = -np.asarray(direction)
    elif objective == "l1":
        bounds.append((0.0, 0.0))
        c[m : m + nu] = 1.0
    else:  # pragma: no cover - internal misuse
        raise ValueError(objective)
    return linprog(
        c,
        A_ub=np.vstack(A_ub) if A_ub else None,
        b_ub=np.concatenate(b_ub) if b_ub else None,
        A_eq=A_eq,
        b_eq=b_eq,
        bounds=bounds,
        method="highs",
    )


def _wprior_violations(prob: _Problem) -> List[str]:
    names: List[str] = []
    wp = prob.w_prior
    for j in range(prob.m):
        if wp[j] < prob.lb[j] - prob.tol and prob.lb_src[j] and prob.lb_src[j] not in names:
            names.append(prob.lb_src[j])
        if wp[j] > prob.ub[j] + prob.tol and prob.ub_src[j] and prob.ub_src[j] not in names:
            names.append(prob.ub_src[j])
    return names


def _check_bounds(prob: _Problem, mw: Optional[np.ndarray], Mw: Optional[np.ndarray], cap: Optional[np.ndarray]) -> None:
    """Raise InfeasibleConstraintsError naming the culprit if the box and the simplex do not intersect."""
    m = prob.m
    for j in range(m):
        if prob.lb[j] > prob.ub[j] + prob.tol:
            if Mw is not None and mw is not None and mw[j] > Mw[j]:
                raise InfeasibleConstraintsError(
                    "min_weight+max_weight", f"min_weight[{j}]={mw[j]:g} exceeds max_weight[{j}]={Mw[j]:g}"
                )
            raise InfeasibleConstraintsError(
                "min_weight+repetition",
                f"min_weight[{j}]={prob.lb[j]:g} exceeds domain {j}'s repetition cap "
                f"max_epochs*tokens_available/stage_tokens = {cap[j]:g}",  # type: ignore[index]
            )
    if prob.lb.sum() > 1.0 + prob.tol:
        raise InfeasibleConstraintsError(
            "min_weight", f"min_weight sums to {prob.lb.sum():g} > 1: no mixture can give every domain its minimum"
        )
    if prob.ub.sum() < 1.0 - prob.tol:
        ub_mw = np.minimum(1.0, Mw) if Mw is not None else np.ones(m)
        ub_cap = np.minimum(1.0, cap) if cap is not None else np.ones(m)
        if ub_mw.sum() < 1.0 - prob.tol:
            raise InfeasibleConstraintsError(
                "max_weight", f"max_weight sums to {ub_mw.sum():g} < 1: the weights cannot add up to 1"
            )
        if ub_cap.sum() < 1.0 - prob.tol:
            raise InfeasibleConstraintsError(
                "repetition",
                f"repetition cap: at max_epochs the domains can supply only {ub_cap.sum():g} x stage_tokens "
                "(sum_j min(1, max_epochs_j*tokens_available_j/stage_tokens) < 1); lower stage_tokens, raise "
                "max_epochs or add data",
            )
        raise InfeasibleConstraintsError(
            "max_weight+repetition",
            f"max_weight and the repetition cap together allow at most {prob.ub.sum():g} < 1 in total",
        )


def _diagnose_lp_failure(prob: _Problem) -> None:
    """The bounds are consistent but the LP is infeasible: blame max_shift or the Pareto constraint."""
    if prob.shift:
        res = _lp(prob, "t", use_pareto=False)
        if res.status == 2:
            d = _lp(prob, "l1", use_pareto=False, shift_budget=2.0)
            dist = float(d.fun) if d.status == 0 else float("nan")
            limits = sorted(set(s for s in prob.lb_src + prob.ub_src if s))
            raise InfeasibleConstraintsError(
                "max_shift",
                f"max_shift={prob.max_shift:g} is smaller than {dist:.6g}, the L1 distance from w_prior to the "
                f"nearest mixture allowed by {', '.join(limits) or 'the bounds'}",
            )
    others = _wprior_violations(prob)
    raise InfeasibleConstraintsError(
        "pareto",
        "the Pareto constraint S @ w >= S @ w_prior cannot hold together with "
        f"{', '.join(others + (['max_shift'] if prob.shift else [])) or 'the other constraints'}: every mixture "
        "they allow makes some target worse than w_prior (w_prior itself violates "
        f"{', '.join(others) or 'nothing'}). Relax those constraints or pass pareto=False.",
    )


def _find_interior(prob: _Problem, rng: np.random.Generator) -> Tuple[np.ndarray, bool]:
    """LP stage. Returns (anchor point, single_point).

    anchor: a feasible point with the largest smallest Pareto slack t* (strictly feasible when t* > 0).
    If t* ~ 0 the Pareto rows that cannot be slack become equalities (prob.eq_rows) and domains that must be 0
    get ub = 0, so SLSQP sees a problem with an interior; single_point says the feasible set is one mixture.
    """
    res = _lp(prob, "t")
    if res.status == 2 or (res.status == 0 and res.x[-1] < -_LP_TOL):
        _diagnose_lp_failure(prob)
    if res.status != 0:
        raise RuntimeError(f"feasibility LP failed unexpectedly (HiGHS status {res.status}: {res.message})")
    t_star = float(res.x[-1])
    anchor = _clean(res.x[: prob.m], prob.lb, prob.ub)
    if t_star > _LP_TOL or prob.P_all.shape[0] == 0:
        return anchor, False
    # Degenerate: some Pareto rows are implicitly equalities on the feasible set.
    eq_idx, keep = [], []
    for i in range(prob.P_all.shape[0]):
        r = _lp(prob, "dir", direction=prob.P_all[i])
        if r.status == 0 and float(prob.P_all[i] @ (r.x[: prob.m] - prob.w_prior)) <= _LP_TOL:
            eq_idx.append(i)
        else:
            keep.append(i)
    if eq_idx:
        # E (w - w_prior) = 0 given sum(w - w_prior) = 0  <=>  Q (w - w_prior) = 0, Q an orthonormal basis of
        # E's rows with the ones direction projected out (independent rows keep SLSQP's subproblem regular).
        E = prob.P_all[eq_idx]
        E = E - E.mean(axis=1, keepdims=True)
        _, sv, vt = np.linalg.svd(E, full_matrices=False)
        prob.eq_rows = vt[sv > 1e-10 * max(sv[0], 1e-300)]
        prob.P = prob.P_all[keep]
    # Domains forced to zero on the feasible set.
    for j in range(prob.m):
        if prob.ub[j] <= 0:
            continue
        r = _lp(prob, "dir", direction=np.eye(prob.m)[j])
        if r.status == 0 and r.x[j] <= _LP_TOL:
            prob.ub[j] = 0.0
            prob.lb[j] = 0.0
    # Is the feasible set a single point? Compare LP optima along two random directions.
    single = True
    for _ in range(2):
        d = rng.standard_normal(prob.m)
        hi = _lp(prob, "dir", direction=d)
        lo = _lp(prob, "dir", direction=-d)
        if hi.status == 0 and lo.status == 0 and float(d @ (hi.x[: prob.m] - lo.x[: prob.m])) > 1e-7 * np.abs(d).sum():
            single = False
            break
    res = _lp(prob, "t")
    if res.status == 0:
        anchor = _clean(res.x[: prob.m], prob.lb, prob.ub)
    if prob.maxcv(prob.w_prior) <= prob.tol:
        anchor = prob.w_prior.copy()  # exactly feasible for the Pareto constraint
    return anchor, single


def _repair(prob: _Problem, w: np.ndarray, anchor: np.ndarray) -> Tuple[np.ndarray, float]:
    """Move w toward the feasible anchor just far enough that every constraint holds to prob.tol."""
    if prob.maxcv(w) <= prob.tol:
        return w, 0.0
    if prob.maxcv(anchor) > prob.tol:
        return w, float("nan")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if prob.maxcv(_clean((1 - mid) * w + mid * anchor, prob.lb, prob.ub)) <= prob.tol:
            hi = mid
        else:
            lo = mid
    return _clean((1 - hi) * w + hi * anchor, prob.lb, prob.ub), hi


# ----------------------------------------------------------------------------------------------------------
# The solver
# ----------------------------------------------------------------------------------------------------------
def solve_direct(
    S: ArrayLike,
    w_prior: Optional[ArrayLike] = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    min_weight: Optional[PerDomain] = None,
    max_weight: Optional[PerDomain] = None,
    max_epochs: Optional[PerDomain] = None,
    tokens_available: Optional[PerDomain] = None,
    stage_tokens: Optional[float] = None,
    max_shift: Optional[float] = None,
    pareto: bool = True,
    normalize: Literal["max", "absmax", "none"] = "max",
    eps: float = 1e-8,
    method: Literal["auto", "slsqp", "barrier"] = "auto",
    restarts: int = 3,
    maxiter: int = 500,
    ftol: float = 1e-10,
    tol: float = 1e-9,
    seed: int = 0,
) -> MixtureResult:
    r"""TiKMiX-D: the mixture for the next stage, by direct optimisation (paper Eq. 9-11).

    With ``P = S @ w`` (predicted influence of mixture ``w`` on each target) and
    ``P_hat_i = P_i / (max_j S_ij + eps)``, solves

    .. code-block:: text

        minimise   alpha * std(P_hat) - beta * sum_i P_hat_i - gamma * H(w),     H(w) = -sum_j w_j log w_j
        subject to sum_j w_j = 1,  w >= 0,
                   S @ w >= S @ w_prior                      (Pareto: no target worse than last stage)
                   min_weight_j <= w_j <= max_weight_j       (optional)
                   w_j * stage_tokens <= max_epochs_j * tokens_available_j   (optional repetition cap)
                   sum_j |w_j - w_prior_j| <= max_shift      (optional L1 step limit)

    with scipy's SLSQP started from the uniform mixture (as in the paper), restarting from w_prior, a
    strictly feasible LP point and seeded random mixtures when a start fails. The problem is convex (std of
    a linear map, a linear term, negative entropy; linear constraints), so any converged start is the global
    optimum; with gamma > 0 it is unique.

    Parameters
    ----------
    S : array [n, m] (numpy, torch or nested lists)
        Group Influence, ``S_ij = grad f_i^T H^-1 G_j``: larger = domain j helps target i more. A 1-D
        array is one target. Must be finite (NaN/inf raise ValueError naming S).
    w_prior : array [m], optional
        The mixture of the stage that just ended (normalised to sum 1; must be >= 0 with a positive sum).
        Default uniform.
    alpha, beta, gamma : float >= 0
        Weights of the balance (std), total-influence and entropy terms. Paper: 1, 1, 1.
    min_weight, max_weight : float or array [m], in [0, 1], optional
        Per-domain bounds on the weight (a scalar applies to every domain).
    max_epochs, tokens_available, stage_tokens : optional, all three or none
        Repetition cap: the next stage draws ``w_j * stage_tokens`` tokens from domain j, which may be at
        most ``max_epochs_j * tokens_available_j`` (``max_epochs`` scalar or [m], > 0, ``inf`` = no cap;
        ``tokens_available`` scalar or [m], >= 0, e.g. the domain's size, or its unseen tokens with
        ``max_epochs=1`` for "no repetition"; ``stage_tokens`` > 0). Equivalent to the upper bound
        ``w_j <= max_epochs_j * tokens_available_j / stage_tokens``.
    max_shift : float in [0, 2], optional
        Upper limit on the L1 step ``sum_j |w_j - w_prior_j|``. Imposed exactly (no smoothing) with auxiliary
        variables u_j >= |w_j - w_prior_j| (u_j >= w_j - w_prior_j, u_j >= w_prior_j - w_j, sum u <= max_shift),
        which keeps every constraint linear and differentiable for SLSQP.
    pareto : bool
        Impose ``S @ w >= S @ w_prior`` (default True, as in the paper).
    normalize : "max" | "absmax" | "none"
        Row normalisation of P. ``"max"`` (paper): divide by ``max_j S_ij + eps``. A row whose max is <= 0
        (no domain helps that target) would get a zero or negative denominator, which flips the direction of
        "better"; such rows are divided by ``max_j |S_ij| + eps`` instead, with a RuntimeWarning naming them.
        An all-zero row gives P_hat_i = 0 for every w, so it affects only std (as a constant entry).
        ``"absmax"`` uses ``max_j |S_ij| + eps`` for every row; ``"none"`` uses P itself.
    eps : float
        The paper's 1e-8 in the denominator. Note it matters if S is tiny in absolute terms (rescale S).
    method : "auto" | "slsqp" | "barrier"
        ``"slsqp"``: the paper's solver, scipy SLSQP from uniform (restarts below; a converged answer is
        re-started from itself while that still lowers the objective, because SLSQP's stopping test fires early
        on badly scaled curvature). ``"barrier"``: a log-barrier Newton method with exact Hessians and the std
        term as a second-order-cone epigraph (tikmix.solvers._barrier): the same optimum, accurate where std is
        not differentiable (all targets balanced, where SLSQP can stall), and fast at many domains (SLSQP needs
        about m iterations of O(m^3) each). ``"auto"`` (default): at m <= 64 run SLSQP, then the barrier as a
        check, and return SLSQP's answer unless the barrier's objective is lower by more than 1e-9 (relative);
        at m > 64 the barrier alone. Whichever is asked for, the other is tried if it fails. The result's
        ``method`` field says whose answer was returned.
    restarts : int >= 0
        Extra SLSQP starts tried after the uniform start fails.
    maxiter, ftol : SLSQP options per start.
    tol : float
        Feasibility tolerance of the returned weights: the simplex and bounds hold to 1e-12 (enforced by a
        final clean-up), the Pareto rows (each divided by its largest |S_ij|) and max_shift to ``tol``. If
        SLSQP's answer is further off, it is moved toward a strictly feasible point (w_prior or an LP point)
        just far enough; ``w_prior`` itself always meets the Pareto constraint exactly.
    seed : int
        Seeds the random restarts and the random directions of the degenerate-case check.

    Returns
    -------
    MixtureResult
        ``weights`` [m], ``success``, ``status``, ``message``, ``fun``, ``nit``, ``nfev``, ``njev``,
        ``terms`` ({"std", "sum", "entropy"}), ``P``, ``P_hat``, ``improvement`` (= S@w - S@w_prior),
        ``slack`` (per constraint, >= 0 when it holds), ``maxcv``, ``row_scale``, ``starts``,
        ``multipliers`` (SLSQP's, when it provided the answer), ``method`` ("slsqp"/"barrier"/"none"),
        ``solver="tikmix-d"``.

        ====== ====================================================================================
        status message
        ====== ====================================================================================
        0      Optimization terminated successfully.
        1      Iteration limit reached; returned the best feasible point found.
        2      The solvers failed; returned the best feasible point found (w_prior or an LP point at worst).
        ====== ====================================================================================

    Raises
    ------
    ValueError
        Bad shapes, NaN/inf in S or w_prior, negative or out-of-range options, a repetition option given
        without the other two.
    InfeasibleConstraintsError (a ValueError)
        No mixture meets the constraints. ``err.constraint`` names the culprit: ``"min_weight"`` (sums to
        > 1), ``"max_weight"`` (sums to < 1), ``"repetition"`` (the domains cannot supply stage_tokens),
        ``"min_weight+max_weight"``, ``"min_weight+repetition"``, ``"max_weight+repetition"``,
        ``"max_shift"`` (too small to reach the allowed box from w_prior) or ``"pareto"`` (the other
        constraints exclude every mixture at least as good as w_prior on every target).

    Notes
    -----
    Edge cases: m = 1 returns ``[1.0]`` (after checking the constraints allow it). n = 1: std is 0, so the
    objective is ``-beta*P_hat - gamma*H``. Identical (duplicate) domain columns are allowed; with symmetric
    constraints the entropy term splits their share equally. Rows of S that are constant across domains make
    a vacuous Pareto constraint (``S_i @ w`` is the same for every mixture) and are left out of it. When
    the Pareto constraint leaves no interior (e.g. n >= m - 1, or w_prior on a vertex that is best for some
    target), the Pareto rows that can only hold with equality become equality constraints; if the feasible
    set is a single mixture, that mixture (usually w_prior) is returned with status 0.

    Examples
    --------
    >>> import numpy as np
    >>> S = np.array([[3.0, 1.0, 0.5], [0.2, 2.0, 1.0]])      # 2 targets x 3 domains
    >>> res = solve_direct(S, w_prior=[1/3, 1/3, 1/3], max_weight=0.6)
    >>> res.success, bool(np.isclose(res.weights.sum(), 1.0))
    (True, True)
    """
    S = _check_matrix(S)
    n, m = S.shape
    wp = np.full(m, 1.0 / m) if w_prior is None else _check_mixture(w_prior, m, "w_prior")
    alpha = _nonneg_scalar(alpha, "alpha")
    beta = _nonneg_scalar(beta, "beta")
    gamma = _nonneg_scalar(gamma, "gamma")
    eps = _nonneg_scalar(eps, "eps")
    tol = _nonneg_scalar(tol, "tol", positive=True)
    restarts = check_int(restarts, "restarts", minimum=0)
    maxiter = check_int(maxiter, "maxiter", minimum=1)
    scale, nonpos = row_scale(S, normalize, eps)
    if nonpos.size:
        warnings.warn(
            f"S rows {nonpos.tolist()} have no positive entry (no domain helps those targets); they are "
            "normalised by their largest |S_ij| instead of their max (see solve_direct, normalize)",
            RuntimeWarning,
            stacklevel=2,
        )

    lb = np.zeros(m)
    ub = np.ones(m)
    lb_src = [""] * m
    ub_src = [""] * m
    mw = Mw = cap = None
    if min_weight is not None:
        mw = _per_domain(min_weight, m, "min_weight", 0.0, 1.0)
        lb = np.maximum(lb, mw)
        lb_src = ["min_weight" if v > 0 else "" for v in mw]
    if max_weight is not None:
        Mw = _per_domain(max_weight, m, "max_weight", 0.0, 1.0)
        ub = np.minimum(ub, Mw)
        ub_src = ["max_weight" if v < 1 else "" for v in Mw]
    rep = {"max_epochs": max_epochs, "tokens_available": tokens_available, "stage_tokens": stage_tokens}
    given = [k for k, v in rep.items() if v is not None]
    if given and len(given) != 3:
        missing = [k for k in rep if rep[k] is None]
        raise ValueError(
            f"the repetition cap needs max_epochs, tokens_available and stage_tokens together; got {given}, "
            f"missing {missing}"
        )
    if given:
        epochs = _per_domain(max_epochs, m, "max_epochs", 0.0, math.inf)
        if np.any(epochs <= 0):
            raise ValueError(f"max_epochs must be > 0; entry {int(np.argmin(epochs))} is {epochs.min():g}")
        avail = _per_domain(tokens_available, m, "tokens_available", 0.0, math.inf)
        if not np.all(np.isfinite(avail)):
            raise ValueError("tokens_available must be finite")
        st = _nonneg_scalar(stage_tokens, "stage_tokens", positive=True)
        with np.errstate(invalid="ignore"):
            cap = np.where(np.isinf(epochs), np.inf, epochs * avail / st)
        for j in range(m):
            if cap[j] < ub[j]:
                ub[j] = cap[j]
                ub_src[j] = "repetition"
    shift = None if max_shift is None else _nonneg_scalar(max_shift, "max_shift", upper=2.0)

    # Pareto rows in row-scaled units; rows constant across domains are vacuous on the simplex.
    absmax = np.abs(S).max(axis=1)
    spread = S.max(axis=1) - S.min(axis=1)
    active = (spread > 1e-12 * np.maximum(absmax, 1e-300)) if pareto else np.zeros(n, dtype=bool)
    P_rows = np.flatnonzero(active)
    Pm = S[P_rows] / absmax[P_rows, None] if P_rows.size else np.zeros((0, m))
    prob = _Problem(
        S=S, A=S / scale[:, None], scale=scale, w_prior=wp, lb=lb, ub=ub, lb_src=lb_src, ub_src=ub_src,
        P_all=Pm, max_shift=shift, tol=tol,
    )
    _check_bounds(prob, mw, Mw, cap)
    rng = np.random.default_rng(seed)

    if m == 1:  # the bounds check above already proved [1] allowed; w_prior is [1] too, so shift/Pareto hold
        w = np.ones(1)
        return _finish(prob, w, alpha, beta, gamma, 0, "Only one domain: the mixture is [1].", 0, 0, 0, [], None,
                       mw=mw, Mw=Mw, cap=cap, stage_tokens=stage_tokens)

    anchor, single = _find_interior(prob, rng)
    if single:
        w = anchor
        return _finish(
            prob, w, alpha, beta, gamma, 0,
            "Only one feasible mixture (the Pareto constraint pins it"
            + (", it is w_prior" if np.array_equal(w, wp) else "") + "); no optimisation needed.",
            0, 0, 0, [], None, mw=mw, Mw=Mw, cap=cap, stage_tokens=stage_tokens,
        )

    if method not in ("auto", "slsqp", "barrier"):
        raise ValueError(f"method must be 'auto', 'slsqp' or 'barrier'; got {method!r}")
    both = method == "auto" and m <= _AUTO_SLSQP_MAX_M
    if method == "auto":
        order = ["slsqp", "barrier"] if m <= _AUTO_SLSQP_MAX_M else ["barrier", "slsqp"]
    else:
        order = [method, "barrier" if method == "slsqp" else "slsqp"]  # the second only if the first fails
    attempts: List[Dict[str, Any]] = []
    nfev = njev = 0
    for which in order:
        if which == "slsqp":
            out = _slsqp_solve(prob, alpha, beta, gamma, anchor, restarts, maxiter, ftol, rng)
        else:
            out = _barrier_direct(prob, alpha, beta, gamma, maxiter)
        attempts.append(out)
        nfev += out["nfev"]
        njev += out["njev"]
        if out["status"] == 0 and not both:
            break
    ok = [o for o in attempts if o["status"] == 0]
    if ok:
        chosen = ok[0]  # both ran only for method="auto" at m <= 64: the barrier wins if clearly lower
        for o in ok[1:]:
            if o["fun"] < chosen["fun"] - 1e-9 * max(1.0, abs(chosen["fun"])):
                chosen = o
        status, msg = 0, _STATUS_MESSAGES[0] + chosen["note"]
        if chosen is not attempts[0]:
            first = attempts[0]
            why = "failed: " + first["note"].strip() if first["status"] else f"objective {first['fun']:.10g} vs {chosen['fun']:.10g}"
            msg += f" (method {chosen['method']}; {first['method']} {why})"
        w, nit = chosen["w"], chosen["nit"]
    else:
        # no method converged: best feasible point seen, or the LP anchor
        cands = [(o["fun"], o["w"], o["nit"], o["method"]) for o in attempts if o["w"] is not None]
        cands.append((_objective_only(prob, anchor, alpha, beta, gamma), anchor, 0, "none"))
        _, w, nit, which = min(cands, key=lambda c: c[0])
        status = 1 if any(o["status"] == 1 for o in attempts) else 2
        msg = f"{_STATUS_MESSAGES[status]} [" + "; ".join(f"{o['method']}:{o['note']}" for o in attempts) + "]"
        chosen = {"method": which, "multipliers": None}
    records = [r for o in attempts for r in o["records"]]
    res = _finish(prob, w, alpha, beta, gamma, status, msg, nit, nfev, njev, records, chosen.get("multipliers"),
                  mw=mw, Mw=Mw, cap=cap, stage_tokens=stage_tokens)
    res["method"] = chosen["method"]
    return res


def _objective_only(prob: _Problem, w: np.ndarray, alpha: float, beta: float, gamma: float) -> float:
    return direct_objective(w, prob.A, alpha, beta, gamma)[0]


def _slsqp_solve(
    prob: _Problem, alpha: float, beta: float, gamma: float, anchor: np.ndarray, restarts: int, maxiter: int,
    ftol: float, rng: np.random.Generator, polish: int = 5,
) -> Dict[str, Any]:
    """The paper's solver: SLSQP from uniform, restarting from w_prior, the LP anchor and random mixtures."""
    m = prob.m
    wp = prob.w_prior
    nu = m if prob.shift else 0
    p = m + nu

    def fun(x: np.ndarray) -> float:
        return direct_objective(x[:m], prob.A, alpha, beta, gamma)[0]

    def jac(x: np.ndarray) -> np.ndarray:
        g = np.zeros(p)
        g[:m] = direct_objective(x[:m], prob.A, alpha, beta, gamma)[2]
        return g

    cons: List[Dict[str, Any]] = []
    eq_mat = np.zeros((1 + prob.eq_rows.shape[0], p))
    eq_mat[0, :m] = 1.0
    eq_mat[1:, :m] = prob.eq_rows
    eq_rhs = np.concatenate([[1.0], prob.eq_rows @ wp])
    cons.append({"type": "eq", "fun": lambda x: eq_mat @ x - eq_rhs, "jac": lambda x: eq_mat})
    if prob.P.shape[0]:
        pj = np.zeros((prob.P.shape[0], p))
        pj[:, :m] = prob.P
        prhs = prob.P @ wp
        cons.append({"type": "ineq", "fun": lambda x: pj @ x - prhs, "jac": lambda x: pj})
    if prob.shift:
        sj = np.zeros((2 * m + 1, p))
        sj[:m, :m] = -np.eye(m)
        sj[:m, m:] = np.eye(m)
        sj[m : 2 * m, :m] = np.eye(m)
        sj[m : 2 * m, m:] = np.eye(m)
        sj[2 * m, m:] = -1.0
        srhs = np.concatenate([-wp, wp, [-prob.max_shift]])
        cons.append({"type": "ineq", "fun": lambda x: sj @ x - srhs, "jac": lambda x: sj})
    # An upper bound of 1 is implied by the simplex; leaving it out (inf) keeps SLSQP's subproblem smaller.
    bounds = [(float(lo), float(hi) if hi < 1.0 else None) for lo, hi in zip(prob.lb, prob.ub)]
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
        w = _clean(res.x[:m], prob.lb, prob.ub)
        w, theta = _repair(prob, w, anchor)
        cv = prob.maxcv(w)
        f = _objective_only(prob, w, alpha, beta, gamma)
        records.append({"method": "slsqp", "start": name, "status": int(res.status), "message": str(res.message),
                        "nit": int(res.nit), "fun": f, "maxcv": cv, "repair": theta})
        if cv <= prob.tol and (best is None or f < best[0]):
            best = (f, w, int(res.nit))
        if res.success and cv <= prob.tol:
            # SLSQP's stopping test (objective change < ftol) fires early when the curvature is badly scaled
            # (small gamma, weights near 0). Restarting from the answer resets its quasi-Newton matrix; repeat
            # while that still improves the objective.
            for _ in range(polish):
                r2 = run_slsqp(w)
                w2, th2 = _repair(prob, _clean(r2.x[:m], prob.lb, prob.ub), anchor)
                f2 = _objective_only(prob, w2, alpha, beta, gamma)
                if not (r2.success and prob.maxcv(w2) <= prob.tol and f2 < f):
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


def _barrier_direct(prob: _Problem, alpha: float, beta: float, gamma: float, maxiter: int) -> Dict[str, Any]:
    """TiKMiX-D by the log-barrier Newton method (fast at many domains); pinned domains are eliminated."""
    m, wp = prob.m, prob.w_prior
    n = prob.A.shape[0]
    pinned = prob.ub - prob.lb <= 1e-15
    J = np.flatnonzero(~pinned)
    Pn = np.flatnonzero(pinned)
    fail = {"method": "barrier", "w": None, "fun": math.inf, "nit": 0, "nfev": 0, "njev": 0, "multipliers": None}
    if J.size == 0:
        return {**fail, "status": 2, "note": " barrier: every domain is pinned", "records": []}
    mf = J.size
    w_pin = prob.lb[Pn]
    A = prob.A
    Bfull = (A - A.mean(axis=0, keepdims=True)) / math.sqrt(n)
    B, b0 = Bfull[:, J], Bfull[:, Pn] @ w_pin
    nu = mf if prob.shift else 0
    p = mf + nu
    c = np.zeros(p)
    c[:mf] = -beta * A.sum(axis=0)[J]
    # equalities
    E_rows = [np.concatenate([np.ones(mf), np.zeros(nu)])]
    e_vals = [1.0 - w_pin.sum()]
    for qrow in prob.eq_rows:
        E_rows.append(np.concatenate([qrow[J], np.zeros(nu)]))
        e_vals.append(float(qrow @ wp - qrow[Pn] @ w_pin))
    E, e = np.array(E_rows), np.array(e_vals)
    # inequalities G x >= h
    G_rows: List[np.ndarray] = []
    h_vals: List[np.ndarray] = []
    if prob.P.shape[0]:
        G_rows.append(np.hstack([prob.P[:, J], np.zeros((prob.P.shape[0], nu))]))
        h_vals.append(prob.P @ wp - prob.P[:, Pn] @ w_pin)
    eye = np.eye(mf)
    G_rows.append(np.hstack([eye, np.zeros((mf, nu))]))
    h_vals.append(prob.lb[J])
    capped = prob.ub[J] < 1.0
    if np.any(capped):
        G_rows.append(np.hstack([-eye[capped], np.zeros((int(capped.sum()), nu))]))
        h_vals.append(-prob.ub[J][capped])
    if prob.shift:
        G_rows += [np.hstack([-eye, eye]), np.hstack([eye, eye]), np.concatenate([np.zeros(mf), -np.ones(mf)])[None]]
        budget = prob.max_shift - float(np.abs(w_pin - wp[Pn]).sum())
        h_vals += [-wp[J], wp[J], np.array([-budget])]
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
    w[Pn] = w_pin
    w[J] = x[:mf]
    w = _clean(w, prob.lb, prob.ub)
    cv = prob.maxcv(w)
    f = _objective_only(prob, w, alpha, beta, gamma)
    record = {"method": "barrier", "start": "lp_interior", "status": 0 if converged else 1, "message": message,
              "nit": steps, "fun": f, "maxcv": cv, "repair": 0.0}
    if cv > prob.tol:
        return {**fail, "status": 2, "records": [record], "note": f" barrier: constraint violation {cv:.2e} > tol"}
    return {"method": "barrier", "status": 0 if converged else 1, "w": w, "fun": f, "nit": steps, "nfev": steps,
            "njev": steps, "records": [record], "note": "" if converged else " " + message, "multipliers": None}


def _finish(
    prob: _Problem, w: np.ndarray, alpha: float, beta: float, gamma: float, status: int, message: str, nit: int,
    nfev: int, njev: int, starts: List[Dict[str, Any]], multipliers: Any, *, mw: Any = None, Mw: Any = None,
    cap: Any = None, stage_tokens: Any = None,
) -> MixtureResult:
    S, wp = prob.S, prob.w_prior
    fun, terms, _ = direct_objective(w, prob.A, alpha, beta, gamma)
    P = S @ w
    improvement = P - S @ wp
    slack: Dict[str, Any] = {
        "simplex": -abs(float(w.sum()) - 1.0),
        "nonneg": float(w.min()),
        "pareto": improvement.copy(),
    }
    if mw is not None:
        slack["min_weight"] = w - mw
    if Mw is not None:
        slack["max_weight"] = Mw - w
    if cap is not None:
        st = float(stage_tokens)
        with np.errstate(invalid="ignore"):
            slack["repetition"] = np.where(np.isinf(cap), np.inf, cap * st - w * st)
    if prob.shift:
        slack["max_shift"] = float(prob.max_shift - np.abs(w - wp).sum())
    out = MixtureResult(
        weights=w,
        success=status == 0,
        status=int(status),
        message=message,
        fun=float(fun),
        nit=int(nit),
        nfev=int(nfev),
        njev=int(njev),
        terms=terms,
        P=P,
        P_hat=prob.A @ w,
        improvement=improvement,
        slack=slack,
        maxcv=prob.maxcv(w),
        row_scale=prob.scale,
        starts=starts,
        solver="tikmix-d",
        method="none",
    )
    if multipliers is not None:
        out["multipliers"] = multipliers
    return out
