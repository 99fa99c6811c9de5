"""TiKMiX-D: the next stage's mixture by direct optimisation over the Group Influence matrix.

Paper: TiKMiX (arXiv 2508.17677), Eq. 9-11. See :func:`solve_direct`. The objective lives in
:mod:`~tikmix.solvers.objective`, the constraint set and its feasibility in :mod:`~tikmix.solvers.constraints`,
the two optimisers in ``_slsqp.py`` and ``_barrier.py``; this module validates, dispatches and assembles the result.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np

from .._validation import check_int
from ._barrier import barrier_direct
from ._slsqp import slsqp_solve
from ._validate import ArrayLike, PerDomain, check_matrix, check_mixture, nonneg_scalar
from .constraints import ConstraintSet, domain_bounds, find_interior, pareto_rows
from .objective import direct_objective, objective_value, row_scale
from .result import DIRECT_STATUS, MixtureResult

__all__ = ["solve_direct", "row_scale", "direct_objective"]

# method="auto" uses the paper's SLSQP up to this many domains and the barrier method above it.
_AUTO_SLSQP_MAX_M = 64


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

        Status codes and messages: the table in :class:`MixtureResult`.

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
    S = check_matrix(S)
    n, m = S.shape
    wp = np.full(m, 1.0 / m) if w_prior is None else check_mixture(w_prior, m, "w_prior")
    settings = _check_settings(
        alpha=alpha, beta=beta, gamma=gamma, normalize=normalize, eps=eps, method=method, restarts=restarts,
        maxiter=maxiter, ftol=ftol, tol=tol, seed=seed,
    )
    alpha, beta, gamma, eps, tol = (settings[k] for k in ("alpha", "beta", "gamma", "eps", "tol"))
    scale, nonpos = row_scale(S, normalize, eps)
    if nonpos.size:
        warnings.warn(
            f"S rows {nonpos.tolist()} have no positive entry (no domain helps those targets); they are "
            "normalised by their largest |S_ij| instead of their max (see solve_direct, normalize)",
            RuntimeWarning,
            stacklevel=2,
        )
    bounds = domain_bounds(m, min_weight=min_weight, max_weight=max_weight, max_epochs=max_epochs,
                           tokens_available=tokens_available, stage_tokens=stage_tokens, max_shift=max_shift)
    bounds.check(tol)
    cs = ConstraintSet(w_prior=wp, bounds=bounds, pareto_rows=pareto_rows(S, pareto), tol=tol)
    A = S / scale[:, None]  # row-normalised influence: P_hat = A @ w
    objective = (A, alpha, beta, gamma)
    rng = np.random.default_rng(seed)

    if m == 1:  # the bounds check above already proved [1] allowed; w_prior is [1] too, so shift/Pareto hold
        return _assemble(S, cs, scale, objective, np.ones(1), 0, "Only one domain: the mixture is [1].")

    anchor, single = find_interior(cs, rng)
    if single:
        return _assemble(
            S, cs, scale, objective, anchor, 0,
            "Only one feasible mixture (the Pareto constraint pins it"
            + (", it is w_prior" if np.array_equal(anchor, wp) else "") + "); no optimisation needed.",
        )

    both = method == "auto" and m <= _AUTO_SLSQP_MAX_M
    if method == "auto":
        order = ["slsqp", "barrier"] if m <= _AUTO_SLSQP_MAX_M else ["barrier", "slsqp"]
    else:
        order = [method, "barrier" if method == "slsqp" else "slsqp"]  # the second only if the first fails
    attempts: List[Dict[str, Any]] = []
    nfev = njev = 0
    for which in order:
        if which == "slsqp":
            out = slsqp_solve(cs, A, alpha, beta, gamma, anchor, restarts, maxiter, ftol, rng)
        else:
            out = barrier_direct(cs, A, alpha, beta, gamma, maxiter)
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
        status, msg = 0, DIRECT_STATUS[0] + chosen["note"]
        if chosen is not attempts[0]:
            first = attempts[0]
            why = "failed: " + first["note"].strip() if first["status"] else f"objective {first['fun']:.10g} vs {chosen['fun']:.10g}"
            msg += f" (method {chosen['method']}; {first['method']} {why})"
        w, nit = chosen["w"], chosen["nit"]
    else:
        # no method converged: best feasible point seen, or the LP anchor
        cands = [(o["fun"], o["w"], o["nit"], o["method"]) for o in attempts if o["w"] is not None]
        cands.append((objective_value(anchor, *objective), anchor, 0, "none"))
        _, w, nit, which = min(cands, key=lambda c: c[0])
        status = 1 if any(o["status"] == 1 for o in attempts) else 2
        msg = f"{DIRECT_STATUS[status]} [" + "; ".join(f"{o['method']}:{o['note']}" for o in attempts) + "]"
        chosen = {"method": which, "multipliers": None}
    records = [r for o in attempts for r in o["records"]]
    return _assemble(S, cs, scale, objective, w, status, msg, nit=nit, nfev=nfev, njev=njev, starts=records,
                     multipliers=chosen.get("multipliers"), method=chosen["method"])


_SETTINGS_CHECKS = ("alpha", "beta", "gamma", "normalize", "eps", "method", "restarts", "maxiter", "ftol", "tol", "seed")


def _check_settings(*, alpha: Any, beta: Any, gamma: Any, normalize: Any, eps: Any, method: Any,
                    restarts: Any, maxiter: Any, ftol: Any, tol: Any, seed: Any) -> Dict[str, Any]:
    """Validate solve_direct's non-constraint options (those that need no S); returns them as checked values."""
    out: Dict[str, Any] = {
        "alpha": nonneg_scalar(alpha, "alpha"),
        "beta": nonneg_scalar(beta, "beta"),
        "gamma": nonneg_scalar(gamma, "gamma"),
        "eps": nonneg_scalar(eps, "eps"),
        "tol": nonneg_scalar(tol, "tol", positive=True),
        "ftol": nonneg_scalar(ftol, "ftol"),
        "restarts": check_int(restarts, "restarts", minimum=0),
        "maxiter": check_int(maxiter, "maxiter", minimum=1),
        "seed": check_int(seed, "seed", minimum=0),
    }
    if normalize not in ("max", "absmax", "none"):
        raise ValueError(f"normalize must be 'max', 'absmax' or 'none'; got {normalize!r}")
    if method not in ("auto", "slsqp", "barrier"):
        raise ValueError(f"method must be 'auto', 'slsqp' or 'barrier'; got {method!r}")
    return out


def _assemble(
    S: np.ndarray, cs: ConstraintSet, scale: np.ndarray, objective: Tuple[np.ndarray, float, float, float],
    w: np.ndarray, status: int, message: str, *, nit: int = 0, nfev: int = 0, njev: int = 0,
    starts: Optional[List[Dict[str, Any]]] = None, multipliers: Any = None, method: str = "none",
) -> MixtureResult:
    """The MixtureResult of mixture ``w``: objective terms, predictions, every constraint's slack."""
    A = objective[0]
    fun, terms, _ = direct_objective(w, *objective)
    P = S @ w
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
        P_hat=A @ w,
        improvement=P - S @ cs.w_prior,
        slack=cs.slack(S, w),
        maxcv=cs.maxcv(w),
        row_scale=scale,
        starts=starts or [],
        solver="tikmix-d",
        method=method,
    )
    if multipliers is not None:
        out["multipliers"] = multipliers
    return out
