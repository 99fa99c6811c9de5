"""Mixture solvers: TiKMiX-D (:func:`solve_direct`) and TiKMiX-M (:func:`solve_regression`; the whole TiKMiX-M
pipeline from a boundary's influence, with its fallback to TiKMiX-D: :func:`solve_tikmix_m`).

Both are pure functions on numpy (or torch) arrays, deterministic for a seed, and return a
:class:`MixtureResult` (weights plus status, objective terms, constraint slack / fit quality and trace).
"""
from __future__ import annotations

from .direct import direct_objective, row_scale, solve_direct
from .options import check_options
from .regression import MixtureScoreFn, mixture_score_fn, solve_regression
from .result import InfeasibleConstraintsError, MixtureResult
from .tikmix_m import solve_tikmix_m

__all__ = [
    "solve_direct",
    "solve_regression",
    "solve_tikmix_m",
    "mixture_score_fn",
    "MixtureScoreFn",
    "MixtureResult",
    "InfeasibleConstraintsError",
    "direct_objective",
    "row_scale",
    "check_options",
]
