"""Controller in a plain training loop: boundaries, history, sampler re-weighting, exact resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from integration_testing import train_steps
from tikmix.controller import Controller
from tikmix.data import MixtureSampler
from tikmix.decision import Decision
from tikmix.solvers import solve_direct
from tikmix.models import GPT, GPTConfig, sequence_loss

SEQ = 16
BATCH = 8
STEPS = 30
BOUNDARIES = [10, 20]


def _data(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Three tiny domains: a repeated pattern (the target's), its conflicting variant, and noise."""
    rng = np.random.default_rng(seed)
    n = 64

    def pattern(text: bytes) -> torch.Tensor:
        stream = np.frombuffer(text * (n * (SEQ + 1) // len(text) + 2), dtype=np.uint8)
        starts = rng.integers(0, len(text), n)
        return torch.from_numpy(np.stack([stream[s : s + SEQ + 1] for s in starts]).astype(np.int64))

    domains = {
        "good": pattern(b"abcabcabd;"),
        "bad": pattern(b"abdabdabc;"),
        "noise": torch.from_numpy(rng.integers(0, 256, (n, SEQ + 1))),
    }
    targets = {"t": pattern(b"abcabcabd;")[:16]}
    return domains, targets


def _setup(tmp_path=None, solver: str = "direct", decision="paper"):
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=SEQ, n_layer=1, n_head=2, d_model=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    domains, targets = _data()
    sizes = [len(v) for v in domains.values()]
    sampler = MixtureSampler(sizes, [1 / 3] * 3, batch_size=BATCH, seed=3, tokens_per_sample=SEQ)
    rows = torch.cat(list(domains.values()))
    ctrl = Controller(
        model, sampler, domains=domains, targets=targets, loss_fn=sequence_loss, stages=BOUNDARIES,
        influence={"k": 64, "n_bootstrap": 20}, samples_per_domain=16, batch_size=8, seed=5,
        total_steps=STEPS, tokens_per_step=BATCH * SEQ,
        history_path=None if tmp_path is None else tmp_path / "history.json", solver=solver, decision=decision,
    )
    return model, opt, sampler, ctrl, rows


def _strip_timing(history: dict) -> dict:
    h = json.loads(json.dumps(history))
    for s in h["stages"]:
        s.pop("timing")
    if h.get("final"):
        h["final"].pop("train_s_last_stage", None)
    return h


def test_boundaries_reweight_sampler_and_write_history(tmp_path):
    model, opt, sampler, ctrl, rows = _setup(tmp_path)
    assert ctrl.step(0) is None
    train_steps(model, opt, sampler, ctrl, rows, 0, STEPS, batch_size=BATCH)
    ctrl.finish(STEPS)
    h = json.loads((tmp_path / "history.json").read_text())
    assert h["format"] == "tikmix.history/2"
    assert h["domains"] == ["good", "bad", "noise"] and h["targets"] == ["t"]
    assert [s["step"] for s in h["stages"]] == BOUNDARIES
    for s in h["stages"]:
        w = np.array(s["weights"])
        assert w.shape == (3,) and abs(w.sum() - 1) < 1e-9 and (w >= 0).all()
        assert np.array(s["S"]).shape == (1, 3)
        # the Pareto constraint against the stage that just ended holds for the chosen mixture
        S = np.array(s["S"])
        assert (S @ w >= S @ np.array(s["weights_prior"]) - 1e-6).all()
        assert sampler.weights_at(s["applies_from_step"]) is not None
        assert set(s["timing"]) >= {"train_s", "influence_s", "solve_s"}
        assert sum(s["realised_previous_stage"]["samples"]) == BATCH * (s["step"] - (0 if s["stage"] == 0 else 10))
    # the mixture really changed, and the sampler follows it from the boundary on
    last = h["stages"][-1]
    assert np.abs(np.array(last["weights"]) - 1 / 3).max() > 0.01
    # the sampler realises the weights on its grid of 1 / lcm(batch_size, 10080)
    assert np.allclose(sampler.weights_at(STEPS - 1), last["weights"], atol=1.0 / 10080)
    assert np.allclose(sampler.weights_at(5), [1 / 3] * 3)
    # the domain that matches the target gets more weight than noise once measured
    good, _, noise = last["weights"]
    assert good > noise
    assert sum(h["final"]["realised_total"]["tokens"]) == STEPS * BATCH * SEQ


def test_resume_reproduces_history_and_weights():
    # uninterrupted
    model, opt, sampler, ctrl, rows = _setup()
    train_steps(model, opt, sampler, ctrl, rows, 0, STEPS, batch_size=BATCH)
    ctrl.finish(STEPS)
    full = _strip_timing(ctrl.history)
    full_params = [p.detach().clone() for p in model.parameters()]

    # interrupted after step 15 (between the boundaries), saved, rebuilt from scratch, resumed
    model, opt, sampler, ctrl, rows = _setup()
    train_steps(model, opt, sampler, ctrl, rows, 0, 15, batch_size=BATCH)
    saved = {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": opt.state_dict(),
        "ctrl": json.loads(json.dumps(ctrl.state_dict(step=15))),  # must survive JSON
    }
    del model, opt, sampler, ctrl
    model, opt, sampler, ctrl, rows = _setup()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    ctrl.load_state_dict(saved["ctrl"])
    assert ctrl.stages_done == 1
    train_steps(model, opt, sampler, ctrl, rows, 15, STEPS, batch_size=BATCH)
    ctrl.finish(STEPS)
    resumed = _strip_timing(ctrl.history)

    assert resumed["stages"] == full["stages"]
    assert resumed["final"]["weights"] == full["final"]["weights"]
    for a, b in zip(full_params, model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_boundary_is_not_repeated():
    model, opt, sampler, ctrl, rows = _setup()
    train_steps(model, opt, sampler, ctrl, rows, 0, 10, batch_size=BATCH)
    assert ctrl.stages_done == 1
    assert ctrl.step(10) is None  # the same boundary again does nothing
    assert ctrl.stages_done == 1


def test_tokens_unit_maps_to_steps():
    model, opt, sampler, ctrl, rows = _setup()
    c = Controller(model, sampler, domains=_data()[0], targets=_data()[1], loss_fn=sequence_loss,
                   stages=[1000, 2048], stage_unit="tokens", tokens_per_step=BATCH * SEQ,
                   influence={"k": 8})
    assert c.boundaries == [8, 16]  # first step whose cumulative tokens reach each boundary


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stages": [10, 5]}, "strictly increasing"),
        ({"stages": [0]}, r"stages\[0\]"),
        ({"stages": [10, 40]}, "total_steps"),
        ({"solver": "magic"}, "solver"),
        ({"stage_unit": "tokens"}, "tokens_per_step"),
        ({"samples_per_domain": 0}, "samples_per_domain"),
        ({"influence": 3}, "influence"),
        # solver options are checked at construction, not at the first boundary
        ({"solver_options": {"bogus": 1}}, "bogus"),
        ({"solver_options": {"max_shift": -1}}, "max_shift"),
        ({"solver_options": {"min_weight": 0.9}}, "min_weight"),
        ({"solver": "regression", "solver_options": {"regression": {"score": {"seed": 1}}}}, "must not set seed"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, match):
    model, opt, sampler, _, _ = _setup()
    domains, targets = _data()
    args = dict(domains=domains, targets=targets, loss_fn=sequence_loss, stages=[10, 20], total_steps=30)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        Controller(model, sampler, **args)


def test_domain_count_must_match_sampler():
    model, opt, sampler, _, _ = _setup()
    domains, targets = _data()
    domains.pop("noise")
    with pytest.raises(ValueError, match="domains has 2 entries"):
        Controller(model, sampler, domains=domains, targets=targets, loss_fn=sequence_loss, stages=[10])


def test_load_state_dict_rejects_other_configuration():
    _, _, _, ctrl, _ = _setup()
    state = ctrl.state_dict()
    state["config"]["stage_steps"] = [5, 20]
    with pytest.raises(ValueError, match="stage_steps"):
        ctrl.load_state_dict(state)
    with pytest.raises(ValueError, match="not a tikmix controller state"):
        ctrl.load_state_dict({"format": "other"})


def test_load_state_dict_refuses_a_changed_decision_and_accepts_older_states():
    _, _, _, paper, _ = _setup(decision="paper")
    state = json.loads(json.dumps(paper.state_dict()))
    _, _, _, robust, _ = _setup(decision="robust")
    with pytest.raises(ValueError, match=r"decision \(saved \{'objective': 'paper'"):
        robust.load_state_dict(state)
    _, _, _, smoother, _ = _setup(decision={"objective": "paper", "ema": 0.3})
    with pytest.raises(ValueError, match="decision"):
        smoother.load_state_dict(state)
    del state["config"]["decision"]  # saved before the decision was part of the config
    robust.load_state_dict(state)


def test_regression_solver_meets_pareto_and_records_both_solvers():
    model, opt, sampler, ctrl, rows = _setup(solver="regression")
    ctrl.solver_options = {"regression": {"n_candidates": 64, "rounds": 2, "top_k": 8, "samples_per_round": 256}}
    train_steps(model, opt, sampler, ctrl, rows, 0, 12, batch_size=BATCH)
    (rec,) = ctrl.history["stages"]
    assert rec["solver"]["regression"]["solver"] == "tikmix-m"
    assert rec["solver"]["direct"]["solver"] == "tikmix-d"
    assert 0.0 <= rec["solver"]["pull_back_t"] <= 1.0
    assert rec["solver"]["used"].startswith(("tikmix-m", "tikmix-d (TiKMiX-M status"))
    S, w, w0 = np.array(rec["S"]), np.array(rec["weights"]), np.array(rec["weights_prior"])
    assert abs(w.sum() - 1) < 1e-9 and (w >= 0).all()
    assert (S @ w >= S @ w0 - 1e-6 * np.abs(S).max()).all()


def test_pull_back_keeps_tikmix_d_constraints():
    from tikmix.controller import _pull_back

    S = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    w_prior = np.array([0.4, 0.3, 0.3])
    w_d = np.array([0.5, 0.3, 0.2])  # feasible: S @ w_d >= S @ w_prior, L1 shift 0.2
    w_m = np.array([0.2, 0.2, 0.6])  # violates Pareto on row 0 and the shift cap
    w, t = _pull_back(S, w_prior, w_d, w_m, {"max_shift": 0.25})
    assert 0 < t < 1
    assert (S @ w >= S @ w_prior - 1e-8).all() and np.abs(w - w_prior).sum() <= 0.25 + 1e-8
    # the largest such t: a little further along the segment breaks a constraint
    w2 = w_d + min(1.0, t + 1e-3) * (w_m - w_d)
    assert (S @ w2 < S @ w_prior - 1e-9).any() or np.abs(w2 - w_prior).sum() > 0.25
    # a feasible TiKMiX-M answer is kept as is
    w_ok = np.array([0.45, 0.35, 0.2])
    w, t = _pull_back(S, w_prior, w_d, w_ok, {"max_shift": 0.25})
    assert t == 1.0 and np.allclose(w, w_ok)


def _meets_constraints_ref(S, w_prior, w, opts, tol):
    """Independent float64 check of TiKMiX-D's constraints (Pareto rows scaled by their largest |S_ij|)."""
    S, w, w_prior = (np.asarray(a, dtype=np.float64) for a in (S, w, w_prior))
    m = w.size
    ok = abs(w.sum() - 1) <= tol and (w >= -tol).all()
    if opts.get("pareto", True):
        ok &= bool((((S @ w) - (S @ w_prior)) / np.abs(S).max(axis=1) >= -tol).all())
    if "min_weight" in opts:
        ok &= bool((w >= np.broadcast_to(opts["min_weight"], (m,)) - tol).all())
    if "max_weight" in opts:
        ok &= bool((w <= np.broadcast_to(opts["max_weight"], (m,)) + tol).all())
    if "stage_tokens" in opts:
        cap = np.broadcast_to(opts["max_epochs"], (m,)) * np.broadcast_to(opts["tokens_available"], (m,))
        ok &= bool((w * opts["stage_tokens"] <= cap + tol * opts["stage_tokens"]).all())
    if "max_shift" in opts:
        ok &= bool(np.abs(w - w_prior).sum() <= opts["max_shift"] + tol)
    return ok


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "opts",
    [
        {"max_shift": 0.3},
        {"min_weight": 0.05, "max_weight": 0.5},
        {"max_epochs": 1.0, "tokens_available": [30.0, 40.0, 100.0, 100.0, 25.0], "stage_tokens": 100.0},
        {"pareto": False, "max_shift": 0.2, "max_weight": 0.4},
    ],
)
def test_pull_back_lands_on_the_solvers_feasible_set(seed, opts):
    """The pull-back uses solve_direct's own constraint set: rows of very different scale (the Pareto scaling
    must be the solver's), every constraint kind, and the largest feasible t."""
    from tikmix.controller import _pull_back
    from tikmix.solvers.constraints import constraint_set

    rng = np.random.default_rng(seed)
    S = rng.normal(size=(3, 5)) * np.array([[1e-4], [1.0], [1e3]])
    w_prior = rng.dirichlet(np.ones(5))
    if "max_weight" in opts:
        w_prior = 0.2 + (w_prior - 0.2) * min(1.0, 0.18 / np.abs(w_prior - 0.2).max())  # in [0.02, 0.38]
    if "stage_tokens" in opts:
        w_prior = np.array([0.2, 0.2, 0.3, 0.1, 0.2])
    res = solve_direct(S, w_prior, **opts)
    cs = constraint_set(S, w_prior, **opts)
    assert res.maxcv == pytest.approx(cs.maxcv(res.weights), abs=1e-15)
    w_d = np.asarray(res.weights)
    for _ in range(3):
        w_m = rng.dirichlet(np.ones(5) * 0.5)
        w, t = _pull_back(S, w_prior, w_d, w_m, {**opts, "alpha": 1.0, "restarts": 2})
        assert 0.0 <= t <= 1.0
        assert _meets_constraints_ref(S, w_prior, w, opts, 1e-8)
        if t < 1.0:
            beyond = np.clip(w_d + min(1.0, t + 1e-6) * (w_m - w_d), 0, None)
            assert not _meets_constraints_ref(S, w_prior, beyond / beyond.sum(), opts, 1e-9)


SHRINK = {"objective": "paper", "shrink": "ci"}


@pytest.mark.parametrize("samples, batch, mode, boot, decision, units", [
    (64, 64, "group", 20, SHRINK, 8),     # one micro-batch would leave the bootstrap nothing to resample: 8 of 8
    (16, 8, "group", 20, SHRINK, 8),      # 16 samples in batches of 2
    (5, 8, "group", 20, SHRINK, 5),       # fewer samples than 8: one per micro-batch
    (64, 4, "group", 20, SHRINK, 16),     # batch_size already gives more than 8 units
    (64, 64, "group", 0, "paper", 1),     # no intervals asked for: batch_size as given
    (64, 64, "group", 20, "robust", 1),   # the robust default does not shrink group-mode estimates
    (64, 64, "per_sample", 20, SHRINK, 1),  # per-sample units are samples
])
def test_group_mode_draws_enough_bootstrap_units_when_shrinking(samples, batch, mode, boot, decision, units):
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=SEQ, n_layer=1, n_head=2, d_model=16))
    domains, targets = _data()
    sampler = MixtureSampler([len(v) for v in domains.values()], [1 / 3] * 3, batch_size=BATCH, seed=3)
    ctrl = Controller(model, sampler, domains=domains, targets=targets, loss_fn=sequence_loss, stages=BOUNDARIES,
                      influence={"k": 64, "n_bootstrap": boot, "mode": mode}, samples_per_domain=samples,
                      batch_size=batch, seed=5, decision=decision)
    dom, tgt = ctrl._influence_inputs(0)
    for batches in dom.values():
        assert len(batches) == units and sum(len(b) for b in batches) == samples
    assert [len(b) for b in tgt["t"]] == [min(batch, 16 - a) for a in range(0, 16, batch)]  # targets: batch_size
    if units > 1 and mode == "group":  # the boundary's intervals exist for every domain, so shrinkage is applied
        res = ctrl._influence.compute(dom, tgt)
        assert torch.isfinite(res.ci_low).all() and torch.isfinite(res.ci_high).all()
        _, info = ctrl.decision.effective_S(res.S.double().numpy(), res.ci_low.numpy(), res.ci_high.numpy(),
                                            unit=res.unit)
        assert "shrink_factor" in info and "shrink" not in info


def test_robust_default_shrinks_per_sample_estimates_only():
    S = np.array([[0.5, -0.2]])
    lo, hi = np.array([[-0.5, -0.3]]), np.array([[1.5, -0.1]])
    robust = Decision()
    got, info = robust.effective_S(S, lo, hi, unit="micro-batch")
    assert np.array_equal(got, S) and info["shrink"].startswith("skipped: the robust default shrinks per-sample")
    got, info = Decision().effective_S(S, lo, hi, unit="sample")
    assert got[0, 0] == 0.0 and "shrink_factor" in info  # the interval is wide next to 0.5: shrunk to 0
    got, _ = Decision("robust", shrink="ci").effective_S(S, lo, hi, unit="micro-batch")
    assert got[0, 0] == 0.0  # asked for explicitly: group-mode estimates are shrunk too
