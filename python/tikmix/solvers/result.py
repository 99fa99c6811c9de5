"""Result object shared by the mixture solvers (a dict with attribute access, like scipy's OptimizeResult)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

__all__ = ["MixtureResult", "InfeasibleConstraintsError", "DIRECT_STATUS", "REGRESSION_STATUS"]

# The status codes of each solver and their messages: the one source of the tables in MixtureResult's docstring
# (a test checks they agree).
DIRECT_STATUS = {
    0: "Optimization terminated successfully.",
    1: "Iteration limit reached; returned the best feasible point found.",
    2: "The solvers failed; returned the best feasible point found (w_prior or an LP point at worst).",
}
REGRESSION_STATUS = {
    0: "Search finished.",
    1: "Surrogate fit is poor on held-out candidates (R^2 below min_r2); the mixture is unreliable.",
    2: "score_fn returned the same value for every candidate; nothing to fit, returned w0.",
}

# Fields shown first by repr, in this order (the rest follow alphabetically).
_REPR_FIRST = ("message", "success", "status", "fun", "weights", "nit")


class InfeasibleConstraintsError(ValueError):
    """No mixture satisfies the requested constraints.

    ``constraint`` names the constraint that cannot be met (``"min_weight"``, ``"max_weight"``,
    ``"repetition"``, ``"max_shift"``, ``"pareto"`` or a combination such as ``"max_weight+repetition"``);
    the message gives the numbers. Subclass of ValueError, so ``except ValueError`` catches it.
    """

    def __init__(self, constraint: str, message: str) -> None:
        super().__init__(message)
        self.constraint = constraint

    def __reduce__(self):  # rebuilt from both arguments, so it survives a worker process (pickling)
        return type(self), (self.constraint, str(self))


class MixtureResult(dict):
    """Outcome of :func:`~tikmix.solvers.solve_direct` or :func:`~tikmix.solvers.solve_regression`.

    A ``dict`` whose keys are also attributes (``res.weights`` is ``res["weights"]``); ``res.x`` is an alias
    of ``res.weights`` for code written against ``scipy.optimize.OptimizeResult``. ``keys()`` lists what a
    solver filled in. ``success`` is exactly ``status == 0``; on any non-zero status ``weights`` is still a
    valid mixture (sums to 1, non-negative, meets every hard constraint) — read ``message``.

    Fields common to both solvers
    -----------------------------
    weights : ndarray [m], float64
        The mixture for the next stage. Sums to 1, every entry >= 0.
    success : bool
        ``status == 0``.
    status : int
        Code from the solver's table below.
    message : str
        Human-readable status (the table's text, plus detail).
    fun : float
        Objective at ``weights``. TiKMiX-D: the minimised value ``alpha*std - beta*sum - gamma*entropy``.
        TiKMiX-M: the surrogate's predicted score of ``weights`` (larger is better).
    nit : int
        TiKMiX-D: SLSQP iterations of the accepted start. TiKMiX-M: Dirichlet search rounds run.
    solver : str
        ``"tikmix-d"`` or ``"tikmix-m"``.

    TiKMiX-D fields (``solve_direct``)
    ----------------------------------
    terms : dict
        ``{"std": std(P_hat), "sum": sum(P_hat), "entropy": H(w)}`` (unweighted terms; ``fun`` combines
        them with alpha, beta, gamma).
    P, P_hat : ndarray [n]
        Predicted influence per target ``S @ w`` and its row-normalised value.
    improvement : ndarray [n]
        ``S @ w - S @ w_prior`` (the Pareto constraint's slack in S units, >= 0 up to ``tol``).
    slack : dict
        Each constraint's slack, >= 0 when satisfied: ``"simplex"`` (``-|sum(w) - 1|``), ``"nonneg"``
        (``min(w)``), ``"pareto"`` ([n], in S units), and when requested ``"min_weight"`` ([m]),
        ``"max_weight"`` ([m]), ``"repetition"`` ([m], in tokens), ``"max_shift"`` (scalar, L1 units).
    maxcv : float
        Largest constraint violation (0 if all hold). Pareto rows are measured in row-scaled units
        (each row of S divided by its largest absolute entry).
    row_scale : ndarray [n]
        Denominators used for P_hat.
    nfev, njev : int
        Objective and gradient evaluations over all starts.
    starts : list of dict
        One entry per solver run: ``{"method", "start", "status", "message", "nit", "fun", "maxcv", "repair"}``
        (``repair``: how far the answer was moved toward a strictly feasible point to meet ``tol``).
    method : str
        Whose answer was returned: ``"slsqp"``, ``"barrier"`` or ``"none"`` (no optimisation needed, or the
        LP fallback point).
    multipliers : ndarray, optional
        SLSQP's Lagrange multipliers of the accepted start, when SLSQP provided the answer.

    TiKMiX-M fields (``solve_regression``)
    --------------------------------------
    score, score_w0 : float
        ``score_fn`` measured at ``weights`` and at ``w0`` (``nan`` if ``evaluate_final=False``).
    fit : dict
        Surrogate quality on held-out candidates: ``{"r2", "spearman", "n_train", "n_test"}`` (and ``"n_trees"``, the
        boosting rounds kept, for the default LightGBM surrogate).
    candidates, labels : ndarray [C, m], [C]
        The labelled candidates and their scores.
    trace : list of dict
        One entry per round (round 0 = the labelled pool): ``{"round", "alpha", "drawn", "accepted",
        "best_pred", "topk_mean_pred", "w_best_pred", "w_best"}``.
    model : object
        The fitted surrogate (a ``lightgbm.Booster`` for ``model="lightgbm"``).

    Status tables
    -------------
    ``solve_direct``:

    ====== ====================================================================================
    status message
    ====== ====================================================================================
    0      Optimization terminated successfully.
    1      Iteration limit reached; returned the best feasible point found.
    2      The solvers failed; returned the best feasible point found (w_prior or an LP point at worst).
    ====== ====================================================================================

    ``solve_regression``:

    ====== ====================================================================================
    status message
    ====== ====================================================================================
    0      Search finished.
    1      Surrogate fit is poor on held-out candidates (R^2 below min_r2); the mixture is unreliable.
    2      score_fn returned the same value for every candidate; nothing to fit, returned w0.
    ====== ====================================================================================

    Infeasible constraint sets are not a status: they raise :class:`InfeasibleConstraintsError`.
    """

    def __getattr__(self, name: str) -> Any:
        if name == "x":
            name = "weights"
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __dir__(self) -> list:
        return sorted(set(super().__dir__()) | set(self.keys()))

    def __repr__(self) -> str:
        if not self:
            return f"{type(self).__name__}()"
        keys = [k for k in _REPR_FIRST if k in self] + sorted(k for k in self if k not in _REPR_FIRST)
        width = max(len(k) for k in keys) + 1
        lines = []
        with np.printoptions(precision=4, suppress=True, threshold=20, edgeitems=3):
            for k in keys:
                value = self[k]
                text = _short(value)
                text = text.replace("\n", "\n" + " " * (width + 2))
                lines.append(f"{k.rjust(width)}: {text}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    """Compact text for repr: long lists and nested dicts are summarised."""
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        inner: Dict[str, str] = {}
        for k, v in value.items():
            inner[k] = _short(v) if not isinstance(v, np.ndarray) else np.array2string(v, precision=4)
        return "{" + ", ".join(f"{k}: {v}" for k, v in inner.items()) + "}"
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=4)
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
