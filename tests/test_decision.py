"""tikmix.decision: the noise-aware S the solver sees, against plain float64 references; options and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tikmix.decision import ROBUST_DEFAULTS, Decision


def shrink_ref(S, lo, hi, level=0.95):
    """Positive-part James-Stein per entry: S * max(0, 1 - se^2 / S^2), se = half-width / z."""
    z = {0.95: 1.959963984540054, 0.9: 1.6448536269514722}[level]
    out = np.empty_like(S)
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            se = (hi[i, j] - lo[i, j]) / (2 * z)
            if S[i, j] == 0:
                out[i, j] = 0.0
            else:
                out[i, j] = S[i, j] * max(0.0, 1 - (se / S[i, j]) ** 2)
    return out


def ema_ref(rows, beta):
    """Row-normalised exponential smoothing over boundaries, scaled back by the current row maxima."""
    out, state = [], None
    for S in rows:
        scale = np.abs(S).max(axis=1, keepdims=True)
        scale[scale == 0] = 1
        n = S / scale
        state = n if state is None else beta * state + (1 - beta) * n
        out.append(state * scale)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 7), (4, 2)])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_shrink_matches_reference(shape, level):
    rng = np.random.default_rng(sum(shape))
    S = rng.normal(size=shape)
    half = np.abs(rng.normal(size=shape)) * 0.8
    lo, hi = S - half, S + half * rng.uniform(0.5, 1.5, size=shape)
    got, info = Decision("paper", shrink="ci").effective_S(S, lo, hi, level)
    np.testing.assert_allclose(got, shrink_ref(S, lo, hi, level), rtol=1e-12, atol=1e-15)
    assert np.all(np.abs(got) <= np.abs(S) + 1e-15) and np.all(np.sign(got) * np.sign(S) >= 0)
    assert np.asarray(info["S_used"]).shape == shape


def test_shrink_keeps_precise_entries_and_zeroes_noisy_ones():
    S = np.array([[1.0, 0.1, -2.0]])
    lo = np.array([[0.99, -0.5, -2.01]])
    hi = np.array([[1.01, 0.7, -1.99]])
    got, _ = Decision("paper", shrink="ci").effective_S(S, lo, hi)
    assert got[0, 0] == pytest.approx(1.0, rel=1e-3) and got[0, 2] == pytest.approx(-2.0, rel=1e-3)
    assert got[0, 1] == 0.0


def test_nan_intervals_leave_entries_unchanged():
    S = np.array([[0.5, -0.2]])
    lo = np.array([[np.nan, -0.3]])
    hi = np.array([[np.nan, -0.1]])
    with pytest.warns(RuntimeWarning, match=r"domain column\(s\) \[0\] have no bootstrap interval"):
        got, info = Decision("paper", shrink="ci").effective_S(S, lo, hi)
    assert got[0, 0] == 0.5 and got[0, 1] < 0
    assert info["shrink"].startswith("partial: domain column(s) [0]")


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.9])
def test_ema_matches_reference_and_resumes_from_history(beta):
    rng = np.random.default_rng(3)
    rows = [rng.normal(size=(2, 5)) * 10.0 ** -k for k in range(4)]
    d = Decision("paper", ema=beta)
    got, records = [], []
    for S in rows:
        out, info = d.effective_S(S)
        got.append(out)
        records.append({"decision": info})
    for a, b in zip(got, ema_ref(rows, beta)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # a fresh Decision resumed from the first three records continues exactly
    again = Decision("paper", ema=beta)
    again.resume(records[:3])
    np.testing.assert_allclose(again.effective_S(rows[3])[0], got[3], rtol=1e-12)


def test_paper_is_the_identity_and_adds_no_solver_options():
    S = np.array([[0.3, -0.1, 0.0]])
    d = Decision("paper")
    got, info = d.effective_S(S)
    assert np.array_equal(got, S)
    assert info["options"] == {"objective": "paper", "shrink": None, "ema": None, "max_shift": None, "min_r2": None,
                               "safe": None, "trust_region": False}
    assert d.solver_options("direct", {"alpha": 2.0}) == {"alpha": 2.0}
    assert d.solver_options("regression", {}) == {"direct": {}, "regression": {}}


def test_robust_defaults_and_explicit_solver_options_win():
    d = Decision("robust")
    assert d.options() == {"objective": "robust", **ROBUST_DEFAULTS, "safe": None, "trust_region": False}
    assert d.solver_options("direct", {}) == {"max_shift": ROBUST_DEFAULTS["max_shift"]}
    assert d.solver_options("direct", {"max_shift": 1.0})["max_shift"] == 1.0
    opts = d.solver_options("regression", {"regression": {"min_r2": 0.5}})
    assert opts == {"direct": {"max_shift": 0.3}, "regression": {"min_r2": 0.5}}
    assert Decision("robust", ema=None).ema is None


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"objective": "best"}, ValueError, "objective must be one of"),
        ({"objective": "robst"}, ValueError, r"objective must be one of .*got 'robst' \(did you mean robust\?\)"),
        ({"shrink": "sd"}, ValueError, r"shrink must be off \(None; null in YAML\) or 'ci'"),
        ({"ema": 1.0}, ValueError, r"ema must be off \(None; null in YAML\) or a number in \[0, 1\)"),
        ({"ema": True}, ValueError, "ema must be"),
        ({"max_shift": 0.0}, ValueError, r"max_shift must be off \(None; null in YAML\) or a number in \(0, 2\]"),
        ({"min_r2": math.inf}, ValueError, "min_r2 must be"),
    ],
)
def test_bad_options_are_refused_naming_them(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Decision(**kwargs)


def test_from_options_and_bad_inputs():
    assert Decision.from_options(None).objective == "robust" and Decision().options() == {
        "objective": "robust", **ROBUST_DEFAULTS, "safe": None, "trust_region": False}
    assert Decision.from_options("paper").objective == "paper"
    assert Decision.from_options("robust").ema == ROBUST_DEFAULTS["ema"]
    assert Decision.from_options({"objective": "paper", "ema": 0.2}).ema == 0.2
    with pytest.raises(ValueError, match=r"beta is not a decision option; expected objective, "):
        Decision.from_options({"beta": 1})
    with pytest.raises(TypeError, match="decision must be"):
        Decision.from_options(3)
    with pytest.raises(ValueError, match="needs bootstrap intervals"):
        Decision(shrink="ci").effective_S(np.ones((1, 2)))
    with pytest.raises(ValueError, match="must have S's shape"):
        Decision(shrink="ci").effective_S(np.ones((1, 2)), np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        Decision().effective_S(np.array([[np.nan, 1.0]]))
    # the default (robust) without intervals skips the shrinkage and says so; the smoothing still applies
    got, info = Decision().effective_S(np.array([[0.5, -0.25]]))
    assert info["shrink"].startswith("skipped: no bootstrap intervals") and np.allclose(got, [[0.5, -0.25]])


# ---------------------------------------------------------------------------------------- in the controller
def test_controller_applies_the_robust_decision_and_resumes_it_exactly():
    import json

    import torch

    from integration_testing import train_steps
    from test_controller_loop import BATCH, STEPS, _setup, _strip_timing

    def _train(*args):
        train_steps(*args, batch_size=BATCH)

    model, opt, sampler, ctrl, rows = _setup(decision="robust")
    _train(model, opt, sampler, ctrl, rows, 0, STEPS)
    full = _strip_timing(ctrl.history)
    for rec in full["stages"]:
        d = rec["decision"]
        assert d["options"]["objective"] == "robust"
        shift = np.abs(np.asarray(rec["weights"]) - np.asarray(rec["weights_prior"])).sum()
        assert shift <= ROBUST_DEFAULTS["max_shift"] + 1e-6
    first = full["stages"][0]  # group mode: the robust default does not shrink; nothing to smooth with yet
    assert first["decision"]["shrink"].startswith("skipped: the robust default shrinks per-sample estimates only")
    np.testing.assert_allclose(first["decision"]["S_used"], first["S"], rtol=1e-12, atol=0)
    # the second boundary's S_used is smoothed with the first's: not its own S
    second = full["stages"][1]["decision"]
    assert not np.allclose(np.asarray(second["S_used"]), np.asarray(full["stages"][1]["S"]))

    model, opt, sampler, ctrl, rows = _setup(decision="robust")
    _train(model, opt, sampler, ctrl, rows, 0, 15)
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
             "ctrl": json.loads(json.dumps(ctrl.state_dict(step=15)))}
    model, opt, sampler, ctrl, rows = _setup(decision="robust")
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    ctrl.load_state_dict(saved["ctrl"])
    _train(model, opt, sampler, ctrl, rows, 15, STEPS)
    assert _strip_timing(ctrl.history)["stages"] == full["stages"]
    assert torch.is_tensor(next(model.parameters()))


def test_repr_shows_the_resolved_options():
    d = Decision.from_options({"objective": "robust", "safe": 0.0, "trust_region": True})
    text = repr(d)
    assert text.startswith("Decision(objective='robust', ") and "safe=0.0" in text and "'grow': 1.5" in text
    assert all(f"{k}={v!r}" in text for k, v in d.options().items())
