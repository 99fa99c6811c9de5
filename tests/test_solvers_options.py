"""tikmix.solvers.check_options: the solvers' own checks, run before training on options alone."""
import numpy as np
import pytest

from tikmix.solvers import InfeasibleConstraintsError, check_options, solve_direct, solve_regression


@pytest.mark.parametrize(
    "name,options",
    [
        ("direct", None),
        ("direct", {}),
        ("direct", {"alpha": 2.0, "max_weight": 0.5, "min_weight": [0.0, 0.1, 0.0], "max_shift": 0.3}),
        ("direct", {"max_epochs": 2, "tokens_available": [100, 100, 100], "stage_tokens": 150, "method": "barrier"}),
        ("regression", {}),
        ("regression", {"direct": {"max_shift": 0.3}, "regression": {"n_candidates": 200, "score": {"draws": 64}}}),
        ("regression", {"regression": {"box": (0.8, 1.25), "outside": "project", "model_params": {"num_leaves": 7}}}),
    ],
)
def test_good_options_pass(name, options):
    check_options(name, options, 3)


@pytest.mark.parametrize(
    "name,options,err,match",
    [
        ("direct", {"foo": 1}, TypeError, r"unknown solve_direct option\(s\) \['foo'\]"),
        ("direct", {"restarts": 1.5}, TypeError, "restarts must be an int"),
        ("direct", {"restarts": -1}, ValueError, "restarts must be >= 0"),
        ("direct", {"method": "newton"}, ValueError, "method must be"),
        ("direct", {"normalize": "rows"}, ValueError, "normalize must be"),
        ("direct", {"alpha": -1.0}, ValueError, "alpha must be >= 0"),
        ("direct", {"max_weight": 0.2}, InfeasibleConstraintsError, "max_weight sums to 0.6 < 1"),
        ("direct", {"min_weight": [0.1, 0.2]}, ValueError, "min_weight must be a scalar or a vector of 3"),
        ("direct", {"max_epochs": 1, "stage_tokens": 10}, ValueError, "repetition cap needs"),
        ("direct", {"max_shift": 3.0}, ValueError, "max_shift must be >= 0 and <= 2"),
        ("direct", {"pareto": "yes"}, TypeError, "pareto must be a bool"),
        ("regression", {"x": {}}, TypeError, "unknown regression solver option group"),
        ("regression", {"direct": {"beta": "big"}}, TypeError, "beta must be a real number"),
        ("regression", {"regression": {"top_k": 0}}, ValueError, "top_k must be >= 1"),
        ("regression", {"regression": {"box": (2.0, 3.0)}}, ValueError, "box must satisfy"),
        ("regression", {"regression": {"n_trees": 3}}, TypeError, r"unknown regression option\(s\) \['n_trees'\]"),
        ("regression", {"regression": {"score": {"drw": 1}}}, TypeError, r"unknown regression.score option"),
        ("regression", {"regression": {"score": {"aggregate": "max"}}}, ValueError, "aggregate must be"),
        ("regression", {"regression": "fast"}, TypeError, r"options\['regression'\] must be a dict"),
        ("tikmix-d", {}, ValueError, "solver name must be 'direct' or 'regression'"),
    ],
)
def test_bad_options_raise_what_the_solver_raises(name, options, err, match):
    with pytest.raises(err, match=match):
        check_options(name, options, 3)


@pytest.mark.parametrize("options", [{"restarts": -1}, {"max_weight": 0.2}, {"method": "newton"}, {"alpha": -1.0}])
def test_same_error_as_solving(options):
    """check_options raises exactly what solve_direct raises for the same options."""
    S = np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1]])
    with pytest.raises(ValueError) as at_solve:
        solve_direct(S, **options)
    with pytest.raises(ValueError) as up_front:
        check_options("direct", options, 3)
    assert type(at_solve.value) is type(up_front.value) and str(at_solve.value) == str(up_front.value)


def test_regression_same_error_as_solving():
    with pytest.raises(ValueError) as at_solve:
        solve_regression(lambda W: W[:, 0], np.full(3, 1 / 3), samples_per_round=4, top_k=8)
    with pytest.raises(ValueError) as up_front:
        check_options("regression", {"regression": {"samples_per_round": 4, "top_k": 8}}, 3)
    assert str(at_solve.value) == str(up_front.value)


def test_num_domains_checked():
    with pytest.raises(ValueError, match="num_domains must be >= 1"):
        check_options("direct", {}, 0)
