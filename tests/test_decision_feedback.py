"""tikmix.decision's formulas against float64 brute force: the predicted change (central and worst case over the
interval box), the safe step, the stage feedback, the trust region; InfluenceResult.target_loss; bad options."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from influence_testing import TinyLM, lm_loss, make_data, one_thread  # noqa: F401
from tikmix.decision import (TRUST_REGION_DEFAULTS, Decision, feedback_summary, predicted_change, safe_step,
                             stage_feedback)
from tikmix.influence import GroupInfluence
from tikmix.solvers.objective import row_scale


# ---------------------------------------------------------------------------------------- references
def predicted_ref(S, w, wp, lo=None, hi=None, normalize="max", eps=1e-8):
    """Central ``S_i.(w - wp) / scale_i`` and the worst case over every vertex of the box ``S +- (hi - lo)/2``
    (a linear function's minimum over a box is at a vertex): brute force over the 2^m vertices per row."""
    S = np.asarray(S, dtype=np.float64)
    n, m = S.shape
    scale, _ = row_scale(S, normalize, eps)
    d = np.asarray(w, float) - np.asarray(wp, float)
    central = np.array([sum(S[i, j] * d[j] for j in range(m)) / scale[i] for i in range(n)])
    if lo is None:
        return central, None
    r = np.nan_to_num((np.asarray(hi) - np.asarray(lo)) / 2, nan=0.0)
    worst = np.empty(n)
    for i in range(n):
        worst[i] = min(sum((S[i, j] + s[j] * r[i, j]) * d[j] for j in range(m))
                       for s in itertools.product((-1.0, 1.0), repeat=m)) / scale[i]
    return central, worst


def rank_ref(x):
    """Average ranks (1-based), ties sharing the mean of their positions."""
    x = np.asarray(x, float)
    out = np.empty(len(x))
    for i, v in enumerate(x):
        out[i] = (np.sum(x < v) + 1 + np.sum(x <= v)) / 2
    return out


def spearman_ref(x, y):
    rx, ry = rank_ref(x), rank_ref(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _simplex(rng, m):
    w = rng.dirichlet(np.ones(m))
    return w


# ---------------------------------------------------------------------------------------- predicted change
@pytest.mark.parametrize("shape", [(1, 2), (3, 4), (5, 6)])
@pytest.mark.parametrize("normalize", ["max", "absmax", "none"])
def test_predicted_change_matches_brute_force(shape, normalize):
    rng = np.random.default_rng(sum(shape) + len(normalize))
    S = rng.normal(size=shape)
    S[0] = -np.abs(S[0])  # a row whose max is <= 0 takes row_scale's fallback
    lo = S - np.abs(rng.normal(size=shape)) * 0.3
    hi = S + np.abs(rng.normal(size=shape)) * 0.5  # asymmetric about S, as percentile intervals are
    lo[-1, 0] = hi[-1, 0] = np.nan  # no interval: counts with r = 0
    w, wp = _simplex(rng, shape[1]), _simplex(rng, shape[1])
    got = predicted_change(S, w, wp, ci_low=lo, ci_high=hi, normalize=normalize)
    central, worst = predicted_ref(S, w, wp, lo, hi, normalize)
    np.testing.assert_allclose(got["central"], central, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got["worst"], worst, rtol=1e-12, atol=1e-15)
    assert np.all(got["worst"] <= got["central"] + 1e-15)
    plain = predicted_change(S, w, wp, normalize=normalize)
    assert plain["worst"] is None and np.array_equal(plain["central"], got["central"])
    assert np.all(predicted_change(S, wp, wp, ci_low=lo, ci_high=hi)["worst"] == 0)


def test_predicted_change_bad_inputs():
    with pytest.raises(ValueError, match="finite"):
        predicted_change([[np.nan, 1.0]], [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="w and w_prior must have S's 2 domains"):
        predicted_change([[0.0, 1.0]], [1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="ci_low/ci_high must have S's shape"):
        predicted_change([[0.0, 1.0]], [0.5, 0.5], [0.5, 0.5], ci_low=np.zeros((2, 2)), ci_high=np.zeros((2, 2)))


# ---------------------------------------------------------------------------------------- safe step
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tolerance", [0.0, 0.02, 0.3])
def test_safe_step_is_the_largest_safe_t_on_a_grid(seed, tolerance):
    rng = np.random.default_rng(seed)
    n, m = 4, 5
    S = rng.normal(size=(n, m))
    half = np.abs(rng.normal(size=(n, m))) * 0.2
    w, wp = _simplex(rng, m), _simplex(rng, m)
    for lo, hi in ((None, None), (S - half, S + half)):
        pred = predicted_change(S, w, wp, ci_low=lo, ci_high=hi)
        basis = "worst" if lo is not None else "central"
        t = safe_step(pred[basis], tolerance)["t"]

        def ok(tt):
            p = predicted_change(S, wp + tt * (w - wp), wp, ci_low=lo, ci_high=hi)[basis]
            return bool(np.all(p >= -tolerance - 1e-12))

        grid = np.linspace(0, 1, 2001)
        best = max(g for g in grid if ok(g))
        assert ok(t) and best <= t + 1e-12 and t - best < 1 / 2000 + 1e-12


def test_safe_step_closed_form_cases():
    assert safe_step([0.1, 0.2], 0.0)["t"] == 1.0 and safe_step([0.1, 0.2], 0.0)["violated"] == []
    step = safe_step([0.1, -0.4, -0.2], 0.1)
    assert step["t"] == pytest.approx(0.25) and step["violated"] == [1, 2]
    assert safe_step([-1e-9, 0.5], 0.0)["t"] == 0.0  # tolerance 0: any target predicted worse keeps w_prior
    with pytest.raises(ValueError, match="safe tolerance must be a finite float >= 0"):
        safe_step([0.1], -0.1)


def test_safe_step_keeps_the_bounds_when_w_prior_violates_them():
    wp = np.array([0.6, 0.2, 0.2])  # violates max_weight 0.4 on domain 0
    w = np.array([0.3, 0.4, 0.3])
    upper = np.array([0.4, 1.0, 1.0])
    step = safe_step([-1.0, 0.5], 0.0, w=w, w_prior=wp, lower=np.zeros(3), upper=upper)
    t_min = (0.4 - 0.6) / (0.3 - 0.6)
    assert step["t"] == pytest.approx(t_min) and step["t_min"] == pytest.approx(t_min) and step["conflict"] == [0]
    assert np.all(wp + step["t"] * (w - wp) <= upper + 1e-12)
    # a safe step that already meets the bounds: no conflict
    free = safe_step([-0.1, 0.5], 0.09, w=w, w_prior=wp, lower=np.zeros(3), upper=upper)
    assert free["t"] == pytest.approx(0.9) and free["conflict"] is None


# ---------------------------------------------------------------------------------------- feedback
@pytest.mark.parametrize("seed", range(4))
def test_stage_feedback_matches_direct_recomputation(seed):
    rng = np.random.default_rng(seed)
    n = 5
    before = rng.uniform(2, 4, size=n)
    after = before - rng.uniform(0, 0.5, size=n)
    pred = rng.normal(size=n)
    pred[1] = pred[2]  # a tie
    fb = stage_feedback(before, after, pred)
    change = after - before
    np.testing.assert_allclose(fb["realised_change"], change, rtol=0, atol=0)
    assert fb["spearman_rho"] == pytest.approx(spearman_ref(pred, -change), abs=1e-12)
    cp, cg = pred - pred.mean(), -change - (-change).mean()
    agree = np.mean([np.sign(a) == np.sign(b) for a, b in zip(cp, cg)])
    assert fb["sign_agreement"] == pytest.approx(agree) and fb["signs_agree"] == (agree > 0.5)


def test_stage_feedback_perfect_and_reversed_and_one_target():
    before = np.array([3.0, 3.0, 3.0])
    assert stage_feedback(before, before - [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])["spearman_rho"] == pytest.approx(1.0)
    rev = stage_feedback(before, before - [0.1, 0.2, 0.3], [3.0, 2.0, 1.0])
    assert rev["spearman_rho"] == pytest.approx(-1.0) and rev["signs_agree"] is False
    one = stage_feedback([3.0], [2.5], [0.2])
    assert one["spearman_rho"] is None and one["sign_agreement"] is None and one["signs_agree"] is None
    flat = stage_feedback(before, before - 0.1, [1.0, 2.0, 3.0])  # realised gains all equal: no ranking
    assert flat["spearman_rho"] is None and flat["signs_agree"] is None
    still = stage_feedback(before, before - [0.1, 0.2, 0.3], [0.0, -6e-15, 0.0])  # the mixture did not move
    assert still["spearman_rho"] is None and still["sign_agreement"] is None
    summary = feedback_summary([None, rev, one, stage_feedback(before, before - [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])])
    assert summary == {"stages": 3, "mean_rho": pytest.approx(0.0), "rho_stages": 2, "sign_agree_fraction": 0.5}
    assert feedback_summary([]) == {"stages": 0, "mean_rho": None, "rho_stages": 0, "sign_agree_fraction": None}


# ---------------------------------------------------------------------------------------- trust region
def test_trust_region_grows_shrinks_keeps_and_clamps():
    d = Decision("paper", trust_region={"grow": 2.0, "shrink": 0.25, "min": 0.1, "max": 0.5})
    assert d.trust_region_limit(None, None, None) == {"max_shift": 0.3, "reason": "start"}
    assert d.trust_region_limit(None, 0.9, 0.8)["max_shift"] == 0.5  # the start is clamped too
    grew = d.trust_region_limit(0.2, 0.4, None)
    assert grew["max_shift"] == pytest.approx(0.4) and grew["reason"].startswith("grew")
    shrank = d.trust_region_limit(0.3, 0.0, None)
    assert shrank["max_shift"] == pytest.approx(0.1) and shrank["reason"].startswith("shrank")
    assert d.trust_region_limit(0.3, -1.0, None)["max_shift"] == 0.1  # 0.075 clamped to min
    assert "clamped" in d.trust_region_limit(0.3, 0.5, None)["reason"]  # 0.6 clamped to max
    assert d.trust_region_limit(0.3, None, None) == {
        "max_shift": 0.3, "reason": "kept: no rank agreement for the stage (one target or constant values)"}
    assert Decision(trust_region=True).trust_region == TRUST_REGION_DEFAULTS
    with pytest.raises(ValueError, match="trust_region on"):
        Decision().trust_region_limit(None, None, None)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"safe": -0.1}, r"safe must be off \(None; null in YAML\) or a finite tolerance >= 0"),
        ({"safe": True}, "safe must be"),
        ({"safe": float("nan")}, "safe must be"),
        ({"trust_region": {"grow": 1.5, "speed": 2}}, r"trust_region\['speed'\] is not an option; expected"),
        ({"trust_region": {"grwo": 2}}, r"trust_region\['grwo'\] is not an option \(did you mean grow\?\)"),
        ({"trust_region": {"grow": 0.5}}, r"trust_region\['grow'\] must be >= 1"),
        ({"trust_region": {"shrink": 0.0}}, r"trust_region\['shrink'\] must be in \(0, 1\]"),
        ({"trust_region": {"min": 0.5, "max": 0.2}}, "trust_region needs 0 < min <= max <= 2"),
        ({"trust_region": {"max": "big"}}, r"trust_region\['max'\] must be a finite number"),
        ({"trust_region": "yes"}, "trust_region must be false, true or a mapping"),
    ],
)
def test_bad_safe_and_trust_region_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Decision(**kwargs)
    with pytest.raises(ValueError, match=match):
        Decision.from_options({"objective": "robust", **kwargs})


def test_options_round_trip_and_old_states():
    d = Decision.from_options({"objective": "robust", "safe": 0.0, "trust_region": {"grow": 2.0}})
    assert d.safe == 0.0 and d.options()["trust_region"] == {**TRUST_REGION_DEFAULTS, "grow": 2.0}
    assert Decision.from_options(d.options()).options() == d.options()
    old = {k: v for k, v in Decision().options().items() if k not in ("safe", "trust_region")}
    assert Decision.complete_options(old) == Decision().options()


# ---------------------------------------------------------------------------------------- target_loss
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", ["group", "per_sample"])
def test_target_loss_is_the_mean_loss_of_each_target(mode):
    torch.manual_seed(0)
    model = TinyLM().double().eval()
    doms, tgts = make_data(n_domains=2, n_targets=3)
    tgts["t1"] = tgts["t1"] + [tgts["t1"][0][:2]]  # batches of unequal size: a mean over rows, not over batches
    res = GroupInfluence(model, lm_loss, k=32, mode=mode, progress=False, n_bootstrap=0).compute(doms, tgts)
    with torch.no_grad():
        ref = [torch.cat([lm_loss(model, b) for b in batches]).to(torch.float64).mean() for batches in tgts.values()]
    assert res.target_loss.dtype == torch.float64 and res.target_loss.shape == (3,)
    torch.testing.assert_close(res.target_loss, torch.stack(ref), rtol=1e-12, atol=0)
    assert res.to_dict()["target_loss"] == res.target_loss.tolist()
