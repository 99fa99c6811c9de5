"""TiKMiX-M: the next stage's mixture from a regression surrogate of measured mixture scores.

Paper: TiKMiX (arXiv 2508.17677), TiKMiX-M. See :func:`solve_regression` and :func:`mixture_score_fn`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import InitVar, dataclass
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.stats import qmc, spearmanr

from ._resample import mixture_scores_np
from .._extras import require
from .._validation import check_int, to_float64_array
from ._validate import check_mixture
from .objective import row_scale
from .result import REGRESSION_STATUS, MixtureResult

__all__ = ["solve_regression", "mixture_score_fn", "MixtureScoreFn"]

ScoreFn = Callable[[np.ndarray], Any]

# Chosen by measurement (benchmarks/bench_solvers.py --only tikmix-m-defaults): the labels are smooth in w (a
# linear model plus an entropy term), so small trees with a linear model in each leaf fit them with far fewer trees
# than piecewise-constant leaves; early stopping on the held-out split ends the boosting when it stops helping.
_LGB_DEFAULTS: Dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.2,
    "num_leaves": 4,
    "linear_tree": True,
    "max_bin": 63,
    "min_data_in_leaf": 20,
    "lambda_l2": 1.0,
    "num_boost_round": 400,
    "early_stopping_round": 20,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbose": -1,
}


# ----------------------------------------------------------------------------------------------------------
# Surrogate models
# ----------------------------------------------------------------------------------------------------------
class _LightGBM:
    """LightGBM regressor through the native API (no scikit-learn needed); deterministic for a seed.

    With ``early_stopping_round > 0`` (or one of LightGBM's aliases) :meth:`fit` takes a validation split and
    stops adding trees once its L2 error has not improved for that many rounds; prediction then uses the best
    iteration only.
    """

    _STOP_KEYS = ("early_stopping_round", "early_stopping_rounds", "early_stopping", "n_iter_no_change")

    def __init__(self, params: Dict[str, Any], seed: int) -> None:
        self.params = dict(_LGB_DEFAULTS)
        stop_keys = [k for k in self._STOP_KEYS if k in params]
        if len(stop_keys) > 1:
            raise ValueError(f"model_params sets early stopping twice ({', '.join(stop_keys)}); give one")
        if stop_keys:
            self.params.pop("early_stopping_round")
        self.params.update(params)
        self.rounds = check_int(self.params.pop("num_boost_round"), "model_params['num_boost_round']", minimum=1)
        stop = 0
        for key in self._STOP_KEYS:
            if key in self.params:
                stop = check_int(self.params.pop(key), f"model_params[{key!r}]", minimum=0)
        self.early_stop = stop
        self.params["seed"] = int(seed)
        self.booster: Any = None
        self.n_trees = 0

    def fit(self, X: np.ndarray, y: np.ndarray, valid: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> "_LightGBM":
        lgb = require("lightgbm", "regression", "solve_regression(model='lightgbm')")

        data = lgb.Dataset(X, label=y, params={"verbose": -1}, free_raw_data=True)
        # keep_training_booster: skips LightGBM's serialise/parse round trip of the finished model
        if self.early_stop > 0 and valid is not None:
            vdata = lgb.Dataset(valid[0], label=valid[1], reference=data, params={"verbose": -1})
            self.booster = lgb.train(self.params, data, num_boost_round=self.rounds, valid_sets=[vdata],
                                     callbacks=[lgb.early_stopping(self.early_stop, verbose=False)],
                                     keep_training_booster=True)
            self.n_trees = int(self.booster.best_iteration) or self.booster.current_iteration()
        else:
            self.booster = lgb.train(self.params, data, num_boost_round=self.rounds, keep_training_booster=True)
            self.n_trees = self.booster.current_iteration()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(X, num_iteration=self.n_trees,
                                               num_threads=self.params.get("num_threads", 1)), dtype=np.float64)


def _make_model(model: Any, params: Optional[Dict[str, Any]], seed: int) -> Any:
    if isinstance(model, str):
        if model != "lightgbm":
            raise ValueError(f"model must be 'lightgbm' or an object with fit(X, y) and predict(X); got {model!r}")
        return _LightGBM(params or {}, seed)
    if params:
        raise ValueError("model_params applies to model='lightgbm' only; configure your own model directly")
    if isinstance(model, type) or (callable(model) and not hasattr(model, "fit")):
        model = model()  # a class or a zero-argument factory
    if not (hasattr(model, "fit") and hasattr(model, "predict")):
        raise TypeError(f"model must be 'lightgbm' or have fit(X, y) and predict(X); got {type(model).__name__}")
    return model


# ----------------------------------------------------------------------------------------------------------
# Candidate generation
# ----------------------------------------------------------------------------------------------------------
def _project_box_simplex(V: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of V onto {x : sum x = 1, lo <= x <= hi} (bisection on the shift)."""
    a = (V - hi).min(axis=1, keepdims=True)  # clip(V - tau) sums to >= 1 at tau = a
    b = (V - lo).max(axis=1, keepdims=True)  # and to <= 1 at tau = b
    for _ in range(100):
        mid = 0.5 * (a + b)
        s = np.clip(V - mid, lo, hi).sum(axis=1, keepdims=True)
        a = np.where(s > 1.0, mid, a)
        b = np.where(s > 1.0, b, mid)
    X = np.clip(V - 0.5 * (a + b), lo, hi)
    return X / X.sum(axis=1, keepdims=True)


def _in_box(X: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    slack = 1e-12
    return np.all((X >= lo * (1 - slack)) & (X <= hi * (1 + slack)), axis=1)


def _lhs(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    try:
        sampler = qmc.LatinHypercube(d=d, rng=rng)
    except TypeError:  # scipy < 1.15 names the argument seed
        sampler = qmc.LatinHypercube(d=d, seed=rng)
    return sampler.random(k)


def _box_candidates(
    w0s: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, outside: str, rng: np.random.Generator,
    max_factor: int = 1000,
) -> Tuple[np.ndarray, int]:
    """n candidates (support coordinates only): LHS in [lo, hi], normalised, rejected/projected if outside."""
    got: List[np.ndarray] = []
    have = drawn = 0
    batch = max(64, n)
    while have < n:
        U = _lhs(w0s.size, batch, rng)
        raw = lo + (hi - lo) * U
        V = raw / raw.sum(axis=1, keepdims=True)
        drawn += batch
        if outside == "project":
            V = _project_box_simplex(V, lo, hi)
        else:
            V = V[_in_box(V, lo, hi)]
        got.append(V)
        have += V.shape[0]
        if have < n:
            if drawn >= max_factor * n:
                rate = have / drawn
                raise ValueError(
                    f"only {have} of {drawn} Latin Hypercube candidates ({rate:.2%}) stayed inside the box after "
                    f"normalisation (needed n_candidates={n}); with many domains almost every normalised point "
                    "leaves the box: pass outside='project' or widen box"
                )
            rate = max(have / drawn, 1.0 / (max_factor * n))
            batch = int(min(max(64, math.ceil(1.2 * (n - have) / rate)), max(64, 50 * n), 1 << 22))
    return np.vstack(got)[:n], drawn


# ----------------------------------------------------------------------------------------------------------
# TiKMiX-M
# ----------------------------------------------------------------------------------------------------------
def _labels(score_fn: ScoreFn, W: np.ndarray, batch_size: Optional[int]) -> np.ndarray:
    C = W.shape[0]
    step = C if batch_size is None else int(batch_size)
    parts = []
    for i in range(0, C, step):
        chunk = W[i : i + step]
        y = to_float64_array(score_fn(chunk), "score_fn output")
        if y.shape != (chunk.shape[0],):
            raise ValueError(
                f"score_fn must return one score per candidate, shape ({chunk.shape[0]},); got {y.shape}. "
                "For per-target scores [C, n], aggregate them first (mixture_score_fn(..., aggregate=...) does)"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"score_fn returned {int((~np.isfinite(y)).sum())} NaN/inf scores")
        parts.append(y)
    return np.concatenate(parts)


def _check_search_options(
    m: int, *, n_candidates: Any, box: Any, rounds: Any, alpha_range: Any, top_k: Any, samples_per_round: Any,
    model: Any, model_params: Any, test_fraction: Any, outside: Any, batch_size: Any, seed: Any,
) -> Tuple[Tuple[float, float], Tuple[float, float], Any]:
    """Validate solve_regression's options for ``m`` domains: returns the box, the sorted alpha range and the
    surrogate model (built, not fitted)."""
    try:
        a, b = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"box must be a pair (a, b); got {box!r}") from exc
    if not (0.0 <= a <= 1.0 <= b and a < b and math.isfinite(b)):
        raise ValueError(f"box must satisfy 0 <= a <= 1 <= b < inf and a < b (w0 inside the box); got {box!r}")
    for name, value, low in (("n_candidates", n_candidates, 20), ("rounds", rounds, 0), ("top_k", top_k, 1),
                             ("samples_per_round", samples_per_round, 1)):
        check_int(value, name, minimum=low)
    if samples_per_round < top_k:
        raise ValueError(f"samples_per_round ({samples_per_round}) must be >= top_k ({top_k})")
    if not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction!r}")
    if outside not in ("reject", "project"):
        raise ValueError(f"outside must be 'reject' or 'project'; got {outside!r}")
    if batch_size is not None:
        check_int(batch_size, "batch_size", minimum=1)
    if alpha_range is None:
        alpha_range = (10.0 * m, 1000.0 * m)
    try:
        alo, ahi = sorted(float(v) for v in alpha_range)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"alpha_range must be a pair of positive numbers; got {alpha_range!r}") from exc
    if not (alo > 0 and math.isfinite(ahi)):
        raise ValueError(f"alpha_range must be a pair of positive finite numbers; got {alpha_range!r}")
    return (a, b), (alo, ahi), _make_model(model, model_params, seed)


def solve_regression(
    score_fn: ScoreFn,
    w0: Any,
    *,
    n_candidates: int = 2048,
    box: Tuple[float, float] = (0.5, 2.0),
    rounds: int = 8,
    alpha_range: Optional[Tuple[float, float]] = None,
    top_k: int = 32,
    samples_per_round: int = 4096,
    model: Any = "lightgbm",
    model_params: Optional[Dict[str, Any]] = None,
    test_fraction: float = 0.2,
    outside: Literal["reject", "project"] = "reject",
    batch_size: Optional[int] = None,
    min_r2: float = 0.0,
    evaluate_final: bool = True,
    seed: int = 0,
) -> MixtureResult:
    r"""TiKMiX-M: fit a regression surrogate of ``score_fn`` around ``w0`` and search it for a better mixture.

    1. **Candidates.** ``n_candidates`` mixtures by Latin Hypercube Sampling (``scipy.stats.qmc.LatinHypercube``)
       in the per-domain box ``[a * w0_j, b * w0_j]`` (``box = (a, b)``), each normalised to sum 1 and rejected
       if normalising moved it outside the box (``outside="project"`` projects it onto box ∩ simplex instead,
       needed with many domains, where almost every normalised point leaves the box). ``w0`` itself is the first
       candidate. Domains with ``w0_j = 0`` stay at 0 (the box is multiplicative).
    2. **Labels.** ``y = score_fn(W)`` on the candidate matrix ``W [C, m]`` (in batches of ``batch_size``,
       default all at once); larger = better. See :func:`mixture_score_fn` for a score built from per-sample
       influence rows (no extra backward passes).
    3. **Surrogate.** A LightGBM regressor ``w -> y`` (``deterministic=True``, one thread, seeded): trees of 4
       leaves with a linear model in each leaf (``linear_tree``), learning rate 0.2, up to 400 trees, fitted on
       the candidates outside a held-out ``test_fraction``. Boosting stops once the L2 error on the held-out
       candidates has not improved for 20 trees (``early_stopping_round``), and the best tree count is kept;
       quality is measured on the same held-out candidates (R^2 and Spearman rho). With
       ``early_stopping_round=0`` (and for a custom ``model``) all ``num_boost_round`` trees are fitted and the
       model is refit on all candidates after the held-out measurement.
    4. **Search.** ``w_best`` starts as the mean of the ``top_k`` labelled candidates with the highest
       *predicted* score. Then for ``alpha_t`` log-spaced from ``max(alpha_range)`` down to
       ``min(alpha_range)`` over ``rounds`` rounds: draw ``samples_per_round`` mixtures from
       ``Dirichlet(alpha_t * w_best)`` (kept in the box like step 1, so the surrogate is never extrapolated),
       predict, and set ``w_best`` to the mean of the ``top_k`` highest predicted. Large alpha means samples
       close to ``w_best`` (relative spread of a weight w_j is about ``1/sqrt(alpha*w_j)``), so the search starts
       local and widens, re-centring each round.

    Parameters
    ----------
    score_fn : callable ``W [C, m] -> y [C]``
        Measured quality of each candidate mixture (numpy or torch output), larger = better.
    w0 : array [m]
        Centre of the search box, usually TiKMiX-D's mixture (normalised; >= 0, positive sum).
    n_candidates : int >= 20
        Labelled candidates (the paper's budget; >= 10,000 is practical with :func:`mixture_score_fn`).
    box : (a, b) with 0 <= a <= 1 <= b, a < b
        Per-domain multiplicative box around w0.
    rounds : int >= 0
        Dirichlet search rounds.
    alpha_range : (alpha_1, alpha_2), optional
        Concentration range (both > 0; order does not matter: the schedule always runs from the larger to the
        smaller). Default ``(10 * m, 1000 * m)``: relative spread ~0.3 to ~0.03 for a weight of 1/m.
    top_k : int >= 1
        How many top predictions are averaged into ``w_best``.
    samples_per_round : int >= top_k
        Dirichlet samples per round.
    model : "lightgbm", or an object with ``fit(X, y)`` / ``predict(X)`` (or its class, or a zero-argument
        factory)
        The surrogate. It sees only the support of w0 (domains with w0_j > 0) as features.
    model_params : dict, optional
        LightGBM parameters overriding the defaults (``num_boost_round`` and ``early_stopping_round`` or one of
        its LightGBM aliases included). The defaults were chosen by measurement (time per boundary, held-out
        R^2, Spearman and the true score of the chosen mixture at m = 7, 16, 32): 2,048 candidates and
        ``{"learning_rate": 0.2, "num_leaves": 4, "linear_tree": True, "max_bin": 63, "min_data_in_leaf": 20,
        "lambda_l2": 1.0, "num_boost_round": 400, "early_stopping_round": 20}``.
    test_fraction : float in (0, 1)
        Share of candidates held out to measure the fit.
    outside : "reject" | "project"
        What to do with a normalised candidate outside the box (step 1 and the search).
    batch_size : int, optional
        Candidates per ``score_fn`` call.
    min_r2 : float
        Held-out R^2 below this gives status 1 (the search still runs).
    evaluate_final : bool
        Also measure ``score_fn`` at the answer and at w0 (one extra call with two rows); ``score`` and
        ``score_w0`` are NaN otherwise.
    seed : int
        Seeds every random choice (LHS, split, LightGBM, Dirichlet); the same seed gives the same result.

    Returns
    -------
    MixtureResult
        ``weights`` [m], ``success``, ``status``, ``message``, ``fun`` (predicted score of ``weights``),
        ``nit`` (rounds), ``score``, ``score_w0``, ``fit`` ({"r2", "spearman", "n_train", "n_test"}, and
        ``"n_trees"`` for LightGBM),
        ``candidates`` [C, m], ``labels`` [C], ``trace`` (per round: alpha, drawn, accepted, best_pred,
        topk_mean_pred, w_best_pred, w_best), ``model``, ``n_drawn`` (LHS points drawn), ``solver="tikmix-m"``.

        Status codes and messages: the table in :class:`MixtureResult`.

    Raises
    ------
    ValueError
        Bad w0, box, counts or fractions; score_fn output of the wrong shape or non-finite; too few candidates
        inside the box with ``outside="reject"``.
    TypeError
        ``model`` is neither "lightgbm" nor fit/predict-able.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable W[C, m] -> y[C]; got {type(score_fn).__name__}")
    w0_arr = to_float64_array(w0, "w0")
    if w0_arr.ndim != 1 or w0_arr.size == 0:
        raise ValueError(f"w0 must be a non-empty 1-D vector of domain weights; got shape {w0_arr.shape}")
    w0 = check_mixture(w0_arr, w0_arr.size, "w0")
    m = w0.size
    (a, b), (alo, ahi), surrogate = _check_search_options(
        m, n_candidates=n_candidates, box=box, rounds=rounds, alpha_range=alpha_range, top_k=top_k,
        samples_per_round=samples_per_round, model=model, model_params=model_params, test_fraction=test_fraction,
        outside=outside, batch_size=batch_size, seed=seed,
    )

    rng = np.random.default_rng(seed)
    sup = np.flatnonzero(w0 > 0)
    w0s = w0[sup]
    lo, hi = a * w0s, b * w0s

    def full(Ws: np.ndarray) -> np.ndarray:
        out = np.zeros((Ws.shape[0], m))
        out[:, sup] = Ws
        return out

    # 1. candidates (w0 first)
    if sup.size == 1:
        cand_s, drawn = np.ones((n_candidates - 1, 1)), 0
    else:
        cand_s, drawn = _box_candidates(w0s, lo, hi, n_candidates - 1, outside, rng)
    cand_s = np.vstack([w0s[None, :], cand_s])
    W = full(cand_s)
    # 2. labels
    y = _labels(score_fn, W, batch_size)
    base = dict(candidates=W, labels=y, n_drawn=int(drawn), solver="tikmix-m")
    if np.ptp(y) == 0.0 or sup.size == 1:
        msg = REGRESSION_STATUS[2] if np.ptp(y) == 0.0 else "Only one domain has weight in w0; returned w0."
        return MixtureResult(weights=w0.copy(), success=sup.size == 1, status=0 if sup.size == 1 else 2,
                             message=msg, fun=float(y[0]), nit=0, score=float(y[0]), score_w0=float(y[0]),
                             fit={"r2": float("nan"), "spearman": float("nan"), "n_train": 0, "n_test": 0},
                             trace=[], model=None, **base)
    # 3. surrogate with a held-out split
    C = W.shape[0]
    perm = rng.permutation(C)
    n_test = max(2, int(round(float(test_fraction) * C)))
    test, train = perm[:n_test], perm[n_test:]
    # LightGBM with early stopping picks its number of trees on the held-out split and is not refit: the
    # refit on all candidates doubled the fitting time for a few percent more data.
    stops_early = isinstance(surrogate, _LightGBM) and surrogate.early_stop > 0
    if stops_early:
        surrogate.fit(cand_s[train], y[train], valid=(cand_s[test], y[test]))
    else:
        surrogate.fit(cand_s[train], y[train])
    pred = np.asarray(surrogate.predict(cand_s[test]), dtype=np.float64).reshape(-1)
    ss_res = float(np.sum((y[test] - pred) ** 2))
    ss_tot = float(np.sum((y[test] - y[test].mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(y[test], pred).statistic) if np.ptp(pred) > 0 else float("nan")
    fit = {"r2": r2, "spearman": rho, "n_train": int(train.size), "n_test": int(test.size)}
    if not stops_early:
        surrogate.fit(cand_s, y)
    if isinstance(surrogate, _LightGBM):
        fit["n_trees"] = surrogate.n_trees
    predict = lambda X: np.asarray(surrogate.predict(X), dtype=np.float64).reshape(-1)  # noqa: E731

    # 4. annealed Dirichlet search
    p_all = predict(cand_s)
    k = min(top_k, C)
    top = np.argsort(-p_all, kind="stable")[:k]
    w_best = cand_s[top].mean(axis=0)
    w_best_pred = float(predict(w_best[None])[0])
    trace: List[Dict[str, Any]] = [{
        "round": 0, "alpha": float("nan"), "drawn": C, "accepted": C, "best_pred": float(p_all[top[0]]),
        "topk_mean_pred": float(p_all[top].mean()), "w_best_pred": w_best_pred, "w_best": full(w_best[None])[0],
    }]
    alphas = np.geomspace(ahi, alo, rounds) if rounds > 1 else np.array([ahi] * rounds)
    for t, alpha in enumerate(alphas, start=1):
        conc = np.maximum(alpha * w_best, 1e-300)
        D = rng.dirichlet(conc, size=samples_per_round)
        D = D[np.all(np.isfinite(D), axis=1)]
        if outside == "project":
            D = _project_box_simplex(D, lo, hi)
        else:
            D = D[_in_box(D, lo, hi)]
        entry: Dict[str, Any] = {"round": t, "alpha": float(alpha), "drawn": int(samples_per_round),
                                 "accepted": int(D.shape[0])}
        if D.shape[0] >= k:
            p = predict(D)
            top = np.argsort(-p, kind="stable")[:k]
            w_best = D[top].mean(axis=0)
            w_best_pred = float(predict(w_best[None])[0])
            entry.update(best_pred=float(p[top[0]]), topk_mean_pred=float(p[top].mean()))
        else:  # too few samples inside the box this round: keep w_best
            entry.update(best_pred=float("nan"), topk_mean_pred=float("nan"))
        entry.update(w_best_pred=w_best_pred, w_best=full(w_best[None])[0])
        trace.append(entry)

    weights = full(w_best[None])[0]
    weights = weights / weights.sum()
    if evaluate_final:
        final = _labels(score_fn, np.vstack([weights, w0]), None)
        score, score_w0 = float(final[0]), float(final[1])
    else:
        score = score_w0 = float("nan")
    status = 1 if not (r2 >= min_r2) else 0
    message = REGRESSION_STATUS[status]
    if status == 1:
        message += f" (held-out R^2 = {r2:.3g} < min_r2 = {min_r2:g}; Spearman {rho:.3g})"
    return MixtureResult(
        weights=weights, success=status == 0, status=status, message=message, fun=w_best_pred, nit=len(alphas),
        score=score, score_w0=score_w0, fit=fit, trace=trace,
        model=surrogate.booster if isinstance(surrogate, _LightGBM) else surrogate, **base,
    )


# ----------------------------------------------------------------------------------------------------------
# score_fn from per-sample influence rows
# ----------------------------------------------------------------------------------------------------------
@dataclass(eq=False, repr=False)
class MixtureScoreFn:
    """``score_fn`` for :func:`solve_regression` built from per-sample influence rows (see :func:`mixture_score_fn`).

    Calling it with ``W [C, G]`` returns ``y [C]``; :meth:`scores` returns the per-target ``[C, n]`` before
    aggregation. Attributes: ``S`` (``[n, G]`` per-domain mean influence, the matrix TiKMiX-D would use and the
    expectation of the resampled scores), ``backend`` ("native" or "numpy"), ``draws``, ``seed``, ``aggregate``.
    """

    per_sample: np.ndarray
    ids: np.ndarray
    num_domains: int
    draws: int
    seed: int
    aggregate: Any
    backend: str
    weights: InitVar[Dict[str, float]]
    normalize: InitVar[str]
    eps: InitVar[float]

    def __post_init__(self, weights: Dict[str, float], normalize: str, eps: float) -> None:
        per_sample, ids, num_domains = self.per_sample, self.ids, self.num_domains
        self._weights = weights
        counts = np.bincount(ids, minlength=num_domains).astype(np.float64)
        sums = np.zeros((num_domains, per_sample.shape[1]))
        np.add.at(sums, ids, per_sample.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            self.S = (sums / counts[:, None]).T  # [n, G]; NaN for domains without rows
        self.S = np.where(np.isfinite(self.S), self.S, 0.0)
        self._scale = row_scale(self.S, normalize, eps)[0]  # type: ignore[arg-type]

    def scores(self, W: Any) -> np.ndarray:
        """Per-target resampled scores ``[C, n]`` (float64) of candidate mixtures ``W [C, G]``."""
        W = to_float64_array(W, "W")
        if W.ndim != 2 or W.shape[1] != self.num_domains:
            raise ValueError(f"W must be [C, {self.num_domains}]; got shape {W.shape}")
        if self.backend == "native":
            return np.asarray(_native_scores(self.per_sample, self.ids, W, self.draws, self.seed), dtype=np.float64)
        return mixture_scores_np(self.per_sample, self.ids, W, self.draws, self.seed).astype(np.float64)

    def __call__(self, W: Any) -> np.ndarray:
        Wn = to_float64_array(W, "W")
        Y = self.scores(Wn)
        agg = self.aggregate
        if isinstance(agg, str):
            if agg == "mean":
                return Y.mean(axis=1)
            # "tikmix": the negated TiKMiX-D objective with P replaced by the resampled scores
            Yh = Y / self._scale[None, :]
            Wp = Wn / Wn.sum(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                ent = -np.sum(np.where(Wp > 0, Wp * np.log(np.where(Wp > 0, Wp, 1.0)), 0.0), axis=1)
            a, b, g = self._weights["alpha"], self._weights["beta"], self._weights["gamma"]
            return b * Yh.sum(axis=1) - a * Yh.std(axis=1) + g * ent
        if callable(agg):
            out = to_float64_array(agg(Y, Wn), "aggregate output")
            if out.shape != (Y.shape[0],):
                raise ValueError(f"aggregate must return shape ({Y.shape[0]},); got {out.shape}")
            return out
        return Y @ agg  # target weights [n]


def _float_array(x: Any, name: str) -> np.ndarray:
    """numpy view of x (numpy or torch) keeping float32/float64, converting anything else to float64."""
    if hasattr(x, "detach") and hasattr(x, "double"):  # torch.Tensor
        x = x.detach().cpu()
        x = x.numpy() if str(x.dtype) in ("torch.float32", "torch.float64") else x.double().numpy()
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        arr = to_float64_array(arr, name)
    return arr


_NATIVE: Dict[str, Any] = {}


def _native_op() -> Optional[Any]:
    """tikmix_ext.mixture_scores when the compiled extension has a CPU kernel for it, else None (cached)."""
    if "op" not in _NATIVE:
        op = None
        try:
            import tikmix_ext

            if tikmix_ext.has_kernel("mixture_scores", "cpu"):
                op = tikmix_ext.mixture_scores
        except Exception:  # not built, not loadable, or an older build without the op
            op = None
        _NATIVE["op"] = op
    return _NATIVE["op"]


def _native_scores(per_sample: np.ndarray, ids: np.ndarray, W: np.ndarray, draws: int, seed: int) -> np.ndarray:
    import torch

    op = _native_op()
    out = op(torch.from_numpy(np.ascontiguousarray(per_sample)), torch.from_numpy(ids.astype(np.int64)),
             torch.from_numpy(np.ascontiguousarray(W, dtype=np.float64)), int(draws), int(seed))
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def mixture_score_fn(
    per_sample: Any,
    ids: Any,
    num_domains: int,
    *,
    draws: int = 4096,
    seed: int = 0,
    aggregate: Union[str, Sequence[float], np.ndarray, Callable[[np.ndarray, np.ndarray], Any]] = "mean",
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    normalize: Literal["max", "absmax", "none"] = "max",
    eps: float = 1e-8,
    backend: Literal["auto", "native", "numpy"] = "auto",
) -> MixtureScoreFn:
    r"""A ``score_fn`` for :func:`solve_regression` that labels mixtures by resampling per-sample influence rows.

    ``per_sample[z, i]`` is sample z's influence on target i (``group_influence``'s second output, or any
    [N, n] array, larger = more helpful) and ``ids[z]`` its domain. A candidate mixture ``w`` is scored by
    drawing ``draws`` rows with per-domain counts proportional to ``w`` (largest-remainder rounding) and
    averaging them: the influence of a mixed sample drawn with those proportions, so TiKMiX-M costs no extra
    backward passes. Semantics are those of ``torch.ops.tikmix.mixture_scores`` (counts, hash, order; see
    ``tikmix.solvers._resample``). Its expectation is exactly ``S @ w`` with ``S`` the per-domain mean
    influence (``fn.S``), so the scores differ from TiKMiX-D's linear model only by finite-sample effects
    (or by a non-linear ``aggregate``).

    Parameters
    ----------
    per_sample : array [N, n] (numpy or torch; float32 kept, other dtypes become float64)
    ids : int array [N] in [0, num_domains)
    num_domains : int
        G, the number of domains (= the candidates' width).
    draws : int >= 1
        Rows drawn per candidate.
    seed : int
        Resampling seed. The same (W, seed) always gives the same scores; candidate c's draws depend on its row
        index c in W (the op's contract), so reordering W changes the noise, not the expectation.
    aggregate : "mean" | "tikmix" | weights [n] | callable(Y [C, n], W [C, G]) -> [C]
        How per-target scores become one score (larger = better): ``"mean"`` over targets (default);
        ``"tikmix"`` = the negated TiKMiX-D objective ``beta*sum(Y_hat) - alpha*std(Y_hat) + gamma*H(w)`` with
        ``Y_hat = Y / row_scale(S)`` (the same normalisation as :func:`solve_direct`); a vector of target
        weights; or your own function.
    alpha, beta, gamma, normalize, eps
        Used by ``aggregate="tikmix"`` (meaning as in :func:`solve_direct`).
    backend : "auto" | "native" | "numpy"
        ``"native"`` calls the compiled op (error if it is not built), ``"numpy"`` the pure numpy path (same
        values, bit for bit), ``"auto"`` the op when available.

    Returns
    -------
    MixtureScoreFn
        Callable ``W [C, G] -> y [C]``; ``.scores(W)`` gives ``[C, n]``; ``.S`` the ``[n, G]`` domain means.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> per_sample, ids = rng.normal(size=(600, 3)), rng.integers(0, 4, size=600)
    >>> fn = mixture_score_fn(per_sample, ids, 4, draws=256, seed=1)
    >>> fn(np.full((2, 4), 0.25)).shape
    (2,)
    """
    X = _float_array(per_sample, "per_sample")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"per_sample must be a non-empty 2-D array [N, n]; got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"per_sample contains {int((~np.isfinite(X)).sum())} NaN/inf entries")
    idx = ids.detach().cpu().numpy() if hasattr(ids, "detach") else np.asarray(ids)
    if idx.ndim != 1 or idx.shape[0] != X.shape[0]:
        raise ValueError(f"ids must be 1-D with one domain per row of per_sample ({X.shape[0]}); got {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"ids must be integers; got dtype {idx.dtype}")
    num_domains = check_int(num_domains, "num_domains", minimum=1)
    if idx.min() < 0 or idx.max() >= num_domains:
        raise ValueError(f"ids must lie in [0, {num_domains}); got [{idx.min()}, {idx.max()}]")
    draws = check_int(draws, "draws", minimum=1)
    if isinstance(aggregate, str):
        if aggregate not in ("mean", "tikmix"):
            raise ValueError(f"aggregate must be 'mean', 'tikmix', a weight vector or a callable; got {aggregate!r}")
    elif not callable(aggregate):
        agg = to_float64_array(aggregate, "aggregate")
        if agg.shape != (X.shape[1],):
            raise ValueError(f"aggregate weights must have one entry per target ({X.shape[1]}); got {agg.shape}")
        aggregate = agg
    if backend not in ("auto", "native", "numpy"):
        raise ValueError(f"backend must be 'auto', 'native' or 'numpy'; got {backend!r}")
    if backend == "native" and _native_op() is None:
        raise RuntimeError(
            "backend='native' but torch.ops.tikmix.mixture_scores is not available (tikmix_ext not built, or built "
            "without it; `python -m tikmix_ext.info` lists the kernels). Use backend='numpy' (same values)."
        )
    chosen = "native" if backend == "native" or (backend == "auto" and _native_op() is not None) else "numpy"
    return MixtureScoreFn(X, idx.astype(np.int64), int(num_domains), int(draws), int(seed), aggregate, chosen,
                          {"alpha": float(alpha), "beta": float(beta), "gamma": float(gamma)}, normalize, eps)
