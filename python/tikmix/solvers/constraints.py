"""TiKMiX-D's constraint set and its feasibility: the one place that turns the constraint options (Pareto,
``min_weight`` / ``max_weight``, the repetition cap, ``max_shift``) into bounds and rows, measures violations,
diagnoses an empty set, finds a strictly feasible point and repairs a nearly feasible one.

:func:`solve_direct` optimises over a :class:`ConstraintSet`; :class:`~tikmix.Controller` keeps TiKMiX-M's answer
inside the same set (:meth:`ConstraintSet.last_feasible_on_segment`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from scipy.optimize import linprog

from ._validate import ArrayLike, PerDomain, check_matrix, check_mixture, nonneg_scalar, per_domain
from .result import InfeasibleConstraintsError

__all__ = ["ConstraintSet", "DomainBounds", "CONSTRAINT_OPTIONS", "domain_bounds", "constraint_set"]

# Tolerance used when reading HiGHS LP solutions (its default primal feasibility tolerance is 1e-7).
_LP_TOL = 1e-7

#: The keyword arguments of :func:`solve_direct` that define the feasible set.
CONSTRAINT_OPTIONS = (
    "min_weight", "max_weight", "max_epochs", "tokens_available", "stage_tokens", "max_shift", "pareto", "tol",
)


# ----------------------------------------------------------------------------------------------------------
# Per-domain bounds (need only the number of domains)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DomainBounds:
    """Per-domain weight bounds and the L1 step limit, validated; they depend only on the number of domains."""

    lower: np.ndarray  # [m]
    upper: np.ndarray  # [m]
    lower_source: List[str]  # which option set each lower bound ("" = none)
    upper_source: List[str]  # which option set each upper bound ("" = none, else "max_weight"/"repetition")
    min_weight: Optional[np.ndarray] = None  # [m], as given
    max_weight: Optional[np.ndarray] = None  # [m], as given
    repetition_cap: Optional[np.ndarray] = None  # [m] max_epochs * tokens_available / stage_tokens
    stage_tokens: Optional[float] = None
    max_shift: Optional[float] = None

    def check(self, tol: float) -> None:
        """Raise InfeasibleConstraintsError naming the culprit if the box and the simplex do not intersect."""
        lower, upper, m = self.lower, self.upper, self.lower.size
        for j in range(m):
            if lower[j] > upper[j] + tol:
                if self.max_weight is not None and self.min_weight is not None and self.min_weight[j] > self.max_weight[j]:
                    raise InfeasibleConstraintsError(
                        "min_weight+max_weight",
                        f"min_weight[{j}]={self.min_weight[j]:g} exceeds max_weight[{j}]={self.max_weight[j]:g}",
                    )
                raise InfeasibleConstraintsError(
                    "min_weight+repetition",
                    f"min_weight[{j}]={lower[j]:g} exceeds domain {j}'s repetition cap "
                    f"max_epochs*tokens_available/stage_tokens = {self.repetition_cap[j]:g}",  # type: ignore[index]
                )
        if lower.sum() > 1.0 + tol:
            raise InfeasibleConstraintsError(
                "min_weight", f"min_weight sums to {lower.sum():g} > 1: no mixture can give every domain its minimum"
            )
        if upper.sum() < 1.0 - tol:
            upper_from_max_weight = np.minimum(1.0, self.max_weight) if self.max_weight is not None else np.ones(m)
            upper_from_cap = np.minimum(1.0, self.repetition_cap) if self.repetition_cap is not None else np.ones(m)
            if upper_from_max_weight.sum() < 1.0 - tol:
                raise InfeasibleConstraintsError(
                    "max_weight",
                    f"max_weight sums to {upper_from_max_weight.sum():g} < 1: the weights cannot add up to 1",
                )
            if upper_from_cap.sum() < 1.0 - tol:
                raise InfeasibleConstraintsError(
                    "repetition",
                    f"repetition cap: at max_epochs the domains can supply only {upper_from_cap.sum():g} x "
                    "stage_tokens (sum_j min(1, max_epochs_j*tokens_available_j/stage_tokens) < 1); lower "
                    "stage_tokens, raise max_epochs or add data",
                )
            raise InfeasibleConstraintsError(
                "max_weight+repetition",
                f"max_weight and the repetition cap together allow at most {upper.sum():g} < 1 in total",
            )


def domain_bounds(
    num_domains: int,
    *,
    min_weight: Optional[PerDomain] = None,
    max_weight: Optional[PerDomain] = None,
    max_epochs: Optional[PerDomain] = None,
    tokens_available: Optional[PerDomain] = None,
    stage_tokens: Optional[float] = None,
    max_shift: Optional[float] = None,
) -> DomainBounds:
    """Validate the per-domain constraint options (meaning as in :func:`solve_direct`) into :class:`DomainBounds`."""
    m = num_domains
    lower, upper = np.zeros(m), np.ones(m)
    lower_source, upper_source = [""] * m, [""] * m
    out = DomainBounds(lower, upper, lower_source, upper_source)
    if min_weight is not None:
        out.min_weight = per_domain(min_weight, m, "min_weight", 0.0, 1.0)
        out.lower = np.maximum(lower, out.min_weight)
        out.lower_source = ["min_weight" if v > 0 else "" for v in out.min_weight]
    if max_weight is not None:
        out.max_weight = per_domain(max_weight, m, "max_weight", 0.0, 1.0)
        out.upper = np.minimum(upper, out.max_weight)
        out.upper_source = ["max_weight" if v < 1 else "" for v in out.max_weight]
    repetition = {"max_epochs": max_epochs, "tokens_available": tokens_available, "stage_tokens": stage_tokens}
    given = [k for k, v in repetition.items() if v is not None]
    if given and len(given) != 3:
        missing = [k for k in repetition if repetition[k] is None]
        raise ValueError(
            f"the repetition cap needs max_epochs, tokens_available and stage_tokens together; got {given}, "
            f"missing {missing}"
        )
    if given:
        epochs = per_domain(max_epochs, m, "max_epochs", 0.0, math.inf)
        if np.any(epochs <= 0):
            raise ValueError(f"max_epochs must be > 0; entry {int(np.argmin(epochs))} is {epochs.min():g}")
        available = per_domain(tokens_available, m, "tokens_available", 0.0, math.inf)
        if not np.all(np.isfinite(available)):
            raise ValueError("tokens_available must be finite")
        out.stage_tokens = nonneg_scalar(stage_tokens, "stage_tokens", positive=True)
        with np.errstate(invalid="ignore"):
            out.repetition_cap = np.where(np.isinf(epochs), np.inf, epochs * available / out.stage_tokens)
        for j in range(m):
            if out.repetition_cap[j] < out.upper[j]:
                out.upper[j] = out.repetition_cap[j]
                out.upper_source[j] = "repetition"
    out.max_shift = None if max_shift is None else nonneg_scalar(max_shift, "max_shift", upper=2.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# The constraint set
# ----------------------------------------------------------------------------------------------------------
def pareto_rows(S: np.ndarray, pareto: bool = True) -> np.ndarray:
    """The Pareto constraint's rows ``S_i / max_j |S_ij|`` (row-scaled units); rows constant across domains are
    vacuous on the simplex (``S_i @ w`` is the same for every mixture) and left out."""
    n, m = S.shape
    absmax = np.abs(S).max(axis=1)
    spread = S.max(axis=1) - S.min(axis=1)
    active = (spread > 1e-12 * np.maximum(absmax, 1e-300)) if pareto else np.zeros(n, dtype=bool)
    rows = np.flatnonzero(active)
    return S[rows] / absmax[rows, None] if rows.size else np.zeros((0, m))


@dataclass
class ConstraintSet:
    """TiKMiX-D's feasible set: the simplex, ``bounds``, the Pareto rows ``pareto_rows @ (w - w_prior) >= 0``
    (row-scaled units) and ``sum |w - w_prior| <= max_shift``; ``tol`` is the feasibility tolerance."""

    w_prior: np.ndarray  # [m]
    bounds: DomainBounds
    pareto_rows: np.ndarray  # [r, m], vacuous rows dropped
    tol: float
    # What the optimisers see: the Pareto rows kept as inequalities, and an orthonormal basis of the rows that can
    # only hold with equality (pareto_equalities @ (w - w_prior) = 0); see find_interior.
    pareto_inequalities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    pareto_equalities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        self.pareto_inequalities = self.pareto_rows.copy()
        self.pareto_equalities = np.zeros((0, self.pareto_rows.shape[1]))
        # find_interior may pin domains to zero: work on copies so DomainBounds stays as validated
        self.lower = self.bounds.lower.copy()
        self.upper = self.bounds.upper.copy()

    @property
    def m(self) -> int:
        return self.w_prior.size

    @property
    def max_shift(self) -> Optional[float]:
        return self.bounds.max_shift

    @property
    def has_shift(self) -> bool:
        return self.bounds.max_shift is not None

    def violation(self, w: np.ndarray) -> Dict[str, float]:
        """Violation of each constraint at w (0 = satisfied); Pareto rows in row-scaled units."""
        out = {
            "simplex": abs(float(w.sum()) - 1.0),
            "bounds": float(max(0.0, np.max(self.lower - w), np.max(w - self.upper))),
        }
        if self.pareto_rows.shape[0]:
            out["pareto"] = float(max(0.0, -np.min(self.pareto_rows @ (w - self.w_prior))))
        if self.has_shift:
            out["max_shift"] = float(max(0.0, np.abs(w - self.w_prior).sum() - self.max_shift))
        return out

    def maxcv(self, w: np.ndarray) -> float:
        """The largest constraint violation at ``w`` (0 if every constraint holds)."""
        return max(self.violation(w).values())

    def contains(self, w: np.ndarray) -> bool:
        """``w`` meets every constraint to ``tol``."""
        return self.maxcv(w) <= self.tol

    def slack(self, S: np.ndarray, w: np.ndarray) -> Dict[str, object]:
        """Each constraint's slack at ``w``, >= 0 when it holds (the result's ``slack`` field)."""
        b = self.bounds
        out: Dict[str, object] = {
            "simplex": -abs(float(w.sum()) - 1.0),
            "nonneg": float(w.min()),
            "pareto": S @ w - S @ self.w_prior,
        }
        if b.min_weight is not None:
            out["min_weight"] = w - b.min_weight
        if b.max_weight is not None:
            out["max_weight"] = b.max_weight - w
        if b.repetition_cap is not None:
            st = float(b.stage_tokens)  # type: ignore[arg-type]
            with np.errstate(invalid="ignore"):
                out["repetition"] = np.where(np.isinf(b.repetition_cap), np.inf, b.repetition_cap * st - w * st)
        if self.has_shift:
            out["max_shift"] = float(self.max_shift - np.abs(w - self.w_prior).sum())
        return out

    def last_feasible_on_segment(self, start: np.ndarray, end: np.ndarray) -> Tuple[np.ndarray, float]:
        """The point ``start + t (end - start)`` (clipped at 0, renormalised) with the largest ``t`` in [0, 1]
        inside the set, and that ``t``. ``start`` must be feasible; the set is convex, so the feasible part of
        the segment is an interval ``[0, t*]``, found by bisection."""

        def at(t: float) -> np.ndarray:
            w = np.clip(start + t * (end - start), 0.0, None)
            return w / w.sum()

        if self.contains(at(1.0)):
            return at(1.0), 1.0
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.contains(at(mid)) else (lo, mid)
        return at(lo), lo


def constraint_set(S: ArrayLike, w_prior: Optional[ArrayLike] = None, *, pareto: bool = True, tol: float = 1e-9,
                   **bounds: Any) -> ConstraintSet:
    """The feasible set :func:`solve_direct` optimises over for these arguments (same meaning and checks);
    ``bounds`` are the per-domain options of :func:`domain_bounds` (``min_weight``, ``max_weight``, the
    repetition cap's three, ``max_shift``).

    Raises InfeasibleConstraintsError when the per-domain bounds alone leave no mixture.
    """
    S = check_matrix(S)
    m = S.shape[1]
    wp = np.full(m, 1.0 / m) if w_prior is None else check_mixture(w_prior, m, "w_prior")
    domain = domain_bounds(m, **bounds)
    tol = nonneg_scalar(tol, "tol", positive=True)
    domain.check(tol)
    return ConstraintSet(w_prior=wp, bounds=domain, pareto_rows=pareto_rows(S, pareto), tol=tol)


def clean(w: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Clip w into [lower, upper] and restore sum(w) = 1 by moving the residual into coordinates with room."""
    w = np.clip(w, lower, upper)
    for _ in range(4):
        r = 1.0 - w.sum()
        if r == 0.0:
            break
        room = (upper - w) if r > 0 else (w - lower)
        total = room.sum()
        if total <= 0:
            break
        w = np.clip(w + r * room / total, lower, upper)
    return w


# ----------------------------------------------------------------------------------------------------------
# Feasibility (LP) and diagnosis
# ----------------------------------------------------------------------------------------------------------
def _lp(
    cs: ConstraintSet,
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
    m = cs.m
    nu = m if cs.has_shift else 0
    nv = m + nu + 1
    A_ub: List[np.ndarray] = []
    b_ub: List[np.ndarray] = []
    if use_pareto and cs.pareto_rows.shape[0]:
        r = cs.pareto_rows.shape[0]
        blk = np.zeros((r, nv))
        blk[:, :m] = -cs.pareto_rows
        blk[:, -1] = 1.0
        A_ub.append(blk)
        b_ub.append(-cs.pareto_rows @ cs.w_prior)
    if cs.has_shift:
        eye = np.eye(m)
        blk1 = np.zeros((m, nv))
        blk1[:, :m] = eye
        blk1[:, m : 2 * m] = -eye
        blk2 = np.zeros((m, nv))
        blk2[:, :m] = -eye
        blk2[:, m : 2 * m] = -eye
        blk3 = np.zeros((1, nv))
        blk3[0, m : 2 * m] = 1.0
        budget = cs.max_shift if shift_budget is None else shift_budget
        A_ub += [blk1, blk2, blk3]
        b_ub += [cs.w_prior, -cs.w_prior, np.array([budget])]
    A_eq = np.zeros((1, nv))
    A_eq[0, :m] = 1.0
    b_eq = np.array([1.0])
    bounds = [(float(lo), float(hi)) for lo, hi in zip(cs.lower, cs.upper)] + [(0.0, 1.0)] * nu
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


def _wprior_violations(cs: ConstraintSet) -> List[str]:
    names: List[str] = []
    wp = cs.w_prior
    for j in range(cs.m):
        src_lo, src_hi = cs.bounds.lower_source[j], cs.bounds.upper_source[j]
        if wp[j] < cs.lower[j] - cs.tol and src_lo and src_lo not in names:
            names.append(src_lo)
        if wp[j] > cs.upper[j] + cs.tol and src_hi and src_hi not in names:
            names.append(src_hi)
    return names


def _diagnose_lp_failure(cs: ConstraintSet) -> None:
    """The bounds are consistent but the LP is infeasible: blame max_shift or the Pareto constraint."""
    if cs.has_shift:
        res = _lp(cs, "t", use_pareto=False)
        if res.status == 2:
            d = _lp(cs, "l1", use_pareto=False, shift_budget=2.0)
            dist = float(d.fun) if d.status == 0 else float("nan")
            limits = sorted(set(s for s in cs.bounds.lower_source + cs.bounds.upper_source if s))
            raise InfeasibleConstraintsError(
                "max_shift",
                f"max_shift={cs.max_shift:g} is smaller than {dist:.6g}, the L1 distance from w_prior to the "
                f"nearest mixture allowed by {', '.join(limits) or 'the bounds'}",
            )
    others = _wprior_violations(cs)
    raise InfeasibleConstraintsError(
        "pareto",
        "the Pareto constraint S @ w >= S @ w_prior cannot hold together with "
        f"{', '.join(others + (['max_shift'] if cs.has_shift else [])) or 'the other constraints'}: every mixture "
        "they allow makes some target worse than w_prior (w_prior itself violates "
        f"{', '.join(others) or 'nothing'}). Relax those constraints or pass pareto=False.",
    )


def find_interior(cs: ConstraintSet, rng: np.random.Generator) -> Tuple[np.ndarray, bool]:
    """LP stage. Returns (anchor point, single_point).

    anchor: a feasible point with the largest smallest Pareto slack t* (strictly feasible when t* > 0).
    If t* ~ 0 the Pareto rows that cannot be slack become equalities (cs.pareto_equalities) and domains that must
    be 0 get upper = 0, so the optimisers see a problem with an interior; single_point says the feasible set is
    one mixture. Raises InfeasibleConstraintsError (naming the culprit) when the set is empty.
    """
    res = _lp(cs, "t")
    if res.status == 2 or (res.status == 0 and res.x[-1] < -_LP_TOL):
        _diagnose_lp_failure(cs)
    if res.status != 0:
        raise RuntimeError(f"feasibility LP failed unexpectedly (HiGHS status {res.status}: {res.message})")
    t_star = float(res.x[-1])
    anchor = clean(res.x[: cs.m], cs.lower, cs.upper)
    if t_star > _LP_TOL or cs.pareto_rows.shape[0] == 0:
        return anchor, False
    # Degenerate: some Pareto rows are implicitly equalities on the feasible set.
    eq_idx, keep = [], []
    for i in range(cs.pareto_rows.shape[0]):
        r = _lp(cs, "dir", direction=cs.pareto_rows[i])
        if r.status == 0 and float(cs.pareto_rows[i] @ (r.x[: cs.m] - cs.w_prior)) <= _LP_TOL:
            eq_idx.append(i)
        else:
            keep.append(i)
    if eq_idx:
        # E (w - w_prior) = 0 given sum(w - w_prior) = 0  <=>  Q (w - w_prior) = 0, Q an orthonormal basis of
        # E's rows with the ones direction projected out (independent rows keep SLSQP's subproblem regular).
        E = cs.pareto_rows[eq_idx]
        E = E - E.mean(axis=1, keepdims=True)
        _, sv, vt = np.linalg.svd(E, full_matrices=False)
        cs.pareto_equalities = vt[sv > 1e-10 * max(sv[0], 1e-300)]
        cs.pareto_inequalities = cs.pareto_rows[keep]
    # Domains forced to zero on the feasible set.
    for j in range(cs.m):
        if cs.upper[j] <= 0:
            continue
        r = _lp(cs, "dir", direction=np.eye(cs.m)[j])
        if r.status == 0 and r.x[j] <= _LP_TOL:
            cs.upper[j] = 0.0
            cs.lower[j] = 0.0
    # Is the feasible set a single point? Compare LP optima along two random directions.
    single = True
    for _ in range(2):
        d = rng.standard_normal(cs.m)
        hi = _lp(cs, "dir", direction=d)
        lo = _lp(cs, "dir", direction=-d)
        if hi.status == 0 and lo.status == 0 and float(d @ (hi.x[: cs.m] - lo.x[: cs.m])) > 1e-7 * np.abs(d).sum():
            single = False
            break
    res = _lp(cs, "t")
    if res.status == 0:
        anchor = clean(res.x[: cs.m], cs.lower, cs.upper)
    if cs.maxcv(cs.w_prior) <= cs.tol:
        anchor = cs.w_prior.copy()  # exactly feasible for the Pareto constraint
    return anchor, single


def repair(cs: ConstraintSet, w: np.ndarray, anchor: np.ndarray) -> Tuple[np.ndarray, float]:
    """Move w toward the feasible anchor just far enough that every constraint holds to cs.tol."""
    if cs.maxcv(w) <= cs.tol:
        return w, 0.0
    if cs.maxcv(anchor) > cs.tol:
        return w, float("nan")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cs.maxcv(clean((1 - mid) * w + mid * anchor, cs.lower, cs.upper)) <= cs.tol:
            hi = mid
        else:
            lo = mid
    return clean((1 - hi) * w + hi * anchor, cs.lower, cs.upper), hi
