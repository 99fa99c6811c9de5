"""TiKMiX-M end to end: from a boundary's influence to a mixture, without a training loop.

:func:`solve_tikmix_m` is the pipeline the :class:`tikmix.Controller` runs at a boundary with
``solver="regression"``, usable on its own on a saved ``S`` and per-sample influence scores:

1. **TiKMiX-D first**: :func:`~tikmix.solve_direct` on ``S`` gives ``w_d`` (and the constraints: Pareto against the
   previous mixture, bounds, repetition cap, ``max_shift``).
2. **Labels**: a candidate mixture is scored by the TiKMiX-D objective of a mixed sample drawn with its
   proportions from the per-sample influence rows (:func:`~tikmix.mixture_score_fn` with ``aggregate="tikmix"``
   and TiKMiX-D's ``alpha``/``beta``/``gamma``/``normalize``/``eps``): no extra backward pass.
3. **Surrogate**: :func:`~tikmix.solve_regression` fits LightGBM on candidates in a box around ``w_d`` and
   searches it.
4. **Fallback and pull-back**: when the surrogate is not trustworthy (status != 0, e.g. held-out R^2 below
   ``min_r2``) TiKMiX-D's ``w_d`` is kept; otherwise the TiKMiX-M answer is pulled back toward ``w_d`` just far
   enough to meet TiKMiX-D's constraints (:func:`pull_back`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._validation import to_float64_array
from .constraints import CONSTRAINT_OPTIONS, constraint_set
from .direct import solve_direct
from .regression import mixture_score_fn, solve_regression

__all__ = ["solve_tikmix_m", "pull_back"]

#: TiKMiX-D options that the labels' ``aggregate="tikmix"`` objective shares with the solver.
_SHARED_WITH_SCORE = ("alpha", "beta", "gamma", "normalize", "eps")


def solve_tikmix_m(
    S: Any,
    w_prior: Any,
    unit_scores: Any,
    unit_domains: Any,
    *,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    score_seed: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """TiKMiX-M's mixture for one boundary (the pipeline of this module's docstring).

    Args:
        S: ``[targets, domains]`` Group Influence the solvers see (larger = more helpful).
        w_prior: ``[domains]`` mixture of the stage that just ended (the Pareto reference).
        unit_scores: ``[N, targets]`` per-sample influence scores (an :class:`~tikmix.influence.InfluenceResult`'s
            ``unit_scores`` in per-sample mode).
        unit_domains: ``[N]`` domain index of each row of ``unit_scores``.
        options: ``{"direct": {...}, "regression": {..., "score": {...}}}``: keyword arguments of
            :func:`~tikmix.solve_direct`, :func:`~tikmix.solve_regression` and :func:`~tikmix.mixture_score_fn`
            (as :func:`~tikmix.solvers.check_options` validates them for ``"regression"``). A ``seed`` in
            ``options["regression"]`` overrides ``seed``; ``options["regression"]["score"]`` must not set one
            (``score_seed`` does).
        seed: LightGBM's and the candidates' seed (a 32-bit int is used: ``seed % 2**31``).
        score_seed: seed of the labels' resampling; default ``seed``.

    Returns:
        ``(weights, report)``: the mixture (float64, sums to 1) and a dict with ``"direct"`` (TiKMiX-D's
        :class:`~tikmix.solvers.MixtureResult`), ``"regression"`` (TiKMiX-M's), ``"pull_back_t"`` (how far along
        the segment from ``w_d`` to TiKMiX-M's answer the result lies, 0 when TiKMiX-D's answer was kept) and
        ``"used"``: ``"tikmix-m"`` or ``"tikmix-d (TiKMiX-M status ...: why)"``.
    """
    S = to_float64_array(S, "S")
    if S.ndim != 2:
        raise ValueError(f"S must be a [targets, domains] matrix, got shape {S.shape}")
    scores = to_float64_array(unit_scores, "unit_scores")
    if scores.ndim != 2 or scores.shape[1] != S.shape[0]:
        raise ValueError(f"unit_scores must be [N, targets] with {S.shape[0]} targets (S's rows), got shape "
                         f"{scores.shape}")
    ids = np.asarray(unit_domains)
    if ids.shape != (scores.shape[0],) or not (np.issubdtype(ids.dtype, np.integer)
                                               or np.array_equal(ids, np.round(ids))):
        raise ValueError(f"unit_domains must be [N] = [{scores.shape[0]}] domain indices (ints), got shape "
                         f"{ids.shape} and dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= S.shape[1]):
        raise ValueError(f"unit_domains must lie in [0, {S.shape[1]}) (S's columns), got values in "
                         f"[{ids.min()}, {ids.max()}]")
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict {{'direct': ..., 'regression': ...}}, got {type(options).__name__}")
    opts = dict(options or {})
    unknown = sorted(set(opts) - {"direct", "regression"})
    if unknown:
        raise TypeError(f"unknown option group(s) {unknown}; expected 'direct' and 'regression'")
    d_opts = dict(opts.get("direct") or {})
    r_opts = dict(opts.get("regression") or {})
    score_opts = dict(r_opts.pop("score", None) or {})
    if "seed" in score_opts:
        raise ValueError("options['regression']['score'] must not set seed: pass score_seed")

    base = solve_direct(S, w_prior, **d_opts)
    w_d = np.asarray(base.weights, dtype=np.float64)
    score_opts.setdefault("aggregate", "tikmix")
    for key in _SHARED_WITH_SCORE:
        if key in d_opts:
            score_opts.setdefault(key, d_opts[key])
    score_fn = mixture_score_fn(scores, ids, S.shape[1], seed=seed if score_seed is None else score_seed,
                                **score_opts)
    r_opts.setdefault("seed", int(seed) % 2**31)  # LightGBM takes 32-bit seeds
    res = solve_regression(score_fn, w_d, **r_opts)
    if int(res.status) != 0:
        return w_d, {"direct": base, "regression": res, "pull_back_t": 0.0,
                     "used": f"tikmix-d (TiKMiX-M status {int(res.status)}: {res.message})"}
    weights, t = pull_back(S, w_prior, w_d, np.asarray(res.weights, dtype=np.float64), d_opts)
    return weights, {"direct": base, "regression": res, "pull_back_t": t, "used": "tikmix-m"}


def pull_back(S: Any, w_prior: Any, w_d: Any, w_m: Any, options: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """The point ``w_d + t (w_m - w_d)`` with the largest ``t`` in [0, 1] inside TiKMiX-D's feasible set.

    TiKMiX-M searches a box around the TiKMiX-D answer ``w_d`` without constraints. The constraints are those
    :func:`~tikmix.solve_direct` builds from the same ``options`` (its :class:`~tikmix.solvers.constraints.ConstraintSet`:
    Pareto, bounds, repetition cap, max_shift, same tolerance); all are convex and hold at ``w_d``, so the feasible
    part of the segment is an interval ``[0, t*]``. Returns the mixture at ``t*`` and ``t*``.
    """
    feasible = constraint_set(np.asarray(S, dtype=np.float64), np.asarray(w_prior, dtype=np.float64),
                              **{k: options[k] for k in CONSTRAINT_OPTIONS if k in options})
    return feasible.last_feasible_on_segment(np.asarray(w_d, dtype=np.float64), np.asarray(w_m, dtype=np.float64))
