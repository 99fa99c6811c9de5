"""tikmix.solvers.solve_tikmix_m: TiKMiX-M from a saved influence result, without a Controller; its fallback to
TiKMiX-D, its pull-back onto TiKMiX-D's constraints, and its input checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tikmix.solvers import mixture_score_fn, solve_direct, solve_regression, solve_tikmix_m

SEARCH = {"n_candidates": 64, "rounds": 2, "samples_per_round": 256, "top_k": 8}


def _influence(seed: int = 0, n: int = 40):
    """Per-sample scores of 3 domains on 2 targets: domain 0 helps both targets, domain 2 hurts."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(3), n)
    means = np.array([[1.0, 0.8], [0.2, 0.3], [-0.5, -0.4]])
    scores = means[ids] + rng.normal(scale=0.5, size=(ids.size, 2))
    S = np.stack([scores[ids == j].mean(axis=0) for j in range(3)], axis=1)  # [targets, domains]
    return S, scores, ids


@pytest.mark.parametrize("max_shift", [0.3, None])
def test_matches_the_steps_it_is_made_of(max_shift):
    S, scores, ids = _influence()
    w_prior = np.full(3, 1 / 3)
    direct = {"alpha": 2.0} if max_shift is None else {"alpha": 2.0, "max_shift": max_shift}
    w, report = solve_tikmix_m(S, w_prior, scores, ids, options={"direct": direct, "regression": dict(SEARCH)},
                               seed=4, score_seed=9)
    # the same pipeline by hand
    base = solve_direct(S, w_prior, **direct)
    fn = mixture_score_fn(scores, ids, 3, seed=9, aggregate="tikmix", alpha=2.0)
    res = solve_regression(fn, base.weights, seed=4, **SEARCH)
    np.testing.assert_array_equal(report["direct"].weights, base.weights)
    np.testing.assert_array_equal(report["regression"].weights, res.weights)
    assert res.status == 0 and report["used"] == "tikmix-m"  # a clean signal: the surrogate fits
    t = report["pull_back_t"]
    np.testing.assert_allclose(w, base.weights + t * (res.weights - base.weights), atol=1e-12)
    assert abs(w.sum() - 1) < 1e-9 and (w >= -1e-12).all()
    assert (S @ w >= S @ w_prior - 1e-8 * np.abs(S).max()).all()  # Pareto against the previous mixture
    if max_shift is None:
        assert t == 1.0  # TiKMiX-M's answer meets TiKMiX-D's constraints here: kept as is
    else:
        # TiKMiX-D's max_shift binds TiKMiX-M too: its answer (further out) is pulled back onto the limit
        assert np.abs(res.weights - w_prior).sum() > max_shift and t < 1.0
        assert np.abs(w - w_prior).sum() <= max_shift + 1e-8


def test_works_on_a_result_saved_as_json():
    S, scores, ids = _influence(1)
    saved = json.loads(json.dumps({"S": S.tolist(), "unit_scores": scores.tolist(), "unit_domains": ids.tolist()}))
    w_prior = [0.5, 0.3, 0.2]
    a = solve_tikmix_m(saved["S"], w_prior, saved["unit_scores"], saved["unit_domains"],
                       options={"regression": SEARCH}, seed=2)
    b = solve_tikmix_m(S, np.asarray(w_prior), scores, ids, options={"regression": SEARCH}, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1]["used"] == b[1]["used"]


def test_poor_surrogate_falls_back_to_tikmix_d():
    S, scores, ids = _influence(2)
    w_prior = np.full(3, 1 / 3)
    # R^2 can never exceed 1: the surrogate is always refused
    w, report = solve_tikmix_m(S, w_prior, scores, ids, options={"regression": {**SEARCH, "min_r2": 1.0}})
    assert report["used"].startswith("tikmix-d (TiKMiX-M status")
    assert report["pull_back_t"] == 0.0
    np.testing.assert_array_equal(w, solve_direct(S, w_prior).weights)


@pytest.mark.parametrize("args, kwargs, error, match", [
    (lambda S, sc, ids: (S[0], sc, ids), {}, ValueError, "S must be a \\[targets, domains\\]"),
    (lambda S, sc, ids: (S, sc[:, :1], ids), {}, ValueError, "unit_scores must be \\[N, targets\\] with 2"),
    (lambda S, sc, ids: (S, sc, ids[:-1]), {}, ValueError, "unit_domains must be \\[N\\]"),
    (lambda S, sc, ids: (S, sc, ids + 1), {}, ValueError, "unit_domains must lie in \\[0, 3\\)"),
    (lambda S, sc, ids: (S, sc, ids), {"options": {"direkt": {}}}, TypeError, "unknown option group"),
    (lambda S, sc, ids: (S, sc, ids), {"options": {"regression": {"score": {"seed": 1}}}}, ValueError,
     "must not set seed"),
])
def test_bad_input_names_the_argument(args, kwargs, error, match):
    S, scores, ids = _influence()
    S2, sc2, ids2 = args(S, scores, ids)
    with pytest.raises(error, match=match):
        solve_tikmix_m(S2, np.full(3, 1 / 3), sc2, ids2, **kwargs)
