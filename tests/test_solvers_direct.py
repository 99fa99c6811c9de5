"""TiKMiX-D (solve_direct): optimality against independent checks, constraints, edge cases and errors.

References here are written from the paper's formulas, independently of tikmix.solvers.direct:
``objective_ref`` (numpy, complex-step friendly) and an LP over the feasible set (scipy.optimize.linprog) that
certifies first-order optimality of a convex problem: at the optimum w*, no feasible v has
grad_f(w*) . (v - w*) < 0.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from scipy.optimize import linprog

from tikmix.solvers import InfeasibleConstraintsError, MixtureResult, solve_direct
from tikmix.solvers.result import DIRECT_STATUS, REGRESSION_STATUS

SEEDS = [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------------------------
def objective_ref(w, S, alpha=1.0, beta=1.0, gamma=1.0, eps=1e-8):
    """Paper Eq. 9-11. w: [m] or [K, m] (real, or complex for complex-step derivatives; entries > 0),
    S: [n, m] -> scalar or [K]."""
    scale = S.max(axis=1) + eps
    neg = S.max(axis=1) <= 0
    scale = np.where(neg, np.abs(S).max(axis=1) + eps, scale)
    ph = (w @ S.T) / scale
    n = S.shape[0]
    mean = ph.sum(axis=-1, keepdims=True) / n
    std = np.sqrt(((ph - mean) ** 2).sum(axis=-1) / n)
    ent = -(w * np.log(w)).sum(axis=-1)
    return alpha * std - beta * ph.sum(axis=-1) - gamma * ent


def grad_ref(w, S, **kw):
    """Complex-step gradient of objective_ref (exact to rounding, no step-size tuning). w: [m] -> [m]."""
    h = 1e-30
    g = np.empty(w.size)
    for j in range(w.size):
        z = w.astype(complex)
        z[j] += 1j * h
        g[j] = objective_ref(z, S, **kw).imag / h
    return g


def lp_min_linear(c, S, w_prior, lb=None, ub=None, max_shift=None):
    """min_v c.v over {sum v = 1, lb <= v <= ub, S v >= S w_prior, |v - w_prior|_1 <= max_shift}; returns v."""
    m = c.size
    lb = np.zeros(m) if lb is None else lb
    ub = np.ones(m) if ub is None else ub
    nu = m if max_shift is not None else 0
    A_ub = [np.hstack([-S, np.zeros((S.shape[0], nu))])]
    b_ub = [-S @ w_prior]
    if nu:
        I = np.eye(m)
        A_ub += [np.hstack([I, -I]), np.hstack([-I, -I]), np.hstack([np.zeros((1, m)), np.ones((1, m))])]
        b_ub += [w_prior, -w_prior, [max_shift]]
    res = linprog(
        np.concatenate([c, np.zeros(nu)]), A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub),
        A_eq=np.concatenate([np.ones(m), np.zeros(nu)])[None], b_eq=[1.0],
        bounds=list(zip(lb, ub)) + [(0, None)] * nu, method="highs",
    )
    assert res.status == 0, res.message
    return res.x[:m]


def assert_feasible(res, S, w_prior, lb=None, ub=None, max_shift=None, tol=1e-8):
    w = res.weights
    assert w.shape == (S.shape[1],)
    assert abs(w.sum() - 1) < 1e-12
    assert w.min() >= 0
    scale = np.abs(S).max(axis=1)
    assert np.all((S @ w - S @ w_prior) / scale >= -tol), "Pareto constraint violated"
    if lb is not None:
        assert np.all(w >= lb - 1e-12)
    if ub is not None:
        assert np.all(w <= ub + 1e-12)
    if max_shift is not None:
        assert np.abs(w - w_prior).sum() <= max_shift + tol


def random_problem(seed, n, m, offset=0.3):
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(n, m)) + offset
    w_prior = rng.dirichlet(np.full(m, 4.0))
    return S, w_prior


# ---------------------------------------------------------------------------------------------------------------
# Optimality
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n, m", [(9, 26), (3, 7)])
def test_first_order_optimality_certificate(seed, n, m):
    """KKT for a convex problem with linear constraints: the LP over the feasible set cannot decrease grad.w."""
    S, wp = random_problem(seed, n, m)
    res = solve_direct(S, wp)
    assert res.success, res.message
    assert_feasible(res, S, wp)
    assert res.terms["std"] > 1e-4  # the objective is differentiable at this solution
    assert res.fun == pytest.approx(objective_ref(res.weights, S), abs=1e-10)
    g = grad_ref(res.weights, S)
    v = lp_min_linear(g, S, wp)
    assert g @ (v - res.weights) >= -1e-5 * max(1.0, np.abs(g).max())


@pytest.mark.parametrize("seed", SEEDS)
def test_first_order_certificate_with_all_constraints(seed):
    S, wp = random_problem(seed, 5, 12)
    lb, ub = np.full(12, 0.02), np.full(12, 0.15)
    res = solve_direct(S, wp, min_weight=0.02, max_weight=0.15, max_shift=0.3)
    assert res.success, res.message
    assert_feasible(res, S, wp, lb, ub, 0.3)
    g = grad_ref(res.weights, S)
    v = lp_min_linear(g, S, wp, lb, ub, 0.3)
    assert g @ (v - res.weights) >= -1e-5 * max(1.0, np.abs(g).max())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.05, 0.0])
def test_dense_grid_never_beats_solution_m3(seed, gamma):
    """On m=3 a dense simplex grid (step 1/300) never finds a feasible point with a lower objective."""
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(2, 3)) + 0.2
    S[:, 0] = S.max(axis=1) + 0.3  # some mixtures beat w_prior on both targets: the feasible set has interior
    wp = rng.dirichlet(np.ones(3) * 3)
    res = solve_direct(S, wp, gamma=gamma)
    assert res.success, res.message
    k = 300
    i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
    keep = i + j <= k
    W = np.stack([i[keep], j[keep], k - i[keep] - j[keep]], axis=1) / k
    feas = np.all(W @ S.T >= (S @ wp)[None, :] - 1e-12, axis=1)
    W = W[feas]
    assert W.shape[0] > 100
    vals = objective_ref(np.maximum(W, 1e-300), S, gamma=gamma)
    assert vals.min() >= res.fun - 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_random_search_never_beats_solution_with_constraints(seed):
    rng = np.random.default_rng(seed)
    m = 5
    S = rng.normal(size=(3, m)) + 0.3
    wp = rng.dirichlet(np.ones(m) * 3)
    kw = dict(min_weight=0.05, max_weight=0.4, max_shift=0.5)
    res = solve_direct(S, wp, gamma=0.3, **kw)
    W = rng.dirichlet(np.ones(m), size=100_000)
    feas = (
        np.all(W @ S.T >= (S @ wp)[None] - 1e-12, axis=1)
        & np.all((W >= 0.05) & (W <= 0.4), axis=1)
        & (np.abs(W - wp).sum(axis=1) <= 0.5)
    )
    assert feas.sum() > 100
    vals = objective_ref(W[feas], S, gamma=0.3)
    assert vals.min() >= res.fun - 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_slsqp_and_barrier_agree(seed):
    S, wp = random_problem(seed + 10, 6, 20)
    a = solve_direct(S, wp, method="slsqp", max_shift=0.4)
    b = solve_direct(S, wp, method="barrier", max_shift=0.4)
    assert a.success and b.success
    assert a.method == "slsqp" and b.method == "barrier"
    assert a.fun == pytest.approx(b.fun, rel=1e-7, abs=1e-9)
    assert np.abs(a.weights - b.weights).max() < 1e-4


def test_many_domains_uses_barrier_and_is_optimal():
    S, wp = random_problem(7, 9, 80)
    res = solve_direct(S, wp)
    assert res.success and res.method == "barrier"
    assert_feasible(res, S, wp)
    g = grad_ref(res.weights, S)
    v = lp_min_linear(g, S, wp)
    assert g @ (v - res.weights) >= -1e-5 * max(1.0, np.abs(g).max())


# ---------------------------------------------------------------------------------------------------------------
# Constraints hold (and bind when they should)
# ---------------------------------------------------------------------------------------------------------------
def test_pareto_constraint_binds_and_holds():
    # domain 0 has the largest normalised total, but target 1 prefers domain 1, where w_prior sits
    S = np.array([[1.0, 0.0, 0.1], [0.6, 1.0, 0.1]])
    wp = np.array([0.1, 0.8, 0.1])
    free = solve_direct(S, wp, pareto=False, alpha=0.0, gamma=0.2)
    assert (S @ free.weights)[1] < (S @ wp)[1]  # without the constraint target 1 loses
    res = solve_direct(S, wp, alpha=0.0, gamma=0.2)
    assert res.success
    assert_feasible(res, S, wp, tol=1e-9)
    assert res.improvement[1] == pytest.approx(0.0, abs=1e-7)  # binding
    assert np.array_equal(res.slack["pareto"], res.improvement)


def test_min_max_weight_per_domain():
    S = np.array([[4.0, 1.0, 0.5, 0.2], [3.0, 1.5, 0.1, 0.3]])
    lo = np.array([0.0, 0.05, 0.1, 0.0])
    hi = np.array([0.35, 1.0, 1.0, 0.3])
    res = solve_direct(S, np.full(4, 0.25), min_weight=lo, max_weight=hi, gamma=0.1, pareto=False)
    assert res.success
    w = res.weights
    assert np.all(w >= lo - 1e-12) and np.all(w <= hi + 1e-12)
    assert w[0] == pytest.approx(0.35, abs=1e-7)  # max binds on the best domain
    assert w[2] == pytest.approx(0.1, abs=1e-7)  # min binds on a poor domain
    assert res.slack["max_weight"][0] == pytest.approx(0.0, abs=1e-7)
    assert np.all(res.slack["min_weight"] >= -1e-12)


def test_repetition_cap():
    S = np.array([[4.0, 1.0, 0.5], [3.0, 1.5, 0.1]])
    tokens = np.array([1_000.0, 50_000.0, 50_000.0])
    res = solve_direct(S, np.full(3, 1 / 3), max_epochs=2, tokens_available=tokens, stage_tokens=10_000, pareto=False)
    assert res.success
    assert res.weights[0] * 10_000 <= 2 * 1_000 * (1 + 1e-9)
    assert res.weights[0] == pytest.approx(0.2, abs=1e-7)  # the cap binds on the best domain
    assert res.slack["repetition"][0] == pytest.approx(0.0, abs=1e-3)  # in tokens
    # infinite max_epochs for a domain means no cap there
    res2 = solve_direct(S, np.full(3, 1 / 3), max_epochs=[np.inf, 1, 1], tokens_available=tokens,
                        stage_tokens=10_000, pareto=False)
    assert res2.weights[0] > 0.2


@pytest.mark.parametrize("max_shift", [0.05, 0.2])
def test_max_shift_l1(max_shift):
    S, wp = random_problem(3, 4, 10)
    free = solve_direct(S, wp)
    assert np.abs(free.weights - wp).sum() > max_shift  # the limit matters
    res = solve_direct(S, wp, max_shift=max_shift)
    assert res.success
    assert np.abs(res.weights - wp).sum() <= max_shift + 1e-9
    assert res.slack["max_shift"] == pytest.approx(0.0, abs=1e-7)  # binds
    assert_feasible(res, S, wp, max_shift=max_shift)


def test_entropy_keeps_mixture_off_a_vertex():
    S = np.array([[5.0, 1.0, 0.5, 0.2], [4.0, 0.5, 1.0, 0.1], [6.0, 0.2, 0.3, 1.0]])  # domain 0 dominates
    wp = np.full(4, 0.25)
    vertex = solve_direct(S, wp, gamma=0.0, alpha=0.0)
    assert vertex.weights[0] > 1 - 1e-6
    res = solve_direct(S, wp)  # gamma = 1 (paper)
    assert res.weights[0] < 0.95
    assert res.weights.min() > 1e-3
    assert res.terms["entropy"] > 0.2


# ---------------------------------------------------------------------------------------------------------------
# Edge cases with defined behaviour
# ---------------------------------------------------------------------------------------------------------------
def test_single_domain():
    res = solve_direct(np.array([[0.3], [1.0]]), [1.0])
    assert res.success and np.array_equal(res.weights, [1.0]) and res.nit == 0
    with pytest.raises(InfeasibleConstraintsError) as err:
        solve_direct([[1.0]], [1.0], max_weight=0.5)
    assert err.value.constraint == "max_weight"


def test_single_target_1d_S():
    res = solve_direct(np.array([3.0, 1.0, 2.0]), gamma=0.5)
    assert res.success
    assert res.terms["std"] == 0.0
    assert res.P.shape == (1,)
    assert np.argmax(res.weights) == 0 and np.argmin(res.weights) == 1


def test_duplicate_domains_split_equally():
    rng = np.random.default_rng(4)
    S = rng.normal(size=(5, 6)) + 0.5
    S[:, 4] = S[:, 1]
    res = solve_direct(S, np.full(6, 1 / 6))
    assert res.success
    assert res.weights[1] == pytest.approx(res.weights[4], abs=1e-6)


def test_nonpositive_row_uses_absmax_with_warning():
    S = np.array([[2.0, 1.0, 0.5], [-3.0, -0.5, -1.0]])
    with pytest.warns(RuntimeWarning, match=r"rows \[1\]"):
        res = solve_direct(S, np.full(3, 1 / 3))
    assert res.row_scale[1] == pytest.approx(3.0 + 1e-8)
    assert res.row_scale[0] == pytest.approx(2.0 + 1e-8)
    # direction preserved: for that row alone, the least harmful domain gets the most weight
    with pytest.warns(RuntimeWarning):
        only = solve_direct(S[1], np.full(3, 1 / 3), gamma=0.2, pareto=False)
    assert np.argmax(only.weights) == 1
    # all-zero row: P_hat is 0 for every mixture; the problem stays well defined
    Z = np.vstack([S[0], np.zeros(3)])
    with pytest.warns(RuntimeWarning):
        z = solve_direct(Z, np.full(3, 1 / 3))
    assert z.success and z.P_hat[1] == 0.0


def test_constant_row_is_a_vacuous_pareto_row():
    S = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 0.5]])
    res = solve_direct(S, np.full(4, 0.25))
    assert res.success
    assert_feasible(res, S, np.full(4, 0.25))


def test_pareto_pins_the_mixture_when_targets_outnumber_domains():
    S, wp = random_problem(5, 30, 6, offset=0.0)
    res = solve_direct(S, wp)
    assert res.success
    assert "Only one feasible mixture" in res.message
    np.testing.assert_allclose(res.weights, wp, rtol=1e-14, atol=0)  # w_prior itself (normalised)


def test_prior_on_a_vertex_best_for_some_target():
    S = np.array([[3.0, 1.0, 2.0], [0.5, 2.0, 1.0]])
    wp = np.array([1.0, 0.0, 0.0])  # domain 0 is the best for target 0: S_0 w >= 3 forces w = e_0
    res = solve_direct(S, wp)
    assert res.success
    np.testing.assert_allclose(res.weights, wp, atol=1e-9)


def test_torch_input_and_tiny_scale():
    torch = pytest.importorskip("torch")
    S, wp = random_problem(0, 4, 8)
    ref = solve_direct(S, wp)
    res = solve_direct(torch.tensor(S, dtype=torch.float32), torch.tensor(wp))
    assert np.abs(res.weights - ref.weights).max() < 1e-5
    tiny = solve_direct(S * 1e-12, wp)  # eps=1e-8 dominates the denominators: still valid and feasible
    assert tiny.success
    assert_feasible(tiny, S, wp)


def test_deterministic():
    S, wp = random_problem(2, 9, 26)
    a = solve_direct(S, wp, max_shift=0.3, seed=5)
    b = solve_direct(S, wp, max_shift=0.3, seed=5)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.fun == b.fun and a.nit == b.nit


def test_iteration_limit_status_and_feasible_fallback():
    S, wp = random_problem(1, 9, 26)
    res = solve_direct(S, wp, method="slsqp", maxiter=1, restarts=1)
    assert res.status in (1, 2) and not res.success
    assert_feasible(res, S, wp)
    assert res.message.startswith(("Iteration limit reached", "The solvers failed"))


# ---------------------------------------------------------------------------------------------------------------
# Result object
# ---------------------------------------------------------------------------------------------------------------
def test_result_fields_and_repr():
    S, wp = random_problem(0, 3, 5)
    res = solve_direct(S, wp, max_weight=0.5)
    assert isinstance(res, MixtureResult) and isinstance(res, dict)
    assert res.x is res.weights and res["weights"] is res.weights
    assert res.success == (res.status == 0)
    for key in ("weights", "success", "status", "message", "fun", "nit", "nfev", "terms", "slack", "maxcv",
                "P", "P_hat", "improvement", "row_scale", "starts", "solver", "method"):
        assert key in res.keys()
    assert set(res.terms) == {"std", "sum", "entropy"}
    assert res.fun == pytest.approx(res.terms["std"] - res.terms["sum"] - res.terms["entropy"])
    text = repr(res)
    assert text.index("message") < text.index("success") < text.index("status") < text.index("weights")
    with pytest.raises(AttributeError):
        res.no_such_field  # noqa: B018
    assert res.message.startswith(DIRECT_STATUS[0])


def test_status_tables_in_the_docs_match_the_codes():
    """MixtureResult's docstring holds the one written table of each solver's status codes and messages."""
    doc = MixtureResult.__doc__
    for name, table in (("solve_direct", DIRECT_STATUS), ("solve_regression", REGRESSION_STATUS)):
        section = doc[doc.index(f"``{name}``:"):]
        rows = re.findall(r"\n\s+(\d)\s{2,}(.+)", section)[: len(table)]
        assert {int(code): text.strip() for code, text in rows} == table


# ---------------------------------------------------------------------------------------------------------------
# Bad input: each gives its documented error
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "S, match",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), r"S contains 1 NaN/inf"),
        (np.array([[1.0, np.inf]]), r"S contains 1 NaN/inf"),
        (np.zeros((2, 2, 2)), r"S must be 2-D"),
        (np.zeros((0, 3)), r"at least one target row"),
    ],
)
def test_bad_S(S, match):
    with pytest.raises(ValueError, match=match):
        solve_direct(S)


def test_bad_S_type():
    with pytest.raises(TypeError, match="S must be a numeric array"):
        solve_direct("not an array")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(w_prior=[0.5, 0.5]), r"w_prior must be a vector of 3"),
        (dict(w_prior=[0.5, -0.5, 1.0]), r"w_prior must be non-negative"),
        (dict(w_prior=[0.0, 0.0, 0.0]), r"w_prior must have a positive sum"),
        (dict(w_prior=[np.nan, 0.5, 0.5]), r"w_prior contains NaN"),
        (dict(alpha=-1.0), r"alpha must be >= 0"),
        (dict(gamma=np.nan), r"gamma must be finite"),
        (dict(min_weight=[0.1, 0.2]), r"min_weight must be a scalar or a vector of 3"),
        (dict(max_weight=1.5), r"max_weight must lie in \[0, 1\]"),
        (dict(max_epochs=1, stage_tokens=10), r"repetition cap needs max_epochs, tokens_available and stage_tokens"),
        (dict(max_epochs=0, tokens_available=10, stage_tokens=10), r"max_epochs must be > 0"),
        (dict(max_epochs=1, tokens_available=-1, stage_tokens=10), r"tokens_available must lie in"),
        (dict(max_epochs=1, tokens_available=10, stage_tokens=0), r"stage_tokens must be > 0"),
        (dict(max_shift=3.0), r"max_shift must be >= 0 and <= 2"),
        (dict(normalize="rows"), r"normalize must be"),
        (dict(method="newton"), r"method must be"),
        (dict(restarts=-1), r"restarts must be >= 0, got -1"),
    ],
)
def test_bad_arguments(kwargs, match):
    S = np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1]])
    with pytest.raises(ValueError, match=match):
        solve_direct(S, **kwargs)


@pytest.mark.parametrize(
    "kwargs, constraint, match",
    [
        (dict(min_weight=0.4), "min_weight", r"min_weight sums to 1.2 > 1"),
        (dict(max_weight=0.3), "max_weight", r"max_weight sums to 0.9 < 1"),
        (dict(min_weight=[0.5, 0, 0], max_weight=[0.4, 1, 1]), "min_weight+max_weight", r"min_weight\[0\]=0.5"),
        (dict(max_epochs=1, tokens_available=[10, 10, 10], stage_tokens=100), "repetition", r"repetition cap"),
        (dict(max_weight=[0.5, 1, 1], max_epochs=1, tokens_available=[100, 20, 20], stage_tokens=100),
         "max_weight+repetition", r"together allow at most 0.9"),
        (dict(min_weight=[0.5, 0, 0], max_epochs=1, tokens_available=[10, 100, 100], stage_tokens=100),
         "min_weight+repetition", r"exceeds domain 0's repetition cap"),
        (dict(min_weight=[0.0, 0.0, 0.6], max_shift=0.2), "max_shift", r"max_shift=0.2 is smaller than 0.5333"),
        (dict(min_weight=[0.0, 0.0, 0.6]), "pareto", r"Pareto constraint .* cannot hold together with min_weight"),
    ],
)
def test_infeasible_constraints_are_named(kwargs, constraint, match):
    S = np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1]])
    with pytest.raises(InfeasibleConstraintsError, match=match) as err:
        solve_direct(S, np.full(3, 1 / 3), **kwargs)
    assert err.value.constraint == constraint
    assert isinstance(err.value, ValueError)


def test_infeasible_pareto_can_be_switched_off():
    S = np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve_direct(S, np.full(3, 1 / 3), min_weight=[0.0, 0.0, 0.6], pareto=False)
    assert res.success and res.weights[2] >= 0.6 - 1e-12
    assert math.isclose(res.weights.sum(), 1.0)
