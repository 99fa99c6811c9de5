"""Up-front validation of solver options (e.g. a training config) before any influence is measured."""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable

from .._validation import check_int, did_you_mean
from ._validate import nonneg_scalar
from .constraints import CONSTRAINT_OPTIONS, domain_bounds
from .direct import _SETTINGS_CHECKS, _check_settings, solve_direct
from .regression import _check_search_options, mixture_score_fn, solve_regression

__all__ = ["check_options"]


def _unknown(options: Mapping[str, Any], fn: Callable[..., Any], positional: set, where: str) -> dict:
    """Reject names ``fn`` does not take; return ``fn``'s defaults overlaid with ``options``."""
    params = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in positional}
    unknown = sorted(set(options) - set(params))
    if unknown:
        hints = "".join(did_you_mean(u, list(params)) for u in unknown)
        raise TypeError(f"unknown {where} option(s) {unknown}{hints}; known: {sorted(params)}")
    return {**params, **options}


def _check_direct_options(num_domains: int, options: Mapping[str, Any]) -> None:
    """solve_direct's keyword arguments, as far as they can be checked without the influence matrix."""
    given = _unknown(options, solve_direct, {"S", "w_prior"}, "solve_direct")
    settings = _check_settings(**{k: given[k] for k in _SETTINGS_CHECKS})
    if not isinstance(given["pareto"], bool):
        raise TypeError(f"pareto must be a bool, got {type(given['pareto']).__name__}")
    bounds = domain_bounds(num_domains, **{k: given[k] for k in CONSTRAINT_OPTIONS if k not in ("pareto", "tol")})
    bounds.check(settings["tol"])


def _check_score_options(options: Mapping[str, Any]) -> None:
    """mixture_score_fn's keyword arguments, as far as they can be checked without the influence rows."""
    given = _unknown(options, mixture_score_fn, {"per_sample", "ids", "num_domains"}, "regression.score")
    check_int(given["draws"], "draws", minimum=1)
    check_int(given["seed"], "seed", minimum=0)
    for name in ("alpha", "beta", "gamma", "eps"):
        nonneg_scalar(given[name], name)
    if given["normalize"] not in ("max", "absmax", "none"):
        raise ValueError(f"normalize must be 'max', 'absmax' or 'none'; got {given['normalize']!r}")
    if given["backend"] not in ("auto", "native", "numpy"):
        raise ValueError(f"backend must be 'auto', 'native' or 'numpy'; got {given['backend']!r}")
    agg = given["aggregate"]
    if isinstance(agg, str) and agg not in ("mean", "tikmix"):
        raise ValueError(f"aggregate must be 'mean', 'tikmix', a weight vector or a callable; got {agg!r}")


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of options, got {type(value).__name__}")
    return value


def check_options(name: str, options: Mapping[str, Any] | None, num_domains: int) -> None:
    """Validate solver options for ``num_domains`` domains before training, with the solvers' own checks.

    ``name`` and ``options`` are what :class:`~tikmix.Controller` takes as ``solver`` and ``solver_options``:

    * ``"direct"``: keyword arguments of :func:`~tikmix.solve_direct`;
    * ``"regression"``: ``{"direct": {...}, "regression": {..., "score": {...}}}`` — keyword arguments of
      :func:`~tikmix.solve_direct`, of :func:`~tikmix.solve_regression` and of :func:`~tikmix.mixture_score_fn`.

    Raises TypeError for an unknown option or a value of the wrong type, ValueError (InfeasibleConstraintsError
    when the per-domain bounds leave no mixture) for a bad value. What depends on the influence matrix (the
    Pareto constraint, whether ``max_shift`` can reach the bounds) is only known when solving.
    """
    num_domains = check_int(num_domains, "num_domains", minimum=1)
    options = _mapping({} if options is None else options, "options")
    if name == "direct":
        _check_direct_options(num_domains, options)
        return
    if name != "regression":
        raise ValueError(f"solver name must be 'direct' or 'regression', got {name!r}")
    unknown = sorted(set(options) - {"direct", "regression"})
    if unknown:
        raise TypeError(f"unknown regression solver option group(s) {unknown}; expected 'direct' and 'regression'")
    _check_direct_options(num_domains, _mapping(options.get("direct", {}), "options['direct']"))
    search = dict(_mapping(options.get("regression", {}), "options['regression']"))
    _check_score_options(_mapping(search.pop("score", {}), "options['regression']['score']"))
    given = _unknown(search, solve_regression, {"score_fn", "w0"}, "regression")
    if not isinstance(given["evaluate_final"], bool):
        raise TypeError(f"evaluate_final must be a bool, got {type(given['evaluate_final']).__name__}")
    if isinstance(given["min_r2"], bool) or not isinstance(given["min_r2"], (int, float)):
        raise TypeError(f"min_r2 must be a real number, got {type(given['min_r2']).__name__}")
    check_int(given["seed"], "seed", minimum=0)
    _check_search_options(num_domains, **{k: given[k] for k in inspect.signature(_check_search_options).parameters
                                          if k != "m"})
