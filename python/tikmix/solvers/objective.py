"""The TiKMiX-D objective (paper Eq. 9): balance (std), total influence and entropy of a mixture, and the row
normalisation of the influence matrix it uses. Also used by TiKMiX-M's ``"tikmix"`` aggregate.
"""
from __future__ import annotations

import math
from typing import Dict, Literal, Tuple

import numpy as np

__all__ = ["row_scale", "direct_objective", "objective_value"]

# w log w is replaced below this weight by its tangent line (C^1, finite gradient): guards log(0).
_ENTROPY_FLOOR = 1e-12


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


def objective_value(w: np.ndarray, A: np.ndarray, alpha: float, beta: float, gamma: float) -> float:
    """The value alone of :func:`direct_objective`."""
    return direct_objective(w, A, alpha, beta, gamma)[0]
