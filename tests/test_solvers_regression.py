"""TiKMiX-M (solve_regression) and mixture_score_fn: search quality on a known optimum, determinism, the
resampling contract (bit-exact against an independent scalar reference), and documented errors."""
from __future__ import annotations

import numpy as np
import pytest

from tikmix.solvers import MixtureResult, mixture_score_fn, solve_direct, solve_regression
from tikmix_ext.reference import mix64_ref

FAST = {"num_boost_round": 150}


# ---------------------------------------------------------------------------------------------------------------
# A synthetic non-linear score with a known optimum
# ---------------------------------------------------------------------------------------------------------------
W_STAR = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
CURV = np.random.default_rng(0).uniform(0.5, 2.0, size=(3, 5))


def per_target_score(W):
    """Three concave targets sharing the maximiser W_STAR. W: [C, 5] -> [C, 3]."""
    return -(((W[:, None, :] - W_STAR) ** 2) * CURV[None] / W_STAR).sum(-1)


def score(W):
    return per_target_score(np.asarray(W)).mean(axis=1)


def test_tikmix_m_beats_tikmix_d_linear_model_on_nonlinear_score():
    w_prior = np.full(5, 0.2)
    S = -2 * (w_prior - W_STAR) * CURV / W_STAR  # TiKMiX-D's linear model: the Jacobian at w_prior
    d = solve_direct(S, w_prior)
    assert d.success
    m = solve_regression(score, d.weights, n_candidates=1000, seed=0, model_params=FAST)
    assert m.success, m.message
    dist_d = np.abs(d.weights - W_STAR).sum()
    dist_m = np.abs(m.weights - W_STAR).sum()
    assert dist_m < dist_d - 0.1
    assert m.score > score(d.weights[None])[0]
    assert m.score == pytest.approx(score(m.weights[None])[0])
    assert m.score_w0 == pytest.approx(score(d.weights[None])[0])
    assert m.fit["r2"] > 0.9 and m.fit["spearman"] > 0.9


def test_search_reaches_an_interior_optimum_inside_the_box():
    w0 = np.full(5, 0.2)  # W_STAR lies inside [0.5 w0, 2 w0]
    res = solve_regression(score, w0, n_candidates=1500, seed=1, model_params=FAST)
    start = np.abs(w0 - W_STAR).sum()
    assert np.abs(res.weights - W_STAR).sum() < 0.25 * start
    assert res.score > res.score_w0


# ---------------------------------------------------------------------------------------------------------------
# Mechanics: candidates, trace, determinism
# ---------------------------------------------------------------------------------------------------------------
def test_candidates_in_box_and_trace():
    w0 = np.array([0.4, 0.3, 0.2, 0.1, 0.0])  # a zero-weight domain stays at zero
    res = solve_regression(score, w0, n_candidates=300, rounds=4, top_k=8, samples_per_round=512, seed=3,
                           model_params=FAST)
    W = res.candidates
    assert W.shape == (300, 5) and res.labels.shape == (300,)
    np.testing.assert_allclose(W[0], w0, rtol=1e-15)  # w0 (normalised) is the first candidate
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(W[:, 4] == 0)
    assert np.all(W[:, :4] >= 0.5 * w0[:4] * (1 - 1e-9)) and np.all(W[:, :4] <= 2 * w0[:4] * (1 + 1e-9))
    np.testing.assert_allclose(res.labels, score(W))
    assert [t["round"] for t in res.trace] == [0, 1, 2, 3, 4]
    alphas = [t["alpha"] for t in res.trace[1:]]
    assert alphas[0] == pytest.approx(1000 * 5) and alphas[-1] == pytest.approx(10 * 5)
    assert all(a > b for a, b in zip(alphas, alphas[1:]))  # log-spaced from max to min
    assert res.nit == 4
    np.testing.assert_allclose(res.weights, res.trace[-1]["w_best"])
    assert res.weights[4] == 0 and res.weights.sum() == pytest.approx(1.0)
    assert res.fit["n_train"] + res.fit["n_test"] == 300
    assert isinstance(res, MixtureResult) and res.solver == "tikmix-m"


def test_seed_reproduces_exactly_and_changes_with_seed():
    kw = dict(n_candidates=400, rounds=3, samples_per_round=512, model_params=FAST)
    a = solve_regression(score, np.full(5, 0.2), seed=7, **kw)
    b = solve_regression(score, np.full(5, 0.2), seed=7, **kw)
    c = solve_regression(score, np.full(5, 0.2), seed=8, **kw)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.candidates, b.candidates)
    assert a.fit == b.fit
    assert not np.array_equal(a.candidates, c.candidates)


def test_project_handles_many_domains_where_reject_cannot():
    m = 200
    w0 = np.random.default_rng(0).dirichlet(np.full(m, 5.0))
    target = w0 * np.linspace(0.7, 1.3, m)
    target /= target.sum()

    def f(W):
        return -((W - target) ** 2 / target).sum(axis=1)

    with pytest.raises(ValueError, match="outside='project'"):
        solve_regression(f, w0, n_candidates=50, seed=0)
    res = solve_regression(f, w0, n_candidates=300, rounds=2, samples_per_round=256, top_k=8, outside="project",
                           seed=0, model_params=FAST)
    lo, hi = 0.5 * w0, 2 * w0
    assert np.all(res.candidates >= lo * (1 - 1e-9)) and np.all(res.candidates <= hi * (1 + 1e-9))
    np.testing.assert_allclose(res.candidates.sum(axis=1), 1.0, atol=1e-9)


def test_custom_model_object():
    class Quadratic:
        """Least squares on [w, w^2, 1]: exact for the synthetic score."""

        def fit(self, X, y):
            self.coef = np.linalg.lstsq(self._f(X), y, rcond=None)[0]
            return self

        def predict(self, X):
            return self._f(X) @ self.coef

        @staticmethod
        def _f(X):
            return np.hstack([X, X**2, np.ones((X.shape[0], 1))])

    res = solve_regression(score, np.full(5, 0.2), n_candidates=200, model=Quadratic, seed=0)
    assert res.fit["r2"] > 0.999
    assert np.abs(res.weights - W_STAR).sum() < 0.1
    assert isinstance(res.model, Quadratic)


def test_early_stopping_picks_the_trees_on_the_held_out_split():
    import lightgbm as lgb

    def noisy(W):  # label noise that is a fixed function of W, so both solves below see the same labels
        return score(W) + 0.01 * np.sin(1e5 * np.asarray(W)[:, 0])

    w0 = np.full(5, 0.2)
    stopped = solve_regression(noisy, w0, n_candidates=400, rounds=2, seed=0)  # the defaults stop early
    trees = stopped.fit["n_trees"]
    assert 1 <= trees < 300 and stopped.model.best_iteration == trees
    assert stopped.fit["n_train"] + stopped.fit["n_test"] == 400
    # fit["r2"] is that of the first n_trees trees fitted on the training split (no refit on all candidates):
    # the same split and trees without early stopping give the same held-out R^2
    full = solve_regression(noisy, w0, n_candidates=400, rounds=2, seed=0,
                            model_params={"early_stopping_round": 0, "num_boost_round": trees})
    assert full.fit["n_trees"] == trees and full.fit["r2"] == pytest.approx(stopped.fit["r2"], abs=1e-12)
    assert isinstance(full.model, lgb.Booster)
    # without early stopping the model is refit on every candidate: its predictions differ from the stopped one
    W = stopped.candidates
    assert not np.allclose(full.model.predict(W), stopped.model.predict(W, num_iteration=trees))


def test_status_poor_fit_and_constant_labels():
    rng = np.random.default_rng(0)
    noise = solve_regression(lambda W: rng.normal(size=W.shape[0]), np.full(4, 0.25), n_candidates=200, rounds=1,
                             min_r2=0.5, seed=0, model_params=FAST)
    assert noise.status == 1 and not noise.success and "R^2" in noise.message
    flat = solve_regression(lambda W: np.zeros(W.shape[0]), np.full(4, 0.25), n_candidates=100, seed=0)
    assert flat.status == 2 and not flat.success
    np.testing.assert_array_equal(flat.weights, np.full(4, 0.25))
    from tikmix.solvers.result import REGRESSION_STATUS

    assert noise.message.startswith(REGRESSION_STATUS[1]) and flat.message == REGRESSION_STATUS[2]


def test_batched_labels_and_torch_output():
    torch = pytest.importorskip("torch")
    calls = []

    def f(W):
        calls.append(W.shape[0])
        return torch.from_numpy(score(W))

    res = solve_regression(f, np.full(5, 0.2), n_candidates=250, batch_size=100, rounds=1, seed=0,
                           model_params=FAST)
    assert calls[:3] == [100, 100, 50] and calls[3] == 2  # final evaluation: [weights, w0]
    assert res.labels.shape == (250,)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(box=(1.5, 2.0)), ValueError, r"box must satisfy"),
        (dict(box=(0.5,)), ValueError, r"box must"),
        (dict(n_candidates=5), ValueError, r"n_candidates must be >= 20"),
        (dict(top_k=0), ValueError, r"top_k must be >= 1"),
        (dict(top_k=64, samples_per_round=32), ValueError, r"samples_per_round \(32\) must be >= top_k"),
        (dict(test_fraction=1.0), ValueError, r"test_fraction must lie in"),
        (dict(alpha_range=(0.0, 10.0)), ValueError, r"alpha_range must be a pair of positive"),
        (dict(outside="clip"), ValueError, r"outside must be"),
        (dict(model="xgboost"), ValueError, r"model must be 'lightgbm'"),
        (dict(model=object()), TypeError, r"model must be 'lightgbm' or have fit"),
        (dict(batch_size=0), ValueError, r"batch_size must be >= 1"),
        (dict(model_params={"early_stopping_round": 5, "n_iter_no_change": 5}), ValueError,
         r"model_params sets early stopping twice \(early_stopping_round, n_iter_no_change\)"),
        (dict(model_params={"early_stopping_rounds": -1}), ValueError,
         r"model_params\['early_stopping_rounds'\] must be >= 0"),
        (dict(model_params={"num_boost_round": 0}), ValueError, r"model_params\['num_boost_round'\] must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        solve_regression(score, np.full(5, 0.2), **kwargs)


def test_bad_score_fn_and_w0():
    with pytest.raises(ValueError, match=r"one score per candidate.*aggregate"):
        solve_regression(lambda W: per_target_score(W), np.full(5, 0.2), n_candidates=50)
    with pytest.raises(ValueError, match=r"score_fn returned 50 NaN/inf"):
        solve_regression(lambda W: np.full(W.shape[0], np.nan), np.full(5, 0.2), n_candidates=50)
    with pytest.raises(TypeError, match="score_fn must be callable"):
        solve_regression(None, np.full(5, 0.2))
    with pytest.raises(ValueError, match="w0 must be non-negative"):
        solve_regression(score, [0.5, -0.1, 0.6])
    with pytest.raises(ValueError, match="w0 must be a non-empty 1-D"):
        solve_regression(score, np.full((2, 2), 0.25))


# ---------------------------------------------------------------------------------------------------------------
# mixture_score_fn and the mixture_scores contract
# ---------------------------------------------------------------------------------------------------------------
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mixture_scores_scalar_ref(per_sample, ids, candidates, draws, seed):
    """The contract of csrc/include/tikmix/rng.h + reduce_kernels.h, restated with Python ints and loops.
    per_sample: [N, n], ids: [N], candidates: [C, G] -> [C, n] float64."""
    key = mix64_ref((seed & _MASK) + _GOLDEN)
    G = candidates.shape[1]
    rows = [[z for z in range(len(ids)) if ids[z] == j] for j in range(G)]
    out = np.zeros((candidates.shape[0], per_sample.shape[1]))
    for c in range(candidates.shape[0]):
        w = [float(v) for v in candidates[c]]
        s = 0.0
        for v in w:
            s += v
        q = [(v / s) * draws for v in w]
        counts = [int(np.floor(x)) for x in q]
        order = sorted((j for j in range(G) if w[j] > 0), key=lambda j: (-(q[j] - counts[j]), j))
        for j in order[: draws - sum(counts)]:
            counts[j] += 1
        acc = [0.0] * per_sample.shape[1]
        for j in range(G):
            for t in range(counts[j]):
                inner = mix64_ref(key ^ mix64_ref((c * _GOLDEN + j) & _MASK))
                u = mix64_ref(inner + ((t * _GOLDEN) & _MASK))
                r = rows[j][u % len(rows[j])]
                for i in range(per_sample.shape[1]):
                    acc[i] += float(per_sample[r, i])
        out[c] = [a / draws for a in acc]
    return out


def _toy(seed=0, N=300, n=3, G=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, G, size=N)
    X = (rng.normal(size=(G, n))[ids] + rng.normal(size=(N, n))).astype(dtype)
    return X, ids


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 12345, -7])
def test_numpy_path_is_bit_exact_to_the_contract(dtype, seed):
    X, ids = _toy(seed=abs(seed), dtype=dtype)
    rng = np.random.default_rng(1)
    W = rng.dirichlet(np.ones(4), size=6)
    W[1, 2] = 0.0  # a zero weight never gets a remainder draw
    W[2] = [1.0, 1.0, 1.0, 1.0]  # ties in the remainders go to the lower index
    fn = mixture_score_fn(X, ids, 4, draws=37, seed=seed, backend="numpy")
    got = fn.scores(W)
    ref = mixture_scores_scalar_ref(X, ids, W, 37, seed).astype(dtype)
    np.testing.assert_array_equal(got.astype(dtype), ref)


def test_numpy_path_matches_tikmix_ext_reference_and_native_op():
    torch = pytest.importorskip("torch")
    try:
        from tikmix_ext.reference import mixture_scores_ref
    except Exception as exc:  # noqa: BLE001 - extension not built here
        pytest.skip(f"tikmix_ext not importable: {exc}")
    from tikmix.solvers.regression import _native_op

    X, ids = _toy(seed=3, N=120)
    W = np.random.default_rng(2).dirichlet(np.ones(4), size=5)
    ours = mixture_score_fn(X, ids, 4, draws=50, seed=99, backend="numpy").scores(W)
    ref = mixture_scores_ref(torch.from_numpy(X), torch.from_numpy(ids), torch.from_numpy(W), 50, 99).numpy()
    np.testing.assert_array_equal(ours, ref)
    if _native_op() is None:
        pytest.skip("tikmix_ext built without a CPU mixture_scores kernel")
    native = mixture_score_fn(X, ids, 4, draws=50, seed=99, backend="native").scores(W)
    np.testing.assert_array_equal(ours, native)


def test_score_fn_expectation_is_S_times_w():
    X, ids = _toy(seed=4, N=2000)
    fn = mixture_score_fn(X, ids, 4, draws=20000, seed=5, backend="numpy")
    S = np.stack([X[ids == j].mean(axis=0) for j in range(4)], axis=1)  # [n, G]
    np.testing.assert_allclose(fn.S, S)
    W = np.array([[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]])
    np.testing.assert_allclose(fn.scores(W), W @ S.T, atol=0.05)  # sd of a 20000-draw mean ~ 0.01
    np.testing.assert_allclose(fn(W), (W @ S.T).mean(axis=1), atol=0.05)


def test_aggregates():
    X, ids = _toy(seed=5)
    W = np.random.default_rng(0).dirichlet(np.ones(4), size=3)
    base = mixture_score_fn(X, ids, 4, draws=64, seed=1, backend="numpy")
    Y = base.scores(W)
    np.testing.assert_allclose(base(W), Y.mean(axis=1))
    weighted = mixture_score_fn(X, ids, 4, draws=64, seed=1, aggregate=[1.0, 0.0, 2.0], backend="numpy")
    np.testing.assert_allclose(weighted(W), Y[:, 0] + 2 * Y[:, 2])
    custom = mixture_score_fn(X, ids, 4, draws=64, seed=1, aggregate=lambda Y, W: Y.min(axis=1), backend="numpy")
    np.testing.assert_allclose(custom(W), Y.min(axis=1))
    tk = mixture_score_fn(X, ids, 4, draws=64, seed=1, aggregate="tikmix", backend="numpy")
    S = base.S
    scale = np.where(S.max(1) > 0, S.max(1), np.abs(S).max(1)) + 1e-8
    Yh = Y / scale
    ent = -(W * np.log(W)).sum(axis=1)
    np.testing.assert_allclose(tk(W), Yh.sum(1) - Yh.std(1) + ent)
    # with exact expectations the "tikmix" score is minus TiKMiX-D's objective
    d = solve_direct(S, np.full(4, 0.25))
    Yd = (S @ d.weights) / scale
    assert -(Yd.std() - Yd.sum() - d.terms["entropy"]) == pytest.approx(-d.fun)


def test_end_to_end_with_resampled_labels():
    X, ids = _toy(seed=6, N=3000, G=5)
    fn = mixture_score_fn(X, ids, 5, draws=512, seed=2, aggregate="tikmix")
    d = solve_direct(fn.S, np.full(5, 0.2))
    m = solve_regression(fn, d.weights, n_candidates=600, rounds=3, samples_per_round=512, seed=0,
                         model_params=FAST)
    assert m.weights.shape == (5,) and m.weights.sum() == pytest.approx(1.0)
    assert np.isfinite(m.score) and np.isfinite(m.fit["r2"])
    assert fn.backend in ("native", "numpy")


def test_mixture_score_fn_options_are_keyword_only():
    X, ids = _toy()
    with pytest.raises(TypeError):
        mixture_score_fn(X, ids, 4, 64)  # draws must be passed by keyword


def test_mixture_score_fn_errors():
    X, ids = _toy()
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        mixture_score_fn(X, ids, 3)
    with pytest.raises(ValueError, match="ids must be 1-D"):
        mixture_score_fn(X, ids[:-1], 4)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="per_sample contains 1 NaN/inf"):
        mixture_score_fn(Xn, ids, 4)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        mixture_score_fn(X, ids, 4, draws=0)
    with pytest.raises(ValueError, match="aggregate must be"):
        mixture_score_fn(X, ids, 4, aggregate="median")
    with pytest.raises(ValueError, match="aggregate weights must have one entry per target"):
        mixture_score_fn(X, ids, 4, aggregate=[1.0, 2.0])
    with pytest.raises(ValueError, match="backend must be"):
        mixture_score_fn(X, ids, 4, backend="cuda")
    fn = mixture_score_fn(X, ids, 5, backend="numpy")  # domain 4 has no rows
    with pytest.raises(ValueError, match=r"candidates\[0\] puts weight on domain 4, which has no rows"):
        fn(np.full((1, 5), 0.2))
    with pytest.raises(ValueError, match=r"W must be \[C, 5\]"):
        fn(np.full((1, 4), 0.25))
    with pytest.raises(ValueError, match="candidates must be non-negative"):
        fn(np.array([[0.5, 0.6, -0.1, 0.0, 0.0]]))
